//! The scripted IoT Hub (tests/cloud/iothub.py) proven against third-party clients, without
//! tinyedge: the unchanged Azure IoT Python SDK connects, sends telemetry, reads and patches its
//! twin, receives desired patches, answers direct methods and completes a C2D message, and a
//! wrong key is refused; a mosquitto_sub client of another identity, subscribed to the same
//! `$iothub/...` filters, sees none of those answers. The device-scope HTTPS API (openssl
//! s_client, a token from tinyedge's SAS code), its paging and a bad token, and /down and /up.
//! The SDK always connects to port 8883, so the first test listens there.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::iothub::{tinyedge_identities, CloudIdentity, ScriptedHub};
use common::*;
use serde_json::{json, Value};
use tinyedge_platform::sas;

/// A child process killed on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn b64(key: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(key).expect("base64 key")
}

#[test]
fn the_azure_iot_python_sdk_works_against_the_scripted_hub() {
    let sdk = python_sdk_path();
    require_tool("mosquitto_sub");
    let probe = CloudIdentity::edge_module("probe");
    let mut identities = tinyedge_identities();
    identities.push(probe.clone());
    let hub = ScriptedHub::start_on(&identities, 8883);

    // An observer of another identity (the edge device) subscribed to the same $iothub filters,
    // and to the leaf's C2D topic, which it may not read.
    let token = sas::generate(&format!("{HUB}/devices/{DEVICE}"), &DEVICE_KEY, unix_now() + 600);
    let observer = Command::new("mosquitto_sub")
        .args(["-h", "localhost", "-p", "8883", "-V", "mqttv311", "-v", "-q", "1", "-W", "60"])
        .arg("--cafile")
        .arg(&hub.ca_path)
        .args(["-i", DEVICE, "-u", &format!("{HUB}/{DEVICE}/?api-version=2021-04-12"), "-P", &token])
        .args(["-t", "$iothub/twin/res/#", "-t", "$iothub/methods/POST/#"])
        .args([
            "-t",
            "$iothub/twin/PATCH/properties/desired/#",
            "-t",
            &format!("devices/{LEAF}/messages/devicebound/#"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run mosquitto_sub");
    let mut observer = Killed(observer);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let observer_out = observer.0.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(observer_out).lines().map_while(Result::ok) {
            sink.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while hub.connections()["sessions"][DEVICE]["subscriptions"].as_object().map_or(0, |s| s.len()) < 3 {
        assert!(Instant::now() < deadline, "mosquitto_sub did not subscribe\n{}", hub.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let subscriptions = hub.connections()["sessions"][DEVICE]["subscriptions"].clone();
    assert_eq!(subscriptions["$iothub/twin/res/#"], 1, "{subscriptions}");
    assert!(subscriptions.get(format!("devices/{LEAF}/messages/devicebound/#")).is_none(), "{subscriptions}");

    let device_cs = format!("HostName=localhost;DeviceId={LEAF};SharedAccessKey={LEAF_KEY_B64}");
    let wrong_cs = format!("HostName=localhost;DeviceId={LEAF};SharedAccessKey={DEVICE_KEY_B64}");
    let module_cs = format!(
        "HostName={HUB};DeviceId={DEVICE};ModuleId=probe;SharedAccessKey={};GatewayHostName=localhost",
        probe.key_b64
    );
    let mut command = Command::new("python3");
    command
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cloud/sdk_selftest.py"))
        .args([&device_cs, &wrong_cs, &module_cs])
        .arg(&hub.ca_path)
        .env("PYTHONPATH", &sdk);
    let mut script = Script::spawn(command, Duration::from_secs(20));

    // A wrong key: CONNACK 5, which the SDK reports as a credential error.
    assert_eq!(script.expect("REFUSED ", &hub), "CredentialError");
    let connections = hub.connections();
    let refusal = &connections["refused_reasons"][0];
    assert_eq!((refusal["client_id"].as_str(), refusal["rc"].as_u64()), (Some(LEAF), Some(5)), "{connections}");

    // Telemetry with its property bag decoded.
    script.expect("SENT", &hub);
    let telemetry = hub.wait_telemetry(1, Duration::from_secs(5));
    let message = &telemetry[0];
    assert_eq!(message["identity"], LEAF, "{message}");
    assert_eq!(message["payload"], r#"{"temperature": 21.5}"#, "{message}");
    assert_eq!(message["qos"], 1, "{message}");
    assert_eq!(
        message["properties"],
        json!({"$.mid": "m-1", "$.ct": "application/json", "$.ce": "utf-8", "kind": "reading"}),
        "{message}"
    );

    // The twin: versions start at 1, each reported patch raises the reported version.
    let twin = json_of(&script.expect("TWIN ", &hub));
    assert_eq!(twin, json!({"desired": {"$version": 1}, "reported": {"$version": 1}}));
    let patched = json_of(&script.expect("PATCHED ", &hub));
    assert_eq!(patched["reported"], json!({"$version": 3, "battery": 87, "firmware": {"version": "1.0"}}));
    assert_eq!(hub.twin(LEAF)["reported"], patched["reported"]);

    // A module through GatewayHostName: SAS audience and username name the configured hub.
    let module_twin = json_of(&script.expect("MODULE ", &hub));
    assert_eq!(module_twin["reported"]["$version"], 1, "{module_twin}");
    let username = hub.connections()["last_username"]["gw/probe"].as_str().unwrap_or_default().to_string();
    assert!(username.starts_with(&format!("{HUB}/{DEVICE}/probe/?api-version=")), "{username}");

    // Desired patches reach the subscribed SDK with their versions (a replace as its diff).
    script.expect("READY", &hub);
    let twin = hub.patch_desired(LEAF, &json!({"interval": 5, "mode": {"a": 1}}));
    assert_eq!(twin["desired"]["$version"], 2, "{twin}");
    assert_eq!(json_of(&script.expect("DESIRED ", &hub)), json!({"$version": 2, "interval": 5, "mode": {"a": 1}}));
    hub.set_desired(LEAF, &json!({"interval": 6}));
    assert_eq!(json_of(&script.expect("DESIRED ", &hub)), json!({"$version": 3, "interval": 6, "mode": null}));

    // Direct methods: answered (any status), unanswered (504), target not connected (404).
    let (status, answer) = hub.invoke(LEAF, "echo", &json!({"x": [1, 2]}), 10);
    assert_eq!((status, answer), (200, json!({"status": 200, "payload": {"x": [1, 2]}})));
    assert_eq!(script.expect("METHOD ", &hub), r#"echo {"x": [1, 2]}"#);
    let (status, answer) = hub.invoke(LEAF, "fail", &Value::Null, 10);
    assert_eq!((status, &answer["status"]), (200, &json!(500)), "{answer}");
    let started = Instant::now();
    let (status, answer) = hub.invoke(LEAF, "silent", &json!(1), 1);
    assert_eq!(status, 504, "{answer}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let (status, answer) = hub.invoke("gw/$edgeAgent", "ping", &Value::Null, 10);
    assert_eq!(status, 404, "{answer}");

    // A C2D message with an application property, completed by the SDK's PUBACK.
    let id = hub.send_c2d(LEAF, "hello device", &[("k", "v w/x")]);
    let c2d = json_of(&script.expect("C2D ", &hub));
    assert_eq!(c2d, json!({"data": "hello device", "message_id": id, "custom_properties": {"k": "v w/x"}}));
    let deadline = Instant::now() + Duration::from_secs(5);
    while hub.c2d(LEAF)[0]["state"] != "completed" {
        assert!(Instant::now() < deadline, "C2D not completed: {}", hub.c2d(LEAF));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(hub.c2d(LEAF)[0]["delivery_count"], 1);

    let requests = hub.requests();
    let statuses: Vec<_> =
        requests.as_array().expect("list").iter().map(|r| (r["op"].clone(), r["status"].clone())).collect();
    assert!(
        statuses.contains(&(json!("GET"), json!(200))) && statuses.contains(&(json!("PATCH reported"), json!(204))),
        "{requests}"
    );

    script.send("quit");
    script.expect("BYE", &hub);

    // Every answer went to the SDK's connection only: the observer, still connected, saw nothing.
    assert!(hub.wait_connected(DEVICE, Duration::from_secs(1)), "{}", hub.log());
    let lines = || seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    assert!(lines().is_empty(), "the observer got: {:?}", lines());
    // …while it does get what is its own: a desired patch of the edge device.
    hub.patch_desired(DEVICE, &json!({"own": true}));
    let deadline = Instant::now() + Duration::from_secs(5);
    while lines().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(lines(), [r#"$iothub/twin/PATCH/properties/desired/?$version=2 {"own":true,"$version":2}"#]);
    drop(observer);
}

/// One HTTPS request to the hub's device-scope API through `openssl s_client`; (status, body).
fn https_get(hub: &ScriptedHub, path: &str, authorization: &str) -> (u16, Value) {
    let mut child = Command::new("openssl")
        .args(["s_client", "-quiet", "-ign_eof", "-verify_return_error", "-servername", "localhost"])
        .args(["-connect", &format!("127.0.0.1:{}", hub.https_port), "-CAfile"])
        .arg(&hub.ca_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run openssl s_client (./test.sh installs openssl)");
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: {authorization}\r\nConnection: close\r\n\r\n"
    );
    child.stdin.take().expect("stdin").write_all(request.as_bytes()).expect("send");
    let output = child.wait_with_output().expect("openssl output");
    let text = String::from_utf8_lossy(&output.stdout);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no HTTP answer: {text}\n{}", hub.log()));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status");
    (status, json_of(body))
}

#[test]
fn device_scope_api_and_outages() {
    let mut identities = tinyedge_identities();
    identities.push(CloudIdentity::device("elsewhere", LEAF_KEY_B64).out_of_scope());
    let hub = ScriptedHub::start(&identities);
    let edge_hub_key = tinyedge_platform::identity::derive_module_key(&DEVICE_KEY, "$edgeHub");
    let token = sas::generate(&format!("{HUB}/devices/{DEVICE}/modules/$edgeHub"), &edge_hub_key, unix_now() + 600);
    let path = |count: u32| {
        format!("/devices/{DEVICE}/modules/$edgeHub/devicesAndModulesInDeviceScope?deviceCount={count}&continuationToken=&api-version=2018-08-30-preview")
    };

    let (status, scope) = https_get(&hub, &path(100), &token);
    assert_eq!(status, 200, "{scope}");
    let devices = scope["devices"].as_array().expect("devices");
    let ids: Vec<_> = devices.iter().map(|d| d["deviceId"].as_str().unwrap_or_default()).collect();
    assert_eq!(ids, [DEVICE, LEAF], "{scope}");
    let (edge, leaf) = (&devices[0], &devices[1]);
    assert_eq!(edge["capabilities"]["iotEdge"], true);
    let edge_scope = edge["deviceScope"].as_str().expect("deviceScope").to_string();
    assert!(edge_scope.starts_with("ms-azure-iot-edge://gw-"), "{edge}");
    assert_eq!(leaf["capabilities"]["iotEdge"], false);
    assert_eq!((&leaf["deviceScope"], &leaf["parentScopes"]), (&json!(edge_scope), &json!([edge_scope])), "{leaf}");
    assert_eq!(leaf["authentication"]["type"], "sas");
    assert_eq!(leaf["authentication"]["symmetricKey"]["primaryKey"], LEAF_KEY_B64);
    assert_eq!(leaf["status"], "enabled");
    let modules: Vec<_> = scope["modules"].as_array().expect("modules").iter().map(|m| m["moduleId"].clone()).collect();
    assert_eq!(modules, [json!("$edgeHub"), json!("$edgeAgent")], "{scope}");
    assert_eq!(scope["continuationLink"], Value::Null);

    // Paging: one device per page, the continuation link names the next page.
    let (_, first) = https_get(&hub, &path(1), &token);
    assert_eq!(first["devices"].as_array().map(Vec::len), Some(1), "{first}");
    let link = first["continuationLink"].as_str().expect("continuationLink").to_string();
    let (status, second) = https_get(&hub, &link, &token);
    assert_eq!(status, 200, "{second}");
    assert_eq!(second["devices"][0]["deviceId"], LEAF, "{second}");
    assert_eq!(second["continuationLink"], Value::Null);

    // A token of another identity, or signed with another key: 401.
    let leaf_token = sas::generate(&format!("{HUB}/devices/{LEAF}"), &b64(LEAF_KEY_B64), unix_now() + 600);
    assert_eq!(https_get(&hub, &path(100), &leaf_token).0, 401);
    let forged = sas::generate(&format!("{HUB}/devices/{DEVICE}/modules/$edgeHub"), &DEVICE_KEY, unix_now() + 600);
    let (status, body) = https_get(&hub, &path(100), &forged);
    assert_eq!(status, 401, "{body}");

    // /down refuses TCP on the cloud's ports; /up listens again on the same ones.
    hub.down();
    assert!(TcpStream::connect(("127.0.0.1", hub.mqtt_port)).is_err(), "MQTT still accepts after /down");
    assert!(TcpStream::connect(("127.0.0.1", hub.https_port)).is_err(), "HTTPS still accepts after /down");
    hub.up();
    assert!(TcpStream::connect(("127.0.0.1", hub.mqtt_port)).is_ok(), "MQTT refuses after /up\n{}", hub.log());
    assert_eq!(https_get(&hub, &path(100), &token).0, 200);
}
