//! Twins and direct methods with the unchanged Azure IoT Python SDK, as modules from connection
//! strings and from `create_from_edge_environment`: module twins from the deployment, reported patches, desired patches after a redeploy, a leaf device's twin, methods
//! from `tinyedge invoke` and from another module's `invoke_method()` (the method HTTP API), and
//! twins surviving a restart. The SDK always connects to GatewayHostName:8883 and invokes
//! methods on GatewayHostName:443, so the tests of this file take one lock.

mod common;

use std::process::{Child, Command};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

static FIXED_PORTS: Mutex<()> = Mutex::new(());

/// A deployment with modules `twinmod` (desired properties `desired`) and `caller`.
fn twin_deployment(desired: &Value) -> String {
    let base: Value = serde_json::from_str(&deployment(&["twinmod", "caller"], &[])).expect("deployment JSON");
    let mut document = base;
    document["modulesContent"]["twinmod"] = json!({ "properties.desired": desired });
    document["modulesContent"]["caller"] = json!({ "properties.desired": {"role": "caller"} });
    document.to_string()
}

/// A running `tinyedge run`, killed on drop (also when an assertion fails).
struct Hub {
    dir: Option<TempDir>,
    child: Child,
    log: std::path::PathBuf,
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Hub {
    fn start(dir: TempDir) -> Hub {
        let log = dir.0.join("tinyedge.log");
        let child = Command::new(env!("CARGO_BIN_EXE_tinyedge"))
            .arg("--config")
            .arg(dir.0.join("config.toml"))
            .arg("run")
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start tinyedge");
        let hub = Hub { dir: Some(dir), child, log };
        assert!(wait_listening(&[8883, 443]), "tinyedge did not listen on 127.0.0.1:8883 and :443\n{}", hub.log());
        hub
    }

    fn cli(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_tinyedge"))
            .arg("--config")
            .arg(self.dir().join("config.toml"))
            .args(args)
            .output()
            .expect("tinyedge CLI");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }

    fn dir(&self) -> &std::path::Path {
        &self.dir.as_ref().expect("running").0
    }

    fn stop(mut self) -> TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.dir.take().expect("running")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn config(dir: &TempDir) {
    std::fs::write(
        dir.0.join("config.toml"),
        format!(
            "hostname = \"localhost\"\niothub_hostname = \"{HUB}\"\ndevice_id = \"{DEVICE}\"\ndevice_key = \"{DEVICE_KEY_B64}\"\ndata_dir = \"data\"\ndeployment = \"deployment.json\"\nlog_level = \"debug\"\n[hub]\nmqtt = \"\"\nmqtts = \"127.0.0.1:8883\"\nhttps = \"127.0.0.1:443\"\n[[devices]]\nid = \"{LEAF}\"\nkey = \"{LEAF_KEY_B64}\"\n[agent]\ncontainerd = \"{}/no-containerd.sock\"\n",
            dir.0.display()
        ),
    )
    .expect("write config");
}

impl ShowsLog for Hub {
    fn shown_log(&self) -> String {
        self.log()
    }
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn python_sdk_modules_and_a_leaf_device_use_twins_and_direct_methods() {
    let _ports = FIXED_PORTS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let sdk = python_sdk_path();
    let dir = TempDir::new("twins");
    config(&dir);
    std::fs::write(dir.0.join("deployment.json"), twin_deployment(&json!({"interval": 5, "mode": "fast"})))
        .expect("write deployment");
    let hub = Hub::start(dir);
    let connection_string = |id: &str| {
        let (ok, text) = hub.cli(&["identity", "connection-string", id]);
        assert!(ok, "{text}");
        text.trim().to_string()
    };
    let (twin_cs, leaf_cs) = (connection_string("twinmod"), connection_string(LEAF));
    // The agent runs (it serves the deployment's modules their workload API sockets) but has
    // no containerd here: the SDK clients play the modules from the host.
    let socket = hub.dir().join("data/agent/workload/caller/workload.sock");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut command = Command::new("python3");
    command
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/twins_methods.py"))
        .args([twin_cs.as_str(), "caller", leaf_cs.as_str()])
        .arg(hub.dir().join("data/certs/edge-ca.pem"))
        .arg(hub.dir().join("data"))
        .args([DEVICE, HUB])
        .env("PYTHONPATH", &sdk);
    let mut script = Script::spawn(command, Duration::from_secs(60));

    // get_twin() returns the deployment's desired properties at once.
    let got = json_of(&script.expect("GOT ", &hub));
    assert_eq!(got["desired"]["interval"], 5, "{got}");
    assert_eq!(got["desired"]["mode"], "fast", "{got}");
    let desired_version = got["desired"]["$version"].as_u64().expect("desired $version");
    let reported_version = got["reported"]["$version"].as_u64().expect("reported $version");
    // Two merge patches (null deletes), then get_twin() shows the merge and a higher version.
    let patched = json_of(&script.expect("PATCHED ", &hub));
    assert_eq!(patched["reported"]["state"], "ready", "{patched}");
    assert_eq!(patched["reported"]["count"], 2, "{patched}");
    assert_eq!(patched["reported"]["nested"], json!({"a": 1}), "{patched}");
    assert!(patched["reported"]["$version"].as_u64().expect("version") > reported_version, "{patched}");
    // `tinyedge twin show` shows the same document.
    let (ok, shown) = hub.cli(&["twin", "show", "twinmod", "--json"]);
    assert!(ok, "{shown}");
    let shown = json_of(&shown);
    assert_eq!(shown["reported"], patched["reported"]);
    assert_eq!(shown["desired"], patched["desired"]);
    // A leaf device gets and patches its own twin.
    let leaf = json_of(&script.expect("LEAF ", &hub));
    assert_eq!(leaf["reported"]["battery"], 87, "{leaf}");
    // A module made with create_from_edge_environment gets and patches its twin too.
    let caller = json_of(&script.expect("CALLER ", &hub));
    assert_eq!(caller["desired"]["role"], "caller", "{caller}");
    assert_eq!(caller["reported"]["calls"], 0, "{caller}");
    script.expect("READY", &hub);

    // A redeploy with changed desired properties fires the SDK's patch handler with the diff.
    let redeploy = hub.dir().join("redeploy.json");
    std::fs::write(&redeploy, twin_deployment(&json!({"interval": 10}))).expect("write");
    let (ok, text) = hub.cli(&["deploy", redeploy.to_str().expect("path")]);
    assert!(ok, "tinyedge deploy: {text}");
    script.send("desired");
    let patch = json_of(&script.expect("DESIRED ", &hub));
    assert_eq!(patch["interval"], 10, "{patch}");
    assert_eq!(patch["mode"], Value::Null, "a removed key comes as null: {patch}");
    assert!(patch.get("mode").is_some(), "{patch}");
    assert!(patch["$version"].as_u64().expect("patch $version") > desired_version, "{patch}");

    // Methods: from the CLI, and from another module through the method HTTP API.
    let (ok, answer) = hub.cli(&["invoke", "twinmod", "echo", "--payload", r#"{"x":1}"#]);
    assert!(ok, "tinyedge invoke: {answer}");
    let answer = json_of(answer.trim());
    assert_eq!((answer["status"].clone(), answer["payload"].clone()), (json!(200), json!({"x": 1})), "{answer}");
    script.send("invoke twinmod echo 10");
    let invoked = json_of(&script.expect("INVOKED ", &hub));
    assert_eq!(invoked, json!({"status": 200, "payload": {"hello": "world"}}));
    script.send("invoke nobody echo 10");
    let error = script.expect("INVOKE-ERROR ", &hub);
    assert!(error.contains("404"), "an unconnected target is 404: {error}");
    script.send("invoke twinmod silent 5");
    let error = script.expect("INVOKE-ERROR ", &hub);
    assert!(error.contains("504"), "a handler that does not answer is 504: {error}");
    let (ok, text) = hub.cli(&["invoke", "nobody", "echo", "--timeout", "5"]);
    assert!(!ok && text.contains("404"), "{text}");
    script.send("quit");
    let _ = script.wait();

    // After a restart the twins and their versions are the same.
    let log = hub.log();
    let dir = hub.stop();
    let hub = Hub::start(dir);
    let (ok, after) = hub.cli(&["twin", "show", "twinmod", "--json"]);
    assert!(ok, "{after}");
    let after = json_of(&after);
    assert_eq!(after["reported"], patched["reported"]);
    assert_eq!(after["desired"]["$version"], patch["$version"]);
    assert_eq!(after["desired"]["interval"], 10);
    let full_log = format!("{log}{}", hub.log());
    assert!(!full_log.contains("sig="), "a SAS signature reached the log");
    hub.stop();
}
