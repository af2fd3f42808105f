//! Bad input from the network: every kind is refused at once, logged once with the peer, and
//! never with a credential; clients connected meanwhile keep being served. Raw std sockets and
//! the mqttbytes codec (a third-party codec) for the good packets.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::*;
use mqttbytes::v4::{Connect, Packet, PingReq, PubAck, Publish};
use mqttbytes::QoS;

fn ab_deployment() -> String {
    deployment(&["a", "b"], &[("ab", r#"FROM /messages/modules/a/* INTO BrokeredEndpoint("/modules/b/inputs/in")"#)])
}

/// A connect timeout far beyond every wait below: whatever closes a socket in these tests is
/// the refusal itself, not the deadline.
const HUB: &str = "connect_timeout_secs = 120";

fn a_events() -> String {
    format!("devices/{DEVICE}/modules/a/messages/events/")
}

fn socket(port: u16) -> TcpStream {
    TcpStream::connect(("127.0.0.1", port)).expect("connect")
}

/// The peer as the hub's log names it.
fn peer(stream: &TcpStream) -> String {
    stream.local_addr().expect("local address").to_string()
}

/// Whether the server closes `stream` (end of stream or reset) within `within`; what it sent
/// before is appended to `received`.
fn closed_within(stream: &mut TcpStream, within: Duration, received: &mut Vec<u8>) -> bool {
    let deadline = Instant::now() + within;
    let mut chunk = [0u8; 256];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        stream.set_read_timeout(Some(left)).expect("timeout");
        match stream.read(&mut chunk) {
            Ok(0) => return true,
            Ok(n) => received.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return false,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return true,
        }
    }
}

fn connect_bytes(creds: &(String, String, String)) -> BytesMut {
    let mut connect = Connect::new(creds.0.clone());
    connect.set_login(creds.1.clone(), creds.2.clone());
    let mut out = BytesMut::new();
    connect.write(&mut out).expect("encode");
    out
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
            b.send(|out| PubAck::new(p.pkid).write(out).map(|_| ()));
        }
        other => panic!("expected a delivery, got {other:?}"),
    }
}

