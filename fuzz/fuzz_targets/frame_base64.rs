//! The legacy base64 mode end to end: `relay::run` between two in-memory pipes (tokio's clock
//! paused, so the close linger costs nothing), the fuzz input as what the client sends.
//!
//! Two halves, picked by the first byte:
//! - any bytes from the client (some as bytes that came with the handshake), in base64,
//!   binary, `--subprotocol` or Hixie mode: no panic, the session ends, the target gets exactly the bytes the
//!   outcome counts and never more than the client sent.
//! - a round trip: data built from the input goes to the client as base64 text messages cut
//!   into fragments at any point, with whitespace and with or without padding (and some
//!   binary messages, which pass raw); the target must receive exactly that data. Bytes from
//!   the target (the input, repeated to cross the 48 KiB read size) must reach the client as
//!   text frames each holding padded base64 that decodes back to them, in order.
#![no_main]

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};
use tokio_util::sync::CancellationToken;
use websockify::relay::{self, Mode, Outcome, RelayOptions};

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a tokio runtime");
}

fuzz_target!(|data: &[u8]| {
    let Some((&choice, rest)) = data.split_first() else {
        return;
    };
    RUNTIME.with(|rt| {
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(3600), async {
                if choice & 1 == 0 {
                    any_bytes(choice, rest).await;
                } else {
                    round_trip(choice, rest).await;
                }
            })
            .await
            .expect("the session ended");
        });
    });
});

fn options() -> RelayOptions {
    RelayOptions {
        heartbeat: None,
        linger: Duration::from_secs(2),
        shutdown: CancellationToken::new(),
        traffic: false,
        tls_client: false,
    }
}

/// Runs the relay with `client_side`/`target_side` and drops both ends when it returns, so
/// the other ends see EOF.
async fn relay(
    mut client_side: DuplexStream,
    mut target_side: DuplexStream,
    mode: Mode,
    initial: Bytes,
) -> Outcome {
    let outcome = relay::run(
        &mut client_side,
        &mut target_side,
        mode,
        initial,
        None,
        &options(),
    )
    .await;
    drop(client_side);
    drop(target_side);
    outcome
}

async fn any_bytes(choice: u8, input: &[u8]) {
    let mode = match choice >> 1 & 3 {
        0 => Mode::Base64,
        1 => Mode::Binary,
        2 => Mode::Other,
        _ => Mode::Hixie,
    };
    let split = usize::from(choice >> 3).min(input.len());
    let initial = Bytes::copy_from_slice(&input[..split]);
    let later = input[split..].to_vec();
    let (client_app, client_side) = tokio::io::duplex(4096);
    let (target_side, mut target_app) = tokio::io::duplex(4096);
    let (mut client_read, mut client_write) = tokio::io::split(client_app);
    let client = async move {
        // The relay may stop reading (a protocol error): a failed write is the client's news.
        let _ = client_write.write_all(&later).await;
        let _ = client_write.shutdown().await;
        drop(client_write);
    };
    let client_reader = async move {
        let mut from_server = Vec::new();
        let _ = client_read.read_to_end(&mut from_server).await;
    };
    let target = async move {
        let mut got = Vec::new();
        let _ = target_app.read_to_end(&mut got).await;
        got
    };
    let (outcome, (), (), got) = tokio::join!(
        relay(client_side, target_side, mode, initial),
        client,
        client_reader,
        target
    );
    assert_eq!(outcome.bytes_to_target, got.len() as u64);
    assert!(got.len() <= input.len());
}

/// A masked client frame.
fn client_frame(out: &mut Vec<u8>, b0: u8, payload: &[u8], mask: [u8; 4]) {
    out.push(b0);
    match payload.len() {
        len @ 0..126 => out.push(0x80 | len as u8),
        len @ 126..=0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
}

/// One complete server frame at the start of `buf`: (opcode, payload, length used).
fn server_frame(buf: &[u8]) -> Option<(u8, &[u8], usize)> {
    let b0 = *buf.first()?;
    let b1 = *buf.get(1)?;
    assert_eq!(b0 & 0x70, 0, "reserved bits from the server");
    assert_eq!(b0 & 0x80, 0x80, "the server fragments nothing");
    assert_eq!(b1 & 0x80, 0, "the server masks nothing");
    let (len, header) = match b1 & 0x7f {
        126 => (
            usize::from(u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?)),
            4,
        ),
        127 => (
            u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize,
            10,
        ),
        n => (usize::from(n), 2),
    };
    let payload = buf.get(header..header + len)?;
    Some((b0 & 0x0f, payload, header + len))
}

