//! Connections bounded before authentication: sockets count toward `max_connections` from
//! accept, at most `max_unauthenticated` of them may be waiting for their CONNECT, the extra
//! ones are closed at once, and a socket without a complete CONNECT (or TLS handshake) is
//! closed after `connect_timeout_secs`. Raw std sockets, and the mqttbytes codec for clients.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use mqttbytes::v4::{Connect, Packet, Publish};
use mqttbytes::QoS;

fn ab_runtime(extra_hub_config: &str) -> Runtime {
    Runtime::start(
        &deployment(
            &["a", "b"],
            &[("ab", r#"FROM /messages/modules/a/* INTO BrokeredEndpoint("/modules/b/inputs/in")"#)],
        ),
        extra_hub_config,
    )
}

fn a_events() -> String {
    format!("devices/{DEVICE}/modules/a/messages/events/")
}

fn b_inputs() -> String {
    format!("devices/{DEVICE}/modules/b/inputs/#")
}

/// A socket that says nothing.
fn idle_socket(port: u16) -> TcpStream {
    TcpStream::connect(("127.0.0.1", port)).expect("connect")
}

/// Whether the server closes `stream` (end of stream or reset) within `within`.
fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut sink = [0u8; 256];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        stream.set_read_timeout(Some(left)).expect("timeout");
        match stream.read(&mut sink) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return false,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return true,
        }
    }
}

/// Whether `stream` is still open: nothing to read and no end of stream for a short while.
fn still_open(stream: &mut TcpStream) -> bool {
    !closed_within(stream, Duration::from_millis(300))
}

