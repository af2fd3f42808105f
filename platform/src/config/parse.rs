//! TOML text → validated [`Config`], one key at a time so errors can name the key.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use toml::{Table, Value};

use super::*;
use crate::identity;

const TOP_KEYS: &[&str] = &[
    "hostname",
    "iothub_hostname",
    "device_id",
    "device_key",
    "data_dir",
    "deployment",
    "log_level",
    "hub",
    "store",
    "upstream",
    "devices",
    "agent",
    "metrics",
    "telemetry",
];
const METRICS_KEYS: &[&str] = &["listen"];
const TELEMETRY_KEYS: &[&str] = &["enabled", "scrape_interval_secs", "upload_interval_secs"];
const AGENT_KEYS: &[&str] = &[
    "enabled",
    "containerd",
    "namespace",
    "log_max_bytes",
    "stop_timeout_secs",
    "max_restarts",
    "cool_off_ms",
    "cool_off_max_ms",
    "intensive_care_secs",
    "insecure_registries",
    "workload_uri",
];
const STORE_KEYS: &[&str] = &["dir", "max_bytes", "fsync", "fsync_interval_ms", "when_full"];
const UPSTREAM_KEYS: &[&str] = &[
    "url",
    "ca",
    "protocol",
    "backoff_max_secs",
    "max_connections",
    "idle_timeout_secs",
    "api_url",
    "scope_refresh_secs",
];
/// Longest reconnect backoff allowed: an hour offline after the link comes back is already
/// more than any gateway wants.
const BACKOFF_MAX_SECS_LIMIT: usize = 3600;
/// Longest fsync interval: beyond a minute the "interval" stops bounding the loss window in
/// any useful way.
const FSYNC_INTERVAL_MS_MAX: usize = 60_000;
const HUB_KEYS: &[&str] = &[
    "mqtt",
    "mqtts",
    "https",
    "amqps",
    "tls_cert",
    "tls_key",
    "max_packet_bytes",
    "subscriber_queue_max",
    "max_inflight",
    "max_connections",
    "max_unauthenticated",
    "connect_timeout_secs",
];
const DEVICE_KEYS: &[&str] = &["id", "key"];

/// DNS limit on a full name (RFC 1035).
pub const HOSTNAME_MAX_BYTES: usize = 253;
/// DNS limit on one label (RFC 1035).
const HOSTNAME_LABEL_MAX_BYTES: usize = 63;
/// The gateway hostname is also the server certificate's common name, which X.509 caps at 64
/// characters (`ub-common-name`); IoT Edge applies the same limit.
pub const GATEWAY_HOSTNAME_MAX_BYTES: usize = 64;

/// Checks that `name` is an IP address or a DNS name of letters, digits, `-` and dots.
pub fn check_hostname(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("it must not be empty");
    }
    if name.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    if name.len() > HOSTNAME_MAX_BYTES {
        return Err("it is longer than 253 characters");
    }
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= HOSTNAME_LABEL_MAX_BYTES
            && label.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    if !name.split('.').all(label_ok) {
        return Err("each dot-separated part must be 1-63 letters, digits or '-', not starting or ending with '-'");
    }
    Ok(())
}

/// One TOML table being consumed; `prefix` makes key names in errors absolute (`hub.`).
struct Section {
    table: Table,
    prefix: String,
}

