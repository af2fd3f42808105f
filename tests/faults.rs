//! Fault injection (issue #9): the real binary under a SIGKILL loop, bit flips and cuts in its
//! store files, a full disk, a pre-CONNECT socket flood under a low descriptor limit, and
//! malformed packets, plain and over TLS; checked end to end with third-party clients (the
//! mqttbytes codec, mosquitto as the cloud, openssl s_client). Every wait is bounded; figures
//! are printed (`cargo test --test faults -- --nocapture`). Random choices print their seed;
//! `TINYEDGE_FAULT_SEED=…` replays them.

mod common;

use std::cell::RefCell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use common::*;
use mqttbytes::v4::{self, Connect, ConnectReturnCode, Packet, PubAck, Publish, Subscribe, SubscribeReasonCode};
use mqttbytes::QoS;
use serde_json::Value;

/// `[hub] max_inflight` (the default, set explicitly): the bound on re-sends per endpoint per crash.
const MAX_INFLIGHT: usize = 16;

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

/// xorshift64*, seeded from the clock or `TINYEDGE_FAULT_SEED`.
struct Rng(u64);

impl Rng {
    fn new(test: &str) -> Rng {
        let seed = std::env::var("TINYEDGE_FAULT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| now_ms() ^ (u64::from(std::process::id()) << 40));
        eprintln!("{test}: seed {seed} (replay with TINYEDGE_FAULT_SEED={seed})");
        Rng(seed | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }
}

// ---- MQTT over raw sockets ----

fn encode(packet: impl FnOnce(&mut BytesMut) -> Result<usize, mqttbytes::Error>) -> Vec<u8> {
    let mut out = BytesMut::new();
    packet(&mut out).expect("encode");
    out.to_vec()
}

fn connect_bytes(creds: &(String, String, String), clean: bool) -> Vec<u8> {
    let mut connect = Connect::new(creds.0.clone());
    connect.set_login(creds.1.clone(), creds.2.clone());
    connect.keep_alive = 60;
    connect.clean_session = clean;
    encode(|out| connect.write(out))
}

enum Next {
    Packet(Packet),
    /// The read timeout passed.
    Idle,
    /// The hub closed or reset the connection.
    Closed,
}

fn next_packet(raw: &mut Raw) -> Next {
    loop {
        match v4::read(&mut raw.buf, 1 << 20) {
            Ok(packet) => return Next::Packet(packet),
            Err(mqttbytes::Error::InsufficientBytes(_)) => {}
            Err(e) => panic!("bad packet from the hub: {e:?}"),
        }
        let mut chunk = [0u8; 8192];
        match raw.stream.read(&mut chunk) {
            Ok(0) => return Next::Closed,
            Ok(n) => raw.buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return Next::Idle,
            Err(_) => return Next::Closed,
        }
    }
}

fn send(raw: &mut Raw, bytes: &[u8]) -> bool {
    raw.stream.write_all(bytes).is_ok()
}

/// Connects and waits for a successful CONNACK; `None` when the hub is down, refuses or is silent.
fn try_connect(port: u16, creds: &(String, String, String), clean: bool) -> Option<Raw> {
    let stream = TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut raw = Raw { stream, buf: BytesMut::new() };
    if !send(&mut raw, &connect_bytes(creds, clean)) {
        return None;
    }
    match next_packet(&mut raw) {
        Next::Packet(Packet::ConnAck(ack)) if ack.code == ConnectReturnCode::Success => Some(raw),
        _ => None,
    }
}

fn events(module: &str) -> String {
    format!("devices/{DEVICE}/modules/{module}/messages/events/")
}

fn input_route(module: &str) -> String {
    format!(r#"FROM /messages/modules/sender/* INTO BrokeredEndpoint("/modules/{module}/inputs/in")"#)
}

fn payload(n: usize, pad: usize) -> String {
    format!("msg-{n:06}-{}", "x".repeat(pad))
}

fn number(payload: &[u8]) -> Option<usize> {
    std::str::from_utf8(payload).ok()?.strip_prefix("msg-")?.split('-').next()?.parse().ok()
}

/// Publishes `msg-{next}`, `msg-{next + 1}`, … (padded with `pad` bytes) at QoS 1 with up to
/// `window` unacknowledged while `more(next)`, then waits for the outstanding PUBACKs; stops
/// early when the connection ends (closed, or no PUBACK within the read timeout).
/// Acknowledged numbers go to `acked`; the others are abandoned, never re-sent, so they may or
/// may not arrive. Returns whether the connection is still usable.
fn stream(
    raw: &mut Raw,
    topic: &str,
    next: &mut usize,
    pad: usize,
    window: usize,
    more: &dyn Fn(usize) -> bool,
    acked: &mut dyn FnMut(usize),
) -> bool {
    let mut outstanding: VecDeque<(u16, usize)> = VecDeque::new();
    loop {
        if outstanding.len() < window && more(*next) {
            let n = *next;
            *next += 1;
            let mut publish = Publish::new(topic, QoS::AtLeastOnce, payload(n, pad));
            publish.pkid = (n % 65_535 + 1) as u16;
            if !send(raw, &encode(|out| publish.write(out))) {
                return false;
            }
            outstanding.push_back((publish.pkid, n));
            continue;
        }
        if outstanding.is_empty() {
            return true;
        }
        match next_packet(raw) {
            Next::Packet(Packet::PubAck(ack)) => {
                if let Some(i) = outstanding.iter().position(|(pkid, _)| *pkid == ack.pkid) {
                    if let Some((_, n)) = outstanding.remove(i) {
                        acked(n);
                    }
                }
            }
            Next::Packet(_) => {}
            Next::Idle | Next::Closed => return false,
        }
    }
}

/// A module's deliveries in arrival order: (message number, DUP flag).
type Got = Vec<(usize, bool)>;

fn covers(got: &Got, expected: &HashSet<usize>) -> bool {
    let seen: HashSet<usize> = got.iter().map(|g| g.0).collect();
    expected.iter().all(|n| seen.contains(n))
}

/// Records a delivery and acknowledges it; false when the connection broke.
fn on_packet(raw: &mut Raw, packet: Packet, got: &mut Got) -> bool {
    if let Packet::Publish(p) = packet {
        if let Some(n) = number(&p.payload) {
            got.push((n, p.dup));
        }
        if p.qos == QoS::AtLeastOnce {
            return send(raw, &encode(|out| PubAck::new(p.pkid).write(out)));
        }
    }
    true
}

/// Subscribes module `module` to its inputs (QoS 1); deliveries before the SUBACK are kept.
fn subscribe_inputs(raw: &mut Raw, module: &str, got: &mut Got) -> bool {
    let mut subscribe = Subscribe::new(format!("devices/{DEVICE}/modules/{module}/inputs/#"), QoS::AtLeastOnce);
    subscribe.pkid = 1;
    if !send(raw, &encode(|out| subscribe.write(out))) {
        return false;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match next_packet(raw) {
            Next::Packet(Packet::SubAck(ack)) => {
                assert!(
                    ack.return_codes.iter().all(|c| matches!(c, SubscribeReasonCode::Success(_))),
                    "{module}: subscription to its inputs refused"
                );
                return true;
            }
            Next::Packet(p) => {
                if !on_packet(raw, p, got) {
                    return false;
                }
            }
            Next::Idle => {}
            Next::Closed => return false,
        }
    }
    false
}

/// Receives on `raw` (subscribed, with a short read timeout) until `done(got)` and then
/// `linger` more, so nothing is left in flight; false when the connection ended or `deadline`
/// passed first.
fn receive(raw: &mut Raw, got: &mut Got, deadline: Instant, linger: Duration, done: &dyn Fn(&Got) -> bool) -> bool {
    let mut finished: Option<Instant> = None;
    let mut checked = Instant::now() - Duration::from_secs(1);
    loop {
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        if finished.is_none() && now >= checked + Duration::from_millis(100) {
            checked = now;
            if done(got) {
                finished = Some(now);
            }
        }
        if finished.is_some_and(|at| now >= at + linger) {
            return true;
        }
        match next_packet(raw) {
            Next::Packet(p) => {
                if !on_packet(raw, p, got) {
                    return false;
                }
            }
            Next::Idle => {}
            Next::Closed => return false,
        }
    }
}

/// Connects module `module` (clean_session = false) and subscribes to its inputs, with a
/// short read timeout; `None` when that fails.
fn subscriber(port: u16, module: &str, got: &mut Got) -> Option<Raw> {
    let mut raw = try_connect(port, &module_credentials(module, 3600), false)?;
    let _ = raw.stream.set_read_timeout(Some(Duration::from_millis(200)));
    subscribe_inputs(&mut raw, module, got).then_some(raw)
}

/// Receives module `module`'s inputs (reconnecting whenever the connection ends) until
/// `done(got)` plus `linger`, then disconnects; or until `timeout`.
fn drain(port: u16, module: &str, got: &mut Got, timeout: Duration, linger: Duration, done: &dyn Fn(&Got) -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let Some(mut raw) = subscriber(port, module, got) else {
            sleep_ms(100);
            continue;
        };
        if receive(&mut raw, got, deadline, linger, done) {
            let _ = send(&mut raw, &encode(|out| v4::Disconnect.write(out)));
            return;
        }
    }
}

/// One endpoint's deliveries checked against what the publisher had acknowledged.
#[derive(Debug, Default)]
struct Verdict {
    /// Acknowledged, never delivered.
    missing: Vec<usize>,
    /// A first arrival after a later one: (earlier arrival, later arrival).
    out_of_order: Option<(usize, usize)>,
    /// Copies of already delivered messages, per run of re-sends (each starts with a step back).
    resend_runs: Vec<usize>,
    /// Copies delivered without the DUP flag.
    dup_unflagged: Vec<usize>,
}

impl Verdict {
    fn of(got: &Got, acked: &HashSet<usize>) -> Verdict {
        let mut v = Verdict::default();
        let mut seen = HashSet::new();
        let (mut prev, mut last_first, mut run) = (None::<usize>, None::<usize>, 0);
        for &(n, dup) in got {
            if prev.is_some_and(|p| n <= p) && run > 0 {
                v.resend_runs.push(run);
                run = 0;
            }
            if seen.insert(n) {
                if let Some(last) = last_first.filter(|last| n < *last) {
                    v.out_of_order.get_or_insert((last, n));
                }
                last_first = Some(n);
            } else {
                run += 1;
                if !dup {
                    v.dup_unflagged.push(n);
                }
            }
            prev = Some(n);
        }
        if run > 0 {
            v.resend_runs.push(run);
        }
        v.missing = acked.iter().copied().filter(|n| !seen.contains(n)).collect();
        v.missing.sort_unstable();
        v
    }

    fn duplicates(&self) -> usize {
        self.resend_runs.iter().sum()
    }
}

// ---- the status file, the log, the store's files ----

fn status(rt: &Runtime) -> Option<Value> {
    serde_json::from_slice(&std::fs::read(rt.data_dir().join("status.json")).ok()?).ok()
}

fn status_updated(rt: &Runtime) -> u64 {
    status(rt).and_then(|s| s["updated_unix_ms"].as_u64()).unwrap_or(0)
}

/// The status file as first rewritten at or after `since_ms` (up to 10 s).
fn status_since(rt: &Runtime, since_ms: u64) -> Option<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(s) = status(rt).filter(|s| s["updated_unix_ms"].as_u64().is_some_and(|t| t >= since_ms)) {
            return Some(s);
        }
        sleep_ms(200);
    }
    None
}

