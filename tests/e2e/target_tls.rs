//! TLS to the target, end to end: `--ssl-target-ca`, `--ssl-target-insecure`,
//! `--ssl-target-sni`, `--ssl-target-cert`/`--ssl-target-key`. The target is a rustls echo
//! server in the test with certificates from a test CA (rcgen); websockify runs as a child
//! process so that its log lines can be checked.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair,
};
use rustls::RootCertStore;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_rustls::TlsAcceptor;

use crate::util::{
    ChildGuard, client_frame, listening_addr, raw_upgrade, read_close, read_frame, run_websockify,
    spawn_websockify, within,
};

/// A test certificate authority.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A leaf certificate and its key, PEM.
struct Leaf {
    cert_pem: String,
    key_pem: String,
}

impl Ca {
    fn new() -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().expect("CA key");
        Ca {
            issuer: CertifiedIssuer::self_signed(params, key).expect("self-sign CA"),
        }
    }

    fn issue(&self, name: &str, purpose: ExtendedKeyUsagePurpose) -> Leaf {
        let key = KeyPair::generate().expect("leaf key");
        let mut params = CertificateParams::new(vec![name.to_owned()]).expect("leaf params");
        params.extended_key_usages = vec![purpose];
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    fn server(&self, name: &str) -> Leaf {
        self.issue(name, ExtendedKeyUsagePurpose::ServerAuth)
    }
}

fn write(dir: &Path, name: &str, contents: &str) -> String {
    let path: PathBuf = dir.join(name);
    std::fs::write(&path, contents).expect("write test file");
    path.to_string_lossy().into_owned()
}

/// A TLS echo target on 127.0.0.1 presenting `leaf`; with `client_ca`, it requires a client
/// certificate from that CA. Reports the SNI of each successful handshake (or the error).
async fn tls_target(
    leaf: &Leaf,
    client_ca: Option<&Ca>,
) -> (
    SocketAddr,
    UnboundedReceiver<Result<Option<String>, String>>,
) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("target versions");
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            roots.add(ca.issuer.der().clone()).expect("client CA");
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                .build()
                .expect("client verifier");
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let cert = CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).expect("leaf cert");
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("leaf key");
    let config = builder
        .with_single_cert(vec![cert], key)
        .expect("target cert");
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind target");
    let addr = listener.local_addr().expect("target addr");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match acceptor.accept(tcp).await {
                    Ok(tls) => {
                        let sni = tls.get_ref().1.server_name().map(str::to_owned);
                        let _ = tx.send(Ok(sni));
                        let (mut r, mut w) = tokio::io::split(tls);
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                        let _ = w.shutdown().await;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                    }
                }
            });
        }
    });
    (addr, rx)
}

/// Starts websockify on 127.0.0.1:0 with `args` (target last); returns it and its address.
fn start(args: &[&str]) -> (ChildGuard, SocketAddr) {
    let mut all = vec!["127.0.0.1:0"];
    all.extend_from_slice(args);
    // Options after the positionals, as novnc_proxy writes them.
    let child = spawn_websockify(&all);
    let line = child.wait_for_line("listening on");
    let addr = listening_addr(&line);
    (child, addr)
}

/// One WebSocket session through the proxy: the payload comes back from the echo target.
async fn assert_relays(proxy: SocketAddr, what: &str) {
    let (mut ws, head) = raw_upgrade(proxy, "").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{what}: {head}");
    within(what, ws.write_all(&client_frame(0x82, b"through TLS")))
        .await
        .expect("send frame");
    let (b0, payload) = read_frame(&mut ws).await;
    assert_eq!(
        (b0, payload.as_slice()),
        (0x82, &b"through TLS"[..]),
        "{what}"
    );
}

/// One WebSocket session through the proxy: the target connection fails, close 1011. With
/// TLS 1.3 a target refusing our client certificate says so after our side of the handshake
/// is done, so that failure shows up on the first read ("Target connection failed").
async fn assert_refused(proxy: SocketAddr, what: &str) {
    let (mut ws, head) = raw_upgrade(proxy, "").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{what}: {head}");
    let (code, reason) = read_close(&mut ws).await;
    assert_eq!(code, 1011, "{what}: {reason}");
    assert!(
        [
            "Failed to connect to downstream server",
            "Target connection failed"
        ]
        .contains(&reason.as_str()),
        "{what}: {reason}"
    );
}

#[tokio::test]
async fn trusts_the_ca_given_with_ssl_target_ca_and_sends_the_host_as_sni() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new();
    let (target, mut seen) = tls_target(&ca.server("localhost"), None).await;
    let ca_file = write(dir.path(), "ca.pem", &ca.issuer.pem());
    let dest = format!("localhost:{}", target.port());
    let (child, proxy) = start(&[&dest, "--ssl-target-ca", &ca_file]);
    child.wait_for_line("TLS to the target: certificate verified against");
    assert_relays(proxy, "target signed by the --ssl-target-ca CA").await;
    let sni = within("target handshake", seen.recv()).await;
    assert_eq!(sni, Some(Ok(Some("localhost".to_owned()))));
}