impl Section {
    /// Refuses unknown keys first: a typo is the likeliest cause of any later error.
    fn new(table: Table, prefix: String, known: &[&str]) -> Result<Section, ConfigError> {
        if let Some(unknown) = table.keys().find(|key| !known.contains(&key.as_str())) {
            return Err(ConfigError::UnknownKey { key: format!("{prefix}{unknown}") });
        }
        Ok(Section { table, prefix })
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn wrong_type(&self, name: &str, expected: &'static str, found: &Value) -> ConfigError {
        ConfigError::WrongType { key: self.key(name), expected, found: found.type_str() }
    }

    fn string(&mut self, name: &str) -> Result<Option<String>, ConfigError> {
        match self.table.remove(name) {
            None => Ok(None),
            Some(Value::String(value)) => Ok(Some(value)),
            Some(other) => Err(self.wrong_type(name, "a string", &other)),
        }
    }

    fn non_empty_string(&mut self, name: &str) -> Result<Option<String>, ConfigError> {
        match self.string(name)? {
            Some(value) if value.is_empty() => Err(ConfigError::Empty { key: self.key(name) }),
            other => Ok(other),
        }
    }

    /// A path, resolved against `base_dir` when relative.
    fn path(&mut self, name: &str, base_dir: &Path) -> Result<Option<PathBuf>, ConfigError> {
        Ok(self.non_empty_string(name)?.map(|value| base_dir.join(value)))
    }

    fn count(&mut self, name: &str, min: usize, max: usize) -> Result<Option<usize>, ConfigError> {
        let value = match self.table.remove(name) {
            None => return Ok(None),
            Some(Value::Integer(value)) => value,
            Some(other) => return Err(self.wrong_type(name, "an integer", &other)),
        };
        match usize::try_from(value) {
            Ok(count) if (min..=max).contains(&count) => Ok(Some(count)),
            _ => Err(ConfigError::OutOfRange { key: self.key(name), value, min: min as u64, max: max as u64 }),
        }
    }

    fn table(&mut self, name: &str) -> Result<Option<Table>, ConfigError> {
        match self.table.remove(name) {
            None => Ok(None),
            Some(Value::Table(table)) => Ok(Some(table)),
            Some(other) => Err(self.wrong_type(name, "a table", &other)),
        }
    }

    fn array(&mut self, name: &str, expected: &'static str) -> Result<Vec<Value>, ConfigError> {
        match self.table.remove(name) {
            None => Ok(Vec::new()),
            Some(Value::Array(values)) => Ok(values),
            Some(other) => Err(self.wrong_type(name, expected, &other)),
        }
    }

    fn hostname(&mut self, name: &str, max_bytes: usize) -> Result<Option<String>, ConfigError> {
        let Some(value) = self.string(name)? else {
            return Ok(None);
        };
        let checked = check_hostname(&value).and_then(|()| {
            if value.len() > max_bytes {
                Err("it is longer than 64 characters, the limit for a certificate common name")
            } else {
                Ok(())
            }
        });
        match checked {
            Ok(()) => Ok(Some(value)),
            Err(reason) => Err(ConfigError::BadHostname { key: self.key(name), value, reason }),
        }
    }

    fn id(&mut self, name: &str) -> Result<Option<String>, ConfigError> {
        let Some(value) = self.string(name)? else {
            return Ok(None);
        };
        match identity::check_id(&value) {
            Ok(()) => Ok(Some(value)),
            Err(reason) => Err(ConfigError::BadId { key: self.key(name), value, reason }),
        }
    }

    fn symmetric_key(&mut self, name: &str) -> Result<Option<Vec<u8>>, ConfigError> {
        let Some(value) = self.string(name)? else {
            return Ok(None);
        };
        let bad_key = |reason: String| ConfigError::BadKey { key: self.key(name), reason };
        let key = BASE64
            .decode(value.as_bytes())
            .map_err(|_| bad_key("not standard base64 (as IoT Hub shows keys, e.g. \"q0Nx...=\")".to_owned()))?;
        identity::check_key_length(&key).map_err(bad_key)?;
        Ok(Some(key))
    }

    /// `""` turns a listener off.
    fn listener(&mut self, name: &str) -> Result<Option<Option<SocketAddr>>, ConfigError> {
        let Some(value) = self.string(name)? else {
            return Ok(None);
        };
        if value.is_empty() {
            return Ok(Some(None));
        }
        match value.parse::<SocketAddr>() {
            Ok(address) => Ok(Some(Some(address))),
            Err(_) => Err(ConfigError::BadAddress { key: self.key(name), value }),
        }
    }
}

/// See [`Config::from_toml_str`].
pub(super) fn parse(text: &str, base_dir: &Path) -> Result<Config, ConfigError> {
    if text.len() > CONFIG_MAX_BYTES {
        return Err(ConfigError::TooLarge { bytes: text.len(), max_bytes: CONFIG_MAX_BYTES });
    }
    let table: Table = text.parse().map_err(|error| syntax_error(text, &error))?;
    let mut top = Section::new(table, String::new(), TOP_KEYS)?;
    let defaults = Config::default();

    let hostname = top.hostname("hostname", GATEWAY_HOSTNAME_MAX_BYTES)?.unwrap_or(defaults.hostname);
    let iothub_hostname = top.hostname("iothub_hostname", HOSTNAME_MAX_BYTES)?.unwrap_or_else(|| hostname.clone());
    let device_id = top.id("device_id")?.unwrap_or(defaults.device_id);
    let device_key = top.symmetric_key("device_key")?;
    let data_dir = top.path("data_dir", base_dir)?.unwrap_or_else(|| base_dir.join(DEFAULT_DATA_DIR));
    let deployment = top.path("deployment", base_dir)?;
    let log_level = match top.string("log_level")? {
        None => defaults.log_level,
        Some(value) => value.parse().map_err(|_| ConfigError::BadLogLevel { value })?,
    };
    let hub = parse_hub(top.table("hub")?, base_dir)?;
    let metrics = parse_metrics(top.table("metrics")?, &hub)?;
    let store = parse_store(top.table("store")?, base_dir)?;
    let upstream = parse_upstream(top.table("upstream")?, base_dir)?;
    let devices = parse_devices(top.array("devices", "an array of [[devices]] tables")?, &device_id)?;
    let agent = parse_agent(top.table("agent")?, base_dir)?;
    let telemetry = parse_telemetry(top.table("telemetry")?)?;
    Ok(Config {
        hostname,
        iothub_hostname,
        device_id,
        device_key,
        data_dir,
        deployment,
        log_level,
        hub,
        store,
        upstream,
        devices,
        agent,
        metrics,
        telemetry,
    })
}

/// `[telemetry]`: enabled, and the two intervals (1 s to 7 days).
fn parse_telemetry(table: Option<Table>) -> Result<TelemetryConfig, ConfigError> {
    let mut telemetry = TelemetryConfig::default();
    let Some(table) = table else { return Ok(telemetry) };
    let mut section = Section::new(table, "telemetry.".to_owned(), TELEMETRY_KEYS)?;
    match section.table.remove("enabled") {
        None => {}
        Some(Value::Boolean(b)) => telemetry.enabled = b,
        Some(other) => return Err(section.wrong_type("enabled", "a boolean", &other)),
    }
    const WEEK: usize = 7 * 86_400;
    if let Some(secs) = section.count("scrape_interval_secs", 1, WEEK)? {
        telemetry.scrape_interval_secs = secs as u64;
    }
    if let Some(secs) = section.count("upload_interval_secs", 1, WEEK)? {
        telemetry.upload_interval_secs = secs as u64;
    }
    Ok(telemetry)
}

/// `[metrics] listen`, parsed like the `[hub]` listeners and refused when it repeats one of them.
fn parse_metrics(table: Option<Table>, hub: &HubConfig) -> Result<MetricsConfig, ConfigError> {
    let mut metrics = MetricsConfig::default();
    if let Some(table) = table {
        let mut section = Section::new(table, "metrics.".to_owned(), METRICS_KEYS)?;
        if let Some(listen) = section.listener("listen")? {
            metrics.listen = listen;
        }
    }
    let hub_listeners =
        [("hub.mqtt", hub.mqtt), ("hub.mqtts", hub.mqtts), ("hub.https", hub.https), ("hub.amqps", hub.amqps)];
    for (first, address) in hub_listeners {
        if let (Some(a), Some(b)) = (address, metrics.listen) {
            if a == b && a.port() != 0 {
                return Err(ConfigError::SameAddress { first, second: "metrics.listen", value: a.to_string() });
            }
        }
    }
    Ok(metrics)
}

fn parse_agent(table: Option<Table>, base_dir: &Path) -> Result<AgentConfig, ConfigError> {
    let mut agent = AgentConfig::default();
    let Some(table) = table else { return Ok(agent) };
    let mut section = Section::new(table, "agent.".to_owned(), AGENT_KEYS)?;
    match section.table.remove("enabled") {
        None => {}
        Some(Value::Boolean(b)) => agent.enabled = b,
        Some(other) => return Err(section.wrong_type("enabled", "a boolean", &other)),
    }
    if let Some(path) = section.path("containerd", base_dir)? {
        agent.containerd = path;
    }
    if let Some(ns) = section.non_empty_string("namespace")? {
        let ok = ns.len() <= 76
            && ns.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
            && ns.as_bytes()[0].is_ascii_alphanumeric();
        if !ok {
            return Err(ConfigError::BadChoice {
                key: section.key("namespace"),
                value: ns,
                expected: "letters, digits, '-', '.', '_' (starting with a letter or digit, at most 76)",
            });
        }
        agent.namespace = ns;
    }
    if let Some(v) = section.count("log_max_bytes", 4096, 1 << 30)? {
        agent.log_max_bytes = v as u64;
    }
    if let Some(v) = section.count("stop_timeout_secs", 0, 3600)? {
        agent.stop_timeout_secs = v as u64;
    }
    if let Some(v) = section.count("max_restarts", 0, 1_000_000)? {
        agent.max_restarts = v as u32;
    }
    if let Some(v) = section.count("cool_off_ms", 1, 86_400_000)? {
        agent.cool_off_ms = v as u64;
    }
    if let Some(v) = section.count("cool_off_max_ms", 1, 86_400_000)? {
        agent.cool_off_max_ms = v as u64;
    }
    if let Some(v) = section.count("intensive_care_secs", 1, 86_400 * 365)? {
        agent.intensive_care_secs = v as u64;
    }
    for (index, value) in section.array("insecure_registries", "an array of host:port strings")?.into_iter().enumerate()
    {
        match value {
            Value::String(host) if !host.is_empty() => agent.insecure_registries.push(host),
            other => {
                return Err(ConfigError::WrongType {
                    key: format!("agent.insecure_registries[{index}]"),
                    expected: "a non-empty string",
                    found: other.type_str(),
                })
            }
        }
    }
    if let Some(uri) = section.non_empty_string("workload_uri")? {
        agent.workload_uri = uri;
    }
    Ok(agent)
}

fn parse_store(table: Option<Table>, base_dir: &Path) -> Result<StoreSettings, ConfigError> {
    let mut store = StoreSettings::default();
    let Some(table) = table else { return Ok(store) };
    let mut section = Section::new(table, "store.".to_owned(), STORE_KEYS)?;
    store.dir = section.path("dir", base_dir)?;
    store.max_bytes = section.count("max_bytes", STORE_MAX_BYTES_MIN as usize, usize::MAX)?.map(|v| v as u64);
    let interval = section.count("fsync_interval_ms", 1, FSYNC_INTERVAL_MS_MAX)?;
    store.fsync = match section.string("fsync")?.as_deref() {
        // "interval_ms" was the name before acknowledgements stopped waiting for the fsync.
        None | Some("background" | "interval_ms") => {
            FsyncSetting::Background(interval.map_or(DEFAULT_FSYNC_INTERVAL_MS, |v| v as u64))
        }
        Some("always") => FsyncSetting::Always,
        Some("never") => FsyncSetting::Never,
        Some(other) => {
            return Err(ConfigError::BadChoice {
                key: section.key("fsync"),
                value: other.to_owned(),
                expected: "\"background\", \"always\", \"never\"",
            })
        }
    };
    store.when_full = match section.string("when_full")?.as_deref() {
        None | Some("drop_oldest") => WhenFull::DropOldest,
        Some("reject_new") => WhenFull::RejectNew,
        Some(other) => {
            return Err(ConfigError::BadChoice {
                key: section.key("when_full"),
                value: other.to_owned(),
                expected: "\"drop_oldest\", \"reject_new\"",
            })
        }
    };
    Ok(store)
}

fn parse_upstream(table: Option<Table>, base_dir: &Path) -> Result<Option<UpstreamSettings>, ConfigError> {
    let Some(table) = table else { return Ok(None) };
    let mut section = Section::new(table, "upstream.".to_owned(), UPSTREAM_KEYS)?;
    let url = section.non_empty_string("url")?.ok_or_else(|| ConfigError::MissingKey { key: section.key("url") })?;
    check_url(&url).map_err(|reason| ConfigError::BadUrl { key: section.key("url"), value: url.clone(), reason })?;
    let ca = section.path("ca", base_dir)?;
    let backoff_max_secs = section
        .count("backoff_max_secs", 1, BACKOFF_MAX_SECS_LIMIT)?
        .map_or(DEFAULT_UPSTREAM_BACKOFF_MAX_SECS, |v| v as u64);
    let protocol = section.string("protocol")?.unwrap_or_else(|| "iothub".to_owned());
    if protocol != "iothub" && protocol != "mqtt" {
        return Err(ConfigError::BadChoice {
            key: section.key("protocol"),
            value: protocol,
            expected: "\"iothub\" or \"mqtt\"",
        });
    }
    let max_connections = section
        .count("max_connections", 1, UPSTREAM_MAX_CONNECTIONS_LIMIT)?
        .map_or(DEFAULT_UPSTREAM_MAX_CONNECTIONS, |v| v as usize);
    let idle_timeout_secs =
        section.count("idle_timeout_secs", 1, 7 * 86_400)?.map_or(DEFAULT_UPSTREAM_IDLE_TIMEOUT_SECS, |v| v as u64);
    let api_url = match section.non_empty_string("api_url")? {
        Some(api_url) => {
            let rest = api_url.strip_prefix("https://").ok_or_else(|| ConfigError::BadUrl {
                key: section.key("api_url"),
                value: api_url.clone(),
                reason: "it must start with https://",
            })?;
            check_host_port(rest.strip_suffix('/').unwrap_or(rest)).map_err(|reason| ConfigError::BadUrl {
                key: section.key("api_url"),
                value: api_url.clone(),
                reason,
            })?;
            api_url.trim_end_matches('/').to_owned()
        }
        None => format!("https://{}", url_host(&url)),
    };
    let scope_refresh_secs =
        section.count("scope_refresh_secs", 1, 7 * 86_400)?.map_or(DEFAULT_SCOPE_REFRESH_SECS, |v| v as u64);
    Ok(Some(UpstreamSettings {
        url,
        ca,
        protocol,
        backoff_max_secs,
        max_connections,
        idle_timeout_secs,
        api_url,
        scope_refresh_secs,
    }))
}

/// The host of a checked `mqtt[s]://host[:port]` URL, brackets of an IPv6 address kept.
fn url_host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    split_host_port(rest).0
}