/// Waits until the status file is rewritten after `after_ms` (up to `secs`).
fn status_rewritten(rt: &Runtime, after_ms: u64, secs: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if status_updated(rt) > after_ms {
            return true;
        }
        sleep_ms(200);
    }
    false
}

/// `N` of "… N record(s) lost" or "… lost N records".
fn lost_in_line(line: &str) -> Option<u64> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let num = |w: &str| w.trim_matches(|c: char| !c.is_ascii_digit()).parse::<u64>().ok();
    words.iter().enumerate().find_map(|(i, w)| {
        if w.starts_with("record") && i > 0 && words.get(i + 1).is_some_and(|x| x.starts_with("lost")) {
            num(words[i - 1])
        } else if *w == "lost" {
            words.get(i + 1).and_then(|x| num(x))
        } else {
            None
        }
    })
}

/// Records the store says it lost when it last opened: `store.recovery.records_lost` of the
/// status file written after `since_ms`, else its recovery log lines after `log_from` (none:
/// nothing lost).
fn reported_lost(rt: &Runtime, since_ms: u64, log_from: usize) -> u64 {
    if let Some(n) = status_since(rt, since_ms).and_then(|s| s["store"]["recovery"]["records_lost"].as_u64()) {
        return n;
    }
    sleep_ms(300);
    let log = rt.log();
    log[log_from..].lines().filter(|l| l.contains("recovery")).filter_map(lost_in_line).max().unwrap_or(0)
}