/// 4 KiB from a deterministic xorshift stream.
fn random_bytes(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

#[test]
fn each_kind_of_bad_input_is_refused_and_logged_once_while_a_live_client_keeps_working() {
    let rt = Runtime::start(&ab_deployment(), HUB);
    let mut b = Raw::connect(rt.mqtt_port, &module_credentials("b", 3600), 60, true, None);
    b.subscribe(&format!("devices/{DEVICE}/modules/b/inputs/#"), QoS::AtLeastOnce);
    let mut a = Raw::connect(rt.mqtt_port, &module_credentials("a", 3600), 60, true, None);
    a_reaches_b(&mut a, &mut b, 1, "before");
    let mut received = Vec::new();

    // MQTT 3.1 (protocol "MQIsdp", level 3): CONNACK 1, unacceptable protocol version.
    let mut v31 = socket(rt.mqtt_port);
    v31.write_all(&[0x10, 0x0F, 0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3, 0x02, 0, 60, 0, 1, b'c'])
        .expect("send MQTT 3.1 CONNECT");
    assert!(closed_within(&mut v31, Duration::from_secs(10), &mut received));
    assert_eq!(received, [0x20, 0x02, 0x00, 0x01], "CONNACK with return code 1");
    assert!(rt.wait_log(&format!(
        "{}: CONNECT refused: MQTT 3.1 (protocol level 3) is not supported; use MQTT 3.1.1",
        peer(&v31)
    )));

    // SUBSCRIBE with flags 0b0000 (MQTT 3.1.1 §2.2.2 requires 0b0010) on an authenticated
    // connection: closed, one line naming the peer and the packet type.
    let mut leaf = Raw::connect(rt.mqtt_port, &leaf_credentials(), 60, true, None);
    let leaf_peer = peer(&leaf.stream);
    let mut subscribe = BytesMut::new();
    mqttbytes::v4::Subscribe::new(format!("devices/{LEAF}/messages/devicebound/#"), QoS::AtLeastOnce)
        .write(&mut subscribe)
        .expect("encode");
    subscribe[0] = 0x80;
    leaf.stream.write_all(&subscribe).expect("send SUBSCRIBE");
    assert!(leaf.next().is_none(), "the connection should be closed");
    let line = format!("{leaf_peer}: {LEAF} connection closed: SUBSCRIBE with fixed-header flags 0b0000");
    assert!(rt.wait_log(&line), "{}", rt.log());
    assert_eq!(rt.log().matches("fixed-header flags").count(), 1, "{}", rt.log());

    // 0x10 and 4 KiB of random bytes: cannot be a CONNECT, closed at once (the connect
    // timeout is 120 s).
    let mut garbage = socket(rt.mqtt_port);
    let mut bytes = vec![0x10];
    bytes.extend(random_bytes(4096));
    let _ = garbage.write_all(&bytes);
    assert!(closed_within(&mut garbage, Duration::from_secs(10), &mut received), "garbage kept open");
    let garbage_peer = format!("{}: ", peer(&garbage));
    assert!(rt.wait_log(&garbage_peer), "{}", rt.log());
    let log = rt.log();
    let line = log.lines().find(|l| l.contains(&garbage_peer)).unwrap_or_default();
    assert!(line.ends_with("; closed before CONNECT"), "{line}");

    // Half a CONNECT, then the client closes: one line saying how far it got.
    let mut truncated = socket(rt.mqtt_port);
    let connect = connect_bytes(&module_credentials("a", 3600));
    let half = connect.len() / 2;
    truncated.write_all(&connect[..half]).expect("send half a CONNECT");
    let truncated_peer = peer(&truncated);
    truncated.shutdown(std::net::Shutdown::Write).expect("shutdown");
    assert!(closed_within(&mut truncated, Duration::from_secs(10), &mut received));
    assert!(
        rt.wait_log(&format!("{truncated_peer}: closed after {half} bytes, before a complete CONNECT")),
        "{}",
        rt.log()
    );

    // A second CONNECT on an open connection: closed, logged by type; its SAS token is not.
    let mut again = Raw::connect(rt.mqtt_port, &leaf_credentials(), 60, true, None);
    let again_peer = peer(&again.stream);
    again.stream.write_all(&connect_bytes(&leaf_credentials())).expect("send second CONNECT");
    assert!(again.next().is_none(), "the connection should be closed");
    assert!(rt.wait_log(&format!("{again_peer}: {LEAF} connection closed: unexpected CONNECT packet")), "{}", rt.log());

    // The live clients were never disturbed.
    a_reaches_b(&mut a, &mut b, 2, "after");
    let log = rt.log();
    assert!(!log.contains("sig="), "a SAS token reached the log:\n{log}");
    assert!(!log.contains("SharedAccessSignature"), "a SAS token reached the log:\n{log}");
}

#[test]
fn first_packet_other_than_connect_is_named_by_type_only() {
    let rt = Runtime::start(&ab_deployment(), HUB);
    let mut stream = socket(rt.mqtt_port);
    let mut publish = BytesMut::new();
    Publish::new(a_events(), QoS::AtMostOnce, "secret payload").write(&mut publish).expect("encode");
    stream.write_all(&publish).expect("send PUBLISH");
    assert!(closed_within(&mut stream, Duration::from_secs(10), &mut Vec::new()));
    let line = format!("{}: first packet is PUBLISH, not CONNECT; closed before CONNECT", peer(&stream));
    assert!(rt.wait_log(&line), "{}", rt.log());
    assert!(!rt.log().contains("secret payload"));
}

#[test]
fn oversized_connect_is_refused_on_its_fixed_header() {
    let rt = Runtime::start(&ab_deployment(), HUB);
    let mut stream = socket(rt.mqtt_port);
    // Announces 2 MiB (within max_packet_bytes' range, far beyond a CONNECT), sends nothing more.
    stream.write_all(&[0x10, 0x80, 0x80, 0x80, 0x01]).expect("send header");
    assert!(closed_within(&mut stream, Duration::from_secs(10), &mut Vec::new()), "kept open");
    let line = format!(
        "{}: CONNECT of 2097152 bytes exceeds the limit of 65536 bytes for a CONNECT; closed before CONNECT",
        peer(&stream)
    );
    assert!(rt.wait_log(&line), "{}", rt.log());
}

#[test]
fn qos1_message_the_store_refuses_closes_the_connection_and_qos0_is_dropped() {
    // A 1 MiB store that refuses new messages when full; module b never reads, so a's
    // messages fill it.
    let rt = Runtime::start_with(
        &ab_deployment(),
        HUB,
        "[agent]\nenabled = false\n[store]\nmax_bytes = 1048576\nwhen_full = \"reject_new\"\n",
    );
    let creds = module_credentials("a", 3600);
    let mut a = Raw::connect(rt.mqtt_port, &creds, 60, true, None);
    let payload = vec![b'x'; 32 * 1024];
    let mut refused_at = None;
    for pkid in 1..=200u16 {
        let mut publish = Publish::new(a_events(), QoS::AtLeastOnce, payload.clone());
        publish.pkid = pkid;
        a.send(|out| publish.write(out).map(|_| ()));
        match a.next() {
            Some(Packet::PubAck(ack)) => assert_eq!(ack.pkid, pkid),
            None => {
                refused_at = Some(pkid);
                break;
            }
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
    let refused_at = refused_at.unwrap_or_else(|| panic!("a 1 MiB store took 6 MiB\n{}", rt.log()));
    assert!(refused_at > 1, "{}", rt.log());
    assert!(
        rt.wait_log("not accepted: the store is at max_bytes (when_full = \"reject_new\"); connection closed so the client sends it again"),
        "{}",
        rt.log()
    );
    // A QoS 0 message the store cannot take is dropped; the connection stays.
    let mut a = Raw::connect(rt.mqtt_port, &creds, 60, true, None);
    a.send(|out| Publish::new(a_events(), QoS::AtMostOnce, payload.clone()).write(out).map(|_| ()));
    a.send(|out| PingReq.write(out).map(|_| ()));
    assert!(matches!(a.next(), Some(Packet::PingResp)), "{}", rt.log());
    let status = rt.wait_status("hub.store_refused_disconnects 1", Duration::from_secs(10));
    assert!(status.lines().any(|l| l == "hub.store_refused_disconnects 1"), "{status}");
    assert!(status.lines().any(|l| l == "hub.store_rejected 2"), "{status}");
}
