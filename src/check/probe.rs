//! The IO side of `tinyedge check`: each function looks at one thing (a file, a socket,
//! containerd, the cloud) and hands the facts to the pure verdicts in `super`. Nothing here
//! changes the gateway's state: files are only read (the data_dir probe writes and removes one
//! file of its own), the store is scanned rather than opened, and the upstream probe does not
//! take over a connection the running runtime holds.

use std::fs;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr, TcpListener, ToSocketAddrs, UdpSocket};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::Value;
use tinyedge_hub::store::StoreConfig;
use tinyedge_platform::{certs, identity, Config};

use super::{store_scan, x509, Check, Outcome, PortState, RUNNING_STATUS_MAX_AGE_SECS};
use crate::failure::Failure;

/// The whole upstream probe (DNS, TCP, TLS, CONNACK) gets this long: IoT Hub answers in well
/// under a second; a firewall that drops packets shows as a timeout.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(15);
/// containerd answers its version call in milliseconds.
#[cfg(feature = "agent")]
const CONTAINERD_TIMEOUT: Duration = Duration::from_secs(10);
/// 2026-12-01, when this version was written: a clock before it is wrong whatever the binary's
/// file time says.
const RELEASE_UNIX: i64 = 1_796_083_200;
/// The cgroup filesystems' mount point.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// How tinyedge runs and where its start hint points.
const START_HINT: &str =
    "start it with `tinyedge run` (or `systemctl start tinyedge`); the other checks read its files and do not need it";

/// `status.json` as the runtime last wrote it.
pub struct Status {
    pub doc: Value,
    pub age_secs: u64,
}

