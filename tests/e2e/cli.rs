//! The `websockify` binary end to end: usage errors and help, the listening socket (port 0,
//! IPv6, bind failures), signals, and the lifetime options (`--run-once`, `--timeout`,
//! `--idle-timeout`, `--heartbeat`).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{WebSocketStream, client_async};

use crate::util::*;

type Client = WebSocketStream<TcpStream>;

/// A tungstenite client connected to `addr` (binary frames, no subprotocol).
async fn ws_connect(addr: SocketAddr) -> Client {
    let stream = within("connect", TcpStream::connect(addr))
        .await
        .unwrap_or_else(|err| panic!("connect to {addr}: {err}"));
    let url = format!("ws://{addr}/websockify");
    let (client, _response) = within("handshake", client_async(url, stream))
        .await
        .expect("WebSocket handshake");
    client
}

/// Sends `payload` and expects it back through the echo target.
async fn assert_echoes(client: &mut Client, payload: &[u8]) {
    within("send", client.send(Message::binary(payload.to_vec())))
        .await
        .expect("send");
    let mut got = Vec::new();
    while got.len() < payload.len() {
        match within("echo", client.next()).await {
            Some(Ok(Message::Binary(bytes))) => got.extend_from_slice(&bytes),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("expected the echo, got {other:?}"),
        }
    }
    assert_eq!(got, payload);
}

/// Closes the session from the client side and reads until the server ends it.
async fn close_session(client: &mut Client) {
    within("send close", client.close(None))
        .await
        .expect("close");
    within("close handshake", async {
        while let Some(Ok(_)) = client.next().await {}
    })
    .await;
}

/// Reads one server frame, or `None` at EOF or on a reset (bounded by the caller).
async fn next_frame_or_eof(stream: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut head = [0u8; 2];
    stream.read_exact(&mut head).await.ok()?;
    let len = match head[1] & 0x7f {
        126 => u64::from(stream.read_u16().await.ok()?),
        127 => stream.read_u64().await.ok()?,
        n => u64::from(n),
    };
    let mut payload = vec![0u8; usize::try_from(len).ok()?];
    stream.read_exact(&mut payload).await.ok()?;
    Some((head[0], payload))
}

/// Asserts that a new connection to `addr` is refused or dropped, never upgraded.
async fn assert_not_served(addr: SocketAddr) {
    let Ok(mut stream) = within("connect", TcpStream::connect(addr)).await else {
        return; // refused: the listener is gone
    };
    let request = upgrade_request(&addr.to_string(), "");
    let _ = stream.write_all(request.as_bytes()).await;
    let mut head = Vec::new();
    within("the server drops the connection", async {
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte).await {
                Ok(1) => head.push(byte[0]),
                _ => break,
            }
        }
    })
    .await;
    let head = String::from_utf8_lossy(&head);
    assert!(
        !head.starts_with("HTTP/1.1 101"),
        "a second session was served:\n{head}"
    );
}

/// Asserts that `help` names `--{name}` as a whole option (not just as a prefix of another).
fn assert_names_option(help: &str, name: &str) {
    let needle = format!("--{name}");
    let whole = help.match_indices(&needle).any(|(at, _)| {
        help[at + needle.len()..]
            .chars()
            .next()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
    });
    assert!(whole, "--help does not list {needle}:\n{help}");
}

#[test]
fn usage_errors_exit_2_with_upstreams_message_after_the_usage_block() {
    let cases: [(&[&str], &str); 11] = [
        (&[], "Too few arguments"),
        (&["abc", "localhost:5900"], "Error parsing listen port"),
        (&["6080", "localhost"], "Error parsing target"),
        (&["6080", "localhost:x"], "Error parsing target port"),
        (&["6080", "a:1", "extra"], "Too many arguments"),
        (&["--foo"], "no such option: --foo"),
        (
            &["--heartbeat", "abc"],
            "option --heartbeat: invalid integer value: 'abc'",
        ),
        (
            &["--ssl-version", "tlsv1_0"],
            "option --ssl-version: invalid choice: 'tlsv1_0' \
             (choose from 'default', 'tlsv1_1', 'tlsv1_2', 'tlsv1_3')",
        ),
        (
            &["--wrap-mode", "foo"],
            "option --wrap-mode: invalid choice: 'foo' (choose from 'exit', 'ignore', 'respawn')",
        ),
        (
            &["--token-source", "x", "6080", "a:1"],
            "You must use --token-plugin to use --token-source",
        ),
        (
            &["--ssl-only", "--cert", "/nonexistent.pem", "6080", "a:1"],
            "SSL only and /nonexistent.pem not found",
        ),
    ];
    for (args, message) in cases {
        let (code, stdout, stderr) = run_websockify(args);
        assert_eq!(code, Some(2), "{args:?}; stderr:\n{stderr}");
        assert_eq!(stdout, "", "{args:?}");
        let error = format!("\nwebsockify: error: {message}\n");
        assert!(
            stderr.ends_with(&error),
            "{args:?}: stderr does not end with {error:?}:\n{stderr}"
        );
        assert!(
            stderr.starts_with("Usage:"),
            "{args:?}: no usage block first:\n{stderr}"
        );
    }
}

