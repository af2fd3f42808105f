//! Test harness: starts the real `tinyedge` binary on free loopback ports with a config and a
//! deployment written by the test, and drives it with third-party clients (mosquitto_pub,
//! mosquitto_sub) and raw sockets. A missing client tool fails the test loudly.
#![allow(dead_code)]

pub mod containers;
pub mod iothub;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use mqttbytes::v4::{self, Connect, LastWill, Packet, Subscribe};
use mqttbytes::QoS;
use tinyedge_platform::{identity, sas};

pub const DEVICE: &str = "gw";
/// What tinyedge logs once it has started (after every listener is bound).
const STARTED: &str = " running as device ";
pub const HUB: &str = "testhub.azure-devices.net";
/// base64 of 32 bytes: the edge device key used by every test config.
pub const DEVICE_KEY_B64: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
pub const DEVICE_KEY: [u8; 32] = [
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30,
    31,
];
pub const LEAF: &str = "sensor-7";
pub const LEAF_KEY_B64: &str = "c2Vuc29yLTcta2V5LXNlY3JldC0xMjM0NTY3ODkwYWI=";

pub use containers::{free_port, TempDir};

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs()
}

/// Fails the test unless the named tool is on PATH.
pub fn require_tool(tool: &str) {
    let found = Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().map(|o| o.status.success());
    assert!(
        matches!(found, Ok(true)),
        "{tool} is not installed: run the test command from README.md (it installs mosquitto-clients)"
    );
}

/// A running `tinyedge run`, killed on drop. Its stderr is collected for assertions.
pub struct Runtime {
    pub child: Child,
    pub dir: TempDir,
    pub mqtt_port: u16,
    pub mqtts_port: u16,
    /// The method HTTP API (`[hub] https`), on a free port like the MQTT listeners.
    pub https_port: u16,
    pub log: Arc<Mutex<String>>,
}

/// A deployment with the given user modules and `$edgeHub` routes (name → route text).
pub fn deployment(modules: &[&str], routes: &[(&str, &str)]) -> String {
    let modules: Vec<String> = modules
        .iter()
        .map(|m| {
            format!(
                r#""{m}":{{"version":"1.0","type":"docker","status":"running","restartPolicy":"always","settings":{{"image":"busybox:latest","createOptions":""}}}}"#
            )
        })
        .collect();
    let routes: Vec<String> = routes.iter().map(|(n, r)| format!("{}:{}", json_string(n), json_string(r))).collect();
    format!(
        r#"{{"modulesContent":{{
 "$edgeAgent":{{"properties.desired":{{"schemaVersion":"1.1","runtime":{{"type":"docker","settings":{{}}}},
   "systemModules":{{"edgeAgent":{{"type":"docker","settings":{{"image":"tinyedge","createOptions":""}}}},
                    "edgeHub":{{"type":"docker","status":"running","restartPolicy":"always","settings":{{"image":"tinyedge","createOptions":""}}}}}},
   "modules":{{{}}}}}}},
 "$edgeHub":{{"properties.desired":{{"schemaVersion":"1.1","routes":{{{}}},"storeAndForwardConfiguration":{{"timeToLiveSecs":7200}}}}}}}}}}"#,
        modules.join(","),
        routes.join(",")
    )
}

