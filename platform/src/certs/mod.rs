//! The edge CA and the hub's TLS server certificate, generated on first start.
//!
//! Layout under `{data_dir}/certs/`:
//! - `edge-ca.pem`, `edge-ca.key.pem` (key 0600): self-signed CA, ~10 years. Downstream devices and
//!   modules trust this file, so it is kept across restarts and hostname changes.
//! - `server.pem` (server certificate, then the CA), `server.key.pem` (0600): ~1 year, SANs
//!   `hostname`, `localhost`, `127.0.0.1`, `::1`.
//! - `server.hostname`: the hostname `server.pem` was issued for. We cannot read SANs back
//!   without an X.509 parser, so this marker records it; it is written last and removed first,
//!   so a crash mid-issue always leads to a clean re-issue on the next start.
//!
//! The CA certificate is never parsed either: to sign with the saved CA key we rebuild the CA's
//! parameters deterministically (same DN, key usages and key-identifier method), which is all
//! rcgen's `Issuer` needs to produce a matching issuer name and authority key identifier.
//! Hence these files must be the ones generated here; operators who bring their own server
//! certificate set `hub.tls_cert` / `hub.tls_key` in the config instead.

use std::fmt;
use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};

use crate::fsutil::{self, Access};
use crate::utc;

pub const CERTS_DIR: &str = "certs";
pub const CA_CERT_FILE: &str = "edge-ca.pem";
pub const CA_KEY_FILE: &str = "edge-ca.key.pem";
pub const SERVER_CERT_FILE: &str = "server.pem";
pub const SERVER_KEY_FILE: &str = "server.key.pem";
pub const SERVER_HOSTNAME_FILE: &str = "server.hostname";

/// Subject common name of the edge CA. Fixed, because the issuer name of every server
/// certificate must equal it and we rebuild it rather than parse it from `edge-ca.pem`.
const CA_COMMON_NAME: &str = "tinyedge edge CA";
/// Ten years: longer than the hardware is likely to live, so clients never need re-provisioning.
const CA_VALIDITY_DAYS: i64 = 3650;
/// One year, the longest lifetime clients such as browsers still accept for server certificates.
const SERVER_VALIDITY_DAYS: i64 = 365;
/// Re-issue the server certificate on a start this long after it was written, leaving two
/// months of restarts to pick up a fresh one before it expires.
const SERVER_RENEW_AFTER: Duration = Duration::from_secs(300 * 86_400);
/// Certificates start a day early so a client whose clock lags ours still accepts them.
const BACKDATE_DAYS: i64 = 1;
/// PEM files here are a few KiB; bounds what a wrong file can make us read.
const PEM_FILE_MAX_BYTES: u64 = 64 * 1024;
/// X.509 dates as rcgen's `time` dependency can express them.
const YEAR_MAX: i64 = 9999;

/// Paths of the certificate files, all under `{data_dir}/certs/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeCerts {
    /// The edge CA certificate: the trust bundle for modules and downstream devices.
    pub ca_cert: PathBuf,
    /// PEM chain: the server certificate, then the edge CA.
    pub server_cert: PathBuf,
    /// PKCS#8 PEM private key of the server certificate.
    pub server_key: PathBuf,
}

/// Why certificates could not be prepared.
#[derive(Debug)]
pub enum CertError {
    /// Reading or writing a file (or the directory) failed.
    Io { path: PathBuf, error: io::Error },
    /// The saved CA key cannot be used; the CA is not replaced silently because clients trust it.
    BadCaKey { path: PathBuf, reason: String },
    /// rcgen refused to build a certificate.
    Generate(rcgen::Error),
    /// The system clock is outside the range X.509 dates can express.
    Clock { unix_days: i64 },
}

impl fmt::Display for CertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CertError::Io { path, error } => write!(f, "certs: {}: {error}", path.display()),
            CertError::BadCaKey { path, reason } => write!(
                f,
                "certs: the edge CA key {} is unusable ({reason}); restore it, or delete both \
                 edge-ca files to create a new CA that clients must then trust again",
                path.display()
            ),
            CertError::Generate(error) => write!(f, "certs: cannot generate a certificate: {error}"),
            CertError::Clock { unix_days } => {
                write!(f, "certs: the system clock (unix day {unix_days}) is outside the years 1-9999; set the clock")
            }
        }
    }
}

