//! IoT Hub's MQTT dialect as IoT Hub accepts it, with raw MQTT clients (the mqttbytes codec, a
//! third-party one): a telemetry topic with a trailing '/' after the bag is routed; the
//! subscription filters edgeHub recognises are granted for the client's own identity and others
//! refused; twin requests are answered at once; bad and unserved `$iothub` requests get an
//! error response on the response topic, never silence.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use mqttbytes::v4::{Packet, PubAck, Publish, Subscribe, SubscribeFilter};
use mqttbytes::QoS;
use serde_json::Value;

fn runtime() -> Runtime {
    let route = r#"FROM /messages/modules/a/outputs/o1 INTO BrokeredEndpoint("/modules/b/inputs/in")"#;
    Runtime::start(&deployment(&["a", "b"], &[("ab", route)]), "")
}

fn publish(raw: &mut Raw, topic: &str, payload: &[u8], pkid: u16) {
    let mut publish = Publish::new(topic, QoS::AtLeastOnce, payload.to_vec());
    publish.pkid = pkid;
    raw.send(|out| publish.write(out).map(|_| ()));
}

/// The next PUBLISH, acknowledging it if it is QoS 1; skips PUBACKs.
fn next_publish(raw: &mut Raw) -> Option<Publish> {
    loop {
        match raw.next()? {
            Packet::Publish(p) => {
                if p.qos == QoS::AtLeastOnce {
                    raw.send(|out| PubAck::new(p.pkid).write(out).map(|_| ()));
                }
                return Some(p);
            }
            Packet::PubAck(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// The answer on `$iothub/twin/res/{status}/?$rid={rid}…`: (status, topic, body).
fn twin_answer(raw: &mut Raw) -> (u16, String, Bytes) {
    let p = next_publish(raw).expect("an answer on $iothub/twin/res");
    let rest = p.topic.strip_prefix("$iothub/twin/res/").unwrap_or_else(|| panic!("not a twin answer: {}", p.topic));
    let status = rest.split('/').next().and_then(|s| s.parse().ok()).expect("status");
    (status, p.topic.clone(), p.payload)
}

#[test]
fn a_trailing_slash_after_the_property_bag_is_routed() {
    let rt = runtime();
    let mut b = Raw::connect(rt.mqtt_port, &module_credentials("b", 3600), 60, true, None);
    b.subscribe(&format!("devices/{DEVICE}/modules/b/inputs/#"), QoS::AtLeastOnce);
    let mut a = Raw::connect(rt.mqtt_port, &module_credentials("a", 3600), 60, true, None);
    publish(&mut a, &format!("devices/{DEVICE}/modules/a/messages/events/%24.on=o1&k=v/"), b"slash", 1);
    assert!(matches!(a.next(), Some(Packet::PubAck(_))), "PUBACK\n{}", rt.log());
    let delivered = next_publish(&mut b).expect("delivered");
    assert_eq!(&delivered.payload[..], b"slash");
    assert!(delivered.topic.starts_with(&format!("devices/{DEVICE}/modules/b/inputs/in/")), "{}", delivered.topic);
    assert!(delivered.topic.contains("k=v"), "{}", delivered.topic);
}

#[test]
fn edgehub_subscription_forms_are_granted_and_others_refused() {
    let rt = runtime();
    let mut b = Raw::connect(rt.mqtt_port, &module_credentials("b", 3600), 60, true, None);
    let filters = [
        (format!("devices/{DEVICE}/modules/b/inputs/#"), true),
        (format!("devices/{DEVICE}/modules/b/#"), true),
        ("$iothub/twin/res/#".to_string(), true),
        ("$iothub/twin/PATCH/properties/desired/#".to_string(), true),
        ("$iothub/methods/POST/#".to_string(), true),
        ("$iothub/#".to_string(), false),
        (format!("devices/{DEVICE}/modules/a/#"), false),
        ("#".to_string(), false),
    ];
    let mut subscribe =
        Subscribe::new_many(filters.iter().map(|(f, _)| SubscribeFilter::new(f.clone(), QoS::AtLeastOnce)));
    subscribe.pkid = 7;
    b.send(|out| subscribe.write(out).map(|_| ()));
    let Some(Packet::SubAck(ack)) = b.next() else { panic!("no SUBACK\n{}", rt.log()) };
    let granted: Vec<bool> =
        ack.return_codes.iter().map(|code| !matches!(code, mqttbytes::v4::SubscribeReasonCode::Failure)).collect();
    let expected: Vec<bool> = filters.iter().map(|(_, ok)| *ok).collect();
    assert_eq!(granted, expected, "{:?}", ack.return_codes);
}

#[test]
fn twin_requests_are_answered_and_bad_or_unserved_ones_get_an_error_response() {
    let rt = runtime();
    let mut a = Raw::connect(rt.mqtt_port, &module_credentials("a", 3600), 60, true, None);
    a.subscribe("$iothub/twin/res/#", QoS::AtMostOnce);
    a.stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");

    publish(&mut a, "$iothub/twin/GET/?$rid=1", b"", 1);
    let (status, topic, body) = twin_answer(&mut a);
    assert_eq!((status, topic.as_str()), (200, "$iothub/twin/res/200/?$rid=1"));
    let twin: Value = serde_json::from_slice(&body).expect("twin JSON");
    assert!(twin["desired"]["$version"].is_u64() && twin["reported"]["$version"].is_u64(), "{twin}");

    publish(&mut a, "$iothub/twin/PATCH/properties/reported/?$rid=2", br#"{"ok":true}"#, 2);
    let (status, topic, _) = twin_answer(&mut a);
    assert_eq!(status, 204);
    assert!(topic.starts_with("$iothub/twin/res/204/?$rid=2&$version="), "{topic}");

    let oversized = format!(r#"{{"big":"{}"}}"#, "x".repeat(40 * 1024));
    for (topic, body, status, rid) in [
        ("$iothub/twin/PATCH/properties/reported/?$rid=3", &b"{not json"[..], 400, "3"),
        ("$iothub/twin/PATCH/properties/reported/?$rid=4", oversized.as_bytes(), 400, "4"),
        ("$iothub/twin/PATCH/properties/reported/?$rid=5", &br#"{"bad.key":1}"#[..], 400, "5"),
        ("$iothub/twin/PATCH/properties/desired/?$rid=6", &b"{}"[..], 404, "6"),
        ("$iothub/nonsense/?$rid=7", &b""[..], 404, "7"),
        ("$iothub/twin/GET/?$rid=", &b""[..], 400, ""),
    ] {
        publish(&mut a, topic, body, 10);
        let (got, answer_topic, answer) = twin_answer(&mut a);
        assert_eq!(got, status, "{topic}: {answer_topic}");
        assert_eq!(answer_topic, format!("$iothub/twin/res/{status}/?$rid={rid}"), "{topic}");
        let message: Value = serde_json::from_slice(&answer).expect("error body JSON");
        assert!(message["message"].as_str().is_some_and(|m| !m.is_empty()), "{topic}: {message}");
    }
    // The connection survived all of it, and the twin is unchanged by the refused patches.
    publish(&mut a, "$iothub/twin/GET/?$rid=8", b"", 11);
    let (status, _, body) = twin_answer(&mut a);
    let twin: Value = serde_json::from_slice(&body).expect("twin JSON");
    assert_eq!((status, twin["reported"]["ok"].clone()), (200, Value::Bool(true)), "{twin}");
    assert!(twin["reported"].get("big").is_none() && twin["reported"].get("bad.key").is_none(), "{twin}");
    assert!(!rt.log().contains("sig="), "a SAS signature reached the log");
}
