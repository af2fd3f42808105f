//! The scripted IoT Hub (`tests/cloud/iothub.py`, on the third-party `amqtt` broker library)
//! started and driven from a test: IoT Hub's device-facing MQTT over TLS and the device-scope
//! HTTPS API on free loopback ports, and a JSON control channel (plain HTTP/1.1, one request
//! per connection) through which the test plays the cloud side. Killed on drop.
//!
//! ```ignore
//! let hub = ScriptedHub::start(&tinyedge_identities());
//! // … point tinyedge's [upstream] at mqtts://localhost:{hub.mqtt_port} with ca = hub.ca_path …
//! hub.patch_desired("gw/$edgeHub", &json!({"routes": {}}));
//! let (status, answer) = hub.invoke(LEAF, "reboot", &json!({}), 10);
//! assert!(hub.telemetry().iter().any(|m| m["identity"] == "gw"));
//! ```
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

use super::{TempDir, DEVICE, DEVICE_KEY, DEVICE_KEY_B64, HUB, LEAF, LEAF_KEY_B64};

/// One identity of the cloud's registry.
#[derive(Clone, Debug)]
pub struct CloudIdentity {
    pub device: String,
    pub module: Option<String>,
    /// Primary key, base64.
    pub key_b64: String,
    /// The parent edge device (leaf devices behind a gateway).
    pub parent: Option<String>,
    /// Listed by the device-scope API.
    pub scope: bool,
}

impl CloudIdentity {
    pub fn device(device: &str, key_b64: &str) -> CloudIdentity {
        CloudIdentity { device: device.into(), module: None, key_b64: key_b64.into(), parent: None, scope: true }
    }

    pub fn module(device: &str, module: &str, key_b64: &str) -> CloudIdentity {
        CloudIdentity { module: Some(module.into()), ..CloudIdentity::device(device, key_b64) }
    }

    /// A module of the test edge device with the key tinyedge derives for it.
    pub fn edge_module(module: &str) -> CloudIdentity {
        let key = tinyedge_platform::identity::derive_module_key(&DEVICE_KEY, module);
        CloudIdentity::module(DEVICE, module, &base64::engine::general_purpose::STANDARD.encode(key))
    }

    pub fn child_of(mut self, parent: &str) -> CloudIdentity {
        self.parent = Some(parent.into());
        self
    }

    /// Not listed by the device-scope API.
    pub fn out_of_scope(mut self) -> CloudIdentity {
        self.scope = false;
        self
    }

    /// `device` or `device/module`.
    pub fn id(&self) -> String {
        match &self.module {
            Some(m) => format!("{}/{m}", self.device),
            None => self.device.clone(),
        }
    }

    pub fn to_json(&self) -> Value {
        json!({"device": self.device, "module": self.module, "key": self.key_b64,
               "parent": self.parent, "scope": self.scope})
    }
}

/// The registry the test config of `tests/common` implies: the edge device `gw`, its `$edgeHub`
/// and `$edgeAgent` modules (keys derived from the device key as tinyedge does) and the leaf
/// device `sensor-7` under it, all in the edge device's scope.
pub fn tinyedge_identities() -> Vec<CloudIdentity> {
    vec![
        CloudIdentity::device(DEVICE, DEVICE_KEY_B64),
        CloudIdentity::edge_module("$edgeHub"),
        CloudIdentity::edge_module("$edgeAgent"),
        CloudIdentity::device(LEAF, LEAF_KEY_B64).child_of(DEVICE),
    ]
}

/// A running scripted IoT Hub for `HUB` with edge device `DEVICE`, killed on drop.
pub struct ScriptedHub {
    child: Child,
    pub dir: TempDir,
    /// IoT Hub's MQTT over TLS (the server certificate is for `localhost` and 127.0.0.1).
    pub mqtt_port: u16,
    /// The device-scope API over TLS (same certificate).
    pub https_port: u16,
    /// The control channel (plain HTTP on 127.0.0.1).
    pub control_port: u16,
    /// The CA that signed the server certificate (PEM).
    pub ca_path: PathBuf,
    log: Arc<Mutex<String>>,
}

