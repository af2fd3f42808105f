//! The runtime config: a small TOML file, every key optional.
//!
//! ```toml
//! hostname = "gateway.local"        # TLS server name and GatewayHostName (default "localhost")
//! iothub_hostname = "myhub.azure-devices.net"  # SAS token audience (default: hostname)
//! device_id = "gateway-1"           # default "tinyedge"
//! device_key = "base64 key"         # default: generated, kept in {data_dir}/device.key
//! data_dir = "./tinyedge-data"
//! deployment = "deployment.json"    # IoT Edge deployment manifest (default: none)
//! log_level = "info"                # error|warn|info|debug|trace|off
//! [hub]
//! mqtt = "127.0.0.1:1883"           # plain listener; "" turns it off
//! mqtts = "127.0.0.1:8883"          # TLS listener; "" turns it off
//! https = "127.0.0.1:443"           # edgeHub's method HTTP API (TLS); "" turns it off
//! amqps = "127.0.0.1:5671"          # AMQP 1.0 over TLS (the SDKs' AMQP transport); "" turns it off
//! tls_cert = "server.pem"           # with tls_key; generated under data_dir if absent
//! tls_key = "server.key.pem"
//! max_packet_bytes = 262144
//! subscriber_queue_max = 1000
//! max_inflight = 16
//! max_connections = 10000          # sockets, counted from accept (CONNECT pending included)
//! max_unauthenticated = 64          # of those, sockets that have not finished CONNECT yet
//! connect_timeout_secs = 10         # accept → TLS handshake and CONNECT done, or closed
//! [store]                           # the on-disk store and forward log
//! dir = "store"                     # default {data_dir}/store
//! max_bytes = 268435456             # default 256 MiB; $edgeHub storeLimits.maxSizeBytes overrides
//! fsync = "background"              # background | always (power-safe) | never
//! fsync_interval_ms = 1000          # background: fsync at most this often, behind the PUBACKs
//! when_full = "drop_oldest"         # drop_oldest | reject_new
//! [upstream]                        # the cloud link (default: none; $upstream messages are kept)
//! url = "mqtts://myhub.azure-devices.net:8883"
//! ca = "extra-ca.pem"               # optional, added to the system roots
//! protocol = "iothub"
//! backoff_max_secs = 60             # reconnect backoff: 1 s doubling up to this, with jitter
//! api_url = "https://myhub.azure-devices.net"  # IoT Hub's HTTPS API (default: https://{url's host})
//! scope_refresh_secs = 3600         # "iothub": device scope refresh period (leaf identities)
//! [agent]                           # modules on containerd
//! enabled = true                    # false runs the hub alone
//! containerd = "/run/containerd/containerd.sock"
//! namespace = "tinyedge"            # containerd namespace of the modules
//! log_max_bytes = 1048576           # per module log file (two files kept)
//! stop_timeout_secs = 10            # SIGTERM → SIGKILL
//! max_restarts = 20                 # restart policy: failed after this many restarts
//! cool_off_ms = 10000               # backoff min(cool_off_ms × 2^restarts, cool_off_max_ms)
//! cool_off_max_ms = 300000
//! intensive_care_secs = 600         # restart count reset after running this long
//! insecure_registries = ["registry.lan:5000"]  # plain HTTP besides loopback
//! workload_uri = "unix:///var/run/iotedge/workload.sock"
//! [metrics]                         # Prometheus text endpoint, GET /metrics
//! listen = "127.0.0.1:9600"         # IoT Edge's metrics port; "" turns it off
//! [[devices]]                       # downstream devices allowed to connect
//! id = "sensor-7"
//! key = "base64 key"
//! ```
//!
//! The TOML is mapped by hand rather than with serde derive so that every error names the exact
//! key (`hub.mqttt`, `devices[2].key`) and unknown keys are refused instead of silently ignored.
//! Relative paths are resolved against the config file's directory, so a config works the same
//! from any working directory.

mod error;
mod parse;
#[cfg(test)]
mod tests;

use std::fmt;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

pub use error::ConfigError;
pub use parse::{check_hostname, GATEWAY_HOSTNAME_MAX_BYTES, HOSTNAME_MAX_BYTES};

use crate::fsutil;

/// A config is a few hundred bytes; 1 MiB leaves room for thousands of `[[devices]]` while
/// bounding what a wrong path (say, a log file) can make us parse.
pub const CONFIG_MAX_BYTES: usize = 1 << 20;

