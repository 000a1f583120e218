//! Unit tests of the relay over in-memory pipes (`tokio::io::duplex`) with small buffers, so
//! every write can stall and every read can split a frame. Timer logic (linger, heartbeat)
//! runs on tokio's paused clock: when every task waits, the clock jumps to the next timer,
//! so a test never sleeps in real time and a stalled step ends in a bounded (virtual) wait.

use std::future::{Future, poll_fn};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{CloseReason, Mode, Outcome, Progress, Relay, RelayOptions, TLS_DOWN_PAYLOAD, run};
use crate::buffer::{BUF_SIZE, Buf, HEADROOM};
use crate::frame;

const LINGER: Duration = Duration::from_secs(2);

/// Bounds one step; on the paused clock the bound is virtual time and costs nothing.
async fn within<F: Future>(step: &str, fut: F) -> F::Output {
    match tokio::time::timeout(Duration::from_secs(600), fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out: {step}"),
    }
}

/// Asserts that `elapsed` is `expected`, give or take the timer wheel's millisecond.
fn assert_about(elapsed: Duration, expected: Duration) {
    let slack = Duration::from_millis(5);
    assert!(
        elapsed + slack >= expected && elapsed <= expected + slack,
        "took {elapsed:?}, expected {expected:?}"
    );
}

/// How a test session is set up.
struct Setup {
    mode: Mode,
    /// Capacity of the client pipe in each direction.
    client_buffer: usize,
    /// Capacity of the target pipe in each direction.
    target_buffer: usize,
    heartbeat: Option<Duration>,
    initial: Bytes,
    tls_client: bool,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            mode: Mode::Binary,
            client_buffer: 64,
            target_buffer: 64,
            heartbeat: None,
            initial: Bytes::new(),
            tls_client: false,
        }
    }
}

/// A running relay and the test's ends of its two connections.
struct Session {
    /// Plays the WebSocket client.
    client: DuplexStream,
    /// Plays the target server.
    target: DuplexStream,
    shutdown: CancellationToken,
    relay: JoinHandle<Outcome>,
}

impl Setup {
    fn start(self) -> Session {
        let (client, mut client_relay) = duplex(self.client_buffer);
        let (mut target_relay, target) = duplex(self.target_buffer);
        let shutdown = CancellationToken::new();
        let options = RelayOptions {
            heartbeat: self.heartbeat,
            linger: LINGER,
            shutdown: shutdown.clone(),
            traffic: false,
            tls_client: self.tls_client,
        };
        let relay = tokio::spawn(async move {
            run(
                &mut client_relay,
                &mut target_relay,
                self.mode,
                self.initial,
                None,
                &options,
            )
            .await
        });
        Session {
            client,
            target,
            shutdown,
            relay,
        }
    }
}

/// Waits for the relay to end.
async fn outcome(relay: JoinHandle<Outcome>) -> Outcome {
    within("the relay ends", relay)
        .await
        .expect("the relay task panicked")
}

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// Encodes a masked client frame; `b0` is FIN | opcode.
fn client_frame(b0: u8, payload: &[u8]) -> Vec<u8> {
    frame::client_frame(b0, payload, MASK)
}

fn binary(payload: &[u8]) -> Vec<u8> {
    client_frame(0x82, payload)
}

fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason.as_bytes());
    client_frame(0x88, &payload)
}

/// A frame as the client received it.
#[derive(Debug)]
struct Frame {
    op: u8,
    payload: Vec<u8>,
}