#[tokio::test]
async fn refuses_a_target_from_another_ca_with_1011_and_says_verification_failed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, other) = (Ca::new(), Ca::new());
    let (target, mut seen) = tls_target(&ca.server("localhost"), None).await;
    let other_file = write(dir.path(), "other.pem", &other.issuer.pem());
    let dest = format!("localhost:{}", target.port());
    let (child, proxy) = start(&[&dest, "--ssl-target-ca", &other_file]);
    assert_refused(proxy, "target from a CA we do not trust").await;
    let line = child.wait_for_line("certificate verification failed");
    assert!(line.contains("--ssl-target-ca"), "no hint in {line:?}");
    let result = within("target handshake", seen.recv()).await;
    assert!(matches!(result, Some(Err(_))), "target saw {result:?}");
}

#[tokio::test]
async fn insecure_accepts_a_self_signed_target_and_warns_at_start() {
    let key = KeyPair::generate().expect("key");
    let cert = CertificateParams::new(vec!["somewhere.else".to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("self-sign");
    let leaf = Leaf {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    };
    let (target, _seen) = tls_target(&leaf, None).await;
    let dest = target.to_string();
    let child = spawn_websockify(&["--ssl-target-insecure", "127.0.0.1:0", &dest]);
    let proxy = listening_addr(&child.wait_for_line("listening on"));
    let warning = child.wait_for_line("certificate is NOT verified");
    assert!(warning.contains("WARN"), "{warning}");
    assert_relays(proxy, "self-signed target with --ssl-target-insecure").await;
}

#[tokio::test]
async fn sni_names_the_certificate_to_send_for_and_verify() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new();
    let (target, mut seen) = tls_target(&ca.server("vnc.internal"), None).await;
    let ca_file = write(dir.path(), "ca.pem", &ca.issuer.pem());
    let dest = target.to_string(); // 127.0.0.1:PORT: not a name in the certificate

    let (child, proxy) = start(&[&dest, "--ssl-target-ca", &ca_file]);
    assert_refused(
        proxy,
        "IP target, certificate for vnc.internal, no --ssl-target-sni",
    )
    .await;
    child.wait_for_line("certificate verification failed");
    drop(child);

    let (child, proxy) = start(&[
        &dest,
        "--ssl-target-ca",
        &ca_file,
        "--ssl-target-sni",
        "other.internal",
    ]);
    assert_refused(proxy, "--ssl-target-sni naming another host").await;
    let line = child.wait_for_line("certificate verification failed");
    assert!(line.contains("other.internal"), "{line}");
    drop(child);

    // Failed handshakes so far; drain them.
    while let Ok(result) = seen.try_recv() {
        assert!(result.is_err(), "unexpected handshake success: {result:?}");
    }
    let (_child, proxy) = start(&[
        &dest,
        "--ssl-target-ca",
        &ca_file,
        "--ssl-target-sni",
        "vnc.internal",
    ]);
    assert_relays(proxy, "--ssl-target-sni matching the certificate").await;
    let mut sni = within("target handshake", seen.recv()).await;
    while let Some(Err(_)) = sni {
        sni = within("target handshake", seen.recv()).await;
    }
    assert_eq!(sni, Some(Ok(Some("vnc.internal".to_owned()))));
}

#[tokio::test]
async fn a_target_requiring_a_client_certificate_gets_the_one_given() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, client_ca) = (Ca::new(), Ca::new());
    let (target, _seen) = tls_target(&ca.server("localhost"), Some(&client_ca)).await;
    let ca_file = write(dir.path(), "ca.pem", &ca.issuer.pem());
    let client = client_ca.issue("websockify", ExtendedKeyUsagePurpose::ClientAuth);
    let cert_file = write(dir.path(), "client.pem", &client.cert_pem);
    let key_file = write(dir.path(), "client.key", &client.key_pem);
    let dest = format!("localhost:{}", target.port());

    let (_child, proxy) = start(&[&dest, "--ssl-target-ca", &ca_file]);
    assert_refused(proxy, "no client certificate").await;

    let (child, proxy) = start(&[
        &dest,
        "--ssl-target-ca",
        &ca_file,
        "--ssl-target-cert",
        &cert_file,
        "--ssl-target-key",
        &key_file,
    ]);
    child.wait_for_line("client certificate");
    assert_relays(proxy, "with --ssl-target-cert/--ssl-target-key").await;
}

#[test]
fn bad_target_tls_options_fail_at_start_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, _, stderr) =
        run_websockify(&["--ssl-target-cert", "c.pem", "127.0.0.1:0", "localhost:1"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("--ssl-target-cert needs --ssl-target-key"),
        "{stderr}"
    );

    let missing = dir.path().join("missing-ca.pem");
    let missing = missing.to_string_lossy();
    let (code, _, stderr) =
        run_websockify(&["--ssl-target-ca", &missing, "127.0.0.1:0", "localhost:1"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot read --ssl-target-ca") && stderr.contains("missing-ca.pem"),
        "{stderr}"
    );
}
