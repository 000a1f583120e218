//! The client side of `--ssl-target`: which CAs the target's certificate must chain to (system
//! roots, `--ssl-target-ca`, or none with `--ssl-target-insecure`), the name it must carry
//! (`--ssl-target-sni`, else the target host) and an optional client certificate
//! (`--ssl-target-cert`/`--ssl-target-key`). Every file is read once, at start-up.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, ring};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::TlsConnector;

use crate::config::TargetTlsSettings;

/// The TLS client every session to the target uses, and the server name to ask for.
#[derive(Clone)]
pub struct TargetTls {
    pub connector: TlsConnector,
    /// `--ssl-target-sni`: sent and verified instead of the target host.
    pub sni: Option<ServerName<'static>>,
}

impl TargetTls {
    /// Builds the client from the settings; errors name the file or option to fix.
    pub fn new(settings: &TargetTlsSettings) -> anyhow::Result<TargetTls> {
        let provider = Arc::new(ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("cannot set up TLS for --ssl-target")?;
        let builder = if settings.insecure {
            tracing::warn!(
                "--ssl-target-insecure: the target's certificate is NOT verified; anyone on the \
                 path to the target can read and change the traffic. Use --ssl-target-ca FILE instead"
            );
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
        } else {
            let roots = match &settings.ca {
                Some(path) => load_ca(path)?,
                None => super::system_roots().context(
                    "--ssl-target verifies the target against the system CAs; \
                     pass --ssl-target-ca FILE to trust other CAs",
                )?,
            };
            builder.with_root_certificates(roots)
        };
        let config = match (&settings.cert, &settings.key) {
            (Some(cert), Some(key)) => {
                let chain = load_chain(cert)?;
                let key_der = load_key(key)?;
                builder
                    .with_client_auth_cert(chain, key_der)
                    .map_err(|e| client_cert_error(cert, key, e))?
            }
            (None, None) => builder.with_no_client_auth(),
            // The command line refuses these; a Config built by hand gets the same message.
            _ => bail!("--ssl-target-cert and --ssl-target-key must be given together"),
        };
        let sni = settings
            .sni
            .as_deref()
            .map(|name| {
                super::server_name(name).map_err(|_| {
                    anyhow::anyhow!(
                        "--ssl-target-sni {name:?} is not a valid DNS name or IP address"
                    )
                })
            })
            .transpose()?;
        Ok(TargetTls {
            connector: TlsConnector::from(Arc::new(config)),
            sni,
        })
    }

    /// One start-up line saying how the target is checked.
    pub fn describe(settings: &TargetTlsSettings) -> String {
        let trust = if settings.insecure {
            "NOT verified (--ssl-target-insecure)".to_owned()
        } else if let Some(ca) = &settings.ca {
            format!("verified against {}", ca.display())
        } else {
            "verified against the system CAs".to_owned()
        };
        let name = settings
            .sni
            .as_deref()
            .map_or_else(|| "the target host".to_owned(), |n| format!("'{n}'"));
        let client = match &settings.cert {
            Some(cert) => format!(", client certificate {}", cert.display()),
            None => String::new(),
        };
        format!("certificate {trust}, server name {name}{client}")
    }
}

fn client_cert_error(cert: &Path, key: &Path, err: rustls::Error) -> anyhow::Error {
    match err {
        rustls::Error::InconsistentKeys(_) => anyhow::anyhow!(
            "--ssl-target-key {} does not match the certificate in --ssl-target-cert {}",
            key.display(),
            cert.display()
        ),
        other => anyhow::anyhow!(
            "--ssl-target-key {} is not usable ({other}); use an RSA, ECDSA or Ed25519 key",
            key.display()
        ),
    }
}

/// `--ssl-target-ca`: PEM CA certificates, at least one usable.
fn load_ca(path: &Path) -> anyhow::Result<RootCertStore> {
    let certs = read_certs(path, "--ssl-target-ca")?;
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(certs);
    if ignored > 0 {
        tracing::warn!(file = %path.display(), ignored, "--ssl-target-ca: skipped unparsable certificates");
    }
    if added == 0 {
        bail!(
            "--ssl-target-ca {} holds no usable CA certificate; it should hold PEM CERTIFICATE blocks",
            path.display()
        );
    }
    Ok(roots)
}

/// `--ssl-target-cert`: the client certificate chain, leaf first.
fn load_chain(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = read_certs(path, "--ssl-target-cert")?;
    if certs.is_empty() {
        bail!(
            "no CERTIFICATE block in --ssl-target-cert {}; it needs a PEM certificate chain",
            path.display()
        );
    }
    Ok(certs)
}

fn read_certs(path: &Path, option: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path)
        .with_context(|| format!("cannot read {option} {}; check the path", path.display()))?;
    CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            anyhow::anyhow!(
                "{option} {} is not valid PEM ({e}); check its contents",
                path.display()
            )
        })
}

