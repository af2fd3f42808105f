//! Leaf devices from the cloud's device scope (`[upstream] protocol = "iothub"`), against the
//! scripted IoT Hub (tests/cloud/iothub.py) serving IoT Hub's device-scope HTTPS API: a device
//! that is not in `[[devices]]` but is in the edge device's scope connects with mosquitto_pub
//! (TLS, its own SAS token) and its telemetry reaches the cloud on its own identity; it
//! connects again with the cloud down (cached), and after a restart with the cloud still down
//! (cache on disk); removed from the scope, it is refused after the next refresh; a device
//! never in the scope is refused; the configured leaf device works throughout.

mod common;

use std::process::Output;
use std::time::{Duration, Instant};

use common::iothub::{tinyedge_identities, CloudIdentity, ScriptedHub};
use common::*;

const SCOPED: &str = "scoped-1";
/// base64 of the 32 bytes `scoped-1-key-secret-1234567890ab`.
const SCOPED_KEY_B64: &str = "c2NvcGVkLTEta2V5LXNlY3JldC0xMjM0NTY3ODkwYWI=";
const NEVER: &str = "never-1";

/// Client id, username and SAS password of a leaf device with this base64 key.
fn credentials(device: &str, key_b64: &str) -> (String, String, String) {
    use base64::Engine as _;
    let key = base64::engine::general_purpose::STANDARD.decode(key_b64).expect("base64 key");
    let token = tinyedge_platform::sas::generate(&format!("{HUB}/devices/{device}"), &key, unix_now() + 3600);
    (device.to_string(), format!("{HUB}/{device}/?api-version=2021-04-12"), token)
}

/// One QoS 1 telemetry message over TLS with the runtime's edge CA.
fn publish(rt: &Runtime, creds: &(String, String, String), message: &str) -> Output {
    let ca = rt.data_dir().join("certs/edge-ca.pem");
    let topic = format!("devices/{}/messages/events/", creds.0);
    mosquitto_pub(rt.mqtts_port, creds, &topic, message, &["--cafile", &ca.to_string_lossy(), "-q", "1"])
}

fn assert_published(rt: &Runtime, out: &Output, what: &str) {
    assert!(out.status.success(), "{what}: {}\n{}", String::from_utf8_lossy(&out.stderr), rt.log());
}

fn assert_refused(rt: &Runtime, out: &Output, what: &str) {
    assert!(!out.status.success(), "{what} was accepted\n{}", rt.log());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not authori"), "{what}: {stderr}");
}

/// Waits until the log holds `needle` at least `count` times.
fn wait_log_count(rt: &Runtime, needle: &str, count: usize, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if rt.log().matches(needle).count() >= count {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// The number after `prefix` in the last log line holding it (e.g. milliseconds).
fn logged_number(rt: &Runtime, prefix: &str) -> Option<u64> {
    let log = rt.log();
    let line = log.lines().rev().find(|l| l.contains(prefix))?;
    let rest = &line[line.find(prefix)? + prefix.len()..];
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

#[test]
fn leaf_devices_of_the_cloud_scope_connect_online_offline_and_after_a_restart() {
    let started = Instant::now();
    let cloud = ScriptedHub::start(&tinyedge_identities());
    let sections = format!(
        "[upstream]\nurl = \"mqtts://localhost:{}\"\nca = \"{}\"\napi_url = \"https://localhost:{}\"\n\
         scope_refresh_secs = 3600\nbackoff_max_secs = 1\n[agent]\nenabled = false\n",
        cloud.mqtt_port,
        cloud.ca_path.display(),
        cloud.https_port
    );
    let deployment = deployment(&[], &[("up", "FROM /messages/* INTO $upstream")]);
    let mut rt = Runtime::start_with(&deployment, "", &sections);
    // The scope read at start lists the edge device and the configured leaf only: nothing to
    // admit from it.
    assert!(wait_log_count(&rt, "device scope: 0 device(s) in ", 1, Duration::from_secs(10)), "{}", rt.log());
    let listing_ms = logged_number(&rt, "device scope: 0 device(s) in ");

    // Added to the scope after that refresh: its first CONNECT fetches the scope.
    cloud.add_identity(&CloudIdentity::device(SCOPED, SCOPED_KEY_B64).child_of(DEVICE));
    let scoped = credentials(SCOPED, SCOPED_KEY_B64);
    assert_published(&rt, &publish(&rt, &scoped, "first"), "the scoped device, cloud up");
    assert!(rt.log().contains(&format!("device scope: {SCOPED} is in the cloud's device scope")), "{}", rt.log());
    let on_demand_ms = logged_number(&rt, "is in the cloud's device scope (fetched in ");
    // Its telemetry goes up on its own identity (signed with the key the scope gave).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cloud.telemetry().iter().any(|m| m["identity"] == SCOPED && m["payload"] == "first") {
        assert!(
            Instant::now() < deadline,
            "telemetry of {SCOPED} never reached the cloud: {:?}\n{}",
            cloud.telemetry(),
            rt.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let cache = rt.data_dir().join("scope.json");
    let cache_bytes = std::fs::metadata(&cache).expect("scope.json written").len();

    // The cloud goes away: the scoped device connects from the cache, the configured one too.
    cloud.down();
    assert_published(&rt, &publish(&rt, &scoped, "offline"), "the scoped device, cloud down");
    assert_published(&rt, &leaf_credentials_publish(&rt), "the configured leaf, cloud down");

    // A restart with the cloud still down: the cache on disk admits it at once. The refresh
    // period is made short for the rest of the test.
    rt.kill9();
    let config_path = rt.dir.0.join("config.toml");
    let config = std::fs::read_to_string(&config_path).expect("config");
    std::fs::write(&config_path, config.replace("scope_refresh_secs = 3600", "scope_refresh_secs = 1"))
        .expect("config");
    rt.start_again();
    assert!(rt.wait_log("device scope: 1 cached device(s)"), "{}", rt.log());
    assert_published(&rt, &publish(&rt, &scoped, "after restart"), "the scoped device after a restart, cloud down");
    assert_published(&rt, &leaf_credentials_publish(&rt), "the configured leaf after a restart, cloud down");

    // Back, and the device is removed from the scope: refused after the next refresh.
    cloud.up();
    cloud.remove_identity(SCOPED);
    assert!(wait_log_count(&rt, "1 removed", 1, Duration::from_secs(10)), "{}", rt.log());
    assert_refused(&rt, &publish(&rt, &scoped, "removed"), "the removed device");
    assert!(std::fs::metadata(&cache).expect("scope.json").len() < cache_bytes, "the cache no longer holds it");

    // Never in the scope: refused (and it cannot make the hub ask the cloud again at once).
    assert_refused(&rt, &publish(&rt, &credentials(NEVER, SCOPED_KEY_B64), "never"), "a device never in the scope");
    assert!(!cloud.telemetry().iter().any(|m| m["identity"] == NEVER));
    assert_published(&rt, &leaf_credentials_publish(&rt), "the configured leaf, cloud up");

    let per_device = cache_bytes.saturating_sub(std::fs::metadata(&cache).expect("scope.json").len());
    eprintln!(
        "device scope: listing at start {listing_ms:?} ms, on-demand fetch {on_demand_ms:?} ms, cache {cache_bytes} bytes \
         with 1 device ({per_device} bytes for the device); whole test {} ms",
        started.elapsed().as_millis()
    );
}

fn leaf_credentials_publish(rt: &Runtime) -> Output {
    publish(rt, &leaf_credentials(), "configured")
}
