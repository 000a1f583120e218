//! TLS configuration: the server-side certificate (reloaded when its file changes), client
//! certificate checks, and the client side of `--ssl-target`; `--ssl-ciphers` is in `ciphers`.
//!
//! Upstream builds a fresh `ssl.SSLContext` for every connection, so a replaced certificate is
//! used without a restart. [`TlsServer`] keeps that behaviour but only rebuilds the rustls config
//! when the files' identity (mtime, length, inode) changes.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use anyhow::Context;
use pkcs8::EncryptedPrivateKeyInfo;
use rustls::crypto::ring;
use rustls::server::WantsServerCert;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{
    ConfigBuilder, InconsistentKeys, RootCertStore, ServerConfig, SupportedProtocolVersion,
};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio_rustls::TlsAcceptor;

use crate::config::{SslVersion, TlsSettings};

mod ciphers;
mod target;

pub use ciphers::{CipherError, select_cipher_suites};
pub use target::TargetTls;

/// TLS 1.3 only (`--ssl-version tlsv1_3`).
static TLS13_ONLY: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// Why the TLS config could not be built; `Display` is one line naming the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate file {} not found; create it or pass --cert FILE", .path.display())]
    CertMissing { path: PathBuf },
    #[error("cannot read certificate file {}: {error}", .path.display())]
    CertRead { path: PathBuf, error: io::Error },
    #[error("certificate file {} is not valid PEM ({detail}); check its contents", .path.display())]
    CertPem { path: PathBuf, detail: String },
    #[error("no CERTIFICATE block in {}; --cert needs a PEM certificate chain", .path.display())]
    NoCertificate { path: PathBuf },
    #[error("certificate in {} is invalid ({detail}); regenerate it", .path.display())]
    CertInvalid { path: PathBuf, detail: String },
    #[error("key file {} not found; check --key", .path.display())]
    KeyMissing { path: PathBuf },
    #[error("cannot read key file {}: {error}", .path.display())]
    KeyRead { path: PathBuf, error: io::Error },
    #[error("key file {} is not valid PEM ({detail}); check its contents", .path.display())]
    KeyPem { path: PathBuf, detail: String },
    #[error("no private key in {}; add it to the file or pass --key FILE", .path.display())]
    NoPrivateKey { path: PathBuf },
    #[error("private key in {} is encrypted; pass --key-password", .path.display())]
    KeyNeedsPassword { path: PathBuf },
    #[error("wrong --key-password for the private key in {}", .path.display())]
    KeyWrongPassword { path: PathBuf },
    #[error(
        "private key in {} uses legacy OpenSSL PEM encryption, which is not supported; \
         convert it with `openssl pkcs8 -topk8 -in OLD -out NEW`",
        .path.display()
    )]
    KeyLegacyEncrypted { path: PathBuf },
    #[error(
        "cannot decrypt the private key in {} ({detail}); re-encrypt it with \
         `openssl pkcs8 -topk8 -v2 aes-256-cbc`",
        .path.display()
    )]
    KeyEncryption { path: PathBuf, detail: String },
    #[error(
        "private key in {} is not usable ({detail}); use an RSA, ECDSA or Ed25519 key",
        .path.display()
    )]
    KeyUnsupported { path: PathBuf, detail: String },
    #[error(
        "private key in {} does not match the certificate in {}; pass the matching --key",
        .key.display(), .cert.display()
    )]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error(
        "'{host}' is not a valid DNS name or IP address for --ssl-target; check the target host"
    )]
    InvalidServerName { host: String },
}

impl TlsError {
    /// A file we may not read (after `--user`), as opposed to a missing or broken one.
    fn is_permission_denied(&self) -> bool {
        match self {
            TlsError::CertRead { error, .. } | TlsError::KeyRead { error, .. } => {
                error.kind() == io::ErrorKind::PermissionDenied
            }
            _ => false,
        }
    }
}

/// (mtime, length, inode) of a file: a change means "reload".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

impl FileId {
    fn of(meta: &std::fs::Metadata) -> FileId {
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(meta);
        #[cfg(not(unix))]
        let inode = 0;
        FileId {
            modified: meta.modified().ok(),
            len: meta.len(),
            inode,
        }
    }
}

type Identity = (FileId, Option<FileId>);