impl Status {
    fn fresh(&self) -> bool {
        self.age_secs <= RUNNING_STATUS_MAX_AGE_SECS
    }
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn failure_text(failure: Failure) -> String {
    match failure {
        Failure::Usage(e) | Failure::Config(e) | Failure::Runtime(e) => e,
        Failure::Rejected(code, e) => format!("{code} {e}"),
    }
}

/// Every check, in the order a person would fix things: the config, the runtime and the
/// clock, names and keys, listeners and disk, then containerd and the cloud.
pub fn run_all(config: &Config, source: Option<&Path>) -> Vec<Check> {
    let now = unix_now();
    let mut checks = Vec::new();
    let (check, deployment) = config_check(config, source);
    checks.push(check);
    let status = read_status(&config.data_dir);
    let listening = management_socket_answers(&config.data_dir);
    checks.push(runtime(&config.data_dir, status.as_ref(), listening));
    let running = status.as_ref().filter(|s| listening && s.fresh());
    checks.push(clock(now));
    checks.push(hostname(&config.hostname));
    let (check, key) = device_key(config);
    checks.push(check);
    checks.push(edge_ca(config, now));
    checks.push(server_cert(config, now));
    checks.extend(upstream_ca(config, now));
    checks.extend(ports(config));
    let store_config = crate::cloud::store_config(config, deployment.as_ref());
    checks.push(data_dir(config, &store_config.dir));
    let (store_check, store_bytes) = store(&store_config, running);
    checks.push(disk_space(&store_config, store_bytes));
    checks.push(store_check);
    checks.push(containerd(config));
    checks.push(cgroups(config));
    checks.push(upstream(config, key.as_deref(), running));
    checks
}

fn config_check(config: &Config, source: Option<&Path>) -> (Check, Option<tinyedge_agent::manifest::Deployment>) {
    let what = source
        .map_or_else(|| "no config file: the embedded defaults".to_owned(), |p| format!("{}: valid", p.display()));
    match crate::runtime::load_deployment(config) {
        Ok(Some(d)) => {
            let detail =
                format!("{what}; deployment: {} module(s), {} route(s)", d.agent.modules.len(), d.hub.routes.len());
            (Check::pass("config", detail), Some(d))
        }
        Ok(None) => (Check::pass("config", format!("{what}; no deployment")), None),
        Err(e) => (
            Check::fail(
                "config",
                format!("{what}; {}", failure_text(e)),
                "fix the deployment file, or apply a valid one with `tinyedge deploy`",
            ),
            None,
        ),
    }
}

pub fn read_status(data_dir: &Path) -> Option<Status> {
    let doc = crate::status::read_document(&crate::status::status_path(data_dir)).ok()?;
    let updated = doc.get("updated_unix_ms").and_then(Value::as_u64).unwrap_or(0);
    let age_secs = crate::status::unix_ms().saturating_sub(updated) / 1000;
    Some(Status { doc, age_secs })
}

/// Whether a runtime serves `{data_dir}/mgmt.sock` (every `tinyedge run` does).
fn management_socket_answers(data_dir: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(crate::mgmt::socket_path(data_dir)).is_ok()
}

fn runtime(data_dir: &Path, status: Option<&Status>, listening: bool) -> Check {
    let path = crate::status::status_path(data_dir);
    let ours = env!("CARGO_PKG_VERSION");
    let socket = crate::mgmt::socket_path(data_dir);
    if !listening {
        let written = status.map_or_else(
            || format!("no {}", path.display()),
            |s| format!("{} was last written {} s ago", path.display(), s.age_secs),
        );
        return Check::warn(
            "runtime",
            format!("not running: nothing answers on {}; {written}", socket.display()),
            START_HINT,
        );
    }
    match status {
        Some(status) if status.fresh() => {
            let version = status.doc["version"].as_str().unwrap_or("unknown");
            let detail = format!("running: {} is {} s old (tinyedge {version})", path.display(), status.age_secs);
            if version == ours {
                Check::pass("runtime", detail)
            } else {
                Check::warn("runtime", format!("{detail}; this binary is {ours}"), "restart it to run this version")
            }
        }
        Some(status) => Check::warn(
            "runtime",
            format!("{} answers, but {} was last written {} s ago", socket.display(), path.display(), status.age_secs),
            "the runtime no longer rewrites its status (disk full? stuck?): see its log",
        ),
        None => Check::warn(
            "runtime",
            format!("{} answers, but there is no {}", socket.display(), path.display()),
            "the runtime cannot write its status (disk full?): see its log",
        ),
    }
}

fn clock(now: i64) -> Check {
    let built = std::env::current_exe()
        .and_then(fs::metadata)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0));
    let (floor, what) = if built > RELEASE_UNIX {
        (built, "this binary's file time")
    } else {
        (RELEASE_UNIX, "this version's release")
    };
    let (outcome, detail) = super::clock(now, floor, what);
    Check::new(
        "clock",
        outcome,
        detail,
        Some(
            "set the clock (`timedatectl set-ntp true`, or `date -s`): TLS certificates and SAS tokens need it".into(),
        ),
    )
}

fn is_local(ip: IpAddr) -> bool {
    // Binding succeeds only for an address of one of this machine's interfaces.
    ip.is_loopback() || UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

fn hostname(name: &str) -> Check {
    let hint = "make it resolve to this machine (DNS or /etc/hosts), or set hostname to a name that does: \
                clients connect to it and check it against the server certificate";
    let mut ips: Vec<IpAddr> = match (name, 0).to_socket_addrs() {
        Ok(addrs) => addrs.map(|a| a.ip()).collect(),
        Err(e) => return Check::fail("hostname", format!("{name} does not resolve: {e}"), hint),
    };
    ips.sort();
    ips.dedup();
    let shown = ips.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
    if ips.iter().any(|ip| is_local(*ip)) {
        Check::pass("hostname", format!("{name} resolves to {shown}, on this machine"))
    } else {
        Check::fail("hostname", format!("{name} resolves to {shown}, none of them on this machine"), hint)
    }
}

/// The permission bits of `path` when group or others may read it.
fn too_open(path: &Path) -> Option<u32> {
    let mode = fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then_some(mode)
}

fn device_key(config: &Config) -> (Check, Option<Vec<u8>>) {
    if let Some(key) = &config.device_key {
        return (
            Check::pass("device-key", format!("device_key from the config ({} bytes)", key.len())),
            Some(key.clone()),
        );
    }
    let path = config.data_dir.join(identity::DEVICE_KEY_FILE);
    match fs::metadata(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let detail = format!("{} does not exist yet", path.display());
            let hint = "`tinyedge run` creates it on first start; or set device_key to the device's key in IoT Hub";
            return (Check::warn("device-key", detail, hint), None);
        }
        Err(e) => {
            return (
                Check::fail("device-key", format!("{}: {e}", path.display()), "make it readable by tinyedge"),
                None,
            )
        }
        Ok(_) => {}
    }
    // The file exists, so this only reads and validates it.
    match identity::load_or_create_device_key(&config.data_dir) {
        Ok(key) => {
            let detail = format!("{}: {} bytes", path.display(), key.len());
            let check = match too_open(&path) {
                Some(mode) => Check::warn(
                    "device-key",
                    format!("{detail}, readable by group or others (mode {mode:o})"),
                    format!("chmod 600 {}", path.display()),
                ),
                None => Check::pass("device-key", detail),
            };
            (check, Some(key))
        }
        Err(e) => (
            Check::fail(
                "device-key",
                e.to_string(),
                "restore the key file, or set device_key: every module's key derives from it",
            ),
            None,
        ),
    }
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no PEM certificate in the file", path.display()));
    }
    Ok(chain)
}

