//! The targets every peer relays to, in one child process (`ws-bench serve`).
//!
//! Four listeners, all on 127.0.0.1 port 0, announced on stdout in one line:
//! - `tcp-echo`: plain TCP, echoes every byte (what websockify-like proxies connect to);
//! - `tcp-ctl`: plain TCP speaking the control protocol below (sink, source, never-read);
//! - `ws-echo` and `ws-ctl`: the same two as WebSocket servers, for the "direct" path and for
//!   the plain TCP relay (the client then speaks WebSocket end to end).
//!
//! Control protocol, carried in the byte stream (or in the payload of binary frames):
//! - `U` + u64 n (big endian): sink n bytes, then answer one byte `A`;
//! - `D` + u64 n: source n bytes (64 KiB writes, or 64 KiB binary frames);
//! - `H`: never read again (held until a release, so a proxy writing to it stalls);
//! - `S`: answer 16 bytes, total bytes sunk and sourced by this process (for stall detection);
//! - `X`: release every held connection, answer `A`.
//!
//! The process exits when its stdin closes, so it never outlives the harness.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::ws::{self, Decoder, Event};

pub static SUNK: AtomicU64 = AtomicU64::new(0);
pub static SOURCED: AtomicU64 = AtomicU64::new(0);

const CHUNK: usize = 64 * 1024;

/// Runs the four targets until stdin closes.
pub async fn run() -> Result<()> {
    let tcp_echo = TcpListener::bind("127.0.0.1:0").await?;
    let tcp_ctl = TcpListener::bind("127.0.0.1:0").await?;
    let ws_echo = TcpListener::bind("127.0.0.1:0").await?;
    let ws_ctl = TcpListener::bind("127.0.0.1:0").await?;
    let (release_tx, release_rx) = watch::channel(0u64);
    let release_tx = std::sync::Arc::new(release_tx);
    println!(
        "ports tcp-echo={} tcp-ctl={} ws-echo={} ws-ctl={}",
        tcp_echo.local_addr()?.port(),
        tcp_ctl.local_addr()?.port(),
        ws_echo.local_addr()?.port(),
        ws_ctl.local_addr()?.port()
    );
    crate::exit_when_stdin_closes();
    let accept = |l: TcpListener, kind: u8| {
        let release_rx = release_rx.clone();
        let release_tx = release_tx.clone();
        tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let _ = s.set_nodelay(true);
                let rx = release_rx.clone();
                let tx = release_tx.clone();
                tokio::spawn(async move {
                    let _ = match kind {
                        0 => tcp_echo_conn(s).await,
                        1 => tcp_ctl_conn(s, rx, tx).await,
                        2 => ws_echo_conn(s).await,
                        _ => ws_ctl_conn(s, rx, tx).await,
                    };
                });
            }
        })
    };
    let tasks = [
        accept(tcp_echo, 0),
        accept(tcp_ctl, 1),
        accept(ws_echo, 2),
        accept(ws_ctl, 3),
    ];
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

async fn tcp_echo_conn(mut s: TcpStream) -> Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        s.write_all(&buf[..n]).await?;
    }
}

/// What the control parser asks the connection to do.
enum Action {
    Ack,
    Source(u64),
    Hold,
    Stats,
    Release,
}

/// Parses the control protocol from payload bytes.
#[derive(Default)]
struct Ctl {
    op: Option<u8>,
    len: [u8; 8],
    have: usize,
    /// Bytes still to sink before acknowledging.
    sink: u64,
    held: bool,
}

impl Ctl {
    /// Consumes sink bytes at the front of a chunk without looking at them.
    fn sink_take(&mut self, n: usize) -> usize {
        let take = self.sink.min(n as u64) as usize;
        if take > 0 {
            self.sink -= take as u64;
            SUNK.fetch_add(take as u64, Ordering::Relaxed);
        }
        take
    }

    fn sinking(&self) -> bool {
        self.sink > 0
    }

