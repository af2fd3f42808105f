//! The link's configuration: the cloud URL, the edge device's identity, timing and window
//! limits, and the TLS trust roots.
//!
//! Trust roots: there is no bundled root store (no `webpki-roots`), so `mqtts://` links trust
//! the operating system's PEM bundle at [`SYSTEM_CA_BUNDLE`] (Debian/Ubuntu/Alpine
//! `ca-certificates`, which includes the roots Azure IoT Hub chains to) plus the optional
//! `upstream.ca` file — e.g. for a test hub or a TLS-inspecting proxy. Unparsable entries of the
//! system bundle are skipped; the configured file must be entirely valid.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tinyedge_platform::{config::check_hostname, identity};

use super::error::UpstreamError;
use super::token::TOKEN_TTL_MIN_SECS;
use super::window::WINDOW_MAX;

/// MQTT keep-alive the link asks for: a PINGREQ a minute costs nothing and notices a dead
/// path (NAT timeout, unplugged uplink) within 90 s.
pub const DEFAULT_KEEP_ALIVE_SECS: u16 = 60;
/// Lifetime of each SAS token: the Azure IoT SDKs' default (one hour).
pub const DEFAULT_TOKEN_TTL_SECS: u64 = 3600;
/// First reconnect delay, and the longest: edgeHub's upstream retry policy (1 s to 60 s).
pub const DEFAULT_BACKOFF_MIN: Duration = Duration::from_secs(1);
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(60);
/// QoS 1 messages in flight: edgeHub's `MaxPendingInboundAcknowledgements`, enough to fill a
/// 100 ms round trip at hundreds of messages per second without holding much memory.
pub const DEFAULT_WINDOW: usize = 16;
/// The Debian/Ubuntu/Alpine location of the system's trusted roots as one PEM bundle.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Default ports when the URL names none: IANA's MQTT and MQTT-over-TLS ports.
pub const MQTT_PORT: u16 = 1883;
pub const MQTTS_PORT: u16 = 8883;

/// Everything the link needs; the runtime maps `[upstream]` and the device identity into it.
#[derive(Clone)]
pub struct UpstreamConfig {
    /// `mqtts://host[:8883]` (TLS) or `mqtt://host[:1883]` (plain TCP, for tests and local brokers).
    pub url: String,
    /// Extra trusted CA certificate(s), PEM, besides the system bundle. Only for `mqtts://`.
    pub ca: Option<PathBuf>,
    /// The IoT Hub's host name, e.g. `myhub.azure-devices.net` (username and token audience).
    pub iothub_hostname: String,
    /// The device the link connects as (the edge device, or a leaf device behind it).
    pub device_id: String,
    /// The module of `device_id` the link connects as, if it is a module's link.
    pub module_id: Option<String>,
    /// That identity's symmetric key (decoded): signs the SAS tokens.
    pub device_key: Vec<u8>,
    /// MQTT keep-alive in seconds (default 60; at least 1, since 0 would turn liveness off).
    pub keep_alive_secs: u16,
    /// Lifetime of each SAS token (default 3600 s; at least 5 s); renewed at 80 %.
    pub token_ttl_secs: u64,
    /// First reconnect delay (default 1 s).
    pub backoff_min: Duration,
    /// Longest reconnect delay (default 60 s).
    pub backoff_max: Duration,
    /// QoS 1 messages in flight at most (default 16, at most 128).
    pub window: usize,
}

impl UpstreamConfig {
    /// A configuration with every tunable at its default.
    pub fn new(
        url: impl Into<String>,
        iothub_hostname: impl Into<String>,
        device_id: impl Into<String>,
        device_key: Vec<u8>,
    ) -> Self {
        UpstreamConfig {
            url: url.into(),
            ca: None,
            iothub_hostname: iothub_hostname.into(),
            device_id: device_id.into(),
            module_id: None,
            device_key,
            keep_alive_secs: DEFAULT_KEEP_ALIVE_SECS,
            token_ttl_secs: DEFAULT_TOKEN_TTL_SECS,
            backoff_min: DEFAULT_BACKOFF_MIN,
            backoff_max: DEFAULT_BACKOFF_MAX,
            window: DEFAULT_WINDOW,
        }
    }

    /// Checks every field; returns where to connect.
    pub fn validate(&self) -> Result<Target, UpstreamError> {
        let (tls, host, port) = parse_url(&self.url)?;
        let bad = |name, reason: String| Err(UpstreamError::BadSetting { name, reason });
        if let Err(reason) = check_hostname(&self.iothub_hostname) {
            return bad("iothub_hostname", reason.to_owned());
        }
        if let Err(reason) = identity::check_id(&self.device_id) {
            return bad("device_id", reason.to_owned());
        }
        if let Some(Err(reason)) = self.module_id.as_deref().map(identity::check_id) {
            return bad("module_id", reason.to_owned());
        }
        if let Err(reason) = identity::check_key_length(&self.device_key) {
            return bad("device_key", reason);
        }
        if self.keep_alive_secs == 0 {
            return bad("keep_alive_secs", "must be at least 1 (0 would disable liveness checks)".into());
        }
        if self.token_ttl_secs < TOKEN_TTL_MIN_SECS {
            return bad("token_ttl_secs", format!("must be at least {TOKEN_TTL_MIN_SECS}"));
        }
        if self.backoff_min.is_zero() || self.backoff_min > self.backoff_max {
            return bad("backoff", "backoff_min must be above zero and at most backoff_max".into());
        }
        if !(1..=WINDOW_MAX).contains(&self.window) {
            return bad("window", format!("must be 1 to {WINDOW_MAX}"));
        }
        if !tls && self.ca.is_some() {
            return Err(UpstreamError::CaWithoutTls);
        }
        Ok(Target { tls, host, port })
    }
}

