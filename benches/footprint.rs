//! Footprint benchmark: what tinyedge costs a small gateway, next to mosquitto, in one run.
//!
//! Run: `cargo run --release -p tinyedge-benches --bin footprint` (builds the release
//! `tinyedge`; needs Debian's `mosquitto`). Reports, for the current build:
//! - stripped binary size per target (the host build and any cross build in `target/<triple>/`);
//! - idle RSS, and RSS per idle MQTT connection (1,000 connected);
//! - peak RSS and CPU seconds while routing 10,000 msg/s (QoS 1, 64 B) for 30 s;
//! - RSS while the store holds 0 … 100,000 messages for a module that is offline (mosquitto:
//!   queued for an offline persistent QoS 1 session, which it keeps in memory);
//! - a constrained run: tinyedge in a cgroup with 32 MiB of memory and one CPU, routing and
//!   storing, and whether it survived.
//!
//! Writes `benches/results/footprint.md` and two SVG charts beside it, and prints the table. A
//! benchmark, not a test: budgets are compared and reported, never asserted.

mod common;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use mqttbytes::v4::{Connect, Packet, PubAck, Publish};
use mqttbytes::QoS;

const ROUTING_RATE_PER_SEC: u64 = 10_000;
const ROUTING_SECS: u64 = 30;
const STORED_MESSAGES: usize = 100_000;
const STORED_PAYLOAD_BYTES: usize = 64;
/// The constrained run's memory limit: a small Pi Zero–class budget for the whole runtime.
const CGROUP_MEMORY_BYTES: u64 = 32 * 1024 * 1024;
const CGROUP_ROUTING_SECS: u64 = 10;
/// Budgets of the constrained-hardware issue (reported against, not asserted).
const BUDGET_BINARY_BYTES: u64 = 6 * 1024 * 1024;
const BUDGET_IDLE_RSS_KIB: u64 = 4 * 1024;
const BUDGET_PER_CONNECTION_KIB: f64 = 4.0;

const CROSS_TARGETS: &[&str] =
    &["aarch64-unknown-linux-gnu", "armv7-unknown-linux-gnueabihf", "x86_64-unknown-linux-musl"];

struct LoadResult {
    peak_rss_kib: u64,
    cpu_secs: f64,
    delivered: usize,
    sent: usize,
}

/// Publishes `rate` msg/s for `secs` from `pub` to `sub` (QoS 0 in, so the pace is the
/// publisher's and not the durability wait; QoS 1 out, acknowledged) and samples RSS.
fn routing_load(b: &Broker, rate: u64, secs: u64) -> LoadResult {
    let mut sub = Client::connect(b.port, "load-sub", (b.creds)("sub"));
    sub.subscribe(&b.sub_topic, QoS::AtLeastOnce);
    sub.stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let total = (rate * secs) as usize;
    let receiver = std::thread::spawn(move || {
        let mut got = 0;
        while got < total {
            let Some(Packet::Publish(p)) = read_some(&mut sub) else { break };
            got += 1;
            // mosquitto delivers at the publish QoS (0 here), tinyedge at the subscription's (1,
            // as IoT Edge): acknowledge only what needs it.
            if p.qos == QoS::AtLeastOnce {
                PubAck::new(p.pkid).write(&mut sub.out).expect("encode");
            }
            if sub.buf.is_empty() && !sub.out.is_empty() {
                sub.flush();
            }
        }
        got
    });
    let mut publ = Client::connect(b.port, "load-pub", (b.creds)("pub"));
    let payload = vec![b'x'; 64];
    let cpu_before = cpu_seconds(b.child.id());
    let start = Instant::now();
    let mut peak = 0;
    let mut next_sample = start;
    for i in 0..total {
        let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        if Instant::now() >= next_sample {
            peak = peak.max(memory_kib(b.child.id()).0);
            next_sample += Duration::from_secs(1);
        }
        let p = Publish::new(b.pub_topic.as_str(), QoS::AtMostOnce, payload.clone());
        p.write(&mut publ.out).expect("encode");
        publ.flush();
    }
    let delivered = receiver.join().unwrap_or(0);
    peak = peak.max(memory_kib(b.child.id()).0);
    LoadResult { peak_rss_kib: peak, cpu_secs: cpu_seconds(b.child.id()) - cpu_before, delivered, sent: total }
}