impl std::error::Error for CertError {}

impl From<rcgen::Error> for CertError {
    fn from(error: rcgen::Error) -> Self {
        CertError::Generate(error)
    }
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> CertError + '_ {
    move |error| CertError::Io { path: path.to_path_buf(), error }
}

/// Makes sure the edge CA and a server certificate for `hostname` exist under
/// `{data_dir}/certs/`, generating what is missing, and returns their paths.
///
/// Existing files are reused. The server certificate is re-issued (by the existing CA) when it
/// is missing, was issued for another hostname, or is older than ~300 days.
pub fn ensure_edge_certs(data_dir: &Path, hostname: &str) -> Result<EdgeCerts, CertError> {
    let dir = data_dir.join(CERTS_DIR);
    fs::create_dir_all(&dir).map_err(io_error(&dir))?;
    let paths = EdgeCerts {
        ca_cert: dir.join(CA_CERT_FILE),
        server_cert: dir.join(SERVER_CERT_FILE),
        server_key: dir.join(SERVER_KEY_FILE),
    };
    let ca_key_path = dir.join(CA_KEY_FILE);
    let hostname_path = dir.join(SERVER_HOSTNAME_FILE);
    let today = utc::unix_days_now();

    let (ca_key, ca_is_new) = match load_ca_key(&paths.ca_cert, &ca_key_path)? {
        Some(key) => (key, false),
        None => (create_ca(&paths.ca_cert, &ca_key_path, &hostname_path, today)?, true),
    };
    if ca_is_new || server_needs_issue(&paths, &hostname_path, hostname)? {
        issue_server_cert(&paths, &hostname_path, hostname, &ca_key, today)?;
    }
    Ok(paths)
}

/// The CA key, if both CA files exist; `None` means "create the CA".
fn load_ca_key(ca_cert: &Path, ca_key: &Path) -> Result<Option<KeyPair>, CertError> {
    let (cert_exists, key_exists) = (exists(ca_cert)?, exists(ca_key)?);
    if !(cert_exists && key_exists) {
        if cert_exists || key_exists {
            log::warn!("edge CA incomplete in {}; creating a new CA", ca_cert.display());
        }
        return Ok(None);
    }
    let pem = read_text(ca_key)?;
    let key = KeyPair::from_pem(&pem)
        .map_err(|error| CertError::BadCaKey { path: ca_key.to_path_buf(), reason: error.to_string() })?;
    Ok(Some(key))
}

fn create_ca(ca_cert: &Path, ca_key: &Path, hostname_marker: &Path, today: i64) -> Result<KeyPair, CertError> {
    // Invalidate everything that depends on the old CA before touching it: with the server
    // marker and the CA certificate gone, a crash below is repaired by the next start.
    remove_if_exists(hostname_marker)?;
    remove_if_exists(ca_cert)?;
    let key = KeyPair::generate()?;
    let mut params = ca_params();
    set_validity(&mut params, today, CA_VALIDITY_DAYS)?;
    let cert = params.self_signed(&key)?;
    fsutil::write_atomic(ca_key, key.serialize_pem().as_bytes(), Access::OwnerOnly).map_err(io_error(ca_key))?;
    fsutil::write_atomic(ca_cert, cert.pem().as_bytes(), Access::Public).map_err(io_error(ca_cert))?;
    log::info!("created edge CA {}", ca_cert.display());
    Ok(key)
}

/// Everything `Issuer` takes from the CA's parameters; must never change between versions.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, CA_COMMON_NAME);
    // Path length 0: the edge CA signs only end-entity certificates (hub and module servers).
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params
}

