//! Routing benchmark: module-to-module messages through tinyedge versus the same traffic
//! through mosquitto as plain pub/sub, in one run, on loopback.
//!
//! Run: `cargo run --release -p tinyedge-benches --bin routing` (builds the release
//! `tinyedge`, needs Debian's `mosquitto`; the test command installs it). It prints a Markdown
//! table with tinyedge/mosquitto ratios. Clients are blocking sockets with the mqttbytes codec,
//! the same client code for both brokers.

mod common;

use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use mqttbytes::v4::{Packet, PubAck, Publish};
use mqttbytes::QoS;

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

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf();
    let bin = build_tinyedge(&root);
    let dir = std::env::temp_dir().join(format!("tinyedge-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("bench dir");
    // tinyedge twice: with its default durability (PUBACK once written to the OS, fsync in the
    // background at most once a second) and power-safe (`fsync = "always"`: PUBACK after the
    // group fsync that covers it); mosquitto keeps messages in memory only.
    let (default_dir, safe_dir) = (dir.join("default"), dir.join("power-safe"));
    std::fs::create_dir_all(&default_dir).expect("dir");
    std::fs::create_dir_all(&safe_dir).expect("dir");
    let mut safe = start_tinyedge_with(&bin, &safe_dir, "[store]\nfsync = \"always\"\n", |_| {});
    safe.name = "tinyedge (power-safe)";
    let brokers = [start_tinyedge(&bin, &default_dir), safe, start_mosquitto(&dir)];
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
                eprintln!(
                    "{} qos{qname} {size}B: {:.0} msg/s ({} delivered), p50 {p50:.0} us, p99 {p99:.0} us",
                    b.name, t.msgs_per_sec, t.delivered
                );
                cells.push((t, p50, p99));
            }
            rows.push((qname, size, cells));
        }
    }
    let machine = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| c.lines().find_map(|l| l.strip_prefix("model name\t: ").map(str::to_string)))
        .unwrap_or_else(|| "unknown CPU".into());
    println!(
        "Routing benchmark, {} msgs per run, publisher window {PUBLISH_WINDOW} at QoS 1; {machine}, {} cores",
        MESSAGES,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!();
    println!("| QoS | payload | tinyedge (default) msg/s | tinyedge (power-safe) msg/s | mosquitto msg/s | ratios to mosquitto | p50/p99 µs: tinyedge, power-safe, mosquitto |");
    println!("|---|---|---|---|---|---|---|");
    for (q, size, cells) in &rows {
        let (te, tp50, tp99) = &cells[0];
        let (tn, np50, np99) = &cells[1];
        let (mo, mp50, mp99) = &cells[2];
        println!(
            "| {q} | {size} B | {:.0} | {:.0} | {:.0} | {:.2} / {:.2} | {tp50:.0}/{tp99:.0}, {np50:.0}/{np99:.0}, {mp50:.0}/{mp99:.0} |",
            te.msgs_per_sec,
            tn.msgs_per_sec,
            mo.msgs_per_sec,
            te.msgs_per_sec / mo.msgs_per_sec,
            tn.msgs_per_sec / mo.msgs_per_sec
        );
    }
    println!(
        "\nDelivered per run: {}",
        rows.iter()
            .flat_map(|(_, _, c)| c.iter().map(|(t, _, _)| t.delivered.to_string()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!();
    println!("| memory (fresh process) | tinyedge | mosquitto |");
    println!("|---|---|---|");
    println!("| idle RSS | {} KiB | {} KiB |", mem[0].idle_rss, mem[2].idle_rss);
    println!("| idle anonymous (heap, stacks) | {} KiB | {} KiB |", mem[0].idle_anon, mem[2].idle_anon);
    println!(
        "| per idle MQTT connection ({IDLE_CONNECTIONS} connected) | {:.2} KiB | {:.2} KiB |",
        mem[0].per_connection_kib, mem[2].per_connection_kib
    );
    let _ = std::fs::remove_dir_all(&dir);
}
