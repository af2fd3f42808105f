//! The upstream link against real brokers: a `mosquitto` started per test on a free loopback
//! port (watched with `mosquitto_sub` and through its own log), and a scripted fake IoT Hub on a
//! raw socket for what mosquitto cannot show (the SAS password, refused CONNACKs, a hub that
//! goes silent). No timing assertions: every wait is bounded and fails with the evidence.
//!
//! Needs Debian's `mosquitto` and `mosquitto-clients`; a missing tool fails the test loudly.

mod common;

use common::{free_port, TempDir};
use std::collections::HashSet;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use mqttbytes::v4::{self, ConnAck, ConnectReturnCode, Packet, PingResp, PubAck};
use tinyedge_hub::upstream::config::DEFAULT_WINDOW;
use tinyedge_hub::upstream::{Link, LinkStatus, OutMessage, Outbox, UpstreamConfig};
use tinyedge_platform::sas;

const HUB: &str = "testhub.azure-devices.net";
const DEVICE: &str = "edge-gw";
const KEY: [u8; 32] = [9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 1, 2];
/// The longest any single expectation may take before the test fails.
const WAIT: Duration = Duration::from_secs(30);
/// The persistent subscriber's client id (its session survives broker restarts).
const SUBSCRIBER_ID: &str = "upstream-test-subscriber";

// ---------------------------------------------------------------------------------------------
// Logging, temp dirs, tools

struct StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Debug
    }
    fn log(&self, record: &log::Record<'_>) {
        if record.target().starts_with("tinyedge") {
            eprintln!("{} {}", record.level(), record.args());
        }
    }
    fn flush(&self) {}
}

fn init_logging() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if log::set_logger(&StderrLogger).is_ok() {
            log::set_max_level(log::LevelFilter::Debug);
        }
    });
}

/// Finds `tool` on PATH (and in /usr/sbin, where Debian puts `mosquitto`), or fails the test.
fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path).chain(["/usr/sbin", "/usr/local/sbin"].map(PathBuf::from));
    for dir in dirs {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("`{name}` is not on PATH: install Debian's mosquitto and mosquitto-clients (apt-get install mosquitto mosquitto-clients)");
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs()
}

/// Polls `done` every 20 ms; after [`WAIT`] fails with `what` and `evidence()`.
fn wait_until(what: &str, mut done: impl FnMut() -> bool, evidence: impl Fn() -> String) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out after {WAIT:?} waiting until {what}\n{}", evidence());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn terminate(child: &mut Child) {
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

// ---------------------------------------------------------------------------------------------
// The outbox: a Vec, appended to by the test

struct VecOutbox {
    messages: Mutex<Vec<OutMessage>>,
    last: AtomicU64,
    acked: AtomicU64,
    acked_went_backwards: AtomicBool,
    wake_tx: smol::channel::Sender<()>,
    wake_rx: smol::channel::Receiver<()>,
}

impl VecOutbox {
    fn new() -> Arc<VecOutbox> {
        let (wake_tx, wake_rx) = smol::channel::bounded(1);
        Arc::new(VecOutbox {
            messages: Mutex::new(Vec::new()),
            last: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            acked_went_backwards: AtomicBool::new(false),
            wake_tx,
            wake_rx,
        })
    }

    /// Appends messages `from..=to` (seq n, topic [`topic`]`(n)`, payload `msg-n`).
    fn append(&self, from: u64, to: u64) {
        let mut messages = self.messages.lock().expect("outbox lock");
        for seq in from..=to {
            messages.push(OutMessage {
                seq,
                topic: topic(seq),
                payload: Bytes::from(format!("msg-{seq}")),
                maybe_sent: false,
                enqueued_unix_ms: 0,
            });
            self.last.store(seq, Ordering::SeqCst);
        }
        drop(messages);
        // A full channel already holds a wake-up: nothing is lost.
        let _ = self.wake_tx.try_send(());
    }

    fn acked_through(&self) -> u64 {
        self.acked.load(Ordering::SeqCst)
    }
}

impl Outbox for VecOutbox {
    fn next_batch(&self, after: u64, max: usize) -> Vec<OutMessage> {
        let messages = self.messages.lock().expect("outbox lock");
        messages.iter().filter(|m| m.seq > after).take(max).cloned().collect()
    }