/// `--ssl-target-key`: an unencrypted PKCS#8, PKCS#1 or SEC1 key.
fn load_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    let pem = std::fs::read(path).with_context(|| {
        format!(
            "cannot read --ssl-target-key {}; check the path",
            path.display()
        )
    })?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => anyhow::anyhow!(
            "no unencrypted private key in --ssl-target-key {} (encrypted keys are not \
             supported here: decrypt it with `openssl pkey -in KEY -out PLAIN`)",
            path.display()
        ),
        other => anyhow::anyhow!(
            "--ssl-target-key {} is not valid PEM ({other}); check its contents",
            path.display()
        ),
    })
}

/// `--ssl-target-insecure`: any certificate and name are accepted; the handshake signatures
/// are still checked, so the session keys belong to whoever holds the presented key.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn write(dir: &tempfile::TempDir, name: &str, contents: &str) -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    fn err(settings: &TargetTlsSettings) -> String {
        format!("{:#}", TargetTls::new(settings).err().expect("an error"))
    }

    #[test]
    fn missing_or_empty_files_are_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = TargetTlsSettings {
            ca: Some(dir.path().join("nope.pem")),
            ..TargetTlsSettings::default()
        };
        let e = err(&s);
        assert!(
            e.contains("--ssl-target-ca") && e.contains("nope.pem"),
            "{e}"
        );
        s.ca = Some(write(&dir, "empty.pem", "nothing\n"));
        assert!(err(&s).contains("no usable CA"), "{}", err(&s));

        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["client".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        s.ca = Some(write(&dir, "ca.pem", &cert.pem()));
        s.cert = Some(write(&dir, "client.pem", &cert.pem()));
        s.key = Some(dir.path().join("client.key"));
        let e = err(&s);
        assert!(
            e.contains("--ssl-target-key") && e.contains("client.key"),
            "{e}"
        );
        s.key = Some(write(&dir, "cert-as-key.pem", &cert.pem()));
        assert!(
            err(&s).contains("no unencrypted private key"),
            "{}",
            err(&s)
        );
        let other = rcgen::KeyPair::generate().unwrap();
        s.key = Some(write(&dir, "other.key", &other.serialize_pem()));
        assert!(err(&s).contains("does not match"), "{}", err(&s));
        s.key = Some(write(&dir, "client.key", &key.serialize_pem()));
        TargetTls::new(&s).unwrap();
        s.key = None;
        assert!(err(&s).contains("together"), "{}", err(&s));
    }

    #[test]
    fn insecure_needs_no_roots_and_sni_is_checked() {
        let mut s = TargetTlsSettings {
            insecure: true,
            sni: Some("vnc.internal".into()),
            ..TargetTlsSettings::default()
        };
        let tls = TargetTls::new(&s).unwrap();
        assert!(matches!(tls.sni, Some(ServerName::DnsName(_))));
        s.sni = Some("bad name".into());
        assert!(err(&s).contains("--ssl-target-sni"), "{}", err(&s));
        assert!(TargetTls::describe(&s).contains("NOT verified"));
    }
}
