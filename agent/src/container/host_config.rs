//! `HostConfig`: resources, devices, privileges, network mode and port bindings. Mounts are in
//! `mounts`.
//!
//! Limits follow Docker's own checks (`daemon/daemon_unix.go::verifyPlatformContainerResources`)
//! so a createOptions that Docker refuses is refused here too, with the path.

use std::net::IpAddr;
use std::path::Path;

use serde_json::Value;

use super::json;
use super::mounts;
use super::{ContainerConfig, CpuQuota, CreateOptionsError, Device, Network, DEVICES_MAX, PORT_BINDINGS_MAX};

/// Docker's smallest memory limit; below it a container cannot even start its runtime.
pub const MEMORY_BYTES_MIN: u64 = 6 * 1024 * 1024;
/// The CFS period used for `NanoCpus`, as Docker: 100 ms.
pub const CPU_PERIOD_US_DEFAULT: u64 = 100_000;
/// The kernel's CFS period and quota bounds: 1 ms to 1 s for the period, at least 1 ms quota.
const CPU_PERIOD_US_MIN: u64 = 1_000;
const CPU_PERIOD_US_MAX: u64 = 1_000_000;
const CPU_QUOTA_US_MIN: i64 = 1_000;
/// `NanoCpus` per whole CPU.
const NANO_CPUS_PER_CPU: i64 = 1_000_000_000;

/// The CPU keys as given; combined once all keys are read, because they constrain each other.
#[derive(Default)]
struct CpuKeys {
    nano_cpus: Option<i64>,
    quota_us: Option<i64>,
    period_us: Option<u64>,
    shares: Option<u64>,
}

/// Applies every `HostConfig` key to `config`.
pub(crate) fn apply(
    value: &Value,
    path: &str,
    volumes_dir: &Path,
    config: &mut ContainerConfig,
) -> Result<(), CreateOptionsError> {
    let map = json::object(value, path)?;
    let mut cpu = CpuKeys::default();
    for (key, field) in map {
        if field.is_null() {
            continue;
        }
        let field_path = json::child(path, key);
        let p = field_path.as_str();
        match key.as_str() {
            "Binds" => mounts::binds(field, p, volumes_dir, config)?,
            "Mounts" => mounts::mounts(field, p, volumes_dir, config)?,
            "Devices" => config.devices = devices(field, p, &mut config.unsupported)?,
            "Privileged" => config.privileged = json::boolean(field, p)?,
            "Memory" => config.memory_limit_bytes = memory(field, p)?,
            "NanoCpus" => cpu.nano_cpus = Some(json::integer(field, p)?),
            "CpuQuota" => cpu.quota_us = Some(json::integer(field, p)?),
            "CpuPeriod" => cpu.period_us = Some(json::unsigned(field, p)?),
            "CpuShares" => cpu.shares = Some(json::unsigned(field, p)?),
            "NetworkMode" => config.network = network(field, p, &mut config.unsupported)?,
            "PortBindings" => {
                config.port_bindings = port_bindings(field, p, &mut config.unsupported)?;
            }
            _ => config.unsupported.push(format!("{p}: {}", ignored_reason(key))),
        }
    }
    config.cpu_quota = cpu_quota(&cpu, path)?;
    Ok(())
}

/// Why a `HostConfig` key has no effect under tinyedge.
fn ignored_reason(key: &str) -> &'static str {
    match key {
        "RestartPolicy" => "ignored: the module's restartPolicy in the manifest governs restarts",
        "LogConfig" => "not translated: tinyedge keeps module logs itself",
        "Dns" | "DnsOptions" | "DnsSearch" | "ExtraHosts" | "Links" | "PublishAllPorts" => {
            "not translated: modules use the host network and its resolver"
        }
        _ => "not translated",
    }
}

/// `Memory` in bytes; `0` is "no limit", as in Docker.
fn memory(value: &Value, path: &str) -> Result<Option<u64>, CreateOptionsError> {
    let bytes = json::unsigned(value, path)?;
    if bytes == 0 {
        return Ok(None);
    }
    if bytes < MEMORY_BYTES_MIN {
        return Err(json::error(
            path,
            format!("{bytes} bytes is below the minimum of {MEMORY_BYTES_MIN} (6 MiB); the value is in bytes"),
        ));
    }
    Ok(Some(bytes))
}