/// One packet, or `None` when the read times out or the broker closes.
fn read_some(c: &mut Client) -> Option<Packet> {
    use std::io::Read as _;
    loop {
        match mqttbytes::v4::read(&mut c.buf, 1 << 20) {
            Ok(p) => return Some(p),
            Err(mqttbytes::Error::InsufficientBytes(_)) => {
                let mut chunk = [0u8; 16 * 1024];
                match c.stream.read(&mut chunk) {
                    Ok(n) if n > 0 => c.buf.extend_from_slice(&chunk[..n]),
                    _ => return None,
                }
            }
            Err(_) => return None,
        }
    }
}

/// Sends `count` messages that wait for an offline receiver; RSS sampled along the way.
fn store_fill(b: &Broker, count: usize) -> Vec<(usize, u64)> {
    let (publisher_role, topic) = if b.name == "tinyedge" {
        // `sub`'s output is routed to the `offline` module, which never connects.
        ("sub", format!("devices/{DEVICE}/modules/sub/messages/events/"))
    } else {
        // An offline persistent QoS 1 session makes mosquitto queue for it.
        let mut offline = Connect::new("offline-store");
        offline.clean_session = false;
        let mut c = Client::connect_with(b.port, offline);
        c.subscribe("stored/#", QoS::AtLeastOnce);
        drop(c);
        std::thread::sleep(Duration::from_millis(200));
        ("pub", "stored/in".to_string())
    };
    let mut publ = Client::connect(b.port, "store-pub", (b.creds)(publisher_role));
    let payload = vec![b's'; STORED_PAYLOAD_BYTES];
    let checkpoints = [0, count / 10, count / 4, count / 2, count * 3 / 4, count];
    let mut samples = vec![(0, memory_kib(b.child.id()).0)];
    let mut unacked = 0usize;
    for i in 1..=count {
        let mut p = Publish::new(topic.as_str(), QoS::AtLeastOnce, payload.clone());
        p.pkid = (i % 60_000 + 1) as u16;
        p.write(&mut publ.out).expect("encode");
        publ.flush();
        unacked += 1;
        while unacked >= PUBLISH_WINDOW || (i == count && unacked > 0) {
            if let Packet::PubAck(_) = publ.read() {
                unacked -= 1;
            }
        }
        if checkpoints[1..].contains(&i) {
            std::thread::sleep(Duration::from_millis(200));
            samples.push((i, memory_kib(b.child.id()).0));
        }
    }
    samples
}

/// A cgroup v1 with a memory limit and a one-CPU quota, removed on drop.
struct Cgroup {
    memory: PathBuf,
    cpu: PathBuf,
}

impl Cgroup {
    fn create(name: &str) -> Result<Cgroup, String> {
        let memory = PathBuf::from("/sys/fs/cgroup/memory").join(name);
        let cpu = PathBuf::from("/sys/fs/cgroup/cpu").join(name);
        std::fs::create_dir_all(&memory).map_err(|e| format!("{}: {e}", memory.display()))?;
        std::fs::create_dir_all(&cpu).map_err(|e| format!("{}: {e}", cpu.display()))?;
        let write =
            |path: PathBuf, value: String| std::fs::write(&path, value).map_err(|e| format!("{}: {e}", path.display()));
        write(memory.join("memory.limit_in_bytes"), CGROUP_MEMORY_BYTES.to_string())?;
        // No swap beyond the limit where the kernel offers the knob.
        let _ = std::fs::write(memory.join("memory.memsw.limit_in_bytes"), CGROUP_MEMORY_BYTES.to_string());
        write(cpu.join("cpu.cfs_period_us"), "100000".into())?;
        write(cpu.join("cpu.cfs_quota_us"), "100000".into())?;
        Ok(Cgroup { memory, cpu })
    }

