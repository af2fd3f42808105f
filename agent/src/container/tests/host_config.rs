//! `HostConfig` translation: mounts, devices, privileges, resources, network mode and ports.

use super::super::*;
use super::{fails, has_unsupported, ok, strings, VOLUMES};

#[test]
fn binds_are_read_write_unless_ro() {
    let config = ok(r#"{"HostConfig":{"Binds":["/srv/a:/a","/srv/b:/b:ro","/srv/c:/c:rw,z"]}}"#);
    let read_only: Vec<bool> = config.mounts.iter().map(|m| m.read_only).collect();
    assert_eq!(read_only, vec![false, true, false]);
    assert_eq!(
        config.mounts[1],
        Mount { source: "/srv/b".into(), target: "/b".into(), read_only: true, kind: MountKind::Bind }
    );
    assert!(has_unsupported(&config, "HostConfig.Binds[2]"));
}

#[test]
fn bind_with_a_volume_name_is_a_volume_under_the_volumes_dir() {
    let config = ok(r#"{"HostConfig":{"Binds":["edgehub-store:/tmp/edgeHub"]}}"#);
    assert_eq!(config.mounts[0].kind, MountKind::Volume);
    assert_eq!(config.mounts[0].source, format!("{VOLUMES}/edgehub-store"));
}

#[test]
fn mounts_of_each_type_are_translated() {
    let config = ok(r#"{"HostConfig":{"Mounts":[
        {"Type":"bind","Source":"/etc/app","Target":"/config","ReadOnly":true},
        {"Type":"volume","Source":"data","Target":"/data"},
        {"Type":"tmpfs","Target":"/scratch","TmpfsOptions":{"SizeBytes":1048576}}]}}"#);
    assert_eq!(
        config.mounts,
        vec![
            Mount { source: "/etc/app".into(), target: "/config".into(), read_only: true, kind: MountKind::Bind },
            Mount {
                source: format!("{VOLUMES}/data"),
                target: "/data".into(),
                read_only: false,
                kind: MountKind::Volume
            },
            Mount { source: "tmpfs".into(), target: "/scratch".into(), read_only: false, kind: MountKind::Tmpfs },
        ]
    );
    assert!(has_unsupported(&config, "HostConfig.Mounts[2].TmpfsOptions"));
}

#[test]
fn devices_default_container_path_and_permissions() {
    let config = ok(r#"{"HostConfig":{"Devices":[
        {"PathOnHost":"/dev/ttyUSB0","PathInContainer":"/dev/serial","CgroupPermissions":"rw"},
        {"PathOnHost":"/dev/i2c-1"}]}}"#);
    assert_eq!(
        config.devices,
        vec![
            Device { host_path: "/dev/ttyUSB0".into(), container_path: "/dev/serial".into(), permissions: "rw".into() },
            Device { host_path: "/dev/i2c-1".into(), container_path: "/dev/i2c-1".into(), permissions: "rwm".into() },
        ]
    );
}

#[test]
fn privileged_is_taken() {
    assert!(ok(r#"{"HostConfig":{"Privileged":true}}"#).privileged);
    assert!(!ok(r#"{"HostConfig":{"Privileged":false}}"#).privileged);
}

#[test]
fn memory_is_bytes_and_zero_is_no_limit() {
    assert_eq!(ok(r#"{"HostConfig":{"Memory":268435456}}"#).memory_limit_bytes, Some(268_435_456));
    assert_eq!(ok(r#"{"HostConfig":{"Memory":0}}"#).memory_limit_bytes, None);
    assert_eq!(fails(r#"{"HostConfig":{"Memory":1024}}"#).path, "HostConfig.Memory");
}

#[test]
fn nano_cpus_become_quota_per_100ms_period() {
    let config = ok(r#"{"HostConfig":{"NanoCpus":1500000000}}"#);
    let expected = CpuQuota { quota_us: Some(150_000), period_us: Some(100_000), shares: None };
    assert_eq!(config.cpu_quota, Some(expected));
    assert_eq!(fails(r#"{"HostConfig":{"NanoCpus":5}}"#).path, "HostConfig.NanoCpus");
    let conflict = fails(r#"{"HostConfig":{"NanoCpus":1000000000,"CpuQuota":50000}}"#);
    assert_eq!(conflict.path, "HostConfig.NanoCpus");
}

#[test]
fn cpu_shares_and_explicit_quota_are_taken() {
    let config = ok(r#"{"HostConfig":{"CpuShares":512}}"#);
    assert_eq!(config.cpu_quota, Some(CpuQuota { quota_us: None, period_us: None, shares: Some(512) }));
    let config = ok(r#"{"HostConfig":{"CpuQuota":50000,"CpuPeriod":100000}}"#);
    assert_eq!(config.cpu_quota, Some(CpuQuota { quota_us: Some(50_000), period_us: Some(100_000), shares: None }));
    assert_eq!(ok(r#"{"HostConfig":{"CpuShares":0}}"#).cpu_quota, None);
}

#[test]
fn network_mode_defaults_to_host_and_none_is_honoured() {
    assert_eq!(ok("{}").network, Network::Host);
    assert_eq!(ok(r#"{"HostConfig":{"NetworkMode":"host"}}"#).network, Network::Host);
    assert_eq!(ok(r#"{"HostConfig":{"NetworkMode":"none"}}"#).network, Network::None);
}

#[test]
fn unsupported_network_mode_runs_on_host_and_is_reported() {
    for mode in ["azure-iot-edge", "bridge", "my-net"] {
        let config = ok(&format!(r#"{{"HostConfig":{{"NetworkMode":"{mode}"}}}}"#));
        assert_eq!(config.network, Network::Host);
        assert!(has_unsupported(&config, "HostConfig.NetworkMode"), "{mode}");
    }
}

#[test]
fn port_bindings_are_recorded() {
    let config = ok(
        r#"{"HostConfig":{"PortBindings":{"8883/tcp":[{"HostPort":"8883"}],"53":[{"HostIp":"127.0.0.1","HostPort":""}],"5000/udp":null}}}"#,
    );
    assert_eq!(config.port_bindings, strings(&["53/tcp->127.0.0.1:53", "8883/tcp->8883"]));
    assert!(config.unsupported.is_empty(), "{:?}", config.unsupported);
}

#[test]
fn port_binding_to_another_host_port_is_recorded_and_reported() {
    let config = ok(r#"{"HostConfig":{"PortBindings":{"80/tcp":[{"HostPort":"8080"}]}}}"#);
    assert_eq!(config.port_bindings, strings(&["80/tcp->8080"]));
    assert!(has_unsupported(&config, "HostConfig.PortBindings.80/tcp[0].HostPort"));
}