pub fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl Runtime {
    /// Starts tinyedge with `extra_config` appended to a config naming the test hub, device
    /// key, free ports, a downstream device, and the deployment `deployment_json`.
    pub fn start(deployment_json: &str, extra_hub_config: &str) -> Runtime {
        Runtime::start_with(deployment_json, extra_hub_config, "[agent]\nenabled = false\n")
    }

    /// As [`Runtime::start`], with `sections` (whole TOML tables, e.g. `[agent]`) at the end.
    pub fn start_with(deployment_json: &str, extra_hub_config: &str, sections: &str) -> Runtime {
        let (dir, mqtt_port, mqtts_port, https_port) =
            Runtime::prepare_dir(deployment_json, extra_hub_config, sections);
        Runtime::spawn(dir, mqtt_port, mqtts_port, https_port)
    }

    /// A new runtime directory with `deployment.json` and a `config.toml` naming the test hub,
    /// device key, free ports (mqtt, mqtts, https, returned), a downstream device, and the
    /// extra hub keys and sections.
    fn prepare_dir(deployment_json: &str, extra_hub_config: &str, sections: &str) -> (TempDir, u16, u16, u16) {
        let dir = TempDir::new("rt");
        let mqtt_port = free_port();
        let mqtts_port = free_port();
        let https_port = free_port();
        std::fs::write(dir.0.join("deployment.json"), deployment_json).expect("write deployment");
        let config = format!(
            r#"hostname = "localhost"
iothub_hostname = "{HUB}"
device_id = "{DEVICE}"
device_key = "{DEVICE_KEY_B64}"
data_dir = "data"
deployment = "deployment.json"
log_level = "debug"
[hub]
mqtt = "127.0.0.1:{mqtt_port}"
mqtts = "127.0.0.1:{mqtts_port}"
https = "127.0.0.1:{https_port}"
{extra_hub_config}
[[devices]]
id = "{LEAF}"
key = "{LEAF_KEY_B64}"
{sections}
"#
        );
        std::fs::write(dir.0.join("config.toml"), config).expect("write config");
        (dir, mqtt_port, mqtts_port, https_port)
    }

    fn spawn(dir: TempDir, mqtt_port: u16, mqtts_port: u16, https_port: u16) -> Runtime {
        let log = Arc::new(Mutex::new(String::new()));
        let child = Runtime::spawn_child(&dir, &log);
        let mut rt = Runtime { child, dir, mqtt_port, mqtts_port, https_port, log };
        rt.wait_for_port(mqtt_port, 0);
        rt
    }

    /// Kills the runtime with SIGKILL (no chance to flush anything) and starts it again on the
    /// same config, data and ports.
    pub fn kill9_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push_str("--- killed with SIGKILL, restarting ---\n");
        self.start_again();
    }

    /// Kills the runtime with SIGKILL and leaves it down.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the runtime again after [`Runtime::kill9`].
    pub fn start_again(&mut self) {
        let started = self.log().matches(STARTED).count();
        self.child = Runtime::spawn_child(&self.dir, &self.log);
        self.wait_for_port(self.mqtt_port, started);
    }

    fn spawn_child(dir: &TempDir, log: &Arc<Mutex<String>>) -> Child {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tinyedge"))
            .arg("--config")
            .arg(dir.0.join("config.toml"))
            .arg("run")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tinyedge");
        collect_stderr(&mut child, log);
        child
    }

    /// Waits until tinyedge has started: `port` accepts connections and the log says it is
    /// running (every listener is bound by then: the MQTT port opens first, and a later
    /// listener that cannot bind stops the process). Fails with the log when the process
    /// exits first or is not up within 20 s.
    fn wait_for_port(&mut self, port: u16, started_before: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut listening = false;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                // The stderr thread may still be appending the last lines.
                std::thread::sleep(Duration::from_millis(200));
                panic!("tinyedge exited ({status}) while starting; log:\n{}", self.log());
            }
            listening = listening || TcpStream::connect(("127.0.0.1", port)).is_ok();
            if listening && self.log().matches(STARTED).count() > started_before {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("tinyedge was not up within 20 s (listening on {port}: {listening}); log:\n{}", self.log());
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Waits until the log contains `needle` (logs are written asynchronously).
    pub fn wait_log(&self, needle: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.0.join("data")
    }

    /// `tinyedge --config … ARGS` against this runtime's config.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_tinyedge"))
            .arg("--config")
            .arg(self.dir.0.join("config.toml"))
            .args(args)
            .output()
            .expect("run tinyedge")
    }

    /// Waits until `tinyedge status` shows `line` (the status file is rewritten every 2 s).
    pub fn wait_status(&self, line: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let out = String::from_utf8_lossy(&self.cli(&["status"]).stdout).into_owned();
            if out.lines().any(|l| l == line) || Instant::now() > deadline {
                return out;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// A mosquitto standing in for the cloud IoT Hub: persistence on, so a subscriber registered
/// once as a persistent QoS 1 session (`cloudsub`) gets every message published while it was
/// away, even across mosquitto restarts. Stopped on drop.
pub struct Cloud {
    pub port: u16,
    dir: TempDir,
    child: Option<Child>,
}

impl Cloud {
    /// Writes the config; the broker is not started yet (the cloud is "down").
    pub fn new() -> Cloud {
        let dir = TempDir::new("cloud");
        let port = free_port();
        std::fs::write(
            dir.0.join("mosquitto.conf"),
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\nautosave_interval 1\nmax_queued_messages 100000\nmax_inflight_messages 100\nuser root\n",
                dir.0.display()
            ),
        )
        .expect("write mosquitto.conf");
        Cloud { port, dir, child: None }
    }

    pub fn start(&mut self) {
        require_tool("mosquitto_sub");
        let mosquitto = ["mosquitto", "/usr/sbin/mosquitto"]
            .into_iter()
            .find(|m| Command::new(m).arg("-h").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok())
            .expect("mosquitto is not installed: run ./test.sh (it installs Debian's mosquitto)");
        let child = Command::new(mosquitto)
            .arg("-c")
            .arg(self.dir.0.join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "mosquitto did not listen on {}", self.port);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the broker gracefully (SIGTERM), so it saves the persistent sessions.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
    }

    /// Registers the persistent subscriber `cloudsub` on `devices/#` (QoS 1) and disconnects.
    pub fn register_subscriber(&self) {
        let status = Command::new("mosquitto_sub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-V",
                "mqttv311",
                "-c",
                "-i",
                "cloudsub",
                "-q",
                "1",
                "-t",
                "devices/#",
                "-E",
            ])
            .status()
            .expect("mosquitto_sub");
        assert!(status.success(), "registering the cloud subscriber failed");
    }

    /// Reads `topic payload` lines as `cloudsub` until `done(lines)` or `timeout`.
    pub fn collect_until(&self, timeout: Duration, done: impl Fn(&[String]) -> bool) -> Vec<String> {
        let mut child = Command::new("mosquitto_sub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-V",
                "mqttv311",
                "-c",
                "-i",
                "cloudsub",
                "-q",
                "1",
                "-t",
                "devices/#",
                "-v",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto_sub");
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + timeout;
        let mut lines = Vec::new();
        while !done(&lines) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match rx.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok(line) => lines.push(line),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        lines
    }
}

impl Drop for Cloud {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Runtime {
    /// Stops the runtime, and fails the test if any line it logged (at any level; the tests run
    /// it at debug) holds a SAS signature: secrets never reach the log.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            return;
        }
        let log = self.log.lock().map(|log| log.clone()).unwrap_or_default();
        let leaked: Vec<&str> = log.lines().filter(|line| line.contains("sig=")).collect();
        assert!(leaked.is_empty(), "a SAS signature reached the log:\n{}", leaked.join("\n"));
    }
}