/// Builds and caches the server-side TLS config; new connections pick up a changed cert/key file
/// without restart.
pub struct TlsServer {
    cert: PathBuf,
    key: Option<PathBuf>,
    key_password: Option<String>,
    /// Provider, versions and client verifier: everything but the certificate.
    builder: ConfigBuilder<ServerConfig, WantsServerCert>,
    cache: Mutex<Option<(Identity, Arc<ServerConfig>)>>,
}

impl TlsServer {
    /// Never fails just because the cert file is missing (upstream then serves plain ws:// and
    /// only fails TLS connections). Fails for a bad `--ssl-ciphers` value or unreadable `--cafile`.
    /// The client-certificate roots are read once, here; the cert and key on every change.
    pub fn new(settings: &TlsSettings) -> anyhow::Result<TlsServer> {
        let mut provider = ring::default_provider();
        if let Some(spec) = &settings.ciphers {
            provider.cipher_suites = select_cipher_suites(spec)?;
        }
        let provider = Arc::new(provider);
        let versions = match settings.min_version {
            SslVersion::Default | SslVersion::Tlsv1_1 | SslVersion::Tlsv1_2 => rustls::ALL_VERSIONS,
            SslVersion::Tlsv1_3 => TLS13_ONLY,
        };
        // Fails at start-up if the cipher list and the version leave nothing to negotiate.
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .with_context(|| {
                format!(
                    "--ssl-ciphers {:?} has no suite for --ssl-version {:?}; widen one of them",
                    settings.ciphers.as_deref().unwrap_or("DEFAULT"),
                    settings.min_version
                )
            })?;
        let builder = if settings.verify_client {
            let roots = match &settings.cafile {
                Some(path) => load_cafile(path)?,
                None => system_roots()
                    .context("--verify-client without --cafile needs the system CA certificates")?,
            };
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                .build()
                .context("cannot set up client-certificate verification for --verify-client")?;
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        // Upstream makes --cert absolute at start-up so a later chdir (--web) does not matter.
        let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        Ok(TlsServer {
            cert: absolute(&settings.cert),
            key: settings.key.as_deref().map(absolute),
            key_password: settings.key_password.clone(),
            builder,
            cache: Mutex::new(None),
        })
    }

    /// After switching users (`--user`): warns if the certificate files can no longer be read,
    /// in which case the certificate loaded at start-up stays in use until a restart.
    pub fn check_rereadable(&self, who: &str) {
        let loaded = self
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some();
        if !loaded {
            return;
        }
        let read = |path: &Path| std::fs::File::open(path).map(drop);
        let mut failed = read(&self.cert).err().map(|e| (self.cert.clone(), e));
        if failed.is_none()
            && let Some(key) = &self.key
        {
            failed = read(key).err().map(|e| (key.clone(), e));
        }
        if let Some((path, err)) = failed {
            tracing::warn!(
                "{who} cannot read {} ({err}): the TLS certificate loaded at start-up stays in \
                 use, and a renewed one needs a restart; make the files readable by that user \
                 for SIGHUP and automatic reloads to work",
                path.display()
            );
        }
    }

    /// True when the cert file exists (start-up banner: "SSL/TLS support" or "No SSL/TLS support").
    pub fn cert_present(&self) -> bool {
        std::fs::metadata(&self.cert).is_ok()
    }

    /// Try loading now, for a start-up warning; same errors as [`TlsServer::acceptor`].
    pub fn check(&self) -> Result<(), TlsError> {
        self.acceptor().map(|_| ())
    }

    /// Acceptor for a new connection: stats the cert (and key) files and rebuilds the config only
    /// if they changed since the cached build. A changed but broken file gives its error.
    pub fn acceptor(&self) -> Result<TlsAcceptor, TlsError> {
        self.config().map(TlsAcceptor::from)
    }

    fn config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        // After `--user`, files only root may read keep the certificate loaded at start-up
        // (see `check_rereadable`) instead of failing every TLS connection.
        let keep = |err: TlsError, cache: &Option<(Identity, Arc<ServerConfig>)>| match cache {
            Some((_, config)) if err.is_permission_denied() => Ok(config.clone()),
            _ => Err(err),
        };
        // Stat before reading: if the file changes while we read it, the next call sees a new
        // identity and reloads again.
        let identity = match self.identity() {
            Ok(identity) => identity,
            Err(err) => return keep(err, &cache),
        };
        if let Some((_, config)) = cache.as_ref().filter(|(cached, _)| *cached == identity) {
            return Ok(config.clone());
        }
        let config = match self.load() {
            Ok(config) => Arc::new(config),
            Err(err) => return keep(err, &cache),
        };
        if cache.is_some() {
            tracing::info!(cert = %self.cert.display(), "reloaded changed TLS certificate");
        } else {
            tracing::debug!(cert = %self.cert.display(), "loaded TLS certificate");
        }
        *cache = Some((identity, config.clone()));
        Ok(config)
    }

