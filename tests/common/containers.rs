//! Real container infrastructure for the agent tests: a containerd (with runc) and Debian's
//! docker-registry started by the tests on loopback, and OCI test images built here from
//! Debian's busybox-static and pushed to that registry. Nothing is downloaded at run time.
//!
//! containerd and the registry are shared by the tests of one test process while any test
//! holds them ([`services`]), and stopped when the last one lets go. Each test works in its own
//! containerd namespace ([`Namespace`]), whose tasks and containers are removed on drop.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A unique directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "tinyedge-test-{tag}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Ports handed out per test process, from below the kernel's ephemeral range.
const PORT_SPAN: usize = 10_000;

/// A port for a listener a test is about to start (tinyedge's, a broker's, a registry's).
/// Taken below the kernel's ephemeral range, so no outgoing connection (the tests open
/// thousands, and each takes an ephemeral source port) can occupy it between this choice and
/// the listener's bind; handed out once per test process, so tests running in parallel never
/// get the same one; and checked free now, for what other processes listen on. A port from
/// `bind(0)` had neither property: once, a parallel test's client took tinyedge's MQTTS port
/// as its source port, and tinyedge stopped on "address in use" right after its MQTT port
/// opened.
pub fn free_port() -> u16 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next().and_then(|l| l.parse::<usize>().ok()))
        .unwrap_or(32_768);
    if low < PORT_SPAN + 1_024 {
        return TcpListener::bind("127.0.0.1:0").expect("bind port 0").local_addr().expect("local addr").port();
    }
    let base = low - PORT_SPAN;
    // Test binaries run one after another: each starts elsewhere in the span, away from the
    // ports (and TIME_WAIT entries) its predecessor used.
    let start = (std::process::id() as usize).wrapping_mul(7_919) % PORT_SPAN;
    for _ in 0..PORT_SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (base + (start + n) % PORT_SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in 127.0.0.1:{base}..{low}");
}

/// Where Debian's busybox-static puts its binary.
pub const BUSYBOX: &str = "/bin/busybox";

fn require(path: &str, package: &str) {
    assert!(Path::new(path).exists(), "{path} is missing: run ./test.sh (it installs Debian's {package})");
}

/// A containerd of the tests' own (own root, state and socket).
pub struct Containerd {
    pub socket: PathBuf,
    dir: TempDir,
    child: Mutex<Child>,
}

/// Debian's docker-registry on a free loopback port, with its storage in a temp dir.
pub struct Registry {
    pub addr: String,
    pub storage: PathBuf,
    dir: TempDir,
    child: Child,
}

pub struct Services {
    pub containerd: Containerd,
    pub registry: Registry,
    /// Repositories already pushed (name → manifest digest).
    pub pushed: Mutex<Vec<(String, String)>>,
}

static SERVICES: Mutex<Weak<Services>> = Mutex::new(Weak::new());

/// containerd + registry, started on first use and shared while any test holds them.
pub fn services() -> Arc<Services> {
    let mut slot = SERVICES.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(s) = slot.upgrade() {
        return s;
    }
    let s = Arc::new(Services {
        containerd: Containerd::start(),
        registry: Registry::start(),
        pushed: Mutex::new(Vec::new()),
    });
    *slot = Arc::downgrade(&s);
    s
}

fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "{what} did not come up within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Containerd {
    /// Starts a containerd with its own root, state and socket under a temp dir.
    pub fn start() -> Containerd {
        require("/usr/bin/containerd", "containerd");
        require("/usr/sbin/runc", "runc");
        let dir = TempDir::new("containerd");
        let socket = dir.0.join("containerd.sock");
        let config = format!(
            "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{1}\"\n[ttrpc]\n  address = \"{1}.ttrpc\"\n",
            dir.0.display(),
            socket.display()
        );
        std::fs::write(dir.0.join("config.toml"), config).expect("write containerd config");
        let child = Containerd::spawn(&dir);
        let c = Containerd { socket, dir, child: Mutex::new(child) };
        c.wait_ready();
        c
    }

    fn spawn(dir: &TempDir) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.0.join("containerd.log"))
            .expect("containerd log");
        Command::new("/usr/bin/containerd")
            .arg("--config")
            .arg(dir.0.join("config.toml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start containerd")
    }

    fn wait_ready(&self) {
        wait_until("containerd", Duration::from_secs(20), || self.ctr("default", &["version"]).status.success());
    }

    /// SIGKILLs containerd (its shims, and so the containers, keep running).
    pub fn kill9(&self) {
        let mut child = self.child.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts containerd again on the same root, state and socket after [`Containerd::kill9`].
    pub fn start_again(&self) {
        *self.child.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Containerd::spawn(&self.dir);
        self.wait_ready();
    }

    /// `ctr` against this containerd in `namespace`.
    pub fn ctr(&self, namespace: &str, args: &[&str]) -> std::process::Output {
        Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .arg("--namespace")
            .arg(namespace)
            .args(args)
            .output()
            .expect("run ctr (Debian's containerd package)")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("containerd.log")).unwrap_or_default()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner);
        let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        // Mounts left by a crashed shim would keep the directory busy.
        if let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") {
            for line in mounts.lines() {
                if let Some(target) = line.split(' ').nth(1) {
                    if target.starts_with(&*self.dir.0.to_string_lossy()) {
                        let _ = Command::new("umount").arg("-l").arg(target).status();
                    }
                }
            }
        }
    }
}

impl Registry {
    fn start() -> Registry {
        Registry::start_with(None)
    }

    /// A registry of its own that wants `user`/`password` (htpasswd, bcrypt) for everything.
    pub fn start_with_auth(user: &str, password: &str) -> Registry {
        Registry::start_with(Some((user, password)))
    }

    fn start_with(auth: Auth<'_>) -> Registry {
        require("/usr/bin/docker-registry", "docker-registry");
        let dir = TempDir::new("registry");
        let port = free_port();
        let storage = dir.0.join("storage");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            storage.display()
        );
        if let Some((user, password)) = auth {
            require("/usr/bin/htpasswd", "apache2-utils");
            let out = Command::new("htpasswd").args(["-Bbn", user, password]).output().expect("run htpasswd");
            assert!(out.status.success(), "htpasswd: {}", String::from_utf8_lossy(&out.stderr));
            std::fs::write(dir.0.join("htpasswd"), &out.stdout).expect("write htpasswd");
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: tinyedge-tests\n    path: {}\n",
                dir.0.join("htpasswd").display()
            ));
        }
        std::fs::write(dir.0.join("config.yml"), config).expect("write registry config");
        let log = std::fs::File::create(dir.0.join("registry.log")).expect("registry log");
        let child = Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(dir.0.join("config.yml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start docker-registry");
        let addr = format!("127.0.0.1:{port}");
        let r = Registry { addr, storage, dir, child };
        let url = format!("http://{}/v2/", r.addr);
        wait_until("docker-registry", Duration::from_secs(20), || {
            authorized(http().get(&url), auth).call().map(|resp| resp.status() == 200).unwrap_or(false)
        });
        r
    }

    /// The file holding a blob in the registry's storage (for the tampering test).
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.storage.join("docker/registry/v2/blobs/sha256").join(&hex[..2]).join(hex).join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A containerd namespace of one test; its tasks, containers and images are removed on drop.
pub struct Namespace {
    pub name: String,
    pub services: Arc<Services>,
    /// A containerd of this test alone (to kill it), instead of the shared one.
    own: Option<Containerd>,
}

impl Namespace {
    pub fn new(test: &str) -> Namespace {
        let name = format!("t-{test}-{}", std::process::id());
        Namespace { name, services: services(), own: None }
    }

    /// A namespace on a containerd of its own (the registry is still the shared one).
    pub fn with_own_containerd(test: &str) -> Namespace {
        let mut ns = Namespace::new(test);
        ns.own = Some(Containerd::start());
        ns
    }

    /// The containerd this namespace lives in.
    pub fn containerd(&self) -> &Containerd {
        self.own.as_ref().unwrap_or(&self.services.containerd)
    }

    pub fn ctr(&self, args: &[&str]) -> std::process::Output {
        self.containerd().ctr(&self.name, args)
    }

    /// `ctr tasks ls` as (container, pid, status).
    pub fn tasks(&self) -> Vec<(String, u32, String)> {
        let out = self.ctr(&["tasks", "ls"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                Some((f.next()?.to_owned(), f.next()?.parse().ok()?, f.next()?.to_owned()))
            })
            .collect()
    }