/// One QoS 1 message from `a` to `b`: acknowledged to `a`, delivered to `b`.
fn a_reaches_b(a: &mut Raw, b: &mut Raw, pkid: u16, payload: &str) {
    let mut publish = Publish::new(a_events(), QoS::AtLeastOnce, payload.as_bytes().to_vec());
    publish.pkid = pkid;
    a.send(|out| publish.write(out).map(|_| ()));
    match a.next() {
        Some(Packet::PubAck(ack)) => assert_eq!(ack.pkid, pkid),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    match b.next() {
        Some(Packet::Publish(p)) => {
            assert_eq!(&p.payload[..], payload.as_bytes());
            b.send(|out| mqttbytes::v4::PubAck::new(p.pkid).write(out).map(|_| ()));
        }
        other => panic!("expected a delivery, got {other:?}"),
    }
}

/// Retries `mosquitto_pub` for a while: the hub frees a slot once it has seen a socket close.
fn publish_eventually(rt: &Runtime, creds: &(String, String, String), topic: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if mosquitto_pub(rt.mqtt_port, creds, topic, "after", &["-q", "1"]).status.success() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

#[test]
fn sockets_waiting_for_connect_are_capped_and_the_extra_ones_closed_at_once() {
    let rt = ab_runtime("max_unauthenticated = 4\nconnect_timeout_secs = 60");
    let mut b = Raw::connect(rt.mqtt_port, &module_credentials("b", 3600), 60, true, None);
    b.subscribe(&b_inputs(), QoS::AtLeastOnce);
    let mut a = Raw::connect(rt.mqtt_port, &module_credentials("a", 3600), 60, true, None);

    // Four silent sockets take every slot before CONNECT.
    let mut idle: Vec<TcpStream> = (0..4).map(|_| idle_socket(rt.mqtt_port)).collect();
    let status = rt.wait_status("hub.connections_unauthenticated 4", Duration::from_secs(10));
    assert!(status.lines().any(|l| l == "hub.connections_unauthenticated 4"), "{status}\n{}", rt.log());
    // More are accepted and closed at once, well before the 60 s connect timeout.
    for _ in 0..6 {
        let mut extra = idle_socket(rt.mqtt_port);
        assert!(closed_within(&mut extra, Duration::from_secs(10)), "an extra socket stayed open");
    }
    for socket in &mut idle {
        assert!(still_open(socket), "a socket within the cap was closed");
    }
    // The clients connected before keep working meanwhile.
    a_reaches_b(&mut a, &mut b, 1, "during the flood");
    assert!(rt.wait_log("closed at accept: 4 sockets before CONNECT already, the limit (hub.max_unauthenticated)"));
    let status = rt.wait_status("hub.connections_refused_limit 6", Duration::from_secs(10));
    assert!(status.lines().any(|l| l == "hub.connections_refused_limit 6"), "{status}");
    // The line is rate-limited: one for the six refusals.
    assert_eq!(rt.log().matches("closed at accept").count(), 1, "{}", rt.log());

    // Once the silent sockets are gone a new client connects.
    drop(idle);
    let leaf_events = format!("devices/{LEAF}/messages/events/");
    assert!(publish_eventually(&rt, &leaf_credentials(), &leaf_events), "{}", rt.log());
    a_reaches_b(&mut a, &mut b, 2, "after the flood");
}

#[test]
fn sockets_count_toward_max_connections_from_accept() {
    let rt = ab_runtime("max_connections = 3\nconnect_timeout_secs = 60");
    let mut b = Raw::connect(rt.mqtt_port, &module_credentials("b", 3600), 60, true, None);
    b.subscribe(&b_inputs(), QoS::AtLeastOnce);
    // One authenticated connection and two silent sockets: three, the limit.
    let mut idle: Vec<TcpStream> = (0..2).map(|_| idle_socket(rt.mqtt_port)).collect();
    let status = rt.wait_status("hub.connections_open 3", Duration::from_secs(10));
    assert!(status.lines().any(|l| l == "hub.connections_open 3"), "{status}\n{}", rt.log());
    let mut extra = idle_socket(rt.mqtt_port);
    assert!(closed_within(&mut extra, Duration::from_secs(10)), "a fourth socket stayed open");
    assert!(rt.wait_log("closed at accept: 3 sockets open already, the limit (hub.max_connections)"), "{}", rt.log());
    for socket in &mut idle {
        assert!(still_open(socket));
    }
    // A slot freed by a silent socket going away is usable by a client.
    drop(idle.pop());
    let mut a = {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut connect = Connect::new(format!("{DEVICE}/a"));
            let creds = module_credentials("a", 3600);
            connect.set_login(creds.1, creds.2);
            let mut out = bytes::BytesMut::new();
            connect.write(&mut out).expect("encode");
            let mut raw = Raw { stream: idle_socket(rt.mqtt_port), buf: bytes::BytesMut::new() };
            raw.stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
            let _ = raw.stream.write_all(&out);
            if matches!(raw.next(), Some(Packet::ConnAck(_))) {
                break raw;
            }
            assert!(Instant::now() < deadline, "no slot came free\n{}", rt.log());
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    a_reaches_b(&mut a, &mut b, 1, "in the freed slot");
}

#[test]
fn sockets_without_a_complete_connect_are_closed_after_connect_timeout() {
    let rt = ab_runtime("connect_timeout_secs = 1");
    let mut b = Raw::connect(rt.mqtt_port, &module_credentials("b", 3600), 60, true, None);
    b.subscribe(&b_inputs(), QoS::AtLeastOnce);
    let started = Instant::now();
    let mut silent = idle_socket(rt.mqtt_port);
    // TLS: the handshake is never started, and the same deadline applies.
    let mut silent_tls = idle_socket(rt.mqtts_port);
    // A valid CONNECT, one byte at a time, slower than the deadline: the deadline is counted
    // from accept, not from the last byte.
    let mut connect = Connect::new(format!("{DEVICE}/a"));
    let creds = module_credentials("a", 3600);
    connect.set_login(creds.1, creds.2);
    let mut out = bytes::BytesMut::new();
    connect.write(&mut out).expect("encode");
    let mut dribbler = idle_socket(rt.mqtt_port);
    let mut sent = 0;
    while sent < out.len() && dribbler.write_all(&out[sent..sent + 1]).is_ok() {
        sent += 1;
        std::thread::sleep(Duration::from_millis(200));
        if Instant::now() > started + Duration::from_secs(10) {
            break;
        }
    }
    assert!(sent < out.len(), "the hub waited for a CONNECT dribbled over {sent} bytes");
    assert!(closed_within(&mut dribbler, Duration::from_secs(10)));
    assert!(closed_within(&mut silent, Duration::from_secs(10)), "a silent socket stayed open");
    assert!(closed_within(&mut silent_tls, Duration::from_secs(10)), "a silent TLS socket stayed open");
    assert!(rt.wait_log("no complete CONNECT within 1 s"), "{}", rt.log());
    assert!(rt.wait_log("TLS handshake not done within 1 s"), "{}", rt.log());
    let status = rt.wait_status("hub.connect_timeouts 3", Duration::from_secs(10));
    assert!(status.lines().any(|l| l == "hub.connect_timeouts 3"), "{status}");
    assert!(status.lines().any(|l| l == "hub.connections_unauthenticated 0"), "{status}");
    // The authenticated client was not touched by the deadline.
    let mut a = Raw::connect(rt.mqtt_port, &module_credentials("a", 3600), 60, true, None);
    a_reaches_b(&mut a, &mut b, 1, "still here");
}
