//! TLS end to end: wss:// and ws:// on one port, `--ssl-only`, certificate reload, client
//! certificates, `--ssl-version`, the handshake deadline and `--ssl-target` (upstream 1.5, 1.10,
//! 1.12). Certificates are generated with rcgen into a temporary directory per test.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rcgen::ExtendedKeyUsagePurpose;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore, SupportedProtocolVersion};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use websockify::Target;
use websockify::config::{Config, SslVersion};

use crate::util::{
    Ca, Identity, TestServer, config_to, echo_server, self_signed, tls_echo_target, within,
};

// ---- certificates ---------------------------------------------------------------------------

fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write test file");
    path
}

/// A config proxying to a fresh echo server, with `cert` as the server certificate file.
async fn echo_config(cert: PathBuf) -> Config {
    let mut config = config_to(echo_server().await);
    config.tls.cert = cert;
    config
}

// ---- clients --------------------------------------------------------------------------------

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(trusted: &CertificateDer<'static>) -> RootCertStore {
    let mut roots = RootCertStore::empty();
    roots.add(trusted.clone()).expect("add trusted cert");
    roots
}

/// A client trusting only `trusted`, offering `versions`, with an optional client certificate.
fn client_config(
    trusted: &CertificateDer<'static>,
    versions: &[&'static SupportedProtocolVersion],
    client_cert: Option<&Identity>,
) -> Arc<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .expect("client protocol versions")
        .with_root_certificates(roots(trusted));
    let config = match client_cert {
        Some(id) => builder
            .with_client_auth_cert(vec![id.cert_der.clone()], id.key_der())
            .expect("client auth cert"),
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

/// A client trusting only `trusted`, with rustls' default versions (TLS 1.2 and 1.3).
fn trusting(trusted: &CertificateDer<'static>) -> Arc<ClientConfig> {
    client_config(trusted, rustls::DEFAULT_VERSIONS, None)
}

/// TCP connect, then a TLS handshake with SNI `localhost`.
async fn tls_connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").expect("server name");
    TlsConnector::from(config).connect(name, tcp).await
}

/// Upgrades `stream` to a WebSocket; the error says which step failed.
async fn upgrade<S>(stream: S) -> Result<WebSocketStream<S>, String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    tokio_tungstenite::client_async("ws://localhost/websockify", stream)
        .await
        .map(|(ws, _response)| ws)
        .map_err(|e| format!("WebSocket upgrade failed: {e}"))
}

/// A wss:// session: TLS handshake and WebSocket upgrade, both bounded.
async fn wss(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> Result<WebSocketStream<TlsStream<TcpStream>>, String> {
    within("wss connect", async {
        let tls = tls_connect(addr, config)
            .await
            .map_err(|e| format!("TLS handshake failed: {e}"))?;
        upgrade(tls).await
    })
    .await
}

/// A ws:// session over plain TCP.
async fn ws(addr: SocketAddr) -> Result<WebSocketStream<TcpStream>, String> {
    within("ws connect", async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect failed: {e}"))?;
        upgrade(tcp).await
    })
    .await
}

/// Sends `payload` as one binary message and reads binary messages until as many bytes came
/// back, concurrently (so a large payload cannot fill every buffer on the way). Returns them.
async fn echo<S>(ws: &mut WebSocketStream<S>, payload: &[u8]) -> Result<Vec<u8>, String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    within("echo", async {
        let (mut sink, mut stream) = ws.split();
        let send = async {
            sink.send(Message::binary(payload.to_vec()))
                .await
                .map_err(|e| format!("send failed: {e}"))
        };
        let receive = async {
            let mut got = Vec::with_capacity(payload.len());
            while got.len() < payload.len() {
                match stream.next().await {
                    Some(Ok(Message::Binary(data))) => got.extend_from_slice(&data),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    other => return Err(format!("expected echoed data, got {other:?}")),
                }
            }
            Ok(got)
        };
        let (sent, got) = tokio::join!(send, receive);
        sent?;
        got
    })
    .await
}