fn segments(store: &Path) -> Vec<PathBuf> {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(store)
        .expect("store dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("seg-")))
        .collect();
    segments.sort();
    segments
}

/// The records of a segment file as (offset, length, payload), walked by the layout of
/// hub/src/store/record.rs: a 28-byte header with body_len (u32 LE) at 4, then the body:
/// endpoint count u8, 7 bytes per endpoint, source, properties and payload (u32 LE length +
/// bytes each). Stops at the first record that does not fit.
fn records(bytes: &[u8]) -> Vec<(usize, usize, Vec<u8>)> {
    let u32_at = |o: usize| bytes.get(o..o + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
    let mut out = Vec::new();
    let mut offset = 0;
    while let Some(body_len) = u32_at(offset + 4) {
        let end = offset + 28 + body_len;
        let Some(&count) = bytes.get(offset + 28).filter(|_| end <= bytes.len()) else { break };
        let skip = |p: usize| u32_at(p).map(|len| p + 4 + len);
        let payload = skip(offset + 29 + 7 * usize::from(count))
            .and_then(skip)
            .and_then(|p| u32_at(p).and_then(|len| bytes.get(p + 4..p + 4 + len)));
        let Some(payload) = payload else { break };
        out.push((offset, end - offset, payload.to_vec()));
        offset = end;
    }
    out
}

fn flip_bit(path: &Path, offset: usize, bit: u8) {
    let mut bytes = std::fs::read(path).expect("read");
    bytes[offset] ^= 1 << bit;
    std::fs::write(path, bytes).expect("write");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create");
    for entry in std::fs::read_dir(from).expect("list").filter_map(Result::ok) {
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}

/// Publishes `count` messages from module `sender` and fails unless every one is acknowledged.
fn publish_all(rt: &Runtime, next: &mut usize, count: usize, pad: usize, acked: &mut HashSet<usize>) {
    let mut raw = try_connect(rt.mqtt_port, &module_credentials("sender", 3600), true).expect("sender connects");
    let end = *next + count;
    let before = acked.len();
    stream(&mut raw, &events("sender"), next, pad, MAX_INFLIGHT, &|n| n < end, &mut |n| {
        acked.insert(n);
    });
    assert_eq!(acked.len() - before, count, "not every message acknowledged; log:\n{}", rt.log());
}

// ---- 1. SIGKILL loop ----

#[test]
fn sigkill_loop_loses_nothing_acknowledged_keeps_order_and_resends_at_most_the_inflight_window() {
    const KILLS: usize = 20;
    const MESSAGES_MAX: usize = 40_000;
    let mut rng = Rng::new("sigkill_loop");
    let mut cloud = Cloud::new();
    cloud.start();
    cloud.register_subscriber();
    let (online_route, offline_route) = (input_route("online"), input_route("offline"));
    let routes = [
        ("up", "FROM /messages/modules/sender/* INTO $upstream"),
        ("online", online_route.as_str()),
        ("offline", offline_route.as_str()),
    ];
    let mut rt = Runtime::start(
        &deployment(&["sender", "online", "offline"], &routes),
        &format!(
            "max_inflight = {MAX_INFLIGHT}\n[upstream]\nurl = \"mqtt://127.0.0.1:{}\"\nbackoff_max_secs = 1\n",
            cloud.port
        ),
    );
    let port = rt.mqtt_port;
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(HashSet::new()));
    let publisher = {
        let (stop, acked) = (stop.clone(), acked.clone());
        std::thread::spawn(move || {
            let (creds, topic) = (module_credentials("sender", 3600), events("sender"));
            let mut next = 0;
            let more = |n: usize| {
                if n & 63 == 0 {
                    // A pause every 64 messages bounds the stream (the window still fills), so
                    // it spans every kill.
                    sleep_ms(20);
                }
                n < MESSAGES_MAX && !stop.load(Ordering::Relaxed)
            };
            while more(next) {
                match try_connect(port, &creds, true) {
                    Some(mut raw) => {
                        stream(&mut raw, &topic, &mut next, 0, MAX_INFLIGHT, &more, &mut |n| {
                            acked.lock().expect("lock").insert(n);
                        });
                    }
                    None => sleep_ms(50),
                }
            }
            next
        })
    };
    // The online module: connected throughout, reconnecting after each kill, until it has
    // everything acknowledged (known once the publisher stops).
    let expected: Arc<Mutex<Option<HashSet<usize>>>> = Arc::new(Mutex::new(None));
    let online = {
        let expected = expected.clone();
        std::thread::spawn(move || {
            let mut got = Got::new();
            let done = |got: &Got| expected.lock().expect("lock").as_ref().is_some_and(|e| covers(got, e));
            drain(port, "online", &mut got, Duration::from_secs(150), Duration::from_secs(1), &done);
            got
        })
    };
    for _ in 0..KILLS {
        sleep_ms(300 + rng.below(700));
        rt.kill9_and_restart();
    }
    sleep_ms(1000);
    stop.store(true, Ordering::Relaxed);
    let sent = publisher.join().expect("publisher");
    let acked: HashSet<usize> = acked.lock().expect("lock").clone();
    eprintln!("sigkill_loop: {KILLS} kills survived; {sent} messages sent, {} acknowledged", acked.len());
    assert!(acked.len() > 1000, "only {} messages acknowledged; log:\n{}", acked.len(), rt.log());
    let highest = acked.iter().copied().max().unwrap_or(0);
    *expected.lock().expect("lock") = Some(acked.clone());

    let online_got = online.join().expect("online subscriber");
    let lines = cloud.collect_until(Duration::from_secs(90), |l| {
        l.last().and_then(|line| line.split_once(' ')).and_then(|(_, p)| number(p.as_bytes())) == Some(highest)
    });
    let upstream_got: Got = lines
        .iter()
        .filter_map(|l| l.split_once(' '))
        .filter_map(|(_, p)| number(p.as_bytes()))
        .map(|n| (n, false))
        .collect();
    let mut offline_got = Got::new();
    drain(port, "offline", &mut offline_got, Duration::from_secs(90), Duration::from_secs(1), &|g| covers(g, &acked));

    let mut failures = Vec::new();
    for (endpoint, got, mqtt_subscriber) in
        [("$upstream", &upstream_got, false), ("online", &online_got, true), ("offline", &offline_got, true)]
    {
        let v = Verdict::of(got, &acked);
        eprintln!(
            "sigkill_loop: {endpoint}: {} deliveries, {} duplicates over {KILLS} kills ({:.1} per kill); re-send runs {:?} (bound {MAX_INFLIGHT} each)",
            got.len(),
            v.duplicates(),
            v.duplicates() as f64 / KILLS as f64,
            v.resend_runs
        );
        if !v.missing.is_empty() {
            failures.push(format!(
                "{endpoint}: {} acknowledged messages never delivered, e.g. {:?}",
                v.missing.len(),
                &v.missing[..v.missing.len().min(10)]
            ));
        }
        if let Some((before, after)) = v.out_of_order {
            failures.push(format!("{endpoint}: out of order: msg {after} first arrived after msg {before}"));
        }
        if let Some(worst) = v.resend_runs.iter().copied().max().filter(|w| *w > MAX_INFLIGHT) {
            failures.push(format!(
                "{endpoint}: {worst} already-delivered messages re-sent after one kill (max_inflight is {MAX_INFLIGHT}); runs {:?}",
                v.resend_runs
            ));
        }
        if v.resend_runs.len() > KILLS {
            failures.push(format!("{endpoint}: {} re-send runs for {KILLS} kills", v.resend_runs.len()));
        }
        if mqtt_subscriber && !v.dup_unflagged.is_empty() {
            failures.push(format!(
                "{endpoint}: {} re-sent deliveries without the DUP flag, e.g. {:?}",
                v.dup_unflagged.len(),
                &v.dup_unflagged[..v.dup_unflagged.len().min(10)]
            ));
        }
    }
    assert!(matches!(rt.child.try_wait(), Ok(None)), "tinyedge exited; log:\n{}", rt.log());
    assert!(failures.is_empty(), "{}\n(log: {} bytes)", failures.join("\n"), rt.log().len());
}

// ---- 2. bit flips in every store file ----

struct CaseResult {
    late: Got,
    early: Got,
    lost: u64,
    recovery: Option<Value>,
    store_warnings: Vec<String>,
}

/// Restores the store from `snapshot`, lets `damage` alter it, starts the runtime, drains both
/// modules (each until it has `expect_*`, plus 1 s), and reads what the store reported.
fn run_case(
    rt: &mut Runtime,
    snapshot: &Path,
    damage: &dyn Fn(&Path),
    expect_late: &HashSet<usize>,
    expect_early: &HashSet<usize>,
) -> CaseResult {
    rt.kill9();
    let store = rt.data_dir().join("store");
    std::fs::remove_dir_all(&store).expect("remove store");
    copy_dir(snapshot, &store);
    damage(&store);
    let (log_from, since) = (rt.log().len(), now_ms());
    rt.start_again();
    let (mut late, mut early) = (Got::new(), Got::new());
    let linger = Duration::from_secs(1);
    drain(rt.mqtt_port, "late", &mut late, Duration::from_secs(20), linger, &|g| covers(g, expect_late));
    drain(rt.mqtt_port, "early", &mut early, Duration::from_secs(20), linger, &|g| covers(g, expect_early));
    let lost = reported_lost(rt, since, log_from);
    let recovery = status_since(rt, since).and_then(|s| s["store"].get("recovery").cloned());
    let store_warnings = rt.log()[log_from..]
        .lines()
        .filter(|l| (l.contains(" WARN ") || l.contains(" ERROR ")) && l.contains("store"))
        .map(str::to_string)
        .collect();
    CaseResult { late, early, lost, recovery, store_warnings }
}

#[test]
fn a_flipped_bit_in_any_store_file_loses_only_the_damaged_records_and_is_reported() {
    let mut rng = Rng::new("bit_flips");
    let (early_route, late_route) = (input_route("early"), input_route("late"));
    let mut rt = Runtime::start(
        &deployment(&["sender", "early", "late"], &[("early", &early_route), ("late", &late_route)]),
        "",
    );
    // 0..100 delivered to early (its checkpoint moves), 100..200 to nobody; late has all 200.
    let (mut acked, mut next) = (HashSet::new(), 0);
    publish_all(&rt, &mut next, 100, 0, &mut acked);
    let mut early = Got::new();
    let first: HashSet<usize> = (0..100).collect();
    drain(rt.mqtt_port, "early", &mut early, Duration::from_secs(20), Duration::from_secs(1), &|g| covers(g, &first));
    assert!(covers(&early, &first), "early did not get its first 100; log:\n{}", rt.log());
    publish_all(&rt, &mut next, 100, 0, &mut acked);
    // Let early's checkpoint reach the disk (status: persisted_checkpoint = checkpoint).
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let persisted = status(&rt).is_some_and(|s| {
            s["store"]["endpoints"].as_object().is_some_and(|endpoints| {
                endpoints.iter().filter(|(name, _)| name.contains("early")).any(|(_, e)| {
                    e["checkpoint"].as_u64().is_some_and(|c| c > 0 && e["persisted_checkpoint"].as_u64() == Some(c))
                })
            })
        });
        if persisted {
            break;
        }
        sleep_ms(200);
    }
    rt.kill9();
    let snapshot = TempDir::new("store-snapshot");
    copy_dir(&rt.data_dir().join("store"), &snapshot.0);
    let all: HashSet<usize> = (0..200).collect();
    let second: HashSet<usize> = (100..200).collect();

    let control = run_case(&mut rt, &snapshot.0, &|_| {}, &all, &second);
    let cv = Verdict::of(&control.late, &all);
    assert!(
        cv.missing.is_empty() && cv.duplicates() == 0 && control.lost == 0,
        "undamaged store: late {cv:?}, {} records reported lost; log:\n{}",
        control.lost,
        rt.log()
    );
    let ce = Verdict::of(&control.early, &second);
    assert!(
        ce.missing.is_empty() && control.early.iter().all(|g| g.0 >= 100),
        "undamaged store: early got {:?} (expected 100..200 only)",
        control.early.iter().map(|g| g.0).collect::<Vec<_>>()
    );

    let metadata: Vec<PathBuf> = std::fs::read_dir(&snapshot.0)
        .expect("list snapshot")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|n| !n.to_string_lossy().starts_with("seg-")))
        .collect();
    eprintln!(
        "bit_flips: store files {:?}",
        std::fs::read_dir(&snapshot.0)
            .expect("list")
            .filter_map(Result::ok)
            .map(|e| (e.file_name(), e.metadata().map(|m| m.len()).unwrap_or(0)))
            .collect::<Vec<_>>()
    );
    assert!(!metadata.is_empty(), "no metadata file in the store");
    let mut failures = Vec::new();
    for file in &metadata {
        let name = file.file_name().expect("name").to_string_lossy().into_owned();
        let len = std::fs::metadata(file).expect("size").len() as usize;
        // One bit in the file's first bytes, one from its middle (the second copy, if it keeps two).
        for start in [0, len / 2] {
            let offset = start + rng.below(32.min(len - start) as u64) as usize;
            let bit = rng.below(8) as u8;
            let case = format!("{name}: bit {bit} of byte {offset} (of {len})");
            let target = name.clone();
            let r = run_case(&mut rt, &snapshot.0, &|store| flip_bit(&store.join(&target), offset, bit), &all, &second);
            let (late, early) = (Verdict::of(&r.late, &all), Verdict::of(&r.early, &second));
            let checkpoints = name.contains("ckp") || name.contains("checkpoint");
            eprintln!(
                "bit_flips: {case}: late {} deliveries, early {}, reported lost {}, recovery {:?}, store warnings {:?}",
                r.late.len(),
                r.early.len(),
                r.lost,
                r.recovery,
                r.store_warnings
            );
            if !late.missing.is_empty() || !early.missing.is_empty() {
                failures.push(format!(
                    "{case}: acknowledged undelivered messages discarded: late misses {}, early misses {}",
                    late.missing.len(),
                    early.missing.len()
                ));
            }
            if late.out_of_order.is_some() || early.out_of_order.is_some() {
                failures.push(format!("{case}: out of order: {:?} {:?}", late.out_of_order, early.out_of_order));
            }
            let early_redelivered = r.early.iter().filter(|g| g.0 < 100).count();
            if !checkpoints && (late.duplicates() > 0 || early.duplicates() > 0 || early_redelivered > 0) {
                failures.push(format!(
                    "{case}: duplicates: late {}, early {} (+{early_redelivered} delivered before the kill)",
                    late.duplicates(),
                    early.duplicates()
                ));
            }
            if r.lost != 0 {
                failures.push(format!("{case}: {} records reported lost, none were", r.lost));
            }
            if r.store_warnings.is_empty() && r.recovery == control.recovery {
                failures.push(format!(
                    "{case}: repair not reported (no store WARN/ERROR line, status recovery unchanged: {:?})",
                    r.recovery
                ));
            }
        }
    }

    // A bit in a record's payload, then in a record's length field: that record is lost, the
    // others are delivered, and the loss is reported as one record.
    let n = 20 + rng.below(160) as usize;
    let m = if n < 100 { n + 50 } else { n - 50 };
    for (what, victim) in [("payload", n), ("length field", m)] {
        let locate = |store: &Path| {
            segments(store)
                .into_iter()
                .find_map(|seg| {
                    let bytes = std::fs::read(&seg).expect("read segment");
                    records(&bytes).into_iter().find(|r| number(&r.2) == Some(victim)).map(|r| (seg, r.0, r.1))
                })
                .expect("the record is in a segment")
        };
        let (_, offset, len) = locate(&snapshot.0);
        let (byte, bit) =
            if what == "payload" { (offset + len - 3, rng.below(8) as u8) } else { (offset + 5, rng.below(8) as u8) };
        let damage = |store: &Path| {
            let (seg, _, _) = locate(store);
            flip_bit(&seg, byte, bit);
        };
        let expect_late: HashSet<usize> = all.iter().copied().filter(|x| *x != victim).collect();
        let expect_early: HashSet<usize> = second.iter().copied().filter(|x| *x != victim).collect();
        let r = run_case(&mut rt, &snapshot.0, &damage, &expect_late, &expect_early);
        let (late, early) = (Verdict::of(&r.late, &all), Verdict::of(&r.early, &second));
        let case = format!("segment {what} of msg {victim}: bit {bit} of byte {byte}");
        eprintln!(
            "bit_flips: {case}: late misses {:?}, early misses {:?}, reported lost {}",
            late.missing, early.missing, r.lost
        );
        if late.missing != [victim] {
            failures.push(format!("{case}: late misses {:?}, expected exactly [{victim}]", late.missing));
        }
        if early.missing.iter().any(|x| *x != victim) {
            failures.push(format!("{case}: early misses {:?}", early.missing));
        }
        if r.lost != late.missing.len() as u64 {
            failures.push(format!("{case}: {} records reported lost, {} did not arrive", r.lost, late.missing.len()));
        }
        if late.duplicates() + early.duplicates() > 0 {
            failures.push(format!("{case}: duplicates delivered"));
        }
    }
    assert!(matches!(rt.child.try_wait(), Ok(None)), "tinyedge exited; log:\n{}", rt.log());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---- 3. truncation of the last segment ----

