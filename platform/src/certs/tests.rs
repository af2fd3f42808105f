use std::sync::Arc;

use rustls::client::danger::ServerCertVerifier as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use super::*;
use crate::fsutil::testdir::TestDir;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(certs: &EdgeCerts) -> Arc<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(&certs.ca_cert).unwrap()).unwrap();
    Arc::new(roots)
}

fn chain(certs: &EdgeCerts) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(&certs.server_cert).unwrap().collect::<Result<_, _>>().unwrap()
}

/// webpki path validation of `server.pem` against `edge-ca.pem` for `name`.
fn verify_chain(certs: &EdgeCerts, name: &str) -> Result<(), rustls::Error> {
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(roots(certs), provider()).build().unwrap();
    let chain = chain(certs);
    let name = ServerName::try_from(name.to_owned()).unwrap();
    verifier.verify_server_cert(&chain[0], &chain[1..], &name, &[], UnixTime::now()).map(|_| ())
}

/// A complete in-memory TLS handshake: proves chain, SAN and that the key matches the cert.
fn handshake(certs: &EdgeCerts, name: &str) {
    let key = PrivateKeyDer::from_pem_file(&certs.server_key).unwrap();
    let server_config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain(certs), key)
        .unwrap();
    let client_config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots(certs))
        .with_no_client_auth();
    let name = ServerName::try_from(name.to_owned()).unwrap();
    let mut client = rustls::ClientConnection::new(Arc::new(client_config), name).unwrap();
    let mut server = rustls::ServerConnection::new(Arc::new(server_config)).unwrap();
    for _ in 0..10 {
        let mut bytes = Vec::new();
        client.write_tls(&mut bytes).unwrap();
        server.read_tls(&mut bytes.as_slice()).unwrap();
        server.process_new_packets().unwrap();
        bytes.clear();
        server.write_tls(&mut bytes).unwrap();
        client.read_tls(&mut bytes.as_slice()).unwrap();
        client.process_new_packets().unwrap();
        if !client.is_handshaking() && !server.is_handshaking() {
            return;
        }
    }
    panic!("handshake did not finish");
}

fn read(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap()
}

#[test]
fn first_start_generates_ca_and_server_chain() {
    let dir = TestDir::new("certs-first");
    let certs = ensure_edge_certs(dir.path(), "gateway.local").unwrap();
    let certs_dir = dir.path().join(CERTS_DIR);
    assert_eq!(certs.ca_cert, certs_dir.join(CA_CERT_FILE));
    let ca = String::from_utf8(read(&certs.ca_cert)).unwrap();
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"));
    let server = String::from_utf8(read(&certs.server_cert)).unwrap();
    assert_eq!(server.matches("-----BEGIN CERTIFICATE-----").count(), 2);
    assert!(server.ends_with(&ca), "chain ends with the CA");
    assert!(String::from_utf8(read(&certs.server_key)).unwrap().starts_with("-----BEGIN PRIVATE KEY-----"));
    assert_eq!(fs::read_to_string(certs_dir.join(SERVER_HOSTNAME_FILE)).unwrap(), "gateway.local\n");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        for key in [certs_dir.join(CA_KEY_FILE), certs.server_key.clone()] {
            assert_eq!(fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600, "{key:?}");
        }
    }
}

#[test]
fn server_certificate_verifies_for_every_san_and_no_other_name() {
    let dir = TestDir::new("certs-verify");
    let certs = ensure_edge_certs(dir.path(), "gateway.local").unwrap();
    for name in ["gateway.local", "localhost", "127.0.0.1", "::1"] {
        verify_chain(&certs, name).unwrap_or_else(|error| panic!("{name}: {error}"));
    }
    assert!(verify_chain(&certs, "other.local").is_err());
    handshake(&certs, "gateway.local");
}

#[test]
fn ip_hostname_becomes_an_ip_san() {
    let dir = TestDir::new("certs-ip");
    let certs = ensure_edge_certs(dir.path(), "10.1.2.3").unwrap();
    verify_chain(&certs, "10.1.2.3").unwrap();
    handshake(&certs, "10.1.2.3");
}

#[test]
fn second_start_reuses_all_files() {
    let dir = TestDir::new("certs-reuse");
    let first = ensure_edge_certs(dir.path(), "gateway.local").unwrap();
    let before = [read(&first.ca_cert), read(&first.server_cert), read(&first.server_key)];
    let second = ensure_edge_certs(dir.path(), "gateway.local").unwrap();
    assert_eq!(first, second);
    assert_eq!(before, [read(&second.ca_cert), read(&second.server_cert), read(&second.server_key)]);
}

#[test]
fn hostname_change_reissues_server_certificate_with_the_same_ca() {
    let dir = TestDir::new("certs-rename");
    let certs = ensure_edge_certs(dir.path(), "old.local").unwrap();
    let (ca_before, server_before) = (read(&certs.ca_cert), read(&certs.server_cert));
    let certs = ensure_edge_certs(dir.path(), "new.local").unwrap();
    assert_eq!(read(&certs.ca_cert), ca_before);
    assert_ne!(read(&certs.server_cert), server_before);
    verify_chain(&certs, "new.local").unwrap();
    assert!(verify_chain(&certs, "old.local").is_err());
    handshake(&certs, "new.local");
}

#[test]
fn missing_marker_after_a_crash_reissues_server_certificate() {
    let dir = TestDir::new("certs-crash");
    let certs = ensure_edge_certs(dir.path(), "gateway.local").unwrap();
    let server_before = read(&certs.server_cert);
    fs::remove_file(dir.path().join(CERTS_DIR).join(SERVER_HOSTNAME_FILE)).unwrap();
    let certs = ensure_edge_certs(dir.path(), "gateway.local").unwrap();
    assert_ne!(read(&certs.server_cert), server_before);
    handshake(&certs, "gateway.local");
}

#[test]
fn missing_ca_key_creates_a_new_ca_and_server_certificate() {
    let dir = TestDir::new("certs-new-ca");
    let certs = ensure_edge_certs(dir.path(), "gateway.local").unwrap();
    let ca_before = read(&certs.ca_cert);
    fs::remove_file(dir.path().join(CERTS_DIR).join(CA_KEY_FILE)).unwrap();
    let certs = ensure_edge_certs(dir.path(), "gateway.local").unwrap();
    assert_ne!(read(&certs.ca_cert), ca_before);
    handshake(&certs, "gateway.local");
}

#[test]
fn corrupt_ca_key_is_an_error_not_a_silent_new_ca() {
    let dir = TestDir::new("certs-corrupt");
    let certs = ensure_edge_certs(dir.path(), "gateway.local").unwrap();
    let ca_key = dir.path().join(CERTS_DIR).join(CA_KEY_FILE);
    fs::write(&ca_key, "not a key").unwrap();
    fs::remove_file(&certs.server_cert).unwrap();
    let error = ensure_edge_certs(dir.path(), "gateway.local").unwrap_err();
    assert!(matches!(&error, CertError::BadCaKey { path, .. } if path == &ca_key), "{error}");
    assert!(!error.to_string().contains('\n'));
}

#[test]
fn dates_outside_x509_range_are_refused() {
    assert_eq!(ymd(0), Some((1970, 1, 1)));
    assert_eq!(ymd(-719_163), None, "year 0");
    assert_eq!(ymd(2_932_897), None, "year 10000");
    let mut params = CertificateParams::default();
    assert!(matches!(set_validity(&mut params, 2_932_800, 365), Err(CertError::Clock { .. })));
}