    fn identity(&self) -> Result<Identity, TlsError> {
        let cert = std::fs::metadata(&self.cert).map_err(|e| cert_io(&self.cert, e))?;
        let key = match &self.key {
            Some(path) => Some(FileId::of(
                &std::fs::metadata(path).map_err(|e| key_io(path, e))?,
            )),
            None => None,
        };
        Ok((FileId::of(&cert), key))
    }

    fn load(&self) -> Result<ServerConfig, TlsError> {
        let cert_pem = std::fs::read(&self.cert).map_err(|e| cert_io(&self.cert, e))?;
        let (key_path, key_pem) = match &self.key {
            Some(path) => (path, std::fs::read(path).map_err(|e| key_io(path, e))?),
            None => (&self.cert, cert_pem.clone()),
        };
        // Checked first: the PEM reader cannot skip a block with headers, even among certificates.
        if find(&key_pem, b"Proc-Type: 4,ENCRYPTED").is_some() {
            return Err(TlsError::KeyLegacyEncrypted {
                path: key_path.clone(),
            });
        }
        let certs = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::CertPem {
                path: self.cert.clone(),
                detail: e.to_string(),
            })?;
        if certs.is_empty() {
            return Err(TlsError::NoCertificate {
                path: self.cert.clone(),
            });
        }
        let key = parse_key(&key_pem, key_path, self.key_password.as_deref())?;
        let signing_key = self
            .builder
            .crypto_provider()
            .key_provider
            .load_private_key(key)
            .map_err(|e| TlsError::KeyUnsupported {
                path: key_path.clone(),
                detail: e.to_string(),
            })?;
        let certified = CertifiedKey::new(certs, signing_key);
        match certified.keys_match() {
            Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => {}
            Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
                return Err(TlsError::KeyMismatch {
                    cert: self.cert.clone(),
                    key: key_path.clone(),
                });
            }
            Err(e) => {
                return Err(TlsError::CertInvalid {
                    path: self.cert.clone(),
                    detail: e.to_string(),
                });
            }
        }
        let mut config = self
            .builder
            .clone()
            .with_cert_resolver(Arc::new(SingleCertAndKey::from(certified)));
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

// The io::Error is part of the one-line message, not a `source`, so `{:#}` does not repeat it.
fn cert_io(path: &Path, error: io::Error) -> TlsError {
    match error.kind() {
        io::ErrorKind::NotFound => TlsError::CertMissing {
            path: path.to_path_buf(),
        },
        _ => TlsError::CertRead {
            path: path.to_path_buf(),
            error,
        },
    }
}