pub const DEFAULT_HOSTNAME: &str = "localhost";
pub const DEFAULT_DEVICE_ID: &str = "tinyedge";
/// Relative to the working directory for [`Config::default`], to the config file's directory
/// when loading a file.
pub const DEFAULT_DATA_DIR: &str = "tinyedge-data";
/// The IANA MQTT port, bound to loopback so a fresh install exposes nothing unencrypted.
pub const DEFAULT_MQTT_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 1883);
/// The IANA MQTT-over-TLS port edgeHub listens on; loopback until the operator opens it.
pub const DEFAULT_MQTTS_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8883);
/// edgeHub's HTTPS port (`httpSettings.port`), where SDK module clients call methods; loopback
/// like the MQTT listeners (modules share the host's network).
pub const DEFAULT_HTTPS_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 443);
/// The IANA AMQPS port edgeHub listens on, for SDK clients on the AMQP transport; loopback like
/// the MQTT listeners.
pub const DEFAULT_AMQPS_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 5671);
/// IoT Edge's metrics port (`Metrics__Listener__Port`), on loopback: the endpoint has no
/// authentication, so exposing it is the operator's choice.
pub const DEFAULT_METRICS_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9600);
/// IoT Hub's maximum message size, 256 KiB; edgeHub uses the same.
pub const DEFAULT_MAX_PACKET_BYTES: usize = 256 * 1024;
/// Smallest packet limit: below 1 KiB even a CONNECT with a SAS token password may not fit.
pub const MAX_PACKET_BYTES_MIN: usize = 1024;
/// Largest packet limit: MQTT's variable-length remaining length tops out just under 256 MiB.
pub const MAX_PACKET_BYTES_MAX: usize = 256 * 1024 * 1024;
/// Messages queued per subscriber before publishers are back-pressured.
pub const DEFAULT_SUBSCRIBER_QUEUE_MAX: usize = 1000;
/// Upper bound for `subscriber_queue_max`: at the default packet limit a full queue of a million
/// messages is already 256 GiB of worst case, far beyond any edge box.
pub const SUBSCRIBER_QUEUE_MAX_LIMIT: usize = 1_000_000;
/// edgeHub's `MaxPendingInboundAcknowledgements`.
pub const DEFAULT_MAX_INFLIGHT: usize = 16;
/// MQTT packet identifiers are 16-bit and non-zero, so at most 65 535 can be outstanding.
pub const MAX_INFLIGHT_LIMIT: usize = 65_535;
/// What a Raspberry Pi class gateway holds comfortably: an idle MQTT connection costs about
/// 2.6 KiB of tinyedge's memory (10,000: about 26 MiB) besides the kernel's socket buffers;
/// lowered at start to what the file descriptor limit allows.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Upper bound for `max_connections`: beyond this the per-process file descriptor limit, not
/// this setting, is what binds on any system we target.
pub const MAX_CONNECTIONS_LIMIT: usize = 1_000_000;
/// Sockets that have not finished CONNECT (TLS handshake included). A client needs one such
/// slot only for the few milliseconds its handshake and CONNECT take, so 64 lets dozens of
/// modules and devices reconnect at once after a restart while bounding what a peer that
/// opens sockets and says nothing can hold (64 descriptors and their TLS state).
pub const DEFAULT_MAX_UNAUTHENTICATED: usize = 64;
/// Time from accept to a complete CONNECT (TLS handshake included). A client on a gateway's
/// LAN needs well under a second; 10 s leaves room for a slow TLS handshake on a loaded ARM
/// board while freeing a silent socket's slot six times sooner than IoT Edge's 60 s
/// `ConnectArrivalTimeout`.
pub const DEFAULT_CONNECT_TIMEOUT_SECS: u64 = 10;
/// Longest `connect_timeout_secs`: IoT Edge's 60 s with room to spare for very slow links;
/// beyond 5 minutes a silent socket is not a client.
pub const CONNECT_TIMEOUT_SECS_MAX: u64 = 300;

const _: () = assert!(MAX_PACKET_BYTES_MIN <= DEFAULT_MAX_PACKET_BYTES);
const _: () = assert!(DEFAULT_MAX_PACKET_BYTES <= MAX_PACKET_BYTES_MAX);
const _: () = assert!(DEFAULT_SUBSCRIBER_QUEUE_MAX <= SUBSCRIBER_QUEUE_MAX_LIMIT);
const _: () = assert!(DEFAULT_MAX_INFLIGHT <= MAX_INFLIGHT_LIMIT);
const _: () = assert!(DEFAULT_MAX_CONNECTIONS <= MAX_CONNECTIONS_LIMIT);
const _: () = assert!(DEFAULT_MAX_UNAUTHENTICATED <= MAX_CONNECTIONS_LIMIT);
const _: () = assert!(DEFAULT_CONNECT_TIMEOUT_SECS >= 1 && DEFAULT_CONNECT_TIMEOUT_SECS <= CONNECT_TIMEOUT_SECS_MAX);