fn info_of(path: &Path, der: &[u8]) -> Result<x509::CertInfo, String> {
    x509::cert_info(der).map_err(|e| format!("{}: {e}", path.display()))
}

fn edge_ca(config: &Config, now: i64) -> Check {
    const NAME: &str = "edge-ca-cert";
    let dir = config.data_dir.join(certs::CERTS_DIR);
    let (cert, key) = (dir.join(certs::CA_CERT_FILE), dir.join(certs::CA_KEY_FILE));
    if !cert.exists() && !key.exists() {
        return Check::warn(
            NAME,
            format!("{} is not generated yet", cert.display()),
            "`tinyedge run` creates the edge CA on first start",
        );
    }
    let replace = "restore edge-ca.pem and edge-ca.key.pem from a backup, or move both away: the next start \
                   creates a new CA, which modules and devices must then trust";
    let info = match read_chain(&cert).and_then(|chain| info_of(&cert, &chain[0])) {
        Ok(info) => info,
        Err(e) => return Check::fail(NAME, e, replace),
    };
    if let Err(e) = PrivateKeyDer::from_pem_file(&key) {
        return Check::fail(NAME, format!("{}: {e}", key.display()), replace);
    }
    let (outcome, detail) = super::expiry(&info, now);
    let detail = format!("{}: {detail}", cert.display());
    if outcome == Outcome::Pass {
        if let Some(mode) = too_open(&key) {
            return Check::warn(
                NAME,
                format!("{detail}; its key is readable by group or others (mode {mode:o})"),
                format!("chmod 600 {}", key.display()),
            );
        }
    }
    let renew = "renew it before it expires: move edge-ca.pem and edge-ca.key.pem away and restart, then give \
                 modules and devices the new edge-ca.pem";
    Check::new(NAME, outcome, detail, Some(renew.into()))
}

