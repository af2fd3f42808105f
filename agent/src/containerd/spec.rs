//! The OCI runtime spec (`config.json`) of a module's container, from its translated
//! createOptions and its image's config. Pure: device numbers and host files are looked up by
//! the caller and passed in.
//!
//! The defaults are containerd's (`oci/spec.go`, `populateDefaultUnixSpec`): Docker's default
//! capability set, the usual `/proc`, `/dev`, `/dev/pts`, `/dev/shm`, `/dev/mqueue`, `/sys`
//! mounts, masked and read-only kernel paths, `RLIMIT_NOFILE` 1024, `noNewPrivileges`, and a
//! device cgroup that denies everything runc does not add itself. Host networking (no network
//! namespace) is the default, see [`crate::container::Network`]; `/etc/hosts` and
//! `/etc/resolv.conf` are then bound read-only from the host, as Docker does.

use serde_json::{json, Value};

use crate::container::{ContainerConfig, HealthTest, MountKind, Network};
use crate::image::oci::ImageConfig;

/// `PATH` when neither the image nor the module sets one (Docker's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Docker's default capabilities (moby `oci/caps/defaults.go`).
const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability the kernel headers of Linux 5.x/6.x define, for `Privileged`.
const ALL_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
];

const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
];

const READONLY_PATHS: &[&str] = &["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// A host device node, looked up by the caller (`stat`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceNode {
    pub container_path: String,
    /// `c` or `b`.
    pub kind: char,
    pub major: u64,
    pub minor: u64,
    pub file_mode: u32,
    pub permissions: String,
}

/// What the spec needs besides the translated createOptions.
#[derive(Debug, Clone)]
pub struct SpecInputs<'a> {
    pub module: &'a str,
    pub namespace: &'a str,
    pub image: &'a ImageConfig,
    pub devices: &'a [DeviceNode],
    /// Host files bound read-only with host networking (`/etc/hosts`, `/etc/resolv.conf`),
    /// only those that exist.
    pub host_files: &'a [&'a str],
}

/// `uid[:gid]` from Docker's `User`. Numbers only, plus `root`: names would need the image's
/// `/etc/passwd`, which is not readable before the container's rootfs is mounted.
///
/// # Errors
/// A name other than `root`, or a malformed number.
pub fn parse_user(user: &str) -> Result<(u32, u32), String> {
    let (u, g) = user.split_once(':').unwrap_or((user, ""));
    let id = |s: &str, what: &str| -> Result<u32, String> {
        if s == "root" {
            return Ok(0);
        }
        s.parse::<u32>().map_err(|_| {
            format!("User {user:?}: {what} {s:?} is not numeric; tinyedge needs numeric uid[:gid] (or root)")
        })
    };
    let uid = id(u, "user")?;
    let gid = if g.is_empty() {
        if uid == 0 {
            0
        } else {
            uid
        }
    } else {
        id(g, "group")?
    };
    Ok((uid, gid))
}

/// The environment: image env, overridden by the module's (createOptions `Env`, manifest `env`,
/// IoT Edge variables, already merged by [`crate::container::translate`]); `PATH` defaulted.
pub fn environment(config: &ContainerConfig, image: &ImageConfig) -> Vec<String> {
    let mut env: Vec<(String, String)> = image.env.clone();
    for (name, value) in &config.env {
        match env.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = value.clone(),
            None => env.push((name.clone(), value.clone())),
        }
    }
    if !env.iter().any(|(n, _)| n == "PATH") {
        env.insert(0, ("PATH".to_owned(), DEFAULT_PATH.to_owned()));
    }
    env.into_iter().map(|(n, v)| format!("{n}={v}")).collect()
}

/// The process part of the spec, for the container and (with other args) for health checks.
///
/// # Errors
/// No command at all (neither image nor createOptions give one), or a non-numeric `User`.
pub fn process(config: &ContainerConfig, inputs: &SpecInputs<'_>, args: Option<Vec<String>>) -> Result<Value, String> {
    let args = match args {
        Some(args) => args,
        None => config.process_args(&inputs.image.entrypoint, &inputs.image.cmd),
    };
    if args.is_empty() {
        return Err("no command: the image has no Entrypoint/Cmd and createOptions give none".to_owned());
    }
    let user = config.user.as_deref().or(inputs.image.user.as_deref()).unwrap_or("0");
    let (uid, gid) = parse_user(user)?;
    let cwd = config.working_dir.as_deref().or(inputs.image.working_dir.as_deref()).unwrap_or("/");
    let caps: &[&str] = if config.privileged { ALL_CAPS } else { DEFAULT_CAPS };
    Ok(json!({
        "user": {"uid": uid, "gid": gid},
        "args": args,
        "env": environment(config, inputs.image),
        "cwd": cwd,
        "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
        "noNewPrivileges": !config.privileged,
    }))
}