    /// Container ids.
    pub fn containers(&self) -> Vec<String> {
        let out = self.ctr(&["containers", "ls", "-q"]);
        String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        for (id, _, _) in self.tasks() {
            let _ = self.ctr(&["tasks", "kill", "-s", "SIGKILL", &id]);
        }
        std::thread::sleep(Duration::from_millis(200));
        for (id, _, _) in self.tasks() {
            let _ = self.ctr(&["tasks", "delete", "-f", &id]);
        }
        for id in self.containers() {
            let _ = self.ctr(&["containers", "delete", &id]);
        }
        let images = self.ctr(&["images", "ls", "-q"]);
        for image in String::from_utf8_lossy(&images.stdout).lines() {
            let _ = self.ctr(&["images", "rm", image]);
        }
        let _ = self.ctr(&["namespaces", "rm", &self.name]);
    }
}

// ---- OCI images ----

/// One entry of a layer.
pub enum Entry {
    Dir(&'static str),
    File(String, u32, Vec<u8>),
    Symlink(String, String),
}

fn octal(field: &mut [u8], value: u64) {
    let width = field.len() - 1;
    let text = format!("{value:0width$o}");
    field[..width].copy_from_slice(text.as_bytes());
    field[width] = 0;
}

/// A POSIX ustar archive of `entries`, with fixed times and owners (reproducible digests).
pub fn tar(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in entries {
        let (name, mode, kind, link, data): (&str, u32, u8, &str, &[u8]) = match entry {
            Entry::Dir(name) => (name, 0o755, b'5', "", &[]),
            Entry::File(name, mode, data) => (name, *mode, b'0', "", data),
            Entry::Symlink(name, target) => (name, 0o777, b'2', target, &[]),
        };
        let mut header = [0u8; 512];
        header[..name.len()].copy_from_slice(name.as_bytes());
        octal(&mut header[100..108], u64::from(mode));
        octal(&mut header[108..116], 0);
        octal(&mut header[116..124], 0);
        octal(&mut header[124..136], data.len() as u64);
        octal(&mut header[136..148], 1_700_000_000);
        header[156] = kind;
        header[157..157 + link.len()].copy_from_slice(link.as_bytes());
        header[257..263].copy_from_slice(b"ustar\0");
        header[263..265].copy_from_slice(b"00");
        header[148..156].copy_from_slice(b"        ");
        let sum: u32 = header.iter().map(|b| u32::from(*b)).sum();
        let text = format!("{sum:06o}\0 ");
        header[148..156].copy_from_slice(text.as_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

/// `gzip -n` (no name or time in the header, so digests are reproducible).
pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = Command::new("gzip")
        .args(["-n", "-c", "-6"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("gzip");
    let mut stdin = child.stdin.take().expect("stdin");
    let input = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().expect("gzip output");
    writer.join().expect("gzip writer").expect("gzip stdin");
    out.stdout
}

pub fn sha256(data: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    format!("sha256:{}", digest.as_ref().iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// The busybox base layer: `/bin/busybox` and links for the applets tests use.
pub fn busybox_layer() -> Vec<Entry> {
    require(BUSYBOX, "busybox-static");
    let binary = std::fs::read(BUSYBOX).expect("read busybox");
    let mut entries = vec![
        Entry::Dir("bin/"),
        Entry::Dir("tmp/"),
        Entry::Dir("etc/"),
        Entry::File("bin/busybox".into(), 0o755, binary),
    ];
    for applet in [
        "sh", "sleep", "cat", "echo", "env", "ls", "test", "true", "false", "kill", "touch", "rm", "mkdir", "date",
        "wc",
    ] {
        entries.push(Entry::Symlink(format!("bin/{applet}"), "busybox".into()));
    }
    entries
}

/// A built image: its layers (compressed, uncompressed digest) and config.
pub struct Image {
    pub layers: Vec<(Vec<u8>, String)>,
    pub config: Vec<u8>,
    pub manifest: Vec<u8>,
    pub manifest_digest: String,
}

/// An image of `layers` (gzip) with `Env` and `Cmd` in its config, for `architecture`.
pub fn image(layers: Vec<Vec<Entry>>, env: &[&str], cmd: &[&str], architecture: &str) -> Image {
    let layers: Vec<(Vec<u8>, String)> = layers
        .iter()
        .map(|entries| {
            let raw = tar(entries);
            (gzip(&raw), sha256(&raw))
        })
        .collect();
    let config = serde_json::json!({
        "architecture": architecture, "os": "linux",
        "config": {"Env": env, "Cmd": cmd},
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|(_, d)| d.clone()).collect::<Vec<_>>()},
    })
    .to_string()
    .into_bytes();
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(&config), "size": config.len()},
        "layers": layers.iter().map(|(gz, _)| serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha256(gz), "size": gz.len()})).collect::<Vec<_>>(),
    })
    .to_string()
    .into_bytes();
    let manifest_digest = sha256(&manifest);
    Image { layers, config, manifest, manifest_digest }
}