/// Hides the device key.
impl std::fmt::Debug for UpstreamConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamConfig")
            .field("url", &self.url)
            .field("ca", &self.ca)
            .field("iothub_hostname", &self.iothub_hostname)
            .field("device_id", &self.device_id)
            .field("device_key", &format_args!("<{} bytes>", self.device_key.len()))
            .field("keep_alive_secs", &self.keep_alive_secs)
            .field("token_ttl_secs", &self.token_ttl_secs)
            .field("backoff_min", &self.backoff_min)
            .field("backoff_max", &self.backoff_max)
            .field("window", &self.window)
            .finish()
    }
}

/// Where the link connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub tls: bool,
    /// Host name or IP address (without brackets); also the TLS server name.
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Splits `mqtts://host[:port]` or `mqtt://host[:port]` (a trailing `/` is tolerated, IPv6 in
/// brackets) into (TLS?, host, port); the port defaults to 8883 / 1883.
pub fn parse_url(url: &str) -> Result<(bool, String, u16), UpstreamError> {
    let fail = |reason| Err(UpstreamError::BadUrl { url: url.to_owned(), reason });
    let (tls, rest) = if let Some(rest) = url.strip_prefix("mqtts://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("mqtt://") {
        (false, rest)
    } else if url.contains("://") {
        return fail("unsupported scheme: use mqtts:// (or mqtt:// without TLS)");
    } else {
        return fail("it must start with mqtts:// or mqtt://");
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains(['/', '?', '#', '@']) {
        return fail("only a host and a port are allowed: no path, query or user");
    }
    let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
        let Some((host, after)) = bracketed.split_once(']') else {
            return fail("an IPv6 address misses its closing ]");
        };
        match after {
            "" => (host, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return fail("unexpected text after the IPv6 address"),
            },
        }
    } else {
        match rest.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        }
    };
    if host.is_empty() {
        return fail("the host is missing");
    }
    if check_hostname(host).is_err() {
        return fail("the host is not a DNS name or IP address");
    }
    let port = match port {
        None if tls => MQTTS_PORT,
        None => MQTT_PORT,
        Some(text) => match text.parse::<u16>() {
            Ok(port) if port != 0 => port,
            _ => return fail("the port is not a number from 1 to 65535"),
        },
    };
    Ok((tls, host.to_owned(), port))
}

