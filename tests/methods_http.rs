//! The method HTTP API (edgeHub's `POST /twins/{d}/modules/{m}/methods` over HTTPS) and the
//! management socket without the agent (`tinyedge deploy`, `twin show`, `invoke`), against
//! the real binary: a raw HTTPS client that trusts the edge CA, and raw MQTT modules that
//! answer `$iothub/methods/POST/#`.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use mqttbytes::v4::{Packet, PubAck, Publish};
use mqttbytes::QoS;
use serde_json::{json, Value};

/// Waits until the runtime has bound everything (the management socket is the last).
fn ready(rt: &Runtime) {
    assert!(rt.wait_log("management socket"), "{}", rt.log());
}

fn start(modules: &[&str]) -> Runtime {
    let rt = Runtime::start(&deployment(modules, &[]), "");
    ready(&rt);
    rt
}

/// A TLS client that trusts only the runtime's edge CA.
fn tls_config(rt: &Runtime) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let ca =
        rustls::pki_types::CertificateDer::from_pem_file(rt.data_dir().join("certs/edge-ca.pem")).expect("edge CA");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).expect("add edge CA");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// Sends `request` as it is over HTTPS and returns the raw answer.
fn https_raw(rt: &Runtime, request: &[u8]) -> Vec<u8> {
    let tcp = TcpStream::connect(("127.0.0.1", rt.https_port)).expect("connect to the method API");
    tcp.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("server name");
    let connection = rustls::ClientConnection::new(tls_config(rt), name).expect("TLS client");
    let mut tls = rustls::StreamOwned::new(connection, tcp);
    tls.write_all(request).expect("send request");
    let mut answer = Vec::new();
    match tls.read_to_end(&mut answer) {
        Ok(_) => {}
        // A server that closes without close_notify still sent its whole answer.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
        Err(e) => panic!("reading the answer: {e} (got {:?})", String::from_utf8_lossy(&answer)),
    }
    answer
}

/// `(status, JSON body)` of an HTTP answer.
fn parse(answer: &[u8]) -> (u16, Value) {
    let text = String::from_utf8_lossy(answer);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("not HTTP: {text:?}"));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("{head}"));
    (status, serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}")))
}

