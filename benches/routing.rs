//! Routing benchmark: module-to-module messages through tinyedge (with its default durability
//! and power-safe) versus the same traffic through mosquitto and rumqttd as plain pub/sub, in
//! one run, on loopback.
//!
//! Run: `cargo run --release -p tinyedge-benches --bin routing` (builds the release
//! `tinyedge`; needs Debian's `mosquitto`; installs rumqttd 0.20 with `cargo install` into
//! `target/rumqttd` when it is missing). For each scenario — (a) one publisher with a window of
//! 16 QoS 1 messages, (b) one publisher that waits for each PUBACK (as the Azure SDKs do),
//! (c) 10 publishers to 10 subscribers, (d) fan-out of one output to 5 module inputs — at QoS
//! 0 and 1 and 64 B / 1 KiB / 16 KiB: delivered msg/s, p50/p99 latency from publish to receipt
//! (a timestamp in each payload), and CPU seconds per 100,000 delivered messages. Writes
//! `benches/results/routing.md` and `routing.svg` beside it. A benchmark, not a test: the
//! targets are compared and reported, never asserted. Clients are blocking sockets with the
//! mqttbytes codec, the same client code for every broker.

mod common;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use mqttbytes::v4::{Packet, PubAck, Publish};
use mqttbytes::QoS;

const RUMQTTD_VERSION: &str = "0.20.0";
/// Messages per publisher per run (scenario b: one at a time, fewer).
const WINDOW_MESSAGES: usize = 20_000;
const ONE_AT_A_TIME_MESSAGES: usize = 10_000;
const PAIRS: usize = 10;
const PAIR_MESSAGES: usize = 2_000;
const FAN_OUT: usize = 5;
const FAN_MESSAGES: usize = 5_000;
/// The `[store]` section both tinyedge instances run with (see where they start).
const STORE_FOR_BENCH: &str = "[store]\nmax_bytes = 1073741824\n";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Tinyedge,
    Plain,
}

#[derive(Clone, Copy)]
enum Scenario {
    Window,
    OneAtATime,
    TenToTen,
    FanOut,
}

impl Scenario {
    fn label(self) -> &'static str {
        match self {
            Scenario::Window => "(a) 1 pub, window 16",
            Scenario::OneAtATime => "(b) 1 pub, one at a time",
            Scenario::TenToTen => "(c) 10 pubs → 10 subs",
            Scenario::FanOut => "(d) fan-out 1 → 5",
        }
    }

    /// `(sender, receivers, messages)` of each flow.
    fn flows(self) -> Vec<(String, Vec<String>, usize)> {
        match self {
            Scenario::Window => vec![("pub".into(), vec!["sub".into()], WINDOW_MESSAGES)],
            Scenario::OneAtATime => vec![("pub".into(), vec!["sub".into()], ONE_AT_A_TIME_MESSAGES)],
            Scenario::TenToTen => (0..PAIRS).map(|i| (format!("p{i}"), vec![format!("s{i}")], PAIR_MESSAGES)).collect(),
            Scenario::FanOut => vec![("fan".into(), (0..FAN_OUT).map(|i| format!("f{i}")).collect(), FAN_MESSAGES)],
        }
    }

    fn window(self) -> usize {
        if matches!(self, Scenario::OneAtATime) {
            1
        } else {
            PUBLISH_WINDOW
        }
    }
}

/// The deployment: every module of every scenario, and their routes.
fn deployment() -> String {
    let mut modules = vec!["pub".to_string(), "sub".to_string(), "fan".to_string()];
    let mut routes =
        vec![r#""r":"FROM /messages/modules/pub/* INTO BrokeredEndpoint(\"/modules/sub/inputs/in\")""#.to_string()];
    for i in 0..PAIRS {
        modules.push(format!("p{i}"));
        modules.push(format!("s{i}"));
        routes.push(format!(
            r#""p{i}":"FROM /messages/modules/p{i}/* INTO BrokeredEndpoint(\"/modules/s{i}/inputs/in\")""#
        ));
    }
    for i in 0..FAN_OUT {
        modules.push(format!("f{i}"));
        routes.push(format!(
            r#""f{i}":"FROM /messages/modules/fan/* INTO BrokeredEndpoint(\"/modules/f{i}/inputs/in\")""#
        ));
    }
    let modules: Vec<String> = modules
        .iter()
        .map(|m| {
            format!(
                r#""{m}":{{"type":"docker","status":"running","restartPolicy":"always","settings":{{"image":"x"}}}}"#
            )
        })
        .collect();
    format!(
        r#"{{"modulesContent":{{"$edgeAgent":{{"properties.desired":{{"schemaVersion":"1.1","runtime":{{"type":"docker","settings":{{}}}},
 "systemModules":{{"edgeAgent":{{"type":"docker","settings":{{"image":"x"}}}},"edgeHub":{{"type":"docker","status":"running","restartPolicy":"always","settings":{{"image":"x"}}}}}},
 "modules":{{{}}}}}}},
 "$edgeHub":{{"properties.desired":{{"schemaVersion":"1.1","routes":{{{}}}}}}}}}}}"#,
        modules.join(","),
        routes.join(",")
    )
}

