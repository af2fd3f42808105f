//! MQTT 3.1.1 session behaviour: will messages, keep-alive, QoS 1 redelivery with DUP,
//! QoS 2 refusal. Raw clients use the mqttbytes codec (a third-party codec) over std sockets.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use mqttbytes::v4::{self, LastWill, Packet, PubAck, Publish};
use mqttbytes::QoS;

fn ab_runtime() -> Runtime {
    Runtime::start(
        &deployment(
            &["a", "b"],
            &[("ab", r#"FROM /messages/modules/a/* INTO BrokeredEndpoint("/modules/b/inputs/in")"#)],
        ),
        "",
    )
}

fn a_events() -> String {
    format!("devices/{DEVICE}/modules/a/messages/events/")
}

#[test]
fn will_message_is_routed_when_a_client_vanishes() {
    let rt = ab_runtime();
    let sub = Sub::start(
        rt.mqtt_port,
        &module_credentials("b", 3600),
        &format!("devices/{DEVICE}/modules/b/inputs/#"),
        1,
        15,
        &[],
    );
    settle();
    let will = LastWill::new(a_events() + "kind=will", "a went away", QoS::AtLeastOnce, false);
    let raw = Raw::connect(rt.mqtt_port, &module_credentials("a", 3600), 60, true, Some(will));
    // Vanish without DISCONNECT.
    drop(raw);
    let (ok, lines, err) = sub.finish();
    assert!(ok, "{err}\n{}", rt.log());
    assert_eq!(lines.len(), 1);
    assert!(lines[0].contains("kind=will") && lines[0].ends_with(" a went away"), "{lines:?}");
}

#[test]
fn graceful_disconnect_does_not_send_the_will() {
    let rt = ab_runtime();
    let sub = Sub::start(
        rt.mqtt_port,
        &module_credentials("b", 3600),
        &format!("devices/{DEVICE}/modules/b/inputs/#"),
        1,
        3,
        &[],
    );
    settle();
    let will = LastWill::new(a_events(), "should not appear", QoS::AtMostOnce, false);
    let mut raw = Raw::connect(rt.mqtt_port, &module_credentials("a", 3600), 60, true, Some(will));
    raw.send(|out| v4::Disconnect.write(out).map(|_| ()));
    assert!(raw.next().is_none(), "hub closes after DISCONNECT");
    let (_, lines, _) = sub.finish();
    assert!(lines.is_empty(), "{lines:?}");
}

#[test]
fn silent_client_is_disconnected_after_one_and_a_half_keep_alives() {
    let rt = ab_runtime();
    let mut raw = Raw::connect(rt.mqtt_port, &module_credentials("a", 3600), 1, true, None);
    // Say nothing: the hub must close the connection (1.5 s), well before the 10 s read timeout.
    assert!(raw.next().is_none());
    assert!(rt.wait_log("keep-alive expired"), "{}", rt.log());
}

#[test]
fn ping_keeps_a_client_connected() {
    let rt = ab_runtime();
    let mut raw = Raw::connect(rt.mqtt_port, &module_credentials("a", 3600), 2, true, None);
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(1000));
        raw.send(|out| v4::PingReq.write(out).map(|_| ()));
        assert!(matches!(raw.next(), Some(Packet::PingResp)));
    }
}

#[test]
fn unacknowledged_qos1_delivery_is_sent_again_with_dup_after_reconnect() {
    let rt = ab_runtime();
    let creds = module_credentials("b", 3600);
    let mut b = Raw::connect(rt.mqtt_port, &creds, 60, false, None);
    b.subscribe(&format!("devices/{DEVICE}/modules/b/inputs/#"), QoS::AtLeastOnce);
    let out = mosquitto_pub(rt.mqtt_port, &module_credentials("a", 3600), &a_events(), "exactly this", &["-q", "1"]);
    assert!(out.status.success());
    let Some(Packet::Publish(first)) = b.next() else { panic!("no delivery") };
    assert_eq!((first.qos, first.dup, &first.payload[..]), (QoS::AtLeastOnce, false, &b"exactly this"[..]));
    drop(b); // no PUBACK
    let mut b = Raw::connect(rt.mqtt_port, &creds, 60, false, None);
    // Persistent session: the subscription survives; the delivery comes again, marked DUP.
    let Some(Packet::Publish(again)) = b.next() else { panic!("no redelivery\n{}", rt.log()) };
    assert_eq!((again.dup, &again.payload[..]), (true, &b"exactly this"[..]));
    b.send(|out| PubAck::new(again.pkid).write(out).map(|_| ()));
}