/// A POST to the method API as an SDK sends it; `None` leaves the header out.
fn post(rt: &Runtime, path: &str, caller: Option<&str>, token: Option<&str>, body: &str) -> (u16, Value) {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(caller) = caller {
        request.push_str(&format!("x-ms-edge-moduleId: {caller}\r\n"));
    }
    if let Some(token) = token {
        request.push_str(&format!("Authorization: {token}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    parse(&https_raw(rt, request.as_bytes()))
}

/// A call from module `caller` of the test device, with a valid token.
fn call(rt: &Runtime, caller: &str, target_module: &str, body: &Value) -> (u16, Value) {
    let (_, _, token) = module_credentials(caller, 3600);
    let path = format!("/twins/{DEVICE}/modules/{target_module}/methods?api-version=2020-09-30");
    post(rt, &path, Some(&format!("{DEVICE}/{caller}")), Some(&token), &body.to_string())
}

fn assert_no_secrets_logged(rt: &Runtime) {
    let log = rt.log();
    assert!(!log.contains("sig="), "a SAS signature in the log:\n{log}");
}

/// A module connected over MQTT and subscribed to method calls; answers each with `status`
/// and `{"method": name, "echo": payload}`, or not at all. Stops when dropped.
struct Callee {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Callee {
    fn start(rt: &Runtime, module: &str, answer: Option<i32>) -> Callee {
        let mut raw = Raw::connect(rt.mqtt_port, &module_credentials(module, 3600), 60, true, None);
        raw.subscribe("$iothub/methods/POST/#", QoS::AtMostOnce);
        raw.stream.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                let Some(Packet::Publish(request)) = raw.next() else { continue };
                if request.qos == QoS::AtLeastOnce {
                    raw.send(|out| PubAck::new(request.pkid).write(out).map(|_| ()));
                }
                let topic = request.topic.clone();
                let name = topic.trim_start_matches("$iothub/methods/POST/").split('/').next().unwrap_or_default();
                let rid = topic.split("$rid=").nth(1).unwrap_or_default().split('&').next().unwrap_or_default();
                let Some(status) = answer else { continue };
                let echo: Value = serde_json::from_slice(&request.payload).unwrap_or(Value::Null);
                let body = json!({"method": name, "echo": echo}).to_string();
                let response = Publish::new(format!("$iothub/methods/res/{status}/?$rid={rid}"), QoS::AtMostOnce, body);
                raw.send(|out| response.write(out).map(|_| ()));
            }
        });
        Callee { stop, thread: Some(thread) }
    }
}

impl Drop for Callee {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

// --- the method HTTP API ---

#[test]
fn a_module_calls_a_connected_module_and_gets_its_status_and_payload() {
    let rt = start(&["caller", "callee"]);
    let _callee = Callee::start(&rt, "callee", Some(201));
    let (status, body) = call(
        &rt,
        "caller",
        "callee",
        &json!({"methodName": "reboot", "payload": {"delay": 5, "why": ["test"]}, "responseTimeoutInSeconds": 10, "connectTimeoutInSeconds": 5}),
    );
    assert_eq!(status, 200, "{body}\n{}", rt.log());
    assert_eq!(body, json!({"status": 201, "payload": {"method": "reboot", "echo": {"delay": 5, "why": ["test"]}}}));
    assert_no_secrets_logged(&rt);
}

#[test]
fn a_callee_that_does_not_answer_in_time_is_504() {
    let rt = start(&["caller", "silent"]);
    let _callee = Callee::start(&rt, "silent", None);
    let began = Instant::now();
    let (status, body) = call(
        &rt,
        "caller",
        "silent",
        &json!({"methodName": "m", "responseTimeoutInSeconds": 5, "connectTimeoutInSeconds": 5}),
    );
    assert_eq!(status, 504, "{body}\n{}", rt.log());
    assert!(body["message"].is_string(), "{body}");
    assert!(began.elapsed() >= Duration::from_secs(5), "answered before the response timeout");
}

#[test]
fn a_target_not_connected_is_404_at_once() {
    let rt = start(&["caller", "away"]);
    let began = Instant::now();
    let (status, body) = call(&rt, "caller", "away", &json!({"methodName": "m"}));
    assert_eq!(status, 404, "{body}");
    assert!(body["message"].as_str().is_some_and(|m| m.contains("away")), "{body}");
    assert!(began.elapsed() < Duration::from_secs(5), "connectTimeoutInSeconds defaults to 0");
    let (status, body) = call(&rt, "caller", "nobody-by-that-name", &json!({"methodName": "m"}));
    assert_eq!(status, 404, "{body}");
}

#[test]
fn the_caller_header_is_required_and_must_be_device_slash_module() {
    let rt = start(&["caller", "callee"]);
    let (_, _, token) = module_credentials("caller", 3600);
    let path = format!("/twins/{DEVICE}/modules/callee/methods");
    let body = r#"{"methodName":"m"}"#;
    for caller in [None, Some("caller"), Some(&*format!("{DEVICE}/caller/extra")), Some("/caller")] {
        let (status, answer) = post(&rt, &path, caller, Some(&token), body);
        assert_eq!(status, 400, "{caller:?}: {answer}");
        assert!(answer["message"].as_str().is_some_and(|m| m.contains("x-ms-edge-moduleId")), "{answer}");
    }
}

#[test]
fn callers_without_a_valid_token_of_a_module_of_this_device_are_401() {
    let rt = start(&["caller", "callee", "other"]);
    let path = format!("/twins/{DEVICE}/modules/callee/methods");
    let body = r#"{"methodName":"m"}"#;
    let me = format!("{DEVICE}/caller");
    let (_, _, expired) = module_credentials("caller", -60);
    let (_, _, others) = module_credentials("other", 3600);
    let (_, _, good) = module_credentials("caller", 3600);
    let (_, _, leaf_token) = leaf_credentials();
    let leaf_module = format!("{LEAF}/x");
    let cases: Vec<(&str, Option<&str>, &str)> = vec![
        (&me, None, "Authorization"),
        (&me, Some("Bearer abc"), "Unable to authenticate"),
        (&me, Some(&expired), "expired"),
        (&me, Some(&others), "Unable to authenticate"),
        ("another-device/caller", Some(&good), "Only modules on the same device can invoke DirectMethods"),
        (&leaf_module, Some(&leaf_token), "Only modules on the same device can invoke DirectMethods"),
    ];
    for (caller, token, needle) in cases {
        let (status, answer) = post(&rt, &path, Some(caller), token, body);
        assert_eq!(status, 401, "{caller} {token:?}: {answer}");
        assert!(answer["message"].as_str().is_some_and(|m| m.contains(needle)), "{answer}");
    }
    assert_no_secrets_logged(&rt);
}

#[test]
fn invalid_bodies_are_400_with_the_field_named() {
    let rt = start(&["caller", "callee"]);
    let _callee = Callee::start(&rt, "callee", Some(200));
    let big = "x".repeat(128 * 1024);
    let cases = [
        (json!({"payload": 1}), "methodName is required"),
        (json!({"methodName": ""}), "methodName must be 1 to 100 characters"),
        (json!({"methodName": "n".repeat(101)}), "methodName must be 1 to 100 characters"),
        (json!({"methodName": "m", "payload": big}), "payload of 131074 bytes, at most 131072"),
        (json!({"methodName": "m", "responseTimeoutInSeconds": 4}), "responseTimeoutInSeconds"),
        (json!({"methodName": "m", "responseTimeoutInSeconds": 301}), "responseTimeoutInSeconds"),
        (json!({"methodName": "m", "connectTimeoutInSeconds": 301}), "connectTimeoutInSeconds"),
        (json!({"methodName": "m", "connectTimeoutInSeconds": -1}), "connectTimeoutInSeconds"),
        (json!(["methodName"]), "must be a JSON object"),
    ];
    for (body, needle) in cases {
        let (status, answer) = call(&rt, "caller", "callee", &body);
        assert_eq!(status, 400, "{body:.80}: {answer}");
        assert!(answer["message"].as_str().is_some_and(|m| m.contains(needle)), "{body:.80}: {answer}");
    }
    // The largest payload itself is allowed.
    let exact = "x".repeat(128 * 1024 - 2);
    let (status, answer) = call(&rt, "caller", "callee", &json!({"methodName": "m", "payload": exact}));
    assert_eq!(status, 200, "{answer:.200}");
}

#[test]
fn device_methods_and_unknown_paths() {
    let rt = start(&["caller"]);
    let (_, _, token) = module_credentials("caller", 3600);
    let me = format!("{DEVICE}/caller");
    let (status, body) = post(&rt, &format!("/twins/{LEAF}/methods"), Some(&me), Some(&token), r#"{"methodName":"m"}"#);
    assert_eq!(status, 404, "the leaf device is not connected: {body}");
    let (status, body) = post(&rt, "/twins/gw/modules/x", Some(&me), Some(&token), "{}");
    assert_eq!(status, 404, "{body}");
    assert!(body["message"].as_str().is_some_and(|m| m.contains("no such endpoint")), "{body}");
    let get = format!("GET /twins/{DEVICE}/methods HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let (status, body) = parse(&https_raw(&rt, get.as_bytes()));
    assert_eq!(status, 405, "{body}");
}

#[test]
fn malformed_http_is_400_and_the_api_keeps_serving() {
    let rt = start(&["caller", "callee"]);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"GARBAGE\r\n\r\n".to_vec(), "malformed request line"),
        (b"POST /twins/gw/methods HTTP/2\r\n\r\n".to_vec(), "HTTP/1.1 only"),
        (b"POST /twins/gw/methods HTTP/1.1\r\nContent-Length: x\r\n\r\n".to_vec(), "bad Content-Length"),
        (b"POST /twins/gw/methods HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n".to_vec(), "at most"),
        (b"POST /twins/gw/methods HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(), "Transfer-Encoding"),
        (format!("POST / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(9000)).into_bytes(), "longer than 8192 bytes"),
    ];
    for (request, needle) in cases {
        let (status, body) = parse(&https_raw(&rt, &request));
        assert_eq!(status, 400, "{:.60?}: {body}", String::from_utf8_lossy(&request));
        assert!(body["message"].as_str().is_some_and(|m| m.contains(needle)), "{body}");
    }
    // A plain-text client is not answered (TLS only) and does not disturb the next one.
    let mut plain = TcpStream::connect(("127.0.0.1", rt.https_port)).expect("connect");
    let _ = plain.write_all(b"POST /twins/gw/methods HTTP/1.1\r\n\r\n");
    drop(plain);
    let _callee = Callee::start(&rt, "callee", Some(200));
    let (status, body) = call(&rt, "caller", "callee", &json!({"methodName": "still-up"}));
    assert_eq!(status, 200, "{body}\n{}", rt.log());
}

// --- the management socket without the agent ---

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn tinyedge_invoke_calls_a_module_and_fails_with_the_message_on_404_504_400() {
    let rt = start(&["callee", "silent", "away"]);
    let _callee = Callee::start(&rt, "callee", Some(200));
    let _silent = Callee::start(&rt, "silent", None);
    let out = rt.cli(&["invoke", "callee", "ping", "--payload", r#"{"n":1}"#]);
    assert!(out.status.success(), "{}\n{}", stderr_of(&out), rt.log());
    let printed: Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(printed, json!({"status": 200, "payload": {"method": "ping", "echo": {"n": 1}}}));
    let out = rt.cli(&["invoke", &format!("{DEVICE}/callee"), "ping"]);
    assert!(out.status.success(), "a d/m identity works too: {}", stderr_of(&out));
    assert_eq!(serde_json::from_slice::<Value>(&out.stdout).unwrap()["payload"]["echo"], Value::Null);

    let out = rt.cli(&["invoke", "away", "ping"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr_of(&out).contains("404"), "{}", stderr_of(&out));
    let out = rt.cli(&["invoke", "silent", "ping", "--timeout", "5"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr_of(&out).contains("504"), "{}", stderr_of(&out));
    let out = rt.cli(&["invoke", "callee", "ping", "--timeout", "1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains("400") && stderr_of(&out).contains("responseTimeoutInSeconds"),
        "{}",
        stderr_of(&out)
    );
    let out = rt.cli(&["invoke", "callee", "ping", "--payload", "{nope"]);
    assert_eq!(out.status.code(), Some(2), "a payload that is not JSON is a usage error");
    assert!(stderr_of(&out).contains("--payload is not JSON"), "{}", stderr_of(&out));
    assert_no_secrets_logged(&rt);
}

#[test]
fn a_deployment_applies_to_the_hub_without_the_agent() {
    let rt = start(&["first"]);
    let newcomer = module_credentials("newcomer", 3600);
    let topic = format!("devices/{DEVICE}/modules/newcomer/messages/events/");
    let refused = mosquitto_pub(rt.mqtt_port, &newcomer, &topic, "x", &["-q", "1"]);
    assert!(!refused.status.success(), "not in the deployment yet");

    let dir = TempDir::new("deploy");
    let file = dir.0.join("deployment.json");
    let route = r#"FROM /messages/modules/newcomer/* INTO BrokeredEndpoint("/modules/first/inputs/in")"#;
    std::fs::write(&file, deployment(&["first", "newcomer"], &[("r", route)])).expect("write");
    let out = rt.cli(&["deploy", &file.to_string_lossy()]);
    assert!(out.status.success(), "{}\n{}", stderr_of(&out), rt.log());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("200 "), "{out:?}");

    // The new identity connects, and its messages take the new route.
    let sub = Sub::start(
        rt.mqtt_port,
        &module_credentials("first", 3600),
        &format!("devices/{DEVICE}/modules/first/inputs/#"),
        1,
        15,
        &["-q", "1"],
    );
    settle();
    let sent = mosquitto_pub(rt.mqtt_port, &newcomer, &topic, "routed", &["-q", "1"]);
    assert!(sent.status.success(), "{}", String::from_utf8_lossy(&sent.stderr));
    let (ok, lines, err) = sub.finish();
    assert!(ok && lines.len() == 1 && lines[0].ends_with(" routed"), "{err} {lines:?}\n{}", rt.log());

    // A bad manifest changes nothing and says why, with IoT Edge's code.
    std::fs::write(&file, r#"{"modulesContent":{}}"#).expect("write");
    let out = rt.cli(&["deploy", &file.to_string_lossy()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr_of(&out).contains("deployment rejected: 4"), "{}", stderr_of(&out));

    // The agent's endpoints say that it is off.
    let out = rt.cli(&["list"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr_of(&out).contains("409") && stderr_of(&out).contains("agent is disabled"), "{}", stderr_of(&out));
}

#[test]
fn a_deployment_applied_without_the_agent_survives_a_restart() {
    let mut rt = start(&["first"]);
    let dir = TempDir::new("deploy");
    let file = dir.0.join("deployment.json");
    std::fs::write(&file, deployment(&["first", "later"], &[])).expect("write");
    assert!(rt.cli(&["deploy", &file.to_string_lossy()]).status.success());
    rt.kill9_and_restart();
    let out = mosquitto_pub(
        rt.mqtt_port,
        &module_credentials("later", 3600),
        &format!("devices/{DEVICE}/modules/later/messages/events/"),
        "x",
        &["-q", "1"],
    );
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), rt.log());
}

#[test]
fn tinyedge_twin_show_prints_the_twin_document() {
    let rt = start(&["first"]);
    let out = rt.cli(&["twin", "show", "first"]);
    assert!(out.status.success(), "{}\n{}", stderr_of(&out), rt.log());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().count() > 1, "pretty-printed: {text}");
    let twin: Value = serde_json::from_str(&text).expect("JSON");
    assert!(twin.get("desired").is_some() && twin.get("reported").is_some(), "{twin:#}");
    let out = rt.cli(&["twin", "show", &format!("{DEVICE}/first"), "--json"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim().lines().count(), 1, "--json is one line");
    let out = rt.cli(&["twin", "show", LEAF]);
    assert!(out.status.success(), "a configured device has a twin: {}", stderr_of(&out));
    let out = rt.cli(&["twin", "show", "nobody"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr_of(&out).contains("404"), "{}", stderr_of(&out));
}

#[test]
fn the_management_socket_answers_bad_requests_precisely() {
    let rt = start(&["first"]);
    let socket = rt.data_dir().join("mgmt.sock");
    let ask = |request: &[u8]| {
        let mut stream = std::os::unix::net::UnixStream::connect(&socket).expect("management socket");
        stream.write_all(request).expect("write");
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).expect("read");
        parse(&answer)
    };
    let (status, body) = ask(b"GET /nowhere HTTP/1.1\r\n\r\n");
    assert_eq!(status, 404, "{body}");
    let (status, body) = ask(b"DELETE /deployment HTTP/1.1\r\n\r\n");
    assert_eq!(status, 405, "{body}");
    let (status, body) = ask(b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n");
    assert_eq!(status, 400, "{body}");
    let (status, body) = ask(b"POST /modules/first/methods HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}");
    assert_eq!((status, body["message"].as_str()), (400, Some("methodName is required")), "{body}");
}
