//! `tinyedge check`: what `iotedge check` does for IoT Edge — every precondition of a working
//! gateway tested from the outside, one `pass|warn|fail  <name>  <detail>` line each, with a
//! one-line hint on a warning or a failure; `--json` prints them as an array. A failure makes
//! the exit code 1; warnings do not.
//!
//! The pure parts (verdicts from facts, certificate expiry arithmetic, aggregation, output
//! formatting) are here; `probe` gathers the facts (files, sockets, containerd, the cloud) in
//! thin adapters; `x509` reads certificate validity; `store_scan` reads the store without
//! changing it.

mod probe;
mod store_scan;
pub mod x509;

use std::path::Path;

use serde_json::{json, Value};
use tinyedge_platform::Config;

use crate::failure::Failure;

/// A certificate expiring within this many days is a warning (as `iotedge check` does).
pub const EXPIRY_WARN_DAYS: i64 = 30;
/// Below this much free disk nothing can be stored (the store's smallest bound).
pub const DISK_FREE_MIN_BYTES: u64 = tinyedge_platform::config::STORE_MAX_BYTES_MIN;
/// The runtime rewrites `status.json` every 2 s; older than this, it is not running.
pub const RUNNING_STATUS_MAX_AGE_SECS: u64 = 10;
/// A clock behind the lower bound by more than this fails; less is a warning (builds on a
/// machine whose clock runs a little ahead are not an error).
pub const CLOCK_SLACK_SECS: i64 = 86_400;

/// The verdict of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    Pass,
    Warn,
    Fail,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Warn => "warn",
            Outcome::Fail => "fail",
        }
    }
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: String,
    pub outcome: Outcome,
    /// What was found, one line.
    pub detail: String,
    /// What to do about it (warn and fail only), one line.
    pub hint: Option<String>,
}

impl Check {
    pub fn new(name: &str, outcome: Outcome, detail: impl Into<String>, hint: Option<String>) -> Check {
        let hint = if outcome == Outcome::Pass { None } else { hint.map(|h| one_line(&h)) };
        Check { name: name.to_owned(), outcome, detail: one_line(&detail.into()), hint }
    }

    pub fn pass(name: &str, detail: impl Into<String>) -> Check {
        Check::new(name, Outcome::Pass, detail, None)
    }

    pub fn warn(name: &str, detail: impl Into<String>, hint: impl Into<String>) -> Check {
        Check::new(name, Outcome::Warn, detail, Some(hint.into()))
    }

    pub fn fail(name: &str, detail: impl Into<String>, hint: impl Into<String>) -> Check {
        Check::new(name, Outcome::Fail, detail, Some(hint.into()))
    }

    /// A check that does not apply to this configuration: a pass that says why.
    pub fn skipped(name: &str, why: impl std::fmt::Display) -> Check {
        Check::pass(name, format!("skipped: {why}"))
    }
}

/// Newlines (from error messages of other layers) would break the one-line format.
fn one_line(text: &str) -> String {
    text.split(['\n', '\r']).map(str::trim).filter(|part| !part.is_empty()).collect::<Vec<_>>().join(" ")
}

/// How many checks failed.
pub fn failures(checks: &[Check]) -> usize {
    checks.iter().filter(|c| c.outcome == Outcome::Fail).count()
}

/// `pass  <name>  <detail>` per check (names padded to one column), a `hint:` line under each
/// warning and failure, and a summary line.
pub fn render_text(checks: &[Check]) -> String {
    let width = checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
    let mut out = String::new();
    for check in checks {
        out.push_str(&format!("{}  {:<width$}  {}\n", check.outcome.as_str(), check.name, check.detail));
        if let Some(hint) = &check.hint {
            out.push_str(&format!("      {:<width$}  hint: {hint}\n", ""));
        }
    }
    let count = |outcome| checks.iter().filter(|c| c.outcome == outcome).count();
    out.push_str(&format!(
        "summary: {} checks, {} pass, {} warn, {} fail",
        checks.len(),
        count(Outcome::Pass),
        count(Outcome::Warn),
        count(Outcome::Fail)
    ));
    out
}

