//! AMQP benchmark (issue #12): what the AMQP endpoint (`[hub] amqps`) costs beside MQTT.
//!
//! Run: `cargo run --release -p tinyedge-benches --bin amqp` (builds the release `tinyedge`;
//! needs Debian's `/usr/bin/python3` with `python3-qpid-proton`, as tests/amqp.rs). Starts
//! tinyedge with `amqps` on a free port and modules `pub` → `sub` routed, then:
//!
//! - **RSS per idle AMQP connection**, on a fresh process: `IDLE` leaf devices connect over
//!   AMQP from one Python process (benches/amqp_load.py `idle`: TLS, SASL ANONYMOUS, CBS
//!   put-token, the `$cbs` sender and receiver links kept, one attached telemetry sender
//!   link), against the same number of idle MQTT connections (plain TCP, the bench `Client`) on
//!   a second fresh process, and over MQTT with TLS (`mqtts`, amqp_load.py `idle-mqtts`) on a
//!   third: AMQP is TLS-only, so that column tells the TLS session from the AMQP state.
//! - **AMQP → MQTT throughput**: module `pub` sends over AMQP (amqp_load.py `send`, unsettled,
//!   a window of 16, and of 64 — the hub's link credit), the bench MQTT `Client` as `sub` counts
//!   the routed inputs; beside it MQTT → MQTT with the bench `Client` as `pub` (window 16, QoS 1,
//!   routing.rs's scenario (a)), in the same run. CPU seconds of tinyedge per 100,000 messages;
//!   the Python sender's own rate and CPU use (a single-threaded Python client may be the
//!   bottleneck of the AMQP rows).
//!
//! Writes `benches/results/amqp.md` and prints it. A benchmark, not a test: nothing is asserted.

mod common;

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use mqttbytes::v4::{self, Packet, PubAck, Publish};
use mqttbytes::QoS;
use tinyedge_platform::{identity, sas};

/// Idle connections for the memory figures (of the `IDLE_CONNECTIONS` leaf devices configured).
const IDLE: usize = 200;
/// Messages per throughput run (routing.rs's scenario (a) sends as many).
const RUN_MESSAGES: usize = 20_000;
const PYTHON: &str = "/usr/bin/python3";

const DEPLOYMENT: &str = r#"{"modulesContent":{"$edgeAgent":{"properties.desired":{"schemaVersion":"1.1","runtime":{"type":"docker","settings":{}},
 "systemModules":{"edgeAgent":{"type":"docker","settings":{"image":"x"}},"edgeHub":{"type":"docker","status":"running","restartPolicy":"always","settings":{"image":"x"}}},
 "modules":{"pub":{"type":"docker","status":"running","restartPolicy":"always","settings":{"image":"x"}},
            "sub":{"type":"docker","status":"running","restartPolicy":"always","settings":{"image":"x"}}}}},
 "$edgeHub":{"properties.desired":{"schemaVersion":"1.1","routes":{
   "r":"FROM /messages/modules/pub/* INTO BrokeredEndpoint(\"/modules/sub/inputs/in\")"}}}}}"#;

struct Hub {
    broker: Broker,
    amqps: u16,
    ca: String,
}

fn start(bin: &Path, dir: &Path) -> Hub {
    std::fs::create_dir_all(dir).expect("dir");
    let amqps = free_port();
    let broker = start_tinyedge_deployment(bin, dir, &format!("amqps = \"127.0.0.1:{amqps}\""), DEPLOYMENT, |_| {});
    wait_port(amqps);
    let ca = dir.join("data/certs/edge-ca.pem");
    assert!(ca.exists(), "no edge CA at {}", ca.display());
    Hub { broker, amqps, ca: ca.display().to_string() }
}

fn module_token(module: &str) -> String {
    let key = identity::derive_module_key(&DEVICE_KEY, module);
    let expiry = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0) + 86_400;
    sas::generate(&format!("{HUB}/devices/{DEVICE}/modules/{module}"), &key, expiry)
}

