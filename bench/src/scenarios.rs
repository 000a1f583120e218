//! The client drivers: one async function per scenario, each bounded in count and time.
//!
//! Each returns named metrics for one run against one running peer. The orchestrator
//! (`run.rs`) starts the peer, calls the driver, stops the peer, and aggregates rounds.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::procfs;
use crate::ws::{self, Client, Dial, OP_BINARY};

pub const MIB: f64 = 1024.0 * 1024.0;
const CHUNK: usize = 64 * 1024;
/// Frames per write for bulk senders (the messages stay 64 KiB frames).
const BATCH: usize = 4;

/// Named results of one run.
#[derive(Default, Debug, Clone)]
pub struct Metrics {
    pub values: BTreeMap<String, f64>,
    pub notes: Vec<String>,
}

impl Metrics {
    pub fn set(&mut self, k: &str, v: f64) {
        self.values.insert(k.to_owned(), v);
    }
}

/// The processes whose CPU is accounted around a measured section.
#[derive(Clone, Copy)]
pub struct Probe {
    pub proxy: Option<u32>,
    pub serve: u32,
}

struct CpuSnap {
    at: Instant,
    proxy: f64,
    client: f64,
    serve: f64,
    machine_busy: f64,
}

impl Probe {
    fn snap(&self) -> CpuSnap {
        CpuSnap {
            at: Instant::now(),
            proxy: self.proxy.map_or(0.0, procfs::cpu_tree),
            client: procfs::cpu_self(),
            serve: procfs::cpu_one(self.serve),
            machine_busy: procfs::machine_cpu().0,
        }
    }

    /// Records CPU use between two snapshots: seconds for the proxy, percent of one core
    /// for every process (the load generator's share shows it is not the bottleneck).
    fn record(&self, a: &CpuSnap, b: &CpuSnap, m: &mut Metrics) {
        let wall = b.at.duration_since(a.at).as_secs_f64().max(1e-9);
        if self.proxy.is_some() {
            m.set("proxy_cpu_s", b.proxy - a.proxy);
            m.set("proxy_cpu_pct", 100.0 * (b.proxy - a.proxy) / wall);
        }
        m.set("client_cpu_pct", 100.0 * (b.client - a.client) / wall);
        m.set("target_cpu_pct", 100.0 * (b.serve - a.serve) / wall);
        // Whatever else ran on the machine meanwhile (other users, builds): a noisy run shows.
        let ours = (b.proxy - a.proxy) + (b.client - a.client) + (b.serve - a.serve);
        let other = (b.machine_busy - a.machine_busy - ours).max(0.0);
        m.set("other_cpu_pct", 100.0 * other / wall);
    }
}

fn seed() -> u64 {
    static N: AtomicU64 = AtomicU64::new(1);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t ^ N.fetch_add(0x9E37_79B9, Ordering::Relaxed)
}

async fn bounded<T>(what: &str, limit: Duration, f: impl Future<Output = Result<T>>) -> Result<T> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r,
        Err(_) => Err(anyhow!("{what}: no result within {limit:?}")),
    }
}

/// `BATCH` masked 64 KiB binary frames, each with its own key, back to back (in raw mode,
/// `BATCH` times 64 KiB of zeros).
fn bulk_frames(c: &mut Client) -> Vec<u8> {
    let zeros = vec![0u8; CHUNK];
    if c.raw {
        return vec![0u8; BATCH * CHUNK];
    }
    let rng = &mut c.rng;
    let mut out = Vec::with_capacity(BATCH * (CHUNK + 14));
    for _ in 0..BATCH {
        out.extend(ws::frame(OP_BINARY, &zeros, Some(rng.mask_key())));
    }
    out
}

fn op(code: u8, n: u64) -> Vec<u8> {
    let mut v = vec![code];
    v.extend_from_slice(&n.to_be_bytes());
    v
}