fn pub_topic(kind: Kind, sender: &str) -> String {
    match kind {
        Kind::Tinyedge => format!("devices/{DEVICE}/modules/{sender}/messages/events/"),
        Kind::Plain => format!("bench/{sender}"),
    }
}

fn sub_filter(kind: Kind, receiver: &str, sender: &str) -> String {
    match kind {
        Kind::Tinyedge => format!("devices/{DEVICE}/modules/{receiver}/inputs/#"),
        Kind::Plain => format!("bench/{sender}"),
    }
}

fn creds(b: &Broker, kind: Kind, module: &str) -> Option<(String, String, String)> {
    match kind {
        Kind::Tinyedge => (b.creds)(module),
        Kind::Plain => None,
    }
}

fn micros_since(origin: Instant) -> u64 {
    u64::try_from(origin.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// Receives `count` messages (acknowledging QoS 1); returns each one's latency (µs, from the
/// timestamp in its first 8 bytes) and the instant of the last one. Stops after 5 s without
/// a message (what a broker dropped is counted by the caller).
fn receive(mut sub: Client, count: usize, origin: Instant, deadline: Instant) -> (Vec<u64>, Instant) {
    let mut latencies = Vec::with_capacity(count);
    let mut last = Instant::now();
    sub.stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    while latencies.len() < count && Instant::now() < deadline {
        // Nothing for 5 s: the broker dropped the rest (QoS 0 under load, or a store at its
        // bound); the row reports how many came instead of aborting the run.
        let Packet::Publish(p) = (match sub.read_within() {
            Ok(packet) => packet,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => break,
            Err(e) => panic!("read: {e}"),
        }) else {
            continue;
        };
        let sent = p.payload.get(..8).and_then(|b| b.try_into().ok()).map_or(0, u64::from_le_bytes);
        latencies.push(micros_since(origin).saturating_sub(sent));
        last = Instant::now();
        if p.qos == QoS::AtLeastOnce {
            PubAck::new(p.pkid).write(&mut sub.out).expect("encode");
            // Acknowledge in batches, but never sit on acks while waiting for more data: the
            // broker's in-flight window would stall.
            if sub.buf.is_empty() || sub.out.len() > 4096 || latencies.len() == count {
                sub.flush();
            }
        }
    }
    (latencies, last)
}

fn publish(
    mut publ: Client,
    topic: String,
    qos: QoS,
    size: usize,
    count: usize,
    window: usize,
    origin: Instant,
    deadline: Instant,
) {
    let mut payload = vec![b'x'; size.max(8)];
    let mut unacked = 0usize;
    let mut pkid: u16 = 0;
    for _ in 0..count {
        payload[..8].copy_from_slice(&micros_since(origin).to_le_bytes());
        let mut p = Publish::new(topic.as_str(), qos, payload.clone());
        if qos == QoS::AtLeastOnce {
            pkid = pkid.wrapping_add(1).max(1);
            p.pkid = pkid;
        }
        p.write(&mut publ.out).expect("encode");
        if qos == QoS::AtLeastOnce {
            unacked += 1;
            publ.flush();
            while unacked >= window {
                if let Packet::PubAck(_) = publ.read() {
                    unacked -= 1;
                }
            }
        } else if window == 1 || publ.out.len() > 16 * 1024 {
            publ.flush();
            if window == 1 {
                // At QoS 0 "one at a time" means paced: a message per 100 µs at most.
                std::thread::sleep(Duration::from_micros(100));
            }
        }
        if Instant::now() > deadline {
            break;
        }
    }
    publ.flush();
    while qos == QoS::AtLeastOnce && unacked > 0 && Instant::now() < deadline {
        if let Packet::PubAck(_) = publ.read() {
            unacked -= 1;
        }
    }
}

/// One measured cell.
#[derive(Clone, Copy, Default)]
struct Cell {
    msgs_per_sec: f64,
    p50: f64,
    p99: f64,
    cpu_per_100k: f64,
    delivered: usize,
    expected: usize,
}

fn run(b: &Broker, kind: Kind, scenario: Scenario, qos: QoS, size: usize, tag: &str) -> Cell {
    let flows = scenario.flows();
    let origin = Instant::now();
    let deadline = origin + RUN_TIME_MAX;
    let mut receivers = Vec::new();
    let mut expected = 0;
    for (sender, subs, count) in &flows {
        for receiver in subs {
            let id = format!("{tag}-{receiver}");
            let mut sub = Client::connect(
                b.port,
                &if kind == Kind::Tinyedge { receiver_id(receiver) } else { id },
                creds(b, kind, receiver),
            );
            sub.subscribe(&sub_filter(kind, receiver, sender), qos);
            let count = *count;
            expected += count;
            receivers.push(std::thread::spawn(move || receive(sub, count, origin, deadline)));
        }
    }
    let cpu_before = cpu_seconds(b.child.id());
    let start = Instant::now();
    let publishers: Vec<_> = flows
        .iter()
        .map(|(sender, _, count)| {
            let id = if kind == Kind::Tinyedge { receiver_id(sender) } else { format!("{tag}-{sender}") };
            let publ = Client::connect(b.port, &id, creds(b, kind, sender));
            let (topic, count, window) = (pub_topic(kind, sender), *count, scenario.window());
            std::thread::spawn(move || publish(publ, topic, qos, size, count, window, origin, deadline))
        })
        .collect();
    for p in publishers {
        p.join().expect("publisher");
    }
    let mut latencies = Vec::new();
    let mut end = start;
    for r in receivers {
        let (l, at) = r.join().expect("receiver");
        end = end.max(at);
        latencies.extend(l);
    }
    let cpu = cpu_seconds(b.child.id()) - cpu_before;
    latencies.sort_unstable();
    let delivered = latencies.len();
    let pct = |q: usize| latencies.get(delivered.saturating_sub(1) * q / 100).copied().unwrap_or(0) as f64;
    Cell {
        msgs_per_sec: delivered as f64 / end.duration_since(start).as_secs_f64().max(1e-9),
        p50: pct(50),
        p99: pct(99),
        cpu_per_100k: if delivered > 0 { cpu * 100_000.0 / delivered as f64 } else { 0.0 },
        delivered,
        expected,
    }
}

/// tinyedge's client id of module `m` (its identity).
fn receiver_id(module: &str) -> String {
    format!("{DEVICE}/{module}")
}

/// The rumqttd binary: `target/rumqttd/bin/rumqttd`, installed with `cargo install` if missing.
fn rumqttd(root: &Path) -> Option<PathBuf> {
    let install_root = root.join("target/rumqttd");
    let bin = install_root.join("bin/rumqttd");
    if bin.exists() {
        return Some(bin);
    }
    eprintln!("installing rumqttd {RUMQTTD_VERSION} into {} (once)", install_root.display());
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        // Not `--locked`: its lock pins metrics 0.22.1, which today's rustc refuses.
        .args(["install", "rumqttd", "--version", RUMQTTD_VERSION, "--root"])
        .arg(&install_root)
        .status();
    match status {
        Ok(s) if s.success() && bin.exists() => Some(bin),
        _ => {
            eprintln!("rumqttd could not be installed: its columns are left out");
            None
        }
    }
}

fn start_rumqttd(bin: &Path, dir: &Path) -> Broker {
    let port = free_port();
    let conf = dir.join("rumqttd.toml");
    std::fs::write(
        &conf,
        format!(
            "id = 0\n[router]\nid = 0\nmax_connections = 10010\nmax_outgoing_packet_count = 200\nmax_segment_size = 104857600\nmax_segment_count = 10\n\
             [v4.1]\nname = \"v4-1\"\nlisten = \"127.0.0.1:{port}\"\nnext_connection_delay_ms = 0\n\
             [v4.1.connections]\nconnection_timeout_ms = 60000\nmax_payload_size = 32768\nmax_inflight_count = 100\ndynamic_filters = true\n"
        ),
    )
    .expect("write rumqttd.toml");
    let child = Command::new(bin)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start rumqttd");
    wait_port(port);
    Broker {
        name: "rumqttd",
        child,
        port,
        creds: anonymous,
        leaf_creds: anonymous,
        pub_topic: "bench/pub".into(),
        sub_topic: "bench/pub".into(),
    }
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf();
    let bin = build_tinyedge(&root);
    let rumqttd_bin = rumqttd(&root);
    let dir = std::env::temp_dir().join(format!("tinyedge-bench-{}", std::process::id()));
    let (default_dir, safe_dir) = (dir.join("default"), dir.join("power-safe"));
    std::fs::create_dir_all(&default_dir).expect("dir");
    std::fs::create_dir_all(&safe_dir).expect("dir");
    let deployment = deployment();
    // tinyedge twice: with its default durability (PUBACK once written to the OS, fsync in the
    // background at most once a second) and power-safe (`fsync = "always"`: PUBACK after the
    // group fsync that covers it); mosquitto keeps messages in memory only, rumqttd in its
    // in-memory "segments" (not a durable store either).
    //
    // Both stores are given 1 GiB (`max_bytes`; the default is 256 MiB): a QoS 0 row of
    // 20,000 16 KiB messages from a publisher without flow control can leave more than 256 MiB
    // waiting for the subscriber, and at its bound the store drops its oldest segment (as
    // documented), which the bench would see as messages that never come. mosquitto holds the
    // same backlog in memory.
    let mut default = start_tinyedge_deployment(&bin, &default_dir, STORE_FOR_BENCH, &deployment, |_| {});
    default.name = "tinyedge (default)";
    let safe_toml = format!("{STORE_FOR_BENCH}fsync = \"always\"\n");
    let mut safe = start_tinyedge_deployment(&bin, &safe_dir, &safe_toml, &deployment, |_| {});
    safe.name = "tinyedge (power-safe)";
    let mut brokers: Vec<(Broker, Kind)> =
        vec![(default, Kind::Tinyedge), (safe, Kind::Tinyedge), (start_mosquitto(&dir), Kind::Plain)];
    if let Some(rumqttd_bin) = &rumqttd_bin {
        brokers.push((start_rumqttd(rumqttd_bin, &dir), Kind::Plain));
    }
    // `BENCH_SCENARIOS=ab` runs only those scenarios (letters a-d), without the memory figures,
    // and prints the rows without writing the results: for quick comparisons while working.
    let only = std::env::var("BENCH_SCENARIOS").ok();
    // `BENCH_SIZES=16384` (comma-separated payload sizes) likewise, with BENCH_SCENARIOS only.
    let sizes = only.as_ref().and_then(|_| std::env::var("BENCH_SIZES").ok());
    // Memory first, on fresh processes: after the traffic the allocators keep their high-water marks.
    let mem: Vec<Memory> = if only.is_some() { Vec::new() } else { brokers.iter().map(|(b, _)| memory(b)).collect() };
    let scenarios: Vec<Scenario> = [Scenario::Window, Scenario::OneAtATime, Scenario::TenToTen, Scenario::FanOut]
        .into_iter()
        .filter(|s| only.as_ref().is_none_or(|only| only.contains(&s.label()[1..2])))
        .collect();
    let mut rows: Vec<(Scenario, &str, usize, Vec<Cell>)> = Vec::new();
    let mut run_no = 0;
    for scenario in scenarios {
        for (qos, qname) in [(QoS::AtMostOnce, "0"), (QoS::AtLeastOnce, "1")] {
            for size in [64usize, 1024, 16 * 1024] {
                if sizes.as_ref().is_some_and(|sizes| !sizes.split(',').any(|s| s.trim() == size.to_string())) {
                    continue;
                }
                let mut cells = Vec::new();
                for (b, kind) in &brokers {
                    run_no += 1;
                    let cell = run(b, *kind, scenario, qos, size, &format!("r{run_no}"));
                    eprintln!(
                        "{} {} qos{qname} {size}B: {:.0} msg/s ({}/{} delivered), p50 {:.0} us, p99 {:.0} us, {:.2} CPU s/100k",
                        b.name,
                        scenario.label(),
                        cell.msgs_per_sec,
                        cell.delivered,
                        cell.expected,
                        cell.p50,
                        cell.p99,
                        cell.cpu_per_100k
                    );
                    cells.push(cell);
                }
                rows.push((scenario, qname, size, cells));
            }
        }
    }
    if only.is_some() {
        return;
    }
    let names: Vec<&str> = brokers.iter().map(|(b, _)| b.name).collect();
    let machine = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| c.lines().find_map(|l| l.strip_prefix("model name\t: ").map(str::to_string)))
        .unwrap_or_else(|| "unknown CPU".into());
    let date = Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Routing benchmark ({date}, {machine}, {} cores, loopback)\n",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let _ = writeln!(md, "`cargo run --release -p tinyedge-benches --bin routing`. Brokers: {}; {}. tinyedge routes module to module through its store (default durability: PUBACK after the write, fsync in the background at most once a second; power-safe: PUBACK after the group fsync); mosquitto {} and rumqttd {RUMQTTD_VERSION} are plain pub/sub with messages in memory only (rumqttd's \"segments\" are an in-memory log, not a durable store). Latency: publish to receipt, measured in every run (a timestamp in each payload). CPU: user+system seconds of the broker process per 100,000 delivered messages. The VM varies by 30 % or more between runs: compare within a run.\n",
        names.join(", "),
        if rumqttd_bin.is_some() { "rumqttd installed with cargo install" } else { "rumqttd could not be installed" },
        mosquitto_version());
    let _ = writeln!(
        md,
        "| scenario | QoS | payload | {} | tinyedge/mosquitto | tinyedge/rumqttd | p50/p99 µs ({}) | CPU s/100k ({}) |",
        names.iter().map(|n| format!("{n} msg/s")).collect::<Vec<_>>().join(" | "),
        names.join(", "),
        names.join(", ")
    );
    let _ = writeln!(md, "|{}", "---|".repeat(names.len() + 7));
    for (scenario, q, size, cells) in &rows {
        let ratio = |i: usize| {
            cells
                .get(i)
                .map_or("–".to_string(), |c| format!("{:.2}", cells[0].msgs_per_sec / c.msgs_per_sec.max(1e-9)))
        };
        let _ = writeln!(
            md,
            "| {} | {q} | {} | {} | {} | {} | {} | {} |",
            scenario.label(),
            if *size >= 1024 { format!("{} KiB", size / 1024) } else { format!("{size} B") },
            cells.iter().map(|c| format!("{:.0}", c.msgs_per_sec)).collect::<Vec<_>>().join(" | "),
            ratio(2),
            ratio(3),
            cells.iter().map(|c| format!("{:.0}/{:.0}", c.p50, c.p99)).collect::<Vec<_>>().join(", "),
            cells.iter().map(|c| format!("{:.2}", c.cpu_per_100k)).collect::<Vec<_>>().join(", ")
        );
    }
    let short = rows.iter().flat_map(|(_, _, _, c)| c.iter()).filter(|c| c.delivered < c.expected).count();
    let _ = writeln!(
        md,
        "\nRuns that delivered fewer messages than sent (at QoS 0 a broker may drop under load): {short}.\n"
    );
    let _ = writeln!(md, "| memory (fresh process) | {} |", names.join(" | "));
    let _ = writeln!(md, "|{}", "---|".repeat(names.len() + 1));
    let _ = writeln!(
        md,
        "| idle RSS (KiB; tinyedge's config lists the {IDLE_CONNECTIONS} leaf devices) | {} |",
        mem.iter().map(|m| m.idle_rss.to_string()).collect::<Vec<_>>().join(" | ")
    );
    let _ = writeln!(
        md,
        "| idle anonymous (KiB) | {} |",
        mem.iter().map(|m| m.idle_anon.to_string()).collect::<Vec<_>>().join(" | ")
    );
    let _ = writeln!(
        md,
        "| per idle MQTT connection ({IDLE_CONNECTIONS} connected, KiB) | {} |",
        mem.iter().map(|m| format!("{:.2}", m.per_connection_kib)).collect::<Vec<_>>().join(" | ")
    );
    print!("{md}");
    let results = root.join("benches/results");
    std::fs::write(results.join("routing.md"), &md).expect("write routing.md");
    // One chart: msg/s of scenario (a) and (b) at QoS 1, per payload, per broker.
    let labels: Vec<String> = rows
        .iter()
        .filter(|(s, q, _, _)| *q == "1" && matches!(s, Scenario::Window | Scenario::OneAtATime))
        .map(|(s, _, size, _)| {
            format!(
                "{} {}",
                if matches!(s, Scenario::Window) { "a" } else { "b" },
                if *size >= 1024 { format!("{}K", size / 1024) } else { format!("{size}B") }
            )
        })
        .collect();
    let colors = ["#1f77b4", "#aec7e8", "#ff7f0e", "#2ca02c"];
    let series: Vec<(&str, &str, Vec<f64>)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let values = rows
                .iter()
                .filter(|(s, q, _, _)| *q == "1" && matches!(s, Scenario::Window | Scenario::OneAtATime))
                .map(|(_, _, _, c)| c[i].msgs_per_sec)
                .collect();
            (*n, colors[i % colors.len()], values)
        })
        .collect();
    let label_refs: Vec<&str> = labels.iter().map(String::as_str).collect();
    let svg = bar_chart_svg("QoS 1 routing, msg/s (a: window 16, b: one at a time)", "", &label_refs, &series);
    std::fs::write(results.join("routing.svg"), svg).expect("write routing.svg");
    drop(brokers);
    let _ = std::fs::remove_dir_all(&dir);
}