/// Combines the CPU keys. `NanoCpus` (what `docker run --cpus` sends) becomes quota per 100 ms
/// period; Docker refuses it together with `CpuQuota`/`CpuPeriod`, and so do we. `0` is unset.
fn cpu_quota(cpu: &CpuKeys, path: &str) -> Result<Option<CpuQuota>, CreateOptionsError> {
    let nano_cpus = cpu.nano_cpus.filter(|&nano| nano != 0);
    let mut quota_us = cpu.quota_us.filter(|&quota| quota != 0);
    let mut period_us = cpu.period_us.filter(|&period| period != 0);
    if let Some(nano) = nano_cpus {
        let nano_path = json::child(path, "NanoCpus");
        if quota_us.is_some() || period_us.is_some() {
            return Err(json::error(&nano_path, "conflicts with CpuQuota/CpuPeriod: set NanoCpus or those, not both"));
        }
        // quota = CPUs × period, in i128 so no i64 input can overflow.
        let quota = i128::from(nano) * i128::from(CPU_PERIOD_US_DEFAULT) / i128::from(NANO_CPUS_PER_CPU);
        let quota = i64::try_from(quota).unwrap_or(i64::MAX);
        if nano < 0 || quota < CPU_QUOTA_US_MIN {
            return Err(json::error(
                &nano_path,
                format!("{nano} is out of range: at least 0.01 CPU (10000000) is needed"),
            ));
        }
        quota_us = Some(quota);
        period_us = Some(CPU_PERIOD_US_DEFAULT);
    }
    if let Some(quota) = quota_us {
        if quota != -1 && quota < CPU_QUOTA_US_MIN {
            return Err(json::error(
                &json::child(path, "CpuQuota"),
                format!("{quota} µs is out of range: -1 (unlimited) or at least {CPU_QUOTA_US_MIN}"),
            ));
        }
    }
    if let Some(period) = period_us {
        if !(CPU_PERIOD_US_MIN..=CPU_PERIOD_US_MAX).contains(&period) {
            return Err(json::error(
                &json::child(path, "CpuPeriod"),
                format!("{period} µs is out of range {CPU_PERIOD_US_MIN}..={CPU_PERIOD_US_MAX}"),
            ));
        }
    }
    let shares = cpu.shares.filter(|&shares| shares != 0);
    if quota_us.is_none() && period_us.is_none() && shares.is_none() {
        return Ok(None);
    }
    Ok(Some(CpuQuota { quota_us, period_us, shares }))
}

/// `NetworkMode`: `host` (or empty) and `none` are honoured; anything else runs on the host
/// network with a note, because the gateway has no container networks (see [`Network`]).
fn network(value: &Value, path: &str, unsupported: &mut Vec<String>) -> Result<Network, CreateOptionsError> {
    let mode = json::string(value, path)?;
    Ok(match mode.as_str() {
        "" | "host" => Network::Host,
        "none" => Network::None,
        _ => {
            unsupported.push(format!(
                "{path}: {} is not available (no container networks on the gateway); the module uses the host network",
                json::quote(&mode)
            ));
            Network::Host
        }
    })
}

/// `Devices`: `[{PathOnHost, PathInContainer, CgroupPermissions}]`.
fn devices(value: &Value, path: &str, unsupported: &mut Vec<String>) -> Result<Vec<Device>, CreateOptionsError> {
    let items = json::array(value, path, DEVICES_MAX)?;
    let mut devices = Vec::with_capacity(items.len());
    for (position, item) in items.iter().enumerate() {
        let item_path = json::index(path, position);
        let map = json::object(item, &item_path)?;
        let (mut host_path, mut container_path, mut permissions) = (None, None, None);
        for (key, field) in map {
            let field_path = json::child(&item_path, key);
            match (key.as_str(), field) {
                (_, Value::Null) => {}
                ("PathOnHost", _) => host_path = Some(json::absolute_path(field, &field_path)?),
                ("PathInContainer", Value::String(text)) if text.is_empty() => {}
                ("PathInContainer", _) => container_path = Some(json::absolute_path(field, &field_path)?),
                ("CgroupPermissions", _) => permissions = Some(cgroup_permissions(field, &field_path)?),
                _ => unsupported.push(format!("{field_path}: unknown key, not translated")),
            }
        }
        let host_path = host_path.ok_or_else(|| json::error(&json::child(&item_path, "PathOnHost"), "is required"))?;
        devices.push(Device {
            container_path: container_path.unwrap_or_else(|| host_path.clone()),
            host_path,
            permissions: permissions.unwrap_or_else(|| "rwm".to_owned()),
        });
    }
    Ok(devices)
}

