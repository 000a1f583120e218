//! The relay: WebSocket frames from the client become a byte stream to the target, and bytes
//! from the target become binary (or base64 text) frames to the client.
//!
//! One task drives both directions through a single poll loop ([`Relay::poll_run`]), so each
//! socket has exactly one writer and no lock is taken. Control frames (pongs, heartbeat
//! pings, our close) slot in between data frames on the client socket. Pongs owed wait in a
//! per-connection queue of at most 16 frames (128 bytes each; past that the oldest is dropped,
//! as RFC 6455 5.5.3 allows), freed as soon as it empties. Each direction owns at most one
//! [`Buf`](crate::buffer::Buf) of 64 KiB (two in base64 mode) and reads again only after
//! everything it read has been written: a side that stops reading stops the other side's
//! reads (backpressure), and memory stays bounded whatever the peers do. Buffers go back to
//! the pool whenever a read finds nothing, so an idle connection holds none.
//!
//! # Phases
//!
//! Each direction is in one phase (`Upstream`, `Downstream`); the session ends when both
//! are final.
//!
//! ```text
//! Upstream: the client's frames, as bytes for the target
//!
//!   Open ──client's close frame, EOF──▶ Draining ──everything written──▶ Closed
//!     │   or protocol error                       and flushed              ▲
//!     └────────client I/O error (what was not written is dropped)──────────┘
//!
//! Downstream: the target's bytes, as frames for the client, then our close frame
//!
//!   Open ──▶ Closing(frame) ──data frame in──▶ Sending ──our close written──▶ Closed
//!                              progress done              and flushed
//!   Open, Closing, Sending ──client EOF or I/O error──▶ Gone (nothing more is written)
//!
//!   Open -> Closing on: target EOF (1000 "Target closed"), target error (1011), encode
//!   failure (1011), shutdown (1001), a protocol error (its code; target data not yet
//!   started is dropped), the client's close (echoed).
//! ```
//!
//! - The client is read only while Upstream is Open, the target only while Downstream is.
//! - Once Downstream has left Open, client data and pings are dropped: only the client's
//!   close reply matters.
//! - Downstream reaching Closed while Upstream is still Open means we wait for the reply:
//!   [`run`] starts the linger then (not when the close was queued behind data).
//! - The heartbeat pings while Downstream is Open, Closing or Sending.
//! - The session ends when Upstream is Closed and Downstream is Closed or Gone, when the
//!   linger runs out, or when three pings go unanswered.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use crate::buffer::{BUF_SIZE, Buf, HEADROOM};
use crate::frame::{
    self, ControlFrame, DataKind, Decoder, Event, MAX_SERVER_HEADER, ProtocolError, close_code,
};
use crate::hixie;
use crate::record::{self, Recording, Token};

/// How payloads travel in WebSocket frames (chosen by the subprotocol).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Binary frames carry raw bytes (`binary` or no subprotocol).
    Binary,
    /// Text frames carry base64 (the legacy `base64` subprotocol).
    Base64,
    /// A `--subprotocol` name (SIP over WebSocket, say): bytes as with `binary`, and the
    /// payload of the client's text frames goes to the target as it is too.
    Other,
    /// A Hixie-75/76 client (`--hixie`): base64 in `0x00 ... 0xFF` frames both ways, close
    /// `0xFF 0x00`, no pings.
    Hixie,
}

impl Mode {
    /// Whether payloads are base64 text (target bytes are encoded, client text decoded).
    fn encodes(self) -> bool {
        matches!(self, Mode::Base64 | Mode::Hixie)
    }

    /// Our close frame in this mode.
    fn close_frame(self, code: Option<u16>, reason: &str) -> ControlFrame {
        match self {
            Mode::Hixie => ControlFrame::hixie_close(),
            _ => ControlFrame::close(code, reason),
        }
    }
}

/// Most payload bytes per frame to a TLS client in the binary modes (in base64, of its
/// encoding): with its 4-byte header a frame is then exactly 64 KiB, which TLS carries in four
/// full 16 KiB records and one vectored write. A 64 KiB payload made a fifth record of 10
/// bytes (its own encryption and `writev`): wss:// down went from 0.89-0.95x to 0.98-1.04x
/// the TLS relay (4 alternating runs of 3 rounds, docs/benchmarks.md). Plain clients keep
/// whole 64 KiB payloads: a 65,536-byte message echoed through the target then comes back as
/// one frame (Autobahn 1.2.7), and in time the smaller frames were inside the noise there.
const TLS_DOWN_PAYLOAD: usize = BUF_SIZE - 4;

/// Most raw target bytes per frame in the Hixie mode: their base64 and the closing `0xFF`
/// fit the buffer.
const HIXIE_RAW: usize = (BUF_SIZE / 4 - 1) * 3;