#[test]
fn help_prints_the_usage_lines_and_every_upstream_option() {
    let (code, help, stderr) = run_websockify(&["--help"]);
    assert_eq!(code, Some(0), "stderr:\n{stderr}");
    let usage = [
        "websockify [options] [source_addr:]source_port target_addr:target_port",
        "websockify [options] --token-plugin=CLASS [source_addr:]source_port",
        "websockify [options] --unix-target=FILE [source_addr:]source_port",
        "websockify [options] [source_addr:]source_port -- WRAP_COMMAND_LINE",
    ];
    assert!(help.starts_with("Usage:"), "{help}");
    for line in usage {
        assert!(help.contains(line), "--help lacks {line:?}:\n{help}");
    }
    // Upstream's options, in its `--help` order (reference section 1.2.1).
    let options = [
        "help",
        "verbose",
        "traffic",
        "record",
        "daemon",
        "run-once",
        "timeout",
        "idle-timeout",
        "cert",
        "key",
        "key-password",
        "ssl-only",
        "ssl-target",
        "verify-client",
        "cafile",
        "ssl-version",
        "ssl-ciphers",
        "unix-listen",
        "unix-listen-mode",
        "unix-target",
        "inetd",
        "web",
        "web-auth",
        "wrap-mode",
        "prefer-ipv6",
        "libserver",
        "target-config",
        "token-plugin",
        "token-source",
        "host-token",
        "auth-plugin",
        "auth-source",
        "heartbeat",
        "log-file",
        "syslog",
        "legacy-syslog",
        "file-only",
    ];
    for name in options {
        assert_names_option(&help, name);
    }
    for short in ["-h,", "-v,", "-D,", "-6,"] {
        assert!(help.contains(short), "--help lacks {short}:\n{help}");
    }
}

#[test]
fn version_prints_the_version_and_exits_0() {
    let (code, stdout, stderr) = run_websockify(&["--version"]);
    assert_eq!(code, Some(0), "stderr:\n{stderr}");
    assert_eq!(
        stdout.trim(),
        format!("websockify {}", env!("CARGO_PKG_VERSION"))
    );
}

#[tokio::test]
async fn port_0_reports_the_bound_address_and_proxies() {
    let echo = echo_server().await;
    let (_child, addr) = start_websockify(&["127.0.0.1:0", &echo.to_string()]);
    assert_eq!(addr.ip(), Ipv4Addr::LOCALHOST);
    assert_ne!(addr.port(), 0, "the banner shows the port actually bound");
    let mut client = ws_connect(addr).await;
    assert_echoes(&mut client, b"through the real binary").await;
}

#[tokio::test]
async fn options_after_positionals_are_applied_like_novnc_proxy_passes_them() {
    let echo = echo_server().await;
    let (_child, addr) = start_websockify(&[
        "127.0.0.1:0",
        &echo.to_string(),
        "--heartbeat",
        "30",
        "--idle-timeout",
        "60",
    ]);
    let mut client = ws_connect(addr).await;
    assert_echoes(&mut client, b"novnc_proxy order").await;
}

#[test]
fn bind_failure_exits_nonzero_naming_the_address() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = held.local_addr().expect("addr").to_string();
    let (code, _stdout, stderr) = run_websockify(&[&addr, "127.0.0.1:1"]);
    assert!(
        matches!(code, Some(c) if c != 0),
        "exit {code:?} (upstream exits 0 here; we do not); stderr:\n{stderr}"
    );
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("websockify: ") && l.contains(&addr)),
        "no `websockify: ...` line naming {addr}:\n{stderr}"
    );
    drop(held);
}

