//! `--user`/`--group` (run as root: the test checks `/proc/PID/status` while the proxy still
//! serves), and `-D` closing inherited descriptors (checked in `/proc/PID/fd`).

use std::os::fd::AsRawFd as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Stdio;

use tokio::io::AsyncWriteExt;

use crate::util::{
    ChildGuard, Signal, client_frame, echo_server, gone_blocking, listening_addr, pass_fd,
    raw_upgrade, read_frame, run_websockify, skip_or_fail, spawn_websockify, within,
};

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The numeric ids of user `name` from the passwd database: (uid, primary gid).
fn ids_of(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.first() == Some(&name))
            .then(|| Some((fields.get(2)?.parse().ok()?, fields.get(3)?.parse().ok()?)))?
    })
}

/// The `Uid:` or `Gid:` line of `/proc/PID/status`: real, effective, saved, filesystem.
fn status_ids(pid: i32, key: &str) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let line = status
        .lines()
        .find(|l| l.starts_with(key))
        .unwrap_or_else(|| panic!("no {key} line in:\n{status}"));
    line[key.len()..]
        .split_whitespace()
        .map(|n| n.parse().expect("id"))
        .collect()
}

async fn assert_echoes(addr: std::net::SocketAddr, what: &str) {
    let (mut ws, head) = raw_upgrade(addr, "").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{what}: {head}");
    within(what, ws.write_all(&client_frame(0x82, b"still serving")))
        .await
        .expect("send");
    let (_, payload) = read_frame(&mut ws).await;
    assert_eq!(payload, b"still serving", "{what}");
}

#[tokio::test]
async fn user_nobody_switches_ids_after_binding_and_keeps_serving() {
    if !is_root() {
        return skip_or_fail("--user needs root to switch users");
    }
    let Some((uid, gid)) = ids_of("nobody") else {
        return skip_or_fail("no user 'nobody' in /etc/passwd");
    };
    // The certificate sits in a directory only root may enter: loaded before the switch, it
    // stays in use after it.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("self-sign");
    let pem = dir.path().join("self.pem");
    std::fs::write(&pem, format!("{}{}", cert.pem(), key.serialize_pem())).expect("write pem");
    let target = echo_server().await.to_string();
    let pem = pem.to_string_lossy();
    let child = spawn_websockify(&["--user", "nobody", "--cert", &pem, "127.0.0.1:0", &target]);
    let addr = listening_addr(&child.wait_for_line("listening on"));
    let switched = child.wait_for_line("switched to user nobody");
    assert!(switched.contains(&format!("uid {uid}")), "{switched}");
    child.wait_for_line("the TLS certificate loaded at start-up stays in use");

    assert_eq!(status_ids(child.pid, "Uid:"), vec![uid; 4]);
    assert_eq!(status_ids(child.pid, "Gid:"), vec![gid; 4]);
    assert_echoes(addr, "ws:// after the switch").await;

    // wss:// still works with the certificate read as root.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).expect("root");
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = within("connect", tokio::net::TcpStream::connect(addr))
        .await
        .expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    within(
        "wss handshake as nobody",
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)).connect(name, tcp),
    )
    .await
    .expect("TLS handshake after the switch");
}

#[test]
fn unknown_user_or_unwritable_record_dir_refuses_to_start() {
    let (code, _, stderr) =
        run_websockify(&["--user", "no-such-user-xyz", "127.0.0.1:0", "localhost:1"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("--user no-such-user-xyz: no such user"),
        "{stderr}"
    );
    let (code, _, stderr) = run_websockify(&[
        "--user",
        "root",
        "--group",
        "no-such-group-xyz",
        "127.0.0.1:0",
        "localhost:1",
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("--group no-such-group-xyz: no such group"),
        "{stderr}"
    );

    if !is_root() {
        return skip_or_fail("--user needs root to switch users");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let record = dir.path().join("rec");
    let record = record.to_string_lossy();
    let (code, _, stderr) = run_websockify(&[
        "--user",
        "nobody",
        "--record",
        &record,
        "127.0.0.1:0",
        "localhost:1",
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("not writable") && stderr.contains("as user nobody"),
        "{stderr}"
    );
}

/// Spawns websockify with `marker` open as descriptor 9 (inherited across exec).
fn spawn_with_fd_9(args: &[&str], marker: &std::fs::File) -> std::process::Child {
    let raw = marker.as_raw_fd();
    let mut command = crate::util::websockify(args);
    command.stdout(Stdio::piped());
    pass_fd(&mut command, raw, 9);
    command.spawn().expect("spawn websockify")
}

/// Whether process `pid` holds a descriptor on `path`.
fn holds(pid: i32, path: &Path) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .any(|e| std::fs::read_link(e.path()).is_ok_and(|target| target == path))
        })
        .unwrap_or(false)
}

#[test]
fn daemon_closes_inherited_descriptors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let marker_path = dir.path().join("marker");
    let marker = std::fs::File::create(&marker_path).expect("marker file");
    let target = "127.0.0.1:1";

    // Control: without -D the descriptor is inherited.
    let plain = spawn_with_fd_9(&["127.0.0.1:0", target], &marker);
    let plain = ChildGuard::new(plain);
    plain.wait_for_line("listening on");
    assert!(holds(plain.pid, &marker_path), "fd 9 was not inherited");
    drop(plain);

    let pid_file = dir.path().join("ws.pid");
    let pid_arg = pid_file.to_string_lossy();
    let log_file = dir.path().join("ws.log");
    let log_arg = log_file.to_string_lossy();
    let launcher = spawn_with_fd_9(
        &[
            "-D",
            "--pid-file",
            &pid_arg,
            "--log-file",
            &log_arg,
            "127.0.0.1:0",
            target,
        ],
        &marker,
    );
    let output = launcher.wait_with_output().expect("launcher output");
    assert!(
        output.status.success(),
        "-D launcher failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    let daemon = DaemonGuard(pid);
    assert!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "daemon {pid} is not running"
    );
    assert!(
        !holds(daemon.0, &marker_path),
        "the daemon still holds the inherited descriptor"
    );
    let log = std::fs::read_to_string(&log_file).expect("log file");
    assert!(log.contains("closed") && log.contains("inherited"), "{log}");
}

/// Stops a daemon (not our child) by its pid when the test ends.
struct DaemonGuard(i32);

impl Drop for DaemonGuard {
    fn drop(&mut self) {
        // The daemon this test started (from its pid file).
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0), Signal::SIGKILL);
        gone_blocking(self.0);
    }
}