/// Verifies `chain` (leaf first) for `hostname` against the CA certificate(s) in `ca`.
fn verify_chain(chain: &[CertificateDer<'static>], ca: &Path, hostname: &str) -> Result<(), String> {
    use rustls::client::danger::ServerCertVerifier as _;
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_chain(ca)? {
        roots.add(cert).map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from(hostname.to_owned()).map_err(|e| e.to_string())?;
    let (leaf, intermediates) = chain.split_first().ok_or("no certificate")?;
    verifier
        .verify_server_cert(leaf, intermediates, &name, &[], rustls::pki_types::UnixTime::now())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn server_cert(config: &Config, now: i64) -> Check {
    const NAME: &str = "server-cert";
    if config.hub.mqtts.is_none() && config.hub.https.is_none() {
        return Check::skipped(NAME, "no TLS listener (hub.mqtts and hub.https are off)");
    }
    let dir = config.data_dir.join(certs::CERTS_DIR);
    let (cert, key, generated) = match (&config.hub.tls_cert, &config.hub.tls_key) {
        (Some(cert), Some(key)) => (cert.clone(), key.clone(), false),
        _ => (dir.join(certs::SERVER_CERT_FILE), dir.join(certs::SERVER_KEY_FILE), true),
    };
    if generated && !cert.exists() {
        return Check::warn(
            NAME,
            format!("{} is not generated yet", cert.display()),
            "`tinyedge run` issues it on first start",
        );
    }
    let (renew, replace) = if generated {
        (
            "restart tinyedge: at start it re-issues a generated server certificate older than 300 days (delete server.pem to force it)",
            "delete server.pem, server.key.pem and server.hostname: the next start issues new ones from the edge CA",
        )
    } else {
        ("renew [hub] tls_cert before it expires", "[hub] tls_cert and tls_key must be PEM files that belong together")
    };
    let chain = match read_chain(&cert) {
        Ok(chain) => chain,
        Err(e) => return Check::fail(NAME, e, replace),
    };
    let info = match info_of(&cert, &chain[0]) {
        Ok(info) => info,
        Err(e) => return Check::fail(NAME, e, replace),
    };
    let (outcome, detail) = super::expiry(&info, now);
    let detail = format!("{}: {detail}", cert.display());
    if outcome == Outcome::Fail {
        return Check::fail(NAME, detail, renew);
    }
    if let Err(e) = tinyedge_hub::tls::acceptor(&cert, &key) {
        return Check::fail(NAME, e.to_string(), replace);
    }
    if !generated {
        return Check::new(NAME, outcome, detail, Some(renew.into()));
    }
    let marker = fs::read_to_string(dir.join(certs::SERVER_HOSTNAME_FILE)).unwrap_or_default();
    if marker.trim() != config.hostname {
        return Check::warn(
            NAME,
            format!("{detail}; issued for {:?}, but hostname is {:?}", marker.trim(), config.hostname),
            "the next `tinyedge run` re-issues it for the configured hostname",
        );
    }
    if let Err(e) = verify_chain(&chain, &dir.join(certs::CA_CERT_FILE), &config.hostname) {
        return Check::fail(
            NAME,
            format!("{detail}; does not verify for {} against the edge CA: {e}", config.hostname),
            replace,
        );
    }
    Check::new(
        NAME,
        outcome,
        format!("{detail}; verifies for {} against the edge CA", config.hostname),
        Some(renew.into()),
    )
}

fn upstream_ca(config: &Config, now: i64) -> Option<Check> {
    const NAME: &str = "upstream-ca-cert";
    let path = config.upstream.as_ref()?.ca.as_ref()?;
    let hint = "replace [upstream] ca with the current CA certificate of the upstream hub";
    let chain = match read_chain(path) {
        Ok(chain) => chain,
        Err(e) => return Some(Check::fail(NAME, e, hint)),
    };
    let mut worst: Option<(Outcome, String, i64)> = None;
    for der in &chain {
        let info = match info_of(path, der) {
            Ok(info) => info,
            Err(e) => return Some(Check::fail(NAME, e, hint)),
        };
        let (outcome, detail) = super::expiry(&info, now);
        let worse = worst.as_ref().is_none_or(|(o, _, after)| (outcome, -info.not_after) > (*o, -*after));
        if worse {
            worst = Some((outcome, detail, info.not_after));
        }
    }
    let (outcome, detail, _) = worst?;
    Some(Check::new(
        NAME,
        outcome,
        format!("{}: {} certificate(s); {detail}", path.display(), chain.len()),
        Some(hint.into()),
    ))
}

fn ports(config: &Config) -> Vec<Check> {
    use tinyedge_platform::config::{DEFAULT_HTTPS_ADDR, DEFAULT_METRICS_ADDR};
    let listeners = [
        ("hub.mqtt", config.hub.mqtt, false),
        ("hub.mqtts", config.hub.mqtts, false),
        ("hub.https", config.hub.https, config.hub.https == Some(DEFAULT_HTTPS_ADDR)),
        ("metrics.listen", config.metrics.listen, config.metrics.listen == Some(DEFAULT_METRICS_ADDR)),
    ];
    listeners
        .into_iter()
        .map(|(key, addr, optional)| match addr {
            None => Check::skipped(&super::port_name(key), format!("{key} is off")),
            Some(addr) => super::port(key, addr, &port_state(addr), optional),
        })
        .collect()
}

fn port_state(addr: SocketAddr) -> PortState {
    match TcpListener::bind(addr) {
        Ok(_) => PortState::Free,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            owner(addr).map_or(PortState::HeldUnknown, |(pid, command)| PortState::Held { pid, command })
        }
        Err(e) => PortState::Error(e.to_string()),
    }
}

/// The process that listens on `addr`: its socket's inode from `/proc/net/tcp{,6}`, then the
/// process holding that inode among `/proc/*/fd` (all of them only for root).
fn owner(addr: SocketAddr) -> Option<(u32, String)> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = fs::read_to_string(table) {
            inodes.extend(super::listening_inodes(&text, addr));
        }
    }
    if inodes.is_empty() {
        return None;
    }
    let wanted: Vec<String> = inodes.iter().map(|inode| format!("socket:[{inode}]")).collect();
    let own = std::process::id();
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        if pid == own {
            continue;
        }
        let Ok(fds) = fs::read_dir(entry.path().join("fd")) else { continue };
        for fd in fds.flatten() {
            let Ok(target) = fs::read_link(fd.path()) else { continue };
            if wanted.iter().any(|w| target.as_os_str() == w.as_str()) {
                let command = fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
                return Some((pid, command.trim().to_owned()));
            }
        }
    }
    None
}

