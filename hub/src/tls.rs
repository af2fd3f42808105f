//! The TLS listener's server configuration (rustls with the ring provider).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why the TLS configuration could not be built.
#[derive(Debug)]
pub struct TlsError(pub String);

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Builds an acceptor from a PEM certificate chain and a PEM private key.
/// The TLS acceptor type the broker takes.
pub type Acceptor = futures_rustls::TlsAcceptor;

pub fn acceptor(cert_chain: &Path, key: &Path) -> Result<Acceptor, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_chain)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError(format!("{}: {e}", cert_chain.display())))?;
    if certs.is_empty() {
        return Err(TlsError(format!("{}: no certificate in file", cert_chain.display())));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError(format!("{}: {e}", key.display())))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError(format!("{}: {e}", cert_chain.display())))?;
    Ok(futures_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// The TLS handshake of an accepted connection, bounded by its connect deadline: the stream,
/// or `None` once the failure is logged (a timeout is also counted). `what` names the protocol
/// in the log ("" for MQTT, "AMQP ").
pub async fn handshake_within<S: smol::io::AsyncRead + smol::io::AsyncWrite + Unpin>(
    broker: &crate::broker::Broker,
    acceptor: &Acceptor,
    stream: S,
    peer: &str,
    what: &str,
    deadline: std::time::Instant,
) -> Option<futures_rustls::server::TlsStream<S>> {
    let handshake = async { Some(acceptor.accept(stream).await) };
    let timeout = async {
        smol::Timer::at(deadline).await;
        None
    };
    match smol::future::or(handshake, timeout).await {
        Some(Ok(tls)) => Some(tls),
        Some(Err(e)) => {
            log::warn!("{peer}: {what}TLS handshake failed: {e}");
            None
        }
        None => {
            crate::metrics::Metrics::inc(&broker.metrics.connect_timeouts);
            log::info!(
                "{peer}: {what}TLS handshake not done within {} s (hub.connect_timeout_secs); closing",
                broker.limits.connect_timeout.as_secs()
            );
            None
        }
    }
}