/// `host[:port]` into the host (IPv6 brackets kept) and the port text, if any.
fn split_host_port(rest: &str) -> (&str, Option<&str>) {
    match rest.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || host.starts_with('[') => (host, Some(port)),
        _ => (rest, None),
    }
}

/// `mqtt://host:port` or `mqtts://host:port` (port optional: 1883 / 8883).
fn check_url(url: &str) -> Result<(), &'static str> {
    let rest = url
        .strip_prefix("mqtts://")
        .or_else(|| url.strip_prefix("mqtt://"))
        .ok_or("it must start with mqtt:// or mqtts://")?;
    check_host_port(rest.strip_suffix('/').unwrap_or(rest))
}

/// `host[:port]`: a DNS name or IP address, and a port from 1 to 65535.
fn check_host_port(rest: &str) -> Result<(), &'static str> {
    let (host, port) = split_host_port(rest);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    check_hostname(host).map_err(|_| "the host is not a DNS name or IP address")?;
    if let Some(port) = port {
        port.parse::<u16>().ok().filter(|p| *p != 0).ok_or("the port is not a number from 1 to 65535")?;
    }
    Ok(())
}

fn parse_hub(table: Option<Table>, base_dir: &Path) -> Result<HubConfig, ConfigError> {
    let mut hub = HubConfig::default();
    let Some(table) = table else { return Ok(hub) };
    let mut section = Section::new(table, "hub.".to_owned(), HUB_KEYS)?;
    if let Some(mqtt) = section.listener("mqtt")? {
        hub.mqtt = mqtt;
    }
    if let Some(mqtts) = section.listener("mqtts")? {
        hub.mqtts = mqtts;
    }
    if let Some(https) = section.listener("https")? {
        hub.https = https;
    }
    if let Some(amqps) = section.listener("amqps")? {
        hub.amqps = amqps;
    }
    let listeners =
        [("hub.mqtt", hub.mqtt), ("hub.mqtts", hub.mqtts), ("hub.https", hub.https), ("hub.amqps", hub.amqps)];
    for (index, (first, a)) in listeners.iter().enumerate() {
        for (second, b) in &listeners[index + 1..] {
            // Port 0 asks the OS for a fresh port each bind, so it can repeat.
            if let (Some(a), Some(b)) = (a, b) {
                if a == b && a.port() != 0 {
                    return Err(ConfigError::SameAddress { first, second, value: a.to_string() });
                }
            }
        }
    }
    hub.tls_cert = section.path("tls_cert", base_dir)?;
    hub.tls_key = section.path("tls_key", base_dir)?;
    match (&hub.tls_cert, &hub.tls_key) {
        (Some(_), None) => {
            return Err(ConfigError::TlsPairIncomplete { present: "hub.tls_cert", missing: "hub.tls_key" })
        }
        (None, Some(_)) => {
            return Err(ConfigError::TlsPairIncomplete { present: "hub.tls_key", missing: "hub.tls_cert" })
        }
        _ => {}
    }
    let limits = [
        ("max_packet_bytes", MAX_PACKET_BYTES_MIN, MAX_PACKET_BYTES_MAX, &mut hub.max_packet_bytes),
        ("subscriber_queue_max", 1, SUBSCRIBER_QUEUE_MAX_LIMIT, &mut hub.subscriber_queue_max),
        ("max_inflight", 1, MAX_INFLIGHT_LIMIT, &mut hub.max_inflight),
        ("max_connections", 1, MAX_CONNECTIONS_LIMIT, &mut hub.max_connections),
        ("max_unauthenticated", 1, MAX_CONNECTIONS_LIMIT, &mut hub.max_unauthenticated),
    ];
    for (name, min, max, slot) in limits {
        if let Some(value) = section.count(name, min, max)? {
            *slot = value;
        }
    }
    // Both bounds fit in usize on every target (300 s).
    if let Some(secs) = section.count("connect_timeout_secs", 1, CONNECT_TIMEOUT_SECS_MAX as usize)? {
        hub.connect_timeout_secs = secs as u64;
    }
    Ok(hub)
}