/// The whole runtime config. `Debug` redacts keys.
#[derive(Clone, PartialEq, Eq)]
pub struct Config {
    /// The gateway's name: TLS server name, SAN of the generated certificate, GatewayHostName.
    pub hostname: String,
    /// Audience of SAS tokens (`{iothub_hostname}/devices/..`).
    pub iothub_hostname: String,
    pub device_id: String,
    /// Decoded edge device key; `None` means "load or create `{data_dir}/device.key`".
    pub device_key: Option<Vec<u8>>,
    pub data_dir: PathBuf,
    /// Deployment manifest (IoT Edge JSON), if any.
    pub deployment: Option<PathBuf>,
    pub log_level: log::LevelFilter,
    pub hub: HubConfig,
    pub store: StoreSettings,
    /// The cloud link; `None` keeps `$upstream` messages in the store until one is configured.
    pub upstream: Option<UpstreamSettings>,
    pub devices: Vec<DeviceConfig>,
    pub agent: AgentConfig,
    pub metrics: MetricsConfig,
    pub telemetry: TelemetryConfig,
}

/// The `[telemetry]` table: IoT Edge's runtime-quality telemetry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetryConfig {
    /// Off also when the deployment's `edgeAgent` env has `SendRuntimeQualityTelemetry=false`.
    pub enabled: bool,
    /// How often the `ms_telemetry` series are sampled (IoT Edge's `MetricScrapeInterval`).
    pub scrape_interval_secs: u64,
    /// How often they are sent (IoT Edge's `MetricUploadInterval`); the first upload comes after
    /// a random delay within one interval.
    pub upload_interval_secs: u64,
}

/// IoT Edge's defaults: sampled every hour, sent once a day.
pub const DEFAULT_TELEMETRY_SCRAPE_SECS: u64 = 3600;
pub const DEFAULT_TELEMETRY_UPLOAD_SECS: u64 = 86_400;

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            enabled: true,
            scrape_interval_secs: DEFAULT_TELEMETRY_SCRAPE_SECS,
            upload_interval_secs: DEFAULT_TELEMETRY_UPLOAD_SECS,
        }
    }
}

/// The `[metrics]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    /// The Prometheus endpoint's address; `None` when turned off with `""`.
    pub listen: Option<SocketAddr>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { listen: Some(DEFAULT_METRICS_ADDR) }
    }
}

/// The `[agent]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    pub enabled: bool,
    pub containerd: PathBuf,
    pub namespace: String,
    pub log_max_bytes: u64,
    pub stop_timeout_secs: u64,
    pub max_restarts: u32,
    pub cool_off_ms: u64,
    pub cool_off_max_ms: u64,
    pub intensive_care_secs: u64,
    pub insecure_registries: Vec<String>,
    pub workload_uri: String,
}

pub const DEFAULT_CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";
pub const DEFAULT_NAMESPACE: &str = "tinyedge";

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            enabled: true,
            containerd: PathBuf::from(DEFAULT_CONTAINERD_SOCKET),
            namespace: DEFAULT_NAMESPACE.to_owned(),
            log_max_bytes: 1024 * 1024,
            stop_timeout_secs: 10,
            max_restarts: 20,
            cool_off_ms: 10_000,
            cool_off_max_ms: 300_000,
            intensive_care_secs: 600,
            insecure_registries: Vec::new(),
            workload_uri: "unix:///var/run/iotedge/workload.sock".to_owned(),
        }
    }
}

/// When the store makes appended messages durable. No setting makes an acknowledgement wait
/// for a timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncSetting {
    /// The default (`"background"`): acknowledge once written to the OS (a crash of tinyedge
    /// loses nothing acknowledged), fsync behind it at most every this many ms (a power cut loses
    /// at most about that much).
    Background(u64),
    /// Power-safe: acknowledge after the fsync that covers the message (natural group commit:
    /// an fsync starts as soon as the previous one ends).
    Always,
    /// Never fsync; acknowledge once written to the OS (lost on power cut, kept on crash).
    Never,
}

/// What the store does at `max_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenFull {
    DropOldest,
    RejectNew,
}

