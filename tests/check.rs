//! `tinyedge check` and `tinyedge support-bundle` against the real binary: a good setup with
//! the scripted IoT Hub as upstream passes (exit 0; the upstream check connects, verifies TLS
//! and gets CONNACK 0 once the runtime is stopped), and each failure the check names fails it
//! with exit 1 — an expired certificate (made with openssl), containerd down, a data_dir that
//! cannot be written, an unreachable upstream, a key IoT Hub refuses. The support bundle is a
//! tar.gz Debian's tar lists, with the expected files and no secret in it.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::iothub::{tinyedge_identities, ScriptedHub};
use common::*;
use serde_json::Value;

fn tinyedge(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tinyedge"))
        .current_dir(dir)
        .arg("--config")
        .arg(dir.join("config.toml"))
        .args(args)
        .env_remove("TINYEDGE_CONFIG")
        .output()
        .expect("run tinyedge")
}

/// `check --json` in `dir`: the exit code and the checks by name.
fn check_json(dir: &Path) -> (i32, Vec<Value>) {
    let out = tinyedge(dir, &["check", "--json"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let doc: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("check --json: {e}: {stdout}"));
    (out.status.code().unwrap_or(-1), doc.as_array().cloned().expect("an array"))
}

fn named<'a>(checks: &'a [Value], name: &str) -> &'a Value {
    checks.iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("no {name} check in {checks:?}"))
}

fn failed(checks: &[Value]) -> Vec<String> {
    checks.iter().filter(|c| c["result"] == "fail").map(|c| c["name"].as_str().unwrap_or("").to_owned()).collect()
}

