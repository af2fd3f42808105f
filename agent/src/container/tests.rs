//! Behaviour of [`translate`] and [`edge_environment`], one rule per test, plus a deterministic
//! garbage test (in `tests/robustness.rs`): no input panics, and every error stays one line.

use std::path::Path;
use std::time::Duration;

use super::*;

mod host_config;
mod robustness;

pub(super) const VOLUMES: &str = "/var/lib/tinyedge/volumes";

pub(super) fn ok(options: &str) -> ContainerConfig {
    match translate(options, &[], &[], Path::new(VOLUMES)) {
        Ok(config) => config,
        Err(error) => panic!("{options} failed: {error}"),
    }
}

pub(super) fn fails(options: &str) -> CreateOptionsError {
    match translate(options, &[], &[], Path::new(VOLUMES)) {
        Ok(config) => panic!("{options} translated: {config:?}"),
        Err(error) => error,
    }
}

pub(super) fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

pub(super) fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

pub(super) fn has_unsupported(config: &ContainerConfig, path: &str) -> bool {
    config.unsupported.iter().any(|entry| entry.starts_with(&format!("{path}: ")))
}

#[test]
fn empty_create_options_give_defaults() {
    for options in ["", "  \n", "{}", "null"] {
        assert_eq!(ok(options), ContainerConfig::default(), "{options:?}");
    }
    assert_eq!(ContainerConfig::default().network, Network::Host);
}