#[test]
fn a_tail_cut_at_a_random_offset_is_reported_as_exactly_the_records_lost() {
    let mut rng = Rng::new("truncation");
    let late_route = input_route("late");
    // 1 MiB store: segments of at most 128 KiB, so each round of ~150 KB spans segment
    // boundaries; 3 rounds stay well below the bound (nothing dropped).
    let mut rt =
        Runtime::start(&deployment(&["sender", "late"], &[("late", &late_route)]), "[store]\nmax_bytes = 1048576\n");
    let store = rt.data_dir().join("store");
    let (mut acked, mut cut, mut next) = (HashSet::new(), HashSet::new(), 0);
    let mut reported = 0;
    let mut failures = Vec::new();
    for round in 0..3 {
        publish_all(&rt, &mut next, 300, 400, &mut acked);
        rt.kill9();
        let last = segments(&store).pop().expect("a segment");
        let bytes = std::fs::read(&last).expect("read segment");
        let at = rng.below(bytes.len() as u64) as usize;
        let lost: Vec<usize> =
            records(&bytes).into_iter().filter(|r| r.0 + r.1 > at).filter_map(|r| number(&r.2)).collect();
        std::fs::OpenOptions::new().write(true).open(&last).expect("open").set_len(at as u64).expect("truncate");
        cut.extend(lost.iter().copied());
        let (log_from, since) = (rt.log().len(), now_ms());
        rt.start_again();
        let said = reported_lost(&rt, since, log_from);
        eprintln!(
            "truncation: round {round}: {} cut at {at} of {} bytes: {} records cut, {said} reported lost",
            last.display(),
            bytes.len(),
            lost.len()
        );
        if said != lost.len() as u64 {
            failures.push(format!(
                "round {round}: cut at {at} of {} bytes lost {} records, {said} reported",
                bytes.len(),
                lost.len()
            ));
        }
        reported += said;
    }
    let mut got = Got::new();
    let kept: HashSet<usize> = acked.difference(&cut).copied().collect();
    drain(rt.mqtt_port, "late", &mut got, Duration::from_secs(30), Duration::from_secs(1), &|g| covers(g, &kept));
    let v = Verdict::of(&got, &acked);
    let mut cut_sorted: Vec<usize> = cut.iter().copied().collect();
    cut_sorted.sort_unstable();
    eprintln!("truncation: {} acknowledged, {} did not arrive, {reported} reported lost", acked.len(), v.missing.len());
    assert_eq!(v.missing, cut_sorted, "lost messages are not exactly the records cut; log:\n{}", rt.log());
    assert!(v.out_of_order.is_none(), "{v:?}");
    failures.extend((reported != v.missing.len() as u64).then(|| {
        format!("{reported} records reported lost in all, {} acknowledged messages did not arrive", v.missing.len())
    }));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---- 4. disk full ----

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Lazily unmounts the tmpfs (even while tinyedge still has files open) and removes what is left.
struct Unmount(RefCell<Option<PathBuf>>);

impl Drop for Unmount {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = Command::new("umount").arg("-l").arg(&path).status();
            if let Some(parent) = path.parent() {
                let _ = std::fs::remove_dir_all(parent);
            }
        }
    }
}

