//! The agent against a real containerd (with runc) and a real OCI registry (Debian's
//! docker-registry), both started by the tests on loopback, with images built here from
//! Debian's busybox-static. Each test has its own containerd namespace.

mod common;

use std::time::{Duration, Instant};

use common::containers::{self, Entry, Namespace, Services};
use common::{Runtime, TempDir};
use serde_json::{json, Value};

/// Cool-offs in tests: 300 ms doubling up to 1.2 s (IoT Edge: 10 s up to 300 s).
fn agent_section(ns: &Namespace, extra: &str) -> String {
    format!(
        "[agent]\ncontainerd = \"{}\"\nnamespace = \"{}\"\ncool_off_ms = 300\ncool_off_max_ms = 1200\nstop_timeout_secs = 2\n{extra}",
        ns.services.containerd.socket.display(),
        ns.name
    )
}

fn start(ns: &Namespace, deployment: &str) -> Runtime {
    Runtime::start_with(deployment, "", &agent_section(ns, ""))
}

/// Test images, pushed once per registry: `tests/busybox:v1` and `:v2` (different config),
/// `tests/multi:1` (an index with this host's and a foreign architecture).
fn images(services: &Services) -> (String, String, String) {
    let registry = &services.registry.addr;
    let mut pushed = services.pushed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if !pushed.iter().any(|(r, _)| r == "tests/busybox") {
        let arch = containers::host_arch();
        let sleep = ["/bin/sh", "-c", "echo started; sleep 3600"];
        let v1 = containers::image(vec![containers::busybox_layer()], &["PATH=/bin", "IMAGE_TAG=v1"], &sleep, arch);
        let v2 = containers::image(vec![containers::busybox_layer()], &["PATH=/bin", "IMAGE_TAG=v2"], &sleep, arch);
        let d1 = containers::push(registry, "tests/busybox", "v1", &v1);
        containers::push(registry, "tests/busybox", "v2", &v2);
        let foreign = if arch == "arm64" { "amd64" } else { "arm64" };
        let other = containers::image(vec![containers::busybox_layer()], &["PATH=/bin", "IMAGE_TAG=foreign"], &sleep, foreign);
        containers::push_index(registry, "tests/multi", "1", &[(foreign, &other), (arch, &v1)]);
        pushed.push(("tests/busybox".into(), d1));
    }
    (format!("{registry}/tests/busybox:v1"), format!("{registry}/tests/busybox:v2"), format!("{registry}/tests/multi:1"))
}

fn module(image: &str, create_options: Value, restart_policy: &str) -> Value {
    json!({
        "version": "1.0", "type": "docker", "status": "running", "restartPolicy": restart_policy,
        "settings": {"image": image, "createOptions": if create_options.is_null() { String::new() } else { create_options.to_string() }},
    })
}

fn deployment(modules: Value) -> String {
    json!({"modulesContent": {
        "$edgeAgent": {"properties.desired": {
            "schemaVersion": "1.1",
            "runtime": {"type": "docker", "settings": {}},
            "systemModules": {
                "edgeAgent": {"type": "docker", "settings": {"image": "tinyedge", "createOptions": ""}},
                "edgeHub": {"type": "docker", "status": "running", "restartPolicy": "always", "settings": {"image": "tinyedge", "createOptions": ""}}},
            "modules": modules}},
        "$edgeHub": {"properties.desired": {"schemaVersion": "1.1", "routes": {}, "storeAndForwardConfiguration": {"timeToLiveSecs": 7200}}}}})
    .to_string()
}

fn list(rt: &Runtime) -> Value {
    let out = rt.cli(&["list", "--json"]);
    if !out.status.success() {
        return Value::Null;
    }
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

/// Waits until module `name` in `tinyedge list --json` satisfies `ok`; returns it.
fn wait_module(rt: &Runtime, name: &str, timeout: Duration, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let doc = list(rt);
        let m = doc["modules"][name].clone();
        if ok(&m) {
            return m;
        }
        assert!(Instant::now() < deadline, "module {name} never reached the expected state; last: {m:#}\nlog:\n{}", rt.log());
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn status_is(status: &'static str) -> impl Fn(&Value) -> bool {
    move |m: &Value| m["runtimeStatus"] == status
}

fn pid_of(ns: &Namespace, container: &str) -> Option<u32> {
    ns.tasks().into_iter().find(|(id, _, status)| id == container && status == "RUNNING").map(|(_, pid, _)| pid)
}

fn wait_file(path: &std::path::Path, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if !text.is_empty() {
                return text;
            }
        }
        assert!(Instant::now() < deadline, "{} was never written", path.display());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn two_modules_run_with_env_binds_and_cmd_from_create_options() {
    let ns = Namespace::new("two");
    let (v1, _, _) = images(&ns.services);
    let host = TempDir::new("binds");
    containers::host_file(&host.0, "input.txt", "from the host\n");
    let options = json!({
        "Env": ["FROM_OPTIONS=1", "OVERRIDDEN=options"],
        "Cmd": ["/bin/sh", "-c", "env > /data/env.txt; cat /data/input.txt > /data/seen.txt; echo hello-from-module; sleep 3600"],
        "HostConfig": {"Binds": [format!("{}:/data", host.0.display())]},
    });
    let mut first = module(&v1, options, "always");
    first["env"] = json!({"OVERRIDDEN": {"value": "manifest"}});
    let dep = deployment(json!({"first": first, "second": module(&v1, Value::Null, "always")}));
    let rt = start(&ns, &dep);
    for name in ["first", "second"] {
        wait_module(&rt, name, Duration::from_secs(60), status_is("running"));
    }
    let env = wait_file(&host.0.join("env.txt"), Duration::from_secs(20));
    for needle in [
        "FROM_OPTIONS=1",
        "OVERRIDDEN=manifest",
        "IMAGE_TAG=v1",
        "IOTEDGE_MODULEID=first",
        "IOTEDGE_DEVICEID=gw",
        "IOTEDGE_IOTHUBHOSTNAME=testhub.azure-devices.net",
        "IOTEDGE_GATEWAYHOSTNAME=localhost",
        "IOTEDGE_AUTHSCHEME=sasToken",
        "EdgeHubConnectionString=HostName=testhub.azure-devices.net;DeviceId=gw;ModuleId=first;SharedAccessKey=",
    ] {
        assert!(env.contains(needle), "{needle} missing from the module's environment:\n{env}");
    }
    assert_eq!(wait_file(&host.0.join("seen.txt"), Duration::from_secs(5)), "from the host\n");
    // The image's Cmd applies when createOptions give none: "second" prints "started".
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = rt.cli(&["logs", "second"]);
        if String::from_utf8_lossy(&out.stdout).contains("started") {
            break;
        }
        assert!(Instant::now() < deadline, "no output from second: {:?}", out);
        std::thread::sleep(Duration::from_millis(200));
    }
    let logs = rt.cli(&["logs", "first", "--tail", "1"]);
    assert_eq!(String::from_utf8_lossy(&logs.stdout), "hello-from-module\n");
    let table = String::from_utf8_lossy(&rt.cli(&["list"]).stdout).into_owned();
    assert!(table.starts_with("NAME"), "{table}");
    assert!(table.lines().any(|l| l.starts_with("first") && l.contains("running") && l.contains("tests/busybox:v1")), "{table}");
    let mut containers = ns.containers();
    containers.sort();
    assert_eq!(containers, vec!["first".to_owned(), "second".to_owned()]);
}