/// The client's frames, as RFC 6455 or as Hixie frames.
enum ClientDecoder {
    Rfc6455(Decoder),
    Hixie(hixie::Decoder),
}

impl ClientDecoder {
    fn next(&mut self, input: &mut [u8], pos: &mut usize) -> Result<Option<Event>, ProtocolError> {
        match self {
            ClientDecoder::Rfc6455(decoder) => decoder.next(input, pos),
            ClientDecoder::Hixie(decoder) => decoder.next(input, pos),
        }
    }

    fn control_payload(&self) -> &[u8] {
        match self {
            ClientDecoder::Rfc6455(decoder) => decoder.control_payload(),
            ClientDecoder::Hixie(_) => &[],
        }
    }

    fn close_reason(&self) -> &str {
        match self {
            ClientDecoder::Rfc6455(decoder) => decoder.close_reason(),
            ClientDecoder::Hixie(_) => "",
        }
    }

    fn data_remaining(&self) -> Option<u64> {
        match self {
            ClientDecoder::Rfc6455(decoder) => decoder.data_remaining(),
            ClientDecoder::Hixie(_) => None,
        }
    }
}

/// Relay settings that come from the command line.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// Ping interval (`--heartbeat`); a client that answers none of three pings is dropped.
    pub heartbeat: Option<Duration>,
    /// How long to wait for the client's close frame once ours is written to it.
    pub linger: Duration,
    /// Cancelled on SIGINT/SIGTERM: the relay sends close 1001 and winds down.
    pub shutdown: CancellationToken,
    /// Print upstream's per-frame traffic tokens to stdout (`--traffic`).
    pub traffic: bool,
    /// The client is on TLS: frames to it are sized to fill whole TLS records.
    pub tls_client: bool,
}

/// Why a session ended.
#[derive(Debug)]
pub enum CloseReason {
    /// The client sent a close frame (echoed back).
    ClientClosed { code: Option<u16>, reason: String },
    /// The client's TCP connection ended without a close frame (1006).
    ClientGone,
    /// Reading or writing the client failed.
    ClientError(io::Error),
    /// The target closed its side; the client got close 1000 `Target closed`.
    TargetClosed,
    /// Reading or writing the target failed; the client got close 1011.
    TargetError(io::Error),
    /// The client broke the protocol; it got the close code in the error.
    Protocol(ProtocolError),
    /// The server is shutting down; the client got close 1001.
    Shutdown,
    /// The client answered no ping for three heartbeat intervals.
    HeartbeatTimeout,
    /// Target data could not be base64-encoded (a bug: the buffers are sized so that it
    /// fits); the client got close 1011.
    Encode(base64::EncodeSliceError),
}

impl CloseReason {
    /// The close code the session ended with, as seen by the client.
    pub fn code(&self) -> u16 {
        match self {
            CloseReason::ClientClosed { code, .. } => code.unwrap_or(1005),
            CloseReason::ClientGone | CloseReason::ClientError(_) => close_code::ABNORMAL,
            CloseReason::HeartbeatTimeout => close_code::ABNORMAL,
            CloseReason::TargetClosed => close_code::NORMAL,
            CloseReason::TargetError(_) | CloseReason::Encode(_) => close_code::INTERNAL,
            CloseReason::Protocol(err) => err.code,
            CloseReason::Shutdown => close_code::GOING_AWAY,
        }
    }
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloseReason::ClientClosed { reason, .. } if reason.is_empty() => {
                f.write_str("client closed")
            }
            CloseReason::ClientClosed { reason, .. } => write!(f, "client closed: {reason:?}"),
            CloseReason::ClientGone => f.write_str("client disconnected without a close frame"),
            CloseReason::ClientError(err) => write!(f, "client connection failed: {err}"),
            CloseReason::TargetClosed => f.write_str("target closed"),
            CloseReason::TargetError(err) => write!(f, "target connection failed: {err}"),
            CloseReason::Protocol(err) => write!(f, "client protocol error: {}", err.reason),
            CloseReason::Shutdown => f.write_str("server shutting down"),
            CloseReason::HeartbeatTimeout => f.write_str("client answered no ping in 3 heartbeats"),
            CloseReason::Encode(err) => write!(f, "base64 encoding of target data failed: {err}"),
        }
    }
}

/// What a finished session did.
#[derive(Debug)]
pub struct Outcome {
    pub reason: CloseReason,
    /// Payload bytes written to the target.
    pub bytes_to_target: u64,
    /// Payload bytes read from the target and sent to the client.
    pub bytes_to_client: u64,
}