#[test]
fn bind_failure_is_reported_on_one_line() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = held.local_addr().expect("addr").to_string();
    let (code, _stdout, stderr) = run_websockify(&[&addr, "127.0.0.1:1"]);
    assert_eq!(code, Some(1), "stderr:\n{stderr}");
    assert_eq!(stderr.lines().count(), 1, "stderr:\n{stderr}");
    drop(held);
}

#[test]
fn log_lines_are_plain_text_when_stderr_is_not_a_terminal() {
    let child = spawn_websockify(&["127.0.0.1:0", "127.0.0.1:1"]);
    let line = child.wait_for_line("listening on");
    assert!(!line.contains('\x1b'), "escape codes in {line:?}");
}

#[tokio::test]
async fn sigterm_sends_1001_and_exits_0_once_the_client_closes() {
    let echo = echo_server().await;
    // No drain: open sessions are closed (1001) as soon as the listener closes.
    let (child, addr) =
        start_websockify(&["--drain-timeout", "0", "127.0.0.1:0", &echo.to_string()]);
    let (mut stream, head) = raw_upgrade(addr, "").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    echo_on(&mut stream, b"session open").await;

    child.signal(Signal::SIGTERM);
    let (code, _reason) = read_close(&mut stream).await;
    assert_eq!(code, 1001, "close code on shutdown");
    stream
        .write_all(&client_frame(0x88, &1001u16.to_be_bytes()))
        .await
        .expect("answer the close");
    let mut rest = Vec::new();
    within("server closes TCP", stream.read_to_end(&mut rest))
        .await
        .expect("read to EOF");
    assert_eq!(exited(watch_exit(child)).await.code(), Some(0));
}

/// Starts the binary and runs one short session through it, so that the server is known to be
/// fully up (signal handlers included) and has no session open afterwards.
async fn start_idle_after_a_session() -> ChildGuard {
    let echo = echo_server().await;
    let (child, addr) = start_websockify(&["127.0.0.1:0", &echo.to_string()]);
    let mut client = ws_connect(addr).await;
    assert_echoes(&mut client, b"warm up").await;
    close_session(&mut client).await;
    child
}

#[tokio::test]
async fn sigterm_without_sessions_exits_0_promptly() {
    let child = start_idle_after_a_session().await;
    let sent = Instant::now();
    child.signal(Signal::SIGTERM);
    assert_eq!(exited(watch_exit(child)).await.code(), Some(0));
    // A drain would wait for up to 10 s; with nothing open there is nothing to wait for.
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "took {:?}",
        sent.elapsed()
    );
}

#[tokio::test]
async fn sigint_without_sessions_exits_0() {
    let child = start_idle_after_a_session().await;
    child.signal(Signal::SIGINT);
    assert_eq!(exited(watch_exit(child)).await.code(), Some(0));
}

#[tokio::test]
async fn sigterm_right_after_the_banner_exits_0() {
    // Supervisors and scripts take the banner as "started"; a stop right then must still be
    // graceful, so the signal handlers are in place before the banner. Repeated a few times
    // because a window between the two would be short.
    for _ in 0..5 {
        let (child, _addr) = start_websockify(&["127.0.0.1:0", "127.0.0.1:1"]);
        child.signal(Signal::SIGTERM);
        let status = exited(watch_exit(child)).await;
        assert_eq!(status.code(), Some(0), "killed by the signal: {status:?}");
    }
}

#[tokio::test]
async fn second_sigterm_exits_at_once_while_a_client_ignores_the_close() {
    let echo = echo_server().await;
    let (child, addr) = start_websockify(&["127.0.0.1:0", &echo.to_string()]);
    let (mut stream, head) = raw_upgrade(addr, "").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    echo_on(&mut stream, b"session open").await;

    // From here on the client neither reads nor answers: the drain would have to wait.
    child.signal(Signal::SIGTERM);
    child.wait_for_line("SIGTERM received");
    child.signal(Signal::SIGTERM);
    let status = exited(watch_exit(child)).await;
    // The drain ending by itself exits 0; the second signal's exit is the non-zero one.
    assert!(
        matches!(status.code(), Some(c) if c != 0),
        "expected the immediate exit, got {status:?}"
    );
    drop(stream);
}

#[tokio::test]
async fn run_once_serves_one_session_then_exits_0() {
    let echo = echo_server().await;
    let (child, addr) = start_websockify(&["--run-once", "127.0.0.1:0", &echo.to_string()]);
    let mut first = ws_connect(addr).await;
    assert_echoes(&mut first, b"the only session").await;

    child.wait_for_line("due to --run-once");
    assert_not_served(addr).await;
    assert_echoes(&mut first, b"still served").await;

    let exit = watch_exit(child);
    close_session(&mut first).await;
    assert_eq!(exited(exit).await.code(), Some(0));
}