/// Builds the TLS connector and the server name to check: roots from `system_bundle` (if the
/// file exists) plus `ca` (which must hold at least one valid certificate).
pub fn tls_connector(
    host: &str,
    ca: Option<&Path>,
    system_bundle: &Path,
) -> Result<(futures_rustls::TlsConnector, ServerName<'static>), UpstreamError> {
    let server_name = ServerName::try_from(host.to_owned()).map_err(|_| UpstreamError::BadUrl {
        url: host.to_owned(),
        reason: "the host is not a valid TLS server name",
    })?;
    let mut roots = rustls::RootCertStore::empty();
    if system_bundle.exists() {
        // A stale or odd entry in the distribution bundle must not take the link down: keep
        // the parsable ones (rustls counts the rest).
        if let Ok(certs) = CertificateDer::pem_file_iter(system_bundle) {
            let (added, ignored) = roots.add_parsable_certificates(certs.filter_map(Result::ok));
            log::debug!("upstream: {added} trusted roots from {} ({ignored} ignored)", system_bundle.display());
        }
    }
    if let Some(path) = ca {
        let ca_error = |reason: String| UpstreamError::Ca { path: path.to_path_buf(), reason };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
            .map_err(|e| ca_error(e.to_string()))?;
        if certs.is_empty() {
            return Err(ca_error("no PEM certificate in the file".into()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| ca_error(e.to_string()))?;
        }
    }
    if roots.is_empty() {
        return Err(UpstreamError::NoTrustedRoots { system_bundle: SYSTEM_CA_BUNDLE });
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| UpstreamError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok((futures_rustls::TlsConnector::from(Arc::new(config)), server_name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(url: &str) -> &'static str {
        match parse_url(url) {
            Err(UpstreamError::BadUrl { reason, .. }) => reason,
            other => panic!("{url}: expected a bad url, got {other:?}"),
        }
    }

    #[test]
    fn urls_give_tls_host_and_port() {
        let ok = |url: &str| parse_url(url).expect(url);
        assert_eq!(ok("mqtts://myhub.azure-devices.net:8883"), (true, "myhub.azure-devices.net".into(), 8883));
        assert_eq!(ok("mqtts://myhub.azure-devices.net"), (true, "myhub.azure-devices.net".into(), 8883));
        assert_eq!(ok("mqtt://127.0.0.1:1884/"), (false, "127.0.0.1".into(), 1884));
        assert_eq!(ok("mqtt://broker"), (false, "broker".into(), 1883));
        assert_eq!(ok("mqtts://[::1]:8884"), (true, "::1".into(), 8884));
        assert_eq!(ok("mqtts://[fe80::1]"), (true, "fe80::1".into(), 8883));
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        assert!(reason("https://hub:443").contains("unsupported scheme"));
        assert!(reason("hub:8883").contains("must start with"));
        assert!(reason("mqtts://").contains("host is missing"));
        assert!(reason("mqtts://:8883").contains("host is missing"));
        assert!(reason("mqtts://hub:0").contains("port"));
        assert!(reason("mqtts://hub:99999").contains("port"));
        assert!(reason("mqtts://hub:x").contains("port"));
        assert!(reason("mqtts://hub:8883/path").contains("no path"));
        assert!(reason("mqtts://user@hub").contains("no path"));
        assert!(reason("mqtts://[::1:8883").contains("closing ]"));
        assert!(reason("mqtts://[::1]x").contains("after the IPv6"));
        assert!(reason("mqtts://hub_name:8883").contains("not a DNS name"));
        assert!(!UpstreamError::BadUrl { url: "u".into(), reason: "r" }.to_string().contains('\n'));
    }

    fn config() -> UpstreamConfig {
        UpstreamConfig::new("mqtt://127.0.0.1:1883", "hub.example.net", "edge-1", vec![1; 32])
    }

    #[test]
    fn defaults_validate() {
        let target = config().validate().expect("valid");
        assert_eq!(target, Target { tls: false, host: "127.0.0.1".into(), port: 1883 });
        assert_eq!(target.to_string(), "127.0.0.1:1883");
        assert_eq!(Target { tls: true, host: "::1".into(), port: 8883 }.to_string(), "[::1]:8883");
    }

    #[test]
    fn out_of_range_settings_are_refused_by_name() {
        let name_of = |c: UpstreamConfig| match c.validate() {
            Err(UpstreamError::BadSetting { name, .. }) => name,
            other => panic!("expected a bad setting, got {other:?}"),
        };
        assert_eq!(name_of(UpstreamConfig { window: 0, ..config() }), "window");
        assert_eq!(name_of(UpstreamConfig { window: WINDOW_MAX + 1, ..config() }), "window");
        assert_eq!(name_of(UpstreamConfig { keep_alive_secs: 0, ..config() }), "keep_alive_secs");
        assert_eq!(name_of(UpstreamConfig { token_ttl_secs: 4, ..config() }), "token_ttl_secs");
        assert_eq!(name_of(UpstreamConfig { backoff_min: Duration::ZERO, ..config() }), "backoff");
        assert_eq!(name_of(UpstreamConfig { backoff_max: Duration::from_millis(10), ..config() }), "backoff");
        assert_eq!(name_of(UpstreamConfig { device_id: "a/b".into(), ..config() }), "device_id");
        assert_eq!(name_of(UpstreamConfig { device_key: vec![1; 4], ..config() }), "device_key");
        assert_eq!(name_of(UpstreamConfig { iothub_hostname: String::new(), ..config() }), "iothub_hostname");
        let plain_with_ca = UpstreamConfig { ca: Some("ca.pem".into()), ..config() };
        assert!(matches!(plain_with_ca.validate(), Err(UpstreamError::CaWithoutTls)));
    }

    #[test]
    fn debug_output_hides_the_key() {
        let shown = format!("{:?}", config());
        assert!(shown.contains("<32 bytes>") && !shown.contains("[1, 1"), "{shown}");
    }

    #[test]
    fn tls_needs_some_trusted_root() {
        let missing = Path::new("/nonexistent/bundle.pem");
        assert!(matches!(tls_connector("hub", None, missing), Err(UpstreamError::NoTrustedRoots { .. })));
        let unreadable = tls_connector("hub", Some(Path::new("/nonexistent/ca.pem")), missing);
        assert!(matches!(unreadable, Err(UpstreamError::Ca { .. })));
        let dir = std::env::temp_dir().join(format!("tinyedge-upstream-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "no certificate here\n").expect("write");
        let result = tls_connector("hub", Some(&empty), missing);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(matches!(result, Err(UpstreamError::Ca { reason, .. }) if reason.contains("no PEM certificate")));
    }

    #[test]
    fn system_bundle_is_used_when_present() {
        let bundle = Path::new(SYSTEM_CA_BUNDLE);
        if bundle.exists() {
            assert!(tls_connector("myhub.azure-devices.net", None, bundle).is_ok());
        }
    }
}
