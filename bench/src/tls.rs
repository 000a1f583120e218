//! TLS for the benchmark's wss:// cases: a throwaway CA and server certificate made with
//! rcgen when a run starts (written next to the results, for the peers' `--cert`/`--key`),
//! the load generator's rustls client that trusts that CA, and the server side of the
//! TLS-terminating relay (`ws-bench relay --tls-cert --tls-key`), the floor of the TLS table.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, Result};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::{TlsAcceptor, TlsConnector};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The files a TLS run hands to the peers, and the client's connector.
#[derive(Clone)]
pub struct TlsFiles {
    /// The server certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM, unencrypted).
    pub key: PathBuf,
    /// Certificate and key in one PEM file (upstream accepts that too).
    pub combined: PathBuf,
    pub connector: TlsConnector,
}

/// Makes a CA and a certificate for localhost / 127.0.0.1 signed by it, writes them under
/// `dir`, and builds a client that trusts the CA (session resumption on, rustls's default).
pub fn make(dir: &Path) -> Result<TlsFiles> {
    std::fs::create_dir_all(dir)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "ws-bench test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
    let params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca)?;
    let files = TlsFiles {
        cert: dir.join("server.crt"),
        key: dir.join("server.key"),
        combined: dir.join("server.pem"),
        connector: {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.der().clone())?;
            let config = rustls::ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_no_client_auth();
            TlsConnector::from(Arc::new(config))
        },
    };
    std::fs::write(&files.cert, cert.pem())?;
    std::fs::write(&files.key, key.serialize_pem())?;
    std::fs::write(&files.combined, cert.pem() + &key.serialize_pem())?;
    std::fs::write(dir.join("ca.crt"), ca.pem())?;
    Ok(files)
}

/// The relay's TLS acceptor from PEM files.
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("cannot read {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("bad certificate in {}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("cannot read the key {}", key.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