/// A line at the default level (info) or above saying the disk is full.
fn disk_full_line(line: &str) -> bool {
    if !matches!(line.split_whitespace().nth(1), Some("ERROR" | "WARN" | "INFO")) {
        return false;
    }
    let line = line.to_lowercase();
    ["no space", "disk full", "disk is full", "enospc", "os error 28", "filesystem full", "storage full"]
        .iter()
        .any(|needle| line.contains(needle))
}

#[test]
fn a_full_disk_refuses_new_messages_keeps_delivering_and_accepts_again_by_itself() {
    if !is_root() {
        eprintln!("SKIPPED a_full_disk_…: not root (`id -u` is not 0), and mounting the test's tmpfs needs root");
        return;
    }
    let mounted = Unmount(RefCell::new(None));
    let away_route = input_route("away");
    // A 6 MiB disk under a 16 MiB store bound (2 MiB segments): the disk fills first.
    let mut rt = Runtime::start_prepared(
        &deployment(&["sender", "away"], &[("away", &away_route)]),
        "[store]\nmax_bytes = 16777216\n",
        "[agent]\nenabled = false\n",
        |dir| {
            let data = dir.join("data");
            std::fs::create_dir_all(&data).expect("create data dir");
            let out = Command::new("mount").args(["-t", "tmpfs", "-o", "size=6m", "tmpfs"]).arg(&data).output();
            let out = out.expect("run mount");
            assert!(
                out.status.success(),
                "running as root but cannot mount a 6 MiB tmpfs at {}: {}",
                data.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            *mounted.0.borrow_mut() = Some(data);
        },
        &[],
    );
    let (port, sender, topic) = (rt.mqtt_port, module_credentials("sender", 3600), events("sender"));
    let pid = rt.child.id();
    let (mut acked, mut next) = (HashSet::new(), 0);

    // Fill the disk: 1 KiB messages until one is refused (connection closed, or no PUBACK in 5 s).
    let mut raw = try_connect(port, &sender, true).expect("sender connects");
    let _ = raw.stream.set_read_timeout(Some(Duration::from_secs(5)));
    let unrefused = stream(&mut raw, &topic, &mut next, 1000, MAX_INFLIGHT, &|n| n < 20_000, &mut |n| {
        acked.insert(n);
    });
    drop(raw);
    assert!(!unrefused, "20 000 messages of 1 KiB accepted on a 6 MiB disk; log:\n{}", rt.log());
    let full_ms = now_ms();
    eprintln!("disk_full: refused after {} accepted messages", acked.len());

    // While full: bursts of 16, each refused; the status file keeps being rewritten.
    let (mut sent_full, mut accepted_full) = (0, 0);
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        if let Some(mut raw) = try_connect(port, &sender, true) {
            let _ = raw.stream.set_read_timeout(Some(Duration::from_secs(1)));
            let (start, before) = (next, acked.len());
            stream(&mut raw, &topic, &mut next, 1000, MAX_INFLIGHT, &|n| n < start + 16, &mut |n| {
                acked.insert(n);
            });
            sent_full += next - start;
            accepted_full += acked.len() - before;
        }
        sleep_ms(50);
    }
    let refused = sent_full - accepted_full;
    let rewritten = status_rewritten(&rt, full_ms + 1000, 10);
    let lines: Vec<String> = rt.log().lines().filter(|l| disk_full_line(l)).map(str::to_string).collect();
    eprintln!(
        "disk_full: while full {refused} of {sent_full} messages refused; {} disk-full log lines: {:?}",
        lines.len(),
        &lines[..lines.len().min(5)]
    );
    assert!(rewritten, "status.json not rewritten while the disk is full; log:\n{}", rt.log());
    let appended = status(&rt).and_then(|s| s["store"]["records_appended"].as_u64()).unwrap_or(0);
    assert!(
        appended >= acked.len() as u64,
        "status shows {appended} records appended, {} were acknowledged",
        acked.len()
    );
    assert!(refused >= 16, "only {refused} messages refused while the disk was full");
    assert!(!lines.is_empty(), "no log line says the disk is full; log:\n{}", rt.log());
    assert!(lines.len() <= 10, "{} disk-full log lines for {refused} refusals (not rate limited)", lines.len());

    // Delivery frees space; publishing is accepted again by itself (same process, no restart).
    // One connection for the module throughout, so any copy is the store's doing.
    let mut got = Got::new();
    let mut away = subscriber(port, "away", &mut got).expect("away connects and subscribes");
    let until = Instant::now() + Duration::from_secs(60);
    let alive = receive(&mut away, &mut got, until, Duration::from_secs(1), &|g| covers(g, &acked));
    let delivered = Instant::now();
    let v = Verdict::of(&got, &acked);
    assert!(
        v.missing.is_empty(),
        "{} acknowledged messages not delivered, e.g. {:?}",
        v.missing.len(),
        &v.missing[..v.missing.len().min(10)]
    );
    assert!(alive, "the module's connection ended while receiving the stored messages; log:\n{}", tail(&rt.log(), 40));
    let mut resumed = None;
    while resumed.is_none() && delivered.elapsed() < Duration::from_secs(30) {
        if let Some(mut raw) = try_connect(port, &sender, true) {
            let _ = raw.stream.set_read_timeout(Some(Duration::from_secs(2)));
            let (start, before) = (next, acked.len());
            stream(&mut raw, &topic, &mut next, 1000, 1, &|n| n < start + 1, &mut |n| {
                acked.insert(n);
            });
            if acked.len() > before {
                resumed = Some(delivered.elapsed());
            }
        }
        if resumed.is_none() {
            sleep_ms(500);
        }
    }
    eprintln!("disk_full: accepting again {resumed:?} after everything stored was delivered");
    assert!(
        resumed.is_some(),
        "publishing still refused 30 s after every stored message was delivered; log:\n{}",
        rt.log()
    );
    publish_all(&rt, &mut next, 50, 1000, &mut acked);
    let until = Instant::now() + Duration::from_secs(30);
    let alive = receive(&mut away, &mut got, until, Duration::from_secs(1), &|g| covers(g, &acked));
    assert!(alive, "the module's connection ended after publishing resumed; log:\n{}", tail(&rt.log(), 40));
    let v = Verdict::of(&got, &acked);
    assert!(
        v.missing.is_empty(),
        "{} acknowledged messages not delivered: {:?}",
        v.missing.len(),
        &v.missing[..v.missing.len().min(10)]
    );
    let mut counts: HashMap<usize, usize> = HashMap::new();
    got.iter().for_each(|g| *counts.entry(g.0).or_default() += 1);
    let twice: Vec<usize> = counts.iter().filter(|(_, c)| **c > 1).map(|(n, _)| *n).collect();
    assert!(
        twice.is_empty(),
        "{} messages delivered twice, e.g. {:?}; log tail:\n{}",
        twice.len(),
        &twice[..twice.len().min(10)],
        tail(&rt.log(), 40)
    );
    assert!(matches!(rt.child.try_wait(), Ok(None)) && rt.child.id() == pid, "tinyedge exited; log:\n{}", rt.log());
}

