//! `ws-bench soak` and `ws-bench spike`: long-running checks of one websockify binary.
//!
//! Both start their own TCP echo target (in this process) and websockify with `--inetd` on a
//! listener bound here, so no port is ever guessed; websockify's stderr goes to a log file.
//!
//! - soak: `--conns` connections at all times, each sending messages of random sizes (0 to
//!   `--max-size`) and reading them back, concurrently, checking every message by SHA-256;
//!   a connection closes after a random number of messages and a new one takes its place.
//!   websockify's RSS is sampled every `--sample` seconds. Fails on any mismatch, failed
//!   connection, panic in the log, or RSS drift of 5% or more between the window after the
//!   warm-up and the window at the end.
//! - spike: opens `--count` idle connections, closes them all, and reports websockify's RSS
//!   before, with them open, and once they are all gone (item 9 of issue 11).

use std::fs::File;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::procfs;
use crate::ws::{self, Decoder, Event, Rng};

const MIB: f64 = 1024.0 * 1024.0;

/// How long sessions get to finish the message they are in once the time is up.
const AFTER_STOP: Duration = Duration::from_secs(120);

/// How long a session waits for websockify's answer to its close.
const CLOSE_WAIT: Duration = Duration::from_secs(60);

/// Opens connections and performs their handshakes on a thread of its own, so that a new
/// connection sends its request at once even while the soak's runtime is busy hashing (else
/// websockify's 3 s first-byte deadline could end it: a fault of the load generator, not of
/// websockify).
#[derive(Clone)]
struct Connector {
    requests: tokio::sync::mpsc::Sender<(SocketAddr, u64, Opened)>,
}

type Opened = tokio::sync::oneshot::Sender<Result<(std::net::TcpStream, Vec<u8>, Rng)>>;

impl Connector {
    fn start() -> Result<Connector> {
        let (requests, mut rx) = tokio::sync::mpsc::channel::<(SocketAddr, u64, Opened)>(1024);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the connector's runtime")?;
        std::thread::Builder::new()
            .name("soak-connector".into())
            .spawn(move || {
                rt.block_on(async move {
                    while let Some((addr, seed, reply)) = rx.recv().await {
                        tokio::spawn(async move {
                            let opened = async {
                                let socket = small_buffers(tokio::net::TcpSocket::new_v4()?)?;
                                let mut stream = socket
                                    .connect(addr)
                                    .await
                                    .with_context(|| format!("connecting to {addr}"))?;
                                stream.set_nodelay(true)?;
                                let mut rng = Rng::new(seed);
                                let initial =
                                    ws::client_handshake(&mut stream, &addr.to_string(), &mut rng)
                                        .await?;
                                Ok((stream.into_std()?, initial, rng))
                            };
                            let _ = reply.send(opened.await);
                        });
                    }
                });
            })
            .context("cannot start the connector thread")?;
        Ok(Connector { requests })
    }

    /// A connection to `addr` past its handshake, in the caller's runtime.
    async fn open(&self, addr: SocketAddr, seed: u64) -> Result<(TcpStream, Vec<u8>, Rng)> {
        let (reply, opened) = tokio::sync::oneshot::channel();
        self.requests
            .send((addr, seed, reply))
            .await
            .map_err(|_| anyhow::anyhow!("the connector thread is gone"))?;
        let (stream, initial, rng) = opened
            .await
            .map_err(|_| anyhow::anyhow!("the connector thread is gone"))??;
        Ok((TcpStream::from_std(stream)?, initial, rng))
    }
}

/// Bytes generated, hashed and written per step of a soak writer.
const CHUNK: usize = 64 * 1024;

/// Settings of `ws-bench soak`.
pub struct SoakOpts {
    pub websockify: PathBuf,
    pub seconds: u64,
    pub conns: usize,
    pub max_size: usize,
    pub sample: Duration,
    pub log: PathBuf,
    pub max_drift_pct: f64,
}

/// Settings of `ws-bench spike`.
pub struct SpikeOpts {
    pub websockify: PathBuf,
    pub count: usize,
    pub log: PathBuf,
}

/// The in-process TCP echo target; counts the connections it holds.
struct Echo {
    addr: SocketAddr,
    open: Arc<AtomicUsize>,
}

