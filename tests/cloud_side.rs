//! The cloud side (`[upstream] protocol = "iothub"`) against the scripted IoT Hub
//! (tests/cloud/iothub.py, on the amqtt broker library), with the unchanged Azure IoT Python SDK
//! as a module and as a leaf device: desired properties set in the cloud reach the module,
//! reported properties reach the cloud (also when made offline, across a restart), a short
//! outage with a desired change during it ends in sync, cloud methods are answered (404 when
//! the module is gone), C2D messages reach the leaf device and are completed, every identity
//! has its own upstream connection, and a cloud that sends garbage is refused without harm.
//! The SDK connects to GatewayHostName:8883, so the tests of this file take one lock.

mod common;

use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::iothub::{tinyedge_identities, CloudIdentity, ScriptedHub};
use common::*;
use serde_json::{json, Value};

static FIXED_PORTS: Mutex<()> = Mutex::new(());

/// Runs `tinyedge` with MQTTS on 8883 (where the SDK connects) and `[upstream]` at `cloud`.
fn runtime(cloud: &ScriptedHub, deployment_json: &str) -> Runtime {
    let upstream = format!(
        "[upstream]\nurl = \"mqtts://localhost:{}\"\nca = \"{}\"\nbackoff_max_secs = 1\n[agent]\nenabled = false\n",
        cloud.mqtt_port,
        cloud.ca_path.display()
    );
    Runtime::start_on_8883(deployment_json, "", &upstream)
}

fn identities() -> Vec<CloudIdentity> {
    let mut all = tinyedge_identities();
    all.push(CloudIdentity::edge_module("twinmod"));
    all
}

