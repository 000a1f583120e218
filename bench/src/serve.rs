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
//! - `R` + u64 n: sink n bytes like `U`, answering a 24-byte ack (u64 CLOCK_MONOTONIC ns when
//!   sent, u64 bytes sunk so far, u64 sequence number) after every MiB and at the end: the small
//!   messages going down while up is saturated (scenario 7, `reverse-up`);
//! - `P` + u64 n: source n bytes like `D` while reading 8-byte probes (u64 CLOCK_MONOTONIC ns
//!   when sent) and recording each probe's one-way delay; a probe of 0 ends it, answered (after
//!   the n bytes) with 32 bytes: probes, p50, p99 and max delay in ns (scenario 7,
//!   `reverse-down`). Client, proxy and target share the machine's monotonic clock.
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

/// CLOCK_MONOTONIC in nanoseconds: comparable between processes of one machine.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, which we own.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Bytes between two acks of an `R` sink.
const ACK_EVERY: u64 = 1 << 20;

/// The 24-byte ack of an `R` sink.
fn ack24(sunk: u64, seq: u64) -> [u8; 24] {
    let mut out = [0u8; 24];
    out[..8].copy_from_slice(&mono_ns().to_be_bytes());
    out[8..16].copy_from_slice(&sunk.to_be_bytes());
    out[16..].copy_from_slice(&seq.to_be_bytes());
    out
}

/// One-way delays of 8-byte probes (the `P` operation).
#[derive(Default)]
struct Probes {
    carry: Vec<u8>,
    delays: Vec<u64>,
    done: bool,
}

impl Probes {
    fn feed(&mut self, data: &[u8]) {
        self.carry.extend_from_slice(data);
        let now = mono_ns();
        let whole = self.carry.len() / 8 * 8;
        for c in self.carry[..whole].chunks_exact(8) {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            let stamp = u64::from_be_bytes(b);
            if stamp == 0 {
                self.done = true;
            } else if !self.done {
                self.delays.push(now.saturating_sub(stamp));
            }
        }
        self.carry.drain(..whole);
    }

    fn stats(&mut self) -> [u8; 32] {
        self.delays.sort_unstable();
        let n = self.delays.len();
        let pct = |p: f64| {
            if n == 0 {
                0
            } else {
                self.delays[(((n - 1) as f64) * p).round() as usize]
            }
        };
        let mut out = [0u8; 32];
        out[..8].copy_from_slice(&(n as u64).to_be_bytes());
        out[8..16].copy_from_slice(&pct(0.5).to_be_bytes());
        out[16..24].copy_from_slice(&pct(0.99).to_be_bytes());
        out[24..].copy_from_slice(&pct(1.0).to_be_bytes());
        out
    }
}

/// What the control parser asks the connection to do.
enum Action {
    Ack,
    /// A 24-byte ack of an `R` sink.
    Ack24(u64, u64),
    /// Source n bytes while reading probes.
    Probe(u64),
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
    /// The sink is an `R` sink: 24-byte acks every MiB.
    reverse: bool,
    /// Bytes sunk by the current `R` sink, and acks sent.
    sunk: u64,
    acks: u64,
    /// After `P`: the bytes that follow are probes, kept here for the probe reader.
    probing: bool,
    leftover: Vec<u8>,
}

impl Ctl {
    /// Consumes sink bytes at the front of a chunk without looking at them; pushes the acks
    /// due.
    fn sink_take(&mut self, n: usize, actions: &mut Vec<Action>) -> usize {
        let take = self.sink.min(n as u64) as usize;
        if take > 0 {
            self.sink -= take as u64;
            SUNK.fetch_add(take as u64, Ordering::Relaxed);
            if self.reverse {
                let before = self.sunk / ACK_EVERY;
                self.sunk += take as u64;
                if self.sunk / ACK_EVERY != before || self.sink == 0 {
                    self.acks += 1;
                    actions.push(Action::Ack24(self.sunk, self.acks));
                }
                if self.sink == 0 {
                    self.reverse = false;
                }
            } else if self.sink == 0 {
                actions.push(Action::Ack);
            }
        }
        take
    }

    fn sinking(&self) -> bool {
        self.sink > 0
    }