    fn wait_for_more(&self, after: u64) -> Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            if self.last.load(Ordering::SeqCst) > after {
                return;
            }
            let _ = self.wake_rx.recv().await;
        })
    }

    fn acked(&self, seq: u64) {
        if self.acked.swap(seq, Ordering::SeqCst) > seq {
            self.acked_went_backwards.store(true, Ordering::SeqCst);
        }
    }

    fn resume_after(&self) -> u64 {
        0
    }
}

/// Module and device telemetry topics with a property bag that carries the seq.
fn topic(seq: u64) -> String {
    match seq % 3 {
        0 => format!("devices/{DEVICE}/modules/m{}/messages/events/seq={seq}&%24.ct=text%2Fplain", seq % 5),
        _ => format!("devices/{DEVICE}/messages/events/seq={seq}"),
    }
}

fn seq_of(topic: &str) -> Option<u64> {
    let digits: String = topic.split("seq=").nth(1)?.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn config(url: String) -> UpstreamConfig {
    let mut config = UpstreamConfig::new(url, HUB, DEVICE, KEY.to_vec());
    config.backoff_min = Duration::from_millis(100);
    config.backoff_max = Duration::from_secs(1);
    config
}

/// The link, running on smol's global executor until dropped.
struct Running {
    link: Arc<Link>,
    _task: smol::Task<()>,
}

fn start_link(config: UpstreamConfig, outbox: Arc<VecOutbox>) -> Running {
    init_logging();
    let link = Link::new(config, outbox).expect("valid upstream config");
    let task = smol::spawn(link.clone().run());
    Running { link, _task: task }
}

// ---------------------------------------------------------------------------------------------
// mosquitto and mosquitto_sub

struct Broker {
    child: Option<Child>,
    port: u16,
    conf: PathBuf,
    log: PathBuf,
}

impl Broker {
    /// Writes a config for a broker on `port` (`persistent`: sessions and queued messages
    /// survive a restart, saved on SIGTERM) with `extra` lines appended; does not start it.
    fn new(dir: &Path, port: u16, persistent: bool, extra: &str) -> Broker {
        let log = dir.join("mosquitto.log");
        let conf = dir.join("mosquitto.conf");
        let mut text = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\nlog_dest file {}\nlog_type all\nconnection_messages true\nmax_queued_messages 100000\n",
            log.display()
        );
        if persistent {
            text.push_str(&format!("persistence true\npersistence_location {}/\nautosave_interval 0\n", dir.display()));
        } else {
            text.push_str("persistence false\n");
        }
        if is_root() {
            // Otherwise mosquitto drops to user `mosquitto`, who cannot write the temp dir.
            text.push_str("user root\n");
        }
        text.push_str(extra);
        std::fs::write(&conf, text).expect("write mosquitto.conf");
        Broker { child: None, port, conf, log }
    }

    fn start(&mut self) {
        let child = Command::new(tool("mosquitto"))
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            let exited = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            assert!(exited.is_none(), "mosquitto exited ({exited:?}); log:\n{}", self.log());
            assert!(
                Instant::now() < deadline,
                "mosquitto did not listen on {} in 10 s; log:\n{}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM (mosquitto saves its persistence file) and wait for the exit. SIGCONT too, in
    /// case it was frozen: it then handles whatever it had not read yet, or not, as it goes.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            let _ = Command::new("kill").arg("-CONT").arg(child.id().to_string()).status();
            terminate(&mut child);
        }
    }

    /// SIGSTOP: the broker hangs with its sockets open, so the link's window fills up.
    fn freeze(&self) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill").arg("-STOP").arg(child.id().to_string()).status();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `mosquitto_sub -v -t 'devices/#'` writing to `out`; persistent (QoS 1, clean session off)
/// so that messages published while it is away are queued for it.
struct Subscriber {
    child: Child,
}

impl Subscriber {
    fn start(port: u16, out: &Path) -> Subscriber {
        let file = File::options().create(true).append(true).open(out).expect("subscriber output file");
        let child = Command::new(tool("mosquitto_sub"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-v",
                "-t",
                "devices/#",
                "-q",
                "1",
                "-c",
                "-i",
                SUBSCRIBER_ID,
            ])
            .stdout(Stdio::from(file))
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto_sub");
        Subscriber { child }
    }

    /// Publishes probes until one shows up in `out`: the subscription is in place.
    fn wait_subscribed(port: u16, out: &Path) {
        let probes = std::cell::Cell::new(0);
        wait_until(
            "the subscriber receives a probe",
            || {
                probes.set(probes.get() + 1);
                let _ = Command::new(tool("mosquitto_pub"))
                    .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", "devices/probe", "-m", "probe", "-q", "1"])
                    .status();
                std::thread::sleep(Duration::from_millis(100));
                std::fs::read_to_string(out).unwrap_or_default().contains("devices/probe probe")
            },
            || format!("{} probes sent", probes.get()),
        );
    }

    fn stop(mut self) {
        terminate(&mut self.child);
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// (topic, payload) lines the subscriber printed into `outs`, in order, without probes.
fn received(outs: &[&Path]) -> Vec<(String, String)> {
    let mut lines = Vec::new();
    for out in outs {
        let text = std::fs::read_to_string(out).unwrap_or_default();
        for line in text.lines() {
            let (topic, payload) = line.split_once(' ').unwrap_or((line, ""));
            if topic != "devices/probe" {
                lines.push((topic.to_owned(), payload.to_owned()));
            }
        }
    }
    lines
}

/// Checks that `lines` hold every message 1..=`last` with its topic and payload, first
/// occurrences in increasing order; returns the seqs seen more than once.
fn check_in_order(lines: &[(String, String)], last: u64) -> Result<Vec<u64>, String> {
    let mut seen = HashSet::new();
    let mut repeated = Vec::new();
    let mut expected_next = 1;
    for (topic_seen, payload) in lines {
        let seq = seq_of(topic_seen).ok_or_else(|| format!("unexpected topic {topic_seen}"))?;
        if *topic_seen != topic(seq) || *payload != format!("msg-{seq}") {
            return Err(format!("message {seq} arrived as {topic_seen} {payload}"));
        }
        if !seen.insert(seq) {
            repeated.push(seq);
            continue;
        }
        if seq != expected_next {
            return Err(format!("message {seq} arrived first where {expected_next} was due"));
        }
        expected_next += 1;
    }
    if expected_next != last + 1 {
        return Err(format!("only 1..{} of 1..={last} arrived", expected_next - 1));
    }
    Ok(repeated)
}

fn status_evidence(link: &Link, outbox: &VecOutbox, broker_log: &str) -> String {
    let tail: Vec<&str> = broker_log.lines().rev().take(30).collect();
    format!(
        "status {:?}\noutbox acked through {}\nbroker log tail (newest first):\n{}",
        link.status(),
        outbox.acked_through(),
        tail.join("\n")
    )
}

// ---------------------------------------------------------------------------------------------
// mosquitto tests

#[test]
fn a_thousand_messages_arrive_in_order_with_their_topics_and_are_acked() {
    let dir = TempDir::new("thousand");
    let port = free_port();
    let mut broker = Broker::new(&dir.0, port, false, "");
    broker.start();
    let out = dir.0.join("sub.txt");
    let _subscriber = Subscriber::start(port, &out);
    Subscriber::wait_subscribed(port, &out);

    let outbox = VecOutbox::new();
    outbox.append(1, 1000);
    let running = start_link(config(format!("mqtt://127.0.0.1:{port}")), outbox.clone());

    wait_until(
        "all 1000 messages arrived and were acked",
        || received(&[&out]).len() >= 1000 && outbox.acked_through() == 1000,
        || status_evidence(&running.link, &outbox, &broker.log()),
    );
    let repeated = check_in_order(&received(&[&out]), 1000).unwrap_or_else(|e| panic!("{e}"));
    assert!(repeated.is_empty(), "no connection was lost, yet {repeated:?} arrived twice");
    assert!(!outbox.acked_went_backwards.load(Ordering::SeqCst), "acked() must only move forward");
    let status = running.link.status();
    assert!(status.connected, "{status:?}");
    assert_eq!((status.published, status.acked, status.reconnects, status.dropped), (1000, 1000, 0, 0), "{status:?}");
}

#[test]
fn connects_with_the_iot_hub_client_id_and_username() {
    let dir = TempDir::new("identity");
    let port = free_port();
    let mut broker = Broker::new(&dir.0, port, false, "");
    broker.start();
    let outbox = VecOutbox::new();
    let running = start_link(config(format!("mqtt://127.0.0.1:{port}")), outbox.clone());
    let expected = format!("as {DEVICE} (p2, c1, k60, u'{HUB}/{DEVICE}/?api-version=2021-04-12')");
    wait_until(
        "mosquitto logs the link's CONNECT",
        || broker.log().contains(&expected),
        || format!("expected {expected:?}\n{}", status_evidence(&running.link, &outbox, &broker.log())),
    );
    wait_until(
        "the link reports connected",
        || running.link.status().connected,
        || format!("{:?}", running.link.status()),
    );
    let status: LinkStatus = running.link.status();
    assert!(status.since_unix_ms > 0 && status.last_error.is_none(), "{status:?}");
}

#[test]
fn link_started_while_the_broker_is_down_delivers_everything_once_it_starts() {
    let dir = TempDir::new("down");
    let port = free_port();
    let mut broker = Broker::new(&dir.0, port, true, "");
    let out = dir.0.join("sub.txt");
    // Create the subscriber's persistent session, then take everything down.
    broker.start();
    let subscriber = Subscriber::start(port, &out);
    Subscriber::wait_subscribed(port, &out);
    subscriber.stop();
    broker.stop();

    let outbox = VecOutbox::new();
    outbox.append(1, 200);
    let running = start_link(config(format!("mqtt://127.0.0.1:{port}")), outbox.clone());
    std::thread::sleep(Duration::from_secs(2));
    let down = running.link.status();
    assert!(!down.connected && down.published == 0, "{down:?}");
    assert!(down.last_error.as_deref().is_some_and(|e| e.contains("cannot connect")), "{down:?}");

    broker.start();
    let _subscriber = Subscriber::start(port, &out);
    wait_until(
        "all 200 messages arrived after the broker started",
        || received(&[&out]).len() >= 200 && outbox.acked_through() == 200,
        || status_evidence(&running.link, &outbox, &broker.log()),
    );
    let repeated = check_in_order(&received(&[&out]), 200).unwrap_or_else(|e| panic!("{e}"));
    assert!(repeated.is_empty(), "{repeated:?} arrived twice");
    assert!(running.link.status().connected);
}

#[test]
fn broker_restart_mid_stream_loses_nothing_acked_and_keeps_the_order() {
    let dir = TempDir::new("restart");
    let port = free_port();
    let mut broker = Broker::new(&dir.0, port, true, "");
    broker.start();
    let (out1, out2) = (dir.0.join("sub1.txt"), dir.0.join("sub2.txt"));
    let subscriber = Subscriber::start(port, &out1);
    Subscriber::wait_subscribed(port, &out1);

    const TOTAL: u64 = 1000;
    let outbox = VecOutbox::new();
    let running = start_link(config(format!("mqtt://127.0.0.1:{port}")), outbox.clone());
    let feeder = {
        let outbox = outbox.clone();
        std::thread::spawn(move || {
            for start in (1..=TOTAL).step_by(10) {
                outbox.append(start, start + 9);
                std::thread::sleep(Duration::from_millis(15));
            }
        })
    };
    wait_until(
        "300 messages are acked",
        || outbox.acked_through() >= 300,
        || status_evidence(&running.link, &outbox, &broker.log()),
    );
    subscriber.stop();
    // Hang the broker until the link has a full window in flight, then kill it: messages are
    // unacknowledged at the moment of the crash, some of them possibly already stored.
    broker.freeze();
    wait_until(
        "the window is full of unacknowledged messages",
        || {
            let status = running.link.status();
            status.published >= status.acked + DEFAULT_WINDOW as u64
        },
        || status_evidence(&running.link, &outbox, &broker.log()),
    );
    broker.stop();
    let acked_at_kill = outbox.acked_through();
    std::thread::sleep(Duration::from_millis(500));
    broker.start();
    let _subscriber = Subscriber::start(port, &out2);
    feeder.join().expect("feeder thread");

    wait_until(
        "every message arrived after the restart and all were acked",
        || check_in_order(&received(&[&out1, &out2]), TOTAL).is_ok() && outbox.acked_through() == TOTAL,
        || {
            let order = check_in_order(&received(&[&out1, &out2]), TOTAL).err().unwrap_or_default();
            format!("{order}\n{}", status_evidence(&running.link, &outbox, &broker.log()))
        },
    );
    assert!(!outbox.acked_went_backwards.load(Ordering::SeqCst), "acked() must only move forward");
    assert!(acked_at_kill < TOTAL, "the broker was stopped mid-stream (acked {acked_at_kill})");

    // What the broker received from the link, in order: only unacked messages may come
    // again, and those carry DUP. The window was full when the broker died, so there are some.
    let mut seen = HashSet::new();
    let mut resent = Vec::new();
    for line in broker.log().lines().filter(|l| l.contains(&format!("Received PUBLISH from {DEVICE} "))) {
        let seq = seq_of(line).unwrap_or_else(|| panic!("no seq in {line}"));
        let dup = line.contains("(d1,");
        assert!(seen.insert(seq) || dup, "message {seq} came again without DUP: {line}");
        if dup {
            assert!(seq > acked_at_kill, "message {seq} was sent again although {acked_at_kill} were acked: {line}");
            resent.push(seq);
        }
    }
    assert!(resent.len() >= DEFAULT_WINDOW, "the full window was sent again with DUP: {resent:?}");
    eprintln!("stopped with {acked_at_kill} acked; resent with DUP after the restart: {resent:?}");
    let status = running.link.status();
    assert!(status.connected && status.reconnects >= 1 && status.acked == TOTAL, "{status:?}");
    assert!(status.last_error.is_some(), "the loss is remembered: {status:?}");
}

#[test]
fn tls_link_trusts_the_configured_ca_and_refuses_an_unknown_one() {
    let dir = TempDir::new("tls");
    let certs = tinyedge_platform::certs::ensure_edge_certs(&dir.0, "localhost").expect("generate certificates");
    let (plain_port, tls_port) = (free_port(), free_port());
    let extra = format!(
        "listener {tls_port} 127.0.0.1\ncertfile {}\nkeyfile {}\n",
        certs.server_cert.display(),
        certs.server_key.display()
    );
    let mut broker = Broker::new(&dir.0, plain_port, false, &extra);
    broker.start();
    let out = dir.0.join("sub.txt");
    let _subscriber = Subscriber::start(plain_port, &out);
    Subscriber::wait_subscribed(plain_port, &out);

    // Without the edge CA, the server certificate is not trusted.
    let untrusted_outbox = VecOutbox::new();
    let mut untrusting = config(format!("mqtts://localhost:{tls_port}"));
    untrusting.device_id = "other-gw".into();
    let untrusted = start_link(untrusting, untrusted_outbox.clone());

    let outbox = VecOutbox::new();
    outbox.append(1, 50);
    let mut trusting = config(format!("mqtts://localhost:{tls_port}"));
    trusting.ca = Some(certs.ca_cert.clone());
    let running = start_link(trusting, outbox.clone());
    wait_until(
        "50 messages arrived over TLS",
        || received(&[&out]).len() >= 50 && outbox.acked_through() == 50,
        || status_evidence(&running.link, &outbox, &broker.log()),
    );
    check_in_order(&received(&[&out]), 50).unwrap_or_else(|e| panic!("{e}"));
    wait_until(
        "the link without the CA reports a TLS failure",
        || untrusted.link.status().last_error.is_some_and(|e| e.contains("TLS handshake failed")),
        || format!("{:?}", untrusted.link.status()),
    );
    assert!(!untrusted.link.status().connected);
}

#[test]
fn cloud_to_device_messages_reach_the_callback_and_are_acknowledged() {
    let dir = TempDir::new("c2d");
    let port = free_port();
    let mut broker = Broker::new(&dir.0, port, false, "");
    broker.start();
    let outbox = VecOutbox::new();
    init_logging();
    let link = Link::new(config(format!("mqtt://127.0.0.1:{port}")), outbox.clone()).expect("valid config");
    let inbox: Arc<Mutex<Vec<(String, Bytes)>>> = Arc::default();
    let sink = inbox.clone();
    link.set_on_message(Box::new(move |topic, payload| sink.lock().expect("inbox").push((topic, payload))));
    let _task = smol::spawn(link.clone().run());

    let c2d_topic = format!("devices/{DEVICE}/messages/devicebound/%24.mid=42");
    wait_until(
        "a C2D message reaches the callback",
        || {
            if !inbox.lock().expect("inbox").is_empty() {
                return true;
            }
            // Until the link's SUBSCRIBE is in place, publishes go nowhere: repeat them.
            let _ = Command::new(tool("mosquitto_pub"))
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", &c2d_topic, "-m", "hello edge", "-q", "1"])
                .status();
            std::thread::sleep(Duration::from_millis(100));
            false
        },
        || format!("{:?}\n{}", link.status(), broker.log()),
    );
    let (topic, payload) = inbox.lock().expect("inbox")[0].clone();
    assert_eq!((topic.as_str(), payload.as_ref()), (c2d_topic.as_str(), b"hello edge".as_slice()));
    wait_until(
        "mosquitto receives the link's PUBACK",
        || broker.log().contains(&format!("Received PUBACK from {DEVICE}")),
        || broker.log(),
    );
}

// ---------------------------------------------------------------------------------------------
// A scripted fake IoT Hub on a raw socket

/// What the fake hub does with connection number `n` (0-based).
#[derive(Clone, Copy)]
enum Script {
    /// CONNACK accepted, then PUBACK everything and answer PINGREQ.
    Serve,
    /// CONNACK accepted, then read but never answer anything.
    Silent,
    /// CONNACK with this return code.
    Refuse(ConnectReturnCode),
}

/// One connection as the fake hub saw it.
#[derive(Debug, Clone, Default)]
struct Seen {
    client_id: String,
    username: String,
    password: String,
    /// Names of the packets after CONNECT.
    packets: Vec<&'static str>,
    /// Unix seconds at which the connection ended (EOF or DISCONNECT).
    ended_unix: Option<u64>,
}

struct FakeHub {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl FakeHub {
    fn start(script: impl Fn(usize) -> Script + Send + 'static) -> FakeHub {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fake hub");
        let port = listener.local_addr().expect("addr").port();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let record = seen.clone();
        std::thread::spawn(move || {
            for (n, stream) in listener.incoming().enumerate() {
                let Ok(stream) = stream else { return };
                serve_one(stream, script(n), &record);
            }
        });
        FakeHub { port, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen").clone()
    }
}

fn packet_name(packet: &Packet) -> &'static str {
    match packet {
        Packet::Publish(publish) if publish.dup => "PUBLISH(dup)",
        Packet::Publish(_) => "PUBLISH",
        Packet::PingReq => "PINGREQ",
        Packet::Disconnect => "DISCONNECT",
        Packet::Subscribe(_) => "SUBSCRIBE",
        Packet::PubAck(_) => "PUBACK",
        _ => "OTHER",
    }
}

/// Serves one connection to its end, recording it in `record`.
fn serve_one(mut stream: TcpStream, script: Script, record: &Mutex<Vec<Seen>>) {
    let _ = stream.set_read_timeout(Some(WAIT));
    let mut buf = BytesMut::new();
    let mut chunk = [0u8; 4096];
    let mut index = None;
    loop {
        let packet = match v4::read(&mut buf, 1 << 20) {
            Ok(packet) => packet,
            Err(mqttbytes::Error::InsufficientBytes(_)) => match stream.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    continue;
                }
            },
            Err(_) => break,
        };
        let mut out = BytesMut::new();
        match (&packet, index) {
            (Packet::Connect(connect), None) => {
                let login = connect.login.clone().expect("the link sends a username and password");
                let mut seen = record.lock().expect("seen");
                seen.push(Seen {
                    client_id: connect.client_id.clone(),
                    username: login.username,
                    password: login.password,
                    ..Seen::default()
                });
                index = Some(seen.len() - 1);
                let code = match script {
                    Script::Refuse(code) => code,
                    Script::Serve | Script::Silent => ConnectReturnCode::Success,
                };
                ConnAck::new(code, false).write(&mut out).expect("encode CONNACK");
            }
            (other, Some(i)) => {
                record.lock().expect("seen")[i].packets.push(packet_name(other));
                match (script, other) {
                    (Script::Serve, Packet::Publish(publish)) => {
                        PubAck::new(publish.pkid).write(&mut out).expect("encode PUBACK");
                    }
                    (Script::Serve, Packet::PingReq) => {
                        PingResp.write(&mut out).expect("encode PINGRESP");
                    }
                    (_, Packet::Disconnect) => break,
                    _ => {}
                }
            }
            (_, None) => break,
        }
        if !out.is_empty() && stream.write_all(&out).is_err() {
            break;
        }
    }
    if let Some(i) = index {
        record.lock().expect("seen")[i].ended_unix = Some(unix_now());
    }
}

#[test]
fn password_is_a_device_sas_token_renewed_before_it_expires() {
    let hub = FakeHub::start(|_| Script::Serve);
    let outbox = VecOutbox::new();
    let mut short_lived = config(format!("mqtt://127.0.0.1:{}", hub.port));
    short_lived.token_ttl_secs = 5;
    let running = start_link(short_lived, outbox.clone());
    wait_until(
        "the link reconnected with a fresh token",
        || hub.seen().len() >= 2,
        || format!("{:?}\n{:?}", hub.seen(), running.link.status()),
    );

    let seen = hub.seen();
    let mut expiries = Vec::new();
    for connection in &seen[..2] {
        assert_eq!(connection.client_id, DEVICE);
        assert_eq!(connection.username, format!("{HUB}/{DEVICE}/?api-version=2021-04-12"));
        let token = sas::parse(&connection.password).expect("the password is a SAS token");
        assert_eq!(token.resource, format!("{HUB}/devices/{DEVICE}"));
        sas::verify(&token, &KEY, unix_now().min(token.expiry)).expect("signed with the device key");
        expiries.push(token.expiry);
    }
    assert!(expiries[1] > expiries[0], "the second connection has a fresh token: {expiries:?}");
    let first = &seen[0];
    assert_eq!(first.packets.last(), Some(&"DISCONNECT"), "renewal ends with a clean DISCONNECT: {first:?}");
    let ended = first.ended_unix.expect("the first connection ended");
    assert!(ended <= expiries[0], "renewed at {ended}, before the token expired at {}", expiries[0]);
    assert!(running.link.status().reconnects >= 1);
}

#[test]
fn refused_connack_is_reported_in_words_and_retried() {
    let hub = FakeHub::start(|n| if n < 2 { Script::Refuse(ConnectReturnCode::NotAuthorized) } else { Script::Serve });
    let outbox = VecOutbox::new();
    outbox.append(1, 5);
    let running = start_link(config(format!("mqtt://127.0.0.1:{}", hub.port)), outbox.clone());
    wait_until(
        "the link got through after two refusals and delivered",
        || outbox.acked_through() == 5,
        || format!("{:?}\n{:?}", hub.seen(), running.link.status()),
    );
    assert!(hub.seen().len() >= 3);
    let status = running.link.status();
    let error = status.last_error.clone().unwrap_or_default();
    assert!(error.contains("not authorized") && error.contains("CONNACK code 5"), "{status:?}");
    assert!(status.connected && status.reconnects == 0, "refusals are not connections: {status:?}");
}

#[test]
fn silent_hub_is_declared_dead_after_one_and_a_half_keep_alives() {
    let hub = FakeHub::start(|n| if n == 0 { Script::Silent } else { Script::Serve });
    let outbox = VecOutbox::new();
    outbox.append(1, 3);
    let mut quick = config(format!("mqtt://127.0.0.1:{}", hub.port));
    quick.keep_alive_secs = 1;
    let running = start_link(quick, outbox.clone());
    wait_until(
        "the link gave up on the silent hub and delivered on a new connection",
        || outbox.acked_through() == 3,
        || format!("{:?}\n{:?}", hub.seen(), running.link.status()),
    );
    let seen = hub.seen();
    assert!(seen[0].packets.contains(&"PINGREQ"), "the link pinged the silent hub: {:?}", seen[0]);
    assert_eq!(seen[0].packets.iter().filter(|p| **p == "PUBLISH").count(), 3, "{:?}", seen[0]);
    let resent = seen[1].packets.iter().filter(|p| **p == "PUBLISH(dup)").count();
    assert_eq!(resent, 3, "unacked messages are sent again with DUP: {:?}", seen[1]);
    let status = running.link.status();
    assert!(status.last_error.as_deref().is_some_and(|e| e.contains("keep-alive")), "{status:?}");
    assert_eq!((status.published, status.acked), (3, 3), "resends are not counted as new: {status:?}");
}