/// Asserts that a small message comes back unchanged over `ws`.
async fn assert_echoes<S>(ws: &mut WebSocketStream<S>, what: &str)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let payload = format!("hello over {what}").into_bytes();
    let got = echo(ws, &payload)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(got, payload, "{what}: echo differs");
}

/// Asserts that a wss:// session with `config` cannot be used: the TLS handshake, the upgrade
/// or the first echo fails (with TLS 1.3 a refused client certificate only shows after the
/// client's handshake has finished).
async fn assert_wss_refused(addr: SocketAddr, config: Arc<ClientConfig>, what: &str) {
    let result = match wss(addr, config).await {
        Ok(mut ws) => echo(&mut ws, b"should not arrive").await.map(|_| ()),
        Err(e) => Err(e),
    };
    assert!(
        result.is_err(),
        "{what}: expected the server to refuse, but echo worked"
    );
}

/// Waits for EOF (or a reset) on a raw stream; panics if data arrives.
async fn expect_disconnect(stream: &mut TcpStream, what: &str) {
    let mut buf = [0u8; 256];
    match within(what, stream.read(&mut buf)).await {
        Ok(0) => {}
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
        Ok(n) => panic!(
            "{what}: expected a disconnect, got {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(e) => panic!("{what}: expected a disconnect, got {e}"),
    }
}

// ---- tests ----------------------------------------------------------------------------------

#[tokio::test]
async fn serves_ws_and_wss_on_the_same_port() {
    let dir = tempfile::tempdir().unwrap();
    let id = self_signed();
    let config = echo_config(write(dir.path(), "self.pem", &id.combined_pem())).await;
    let server = TestServer::start(config).await;

    let mut plain = ws(server.addr).await.expect("ws:// session");
    assert_echoes(&mut plain, "ws://").await;
    let mut secure = wss(server.addr, trusting(&id.cert_der))
        .await
        .expect("wss:// session");
    assert_echoes(&mut secure, "wss://").await;
    // Both sessions stay usable side by side.
    assert_echoes(&mut plain, "ws:// again").await;
}

#[tokio::test]
async fn loads_the_key_from_a_separate_file() {
    let dir = tempfile::tempdir().unwrap();
    let id = self_signed();
    let mut config = echo_config(write(dir.path(), "cert.pem", &id.cert_pem)).await;
    config.tls.key = Some(write(dir.path(), "key.pem", &id.key_pem));
    let server = TestServer::start(config).await;

    let mut secure = wss(server.addr, trusting(&id.cert_der))
        .await
        .expect("wss:// session");
    assert_echoes(&mut secure, "wss:// with --key").await;
}

#[tokio::test]
async fn ssl_only_closes_plain_connections_without_a_response() {
    let dir = tempfile::tempdir().unwrap();
    let id = self_signed();
    let mut config = echo_config(write(dir.path(), "self.pem", &id.combined_pem())).await;
    config.tls.ssl_only = true;
    let server = TestServer::start(config).await;

    // The server closes with our request unread, so the kernel may answer with a reset.
    let mut stream = within("connect", TcpStream::connect(server.addr))
        .await
        .expect("connect");
    let request = "GET /websockify HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
                   Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                   Sec-WebSocket-Version: 13\r\n\r\n";
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send request");
    expect_disconnect(&mut stream, "plain connection under --ssl-only").await;

    let mut secure = wss(server.addr, trusting(&id.cert_der))
        .await
        .expect("wss:// session");
    assert_echoes(&mut secure, "wss:// under --ssl-only").await;
}

#[tokio::test]
async fn missing_cert_serves_plain_and_closes_tls_connections() {
    let dir = tempfile::tempdir().unwrap();
    let id = self_signed();
    let config = echo_config(dir.path().join("missing.pem")).await;
    let server = TestServer::start(config).await;

    let mut plain = ws(server.addr).await.expect("ws:// session without a cert");
    assert_echoes(&mut plain, "ws:// without a cert").await;

    let handshake = within("TLS handshake without a cert", async {
        tls_connect(server.addr, trusting(&id.cert_der)).await
    })
    .await;
    assert!(
        handshake.is_err(),
        "TLS handshake succeeded without a certificate file"
    );
}

#[tokio::test]
async fn replaced_certificate_is_used_for_new_connections_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (self_signed(), self_signed());
    let cert = write(dir.path(), "self.pem", &a.combined_pem());
    let server = TestServer::start(echo_config(cert.clone()).await).await;

    let mut old_session = wss(server.addr, trusting(&a.cert_der))
        .await
        .expect("session over A");
    assert_echoes(&mut old_session, "session over A").await;
    assert_wss_refused(
        server.addr,
        trusting(&b.cert_der),
        "client trusting B before the swap",
    )
    .await;

    // Replace atomically, as certbot-style renewals do.
    let staged = write(dir.path(), "self.pem.new", &b.combined_pem());
    std::fs::rename(&staged, &cert).expect("rename over the cert");

    let mut new_session = wss(server.addr, trusting(&b.cert_der))
        .await
        .expect("client trusting B after the swap");
    assert_echoes(&mut new_session, "session over B").await;
    assert_wss_refused(
        server.addr,
        trusting(&a.cert_der),
        "client trusting A after the swap",
    )
    .await;
    assert_echoes(&mut old_session, "session over A after the swap").await;
}

