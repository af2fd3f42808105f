//! Shared by the benchmark harnesses: starting tinyedge and mosquitto on free loopback ports,
//! a blocking MQTT 3.1.1 client over the mqttbytes codec (the same client for both brokers),
//! and /proc readings (memory, CPU time).
#![allow(dead_code)]

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use mqttbytes::v4::{self, Connect, Packet, Subscribe};
use mqttbytes::QoS;
use tinyedge_platform::{identity, sas};

pub const DEVICE: &str = "benchgw";
pub const HUB: &str = "bench.azure-devices.net";
pub const DEVICE_KEY: [u8; 32] = [7; 32];
/// QoS 1 messages a publisher keeps unacknowledged (IoT Edge's MaxPendingInboundAcknowledgements).
pub const PUBLISH_WINDOW: usize = 16;
/// Messages per throughput run; a run also stops after `RUN_TIME_MAX`.
pub const MESSAGES: usize = 50_000;
pub const RUN_TIME_MAX: Duration = Duration::from_secs(60);
/// Round trips sampled for latency (one message in flight at a time).
pub const LATENCY_SAMPLES: usize = 2_000;
/// Idle connections opened to measure memory per connection (issue #14: measured with 10,000,
/// so the code paged in by the first connections and the allocator's growth are amortized).
pub const IDLE_CONNECTIONS: usize = 10_000;

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

pub struct Broker {
    pub name: &'static str,
    pub child: Child,
    pub port: u16,
    /// (client id, username, password) per module role; `None` for anonymous mosquitto.
    pub creds: fn(&str) -> Option<(String, String, String)>,
    /// The same for a downstream device `leaf-N`.
    pub leaf_creds: fn(&str) -> Option<(String, String, String)>,
    pub pub_topic: String,
    pub sub_topic: String,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn tinyedge_creds(module: &str) -> Option<(String, String, String)> {
    let key = identity::derive_module_key(&DEVICE_KEY, module);
    let expiry = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0) + 86_400;
    let token = sas::generate(&format!("{HUB}/devices/{DEVICE}/modules/{module}"), &key, expiry);
    Some((format!("{DEVICE}/{module}"), format!("{HUB}/{DEVICE}/{module}/?api-version=2021-04-12"), token))
}

pub fn tinyedge_leaf_creds(device: &str) -> Option<(String, String, String)> {
    let expiry = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0) + 86_400;
    let token = sas::generate(&format!("{HUB}/devices/{device}"), &DEVICE_KEY, expiry);
    Some((device.to_string(), format!("{HUB}/{device}/?api-version=2021-04-12"), token))
}

pub fn anonymous(_: &str) -> Option<(String, String, String)> {
    None
}

pub fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "broker on {port} did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// base64 of [`DEVICE_KEY`].
pub const DEVICE_KEY_B64: &str = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";

/// Modules `pub` and `sub` routed `pub` → `sub`, plus `offline`, which only ever receives
/// (nobody connects as it), so messages routed to it stay in the store.
const DEPLOYMENT: &str = r#"{"modulesContent":{"$edgeAgent":{"properties.desired":{"schemaVersion":"1.1","runtime":{"type":"docker","settings":{}},
 "systemModules":{"edgeAgent":{"type":"docker","settings":{"image":"x"}},"edgeHub":{"type":"docker","status":"running","restartPolicy":"always","settings":{"image":"x"}}},
 "modules":{"pub":{"type":"docker","status":"running","restartPolicy":"always","settings":{"image":"x"}},
            "sub":{"type":"docker","status":"running","restartPolicy":"always","settings":{"image":"x"}},
            "offline":{"type":"docker","status":"running","restartPolicy":"always","settings":{"image":"x"}}}}},
 "$edgeHub":{"properties.desired":{"schemaVersion":"1.1","routes":{
   "r":"FROM /messages/modules/pub/* INTO BrokeredEndpoint(\"/modules/sub/inputs/in\")",
   "keep":"FROM /messages/modules/sub/* INTO BrokeredEndpoint(\"/modules/offline/inputs/in\")"}}}}}"#;