#[test]
fn timeout_exits_0_after_the_time_when_nobody_connects() {
    let started = Instant::now();
    let mut child = spawn_websockify(&["--timeout", "1", "127.0.0.1:0", "127.0.0.1:1"]);
    child.wait_for_line("listener exit due to --timeout 1");
    assert_eq!(child.wait_exit().code(), Some(0));
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "exited after {:?}",
        started.elapsed()
    );
}

#[test]
fn idle_timeout_exits_0_when_nobody_connects() {
    let started = Instant::now();
    let mut child = spawn_websockify(&["--idle-timeout", "1", "127.0.0.1:0", "127.0.0.1:1"]);
    child.wait_for_line("listener exit due to --idle-timeout 1");
    assert_eq!(child.wait_exit().code(), Some(0));
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "exited after {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn idle_timeout_waits_while_a_session_is_open() {
    let echo = echo_server().await;
    let (child, addr) =
        start_websockify(&["--idle-timeout", "1", "127.0.0.1:0", &echo.to_string()]);
    let mut client = ws_connect(addr).await;
    assert_echoes(&mut client, b"busy").await;

    let mut exit = watch_exit(child);
    stays_pending(
        "exit while a session is open",
        Duration::from_millis(1500),
        &mut exit,
    )
    .await;
    assert_echoes(&mut client, b"still here").await;
    close_session(&mut client).await;
    assert_eq!(exited(exit).await.code(), Some(0));
}

#[tokio::test]
async fn listens_and_proxies_on_ipv6_loopback() {
    if !ipv6_loopback() {
        skip_or_fail("no IPv6 loopback on this machine");
        return;
    }
    let echo = echo_server().await;
    let (_child, addr) = start_websockify(&["[::1]:0", &echo.to_string()]);
    assert_eq!(addr.ip(), Ipv6Addr::LOCALHOST);
    let mut client = ws_connect(addr).await;
    assert_echoes(&mut client, b"over IPv6").await;
}

#[tokio::test]
async fn bare_port_listens_on_ipv4_and_ipv6() {
    let echo = echo_server().await;
    let (_child, addr) = start_websockify(&["0", &echo.to_string()]);
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, addr.port()));
    let mut client = ws_connect(v4).await;
    assert_echoes(&mut client, b"IPv4 client").await;
    if !ipv6_loopback() {
        skip_or_fail("IPv6 part: no IPv6 loopback on this machine");
        return;
    }
    let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, addr.port()));
    let mut client = ws_connect(v6).await;
    assert_echoes(&mut client, b"IPv6 client").await;
}

#[tokio::test]
async fn heartbeat_pings_and_keeps_a_client_that_answers() {
    let echo = echo_server().await;
    let (_child, addr) = start_websockify(&["--heartbeat", "1", "127.0.0.1:0", &echo.to_string()]);
    let (mut stream, head) = raw_upgrade(addr, "").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // Four intervals: one more than a silent client is allowed.
    for _ in 0..4 {
        let (b0, payload) = read_frame(&mut stream).await;
        assert_eq!(b0, 0x89, "expected a ping");
        stream
            .write_all(&client_frame(0x8a, &payload))
            .await
            .expect("pong");
    }
    echo_on(&mut stream, b"still relaying").await;
}

#[tokio::test]
async fn heartbeat_drops_a_client_that_never_answers() {
    let echo = echo_server().await;
    let (_child, addr) = start_websockify(&["--heartbeat", "1", "127.0.0.1:0", &echo.to_string()]);
    let (mut stream, head) = raw_upgrade(addr, "").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let upgraded = Instant::now();
    let mut pings = 0;
    within("server drops the silent client", async {
        while let Some((b0, _payload)) = next_frame_or_eof(&mut stream).await {
            match b0 & 0x0f {
                0x9 => pings += 1,
                0x8 => break,
                other => panic!("unexpected frame opcode {other:#x}"),
            }
        }
    })
    .await;
    assert!(pings >= 3, "dropped after {pings} pings");
    assert!(
        upgraded.elapsed() >= Duration::from_millis(2500),
        "dropped after {:?}, before three intervals",
        upgraded.elapsed()
    );
}
