//! Robustness of [`translate`]: every error names its path and stays one line, limits hold,
//! and deterministic garbage (random bytes, mutated valid JSON) never panics.

use std::path::Path;

use super::super::*;
use super::{fails, VOLUMES};

#[test]
fn healthcheck_errors_name_their_path() {
    assert_eq!(fails(r#"{"Healthcheck":{"Test":["RUN","x"]}}"#).path, "Healthcheck.Test");
    assert_eq!(fails(r#"{"Healthcheck":{"Test":["CMD"]}}"#).path, "Healthcheck.Test");
    assert_eq!(fails(r#"{"Healthcheck":{"Test":["NONE"],"Interval":5}}"#).path, "Healthcheck.Interval");
    assert_eq!(fails(r#"{"Healthcheck":{"Test":["NONE"],"Retries":-1}}"#).path, "Healthcheck.Retries");
}
#[test]
fn each_error_names_its_path() {
    let cases = [
        ("{", ""),
        ("[1]", ""),
        (r#"{"Env":"X=1"}"#, "Env"),
        (r#"{"Env":["=1"]}"#, "Env[0]"),
        (r#"{"Env":[1]}"#, "Env[0]"),
        (r#"{"Cmd":{"a":1}}"#, "Cmd"),
        (r#"{"Entrypoint":[true]}"#, "Entrypoint[0]"),
        (r#"{"WorkingDir":"app"}"#, "WorkingDir"),
        (r#"{"User":7}"#, "User"),
        (r#"{"Labels":{"a":1}}"#, "Labels.a"),
        (r#"{"HostConfig":[]}"#, "HostConfig"),
        (r#"{"HostConfig":{"Memory":"1g"}}"#, "HostConfig.Memory"),
        (r#"{"HostConfig":{"Memory":-1}}"#, "HostConfig.Memory"),
        (r#"{"HostConfig":{"Memory":1.5e9}}"#, "HostConfig.Memory"),
        (r#"{"HostConfig":{"Binds":["/srv/a"]}}"#, "HostConfig.Binds[0]"),
        (r#"{"HostConfig":{"Binds":["/a:/b","./data:/data"]}}"#, "HostConfig.Binds[1]"),
        (r#"{"HostConfig":{"Binds":["/a:b"]}}"#, "HostConfig.Binds[0]"),
        (r#"{"HostConfig":{"Binds":["/a:/b:ro,rw"]}}"#, "HostConfig.Binds[0]"),
        (r#"{"HostConfig":{"Binds":["/a:/b:bogus"]}}"#, "HostConfig.Binds[0]"),
        (r#"{"HostConfig":{"Mounts":[{"Type":"nfs","Target":"/x"}]}}"#, "HostConfig.Mounts[0].Type"),
        (r#"{"HostConfig":{"Mounts":[{"Type":"bind","Source":"rel","Target":"/x"}]}}"#, "HostConfig.Mounts[0].Source"),
        (r#"{"HostConfig":{"Mounts":[{"Type":"volume","Target":"/x"}]}}"#, "HostConfig.Mounts[0].Source"),
        (r#"{"HostConfig":{"Mounts":[{"Type":"tmpfs"}]}}"#, "HostConfig.Mounts[0].Target"),
        (r#"{"HostConfig":{"Devices":[{"PathInContainer":"/dev/x"}]}}"#, "HostConfig.Devices[0].PathOnHost"),
        (
            r#"{"HostConfig":{"Devices":[{"PathOnHost":"/dev/x","CgroupPermissions":"rx"}]}}"#,
            "HostConfig.Devices[0].CgroupPermissions",
        ),
        (r#"{"HostConfig":{"Privileged":"yes"}}"#, "HostConfig.Privileged"),
        (r#"{"HostConfig":{"CpuShares":-2}}"#, "HostConfig.CpuShares"),
        (r#"{"HostConfig":{"CpuPeriod":10}}"#, "HostConfig.CpuPeriod"),
        (r#"{"HostConfig":{"NetworkMode":1}}"#, "HostConfig.NetworkMode"),
        (r#"{"HostConfig":{"PortBindings":{"http":[]}}}"#, "HostConfig.PortBindings.http"),
        (r#"{"HostConfig":{"PortBindings":{"80":[{"HostPort":8080}]}}}"#, "HostConfig.PortBindings.80[0].HostPort"),
        (r#"{"HostConfig":{"PortBindings":{"80":[{"HostIp":"any"}]}}}"#, "HostConfig.PortBindings.80[0].HostIp"),
        (r#"{"Healthcheck":"CMD true"}"#, "Healthcheck"),
        ("{\"Env\":[\"A=\\u0000\"]}", "Env[0]"),
    ];
    for (options, path) in cases {
        let error = fails(options);
        assert_eq!(error.path, path, "{options}: {error}");
        let line = error.to_string();
        let prefix = if path.is_empty() { "createOptions: ".to_owned() } else { format!("createOptions.{path}: ") };
        assert!(line.starts_with(&prefix), "{line}");
        assert!(!line.contains('\n'), "{line}");
    }
}

#[test]
fn oversized_inputs_are_refused() {
    let big = format!(r#"{{"Labels":{{"a":"{}"}}}}"#, "x".repeat(CREATE_OPTIONS_BYTES_MAX));
    assert_eq!(fails(&big).path, "");
    let env: Vec<String> = (0..=ENV_ENTRIES_MAX).map(|i| format!("\"V{i}=1\"")).collect();
    assert_eq!(fails(&format!(r#"{{"Env":[{}]}}"#, env.join(","))).path, "Env");
    let binds: Vec<&str> = vec![r#""/a:/b""#; MOUNTS_MAX / 2 + 1];
    let list = binds.join(",");
    let error = fails(&format!(
        r#"{{"HostConfig":{{"Binds":[{list}],"Mounts":[{}]}}}}"#,
        vec![r#"{"Type":"tmpfs","Target":"/t"}"#; MOUNTS_MAX / 2].join(",")
    ));
    assert_eq!(error.path, "HostConfig.Mounts");
}
/// xorshift64: deterministic, so a failure reproduces.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, bound: usize) -> usize {
        usize::try_from(self.next() % bound as u64).unwrap_or(0)
    }
}

fn check_never_panics_and_stays_one_line(options: &str) {
    match translate(options, &[], &[], Path::new(VOLUMES)) {
        Ok(config) => {
            let lines = config.unsupported.iter().chain(&config.port_bindings);
            assert!(lines.into_iter().all(|line| !line.contains(['\n', '\r'])), "{options:?}");
        }
        Err(error) => {
            assert!(!error.to_string().contains(['\n', '\r']), "{options:?}: {error}");
        }
    }
}

#[test]
fn garbage_never_panics_and_errors_stay_one_line() {
    let valid = [
        r#"{"Env":["A=1"],"Cmd":["x"],"Entrypoint":"/e","WorkingDir":"/w","User":"u","Labels":{"l":"v"}}"#,
        r#"{"HostConfig":{"Binds":["/a:/b:ro","vol:/v"],"Mounts":[{"Type":"tmpfs","Target":"/t"}],"Devices":[{"PathOnHost":"/dev/x"}]}}"#,
        r#"{"HostConfig":{"Memory":268435456,"NanoCpus":1000000000,"CpuShares":2,"NetworkMode":"azure-iot-edge","PortBindings":{"80/tcp":[{"HostPort":"80"}]}}}"#,
        r#"{"Healthcheck":{"Test":["CMD-SHELL","true"],"Interval":1000000000,"Retries":2},"ExposedPorts":{"80/tcp":{}}}"#,
    ];
    let alphabet = b"{}[]:,\"\\/0123456789-.eE+ \n\tabcnrtuxyzNCMDHostPr\x00\xff";
    let mut random = Random(0x9E37_79B9_7F4A_7C15);
    for _ in 0..3000 {
        let length = random.below(96);
        let bytes: Vec<u8> = (0..length).map(|_| u8::try_from(random.next() & 0xff).unwrap_or(0)).collect();
        check_never_panics_and_stays_one_line(&String::from_utf8_lossy(&bytes));
    }
    for round in 0..6000 {
        let mut bytes = valid[round % valid.len()].as_bytes().to_vec();
        for _ in 0..=random.below(4) {
            let position = random.below(bytes.len());
            match random.below(3) {
                0 => bytes[position] = alphabet[random.below(alphabet.len())],
                1 => {
                    bytes.remove(position);
                }
                _ => bytes.insert(position, alphabet[random.below(alphabet.len())]),
            }
        }
        check_never_panics_and_stays_one_line(&String::from_utf8_lossy(&bytes));
    }
}
