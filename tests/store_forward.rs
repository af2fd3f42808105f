//! Store and forward end to end: the real binary, its on-disk store, the upstream link, and a
//! real mosquitto standing in for the cloud IoT Hub.

mod common;

use std::collections::HashSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use mqttbytes::v4::{Packet, Publish};
use mqttbytes::QoS;

const UP_ROUTE: (&str, &str) = ("up", "FROM /messages/* INTO $upstream");

thread_local! {
    /// The `[upstream] protocol` the current test runs with: every test here runs in both.
    static PROTOCOL: std::cell::Cell<&'static str> = const { std::cell::Cell::new("iothub") };
}

/// `[store]` and `[upstream]` pointing at `cloud`, with a short reconnect backoff for tests.
fn cloud_config(cloud: &Cloud, store: &str) -> String {
    let protocol = PROTOCOL.with(std::cell::Cell::get);
    format!(
        "[store]\n{store}\n[upstream]\nurl = \"mqtt://127.0.0.1:{}\"\nbackoff_max_secs = 1\nprotocol = \"{protocol}\"\n",
        cloud.port
    )
}

/// Each store-and-forward test twice: with one upstream connection per identity (`iothub`,
/// the default) and with the single edge-device connection (`mqtt`).
macro_rules! in_both_upstream_modes {
    ($($name:ident),* $(,)?) => {
        mod per_identity {
            $(#[test] fn $name() { super::PROTOCOL.with(|p| p.set("iothub")); super::$name() })*
        }
        mod single_connection {
            $(#[test] fn $name() { super::PROTOCOL.with(|p| p.set("mqtt")); super::$name() })*
        }
    };
}

in_both_upstream_modes!(
    messages_sent_while_the_cloud_is_down_all_arrive_in_order_with_their_properties,
    every_acknowledged_message_survives_a_sigkill_and_arrives_upstream,
    store_stays_within_max_bytes_and_reports_drops,
    expired_messages_are_not_sent,
    queued_inputs_survive_a_restart_and_arrive_in_order_when_the_module_connects,
    corrupted_segment_tail_is_truncated_on_start_and_the_loss_reported,
    higher_priority_routes_drain_first_without_starving_the_others
);

fn sender_topic(bag: &str) -> String {
    format!("devices/{DEVICE}/modules/sender/messages/events/{bag}")
}

/// Publishes `count` QoS 1 messages `msg-0` … with one mosquitto_pub process (`-l`: a message
/// per stdin line).
fn publish_lines(port: u16, creds: &(String, String, String), topic: &str, count: usize) {
    require_tool("mosquitto_pub");
    let mut child = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-V", "mqttv311", "-q", "1", "-l"])
        .args(["-i", &creds.0, "-u", &creds.1, "-P", &creds.2, "-t", topic])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mosquitto_pub");
    {
        let mut stdin = child.stdin.take().expect("stdin");
        let lines: String = (0..count).map(|i| format!("msg-{i}\n")).collect();
        stdin.write_all(lines.as_bytes()).expect("write lines");
    }
    let out = child.wait_with_output().expect("mosquitto_pub");
    assert!(out.status.success(), "mosquitto_pub -l failed: {}", String::from_utf8_lossy(&out.stderr));
}

fn payloads(lines: &[String]) -> Vec<String> {
    lines.iter().filter_map(|l| l.split_once(' ').map(|(_, p)| p.to_string())).collect()
}

fn messages_sent_while_the_cloud_is_down_all_arrive_in_order_with_their_properties() {
    let mut cloud = Cloud::new();
    cloud.start();
    cloud.register_subscriber();
    cloud.stop();
    let rt = Runtime::start(&deployment(&["sender"], &[UP_ROUTE]), &cloud_config(&cloud, ""));
    const COUNT: usize = 10_000;
    let t0 = std::time::Instant::now();
    publish_lines(
        rt.mqtt_port,
        &module_credentials("sender", 3600),
        &sender_topic("%24.on=out1&%24.ct=text%2Fplain&kind=reading"),
        COUNT,
    );
    assert!(rt
        .wait_status("store.records_appended 10000", Duration::from_secs(20))
        .contains("upstream.connected false"));
    eprintln!("TIMING published+stored {:?}", t0.elapsed());
    cloud.start();
    let lines = cloud.collect_until(Duration::from_secs(90), |l| l.len() >= COUNT);
    eprintln!("TIMING collected {:?}", t0.elapsed());
    let got = payloads(&lines);
    let expected: Vec<String> = (0..COUNT).map(|i| format!("msg-{i}")).collect();
    assert_eq!(got.len(), COUNT, "only {} of {COUNT} arrived; log:\n{}", got.len(), rt.log());
    assert_eq!(got, expected, "not in order");
    let (topic, _) = lines[0].split_once(' ').expect("topic");
    assert!(topic.starts_with(&format!("devices/{DEVICE}/modules/sender/messages/events/")), "{topic}");
    for prop in ["%24.on=out1", "%24.ct=text%2Fplain", "kind=reading", &format!("%24.cdid={DEVICE}"), "%24.cmid=sender"]
    {
        assert!(topic.contains(prop), "{prop} missing in {topic}");
    }
    let status = rt.wait_status("upstream.connected true", Duration::from_secs(10));
    assert!(status.contains("upstream.connected true"), "{status}");
}

fn every_acknowledged_message_survives_a_sigkill_and_arrives_upstream() {
    let mut cloud = Cloud::new();
    cloud.start();
    cloud.register_subscriber();
    // The cloud stays down while the runtime is killed, so acknowledged messages must come from
    // the store after the restart, not from an earlier send.
    cloud.stop();
    let mut rt = Runtime::start(&deployment(&["sender"], &[UP_ROUTE]), &cloud_config(&cloud, "fsync = \"always\""));
    let mut client = Raw::connect(rt.mqtt_port, &module_credentials("sender", 3600), 60, true, None);
    const TOTAL: usize = 3000;
    let topic = sender_topic("");
    let mut acked = HashSet::new();
    let mut in_flight = std::collections::VecDeque::new();
    let mut killed = false;
    for i in 0..TOTAL {
        let mut p = Publish::new(topic.as_str(), QoS::AtLeastOnce, format!("msg-{i}"));
        p.pkid = (i % 60_000 + 1) as u16;
        client.send(|out| p.write(out).map(|_| ()));
        in_flight.push_back((p.pkid, i));
        while in_flight.len() >= 16 {
            match client.next() {
                Some(Packet::PubAck(ack)) => {
                    if let Some(pos) = in_flight.iter().position(|(pkid, _)| *pkid == ack.pkid) {
                        if let Some((_, n)) = in_flight.remove(pos) {
                            acked.insert(n);
                        }
                    }
                }
                Some(_) => {}
                None => panic!("connection lost before the kill"),
            }
        }
        if i == TOTAL / 2 {
            // Mid-stream: acknowledged messages so far must survive; the rest may not.
            rt.kill9();
            killed = true;
            break;
        }
    }
    assert!(killed);
    assert!(acked.len() > 1000, "only {} acknowledged before the kill", acked.len());
    rt.start_again();
    cloud.start();
    let highest = acked.iter().copied().max().unwrap_or(0);
    let lines = cloud
        .collect_until(Duration::from_secs(60), |l| l.iter().any(|line| line.ends_with(&format!(" msg-{highest}"))));
    let got = payloads(&lines);
    let seen: HashSet<usize> = got.iter().filter_map(|p| p.strip_prefix("msg-").and_then(|n| n.parse().ok())).collect();
    let missing: Vec<usize> = acked.iter().copied().filter(|n| !seen.contains(n)).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged message(s) lost, e.g. {:?}\nlog:\n{}",
        missing.len(),
        &missing[..missing.len().min(10)],
        rt.log()
    );
    // In order: first arrivals never go backwards.
    let mut first_seen = HashSet::new();
    let mut last = None;
    for n in got.iter().filter_map(|p| p.strip_prefix("msg-").and_then(|n| n.parse::<usize>().ok())) {
        if first_seen.insert(n) {
            assert!(last.is_none_or(|l| n > l), "out of order: {n} after {last:?}");
            last = Some(n);
        }
    }
}

fn store_stays_within_max_bytes_and_reports_drops() {
    // Everything goes to a module that never connects; the store must drop the oldest.
    let rt = Runtime::start(
        &deployment(
            &["sender", "away"],
            &[("away", r#"FROM /messages/modules/sender/* INTO BrokeredEndpoint("/modules/away/inputs/in")"#)],
        ),
        "[store]\nmax_bytes = 1048576\n",
    );
    let payload = "x".repeat(1000);
    let mut client = Raw::connect(rt.mqtt_port, &module_credentials("sender", 3600), 60, true, None);
    let topic = sender_topic("");
    for i in 0..3000u16 {
        let mut p = Publish::new(topic.as_str(), QoS::AtLeastOnce, payload.clone());
        p.pkid = i + 1;
        client.send(|out| p.write(out).map(|_| ()));
        assert!(matches!(client.next(), Some(Packet::PubAck(_))), "message {i} not acknowledged");
    }
    let store_dir = rt.data_dir().join("store");
    let bytes: u64 = std::fs::read_dir(&store_dir)
        .expect("store dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("seg-"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    assert!(bytes <= 1_048_576, "store holds {bytes} bytes, over its 1 MiB bound");
    assert!(bytes > 500_000, "store should be near its bound, holds {bytes}");
    let status = rt.wait_status("hub.messages_received 3000", Duration::from_secs(10));
    let dropped = status
        .lines()
        .find_map(|l| l.strip_prefix("store.dropped_full "))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(dropped > 1000, "drops not reported: {status}");
    assert!(rt.log().contains("drop"), "drops not logged:\n{}", rt.log());
}

fn expired_messages_are_not_sent() {
    let mut cloud = Cloud::new();
    cloud.start();
    cloud.register_subscriber();
    cloud.stop();
    let routes =
        [("short", r#"{"route":"FROM /messages/modules/sender/outputs/short INTO $upstream","timeToLiveSecs":1}"#)];
    // An object route needs raw JSON in the deployment: build it by hand around the helper's output.
    let deployment_json =
        deployment(&["sender"], &[("long", "FROM /messages/modules/sender/outputs/long INTO $upstream")])
            .replace("\"routes\":{", &format!("\"routes\":{{\"{}\":{},", routes[0].0, routes[0].1));
    let rt = Runtime::start(&deployment_json, &cloud_config(&cloud, ""));
    let creds = module_credentials("sender", 3600);
    for i in 0..5 {
        assert!(mosquitto_pub(
            rt.mqtt_port,
            &creds,
            &sender_topic("%24.on=short"),
            &format!("short-{i}"),
            &["-q", "1"]
        )
        .status
        .success());
    }
    std::thread::sleep(Duration::from_millis(2500));
    assert!(mosquitto_pub(rt.mqtt_port, &creds, &sender_topic("%24.on=long"), "long-0", &["-q", "1"]).status.success());
    cloud.start();
    let lines = cloud.collect_until(Duration::from_secs(30), |l| l.iter().any(|line| line.ends_with(" long-0")));
    assert_eq!(payloads(&lines), ["long-0"], "expired messages were sent\n{}", rt.log());
    let status = rt.wait_status("store.expired_skipped 5", Duration::from_secs(10));
    assert!(status.contains("store.expired_skipped 5"), "{status}");
}

fn queued_inputs_survive_a_restart_and_arrive_in_order_when_the_module_connects() {
    let mut rt = Runtime::start(
        &deployment(
            &["sender", "late"],
            &[("r", r#"FROM /messages/modules/sender/* INTO BrokeredEndpoint("/modules/late/inputs/in")"#)],
        ),
        "[store]\nfsync = \"always\"\n",
    );
    publish_lines(rt.mqtt_port, &module_credentials("sender", 3600), &sender_topic(""), 200);
    rt.kill9_and_restart();
    let sub = Sub::start(
        rt.mqtt_port,
        &module_credentials("late", 3600),
        &format!("devices/{DEVICE}/modules/late/inputs/#"),
        200,
        20,
        &["-q", "1"],
    );
    let (ok, lines, err) = sub.finish();
    assert!(ok, "{err}\n{}", rt.log());
    let expected: Vec<String> = (0..200).map(|i| format!("msg-{i}")).collect();
    assert_eq!(payloads(&lines), expected);
    // Acknowledged deliveries are not sent again on the next connection.
    let again = Sub::start(
        rt.mqtt_port,
        &module_credentials("late", 3600),
        &format!("devices/{DEVICE}/modules/late/inputs/#"),
        1,
        3,
        &["-q", "1"],
    );
    let (_, lines, _) = again.finish();
    assert!(lines.is_empty(), "delivered twice: {lines:?}");
}

fn corrupted_segment_tail_is_truncated_on_start_and_the_loss_reported() {
    let mut rt = Runtime::start(
        &deployment(
            &["sender", "late"],
            &[("r", r#"FROM /messages/modules/sender/* INTO BrokeredEndpoint("/modules/late/inputs/in")"#)],
        ),
        "[store]\nfsync = \"always\"\n",
    );
    publish_lines(rt.mqtt_port, &module_credentials("sender", 3600), &sender_topic(""), 50);
    rt.kill9();
    let store_dir = rt.data_dir().join("store");
    let mut segments: Vec<_> = std::fs::read_dir(&store_dir)
        .expect("store dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("seg-")))
        .collect();
    segments.sort();
    let last = segments.last().expect("a segment").clone();
    let mut bytes = std::fs::read(&last).expect("read segment");
    // Flip a byte inside the last record and add a torn half-record after it.
    let len = bytes.len();
    bytes[len - 3] ^= 0xFF;
    bytes.extend_from_slice(&[0x01, 0x7E, 0x00, 0x00, 0x40]);
    std::fs::write(&last, &bytes).expect("corrupt segment");
    rt.start_again();
    assert!(rt.wait_log("store recovery"), "recovery not reported:\n{}", rt.log());
    let sub = Sub::start(
        rt.mqtt_port,
        &module_credentials("late", 3600),
        &format!("devices/{DEVICE}/modules/late/inputs/#"),
        49,
        20,
        &["-q", "1"],
    );
    let (ok, lines, err) = sub.finish();
    assert!(ok, "{err}\n{}", rt.log());
    let expected: Vec<String> = (0..49).map(|i| format!("msg-{i}")).collect();
    assert_eq!(payloads(&lines), expected, "everything before the damaged record is kept");
    // The hub keeps accepting after recovery.
    assert!(mosquitto_pub(rt.mqtt_port, &module_credentials("sender", 3600), &sender_topic(""), "after", &["-q", "1"])
        .status
        .success());
}

fn higher_priority_routes_drain_first_without_starving_the_others() {
    let mut cloud = Cloud::new();
    cloud.start();
    cloud.register_subscriber();
    cloud.stop();
    let routes = r#""urgent":{"route":"FROM /messages/modules/sender/outputs/alarm INTO $upstream","priority":0},"bulk":{"route":"FROM /messages/modules/sender/outputs/bulk INTO $upstream","priority":5},"#;
    let deployment_json =
        deployment(&["sender"], &[("other", "FROM /messages/modules/sender/outputs/none INTO $upstream")])
            .replace("\"routes\":{", &format!("\"routes\":{{{routes}"));
    let rt = Runtime::start(&deployment_json, &cloud_config(&cloud, ""));
    let creds = module_credentials("sender", 3600);
    // While the cloud is down: 20 bulk messages, then 20 alarms.
    publish_lines(rt.mqtt_port, &creds, &sender_topic("%24.on=bulk"), 20);
    let mut child = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &rt.mqtt_port.to_string(), "-V", "mqttv311", "-q", "1", "-l"])
        .args(["-i", &creds.0, "-u", &creds.1, "-P", &creds.2, "-t", &sender_topic("%24.on=alarm")])
        .stdin(Stdio::piped())
        .spawn()
        .expect("mosquitto_pub");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all((0..20).map(|i| format!("alarm-{i}\n")).collect::<String>().as_bytes())
        .expect("write");
    assert!(child.wait().expect("wait").success());
    cloud.start();
    let lines = cloud.collect_until(Duration::from_secs(60), |l| l.len() >= 40);
    let got = payloads(&lines);
    assert_eq!(got.len(), 40, "{got:?}\n{}", rt.log());
    // Alarms go first, but every ninth message is the oldest bulk one: nothing starves.
    let expected_start: Vec<String> = (0..8).map(|i| format!("alarm-{i}")).chain(["msg-0".to_string()]).collect();
    assert_eq!(&got[..9], &expected_start[..], "{got:?}");
    let alarms: Vec<&String> = got.iter().filter(|p| p.starts_with("alarm-")).collect();
    let bulk: Vec<&String> = got.iter().filter(|p| p.starts_with("msg-")).collect();
    assert_eq!(
        alarms,
        (0..20).map(|i| format!("alarm-{i}")).collect::<Vec<_>>().iter().collect::<Vec<_>>(),
        "alarms in order"
    );
    assert_eq!(
        bulk,
        (0..20).map(|i| format!("msg-{i}")).collect::<Vec<_>>().iter().collect::<Vec<_>>(),
        "bulk in order"
    );
    let last_alarm = got.iter().rposition(|p| p.starts_with("alarm-")).expect("alarms");
    assert!(last_alarm < 25, "alarms should be done early: {got:?}");
}
