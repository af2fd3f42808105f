//! A client for the OCI distribution API (Docker registries, Azure Container Registry, MCR):
//! manifests and blobs, with anonymous, Basic, and token (Bearer) authentication.
//!
//! Blocking (ureq); the agent calls it from `smol::unblock`. Every body is bounded and every
//! blob is hashed while it streams: a blob whose sha256 or size differs from its descriptor is
//! refused, so nothing unverified reaches containerd.
//!
//! Loopback registries (`localhost`, `127.*`, `[::1]`) and the ones listed in
//! `[agent] insecure_registries` are spoken to over plain HTTP, as Docker and containerd do for
//! loopback; everything else over HTTPS with the system's CA bundle.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;

use super::oci::{self, Descriptor, DOCUMENT_BYTES_MAX, MANIFEST_ACCEPT};
use super::reference::Reference;

/// Where the system's CA certificates live on Debian, Raspberry Pi OS, Alpine and Yocto.
const CA_BUNDLES: &[&str] = &["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt"];
/// Connect timeout, and the longest the registry may stay silent while a body streams.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest token response accepted.
const TOKEN_BYTES_MAX: u64 = 64 * 1024;
/// Largest single blob accepted (a layer); bounded so a hostile registry cannot fill the disk.
pub const BLOB_BYTES_MAX: u64 = 4 * 1024 * 1024 * 1024;

/// Username and password for one registry (`registryCredentials` in the deployment).
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials {{ username: {:?}, password: <redacted> }}", self.username)
    }
}

/// A registry failure, one line, naming the URL or digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryError(pub String);

impl std::fmt::Display for RegistryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RegistryError {}

fn fail(why: impl std::fmt::Display) -> RegistryError {
    RegistryError(why.to_string())
}

/// A manifest as fetched: its bytes, media type and verified digest.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub bytes: Vec<u8>,
    pub media_type: String,
    pub digest: String,
}

/// One repository on one registry, with the authorization learned so far.
pub struct Repository {
    agent: ureq::Agent,
    base: String,
    repository: String,
    credentials: Option<Credentials>,
    authorization: Option<String>,
}

/// Whether `host` (with optional port) is a loopback address.
fn is_loopback(host: &str) -> bool {
    let name = if host.starts_with('[') {
        host.split(']').next().unwrap_or(host).trim_start_matches('[')
    } else {
        host.rsplit_once(':').map_or(host, |(name, _)| name)
    };
    name == "localhost" || name.starts_with("127.") || name == "::1"
}

fn system_roots() -> ureq::tls::RootCerts {
    for path in CA_BUNDLES {
        if let Ok(pem) = std::fs::read(path) {
            let certs: Vec<_> = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(cert)) => Some(cert.to_owned()),
                    _ => None,
                })
                .collect();
            if !certs.is_empty() {
                return ureq::tls::RootCerts::new_with_certs(&certs);
            }
        }
    }
    log::warn!("no CA bundle found in {CA_BUNDLES:?}: HTTPS registries will fail verification");
    ureq::tls::RootCerts::new_with_certs(&[])
}

impl Repository {
    /// A client for `reference`'s repository; `insecure` lists extra registries spoken to over
    /// plain HTTP.
    pub fn new(reference: &Reference, credentials: Option<Credentials>, insecure: &[String]) -> Repository {
        let host = reference.api_host();
        let scheme = if is_loopback(host) || insecure.iter().any(|h| h == host) { "http" } else { "https" };
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(system_roots())
            .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .build();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(IO_TIMEOUT))
            .timeout_recv_response(Some(IO_TIMEOUT))
            .timeout_recv_body(None)
            .timeout_per_read(Some(IO_TIMEOUT))
            .tls_config(tls)
            .user_agent(concat!("tinyedge/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Repository {
            agent,
            base: format!("{scheme}://{host}/v2/{}", reference.repository),
            repository: reference.repository.clone(),
            credentials,
            authorization: None,
        }
    }

    /// GET with the current authorization; on 401 learns the challenge and retries once.
    fn get(&mut self, url: &str, accept: &str) -> Result<ureq::http::Response<ureq::Body>, RegistryError> {
        for attempt in 0..2 {
            let mut request = self.agent.get(url).header("Accept", accept);
            if let Some(auth) = &self.authorization {
                request = request.header("Authorization", auth);
            }
            let response = request.call().map_err(|e| fail(format!("GET {url}: {e}")))?;
            if response.status() == 401 && attempt == 1 {
                break;
            }
            if response.status() == 401 {
                let challenge = response
                    .headers()
                    .get("www-authenticate")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                self.authorize(&challenge, url)?;
                continue;
            }
            return Ok(response);
        }
        Err(fail(format!("GET {url}: 401 Unauthorized after authenticating; check registryCredentials")))
    }