async fn round_trip(choice: u8, input: &[u8]) {
    // What the client sends: the input cut into messages by its own bytes.
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut frames = Vec::new();
    let mut expected = Vec::new();
    let mut rest = input;
    let mut whitespace = 0usize;
    while let Some((&recipe, tail)) = rest.split_first() {
        let take = usize::from(recipe >> 3).min(tail.len());
        let (part, tail) = tail.split_at(take);
        rest = tail;
        expected.extend_from_slice(part);
        if recipe & 4 != 0 {
            client_frame(&mut frames, 0x82, part, mask);
            continue;
        }
        let text = if recipe & 2 == 0 {
            STANDARD.encode(part)
        } else {
            STANDARD_NO_PAD.encode(part)
        };
        let mut text = text.into_bytes();
        // Whitespace anywhere is skipped, as upstream's b64decode does.
        if recipe & 1 != 0 {
            whitespace = whitespace
                .wrapping_mul(31)
                .wrapping_add(usize::from(recipe));
            let at = whitespace % (text.len() + 1);
            text.insert(at, b"\r\n\t \x0c"[whitespace % 5]);
        }
        // Fragments of `cut` characters (from the next input byte), the last one final.
        let cut = 1 + usize::from(rest.first().copied().unwrap_or(0) % 16);
        let pieces: Vec<&[u8]> = if text.is_empty() {
            vec![&[]]
        } else {
            text.chunks(cut).collect()
        };
        for (i, piece) in pieces.iter().enumerate() {
            let op = if i == 0 { 0x1 } else { 0x0 };
            let fin = if i + 1 == pieces.len() { 0x80 } else { 0 };
            client_frame(&mut frames, op | fin, piece, mask);
        }
    }
    let mut close = Vec::new();
    client_frame(&mut close, 0x88, &1000u16.to_be_bytes(), mask);
    // What the target sends: the input, repeated.
    let from_target: Vec<u8> = input.repeat(1 + usize::from(choice >> 1));
    let want = from_target.len();

    let (client_app, client_side) = tokio::io::duplex(64 * 1024);
    let (target_side, target_app) = tokio::io::duplex(64 * 1024);
    let (mut client_read, mut client_write) = tokio::io::split(client_app);
    let (mut target_read, mut target_write) = tokio::io::split(target_app);
    // Client and target write and read at once, as real peers do (or the pipes fill up).
    let (all_in, all_in_rx) = tokio::sync::oneshot::channel::<()>();
    let client_writer = async move {
        client_write
            .write_all(&frames)
            .await
            .expect("client frames sent");
        // The close goes once everything from the target arrived (or the reader gave up).
        let _ = all_in_rx.await;
        let _ = client_write.write_all(&close).await;
        client_write
    };
    let client_reader = async move {
        let mut all_in = Some(all_in);
        let mut got = Vec::new();
        let mut buf = Vec::new();
        let mut closed_by_server = None;
        loop {
            while let Some((op, payload, used)) = server_frame(&buf) {
                match op {
                    0x1 => {
                        let decoded = STANDARD
                            .decode(payload)
                            .expect("each text frame is padded base64");
                        assert!(!decoded.is_empty(), "an empty text frame");
                        got.extend_from_slice(&decoded);
                    }
                    0x8 => closed_by_server = Some(payload.to_vec()),
                    other => panic!("unexpected opcode {other:#x} from the server"),
                }
                buf.drain(..used);
            }
            if got.len() >= want
                && let Some(all_in) = all_in.take()
            {
                let _ = all_in.send(());
            }
            if client_read.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                break;
            }
        }
        assert!(buf.is_empty(), "a partial frame at the end");
        (got, closed_by_server)
    };
    let client = async move {
        let (_write, read) = tokio::join!(client_writer, client_reader);
        read
    };
    let target = async move {
        let writer = async move {
            target_write
                .write_all(&from_target)
                .await
                .expect("target data sent");
            (target_write, from_target)
        };
        let reader = async move {
            let mut got = Vec::new();
            target_read
                .read_to_end(&mut got)
                .await
                .expect("target reads");
            got
        };
        let ((_write, from_target), got) = tokio::join!(writer, reader);
        (got, from_target)
    };
    let (outcome, (client_got, close_reply), (target_got, from_target)) = tokio::join!(
        relay(client_side, target_side, Mode::Base64, Bytes::new()),
        client,
        target
    );
    assert!(
        target_got == expected,
        "target got {} bytes, expected {}",
        target_got.len(),
        expected.len()
    );
    assert_eq!(outcome.bytes_to_target, expected.len() as u64);
    assert!(
        client_got == from_target,
        "client got {} bytes, expected {}",
        client_got.len(),
        from_target.len()
    );
    assert_eq!(close_reply.as_deref(), Some(&1000u16.to_be_bytes()[..]));
}