fn manifest_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// Where test.sh installs amqtt (`TINYEDGE_PYCLOUD`, else `target/pycloud`); fails loudly when
/// it is missing.
pub fn pycloud_path() -> PathBuf {
    let path =
        std::env::var_os("TINYEDGE_PYCLOUD").map(PathBuf::from).unwrap_or_else(|| manifest_path("target/pycloud"));
    assert!(
        path.join("amqtt").is_dir(),
        "amqtt is not installed in {}: run ./test.sh (it pip-installs amqtt there), or set TINYEDGE_PYCLOUD",
        path.display()
    );
    path
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("openssl could not be run ({e}): run ./test.sh (it installs Debian's openssl)"));
    assert!(out.status.success(), "openssl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA and a server certificate for `localhost` / 127.0.0.1 signed by it (EC P-256), in `dir`.
fn make_certificates(dir: &Path) {
    std::fs::write(
        dir.join("ca.cnf"),
        "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = tinyedge scripted IoT Hub CA\n[v3_ca]\n\
         basicConstraints = critical, CA:TRUE\nkeyUsage = critical, keyCertSign, cRLSign\nsubjectKeyIdentifier = hash\n",
    )
    .expect("write ca.cnf");
    std::fs::write(
        dir.join("server.cnf"),
        "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = localhost\n[v3_server]\n\
         basicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature, keyEncipherment\n\
         extendedKeyUsage = serverAuth\nsubjectAltName = DNS:localhost, IP:127.0.0.1\n\
         subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n",
    )
    .expect("write server.cnf");
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let mut ca = vec!["req", "-x509", "-config", "ca.cnf", "-extensions", "v3_ca", "-days", "3"];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
    openssl(dir, &ca);
    let mut csr = vec!["req", "-new", "-config", "server.cnf"];
    csr.extend(ec);
    csr.extend(["-keyout", "server.key", "-out", "server.csr"]);
    openssl(dir, &csr);
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "3",
            "-extfile",
            "server.cnf",
            "-extensions",
            "v3_server",
            "-out",
            "server.pem",
        ],
    );
}

