//! The agent against a real containerd (with runc) and a real OCI registry (Debian's
//! docker-registry), both started by the tests on loopback, with images built here from
//! Debian's busybox-static. Each test has its own containerd namespace.

mod common;

use std::time::{Duration, Instant};

use common::containers::{self, Entry, Namespace, Services};
use common::{eventually, Runtime, TempDir};
use serde_json::{json, Value};

/// Cool-offs in tests: 300 ms doubling up to 1.2 s (IoT Edge: 10 s up to 300 s).
fn agent_section(ns: &Namespace, extra: &str) -> String {
    format!(
        "[agent]\ncontainerd = \"{}\"\nnamespace = \"{}\"\ncool_off_ms = 300\ncool_off_max_ms = 1200\nstop_timeout_secs = 2\n{extra}",
        ns.containerd().socket.display(),
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
        let other =
            containers::image(vec![containers::busybox_layer()], &["PATH=/bin", "IMAGE_TAG=foreign"], &sleep, foreign);
        containers::push_index(registry, "tests/multi", "1", &[(foreign, &other), (arch, &v1)]);
        pushed.push(("tests/busybox".into(), d1));
    }
    (
        format!("{registry}/tests/busybox:v1"),
        format!("{registry}/tests/busybox:v2"),
        format!("{registry}/tests/multi:1"),
    )
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
        assert!(
            Instant::now() < deadline,
            "module {name} never reached the expected state; last: {m:#}\nlog:\n{}",
            rt.log()
        );
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
        "Labels": {"com.example.owner": "tests"},
        "Cmd": ["/bin/sh", "-c", "env > /data/env.txt; cat /data/input.txt > /data/seen.txt; test -S /var/run/iotedge/workload.sock && echo yes > /data/workload.txt; echo hello-from-module; sleep 3600"],
        "HostConfig": {"Binds": [format!("{}:/data", host.0.display())], "Memory": 67_108_864, "NanoCpus": 500_000_000},
    });
    let mut first = module(&v1, Value::Null, "always");
    // createOptions split into chunks, as IoT Hub stores long ones (createOptions01, 02, …).
    let text = options.to_string();
    let (head, rest) = text.split_at(40);
    let (middle, tail) = rest.split_at(rest.len() / 2);
    first["settings"]["createOptions"] = json!(head);
    first["settings"]["createOptions01"] = json!(middle);
    first["settings"]["createOptions02"] = json!(tail);
    first["env"] = json!({"OVERRIDDEN": {"value": "manifest"}});
    first["startupOrder"] = json!(2);
    // An option tinyedge does not translate is reported, not dropped silently.
    let mut second = module(&v1, json!({"HostConfig": {"CapAdd": ["NET_ADMIN"]}}), "always");
    second["startupOrder"] = json!(1);
    let dep = deployment(json!({"first": first, "second": second}));
    let rt = start(&ns, &dep);
    for name in ["first", "second"] {
        wait_module(&rt, name, Duration::from_secs(60), status_is("running"));
    }
    let doc = list(&rt);
    let started = |m: &str| doc["modules"][m]["lastStartTimeUtc"].as_str().unwrap_or_default().to_owned();
    assert!(
        started("second") <= started("first"),
        "startupOrder 1 starts before 2: {} vs {}",
        started("second"),
        started("first")
    );
    let second = doc["modules"]["second"].clone();
    assert!(second["statusDescription"].as_str().unwrap_or_default().contains("HostConfig.CapAdd"), "{second:#}");
    assert!(rt.log().contains("createOptions not applied: HostConfig.CapAdd"), "{}", rt.log());
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
    assert_eq!(
        wait_file(&host.0.join("workload.txt"), Duration::from_secs(5)),
        "yes\n",
        "the module's workload API socket is mounted"
    );
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
    assert!(
        table.lines().any(|l| l.starts_with("first") && l.contains("running") && l.contains("tests/busybox:v1")),
        "{table}"
    );
    let mut containers = ns.containers();
    containers.sort();
    assert_eq!(containers, vec!["first".to_owned(), "second".to_owned()]);
    let info = String::from_utf8_lossy(&ns.ctr(&["containers", "info", "first"]).stdout).into_owned();
    assert!(
        info.contains("\"com.example.owner\": \"tests\"") && info.contains("\"tinyedge.module\": \"first\""),
        "{info}"
    );
    // HostConfig.Memory and NanoCpus reach the module's cgroup (v1 or v2 layout).
    let read =
        |paths: &[String]| paths.iter().find_map(|p| std::fs::read_to_string(p).ok()).map(|t| t.trim().to_owned());
    let cg = |v1: &str, v2: &str| {
        [
            format!("/sys/fs/cgroup/{v1}/{}/first/{}", ns.name, v2.split('|').next().unwrap_or_default()),
            format!("/sys/fs/cgroup/{}/first/{}", ns.name, v2.split('|').nth(1).unwrap_or_default()),
        ]
    };
    let memory = read(&cg("memory", "memory.limit_in_bytes|memory.max")).expect("the module's memory cgroup");
    assert_eq!(memory, "67108864");
    let quota = read(&cg("cpu,cpuacct", "cpu.cfs_quota_us|cpu.max"))
        .or_else(|| read(&cg("cpu", "cpu.cfs_quota_us|cpu.max")))
        .expect("cpu cgroup");
    assert!(quota == "50000" || quota.starts_with("50000 "), "cpu quota {quota}");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(rt.data_dir().join("mgmt.sock")).expect("management socket").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the management socket must be root-only");
}