/// Sends a single close frame (used when the target cannot be reached after the 101).
pub async fn send_close<C: AsyncWrite + Unpin>(
    client: &mut C,
    mode: Mode,
    code: u16,
    reason: &str,
) {
    let frame = mode.close_frame(Some(code), reason);
    let _ = client.write_all(frame.as_bytes()).await;
    let _ = client.flush().await;
    let _ = client.shutdown().await;
}

/// Relays between a client that completed the WebSocket handshake and a connected target.
/// `initial` holds client bytes that arrived with the handshake request.
pub async fn run<C, T>(
    client: &mut C,
    target: &mut T,
    mode: Mode,
    initial: Bytes,
    recording: Option<Box<Recording>>,
    options: &RelayOptions,
) -> Outcome
where
    C: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut relay = Relay::new(client, target, mode, initial);
    relay.recording = recording;
    relay.traffic = options.traffic;
    if options.tls_client {
        relay.down_payload = TLS_DOWN_PAYLOAD;
    }
    // Hixie clients have no ping.
    let heartbeat = options
        .heartbeat
        .filter(|d| !d.is_zero() && mode != Mode::Hixie);
    let mut next_ping = heartbeat.map(|period| Instant::now() + period);
    let mut linger_until: Option<Instant> = None;
    loop {
        // One timer: the linger once our close is out, else the next heartbeat. They never
        // overlap (the linger starts with Downstream Closed, where pings stop), and each
        // timer would be 112 bytes more in every idle session's task.
        let lingering = linger_until.is_some();
        let deadline = linger_until.or(next_ping.filter(|_| relay.down.phase.writing()));
        // `select!` evaluates the guards once per pass. A stale shutdown or heartbeat guard
        // is harmless (both check the phases again); the linger must start when our close
        // is out, so poll_run returns then.
        tokio::select! {
            progress = poll_fn(|cx| relay.poll_run(cx)) => match progress {
                Progress::Finished => break,
                // The linger counts from when the client could see our close, not from when
                // it was queued behind data the client had yet to read.
                Progress::AwaitingCloseReply => {
                    linger_until = Some(Instant::now() + options.linger);
                }
            },
            () = options.shutdown.cancelled(), if relay.down.phase.is_open() => {
                relay.begin_close(close_code::GOING_AWAY, "Server shutting down", CloseReason::Shutdown);
            }
            // Pings go on while our close waits behind data, so that a client that stopped
            // reading is still dropped after three heartbeats.
            () = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                if lingering {
                    break;
                }
                let period = heartbeat.unwrap_or(Duration::from_secs(1));
                next_ping = Some(Instant::now() + period);
                if !relay.heartbeat() {
                    // This is why the session ends, even if a close was under way.
                    relay.reason = Some(CloseReason::HeartbeatTimeout);
                    break;
                }
            }
        }
    }
    // Boxed: the wind-down (the relay moved into it, two bounded shutdowns) would otherwise
    // be laid out in this future beside the relay, and sized every idle session's task.
    Box::pin(relay.finish()).await
}

/// Why [`Relay::poll_run`] returned.
enum Progress {
    /// The session is over.
    Finished,
    /// Our close frame is out and we wait for the client's reply: start the linger.
    AwaitingCloseReply,
}

/// Where client -> target stands (see the module doc's diagram).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Upstream {
    /// Reading the client's frames.
    Open,
    /// The client sent its close, its EOF or a protocol error: no more reads; what it sent
    /// before is still written to the target.
    Draining,
    /// Nothing more goes to the target.
    Closed,
}

impl Upstream {
    fn is_open(self) -> bool {
        self == Upstream::Open
    }
}

/// Where target -> client stands (see the module doc's diagram).
#[derive(Debug)]
enum Downstream {
    /// Reading the target and framing what it sends.
    Open,
    /// The target is no longer read; our close goes out after the data frame in progress.
    Closing(Box<ControlFrame>),
    /// Our close is being written (it is the control frame in progress).
    Sending,
    /// Our close is written and flushed.
    Closed,
    /// The client went away: nothing more is written to it.
    Gone,
}

impl Downstream {
    fn is_open(&self) -> bool {
        matches!(self, Downstream::Open)
    }

    /// Whether anything may still be written to the client (so pings still make sense).
    fn writing(&self) -> bool {
        matches!(
            self,
            Downstream::Open | Downstream::Closing(_) | Downstream::Sending
        )
    }
}

/// Target -> client: framed target data waiting to be written, and the phase.
struct Down {
    phase: Downstream,
    buf: Option<Buf>,
    /// Raw bytes read from the target in base64 mode, before encoding.
    raw: Option<Buf>,
    start: usize,
    end: usize,
    /// The frame at `start..end` is partly written: no control frame may come between.
    started: bool,
    /// Bytes were written to the client since its last flush.
    unflushed: bool,
}