/// The path itself or its nearest ancestor that exists (`.` for a relative path's root).
fn nearest_existing(path: &Path) -> (PathBuf, Option<fs::Metadata>) {
    for candidate in path.ancestors() {
        let candidate = if candidate.as_os_str().is_empty() { Path::new(".") } else { candidate };
        if let Ok(metadata) = fs::metadata(candidate) {
            return (candidate.to_path_buf(), Some(metadata));
        }
    }
    (path.to_path_buf(), None)
}

/// Creates, writes, fsyncs and removes a file of this process in `dir`.
fn probe_write(dir: &Path) -> Result<(), String> {
    let path = dir.join(format!(".tinyedge-check-{}", std::process::id()));
    let written = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .and_then(|mut file| file.write_all(&[0u8; 4096]).and_then(|()| file.sync_all()));
    let _ = fs::remove_file(&path);
    written.map_err(|e| format!("{} is not writable: {e}", dir.display()))
}

fn writable(dir: &Path) -> Result<String, String> {
    let (found, metadata) = nearest_existing(dir);
    let Some(metadata) = metadata else { return Err(format!("{}: no part of the path exists", dir.display())) };
    if !metadata.is_dir() {
        return Err(if found == dir {
            format!("{} is not a directory", dir.display())
        } else {
            format!("{} cannot be created: {} is not a directory", dir.display(), found.display())
        });
    }
    probe_write(&found)?;
    if found == dir {
        Ok(format!("{} is writable", dir.display()))
    } else {
        Ok(format!(
            "{} does not exist yet; {} is writable, so `tinyedge run` can create it",
            dir.display(),
            found.display()
        ))
    }
}

fn data_dir(config: &Config, store_dir: &Path) -> Check {
    let mut dirs = vec![config.data_dir.as_path()];
    if !store_dir.starts_with(&config.data_dir) {
        dirs.push(store_dir);
    }
    let mut found = Vec::new();
    for dir in dirs {
        match writable(dir) {
            Ok(what) => found.push(what),
            Err(e) => {
                return Check::fail(
                    "data-dir",
                    e,
                    "tinyedge keeps its keys, certificates, twins, store and status there: make it a writable \
                     directory (ownership, a read-only mount), or set data_dir / [store] dir",
                )
            }
        }
    }
    Check::pass("data-dir", found.join("; "))
}

