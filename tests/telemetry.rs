//! Runtime-quality telemetry against the scripted IoT Hub: with the intervals set to seconds,
//! the `ms_telemetry` metrics arrive as one message from `{device}/$edgeAgent` with IoT Edge's
//! content type, anonymised (no module, device or hub name in it), sent beside — not through —
//! the user's routes; `SendRuntimeQualityTelemetry=false` in the edgeAgent's env stops it.

mod common;

use std::time::{Duration, Instant};

use common::iothub::{tinyedge_identities, CloudIdentity, ScriptedHub};
use common::*;
use serde_json::{json, Value};

fn sections(cloud: &ScriptedHub) -> String {
    format!(
        "[upstream]\nurl = \"mqtts://localhost:{}\"\nca = \"{}\"\nbackoff_max_secs = 1\n[telemetry]\nscrape_interval_secs = 1\nupload_interval_secs = 2\n[metrics]\nlisten = \"\"\n[agent]\nenabled = false\n",
        cloud.mqtt_port,
        cloud.ca_path.display()
    )
}

fn sensor_deployment(opt_out: bool) -> String {
    let mut d: Value =
        serde_json::from_str(&deployment(&["sensor"], &[("up", "FROM /messages/modules/sensor/* INTO $upstream")]))
            .expect("deployment JSON");
    if opt_out {
        d["modulesContent"]["$edgeAgent"]["properties.desired"]["systemModules"]["edgeAgent"]["env"] =
            json!({"SendRuntimeQualityTelemetry": {"value": "false"}});
    }
    d.to_string()
}

fn diagnostics(cloud: &ScriptedHub) -> Vec<Value> {
    cloud.telemetry().into_iter().filter(|m| m["identity"] == format!("{DEVICE}/$edgeAgent")).collect()
}

fn identities() -> Vec<CloudIdentity> {
    let mut all = tinyedge_identities();
    all.push(CloudIdentity::edge_module("sensor"));
    all
}

#[test]
fn the_tagged_metrics_arrive_anonymised_from_the_edge_agent_beside_the_user_routes() {
    let cloud = ScriptedHub::start(&identities());
    let rt = Runtime::start_with(&sensor_deployment(false), "", &sections(&cloud));
    let creds = module_credentials("sensor", 3600);
    let topic = format!("devices/{DEVICE}/modules/sensor/messages/events/");
    assert!(mosquitto_pub(rt.mqtt_port, &creds, &topic, "user-1", &["-q", "1"]).status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let message = loop {
        // A message whose samples saw the sensor's traffic (the first may predate it).
        let found = diagnostics(&cloud)
            .into_iter()
            .find(|m| m["payload"].as_str().is_some_and(|p| p.contains("edgehub_messages_received_total")));
        if let Some(m) = found {
            break m;
        }
        assert!(Instant::now() < deadline, "no diagnostics arrived: {:?}\n{}", cloud.telemetry(), rt.log());
        std::thread::sleep(Duration::from_millis(200));
    };
    let text = message.to_string();
    assert!(text.contains("application/x-azureiot-edgeruntimediagnostics"), "content type: {text}");
    let payload = message["payload"].as_str().expect("utf-8 payload");
    let body: Value = serde_json::from_str(payload).expect("JSON body");
    assert_eq!(body["format"], "tinyedge-runtime-diagnostics", "{body}");
    let names: Vec<&str> =
        body["series"].as_array().expect("series").iter().filter_map(|s| s["name"].as_str()).collect();
    assert!(names.contains(&"edgehub_messages_received_total"), "{names:?}");
    for secret in ["sensor", HUB, "\"gw", "gw/", "ms_telemetry", "edge_device"] {
        assert!(!payload.contains(secret), "{secret:?} in the diagnostics: {payload}");
    }
    assert!(payload.contains("device/"), "the id label is kept in its anonymised form: {payload}");
    // The user's message went its own way, once; the diagnostics were not routed or counted.
    let users: Vec<Value> =
        cloud.telemetry().into_iter().filter(|m| m["identity"] == format!("{DEVICE}/sensor")).collect();
    assert_eq!(users.len(), 1, "{users:?}");
    let status = rt.wait_status("hub.messages_received 1", Duration::from_secs(5));
    assert!(status.lines().any(|l| l == "hub.messages_received 1"), "{status}");
}

#[test]
fn send_runtime_quality_telemetry_false_in_the_edge_agent_env_sends_nothing() {
    let cloud = ScriptedHub::start(&identities());
    let rt = Runtime::start_with(&sensor_deployment(true), "", &sections(&cloud));
    assert!(cloud.wait_connected(&format!("{DEVICE}/$edgeAgent"), Duration::from_secs(15)), "{}", rt.log());
    std::thread::sleep(Duration::from_secs(6));
    assert!(diagnostics(&cloud).is_empty(), "{:?}", diagnostics(&cloud));
    assert!(!rt.log().contains("telemetry: 1 message"), "{}", rt.log());
}
