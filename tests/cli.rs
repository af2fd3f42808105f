//! The command line: config errors, connection strings, embedded defaults.

mod common;

use std::process::{Command, Output};

use common::*;

fn tinyedge(dir: &TempDir, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tinyedge"))
        .current_dir(&dir.0)
        .args(args)
        .env_remove("TINYEDGE_CONFIG")
        .output()
        .expect("run tinyedge")
}

fn config_error(config: &str) -> (i32, String) {
    let dir = TempDir::new("cli");
    std::fs::write(dir.0.join("config.toml"), config).expect("write config");
    let out = tinyedge(&dir, &["--config", "config.toml", "run"]);
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn unknown_key_is_a_one_line_error_with_exit_code_2() {
    let (code, stderr) = config_error("[hub]\nmqttt = \"127.0.0.1:1\"\n");
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("hub.mqttt"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
}

#[test]
fn bad_address_names_the_key() {
    let (code, stderr) = config_error("[hub]\nmqtt = \"localhost:http:80\"\n");
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("hub.mqtt"), "{stderr}");
}

#[test]
fn missing_deployment_names_the_file() {
    let (code, stderr) = config_error("deployment = \"nowhere.json\"\n");
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("nowhere.json"), "{stderr}");
}

#[test]
fn missing_config_file_names_the_file() {
    let dir = TempDir::new("cli");
    let out = tinyedge(&dir, &["--config", "absent.toml", "run"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("absent.toml"));
}

#[test]
fn invalid_deployment_is_refused_with_the_field_named() {
    let dir = TempDir::new("cli");
    let bad = deployment(&["m1"], &[]).replace(
        "\"restartPolicy\":\"always\",\"settings\":{\"image\":\"busybox",
        "\"restartPolicy\":\"sometimes\",\"settings\":{\"image\":\"busybox",
    );
    std::fs::write(dir.0.join("deployment.json"), bad).expect("write");
    std::fs::write(dir.0.join("config.toml"), "deployment = \"deployment.json\"\n").expect("write");
    let out = tinyedge(&dir, &["--config", "config.toml", "run"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("restartPolicy"), "{stderr}");
}

#[test]
fn unknown_command_is_a_usage_error() {
    let dir = TempDir::new("cli");
    let out = tinyedge(&dir, &["fly"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage"));
}

#[test]
fn connection_string_of_a_module_carries_its_derived_key() {
    let dir = TempDir::new("cli");
    std::fs::write(dir.0.join("deployment.json"), deployment(&["filter"], &[])).expect("write");
    std::fs::write(
        dir.0.join("config.toml"),
        format!("hostname = \"gateway.local\"\niothub_hostname = \"{HUB}\"\ndevice_id = \"{DEVICE}\"\ndevice_key = \"{DEVICE_KEY_B64}\"\ndeployment = \"deployment.json\"\n[[devices]]\nid = \"{LEAF}\"\nkey = \"{LEAF_KEY_B64}\"\n"),
    )
    .expect("write");
    let out = tinyedge(&dir, &["--config", "config.toml", "identity", "connection-string", "filter"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    use base64::Engine as _;
    let key = base64::engine::general_purpose::STANDARD
        .encode(tinyedge_platform::identity::derive_module_key(&DEVICE_KEY, "filter"));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("HostName={HUB};DeviceId={DEVICE};ModuleId=filter;SharedAccessKey={key};GatewayHostName=gateway.local")
    );
    let out = tinyedge(&dir, &["--config", "config.toml", "identity", "connection-string", LEAF]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("HostName={HUB};DeviceId={LEAF};SharedAccessKey={LEAF_KEY_B64};GatewayHostName=gateway.local")
    );
    let out = tinyedge(&dir, &["--config", "config.toml", "identity", "connection-string", "nobody"]);
    assert_eq!(out.status.code(), Some(2));
}