fn disk_space(store: &StoreConfig, used: u64) -> Check {
    let (target, _) = nearest_existing(&store.dir);
    match rustix::fs::statvfs(&target) {
        Ok(stats) => {
            let free = stats.f_bavail.saturating_mul(stats.f_frsize);
            let (outcome, detail) = super::disk_space(free, used, store.max_bytes);
            Check::new(
                "disk-space",
                outcome,
                format!("{}: {detail}", target.display()),
                Some("free disk space, or lower [store] max_bytes (or the deployment's storeLimits.maxSizeBytes) to what the disk holds".into()),
            )
        }
        Err(e) => Check::warn(
            "disk-space",
            format!("{}: cannot read the free space: {e}", target.display()),
            "check the mount",
        ),
    }
}

/// The store check and the bytes the store's files take.
fn store(store: &StoreConfig, running: Option<&Status>) -> (Check, u64) {
    if let Some(section) = running.and_then(|s| s.doc.get("store")) {
        let bytes = section["bytes_on_disk"].as_u64().unwrap_or(0);
        return (super::store_from_status(section, store.max_bytes), bytes);
    }
    if !store.dir.exists() {
        return (Check::pass("store", format!("{}: empty (created at the first start)", store.dir.display())), 0);
    }
    match store_scan::scan_dir(&store.dir) {
        Ok(scan) => (store_scan::verdict(&store.dir, &scan, store.max_bytes), scan.bytes),
        Err(e) => (Check::fail("store", e, "the store's directory must be readable by tinyedge"), 0),
    }
}

#[cfg(feature = "agent")]
fn containerd(config: &Config) -> Check {
    use tinyedge_agent::containerd::{Containerd, CtrError};
    if !config.agent.enabled {
        return Check::skipped("containerd", "[agent] enabled = false (the hub runs alone)");
    }
    let socket = &config.agent.containerd;
    let result = smol::block_on(async {
        let attempt = async { Containerd::connect(socket, &config.agent.namespace).await?.version().await };
        let limit = async {
            smol::Timer::after(CONTAINERD_TIMEOUT).await;
            Err(CtrError::other(format!(
                "containerd at {}: no answer within {} s",
                socket.display(),
                CONTAINERD_TIMEOUT.as_secs()
            )))
        };
        smol::future::or(attempt, limit).await
    });
    match result {
        Ok((version, revision)) => {
            Check::pass("containerd", format!("containerd {version} (revision {revision}) at {}", socket.display()))
        }
        Err(e) => Check::fail(
            "containerd",
            e.message,
            "start containerd (`systemctl start containerd`) or set [agent] containerd to its socket; \
             [agent] enabled = false runs the hub alone",
        ),
    }
}

#[cfg(not(feature = "agent"))]
fn containerd(_config: &Config) -> Check {
    Check::skipped("containerd", "this tinyedge is built without the agent (cargo feature `agent`)")
}

fn cgroups(config: &Config) -> Check {
    if !config.agent.enabled {
        return Check::skipped("cgroups", "[agent] enabled = false (no modules to limit)");
    }
    let root = Path::new(CGROUP_ROOT);
    let own = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    if let Ok(controllers) = fs::read_to_string(root.join("cgroup.controllers")) {
        let controllers: Vec<String> = controllers.split_whitespace().map(str::to_owned).collect();
        let limit = super::own_memory_limit_file(&own, 2).and_then(|relative| {
            [root.join(&relative), root.join("memory.max")].iter().find_map(|p| fs::read_to_string(p).ok())
        });
        return super::cgroups(2, &controllers, limit.as_deref());
    }
    if root.join("memory").is_dir() {
        let controllers: Vec<String> = ["memory", "cpu", "cpuacct", "pids"]
            .iter()
            .filter(|c| root.join(c).is_dir())
            .map(|c| (*c).to_owned())
            .collect();
        let limit = super::own_memory_limit_file(&own, 1).and_then(|relative| {
            [root.join("memory").join(&relative), root.join("memory/memory.limit_in_bytes")]
                .iter()
                .find_map(|p| fs::read_to_string(p).ok())
        });
        return super::cgroups(1, &controllers, limit.as_deref());
    }
    Check::fail(
        "cgroups",
        format!("no cgroup filesystem at {CGROUP_ROOT}"),
        "mount cgroup2 at /sys/fs/cgroup (systemd does): containers need it",
    )
}