/// Starts the tinyedge binary `bin` with data in `dir`. `extra_toml` is appended to the
/// config (e.g. a `[store]` table). `before_start` sees the child's pid right after spawn (to
/// put it into a cgroup).
pub fn start_tinyedge_with(bin: &Path, dir: &Path, extra_toml: &str, before_start: impl FnOnce(u32)) -> Broker {
    start_tinyedge_deployment(bin, dir, extra_toml, DEPLOYMENT, before_start)
}

/// As [`start_tinyedge_with`], with `deployment` instead of the routing benchmark's.
pub fn start_tinyedge_deployment(
    bin: &Path,
    dir: &Path,
    extra_toml: &str,
    deployment: &str,
    before_start: impl FnOnce(u32),
) -> Broker {
    let port = free_port();
    std::fs::write(dir.join("deployment.json"), deployment).expect("write deployment");
    // The hub alone (as mosquitto is a broker alone): the agent has its own bench (agent.rs).
    let agent = if extra_toml.contains("[agent]") { "" } else { "[agent]\nenabled = false\n" };
    // Downstream devices leaf-0.. for the idle-connection measurement, all with the device key.
    let leaves: String = (0..IDLE_CONNECTIONS)
        .map(|i| format!("[[devices]]\nid = \"leaf-{i}\"\nkey = \"{DEVICE_KEY_B64}\"\n"))
        .collect();
    std::fs::write(
        dir.join("tinyedge.toml"),
        format!(
            "iothub_hostname = \"{HUB}\"\ndevice_id = \"{DEVICE}\"\ndevice_key = \"{DEVICE_KEY_B64}\"\ndata_dir = \"data\"\ndeployment = \"deployment.json\"\nlog_level = \"warn\"\n[hub]\nmqtt = \"127.0.0.1:{port}\"\nmqtts = \"\"\nmax_connections = 12000\n{extra_toml}\n{leaves}{agent}"
        ),
    )
    .expect("write config");
    // `BENCH_TINYEDGE_LOG=1` shows tinyedge's log (warnings and errors) on stderr.
    let stderr = if std::env::var_os("BENCH_TINYEDGE_LOG").is_some() { Stdio::inherit() } else { Stdio::null() };
    let child = Command::new(bin)
        .arg("--config")
        .arg(dir.join("tinyedge.toml"))
        .arg("run")
        .stderr(stderr)
        .spawn()
        .expect("start tinyedge");
    before_start(child.id());
    wait_port(port);
    // tinyedge gives back the pages only its start touched 5 s after it runs (src/pages.rs):
    // measure the settled process, so the release lands neither among a memory sample's
    // clients nor in a routing run (where the hot code it evicts is read back once).
    std::thread::sleep(TINYEDGE_SETTLED);
    Broker {
        name: "tinyedge",
        child,
        port,
        creds: tinyedge_creds,
        leaf_creds: tinyedge_leaf_creds,
        pub_topic: format!("devices/{DEVICE}/modules/pub/messages/events/"),
        sub_topic: format!("devices/{DEVICE}/modules/sub/inputs/#"),
    }
}

pub fn start_tinyedge(bin: &Path, dir: &Path) -> Broker {
    start_tinyedge_with(bin, dir, "", |_| {})
}

/// CPU seconds (user + system) a process has used, from /proc/PID/stat (clock ticks of 1/100 s,
/// the Linux default USER_HZ).
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (ticks(11) + ticks(12)) as f64 / 100.0
}

pub fn start_mosquitto(dir: &Path) -> Broker {
    start_mosquitto_with(dir, "")
}