/// An SDK client (tests/sdk/cloud_client.py) of the runtime as identity `id`, started and
/// waited for (`READY`).
fn client(kind: &str, rt: &Runtime, id: &str) -> Script {
    let sdk = python_sdk_path();
    let out = rt.cli(&["identity", "connection-string", id]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let connection_string = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let mut command = Command::new("python3");
    command
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/cloud_client.py"))
        .args([kind, connection_string.as_str()])
        .arg(rt.data_dir().join("certs/edge-ca.pem"))
        .env("PYTHONPATH", &sdk);
    let script = Script::spawn(command, Duration::from_secs(30));
    script.expect("READY", rt);
    script
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn twins_and_methods_of_a_module_are_served_by_the_cloud_through_tinyedge() {
    let _ports = FIXED_PORTS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let cloud = ScriptedHub::start(&identities());
    cloud.set_desired("gw/twinmod", &json!({"interval": 5}));
    let rt = runtime(&cloud, &deployment(&["twinmod"], &[]));
    let mut module = client("module", &rt, "twinmod");

    // The module subscribed to desired patches: its link to the cloud opens, the cloud twin is
    // fetched and the module gets what the cloud holds.
    let first = json_of(&module.expect("DESIRED ", &rt));
    assert_eq!(first["interval"], 5, "{first}");
    assert!(cloud.wait_connected("gw/twinmod", Duration::from_secs(10)), "{}", cloud.log());

    // A desired property set in the cloud reaches on_twin_desired_properties_patch_received.
    cloud.patch_desired("gw/twinmod", &json!({"interval": 7, "mode": "eco"}));
    let patch = json_of(&module.expect("DESIRED ", &rt));
    assert_eq!((patch["interval"].clone(), patch["mode"].clone()), (json!(7), json!("eco")), "{patch}");
    module.send("get");
    let twin = json_of(&module.expect("TWIN ", &rt));
    assert_eq!(twin["desired"]["mode"], "eco", "{twin}");
    assert_eq!(twin["desired"]["$version"], cloud.twin("gw/twinmod")["desired"]["$version"], "the cloud's version");

    // A reported patch reaches the cloud's twin.
    module.send(r#"report {"state": "ok", "n": 1}"#);
    module.expect("REPORTED", &rt);
    let reported = eventually(Duration::from_secs(15), || {
        let twin = cloud.twin("gw/twinmod");
        (twin["reported"]["state"] == "ok").then_some(twin)
    });
    assert!(reported.is_some(), "the cloud never got the reported patch: {}\n{}", cloud.twin("gw/twinmod"), rt.log());

    // A method the cloud invokes reaches the module, and its answer goes back.
    let (status, answer) = cloud.invoke("gw/twinmod", "echo", &json!({"x": 1}), 20);
    assert_eq!(status, 200, "{answer}\n{}", rt.log());
    assert_eq!(answer["status"], 200, "{answer}");
    assert_eq!(answer["payload"], json!({"x": 1}), "{answer}");
    assert!(module.expect("METHOD ", &rt).starts_with("echo"));
    // A method the module does not answer: the caller gets 504 when its timeout runs out.
    let (status, answer) = cloud.invoke("gw/twinmod", "silent", &json!({}), 2);
    assert_eq!(status, 504, "{answer}");
    assert!(module.expect("METHOD ", &rt).starts_with("silent"));

    // Each identity with cloud traffic has a connection of its own.
    let connections = cloud.connections();
    let text = connections.to_string();
    assert!(text.contains("gw/twinmod") && text.contains("gw/$edgeHub"), "{connections}");

    // The module is gone: the cloud's call is answered 404 at once, not after a timeout.
    module.send("quit");
    module.expect("BYE", &rt);
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let (status, answer) = cloud.invoke("gw/twinmod", "echo", &json!({}), 20);
    let code = if status == 200 { answer["status"].as_u64().unwrap_or(0) } else { u64::from(status) };
    assert_eq!(code, 404, "{status} {answer}");
    assert!(started.elapsed() < Duration::from_secs(10), "404 took {:?}", started.elapsed());
}

#[test]
fn offline_reported_changes_and_desired_changes_are_synced_after_an_outage_and_a_restart() {
    let _ports = FIXED_PORTS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let cloud = ScriptedHub::start(&identities());
    cloud.set_desired("gw/twinmod", &json!({"interval": 5}));
    let mut rt = runtime(&cloud, &deployment(&["twinmod"], &[]));
    let mut module = client("module", &rt, "twinmod");
    assert_eq!(json_of(&module.expect("DESIRED ", &rt))["interval"], 5);

    // A 3-second outage with a desired change during it: the module ends with the cloud's
    // desired properties (one patch with the difference after the reconnect).
    cloud.down();
    cloud.patch_desired("gw/twinmod", &json!({"interval": 9}));
    std::thread::sleep(Duration::from_secs(3));
    cloud.up();
    let patch = json_of(&module.expect("DESIRED ", &rt));
    assert_eq!(patch["interval"], 9, "{patch}");

    // A reported patch made while the cloud is down, then tinyedge killed and started again
    // (still offline): it reaches the cloud once the cloud is back.
    cloud.down();
    module.send(r#"report {"offline": true}"#);
    module.expect("REPORTED", &rt);
    drop(module);
    rt.kill9();
    rt.start_again();
    assert!(wait_listening(&[8883]));
    std::thread::sleep(Duration::from_secs(1));
    assert_ne!(cloud.twin("gw/twinmod")["reported"]["offline"], true, "sent while the cloud was down?");
    cloud.up();
    let synced = eventually(Duration::from_secs(20), || {
        let twin = cloud.twin("gw/twinmod");
        (twin["reported"]["offline"] == true).then_some(twin)
    });
    assert!(synced.is_some(), "the offline patch never reached the cloud: {}\n{}", cloud.twin("gw/twinmod"), rt.log());
}

#[test]
fn c2d_messages_reach_the_leaf_device_and_are_completed_also_when_sent_while_it_was_away() {
    let _ports = FIXED_PORTS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let cloud = ScriptedHub::start(&identities());
    let rt = runtime(&cloud, &deployment(&[], &[("up", "FROM /messages/* INTO $upstream")]));
    let mut leaf = client("device", &rt, LEAF);
    assert!(cloud.wait_connected(LEAF, Duration::from_secs(10)), "{}\n{}", cloud.log(), rt.log());
    std::thread::sleep(Duration::from_millis(500));
    cloud.send_c2d(LEAF, "hello leaf", &[("kind", "greeting")]);
    let message = json_of(&leaf.expect("C2D ", &rt));
    assert_eq!(message["data"], "hello leaf", "{message}");
    assert_eq!(message["properties"]["kind"], "greeting", "{message}");
    let completed = eventually(Duration::from_secs(10), || {
        let all = cloud.c2d(LEAF);
        (all.to_string().contains("completed")).then_some(all)
    });
    assert!(completed.is_some(), "not completed in the cloud: {}", cloud.c2d(LEAF));

    // The device sends telemetry and goes away at once (its upstream link may still have it in
    // flight); two messages wait in the cloud; it comes back and gets both, in order.
    leaf.send("send bye");
    leaf.expect("SENT", &rt);
    drop(leaf);
    std::thread::sleep(Duration::from_secs(1));
    cloud.send_c2d(LEAF, "first", &[]);
    cloud.send_c2d(LEAF, "second", &[]);
    std::thread::sleep(Duration::from_secs(1));
    let leaf = client("device", &rt, LEAF);
    let first = json_of(&leaf.expect("C2D ", &rt));
    let second = json_of(&leaf.expect("C2D ", &rt));
    assert_eq!((first["data"].clone(), second["data"].clone()), (json!("first"), json!("second")));
    let done = eventually(Duration::from_secs(10), || {
        let all = cloud.c2d(LEAF);
        (all.to_string().matches("completed").count() >= 3).then_some(all)
    });
    assert!(done.is_some(), "{}", cloud.c2d(LEAF));
}

#[test]
fn a_cloud_sending_garbage_is_refused_and_nothing_breaks() {
    let _ports = FIXED_PORTS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let cloud = ScriptedHub::start(&identities());
    cloud.set_desired("gw/twinmod", &json!({"interval": 5}));
    let rt = runtime(&cloud, &deployment(&["twinmod"], &[]));
    let mut module = client("module", &rt, "twinmod");
    assert_eq!(json_of(&module.expect("DESIRED ", &rt))["interval"], 5);
    // A malformed desired push, an unknown topic and a malformed twin answer.
    cloud.fault(&json!({"desired_push": "malformed", "identity": "gw/twinmod"}));
    cloud.patch_desired("gw/twinmod", &json!({"interval": 6}));
    cloud.fault(&json!({"publish_unknown_topic": "gw/twinmod"}));
    // The hub refuses and recovers: the twin is fetched again and the module ends in sync.
    let patch = json_of(&module.expect("DESIRED ", &rt));
    assert_eq!(patch["interval"], 6, "{patch}");
    assert!(rt.wait_log("not an IoT Hub topic"), "{}", rt.log());
    // The next GET answers garbage, then an oversized twin (both refused, the local twin kept):
    // a version gap in the next push makes the hub fetch; the fetch after that succeeds.
    cloud.fault(&json!({"twin_get": "malformed", "identity": "gw/twinmod"}));
    cloud.fault(&json!({"desired_push": "gap", "identity": "gw/twinmod"}));
    cloud.patch_desired("gw/twinmod", &json!({"interval": 8}));
    assert!(rt.wait_log("is not JSON"), "{}", rt.log());
    // The cloud never answers the next reported patch: after the request timeout (20 s, as
    // edgeHub's CloudOperationTimeoutSecs) it is sent again, never lost.
    cloud.fault(&json!({"twin_patch": "drop", "identity": "gw/twinmod"}));
    module.send(r#"report {"after": "garbage"}"#);
    module.expect("REPORTED", &rt);
    let synced = eventually(Duration::from_secs(45), || {
        (cloud.twin("gw/twinmod")["reported"]["after"] == "garbage").then_some(())
    });
    assert!(
        synced.is_some(),
        "{}\n{}\nrequests: {}\ncloud log:\n{}",
        cloud.twin("gw/twinmod"),
        rt.log(),
        cloud.requests(),
        cloud.log()
    );
    // The desired change of the gap push arrives with the next successful fetch.
    cloud.patch_desired("gw/twinmod", &json!({"interval": 10}));
    let mut last = Value::Null;
    let synced = eventually(Duration::from_secs(20), || {
        module.send("get");
        last = json_of(&module.expect("TWIN ", &rt));
        (last["desired"]["interval"] == 10).then_some(())
    });
    assert!(synced.is_some(), "{last}\n{}", rt.log());
    assert!(!rt.log().contains("panicked"), "{}", rt.log());
}