    fn feed(&mut self, mut data: &[u8], actions: &mut Vec<Action>) {
        while !data.is_empty() && !self.held {
            if self.sink > 0 {
                let t = self.sink_take(data.len());
                data = &data[t..];
                if self.sink == 0 {
                    actions.push(Action::Ack);
                }
                continue;
            }
            match self.op {
                None => {
                    let op = data[0];
                    data = &data[1..];
                    match op {
                        b'U' | b'D' => {
                            self.op = Some(op);
                            self.have = 0;
                        }
                        b'H' => {
                            self.held = true;
                            actions.push(Action::Hold);
                        }
                        b'S' => actions.push(Action::Stats),
                        b'X' => actions.push(Action::Release),
                        _ => {}
                    }
                }
                Some(op) => {
                    let take = (8 - self.have).min(data.len());
                    self.len[self.have..self.have + take].copy_from_slice(&data[..take]);
                    self.have += take;
                    data = &data[take..];
                    if self.have == 8 {
                        let n = u64::from_be_bytes(self.len);
                        self.op = None;
                        if op == b'U' {
                            if n == 0 {
                                actions.push(Action::Ack);
                            }
                            self.sink = n;
                        } else {
                            actions.push(Action::Source(n));
                        }
                    }
                }
            }
        }
    }
}

fn stats() -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&SUNK.load(Ordering::Relaxed).to_be_bytes());
    out[8..].copy_from_slice(&SOURCED.load(Ordering::Relaxed).to_be_bytes());
    out
}

/// Waits until the release generation moves past the one seen at the start (or 10 minutes).
async fn hold(mut rx: watch::Receiver<u64>) {
    let start = *rx.borrow_and_update();
    let _ = tokio::time::timeout(Duration::from_secs(600), async {
        while rx.changed().await.is_ok() {
            if *rx.borrow() != start {
                return;
            }
        }
    })
    .await;
}

async fn tcp_ctl_conn(
    mut s: TcpStream,
    rx: watch::Receiver<u64>,
    tx: std::sync::Arc<watch::Sender<u64>>,
) -> Result<()> {
    let mut buf = vec![0u8; CHUNK];
    let zeros = vec![0u8; CHUNK];
    let mut ctl = Ctl::default();
    let mut actions = Vec::new();
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        ctl.feed(&buf[..n], &mut actions);
        for a in actions.drain(..) {
            match a {
                Action::Ack => s.write_all(b"A").await?,
                Action::Source(mut n) => {
                    while n > 0 {
                        let k = (n as usize).min(CHUNK);
                        s.write_all(&zeros[..k]).await?;
                        SOURCED.fetch_add(k as u64, Ordering::Relaxed);
                        n -= k as u64;
                    }
                }
                Action::Hold => {
                    hold(rx.clone()).await;
                    return Ok(());
                }
                Action::Stats => s.write_all(&stats()).await?,
                Action::Release => {
                    tx.send_modify(|g| *g += 1);
                    s.write_all(b"A").await?;
                }
            }
        }
    }
}

async fn ws_echo_conn(mut s: TcpStream) -> Result<()> {
    let initial = ws::server_handshake(&mut s).await?;
    let mut dec = Decoder::new();
    let mut buf = vec![0u8; CHUNK];
    let mut pending = initial;
    let mut msg = Vec::new();
    let mut control = Vec::new();
    let mut out: Vec<u8> = Vec::new();
    loop {
        let n = if !pending.is_empty() {
            let n = pending.len().min(buf.len());
            buf[..n].copy_from_slice(&pending[..n]);
            pending.drain(..n);
            n
        } else {
            s.read(&mut buf).await?
        };
        if n == 0 {
            return Ok(());
        }
        let mut close = false;
        dec.feed(&mut buf[..n], &mut |ev| {
            match ev {
                Event::Start { len, .. } if len > 16 << 20 => anyhow::bail!("echo frame too large"),
                Event::Payload {
                    opcode,
                    data,
                    mask,
                    pos,
                } => {
                    if let Some(k) = mask {
                        ws::apply_mask(data, k, pos);
                    }
                    if opcode >= 0x8 {
                        control.extend_from_slice(data);
                    } else {
                        msg.extend_from_slice(data);
                    }
                }
                Event::End {
                    opcode: ws::OP_CLOSE,
                    ..
                } => {
                    out.extend(ws::frame(ws::OP_CLOSE, &control, None));
                    close = true;
                }
                Event::End {
                    opcode: ws::OP_PING,
                    ..
                } => {
                    out.extend(ws::frame(ws::OP_PONG, &control, None));
                    control.clear();
                }
                Event::End { opcode, .. } if opcode >= 0x8 => control.clear(),
                Event::End { fin: true, .. } => {
                    out.extend(ws::frame(ws::OP_BINARY, &msg, None));
                    msg.clear();
                }
                _ => {}
            }
            Ok(())
        })?;
        if !out.is_empty() {
            s.write_all(&out).await?;
            out.clear();
        }
        if close {
            let _ = s.shutdown().await;
            return Ok(());
        }
    }
}

