//! The hub end to end: the real binary, routes from a deployment, third-party MQTT clients.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;

const FILTER_ROUTE: &str = r#"FROM /messages/modules/sender/outputs/out1 WHERE $body.temperature > 30 AND alert = 'yes' INTO BrokeredEndpoint("/modules/receiver/inputs/hot")"#;

fn two_modules() -> Runtime {
    Runtime::start(&deployment(&["sender", "receiver"], &[("hot", FILTER_ROUTE)]), "")
}

fn events(module: &str, bag: &str) -> String {
    format!("devices/{DEVICE}/modules/{module}/messages/events/{bag}")
}

const JSON_BAG: &str = "%24.ct=application%2Fjson&%24.ce=utf-8&%24.on=out1&%24.mid=m-1";

#[test]
fn output_reaches_input_through_a_route_with_body_and_property_conditions() {
    let rt = two_modules();
    let sub = Sub::start(
        rt.mqtt_port,
        &module_credentials("receiver", 3600),
        &format!("devices/{DEVICE}/modules/receiver/inputs/#"),
        1,
        15,
        &["-q", "1"],
    );
    settle();
    let sender = module_credentials("sender", 3600);
    // Not matching: body too cold; then property missing; then matching.
    for (bag, body) in [
        (format!("{JSON_BAG}&alert=yes"), r#"{"temperature":20}"#),
        (JSON_BAG.to_string(), r#"{"temperature":40}"#),
        (format!("{JSON_BAG}&alert=yes"), r#"{"temperature":35.5}"#),
    ] {
        let out = mosquitto_pub(rt.mqtt_port, &sender, &events("sender", &bag), body, &["-q", "1"]);
        assert!(out.status.success(), "publish failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let (ok, lines, err) = sub.finish();
    assert!(ok, "subscriber failed: {err}\nlog:\n{}", rt.log());
    assert_eq!(lines.len(), 1, "{lines:?}");
    let (topic, payload) = lines[0].split_once(' ').expect("topic and payload");
    assert_eq!(payload, r#"{"temperature":35.5}"#);
    assert!(topic.starts_with(&format!("devices/{DEVICE}/modules/receiver/inputs/hot/")), "{topic}");
    // System and application properties pass through, with the sender stamped by the hub.
    for prop in [
        "%24.ct=application%2Fjson",
        "%24.ce=utf-8",
        "%24.mid=m-1",
        "%24.on=out1",
        "%24.cdid=gw",
        "%24.cmid=sender",
        "alert=yes",
    ] {
        assert!(topic.contains(prop), "{prop} missing in {topic}");
    }
}

#[test]
fn non_matching_message_is_not_delivered() {
    let rt = two_modules();
    let sub = Sub::start(
        rt.mqtt_port,
        &module_credentials("receiver", 3600),
        &format!("devices/{DEVICE}/modules/receiver/inputs/#"),
        1,
        3,
        &[],
    );
    settle();
    let out = mosquitto_pub(
        rt.mqtt_port,
        &module_credentials("sender", 3600),
        &events("sender", JSON_BAG),
        r#"{"temperature":99}"#,
        &["-q", "1"],
    );
    assert!(out.status.success());
    let (_, lines, _) = sub.finish();
    assert!(lines.is_empty(), "unexpected delivery: {lines:?}");
}

#[test]
fn module_cannot_subscribe_to_another_modules_input() {
    let rt = two_modules();
    let sub = Sub::start(
        rt.mqtt_port,
        &module_credentials("sender", 3600),
        &format!("devices/{DEVICE}/modules/receiver/inputs/#"),
        1,
        5,
        &[],
    );
    settle();
    mosquitto_pub(
        rt.mqtt_port,
        &module_credentials("sender", 3600),
        &events("sender", &format!("{JSON_BAG}&alert=yes")),
        r#"{"temperature":50}"#,
        &["-q", "1"],
    );
    let (_, lines, err) = sub.finish();
    assert!(lines.is_empty(), "sender read the receiver's input: {lines:?}");
    assert!(err.contains("denied"), "mosquitto_sub should report the refused subscription: {err}");
    assert!(rt.wait_log("may not subscribe"), "refusal not logged:\n{}", rt.log());
}

#[test]
fn module_cannot_publish_as_another_identity() {
    let rt = two_modules();
    let sub = Sub::start(
        rt.mqtt_port,
        &module_credentials("receiver", 3600),
        &format!("devices/{DEVICE}/modules/receiver/inputs/#"),
        1,
        4,
        &[],
    );
    settle();
    // The sender publishes on the receiver's events topic, pretending to be the receiver.
    let out = mosquitto_pub(
        rt.mqtt_port,
        &module_credentials("sender", 3600),
        &events("receiver", &format!("{JSON_BAG}&alert=yes")),
        r#"{"temperature":50}"#,
        &["-q", "1"],
    );
    assert!(!out.status.success(), "publishing as another module must fail");
    let (_, lines, _) = sub.finish();
    assert!(lines.is_empty(), "{lines:?}");
    assert!(rt.wait_log("may not publish"), "refusal not logged:\n{}", rt.log());
}

fn assert_refused(rt: &Runtime, creds: &(String, String, String), reason: &str) {
    let out = mosquitto_pub(rt.mqtt_port, creds, &events("sender", ""), "x", &[]);
    assert!(!out.status.success(), "connection with {reason} was accepted");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not authori"), "mosquitto_pub should say not authorised: {stderr}");
}

#[test]
fn bad_expired_and_mismatched_credentials_are_refused() {
    let rt = two_modules();
    let (id, user, token) = module_credentials("sender", 3600);
    let mut bad_sig = token.clone();
    // Flip one character of the signature (sig=... sits between "sig=" and "&se=").
    let pos = bad_sig.find("sig=").expect("sig") + 6;
    let flipped = if &bad_sig[pos..pos + 1] == "A" { "B" } else { "A" };
    bad_sig.replace_range(pos..pos + 1, flipped);
    assert_refused(&rt, &(id.clone(), user.clone(), bad_sig), "a bad signature");
    assert_refused(&rt, &module_credentials("sender", -10), "an expired token");
    assert_refused(&rt, &("gw/receiver".to_string(), user.clone(), token.clone()), "a wrong client id");
    assert_refused(&rt, &module_credentials("stranger", 3600), "an unknown module");
    assert!(rt.wait_log("refused"), "{}", rt.log());
    // The good credentials still work.
    let out = mosquitto_pub(rt.mqtt_port, &(id, user, token), &events("sender", ""), "x", &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn raw_connect(port: u16, creds: &(String, String, String)) -> TcpStream {
    let mut connect = mqttbytes::v4::Connect::new(creds.0.clone());
    connect.set_login(creds.1.clone(), creds.2.clone());
    let mut buf = bytes::BytesMut::new();
    connect.write(&mut buf).expect("encode connect");
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    stream.write_all(&buf).expect("send connect");
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack).expect("connack");
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00], "connection refused");
    stream
}

#[test]
fn malformed_packet_drops_only_that_client() {
    let rt = two_modules();
    let sub = Sub::start(
        rt.mqtt_port,
        &module_credentials("receiver", 3600),
        &format!("devices/{DEVICE}/modules/receiver/inputs/#"),
        1,
        15,
        &["-q", "1"],
    );
    settle();
    let mut bad = raw_connect(rt.mqtt_port, &module_credentials("sender", 3600));
    // A SUBSCRIBE with a reserved-flags violation and a length that runs past the body.
    bad.write_all(&[0x82, 0x05, 0x00, 0x01, 0x00, 0x09, b'a']).expect("send garbage");
    let mut rest = Vec::new();
    let closed = bad.read_to_end(&mut rest).is_ok();
    assert!(closed, "the hub should close the malformed client's connection");
    // An oversized packet (announced 1 MiB > 256 KiB) closes that client too.
    let mut big = raw_connect(rt.mqtt_port, &leaf_credentials());
    drop(big.write_all(&[0x30, 0x80, 0x80, 0x40]));
    assert!(big.read_to_end(&mut rest).is_ok());
    assert!(rt.wait_log("exceeds the limit"), "{}", rt.log());
    // Everyone else keeps being served.
    let out = mosquitto_pub(
        rt.mqtt_port,
        &module_credentials("sender", 3600),
        &events("sender", &format!("{JSON_BAG}&alert=yes")),
        r#"{"temperature":31}"#,
        &["-q", "1"],
    );
    assert!(out.status.success());
    let (ok, lines, err) = sub.finish();
    assert!(ok && lines.len() == 1, "{lines:?} {err}\n{}", rt.log());
}
