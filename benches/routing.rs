//! Routing benchmark: module-to-module messages through tinyedge versus the same traffic
//! through mosquitto as plain pub/sub, in one run, on loopback.
//!
//! Run: `cargo run --release -p tinyedge-benches --bin routing` (builds the release
//! `tinyedge`, needs Debian's `mosquitto`; the test command installs it). It prints a Markdown
//! table with tinyedge/mosquitto ratios. Clients are blocking sockets with the mqttbytes codec,
//! the same client code for both brokers.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use mqttbytes::v4::{self, Connect, Packet, PubAck, Publish, Subscribe};
use mqttbytes::QoS;
use tinyedge_platform::{identity, sas};

const DEVICE: &str = "benchgw";
const HUB: &str = "bench.azure-devices.net";
const DEVICE_KEY: [u8; 32] = [7; 32];
/// QoS 1 messages a publisher keeps unacknowledged (IoT Edge's MaxPendingInboundAcknowledgements).
const PUBLISH_WINDOW: usize = 16;
/// Messages per throughput run; a run also stops after `RUN_TIME_MAX`.
const MESSAGES: usize = 50_000;
const RUN_TIME_MAX: Duration = Duration::from_secs(60);
/// Round trips sampled for latency (one message in flight at a time).
const LATENCY_SAMPLES: usize = 2_000;
/// Idle connections opened to measure memory per connection.
const IDLE_CONNECTIONS: usize = 1_000;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

struct Broker {
    name: &'static str,
    child: Child,
    port: u16,
    /// (client id, username, password) per module role; `None` for anonymous mosquitto.
    creds: fn(&str) -> Option<(String, String, String)>,
    /// The same for a downstream device `leaf-N`.
    leaf_creds: fn(&str) -> Option<(String, String, String)>,
    pub_topic: String,
    sub_topic: String,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tinyedge_creds(module: &str) -> Option<(String, String, String)> {
    let key = identity::derive_module_key(&DEVICE_KEY, module);
    let expiry = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0) + 86_400;
    let token = sas::generate(&format!("{HUB}/devices/{DEVICE}/modules/{module}"), &key, expiry);
    Some((format!("{DEVICE}/{module}"), format!("{HUB}/{DEVICE}/{module}/?api-version=2021-04-12"), token))
}

fn tinyedge_leaf_creds(device: &str) -> Option<(String, String, String)> {
    let expiry = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0) + 86_400;
    let token = sas::generate(&format!("{HUB}/devices/{device}"), &DEVICE_KEY, expiry);
    Some((device.to_string(), format!("{HUB}/{device}/?api-version=2021-04-12"), token))
}

fn anonymous(_: &str) -> Option<(String, String, String)> {
    None
}

fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "broker on {port} did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn start_tinyedge(bin: &Path, dir: &Path) -> Broker {
    let port = free_port();
    let key = {
        use std::fmt::Write as _;
        // base64 of [7; 32]
        let mut s = String::new();
        let _ = write!(s, "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=");
        s
    };
    let deployment = r#"{"modulesContent":{"$edgeAgent":{"properties.desired":{"schemaVersion":"1.1","runtime":{"type":"docker","settings":{}},
 "systemModules":{"edgeAgent":{"type":"docker","settings":{"image":"x"}},"edgeHub":{"type":"docker","status":"running","restartPolicy":"always","settings":{"image":"x"}}},
 "modules":{"pub":{"type":"docker","status":"running","restartPolicy":"always","settings":{"image":"x"}},"sub":{"type":"docker","status":"running","restartPolicy":"always","settings":{"image":"x"}}}}},
 "$edgeHub":{"properties.desired":{"schemaVersion":"1.1","routes":{"r":"FROM /messages/modules/pub/* INTO BrokeredEndpoint(\"/modules/sub/inputs/in\")"}}}}}"#;
    std::fs::write(dir.join("deployment.json"), deployment).expect("write deployment");
    // Downstream devices leaf-0.. for the idle-connection measurement, all with the device key.
    let leaves: String = (0..IDLE_CONNECTIONS).map(|i| format!("[[devices]]\nid = \"leaf-{i}\"\nkey = \"{key}\"\n")).collect();
    std::fs::write(
        dir.join("tinyedge.toml"),
        format!(
            "iothub_hostname = \"{HUB}\"\ndevice_id = \"{DEVICE}\"\ndevice_key = \"{key}\"\ndata_dir = \"data\"\ndeployment = \"deployment.json\"\nlog_level = \"warn\"\n[hub]\nmqtt = \"127.0.0.1:{port}\"\nmqtts = \"\"\nmax_connections = 5000\n{leaves}"
        ),
    )
    .expect("write config");
    let child = Command::new(bin).arg("--config").arg(dir.join("tinyedge.toml")).arg("run").stderr(Stdio::null()).spawn().expect("start tinyedge");
    wait_port(port);
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

