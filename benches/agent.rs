//! Agent benchmark: time from `tinyedge deploy` to the module `running` — with the image
//! pulled from a local registry, and with the image already present — and the runtime's
//! memory with 10 modules running. The peer in the same run is containerd's own Go client,
//! `ctr` (`ctr images pull` + `ctr run -d`), on the same containerd, registry and image.
//!
//! containerd and Debian's docker-registry are started by this bench on loopback (as the
//! tests do, `tests/common/containers.rs`); the image is built from Debian's busybox-static.
//! Run: `cargo run --release -p tinyedge-benches --bin agent` (as root).

#[path = "common/mod.rs"]
mod common;
#[path = "../tests/common/containers.rs"]
mod containers;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use containers::{Namespace, TempDir};
use serde_json::{json, Value};

const ROUNDS: usize = 5;
const MODULES: usize = 10;

fn deployment(modules: &[(String, String)]) -> String {
    let modules: serde_json::Map<String, Value> = modules
        .iter()
        .map(|(name, image)| {
            (
                name.clone(),
                json!({"version": "1", "type": "docker", "status": "running", "restartPolicy": "always",
                "settings": {"image": image, "createOptions": ""}}),
            )
        })
        .collect();
    json!({"modulesContent": {"$edgeAgent": {"properties.desired": {"schemaVersion": "1.1", "runtime": {"type": "docker", "settings": {}},
        "systemModules": {"edgeAgent": {"type": "docker", "settings": {"image": "x"}}, "edgeHub": {"type": "docker", "status": "running", "restartPolicy": "always", "settings": {"image": "x"}}},
        "modules": modules}},
        "$edgeHub": {"properties.desired": {"schemaVersion": "1.1", "routes": {}}}}})
    .to_string()
}

struct Edge {
    child: Child,
    dir: TempDir,
    bin: PathBuf,
}