async fn echo_target() -> Result<Echo> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind("127.0.0.1:0".parse()?)?;
    let listener = socket.listen(4096).context("cannot bind the echo target")?;
    let addr = listener.local_addr()?;
    let open = Arc::new(AtomicUsize::new(0));
    let count = open.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let count = count.clone();
            count.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let _ = s.set_nodelay(true);
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
                count.fetch_sub(1, Ordering::Relaxed);
            });
        }
    });
    Ok(Echo { addr, open })
}

/// Socket buffers of the load generator's sockets (clients and echo target). Left to
/// autotune, 2,000 loopback sockets moving 1 MiB messages queue gigabytes in the kernel, TCP
/// memory pressure sets in, and segments are dropped and retransmitted with growing
/// timeouts: sessions then stall for minutes with every process idle.
const SOCKET_BUFFER: u32 = 256 * 1024;

fn small_buffers(socket: tokio::net::TcpSocket) -> Result<tokio::net::TcpSocket> {
    socket.set_recv_buffer_size(SOCKET_BUFFER)?;
    socket.set_send_buffer_size(SOCKET_BUFFER)?;
    Ok(socket)
}

/// websockify under test, killed when dropped.
struct Proxy {
    child: Child,
    addr: SocketAddr,
}

impl Proxy {
    fn start(exe: &Path, target: SocketAddr, log: &Path) -> Result<Proxy> {
        // A backlog of 4,096: a thousand clients connect at once.
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind("127.0.0.1:0".parse()?)?;
        let listener = socket
            .listen(4096)
            .context("cannot bind websockify's listener")?
            .into_std()?;
        listener.set_nonblocking(false)?;
        let addr = listener.local_addr()?;
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let out = File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
        let mut cmd = Command::new(exe);
        cmd.args(["--inetd", &target.to_string()])
            .stdin(Stdio::from(OwnedFd::from(listener)))
            .stdout(out.try_clone()?)
            .stderr(out)
            .env_remove("RUST_LOG");
        // WS_BENCH_RUST_LOG becomes websockify's RUST_LOG (e.g. to see what logging costs).
        if let Ok(filter) = std::env::var("WS_BENCH_RUST_LOG") {
            cmd.env("RUST_LOG", filter);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", exe.display()))?;
        Ok(Proxy { child, addr })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Open descriptors of `pid`.
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Lines of the log that report a panic.
fn panics_in(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("panicked"))
        .map(str::to_owned)
        .collect()
}

/// Fills `buf` with pseudo-random bytes.
fn fill(rng: &mut Rng, buf: &mut [u8]) {
    let mut chunks = buf.chunks_exact_mut(8);
    for c in &mut chunks {
        c.copy_from_slice(&rng.next_u64().to_ne_bytes());
    }
    let rest = chunks.into_remainder();
    let last = rng.next_u64().to_ne_bytes();
    rest.copy_from_slice(&last[..rest.len()]);
}

/// Counters shared by every soak connection.
#[derive(Default)]
struct Stats {
    messages: AtomicU64,
    bytes: AtomicU64,
    mismatches: AtomicU64,
    errors: AtomicU64,
    sessions: AtomicU64,
}

/// One soak connection: `messages` messages of random sizes, each read back and compared by
/// SHA-256 while the next ones are sent; then a close handshake.
async fn soak_session(
    connector: Connector,
    addr: SocketAddr,
    seed: u64,
    messages: u64,
    max_size: usize,
    stop: Instant,
    stats: Arc<Stats>,
) -> Result<()> {
    let (stream, initial, mut rng) = connector.open(addr, seed).await?;
    let (mut rd, mut wr) = stream.into_split();
    // What the writer sends, in order: each message's size, then (once sent) its digest.
    // Bounded: the writer runs at most a few messages ahead of the reader.
    type Sent = (usize, tokio::sync::oneshot::Receiver<[u8; 32]>);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Sent>(4);
    let writer = async move {
        let mut chunk = vec![0u8; CHUNK];
        for _ in 0..messages {
            if Instant::now() >= stop {
                break;
            }
            let size = rng.below(max_size as u64 + 1) as usize;
            let (digest_tx, digest_rx) = tokio::sync::oneshot::channel();
            if tx.send((size, digest_rx)).await.is_err() {
                bail!("the reader stopped early");
            }
            // One message in one to four frames (the proxy forwards frames, not messages),
            // generated, hashed, masked and written 64 KiB at a time, so that no poll of
            // this task holds a runtime thread for long (new connections must not wait).
            let frames = 1 + rng.below(4) as usize;
            let step = size.div_ceil(frames).max(1);
            let mut hasher = Sha256::new();
            let mut left = size;
            loop {
                let len = left.min(step);
                let key = rng.mask_key();
                let mut hdr = [0u8; 14];
                let n = ws::header(&mut hdr, true, ws::OP_BINARY, len as u64, Some(key));
                wr.write_all(&hdr[..n]).await.context("sending a frame")?;
                let mut pos = 0usize;
                while pos < len {
                    let part = &mut chunk[..(len - pos).min(CHUNK)];
                    fill(&mut rng, part);
                    hasher.update(&*part);
                    ws::apply_mask(part, key, pos as u64);
                    wr.write_all(part).await.context("sending a frame")?;
                    pos += part.len();
                }
                left -= len;
                if left == 0 {
                    break;
                }
            }
            let _ = digest_tx.send(hasher.finalize().into());
        }
        Ok(wr)
    };
    let counters = stats.clone();
    let reader = async move {
        let stats = counters;
        let mut dec = Decoder::new();
        let mut rbuf = vec![0u8; 64 * 1024];
        let mut pending: Vec<u8> = initial;
        let mut decoded: Vec<u8> = Vec::new();
        let mut closed: Option<u16> = None;
        while let Some((size, digest)) = rx.recv().await {
            let mut hasher = Sha256::new();
            let mut left = size;
            while left > 0 {
                if decoded.is_empty() {
                    let mut carry = std::mem::take(&mut pending);
                    let chunk: &mut [u8] = if carry.is_empty() {
                        let n = rd.read(&mut rbuf).await.context("reading the echo")?;
                        if n == 0 {
                            bail!(
                                "websockify closed the connection with {left} of {size} bytes due"
                            );
                        }
                        &mut rbuf[..n]
                    } else {
                        &mut carry[..]
                    };
                    dec.feed(chunk, &mut |ev| {
                        match ev {
                            Event::Payload {
                                opcode: ws::OP_BINARY | ws::OP_CONT,
                                data,
                                mask,
                                pos,
                            } => {
                                if let Some(key) = mask {
                                    ws::apply_mask(data, key, pos);
                                }
                                decoded.extend_from_slice(data);
                            }
                            Event::End {
                                opcode: ws::OP_CLOSE,
                                ..
                            } => {
                                closed.get_or_insert(1005);
                            }
                            Event::Payload {
                                opcode: ws::OP_CLOSE,
                                data,
                                ..
                            } if data.len() >= 2 => {
                                closed = Some(u16::from_be_bytes([data[0], data[1]]));
                            }
                            _ => {}
                        }
                        Ok(())
                    })?;
                    if decoded.is_empty()
                        && let Some(code) = closed
                    {
                        bail!("websockify sent close {code} with {left} of {size} bytes due");
                    }
                }
                let take = left.min(decoded.len());
                hasher.update(&decoded[..take]);
                decoded.drain(..take);
                left -= take;
            }
            let got: [u8; 32] = hasher.finalize().into();
            let Ok(digest) = digest.await else {
                bail!("the writer stopped in the middle of a message");
            };
            stats.messages.fetch_add(1, Ordering::Relaxed);
            stats.bytes.fetch_add(size as u64, Ordering::Relaxed);
            if got != digest {
                stats.mismatches.fetch_add(1, Ordering::Relaxed);
                eprintln!("soak: SHA-256 mismatch on a message of {size} bytes");
            }
        }
        if !decoded.is_empty() {
            stats.mismatches.fetch_add(1, Ordering::Relaxed);
            eprintln!(
                "soak: {} bytes came back that were never sent",
                decoded.len()
            );
        }
        Ok((rd, dec, rbuf))
    };
    let (wr, rd) = tokio::join!(writer, reader);
    let (mut wr, (mut rd, mut dec, mut rbuf)) = (wr?, rd?);
    // Close handshake: our close, then websockify's answer (or EOF), bounded.
    wr.write_all(&ws::close_frame(1000, Some(Rng::new(seed ^ 1).mask_key())))
        .await
        .context("sending close")?;
    let mut answered = false;
    let deadline = tokio::time::Instant::now() + CLOSE_WAIT;
    while !answered {
        let n = match tokio::time::timeout_at(deadline, rd.read(&mut rbuf)).await {
            Ok(r) => r.context("reading the close answer")?,
            Err(_) => bail!("no close answer within {CLOSE_WAIT:?}"),
        };
        if n == 0 {
            break;
        }
        dec.feed(&mut rbuf[..n], &mut |ev| {
            if let Event::End {
                opcode: ws::OP_CLOSE,
                ..
            } = ev
            {
                answered = true;
            }
            Ok(())
        })?;
    }
    let _ = wr.shutdown().await;
    stats.sessions.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Runs the soak; returns the process exit status (0: passed).
pub async fn soak(opts: SoakOpts) -> Result<i32> {
    let nofile = procfs::raise_nofile();
    if (nofile as usize) < opts.conns * 3 + 100 {
        bail!(
            "the open-file limit is {nofile}, too low for {} connections (each costs this \
             process two descriptors and websockify two): raise it with ulimit -n",
            opts.conns
        );
    }
    let echo = echo_target().await?;
    let proxy = Proxy::start(&opts.websockify, echo.addr, &opts.log)?;
    let pid = proxy.pid();
    let addr = proxy.addr;
    let total = Duration::from_secs(opts.seconds.max(1));
    let start = Instant::now();
    let stop = start + total;
    let stats = Arc::new(Stats::default());
    eprintln!(
        "soak: {} connections, messages of 0 to {} bytes, {} s, websockify pid {pid} ({}), log {}",
        opts.conns,
        opts.max_size,
        total.as_secs(),
        opts.websockify.display(),
        opts.log.display()
    );
    // Each slot keeps one connection open until the end, one after another.
    let connector = Connector::start()?;
    let mut slots = tokio::task::JoinSet::new();
    for slot in 0..opts.conns {
        let stats = stats.clone();
        let connector = connector.clone();
        let max_size = opts.max_size;
        slots.spawn(async move {
            let mut rng = Rng::new(0x5eed_0000 + slot as u64);
            // Spread the first handshakes over the first second.
            tokio::time::sleep(Duration::from_micros(rng.below(1_000_000))).await;
            while Instant::now() < stop {
                let messages = 1 + rng.below(20);
                let seed = rng.next_u64();
                let run = soak_session(
                    connector.clone(),
                    addr,
                    seed,
                    messages,
                    max_size,
                    stop,
                    stats.clone(),
                );
                // A session ends by itself soon after `stop`; the bound catches a hang.
                let left = stop.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left + AFTER_STOP, run).await {
                    Ok(Ok(())) => {}
                    Ok(Err(err)) => {
                        if stats.errors.fetch_add(1, Ordering::Relaxed) < 10 {
                            eprintln!("soak: a session failed: {err:#}");
                        }
                    }
                    Err(_) => {
                        stats.errors.fetch_add(1, Ordering::Relaxed);
                        eprintln!("soak: a session still ran {AFTER_STOP:?} after the end");
                    }
                }
            }
        });
    }
    // Sample RSS until every slot is done.
    let mut samples: Vec<(f64, u64)> = Vec::new();
    // The warm-up ends once as many messages came back as there are connections (on
    // average one round per connection: every session has its buffers in play).
    let mut warmed_at: Option<f64> = None;
    let mut tick = tokio::time::interval(opts.sample);
    let mut last_print = Instant::now();
    loop {
        tokio::select! {
            done = slots.join_next() => {
                if done.is_none() {
                    break;
                }
            }
            _ = tick.tick() => {
                let t = start.elapsed().as_secs_f64();
                if t <= total.as_secs_f64() {
                    samples.push((t, procfs::rss_one(pid)));
                }
                if warmed_at.is_none()
                    && stats.messages.load(Ordering::Relaxed) >= opts.conns as u64
                {
                    warmed_at = Some(t);
                }
                if last_print.elapsed() >= Duration::from_secs(30) {
                    last_print = Instant::now();
                    eprintln!(
                        "soak: {:>5.0} s  rss {:>7.1} MiB  messages {}  {:.1} GiB  mismatches {}  errors {}",
                        t,
                        procfs::rss_one(pid) as f64 / MIB,
                        stats.messages.load(Ordering::Relaxed),
                        stats.bytes.load(Ordering::Relaxed) as f64 / 1024.0 / MIB,
                        stats.mismatches.load(Ordering::Relaxed),
                        stats.errors.load(Ordering::Relaxed),
                    );
                }
            }
        }
    }
    // Sessions all closed: websockify should let go of every target connection.
    let drained = Instant::now();
    while echo.open.load(Ordering::Relaxed) > 0 && drained.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let left_open = echo.open.load(Ordering::Relaxed);
    let rss_idle = procfs::rss_one(pid);
    let fds_idle = fd_count(pid);
    let alive = matches!(
        Command::new("kill").args(["-0", &pid.to_string()]).status(),
        Ok(s) if s.success()
    );
    drop(proxy);
    let panics = panics_in(&opts.log);

    // Warm-up: the first fifth of the run, or longer until one round per connection came
    // back. Drift: the highest RSS of the window right after the warm-up against the
    // highest of the last window (each a fifth of the run, or less if the warm-up was long).
    let secs = total.as_secs_f64();
    let sample_secs = opts.sample.as_secs_f64();
    let warm = (secs / 5.0).max(warmed_at.unwrap_or(secs));
    let window = (secs / 5.0).min((secs - warm) / 2.0);
    let measured = window >= sample_secs * 2.0;
    let peak_in = |from: f64, to: f64| {
        samples
            .iter()
            .filter(|(t, _)| *t >= from && *t <= to)
            .map(|&(_, r)| r)
            .max()
            .unwrap_or(0)
    };
    let rss_warm = peak_in(warm, warm + window);
    let rss_end = peak_in(secs - window, secs);
    let rss_peak = samples.iter().map(|&(_, r)| r).max().unwrap_or(0);
    let drift = if measured && rss_warm > 0 {
        (rss_end as f64 - rss_warm as f64) / rss_warm as f64 * 100.0
    } else {
        0.0
    };
    let mismatches = stats.mismatches.load(Ordering::Relaxed);
    let errors = stats.errors.load(Ordering::Relaxed);
    println!(
        "soak: duration            {secs:.0} s, {} connections",
        opts.conns
    );
    println!(
        "soak: sessions            {} completed, {} failed",
        stats.sessions.load(Ordering::Relaxed),
        errors
    );
    println!(
        "soak: messages            {} ({:.2} GiB each way)",
        stats.messages.load(Ordering::Relaxed),
        stats.bytes.load(Ordering::Relaxed) as f64 / 1024.0 / MIB
    );
    println!("soak: SHA-256 mismatches  {mismatches}");
    println!("soak: panics in the log   {}", panics.len());
    for p in panics.iter().take(5) {
        println!("soak:   {p}");
    }
    println!(
        "soak: RSS after warm-up   {:.1} MiB (highest in {warm:.0}-{:.0} s)",
        rss_warm as f64 / MIB,
        warm + window
    );
    println!(
        "soak: RSS at the end      {:.1} MiB (highest in {:.0}-{secs:.0} s)",
        rss_end as f64 / MIB,
        secs - window
    );
    if measured {
        println!("soak: RSS drift           {drift:+.2}%");
    } else {
        println!(
            "soak: RSS drift           not measured: the warm-up ({warm:.0} s) left too little of the run"
        );
    }
    println!("soak: RSS peak            {:.1} MiB", rss_peak as f64 / MIB);
    println!(
        "soak: all closed          RSS {:.1} MiB, {fds_idle} descriptors, {left_open} target connections left",
        rss_idle as f64 / MIB
    );
    let mut failed = Vec::new();
    if mismatches > 0 {
        failed.push(format!("{mismatches} mismatches"));
    }
    if errors > 0 {
        failed.push(format!("{errors} failed sessions"));
    }
    if !panics.is_empty() {
        failed.push(format!("{} panics", panics.len()));
    }
    if drift >= opts.max_drift_pct {
        failed.push(format!("RSS drift {drift:.2}% >= {}%", opts.max_drift_pct));
    }
    if !measured {
        failed.push(format!(
            "warm-up took {warm:.0} of {secs:.0} s: run longer to measure drift"
        ));
    }
    if !alive {
        failed.push("websockify died".to_owned());
    }
    if left_open > 0 {
        failed.push(format!("{left_open} target connections still open"));
    }
    if failed.is_empty() {
        println!("soak: PASSED");
        Ok(0)
    } else {
        println!("soak: FAILED: {}", failed.join(", "));
        Ok(1)
    }
}

/// Opens one connection, echoes 32 bytes, and returns it.
async fn open_idle(addr: SocketAddr, seed: u64) -> Result<ws::Client> {
    let dial = ws::Dial {
        addr,
        raw: false,
        proxy_v2: false,
        tls: None,
    };
    let mut c = ws::Client::connect(&dial, seed, 512).await?;
    c.echo(&[0x42; 32]).await?;
    Ok(c)
}

/// Waits (bounded) until `pid`'s RSS stops falling; returns the last value.
async fn settled_rss(pid: u32) -> u64 {
    let mut last = procfs::rss_one(pid);
    let mut still = 0;
    for _ in 0..300 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = procfs::rss_one(pid);
        if now >= last {
            still += 1;
            if still >= 30 {
                return now;
            }
        } else {
            still = 0;
        }
        last = now;
    }
    last
}

/// Runs the spike; prints RSS before, with the connections open, and after they close.
pub async fn spike(opts: SpikeOpts) -> Result<i32> {
    let nofile = procfs::raise_nofile();
    if (nofile as usize) < opts.count * 2 + 100 {
        bail!(
            "the open-file limit is {nofile}, too low for {} connections",
            opts.count
        );
    }
    let echo = echo_target().await?;
    let proxy = Proxy::start(&opts.websockify, echo.addr, &opts.log)?;
    let pid = proxy.pid();
    let addr = proxy.addr;
    // Warm-up: one full connection, so one-time set-up is not counted.
    open_idle(addr, 1)
        .await?
        .close(Duration::from_secs(5))
        .await?;
    let before = settled_rss(pid).await;
    let fds_before = fd_count(pid);
    let sem = Arc::new(tokio::sync::Semaphore::new(64));
    let mut set = tokio::task::JoinSet::new();
    for i in 0..opts.count {
        let permit = sem.clone().acquire_owned().await?;
        set.spawn(async move {
            let r = tokio::time::timeout(Duration::from_secs(20), open_idle(addr, 100 + i as u64))
                .await
                .map_err(|_| anyhow::anyhow!("open timed out"))
                .and_then(|r| r);
            drop(permit);
            r
        });
    }
    let mut clients = Vec::new();
    let mut failed = 0usize;
    while let Some(r) = set.join_next().await {
        match r {
            Ok(Ok(c)) => clients.push(c),
            Ok(Err(err)) => {
                if failed == 0 {
                    eprintln!("spike: an open failed: {err:#}");
                }
                failed += 1;
            }
            Err(_) => failed += 1,
        }
    }
    let opened = clients.len();
    let peak = settled_rss(pid).await;
    // Close them all (close handshake each, 256 at a time).
    let sem = Arc::new(tokio::sync::Semaphore::new(256));
    let mut set = tokio::task::JoinSet::new();
    for c in clients {
        let permit = sem.clone().acquire_owned().await?;
        set.spawn(async move {
            let _ = c.close(Duration::from_secs(10)).await;
            drop(permit);
        });
    }
    while set.join_next().await.is_some() {}
    let t0 = Instant::now();
    while echo.open.load(Ordering::Relaxed) > 0 && t0.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = settled_rss(pid).await;
    let fds_after = fd_count(pid);
    if let Some(hold) = std::env::var("SPIKE_HOLD_SECONDS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    {
        eprintln!("spike: holding websockify (pid {pid}) for {hold} s to inspect");
        tokio::time::sleep(Duration::from_secs(hold)).await;
    }
    drop(proxy);
    println!(
        "spike: {opened} connections opened ({failed} failed), websockify {}",
        opts.websockify.display()
    );
    println!(
        "spike: RSS before {:.1} MiB, open {:.1} MiB, after close {:.1} MiB (kept {:.1} MiB of {:.1} MiB grown)",
        before as f64 / MIB,
        peak as f64 / MIB,
        after as f64 / MIB,
        after.saturating_sub(before) as f64 / MIB,
        peak.saturating_sub(before) as f64 / MIB
    );
    println!("spike: descriptors before {fds_before}, after {fds_after}");
    Ok(i32::from(after.saturating_sub(before) > 10 << 20))
}
