//! Memory after a spike (issue 11, item 9): once a burst of idle sessions has closed, the
//! process gives most of what it grew by back to the system.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

use crate::util::*;

/// Sessions opened at once (each costs two descriptors here and two in websockify).
const SESSIONS: usize = 2_000;

/// VmRSS of `pid` in bytes, from /proc/PID/status.
fn rss(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// Raises this process's soft open-file limit to at least `want` (the child inherits it);
/// false if the hard limit is lower.
fn raise_nofile(want: u64) -> bool {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return false;
    };
    if soft >= want {
        return true;
    }
    hard >= want && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok()
}

/// Opens one session and echoes a few bytes through it.
async fn open_session(addr: SocketAddr) -> TcpStream {
    let (mut stream, head) = raw_upgrade(addr, "").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    stream
        .write_all(&client_frame(0x82, b"spike"))
        .await
        .expect("send");
    let (_, payload) = read_frame(&mut stream).await;
    assert_eq!(payload, b"spike");
    stream
}

/// Polls `cond` every 50 ms until it holds or `limit` passes; returns whether it held.
async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    while tokio::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        tick.tick().await;
    }
    cond()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_grown_by_a_spike_of_idle_sessions_is_given_back() {
    if !raise_nofile(SESSIONS as u64 * 2 + 200) {
        skip_or_fail(&format!(
            "the open-file hard limit is below {} (ulimit -Hn)",
            SESSIONS * 2 + 200
        ));
        return;
    }
    let echo = echo_server().await;
    let child = spawn_websockify(&["127.0.0.1:0", &echo.to_string()]);
    let addr = listening_addr(&child.wait_for_line("listening on"));
    let pid = child.pid;
    // One full session first, so one-time set-up is not counted as growth.
    let mut warm = open_session(addr).await;
    let _ = warm
        .write_all(&client_frame(0x88, &1000u16.to_be_bytes()))
        .await;
    let _ = read_close(&mut warm).await;
    drop(warm);
    let before = rss(pid);

    let limit = Arc::new(tokio::sync::Semaphore::new(64));
    let mut opening = tokio::task::JoinSet::new();
    for _ in 0..SESSIONS {
        let permit = limit.clone().acquire_owned().await.expect("semaphore");
        opening.spawn(async move {
            let stream = open_session(addr).await;
            drop(permit);
            stream
        });
    }
    let mut sessions = Vec::with_capacity(SESSIONS);
    while let Some(stream) = tokio::time::timeout(STEP * 6, opening.join_next())
        .await
        .expect("sessions open within 60 s")
    {
        sessions.push(stream.expect("a session opened"));
    }
    let open = rss(pid);
    let grown = open.saturating_sub(before);
    assert!(
        grown >= 4 << 20,
        "{SESSIONS} sessions grew RSS by only {grown} bytes: the test measures nothing"
    );

    // Abrupt closes (no close handshake): the sessions end as their reads see EOF.
    drop(sessions);
    // Most of the growth comes back; timing is not asserted, only that it happens. What
    // stays is about 1 KiB per session (pooled span slots, allocator pages still pinned):
    // 2.0 MiB of 10.7 when an idle session's task was 4.2 KiB, 2.0 MiB of 5.4 since it is
    // 1.3 KiB (1.8 to 2.2 MiB in 10 runs alone, under load and in the suite on 2026-12-05;
    // once 3.3 MiB, in a CI run of the suite). So the bound is two thirds of the growth: a
    // spike that is not given back at all (nothing trimmed, or every page pinned) keeps
    // all of it, which is what this test is for.
    let bound = before + grown * 2 / 3;
    let back = eventually(STEP * 2, || rss(pid) <= bound).await;
    let after = rss(pid);
    eprintln!(
        "RSS before {} KiB, with {SESSIONS} sessions {} KiB, after {} KiB",
        before / 1024,
        open / 1024,
        after / 1024
    );
    assert!(
        back,
        "RSS stayed at {after} bytes after {SESSIONS} sessions closed: before {before}, with them open {open}, bound {bound}"
    );
}