/// Credentials of a module of the test device: (client id, username, SAS password).
pub fn module_credentials(module: &str, ttl_secs: i64) -> (String, String, String) {
    let key = identity::derive_module_key(&DEVICE_KEY, module);
    let expiry = (unix_now() as i64 + ttl_secs) as u64;
    let token = sas::generate(&format!("{HUB}/devices/{DEVICE}/modules/{module}"), &key, expiry);
    (format!("{DEVICE}/{module}"), format!("{HUB}/{DEVICE}/{module}/?api-version=2021-04-12"), token)
}

/// Credentials of the configured downstream device.
pub fn leaf_credentials() -> (String, String, String) {
    use base64::Engine as _;
    let key = base64::engine::general_purpose::STANDARD.decode(LEAF_KEY_B64).expect("valid base64");
    let token = sas::generate(&format!("{HUB}/devices/{LEAF}"), &key, unix_now() + 3600);
    (LEAF.to_string(), format!("{HUB}/{LEAF}/?api-version=2021-04-12"), token)
}

/// `mosquitto_pub` with the given credentials; returns its output.
pub fn mosquitto_pub(
    port: u16,
    creds: &(String, String, String),
    topic: &str,
    message: &str,
    extra: &[&str],
) -> Output {
    require_tool("mosquitto_pub");
    Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-V", "mqttv311"])
        .args(["-i", &creds.0, "-u", &creds.1, "-P", &creds.2])
        .args(["-t", topic, "-m", message])
        .args(extra)
        .output()
        .expect("run mosquitto_pub")
}

/// A `mosquitto_sub -v` printing `topic payload` lines; stops after `count` messages or
/// `timeout_secs`.
pub struct Sub {
    child: Child,
}

impl Sub {
    pub fn start(
        port: u16,
        creds: &(String, String, String),
        topic: &str,
        count: usize,
        timeout_secs: u32,
        extra: &[&str],
    ) -> Sub {
        require_tool("mosquitto_sub");
        let child = Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-V", "mqttv311", "-v"])
            .args(["-i", &creds.0, "-u", &creds.1, "-P", &creds.2])
            .args(["-t", topic, "-C", &count.to_string(), "-W", &timeout_secs.to_string()])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run mosquitto_sub");
        Sub { child }
    }