fn parse_devices(values: Vec<Value>, edge_device_id: &str) -> Result<Vec<DeviceConfig>, ConfigError> {
    let mut seen = HashSet::with_capacity(values.len());
    let mut devices = Vec::with_capacity(values.len());
    for (index, value) in values.into_iter().enumerate() {
        let Value::Table(table) = value else {
            return Err(ConfigError::WrongType {
                key: format!("devices[{index}]"),
                expected: "a table",
                found: value.type_str(),
            });
        };
        let mut section = Section::new(table, format!("devices[{index}]."), DEVICE_KEYS)?;
        let id = section.id("id")?.ok_or_else(|| ConfigError::MissingKey { key: section.key("id") })?;
        let key = section.symmetric_key("key")?.ok_or_else(|| ConfigError::MissingKey { key: section.key("key") })?;
        if id == edge_device_id {
            return Err(ConfigError::DeviceIsEdge { id });
        }
        if !seen.insert(id.clone()) {
            return Err(ConfigError::DuplicateDevice { id });
        }
        devices.push(DeviceConfig { id, key });
    }
    Ok(devices)
}

fn syntax_error(text: &str, error: &toml::de::Error) -> ConfigError {
    let (line, column) = error.span().map_or((0, 0), |span| line_column(text, span.start));
    ConfigError::Syntax { line, column, message: error.message().to_owned() }
}

/// 1-based line and column (in characters) of byte `offset`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text.as_bytes()[..offset.min(text.len())];
    let line_start = before.iter().rposition(|&byte| byte == b'\n').map_or(0, |newline| newline + 1);
    let line = before.iter().filter(|&&byte| byte == b'\n').count() + 1;
    // Count UTF-8 lead bytes, i.e. characters, without needing `offset` on a char boundary.
    let column = before[line_start..].iter().filter(|&&byte| byte & 0xC0 != 0x80).count() + 1;
    (line, column)
}