/// The identity the runtime's cloud link connects as, and its key.
fn upstream_identity(config: &Config, device_key: &[u8]) -> (Option<String>, Vec<u8>) {
    match config.upstream.as_ref().map(|u| u.protocol.as_str()) {
        Some("mqtt") => (None, device_key.to_vec()),
        _ => (Some("$edgeHub".to_owned()), identity::derive_module_key(device_key, "$edgeHub")),
    }
}

/// Whether the running runtime reports `client_id` connected upstream right now.
fn runtime_connected(status: &Value, client_id: &str, per_identity: bool) -> bool {
    let upstream = &status["upstream"];
    if !per_identity {
        return upstream["connected"].as_bool().unwrap_or(false);
    }
    upstream["links"]
        .as_array()
        .is_some_and(|links| links.iter().any(|l| l["identity"] == client_id && l["connected"] == true))
}

fn upstream(config: &Config, device_key: Option<&[u8]>, running: Option<&Status>) -> Check {
    use tinyedge_hub::upstream::{probe, LinkError, ProbeError, UpstreamConfig};
    let Some(settings) = &config.upstream else {
        return Check::skipped("upstream", "no [upstream] configured ($upstream messages stay in the store)");
    };
    let Some(device_key) = device_key else {
        return Check::fail("upstream", "no device key to sign a SAS token with", "see the device-key check");
    };
    let (module, key) = upstream_identity(config, device_key);
    let client_id = module.as_ref().map_or_else(|| config.device_id.clone(), |m| format!("{}/{m}", config.device_id));
    let mut upstream =
        UpstreamConfig::new(settings.url.clone(), config.iothub_hostname.clone(), config.device_id.clone(), key);
    upstream.module_id = module.clone();
    upstream.ca = settings.ca.clone();
    // A second CONNECT as the identity the runtime holds would take its connection over (IoT
    // Hub keeps one per identity): while it is connected, its connection is the proof.
    let held = running.is_some_and(|s| runtime_connected(&s.doc, &client_id, module.is_some()));
    let started = Instant::now();
    let result = smol::block_on(probe(upstream, !held, UPSTREAM_TIMEOUT));
    let ms = started.elapsed().as_millis();
    match result {
        Ok(target) => {
            let tls = if settings.url.starts_with("mqtts://") { "TLS verified" } else { "no TLS (mqtt://)" };
            let auth = if held {
                format!("the running tinyedge is connected as {client_id}")
            } else {
                format!("CONNECT as {client_id} accepted (CONNACK 0)")
            };
            Check::pass("upstream", format!("{target}: {tls}, {auth}, in {ms} ms"))
        }
        Err(error) => {
            let hint = match &error {
                ProbeError::Setup(_) => "fix [upstream] url and ca",
                ProbeError::Link(LinkError::Connect { .. }) | ProbeError::Link(LinkError::ConnectTimeout(_)) => {
                    "check the network, DNS and firewall (outbound 8883 for IoT Hub), and [upstream] url"
                }
                ProbeError::Link(LinkError::Tls(_)) => {
                    "the server's certificate is not trusted for this host name: set [upstream] ca to its CA \
                     (or install ca-certificates), and check the clock"
                }
                ProbeError::Link(LinkError::Refused(_)) => {
                    "IoT Hub refused the identity: check device_id, iothub_hostname and the device key against \
                     the device in IoT Hub, and that the device is enabled"
                }
                ProbeError::Link(_) => "the upstream hub closed the connection or answered something else than CONNACK",
            };
            Check::fail("upstream", format!("{} as {client_id}: {error}", settings.url), hint)
        }
    }
}