/// A non-empty subset of `rwm` without repeats; empty means Docker's default `rwm`.
fn cgroup_permissions(value: &Value, path: &str) -> Result<String, CreateOptionsError> {
    let text = json::string(value, path)?;
    if text.is_empty() {
        return Ok("rwm".to_owned());
    }
    let valid = text.chars().all(|c| matches!(c, 'r' | 'w' | 'm'))
        && text.len() <= 3
        && !text.chars().enumerate().any(|(i, c)| text.chars().skip(i + 1).any(|d| d == c));
    if !valid {
        return Err(json::error(path, format!("expected a combination of r, w and m, got {}", json::quote(&text))));
    }
    Ok(text)
}

/// `PortBindings`: `{"8883/tcp": [{"HostIp": "", "HostPort": "8883"}]}` → `"8883/tcp->8883"`.
/// With host networking the module's own port is the host port, so a different `HostPort`
/// cannot be honoured: it is recorded, and noted in `unsupported`.
fn port_bindings(value: &Value, path: &str, unsupported: &mut Vec<String>) -> Result<Vec<String>, CreateOptionsError> {
    let map = json::object(value, path)?;
    let mut bindings = Vec::new();
    for (key, hosts) in map {
        let key_path = json::child(path, key);
        let port = container_port(key, &key_path)?;
        if hosts.is_null() {
            continue;
        }
        let number = port.split('/').next().unwrap_or_default().to_owned();
        for (position, host) in json::array(hosts, &key_path, PORT_BINDINGS_MAX)?.iter().enumerate() {
            let host_path = json::index(&key_path, position);
            let (host_ip, host_port) = host_binding(host, &host_path, unsupported)?;
            let host_port = if host_port.is_empty() { number.clone() } else { host_port };
            if host_port != number {
                unsupported.push(format!(
                    "{host_path}.HostPort: host port {} cannot be mapped with host networking; the module listens on {number}",
                    json::quote(&host_port)
                ));
            }
            let address = if host_ip.is_empty() { host_port } else { format!("{host_ip}:{host_port}") };
            if bindings.len() == PORT_BINDINGS_MAX {
                return Err(json::error(path, format!("more than {PORT_BINDINGS_MAX} port bindings")));
            }
            bindings.push(format!("{port}->{address}"));
        }
    }
    Ok(bindings)
}

/// A `PortBindings` key, `port[/protocol]`, normalised to `port/protocol` (tcp by default).
fn container_port(key: &str, path: &str) -> Result<String, CreateOptionsError> {
    let (number, protocol) = key.split_once('/').unwrap_or((key, "tcp"));
    let valid_number = number.parse::<u16>().is_ok_and(|n| n > 0) && !number.starts_with('+');
    if !valid_number || !matches!(protocol, "tcp" | "udp" | "sctp") {
        return Err(json::error(path, format!("expected \"<port 1-65535>[/tcp|udp|sctp]\", got {}", json::quote(key))));
    }
    Ok(format!("{number}/{protocol}"))
}

/// One `{HostIp, HostPort}` object, both strings as in Docker's API.
fn host_binding(
    value: &Value,
    path: &str,
    unsupported: &mut Vec<String>,
) -> Result<(String, String), CreateOptionsError> {
    let map = json::object(value, path)?;
    let (mut host_ip, mut host_port) = (String::new(), String::new());
    for (key, field) in map {
        let field_path = json::child(path, key);
        match (key.as_str(), field) {
            (_, Value::Null) => {}
            ("HostIp", _) => host_ip = host_address(field, &field_path)?,
            ("HostPort", _) => host_port = host_port_text(field, &field_path)?,
            _ => unsupported.push(format!("{field_path}: unknown key, not translated")),
        }
    }
    Ok((host_ip, host_port))
}

/// `HostIp`: empty (all addresses) or an IP address.
fn host_address(value: &Value, path: &str) -> Result<String, CreateOptionsError> {
    let text = json::string(value, path)?;
    if !text.is_empty() && text.parse::<IpAddr>().is_err() {
        return Err(json::error(path, format!("expected an IP address, got {}", json::quote(&text))));
    }
    Ok(text)
}

/// `HostPort`: empty, a port, or a range `first-last`, as Docker accepts.
fn host_port_text(value: &Value, path: &str) -> Result<String, CreateOptionsError> {
    let text = json::string(value, path)?;
    let is_port = |part: &str| part.parse::<u16>().is_ok() && part.bytes().all(|b| b.is_ascii_digit());
    let (first, last) = text.split_once('-').unwrap_or((&text, &text));
    if !(text.is_empty() || (is_port(first) && is_port(last))) {
        return Err(json::error(path, format!("expected a port or a port range, got {}", json::quote(&text))));
    }
    Ok(text)
}