    fn feed(&mut self, mut data: &[u8], actions: &mut Vec<Action>) {
        if self.probing {
            self.leftover.extend_from_slice(data);
            return;
        }
        while !data.is_empty() && !self.held {
            if self.sink > 0 {
                let t = self.sink_take(data.len(), actions);
                data = &data[t..];
                continue;
            }
            match self.op {
                None => {
                    let op = data[0];
                    data = &data[1..];
                    match op {
                        b'U' | b'D' | b'R' | b'P' => {
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
                        if op == b'U' || op == b'R' {
                            if n == 0 {
                                actions.push(if op == b'U' {
                                    Action::Ack
                                } else {
                                    Action::Ack24(0, 0)
                                });
                            }
                            self.sink = n;
                            self.reverse = op == b'R' && n > 0;
                            self.sunk = 0;
                            self.acks = 0;
                        } else if op == b'P' {
                            self.probing = true;
                            self.leftover.extend_from_slice(data);
                            actions.push(Action::Probe(n));
                            return;
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
                Action::Ack24(sunk, seq) => s.write_all(&ack24(sunk, seq)).await?,
                Action::Probe(n) => {
                    // The probe reader is a task of its own: the saturating writer must not
                    // delay it.
                    let mut probes = Probes::default();
                    probes.feed(&std::mem::take(&mut ctl.leftover));
                    let (mut rd, mut wr) = s.into_split();
                    let read = tokio::spawn(async move {
                        let mut b = [0u8; 4096];
                        while !probes.done {
                            let k = rd.read(&mut b).await?;
                            if k == 0 {
                                anyhow::bail!("EOF while reading probes");
                            }
                            probes.feed(&b[..k]);
                        }
                        Ok(probes)
                    });
                    source_raw(&mut wr, &zeros, n).await?;
                    let mut probes = read.await??;
                    wr.write_all(&probes.stats()).await?;
                    return Ok(());
                }
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

async fn source_raw<W: AsyncWriteExt + Unpin>(w: &mut W, zeros: &[u8], mut n: u64) -> Result<()> {
    while n > 0 {
        let k = (n as usize).min(CHUNK);
        w.write_all(&zeros[..k]).await?;
        SOURCED.fetch_add(k as u64, Ordering::Relaxed);
        n -= k as u64;
    }
    Ok(())
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
                        ctl.sink_take(data.len(), &mut actions)
                    } else {
                        0
                    };
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
                Action::Ack24(sunk, seq) => {
                    s.write_all(&ws::frame(ws::OP_BINARY, &ack24(sunk, seq), None))
                        .await?
                }
                Action::Probe(mut n) => {
                    let mut probes = Probes::default();
                    probes.feed(&std::mem::take(&mut ctl.leftover));
                    let (mut rd, mut wr) = s.into_split();
                    let mut dec = std::mem::take(&mut dec);
                    let read = tokio::spawn(async move {
                        let mut buf = vec![0u8; 16 * 1024];
                        while !probes.done {
                            let k = rd.read(&mut buf).await?;
                            if k == 0 {
                                anyhow::bail!("EOF while reading probes");
                            }
                            dec.feed(&mut buf[..k], &mut |ev| {
                                if let Event::Payload {
                                    opcode: 0..=2,
                                    data,
                                    mask,
                                    pos,
                                } = ev
                                {
                                    if let Some(key) = mask {
                                        ws::apply_mask(data, key, pos);
                                    }
                                    probes.feed(data);
                                }
                                Ok(())
                            })?;
                        }
                        Ok(probes)
                    });
                    while n > 0 {
                        let k = (n as usize).min(CHUNK);
                        if k == CHUNK {
                            wr.write_all(&big).await?;
                        } else {
                            wr.write_all(&ws::frame(ws::OP_BINARY, &big[h..h + k], None))
                                .await?;
                        }
                        SOURCED.fetch_add(k as u64, Ordering::Relaxed);
                        n -= k as u64;
                    }
                    let mut probes = read.await??;
                    wr.write_all(&ws::frame(ws::OP_BINARY, &probes.stats(), None))
                        .await?;
                    let _ = wr.shutdown().await;
                    return Ok(());
                }
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