// ---- 5. pre-CONNECT socket flood under a low descriptor limit ----

const NOFILE: usize = 256;

fn open_flood(port: u16, count: usize) -> Vec<TcpStream> {
    let mut sockets = Vec::new();
    let mut failures = 0;
    while sockets.len() < count && failures < 3 {
        match TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_millis(500)) {
            Ok(s) => sockets.push(s),
            Err(_) => failures += 1,
        }
    }
    sockets
}

fn hub_figures(rt: &Runtime) -> String {
    let out = String::from_utf8_lossy(&rt.cli(&["status"]).stdout).into_owned();
    out.lines()
        .filter(|l| l.starts_with("hub.") && (l.contains("conn") || l.contains("unauth")))
        .collect::<Vec<_>>()
        .join(", ")
}

#[test]
fn a_pre_connect_socket_flood_under_a_low_descriptor_limit_leaves_clients_working() {
    require_tool("prlimit");
    require_tool("mosquitto_pub");
    let receiver_route = input_route("receiver");
    let rt = Runtime::start_prepared(
        &deployment(&["sender", "receiver", "tlsclient"], &[("receiver", &receiver_route)]),
        "",
        "[store]\nmax_bytes = 1048576\n[agent]\nenabled = false\n",
        |_| {},
        &["prlimit", &format!("--nofile={NOFILE}:{NOFILE}"), "--"],
    );
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", rt.child.id())).expect("limits");
    assert!(
        limits
            .lines()
            .any(|l| l.starts_with("Max open files") && l.split_whitespace().nth(3) == Some(&NOFILE.to_string())),
        "tinyedge does not run under nofile={NOFILE}:\n{limits}"
    );
    let mut sender = try_connect(rt.mqtt_port, &module_credentials("sender", 3600), true).expect("sender connects");
    let (mut acked, mut next) = (HashSet::new(), 0);
    let (mut received, mut receiver) = (Got::new(), None);
    let ca = rt.data_dir().join("certs/edge-ca.pem");
    for (phase, flood_port) in [("plain", rt.mqtt_port), ("tls", rt.mqtts_port)] {
        let flood = open_flood(flood_port, 2 * NOFILE);
        let since = now_ms();
        eprintln!("socket_flood: {phase}: {} silent sockets open; {}", flood.len(), hub_figures(&rt));
        assert!(flood.len() > NOFILE, "{phase}: only {} sockets could be opened", flood.len());
        // The connected publisher: 10 messages of 20 KB (a new segment file on the way).
        let start = next;
        let open =
            stream(&mut sender, &events("sender"), &mut next, 20_000, MAX_INFLIGHT, &|n| n < start + 10, &mut |n| {
                acked.insert(n);
            });
        assert!(
            open && acked.len() == next,
            "{phase} flood: the connected publisher got {} of {} PUBACKs; log tail:\n{}",
            acked.len(),
            next,
            tail(&rt.log(), 40)
        );
        // A new connection during the flood: plain — the receiver connects (retrying) and gets
        // everything, then keeps that connection; TLS — mosquitto_pub connects over TLS and
        // publishes at QoS 1.
        let deadline = Instant::now() + Duration::from_secs(30);
        while receiver.is_none() && Instant::now() < deadline {
            receiver = subscriber(rt.mqtt_port, "receiver", &mut received);
            if receiver.is_none() {
                sleep_ms(500);
            }
        }
        let served = receiver.as_mut().is_some_and(|raw| {
            receive(raw, &mut received, deadline, Duration::from_millis(500), &|g| covers(g, &acked))
        });
        assert!(
            served,
            "{phase} flood: the receiver could not connect or receive within 30 s ({} of {}); log tail:\n{}",
            received.len(),
            acked.len(),
            tail(&rt.log(), 40)
        );
        if phase == "tls" {
            let creds = module_credentials("tlsclient", 3600);
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut ok = false;
            while !ok && Instant::now() < deadline {
                let out = Command::new("timeout")
                    .args([
                        "10",
                        "mosquitto_pub",
                        "-h",
                        "127.0.0.1",
                        "-p",
                        &rt.mqtts_port.to_string(),
                        "-V",
                        "mqttv311",
                    ])
                    .arg("--cafile")
                    .arg(&ca)
                    .args(["--insecure", "-i", &creds.0, "-u", &creds.1, "-P", &creds.2])
                    .args(["-t", &events("tlsclient"), "-m", "over-tls", "-q", "1"])
                    .output()
                    .expect("mosquitto_pub");
                ok = out.status.success();
                if !ok {
                    sleep_ms(1000);
                }
            }
            assert!(
                ok,
                "tls flood: no TLS client could connect and publish within 30 s; log tail:\n{}",
                tail(&rt.log(), 40)
            );
        }
        assert!(
            status_rewritten(&rt, since + 1000, 15),
            "{phase} flood: status.json not rewritten; log tail:\n{}",
            tail(&rt.log(), 40)
        );
        eprintln!("socket_flood: {phase}: clients served; {}", hub_figures(&rt));
        drop(flood);
    }
    let emfile = rt.log().lines().filter(|l| l.contains("os error 24") || l.contains("Too many open files")).count();
    eprintln!("socket_flood: {emfile} log lines about running out of descriptors");
    let v = Verdict::of(&received, &acked);
    assert!(v.out_of_order.is_none() && v.duplicates() == 0, "receiver: {v:?}");
}