#[test]
fn a_persistent_session_subscribing_again_gets_each_message_once() {
    let rt = ab_runtime();
    let creds = module_credentials("b", 3600);
    let inputs = format!("devices/{DEVICE}/modules/b/inputs/#");
    let mut b = Raw::connect(rt.mqtt_port, &creds, 60, false, None);
    b.subscribe(&inputs, QoS::AtLeastOnce);
    b.send(|out| v4::Disconnect.write(out).map(|_| ()));
    drop(b);
    let sender = module_credentials("a", 3600);
    for n in 0..40 {
        let out = mosquitto_pub(rt.mqtt_port, &sender, &a_events(), &format!("m{n}"), &["-q", "1"]);
        assert!(out.status.success());
    }
    // As the Azure SDKs do: reconnect with clean session false, then subscribe again.
    let mut b = Raw::connect(rt.mqtt_port, &creds, 60, false, None);
    let mut subscribe = mqttbytes::v4::Subscribe::new(&inputs, QoS::AtLeastOnce);
    subscribe.pkid = 1;
    b.send(|out| subscribe.write(out).map(|_| ()));
    b.stream.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
    let mut payloads = Vec::new();
    while let Some(packet) = b.next() {
        if let Packet::Publish(p) = packet {
            b.send(|out| PubAck::new(p.pkid).write(out).map(|_| ()));
            payloads.push(String::from_utf8_lossy(&p.payload).into_owned());
        }
    }
    let expected: Vec<String> = (0..40).map(|n| format!("m{n}")).collect();
    assert_eq!(payloads, expected, "every message once, in order\n{}", rt.log());
}

#[test]
fn qos2_publish_closes_the_connection() {
    let rt = ab_runtime();
    let mut a = Raw::connect(rt.mqtt_port, &module_credentials("a", 3600), 60, true, None);
    let mut p = Publish::new(a_events(), QoS::ExactlyOnce, "x");
    p.pkid = 1;
    a.send(|out| p.write(out).map(|_| ()));
    assert!(a.next().is_none());
    assert!(rt.wait_log("QoS 2 is not supported"), "{}", rt.log());
}

#[test]
fn mqtt5_connect_is_refused_with_unacceptable_protocol() {
    let rt = ab_runtime();
    require_tool("mosquitto_pub");
    let (id, user, pass) = module_credentials("a", 3600);
    let out = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &rt.mqtt_port.to_string(),
            "-V",
            "mqttv5",
            "-i",
            &id,
            "-u",
            &user,
            "-P",
            &pass,
            "-t",
            &a_events(),
            "-m",
            "x",
        ])
        .stderr(Stdio::piped())
        .output()
        .expect("mosquitto_pub");
    assert!(!out.status.success());
    assert!(rt.wait_log("MQTT 5 is not supported"), "{}", rt.log());
}

#[test]
fn a_token_valid_for_centuries_and_a_busy_keep_alive_keep_a_client_connected() {
    let rt = ab_runtime();
    // The latest expiry a token can carry (u64::MAX seconds), past what a clock can hold: the
    // connection's deadline is "never", not an overflow.
    let key = tinyedge_platform::identity::derive_module_key(&DEVICE_KEY, "a");
    let token = tinyedge_platform::sas::generate(&format!("{HUB}/devices/{DEVICE}/modules/a"), &key, u64::MAX);
    let creds = (format!("{DEVICE}/a"), format!("{HUB}/{DEVICE}/a/?api-version=2021-04-12"), token);
    let mut raw = Raw::connect(rt.mqtt_port, &creds, 1, true, None);
    // Traffic for longer than the 1.5 s keep-alive allowance, each message within it: the one
    // timer of the connection is moved on, never fired.
    for pkid in 1..=12u16 {
        std::thread::sleep(Duration::from_millis(250));
        let mut publish = Publish::new(a_events(), QoS::AtLeastOnce, b"beat".to_vec());
        publish.pkid = pkid;
        raw.send(|out| publish.write(out).map(|_| ()));
        assert!(matches!(raw.next(), Some(Packet::PubAck(ack)) if ack.pkid == pkid), "PUBACK {pkid}; {}", rt.log());
    }
    // Silence: the same timer fires 1.5 s after the last packet.
    assert!(raw.next().is_none());
    assert!(rt.wait_log("keep-alive expired"), "{}", rt.log());
    assert!(!rt.log().contains("panicked"), "{}", rt.log());
}