/// The checks as a JSON array of `{name, result, detail, hint}` (`hint` null on a pass).
pub fn to_json(checks: &[Check]) -> Value {
    Value::Array(
        checks
            .iter()
            .map(|c| json!({"name": c.name, "result": c.outcome.as_str(), "detail": c.detail, "hint": c.hint}))
            .collect(),
    )
}

pub fn render_json(checks: &[Check]) -> String {
    serde_json::to_string_pretty(&to_json(checks)).unwrap_or_default()
}

/// `YYYY-MM-DD` of unix seconds.
pub fn date(unix_secs: i64) -> String {
    let (year, month, day) = tinyedge_platform::utc::civil_from_days(unix_secs.div_euclid(86_400));
    format!("{year:04}-{month:02}-{day:02}")
}

/// A certificate's validity at `now` (unix seconds): fail before `not_before` or after
/// `not_after`, warn within [`EXPIRY_WARN_DAYS`] of `not_after`.
pub fn expiry(info: &x509::CertInfo, now: i64) -> (Outcome, String) {
    let name = info.common_name.as_deref().map_or_else(String::new, |cn| format!("CN={cn}, "));
    if now < info.not_before {
        return (
            Outcome::Fail,
            format!("{name}not valid before {} (the clock reads {})", date(info.not_before), date(now)),
        );
    }
    if now > info.not_after {
        let ago = (now - info.not_after) / 86_400;
        return (Outcome::Fail, format!("{name}expired on {} ({ago} days ago)", date(info.not_after)));
    }
    let left = (info.not_after - now) / 86_400;
    if left < EXPIRY_WARN_DAYS {
        return (Outcome::Warn, format!("{name}expires on {}, in {left} days", date(info.not_after)));
    }
    (Outcome::Pass, format!("{name}valid until {} ({left} days)", date(info.not_after)))
}

/// The clock against a lower bound it cannot be below (this binary's build, its release).
pub fn clock(now: i64, floor: i64, floor_what: &str) -> (Outcome, String) {
    let shown = tinyedge_platform::utc::UtcDateTime::from_unix_millis(u64::try_from(now.max(0)).unwrap_or(0) * 1000);
    if now < floor - CLOCK_SLACK_SECS {
        return (Outcome::Fail, format!("the clock reads {shown}, before {floor_what} ({})", date(floor)));
    }
    if now < floor {
        return (Outcome::Warn, format!("the clock reads {shown}, a little before {floor_what} ({})", date(floor)));
    }
    (Outcome::Pass, format!("UTC {shown}, after {floor_what} ({})", date(floor)))
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Free space for the store: `free` bytes on its filesystem, `used` by its files already,
/// bound `max_bytes`. A store that cannot reach its bound is a warning (it refuses messages at
/// disk full, and takes them again when there is room); no room at all is a failure.
pub fn disk_space(free: u64, used: u64, max_bytes: u64) -> (Outcome, String) {
    let detail = format!("{} free, store bound {} ({} used)", mib(free), mib(max_bytes), mib(used));
    if free < DISK_FREE_MIN_BYTES {
        (Outcome::Fail, detail)
    } else if free.saturating_add(used) < max_bytes {
        (Outcome::Warn, format!("{detail}: the disk fills before the store reaches its bound"))
    } else {
        (Outcome::Pass, detail)
    }
}

/// Who holds a listening port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortState {
    /// Nothing listens: `tinyedge run` can bind it.
    Free,
    /// A process listens; `command` from `/proc/{pid}/comm`.
    Held { pid: u32, command: String },
    /// In use, by a process this user cannot see.
    HeldUnknown,
    /// Binding failed otherwise (address not on this machine, permission).
    Error(String),
}