impl Frame {
    fn close_code(&self) -> Option<u16> {
        assert_eq!(self.op, 8, "not a close frame: {self:?}");
        self.payload
            .get(..2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
    }

    fn close_reason(&self) -> &str {
        std::str::from_utf8(self.payload.get(2..).unwrap_or(&[])).unwrap()
    }
}

/// Reads one server frame (servers never mask).
async fn read_frame(client: &mut DuplexStream) -> Frame {
    let mut head = [0u8; 2];
    client
        .read_exact(&mut head)
        .await
        .expect("a frame header from the relay");
    assert_eq!(head[0] & 0x70, 0, "reserved bits set");
    assert_ne!(head[0] & 0x80, 0, "the relay sends final frames only");
    assert_eq!(head[1] & 0x80, 0, "server frames are not masked");
    let len = match head[1] & 0x7f {
        126 => u64::from(client.read_u16().await.unwrap()),
        127 => client.read_u64().await.unwrap(),
        n => u64::from(n),
    };
    let mut payload = vec![0; usize::try_from(len).unwrap()];
    client
        .read_exact(&mut payload)
        .await
        .expect("a frame payload from the relay");
    Frame {
        op: head[0] & 0x0f,
        payload,
    }
}

/// Reads data frames until the close frame: returns the data (base64 decoded frame by frame
/// in base64 mode) and the close frame.
async fn read_until_close(client: &mut DuplexStream, mode: Mode) -> (Vec<u8>, Frame) {
    let mut data = Vec::new();
    loop {
        let frame = read_frame(client).await;
        match (frame.op, mode) {
            (2, Mode::Binary) => data.extend_from_slice(&frame.payload),
            (1, Mode::Base64) => data.extend(STANDARD.decode(&frame.payload).unwrap()),
            (8, _) => return (data, frame),
            _ => panic!("unexpected frame in {mode:?} mode: {frame:?}"),
        }
    }
}

async fn read_to_end(stream: &mut DuplexStream) -> Vec<u8> {
    let mut out = Vec::new();
    within("reading to EOF", stream.read_to_end(&mut out))
        .await
        .unwrap();
    out
}

/// Returns once every task waits (on the paused clock the runtime then moves time on).
async fn settle() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

/// `len` bytes that are not periodic in any small buffer size.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// Writes `bytes` from a task, counting what the pipe accepted, and returns the stream
/// (early if the relay went away).
fn counting_writer(
    mut stream: DuplexStream,
    bytes: Vec<u8>,
    then_eof: bool,
) -> (Arc<AtomicUsize>, JoinHandle<DuplexStream>) {
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    let task = tokio::spawn(async move {
        let mut pos = 0;
        while pos < bytes.len() {
            // An error means the relay has ended; the test checks how.
            let Ok(n) = stream.write(&bytes[pos..]).await else {
                return stream;
            };
            pos += n;
            counter.fetch_add(n, Ordering::SeqCst);
        }
        if then_eof {
            let _ = stream.shutdown().await;
        }
        stream
    });
    (accepted, task)
}

// ---- close ordering ----

#[tokio::test(start_paused = true)]
async fn target_eof_delivers_everything_read_then_closes_1000() {
    let Session {
        mut client,
        target,
        relay,
        ..
    } = Setup::default().start();
    let data = pattern(10_000);
    let (_, writer) = counting_writer(target, data.clone(), true);

    let (received, close) = within(
        "data, then the close",
        read_until_close(&mut client, Mode::Binary),
    )
    .await;
    assert_eq!(received.len(), data.len());
    assert!(received == data, "the data arrived changed");
    assert_eq!(close.close_code(), Some(1000));
    assert_eq!(close.close_reason(), "Target closed");

    // The client's reply ends the session at once, without waiting for the linger.
    let replied = Instant::now();
    client.write_all(&close_frame(1000, "")).await.unwrap();
    let outcome = outcome(relay).await;
    assert!(replied.elapsed() < LINGER);
    assert!(
        matches!(outcome.reason, CloseReason::TargetClosed),
        "{:?}",
        outcome.reason
    );
    assert_eq!(outcome.bytes_to_client, 10_000);
    assert_eq!(read_to_end(&mut client).await, b"");
    let mut target = writer.await.unwrap();
    assert_eq!(read_to_end(&mut target).await, b"");
}

#[tokio::test(start_paused = true)]
async fn frames_to_the_client_carry_64_kib_or_for_tls_fill_four_records() {
    let cases = [
        (Mode::Binary, false, BUF_SIZE),
        (Mode::Base64, false, BUF_SIZE),
        (Mode::Binary, true, TLS_DOWN_PAYLOAD),
        (Mode::Base64, true, TLS_DOWN_PAYLOAD),
    ];
    // 4 header bytes for payloads of 126 to 65,535 bytes: 64 KiB in all, four 16 KiB records.
    assert_eq!(TLS_DOWN_PAYLOAD + 4, 64 * 1024);
    for (mode, tls_client, most) in cases {
        let Session {
            mut client,
            mut target,
            relay,
            ..
        } = Setup {
            mode,
            client_buffer: 1 << 20,
            target_buffer: 1 << 20,
            tls_client,
            ..Setup::default()
        }
        .start();
        // All of it waits in the pipe before the relay first reads, so reads are full.
        let data = pattern(300_000);
        target.write_all(&data).await.unwrap();
        target.shutdown().await.unwrap();
        let mut received = Vec::new();
        let mut full = 0;
        loop {
            let frame = within("a frame", read_frame(&mut client)).await;
            if frame.op == 8 {
                break;
            }
            let case = format!("{mode:?}, TLS {tls_client}");
            assert!(
                frame.payload.len() <= most,
                "{case}: {}",
                frame.payload.len()
            );
            full += usize::from(frame.payload.len() == most);
            match mode {
                Mode::Base64 => received.extend(STANDARD.decode(&frame.payload).unwrap()),
                _ => received.extend_from_slice(&frame.payload),
            }
        }
        assert!(full >= 3, "{mode:?}, TLS {tls_client}: {full} full frames");
        assert!(
            received == data,
            "{mode:?}, TLS {tls_client}: the data arrived changed"
        );
        client.write_all(&close_frame(1000, "")).await.unwrap();
        outcome(relay).await;
    }
}

#[tokio::test(start_paused = true)]
async fn without_a_reply_the_close_linger_ends_the_session_after_2_s() {
    let Session {
        mut client,
        mut target,
        relay,
        ..
    } = Setup::default().start();
    target.shutdown().await.unwrap();
    let close = within("the close", read_frame(&mut client)).await;
    assert_eq!(close.close_code(), Some(1000));
    let sent = Instant::now();
    let outcome = outcome(relay).await;
    assert_about(sent.elapsed(), LINGER);
    assert!(matches!(outcome.reason, CloseReason::TargetClosed));
    assert_eq!(read_to_end(&mut client).await, b"");
}

#[tokio::test(start_paused = true)]
async fn the_linger_counts_from_when_our_close_is_written_not_queued() {
    // The target's data and EOF fit in its pipe, so the relay reads them at once.
    let Session {
        mut client,
        target,
        relay,
        ..
    } = Setup {
        target_buffer: 16 * 1024,
        ..Setup::default()
    }
    .start();
    let data = pattern(10_000);
    let (_, writer) = counting_writer(target, data.clone(), true);
    within("the target's EOF", writer).await.unwrap();
    // The close is queued behind data the client does not read for a while.
    tokio::time::sleep(LINGER * 5).await;

    let (received, close) = within(
        "data, then the close",
        read_until_close(&mut client, Mode::Binary),
    )
    .await;
    assert!(received == data, "the client got {} bytes", received.len());
    assert_eq!(close.close_code(), Some(1000));
    let written = Instant::now();
    let outcome = outcome(relay).await;
    assert_about(written.elapsed(), LINGER);
    assert!(matches!(outcome.reason, CloseReason::TargetClosed));
}

#[tokio::test(start_paused = true)]
async fn a_client_that_never_reads_is_dropped_by_the_heartbeat_while_our_close_waits() {
    // Our close waits behind data: after the target's EOF (1000), or as the echo of the
    // client's own close, when the client is no longer read and no pong can come.
    for client_closes in [false, true] {
        let period = Duration::from_secs(10);
        let Session {
            mut client,
            target,
            relay,
            ..
        } = Setup {
            heartbeat: Some(period),
            target_buffer: 16 * 1024,
            ..Setup::default()
        }
        .start();
        let (_, _writer) = counting_writer(target, pattern(10_000), !client_closes);
        let start = Instant::now();
        settle().await;
        if client_closes {
            client.write_all(&close_frame(1000, "")).await.unwrap();
        }
        let outcome = outcome(relay).await;
        assert_about(start.elapsed(), period * 4);
        assert!(
            matches!(outcome.reason, CloseReason::HeartbeatTimeout),
            "{:?}",
            outcome.reason
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_base64_encoding_failure_ends_the_session_with_1011_not_an_empty_frame() {
    let (mut client, mut client_relay) = duplex(64);
    let (mut target_relay, _target) = duplex(64);
    let mut relay = Relay::new(
        &mut client_relay,
        &mut target_relay,
        Mode::Base64,
        Bytes::new(),
    );
    // A whole buffer of raw bytes: its encoding cannot fit (the relay reads at most 3/4).
    relay.down.raw = Some(Buf::take());
    relay.target_data(BUF_SIZE);
    let drive = async {
        while let Progress::AwaitingCloseReply = poll_fn(|cx| relay.poll_run(cx)).await {}
    };
    let peer = async {
        let close = within("the close", read_frame(&mut client)).await;
        assert_eq!(close.close_code(), Some(1011));
        assert_eq!(close.close_reason(), "Internal error");
        client.write_all(&close_frame(1000, "")).await.unwrap();
    };
    within("the session", async { tokio::join!(drive, peer) }).await;
    assert!(
        matches!(relay.reason, Some(CloseReason::Encode(_))),
        "{:?}",
        relay.reason
    );
    assert_eq!(relay.bytes_to_client, 0);
}

#[tokio::test(start_paused = true)]
async fn client_close_is_echoed_and_its_pending_data_reaches_the_target_before_eof() {
    // The target pipe holds 16 bytes, so most of the data is still in the relay when the
    // echo goes out.
    let Session {
        mut client,
        mut target,
        relay,
        ..
    } = Setup {
        client_buffer: 8192,
        target_buffer: 16,
        ..Setup::default()
    }
    .start();
    let data = pattern(5000);
    let mut bytes = binary(&data);
    bytes.extend(close_frame(4000, "bye"));
    client.write_all(&bytes).await.unwrap();

    let echo = within("the echoed close", read_frame(&mut client)).await;
    assert_eq!(echo.close_code(), Some(4000));
    assert_eq!(echo.close_reason(), "bye");
    let received = read_to_end(&mut target).await;
    assert!(received == data, "the target got {} bytes", received.len());
    let outcome = outcome(relay).await;
    match outcome.reason {
        CloseReason::ClientClosed { code, reason } => {
            assert_eq!(code, Some(4000));
            assert_eq!(reason, "bye");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(outcome.bytes_to_target, 5000);
    assert_eq!(read_to_end(&mut client).await, b"");
}

#[tokio::test(start_paused = true)]
async fn client_eof_without_close_delivers_its_data_then_closes_the_target() {
    let Session {
        mut client,
        mut target,
        relay,
        ..
    } = Setup {
        client_buffer: 8192,
        target_buffer: 16,
        ..Setup::default()
    }
    .start();
    let data = pattern(5000);
    client.write_all(&binary(&data)).await.unwrap();
    client.shutdown().await.unwrap();

    let received = read_to_end(&mut target).await;
    assert!(received == data, "the target got {} bytes", received.len());
    let outcome = outcome(relay).await;
    assert!(
        matches!(outcome.reason, CloseReason::ClientGone),
        "{:?}",
        outcome.reason
    );
    assert_eq!(
        read_to_end(&mut client).await,
        b"",
        "no close frame to a gone client"
    );
}

#[tokio::test(start_paused = true)]
async fn protocol_errors_close_at_once_with_their_code_and_drop_unsent_data() {
    let cases: [(Vec<u8>, u16, &str); 2] = [
        (
            vec![0x82, 0x01, b'x'],
            1002,
            "Protocol error: Frame not masked",
        ),
        (
            client_frame(0x81, b"text"),
            1003,
            "Unsupported: Text frames are not supported",
        ),
    ];
    for (bad, code, reason) in cases {
        let Session {
            mut client,
            target,
            relay,
            ..
        } = Setup::default().start();
        // The target has plenty to say; the client reads none of it before misbehaving.
        let (accepted, _writer) = counting_writer(target, pattern(100_000), false);
        while accepted.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        let start = Instant::now();
        client.write_all(&bad).await.unwrap();

        let (received, close) =
            within("the close", read_until_close(&mut client, Mode::Binary)).await;
        assert_eq!(close.close_code(), Some(code));
        assert_eq!(close.close_reason(), reason);
        // At most the frame already started goes out before the close; the rest is dropped.
        assert!(
            received.len() <= 64,
            "{} bytes before the close",
            received.len()
        );
        // Fail fast: no wait for the client's reply.
        let outcome = outcome(relay).await;
        assert!(start.elapsed() < LINGER, "took {:?}", start.elapsed());
        match outcome.reason {
            CloseReason::Protocol(err) => assert_eq!(err.code, code),
            other => panic!("{other:?}"),
        }
        assert_eq!(read_to_end(&mut client).await, b"");
    }
}

#[tokio::test(start_paused = true)]
async fn a_protocol_error_still_delivers_what_came_before_it() {
    let Session {
        mut client,
        mut target,
        relay,
        ..
    } = Setup::default().start();
    let mut bytes = binary(b"valid");
    bytes.extend([0x82, 0x01, b'x']);
    client.write_all(&bytes).await.unwrap();
    assert_eq!(read_to_end(&mut target).await, b"valid");
    let close = within("the close", read_frame(&mut client)).await;
    assert_eq!(close.close_code(), Some(1002));
    assert!(matches!(
        outcome(relay).await.reason,
        CloseReason::Protocol(_)
    ));
}

#[tokio::test(start_paused = true)]
async fn nothing_follows_our_close_frame() {
    // A heartbeat tick and a client ping during the linger get no frame after our close.
    let Session {
        mut client,
        mut target,
        relay,
        ..
    } = Setup {
        heartbeat: Some(Duration::from_millis(500)),
        ..Setup::default()
    }
    .start();
    target.shutdown().await.unwrap();
    let close = within("the close", read_frame(&mut client)).await;
    assert_eq!(close.close_code(), Some(1000));
    client
        .write_all(&client_frame(0x89, b"late"))
        .await
        .unwrap();
    assert_eq!(
        read_to_end(&mut client).await,
        b"",
        "a frame after our close"
    );
    assert!(matches!(
        outcome(relay).await.reason,
        CloseReason::TargetClosed
    ));
}

#[tokio::test(start_paused = true)]
async fn shutdown_sends_1001_and_closes_both_sides() {
    let Session {
        mut client,
        mut target,
        shutdown,
        relay,
    } = Setup::default().start();
    shutdown.cancel();
    let close = within("the close", read_frame(&mut client)).await;
    assert_eq!(close.close_code(), Some(1001));
    assert_eq!(close.close_reason(), "Server shutting down");
    client.write_all(&close_frame(1001, "")).await.unwrap();
    let outcome = outcome(relay).await;
    assert!(
        matches!(outcome.reason, CloseReason::Shutdown),
        "{:?}",
        outcome.reason
    );
    assert_eq!(read_to_end(&mut target).await, b"");
    assert_eq!(read_to_end(&mut client).await, b"");
}

#[tokio::test(start_paused = true)]
async fn bytes_sent_with_the_handshake_are_relayed_first() {
    let data = pattern(300);
    let frame = binary(&data);
    let Session {
        mut client,
        mut target,
        relay,
        ..
    } = Setup {
        initial: Bytes::copy_from_slice(&frame[..100]),
        ..Setup::default()
    }
    .start();
    client.write_all(&frame[100..]).await.unwrap();
    client.write_all(&close_frame(1000, "")).await.unwrap();
    assert!(read_to_end(&mut target).await == data);
    let close = within("the echo", read_frame(&mut client)).await;
    assert_eq!(close.close_code(), Some(1000));
    outcome(relay).await;
}

// ---- backpressure ----

/// What one direction may hold at most: the two pipes and one relay buffer (two in base64
/// mode, where the raw bytes and their encoding are separate).
fn in_flight_limit(setup: &Setup) -> usize {
    let buffers = match setup.mode {
        Mode::Binary | Mode::Other => BUF_SIZE + HEADROOM,
        Mode::Base64 | Mode::Hixie => BUF_SIZE / 4 * 3 + BUF_SIZE + 2 * HEADROOM,
    };
    setup.client_buffer + buffers + setup.target_buffer
}

#[tokio::test(start_paused = true)]
async fn a_target_that_stops_reading_stops_the_client_reads() {
    let setup = Setup::default();
    let limit = in_flight_limit(&setup);
    let Session {
        client,
        mut target,
        relay,
        ..
    } = setup.start();
    let data = pattern(400_000);
    let mut frames: Vec<u8> = data.chunks(1000).flat_map(binary).collect();
    frames.extend(close_frame(1000, ""));
    let total = frames.len();
    let (accepted, writer) = counting_writer(client, frames, false);

    // Nobody reads the target: once everything waits, the clock jumps ahead.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stalled = accepted.load(Ordering::SeqCst);
    assert!(stalled < total, "the client wrote everything");
    assert!(
        stalled <= limit + 2 * 1006,
        "{stalled} client bytes accepted, limit {limit}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(accepted.load(Ordering::SeqCst), stalled, "still reading");

    // Reading the target lets everything through, in order.
    let received = read_to_end(&mut target).await;
    assert!(received == data, "the target got {} bytes", received.len());
    let mut client = writer.await.unwrap();
    assert_eq!(
        within("the echo", read_frame(&mut client))
            .await
            .close_code(),
        Some(1000)
    );
    outcome(relay).await;
}

#[tokio::test(start_paused = true)]
async fn a_client_that_stops_reading_stops_the_target_reads() {
    for mode in [Mode::Binary, Mode::Base64] {
        let setup = Setup {
            mode,
            ..Setup::default()
        };
        let limit = in_flight_limit(&setup);
        let Session {
            mut client,
            target,
            relay,
            ..
        } = setup.start();
        let data = pattern(400_000);
        let (accepted, _writer) = counting_writer(target, data.clone(), true);

        tokio::time::sleep(Duration::from_secs(1)).await;
        let stalled = accepted.load(Ordering::SeqCst);
        assert!(
            stalled < data.len(),
            "{mode:?}: the target wrote everything"
        );
        assert!(
            stalled <= limit,
            "{mode:?}: {stalled} target bytes accepted, limit {limit}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(accepted.load(Ordering::SeqCst), stalled, "still reading");

        let (received, close) =
            within("data, then the close", read_until_close(&mut client, mode)).await;
        assert!(
            received == data,
            "{mode:?}: the client got {} bytes",
            received.len()
        );
        assert_eq!(close.close_code(), Some(1000));
        client.write_all(&close_frame(1000, "")).await.unwrap();
        outcome(relay).await;
    }
}

// ---- base64 mode ----

#[tokio::test(start_paused = true)]
async fn base64_groups_split_across_reads_and_frames_decode_whole() {
    // The client pipe passes 3 bytes at a time, so every 4-character group straddles two
    // reads, and the fragments cut groups in the middle too.
    let Session {
        client,
        mut target,
        relay,
        ..
    } = Setup {
        mode: Mode::Base64,
        client_buffer: 3,
        ..Setup::default()
    }
    .start();
    assert_eq!(STANDARD.encode(b"hello world!"), "aGVsbG8gd29ybGQh");
    let mut bytes = client_frame(0x01, b"aGVsb");
    bytes.extend(client_frame(0x89, b"ping"));
    bytes.extend(client_frame(0x00, b"G8g d2"));
    bytes.extend(client_frame(0x80, b"9ybGQh"));
    bytes.extend(client_frame(0x81, b"IQ=="));
    bytes.extend(client_frame(0x82, b"raw"));
    bytes.extend(close_frame(1000, ""));
    let (_, writer) = counting_writer(client, bytes, false);

    let mut got = vec![0; 16];
    within("decoded bytes", target.read_exact(&mut got))
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&got), "hello world!!raw");
    let mut client = writer.await.unwrap();
    let pong = within("the pong", read_frame(&mut client)).await;
    assert_eq!((pong.op, pong.payload.as_slice()), (0xA, &b"ping"[..]));
    let close = within("the echo", read_frame(&mut client)).await;
    assert_eq!(close.close_code(), Some(1000));
    assert_eq!(read_to_end(&mut target).await, b"");
    assert_eq!(outcome(relay).await.bytes_to_target, 16);
}

#[tokio::test(start_paused = true)]
async fn invalid_base64_closes_1007() {
    let Session {
        mut client,
        target: _target,
        relay,
        ..
    } = Setup {
        mode: Mode::Base64,
        ..Setup::default()
    }
    .start();
    client
        .write_all(&client_frame(0x81, b"aGV*"))
        .await
        .unwrap();
    let close = within("the close", read_frame(&mut client)).await;
    assert_eq!(close.close_code(), Some(1007));
    assert_eq!(close.close_reason(), "Invalid base64 data");
    assert!(matches!(
        outcome(relay).await.reason,
        CloseReason::Protocol(_)
    ));
}

// ---- control frames and heartbeat ----

#[tokio::test(start_paused = true)]
async fn pongs_echo_pings_in_order_and_a_flood_keeps_only_the_newest() {
    let Session {
        client,
        target: _target,
        relay,
        ..
    } = Setup::default().start();
    let mut bytes: Vec<u8> = (0..100u8).flat_map(|i| client_frame(0x89, &[i])).collect();
    bytes.extend(close_frame(1000, ""));
    // The client reads nothing until it has sent every ping and its close.
    let (_, writer) = counting_writer(client, bytes, false);
    let mut client = within("writing the pings", writer).await.unwrap();

    let mut pongs = Vec::new();
    let close = loop {
        let frame = within("a pong", read_frame(&mut client)).await;
        match frame.op {
            0xA => pongs.push(frame.payload[0]),
            _ => break frame,
        }
    };
    assert_eq!(close.close_code(), Some(1000));
    assert!(
        pongs.windows(2).all(|w| w[0] < w[1]),
        "out of order: {pongs:?}"
    );
    assert_eq!(pongs.last(), Some(&99), "the newest ping is answered");
    // 64 bytes of pipe hold 21 pongs, plus one in progress and a queue of 16.
    assert!(
        pongs.len() <= 64 / 3 + 1 + 16,
        "{} pongs: {pongs:?}",
        pongs.len()
    );
    outcome(relay).await;
}

#[tokio::test(start_paused = true)]
async fn three_unanswered_pings_end_the_session() {
    let period = Duration::from_secs(10);
    let Session {
        mut client,
        mut target,
        relay,
        ..
    } = Setup {
        heartbeat: Some(period),
        ..Setup::default()
    }
    .start();
    let start = Instant::now();
    for n in 1..=3 {
        let ping = within("a ping", read_frame(&mut client)).await;
        assert_eq!(ping.op, 9);
        assert_about(start.elapsed(), period * n);
    }
    let outcome = outcome(relay).await;
    assert_about(start.elapsed(), period * 4);
    assert!(
        matches!(outcome.reason, CloseReason::HeartbeatTimeout),
        "{:?}",
        outcome.reason
    );
    assert_eq!(read_to_end(&mut target).await, b"");
}

#[tokio::test(start_paused = true)]
async fn answered_pings_keep_the_session_open() {
    let period = Duration::from_secs(10);
    let Session {
        mut client,
        target: _target,
        relay,
        ..
    } = Setup {
        heartbeat: Some(period),
        ..Setup::default()
    }
    .start();
    for _ in 0..10 {
        let ping = within("a ping", read_frame(&mut client)).await;
        assert_eq!(ping.op, 9);
        client.write_all(&client_frame(0x8A, &[])).await.unwrap();
    }
    client.write_all(&close_frame(1000, "")).await.unwrap();
    let close = within("the echo", read_frame(&mut client)).await;
    assert_eq!(close.close_code(), Some(1000));
    assert!(matches!(
        outcome(relay).await.reason,
        CloseReason::ClientClosed { .. }
    ));
}

/// A target whose reads fail (a reset connection) and whose writes are swallowed.
struct FailingTarget;

impl tokio::io::AsyncRead for FailingTarget {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        _: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Err(std::io::ErrorKind::ConnectionReset.into()))
    }
}

impl tokio::io::AsyncWrite for FailingTarget {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::task::Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[tokio::test(start_paused = true)]
async fn a_target_error_sends_1011_and_the_linger_ends_a_silent_client() {
    let (mut client, mut client_relay) = duplex(64);
    let options = RelayOptions {
        heartbeat: None,
        linger: LINGER,
        shutdown: CancellationToken::new(),
        traffic: false,
        tls_client: false,
    };
    let relay = tokio::spawn(async move {
        let mut target = FailingTarget;
        run(
            &mut client_relay,
            &mut target,
            Mode::Binary,
            Bytes::new(),
            None,
            &options,
        )
        .await
    });
    let close = within("the close", read_frame(&mut client)).await;
    assert_eq!(close.close_code(), Some(1011));
    // The client never answers: the session is released after the linger, not held open.
    let sent = Instant::now();
    let outcome = outcome(relay).await;
    assert_about(sent.elapsed(), LINGER);
    assert!(
        matches!(outcome.reason, CloseReason::TargetError(_)),
        "{:?}",
        outcome.reason
    );
}

// ---- Hixie mode ----

/// Reads Hixie frames (`0x00 base64 0xFF`) from `client` until the close `0xFF 0x00` and
/// EOF; returns the decoded data.
async fn read_hixie_until_close(client: &mut DuplexStream) -> Vec<u8> {
    let bytes = read_to_end(client).await;
    assert!(bytes.ends_with(&[0xff, 0x00]), "no close frame at the end");
    let mut data = Vec::new();
    let mut rest = &bytes[..bytes.len() - 2];
    while let Some((&kind, after)) = rest.split_first() {
        assert_eq!(kind, 0x00, "a text frame");
        let end = after.iter().position(|&b| b == 0xff).expect("frame end");
        data.extend(STANDARD.decode(&after[..end]).expect("base64"));
        rest = &after[end + 1..];
    }
    data
}

#[tokio::test(start_paused = true)]
async fn hixie_frames_split_across_reads_decode_whole_and_the_close_is_echoed() {
    // Three bytes per read: frames, base64 groups and the close all straddle reads. The
    // heartbeat is set, but Hixie has no ping: nothing but the close reaches the client.
    let Session {
        client,
        mut target,
        relay,
        ..
    } = Setup {
        mode: Mode::Hixie,
        client_buffer: 3,
        heartbeat: Some(Duration::from_secs(1)),
        ..Setup::default()
    }
    .start();
    let mut bytes = b"\x00aGVsbG8g\xff\x00d29y\xff".to_vec();
    bytes.extend_from_slice(b"\x80\x02zz\x07skipped\xff\x00bGQh\xff\x00\xff");
    bytes.extend_from_slice(b"\x00IQ==\xff\xff\x00");
    let (_, writer) = counting_writer(client, bytes, false);
    let mut got = vec![0; 13];
    within("decoded bytes", target.read_exact(&mut got))
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&got), "hello world!!");
    tokio::time::sleep(Duration::from_secs(10)).await;
    let mut client = writer.await.unwrap();
    assert_eq!(read_to_end(&mut client).await, [0xff, 0x00]);
    assert_eq!(read_to_end(&mut target).await, b"");
    let outcome = outcome(relay).await;
    assert!(
        matches!(outcome.reason, CloseReason::ClientClosed { code: None, .. }),
        "{:?}",
        outcome.reason
    );
    assert_eq!(outcome.bytes_to_target, 13);
}

#[tokio::test(start_paused = true)]
async fn hixie_mode_has_backpressure_and_frames_target_data_in_base64() {
    let setup = Setup {
        mode: Mode::Hixie,
        ..Setup::default()
    };
    let limit = in_flight_limit(&setup);
    let Session {
        mut client,
        target,
        relay,
        ..
    } = setup.start();
    let data = pattern(400_000);
    let (accepted, _writer) = counting_writer(target, data.clone(), true);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stalled = accepted.load(Ordering::SeqCst);
    assert!(stalled < data.len(), "the target wrote everything");
    assert!(
        stalled <= limit,
        "{stalled} target bytes accepted, limit {limit}"
    );

    let received = within("data, then the close", read_hixie_until_close(&mut client)).await;
    assert!(received == data, "the client got {} bytes", received.len());
    assert!(matches!(
        outcome(relay).await.reason,
        CloseReason::TargetClosed
    ));
}