/// Percent-encodes an id for a URL path (`$` as %24; `/` between device and module kept).
fn path_id(id: &str) -> String {
    let mut out = String::new();
    for b in id.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

impl ScriptedHub {
    /// Starts the hub with these identities on free ports.
    pub fn start(identities: &[CloudIdentity]) -> ScriptedHub {
        ScriptedHub::start_on(identities, 0)
    }

    /// As [`ScriptedHub::start`], MQTT on `mqtt_port` (0: a free one). The Azure IoT SDKs always
    /// connect to port 8883.
    pub fn start_on(identities: &[CloudIdentity], mqtt_port: u16) -> ScriptedHub {
        let pycloud = pycloud_path();
        if mqtt_port != 0 {
            // A fixed port (8883) may still be held by a test of another binary run by hand.
            let deadline = Instant::now() + Duration::from_secs(60);
            while std::net::TcpListener::bind(("127.0.0.1", mqtt_port)).is_err() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        let dir = TempDir::new("iothub");
        make_certificates(&dir.0);
        let config = json!({
            "hostname": HUB,
            "edge_device": DEVICE,
            "identities": identities.iter().map(CloudIdentity::to_json).collect::<Vec<_>>(),
        });
        std::fs::write(dir.0.join("hub.json"), config.to_string()).expect("write hub.json");
        let mut child = Command::new("python3")
            .arg(manifest_path("tests/cloud/iothub.py"))
            .arg("--config")
            .arg(dir.0.join("hub.json"))
            .arg("--cert")
            .arg(dir.0.join("server.pem"))
            .arg("--key")
            .arg(dir.0.join("server.key"))
            .args(["--mqtt-port", &mqtt_port.to_string()])
            .env("PYTHONPATH", &pycloud)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("python3 could not be started ({e}): run ./test.sh"));
        let log = Arc::new(Mutex::new(String::new()));
        super::collect_stderr(&mut child, &log);
        let stdout = child.stdout.take().expect("stdout piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let ca_path = dir.0.join("ca.pem");
        let mut hub = ScriptedHub { child, dir, mqtt_port: 0, https_port: 0, control_port: 0, ca_path, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.starts_with("READY ") => {
                    for field in line.split_whitespace().skip(1) {
                        let (name, port) = field.split_once('=').expect("READY name=port");
                        let port: u16 = port.parse().expect("READY port");
                        match name {
                            "mqtt" => hub.mqtt_port = port,
                            "https" => hub.https_port = port,
                            "control" => hub.control_port = port,
                            _ => {}
                        }
                    }
                    return hub;
                }
                Ok(_) => continue,
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(200)); // let stderr be collected
                    panic!("the scripted IoT Hub did not start (mqtt port {mqtt_port}); its log:\n{}", hub.log());
                }
            }
        }
    }

    /// Everything the hub logged (stderr).
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// One control request; returns the HTTP status and the JSON body (Null when empty).
    pub fn request(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let mut stream = TcpStream::connect(("127.0.0.1", self.control_port))
            .unwrap_or_else(|e| panic!("control channel of the scripted IoT Hub: {e}\n{}", self.log()));
        stream.set_read_timeout(Some(Duration::from_secs(330))).expect("read timeout");
        let body = body.map(Value::to_string).unwrap_or_default();
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .expect("send a control request");
        let mut response = Vec::new();
        stream.read_to_end(&mut response).expect("read the control response");
        let response = String::from_utf8_lossy(&response);
        let (head, body) = response.split_once("\r\n\r\n").unwrap_or_else(|| panic!("bad HTTP answer: {response}"));
        let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("HTTP status");
        let value = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(body).unwrap_or_else(|e| panic!("control answer is not JSON ({e}): {body}"))
        };
        (status, value)
    }

    fn ok(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let (status, value) = self.request(method, path, body);
        assert_eq!(status, 200, "{method} {path}: {value}\n{}", self.log());
        value
    }

    /// The cloud twin of `id` (`device` or `device/module`): `{"desired":…,"reported":…}` with `$version`s.
    pub fn twin(&self, id: &str) -> Value {
        self.ok("GET", &format!("/twins/{}", path_id(id)), None)
    }

    /// Merge-patches the desired properties (pushed to the identity if connected and subscribed);
    /// returns the twin.
    pub fn patch_desired(&self, id: &str, patch: &Value) -> Value {
        self.ok("PATCH", &format!("/twins/{}/desired", path_id(id)), Some(patch))
    }

    /// Replaces the desired properties (the diff is pushed); returns the twin.
    pub fn set_desired(&self, id: &str, desired: &Value) -> Value {
        self.ok("PUT", &format!("/twins/{}/desired", path_id(id)), Some(desired))
    }

    /// Queues a C2D message for `device`; returns its message id.
    pub fn send_c2d(&self, device: &str, payload: &str, properties: &[(&str, &str)]) -> String {
        let properties: serde_json::Map<String, Value> =
            properties.iter().map(|(k, v)| (k.to_string(), Value::from(*v))).collect();
        let answer = self.ok(
            "POST",
            &format!("/c2d/{}", path_id(device)),
            Some(&json!({"payload": payload, "properties": properties})),
        );
        answer["message_id"].as_str().expect("message_id").to_string()
    }

    /// Every C2D message of `device`: `message_id`, `payload`, `properties`, `state`
    /// (`queued|delivered|completed|deadlettered`), `delivery_count`.
    pub fn c2d(&self, device: &str) -> Value {
        self.ok("GET", &format!("/c2d/{}", path_id(device)), None)
    }

    /// Invokes a direct method as IoT Hub's service API does; blocks until it completes.
    /// (200, `{"status","payload"}`), (404, …) when `id` is not connected and subscribed, (504, …)
    /// when it does not answer within `timeout_secs`.
    pub fn invoke(&self, id: &str, method: &str, payload: &Value, timeout_secs: u64) -> (u16, Value) {
        let body = json!({"methodName": method, "payload": payload, "responseTimeoutInSeconds": timeout_secs});
        self.request("POST", &format!("/methods/{}", path_id(id)), Some(&body))
    }

    /// Every telemetry message received, in arrival order: `identity`, `topic`, `properties`,
    /// `payload` (UTF-8, or base64 when `encoding` is "base64"), `qos`, `dup`, `will`.
    pub fn telemetry(&self) -> Vec<Value> {
        match self.ok("GET", "/telemetry", None) {
            Value::Array(list) => list,
            other => panic!("telemetry: {other}"),
        }
    }

    /// Waits until at least `count` telemetry messages arrived; returns them all.
    pub fn wait_telemetry(&self, count: usize, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let list = self.telemetry();
            if list.len() >= count || Instant::now() > deadline {
                return list;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every twin request devices made (`identity`, `op`, `rid`, `status`).
    pub fn requests(&self) -> Value {
        self.ok("GET", "/requests", None)
    }

    /// `connected` (ids), `sessions` (per connected id: username, subscriptions, …), `connects`,
    /// `disconnects`, `last_username` (per id), `refused` (count) and `refused_reasons`.
    pub fn connections(&self) -> Value {
        self.ok("GET", "/connections", None)
    }

    /// Waits until `id` is connected (true) or the timeout passes (false).
    pub fn wait_connected(&self, id: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let connected = self.connections()["connected"].as_array().is_some_and(|l| l.iter().any(|c| c == id));
            if connected || Instant::now() > deadline {
                return connected;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Adds an identity, or replaces the credentials and scope of an existing one.
    pub fn add_identity(&self, identity: &CloudIdentity) {
        self.ok("POST", "/identities", Some(&identity.to_json()));
    }

    /// Deletes an identity (its connection is closed, it leaves the device scope).
    pub fn remove_identity(&self, id: &str) {
        self.ok("DELETE", &format!("/identities/{}", path_id(id)), None);
    }

    /// The cloud goes away: every connection is cut and the MQTT and HTTPS ports refuse TCP.
    pub fn down(&self) {
        self.ok("POST", "/down", None);
    }

    /// The cloud comes back on the same ports.
    pub fn up(&self) {
        self.ok("POST", "/up", None);
    }

    /// One-shot misbehaviour, e.g. `{"twin_get": "malformed", "identity": "gw/$edgeHub"}`; see
    /// `Control.fault` in tests/cloud/iothub.py.
    pub fn fault(&self, fault: &Value) -> Value {
        self.ok("POST", "/faults", Some(fault))
    }
}

impl Drop for ScriptedHub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
