//! Hardening end to end (issue 11): what a stalled output, a planted symlink or a second
//! instance does to a running server. The real binary runs as a child process.

use std::fs::File;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::process::Stdio;
use std::sync::mpsc;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::util::*;

/// How many bytes the pipe behind `fd` holds before a writer blocks.
fn pipe_capacity(fd: impl AsFd) -> usize {
    let size = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETPIPE_SZ).expect("F_GETPIPE_SZ");
    usize::try_from(size).expect("pipe size")
}

/// Starts draining `reader` on a thread; everything read arrives on the channel at EOF.
fn drain(mut reader: impl std::io::Read + Send + 'static) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut all = Vec::new();
        let _ = reader.read_to_end(&mut all);
        let _ = tx.send(all);
    });
    rx
}

/// One plain `GET /x` (refused with a log line, as no --web is given), read to the end.
async fn plain_get(addr: SocketAddr) {
    let response = http_get(addr, "/x").await;
    assert!(
        response.status_line.starts_with("HTTP/1.1 "),
        "{response:?}"
    );
}

/// Upgrades, then sends one message and expects it back from the echo target.
async fn echo_session(addr: SocketAddr, payload: &[u8]) -> TcpStream {
    let mut stream = session(addr).await;
    echo_on(&mut stream, payload).await;
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stderr_nobody_reads_never_stops_upgrades_or_sigterm() {
    let echo = echo_server().await;
    // --inetd with a listener we bound: no need to read the banner from stderr.
    let (mut command, addr) = inetd_websockify(&[&echo.to_string()]);
    let mut spawned = command.spawn().expect("spawn");
    // Kept open and never read until the process is gone.
    let stderr = spawned.stderr.take().expect("stderr");
    let capacity = pipe_capacity(&stderr);
    let mut child = ChildGuard::new(spawned);

    // Each refusal logs a line of more than 60 bytes: enough to fill the pipe and the queue.
    let requests = 600 + capacity / 60 + websockify::logging::QUEUE_LINES;
    within("plain requests with a stalled stderr", async {
        let workers: Vec<_> = (0..8)
            .map(|worker| {
                tokio::spawn(async move {
                    for _ in (worker..requests).step_by(8) {
                        plain_get(addr).await;
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.await.expect("worker");
        }
    })
    .await;

    let mut client = echo_session(addr, b"still served").await;
    client.shutdown().await.expect("shutdown");
    child.signal(Signal::SIGTERM);
    let status = block(|| child.wait_exit());
    assert_eq!(status.code(), Some(0), "{status:?}");

    // Lines were dropped rather than waited for.
    let output = drain(File::from(OwnedFd::from(stderr)))
        .recv_timeout(STEP)
        .expect("stderr at exit");
    let text = String::from_utf8_lossy(&output);
    let logged = text.matches("refused plain HTTP request").count();
    assert!(logged < requests, "{logged} of {requests} lines logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_on_a_stdout_nobody_reads_never_stalls_sessions() {
    const FRAMES: usize = 200_000;
    let echo = echo_server().await;
    // --drain-timeout 0: the open sessions are closed (1001) as soon as the listener closes.
    let mut command = websockify(&[
        "--traffic",
        "--drain-timeout",
        "0",
        "127.0.0.1:0",
        &echo.to_string(),
    ]);
    let mut spawned = command.stdout(Stdio::piped()).spawn().expect("spawn");
    // Kept open and not read until the sessions are done.
    let stdout = spawned.stdout.take().expect("stdout");
    // At least one token per frame: far more than the pipe and the queue hold.
    assert!(FRAMES > 2 * (pipe_capacity(&stdout) + 8192));
    let child = ChildGuard::new(spawned);
    let addr = listening_addr(&block(|| child.wait_for_line("listening on")));

    let (client, head) = raw_upgrade(addr, "").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let (mut reader, mut writer) = client.into_split();
    let frames: Vec<u8> = (0..FRAMES)
        .flat_map(|i| client_frame(0x82, &[i as u8]))
        .collect();
    let send = tokio::spawn(async move {
        writer.write_all(&frames).await.expect("send frames");
        writer
    });
    within("200,000 one-byte frames echoed", async {
        let mut echoed = 0;
        while echoed < FRAMES {
            let mut head = [0u8; 2];
            reader.read_exact(&mut head).await.expect("frame header");
            let len = match head[1] & 0x7f {
                126 => usize::from(reader.read_u16().await.expect("len16")),
                127 => usize::try_from(reader.read_u64().await.expect("len64")).expect("len"),
                n => usize::from(n),
            };
            let mut payload = vec![0u8; len];
            reader.read_exact(&mut payload).await.expect("payload");
            echoed += len;
        }
    })
    .await;
    let _writer = within("frames sent", send).await.expect("sender");

    // Another session still starts and works while stdout is stalled.
    let _other = echo_session(addr, b"second session").await;

    // Once stdout reads again, the loss is reported in the log.
    let _stdout = drain(stdout);
    let report = block(|| child.wait_for_line("traffic tokens dropped"));
    assert!(
        report.contains("stdout (--traffic) was not reading"),
        "{report}"
    );
    child.signal(Signal::SIGTERM);
    let mut child = child;
    let status = block(|| child.wait_exit());
    assert_eq!(status.code(), Some(0), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_skips_a_planted_symlink_and_writes_a_private_file() {
    use std::os::unix::fs::PermissionsExt as _;
    let echo = echo_server().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dir.path().join("session");
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "precious\n").expect("victim");
    std::os::unix::fs::symlink(&victim, dir.path().join("session.1")).expect("symlink");
    let base_arg = base.to_str().expect("utf-8 path");
    let (mut child, addr) =
        start_websockify(&["--record", base_arg, "127.0.0.1:0", &echo.to_string()]);

    let mut client = echo_session(addr, b"secret keystrokes").await;
    client.shutdown().await.expect("shutdown");
    block(|| child.wait_for_line("session closed"));
    child.signal(Signal::SIGTERM);
    assert_eq!(block(|| child.wait_exit()).code(), Some(0));

    assert_eq!(
        std::fs::read_to_string(&victim).expect("victim"),
        "precious\n"
    );
    let recording = dir.path().join("session.2");
    let text = std::fs::read_to_string(&recording).expect("session.2");
    assert!(text.contains("secret keystrokes"), "{text}");
    let mode = std::fs::metadata(&recording)
        .expect("mode")
        .permissions()
        .mode();
    assert_eq!(mode & 0o177, 0, "{mode:o}");
}

#[test]
fn log_file_that_is_a_planted_symlink_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "precious\n").expect("victim");
    let log = dir.path().join("ws.log");
    std::os::unix::fs::symlink(&victim, &log).expect("symlink");
    let log_arg = log.to_str().expect("utf-8 path");
    let (code, _, stderr) = run_websockify(&["--log-file", log_arg, "127.0.0.1:0", "127.0.0.1:1"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot open log file {log_arg}: it is a symbolic link"
        )),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(&victim).expect("victim"),
        "precious\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_second_start_leaves_the_running_instances_pid_file_alone() {
    let echo = echo_server().await.to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let pid_path = dir.path().join("ws.pid");
    let pid_file = pid_path.to_str().expect("utf-8 path");
    let (mut first, addr) = start_websockify(&["--pid-file", pid_file, "127.0.0.1:0", &echo]);
    let first_pid = format!("{}\n", first.pid);
    assert_eq!(
        std::fs::read_to_string(&pid_path).expect("pid file"),
        first_pid
    );

    // The same port and pid file (refused at the bind, before the pid file is touched); the
    // same pid file on another port (refused at the lock): both leave the file alone.
    for (listen, why) in [
        (addr.to_string(), "cannot listen".to_owned()),
        (
            "127.0.0.1:0".to_owned(),
            format!("locked by websockify process {}", first.pid),
        ),
    ] {
        let (code, _, stderr) = block(|| run_websockify(&["--pid-file", pid_file, &listen, &echo]));
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains(&why), "{stderr}");
        assert_eq!(
            std::fs::read_to_string(&pid_path).expect("pid file"),
            first_pid
        );
    }
    // The same port with its own pid file: refused at bind, and its file does not stay.
    let other = dir.path().join("other.pid");
    let other_arg = other.to_str().expect("utf-8 path");
    let (code, _, stderr) =
        block(|| run_websockify(&["--pid-file", other_arg, &addr.to_string(), &echo]));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(!other.exists(), "the failed instance left its pid file");
    assert_eq!(
        std::fs::read_to_string(&pid_path).expect("pid file"),
        first_pid
    );

    // The first instance still serves, and removes its file when it stops.
    let mut client = echo_session(addr, b"still the first").await;
    client.shutdown().await.expect("shutdown");
    first.signal(Signal::SIGTERM);
    assert_eq!(block(|| first.wait_exit()).code(), Some(0));
    assert!(!pid_path.exists(), "the pid file outlived its instance");
}
