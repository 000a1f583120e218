//! Secrets kept out of `ps`: `--key-password-file`, `WEBSOCKIFY_KEY_PASSWORD` and
//! `--auth-source @FILE`, with the real binary.

use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine as _;
use rcgen::{CertificateParams, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::util::{ChildGuard, echo_server, listening_addr, raw_upgrade, spawn_websockify, within};

/// A self-signed `localhost` certificate and its key encrypted with `password` (PKCS#8).
fn encrypted_identity(password: &str) -> (String, String, CertificateDer<'static>) {
    let key = KeyPair::generate().expect("key");
    let cert = CertificateParams::new(vec!["localhost".to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("self-sign");
    let der = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).expect("key der");
    let info = pkcs8::PrivateKeyInfo::try_from(der.secret_der()).expect("pkcs8");
    let params =
        pkcs8::pkcs5::pbes2::Parameters::pbkdf2_sha256_aes256cbc(2048, b"saltsalt", &[3; 16])
            .expect("pbes2 params");
    let encrypted = info
        .encrypt_with_params(params, password)
        .expect("encrypt key")
        .to_pem("ENCRYPTED PRIVATE KEY", pkcs8::LineEnding::LF)
        .expect("pem")
        .to_string();
    (cert.pem(), encrypted, cert.der().clone())
}

/// A TLS handshake with the proxy, trusting only `cert`.
async fn tls_handshake(addr: SocketAddr, cert: &CertificateDer<'static>) -> Result<(), String> {
    let mut roots = RootCertStore::empty();
    roots.add(cert.clone()).map_err(|e| e.to_string())?;
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
    within("TLS handshake with the proxy", async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
        TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    })
    .await
}

fn spawn_with_env(args: &[&str], env: Option<(&str, &str)>) -> ChildGuard {
    let mut command = crate::util::websockify(args);
    command.env_remove("WEBSOCKIFY_KEY_PASSWORD");
    if let Some((name, value)) = env {
        command.env(name, value);
    }
    ChildGuard::new(command.spawn().expect("spawn websockify"))
}

#[tokio::test]
async fn encrypted_key_password_comes_from_a_file_or_the_environment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert_pem, key_pem, cert_der) = encrypted_identity("s3cret pass");
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let pw = dir.path().join("pw");
    std::fs::write(&cert, cert_pem).expect("write cert");
    std::fs::write(&key, key_pem).expect("write key");
    std::fs::write(&pw, "s3cret pass\n").expect("write password");
    let target = echo_server().await.to_string();
    let (cert, key, pw) = (
        cert.to_string_lossy(),
        key.to_string_lossy(),
        pw.to_string_lossy(),
    );
    let base = ["--cert", &*cert, "--key", &*key, "127.0.0.1:0", &*target];

    // From the file: the trailing newline is not part of the password.
    let mut args = base.to_vec();
    args.extend(["--key-password-file", &*pw]);
    let child = spawn_with_env(&args, None);
    let addr = listening_addr(&child.wait_for_line("listening on"));
    tls_handshake(addr, &cert_der)
        .await
        .expect("TLS with --key-password-file");
    drop(child);

    // From the environment.
    let child = spawn_with_env(&base, Some(("WEBSOCKIFY_KEY_PASSWORD", "s3cret pass")));
    let addr = listening_addr(&child.wait_for_line("listening on"));
    tls_handshake(addr, &cert_der)
        .await
        .expect("TLS with WEBSOCKIFY_KEY_PASSWORD");
    drop(child);

    // --key-password wins over the environment: a wrong one is reported.
    let mut args = base.to_vec();
    args.extend(["--key-password", "wrong"]);
    let child = spawn_with_env(&args, Some(("WEBSOCKIFY_KEY_PASSWORD", "s3cret pass")));
    child.wait_for_line("wrong --key-password");
}

#[tokio::test]
async fn basic_auth_credentials_come_from_an_auth_source_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let creds = dir.path().join("creds");
    std::fs::write(&creds, "alice:s3cret\n").expect("write credentials");
    let source = format!("@{}", creds.display());
    let target = echo_server().await.to_string();
    let child = spawn_websockify(&[
        "--auth-plugin",
        "BasicHTTPAuth",
        "--auth-source",
        &source,
        "127.0.0.1:0",
        &target,
    ]);
    let addr = listening_addr(&child.wait_for_line("listening on"));
    let good = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
    let (_ws, head) = raw_upgrade(addr, &format!("Authorization: Basic {good}\r\n")).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let bad = base64::engine::general_purpose::STANDARD.encode(format!("alice:{source}"));
    let (_ws, head) = raw_upgrade(addr, &format!("Authorization: Basic {bad}\r\n")).await;
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");

    let (code, _, stderr) = crate::util::run_websockify(&[
        "--auth-plugin",
        "BasicHTTPAuth",
        "--auth-source",
        &format!("@{}/missing", dir.path().display()),
        "127.0.0.1:0",
        &target,
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot read --auth-source file") && stderr.contains("missing"),
        "{stderr}"
    );
}