/// A config in `dir` like the test runtime's (free ports, the test device key, a leaf device)
/// with `sections` appended.
fn write_config(dir: &Path, data_dir: &str, sections: &str) {
    let config = format!(
        "hostname = \"localhost\"\niothub_hostname = \"{HUB}\"\ndevice_id = \"{DEVICE}\"\n\
         device_key = \"{DEVICE_KEY_B64}\"\ndata_dir = \"{data_dir}\"\n\
         [hub]\nmqtt = \"127.0.0.1:{}\"\nmqtts = \"127.0.0.1:{}\"\nhttps = \"127.0.0.1:{}\"\n\
         [metrics]\nlisten = \"127.0.0.1:{}\"\n[[devices]]\nid = \"{LEAF}\"\nkey = \"{LEAF_KEY_B64}\"\n{sections}",
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    std::fs::write(dir.join("config.toml"), config).expect("write config");
}

const NO_AGENT: &str = "[agent]\nenabled = false\n";

#[test]
fn good_setup_passes_and_the_upstream_check_authenticates_with_the_scripted_iot_hub() {
    let hub = ScriptedHub::start(&tinyedge_identities());
    let upstream = format!(
        "[upstream]\nurl = \"mqtts://localhost:{}\"\nca = \"{}\"\nbackoff_max_secs = 1\n{NO_AGENT}",
        hub.mqtt_port,
        hub.ca_path.display()
    );
    // A module with desired properties in the deployment: its twin is kept under data/twins.
    let manifest = deployment(&["filter"], &[("up", "FROM /messages/* INTO $upstream")]).replace(
        r#""$edgeHub":{"properties.desired""#,
        r#""filter":{"properties.desired":{"threshold":20}},"$edgeHub":{"properties.desired""#,
    );
    let mut rt = Runtime::start_with(&manifest, "", &upstream);
    assert!(hub.wait_connected(&format!("{DEVICE}/$edgeHub"), Duration::from_secs(15)), "log:\n{}", rt.log());
    // The status file says so within its 2 s period.
    rt.wait_status("upstream.connected true", Duration::from_secs(6));

    let out = rt.cli(&["check"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{text}");
    let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with(' ') && !l.starts_with("summary:")).collect();
    assert!(lines.len() >= 15, "{text}");
    for line in &lines {
        assert!(line.starts_with("pass  ") || line.starts_with("warn  "), "{line}\n{text}");
    }
    assert!(text.lines().last().is_some_and(|l| l.starts_with("summary: ") && l.ends_with(" 0 fail")), "{text}");
    let upstream_line = lines.iter().find(|l| l.split_whitespace().nth(1) == Some("upstream")).expect("upstream line");
    assert!(
        upstream_line.contains("TLS verified") && upstream_line.contains("the running tinyedge is connected"),
        "{upstream_line}"
    );

    let (code, checks) = check_json(&rt.dir.0);
    assert_eq!(code, 0, "{checks:?}");
    for name in [
        "config",
        "runtime",
        "clock",
        "hostname",
        "device-key",
        "edge-ca-cert",
        "server-cert",
        "upstream-ca-cert",
        "port-mqtt",
        "port-mqtts",
        "port-https",
        "data-dir",
        "disk-space",
        "store",
        "containerd",
        "cgroups",
        "upstream",
    ] {
        let check = named(&checks, name);
        assert!(check["result"] == "pass" || check["result"] == "warn", "{check}");
        assert!(check["detail"].is_string() && (check["result"] == "pass") == check["hint"].is_null(), "{check}");
    }
    assert_eq!(named(&checks, "runtime")["result"], "pass");
    assert!(named(&checks, "port-mqtt")["detail"].as_str().is_some_and(|d| d.contains("in use by tinyedge")));
    assert!(named(&checks, "server-cert")["detail"]
        .as_str()
        .is_some_and(|d| d.contains("verifies for localhost against the edge CA")));
    assert!(named(&checks, "containerd")["detail"].as_str().is_some_and(|d| d.starts_with("skipped: ")));

    support_bundle_holds_the_expected_files_and_no_secret(&rt);

    // With the runtime stopped, the check makes its own connection: TCP, TLS, CONNECT, CONNACK 0.
    rt.kill9();
    let (code, checks) = check_json(&rt.dir.0);
    assert_eq!(code, 0, "{checks:?}");
    let detail = named(&checks, "upstream")["detail"].as_str().unwrap_or("").to_owned();
    assert!(
        detail.contains("TLS verified") && detail.contains("CONNECT as gw/$edgeHub accepted (CONNACK 0)"),
        "{detail}"
    );
    assert_eq!(named(&checks, "runtime")["result"], "warn");
    assert!(
        named(&checks, "store")["detail"].as_str().is_some_and(|d| d.contains("every record reads back")),
        "{checks:?}"
    );

    // A key IoT Hub does not know is refused, and said so.
    let config = std::fs::read_to_string(rt.dir.0.join("config.toml")).expect("config");
    let wrong = config.replace(DEVICE_KEY_B64, "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktMTI=");
    std::fs::write(rt.dir.0.join("config.toml"), wrong).expect("write config");
    let (code, checks) = check_json(&rt.dir.0);
    assert_eq!((code, failed(&checks)), (1, vec!["upstream".to_owned()]), "{checks:?}");
    let upstream = named(&checks, "upstream");
    assert!(upstream["detail"].as_str().is_some_and(|d| d.contains("not authorized")), "{upstream}");
    assert!(upstream["hint"].as_str().is_some_and(|h| h.contains("device key")), "{upstream}");
}

/// `support-bundle --output FILE` while the runtime runs: Debian's tar lists it; it holds the
/// config, check, status and versions files, the twins and a module's log; no key, no `sig=`.
fn support_bundle_holds_the_expected_files_and_no_secret(rt: &Runtime) {
    // A module log as the agent keeps them, with secrets a careless module printed.
    let logs = rt.data_dir().join("agent/logs");
    std::fs::create_dir_all(&logs).expect("logs dir");
    let leaked = format!(
        "starting with HostName={HUB};DeviceId={DEVICE};ModuleId=m;SharedAccessKey={DEVICE_KEY_B64}\n\
         token SharedAccessSignature sr={HUB}%2Fdevices%2F{DEVICE}&sig=c2lnbmF0dXJl%3D&se=1\nready\n"
    );
    std::fs::write(logs.join("filter.log"), leaked).expect("module log");

    let bundle = rt.dir.0.join("bundle.tar.gz");
    let out = rt.cli(&["support-bundle", "--output", bundle.to_str().expect("utf8 path")]);
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("support bundle: "), "{out:?}");

    let listed = Command::new("tar").arg("-tzf").arg(&bundle).output().expect("tar -tzf");
    assert!(listed.status.success(), "tar -tzf: {}", String::from_utf8_lossy(&listed.stderr));
    let names = String::from_utf8_lossy(&listed.stdout).into_owned();
    for file in [
        "MANIFEST.txt",
        "check.json",
        "versions.txt",
        "config.json",
        "config-effective.txt",
        "deployment.json",
        "status.json",
        "store-stats.txt",
        "logs/modules/filter.log",
    ] {
        assert!(names.lines().any(|l| l == format!("tinyedge-support-bundle/{file}")), "{file} missing:\n{names}");
    }
    assert!(names.lines().any(|l| l.starts_with("tinyedge-support-bundle/twins/") && l.ends_with(".twin")), "{names}");

    let out_dir = rt.dir.0.join("unpacked");
    std::fs::create_dir_all(&out_dir).expect("dir");
    let unpacked = Command::new("tar").arg("-xzf").arg(&bundle).arg("-C").arg(&out_dir).status().expect("tar -xzf");
    assert!(unpacked.success());
    for secret in [DEVICE_KEY_B64, LEAF_KEY_B64, "sig=", "c2lnbmF0dXJl"] {
        let grep = Command::new("grep").args(["-r", "-l", "-F", secret]).arg(&out_dir).output().expect("grep");
        assert_eq!(grep.status.code(), Some(1), "{secret} found in {}", String::from_utf8_lossy(&grep.stdout));
    }
    let root = out_dir.join("tinyedge-support-bundle");
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("config.json")).expect("config.json")).expect("JSON");
    assert_eq!(config["device_key"], "<redacted>");
    assert_eq!(config["devices"][0]["key"], "<redacted>");
    assert_eq!(config["device_id"], DEVICE);
    let module_log = std::fs::read_to_string(root.join("logs/modules/filter.log")).expect("module log");
    assert!(module_log.contains("SharedAccessKey=<redacted>") && module_log.ends_with("ready\n"), "{module_log}");
    let check: Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("check.json")).expect("check.json")).expect("JSON");
    assert!(check.as_array().is_some_and(|a| a.len() >= 15));
    let versions = std::fs::read_to_string(root.join("versions.txt")).expect("versions");
    assert!(versions.starts_with("tinyedge ") && versions.contains("\nkernel: Linux "), "{versions}");
}

