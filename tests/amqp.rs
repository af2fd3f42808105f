//! The AMQP 1.0 endpoint (`[hub] amqps`) with the unchanged Azure IoT SDK for Node.js on the
//! AMQP transport (`azure-iot-device` + `azure-iot-device-amqp`, installed by ./test.sh into
//! target/nodesdk; tests/sdk/amqp_client.js drives it): a module's output reaches an MQTT
//! module's input through a route with its properties, a leaf device's telemetry is routed to
//! `$upstream`, a bad key is refused.

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

    fn say(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").expect("write to node");
    }
}

impl Drop for NodeClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_runtime(routes: &[(&str, &str)]) -> (Runtime, u16) {
    let port = free_port();
    let rt = Runtime::start(&deployment(&["sender", "receiver"], routes), &format!("amqps = \"127.0.0.1:{port}\""));
    assert!(wait_listening(&[port]), "no AMQP listener\n{}", rt.log());
    (rt, port)
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