#[test]
fn env_entries_become_pairs_and_later_duplicates_win() {
    let config = ok(r#"{"Env":["A=1","B=x=y","A=2","C="]}"#);
    assert_eq!(config.env, pairs(&[("A", "2"), ("B", "x=y"), ("C", "")]));
}

#[test]
fn env_entry_without_equals_is_reported_not_applied() {
    let config = ok(r#"{"Env":["A=1","UNSETME"]}"#);
    assert_eq!(config.env, pairs(&[("A", "1")]));
    assert!(has_unsupported(&config, "Env[1]"), "{:?}", config.unsupported);
}

#[test]
fn manifest_env_overrides_create_options_env() {
    let manifest = pairs(&[("B", "manifest"), ("M", "m")]);
    let config = translate(r#"{"Env":["A=1","B=create"]}"#, &manifest, &[], Path::new(VOLUMES));
    let config = config.expect("translates");
    assert_eq!(config.env, pairs(&[("A", "1"), ("B", "manifest"), ("M", "m")]));
}

#[test]
fn iot_edge_env_overrides_manifest_and_create_options() {
    let manifest = pairs(&[("IOTEDGE_MODULEID", "spoofed"), ("M", "m")]);
    let edge = pairs(&[("IOTEDGE_MODULEID", "temp"), ("IOTEDGE_DEVICEID", "dev")]);
    let options = r#"{"Env":["IOTEDGE_DEVICEID=spoofed","A=1"]}"#;
    let config = translate(options, &manifest, &edge, Path::new(VOLUMES)).expect("translates");
    assert_eq!(config.env, pairs(&[("IOTEDGE_DEVICEID", "dev"), ("A", "1"), ("IOTEDGE_MODULEID", "temp"), ("M", "m")]));
}

#[test]
fn cmd_and_entrypoint_accept_arrays_and_single_strings() {
    let config = ok(r#"{"Entrypoint":"/bin/app","Cmd":["--port","80"]}"#);
    assert_eq!(config.entrypoint, Some(strings(&["/bin/app"])));
    assert_eq!(config.cmd, Some(strings(&["--port", "80"])));
    assert_eq!(config.args, strings(&["/bin/app", "--port", "80"]));
}

#[test]
fn cmd_alone_keeps_the_image_entrypoint() {
    let config = ok(r#"{"Cmd":"--verbose"}"#);
    assert!(config.args.is_empty(), "needs the image: {:?}", config.args);
    let image_entrypoint = strings(&["/entry"]);
    let image_cmd = strings(&["--default"]);
    assert_eq!(config.process_args(&image_entrypoint, &image_cmd), strings(&["/entry", "--verbose"]));
}

#[test]
fn entrypoint_drops_the_image_cmd_and_empty_entrypoint_clears_the_image_one() {
    let image_entrypoint = strings(&["/entry"]);
    let image_cmd = strings(&["--default"]);
    let config = ok(r#"{"Entrypoint":["/other"]}"#);
    assert_eq!(config.process_args(&image_entrypoint, &image_cmd), strings(&["/other"]));
    let cleared = ok(r#"{"Entrypoint":[""]}"#);
    assert_eq!(cleared.entrypoint, Some(Vec::new()));
    assert_eq!(cleared.process_args(&image_entrypoint, &image_cmd), strings(&["--default"]));
    assert_eq!(ok("").process_args(&image_entrypoint, &image_cmd), strings(&["/entry", "--default"]));
}

#[test]
fn working_dir_user_and_labels_are_taken() {
    let config = ok(r#"{"WorkingDir":"/app","User":"1000:1000","Labels":{"b":"2","a":"1"}}"#);
    assert_eq!(config.working_dir.as_deref(), Some("/app"));
    assert_eq!(config.user.as_deref(), Some("1000:1000"));
    assert_eq!(config.labels, pairs(&[("a", "1"), ("b", "2")]));
    let empty = ok(r#"{"WorkingDir":"","User":""}"#);
    assert_eq!((empty.working_dir, empty.user), (None, None));
}

#[test]
fn healthcheck_cmd_with_durations() {
    let config = ok(
        r#"{"Healthcheck":{"Test":["CMD","/bin/check","-q"],"Interval":10000000000,"Timeout":2000000000,"StartPeriod":5000000000,"Retries":5}}"#,
    );
    let expected = Healthcheck {
        test: HealthTest::Exec(strings(&["/bin/check", "-q"])),
        interval: Duration::from_secs(10),
        timeout: Duration::from_secs(2),
        start_period: Duration::from_secs(5),
        retries: 5,
    };
    assert_eq!(config.healthcheck, Some(expected));
}

#[test]
fn healthcheck_cmd_shell_gets_docker_defaults() {
    let config = ok(r#"{"Healthcheck":{"Test":["CMD-SHELL","curl -f localhost || exit 1"]}}"#);
    let expected = Healthcheck {
        test: HealthTest::Shell("curl -f localhost || exit 1".into()),
        interval: Duration::from_secs(30),
        timeout: Duration::from_secs(30),
        start_period: Duration::ZERO,
        retries: 3,
    };
    assert_eq!(config.healthcheck, Some(expected));
}

#[test]
fn healthcheck_none_disables_and_empty_test_is_reported() {
    let config = ok(r#"{"Healthcheck":{"Test":["NONE"]}}"#);
    assert_eq!(config.healthcheck.map(|check| check.test), Some(HealthTest::Disabled));
    let inherited = ok(r#"{"Healthcheck":{"Interval":1000000000}}"#);
    assert_eq!(inherited.healthcheck, None);
    assert!(has_unsupported(&inherited, "Healthcheck.Test"));
}
#[test]
fn unknown_and_untranslated_keys_are_reported_with_paths() {
    let config = ok(r#"{"ExposedPorts":{"80/tcp":{}},"Hostname":"x","Bogus":1,"weird.key\n":2,
        "HostConfig":{"CapAdd":["NET_ADMIN"],"LogConfig":{"Type":"json-file"},"RestartPolicy":{"Name":"always"}}}"#);
    for path in
        ["ExposedPorts", "Hostname", "Bogus", "HostConfig.CapAdd", "HostConfig.LogConfig", "HostConfig.RestartPolicy"]
    {
        assert!(has_unsupported(&config, path), "{path}: {:?}", config.unsupported);
    }
    assert!(config.unsupported.iter().any(|e| e.starts_with(r#"["weird.key\n"]: "#)), "{:?}", config.unsupported);
    assert!(config.unsupported.iter().all(|entry| !entry.contains('\n')));
}

#[test]
fn null_values_count_as_absent() {
    assert_eq!(
        ok(r#"{"Env":null,"HostConfig":{"Memory":null,"Binds":null},"Bogus":null}"#),
        ContainerConfig::default()
    );
}
/// The edgeHub createOptions of IoT Edge's quickstart deployment (reference doc §1).
#[test]
fn quickstart_edge_hub_create_options_translate() {
    let options = "{\"HostConfig\":{\"PortBindings\":{\"8883/tcp\":[{\"HostPort\":\"8883\"}],\"443/tcp\":[{\"HostPort\":\"443\"}],\"5671/tcp\":[{\"HostPort\":\"5671\"}]}}}";
    let config = ok(options);
    assert_eq!(config.port_bindings, strings(&["443/tcp->443", "5671/tcp->5671", "8883/tcp->8883"]));
    assert_eq!(config.network, Network::Host);
    assert!(config.unsupported.is_empty(), "{:?}", config.unsupported);
}

#[test]
fn edge_environment_has_the_iot_edge_names() {
    let ids = EdgeIds {
        iothub_hostname: "hub.azure-devices.net".into(),
        gateway_hostname: "gateway".into(),
        device_id: "dev".into(),
        module_id: "temp".into(),
        generation_id: "gen1".into(),
        workload_uri: "unix:///var/run/iotedge/workload.sock".into(),
        api_version: env::WORKLOAD_API_VERSION.into(),
        connection_string: Some("HostName=gateway;DeviceId=dev".into()),
    };
    assert_eq!(
        edge_environment(&ids),
        pairs(&[
            ("IOTEDGE_IOTHUBHOSTNAME", "hub.azure-devices.net"),
            ("IOTEDGE_GATEWAYHOSTNAME", "gateway"),
            ("IOTEDGE_DEVICEID", "dev"),
            ("IOTEDGE_MODULEID", "temp"),
            ("IOTEDGE_MODULEGENERATIONID", "gen1"),
            ("IOTEDGE_WORKLOADURI", "unix:///var/run/iotedge/workload.sock"),
            ("IOTEDGE_APIVERSION", "2022-08-03"),
            ("IOTEDGE_AUTHSCHEME", "sasToken"),
            ("EdgeHubConnectionString", "HostName=gateway;DeviceId=dev"),
        ])
    );
    let hub = EdgeIds { gateway_hostname: String::new(), connection_string: None, ..ids };
    let names: Vec<String> = edge_environment(&hub).into_iter().map(|(name, _)| name).collect();
    assert!(!names.iter().any(|name| name == "IOTEDGE_GATEWAYHOSTNAME" || name == "EdgeHubConnectionString"));
    assert_eq!(names.len(), 7);
}