fn tail(log: &str, lines: usize) -> String {
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---- 6. malformed packets ----

struct BadInput {
    name: &'static str,
    bytes: Vec<u8>,
    /// We close right after sending (the hub must still say what happened).
    we_close: bool,
    /// The CONNACK return code the hub must answer with, if any.
    connack: Option<u8>,
    /// A packet type (high nibble of the first byte) the hub must not answer with.
    never: Option<u8>,
}

fn bad_inputs(rng: &mut Rng, identity: &mut dyn FnMut() -> (String, String, String)) -> Vec<BadInput> {
    let random = |rng: &mut Rng, n: usize| -> Vec<u8> { (0..n).map(|_| rng.below(256) as u8).collect() };
    let connect = |creds: &(String, String, String)| connect_bytes(creds, true);
    let mut cases = Vec::new();
    let mut add =
        |name, bytes, we_close, connack, never| cases.push(BadInput { name, bytes, we_close, connack, never });
    add("random bytes", random(rng, 4096), false, None, None);
    add("0x10 then 4 KiB of random bytes", [vec![0x10], random(rng, 4096)].concat(), false, None, None);
    let full = connect(&identity());
    add("truncated CONNECT, then close", full[..full.len() / 2].to_vec(), true, None, None);
    add("oversized remaining length", vec![0x10, 0xFF, 0xFF, 0xFF, 0x7F], false, None, None);
    let big = [connect(&identity()), vec![0x30, 0x80, 0x80, 0x40], vec![0; 64]].concat();
    add("PUBLISH of 1 MiB announced after CONNECT", big, false, None, Some(4));
    let mut subscribe = Subscribe::new(format!("devices/{DEVICE}/modules/x/inputs/#"), QoS::AtLeastOnce);
    subscribe.pkid = 3;
    let mut bad_flags = encode(|out| subscribe.write(out));
    bad_flags[0] = 0x80; // must be 0x82
    add("SUBSCRIBE with fixed-header flags 0", [connect(&identity()), bad_flags].concat(), false, None, Some(9));
    let mut v31 = vec![0x10, 0];
    v31.extend_from_slice(&[0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3, 0x02, 0, 60, 0, 4, b'v', b'3', b'1', b'c']);
    v31[1] = (v31.len() - 2) as u8;
    add("MQTT 3.1 CONNECT", v31, false, Some(1), None);
    let creds = identity();
    add("second CONNECT", [connect(&creds), connect(&creds)].concat(), false, None, None);
    let mut forged = Publish::new(events("sender"), QoS::AtLeastOnce, "msg-999999-forged");
    forged.pkid = 7;
    add(
        "PUBLISH to another identity's topic",
        [connect(&identity()), encode(|o| forged.write(o))].concat(),
        false,
        None,
        Some(4),
    );
    // A well-formed SAS token signed with the wrong key.
    let mut wrong = identity();
    let module = wrong.0.rsplit('/').next().expect("module").to_string();
    let resource = format!("{HUB}/devices/{DEVICE}/modules/{module}");
    wrong.2 = tinyedge_platform::sas::generate(&resource, &[7; 32], unix_now() + 3600);
    add("CONNECT with a wrong signature", connect(&wrong), false, Some(5), None);
    cases
}

/// What one bad socket saw: its local port (the hub's name for the peer), the bytes the hub
/// answered, and whether the hub closed it.
struct Outcome {
    port: u16,
    answer: Vec<u8>,
    closed_by_hub: bool,
}

fn send_plain(port: u16, case: &BadInput) -> Outcome {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let local = s.local_addr().expect("addr").port();
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let _ = s.write_all(&case.bytes);
    if case.we_close {
        return Outcome { port: local, answer: Vec::new(), closed_by_hub: false };
    }
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => return Outcome { port: local, answer, closed_by_hub: true },
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Outcome { port: local, answer, closed_by_hub: false }
            }
            Err(_) => return Outcome { port: local, answer, closed_by_hub: true },
        }
    }
}

fn send_tls(port: u16, case: &BadInput) -> Outcome {
    let local = free_port();
    let mut child = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}"), "-bind", &format!("127.0.0.1:{local}")])
        .args(["-servername", "localhost", "-quiet", "-verify_quiet"])
        .args(if case.we_close { &["-no_ign_eof"][..] } else { &[][..] })
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl s_client");
    let mut stdin = child.stdin.take().expect("stdin");
    let _ = stdin.write_all(&case.bytes);
    drop(stdin);
    let mut stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut answer = Vec::new();
        let _ = stdout.read_to_end(&mut answer);
        answer
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut exited = false;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            exited = true;
            break;
        }
        sleep_ms(50);
    }
    let _ = child.kill();
    let _ = child.wait();
    let answer = reader.join().unwrap_or_default();
    Outcome { port: local, answer, closed_by_hub: exited && !case.we_close }
}

