//! Delivery guarantees end to end: TLS, QoS 1, late subscribers, downstream devices,
//! client-id takeover.

mod common;

use common::*;

fn inputs(module: &str) -> String {
    format!("devices/{DEVICE}/modules/{module}/inputs/#")
}

#[test]
fn tls_listener_serves_clients_that_trust_the_edge_ca() {
    let rt = Runtime::start(
        &deployment(
            &["a", "b"],
            &[("ab", r#"FROM /messages/modules/a/* INTO BrokeredEndpoint("/modules/b/inputs/in")"#)],
        ),
        "",
    );
    let ca = rt.data_dir().join("certs/edge-ca.pem");
    assert!(ca.is_file(), "edge CA missing");
    let ca = ca.to_string_lossy().into_owned();
    let port = rt.mqtts_port;
    let sub = Sub::start(port, &module_credentials("b", 3600), &inputs("b"), 1, 15, &["--cafile", &ca, "-q", "1"]);
    settle();
    let out = mosquitto_pub(
        port,
        &module_credentials("a", 3600),
        &format!("devices/{DEVICE}/modules/a/messages/events/"),
        "over tls",
        &["--cafile", &ca, "-q", "1"],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (ok, lines, err) = sub.finish();
    assert!(ok, "{err}\n{}", rt.log());
    assert_eq!(lines.len(), 1);
    assert!(lines[0].ends_with(" over tls"), "{lines:?}");
}

#[test]
fn untrusted_server_certificate_is_rejected_by_clients() {
    let rt = Runtime::start(&deployment(&["a"], &[]), "");
    // The system trust store does not hold the edge CA: verification must fail.
    let out = mosquitto_pub(
        rt.mqtts_port,
        &module_credentials("a", 3600),
        &format!("devices/{DEVICE}/modules/a/messages/events/"),
        "x",
        &["--capath", "/etc/ssl/certs"],
    );
    assert!(!out.status.success());
}

#[test]
fn messages_for_an_offline_module_wait_and_arrive_in_order() {
    let rt = Runtime::start(
        &deployment(
            &["a", "late"],
            &[("r", r#"FROM /messages/modules/a/outputs/* INTO BrokeredEndpoint("/modules/late/inputs/in")"#)],
        ),
        "",
    );
    for i in 0..5 {
        let out = mosquitto_pub(
            rt.mqtt_port,
            &module_credentials("a", 3600),
            &format!("devices/{DEVICE}/modules/a/messages/events/%24.on=o"),
            &format!("msg-{i}"),
            &["-q", "1"],
        );
        assert!(out.status.success());
    }
    let sub = Sub::start(rt.mqtt_port, &module_credentials("late", 3600), &inputs("late"), 5, 15, &["-q", "1"]);
    let (ok, lines, err) = sub.finish();
    assert!(ok, "{err}\n{}", rt.log());
    let payloads: Vec<&str> = lines.iter().filter_map(|l| l.split_once(' ').map(|(_, p)| p)).collect();
    assert_eq!(payloads, ["msg-0", "msg-1", "msg-2", "msg-3", "msg-4"]);
}

#[test]
fn downstream_device_telemetry_routes_by_connection_device_id() {
    let route = format!(
        r#"FROM /messages/* WHERE $connectionDeviceId = '{LEAF}' AND NOT is_defined($connectionModuleId) INTO BrokeredEndpoint("/modules/m/inputs/fromleaf")"#
    );
    let rt = Runtime::start(&deployment(&["m"], &[("leaf", &route), ("up", "FROM /messages/* INTO $upstream")]), "");
    let sub = Sub::start(rt.mqtt_port, &module_credentials("m", 3600), &inputs("m"), 1, 15, &[]);
    settle();
    let out = mosquitto_pub(
        rt.mqtt_port,
        &leaf_credentials(),
        &format!("devices/{LEAF}/messages/events/kind=reading"),
        "21.5",
        &["-q", "1"],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (ok, lines, err) = sub.finish();
    assert!(ok, "{err}\n{}", rt.log());
    assert_eq!(lines.len(), 1);
    assert!(lines[0].starts_with(&format!("devices/{DEVICE}/modules/m/inputs/fromleaf/")), "{lines:?}");
    assert!(
        lines[0].contains("%24.cdid=sensor-7") && lines[0].contains("kind=reading") && !lines[0].contains("%24.cmid"),
        "{lines:?}"
    );
}

#[test]
fn a_second_connection_with_the_same_client_id_takes_over() {
    let rt = Runtime::start(
        &deployment(
            &["a", "b"],
            &[("ab", r#"FROM /messages/modules/a/* INTO BrokeredEndpoint("/modules/b/inputs/in")"#)],
        ),
        "",
    );
    let first = Sub::start(rt.mqtt_port, &module_credentials("b", 3600), &inputs("b"), 1, 6, &[]);
    settle();
    let second = Sub::start(rt.mqtt_port, &module_credentials("b", 3600), &inputs("b"), 1, 15, &[]);
    settle();
    let out = mosquitto_pub(
        rt.mqtt_port,
        &module_credentials("a", 3600),
        &format!("devices/{DEVICE}/modules/a/messages/events/"),
        "to the newest",
        &["-q", "1"],
    );
    assert!(out.status.success());
    let (_, lines, _) = second.finish();
    assert_eq!(lines.len(), 1, "the new connection gets the message\n{}", rt.log());
    let (_, old_lines, _) = first.finish();
    assert!(old_lines.is_empty(), "the old connection was closed: {old_lines:?}");
    assert!(rt.wait_log("closing its previous connection"));
    assert!(rt.wait_log("taken over by a new connection"), "{}", rt.log());
}

#[test]
fn mqtt_login_output_drives_mosquitto_clients_from_a_shell() {
    let rt = Runtime::start(
        &deployment(
            &["a", "b"],
            &[("ab", r#"FROM /messages/modules/a/* INTO BrokeredEndpoint("/modules/b/inputs/in")"#)],
        ),
        "",
    );
    let sub = Sub::start(rt.mqtt_port, &module_credentials("b", 3600), &inputs("b"), 1, 15, &[]);
    settle();
    let script = format!(
        r#"eval "$('{bin}' --config '{config}' identity mqtt-login a)" && mosquitto_pub -h 127.0.0.1 -p {port} -V mqttv311 -q 1 -i "$client_id" -u "$username" -P "$password" -t 'devices/{DEVICE}/modules/a/messages/events/' -m from-shell"#,
        bin = env!("CARGO_BIN_EXE_tinyedge"),
        config = rt.dir.0.join("config.toml").display(),
        port = rt.mqtt_port
    );
    let out = std::process::Command::new("sh").arg("-c").arg(&script).output().expect("sh");
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), rt.log());
    let (ok, lines, err) = sub.finish();
    assert!(ok && lines.len() == 1 && lines[0].ends_with(" from-shell"), "{lines:?} {err}");
}