    /// Waits for the subscriber to exit; returns (exit success, stdout lines, stderr).
    pub fn finish(mut self) -> (bool, Vec<String>, String) {
        let mut out = String::new();
        let mut err = String::new();
        if let Some(mut s) = self.child.stdout.take() {
            let _ = s.read_to_string(&mut out);
        }
        if let Some(mut s) = self.child.stderr.take() {
            let _ = s.read_to_string(&mut err);
        }
        let ok = self.child.wait().map(|s| s.success()).unwrap_or(false);
        (ok, out.lines().map(str::to_string).collect(), err)
    }
}

/// Gives a just-started subscriber time to connect and subscribe before the test publishes.
/// (Only ordering, never an assertion on timing.)
pub fn settle() {
    std::thread::sleep(Duration::from_millis(400));
}

pub fn path_exists(p: &Path) -> bool {
    p.exists()
}

/// A raw MQTT 3.1.1 client over std sockets with the mqttbytes codec (a third-party codec).
pub struct Raw {
    pub stream: TcpStream,
    pub buf: BytesMut,
}

impl Raw {
    pub fn connect(
        port: u16,
        creds: &(String, String, String),
        keep_alive: u16,
        clean: bool,
        will: Option<LastWill>,
    ) -> Raw {
        let mut connect = Connect::new(creds.0.clone());
        connect.set_login(creds.1.clone(), creds.2.clone());
        connect.keep_alive = keep_alive;
        connect.clean_session = clean;
        connect.last_will = will;
        let mut raw = Raw { stream: TcpStream::connect(("127.0.0.1", port)).expect("connect"), buf: BytesMut::new() };
        raw.stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        raw.send(|out| connect.write(out).map(|_| ()));
        match raw.next() {
            Some(Packet::ConnAck(ack)) => assert_eq!(ack.code, v4::ConnectReturnCode::Success),
            other => panic!("expected CONNACK, got {other:?}"),
        }
        raw
    }

    pub fn send(&mut self, encode: impl FnOnce(&mut BytesMut) -> Result<(), mqttbytes::Error>) {
        let mut out = BytesMut::new();
        encode(&mut out).expect("encode");
        self.stream.write_all(&out).expect("write");
    }

    /// The next packet, or `None` when the hub closed the connection (or 10 s passed).
    pub fn next(&mut self) -> Option<Packet> {
        loop {
            match v4::read(&mut self.buf, 1 << 20) {
                Ok(p) => return Some(p),
                Err(mqttbytes::Error::InsufficientBytes(_)) => {
                    let mut chunk = [0u8; 4096];
                    match self.stream.read(&mut chunk) {
                        Ok(0) | Err(_) => return None,
                        Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                    }
                }
                Err(e) => panic!("bad packet from hub: {e:?}"),
            }
        }
    }

    pub fn subscribe(&mut self, filter: &str, qos: QoS) {
        let mut subscribe = Subscribe::new(filter, qos);
        subscribe.pkid = 1;
        self.send(|out| subscribe.write(out).map(|_| ()));
        match self.next() {
            Some(Packet::SubAck(ack)) => assert_eq!(ack.return_codes.len(), 1),
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }
}

impl Runtime {
    /// As [`Runtime::start_with`], but runs `prepare(dir)` on the runtime's directory once the
    /// config is written and before the binary starts (e.g. to mount a filesystem at
    /// `dir/data`), and starts the binary under `wrapper` (e.g. `["prlimit", "--nofile=256:256",
    /// "--"]`; empty: directly). Restarts ([`Runtime::start_again`]) run the binary directly.
    pub fn start_prepared(
        deployment_json: &str,
        extra_hub_config: &str,
        sections: &str,
        prepare: impl FnOnce(&Path),
        wrapper: &[&str],
    ) -> Runtime {
        let (dir, mqtt_port, mqtts_port, https_port) =
            Runtime::prepare_dir(deployment_json, extra_hub_config, sections);
        prepare(&dir.0);
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(env!("CARGO_BIN_EXE_tinyedge"));
                command
            }
            None => Command::new(env!("CARGO_BIN_EXE_tinyedge")),
        };
        let mut child = command
            .arg("--config")
            .arg(dir.0.join("config.toml"))
            .arg("run")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tinyedge");
        let log = Arc::new(Mutex::new(String::new()));
        collect_stderr(&mut child, &log);
        let mut rt = Runtime { child, dir, mqtt_port, mqtts_port, https_port, log };
        rt.wait_for_port(mqtt_port, 0);
        rt
    }
}

