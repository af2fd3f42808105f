//! The link's errors: [`UpstreamError`] for a configuration that cannot work (reported once, at
//! start), [`LinkError`] for why one connection ended (logged, kept in the status, retried).

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Why a [`super::Link`] could not be built. One line each, naming what to fix.
#[derive(Debug)]
pub enum UpstreamError {
    /// `upstream.url` is not `mqtt[s]://host[:port]`.
    BadUrl { url: String, reason: &'static str },
    /// A numeric or identity setting is out of range.
    BadSetting { name: &'static str, reason: String },
    /// The configured CA file cannot be read or holds no usable certificate.
    Ca { path: PathBuf, reason: String },
    /// `mqtts://` but neither the system bundle nor a configured CA gave a trusted root.
    NoTrustedRoots { system_bundle: &'static str },
    /// A CA file is configured for a plain `mqtt://` link, which would never use it.
    CaWithoutTls,
    /// rustls refused to build a client configuration.
    Tls(String),
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpstreamError::BadUrl { url, reason } => write!(f, "upstream url {url:?}: {reason}"),
            UpstreamError::BadSetting { name, reason } => write!(f, "upstream {name}: {reason}"),
            UpstreamError::Ca { path, reason } => write!(f, "upstream ca {}: {reason}", path.display()),
            UpstreamError::NoTrustedRoots { system_bundle } => write!(
                f,
                "upstream: no trusted CA certificate ({system_bundle} is missing or empty); set upstream.ca or install ca-certificates"
            ),
            UpstreamError::CaWithoutTls => {
                write!(f, "upstream: ca is set but the url is mqtt:// (no TLS); use mqtts:// or remove ca")
            }
            UpstreamError::Tls(reason) => write!(f, "upstream TLS configuration: {reason}"),
        }
    }
}

impl std::error::Error for UpstreamError {}

/// Why one connection to the cloud failed or ended. Operating conditions, not bugs: the link
/// logs them, shows the last one in its status and reconnects.
#[derive(Debug)]
pub enum LinkError {
    /// Name resolution or the TCP connect failed.
    Connect { address: String, error: io::Error },
    /// The TLS handshake failed (untrusted certificate, wrong host name, ...).
    Tls(io::Error),
    /// The hub answered CONNACK with a non-zero return code.
    Refused(u8),
    /// Connecting (TCP, TLS, CONNECT/CONNACK) took longer than the limit.
    ConnectTimeout(Duration),
    /// A write did not complete within the limit: the peer stopped reading.
    WriteTimeout(Duration),
    /// Nothing arrived from the hub for 1.5 keep-alive periods.
    KeepAlive(Duration),
    /// Reading or writing the socket failed.
    Io(io::Error),
    /// The hub closed the connection.
    Closed,
    /// The hub sent something MQTT 3.1.1 does not allow here.
    Protocol(String),
}

/// MQTT 3.1.1 CONNACK return codes (section 3.2.2.3), in words an operator can act on.
pub fn connack_code_words(code: u8) -> &'static str {
    match code {
        0 => "accepted",
        1 => "unacceptable protocol version",
        2 => "client id rejected",
        3 => "server unavailable",
        4 => "bad user name or password (check the device id and key)",
        5 => "not authorized (check the device id and key, and that the device is enabled)",
        _ => "unknown return code",
    }
}

impl fmt::Display for LinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkError::Connect { address, error } => write!(f, "cannot connect to {address}: {error}"),
            LinkError::Tls(error) => write!(f, "TLS handshake failed: {error}"),
            LinkError::Refused(code) => {
                write!(f, "connection refused: {} (CONNACK code {code})", connack_code_words(*code))
            }
            LinkError::ConnectTimeout(limit) => write!(f, "no CONNACK within {} s", limit.as_secs()),
            LinkError::WriteTimeout(limit) => write!(f, "a write did not complete within {} s", limit.as_secs()),
            LinkError::KeepAlive(silence) => {
                write!(f, "nothing received for {:.1} s (keep-alive)", silence.as_secs_f64())
            }
            LinkError::Io(error) => write!(f, "connection error: {error}"),
            LinkError::Closed => f.write_str("the hub closed the connection"),
            LinkError::Protocol(what) => write!(f, "protocol error: {what}"),
        }
    }
}

impl std::error::Error for LinkError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_connack_is_reported_in_words() {
        let shown = LinkError::Refused(5).to_string();
        assert!(shown.contains("not authorized") && shown.contains("code 5"), "{shown}");
        assert!(LinkError::Refused(4).to_string().contains("bad user name or password"));
        assert!(LinkError::Refused(77).to_string().contains("unknown return code"));
    }

    #[test]
    fn every_message_is_one_line() {
        let errors: Vec<String> = vec![
            UpstreamError::BadUrl { url: "x".into(), reason: "r" }.to_string(),
            UpstreamError::NoTrustedRoots { system_bundle: "/b" }.to_string(),
            UpstreamError::CaWithoutTls.to_string(),
            LinkError::KeepAlive(Duration::from_millis(1500)).to_string(),
            LinkError::Closed.to_string(),
        ];
        assert!(errors.iter().all(|e| !e.contains('\n')), "{errors:?}");
    }
}