    fn add(&self, pid: u32) {
        let _ = std::fs::write(self.memory.join("cgroup.procs"), pid.to_string());
        let _ = std::fs::write(self.cpu.join("cgroup.procs"), pid.to_string());
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.memory.join(file)).unwrap_or_default().trim().to_string()
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.memory);
        let _ = std::fs::remove_dir(&self.cpu);
    }
}

struct Constrained {
    survived: bool,
    max_usage_kib: u64,
    failcnt: String,
    load: LoadResult,
    stored_rss_kib: u64,
}

fn constrained_run(bin: &Path, dir: &Path) -> Result<Constrained, String> {
    let cgroup = Cgroup::create(&format!("tinyedge-bench-{}", std::process::id()))?;
    let run_dir = dir.join("constrained");
    std::fs::create_dir_all(&run_dir).map_err(|e| e.to_string())?;
    let mut b = start_tinyedge_with(bin, &run_dir, "", |pid| cgroup.add(pid));
    let load = routing_load(&b, ROUTING_RATE_PER_SEC, CGROUP_ROUTING_SECS);
    let stored = store_fill(&b, STORED_MESSAGES);
    let survived = matches!(b.child.try_wait(), Ok(None));
    let max_usage_kib = cgroup.read("memory.max_usage_in_bytes").parse::<u64>().unwrap_or(0) / 1024;
    let failcnt = cgroup.read("memory.failcnt");
    drop(b);
    Ok(Constrained { survived, max_usage_kib, failcnt, load, stored_rss_kib: stored.last().map_or(0, |s| s.1) })
}

fn binary_sizes(root: &Path) -> Vec<(String, u64)> {
    let mut sizes = Vec::new();
    let host = root.join("target/release/tinyedge");
    if let Ok(m) = std::fs::metadata(&host) {
        sizes.push((format!("{} (host)", std::env::consts::ARCH), m.len()));
    }
    for target in CROSS_TARGETS {
        if let Ok(m) = std::fs::metadata(root.join("target").join(target).join("release/tinyedge")) {
            sizes.push(((*target).to_string(), m.len()));
        }
    }
    sizes
}

/// Lines of (x, y) points per series.
fn line_chart_svg(title: &str, x_unit: &str, y_unit: &str, series: &[(&str, &str, Vec<(f64, f64)>)]) -> String {
    let (width, height, left, bottom, top) = (760.0, 360.0, 80.0, 60.0, 40.0);
    let max_x = series.iter().flat_map(|s| s.2.iter().map(|p| p.0)).fold(1.0_f64, f64::max);
    let max_y = series.iter().flat_map(|s| s.2.iter().map(|p| p.1)).fold(1.0_f64, f64::max) * 1.15;
    let (plot_w, plot_h) = (width - left - 30.0, height - bottom - top);
    let px = |x: f64| left + plot_w * x / max_x;
    let py = |y: f64| height - bottom - plot_h * y / max_y;
    let mut svg = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n");
    let _ = writeln!(svg, "<rect width=\"100%\" height=\"100%\" fill=\"white\"/><text x=\"{}\" y=\"22\" font-size=\"15\" text-anchor=\"middle\">{title}</text>", width / 2.0);
    for tick in 0..=4 {
        let (vx, vy) = (max_x * f64::from(tick) / 4.0, max_y * f64::from(tick) / 4.0);
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{vx:.0}</text>",
            px(vx),
            height - bottom + 16.0
        );
        let _ = writeln!(svg, "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{vy:.0}</text><line x1=\"{left}\" y1=\"{:.1}\" x2=\"{}\" y2=\"{:.1}\" stroke=\"#ddd\"/>", left - 5.0, py(vy) + 4.0, py(vy), width - 30.0, py(vy));
    }
    let _ = writeln!(svg, "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{x_unit}</text><text x=\"14\" y=\"{}\" transform=\"rotate(-90 14 {})\" text-anchor=\"middle\">{y_unit}</text>", left + plot_w / 2.0, height - bottom + 34.0, top + plot_h / 2.0, top + plot_h / 2.0);
    for (s, (name, color, points)) in series.iter().enumerate() {
        let path: Vec<String> = points.iter().map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y))).collect();
        let _ = writeln!(
            svg,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>",
            path.join(" ")
        );
        let x = left + 150.0 * s as f64;
        let _ = writeln!(svg, "<rect x=\"{x}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"{color}\"/><text x=\"{}\" y=\"{}\">{name}</text>", height - 28.0, x + 16.0, height - 18.0);
    }
    svg.push_str("</svg>\n");
    svg
}

