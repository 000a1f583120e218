//! Behind a load balancer: the PROXY protocol both ways, trusted forwarding headers, the
//! connection limits, the metrics and health endpoints, draining on SIGTERM, and SIGHUP.
//! Each test runs the real binary; the fleet tests (HAProxy, nginx, Redis) are in `fleet`.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::util::*;

/// Starts the binary; returns it, its public address and (with `--metrics-listen`) the
/// metrics address, read from the start-up lines.
fn start(args: &[&str]) -> (ChildGuard, SocketAddr, Option<SocketAddr>) {
    let (child, addr) = start_websockify(args);
    let metrics = args
        .contains(&"--metrics-listen")
        .then(|| listening_addr(&child.wait_for_line("metrics listening on")));
    (child, addr, metrics)
}

/// A PROXY v1 header from `client` to `server`.
fn proxy_v1(client: &str, server: SocketAddr) -> String {
    let (ip, port) = client.rsplit_once(':').expect("ip:port");
    format!(
        "PROXY TCP4 {ip} {} {port} {}\r\n",
        server.ip(),
        server.port()
    )
}

/// A PROXY v2 header (PROXY command, TCP over IPv4) from `client` to `server`.
fn proxy_v2(client: SocketAddr, server: SocketAddr) -> Vec<u8> {
    let (SocketAddr::V4(client), SocketAddr::V4(server)) = (client, server) else {
        panic!("IPv4 only");
    };
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.extend_from_slice(&[0x21, 0x11, 0x00, 12]);
    header.extend_from_slice(&client.ip().octets());
    header.extend_from_slice(&server.ip().octets());
    header.extend_from_slice(&client.port().to_be_bytes());
    header.extend_from_slice(&server.port().to_be_bytes());
    header
}

/// Polls `path` until it answers `status` (bounded).
async fn until_status(addr: SocketAddr, path: &str, status: u16) {
    let mut poll = tokio::time::interval(Duration::from_millis(20));
    within(&format!("{path} answers {status}"), async {
        while http_get(addr, path).await.status != status {
            poll.tick().await;
        }
    })
    .await;
}