/// The `[store]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSettings {
    /// Default `{data_dir}/store`.
    pub dir: Option<PathBuf>,
    /// `None`: the deployment's `storeLimits.maxSizeBytes`, else [`DEFAULT_STORE_MAX_BYTES`].
    pub max_bytes: Option<u64>,
    pub fsync: FsyncSetting,
    pub when_full: WhenFull,
}

/// The `[upstream]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamSettings {
    /// `mqtt://host:port` or `mqtts://host:port`.
    pub url: String,
    /// Extra CA certificate(s) to trust besides the system roots.
    pub ca: Option<PathBuf>,
    /// `"iothub"` (default): one connection per identity, IoT Hub's device contract (twins,
    /// methods, C2D); `"mqtt"`: one connection as the edge device, telemetry only (plain
    /// MQTT brokers).
    pub protocol: String,
    /// Longest wait between reconnect attempts (exponential backoff from 1 s, with jitter).
    pub backoff_max_secs: u64,
    /// `"iothub"`: most identity connections open at once.
    pub max_connections: usize,
    /// `"iothub"`: an identity's connection without subscriptions is closed after this long
    /// without traffic.
    pub idle_timeout_secs: u64,
    /// IoT Hub's HTTPS API (`https://host[:port]`, no path), for the device scope; default
    /// `https://{host of url}` (port 443).
    pub api_url: String,
    /// `"iothub"`: how often the device scope (leaf identities and their keys) is fetched
    /// again; edgeHub's `DeviceScopeCacheRefreshRateSecs`.
    pub scope_refresh_secs: u64,
}

/// edgeHub's `DeviceScopeCacheRefreshRateSecs`.
pub const DEFAULT_SCOPE_REFRESH_SECS: u64 = 3600;

/// edgeHub's `MaxConnectedClients` (100) plus its own connection.
pub const DEFAULT_UPSTREAM_MAX_CONNECTIONS: usize = 101;
/// The most upstream connections a configuration may ask for.
pub const UPSTREAM_MAX_CONNECTIONS_LIMIT: usize = 10_000;
/// edgeHub's `CloudConnectionIdleTimeoutSecs`.
pub const DEFAULT_UPSTREAM_IDLE_TIMEOUT_SECS: u64 = 3600;

/// IoT Edge retries the cloud with exponential backoff up to 60 s.
pub const DEFAULT_UPSTREAM_BACKOFF_MAX_SECS: u64 = 60;

/// The store's default size bound.
pub const DEFAULT_STORE_MAX_BYTES: u64 = 256 * 1024 * 1024;
/// Smallest store bound: a few segments of the smallest size.
pub const STORE_MAX_BYTES_MIN: u64 = 1024 * 1024;
/// Default background fsync interval: at most one fsync a second (SD card wear), a power cut
/// loses at most about a second of acknowledged messages.
pub const DEFAULT_FSYNC_INTERVAL_MS: u64 = 1000;

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            dir: None,
            max_bytes: None,
            fsync: FsyncSetting::Background(DEFAULT_FSYNC_INTERVAL_MS),
            when_full: WhenFull::DropOldest,
        }
    }
}

/// The `[hub]` table: listeners and the broker's limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubConfig {
    /// Plain MQTT listener; `None` when turned off with `""`.
    pub mqtt: Option<SocketAddr>,
    /// MQTT over TLS listener; `None` when turned off with `""`.
    pub mqtts: Option<SocketAddr>,
    /// The method HTTP API over TLS (edgeHub's `POST /twins/…/methods`); `None` when turned
    /// off with `""`.
    pub https: Option<SocketAddr>,
    /// AMQP 1.0 over TLS (the server certificate of `mqtts`); `None` when turned off with `""`.
    pub amqps: Option<SocketAddr>,
    /// Server certificate chain (PEM); always set together with `tls_key`.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Largest MQTT packet accepted, in bytes.
    pub max_packet_bytes: usize,
    /// Messages queued per subscriber before publishers are back-pressured.
    pub subscriber_queue_max: usize,
    /// Unacknowledged QoS 1 deliveries per client.
    pub max_inflight: usize,
    /// Open sockets, counted from accept; more are closed right after accept.
    pub max_connections: usize,
    /// Open sockets that have not finished CONNECT; more are closed right after accept.
    pub max_unauthenticated: usize,
    /// Seconds from accept to a complete CONNECT (TLS handshake included).
    pub connect_timeout_secs: u64,
}