#[test]
fn agent_disabled_runs_the_hub_alone() {
    let dep = deployment(json!({"m": module("localhost:5000/x:1", Value::Null, "always")}));
    let rt = Runtime::start(&dep, "");
    assert!(rt.wait_log("agent disabled ([agent] enabled = false): the hub runs alone"), "{}", rt.log());
    // The management socket is the runtime's (deployments still reach the hub); the agent's
    // report is not there.
    assert!(rt.wait_log("management socket"), "{}", rt.log());
    let out = rt.cli(&["list"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("409") && err.contains("agent is disabled"), "{err}");
}

fn kill9(ns: &Namespace, container: &str) {
    let out = ns.ctr(&["tasks", "kill", "-s", "SIGKILL", container]);
    assert!(out.status.success(), "ctr kill {container}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn restart_policies_after_sigkill_and_clean_exit() {
    let ns = Namespace::new("policies");
    let (v1, _, _) = images(&ns.services);
    let clean = json!({"Cmd": ["/bin/sh", "-c", "sleep 1; exit 0"]});
    let crash = json!({"Cmd": ["/bin/sh", "-c", "exit 3"]});
    let dep = deployment(json!({
        "alw": module(&v1, Value::Null, "always"),
        "onf": module(&v1, Value::Null, "on-failure"),
        "nev": module(&v1, Value::Null, "never"),
        "clean": module(&v1, clean, "on-failure"),
        "crashy": module(&v1, crash, "always"),
    }));
    let rt = Runtime::start_with(&dep, "", &agent_section(&ns, "max_restarts = 3\n"));
    for name in ["alw", "onf", "nev"] {
        wait_module(&rt, name, Duration::from_secs(60), status_is("running"));
    }
    let before: Vec<u32> = ["alw", "onf", "nev"].iter().map(|m| pid_of(&ns, m).expect("running task")).collect();
    for name in ["alw", "onf", "nev"] {
        kill9(&ns, name);
    }
    for (i, name) in ["alw", "onf"].iter().enumerate() {
        let m = wait_module(&rt, name, Duration::from_secs(20), |m| {
            m["runtimeStatus"] == "running" && m["restartCount"] == 1
        });
        assert_ne!(m["lastRestartTimeUtc"], "0001-01-01T00:00:00Z");
        let pid = pid_of(&ns, name).expect("restarted task");
        assert_ne!(pid, before[i], "{name} was not restarted");
    }
    let nev = wait_module(&rt, "nev", Duration::from_secs(10), status_is("failed"));
    assert_eq!(nev["exitCode"], 137);
    std::thread::sleep(Duration::from_secs(2));
    let nev = list(&rt)["modules"]["nev"].clone();
    assert_eq!((nev["runtimeStatus"].as_str(), nev["restartCount"].as_u64()), (Some("failed"), Some(0)), "{nev:#}");
    assert_eq!(pid_of(&ns, "nev"), None, "never must stay down");
    // A clean exit under on-failure stays stopped.
    let c = wait_module(&rt, "clean", Duration::from_secs(20), status_is("stopped"));
    assert_eq!((c["exitCode"].as_i64(), c["restartCount"].as_u64()), (Some(0), Some(0)), "{c:#}");
    // A module that keeps crashing backs off and is failed after max_restarts (3 here).
    let crashy = wait_module(&rt, "crashy", Duration::from_secs(30), |m| m["runtimeStatus"] == "failed");
    assert_eq!((crashy["exitCode"].as_i64(), crashy["restartCount"].as_u64()), (Some(3), Some(3)), "{crashy:#}");
    assert!(rt.log().contains("exited with code 3: backoff"), "no backoff in the log:\n{}", rt.log());
}

#[test]
fn failing_health_check_restarts_under_on_unhealthy() {
    let ns = Namespace::new("health");
    let (v1, _, _) = images(&ns.services);
    // Healthy for about a second after each start, then the probe fails.
    let sick = json!({
        "Cmd": ["/bin/sh", "-c", "touch /tmp/ok; sleep 1; rm /tmp/ok; sleep 3600"],
        "Healthcheck": {"Test": ["CMD-SHELL", "test -f /tmp/ok"], "Interval": 200_000_000u64, "Timeout": 1_000_000_000u64, "Retries": 2},
    });
    let fine = json!({
        "Healthcheck": {"Test": ["CMD", "/bin/true"], "Interval": 200_000_000u64, "Retries": 2},
    });
    let dep = deployment(json!({"sick": module(&v1, sick, "on-unhealthy"), "fine": module(&v1, fine, "on-unhealthy")}));
    let rt = start(&ns, &dep);
    wait_module(&rt, "sick", Duration::from_secs(60), status_is("running"));
    let first = pid_of(&ns, "sick").expect("sick runs");
    let m = wait_module(&rt, "sick", Duration::from_secs(30), |m| m["restartCount"].as_u64() >= Some(1));
    assert!(rt.log().contains("module sick: health check failed"), "{}", rt.log());
    assert!(rt.log().contains("unhealthy: restart 1 of"), "{}", rt.log());
    wait_module(&rt, "sick", Duration::from_secs(10), status_is("running"));
    assert_ne!(pid_of(&ns, "sick"), Some(first), "sick was not restarted: {m:#}");
    let fine = list(&rt)["modules"]["fine"].clone();
    assert_eq!((fine["runtimeStatus"].as_str(), fine["restartCount"].as_u64()), (Some("running"), Some(0)), "{fine:#}");
    assert!(rt.log().contains("module fine: healthy"), "{}", rt.log());
}

/// Writes `dep` and runs `tinyedge deploy`; returns (success, stdout + stderr).
fn deploy(rt: &Runtime, dep: &str) -> (bool, String) {
    let file = rt.dir.0.join(format!("deploy-{}.json", common::unix_now()));
    std::fs::write(&file, dep).expect("write deployment");
    let out = rt.cli(&["deploy", file.to_str().expect("utf-8 path")]);
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn redeploy_recreates_changed_stops_removes_and_rejects_bad_manifests() {
    let ns = Namespace::new("redeploy");
    let (v1, v2, _) = images(&ns.services);
    let modules = json!({
        "a": module(&v1, Value::Null, "always"), "b": module(&v1, Value::Null, "always"),
        "c": module(&v1, Value::Null, "always"), "d": module(&v1, Value::Null, "always"),
    });
    let rt = start(&ns, &deployment(modules.clone()));
    for name in ["a", "b", "c", "d"] {
        wait_module(&rt, name, Duration::from_secs(60), status_is("running"));
    }
    let pid = |m: &str| pid_of(&ns, m).expect("running");
    let (a0, b0, c0, d0) = (pid("a"), pid("b"), pid("c"), pid("d"));
    let version = list(&rt)["lastDesiredVersion"].clone();

    // Rejected deployments change nothing.
    let mut bad = modules.clone();
    bad["b"]["restartPolicy"] = json!("sometimes");
    let (ok, text) = deploy(&rt, &deployment(bad));
    assert!(!ok && text.contains("400") && text.contains("modules.b.restartPolicy"), "{text}");
    let mut bad_options = modules.clone();
    bad_options["c"]["settings"]["createOptions"] = json!("{\"HostConfig\":{\"Memory\":\"lots\"}}");
    let (ok, text) = deploy(&rt, &deployment(bad_options));
    assert!(!ok && text.contains("400") && text.contains("HostConfig.Memory"), "{text}");
    let (ok, text) =
        deploy(&rt, &deployment(modules.clone()).replace("\"schemaVersion\":\"1.1\"", "\"schemaVersion\":\"9.0\""));
    assert!(!ok && text.contains("412"), "{text}");
    let (ok, text) = deploy(&rt, "{}");
    assert!(!ok && text.contains("417"), "{text}");
    let (ok, text) = deploy(&rt, "{not json");
    assert!(!ok && text.contains("400"), "{text}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!((pid("a"), pid("b"), pid("c")), (a0, b0, c0), "a rejected deployment changed running modules");
    let doc = list(&rt);
    assert_eq!(doc["lastDesiredVersion"], version);
    assert_eq!(doc["lastDesiredStatus"]["code"], 400, "the last refusal is reported: {:#}", doc["lastDesiredStatus"]);

    // A new image that cannot be pulled leaves the running container alone.
    let mut missing = modules.clone();
    missing["a"]["settings"]["image"] = json!(v1.replace(":v1", ":v404"));
    let (ok, text) = deploy(&rt, &deployment(missing));
    assert!(ok, "{text}");
    let a = wait_module(&rt, "a", Duration::from_secs(20), |m| {
        m["statusDescription"].as_str().unwrap_or_default().contains("not found")
    });
    assert_eq!(a["runtimeStatus"], "running", "{a:#}");
    assert_eq!(pid("a"), a0, "a failed pull must not take the old container down");

    // a: new image → recreated; b: stopped; c: removed; d: unchanged.
    let mut next = json!({"a": module(&v2, Value::Null, "always"), "b": module(&v1, Value::Null, "always"), "d": module(&v1, Value::Null, "always")});
    next["b"]["status"] = json!("stopped");
    let (ok, text) = deploy(&rt, &deployment(next));
    assert!(ok && text.starts_with("200"), "{text}");
    assert_eq!(list(&rt)["lastDesiredStatus"]["code"], 200);
    let a = wait_module(&rt, "a", Duration::from_secs(60), |m| {
        m["runtimeStatus"] == "running" && m["settings"]["image"] == v2.as_str()
    });
    assert_ne!(pid("a"), a0, "a was not recreated: {a:#}");
    let info = ns.ctr(&["containers", "info", "a"]);
    assert!(String::from_utf8_lossy(&info.stdout).contains("tests/busybox:v2"), "container a is not from v2");
    wait_module(&rt, "b", Duration::from_secs(20), status_is("stopped"));
    assert_eq!(pid_of(&ns, "b"), None, "b still runs");
    let deadline = Instant::now() + Duration::from_secs(20);
    while ns.containers().contains(&"c".to_owned()) {
        assert!(Instant::now() < deadline, "c's container was not removed; log:\n{}", rt.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(list(&rt)["modules"].get("c").is_none());
    assert!(ns.containers().contains(&"b".to_owned()), "stopping must keep the container");
    assert_eq!(pid("d"), d0, "an unchanged module must not be touched by a new deployment");
    // b (stopped) still uses v1, a uses v2: both images stay.
    let images = |ns: &Namespace| String::from_utf8_lossy(&ns.ctr(&["images", "ls", "-q"]).stdout).into_owned();
    assert!(images(&ns).contains(&v1) && images(&ns).contains(&v2), "{}", images(&ns));
    // With no modules left, the agent's images are deleted (disk is bounded by what runs).
    let (ok, text) = deploy(&rt, &deployment(json!({})));
    assert!(ok, "{text}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ns.containers().is_empty() || !images(&ns).trim().is_empty() {
        assert!(
            Instant::now() < deadline,
            "containers {:?} / images {} left; log:\n{}",
            ns.containers(),
            images(&ns),
            rt.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn pull_policy_never_pins_indexes_and_tampered_blobs() {
    let ns = Namespace::new("images");
    let (_, _, multi) = images(&ns.services);
    let registry = ns.services.registry.addr.clone();
    let digest = ns
        .services
        .pushed
        .lock()
        .expect("lock")
        .iter()
        .find(|(r, _)| r == "tests/busybox")
        .map(|(_, d)| d.clone())
        .expect("pushed");
    // A layer of its own, so tampering with it cannot touch the other images.
    let unique = format!("tamper-{}-{}", std::process::id(), common::unix_now());
    let tampered = containers::image(
        vec![containers::busybox_layer(), vec![Entry::File("marker.txt".into(), 0o644, unique.clone().into_bytes())]],
        &["PATH=/bin"],
        &["/bin/sh", "-c", "sleep 3600"],
        containers::host_arch(),
    );
    containers::push(&registry, "tests/tampered", "1", &tampered);
    let layer = containers::sha256(&tampered.layers[1].0);
    let file = ns.services.registry.blob_file(&layer);
    let mut bytes = std::fs::read(&file).expect("blob in registry storage");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&file, bytes).expect("tamper with the blob");

    let mut absent = module(&format!("{registry}/tests/never-pushed:1"), Value::Null, "always");
    absent["imagePullPolicy"] = json!("never");
    let dep = deployment(json!({
        "absent": absent,
        "multi": module(&multi, json!({"Cmd": ["/bin/sh", "-c", "echo tag=$IMAGE_TAG; sleep 3600"]}), "always"),
        "pinned": module(&format!("{registry}/tests/busybox@{digest}"), Value::Null, "always"),
        "tampered": module(&format!("{registry}/tests/tampered:1"), Value::Null, "always"),
    }));
    let rt = start(&ns, &dep);
    let m = wait_module(&rt, "absent", Duration::from_secs(30), status_is("failed"));
    assert!(m["statusDescription"].as_str().unwrap_or_default().contains("not on the device"), "{m:#}");
    wait_module(&rt, "multi", Duration::from_secs(60), status_is("running"));
    wait_module(&rt, "pinned", Duration::from_secs(60), status_is("running"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(&rt.cli(&["logs", "multi"]).stdout).contains("tag=v1") {
        assert!(
            Instant::now() < deadline,
            "multi did not run this platform's image: {}",
            String::from_utf8_lossy(&rt.cli(&["logs", "multi"]).stdout)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let t = wait_module(&rt, "tampered", Duration::from_secs(30), status_is("failed"));
    let description = t["statusDescription"].as_str().unwrap_or_default();
    assert!(description.contains("digest mismatch") && description.contains(&layer), "{t:#}");
    let content = ns.ctr(&["content", "ls", "-q"]);
    assert!(!String::from_utf8_lossy(&content.stdout).contains(&layer), "the tampered blob reached containerd");
    assert!(!ns.containers().contains(&"tampered".to_owned()));
}

#[test]
fn restarted_agent_adopts_running_containers() {
    let ns = Namespace::new("adopt");
    let (v1, _, _) = images(&ns.services);
    let dep = deployment(
        json!({"keeper": module(&v1, json!({"Cmd": ["/bin/sh", "-c", "while true; do echo tick; sleep 0.2; done"]}), "always")}),
    );
    let mut rt = start(&ns, &dep);
    wait_module(&rt, "keeper", Duration::from_secs(60), status_is("running"));
    let pid = pid_of(&ns, "keeper").expect("running");
    rt.kill9();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(pid_of(&ns, "keeper"), Some(pid), "the module must outlive the agent");
    rt.start_again();
    let m = wait_module(&rt, "keeper", Duration::from_secs(30), status_is("running"));
    assert!(rt.wait_log("module keeper: adopted running container"), "{}", rt.log());
    assert_eq!(pid_of(&ns, "keeper"), Some(pid), "adoption must not recreate: {m:#}");
    let log = rt.log();
    let after_restart = log.rsplit("existing module container(s) adopted").next().unwrap_or_default();
    assert!(log.contains("agent: 1 existing module container(s) adopted"), "{log}");
    assert!(!after_restart.contains("module keeper: container created"), "recreated after restart:\n{log}");
    // `tinyedge logs -f` follows the output as it comes.
    let mut follow = std::process::Command::new(env!("CARGO_BIN_EXE_tinyedge"))
        .args([
            "--config",
            rt.dir.0.join("config.toml").to_str().expect("utf-8"),
            "logs",
            "keeper",
            "--tail",
            "0",
            "-f",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("tinyedge logs -f");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(follow.stdout.take().expect("stdout")), &mut line)
        .expect("a followed line");
    let _ = follow.kill();
    let _ = follow.wait();
    assert_eq!(line, "tick\n");
    // Its output is still collected through the same FIFOs.
    let logs = rt.dir.0.join("data/agent/logs/keeper.log");
    let before = std::fs::metadata(&logs).map(|m| m.len()).unwrap_or(0);
    std::thread::sleep(Duration::from_millis(800));
    assert!(std::fs::metadata(&logs).map(|m| m.len()).unwrap_or(0) > before, "logs stopped after adoption");
}

#[test]
fn missing_containerd_is_reported_and_the_hub_keeps_running() {
    let dir = TempDir::new("noctr");
    let dep = deployment(json!({"m": module("localhost:5000/x:1", Value::Null, "always")}));
    let section = format!("[agent]\ncontainerd = \"{}/missing.sock\"\n", dir.0.display());
    let rt = Runtime::start_with(&dep, "", &section);
    let m = wait_module(&rt, "m", Duration::from_secs(20), status_is("unknown"));
    assert!(m["statusDescription"].as_str().unwrap_or_default().contains("missing.sock: no such socket"), "{m:#}");
    assert!(rt.log().contains("the hub keeps running"), "{}", rt.log());
    // The hub still answers MQTT.
    let creds = common::module_credentials("m", 3600);
    let out = common::mosquitto_pub(rt.mqtt_port, &creds, "devices/gw/modules/m/messages/events/", "x", &["-q", "1"]);
    assert!(out.status.success(), "{out:?}");
    let table = String::from_utf8_lossy(&rt.cli(&["list"]).stdout).into_owned();
    assert!(table.contains("containerd:") && table.contains("unknown"), "{table}");
    // Deployments are accepted meanwhile, and give new modules their hub identity at once.
    let newcomer = common::module_credentials("newcomer", 3600);
    let refused = common::mosquitto_pub(
        rt.mqtt_port,
        &newcomer,
        "devices/gw/modules/newcomer/messages/events/",
        "x",
        &["-q", "1"],
    );
    assert!(!refused.status.success(), "an unknown module was let in");
    let next = deployment(
        json!({"m": module("localhost:5000/x:1", Value::Null, "always"), "newcomer": module("localhost:5000/x:1", Value::Null, "always")}),
    );
    let (ok, text) = deploy(&rt, &next);
    assert!(ok, "{text}");
    let out = common::mosquitto_pub(
        rt.mqtt_port,
        &newcomer,
        "devices/gw/modules/newcomer/messages/events/",
        "x",
        &["-q", "1"],
    );
    assert!(out.status.success(), "the deployed module's identity is not accepted: {out:?}");
    wait_module(&rt, "newcomer", Duration::from_secs(10), status_is("unknown"));
}

#[test]
fn registry_credentials_are_used_and_required() {
    let ns = Namespace::new("creds");
    let registry = containers::Registry::start_with_auth("edge", "s3cret");
    let image = containers::image(
        vec![containers::busybox_layer()],
        &["PATH=/bin"],
        &["/bin/sh", "-c", "sleep 3600"],
        containers::host_arch(),
    );
    containers::push_as(&registry.addr, "private/app", "1", &image, Some(("edge", "s3cret")));
    let reference = format!("{}/private/app:1", registry.addr);
    // Without registryCredentials the pull is refused with a clear message.
    let rt = start(&ns, &deployment(json!({"app": module(&reference, Value::Null, "always")})));
    let m = wait_module(&rt, "app", Duration::from_secs(30), status_is("failed"));
    assert!(m["statusDescription"].as_str().unwrap_or_default().contains("registryCredentials"), "{m:#}");
    // With them, it runs.
    let mut dep: Value =
        serde_json::from_str(&deployment(json!({"app": module(&reference, Value::Null, "always")}))).expect("json");
    dep["modulesContent"]["$edgeAgent"]["properties.desired"]["runtime"]["settings"]["registryCredentials"] =
        json!({"private": {"address": registry.addr, "username": "edge", "password": "s3cret"}});
    let (ok, text) = deploy(&rt, &dep.to_string());
    assert!(ok, "{text}");
    wait_module(&rt, "app", Duration::from_secs(60), status_is("running"));
    assert!(!rt.log().contains("s3cret"), "a registry password reached the log");
}

#[test]
fn containerd_killed_mid_run_is_reported_and_reconnected() {
    let ns = Namespace::with_own_containerd("ctrdies");
    let (v1, _, _) = images(&ns.services);
    let rt = start(&ns, &deployment(json!({"survivor": module(&v1, Value::Null, "always")})));
    wait_module(&rt, "survivor", Duration::from_secs(60), status_is("running"));
    let pid = pid_of(&ns, "survivor").expect("running");
    ns.containerd().kill9();
    let m = wait_module(&rt, "survivor", Duration::from_secs(20), status_is("unknown"));
    assert!(m["statusDescription"].as_str().unwrap_or_default().contains("containerd"), "{m:#}");
    ns.containerd().start_again();
    wait_module(&rt, "survivor", Duration::from_secs(30), status_is("running"));
    assert_eq!(pid_of(&ns, "survivor"), Some(pid), "the module must run on, untouched, across a containerd restart");
    // Supervision works again: a SIGKILL is seen (events re-subscribed) and the module restarted.
    kill9(&ns, "survivor");
    wait_module(&rt, "survivor", Duration::from_secs(20), |m| {
        m["runtimeStatus"] == "running" && m["restartCount"] == 1
    });
}

#[test]
fn a_deployment_set_as_the_edge_agent_desired_twin_runs_and_its_status_is_reported_to_the_cloud() {
    use common::iothub::{tinyedge_identities, CloudIdentity, ScriptedHub};
    let ns = Namespace::new("cloud");
    let (v1, _, _) = images(&ns.services);
    let mut identities = tinyedge_identities();
    identities.push(CloudIdentity::edge_module("sensor"));
    let cloud = ScriptedHub::start(&identities);
    let full: Value = serde_json::from_str(&deployment(json!({"sensor": module(&v1, Value::Null, "always")})))
        .expect("deployment JSON");
    let agent_desired = full["modulesContent"]["$edgeAgent"]["properties.desired"].clone();
    cloud.set_desired("gw/$edgeHub", &full["modulesContent"]["$edgeHub"]["properties.desired"]);
    cloud.set_desired("gw/$edgeAgent", &agent_desired);
    let upstream = format!(
        "[upstream]\nurl = \"mqtts://localhost:{}\"\nca = \"{}\"\nbackoff_max_secs = 1\n",
        cloud.mqtt_port,
        cloud.ca_path.display()
    );
    // The local deployment has no modules: what runs comes from the cloud.
    let rt = Runtime::start_with(&deployment(json!({})), "", &format!("{}{upstream}", agent_section(&ns, "")));
    wait_module(&rt, "sensor", Duration::from_secs(60), status_is("running"));
    let version = cloud.twin("gw/$edgeAgent")["desired"]["$version"].as_u64().expect("desired $version");
    let reported = eventually(Duration::from_secs(30), || {
        let twin = cloud.twin("gw/$edgeAgent");
        let r = &twin["reported"];
        (r["modules"]["sensor"]["runtimeStatus"] == "running" && r["lastDesiredStatus"]["code"] == 200)
            .then(|| r.clone())
    });
    let reported = reported.unwrap_or_else(|| panic!("not reported: {}\n{}", cloud.twin("gw/$edgeAgent"), rt.log()));
    assert_eq!(reported["lastDesiredVersion"], version, "{reported}");
    assert_eq!(reported["schemaVersion"], "1.1", "{reported}");
    assert!(reported["systemModules"]["edgeHub"]["runtimeStatus"] == "running", "{reported}");
    assert!(reported["version"]["version"].is_string(), "{reported}");
    for key in
        ["exitCode", "statusDescription", "lastStartTimeUtc", "lastExitTimeUtc", "restartCount", "lastRestartTimeUtc"]
    {
        assert!(reported["modules"]["sensor"].get(key).is_some(), "{key} missing: {reported}");
    }
    let pid = pid_of(&ns, "sensor").expect("sensor runs");

    // A bad deployment from the cloud: 400 in the reported properties, the module untouched.
    let mut bad = agent_desired.clone();
    bad["modules"]["sensor"]["settings"]["createOptions"] = json!("{not json");
    bad["modules"]["other"] = module(&v1, Value::Null, "always");
    cloud.set_desired("gw/$edgeAgent", &bad);
    let bad_version = cloud.twin("gw/$edgeAgent")["desired"]["$version"].as_u64().expect("$version");
    let refused = eventually(Duration::from_secs(30), || {
        let r = cloud.twin("gw/$edgeAgent")["reported"].clone();
        (r["lastDesiredStatus"]["code"] == 400 && r["lastDesiredVersion"] == bad_version).then_some(r)
    });
    assert!(refused.is_some(), "not refused: {}\n{}", cloud.twin("gw/$edgeAgent"), rt.log());
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(pid_of(&ns, "sensor"), Some(pid), "the module was touched");
    assert!(list(&rt)["modules"].get("other").is_none(), "a refused deployment changed the modules");

    // Shutdown (SIGTERM): 406 "Agent is not running" and the modules `unknown` in the cloud.
    let pid = rt.child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
    let stopped = eventually(Duration::from_secs(15), || {
        let r = cloud.twin("gw/$edgeAgent")["reported"].clone();
        (r["lastDesiredStatus"]["code"] == 406 && r["modules"]["sensor"]["runtimeStatus"] == "unknown").then_some(r)
    });
    assert!(stopped.is_some(), "no 406 on shutdown: {}\n{}", cloud.twin("gw/$edgeAgent"), rt.log());
}

/// `GET /metrics` on `port`: the body.
fn scrape(port: u16) -> String {
    use std::io::{Read as _, Write as _};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return String::new() };
    let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()
}

fn sample(body: &str, name: &str, label: &str) -> Option<f64> {
    body.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .find_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse().ok()))
}

#[test]
fn a_module_restart_moves_the_agent_metrics() {
    let ns = Namespace::new("metrics");
    let (v1, _, _) = images(&ns.services);
    let port = common::free_port();
    let dep = deployment(json!({"probe": module(&v1, Value::Null, "always")}));
    let rt =
        Runtime::start_with(&dep, "", &format!("{}[metrics]\nlisten = \"127.0.0.1:{port}\"\n", agent_section(&ns, "")));
    wait_module(&rt, "probe", Duration::from_secs(60), status_is("running"));
    let label = "module_name=\"probe\"";
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut body = scrape(port);
    while sample(&body, "edgeAgent_module_start_total", label).unwrap_or(0.0) < 1.0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(300));
        body = scrape(port);
    }
    assert_eq!(sample(&body, "edgeAgent_module_start_total", label), Some(1.0), "{body}\n{}", rt.log());
    assert!(sample(&body, "edgeAgent_used_memory_bytes", label).unwrap_or(0.0) > 0.0, "{body}");
    kill9(&ns, "probe");
    wait_module(&rt, "probe", Duration::from_secs(20), |m| m["runtimeStatus"] == "running" && m["restartCount"] == 1);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        body = scrape(port);
        let (starts, stops) = (
            sample(&body, "edgeAgent_module_start_total", label).unwrap_or(0.0),
            sample(&body, "edgeAgent_module_stop_total", label).unwrap_or(0.0),
        );
        if starts >= 2.0 && stops >= 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "the restart did not show: {body}");
        std::thread::sleep(Duration::from_millis(300));
    }
    let expected = sample(&body, "edgeAgent_total_time_expected_running_seconds", label).unwrap_or(0.0);
    let correct = sample(&body, "edgeAgent_total_time_running_correctly_seconds", label).unwrap_or(0.0);
    assert!(expected > 0.0 && correct <= expected, "expected {expected}, correct {correct}\n{body}");
}
