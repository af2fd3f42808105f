//! `GET /metrics` of the real binary: routed traffic and a cloud outage move IoT Edge's
//! counters and gauges, and the text parses with the Prometheus project's own Python parser.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const UP_ROUTE: (&str, &str) = ("up", "FROM /messages/* INTO $upstream");

/// `GET path` over a raw socket: (status line, body).
fn get(port: u16, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the metrics port");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read");
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head");
    (head.to_owned(), body.to_owned())
}

/// The value of the sample whose line starts with `name{` and contains every `labels` part.
fn value(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && labels.iter().all(|p| l.contains(p)))
        .find_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse().ok()))
}

/// Parses `text` with `prometheus_client.parser` and returns its `name labels value` lines.
fn parse_with_prometheus_client(text: &str) -> String {
    let pyprom = std::env::var_os("TINYEDGE_PYPROM")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/pyprom"));
    assert!(
        pyprom.join("prometheus_client").is_dir(),
        "prometheus_client is not installed in {}: run ./test.sh (it pip-installs it)",
        pyprom.display()
    );
    let script = "import sys\nfrom prometheus_client.parser import text_string_to_metric_families\n\
        for f in text_string_to_metric_families(sys.stdin.read()):\n\
        \x20   for s in f.samples:\n\
        \x20       print(f.type, s.name, sorted(s.labels.items()), s.value)\n";
    let mut child = Command::new("python3")
        .args(["-c", script])
        .env("PYTHONPATH", &pyprom)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write");
    let out = child.wait_with_output().expect("python3 ran");
    assert!(
        out.status.success(),
        "prometheus_client refused the text: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn scrape_until(port: u16, timeout: Duration, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let (_, body) = get(port, "/metrics");
        if done(&body) || Instant::now() > deadline {
            return body;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn routed_traffic_and_an_outage_move_the_counters_and_the_text_parses() {
    let metrics_port = free_port();
    let mut cloud = Cloud::new();
    cloud.start();
    cloud.register_subscriber();
    cloud.stop();
    let config = format!(
        "[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n[upstream]\nurl = \"mqtt://127.0.0.1:{}\"\nbackoff_max_secs = 1\n",
        cloud.port
    );
    let rt = Runtime::start(&deployment(&["sender"], &[UP_ROUTE]), &config);
    assert!(rt.wait_log("metrics listening on"), "{}", rt.log());

    let started = Instant::now();
    let (head, body) = get(metrics_port, "/metrics");
    let scrape_ms = started.elapsed().as_millis();
    assert!(head.starts_with("HTTP/1.1 200 OK") && head.contains("text/plain; version=0.0.4"), "{head}");
    eprintln!("scrape: {} bytes in {scrape_ms} ms", body.len());
    // Per-client series: none before a client sent anything.
    assert_eq!(value(&body, "edgehub_messages_received_total", &[]), None, "{body}");
    for family in [
        "edgehub_messages_received_total",
        "edgehub_gettwin_total",
        "edgehub_connected_clients",
        "tinyedge_store_bytes",
        "edgeAgent_available_disk_space_bytes",
    ] {
        assert!(body.contains(&format!("# TYPE {family} ")), "{family} missing:\n{body}");
    }
    let device_labels = format!("iothub=\"{HUB}\",edge_device=\"{DEVICE}\",instance_number=\"");
    assert!(body.lines().filter(|l| !l.starts_with('#')).all(|l| l.contains(&device_labels)), "{body}");
    assert!(body.contains("edgehub_messages_dropped_total{") && body.contains("ms_telemetry=\"True\""), "{body}");
    assert!(!body.lines().any(|l| l.starts_with("edgehub_connected_clients{") && l.contains("ms_telemetry")));
    assert!(get(metrics_port, "/other").0.starts_with("HTTP/1.1 404"));

    // Outage: the cloud is down, messages wait in the $upstream queue.
    let creds = module_credentials("sender", 3600);
    for i in 0..3 {
        let topic = format!("devices/{DEVICE}/modules/sender/messages/events/");
        assert!(mosquitto_pub(rt.mqtt_port, &creds, &topic, &format!("m{i}"), &["-q", "1"]).status.success());
    }
    let body = scrape_until(metrics_port, Duration::from_secs(10), |b| {
        value(b, "edgehub_queue_length", &["endpoint=\"$upstream\""]).unwrap_or(0.0) >= 3.0
    });
    let sender = format!("id=\"{DEVICE}/sender\"");
    assert_eq!(value(&body, "edgehub_messages_received_total", &[sender.as_str()]), Some(3.0), "{body}");
    assert!(value(&body, "edgehub_queue_length", &["endpoint=\"$upstream\""]) >= Some(3.0), "{body}");
    assert_eq!(value(&body, "tinyedge_upstream_connected", &[]), Some(0.0), "{body}");
    assert!(value(&body, "tinyedge_store_records_appended_total", &[]) >= Some(3.0), "{body}");

    // The cloud comes back: the queue drains and the sent counter moves.
    cloud.start();
    let body = scrape_until(metrics_port, Duration::from_secs(30), |b| {
        value(b, "edgehub_messages_sent_total", &["to=\"upstream\""]) >= Some(3.0)
    });
    assert!(value(&body, "edgehub_messages_sent_total", &["to=\"upstream\""]) >= Some(3.0), "{body}\n{}", rt.log());
    assert_eq!(value(&body, "tinyedge_upstream_connected", &[]), Some(1.0), "{body}");
    let processed = value(&body, "edgehub_message_process_duration_seconds_count", &["to=\"upstream\""]);
    assert!(processed >= Some(3.0), "{body}");
    // They waited for the cloud: the summed processing time covers the outage.
    let waited = value(&body, "edgehub_message_process_duration_seconds_sum", &["to=\"upstream\""]);
    assert!(waited > Some(0.0), "{body}");
    let body = scrape_until(metrics_port, Duration::from_secs(10), |b| {
        value(b, "edgehub_queue_length", &["endpoint=\"$upstream\""]) == Some(0.0)
    });
    assert_eq!(value(&body, "edgehub_queue_length", &["endpoint=\"$upstream\""]), Some(0.0), "{body}");

    let parsed = parse_with_prometheus_client(&body);
    assert!(parsed.contains("counter edgehub_messages_received_total"), "{parsed}");
    assert!(parsed.contains("gauge edgehub_queue_length"), "{parsed}");
    assert!(parsed.contains("('ms_telemetry', 'True')"), "{parsed}");
}

#[test]
fn an_empty_listen_turns_the_endpoint_off() {
    let rt = Runtime::start(&deployment(&[], &[]), "[metrics]\nlisten = \"\"\n");
    assert!(rt.wait_log("metrics endpoint off"), "{}", rt.log());
}
