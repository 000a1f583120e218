//! TLS to the target, end to end: `--ssl-target-ca`, `--ssl-target-insecure`,
//! `--ssl-target-sni`, `--ssl-target-cert`/`--ssl-target-key`. The target is a rustls echo
//! server in the test with certificates from a test CA (rcgen); websockify runs as a child
//! process so that its log lines can be checked.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use rcgen::ExtendedKeyUsagePurpose;
use tokio::io::AsyncWriteExt;

use crate::util::{
    Ca, ChildGuard, client_frame, listening_addr, raw_upgrade, read_close, read_frame,
    run_websockify, self_signed_for, spawn_websockify, start_websockify, tls_echo_target, within,
};

fn write(dir: &Path, name: &str, contents: &str) -> String {
    let path: PathBuf = dir.join(name);
    std::fs::write(&path, contents).expect("write test file");
    path.to_string_lossy().into_owned()
}

/// Starts websockify on 127.0.0.1:0 with `args` (target last); returns it and its address.
fn start(args: &[&str]) -> (ChildGuard, SocketAddr) {
    let mut all = vec!["127.0.0.1:0"];
    all.extend_from_slice(args);
    // Options after the positionals, as novnc_proxy writes them.
    start_websockify(&all)
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
    let (target, mut seen) = tls_echo_target(
        &ca.issue("localhost", ExtendedKeyUsagePurpose::ServerAuth),
        None,
    )
    .await;
    let ca_file = write(dir.path(), "ca.pem", &ca.pem());
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
    let (target, mut seen) = tls_echo_target(
        &ca.issue("localhost", ExtendedKeyUsagePurpose::ServerAuth),
        None,
    )
    .await;
    let other_file = write(dir.path(), "other.pem", &other.pem());
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
    let leaf = self_signed_for("somewhere.else");
    let (target, _seen) = tls_echo_target(&leaf, None).await;
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
    let (target, mut seen) = tls_echo_target(
        &ca.issue("vnc.internal", ExtendedKeyUsagePurpose::ServerAuth),
        None,
    )
    .await;
    let ca_file = write(dir.path(), "ca.pem", &ca.pem());
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
    let (target, _seen) = tls_echo_target(
        &ca.issue("localhost", ExtendedKeyUsagePurpose::ServerAuth),
        Some(&client_ca),
    )
    .await;
    let ca_file = write(dir.path(), "ca.pem", &ca.pem());
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