#[tokio::test]
async fn verify_client_accepts_only_certificates_from_the_cafile() {
    let dir = tempfile::tempdir().unwrap();
    let id = self_signed();
    let (ca, other_ca) = (Ca::new(), Ca::new());
    let mut config = echo_config(write(dir.path(), "self.pem", &id.combined_pem())).await;
    config.tls.verify_client = true;
    config.tls.cafile = Some(write(dir.path(), "ca.pem", &ca.pem()));
    let server = TestServer::start(config).await;

    let good = ca.issue("client", ExtendedKeyUsagePurpose::ClientAuth);
    let with_cert = client_config(&id.cert_der, rustls::DEFAULT_VERSIONS, Some(&good));
    let mut secure = wss(server.addr, with_cert)
        .await
        .expect("client with a CA-signed cert");
    assert_echoes(&mut secure, "wss:// with a client cert").await;

    assert_wss_refused(
        server.addr,
        trusting(&id.cert_der),
        "client without a certificate",
    )
    .await;
    let stranger = other_ca.issue("client", ExtendedKeyUsagePurpose::ClientAuth);
    let with_stranger = client_config(&id.cert_der, rustls::DEFAULT_VERSIONS, Some(&stranger));
    assert_wss_refused(server.addr, with_stranger, "client cert from another CA").await;
}

/// Reads the close frame the server sends after a failed target connect.
async fn expect_close<S>(ws: &mut WebSocketStream<S>, code: u16, reason: &str, what: &str)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let message = within(what, ws.next()).await;
    match message {
        Some(Ok(Message::Close(Some(frame)))) => {
            assert_eq!(u16::from(frame.code), code, "{what}: close code");
            assert_eq!(frame.reason.as_str(), reason, "{what}: close reason");
        }
        other => panic!("{what}: expected close {code}, got {other:?}"),
    }
}