fn names_peer(line: &str, port: u16) -> bool {
    let peer = format!("127.0.0.1:{port}");
    line.match_indices(&peer).any(|(i, _)| !line[i + peer.len()..].starts_with(|c: char| c.is_ascii_digit()))
}

/// A live sender → receiver round trip every 100 ms until `stop`; returns (round trips, failures).
fn live_client(port: u16, stop: Arc<AtomicBool>) -> (usize, Vec<String>) {
    let mut sender = try_connect(port, &module_credentials("sender", 3600), true).expect("sender connects");
    let mut receiver = try_connect(port, &module_credentials("receiver", 3600), true).expect("receiver connects");
    let mut got = Got::new();
    assert!(subscribe_inputs(&mut receiver, "receiver", &mut got), "receiver subscribes");
    let _ = receiver.stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut failures = Vec::new();
    let mut k = 0;
    while !stop.load(Ordering::Relaxed) && failures.is_empty() {
        let mut acked = 0;
        let start = k;
        if !stream(&mut sender, &events("sender"), &mut k, 0, 1, &|n| n < start + 1, &mut |_| acked += 1) || acked != 1
        {
            failures.push(format!("live publisher: msg {start} not acknowledged"));
            break;
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !got.iter().any(|g| g.0 == start) && Instant::now() < deadline {
            match next_packet(&mut receiver) {
                Next::Packet(p) => {
                    on_packet(&mut receiver, p, &mut got);
                }
                Next::Idle => {}
                Next::Closed => break,
            }
        }
        if let Some(other) = got.iter().find(|g| g.0 > start) {
            failures.push(format!("live receiver got msg {} (not sent by the live publisher)", other.0));
        } else if !got.iter().any(|g| g.0 == start) {
            failures.push(format!("live receiver: msg {start} not delivered within 5 s"));
        }
        sleep_ms(100);
    }
    (k, failures)
}

#[test]
fn malformed_packets_of_every_kind_plain_and_tls_leave_a_live_client_unaffected() {
    require_tool("openssl");
    let mut rng = Rng::new("malformed");
    let bad: Vec<String> = (0..24).map(|i| format!("bad{i}")).collect();
    let mut modules = vec!["sender", "receiver"];
    modules.extend(bad.iter().map(String::as_str));
    let receiver_route = input_route("receiver");
    let mut rt = Runtime::start(&deployment(&modules, &[("receiver", &receiver_route)]), "");
    let stop = Arc::new(AtomicBool::new(false));
    let live = {
        let (port, stop) = (rt.mqtt_port, stop.clone());
        std::thread::spawn(move || live_client(port, stop))
    };
    let mut ids = bad.iter();
    let mut identity = || module_credentials(ids.next().expect("enough identities"), 3600);
    let plain = bad_inputs(&mut rng, &mut identity);
    let tls = bad_inputs(&mut rng, &mut identity);
    let (port, tls_port) = (rt.mqtt_port, rt.mqtts_port);
    let runs: Vec<_> = plain
        .into_iter()
        .map(|c| ("plain", c))
        .chain(tls.into_iter().map(|c| ("tls", c)))
        .map(|(transport, case)| {
            std::thread::spawn(move || {
                let outcome = if transport == "plain" { send_plain(port, &case) } else { send_tls(tls_port, &case) };
                (transport, case, outcome)
            })
        })
        .collect();
    let results: Vec<_> = runs.into_iter().map(|r| r.join().expect("case")).collect();
    sleep_ms(1000);
    stop.store(true, Ordering::Relaxed);
    let (round_trips, live_failures) = live.join().expect("live client");

    let log = rt.log();
    let mut failures = live_failures;
    let mut unnamed = Vec::new();
    for (transport, case, outcome) in &results {
        let what = format!("{transport} {:?} (peer port {})", case.name, outcome.port);
        let packets: Vec<Packet> = {
            let mut buf = BytesMut::from(&outcome.answer[..]);
            std::iter::from_fn(|| v4::read(&mut buf, 1 << 20).ok()).collect()
        };
        if !case.we_close && !outcome.closed_by_hub {
            failures.push(format!("{what}: the hub did not close the connection within 30 s"));
        }
        if let Some(code) = case.connack {
            match outcome.answer.get(..4) {
                Some([0x20, 2, _, c]) if *c == code => {}
                other => failures.push(format!("{what}: expected CONNACK code {code}, got {other:?}")),
            }
        }
        if let Some(kind) = case.never {
            if packets.iter().any(|p| packet_type(p) == kind) {
                failures.push(format!("{what}: the hub answered with a packet of type {kind}: {packets:?}"));
            }
        }
        let connacks = packets.iter().filter(|p| matches!(p, Packet::ConnAck(_))).count();
        if connacks > 1 {
            failures.push(format!("{what}: {connacks} CONNACKs"));
        }
        let lines: Vec<&str> =
            log.lines().filter(|l| names_peer(l, outcome.port) && !l.contains(" connected (clean session")).collect();
        eprintln!(
            "malformed: {what}: {} bytes answered, closed by the hub {}: {:?}",
            outcome.answer.len(),
            outcome.closed_by_hub,
            lines.first().map(|l| l.chars().take(200).collect::<String>())
        );
        if lines.is_empty() {
            unnamed.push(what.clone());
        }
        if case.name == "MQTT 3.1 CONNECT" && lines.iter().any(|l| l.contains("MQTT 5")) {
            failures.push(format!("{what}: refused as MQTT 5: {lines:?}"));
        }
    }
    let suppressed: usize = log
        .lines()
        .filter_map(|l| l.split(" (").last()?.strip_suffix(" more since the last such line)")?.parse::<usize>().ok())
        .sum();
    if unnamed.len() > suppressed {
        failures.push(format!(
            "no log line naming the peer (and {suppressed} lines reported suppressed): {}",
            unnamed.join("; ")
        ));
    }
    eprintln!("malformed: {} bad sockets, live round trips meanwhile: {round_trips}", results.len());
    assert!(round_trips > 5, "the live client made only {round_trips} round trips");
    assert!(matches!(rt.child.try_wait(), Ok(None)), "tinyedge exited; log:\n{log}");
    assert!(
        !log.contains("sig="),
        "a SAS signature is in the log:\n{}",
        log.lines().filter(|l| l.contains("sig=")).collect::<Vec<_>>().join("\n")
    );
    assert!(failures.is_empty(), "{}\nlog tail:\n{}", failures.join("\n"), tail(&log, 60));
}

fn packet_type(p: &Packet) -> u8 {
    match p {
        Packet::Connect(_) => 1,
        Packet::ConnAck(_) => 2,
        Packet::Publish(_) => 3,
        Packet::PubAck(_) => 4,
        Packet::PubRec(_) => 5,
        Packet::PubRel(_) => 6,
        Packet::PubComp(_) => 7,
        Packet::Subscribe(_) => 8,
        Packet::SubAck(_) => 9,
        Packet::Unsubscribe(_) => 10,
        Packet::UnsubAck(_) => 11,
        Packet::PingReq => 12,
        Packet::PingResp => 13,
        Packet::Disconnect => 14,
    }
}
