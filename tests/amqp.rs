//! The AMQP 1.0 endpoint (`[hub] amqps`) with the unchanged Azure IoT SDK for Node.js on the
//! AMQP transport (`azure-iot-device` + `azure-iot-device-amqp`, installed by ./test.sh into
//! target/nodesdk; tests/sdk/amqp_client.js drives it): a module's output reaches an MQTT
//! module's input through a route with its properties, an MQTT module's output and an AMQP
//! module's output reach an AMQP module's inputs, an AMQP module gets and patches its twin,
//! receives a desired patch after a redeploy and answers a direct method, a leaf device's
//! telemetry is routed to `$upstream`, a leaf device receives a C2D message from the scripted
//! IoT Hub (tests/common/iothub.rs) and it is completed there, a bad key is refused.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

use base64::Engine as _;
use common::*;
use tinyedge_platform::identity;

/// How long one SDK step (open, a send, a message) may take.
const STEP: Duration = Duration::from_secs(30);

fn node_sdk() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/nodesdk/node_modules");
    assert!(
        dir.join("azure-iot-device-amqp").is_dir(),
        "the Node SDK is missing: run ./test.sh (npm install into target/nodesdk)"
    );
    dir
}

fn module_cs(module: &str, port: u16) -> String {
    let key = base64::engine::general_purpose::STANDARD.encode(identity::derive_module_key(&DEVICE_KEY, module));
    format!("HostName={HUB};DeviceId={DEVICE};ModuleId={module};SharedAccessKey={key};GatewayHostName=localhost:{port}")
}

fn leaf_cs(key_b64: &str, port: u16) -> String {
    format!("HostName={HUB};DeviceId={LEAF};SharedAccessKey={key_b64};GatewayHostName=localhost:{port}")
}

/// One Node SDK client as a child process, its stdout lines on a channel; killed on drop.
struct NodeClient {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
}

impl NodeClient {
    fn start(rt: &Runtime, cs: &str) -> NodeClient {
        require_tool("node");
        let mut child = Command::new("node")
            .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/amqp_client.js"))
            .arg(cs)
            .arg(rt.data_dir().join("certs/edge-ca.pem"))
            .env("NODE_PATH", node_sdk())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        NodeClient { child, stdin, lines }
    }

    fn next(&self) -> String {
        self.lines.recv_timeout(STEP).unwrap_or_else(|_| "timeout".into())
    }

    /// The next line starting with `prefix` (others skipped), without the prefix.
    fn expect(&self, prefix: &str, rt: &Runtime) -> String {
        loop {
            let line = self.next();
            if let Some(rest) = line.strip_prefix(prefix) {
                return rest.to_string();
            }
            assert!(line != "timeout" && !line.starts_with("error"), "waiting for {prefix:?}: {line}\n{}", rt.log());
        }
    }

    fn say(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").expect("write to node");
    }