/// The health check command as process args (`CMD-SHELL` runs under `/bin/sh -c`).
pub fn health_args(test: &HealthTest) -> Option<Vec<String>> {
    match test {
        HealthTest::Exec(args) => Some(args.clone()),
        HealthTest::Shell(command) => Some(vec!["/bin/sh".to_owned(), "-c".to_owned(), command.clone()]),
        HealthTest::Disabled => None,
    }
}

/// The whole runtime spec.
///
/// # Errors
/// As [`process`].
pub fn runtime_spec(config: &ContainerConfig, inputs: &SpecInputs<'_>) -> Result<Value, String> {
    let process = process(config, inputs, None)?;
    let sys_options: &[&str] =
        if config.privileged { &["nosuid", "noexec", "nodev"] } else { &["nosuid", "noexec", "nodev", "ro"] };
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": sys_options}),
        json!({"destination": "/run", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
    ];
    let mut namespaces =
        vec![json!({"type": "pid"}), json!({"type": "ipc"}), json!({"type": "uts"}), json!({"type": "mount"})];
    match config.network {
        Network::Host => {
            for file in inputs.host_files {
                mounts.push(json!({"destination": file, "type": "bind", "source": file, "options": ["rbind", "ro"]}));
            }
        }
        Network::None => namespaces.push(json!({"type": "network"})),
    }
    for mount in &config.mounts {
        let access = if mount.read_only { "ro" } else { "rw" };
        mounts.push(match mount.kind {
            MountKind::Bind | MountKind::Volume => {
                json!({"destination": mount.target, "type": "bind", "source": mount.source, "options": ["rbind", access]})
            }
            MountKind::Tmpfs => {
                json!({"destination": mount.target, "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", access]})
            }
        });
    }
    let mut device_rules = vec![json!({"allow": config.privileged, "access": "rwm"})];
    let mut devices = Vec::new();
    for device in inputs.devices {
        devices.push(json!({
            "path": device.container_path, "type": device.kind.to_string(), "major": device.major,
            "minor": device.minor, "fileMode": device.file_mode, "uid": 0, "gid": 0,
        }));
        device_rules.push(json!({
            "allow": true, "type": device.kind.to_string(), "major": device.major, "minor": device.minor,
            "access": device.permissions,
        }));
    }
    let mut resources = json!({"devices": device_rules});
    if let Some(limit) = config.memory_limit_bytes {
        resources["memory"] = json!({"limit": limit});
    }
    if let Some(cpu) = &config.cpu_quota {
        let mut c = serde_json::Map::new();
        if let Some(q) = cpu.quota_us {
            c.insert("quota".into(), json!(q));
        }
        if let Some(p) = cpu.period_us {
            c.insert("period".into(), json!(p));
        }
        if let Some(s) = cpu.shares {
            c.insert("shares".into(), json!(s));
        }
        resources["cpu"] = Value::Object(c);
    }
    let mut linux = json!({
        "resources": resources,
        "cgroupsPath": format!("/{}/{}", inputs.namespace, inputs.module),
        "namespaces": namespaces,
        "devices": devices,
    });
    if !config.privileged {
        linux["maskedPaths"] = json!(MASKED_PATHS);
        linux["readonlyPaths"] = json!(READONLY_PATHS);
    }
    let annotations: serde_json::Map<String, Value> =
        config.labels.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
    Ok(json!({
        "ociVersion": "1.0.2-dev",
        "root": {"path": "rootfs", "readonly": false},
        "process": process,
        "hostname": inputs.module,
        "mounts": mounts,
        "linux": linux,
        "annotations": annotations,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::translate;
    use std::path::Path;

    fn image() -> ImageConfig {
        ImageConfig {
            cmd: vec!["sh".into()],
            env: vec![("PATH".into(), "/bin".into()), ("A".into(), "image".into())],
            ..ImageConfig::default()
        }
    }

    #[test]
    fn spec_carries_options_env_mounts_and_limits() {
        let options = r#"{"Env":["A=options","B=1"],"Cmd":["sleep","5"],"User":"1000:1000","WorkingDir":"/w",
            "Labels":{"k":"v"},"HostConfig":{"Binds":["/srv:/data:ro"],"Memory":134217728,"NanoCpus":500000000}}"#;
        let config = translate(options, &[("B".into(), "2".into())], &[], Path::new("/v")).unwrap();
        let img = image();
        let devices = [DeviceNode {
            container_path: "/dev/ttyS0".into(),
            kind: 'c',
            major: 4,
            minor: 64,
            file_mode: 0o660,
            permissions: "rwm".into(),
        }];
        let inputs = SpecInputs {
            module: "m1",
            namespace: "tinyedge",
            image: &img,
            devices: &devices,
            host_files: &["/etc/hosts"],
        };
        let spec = runtime_spec(&config, &inputs).unwrap();
        assert_eq!(spec["process"]["args"], json!(["sleep", "5"]));
        assert_eq!(spec["process"]["env"], json!(["PATH=/bin", "A=options", "B=2"]));
        assert_eq!(spec["process"]["user"], json!({"uid": 1000, "gid": 1000}));
        assert_eq!(spec["process"]["cwd"], "/w");
        assert_eq!(spec["linux"]["resources"]["memory"]["limit"], 134_217_728);
        assert_eq!(spec["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(spec["linux"]["cgroupsPath"], "/tinyedge/m1");
        assert_eq!(spec["annotations"]["k"], "v");
        let mounts = spec["mounts"].as_array().unwrap();
        assert!(mounts.iter().any(|m| m["destination"] == "/data" && m["options"] == json!(["rbind", "ro"])));
        assert!(mounts.iter().any(|m| m["destination"] == "/etc/hosts"));
        let ns = spec["linux"]["namespaces"].as_array().unwrap();
        assert!(!ns.iter().any(|n| n["type"] == "network"), "host networking has no network namespace");
        assert_eq!(spec["linux"]["devices"][0]["major"], 4);
        assert_eq!(spec["linux"]["resources"]["devices"][1]["allow"], true);
    }

    #[test]
    fn image_defaults_privileged_and_network_none() {
        let config =
            translate(r#"{"HostConfig":{"Privileged":true,"NetworkMode":"none"}}"#, &[], &[], Path::new("/v")).unwrap();
        let img = image();
        let inputs = SpecInputs { module: "m", namespace: "n", image: &img, devices: &[], host_files: &[] };
        let spec = runtime_spec(&config, &inputs).unwrap();
        assert_eq!(spec["process"]["args"], json!(["sh"]));
        assert_eq!(spec["process"]["user"], json!({"uid": 0, "gid": 0}));
        assert!(spec["process"]["capabilities"]["bounding"].as_array().unwrap().len() > 30);
        assert_eq!(spec["linux"]["resources"]["devices"][0]["allow"], true);
        assert!(spec["linux"].get("maskedPaths").is_none());
        assert!(spec["linux"]["namespaces"].as_array().unwrap().iter().any(|n| n["type"] == "network"));
    }

    #[test]
    fn users_and_missing_commands() {
        assert_eq!(parse_user("root"), Ok((0, 0)));
        assert_eq!(parse_user("1000"), Ok((1000, 1000)));
        assert_eq!(parse_user("1000:20"), Ok((1000, 20)));
        assert!(parse_user("app").unwrap_err().contains("numeric"));
        let config = translate("", &[], &[], Path::new("/v")).unwrap();
        let img = ImageConfig::default();
        let inputs = SpecInputs { module: "m", namespace: "n", image: &img, devices: &[], host_files: &[] };
        assert!(runtime_spec(&config, &inputs).unwrap_err().contains("no command"));
        let env = environment(&config, &img);
        assert_eq!(env, vec![format!("PATH={DEFAULT_PATH}")]);
    }

    #[test]
    fn health_commands() {
        assert_eq!(
            health_args(&HealthTest::Shell("true".into())),
            Some(vec!["/bin/sh".into(), "-c".into(), "true".into()])
        );
        assert_eq!(health_args(&HealthTest::Disabled), None);
    }
}
