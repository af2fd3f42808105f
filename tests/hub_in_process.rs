//! The hub in-process, without the binary: a broker with a store and twins in a temp dir, its
//! listeners served on `127.0.0.1:0` through `tinyedge_hub::listeners::serve`, two raw MQTT
//! clients routing one message between modules, then the shutdown closing the listener.

mod common;

use std::net::TcpStream;
use std::sync::Arc;

use common::*;
use mqttbytes::v4::{Packet, PubAck, Publish};
use mqttbytes::QoS;
use tinyedge_hub::auth::{Authenticator, Identity};
use tinyedge_hub::broker::{Broker, Limits};
use tinyedge_hub::listeners::{self, Kind, Listener};
use tinyedge_hub::route::{Route, RouteTable};
use tinyedge_hub::store::{Store, StoreConfig};
use tinyedge_hub::twin::Twins;
use tinyedge_platform::identity;

const ROUTE: &str = r#"FROM /messages/modules/a/outputs/o1 INTO BrokeredEndpoint("/modules/b/inputs/in")"#;

fn broker(dir: &std::path::Path) -> Arc<Broker> {
    let (store, _) = Store::open(StoreConfig::new(dir.join("store"))).expect("store");
    let (twins, _) = Twins::open(dir.join("twins")).expect("twins");
    let mut auth = Authenticator::new(HUB, "localhost");
    for module in ["a", "b"] {
        auth.insert(Identity::module(DEVICE, module), identity::derive_module_key(&DEVICE_KEY, module));
    }
    let routes = RouteTable::new(vec![Route::parse("ab", ROUTE, None, 0).expect("route")]);
    Broker::new(DEVICE, auth, routes, Limits::default(), Arc::new(store), Arc::new(twins))
}

#[test]
fn a_message_is_routed_between_modules_and_the_shutdown_closes_the_listener() {
    let dir = TempDir::new("in-process");
    let broker = broker(&dir.0);
    let listener = Listener::bind(Kind::Mqtt, "127.0.0.1:0".parse().expect("addr")).expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let (stop, stopped) = smol::channel::bounded::<()>(1);
    let served = smol::spawn(listeners::serve(broker.clone(), vec![listener], async move {
        let _ = stopped.recv().await;
    }));

    let mut b = Raw::connect(addr.port(), &module_credentials("b", 3600), 60, true, None);
    b.subscribe(&format!("devices/{DEVICE}/modules/b/inputs/#"), QoS::AtLeastOnce);
    let mut a = Raw::connect(addr.port(), &module_credentials("a", 3600), 60, true, None);
    let mut publish = Publish::new(
        format!("devices/{DEVICE}/modules/a/messages/events/%24.on=o1&k=v"),
        QoS::AtLeastOnce,
        b"in-process".to_vec(),
    );
    publish.pkid = 1;
    a.send(|out| publish.write(out).map(|_| ()));
    assert!(matches!(a.next(), Some(Packet::PubAck(ack)) if ack.pkid == 1), "PUBACK for the publish");
    let delivered = match b.next() {
        Some(Packet::Publish(p)) => p,
        other => panic!("expected the routed message, got {other:?}"),
    };
    b.send(|out| PubAck::new(delivered.pkid).write(out).map(|_| ()));
    assert_eq!(&delivered.payload[..], b"in-process");
    assert!(delivered.topic.starts_with(&format!("devices/{DEVICE}/modules/b/inputs/in/")), "{}", delivered.topic);
    for property in ["k=v", "%24.on=o1", "%24.cdid=gw", "%24.cmid=a"] {
        assert!(delivered.topic.contains(property), "{property} in {}", delivered.topic);
    }

    stop.try_send(()).expect("shutdown");
    smol::block_on(served);
    let refused = TcpStream::connect(addr);
    assert!(refused.is_err(), "the listener on {addr} still accepts after the shutdown");
}