/// Scenario 1, up: `bytes` (a multiple of 64 KiB) in 64 KiB frames to a sink, timed until
/// the sink acknowledges the last byte.
pub async fn throughput_up(
    dial: Dial,
    probe: Probe,
    bytes: u64,
    limit: Duration,
) -> Result<Metrics> {
    let mut c = bounded(
        "connect",
        Duration::from_secs(10),
        Client::connect(&dial, seed(), 64 * 1024),
    )
    .await?;
    c.send_binary(&op(b'U', bytes)).await?;
    let batch = bulk_frames(&mut c);
    let per_frame = batch.len() / BATCH;
    let frames = bytes / CHUNK as u64;
    let a = probe.snap();
    bounded("upload", limit, async {
        let mut left = frames;
        while left >= BATCH as u64 {
            c.stream
                .write_all(&batch)
                .await
                .context("writing to the proxy")?;
            left -= BATCH as u64;
        }
        if left > 0 {
            c.stream
                .write_all(&batch[..per_frame * left as usize])
                .await
                .context("writing to the proxy")?;
        }
        c.stream.flush().await.context("writing to the proxy")?;
        c.recv(1, None)
            .await
            .context("waiting for the sink's acknowledgement")
    })
    .await?;
    let b = probe.snap();
    let mut m = Metrics::default();
    let secs = b.at.duration_since(a.at).as_secs_f64();
    m.set("mib_s", bytes as f64 / MIB / secs);
    if let Some(_p) = probe.proxy {
        let cpu = b.proxy - a.proxy;
        if cpu > 0.0 {
            m.set("mib_per_cpu_s", bytes as f64 / MIB / cpu);
        }
    }
    probe.record(&a, &b, &mut m);
    m.set("seconds", secs);
    Ok(m)
}

/// Scenario 1, down: the source sends `bytes` in 64 KiB writes (or frames); timed from the
/// request until the last payload byte arrives.
pub async fn throughput_down(
    dial: Dial,
    probe: Probe,
    bytes: u64,
    limit: Duration,
) -> Result<Metrics> {
    let mut c = bounded(
        "connect",
        Duration::from_secs(10),
        Client::connect(&dial, seed(), 256 * 1024),
    )
    .await?;
    let a = probe.snap();
    bounded("download", limit, async {
        c.send_binary(&op(b'D', bytes)).await?;
        c.recv(bytes, None).await
    })
    .await?;
    let b = probe.snap();
    let mut m = Metrics::default();
    let secs = b.at.duration_since(a.at).as_secs_f64();
    m.set("mib_s", bytes as f64 / MIB / secs);
    if probe.proxy.is_some() {
        let cpu = b.proxy - a.proxy;
        if cpu > 0.0 {
            m.set("mib_per_cpu_s", bytes as f64 / MIB / cpu);
        }
    }
    probe.record(&a, &b, &mut m);
    m.set("seconds", secs);
    Ok(m)
}