/// mosquitto with `extra_conf` lines appended to its config.
pub fn start_mosquitto_with(dir: &Path, extra_conf: &str) -> Broker {
    let port = free_port();
    let conf = dir.join("mosquitto.conf");
    // As root, mosquitto would switch to the `mosquitto` user, which cannot read this temp dir.
    std::fs::write(&conf, format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_connections -1\nuser root\n{extra_conf}"))
        .expect("write mosquitto.conf");
    let child = Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stderr(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("start mosquitto (apt-get install mosquitto)");
    wait_port(port);
    Broker {
        name: "mosquitto",
        child,
        port,
        creds: anonymous,
        leaf_creds: anonymous,
        pub_topic: "bench/in".into(),
        sub_topic: "bench/#".into(),
    }
}

/// `mosquitto -h` prints its version on the first line.
pub fn mosquitto_version() -> String {
    Command::new("mosquitto")
        .arg("-h")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).lines().next().map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}

/// A blocking MQTT 3.1.1 client over the mqttbytes codec.
pub struct Client {
    pub stream: TcpStream,
    pub buf: BytesMut,
    pub out: BytesMut,
}

impl Client {
    pub fn connect(port: u16, id: &str, creds: Option<(String, String, String)>) -> Client {
        let mut connect = Connect::new(creds.as_ref().map_or(id.to_string(), |c| c.0.clone()));
        if let Some((_, user, pass)) = creds {
            connect.set_login(user, pass);
        }
        Client::connect_with(port, connect)
    }

    pub fn connect_with(port: u16, mut connect: Connect) -> Client {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let mut c = Client { stream, buf: BytesMut::with_capacity(64 * 1024), out: BytesMut::new() };
        connect.keep_alive = 600;
        connect.write(&mut c.out).expect("encode");
        c.flush();
        match c.read() {
            Packet::ConnAck(ack) if ack.code == mqttbytes::v4::ConnectReturnCode::Success => c,
            other => panic!("connect refused: {other:?}"),
        }
    }

    pub fn flush(&mut self) {
        self.stream.write_all(&self.out).expect("write");
        self.out.clear();
    }

    pub fn read(&mut self) -> Packet {
        match self.read_within() {
            Ok(p) => p,
            Err(e) => panic!("read: {e}"),
        }
    }

    /// The next packet, or the read timeout's error (`WouldBlock`/`TimedOut`) when the socket
    /// has one set and nothing came within it.
    pub fn read_within(&mut self) -> std::io::Result<Packet> {
        loop {
            match v4::read(&mut self.buf, 1 << 20) {
                Ok(p) => return Ok(p),
                Err(mqttbytes::Error::InsufficientBytes(_)) => {
                    let mut chunk = [0u8; 16 * 1024];
                    let n = self.stream.read(&mut chunk)?;
                    assert!(n > 0, "broker closed the connection");
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                Err(e) => panic!("bad packet from broker: {e:?}"),
            }
        }
    }

    pub fn subscribe(&mut self, topic: &str, qos: QoS) {
        let mut subscribe = Subscribe::new(topic, qos);
        subscribe.pkid = 1;
        subscribe.write(&mut self.out).expect("encode");
        self.flush();
        match self.read() {
            Packet::SubAck(_) => {}
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }
}

/// (resident, anonymous) memory of a process in KiB, from /proc. Anonymous memory is what
/// the process itself allocated (heap, stacks), without the shared libraries and binary text.
pub fn memory_kib(pid: u32) -> (u64, u64) {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |name: &str| {
        rollup
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("Rss:"), field("Anonymous:"))
}

pub struct Memory {
    pub idle_rss: u64,
    pub idle_anon: u64,
    pub per_connection_kib: f64,
    /// Growth of anonymous memory (heap) per connection.
    pub per_connection_anon_kib: f64,
}

/// Idle memory, then memory per idle MQTT connection (CONNECT accepted, then silent).
pub fn memory(b: &Broker) -> Memory {
    memory_with(b, IDLE_CONNECTIONS)
}

/// [`memory`] with `n` idle connections (of the `IDLE_CONNECTIONS` leaf devices configured).
pub fn memory_with(b: &Broker, n: usize) -> Memory {
    // A few clients first, gone before the "before" sample: the code a connection runs is then
    // resident (tinyedge gave back its start's pages, src/pages.rs), so the growth below is
    // what each connection holds, not code paged in by the first one.
    let warm: Vec<Client> = (0..WARM_UP_CONNECTIONS.min(n))
        .map(|i| {
            let id = format!("leaf-{i}");
            Client::connect(b.port, &id, (b.leaf_creds)(&id))
        })
        .collect();
    drop(warm);
    std::thread::sleep(Duration::from_millis(300));
    let (idle_rss, idle_anon) = memory_kib(b.child.id());
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!("leaf-{i}");
        conns.push(Client::connect(b.port, &id, (b.leaf_creds)(&id)));
    }
    std::thread::sleep(Duration::from_millis(1000));
    let (rss, anon) = memory_kib(b.child.id());
    drop(conns);
    let per = |after: u64, before: u64| after.saturating_sub(before) as f64 / n as f64;
    Memory {
        idle_rss,
        idle_anon,
        per_connection_kib: per(rss, idle_rss),
        per_connection_anon_kib: per(anon, idle_anon),
    }
}

/// Connections made and closed before a memory sample ([`memory_with`]).
const WARM_UP_CONNECTIONS: usize = 16;

/// How long after its port answers tinyedge is left before it is measured: past the 5 s after
/// which it gives back the pages only its start touched (`RELEASE_AFTER` in src/pages.rs).
pub const TINYEDGE_SETTLED: Duration = Duration::from_millis(6500);

/// Builds the release `tinyedge` and returns its path; `BENCH_TINYEDGE_BIN` names another
/// binary instead (e.g. the `profiling` build, for perf).
pub fn build_tinyedge(root: &Path) -> PathBuf {
    if let Some(bin) = std::env::var_os("BENCH_TINYEDGE_BIN") {
        return PathBuf::from(bin);
    }
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(root)
        .args(["build", "--release", "-p", "tinyedge"])
        .status()
        .expect("cargo build");
    assert!(status.success(), "building tinyedge failed");
    root.join("target/release/tinyedge")
}

/// A grouped bar chart: one group per label, one bar per series.
pub fn bar_chart_svg(title: &str, unit: &str, labels: &[&str], series: &[(&str, &str, Vec<f64>)]) -> String {
    let (width, height, left, bottom, top) = (760.0, 360.0, 70.0, 60.0, 40.0);
    let max = series.iter().flat_map(|s| s.2.iter().copied()).fold(1.0_f64, f64::max) * 1.15;
    let plot_h = height - bottom - top;
    let group_w = (width - left - 20.0) / labels.len() as f64;
    let bar_w = group_w * 0.8 / series.len() as f64;
    let mut svg = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n");
    let _ = writeln!(svg, "<rect width=\"100%\" height=\"100%\" fill=\"white\"/><text x=\"{}\" y=\"22\" font-size=\"15\" text-anchor=\"middle\">{title}</text>", width / 2.0);
    let _ = writeln!(
        svg,
        "<line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>",
        height - bottom,
        width - 20.0,
        height - bottom
    );
    for tick in 0..=4 {
        let v = max * f64::from(tick) / 4.0;
        let y = height - bottom - plot_h * f64::from(tick) / 4.0;
        let _ = writeln!(svg, "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{v:.0} {unit}</text><line x1=\"{left}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"#ddd\"/>", left - 5.0, y + 4.0, width - 20.0);
    }
    for (g, label) in labels.iter().enumerate() {
        let gx = left + group_w * g as f64 + group_w * 0.1;
        for (s, (_, color, values)) in series.iter().enumerate() {
            let v = values.get(g).copied().unwrap_or(0.0);
            let h = plot_h * v / max;
            let x = gx + bar_w * s as f64;
            let _ = writeln!(svg, "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"{color}\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"10\">{v:.0}</text>", height - bottom - h, bar_w * 0.95, x + bar_w / 2.0, height - bottom - h - 3.0);
        }
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{label}</text>",
            gx + group_w * 0.4,
            height - bottom + 18.0
        );
    }
    for (s, (name, color, _)) in series.iter().enumerate() {
        let y = height - 18.0;
        let x = left + 150.0 * s as f64;
        let _ = writeln!(svg, "<rect x=\"{x}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"{color}\"/><text x=\"{}\" y=\"{y}\">{name}</text>", y - 10.0, x + 16.0);
    }
    svg.push_str("</svg>\n");
    svg
}