fn server_needs_issue(paths: &EdgeCerts, hostname_marker: &Path, hostname: &str) -> Result<bool, CertError> {
    if !exists(&paths.server_cert)? || !exists(&paths.server_key)? || !exists(hostname_marker)? {
        return Ok(true);
    }
    if read_text(hostname_marker)?.trim() != hostname {
        log::info!("hostname changed to {hostname}; re-issuing the server certificate");
        return Ok(true);
    }
    let written = fs::metadata(&paths.server_cert)
        .and_then(|metadata| metadata.modified())
        .map_err(io_error(&paths.server_cert))?;
    // A file time in the future (clock set back) counts as fresh: re-issuing would not help.
    let age = SystemTime::now().duration_since(written).unwrap_or(Duration::ZERO);
    if age > SERVER_RENEW_AFTER {
        log::info!("server certificate is {} days old; renewing it", age.as_secs() / 86_400);
        return Ok(true);
    }
    Ok(false)
}

fn issue_server_cert(
    paths: &EdgeCerts,
    hostname_marker: &Path,
    hostname: &str,
    ca_key: &KeyPair,
    today: i64,
) -> Result<(), CertError> {
    let ca_pem = read_text(&paths.ca_cert)?;
    let issuer = Issuer::new(ca_params(), ca_key);
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, hostname);
    params.subject_alt_names = server_sans(hostname)?;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, today, SERVER_VALIDITY_DAYS)?;
    let cert = params.signed_by(&key, &issuer)?;
    let chain = format!("{}{}", cert.pem(), ca_pem);

    // Marker first out, last in: only a complete key + chain pair is ever marked as current.
    remove_if_exists(hostname_marker)?;
    fsutil::write_atomic(&paths.server_key, key.serialize_pem().as_bytes(), Access::OwnerOnly)
        .map_err(io_error(&paths.server_key))?;
    fsutil::write_atomic(&paths.server_cert, chain.as_bytes(), Access::Public).map_err(io_error(&paths.server_cert))?;
    fsutil::write_atomic(hostname_marker, format!("{hostname}\n").as_bytes(), Access::Public)
        .map_err(io_error(hostname_marker))?;
    log::info!("issued server certificate for {hostname} in {}", paths.server_cert.display());
    Ok(())
}

/// `hostname`, `localhost`, 127.0.0.1 and ::1, without duplicates.
fn server_sans(hostname: &str) -> Result<Vec<SanType>, CertError> {
    let mut sans = vec![
        SanType::DnsName("localhost".try_into()?),
        SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)),
    ];
    let configured = match hostname.parse::<IpAddr>() {
        Ok(address) => SanType::IpAddress(address),
        Err(_) => SanType::DnsName(hostname.try_into()?),
    };
    if !sans.contains(&configured) {
        sans.insert(0, configured);
    }
    Ok(sans)
}

/// Valid from yesterday (see [`BACKDATE_DAYS`]) for `days` days.
fn set_validity(params: &mut CertificateParams, today: i64, days: i64) -> Result<(), CertError> {
    let clock = || CertError::Clock { unix_days: today };
    let (year, month, day) = ymd(today - BACKDATE_DAYS).ok_or_else(clock)?;
    params.not_before = rcgen::date_time_ymd(year, month, day);
    let (year, month, day) = ymd(today + days).ok_or_else(clock)?;
    params.not_after = rcgen::date_time_ymd(year, month, day);
    Ok(())
}

/// Calendar date of a unix day; `None` outside years 1..=9999, where `date_time_ymd` would panic.
fn ymd(unix_days: i64) -> Option<(i32, u8, u8)> {
    let (year, month, day) = utc::civil_from_days(unix_days);
    if !(1..=YEAR_MAX).contains(&year) {
        return None;
    }
    Some((i32::try_from(year).ok()?, month, day))
}

fn exists(path: &Path) -> Result<bool, CertError> {
    path.try_exists().map_err(io_error(path))
}

fn read_text(path: &Path) -> Result<String, CertError> {
    let bytes = fsutil::read_bounded(path, PEM_FILE_MAX_BYTES).map_err(io_error(path))?;
    String::from_utf8(bytes)
        .map_err(|_| CertError::Io { path: path.to_path_buf(), error: io::Error::from(io::ErrorKind::InvalidData) })
}

fn remove_if_exists(path: &Path) -> Result<(), CertError> {
    match fs::remove_file(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(CertError::Io { path: path.to_path_buf(), error }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests;