/// The next packet, or `None` once `deadline` has passed without one.
fn read_until(c: &mut Client, deadline: Instant) -> Option<Packet> {
    loop {
        match v4::read(&mut c.buf, 1 << 20) {
            Ok(p) => return Some(p),
            Err(mqttbytes::Error::InsufficientBytes(_)) => {
                let wait = deadline.checked_duration_since(Instant::now())?;
                c.stream.set_read_timeout(Some(wait.max(Duration::from_millis(1)))).expect("timeout");
                let mut chunk = [0u8; 16 * 1024];
                match c.stream.read(&mut chunk) {
                    Ok(0) => panic!("broker closed the connection"),
                    Ok(n) => c.buf.extend_from_slice(&chunk[..n]),
                    Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                    Err(e) => panic!("read: {e}"),
                }
            }
            Err(e) => panic!("bad packet from broker: {e:?}"),
        }
    }
}

/// `sub` subscribed to its inputs at QoS 1.
fn subscriber(b: &Broker) -> Client {
    let mut sub = Client::connect(b.port, "sub", tinyedge_creds("sub"));
    sub.subscribe(&format!("devices/{DEVICE}/modules/sub/inputs/#"), QoS::AtLeastOnce);
    sub
}

/// Counts `count` routed messages (acknowledging each); returns how many came and when the last did.
fn receive(mut sub: Client, count: usize, deadline: Instant) -> (usize, Instant) {
    let mut got = 0;
    let mut last = Instant::now();
    while got < count {
        let Some(packet) = read_until(&mut sub, deadline) else { break };
        let Packet::Publish(p) = packet else { continue };
        got += 1;
        last = Instant::now();
        PubAck::new(p.pkid).write(&mut sub.out).expect("encode");
        if sub.buf.is_empty() || sub.out.len() > 4096 || got == count {
            sub.flush();
        }
    }
    sub.flush();
    (got, last)
}

struct Row {
    flow: &'static str,
    size: usize,
    window: usize,
    delivered: usize,
    msgs_per_sec: f64,
    cpu_per_100k: f64,
    /// tinyedge's CPU seconds per second of the run (1.0 = one core of the 2).
    cpu_share: f64,
    /// The Python sender's own rate (messages settled per second) and its CPU use (share of one core).
    sender: Option<(f64, f64)>,
}

fn mqtt_to_mqtt(h: &Hub, size: usize) -> Row {
    let b = &h.broker;
    let sub = subscriber(b);
    let deadline = Instant::now() + RUN_TIME_MAX;
    let receiver = std::thread::spawn(move || receive(sub, RUN_MESSAGES, deadline));
    let mut publ = Client::connect(b.port, "pub", tinyedge_creds("pub"));
    let topic = format!("devices/{DEVICE}/modules/pub/messages/events/");
    let payload = vec![b'x'; size];
    let cpu_before = cpu_seconds(b.child.id());
    let start = Instant::now();
    let (mut unacked, mut pkid) = (0usize, 0u16);
    for _ in 0..RUN_MESSAGES {
        pkid = pkid.wrapping_add(1).max(1);
        let mut p = Publish::new(topic.as_str(), QoS::AtLeastOnce, payload.clone());
        p.pkid = pkid;
        p.write(&mut publ.out).expect("encode");
        publ.flush();
        unacked += 1;
        while unacked >= PUBLISH_WINDOW {
            if let Packet::PubAck(_) = publ.read() {
                unacked -= 1;
            }
        }
    }
    while unacked > 0 {
        if let Packet::PubAck(_) = publ.read() {
            unacked -= 1;
        }
    }
    let (delivered, end) = receiver.join().expect("receiver");
    let cpu = cpu_seconds(b.child.id()) - cpu_before;
    Row {
        flow: "MQTT → MQTT",
        size,
        window: PUBLISH_WINDOW,
        delivered,
        msgs_per_sec: delivered as f64 / end.duration_since(start).as_secs_f64().max(1e-9),
        cpu_per_100k: cpu * 100_000.0 / delivered.max(1) as f64,
        cpu_share: cpu / end.duration_since(start).as_secs_f64().max(1e-9),
        sender: None,
    }
}

