//! Cloud-side benchmark: what the per-identity upstream (`[upstream] protocol = "iothub"`) costs.
//!
//! Run: `cargo run --release -p tinyedge-benches --bin cloud` (builds the release `tinyedge`;
//! needs python3 with amqtt in `target/pycloud` — `./test.sh` installs it — and openssl). Starts
//! the scripted IoT Hub of the tests (tests/cloud/iothub.py) and tinyedge pointed at it, then
//! connects `LEAVES` leaf devices to tinyedge: first idle (local connections only, no cloud
//! traffic: no upstream connection), then each sends one QoS 1 message routed to `$upstream`
//! (one upstream connection each). Prints the upstream connections the cloud sees and tinyedge's
//! RSS at each step, and the memory per upstream connection (TLS client + MQTT session + window).
//! A benchmark, not a test: nothing is asserted.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::*;
use mqttbytes::v4::{Packet, Publish};
use mqttbytes::QoS;

const LEAVES: usize = 100;

const DEPLOYMENT: &str = r#"{"modulesContent":{"$edgeAgent":{"properties.desired":{"schemaVersion":"1.1","runtime":{"type":"docker","settings":{}},
 "systemModules":{"edgeAgent":{"type":"docker","settings":{"image":"x"}},"edgeHub":{"type":"docker","status":"running","restartPolicy":"always","settings":{"image":"x"}}},
 "modules":{}}},
 "$edgeHub":{"properties.desired":{"schemaVersion":"1.1","routes":{"up":"FROM /messages/* INTO $upstream"}}}}}"#;

fn control(port: u16, path: &str) -> serde_json::Value {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("control channel");
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").expect("write");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read");
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or(serde_json::Value::Null)
}

fn connected(port: u16) -> usize {
    control(port, "/connections")["connected"].as_array().map_or(0, Vec::len)
}

fn openssl(dir: &Path, args: &[&str]) {
    let ok = Command::new("openssl").args(args).current_dir(dir).output().map(|o| o.status.success());
    assert!(matches!(ok, Ok(true)), "openssl {args:?} failed");
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf();
    let bin = build_tinyedge(&root);
    let work = std::env::temp_dir().join(format!("tinyedge-bench-cloud-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).expect("work dir");
    // The scripted IoT Hub: a CA, a server certificate for localhost, the registry.
    openssl(
        &work,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/CN=bench CA",
            "-days",
            "2",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ],
    );
    openssl(
        &work,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    std::fs::write(
        work.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n",
    )
    .expect("ext");
    openssl(
        &work,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "server.pem",
        ],
    );
    let b64 = |key: &[u8]| base64::engine::general_purpose::STANDARD.encode(key);
    let mut identities = vec![
        serde_json::json!({"device": DEVICE, "module": null, "key": DEVICE_KEY_B64, "parent": null, "scope": true}),
    ];
    for module in ["$edgeHub", "$edgeAgent"] {
        let key = tinyedge_platform::identity::derive_module_key(&DEVICE_KEY, module);
        identities.push(
            serde_json::json!({"device": DEVICE, "module": module, "key": b64(&key), "parent": null, "scope": true}),
        );
    }
    for i in 0..LEAVES {
        identities.push(serde_json::json!({"device": format!("leaf-{i}"), "module": null, "key": DEVICE_KEY_B64, "parent": DEVICE, "scope": true}));
    }
    std::fs::write(
        work.join("hub.json"),
        serde_json::json!({"hostname": HUB, "edge_device": DEVICE, "identities": identities}).to_string(),
    )
    .expect("hub.json");
    let pycloud = std::env::var_os("TINYEDGE_PYCLOUD").map_or_else(|| root.join("target/pycloud"), Into::into);
    let mut cloud = Command::new("python3")
        .arg(root.join("tests/cloud/iothub.py"))
        .args(["--config", "hub.json", "--cert", "server.pem", "--key", "server.key"])
        .current_dir(&work)
        .env("PYTHONPATH", &pycloud)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 tests/cloud/iothub.py");
    let mut ready = String::new();
    BufReader::new(cloud.stdout.take().expect("stdout")).read_line(&mut ready).expect("READY line");
    let port_of = |name: &str| -> u16 {
        ready
            .split_whitespace()
            .find_map(|f| f.strip_prefix(&format!("{name}=")))
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no {name} port in {ready:?} (is amqtt installed in {}?)", pycloud.display()))
    };
    let (mqtt, control_port) = (port_of("mqtt"), port_of("control"));
    let extra = format!(
        "[upstream]\nurl = \"mqtts://localhost:{mqtt}\"\nca = \"{}\"\nmax_connections = {}\n",
        work.join("ca.pem").display(),
        LEAVES + 10
    );
    let te = start_tinyedge_deployment(&bin, &work, &extra, DEPLOYMENT, |_| {});
    let wait = |want: usize| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while connected(control_port) < want && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
        std::thread::sleep(Duration::from_millis(500));
        connected(control_port)
    };
    let base_links = wait(2);
    let (base_rss, _) = memory_kib(te.child.id());
    let mut leaves: Vec<Client> = (0..LEAVES)
        .map(|i| Client::connect(te.port, &format!("leaf-{i}"), tinyedge_leaf_creds(&format!("leaf-{i}"))))
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let idle_links = connected(control_port);
    let (idle_rss, _) = memory_kib(te.child.id());
    for (i, leaf) in leaves.iter_mut().enumerate() {
        let mut publish = Publish::new(format!("devices/leaf-{i}/messages/events/"), QoS::AtLeastOnce, vec![b'x'; 64]);
        publish.pkid = 1;
        publish.write(&mut leaf.out).expect("encode");
        leaf.flush();
        assert!(matches!(leaf.read(), Packet::PubAck(_)), "PUBACK");
    }
    let busy_links = wait(base_links + LEAVES);
    let (busy_rss, _) = memory_kib(te.child.id());
    let per_local = idle_rss.saturating_sub(base_rss) as f64 / LEAVES as f64;
    let per_link = busy_rss.saturating_sub(idle_rss) as f64 / busy_links.saturating_sub(idle_links).max(1) as f64;
    let date = Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let report = format!(
        "# Cloud side (`protocol = \"iothub\"`), {date}\n\n{LEAVES} leaf devices, the scripted IoT Hub (tests/cloud/iothub.py) on loopback, TLS; release build.\n\n\
         | step | upstream connections | tinyedge RSS (KiB) |\n|---|---|---|\n\
         | started (`$edgeHub`, `$edgeAgent`) | {base_links} | {base_rss} |\n\
         | {LEAVES} leaf devices connected, idle | {idle_links} | {idle_rss} |\n\
         | each sent one message to `$upstream` | {busy_links} | {busy_rss} |\n\n\
         Per local leaf connection: {per_local:.1} KiB; per upstream connection: {per_link:.1} KiB.\n"
    );
    print!("{report}");
    std::fs::write(root.join("benches/results/cloud.md"), &report).expect("write benches/results/cloud.md");
    drop(leaves);
    drop(te);
    let _ = cloud.kill();
    let _ = cloud.wait();
    let _ = std::fs::remove_dir_all(&work);
}
