//! Arbitrary bytes as a client's stream: framing, then what the hub does with each packet's
//! outside-controlled fields (topics, property bags, credentials).
#![no_main]

use bytes::BytesMut;
use tinyedge_hub::auth::{parse_username, Identity};
use tinyedge_hub::mqtt::codec::{decode, shortfall};
use tinyedge_hub::message::Properties;
use tinyedge_hub::topic::{classify_publish, classify_subscription, Inbound};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let me = Identity::module("gw", "m1");
    let mut buf = BytesMut::from(data);
    // What the read loop asks for next: never more than the announced packet's rest.
    let rest = shortfall(data);
    assert!(rest <= 1 + 4 + 268_435_455, "shortfall beyond any MQTT packet: {rest}");
    while let Ok(Some(packet)) = decode(&mut buf, 64 * 1024) {
        match packet {
            tinyedge_hub::mqtt::codec::Packet::Publish(p) => {
                if let Ok(Inbound::Telemetry { bag }) = classify_publish(&p.topic, &me) {
                    let _ = Properties::parse(bag);
                }
            }
            tinyedge_hub::mqtt::codec::Packet::Subscribe(s) => {
                for f in &s.filters {
                    let _ = classify_subscription(&f.path, &me);
                }
            }
            tinyedge_hub::mqtt::codec::Packet::Connect(c) => {
                if let Some(login) = &c.login {
                    let _ = parse_username(&login.username);
                    let _ = tinyedge_platform::sas::parse(&login.password);
                }
            }
            _ => {}
        }
    }
});
