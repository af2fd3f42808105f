//! Tests that need the fixed ports 1883/8883: `tinyedge run` on embedded defaults, and the
//! Azure IoT Python SDK (which always connects to GatewayHostName:8883). They share one lock
//! so they never run at the same time.

mod common;

use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;

static FIXED_PORTS: Mutex<()> = Mutex::new(());

#[test]
fn runs_on_embedded_defaults_and_generates_key_and_certificates() {
    let _ports = FIXED_PORTS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = TempDir::new("defaults");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tinyedge"))
        .current_dir(&dir.0)
        .arg("run")
        .env_remove("TINYEDGE_CONFIG")
        .stderr(Stdio::null())
        .spawn()
        .expect("start");
    let listening = wait_listening(&[1883, 8883]);
    let _ = child.kill();
    let _ = child.wait();
    assert!(listening, "tinyedge run did not listen on 127.0.0.1:1883 and :8883 (is something else using them?)");
    let data = dir.0.join("tinyedge-data");
    assert!(data.join("device.key").is_file());
    let ca = std::fs::read_to_string(data.join("certs/edge-ca.pem")).expect("edge CA written");
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"));
}

#[test]
fn azure_iot_python_sdk_module_clients_route_through_the_hub() {
    let _ports = FIXED_PORTS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let sdk = python_sdk_path();
    let dir = TempDir::new("sdk");
    let route = r#"FROM /messages/modules/sender/outputs/out1 WHERE $body.temperature > 40 AND alert = 'yes' INTO BrokeredEndpoint("/modules/receiver/inputs/alerts")"#;
    std::fs::write(dir.0.join("deployment.json"), deployment(&["sender", "receiver"], &[("alerts", route)]))
        .expect("write");
    std::fs::write(
        dir.0.join("config.toml"),
        format!(
            "hostname = \"localhost\"\niothub_hostname = \"{HUB}\"\ndevice_id = \"{DEVICE}\"\ndevice_key = \"{DEVICE_KEY_B64}\"\ndata_dir = \"data\"\ndeployment = \"deployment.json\"\n[hub]\nmqtt = \"\"\nmqtts = \"127.0.0.1:8883\"\n[agent]\nenabled = false\n"
        ),
    )
    .expect("write");
    let config = dir.0.join("config.toml");
    let connection_string = |module: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_tinyedge"))
            .arg("--config")
            .arg(&config)
            .args(["identity", "connection-string", module])
            .output()
            .expect("tinyedge identity");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let (sender, receiver) = (connection_string("sender"), connection_string("receiver"));
    assert!(sender.contains("GatewayHostName=localhost"), "{sender}");
    let mut hub = Command::new(env!("CARGO_BIN_EXE_tinyedge"))
        .arg("--config")
        .arg(&config)
        .arg("run")
        .stderr(Stdio::null())
        .spawn()
        .expect("start tinyedge");
    let listening = wait_listening(&[8883]);
    let out = listening.then(|| {
        Command::new("python3")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/module_client.py"))
            .args([&sender, &receiver])
            .arg(dir.0.join("data/certs/edge-ca.pem"))
            .env("PYTHONPATH", &sdk)
            .output()
            .expect("run python3")
    });
    let _ = hub.kill();
    let _ = hub.wait();
    assert!(listening, "tinyedge did not listen on 127.0.0.1:8883");
    let out = out.expect("ran");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "SDK script failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        stdout.trim(),
        r#"input=alerts body={"temperature": 42.5} message_id=sdk-1 content_type=application/json alert=yes"#
    );
}

#[test]
fn python_sdk_create_from_edge_environment_signs_through_the_workload_api() {
    let _ports = FIXED_PORTS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let sdk = python_sdk_path();
    let dir = TempDir::new("workload");
    let route =
        r#"FROM /messages/modules/edgesource/outputs/out1 INTO BrokeredEndpoint("/modules/edgesink/inputs/in1")"#;
    std::fs::write(dir.0.join("deployment.json"), deployment(&["edgesource", "edgesink"], &[("r", route)]))
        .expect("write");
    // The agent runs (it serves the workload sockets of the deployment's modules) but has no
    // containerd here: the SDK clients play the modules from the host.
    std::fs::write(
        dir.0.join("config.toml"),
        format!(
            "hostname = \"localhost\"\niothub_hostname = \"{HUB}\"\ndevice_id = \"{DEVICE}\"\ndevice_key = \"{DEVICE_KEY_B64}\"\ndata_dir = \"data\"\ndeployment = \"deployment.json\"\n[hub]\nmqtt = \"\"\nmqtts = \"127.0.0.1:8883\"\n[agent]\ncontainerd = \"{}/no-containerd.sock\"\n",
            dir.0.display()
        ),
    )
    .expect("write");
    let mut hub = Command::new(env!("CARGO_BIN_EXE_tinyedge"))
        .arg("--config")
        .arg(dir.0.join("config.toml"))
        .arg("run")
        .stderr(Stdio::null())
        .spawn()
        .expect("start tinyedge");
    let listening = wait_listening(&[8883]);
    let socket = dir.0.join("data/agent/workload/edgesource/workload.sock");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = listening.then(|| {
        Command::new("python3")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/edge_environment.py"))
            .arg(dir.0.join("data"))
            .args([HUB, DEVICE])
            .env("PYTHONPATH", &sdk)
            .output()
            .expect("run python3")
    });
    let _ = hub.kill();
    let _ = hub.wait();
    assert!(listening, "tinyedge did not listen on 127.0.0.1:8883");
    let out = out.expect("ran");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "SDK script failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.trim(), r#"input=in1 body={"via": "workload"}"#);
}