/// One `[[devices]]` entry: a downstream device allowed to connect. `Debug` redacts the key.
#[derive(Clone, PartialEq, Eq)]
pub struct DeviceConfig {
    pub id: String,
    /// Decoded symmetric key.
    pub key: Vec<u8>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            hostname: DEFAULT_HOSTNAME.to_owned(),
            iothub_hostname: DEFAULT_HOSTNAME.to_owned(),
            device_id: DEFAULT_DEVICE_ID.to_owned(),
            device_key: None,
            data_dir: Path::new(".").join(DEFAULT_DATA_DIR),
            deployment: None,
            log_level: log::LevelFilter::Info,
            hub: HubConfig::default(),
            store: StoreSettings::default(),
            upstream: None,
            devices: Vec::new(),
            agent: AgentConfig::default(),
            metrics: MetricsConfig::default(),
            telemetry: TelemetryConfig::default(),
        }
    }
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            mqtt: Some(DEFAULT_MQTT_ADDR),
            mqtts: Some(DEFAULT_MQTTS_ADDR),
            https: Some(DEFAULT_HTTPS_ADDR),
            amqps: Some(DEFAULT_AMQPS_ADDR),
            tls_cert: None,
            tls_key: None,
            max_packet_bytes: DEFAULT_MAX_PACKET_BYTES,
            subscriber_queue_max: DEFAULT_SUBSCRIBER_QUEUE_MAX,
            max_inflight: DEFAULT_MAX_INFLIGHT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_unauthenticated: DEFAULT_MAX_UNAUTHENTICATED,
            connect_timeout_secs: DEFAULT_CONNECT_TIMEOUT_SECS,
        }
    }
}

/// Keys stay out of logs: a config is often printed at debug level.
const REDACTED: &str = "<redacted>";

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("hostname", &self.hostname)
            .field("iothub_hostname", &self.iothub_hostname)
            .field("device_id", &self.device_id)
            .field("device_key", &self.device_key.as_ref().map(|_| REDACTED))
            .field("data_dir", &self.data_dir)
            .field("deployment", &self.deployment)
            .field("log_level", &self.log_level)
            .field("hub", &self.hub)
            .field("store", &self.store)
            .field("upstream", &self.upstream)
            .field("devices", &self.devices)
            .field("agent", &self.agent)
            .field("metrics", &self.metrics)
            .finish()
    }
}

impl fmt::Debug for DeviceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceConfig").field("id", &self.id).field("key", &REDACTED).finish()
    }
}

impl Config {
    /// Parses and validates config text; relative paths are resolved against `base_dir`.
    pub fn from_toml_str(text: &str, base_dir: &Path) -> Result<Config, ConfigError> {
        parse::parse(text, base_dir)
    }

    /// Reads, parses and validates the config file at `path`. Errors name the file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let in_file = |error| ConfigError::InFile { file: path.to_path_buf(), error: Box::new(error) };
        let bytes = fsutil::read_bounded(path, CONFIG_MAX_BYTES as u64).map_err(|error| {
            if error.kind() == std::io::ErrorKind::InvalidData {
                let bytes = fs::metadata(path)
                    .map_or(CONFIG_MAX_BYTES + 1, |metadata| metadata.len().try_into().unwrap_or(usize::MAX));
                in_file(ConfigError::TooLarge { bytes, max_bytes: CONFIG_MAX_BYTES })
            } else {
                ConfigError::Read { file: path.to_path_buf(), error }
            }
        })?;
        let text = String::from_utf8(bytes).map_err(|_| {
            in_file(ConfigError::Syntax { line: 1, column: 1, message: "file is not UTF-8".to_owned() })
        })?;
        // `parent()` of a bare file name is "", which joins as the working directory.
        let base_dir = path.parent().unwrap_or(Path::new(""));
        Config::from_toml_str(&text, base_dir).map_err(in_file)
    }

    /// Checks that the files the config names exist and are regular files: the deployment
    /// manifest and the TLS certificate and key. Run at start-up so a typo fails fast.
    pub fn check_files(&self) -> Result<(), ConfigError> {
        let files = [
            ("deployment", &self.deployment),
            ("hub.tls_cert", &self.hub.tls_cert),
            ("hub.tls_key", &self.hub.tls_key),
            ("upstream.ca", &self.upstream.as_ref().and_then(|u| u.ca.clone())),
        ];
        for (key, file) in files {
            let Some(file) = file else { continue };
            let metadata =
                fs::metadata(file).map_err(|error| ConfigError::MissingFile { key, file: file.clone(), error })?;
            if !metadata.is_file() {
                return Err(ConfigError::NotAFile { key, file: file.clone() });
            }
        }
        Ok(())
    }
}