fn python(args: &[String]) -> Child {
    Command::new(PYTHON)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("amqp_load.py"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("/usr/bin/python3 (apt-get install python3-qpid-proton)")
}

fn amqp_to_mqtt(h: &Hub, size: usize, window: usize) -> Row {
    let b = &h.broker;
    let sub = subscriber(b);
    let audience = format!("{HUB}/devices/{DEVICE}/modules/pub");
    let address = format!("/devices/{DEVICE}/modules/pub/messages/events");
    let mut child = python(&[
        "send".into(),
        h.amqps.to_string(),
        h.ca.clone(),
        audience,
        module_token("pub"),
        address,
        RUN_MESSAGES.to_string(),
        size.to_string(),
        window.to_string(),
    ]);
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("read");
    assert_eq!(line.trim(), "START", "amqp_load.py send did not start");
    let cpu_before = cpu_seconds(b.child.id());
    let start = Instant::now();
    let (delivered, end) = receive(sub, RUN_MESSAGES, start + RUN_TIME_MAX);
    let cpu = cpu_seconds(b.child.id()) - cpu_before;
    line.clear();
    out.read_line(&mut line).expect("read");
    let _ = child.wait();
    let result: serde_json::Value = serde_json::from_str(line.trim()).unwrap_or(serde_json::Value::Null);
    let secs = result["secs"].as_f64().unwrap_or(0.0);
    let sender = (secs > 0.0).then(|| {
        (result["accepted"].as_f64().unwrap_or(0.0) / secs, result["cpu_secs"].as_f64().unwrap_or(0.0) / secs)
    });
    if result["accepted"].as_u64() != Some(RUN_MESSAGES as u64) {
        eprintln!("amqp sender: {line}");
    }
    Row {
        flow: "AMQP → MQTT",
        size,
        window,
        delivered,
        msgs_per_sec: delivered as f64 / end.duration_since(start).as_secs_f64().max(1e-9),
        cpu_per_100k: cpu * 100_000.0 / delivered.max(1) as f64,
        cpu_share: cpu / end.duration_since(start).as_secs_f64().max(1e-9),
        sender,
    }
}

/// (RSS before, RSS with `IDLE` connections open, anonymous before, anonymous after), KiB.
struct Idle {
    rss: (u64, u64),
    anon: (u64, u64),
}

impl Idle {
    fn per_connection(&self) -> (f64, f64) {
        (
            self.rss.1.saturating_sub(self.rss.0) as f64 / IDLE as f64,
            self.anon.1.saturating_sub(self.anon.0) as f64 / IDLE as f64,
        )
    }
}

/// `IDLE` leaf devices held open by one amqp_load.py process in `mode` (`idle`: AMQP on `port`,
/// `idle-mqtts`: MQTT over TLS on `port`), around tinyedge `pid`.
fn python_idle(pid: u32, mode: &str, port: u16, ca: &str) -> Idle {
    std::thread::sleep(Duration::from_millis(500));
    let before = memory_kib(pid);
    let mut args = vec![mode.to_string(), port.to_string(), ca.to_string(), HUB.to_string(), IDLE.to_string()];
    args.extend((0..IDLE).map(|i| tinyedge_leaf_creds(&format!("leaf-{i}")).map(|c| c.2).unwrap_or_default()));
    let mut child = python(&args);
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("read");
    assert_eq!(line.trim(), format!("READY {IDLE}"), "amqp_load.py {mode} did not connect all");
    std::thread::sleep(Duration::from_secs(1));
    let after = memory_kib(pid);
    let _ = child.kill();
    let _ = child.wait();
    Idle { rss: (before.0, after.0), anon: (before.1, after.1) }
}

/// A fresh tinyedge as [`start`], restarted with `[hub] mqtts` on a free port (the benches'
/// config turns it off); returns the hub and that port.
fn start_mqtts(bin: &Path, dir: &Path) -> (Hub, u16) {
    let mut hub = start(bin, dir);
    let _ = hub.broker.child.kill();
    let _ = hub.broker.child.wait();
    let mqtts = free_port();
    let config = dir.join("tinyedge.toml");
    let text = std::fs::read_to_string(&config).expect("read config");
    std::fs::write(&config, text.replacen("mqtts = \"\"", &format!("mqtts = \"127.0.0.1:{mqtts}\""), 1))
        .expect("write config");
    hub.broker.child = Command::new(bin)
        .arg("--config")
        .arg(&config)
        .arg("run")
        .stderr(Stdio::null())
        .spawn()
        .expect("restart tinyedge");
    wait_port(mqtts);
    wait_port(hub.broker.port);
    (hub, mqtts)
}

fn mqtt_idle(b: &Broker) -> Idle {
    std::thread::sleep(Duration::from_millis(500));
    let pid = b.child.id();
    let before = memory_kib(pid);
    let conns: Vec<Client> = (0..IDLE)
        .map(|i| {
            let id = format!("leaf-{i}");
            Client::connect(b.port, &id, tinyedge_leaf_creds(&id))
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let after = memory_kib(pid);
    drop(conns);
    Idle { rss: (before.0, after.0), anon: (before.1, after.1) }
}

fn size_label(size: usize) -> String {
    if size >= 1024 {
        format!("{} KiB", size / 1024)
    } else {
        format!("{size} B")
    }
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf();
    let bin = build_tinyedge(&root);
    let dir = std::env::temp_dir().join(format!("tinyedge-bench-amqp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // Memory first, each on a fresh process: after traffic the allocator keeps its high-water mark.
    let hub = start(&bin, &dir.join("a"));
    let amqp_mem = python_idle(hub.broker.child.id(), "idle", hub.amqps, &hub.ca);
    let (a_rss, a_anon) = amqp_mem.per_connection();
    eprintln!(
        "AMQP idle: {} → {} KiB RSS with {IDLE} connections: {a_rss:.2} KiB each ({a_anon:.2} anonymous)",
        amqp_mem.rss.0, amqp_mem.rss.1
    );
    let mqtt_mem = {
        let other = start(&bin, &dir.join("b"));
        mqtt_idle(&other.broker)
    };
    let (m_rss, m_anon) = mqtt_mem.per_connection();
    eprintln!(
        "MQTT idle: {} → {} KiB RSS with {IDLE} connections: {m_rss:.2} KiB each ({m_anon:.2} anonymous)",
        mqtt_mem.rss.0, mqtt_mem.rss.1
    );
    let tls_mem = {
        let (other, mqtts) = start_mqtts(&bin, &dir.join("c"));
        python_idle(other.broker.child.id(), "idle-mqtts", mqtts, &other.ca)
    };
    let (t_rss, t_anon) = tls_mem.per_connection();
    eprintln!(
        "MQTT/TLS idle: {} → {} KiB RSS with {IDLE} connections: {t_rss:.2} KiB each ({t_anon:.2} anonymous)",
        tls_mem.rss.0, tls_mem.rss.1
    );

    let mut rows = Vec::new();
    for size in [64usize, 1024] {
        for which in 0..3 {
            let row = match which {
                0 => amqp_to_mqtt(&hub, size, PUBLISH_WINDOW),
                1 => mqtt_to_mqtt(&hub, size),
                _ => amqp_to_mqtt(&hub, size, 64),
            };
            eprintln!(
                "{} {} window {}: {}/{RUN_MESSAGES} delivered, {:.0} msg/s, {:.2} CPU s/100k ({:.0} % of a core){}",
                row.flow,
                size_label(size),
                row.window,
                row.delivered,
                row.msgs_per_sec,
                row.cpu_per_100k,
                row.cpu_share * 100.0,
                row.sender.map_or(String::new(), |(r, c)| format!(", sender {r:.0} msg/s at {:.0} % CPU", c * 100.0))
            );
            rows.push(row);
        }
    }

    let machine = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| c.lines().find_map(|l| l.strip_prefix("model name\t: ").map(str::to_string)))
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let date = Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let proton = Command::new(PYTHON)
        .args(["-c", "import proton; print('.'.join(map(str, proton.VERSION)))"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let python_bound = rows.iter().filter_map(|r| r.sender).any(|(_, c)| c >= 0.9);
    let mut md = String::new();
    let _ = writeln!(md, "# AMQP benchmark ({date}, {machine}, {cores} cores, loopback)\n");
    let _ = writeln!(md, "`cargo run --release -p tinyedge-benches --bin amqp`. One tinyedge (release build, default durability), modules `pub` → `sub` routed through the store. AMQP client: Debian's python3-qpid-proton {proton} (benches/amqp_load.py, event API, one thread), over TLS with CBS put-token; MQTT client: the benches' blocking mqttbytes client, plain TCP, QoS 1. `sub` is always the MQTT client.\n");
    let _ = writeln!(md, "## Throughput ({RUN_MESSAGES} messages per run, unsettled / QoS 1)\n");
    let _ = writeln!(md, "| flow | payload | sender window | delivered | msg/s | tinyedge CPU s/100k | tinyedge CPU (share of one core) | Python sender: own rate msg/s, CPU |");
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
    for r in &rows {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {}/{RUN_MESSAGES} | {:.0} | {:.2} | {:.0} % | {} |",
            r.flow,
            size_label(r.size),
            r.window,
            r.delivered,
            r.msgs_per_sec,
            r.cpu_per_100k,
            r.cpu_share * 100.0,
            r.sender.map_or("–".to_string(), |(rate, c)| format!("{rate:.0}, {:.0} %", c * 100.0))
        );
    }
    let _ = writeln!(
        md,
        "\nThe AMQP rows measure a single-threaded Python client as much as the hub: {}. The hub gives a sending link 64 credits (window 64 = all of it). The VM varies by 30 % or more between runs: compare rows of the same run.\n",
        if python_bound {
            "the Python sender ran at 90 % CPU or more of one core in at least one row, so those rows are bounded by the client, not by tinyedge (compare tinyedge's CPU per 100k messages instead)"
        } else {
            "the Python sender stayed below 90 % of one core, so the client was not saturated"
        }
    );
    let _ = writeln!(md, "## Memory per idle connection ({IDLE} connected, fresh processes)\n");
    let _ = writeln!(md, "| | AMQP (TLS, CBS put-token, `$cbs` sender + receiver, 1 telemetry sender link) | MQTT over TLS (`mqtts`, CONNECT) | MQTT (plain TCP, CONNECT) |");
    let _ = writeln!(md, "|---|---|---|---|");
    let _ = writeln!(
        md,
        "| tinyedge RSS before → with {IDLE} (KiB) | {} → {} | {} → {} | {} → {} |",
        amqp_mem.rss.0, amqp_mem.rss.1, tls_mem.rss.0, tls_mem.rss.1, mqtt_mem.rss.0, mqtt_mem.rss.1
    );
    let _ = writeln!(md, "| per connection, RSS (KiB) | {a_rss:.2} | {t_rss:.2} | {m_rss:.2} |");
    let _ = writeln!(md, "| per connection, anonymous (KiB) | {a_anon:.2} | {t_anon:.2} | {m_anon:.2} |");
    let _ = writeln!(md, "\nAMQP is served over TLS only: compare it with MQTT over TLS (the same rustls server session); the difference is the AMQP connection state (sessions, links, CBS, buffers). Three fresh processes, one per column; the AMQP and MQTT/TLS clients are one Python process, the plain MQTT one the benches' client.");
    print!("{md}");
    std::fs::write(root.join("benches/results/amqp.md"), &md).expect("write benches/results/amqp.md");
    drop(hub);
    let _ = std::fs::remove_dir_all(&dir);
}