/// Aborts a spawned task when dropped (a timed-out scenario leaves nothing running).
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Scenario 7, up saturated: the client pushes `bytes` in 64 KiB frames to an `R` sink, which
/// sends a 24-byte ack down after every MiB; each ack's delay is the time from the target's
/// `write` to the client's read (one clock: CLOCK_MONOTONIC). The reader is a task of its own,
/// so the saturating writer never delays it (in one task, tokio's cooperative budget would let
/// the writer run for 128 writes between the reader's turns).
pub async fn reverse_up(dial: Dial, probe: Probe, bytes: u64, limit: Duration) -> Result<Metrics> {
    let mut c = bounded(
        "connect",
        Duration::from_secs(10),
        Client::connect(&dial, seed(), 4096),
    )
    .await?;
    c.send_binary(&op(b'R', bytes)).await?;
    let batch = bulk_frames(&mut c);
    let per_frame = batch.len() / BATCH;
    let frames = bytes / CHUNK as u64;
    let mut reader = c.payload_reader();
    let (mut rd, mut wr) = tokio::io::split(c.stream);
    let a = probe.snap();
    let delays = bounded("upload with acks", limit, async {
        let read = tokio::spawn(async move {
            let mut carry: Vec<u8> = Vec::new();
            let mut delays = Vec::new();
            loop {
                let open = reader
                    .read(&mut rd, &mut |d| carry.extend_from_slice(d))
                    .await?;
                let now = crate::serve::mono_ns();
                let whole = carry.len() / 24 * 24;
                let mut done = false;
                for u in carry[..whole].chunks_exact(24) {
                    let stamp = u64::from_be_bytes(u[..8].try_into()?);
                    let sunk = u64::from_be_bytes(u[8..16].try_into()?);
                    delays.push(now.saturating_sub(stamp) as f64 / 1e3);
                    done |= sunk >= bytes;
                }
                carry.drain(..whole);
                if done {
                    return Ok::<Vec<f64>, anyhow::Error>(delays);
                }
                if !open {
                    bail!(
                        "the proxy closed before the last ack ({} acks)",
                        delays.len()
                    );
                }
            }
        });
        let _guard = AbortOnDrop(read.abort_handle());
        let mut left = frames;
        while left > 0 {
            let k = left.min(BATCH as u64);
            wr.write_all(&batch[..per_frame * k as usize])
                .await
                .context("writing to the proxy")?;
            left -= k;
        }
        wr.flush().await.context("writing to the proxy")?;
        read.await.context("the ack reader failed")?
    })
    .await?;
    let b = probe.snap();
    let mut d = delays;
    d.sort_by(f64::total_cmp);
    let mut m = Metrics::default();
    let secs = b.at.duration_since(a.at).as_secs_f64();
    m.set("mib_s", bytes as f64 / MIB / secs);
    m.set("ack_max_us", d.last().copied().unwrap_or(f64::NAN));
    m.set("ack_p99_us", percentile(&d, 99.0));
    m.set("ack_p50_us", percentile(&d, 50.0));
    m.set("acks", d.len() as f64);
    probe.record(&a, &b, &mut m);
    Ok(m)
}

/// Scenario 7, down saturated: a `P` source sends `bytes` down while the client sends an
/// 8-byte probe up every millisecond (from a task of its own); the target measures each
/// probe's delay from the client's `write` to its read and answers the percentiles at the end.
pub async fn reverse_down(
    dial: Dial,
    probe: Probe,
    bytes: u64,
    limit: Duration,
) -> Result<Metrics> {
    let mut c = bounded(
        "connect",
        Duration::from_secs(10),
        Client::connect(&dial, seed(), 4096),
    )
    .await?;
    c.send_binary(&op(b'P', bytes)).await?;
    let mut reader = c.payload_reader();
    let raw = c.raw;
    let mut rng = c.rng.clone();
    let done = Arc::new(AtomicBool::new(false));
    let (mut rd, mut wr) = tokio::io::split(c.stream);
    let a = probe.snap();
    let (stats, b) = bounded("download with probes", limit, async {
        let stop = done.clone();
        let write = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let send = |stamp: u64, rng: &mut ws::Rng| {
                if raw {
                    stamp.to_be_bytes().to_vec()
                } else {
                    ws::frame(OP_BINARY, &stamp.to_be_bytes(), Some(rng.mask_key()))
                }
            };
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let p = send(crate::serve::mono_ns().max(1), &mut rng);
                wr.write_all(&p).await.context("sending a probe")?;
                wr.flush().await.context("sending a probe")?;
            }
            wr.write_all(&send(0, &mut rng))
                .await
                .context("sending the last probe")?;
            wr.flush().await.context("sending the last probe")?;
            Ok::<_, anyhow::Error>(wr)
        });
        let _guard = AbortOnDrop(write.abort_handle());
        let mut got = 0u64;
        let mut stats: Vec<u8> = Vec::new();
        let mut b = None;
        while stats.len() < 32 {
            let open = reader
                .read(&mut rd, &mut |d| {
                    let take = ((bytes - got) as usize).min(d.len());
                    got += take as u64;
                    stats.extend_from_slice(&d[take..]);
                })
                .await?;
            if got >= bytes && b.is_none() {
                b = Some(probe.snap());
                done.store(true, Ordering::Relaxed);
            }
            if !open && stats.len() < 32 {
                bail!("the proxy closed after {got} of {bytes} bytes");
            }
        }
        // Keep the write half (and so the connection) until the stats are in.
        let _wr = write.await.context("the probe writer failed")??;
        Ok::<(Vec<u8>, Option<CpuSnap>), anyhow::Error>((stats, b))
    })
    .await?;
    let b = b.context("no end of download")?;
    let word = |i: usize| -> Result<f64> {
        Ok(u64::from_be_bytes(stats[i * 8..i * 8 + 8].try_into()?) as f64)
    };
    let mut m = Metrics::default();
    let secs = b.at.duration_since(a.at).as_secs_f64();
    m.set("mib_s", bytes as f64 / MIB / secs);
    m.set("probes", word(0)?);
    m.set("probe_p50_us", word(1)? / 1e3);
    m.set("probe_p99_us", word(2)? / 1e3);
    m.set("probe_max_us", word(3)? / 1e3);
    probe.record(&a, &b, &mut m);
    Ok(m)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Scenario 2: 64-byte messages echoed one at a time; latency percentiles in microseconds.