/// Client -> target: client payload waiting to be written, and the phase.
struct Up {
    phase: Upstream,
    buf: Option<Buf>,
    /// Decoded bytes in base64 mode (decoding in place could overrun unread input when a
    /// group straddles two reads).
    decoded: Option<Buf>,
    start: usize,
    end: usize,
    /// Binary mode: `start..end` is the payload of a data frame whose rest fits in the
    /// buffer behind it; it is read before writing, so the frame goes out in one write.
    held: bool,
    /// Bytes were written to the target since its last flush.
    unflushed: bool,
    /// Bytes that came with the handshake request, decoded before the first read.
    initial: Bytes,
    /// Base64 characters carried over to the next chunk (legacy mode).
    carry: [u8; 4],
    carry_len: usize,
}

/// Control frames for the client other than our close, and the heartbeat count.
struct Control {
    /// The control frame being written (pong, ping or our close) and how much of it is out;
    /// boxed, like our close while it waits, so an idle session's state has no room for one.
    writing: Option<(Box<ControlFrame>, usize)>,
    /// Pongs owed, oldest first; past MAX_PONGS the oldest is dropped (RFC 6455 5.5.3).
    /// Freed whenever it empties.
    pongs: VecDeque<ControlFrame>,
    /// A heartbeat tick asked for a ping (ticks while the socket is busy give one ping).
    ping_due: bool,
    /// Heartbeat ticks since the client's last pong.
    missed_pongs: u32,
}

struct Relay<'a, C, T> {
    client: &'a mut C,
    target: &'a mut T,
    mode: Mode,
    decoder: ClientDecoder,
    up: Up,
    down: Down,
    control: Control,
    reason: Option<CloseReason>,
    bytes_to_target: u64,
    bytes_to_client: u64,
    /// `--record`: this session's recording (boxed: most sessions have none).
    recording: Option<Box<Recording>>,
    /// `--traffic`: print frame tokens.
    traffic: bool,
    /// Most payload bytes per frame to the client in the binary modes (in base64, of the
    /// encoding): [`BUF_SIZE`], or [`TLS_DOWN_PAYLOAD`] for a TLS client.
    down_payload: usize,
}

/// Pongs queued per connection (128 bytes each) before older ones are dropped.
const MAX_PONGS: usize = 16;

/// Loop iterations with progress before yielding to other tasks.
const BUDGET: usize = 64;