impl Drop for Edge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Edge {
    fn start(bin: &Path, ns: &Namespace) -> Edge {
        let dir = TempDir::new("bench-agent");
        let port = common::free_port();
        std::fs::write(
            dir.0.join("tinyedge.toml"),
            format!(
                "data_dir = \"data\"\nlog_level = \"warn\"\n[hub]\nmqtt = \"127.0.0.1:{port}\"\nmqtts = \"\"\n[agent]\ncontainerd = \"{}\"\nnamespace = \"{}\"\nstop_timeout_secs = 1\n",
                ns.services.containerd.socket.display(),
                ns.name
            ),
        )
        .expect("config");
        let child = Command::new(bin)
            .args(["--config", &dir.0.join("tinyedge.toml").display().to_string(), "run"])
            .stderr(if std::env::var_os("BENCH_TINYEDGE_LOG").is_some() { Stdio::inherit() } else { Stdio::null() })
            .spawn()
            .expect("start tinyedge");
        common::wait_port(port);
        let socket = dir.0.join("data/mgmt.sock");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "no management socket");
            std::thread::sleep(Duration::from_millis(10));
        }
        Edge { child, dir, bin: bin.to_owned() }
    }

    /// `tinyedge deploy` (the CLI, as a user runs it).
    fn deploy(&self, modules: &[(String, String)]) {
        let file = self.dir.0.join("deployment.json");
        std::fs::write(&file, deployment(modules)).expect("write deployment");
        let out = Command::new(&self.bin)
            .args([
                "--config",
                &self.dir.0.join("tinyedge.toml").display().to_string(),
                "deploy",
                &file.display().to_string(),
            ])
            .output()
            .expect("tinyedge deploy");
        assert!(out.status.success(), "deploy: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn running(&self, names: &[String]) -> bool {
        let socket = self.dir.0.join("data/mgmt.sock");
        let Ok((200, body)) = tinyedge_agent::supervisor::mgmt::request(&socket, "GET", "/modules", b"") else {
            return false;
        };
        let doc: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        names.iter().all(|n| doc["modules"][n]["runtimeStatus"] == "running")
    }

    fn wait_running(&self, names: &[String]) -> Duration {
        let start = Instant::now();
        while !self.running(names) {
            assert!(start.elapsed() < Duration::from_secs(120), "modules {names:?} never ran");
            std::thread::sleep(Duration::from_millis(5));
        }
        start.elapsed()
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// containerd's own client: pull (plain HTTP, loopback registry) + run detached, until RUNNING.
fn ctr_pull_and_run(ns: &Namespace, image: &str, id: &str, pull: bool) -> Duration {
    let start = Instant::now();
    if pull {
        let out = ns.ctr(&["images", "pull", "--plain-http", image]);
        assert!(out.status.success(), "ctr pull: {}", String::from_utf8_lossy(&out.stderr));
    }
    let out = ns.ctr(&["run", "-d", "--net-host", image, id]);
    assert!(out.status.success(), "ctr run: {}", String::from_utf8_lossy(&out.stderr));
    while !ns.tasks().iter().any(|(c, _, s)| c == id && s == "RUNNING") {
        std::thread::sleep(Duration::from_millis(5));
    }
    start.elapsed()
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_owned();
    let bin = common::build_tinyedge(&root);
    let services = containers::services();
    let image = containers::image(
        vec![containers::busybox_layer()],
        &["PATH=/bin"],
        &["/bin/sh", "-c", "sleep 3600"],
        containers::host_arch(),
    );
    containers::push(&services.registry.addr, "bench/busybox", "1", &image);
    let reference = format!("{}/bench/busybox:1", services.registry.addr);
    let layer_bytes: usize = image.layers.iter().map(|(gz, _)| gz.len()).sum();
    println!("# agent bench: image {reference} ({} KiB compressed), {ROUNDS} rounds, medians", layer_bytes / 1024);

    let (mut ours_pull, mut ours_present, mut ctr_pull, mut ctr_present) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        // A fresh namespace has neither the image's content nor its snapshots: a cold pull.
        let ns = Namespace::new(&format!("bench-{round}"));
        let edge = Edge::start(&bin, &ns);
        let first = vec![("first".to_owned(), reference.clone())];
        let start = Instant::now();
        edge.deploy(&first);
        edge.wait_running(&["first".to_owned()]);
        ours_pull.push(ms(start.elapsed()));
        let second = vec![first[0].clone(), ("second".to_owned(), reference.clone())];
        let start = Instant::now();
        edge.deploy(&second);
        edge.wait_running(&["second".to_owned()]);
        ours_present.push(ms(start.elapsed()));
        drop(edge);
        drop(ns);
        let peer = Namespace::new(&format!("bench-ctr-{round}"));
        ctr_pull.push(ms(ctr_pull_and_run(&peer, &reference, "first", true)));
        ctr_present.push(ms(ctr_pull_and_run(&peer, &reference, "second", false)));
    }
    let (op, oc, pp, pc) = (median(ours_pull), median(ours_present), median(ctr_pull), median(ctr_present));
    println!("| deploy → running | tinyedge (ms) | ctr pull + run (ms) | ratio ctr/tinyedge |");
    println!("|---|---|---|---|");
    println!("| image pulled from the registry | {op:.0} | {pc_:.0} | {:.2} |", pp / op, pc_ = pp);
    println!("| image present | {oc:.0} | {pc:.0} | {:.2} |", pc / oc);

    // Memory with 10 modules.
    let ns = Namespace::new("bench-rss");
    let edge = Edge::start(&bin, &ns);
    std::thread::sleep(Duration::from_millis(500));
    let (idle_rss, idle_anon) = common::memory_kib(edge.child.id());
    let modules: Vec<(String, String)> = (0..MODULES).map(|i| (format!("m{i}"), reference.clone())).collect();
    let names: Vec<String> = modules.iter().map(|(n, _)| n.clone()).collect();
    edge.deploy(&modules);
    let took = edge.wait_running(&names);
    std::thread::sleep(Duration::from_secs(2));
    let (rss, anon) = common::memory_kib(edge.child.id());
    let threads = std::fs::read_to_string(format!("/proc/{}/status", edge.child.id()))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:").map(|v| v.trim().to_owned()))
        .unwrap_or_default();
    let shims: u64 = Command::new("sh")
        .arg("-c")
        .arg(format!("for p in $(pgrep -f 'containerd-shim-runc-v2 -namespace {}'); do grep VmRSS /proc/$p/status | awk '{{print $2}}'; done", ns.name))
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().filter_map(|l| l.trim().parse::<u64>().ok()).sum())
        .unwrap_or(0);
    println!();
    println!("| tinyedge process | RSS (KiB) | anonymous (KiB) |");
    println!("|---|---|---|");
    println!("| agent connected, no modules | {idle_rss} | {idle_anon} |");
    println!("| {MODULES} modules running (deployed in {:.0} ms) | {rss} | {anon} |", ms(took));
    println!();
    println!(
        "threads: {threads}; containerd shims for the {MODULES} modules: {} KiB RSS in all (containerd's, not ours)",
        shims
    );
}