pub async fn round_trip(
    dial: Dial,
    probe: Probe,
    count: usize,
    limit: Duration,
) -> Result<Metrics> {
    let mut c = bounded(
        "connect",
        Duration::from_secs(10),
        Client::connect(&dial, seed(), 4096),
    )
    .await?;
    let payload: Vec<u8> = (0..64u8).collect();
    let warm = (count / 10).clamp(10, 500);
    let mut samples = Vec::with_capacity(count);
    let a = probe.snap();
    let deadline = Instant::now() + limit;
    bounded("round trips", limit + Duration::from_secs(5), async {
        for _ in 0..warm {
            c.echo(&payload).await?;
        }
        for _ in 0..count {
            let t = Instant::now();
            c.echo(&payload).await?;
            samples.push(t.elapsed().as_secs_f64() * 1e6);
            if Instant::now() > deadline {
                break;
            }
        }
        Ok(())
    })
    .await?;
    let b = probe.snap();
    let _ = tokio::time::timeout(Duration::from_secs(1), c.close(Duration::from_secs(1))).await;
    samples.sort_by(f64::total_cmp);
    let mut m = Metrics::default();
    m.set("p50_us", percentile(&samples, 50.0));
    m.set("p99_us", percentile(&samples, 99.0));
    m.set(
        "mean_us",
        samples.iter().sum::<f64>() / samples.len().max(1) as f64,
    );
    m.set("samples", samples.len() as f64);
    probe.record(&a, &b, &mut m);
    Ok(m)
}

/// One connection's life: open, handshake, one 32-byte echo, close handshake (raw: open, one
/// 32-byte echo, FIN and the other side's EOF).
async fn cycle(dial: &Dial) -> Result<()> {
    bounded("connection cycle", Duration::from_secs(5), async {
        let mut c = Client::connect(dial, seed(), 1024).await?;
        c.echo(&[0x5A; 32]).await?;
        c.close(Duration::from_secs(2)).await
    })
    .await
}