/// The value of an unlabelled sample, or of one with exactly `labels`, in a scrape.
fn sample(scrape: &str, name_and_labels: &str) -> f64 {
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(name_and_labels)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_names_the_client_in_the_log_and_to_the_target() {
    let (target, mut accepted) = scripted_target().await;
    let target_arg = target.to_string();
    let (child, addr, _) = start(&[
        "--proxy-protocol",
        "--target-proxy-protocol",
        "v1",
        "127.0.0.1:0",
        &target_arg,
    ]);
    // v2 from the balancer, v1 to the target.
    let client: SocketAddr = "192.0.2.7:51234".parse().expect("addr");
    let (mut stream, head) = raw_upgrade_after(addr, &proxy_v2(client, addr), "").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let mut target_side = within("target accepts", accepted.recv())
        .await
        .expect("accepted");
    let mut header = vec![0u8; 64];
    let n = within("PROXY header at the target", target_side.read(&mut header))
        .await
        .expect("read");
    let header = String::from_utf8_lossy(&header[..n]).into_owned();
    assert!(
        header.starts_with("PROXY TCP4 192.0.2.7 127.0.0.1 51234 "),
        "{header:?}"
    );
    drop(target_side);
    assert_eq!(read_close(&mut stream).await.0, 1000);
    let line = child.wait_for_line("session closed");
    assert!(line.contains("client=192.0.2.7:51234"), "{line}");

    // A v1 header works the same way.
    let (stream, head) =
        raw_upgrade_after(addr, proxy_v1("198.51.100.9:4000", addr).as_bytes(), "").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let target_side = within("target accepts", accepted.recv())
        .await
        .expect("accepted");
    drop((stream, target_side));
    let line = child.wait_for_line("session closed");
    assert!(line.contains("client=198.51.100.9:4000"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_without_a_proxy_header_are_closed_and_counted() {
    let echo = echo_server().await.to_string();
    let (child, addr, metrics) = start(&[
        "--proxy-protocol",
        "--metrics-listen",
        "127.0.0.1:0",
        "127.0.0.1:0",
        &echo,
    ]);
    let metrics = metrics.expect("metrics address");
    let mut stream = within("connect", TcpStream::connect(addr))
        .await
        .expect("connect");
    stream
        .write_all(b"GET /websockify HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("send");
    // Closed without an answer (EOF, or a reset for the unread request).
    let mut answer = Vec::new();
    let _ = within("closed", stream.read_to_end(&mut answer)).await;
    assert!(answer.is_empty(), "{:?}", String::from_utf8_lossy(&answer));
    let line = child.wait_for_line("connection refused");
    assert!(line.contains("not a PROXY protocol header"), "{line}");
    let scrape = http_get(metrics, "/metrics").await.text();
    assert_eq!(
        sample(
            &scrape,
            "websockify_handshakes_refused_total{reason=\"proxy_header\"}"
        ),
        1.0,
        "{scrape}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_name_the_client_only_from_trusted_proxies() {
    let echo = echo_server().await.to_string();
    for (trusted, expected) in [
        ("127.0.0.0/8", "client=203.0.113.9"),
        ("10.0.0.0/8", "client=127.0.0.1:"),
    ] {
        let (child, addr, _) = start(&["--trusted-proxy", trusted, "127.0.0.1:0", &echo]);
        let (mut stream, head) =
            raw_upgrade_after(addr, b"", "X-Forwarded-For: 198.51.100.1, 203.0.113.9\r\n").await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        echo_on(&mut stream, b"forwarded").await;
        assert_eq!(close_on(&mut stream).await, 1000);
        let line = child.wait_for_line("session closed");
        assert!(line.contains(expected), "--trusted-proxy {trusted}: {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_answer_503_with_retry_after_and_readyz_follows() {
    let echo = echo_server().await.to_string();
    let (_child, addr, metrics) = start(&[
        "--max-connections",
        "1",
        "--metrics-listen",
        "127.0.0.1:0",
        "127.0.0.1:0",
        &echo,
    ]);
    let metrics = metrics.expect("metrics address");
    assert_eq!(http_get(metrics, "/readyz").await.status, 200);
    let (mut first, head) = raw_upgrade_after(addr, b"", "").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    echo_on(&mut first, b"one").await;
    assert_eq!(http_get(metrics, "/readyz").await.status, 503);

    let (_second, head) = raw_upgrade_after(addr, b"", "").await;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 1"),
        "{head}"
    );
    echo_on(&mut first, b"the open session is untouched").await;

    assert_eq!(close_on(&mut first).await, 1000);
    drop(first);
    until_status(metrics, "/readyz", 200).await;
    let (mut third, head) = raw_upgrade_after(addr, b"", "").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    echo_on(&mut third, b"three").await;
    let scrape = http_get(metrics, "/metrics").await.text();
    assert_eq!(
        sample(
            &scrape,
            "websockify_handshakes_refused_total{reason=\"limit\"}"
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_ip_limit_counts_the_real_client() {
    let echo = echo_server().await.to_string();
    let (_child, addr, _) = start(&[
        "--proxy-protocol",
        "--max-connections-per-ip",
        "1",
        "127.0.0.1:0",
        &echo,
    ]);
    let alice: SocketAddr = "192.0.2.10:1000".parse().expect("addr");
    let alice_again: SocketAddr = "192.0.2.10:1001".parse().expect("addr");
    let bob: SocketAddr = "192.0.2.11:1000".parse().expect("addr");
    let (mut first, head) = raw_upgrade_after(addr, &proxy_v2(alice, addr), "").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let (_refused, head) = raw_upgrade_after(addr, &proxy_v2(alice_again, addr), "").await;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    // All three come from 127.0.0.1; only the PROXY header's address counts.
    let (mut other, head) = raw_upgrade_after(addr, &proxy_v2(bob, addr), "").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    echo_on(&mut first, b"alice").await;
    echo_on(&mut other, b"bob").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_and_the_counters_add_up() {
    let Some(promtool) = find_program("promtool") else {
        skip_or_fail("promtool is not installed (apt-get install prometheus)");
        return;
    };
    let echo = echo_server().await.to_string();
    let (_child, addr, metrics) = start(&["--metrics-listen", "127.0.0.1:0", "127.0.0.1:0", &echo]);
    let metrics = metrics.expect("metrics address");
    let mut sent = 0usize;
    for i in 0..5 {
        let (mut stream, head) = raw_upgrade_after(addr, b"", "").await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let payload = vec![b'x'; 100 * (i + 1)];
        echo_on(&mut stream, &payload).await;
        sent += payload.len();
        assert_eq!(close_on(&mut stream).await, 1000);
    }
    let (mut open, _) = raw_upgrade_after(addr, b"", "").await;
    echo_on(&mut open, b"still open").await;
    // The five closed sessions are counted once their tasks end.
    let mut poll = tokio::time::interval(Duration::from_millis(20));
    let response = within("five sessions counted as closed", async {
        loop {
            let response = http_get(metrics, "/metrics").await;
            let text = response.text();
            if sample(&text, "websockify_sessions_closed_total{code=\"1000\"}") >= 5.0 {
                return response;
            }
            poll.tick().await;
        }
    })
    .await;
    let scrape = response.text();
    let body = scrape.clone();
    assert!(
        response
            .header("content-type")
            .is_some_and(|value| value.contains("text/plain; version=0.0.4")),
        "content type: {}",
        response.head
    );
    let checked = tokio::task::spawn_blocking(move || {
        use std::io::Write as _;
        let mut child = std::process::Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("promtool");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(body.as_bytes())
            .expect("feed promtool");
        child.wait_with_output().expect("promtool output")
    })
    .await
    .expect("join");
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    let opened = sample(&scrape, "websockify_sessions_opened_total");
    let open_now = sample(&scrape, "websockify_sessions_open");
    let closed: f64 = scrape
        .lines()
        .filter(|l| l.starts_with("websockify_sessions_closed_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!((opened, open_now, closed), (6.0, 1.0, 5.0), "{scrape}");
    assert_eq!(
        sample(&scrape, "websockify_bytes_to_target_total"),
        sent as f64
    );
    assert_eq!(
        sample(&scrape, "websockify_bytes_to_client_total"),
        sent as f64
    );
    assert_eq!(http_get(metrics, "/healthz").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_then_closes_the_remaining_sessions_with_1001() {
    let echo = echo_server().await.to_string();
    let (mut child, addr, metrics) = start(&[
        "--shutdown-delay",
        "1",
        "--drain-timeout",
        "2",
        "--metrics-listen",
        "127.0.0.1:0",
        "127.0.0.1:0",
        &echo,
    ]);
    let metrics = metrics.expect("metrics address");
    let (mut session, _) = raw_upgrade_after(addr, b"", "").await;
    echo_on(&mut session, b"before").await;
    let signalled = std::time::Instant::now();
    child.signal(Signal::SIGTERM);
    until_status(metrics, "/readyz", 503).await;
    // During the shutdown delay new connections are still served.
    let (mut late, head) = raw_upgrade_after(addr, b"", "").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    echo_on(&mut late, b"late arrival").await;
    child.wait_for_line("listener closed");
    // Draining: open sessions carry on.
    echo_on(&mut session, b"during the drain").await;
    assert_eq!(read_close(&mut session).await.0, 1001);
    assert_eq!(read_close(&mut late).await.0, 1001);
    let waited = signalled.elapsed();
    assert!(
        waited >= Duration::from_secs(3),
        "1001 came {waited:?} after SIGTERM, before delay + drain timeout"
    );
    for stream in [&mut session, &mut late] {
        let _ = stream
            .write_all(&client_frame(0x88, &1001u16.to_be_bytes()))
            .await;
    }
    let status = block(|| child.wait_exit());
    assert_eq!(status.code(), Some(0), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reopens_the_log_file_and_sigusr1_is_ignored() {
    let echo = echo_server().await.to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("ws.log");
    let log_arg = log.to_str().expect("utf-8").to_owned();
    let (child, addr, _) = start(&["--log-file", &log_arg, "127.0.0.1:0", &echo]);
    child.signal(Signal::SIGUSR1);
    child.wait_for_line("SIGUSR1 received: ignored");
    let rotated = dir.path().join("ws.log.1");
    std::fs::rename(&log, &rotated).expect("rotate");
    child.signal(Signal::SIGHUP);
    child.wait_for_line("log file reopened");
    let (mut stream, head) = raw_upgrade_after(addr, b"", "").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    echo_on(&mut stream, b"after SIGHUP").await;
    assert_eq!(close_on(&mut stream).await, 1000);
    child.wait_for_line("session closed");
    // The log file is written by its own thread: wait for the line to land.
    let mut poll = tokio::time::interval(Duration::from_millis(20));
    within("the session line in the new log file", async {
        while !std::fs::read_to_string(&log).is_ok_and(|text| text.contains("session closed")) {
            poll.tick().await;
        }
    })
    .await;
}