    /// Answers a `WWW-Authenticate` challenge: Basic with the credentials, or Bearer by fetching
    /// a pull token from the realm (with the credentials when there are some).
    fn authorize(&mut self, challenge: &str, url: &str) -> Result<(), RegistryError> {
        let basic = self.credentials.as_ref().map(|c| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", c.username, c.password))
            )
        });
        let (scheme, params) = challenge.split_once(' ').unwrap_or((challenge, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            self.authorization = Some(basic.ok_or_else(|| {
                fail(format!("GET {url}: the registry wants a username and password; add registryCredentials"))
            })?);
            return Ok(());
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(fail(format!("GET {url}: 401 with unsupported challenge {challenge:?}")));
        }
        let param = |name: &str| challenge_param(params, name);
        let realm = param("realm").ok_or_else(|| fail(format!("GET {url}: Bearer challenge without realm")))?;
        let mut token_url = format!("{realm}?scope=repository:{}:pull", self.repository);
        if let Some(service) = param("service") {
            token_url.push_str(&format!("&service={}", tinyedge_platform::urlenc::encode(&service)));
        }
        let mut request = self.agent.get(&token_url);
        if let Some(basic) = &basic {
            request = request.header("Authorization", basic);
        }
        let mut response = request.call().map_err(|e| fail(format!("token from {realm}: {e}")))?;
        if response.status() != 200 {
            return Err(fail(format!("token from {realm}: HTTP {}; check registryCredentials", response.status())));
        }
        let body = response
            .body_mut()
            .with_config()
            .limit(TOKEN_BYTES_MAX)
            .read_to_vec()
            .map_err(|e| fail(format!("token from {realm}: {e}")))?;
        let json: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| fail(format!("token from {realm}: invalid JSON: {e}")))?;
        let token = json
            .get("token")
            .or_else(|| json.get("access_token"))
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| fail(format!("token from {realm}: no token in the answer")))?;
        self.authorization = Some(format!("Bearer {token}"));
        Ok(())
    }

    /// Fetches the manifest (or index) `reference` (a tag or digest). A digest reference is
    /// verified against the bytes received.
    ///
    /// # Errors
    /// HTTP failures, status ≠ 200, a body over [`DOCUMENT_BYTES_MAX`], or a digest mismatch.
    pub fn manifest(&mut self, reference: &str) -> Result<Fetched, RegistryError> {
        let url = format!("{}/manifests/{reference}", self.base);
        let mut response = self.get(&url, MANIFEST_ACCEPT)?;
        if response.status() == 404 {
            return Err(fail(format!("{url}: not found (no such image or tag)")));
        }
        if response.status() != 200 {
            return Err(fail(format!("GET {url}: HTTP {}", response.status())));
        }
        let media_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned();
        let bytes = response
            .body_mut()
            .with_config()
            .limit(DOCUMENT_BYTES_MAX as u64)
            .read_to_vec()
            .map_err(|e| fail(format!("GET {url}: {e}")))?;
        let digest = oci::sha256_digest(&bytes);
        if reference.starts_with("sha256:") && digest != reference {
            return Err(fail(format!("manifest {reference}: digest mismatch, the registry sent {digest}")));
        }
        Ok(Fetched { bytes, media_type, digest })
    }

    /// Streams the blob `descriptor` into `out`, verifying its size and sha256.
    ///
    /// # Errors
    /// HTTP failures, more or fewer bytes than the descriptor says, or a digest mismatch
    /// (nothing is kept: the caller discards `out`).
    pub fn blob(&mut self, descriptor: &Descriptor, out: &mut dyn Write) -> Result<(), RegistryError> {
        if descriptor.size > BLOB_BYTES_MAX {
            return Err(fail(format!(
                "blob {}: {} bytes, at most {BLOB_BYTES_MAX}",
                descriptor.digest, descriptor.size
            )));
        }
        let url = format!("{}/blobs/{}", self.base, descriptor.digest);
        let mut response = self.get(&url, "*/*")?;
        if response.status() != 200 {
            return Err(fail(format!("GET {url}: HTTP {}", response.status())));
        }
        let mut reader = response.body_mut().as_reader();
        let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
        let mut buffer = vec![0u8; 64 * 1024];
        let mut total: u64 = 0;
        loop {
            let n = reader.read(&mut buffer).map_err(|e| fail(format!("GET {url}: {e}")))?;
            if n == 0 {
                break;
            }
            total += n as u64;
            if total > descriptor.size {
                return Err(fail(format!(
                    "blob {}: more than the {} bytes its descriptor says",
                    descriptor.digest, descriptor.size
                )));
            }
            hasher.update(&buffer[..n]);
            out.write_all(&buffer[..n]).map_err(|e| fail(format!("blob {}: writing: {e}", descriptor.digest)))?;
        }
        if total != descriptor.size {
            return Err(fail(format!(
                "blob {}: {total} bytes, its descriptor says {}",
                descriptor.digest, descriptor.size
            )));
        }
        let got = format!("sha256:{}", oci::hex(hasher.finish().as_ref()));
        if got != descriptor.digest {
            return Err(fail(format!(
                "blob {}: digest mismatch, the registry sent content with digest {got}; refused",
                descriptor.digest
            )));
        }
        Ok(())
    }
}

/// Value of `name="value"` (or `name=value`) in a challenge's parameter list.
fn challenge_param(params: &str, name: &str) -> Option<String> {
    let mut rest = params;
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let key = key.trim().trim_start_matches(',').trim();
        let after = after.trim_start();
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"')?;
            (&quoted[..end], &quoted[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        if key.eq_ignore_ascii_case(name) {
            return Some(value.to_owned());
        }
        rest = next.trim_start_matches(|c: char| c == ',' || c.is_whitespace());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_parameters() {
        let p = r#"realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#;
        assert_eq!(challenge_param(p, "realm").as_deref(), Some("https://auth.docker.io/token"));
        assert_eq!(challenge_param(p, "service").as_deref(), Some("registry.docker.io"));
        assert_eq!(challenge_param("realm=x, service=y", "service").as_deref(), Some("y"));
        assert_eq!(challenge_param(p, "missing"), None);
        assert_eq!(challenge_param("garbage", "realm"), None);
    }

    #[test]
    fn loopback_registries_use_http() {
        for host in ["localhost:5000", "127.0.0.1:5000", "localhost", "[::1]:5000"] {
            assert!(is_loopback(host), "{host}");
        }
        for host in ["registry-1.docker.io", "myacr.azurecr.io", "10.0.0.1:5000"] {
            assert!(!is_loopback(host), "{host}");
        }
    }
}