/// The process name of the runtime, as `/proc/{pid}/comm` shows it.
pub const RUNTIME_COMMAND: &str = "tinyedge";

/// `hub.mqtt` → `port-mqtt`, `metrics.listen` → `port-metrics`.
pub fn port_name(key: &str) -> String {
    let short = key.strip_prefix("hub.").unwrap_or_else(|| key.split('.').next().unwrap_or(key));
    format!("port-{short}")
}

/// The inodes of the sockets listening on `addr` (or on a wildcard address of its port) in a
/// `/proc/net/tcp` or `/proc/net/tcp6` table. Addresses there are the kernel's network-order
/// words printed as native-endian hex, so their bytes are the words' native bytes.
pub fn listening_inodes(table: &str, addr: std::net::SocketAddr) -> Vec<u64> {
    const LISTEN: &str = "0A";
    let mut inodes = Vec::new();
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(state), Some(inode)) = (fields.get(1), fields.get(3), fields.get(9)) else { continue };
        let Some((ip_hex, port_hex)) = local.split_once(':') else { continue };
        if *state != LISTEN || u16::from_str_radix(port_hex, 16).ok() != Some(addr.port()) {
            continue;
        }
        let words: Option<Vec<u32>> = (0..ip_hex.len() / 8)
            .map(|i| ip_hex.get(i * 8..i * 8 + 8).and_then(|w| u32::from_str_radix(w, 16).ok()))
            .collect();
        let bytes: Vec<u8> = words.unwrap_or_default().iter().flat_map(|w| w.to_ne_bytes()).collect();
        let ip = match bytes.len() {
            4 => std::net::IpAddr::from(<[u8; 4]>::try_from(bytes.as_slice()).unwrap_or_default()),
            16 => {
                let v6 = std::net::Ipv6Addr::from(<[u8; 16]>::try_from(bytes.as_slice()).unwrap_or_default());
                v6.to_ipv4_mapped().map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4)
            }
            _ => continue,
        };
        if ip == addr.ip() || ip.is_unspecified() || addr.ip().is_unspecified() {
            inodes.extend(inode.parse::<u64>().ok());
        }
    }
    inodes
}

/// Where this process's memory limit is, relative to the cgroup mount of `version` (1: the
/// `memory` hierarchy, 2: the unified one), from `/proc/self/cgroup`.
pub fn own_memory_limit_file(proc_self_cgroup: &str, version: u8) -> Option<std::path::PathBuf> {
    for line in proc_self_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else { continue };
        let path = path.trim_start_matches('/');
        if version == 2 && id == "0" && controllers.is_empty() {
            return Some(std::path::Path::new(path).join("memory.max"));
        }
        if version == 1 && controllers.split(',').any(|c| c == "memory") {
            return Some(std::path::Path::new(path).join("memory.limit_in_bytes"));
        }
    }
    None
}

/// The cgroup verdict: modules' `HostConfig.Memory` and `NanoCpus` need the memory and cpu
/// controllers; `memory_limit` is this process's own limit file's content, if readable.
pub fn cgroups(version: u8, controllers: &[String], memory_limit: Option<&str>) -> Check {
    let missing: Vec<&str> =
        ["memory", "cpu"].into_iter().filter(|c| !controllers.iter().any(|have| have == c)).collect();
    let limit = match memory_limit.map(str::trim) {
        None => "unreadable".to_owned(),
        Some("max") => "none".to_owned(),
        // cgroup v1 writes "no limit" as the largest page-aligned i64.
        Some(text) => match text.parse::<u64>() {
            Ok(bytes) if bytes >= 1 << 62 => "none".to_owned(),
            Ok(bytes) => mib(bytes),
            Err(_) => text.to_owned(),
        },
    };
    let detail =
        format!("cgroup v{version}, controllers {}; tinyedge's own memory limit: {limit}", controllers.join(" "));
    if !missing.is_empty() {
        return Check::warn(
            "cgroups",
            format!("{detail}; missing {}", missing.join(" and ")),
            "modules' HostConfig.Memory/NanoCpus cannot be applied: enable the controllers (kernel command line \
             cgroup_enable=memory, or systemd's cgroup v2)",
        );
    }
    if memory_limit.is_none() {
        return Check::warn(
            "cgroups",
            detail,
            "the limit files under /sys/fs/cgroup cannot be read: is /sys/fs/cgroup mounted fully?",
        );
    }
    Check::pass("cgroups", detail)
}