fn key_io(path: &Path, error: io::Error) -> TlsError {
    match error.kind() {
        io::ErrorKind::NotFound => TlsError::KeyMissing {
            path: path.to_path_buf(),
        },
        _ => TlsError::KeyRead {
            path: path.to_path_buf(),
            error,
        },
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The first PKCS#8, PKCS#1 or SEC1 key in `pem`, else an `ENCRYPTED PRIVATE KEY` decrypted
/// with `password`.
fn parse_key(
    pem: &[u8],
    path: &Path,
    password: Option<&str>,
) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bad_pem = |detail: String| TlsError::KeyPem {
        path: path.to_path_buf(),
        detail,
    };
    match PrivateKeyDer::from_pem_slice(pem) {
        Ok(key) => return Ok(key),
        Err(pem::Error::NoItemsFound) => {}
        Err(e) => return Err(bad_pem(e.to_string())),
    }
    const BEGIN: &[u8] = b"-----BEGIN ENCRYPTED PRIVATE KEY-----";
    const END: &[u8] = b"-----END ENCRYPTED PRIVATE KEY-----";
    let Some(start) = find(pem, BEGIN) else {
        return Err(TlsError::NoPrivateKey {
            path: path.to_path_buf(),
        });
    };
    let end = find(&pem[start..], END)
        .map(|at| start + at + END.len())
        .ok_or_else(|| bad_pem("missing END ENCRYPTED PRIVATE KEY line".into()))?;
    let (_, der) =
        pkcs8::der::pem::decode_vec(&pem[start..end]).map_err(|e| bad_pem(e.to_string()))?;
    // Unparsable here mostly means a scheme pkcs5 lacks (PKCS#12 PBE, PBES1 with 3DES).
    let info =
        EncryptedPrivateKeyInfo::try_from(der.as_slice()).map_err(|e| TlsError::KeyEncryption {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
    let Some(password) = password else {
        return Err(TlsError::KeyNeedsPassword {
            path: path.to_path_buf(),
        });
    };
    let plain = info.decrypt(password).map_err(|e| match e {
        // A wrong password gives bad padding (reported by pkcs5 0.7 as `EncryptFailed`) or,
        // rarely, garbage that is not DER.
        pkcs8::Error::EncryptedPrivateKey(
            pkcs8::pkcs5::Error::DecryptFailed | pkcs8::pkcs5::Error::EncryptFailed,
        )
        | pkcs8::Error::Asn1(_) => TlsError::KeyWrongPassword {
            path: path.to_path_buf(),
        },
        other => TlsError::KeyEncryption {
            path: path.to_path_buf(),
            detail: other.to_string(),
        },
    })?;
    Ok(PrivatePkcs8KeyDer::from(plain.as_bytes().to_vec()).into())
}

/// A root store from a PEM bundle (`--cafile`).
fn load_cafile(path: &Path) -> anyhow::Result<RootCertStore> {
    let pem = std::fs::read(path)
        .with_context(|| format!("cannot read --cafile {}; check the path", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            anyhow::anyhow!(
                "--cafile {} is not valid PEM ({e}); it should hold concatenated CA certificates",
                path.display()
            )
        })?;
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(certs);
    if ignored > 0 {
        tracing::warn!(cafile = %path.display(), ignored, "skipped unparsable CA certificates");
    }
    if added == 0 {
        anyhow::bail!(
            "--cafile {} holds no usable CA certificate; it should hold PEM CERTIFICATE blocks",
            path.display()
        );
    }
    Ok(roots)
}

/// The system CA store (rustls-native-certs); errors when nothing at all could be loaded.
fn system_roots() -> anyhow::Result<RootCertStore> {
    let found = rustls_native_certs::load_native_certs();
    if let Some(first) = found.errors.first() {
        let failed = found.errors.len();
        tracing::warn!(failed, %first, "some system CA certificates failed to load");
    }
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        anyhow::bail!(
            "no system CA certificates found; install ca-certificates or set SSL_CERT_FILE"
        );
    }
    Ok(roots)
}

/// The rustls server name for a target host (DNS name or IP literal, brackets already stripped).
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(host.to_owned()).map_err(|_| TlsError::InvalidServerName {
        host: host.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa,
        KeyPair,
    };
    use rustls::ClientConfig;
    use std::fs::File;
    use std::time::Duration;
    use tokio_rustls::TlsConnector;

    struct Generated {
        cert_pem: String,
        key_pem: String,
        cert_der: CertificateDer<'static>,
    }

    fn self_signed() -> Generated {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        Generated {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().clone(),
        }
    }

    fn write(dir: &tempfile::TempDir, name: &str, contents: &str) -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    fn settings(cert: PathBuf) -> TlsSettings {
        TlsSettings {
            cert,
            ..TlsSettings::default()
        }
    }

    fn load_err(settings: &TlsSettings) -> TlsError {
        TlsServer::new(settings).unwrap().check().unwrap_err()
    }

    fn client(
        trusted: &CertificateDer<'static>,
    ) -> rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert> {
        let mut roots = RootCertStore::empty();
        roots.add(trusted.clone()).unwrap();
        ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
    }

    /// Runs both sides of a handshake over an in-memory pipe; returns (server ok, client ok).
    async fn handshake(acceptor: TlsAcceptor, client: ClientConfig) -> (bool, bool) {
        let (a, b) = tokio::io::duplex(16 * 1024);
        let connector = TlsConnector::from(Arc::new(client));
        let name = server_name("localhost").unwrap();
        let both = async { tokio::join!(acceptor.accept(a), connector.connect(name, b)) };
        let (server, client) = tokio::time::timeout(Duration::from_secs(10), both)
            .await
            .expect("handshake timed out");
        if let Ok(server) = &server {
            assert_eq!(server.get_ref().1.alpn_protocol(), None); // client offered none
        }
        (server.is_ok(), client.is_ok())
    }

    #[test]
    fn loads_cert_and_key_from_one_file() {
        let dir = tempfile::tempdir().unwrap();
        let g = self_signed();
        let cert = write(&dir, "self.pem", &format!("{}{}", g.cert_pem, g.key_pem));
        let server = TlsServer::new(&settings(cert)).unwrap();
        assert!(server.cert_present());
        server.check().unwrap();
        let config = server.config().unwrap();
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }

    #[test]
    fn loads_key_from_separate_file() {
        let dir = tempfile::tempdir().unwrap();
        let g = self_signed();
        let mut s = settings(write(&dir, "cert.pem", &g.cert_pem));
        s.key = Some(write(&dir, "key.pem", &g.key_pem));
        TlsServer::new(&s).unwrap().check().unwrap();
        // Without --key the cert file alone has no key.
        s.key = None;
        assert!(matches!(load_err(&s), TlsError::NoPrivateKey { .. }));
    }

    #[test]
    fn missing_cert_is_not_a_startup_error() {
        let dir = tempfile::tempdir().unwrap();
        let server = TlsServer::new(&settings(dir.path().join("self.pem"))).unwrap();
        assert!(!server.cert_present());
        let err = server.acceptor().err().unwrap();
        assert!(matches!(err, TlsError::CertMissing { .. }), "{err}");
        assert!(err.to_string().contains("self.pem"), "{err}");
    }

    fn encrypted_pem(key_pem: &str, password: &str) -> String {
        let der = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
        let info = pkcs8::PrivateKeyInfo::try_from(der.secret_der()).unwrap();
        let params = pkcs8::pkcs5::pbes2::Parameters::pbkdf2_sha256_aes256cbc(
            2048,
            b"saltsaltsalt",
            &[7; 16],
        )
        .unwrap();
        let doc = info.encrypt_with_params(params, password).unwrap();
        doc.to_pem("ENCRYPTED PRIVATE KEY", pkcs8::LineEnding::LF)
            .unwrap()
            .to_string()
    }

    #[test]
    fn encrypted_pkcs8_key_needs_the_right_password() {
        let dir = tempfile::tempdir().unwrap();
        let g = self_signed();
        let key = encrypted_pem(&g.key_pem, "s3cret");
        let mut s = settings(write(&dir, "self.pem", &format!("{}{key}", g.cert_pem)));
        assert!(matches!(load_err(&s), TlsError::KeyNeedsPassword { .. }));
        s.key_password = Some("wrong".into());
        let err = load_err(&s);
        assert!(matches!(err, TlsError::KeyWrongPassword { .. }), "{err}");
        s.key_password = Some("s3cret".into());
        TlsServer::new(&s).unwrap().check().unwrap();
    }

    #[test]
    fn legacy_encrypted_pem_says_how_to_convert() {
        let dir = tempfile::tempdir().unwrap();
        let g = self_signed();
        let legacy = "-----BEGIN EC PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n\
                      DEK-Info: AES-128-CBC,00112233445566778899AABBCCDDEEFF\n\nAAAA\n\
                      -----END EC PRIVATE KEY-----\n";
        let s = settings(write(&dir, "self.pem", &format!("{}{legacy}", g.cert_pem)));
        let err = load_err(&s);
        assert!(matches!(err, TlsError::KeyLegacyEncrypted { .. }), "{err}");
        assert!(err.to_string().contains("openssl pkcs8 -topk8"), "{err}");
    }

    #[test]
    fn key_that_does_not_match_the_cert_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (self_signed(), self_signed());
        let s = settings(write(
            &dir,
            "self.pem",
            &format!("{}{}", a.cert_pem, b.key_pem),
        ));
        let err = load_err(&s);
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
    }

    #[test]
    fn unusable_cipher_string_is_a_startup_error() {
        let s = TlsSettings {
            ciphers: Some("AES128-SHA".into()),
            ..TlsSettings::default()
        };
        let err = TlsServer::new(&s).err().unwrap();
        assert!(format!("{err:#}").contains("'AES128-SHA'"), "{err:#}");
    }

    #[test]
    fn unreadable_cafile_is_a_startup_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = TlsSettings {
            verify_client: true,
            cafile: Some(dir.path().join("ca.pem")),
            ..TlsSettings::default()
        };
        let err = TlsServer::new(&s).err().unwrap();
        assert!(format!("{err:#}").contains("ca.pem"), "{err:#}");
        s.cafile = Some(write(&dir, "empty.pem", "nothing here\n"));
        let err = TlsServer::new(&s).err().unwrap();
        assert!(format!("{err:#}").contains("no usable CA"), "{err:#}");
    }

    #[test]
    fn server_names_accept_dns_and_ip_literals() {
        assert!(matches!(
            server_name("example.com"),
            Ok(ServerName::DnsName(_))
        ));
        assert!(matches!(server_name("::1"), Ok(ServerName::IpAddress(_))));
        assert!(matches!(
            server_name("bad host"),
            Err(TlsError::InvalidServerName { .. })
        ));
    }

    #[tokio::test]
    async fn serves_a_replaced_certificate_to_new_connections() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (self_signed(), self_signed());
        let path = write(&dir, "self.pem", &format!("{}{}", a.cert_pem, a.key_pem));
        // Same-length files written within one clock tick: only the mtime tells them apart.
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(1000))
            .unwrap();
        let server = TlsServer::new(&settings(path.clone())).unwrap();
        let first = server.config().unwrap();
        assert!(
            Arc::ptr_eq(&first, &server.config().unwrap()),
            "unchanged file was reloaded"
        );
        let trusts_b = client(&b.cert_der).with_no_client_auth();
        let (_, client_ok) = handshake(server.acceptor().unwrap(), trusts_b.clone()).await;
        assert!(!client_ok, "a client trusting only B accepted A");

        std::fs::write(&path, format!("{}{}", b.cert_pem, b.key_pem)).unwrap();
        assert!(!Arc::ptr_eq(&first, &server.config().unwrap()));
        assert_eq!(
            handshake(server.acceptor().unwrap(), trusts_b).await,
            (true, true)
        );

        // A broken replacement is reported, not papered over with the old config.
        std::fs::write(&path, &b.cert_pem).unwrap();
        assert!(matches!(
            server.acceptor(),
            Err(TlsError::NoPrivateKey { .. })
        ));
    }

    #[tokio::test]
    async fn verify_client_requires_a_cert_signed_by_the_cafile() {
        let dir = tempfile::tempdir().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let client_key = KeyPair::generate().unwrap();
        let mut client_params = CertificateParams::new(vec!["client".to_owned()]).unwrap();
        client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_cert = client_params.signed_by(&client_key, &ca).unwrap();

        let g = self_signed();
        let mut s = settings(write(
            &dir,
            "self.pem",
            &format!("{}{}", g.cert_pem, g.key_pem),
        ));
        s.verify_client = true;
        s.cafile = Some(write(&dir, "ca.pem", &ca.pem()));
        let server = TlsServer::new(&s).unwrap();

        let key = PrivateKeyDer::from_pem_slice(client_key.serialize_pem().as_bytes()).unwrap();
        let with_cert = client(&g.cert_der)
            .with_client_auth_cert(vec![client_cert.der().clone()], key)
            .unwrap();
        assert_eq!(
            handshake(server.acceptor().unwrap(), with_cert).await,
            (true, true)
        );
        let without = client(&g.cert_der).with_no_client_auth();
        assert!(!handshake(server.acceptor().unwrap(), without).await.0);
    }

    #[tokio::test]
    async fn tls13_only_refuses_tls12_clients() {
        let dir = tempfile::tempdir().unwrap();
        let g = self_signed();
        let mut s = settings(write(
            &dir,
            "self.pem",
            &format!("{}{}", g.cert_pem, g.key_pem),
        ));
        s.min_version = SslVersion::Tlsv1_3;
        let server = TlsServer::new(&s).unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(g.cert_der.clone()).unwrap();
        let tls12 = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        assert_eq!(
            handshake(server.acceptor().unwrap(), tls12).await,
            (false, false)
        );
    }
}