/// Scenario 3: complete cycles per second with `workers` at a time, for at most `max` cycles
/// or `limit` of time.
pub async fn conn_rate(
    dial: Dial,
    probe: Probe,
    workers: usize,
    max: u64,
    limit: Duration,
) -> Result<Metrics> {
    let started = Arc::new(AtomicU64::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let first_err: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
    let a = probe.snap();
    let deadline = Instant::now() + limit;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let dial = dial.clone();
        let (started, ok, failed, first_err) = (
            started.clone(),
            ok.clone(),
            failed.clone(),
            first_err.clone(),
        );
        set.spawn(async move {
            while Instant::now() < deadline && started.fetch_add(1, Ordering::Relaxed) < max {
                match cycle(&dial).await {
                    Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        if let Ok(mut f) = first_err.lock()
                            && f.is_none()
                        {
                            *f = Some(format!("{e:#}"));
                        }
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        });
    }
    while set.join_next().await.is_some() {}
    let b = probe.snap();
    let secs = b.at.duration_since(a.at).as_secs_f64();
    let mut m = Metrics::default();
    let ok = ok.load(Ordering::Relaxed);
    let failed = failed.load(Ordering::Relaxed);
    m.set("conn_s", ok as f64 / secs);
    m.set("completed", ok as f64);
    m.set("failed", failed as f64);
    if let Ok(Some(e)) = first_err.lock().map(|f| f.clone()) {
        m.notes.push(format!(
            "{failed} of {} cycles failed, first: {e}",
            ok + failed
        ));
    }
    probe.record(&a, &b, &mut m);
    if ok == 0 {
        bail!(
            "no connection cycle completed{}",
            m.notes
                .first()
                .map(|n| format!(": {n}"))
                .unwrap_or_default()
        );
    }
    Ok(m)
}

/// Settings for scenario 4.
pub struct ManyOpts {
    pub count: usize,
    pub activity: Duration,
    pub open_limit: Duration,
}

/// Scenario 4: `count` concurrent connections through the proxy, each echoing once on open,
/// once at a random moment of an activity phase, and once in a final check. Memory is read
/// when they are all open and idle after the activity phase.
pub async fn many(dial: Dial, pid: Option<u32>, opts: &ManyOpts) -> Result<Metrics> {
    let mut m = Metrics::default();
    let rss = || pid.map_or(0, procfs::rss_tree);
    let pss = || pid.map_or(0, procfs::pss_tree);
    // Warm-up: one complete connection, so one-time set-up is not charged to connections.
    let _ = cycle(&dial).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let base_rss = rss();
    let base_pss = pss();
    let payload = [0x42u8; 32];

    // Open, at most 64 handshakes in flight.
    let t0 = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(64));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Result<Client>>();
    let mut clients = Vec::with_capacity(opts.count);
    let mut failures = 0usize;
    let mut first_err = None;
    let max_failures = (opts.count / 50).max(20);
    let mut spawned = 0usize;
    let mut stop_reason = None;
    let collect = |r: Result<Client>,
                   clients: &mut Vec<Client>,
                   failures: &mut usize,
                   first_err: &mut Option<String>| match r {
        Ok(c) => clients.push(c),
        Err(e) => {
            *failures += 1;
            first_err.get_or_insert_with(|| format!("{e:#}"));
        }
    };
    while spawned < opts.count {
        while let Ok(r) = rx.try_recv() {
            collect(r, &mut clients, &mut failures, &mut first_err);
        }
        if failures > max_failures {
            stop_reason = Some(format!("stopped opening after {failures} failures"));
            break;
        }
        if t0.elapsed() > opts.open_limit {
            stop_reason = Some(format!("stopped opening after {:?}", opts.open_limit));
            break;
        }
        if spawned.is_multiple_of(100) && procfs::mem_available() < 3 << 30 {
            stop_reason =
                Some("stopped opening: less than 3 GiB of memory left on the machine".into());
            break;
        }
        let Ok(permit) =
            tokio::time::timeout(Duration::from_secs(15), sem.clone().acquire_owned()).await
        else {
            stop_reason = Some("stopped opening: handshakes stuck".into());
            break;
        };
        let Ok(permit) = permit else { break };
        let tx = tx.clone();
        let dial = dial.clone();
        spawned += 1;
        tokio::spawn(async move {
            let r = bounded("open and echo", Duration::from_secs(10), async {
                let mut c = Client::connect(&dial, seed(), 512).await?;
                c.echo(&payload).await?;
                Ok(c)
            })
            .await;
            drop(permit);
            let _ = tx.send(r);
        });
    }
    drop(tx);
    // Every task ends within its 10 s bound.
    while let Ok(Some(r)) = tokio::time::timeout(Duration::from_secs(15), rx.recv()).await {
        collect(r, &mut clients, &mut failures, &mut first_err);
    }
    let open_secs = t0.elapsed().as_secs_f64();
    let opened = clients.len();
    m.set("opened", opened as f64);
    m.set("open_failures", failures as f64);
    m.set("open_seconds", open_secs);
    if let Some(e) = &first_err {
        m.notes.push(format!("{failures} opens failed, first: {e}"));
    }
    if let Some(r) = stop_reason {
        m.notes.push(r);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let open_rss = rss();
    if pid.is_some() {
        m.set("proxy_processes", pid.map_or(0, procfs::tree_size) as f64);
    }

    // Activity: every connection echoes once at a random moment.
    let echo_all = |clients: Vec<Client>, spread: Duration, concurrency: usize| async move {
        let sem = Arc::new(tokio::sync::Semaphore::new(concurrency));
        let mut set = tokio::task::JoinSet::new();
        for mut c in clients {
            let sem = sem.clone();
            let delay = Duration::from_micros(c.rng.below(spread.as_micros() as u64 + 1));
            set.spawn(async move {
                tokio::time::sleep(delay).await;
                let _permit = sem.acquire_owned().await;
                let ok = bounded("echo", Duration::from_secs(10), c.echo(&payload))
                    .await
                    .is_ok();
                (c, ok)
            });
        }
        let mut back = Vec::new();
        let mut ok = 0usize;
        while let Some(r) = set.join_next().await {
            if let Ok((c, true)) = r {
                ok += 1;
                back.push(c);
            }
        }
        (back, ok)
    };
    let (clients, active_ok) = echo_all(clients, opts.activity, 1024).await;
    m.set("activity_ok", active_ok as f64);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_rss = rss();
    let idle_pss = pss();
    // Final check: do they all still echo?
    let (clients, final_ok) = echo_all(clients, Duration::ZERO, 256).await;
    m.set("echo_ok", final_ok as f64);
    m.set("requested", opts.count as f64);
    if pid.is_some() && opened > 0 {
        let per = |now: u64, base: u64| (now as f64 - base as f64) / opened as f64 / 1024.0;
        m.set("rss_kib_per_conn", per(idle_rss, base_rss));
        m.set("rss_kib_per_conn_open", per(open_rss, base_rss));
        m.set("pss_kib_per_conn", per(idle_pss, base_pss));
        m.set("rss_base_mib", base_rss as f64 / MIB);
        // One process: RSS. A forking proxy: Σ PSS, since Σ RSS counts shared pages per fork.
        let forked = pid.map_or(0, procfs::tree_size) > 1;
        m.set(
            "mem_kib_per_conn",
            if forked {
                per(idle_pss, base_pss)
            } else {
                per(idle_rss, base_rss)
            },
        );
        m.set("rss_idle_mib", idle_rss as f64 / MIB);
    }
    drop(clients);
    Ok(m)
}

/// Samples the proxy tree's RSS every 20 ms until stopped; returns the maximum.
fn rss_sampler(pid: u32, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut max = 0u64;
        let start = Instant::now();
        while !stop.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(300) {
            max = max.max(procfs::rss_tree(pid));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        max.max(procfs::rss_tree(pid))
    })
}

/// Asks the target process for its totals (bytes sunk, bytes sourced).
pub async fn target_stats(tcp_ctl: SocketAddr) -> Result<(u64, u64)> {
    bounded("target stats", Duration::from_secs(5), async {
        let mut s = TcpStream::connect(tcp_ctl).await?;
        s.write_all(b"S").await?;
        let mut b = [0u8; 16];
        s.read_exact(&mut b).await?;
        let sunk = u64::from_be_bytes(b[..8].try_into()?);
        let sourced = u64::from_be_bytes(b[8..].try_into()?);
        Ok((sunk, sourced))
    })
    .await
}

/// Releases every connection the target holds unread.
pub async fn release_holds(tcp_ctl: SocketAddr) -> Result<()> {
    bounded("release", Duration::from_secs(5), async {
        let mut s = TcpStream::connect(tcp_ctl).await?;
        s.write_all(b"X").await?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await?;
        Ok(())
    })
    .await
}

/// Settings for scenarios 5 and 6.
pub struct PushOpts {
    pub bytes: u64,
    /// A push that makes no progress for this long has stalled.
    pub stall: Duration,
    pub limit: Duration,
}

/// Scenario 5, up: the target stops reading; the client pushes up to `bytes`.
pub async fn stall_up(
    dial: Dial,
    pid: Option<u32>,
    tcp_ctl: SocketAddr,
    o: &PushOpts,
) -> Result<Metrics> {
    let mut c = bounded(
        "connect",
        Duration::from_secs(10),
        Client::connect(&dial, seed(), 4096),
    )
    .await?;
    c.send_binary(b"H").await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let base = pid.map_or(0, procfs::rss_tree);
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = pid.map(|p| rss_sampler(p, stop.clone()));
    let batch = bulk_frames(&mut c);
    let mut pushed = 0u64;
    let t0 = Instant::now();
    let mut stalled = false;
    let mut error = None;
    while pushed < o.bytes && t0.elapsed() < o.limit {
        match tokio::time::timeout(o.stall, c.stream.write_all(&batch)).await {
            Ok(Ok(())) => pushed += (BATCH * CHUNK) as u64,
            Ok(Err(e)) => {
                error = Some(format!("the proxy closed the connection: {e}"));
                break;
            }
            Err(_) => {
                stalled = true;
                break;
            }
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    // Let the proxy settle, then read its memory once more.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let peak = match sampler {
        Some(s) => s.await.unwrap_or(0),
        None => 0,
    };
    let _ = release_holds(tcp_ctl).await;
    drop(c);
    let mut m = Metrics::default();
    m.set("accepted_mib", pushed as f64 / MIB);
    m.set("seconds", secs);
    m.set("stalled", if stalled { 1.0 } else { 0.0 });
    if pid.is_some() {
        m.set("rss_growth_mib", peak.saturating_sub(base) as f64 / MIB);
    }
    if let Some(e) = error {
        m.notes.push(e);
    }
    Ok(m)
}

/// Scenario 5, down: the client stops reading; the target pushes up to `bytes`.
pub async fn stall_down(
    dial: Dial,
    pid: Option<u32>,
    tcp_ctl: SocketAddr,
    o: &PushOpts,
) -> Result<Metrics> {
    let mut c = bounded(
        "connect",
        Duration::from_secs(10),
        Client::connect(&dial, seed(), 4096),
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let base = pid.map_or(0, procfs::rss_tree);
    let (_, sourced0) = target_stats(tcp_ctl).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = pid.map(|p| rss_sampler(p, stop.clone()));
    c.send_binary(&op(b'D', o.bytes)).await?;
    let t0 = Instant::now();
    let mut last = 0u64;
    let mut last_change = Instant::now();
    let mut stalled = false;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (_, sourced) = target_stats(tcp_ctl).await?;
        let progress = sourced - sourced0;
        if progress != last {
            last = progress;
            last_change = Instant::now();
        }
        if progress >= o.bytes || t0.elapsed() > o.limit {
            break;
        }
        if last_change.elapsed() >= o.stall {
            stalled = true;
            break;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let peak = match sampler {
        Some(s) => s.await.unwrap_or(0),
        None => 0,
    };
    drop(c);
    let mut m = Metrics::default();
    m.set("accepted_mib", last as f64 / MIB);
    m.set("seconds", secs);
    m.set("stalled", if stalled { 1.0 } else { 0.0 });
    if pid.is_some() {
        m.set("rss_growth_mib", peak.saturating_sub(base) as f64 / MIB);
    }
    Ok(m)
}

/// Scenario 6: one frame declaring 2^40 bytes, then `bytes` of its payload streamed to a
/// sink; timed until the sink acknowledges, or stopped when delivery stalls.
pub async fn big_frame(
    dial: Dial,
    probe: Probe,
    tcp_ctl: SocketAddr,
    o: &PushOpts,
) -> Result<Metrics> {
    let pid = probe.proxy;
    let mut c = bounded(
        "connect",
        Duration::from_secs(10),
        Client::connect(&dial, seed(), 4096),
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let base = pid.map_or(0, procfs::rss_tree);
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = pid.map(|p| rss_sampler(p, stop.clone()));
    let key = c.rng.mask_key();
    let mut hdr = [0u8; 14];
    let h = ws::header(&mut hdr, true, OP_BINARY, 1u64 << 40, Some(key));
    // The payload: `U` + length, then zeros; every 64 KiB chunk after the first starts at an
    // offset divisible by 4, so its masked bytes are the same and are built once.
    let mut first = vec![0u8; CHUNK];
    first[..9].copy_from_slice(&op(b'U', o.bytes - 9));
    ws::apply_mask(&mut first, key, 0);
    let mut rest = vec![0u8; CHUNK * BATCH];
    ws::apply_mask(&mut rest, key, CHUNK as u64);
    let (sunk0, _) = target_stats(tcp_ctl).await?;
    let a = probe.snap();
    let t0 = Instant::now();
    let mut sent = 0u64;
    let mut error = None;
    let mut stalled = false;
    let write = async {
        c.stream.write_all(&hdr[..h]).await?;
        c.stream.write_all(&first).await?;
        sent += CHUNK as u64;
        while sent < o.bytes {
            let n = ((o.bytes - sent) as usize).min(rest.len());
            match tokio::time::timeout(o.stall, c.stream.write_all(&rest[..n])).await {
                Ok(r) => r?,
                Err(_) => return Ok::<bool, anyhow::Error>(true),
            }
            sent += n as u64;
            if t0.elapsed() > o.limit {
                return Ok(true);
            }
        }
        Ok(false)
    };
    match write.await {
        Ok(s) => stalled = s,
        Err(e) => error = Some(format!("writing the frame failed: {e:#}")),
    }
    // Wait for the acknowledgement while the target's sink keeps making progress.
    let mut acked = false;
    if error.is_none() && !stalled {
        let mut last = target_stats(tcp_ctl).await.map_or(0, |s| s.0);
        let mut last_change = Instant::now();
        let recv = c.recv(1, None);
        tokio::pin!(recv);
        loop {
            tokio::select! {
                r = &mut recv => {
                    match r {
                        Ok(()) => acked = true,
                        Err(e) => error = Some(format!("{e:#}")),
                    }
                    break;
                }
                () = tokio::time::sleep(Duration::from_millis(100)) => {
                    let now = target_stats(tcp_ctl).await.map_or(last, |s| s.0);
                    if now != last {
                        last = now;
                        last_change = Instant::now();
                    } else if last_change.elapsed() >= o.stall || t0.elapsed() > o.limit {
                        stalled = true;
                        break;
                    }
                }
            }
        }
    }
    let b = probe.snap();
    let secs = b.at.duration_since(a.at).as_secs_f64();
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, Ordering::Relaxed);
    let peak = match sampler {
        Some(s) => s.await.unwrap_or(0),
        None => 0,
    };
    drop(c);
    let mut m = Metrics::default();
    if let Ok((sunk, _)) = target_stats(tcp_ctl).await {
        m.set("delivered_mib", sunk.saturating_sub(sunk0) as f64 / MIB);
    }
    m.set("sent_mib", sent as f64 / MIB);
    m.set("seconds", secs);
    if acked {
        m.set("mib_s", o.bytes as f64 / MIB / secs);
    } else {
        m.set("stalled", 1.0);
    }
    if pid.is_some() {
        m.set("rss_growth_mib", peak.saturating_sub(base) as f64 / MIB);
    }
    probe.record(&a, &b, &mut m);
    if let Some(e) = error {
        m.notes.push(e);
    } else if stalled {
        m.notes.push(format!(
            "stalled: the target got no payload for {:?}",
            o.stall
        ));
    }
    Ok(m)
}