/// A listener's verdict. `optional` listeners (the default metrics and method API addresses)
/// are turned off with a warning by the runtime when they cannot bind, so that is a warning
/// here too; any other listener must bind.
pub fn port(key: &str, addr: std::net::SocketAddr, state: &PortState, optional: bool) -> Check {
    let name = port_name(key);
    let bad = if optional { Outcome::Warn } else { Outcome::Fail };
    let off = if optional { "; the runtime leaves it off" } else { "" };
    match state {
        PortState::Free => Check::pass(&name, format!("{key} {addr}: free")),
        PortState::Held { pid, command } if command == RUNTIME_COMMAND => {
            Check::pass(&name, format!("{key} {addr}: in use by tinyedge (pid {pid})"))
        }
        PortState::Held { pid, command } => Check::new(
            &name,
            bad,
            format!("{key} {addr}: in use by {command} (pid {pid}){off}"),
            Some(format!("stop {command}, or set {key} to another address (\"\" turns it off)")),
        ),
        PortState::HeldUnknown => Check::warn(
            &name,
            format!("{key} {addr}: in use by a process this user cannot see"),
            "run `tinyedge check` as root to see which process holds it",
        ),
        PortState::Error(error) => Check::new(
            &name,
            bad,
            format!("{key} {addr}: cannot bind: {error}{off}"),
            Some(format!("set {key} to an address of this machine that this user may bind")),
        ),
    }
}

/// The store's part of a fresh `status.json` (see `crate::cloud::store_status`): what the
/// running store holds and what its recovery found at start.
pub fn store_from_status(store: &Value, max_bytes: u64) -> Check {
    let number = |key: &str| store.get(key).and_then(Value::as_u64).unwrap_or(0);
    let recovery = &store["recovery"];
    let lost = recovery["records_lost"].as_u64().unwrap_or(0);
    let damage = recovery["damage_count"].as_u64().unwrap_or(0);
    let registry = recovery["registry"].as_str().unwrap_or("unknown");
    let checkpoints = recovery["checkpoints"].as_str().unwrap_or("unknown");
    let bytes = number("bytes_on_disk");
    let detail = format!(
        "running: {} records in {} segments, {} of {} bound; at start: {lost} records lost, registry {registry}, checkpoints {checkpoints}",
        number("records_stored"),
        number("segments"),
        mib(bytes),
        mib(max_bytes),
    );
    let clean = |state: &str| matches!(state, "loaded" | "created" | "missing");
    if lost > 0 || damage > 0 || !clean(registry) || !clean(checkpoints) {
        return Check::warn(
            "store",
            detail,
            "the store was damaged (power cut or disk error) and repaired at start; `tinyedge store stats` shows the details",
        );
    }
    if bytes > max_bytes + max_bytes / 8 {
        return Check::warn("store", detail, "the store is above its bound: lower writes or raise [store] max_bytes");
    }
    Check::pass("store", detail)
}

/// `tinyedge check [--json]`: prints the checks; fails (exit 1) when any check failed.
pub fn command(config: &Config, source: Option<&Path>, json: bool) -> Result<(), Failure> {
    let checks = run(config, source);
    crate::out(&if json { render_json(&checks) } else { render_text(&checks) });
    match failures(&checks) {
        0 => Ok(()),
        n => Err(Failure::Runtime(format!("{n} check(s) failed"))),
    }
}