fn http() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).build().into()
}

/// Basic credentials for a registry with htpasswd auth.
pub type Auth<'a> = Option<(&'a str, &'a str)>;

fn authorized<B>(request: ureq::RequestBuilder<B>, auth: Auth<'_>) -> ureq::RequestBuilder<B> {
    match auth {
        Some((user, pass)) => {
            use base64::Engine as _;
            let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
            request.header("Authorization", &format!("Basic {token}"))
        }
        None => request,
    }
}

fn push_blob(registry: &str, repo: &str, blob: &[u8], auth: Auth<'_>) {
    let agent = http();
    let digest = sha256(blob);
    let head =
        authorized(agent.head(&format!("http://{registry}/v2/{repo}/blobs/{digest}")), auth).call().expect("HEAD blob");
    if head.status() == 200 {
        return;
    }
    let start = authorized(agent.post(&format!("http://{registry}/v2/{repo}/blobs/uploads/")), auth)
        .send_empty()
        .expect("start upload");
    assert_eq!(start.status(), 202, "registry refused an upload");
    let location = start.headers().get("location").and_then(|v| v.to_str().ok()).expect("upload location").to_owned();
    let location = if location.starts_with("http") { location } else { format!("http://{registry}{location}") };
    let sep = if location.contains('?') { '&' } else { '?' };
    let put = authorized(agent.put(&format!("{location}{sep}digest={digest}")), auth)
        .header("Content-Type", "application/octet-stream")
        .send(blob)
        .expect("upload blob");
    assert_eq!(put.status(), 201, "registry refused blob {digest}");
}

fn put_manifest(registry: &str, repo: &str, reference: &str, media_type: &str, body: &[u8], auth: Auth<'_>) {
    let put = authorized(http().put(&format!("http://{registry}/v2/{repo}/manifests/{reference}")), auth)
        .header("Content-Type", media_type)
        .send(body)
        .expect("put manifest");
    assert_eq!(put.status(), 201, "registry refused manifest {repo}:{reference}");
}

/// Pushes `image` as `repo:tag`; returns the manifest digest.
pub fn push(registry: &str, repo: &str, tag: &str, image: &Image) -> String {
    push_as(registry, repo, tag, image, None)
}

/// [`push`] with Basic credentials.
pub fn push_as(registry: &str, repo: &str, tag: &str, image: &Image, auth: Auth<'_>) -> String {
    for (gz, _) in &image.layers {
        push_blob(registry, repo, gz, auth);
    }
    push_blob(registry, repo, &image.config, auth);
    put_manifest(registry, repo, tag, "application/vnd.oci.image.manifest.v1+json", &image.manifest, auth);
    image.manifest_digest.clone()
}

/// Pushes a multi-arch index as `repo:tag` over images for (architecture, image) pairs.
pub fn push_index(registry: &str, repo: &str, tag: &str, images: &[(&str, &Image)]) -> String {
    let mut manifests = Vec::new();
    for (arch, image) in images {
        push(registry, repo, &format!("{tag}-{arch}"), image);
        manifests.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": image.manifest_digest,
            "size": image.manifest.len(), "platform": {"os": "linux", "architecture": arch}}));
    }
    let index = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests})
        .to_string()
        .into_bytes();
    put_manifest(registry, repo, tag, "application/vnd.oci.image.index.v1+json", &index, None);
    sha256(&index)
}

/// The architecture of this host in OCI's spelling.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        other => panic!("no test image for {other}"),
    }
}

/// Path of a file in a temp dir of the test (for binds).
pub fn host_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write host file");
    p
}