fn mib(kib: u64) -> String {
    format!("{:.2} MiB", kib as f64 / 1024.0)
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "within budget"
    } else {
        "OVER budget"
    }
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf();
    let bin = build_tinyedge(&root);
    let dir = std::env::temp_dir().join(format!("tinyedge-footprint-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("bench dir");
    let sizes = binary_sizes(&root);

    let (te_dir, mo_dir) = (dir.join("tinyedge"), dir.join("mosquitto"));
    std::fs::create_dir_all(&te_dir).expect("dir");
    std::fs::create_dir_all(&mo_dir).expect("dir");
    let te = start_tinyedge(&bin, &te_dir);
    let mo = start_mosquitto_with(&mo_dir, "max_queued_messages 0\nmax_queued_bytes 0\n");
    let mem = [memory(&te), memory(&mo)];
    eprintln!("memory: done");
    let load =
        [routing_load(&te, ROUTING_RATE_PER_SEC, ROUTING_SECS), routing_load(&mo, ROUTING_RATE_PER_SEC, ROUTING_SECS)];
    eprintln!("routing load: done");
    let stored = [store_fill(&te, STORED_MESSAGES), store_fill(&mo, STORED_MESSAGES)];
    eprintln!("store fill: done");
    drop(te);
    drop(mo);
    let constrained = constrained_run(&bin, &dir);
    eprintln!("constrained run: done");

    let machine = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| c.lines().find_map(|l| l.strip_prefix("model name\t: ").map(str::to_string)))
        .unwrap_or_else(|| "unknown CPU".into());
    let date = tinyedge_platform::utc::UtcDateTime::now().to_string();
    let mut md = String::new();
    let _ = writeln!(md, "# Footprint — {date}\n\nMachine: {machine}, {} cores, Linux x86_64. Same run for both brokers; mosquitto {}.\n", std::thread::available_parallelism().map_or(1, |n| n.get()), mosquitto_version());
    let _ = writeln!(md, "| stripped binary | size | budget 6 MiB |\n|---|---|---|");
    for (target, bytes) in &sizes {
        let _ = writeln!(
            md,
            "| {target} | {:.2} MiB ({bytes} B) | {} |",
            *bytes as f64 / 1048576.0,
            verdict(*bytes <= BUDGET_BINARY_BYTES)
        );
    }
    let _ = writeln!(md, "\n| figure | tinyedge | mosquitto | budget (tinyedge) |\n|---|---|---|---|");
    let _ = writeln!(
        md,
        "| idle RSS | {} | {} | ≤ 4 MiB: {} |",
        mib(mem[0].idle_rss),
        mib(mem[1].idle_rss),
        verdict(mem[0].idle_rss <= BUDGET_IDLE_RSS_KIB)
    );
    let _ = writeln!(
        md,
        "| idle anonymous memory (heap, stacks) | {} | {} | |",
        mib(mem[0].idle_anon),
        mib(mem[1].idle_anon)
    );
    let _ = writeln!(
        md,
        "| per idle MQTT connection ({IDLE_CONNECTIONS} connected) | {:.2} KiB | {:.2} KiB | ≤ 4 KiB: {} |",
        mem[0].per_connection_kib,
        mem[1].per_connection_kib,
        verdict(mem[0].per_connection_kib <= BUDGET_PER_CONNECTION_KIB)
    );
    let _ = writeln!(
        md,
        "| routing {ROUTING_RATE_PER_SEC} msg/s for {ROUTING_SECS} s (64 B, QoS 0 in, QoS 1 out): peak RSS | {} | {} | |",
        mib(load[0].peak_rss_kib),
        mib(load[1].peak_rss_kib)
    );
    let _ = writeln!(md, "| … CPU seconds used | {:.1} s | {:.1} s | |", load[0].cpu_secs, load[1].cpu_secs);
    let _ = writeln!(
        md,
        "| … delivered / sent | {} / {} | {} / {} | |",
        load[0].delivered, load[0].sent, load[1].delivered, load[1].sent
    );
    for (i, (n, _)) in stored[0].iter().enumerate() {
        let other = stored[1].get(i).map_or(0, |s| s.1);
        let _ = writeln!(
            md,
            "| RSS with {n} messages stored for an offline receiver | {} | {} | flat |",
            mib(stored[0][i].1),
            mib(other)
        );
    }
    match &constrained {
        Ok(c) => {
            let _ = writeln!(
                md,
                "\nConstrained run (cgroup v1: memory.limit_in_bytes = 32 MiB, cpu quota = 1 CPU): routing {ROUTING_RATE_PER_SEC} msg/s for {CGROUP_ROUTING_SECS} s delivered {} / {}, then {STORED_MESSAGES} messages stored (RSS {}); **{}**; cgroup max usage {} (includes page cache of the store files), memory.failcnt {}.",
                c.load.delivered,
                c.load.sent,
                mib(c.stored_rss_kib),
                if c.survived { "still running, not killed" } else { "KILLED" },
                mib(c.max_usage_kib),
                c.failcnt
            );
        }
        Err(e) => {
            let _ = writeln!(md, "\nConstrained run not possible here: {e}");
        }
    }
    let _ = writeln!(md, "\nCharts: [memory](footprint-memory.svg), [store](footprint-store.svg).");
    let results = root.join("benches/results");
    std::fs::create_dir_all(&results).expect("results dir");
    std::fs::write(results.join("footprint.md"), &md).expect("write footprint.md");
    let memory_svg = bar_chart_svg(
        "RSS (KiB): tinyedge vs mosquitto",
        "KiB",
        &["idle", "1000 idle conns", "routing 10k msg/s", "100k stored"],
        &[
            (
                "tinyedge",
                "#2b7bb9",
                vec![
                    mem[0].idle_rss as f64,
                    mem[0].idle_rss as f64 + mem[0].per_connection_kib * IDLE_CONNECTIONS as f64,
                    load[0].peak_rss_kib as f64,
                    stored[0].last().map_or(0.0, |s| s.1 as f64),
                ],
            ),
            (
                "mosquitto",
                "#d9822b",
                vec![
                    mem[1].idle_rss as f64,
                    mem[1].idle_rss as f64 + mem[1].per_connection_kib * IDLE_CONNECTIONS as f64,
                    load[1].peak_rss_kib as f64,
                    stored[1].last().map_or(0.0, |s| s.1 as f64),
                ],
            ),
        ],
    );
    std::fs::write(results.join("footprint-memory.svg"), memory_svg).expect("write svg");
    let to_points = |s: &[(usize, u64)]| s.iter().map(|(n, kib)| (*n as f64, *kib as f64)).collect::<Vec<_>>();
    let store_svg = line_chart_svg(
        "RSS while messages wait for an offline receiver",
        "messages stored",
        "RSS KiB",
        &[
            ("tinyedge (on-disk log)", "#2b7bb9", to_points(&stored[0])),
            ("mosquitto (in memory)", "#d9822b", to_points(&stored[1])),
        ],
    );
    std::fs::write(results.join("footprint-store.svg"), store_svg).expect("write svg");
    println!("{md}");
    let _ = std::fs::remove_dir_all(&dir);
}