#[tokio::test]
async fn ssl_target_verifies_the_target_against_system_roots() {
    let ca = Ca::new();
    let (target, mut handshakes) = tls_echo_target(
        &ca.issue("localhost", ExtendedKeyUsagePurpose::ServerAuth),
        None,
    )
    .await;
    let mut config = Config::new(Target::Tcp {
        host: "localhost".into(),
        port: target.port(),
    });
    config.ssl_target = true;
    let server = TestServer::start(config).await;

    // The test CA is not a system root, so the proxy must refuse the target (upstream 0.13).
    let mut client = ws(server.addr).await.expect("ws:// session");
    expect_close(
        &mut client,
        1011,
        "Failed to connect to downstream server",
        "TLS target with an unknown CA",
    )
    .await;
    let seen = within("target handshake result", handshakes.recv()).await;
    assert!(
        matches!(seen, Some(Err(_))),
        "the target should see a TLS handshake the proxy aborted, saw {seen:?}"
    );
    // Sanity: the target itself is fine for a client that trusts the test CA.
    let direct = within(
        "direct TLS to the target",
        tls_connect(target, trusting(&ca.der())),
    )
    .await;
    assert!(direct.is_ok(), "direct TLS to the target: {direct:?}");

    // A plain target behind --ssl-target is not spoken to in the clear.
    let mut config = config_to(echo_server().await);
    config.ssl_target = true;
    let server = TestServer::start(config).await;
    let mut client = ws(server.addr).await.expect("ws:// session");
    expect_close(
        &mut client,
        1011,
        "Failed to connect to downstream server",
        "plain target behind --ssl-target",
    )
    .await;

    // Without --ssl-target the same kind of plain target works.
    let server = TestServer::start(config_to(echo_server().await)).await;
    let mut client = ws(server.addr).await.expect("ws:// session");
    assert_echoes(&mut client, "plain target").await;
}

#[tokio::test]
async fn stalled_tls_handshake_is_dropped_at_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let id = self_signed();
    let mut config = echo_config(write(dir.path(), "self.pem", &id.combined_pem())).await;
    config.handshake_timeout = Duration::from_secs(1);
    let server = TestServer::start(config).await;

    let mut stream = within("connect", TcpStream::connect(server.addr))
        .await
        .expect("connect");
    let started = Instant::now();
    stream
        .write_all(&[0x16])
        .await
        .expect("send a TLS record type");
    expect_disconnect(&mut stream, "stalled TLS handshake").await;
    // The sniffer passes it on at once; it is the handshake deadline that ends it.
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "dropped after {:?}, before the 1 s handshake deadline",
        started.elapsed()
    );
}

#[tokio::test]
async fn tls13_only_refuses_tls12_clients() {
    let dir = tempfile::tempdir().unwrap();
    let id = self_signed();
    let mut config = echo_config(write(dir.path(), "self.pem", &id.combined_pem())).await;
    config.tls.min_version = SslVersion::Tlsv1_3;
    let server = TestServer::start(config).await;

    let tls12 = client_config(&id.cert_der, &[&rustls::version::TLS12], None);
    assert_wss_refused(server.addr, tls12, "TLS 1.2-only client").await;

    let tls13 = client_config(&id.cert_der, &[&rustls::version::TLS13], None);
    let mut secure = wss(server.addr, tls13).await.expect("TLS 1.3 client");
    let version = secure.get_ref().get_ref().1.protocol_version();
    assert_eq!(version, Some(rustls::ProtocolVersion::TLSv1_3));
    assert_echoes(&mut secure, "wss:// over TLS 1.3").await;
}

/// Deterministic pseudo-random bytes (xorshift64*): incompressible enough, reproducible.
fn random_bytes(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        out.extend_from_slice(&seed.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

#[tokio::test]
async fn wss_echoes_one_mebibyte_intact() {
    let dir = tempfile::tempdir().unwrap();
    let id = self_signed();
    let config = echo_config(write(dir.path(), "self.pem", &id.combined_pem())).await;
    let server = TestServer::start(config).await;

    let payload = random_bytes(1 << 20, 0x9e37_79b9_7f4a_7c15);
    let mut secure = wss(server.addr, trusting(&id.cert_der))
        .await
        .expect("wss:// session");
    let got = echo(&mut secure, &payload).await.expect("1 MiB echo");
    assert_eq!(got.len(), payload.len(), "echoed length");
    assert_eq!(
        Sha256::digest(&got),
        Sha256::digest(&payload),
        "echoed data differs"
    );
}