async fn ws_ctl_conn(
    mut s: TcpStream,
    rx: watch::Receiver<u64>,
    tx: std::sync::Arc<watch::Sender<u64>>,
) -> Result<()> {
    let initial = ws::server_handshake(&mut s).await?;
    // One precomputed 64 KiB server frame (unmasked, as servers send).
    let mut big = vec![0u8; 14 + CHUNK];
    let mut hdr = [0u8; 14];
    let h = ws::header(&mut hdr, true, ws::OP_BINARY, CHUNK as u64, None);
    big[..h].copy_from_slice(&hdr[..h]);
    big.truncate(h + CHUNK);
    let mut dec = Decoder::new();
    let mut buf = vec![0u8; CHUNK];
    let mut pending = initial;
    let mut ctl = Ctl::default();
    let mut actions = Vec::new();
    let mut close = false;
    loop {
        let n = if !pending.is_empty() {
            let n = pending.len().min(buf.len());
            buf[..n].copy_from_slice(&pending[..n]);
            pending.drain(..n);
            n
        } else {
            s.read(&mut buf).await?
        };
        if n == 0 {
            return Ok(());
        }
        dec.feed(&mut buf[..n], &mut |ev| {
            match ev {
                Event::Payload {
                    opcode: 0..=2,
                    data,
                    mask,
                    pos,
                } => {
                    // Sunk payload is counted, not unmasked: only control bytes are read.
                    let t = if ctl.sinking() {
                        ctl.sink_take(data.len())
                    } else {
                        0
                    };
                    if t > 0 && !ctl.sinking() {
                        actions.push(Action::Ack);
                    }
                    let rest = &mut data[t..];
                    if !rest.is_empty() {
                        if let Some(k) = mask {
                            ws::apply_mask(rest, k, pos + t as u64);
                        }
                        ctl.feed(rest, &mut actions);
                    }
                }
                Event::End {
                    opcode: ws::OP_CLOSE,
                    ..
                } => close = true,
                _ => {}
            }
            Ok(())
        })?;
        for a in actions.drain(..) {
            match a {
                Action::Ack => s.write_all(&ws::frame(ws::OP_BINARY, b"A", None)).await?,
                Action::Source(mut n) => {
                    while n > 0 {
                        let k = (n as usize).min(CHUNK);
                        if k == CHUNK {
                            s.write_all(&big).await?;
                        } else {
                            s.write_all(&ws::frame(ws::OP_BINARY, &big[h..h + k], None))
                                .await?;
                        }
                        SOURCED.fetch_add(k as u64, Ordering::Relaxed);
                        n -= k as u64;
                    }
                }
                Action::Hold => {
                    hold(rx.clone()).await;
                    return Ok(());
                }
                Action::Stats => {
                    s.write_all(&ws::frame(ws::OP_BINARY, &stats(), None))
                        .await?
                }
                Action::Release => {
                    tx.send_modify(|g| *g += 1);
                    s.write_all(&ws::frame(ws::OP_BINARY, b"A", None)).await?;
                }
            }
        }
        if close {
            let _ = s.write_all(&ws::close_frame(1000, None)).await;
            let _ = s.shutdown().await;
            return Ok(());
        }
    }
}