impl<'a, C, T> Relay<'a, C, T>
where
    C: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    fn new(client: &'a mut C, target: &'a mut T, mode: Mode, initial: Bytes) -> Self {
        Relay {
            client,
            target,
            mode,
            decoder: match mode {
                Mode::Hixie => ClientDecoder::Hixie(hixie::Decoder::new()),
                _ => ClientDecoder::Rfc6455(Decoder::new()),
            },
            up: Up {
                phase: Upstream::Open,
                buf: None,
                decoded: None,
                start: 0,
                end: 0,
                held: false,
                unflushed: false,
                initial,
                carry: [0; 4],
                carry_len: 0,
            },
            down: Down {
                phase: Downstream::Open,
                buf: None,
                raw: None,
                start: 0,
                end: 0,
                started: false,
                unflushed: false,
            },
            control: Control {
                writing: None,
                pongs: VecDeque::new(),
                ping_due: false,
                missed_pongs: 0,
            },
            reason: None,
            bytes_to_target: 0,
            bytes_to_client: 0,
            recording: None,
            traffic: false,
            down_payload: BUF_SIZE,
        }
    }

    /// Records why the session ends (the first reason wins).
    fn set_reason(&mut self, reason: CloseReason) {
        if self.reason.is_none() {
            self.reason = Some(reason);
        }
    }

    /// Queues our close frame (unless one is under way); the target is no longer read.
    fn begin_close(&mut self, code: u16, reason: &str, why: CloseReason) {
        self.set_reason(why);
        if self.down.phase.is_open() {
            self.down.phase =
                Downstream::Closing(Box::new(self.mode.close_frame(Some(code), reason)));
        }
    }

    /// The client connection failed: end at once, without a close handshake.
    fn abort(&mut self, why: CloseReason) {
        self.set_reason(why);
        self.up.phase = Upstream::Closed;
        self.down.phase = Downstream::Gone;
        self.control.writing = None;
    }

    /// A heartbeat tick: queue a ping; false when three pings went unanswered.
    fn heartbeat(&mut self) -> bool {
        // A pong can only be seen while we read the client. Once we stopped reading it
        // (its close or a protocol error) and only our close to it is left to write, a
        // client that does not read it misses pings all the same.
        let counts = match (self.up.phase, &self.down.phase) {
            (Upstream::Open, _) => self.up.start == self.up.end,
            (_, Downstream::Closing(_) | Downstream::Sending) => true,
            _ => false,
        };
        if counts {
            if self.control.missed_pongs >= 3 {
                return false;
            }
            self.control.missed_pongs += 1;
        }
        self.control.ping_due = true;
        true
    }

    fn finished(&self) -> bool {
        self.up.phase == Upstream::Closed
            && matches!(self.down.phase, Downstream::Closed | Downstream::Gone)
    }

    fn poll_run(&mut self, cx: &mut Context<'_>) -> Poll<Progress> {
        for _ in 0..BUDGET {
            let sending = matches!(self.down.phase, Downstream::Sending);
            let mut progress = false;
            progress |= self.step_client_write(cx);
            progress |= self.step_target_write(cx);
            progress |= self.step_target_read(cx);
            progress |= self.step_client_read(cx);
            if self.finished() {
                return Poll::Ready(Progress::Finished);
            }
            if sending && matches!(self.down.phase, Downstream::Closed) && self.up.phase.is_open() {
                return Poll::Ready(Progress::AwaitingCloseReply);
            }
            if !progress {
                return Poll::Pending;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Writes control frames and framed target data to the client. Returns true on progress.
    fn step_client_write(&mut self, cx: &mut Context<'_>) -> bool {
        if let Downstream::Gone | Downstream::Closed = self.down.phase {
            return false;
        }
        if self.control.writing.is_none() && !self.down.started {
            self.control.writing = self.next_control().map(|frame| (frame, 0));
        }
        let result = if let Some((frame, written)) = &mut self.control.writing {
            match Pin::new(&mut *self.client).poll_write(cx, &frame.as_bytes()[*written..]) {
                Poll::Ready(Ok(n)) => {
                    *written += n;
                    if *written == frame.as_bytes().len() {
                        self.control.writing = None;
                    }
                    Ok(n)
                }
                Poll::Ready(Err(err)) => Err(err),
                Poll::Pending => return false,
            }
        } else if self.down.start < self.down.end {
            let buf = self.down.buf.as_deref().unwrap_or(&[]);
            match Pin::new(&mut *self.client).poll_write(cx, &buf[self.down.start..self.down.end]) {
                Poll::Ready(Ok(n)) => {
                    self.down.start += n;
                    self.down.started = self.down.start < self.down.end;
                    if self.traffic {
                        record::traffic(if self.down.started {
                            Token::ClientSendPartial
                        } else {
                            Token::ClientSend
                        });
                    }
                    Ok(n)
                }
                Poll::Ready(Err(err)) => Err(err),
                Poll::Pending => return false,
            }
        } else if self.down.unflushed {
            match Pin::new(&mut *self.client).poll_flush(cx) {
                Poll::Ready(Ok(())) => {
                    self.down.unflushed = false;
                    if let Downstream::Sending = self.down.phase {
                        // Nothing is written after our close, so it is out.
                        self.down.phase = Downstream::Closed;
                    }
                    return true;
                }
                Poll::Ready(Err(err)) => Err(err),
                Poll::Pending => return false,
            }
        } else {
            return false;
        };
        match result {
            Ok(0) => {
                self.abort(CloseReason::ClientError(io::ErrorKind::WriteZero.into()));
                true
            }
            Ok(_) => {
                self.down.unflushed = true;
                true
            }
            Err(err) => {
                self.abort(CloseReason::ClientError(err));
                true
            }
        }
    }

    /// The next control frame to send: pongs, then a ping, then (after the data frame in
    /// progress) our close.
    fn next_control(&mut self) -> Option<Box<ControlFrame>> {
        if !matches!(self.down.phase, Downstream::Open | Downstream::Closing(_)) {
            // Nothing follows our close.
            return None;
        }
        if let Some(pong) = self.control.pongs.pop_front() {
            if self.control.pongs.is_empty() {
                // Idle connections keep no queue memory.
                self.control.pongs = VecDeque::new();
            }
            return Some(Box::new(pong));
        }
        if std::mem::take(&mut self.control.ping_due) {
            return Some(Box::new(ControlFrame::ping(&[])));
        }
        if self.down.start < self.down.end {
            return None;
        }
        match std::mem::replace(&mut self.down.phase, Downstream::Sending) {
            Downstream::Closing(close) => Some(close),
            // Not closing: the phase stays what it was.
            phase => {
                self.down.phase = phase;
                None
            }
        }
    }

    /// Writes client payload to the target. Returns true on progress.
    fn step_target_write(&mut self, cx: &mut Context<'_>) -> bool {
        let progress = self.write_target(cx);
        if let Upstream::Draining = self.up.phase
            && self.up.start == self.up.end
            && !self.up.unflushed
        {
            self.up.phase = Upstream::Closed;
        }
        progress
    }

    fn write_target(&mut self, cx: &mut Context<'_>) -> bool {
        if let Upstream::Closed = self.up.phase {
            return false;
        }
        if self.up.start < self.up.end && (!self.up.held || !self.up.phase.is_open()) {
            let source = if self.mode.encodes() {
                &self.up.decoded
            } else {
                &self.up.buf
            };
            let buf = source.as_deref().unwrap_or(&[]);
            match Pin::new(&mut *self.target).poll_write(cx, &buf[self.up.start..self.up.end]) {
                Poll::Ready(Ok(0)) => self.target_failed(io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(n)) => {
                    self.up.start += n;
                    self.bytes_to_target += n as u64;
                    self.up.unflushed = true;
                    if self.traffic {
                        let done = self.up.start == self.up.end;
                        record::traffic(if done {
                            Token::TargetSend
                        } else {
                            Token::TargetSendPartial
                        });
                    }
                }
                Poll::Ready(Err(err)) => self.target_failed(err),
                Poll::Pending => return false,
            }
            true
        } else if self.up.unflushed {
            match Pin::new(&mut *self.target).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.up.unflushed = false,
                Poll::Ready(Err(err)) => self.target_failed(err),
                Poll::Pending => return false,
            }
            true
        } else {
            false
        }
    }

    /// A target write failed: what the client sent is dropped, and the client gets 1011.
    fn target_failed(&mut self, err: io::Error) {
        self.up.start = self.up.end;
        self.up.unflushed = false;
        self.begin_close(
            close_code::INTERNAL,
            "Target connection failed",
            CloseReason::TargetError(err),
        );
    }

    /// Reads the target and frames what it read. Returns true on progress.
    fn step_target_read(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.down.phase.is_open() || self.down.start < self.down.end {
            return false;
        }
        let limit = match self.mode {
            Mode::Binary | Mode::Other => self.down_payload,
            Mode::Base64 => self.down_payload / 4 * 3,
            Mode::Hixie => HIXIE_RAW,
        };
        let result = {
            let read_into = if self.mode.encodes() {
                self.down.raw.get_or_insert_with(Buf::take)
            } else {
                self.down.buf.get_or_insert_with(Buf::take)
            };
            let mut read_buf = ReadBuf::new(&mut read_into[HEADROOM..HEADROOM + limit]);
            match Pin::new(&mut *self.target).poll_read(cx, &mut read_buf) {
                Poll::Ready(Ok(())) => Ok(read_buf.filled().len()),
                Poll::Ready(Err(err)) => Err(err),
                Poll::Pending => {
                    // Nothing pending in this direction: give the buffers back while idle.
                    self.down.buf = None;
                    self.down.raw = None;
                    return false;
                }
            }
        };
        match result {
            Ok(0) => {
                self.begin_close(
                    close_code::NORMAL,
                    "Target closed",
                    CloseReason::TargetClosed,
                );
            }
            Ok(n) => self.target_data(n),
            Err(err) => {
                self.begin_close(
                    close_code::INTERNAL,
                    "Target connection failed",
                    CloseReason::TargetError(err),
                );
            }
        }
        true
    }

    /// Records, frames and counts `n` bytes just read from the target. A failed encoding
    /// ends the session with close 1011 rather than sending the client an empty frame.
    fn target_data(&mut self, n: usize) {
        self.note_target_data(n);
        match self.frame_down(n) {
            Ok(()) => self.bytes_to_client += n as u64,
            Err(err) => self.begin_close(
                close_code::INTERNAL,
                "Internal error",
                CloseReason::Encode(err),
            ),
        }
    }

    /// Records `n` bytes just read from the target (before any encoding).
    fn note_target_data(&mut self, n: usize) {
        if self.traffic {
            record::traffic(Token::TargetReceive);
        }
        if let Some(recording) = &mut self.recording {
            let raw = if self.mode.encodes() {
                &self.down.raw
            } else {
                &self.down.buf
            };
            if let Some(raw) = raw.as_deref() {
                recording.from_target(&raw[HEADROOM..HEADROOM + n]);
            }
        }
    }

    /// Puts a frame header in front of `n` bytes just read (base64-encoding them first in
    /// the legacy mode) and marks the frame ready for the client. Nothing is queued when
    /// the encoding fails.
    fn frame_down(&mut self, n: usize) -> Result<(), base64::EncodeSliceError> {
        let down = &mut self.down;
        let buf = down.buf.get_or_insert_with(Buf::take);
        let (len, kind) = match (self.mode, &down.raw) {
            (Mode::Base64 | Mode::Hixie, Some(raw)) => {
                let encoded = base64::engine::general_purpose::STANDARD
                    .encode_slice(&raw[HEADROOM..HEADROOM + n], &mut buf[HEADROOM..])?;
                (encoded, DataKind::Text)
            }
            _ => (n, DataKind::Binary),
        };
        if self.mode == Mode::Hixie {
            buf[HEADROOM - 1] = 0x00;
            buf[HEADROOM + len] = 0xff;
            down.start = HEADROOM - 1;
            down.end = HEADROOM + len + 1;
            down.started = false;
            return Ok(());
        }
        let mut header = [0u8; MAX_SERVER_HEADER];
        let header_len = frame::write_header(&mut header, frame::data_opcode(kind), len);
        let start = HEADROOM - header_len;
        buf[start..HEADROOM].copy_from_slice(&header[MAX_SERVER_HEADER - header_len..]);
        down.start = start;
        down.end = HEADROOM + len;
        down.started = false;
        Ok(())
    }

    /// Reads client frames and turns their payload into bytes for the target. Returns true
    /// on progress.
    fn step_client_read(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.up.phase.is_open() || (self.up.start < self.up.end && !self.up.held) {
            return false;
        }
        // A held partial frame keeps its payload at the front; read the rest behind it.
        let base = if self.up.held { self.up.end } else { 0 };
        let buf = self.up.buf.get_or_insert_with(Buf::take);
        // Binary modes read into the whole buffer, headroom included: a 64 KiB frame with
        // its 14-byte header then arrives in one read instead of a full read plus a 16-byte
        // one for its tail (scripts/bench counted 1.88 reads per 64 KiB frame before).
        // The encoding modes keep BUF_SIZE, which their decoded buffer is sized for.
        let limit = if self.up.held || !self.mode.encodes() {
            buf.len()
        } else {
            BUF_SIZE
        };
        let n = if !self.up.initial.is_empty() {
            let n = self.up.initial.len().min(limit - base);
            buf[base..base + n].copy_from_slice(&self.up.initial.split_to(n));
            if self.up.initial.is_empty() {
                self.up.initial = Bytes::new();
            }
            n
        } else {
            let mut read_buf = ReadBuf::new(&mut buf[base..limit]);
            match Pin::new(&mut *self.client).poll_read(cx, &mut read_buf) {
                Poll::Ready(Ok(())) => read_buf.filled().len(),
                Poll::Ready(Err(err)) => {
                    self.abort(CloseReason::ClientError(err));
                    return true;
                }
                Poll::Pending => {
                    if !self.up.held {
                        self.up.buf = None;
                        self.up.decoded = None;
                    }
                    return false;
                }
            }
        };
        if n == 0 {
            // No close frame: deliver what the client sent, but write nothing more to it.
            self.set_reason(CloseReason::ClientGone);
            self.up.phase = Upstream::Draining;
            self.down.phase = Downstream::Gone;
            return true;
        }
        self.decode_up(base, n);
        true
    }

    /// Decodes `n` freshly read client bytes; payload is packed at the front of the buffer.
    fn decode_up(&mut self, base: usize, n: usize) {
        let Some(mut buf) = self.up.buf.take() else {
            return;
        };
        let n = base + n;
        let mut pos = base;
        let mut out: Option<(usize, usize)> = self.up.held.then_some((self.up.start, self.up.end));
        self.up.held = false;
        // Once our close is under way, the client's data is dropped: only its reply counts.
        let discard = !self.down.phase.is_open();
        loop {
            let event = match self.decoder.next(&mut buf[..n], &mut pos) {
                Ok(Some(event)) => event,
                Ok(None) => break,
                Err(err) => {
                    self.protocol_error(err);
                    break;
                }
            };
            match event {
                Event::Data {
                    start,
                    end,
                    kind,
                    message_end,
                } => {
                    if discard {
                        continue;
                    }
                    if self.traffic && message_end {
                        record::traffic(Token::ClientReceive);
                    }
                    if (kind == DataKind::Binary || self.mode == Mode::Other)
                        && let Some(recording) = &mut self.recording
                    {
                        recording.client_part(&buf[start..end], message_end);
                    }
                    match (self.mode, kind) {
                        (Mode::Binary, DataKind::Text) => {
                            self.protocol_error(ProtocolError {
                                code: close_code::UNSUPPORTED,
                                reason: "Unsupported: Text frames are not supported",
                            });
                            break;
                        }
                        (Mode::Base64 | Mode::Hixie, DataKind::Text) => {
                            let (out_start, out_end) = *out.get_or_insert((0, 0));
                            match self.decode_base64(&buf[start..end], out_end, message_end) {
                                Ok(new_end) => {
                                    if let (Some(recording), Some(decoded)) =
                                        (&mut self.recording, self.up.decoded.as_deref())
                                    {
                                        recording
                                            .client_part(&decoded[out_end..new_end], message_end);
                                    }
                                    out = Some((out_start, new_end));
                                }
                                Err(err) => {
                                    self.protocol_error(err);
                                    break;
                                }
                            }
                        }
                        (Mode::Base64 | Mode::Hixie, DataKind::Binary) => {
                            // Old clients send text; raw binary frames are passed as they are.
                            let (out_start, out_end) = *out.get_or_insert((0, 0));
                            let decoded = self.up.decoded.get_or_insert_with(Buf::take);
                            decoded[out_end..out_end + (end - start)]
                                .copy_from_slice(&buf[start..end]);
                            out = Some((out_start, out_end + (end - start)));
                        }
                        (Mode::Binary, DataKind::Binary) | (Mode::Other, _) => {
                            let (out_start, out_end) = *out.get_or_insert((start, start));
                            if start != out_end {
                                buf.copy_within(start..end, out_end);
                            }
                            out = Some((out_start, out_end + (end - start)));
                        }
                    }
                }
                Event::Ping => {
                    if !discard {
                        let pongs = &mut self.control.pongs;
                        if pongs.len() >= MAX_PONGS {
                            pongs.pop_front();
                        }
                        pongs.push_back(ControlFrame::pong(self.decoder.control_payload()));
                    }
                }
                Event::Pong => self.control.missed_pongs = 0,
                Event::Close { code } => {
                    let reason = self.decoder.close_reason().to_owned();
                    if self.down.phase.is_open() {
                        // Echo the client's close, as upstream does.
                        self.down.phase =
                            Downstream::Closing(Box::new(self.mode.close_frame(code, &reason)));
                    }
                    self.set_reason(CloseReason::ClientClosed { code, reason });
                    self.up.phase = Upstream::Draining;
                    break;
                }
            }
        }
        if let Some((start, end)) = out {
            self.up.start = start;
            self.up.end = end;
            // Binary mode, mid-frame, and the rest of the frame fits behind what we have:
            // wait for it, so the frame reaches the target in one write. Longer frames
            // stream through as they arrive.
            let room = (buf.len() - end) as u64;
            self.up.held = !self.mode.encodes()
                && start < end
                && self.up.phase.is_open()
                && self
                    .decoder
                    .data_remaining()
                    .is_some_and(|rest| rest <= room);
        }
        self.up.buf = Some(buf);
    }

    /// Decodes base64 text `payload` into the decoded buffer at `out`, carrying incomplete
    /// 4-character groups over; returns the new end of the output.
    fn decode_base64(
        &mut self,
        payload: &[u8],
        mut out: usize,
        message_end: bool,
    ) -> Result<usize, ProtocolError> {
        const LENIENT: GeneralPurpose = GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
        );
        let invalid = ProtocolError {
            code: close_code::INVALID_DATA,
            reason: "Invalid base64 data",
        };
        let buf = self.up.decoded.get_or_insert_with(Buf::take);
        for &c in payload {
            if c.is_ascii_whitespace() {
                continue;
            }
            self.up.carry[self.up.carry_len] = c;
            self.up.carry_len += 1;
            if self.up.carry_len == 4 {
                let mut decoded = [0u8; 3];
                let len = LENIENT
                    .decode_slice(self.up.carry, &mut decoded)
                    .map_err(|_| invalid.clone())?;
                buf[out..out + len].copy_from_slice(&decoded[..len]);
                out += len;
                self.up.carry_len = 0;
            }
        }
        if message_end && self.up.carry_len > 0 {
            let mut decoded = [0u8; 3];
            let len = LENIENT
                .decode_slice(&self.up.carry[..self.up.carry_len], &mut decoded)
                .map_err(|_| invalid)?;
            buf[out..out + len].copy_from_slice(&decoded[..len]);
            out += len;
            self.up.carry_len = 0;
        }
        Ok(out)
    }

    /// The client broke the protocol: stop reading it, deliver what it sent before, drop
    /// target data not yet started and close with the error's code, without waiting for a
    /// reply.
    fn protocol_error(&mut self, err: ProtocolError) {
        self.up.phase = Upstream::Draining;
        if !self.down.started {
            self.down.start = self.down.end;
        }
        self.begin_close(err.code, err.reason, CloseReason::Protocol(err));
    }

    /// Closes both sides (bounded) and reports the outcome.
    async fn finish(self) -> Outcome {
        const SHUTDOWN: Duration = Duration::from_secs(2);
        let _ = tokio::time::timeout(SHUTDOWN, self.target.shutdown()).await;
        if !matches!(self.reason, Some(CloseReason::ClientError(_))) {
            let _ = tokio::time::timeout(SHUTDOWN, self.client.shutdown()).await;
        }
        Outcome {
            reason: self.reason.unwrap_or(CloseReason::ClientGone),
            bytes_to_target: self.bytes_to_target,
            bytes_to_client: self.bytes_to_client,
        }
    }
}

#[cfg(test)]
mod tests;