/// What `check` prints when the config itself cannot be loaded: that one failed check.
pub fn config_failure(error: &str, json: bool) -> String {
    let checks = [Check::fail(
        "config",
        error,
        "fix the key or file named; `tinyedge check` runs the other checks once it loads",
    )];
    if json {
        render_json(&checks)
    } else {
        render_text(&checks)
    }
}

/// Runs every check, in the order a person would fix things.
pub fn run(config: &Config, source: Option<&Path>) -> Vec<Check> {
    probe::run_all(config, source)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;

    fn info(not_before: i64, not_after: i64) -> x509::CertInfo {
        x509::CertInfo { not_before, not_after, common_name: Some("localhost".into()) }
    }

    #[test]
    fn certificate_expiry_passes_warns_within_30_days_and_fails_outside_validity() {
        let now = 1_796_083_200; // 2026-12-01
        let (outcome, detail) = expiry(&info(now - DAY, now + 365 * DAY), now);
        assert_eq!(outcome, Outcome::Pass);
        assert_eq!(detail, "CN=localhost, valid until 2027-12-01 (365 days)");
        let (outcome, detail) = expiry(&info(now - DAY, now + 29 * DAY + 5), now);
        assert_eq!((outcome, detail.as_str()), (Outcome::Warn, "CN=localhost, expires on 2026-12-30, in 29 days"));
        assert_eq!(expiry(&info(now - DAY, now + 30 * DAY), now).0, Outcome::Pass);
        let (outcome, detail) = expiry(&info(now - 400 * DAY, now - 3 * DAY), now);
        assert_eq!((outcome, detail.as_str()), (Outcome::Fail, "CN=localhost, expired on 2026-11-28 (3 days ago)"));
        let (outcome, detail) = expiry(&info(now + 2 * DAY, now + 400 * DAY), now);
        assert_eq!(outcome, Outcome::Fail);
        assert!(detail.contains("not valid before 2026-12-03"), "{detail}");
        assert_eq!(expiry(&info(now - DAY, now), now).0, Outcome::Warn, "the last second is still valid");
        let nameless = x509::CertInfo { common_name: None, ..info(now - DAY, now + 90 * DAY) };
        assert_eq!(expiry(&nameless, now).1, "valid until 2027-03-01 (90 days)");
    }

    #[test]
    fn clock_below_its_floor_fails_and_slightly_below_warns() {
        let floor = 1_796_083_200;
        assert_eq!(clock(floor + 10, floor, "the build").0, Outcome::Pass);
        assert_eq!(clock(floor - 3600, floor, "the build").0, Outcome::Warn);
        let (outcome, detail) = clock(0, floor, "the build");
        assert_eq!(outcome, Outcome::Fail);
        assert!(detail.contains("1970-01-01T00:00:00.000Z") && detail.contains("2026-12-01"), "{detail}");
    }

    #[test]
    fn disk_space_compares_free_plus_used_with_the_bound() {
        const MIB: u64 = 1 << 20;
        assert_eq!(disk_space(300 * MIB, 0, 256 * MIB).0, Outcome::Pass);
        assert_eq!(disk_space(200 * MIB, 100 * MIB, 256 * MIB).0, Outcome::Pass);
        let (outcome, detail) = disk_space(100 * MIB, 10 * MIB, 256 * MIB);
        assert_eq!(outcome, Outcome::Warn);
        assert_eq!(
            detail,
            "100.0 MiB free, store bound 256.0 MiB (10.0 MiB used): the disk fills before the store reaches its bound"
        );
        assert_eq!(disk_space(MIB / 2, 300 * MIB, 256 * MIB).0, Outcome::Fail);
    }

    #[test]
    fn ports_free_or_held_by_tinyedge_pass_others_fail_or_warn_when_optional() {
        let addr: std::net::SocketAddr = "127.0.0.1:1883".parse().expect("addr");
        assert_eq!(port("hub.mqtt", addr, &PortState::Free, false).outcome, Outcome::Pass);
        let ours = port("hub.mqtt", addr, &PortState::Held { pid: 7, command: "tinyedge".into() }, false);
        assert_eq!((ours.outcome, ours.name.as_str()), (Outcome::Pass, "port-mqtt"));
        assert_eq!(ours.detail, "hub.mqtt 127.0.0.1:1883: in use by tinyedge (pid 7)");
        let theirs = PortState::Held { pid: 9, command: "mosquitto".into() };
        let taken = port("hub.mqtt", addr, &theirs, false);
        assert_eq!(taken.outcome, Outcome::Fail);
        assert_eq!(
            taken.hint.as_deref(),
            Some("stop mosquitto, or set hub.mqtt to another address (\"\" turns it off)")
        );
        let metrics = port("metrics.listen", addr, &theirs, true);
        assert_eq!((metrics.outcome, metrics.name.as_str()), (Outcome::Warn, "port-metrics"));
        assert!(metrics.detail.ends_with("the runtime leaves it off"), "{}", metrics.detail);
        assert_eq!(port("hub.mqtt", addr, &PortState::HeldUnknown, false).outcome, Outcome::Warn);
        assert_eq!(port("hub.mqtt", addr, &PortState::Error("Cannot assign".into()), false).outcome, Outcome::Fail);
    }

    #[test]
    fn store_status_with_losses_warns() {
        let clean = json!({"records_stored": 3, "segments": 1, "bytes_on_disk": 4096,
            "recovery": {"records_lost": 0, "damage_count": 0, "registry": "loaded", "checkpoints": "loaded"}});
        let check = store_from_status(&clean, 1 << 20);
        assert_eq!(check.outcome, Outcome::Pass, "{check:?}");
        assert!(check.detail.starts_with("running: 3 records in 1 segments"), "{}", check.detail);
        let mut lossy = clean.clone();
        lossy["recovery"]["records_lost"] = json!(2);
        assert_eq!(store_from_status(&lossy, 1 << 20).outcome, Outcome::Warn);
        let mut repaired = clean.clone();
        repaired["recovery"]["registry"] = json!("repaired: bad checksum");
        assert_eq!(store_from_status(&repaired, 1 << 20).outcome, Outcome::Warn);
        let mut over = clean;
        over["bytes_on_disk"] = json!(2 << 20);
        assert_eq!(store_from_status(&over, 1 << 20).outcome, Outcome::Warn);
    }

    #[test]
    fn listening_sockets_are_found_by_port_and_address() {
        // Lines as Linux prints them on a little-endian machine (the test builds the hex the
        // same way, so it holds on big-endian ones too).
        let hex = |ip: [u8; 4]| format!("{:08X}", u32::from_ne_bytes(ip));
        let table = format!(
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
             0: {}:075B 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1 0\n\
             1: {}:075B {}:9C40 01 00000000:00000000 00:00000000 00000000     0        0 222 1 0\n\
             2: {}:22B3 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 333 1 0\n",
            hex([127, 0, 0, 1]),
            hex([127, 0, 0, 1]),
            hex([127, 0, 0, 1]),
            hex([0, 0, 0, 0]),
        );
        let at = |a: &str| listening_inodes(&table, a.parse().expect("addr"));
        assert_eq!(at("127.0.0.1:1883"), vec![111], "the established connection (222) is no listener");
        assert_eq!(at("0.0.0.0:1883"), vec![111]);
        assert_eq!(at("10.1.2.3:1883"), Vec::<u64>::new());
        assert_eq!(at("10.1.2.3:8883"), vec![333], "a wildcard listener holds the port on every address");
        let v6 = format!(
            "header\n 0: {}:075B 00000000000000000000000000000000:0000 0A 0:0 0:0 0 0 0 444 1\n",
            [[0u8, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0xFF, 0xFF], [127, 0, 0, 1]]
                .iter()
                .map(|w| hex(*w))
                .collect::<String>()
        );
        assert_eq!(listening_inodes(&v6, "127.0.0.1:1883".parse().expect("addr")), vec![444], "v4-mapped");
    }

    #[test]
    fn own_memory_limit_files_come_from_proc_self_cgroup() {
        let v1 = "4:memory:/system.slice/tinyedge.service\n1:cpu,cpuacct:/x\n0::/\n";
        assert_eq!(
            own_memory_limit_file(v1, 1),
            Some(std::path::PathBuf::from("system.slice/tinyedge.service/memory.limit_in_bytes"))
        );
        assert_eq!(
            own_memory_limit_file("0::/system.slice/tinyedge.service\n", 2),
            Some("system.slice/tinyedge.service/memory.max".into())
        );
        assert_eq!(own_memory_limit_file("0::/\n", 1), None);
    }

    #[test]
    fn cgroups_need_memory_and_cpu() {
        let all: Vec<String> = ["cpuset", "cpu", "io", "memory", "pids"].iter().map(|c| c.to_string()).collect();
        let check = cgroups(2, &all, Some("max\n"));
        assert_eq!(check.outcome, Outcome::Pass);
        assert_eq!(check.detail, "cgroup v2, controllers cpuset cpu io memory pids; tinyedge's own memory limit: none");
        assert!(cgroups(1, &all, Some("9223372036854771712")).detail.ends_with("limit: none"));
        assert!(cgroups(2, &all, Some("536870912")).detail.ends_with("limit: 512.0 MiB"));
        let some: Vec<String> = vec!["cpu".into(), "pids".into()];
        let check = cgroups(2, &some, Some("max"));
        assert_eq!(check.outcome, Outcome::Warn);
        assert!(check.detail.ends_with("missing memory"), "{}", check.detail);
        assert_eq!(cgroups(2, &all, None).outcome, Outcome::Warn);
    }

    fn sample() -> Vec<Check> {
        vec![
            Check::pass("config", "config.toml: valid"),
            Check::warn("runtime", "not running", "start it"),
            Check::fail("upstream", "cannot connect\nto hub:8883", "check the network"),
            Check::skipped("containerd", "[agent] enabled = false"),
        ]
    }

    #[test]
    fn failures_are_counted_and_warnings_are_not() {
        let checks = sample();
        assert_eq!(failures(&checks), 1);
        assert_eq!(failures(&checks[..2]), 0, "warnings are no failures");
        assert_eq!(failures(&[]), 0);
    }

    #[test]
    fn text_output_is_one_line_per_check_with_hints_and_a_summary() {
        let text = render_text(&sample());
        let expected = "\
pass  config      config.toml: valid
warn  runtime     not running
                  hint: start it
fail  upstream    cannot connect to hub:8883
                  hint: check the network
pass  containerd  skipped: [agent] enabled = false
summary: 4 checks, 2 pass, 1 warn, 1 fail";
        assert_eq!(text, expected);
    }

    #[test]
    fn json_output_is_an_array_of_name_result_detail_hint() {
        let doc: Value = serde_json::from_str(&render_json(&sample())).expect("JSON");
        assert_eq!(doc.as_array().map(Vec::len), Some(4));
        assert_eq!(doc[0], json!({"name": "config", "result": "pass", "detail": "config.toml: valid", "hint": null}));
        assert_eq!(doc[2]["result"], "fail");
        assert_eq!(doc[2]["hint"], "check the network");
        let failed: Value =
            serde_json::from_str(&config_failure("config.toml: hub.mqttt: unknown key", true)).expect("JSON");
        assert_eq!(failed[0]["name"], "config");
        assert_eq!(failed[0]["result"], "fail");
    }

    #[test]
    fn a_pass_never_carries_a_hint() {
        assert_eq!(Check::new("x", Outcome::Pass, "fine", Some("ignored".into())).hint, None);
    }
}