fn start_mosquitto(dir: &Path) -> Broker {
    let port = free_port();
    let conf = dir.join("mosquitto.conf");
    // As root, mosquitto would switch to the `mosquitto` user, which cannot read this temp dir.
    std::fs::write(&conf, format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_connections -1\nuser root\n"))
        .expect("write mosquitto.conf");
    let child = Command::new("mosquitto").arg("-c").arg(&conf).stderr(Stdio::null()).stdout(Stdio::null()).spawn().expect("start mosquitto (apt-get install mosquitto)");
    wait_port(port);
    Broker { name: "mosquitto", child, port, creds: anonymous, leaf_creds: anonymous, pub_topic: "bench/in".into(), sub_topic: "bench/#".into() }
}

/// A blocking MQTT 3.1.1 client over the mqttbytes codec.
struct Client {
    stream: TcpStream,
    buf: BytesMut,
    out: BytesMut,
}

impl Client {
    fn connect(port: u16, id: &str, creds: Option<(String, String, String)>) -> Client {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let mut c = Client { stream, buf: BytesMut::with_capacity(64 * 1024), out: BytesMut::new() };
        let mut connect = Connect::new(creds.as_ref().map_or(id.to_string(), |c| c.0.clone()));
        connect.keep_alive = 600;
        if let Some((_, user, pass)) = creds {
            connect.set_login(user, pass);
        }
        connect.write(&mut c.out).expect("encode");
        c.flush();
        match c.read() {
            Packet::ConnAck(ack) if ack.code == mqttbytes::v4::ConnectReturnCode::Success => c,
            other => panic!("connect refused: {other:?}"),
        }
    }

    fn flush(&mut self) {
        self.stream.write_all(&self.out).expect("write");
        self.out.clear();
    }

    fn read(&mut self) -> Packet {
        loop {
            match v4::read(&mut self.buf, 1 << 20) {
                Ok(p) => return p,
                Err(mqttbytes::Error::InsufficientBytes(_)) => {
                    let mut chunk = [0u8; 16 * 1024];
                    let n = self.stream.read(&mut chunk).expect("read");
                    assert!(n > 0, "broker closed the connection");
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                Err(e) => panic!("bad packet from broker: {e:?}"),
            }
        }
    }

    fn subscribe(&mut self, topic: &str, qos: QoS) {
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

/// Receives `count` messages (acknowledging QoS 1); returns the instant of the last one and
/// per-message receive times if `timestamps`.
fn receive(mut sub: Client, count: usize, deadline: Instant) -> (usize, Instant) {
    let mut got = 0;
    sub.stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    while got < count && Instant::now() < deadline {
        let Packet::Publish(p) = sub.read() else { continue };
        got += 1;
        if p.qos == QoS::AtLeastOnce {
            PubAck::new(p.pkid).write(&mut sub.out).expect("encode");
            // Acknowledge in batches, but never sit on acks while waiting for more data: the
            // broker's in-flight window would stall.
            if sub.buf.is_empty() || sub.out.len() > 4096 || got == count {
                sub.flush();
            }
        }
    }
    (got, Instant::now())
}

struct Throughput {
    msgs_per_sec: f64,
    delivered: usize,
}

fn throughput(b: &Broker, qos: QoS, size: usize) -> Throughput {
    let mut sub = Client::connect(b.port, "bench-sub", (b.creds)("sub"));
    sub.subscribe(&b.sub_topic, qos);
    let deadline = Instant::now() + RUN_TIME_MAX;
    let (tx, rx) = mpsc::channel();
    let receiver = std::thread::spawn(move || {
        let r = receive(sub, MESSAGES, deadline);
        let _ = tx.send(());
        r
    });
    let mut publ = Client::connect(b.port, "bench-pub", (b.creds)("pub"));
    let payload = vec![b'x'; size];
    let start = Instant::now();
    let mut unacked = 0usize;
    let mut pkid: u16 = 0;
    for _ in 0..MESSAGES {
        let mut p = Publish::new(b.pub_topic.as_str(), qos, payload.clone());
        if qos == QoS::AtLeastOnce {
            pkid = pkid.wrapping_add(1).max(1);
            p.pkid = pkid;
        }
        p.write(&mut publ.out).expect("encode");
        if qos == QoS::AtLeastOnce {
            unacked += 1;
            publ.flush();
            while unacked >= PUBLISH_WINDOW {
                if let Packet::PubAck(_) = publ.read() {
                    unacked -= 1;
                }
            }
        } else if publ.out.len() > 16 * 1024 {
            publ.flush();
        }
        if Instant::now() > deadline {
            break;
        }
    }
    publ.flush();
    let (delivered, end) = receiver.join().expect("receiver thread");
    let _ = rx.try_recv();
    let secs = end.duration_since(start).as_secs_f64();
    Throughput { msgs_per_sec: delivered as f64 / secs, delivered }
}

fn latency(b: &Broker, qos: QoS, size: usize) -> (f64, f64) {
    let mut sub = Client::connect(b.port, "lat-sub", (b.creds)("sub"));
    sub.subscribe(&b.sub_topic, qos);
    let mut publ = Client::connect(b.port, "lat-pub", (b.creds)("pub"));
    let payload = vec![b'y'; size];
    let mut samples = Vec::with_capacity(LATENCY_SAMPLES);
    for i in 0..LATENCY_SAMPLES {
        let mut p = Publish::new(b.pub_topic.as_str(), qos, payload.clone());
        if qos == QoS::AtLeastOnce {
            p.pkid = (i % 60_000 + 1) as u16;
        }
        let t0 = Instant::now();
        p.write(&mut publ.out).expect("encode");
        publ.flush();
        loop {
            if let Packet::Publish(got) = sub.read() {
                if got.qos == QoS::AtLeastOnce {
                    PubAck::new(got.pkid).write(&mut sub.out).expect("encode");
                    sub.flush();
                }
                break;
            }
        }
        samples.push(t0.elapsed().as_secs_f64() * 1e6);
        if qos == QoS::AtLeastOnce {
            while !matches!(publ.read(), Packet::PubAck(_)) {}
        }
    }
    samples.sort_by(f64::total_cmp);
    (samples[samples.len() / 2], samples[samples.len() * 99 / 100])
}

/// (resident, anonymous) memory of a process in KiB, from /proc. Anonymous memory is what
/// the process itself allocated (heap, stacks), without the shared libraries and binary text.
fn memory_kib(pid: u32) -> (u64, u64) {
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

struct Memory {
    idle_rss: u64,
    idle_anon: u64,
    per_connection_kib: f64,
}

/// Idle memory, then memory per idle MQTT connection (CONNECT accepted, then silent).
fn memory(b: &Broker) -> Memory {
    std::thread::sleep(Duration::from_millis(300));
    let (idle_rss, idle_anon) = memory_kib(b.child.id());
    let mut conns = Vec::with_capacity(IDLE_CONNECTIONS);
    for i in 0..IDLE_CONNECTIONS {
        let id = format!("leaf-{i}");
        conns.push(Client::connect(b.port, &id, (b.leaf_creds)(&id)));
    }
    std::thread::sleep(Duration::from_millis(500));
    let (rss, _) = memory_kib(b.child.id());
    drop(conns);
    Memory { idle_rss, idle_anon, per_connection_kib: rss.saturating_sub(idle_rss) as f64 / IDLE_CONNECTIONS as f64 }
}

fn build_tinyedge(root: &Path) -> PathBuf {
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(root)
        .args(["build", "--release", "-p", "tinyedge"])
        .status()
        .expect("cargo build");
    assert!(status.success(), "building tinyedge failed");
    root.join("target/release/tinyedge")
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf();
    let bin = build_tinyedge(&root);
    let dir = std::env::temp_dir().join(format!("tinyedge-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("bench dir");
    let brokers = [start_tinyedge(&bin, &dir), start_mosquitto(&dir)];
    // Memory first, on fresh processes: after the throughput runs the allocators keep their
    // high-water marks.
    let mem: Vec<Memory> = brokers.iter().map(memory).collect();
    let mut rows = Vec::new();
    // `BENCH_MEMORY_ONLY=1` skips the traffic runs (for quick footprint checks).
    let traffic = std::env::var_os("BENCH_MEMORY_ONLY").is_none();
    for (qos, qname) in [(QoS::AtMostOnce, "0"), (QoS::AtLeastOnce, "1")].into_iter().filter(|_| traffic) {
        for size in [64usize, 1024] {
            let mut cells = Vec::new();
            for b in &brokers {
                let t = throughput(b, qos, size);
                let (p50, p99) = latency(b, qos, size);
                eprintln!("{} qos{qname} {size}B: {:.0} msg/s ({} delivered), p50 {p50:.0} us, p99 {p99:.0} us", b.name, t.msgs_per_sec, t.delivered);
                cells.push((t, p50, p99));
            }
            rows.push((qname, size, cells));
        }
    }
    let machine = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| c.lines().find_map(|l| l.strip_prefix("model name\t: ").map(str::to_string)))
        .unwrap_or_else(|| "unknown CPU".into());
    println!("Routing benchmark, {} msgs per run, publisher window {PUBLISH_WINDOW} at QoS 1; {machine}, {} cores", MESSAGES, std::thread::available_parallelism().map_or(1, |n| n.get()));
    println!();
    println!("| QoS | payload | tinyedge msg/s | mosquitto msg/s | ratio | tinyedge p50/p99 µs | mosquitto p50/p99 µs |");
    println!("|---|---|---|---|---|---|---|");
    for (q, size, cells) in &rows {
        let (te, tp50, tp99) = &cells[0];
        let (mo, mp50, mp99) = &cells[1];
        println!(
            "| {q} | {size} B | {:.0} ({}) | {:.0} ({}) | {:.2} | {tp50:.0} / {tp99:.0} | {mp50:.0} / {mp99:.0} |",
            te.msgs_per_sec, te.delivered, mo.msgs_per_sec, mo.delivered, te.msgs_per_sec / mo.msgs_per_sec
        );
    }
    println!();
    println!("| memory (fresh process) | tinyedge | mosquitto |");
    println!("|---|---|---|");
    println!("| idle RSS | {} KiB | {} KiB |", mem[0].idle_rss, mem[1].idle_rss);
    println!("| idle anonymous (heap, stacks) | {} KiB | {} KiB |", mem[0].idle_anon, mem[1].idle_anon);
    println!("| per idle MQTT connection ({IDLE_CONNECTIONS} connected) | {:.2} KiB | {:.2} KiB |", mem[0].per_connection_kib, mem[1].per_connection_kib);
    let _ = std::fs::remove_dir_all(&dir);
}