impl Runtime {
    /// As [`Runtime::start_with`], with MQTTS on 127.0.0.1:8883, where the Azure IoT SDKs
    /// always connect (callers hold their test binary's fixed-port lock).
    pub fn start_on_8883(deployment_json: &str, extra_hub_config: &str, sections: &str) -> Runtime {
        let rt = Runtime::start_prepared(
            deployment_json,
            extra_hub_config,
            sections,
            |dir| {
                let path = dir.join("config.toml");
                let config = std::fs::read_to_string(&path).expect("config");
                let config: String = config
                    .lines()
                    .map(|l| if l.starts_with("mqtts = ") { "mqtts = \"127.0.0.1:8883\"" } else { l })
                    .collect::<Vec<_>>()
                    .join("\n");
                std::fs::write(&path, config).expect("config");
            },
            &[],
        );
        assert!(wait_listening(&[8883]), "tinyedge did not listen on 8883\n{}", rt.log());
        rt
    }
}

/// Where test.sh installs the Azure IoT Python SDK (override with TINYEDGE_PYSDK); fails the
/// test loudly when it is not there.
pub fn python_sdk_path() -> PathBuf {
    let sdk: PathBuf = std::env::var_os("TINYEDGE_PYSDK")
        .map(Into::into)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/pysdk"));
    assert!(
        sdk.join("azure/iot/device").is_dir(),
        "the Azure IoT Python SDK is not installed in {}: run ./test.sh (it pip-installs azure-iot-device there)",
        sdk.display()
    );
    sdk
}

/// Waits up to 20 s until every port accepts a TCP connection on 127.0.0.1.
pub fn wait_listening(ports: &[u16]) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if ports.iter().all(|p| TcpStream::connect(("127.0.0.1", *p)).is_ok()) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// Appends the child's stderr, line by line, to `log` (from a thread of its own).
pub fn collect_stderr(child: &mut Child, log: &Arc<Mutex<String>>) {
    let stderr = child.stderr.take().expect("stderr piped");
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let mut log = sink.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            log.push_str(&line);
            log.push('\n');
        }
    });
}

/// What a test can show of the process it drives when a step fails (its log).
pub trait ShowsLog {
    fn shown_log(&self) -> String;
}

impl ShowsLog for Runtime {
    fn shown_log(&self) -> String {
        self.log()
    }
}

impl ShowsLog for iothub::ScriptedHub {
    fn shown_log(&self) -> String {
        self.log()
    }
}

/// A third-party client script (an Azure IoT SDK under python3 or node) driven line by line:
/// commands on its stdin, events read from its stdout by a thread. Lines that come while the
/// test waits for another prefix are kept for later. Killed on drop.
pub struct Script {
    child: Child,
    stdin: std::process::ChildStdin,
    lines: std::sync::mpsc::Receiver<String>,
    backlog: std::cell::RefCell<Vec<String>>,
    wait: Duration,
}

impl Drop for Script {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Script {
    /// Spawns `command` with piped stdin/stdout (stderr inherited); `wait` bounds each
    /// [`Script::expect`].
    pub fn spawn(mut command: Command, wait: Duration) -> Script {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("{command:?} could not be started ({e}): run ./test.sh"));
        let stdin = child.stdin.take().expect("stdin piped");
        let stdout = child.stdout.take().expect("stdout piped");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Script { child, stdin, lines, backlog: std::cell::RefCell::new(Vec::new()), wait }
    }

    /// The rest of the next line starting with `prefix`; fails the test with `context`'s log
    /// when none comes in time.
    pub fn expect(&self, prefix: &str, context: &dyn ShowsLog) -> String {
        {
            let mut backlog = self.backlog.borrow_mut();
            if let Some(at) = backlog.iter().position(|l| l.starts_with(prefix)) {
                let line = backlog.remove(at);
                return line[prefix.len()..].trim().to_string();
            }
        }
        let deadline = Instant::now() + self.wait;
        loop {
            match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.starts_with(prefix) => return line[prefix.len()..].trim().to_string(),
                Ok(other) => {
                    eprintln!("script: {other}");
                    self.backlog.borrow_mut().push(other);
                }
                Err(_) => panic!("the client script printed no {prefix:?}\nlog:\n{}", context.shown_log()),
            }
        }
    }

    /// Writes one command line.
    pub fn send(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").expect("write to the client script");
    }

    /// Waits for the script to end by itself (after a `quit`).
    pub fn wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.wait().ok()
    }
}

/// Polls `probe` every 100 ms until it returns `Some`, for at most `timeout`.
pub fn eventually<T>(timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return Some(value);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
