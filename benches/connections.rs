//! Memory per idle MQTT connection and idle RSS, tinyedge beside mosquitto in the same run
//! (issue #14 parts 3 and 4). Quicker than the footprint bench, for working on either figure.
//!
//! - per idle connection: `BENCH_CONNECTIONS` (default 10,000) clients connect (CONNECT
//!   accepted, then silent), and the growth of RSS and of anonymous memory is divided by their
//!   number; tinyedge's clients are leaf devices with SAS tokens, mosquitto's are anonymous;
//! - idle RSS of `tinyedge run` on embedded defaults (no config file, agent on: containerd is
//!   used when `/run/containerd/containerd.sock` answers), 3 s and 30 s after the start (before
//!   and after it gives back the pages only the start touched), the second split by mapping
//!   from `/proc/PID/smaps`: what is the binary, the shared libraries, the heap and the stacks.
//!
//! `cargo run --release -p tinyedge-benches --bin connections`; `BENCH_TINYEDGE_BIN` names
//! another tinyedge binary (e.g. the `profiling` build).
#[path = "common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn connections() -> usize {
    std::env::var("BENCH_CONNECTIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(IDLE_CONNECTIONS)
}

/// RSS in KiB per mapping kind of `pid`: the binary itself, each shared library, heap, stacks,
/// other anonymous mappings.
fn rss_by_mapping(pid: u32, binary_name: &str) -> BTreeMap<String, u64> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut by = BTreeMap::new();
    let mut current = String::new();
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or_default();
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            let name = line.split_whitespace().nth(5).unwrap_or("");
            current = if name.ends_with(binary_name) {
                "the tinyedge binary (text, rodata, data)".to_string()
            } else if name.is_empty() {
                "anonymous (thread stacks, allocator arenas)".to_string()
            } else if name.starts_with('/') {
                name.rsplit('/').next().unwrap_or(name).to_string()
            } else {
                name.to_string()
            };
        } else if first == "Rss:" {
            let kib: u64 = fields.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            *by.entry(current.clone()).or_insert(0) += kib;
        }
    }
    by
}

fn main() {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let bin = build_tinyedge(&root);
    let bin = std::fs::canonicalize(&bin).unwrap_or(bin);
    let n = connections();
    let dir = std::env::temp_dir().join(format!("tinyedge-bench-connections-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("bench dir");

    // Idle on embedded defaults: `tinyedge run` in an empty directory.
    let defaults_dir = dir.join("defaults");
    std::fs::create_dir_all(&defaults_dir).expect("defaults dir");
    let mut child = Command::new(&bin)
        .arg("run")
        .current_dir(&defaults_dir)
        .env_remove("TINYEDGE_CONFIG")
        .stderr(Stdio::null())
        .spawn()
        .expect("start tinyedge on embedded defaults");
    // Two samples: 3 s in, with the start's pages still resident, and 30 s in, after tinyedge
    // gave those back (5 s after it runs, src/pages.rs) and what idle work touches (the agent's
    // reconcile and containerd polls, keep-alives) came back in: the steady figure.
    std::thread::sleep(Duration::from_secs(3));
    let (started_rss, _) = memory_kib(child.id());
    std::thread::sleep(Duration::from_secs(27));
    let (idle_rss, idle_anon) = memory_kib(child.id());
    let binary_name = bin.file_name().and_then(|n| n.to_str()).unwrap_or("tinyedge").to_string();
    let mappings = rss_by_mapping(child.id(), &binary_name);
    let containerd = std::path::Path::new("/run/containerd/containerd.sock").exists();
    let _ = child.kill();
    let _ = child.wait();

    let te_dir = dir.join("tinyedge");
    std::fs::create_dir_all(&te_dir).expect("dir");
    let te = start_tinyedge_with(&bin, &te_dir, "", |_| {});
    let te_mem = memory_with(&te, n);
    drop(te);
    let mo_dir = dir.join("mosquitto");
    std::fs::create_dir_all(&mo_dir).expect("dir");
    let mo = start_mosquitto(&mo_dir);
    let mo_mem = memory_with(&mo, n);
    drop(mo);
    let _ = std::fs::remove_dir_all(&dir);

    let machine = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| c.lines().find_map(|l| l.strip_prefix("model name\t: ").map(str::to_string)))
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("# Idle connections and idle RSS — {}\n", tinyedge_platform::utc::UtcDateTime::now());
    println!("Machine: {machine}, {cores} cores. Same run for both brokers; mosquitto {}.\n", mosquitto_version());
    println!("| per idle MQTT connection ({n} connected) | tinyedge | mosquitto | tinyedge ÷ mosquitto | budget (tinyedge) |");
    println!("|---|---|---|---|---|");
    println!(
        "| RSS growth | {:.2} KiB | {:.2} KiB | {:.2} | ≤ 1.5 KiB: {} |",
        te_mem.per_connection_kib,
        mo_mem.per_connection_kib,
        te_mem.per_connection_kib / mo_mem.per_connection_kib.max(0.001),
        if te_mem.per_connection_kib <= 1.5 { "within" } else { "OVER" }
    );
    println!(
        "| anonymous memory growth (heap) | {:.2} KiB | {:.2} KiB | {:.2} | |",
        te_mem.per_connection_anon_kib,
        mo_mem.per_connection_anon_kib,
        te_mem.per_connection_anon_kib / mo_mem.per_connection_anon_kib.max(0.001)
    );
    println!(
        "| RSS before the clients (bench config: {n} leaf devices configured) | {:.2} MiB | {:.2} MiB | | |\n",
        te_mem.idle_rss as f64 / 1024.0,
        mo_mem.idle_rss as f64 / 1024.0
    );
    println!(
        "Idle RSS of `tinyedge run` on embedded defaults (hub + agent, containerd {}), 30 s after the start: **{:.2} MiB** (budget 4 MiB: {}), of which anonymous {:.2} MiB; 3 s after the start, before the start's pages are given back: {:.2} MiB.\n",
        if containerd { "answering" } else { "absent" },
        idle_rss as f64 / 1024.0,
        if idle_rss <= 4096 { "within" } else { "OVER" },
        idle_anon as f64 / 1024.0,
        started_rss as f64 / 1024.0
    );
    println!("| mapping | RSS |\n|---|---|");
    let mut rows: Vec<_> = mappings.into_iter().filter(|(_, kib)| *kib > 0).collect();
    rows.sort_by(|a, b| b.1.cmp(&a.1));
    for (name, kib) in rows {
        println!("| {name} | {kib} KiB |");
    }
}