#[test]
fn an_expired_certificate_fails_the_check() {
    // A runtime makes the edge CA and server certificate; then an expired one replaces the latter.
    let mut rt = Runtime::start(&deployment(&[], &[]), "");
    rt.kill9();
    let certs = rt.data_dir().join("certs");
    let run = |args: &[&str]| {
        let out =
            Command::new("openssl").args(args).current_dir(&certs).output().expect("openssl (./test.sh installs it)");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    std::fs::write(certs.join("index.txt"), "").expect("index");
    std::fs::write(certs.join("serial"), "01\n").expect("serial");
    std::fs::write(
        certs.join("ca.cnf"),
        "[ca]\ndefault_ca = d\n[d]\ndatabase = index.txt\nnew_certs_dir = .\nserial = serial\ndefault_md = sha256\n\
         policy = p\n[p]\ncommonName = supplied\n",
    )
    .expect("ca.cnf");
    run(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "server.key.pem",
        "-subj",
        "/CN=localhost",
        "-out",
        "server.csr",
    ]);
    run(&[
        "ca",
        "-batch",
        "-config",
        "ca.cnf",
        "-selfsign",
        "-keyfile",
        "server.key.pem",
        "-in",
        "server.csr",
        "-out",
        "server.pem",
        "-startdate",
        "20200101000000Z",
        "-enddate",
        "20200201000000Z",
        "-notext",
    ]);

    let out = tinyedge(&rt.dir.0, &["check"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 check(s) failed"), "{out:?}");
    let line = text.lines().find(|l| l.starts_with("fail  server-cert")).unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains("CN=localhost, expired on 2020-02-01"), "{line}");
    let (code, checks) = check_json(&rt.dir.0);
    assert_eq!((code, failed(&checks)), (1, vec!["server-cert".to_owned()]), "{checks:?}");
    assert!(named(&checks, "server-cert")["hint"].as_str().is_some_and(|h| h.contains("re-issues")), "{checks:?}");
}

#[test]
fn containerd_down_fails_the_check() {
    let dir = TempDir::new("check");
    let socket = dir.0.join("no-containerd/containerd.sock");
    write_config(&dir.0, "data", &format!("[agent]\nenabled = true\ncontainerd = \"{}\"\n", socket.display()));
    let (code, checks) = check_json(&dir.0);
    assert_eq!((code, failed(&checks)), (1, vec!["containerd".to_owned()]), "{checks:?}");
    let containerd = named(&checks, "containerd");
    assert!(containerd["detail"].as_str().is_some_and(|d| d.contains("no such socket")), "{containerd}");
    assert!(containerd["hint"].as_str().is_some_and(|h| h.contains("start containerd")), "{containerd}");
}

#[test]
fn a_data_dir_that_cannot_be_written_fails_the_check() {
    // Tests run as root, where mode bits do not stop writes: data_dir lies below a regular file.
    let dir = TempDir::new("check");
    std::fs::write(dir.0.join("blocker"), "a file where a directory should be\n").expect("blocker");
    write_config(&dir.0, "blocker/data", NO_AGENT);
    let (code, checks) = check_json(&dir.0);
    assert_eq!((code, failed(&checks)), (1, vec!["data-dir".to_owned()]), "{checks:?}");
    let data_dir = named(&checks, "data-dir");
    assert!(data_dir["detail"].as_str().is_some_and(|d| d.contains("blocker is not a directory")), "{data_dir}");
}

#[test]
fn an_unreachable_upstream_fails_the_check() {
    let dir = TempDir::new("check");
    let closed = free_port(); // bound and released: nothing listens there
    write_config(&dir.0, "data", &format!("[upstream]\nurl = \"mqtt://127.0.0.1:{closed}\"\n{NO_AGENT}"));
    let out = tinyedge(&dir.0, &["check"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{text}");
    let line = text.lines().find(|l| l.starts_with("fail  upstream")).unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains(&format!("cannot connect to 127.0.0.1:{closed}")), "{line}");
    let (code, checks) = check_json(&dir.0);
    assert_eq!((code, failed(&checks)), (1, vec!["upstream".to_owned()]), "{checks:?}");
    assert!(named(&checks, "upstream")["hint"].as_str().is_some_and(|h| h.contains("firewall")));
}

#[test]
fn a_config_that_does_not_load_is_a_failed_check() {
    let dir = TempDir::new("check");
    std::fs::write(dir.0.join("config.toml"), "[hub]\nmqttt = \"127.0.0.1:1\"\n").expect("config");
    let (code, checks) = check_json(&dir.0);
    assert_eq!(code, 1);
    assert_eq!(checks.len(), 1);
    assert_eq!(named(&checks, "config")["result"], "fail");
    assert!(named(&checks, "config")["detail"].as_str().is_some_and(|d| d.contains("hub.mqttt")), "{checks:?}");
}