    /// Closes the client (its pending settlements go out first) and waits for it to exit.
    fn quit(mut self) {
        self.say("quit");
        let deadline = std::time::Instant::now() + STEP;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for NodeClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_runtime(routes: &[(&str, &str)]) -> (Runtime, u16) {
    start_deployed(&deployment(&["sender", "receiver", "mqttsender"], routes))
}

fn start_deployed(deployment_json: &str) -> (Runtime, u16) {
    let port = free_port();
    let rt = Runtime::start(deployment_json, &format!("amqps = \"127.0.0.1:{port}\""));
    assert!(wait_listening(&[port]), "no AMQP listener\n{}", rt.log());
    (rt, port)
}

/// The deployment with module `sender`'s desired properties `desired`.
fn twin_deployment(desired: &serde_json::Value) -> String {
    let base = deployment(&["sender", "receiver"], &[]);
    let mut document: serde_json::Value = serde_json::from_str(&base).expect("deployment JSON");
    document["modulesContent"]["sender"] = serde_json::json!({ "properties.desired": desired });
    document.to_string()
}

fn json_of(text: &str) -> serde_json::Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn mqtt_and_amqp_outputs_reach_an_amqp_module_input_with_their_properties() {
    let (rt, port) = start_runtime(&[
        (
            "m2a",
            "FROM /messages/modules/mqttsender/outputs/o1 INTO BrokeredEndpoint(\"/modules/receiver/inputs/fromMqtt\")",
        ),
        (
            "a2a",
            "FROM /messages/modules/sender/outputs/out1 INTO BrokeredEndpoint(\"/modules/receiver/inputs/fromAmqp\")",
        ),
    ]);
    let mut receiver = NodeClient::start(&rt, &module_cs("receiver", port));
    assert_eq!(receiver.next(), "open", "{}", rt.log());
    receiver.say("inputs");
    assert_eq!(receiver.next(), "ready", "{}", rt.log());

    // MQTT → AMQP: mosquitto_pub as module mqttsender's output o1, with a property bag.
    let topic = "devices/gw/modules/mqttsender/messages/events/%24.mid=mq1&%24.ct=text%2Fplain&color=red&%24.on=o1";
    let out = mosquitto_pub(rt.mqtt_port, &module_credentials("mqttsender", 3600), topic, "from-mqtt", &["-q", "1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let line = receiver.expect("input ", &rt);
    let (input, rest) = line.split_once(' ').expect("input name");
    assert_eq!(input, "fromMqtt", "{line}");
    let (body, props) = rest.split_once(' ').expect("body");
    assert_eq!(body, "from-mqtt", "{line}");
    let props = json_of(props);
    assert_eq!(props["$.mid"], "mq1", "{props}");
    assert_eq!(props["$.ct"], "text/plain", "{props}");
    assert_eq!(props["color"], "red", "{props}");

    // AMQP → AMQP: the Node SDK module sender's output out1.
    let mut sender = NodeClient::start(&rt, &module_cs("sender", port));
    assert_eq!(sender.next(), "open", "{}", rt.log());
    for n in 0..3 {
        sender.say(&format!("output out1 {{\"n\":{n}}}"));
        assert_eq!(sender.next(), "sent", "{}", rt.log());
    }
    for n in 0..3 {
        let line = receiver.expect("input ", &rt);
        let want = format!("fromAmqp {{\"n\":{n}}} ");
        assert!(line.starts_with(&want), "{line} (wanted {want})");
        let props = json_of(&line[want.len()..]);
        assert_eq!(props["$.mid"], format!("m-{{\"n\":{n}}}"), "{props}");
        assert_eq!(props["$.ct"], "application/json", "{props}");
        assert_eq!(props["k"], "v", "{props}");
    }
    // Accepted inputs commit the checkpoint: nothing is sent again to a new connection.
    receiver.quit();
    let receiver = NodeClient::start(&rt, &module_cs("receiver", port));
    assert_eq!(receiver.next(), "open", "{}", rt.log());
    let mut receiver = receiver;
    receiver.say("inputs");
    assert_eq!(receiver.next(), "ready", "{}", rt.log());
    let again = receiver.lines.recv_timeout(Duration::from_secs(3));
    assert!(again.is_err(), "sent again after it was accepted: {again:?}\n{}", rt.log());
}

#[test]
fn an_amqp_module_uses_its_twin_and_answers_a_direct_method() {
    let (rt, port) = start_deployed(&twin_deployment(&serde_json::json!({"interval": 5})));
    let mut module = NodeClient::start(&rt, &module_cs("sender", port));
    assert_eq!(module.next(), "open", "{}", rt.log());
    module.say("twin");
    let twin = json_of(&module.expect("twin ", &rt));
    assert_eq!(twin["desired"]["interval"], 5, "{twin}");
    let version = twin["desired"]["$version"].as_u64().expect("desired $version");

    module.say("report {\"temp\":21}");
    module.expect("reported", &rt);
    let shown = rt.cli(&["twin", "show", "sender", "--json"]);
    let shown = json_of(&String::from_utf8_lossy(&shown.stdout));
    assert_eq!(shown["reported"]["temp"], 21, "{shown}");

    // A redeploy with new desired properties reaches the module as a patch.
    let redeploy = rt.data_dir().join("redeploy.json");
    std::fs::write(&redeploy, twin_deployment(&serde_json::json!({"interval": 10}))).expect("write");
    let out = rt.cli(&["deploy", redeploy.to_str().expect("path")]);
    assert!(out.status.success(), "deploy: {}", String::from_utf8_lossy(&out.stderr));
    let patch = loop {
        let patch = json_of(&module.expect("desired ", &rt));
        if patch["interval"] == 10 {
            break patch;
        }
    };
    assert!(patch["$version"].as_u64().expect("patch $version") > version, "{patch}");

    // A direct method from `tinyedge invoke`, answered by the SDK's handler.
    module.say("method echo");
    assert_eq!(module.next(), "ready", "{}", rt.log());
    let answer = eventually(STEP, || {
        let out = rt.cli(&["invoke", "sender", "echo", "--payload", "{\"x\":1}"]);
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    })
    .unwrap_or_else(|| panic!("invoke never answered\n{}", rt.log()));
    assert_eq!(module.expect("method echo ", &rt), "{\"x\":1}");
    assert!(answer.contains("200") && answer.contains("echo"), "{answer}");
}

#[test]
fn module_output_over_amqp_reaches_an_mqtt_module_with_its_properties() {
    let (rt, port) = start_runtime(&[(
        "r1",
        "FROM /messages/modules/sender/outputs/out1 WHERE k = 'v' INTO BrokeredEndpoint(\"/modules/receiver/inputs/in1\")",
    )]);
    let sub = Sub::start(
        rt.mqtt_port,
        &module_credentials("receiver", 3600),
        "devices/gw/modules/receiver/inputs/#",
        1,
        40,
        &["-q", "1"],
    );
    settle();
    let mut sender = NodeClient::start(&rt, &module_cs("sender", port));
    assert_eq!(sender.next(), "open", "{}", rt.log());
    sender.say("output out1 {\"t\":1}");
    assert_eq!(sender.next(), "sent", "{}", rt.log());
    let (_, lines, err) = sub.finish();
    let line = lines.first().unwrap_or_else(|| panic!("nothing received: {err}\n{}", rt.log()));
    assert!(line.starts_with("devices/gw/modules/receiver/inputs/in1/"), "{line}");
    for property in
        ["%24.mid=m-%7B%22t%22%3A1%7D", "%24.ct=application%2Fjson", "%24.ce=utf-8", "k=v", "%24.cmid=sender"]
    {
        assert!(line.contains(property), "{property} missing in {line}");
    }
    assert!(line.ends_with(" {\"t\":1}"), "{line}");
}

#[test]
fn leaf_device_telemetry_over_amqp_reaches_upstream() {
    let (rt, port) = start_runtime(&[("up", "FROM /messages/* WHERE $connectionDeviceId = 'sensor-7' INTO $upstream")]);
    let mut leaf = NodeClient::start(&rt, &leaf_cs(LEAF_KEY_B64, port));
    assert_eq!(leaf.next(), "open", "{}", rt.log());
    for n in 0..3 {
        leaf.say(&format!("event {n}"));
        assert_eq!(leaf.next(), "sent", "{}", rt.log());
    }
    // No cloud is configured: the three messages wait in the store for $upstream.
    let status = rt.wait_status("store.records_stored 3", Duration::from_secs(20));
    assert!(status.contains("store.records_stored 3"), "{status}\n{}", rt.log());
    assert!(rt.log().contains("sensor-7 authenticated over AMQP"), "{}", rt.log());
}

#[test]
fn a_bad_key_is_refused() {
    let (rt, port) = start_runtime(&[]);
    let wrong = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    let leaf = NodeClient::start(&rt, &leaf_cs(&wrong, port));
    let first = leaf.next();
    assert!(first.starts_with("error"), "{first}\n{}", rt.log());
    assert!(rt.wait_log("put-token for sensor-7 refused"), "{}", rt.log());
}

#[test]
fn a_leaf_device_on_amqp_receives_a_c2d_message_and_completes_it() {
    use common::iothub::{tinyedge_identities, ScriptedHub};
    let cloud = ScriptedHub::start(&tinyedge_identities());
    let port = free_port();
    let upstream = format!(
        "[upstream]\nurl = \"mqtts://localhost:{}\"\nca = \"{}\"\nbackoff_max_secs = 1\n[agent]\nenabled = false\n",
        cloud.mqtt_port,
        cloud.ca_path.display()
    );
    let rt = Runtime::start_prepared(
        &deployment(&[], &[("up", "FROM /messages/* INTO $upstream")]),
        &format!("amqps = \"127.0.0.1:{port}\""),
        &upstream,
        |_| {},
        &[],
    );
    assert!(wait_listening(&[port]), "no AMQP listener\n{}", rt.log());
    let mut leaf = NodeClient::start(&rt, &leaf_cs(LEAF_KEY_B64, port));
    assert_eq!(leaf.next(), "open", "{}", rt.log());
    leaf.say("c2d");
    assert_eq!(leaf.next(), "ready", "{}", rt.log());
    // Attaching the C2D link subscribes the leaf: its own upstream connection opens.
    assert!(cloud.wait_connected(LEAF, STEP), "{}\n{}", cloud.log(), rt.log());
    std::thread::sleep(Duration::from_millis(500));
    cloud.send_c2d(LEAF, "hello leaf", &[("kind", "greeting")]);
    let line = leaf.expect("c2d ", &rt);
    let want = "hello leaf ";
    assert!(line.starts_with(want), "{line}");
    let props = json_of(&line[want.len()..]);
    assert_eq!(props["kind"], "greeting", "{props}");
    let completed = eventually(Duration::from_secs(10), || {
        let all = cloud.c2d(LEAF);
        all.to_string().contains("completed").then_some(all)
    });
    assert!(completed.is_some(), "not completed in the cloud: {}\n{}", cloud.c2d(LEAF), rt.log());
}

/// Debian's python3-qpid-proton (installed by ./test.sh), with the system Python.
const PROTON_PYTHON: &str = "/usr/bin/python3";

#[test]
fn a_generic_amqp_client_gets_precise_errors_and_nothing_else_is_disturbed() {
    let ok = std::process::Command::new(PROTON_PYTHON).args(["-c", "import proton"]).status();
    assert!(
        ok.is_ok_and(|s| s.success()),
        "python3-qpid-proton is missing: run ./test.sh (apt-get install python3-qpid-proton)"
    );
    let (rt, port) = start_runtime(&[]);
    // An SDK client beside it, on its own connection, keeps working throughout.
    let mut bystander = NodeClient::start(&rt, &module_cs("receiver", port));
    assert_eq!(bystander.next(), "open", "{}", rt.log());
    let token = |ttl: i64| module_credentials("sender", ttl).2;
    let out = std::process::Command::new(PROTON_PYTHON)
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/amqp_errors.py"))
        .env("PORT", port.to_string())
        .env("CA", rt.data_dir().join("certs/edge-ca.pem"))
        .env("HUB", HUB)
        .env("TOKEN", token(3600))
        .env("SHORT_TOKEN", token(3))
        .env("EXPIRED", token(-60))
        .output()
        .expect("run amqp_errors.py");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let context = format!("{stdout}\n{}\n{}", String::from_utf8_lossy(&out.stderr), rt.log());
    let result = |name: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")).map(str::to_string))
            .unwrap_or_else(|| panic!("no {name} line\n{context}"))
    };
    assert_eq!(result("put-token"), "200", "{context}");
    assert_eq!(result("unknown-address"), "amqp:not-found", "{context}");
    assert_eq!(result("unknown-node"), "amqp:not-found", "{context}");
    assert_eq!(result("other-identity"), "amqp:unauthorized-access", "{context}");
    assert_eq!(result("other-identity-inputs"), "amqp:unauthorized-access", "{context}");
    assert_eq!(result("telemetry-after"), "ok", "{context}");
    assert_eq!(result("expired-put-token"), "401", "{context}");
    assert_eq!(result("expired-attach"), "amqp:unauthorized-access", "{context}");
    assert_eq!(result("short-put-token"), "200", "{context}");
    assert_eq!(result("short-before"), "ok", "{context}");
    assert_eq!(result("short-after"), "amqp:unauthorized-access", "{context}");
    assert_eq!(result("framing-error"), "True", "{context}");
    assert_eq!(result("decode-error"), "True", "{context}");
    assert_eq!(result("bad-header"), "True", "{context}");
    assert_eq!(result("new-connection"), "ok", "{context}");
    assert!(stdout.lines().any(|l| l == "done"), "{context}");
    // The SDK client's connection was not disturbed.
    bystander.say("event still-here");
    assert_eq!(bystander.next(), "sent", "{}", rt.log());
    assert!(!rt.log().contains("panicked"), "{}", rt.log());
}

/// The Azure IoT SDKs connect to 8883: the one test here that runs the Python SDK takes it.
static FIXED_PORTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn module_output_over_amqp_reaches_a_python_sdk_module_over_mqtt() {
    let _ports = FIXED_PORTS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let port = free_port();
    let route = "FROM /messages/modules/sender/outputs/out1 INTO BrokeredEndpoint(\"/modules/receiver/inputs/in1\")";
    let rt = Runtime::start_on_8883(
        &deployment(&["sender", "receiver"], &[("r1", route)]),
        &format!("amqps = \"127.0.0.1:{port}\""),
        "[agent]\nenabled = false\n",
    );
    assert!(wait_listening(&[port]), "no AMQP listener\n{}", rt.log());
    let out = rt.cli(&["identity", "connection-string", "receiver"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut command = Command::new("python3");
    command
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/cloud_client.py"))
        .args(["module", String::from_utf8_lossy(&out.stdout).trim()])
        .arg(rt.data_dir().join("certs/edge-ca.pem"))
        .env("PYTHONPATH", python_sdk_path());
    let receiver = Script::spawn(command, STEP);
    receiver.expect("READY", &rt);
    let mut sender = NodeClient::start(&rt, &module_cs("sender", port));
    assert_eq!(sender.next(), "open", "{}", rt.log());
    sender.say("output out1 {\"t\":1}");
    assert_eq!(sender.next(), "sent", "{}", rt.log());
    let input: serde_json::Value = serde_json::from_str(&receiver.expect("INPUT ", &rt)).expect("INPUT json");
    assert_eq!(input["input"], "in1", "{input}");
    assert_eq!(input["data"], "{\"t\":1}", "{input}");
    assert_eq!(input["content_type"], "application/json", "{input}");
    assert_eq!(input["message_id"], "m-{\"t\":1}", "{input}");
}
