//! `ws-bench`: the load generator and harness behind `scripts/bench`.
//!
//! - `ws-bench run` is the orchestrator: it starts the targets (`ws-bench serve`) and, for every
//!   case, round and peer, starts the peer, drives the scenario, stops the peer by PID, and
//!   writes the results (see `run.rs`, `scenarios.rs`, `report.rs`);
//! - `ws-bench serve` runs the echo / sink / source / never-read targets, TCP and WebSocket;
//! - `ws-bench relay` is the plain TCP relay baseline (tokio copy);
//! - `ws-bench soak` and `ws-bench spike` check one websockify binary over time and after a
//!   spike of connections (`scripts/soak`; see `soak.rs`).
//!
//! Everything listens on 127.0.0.1; every wait is bounded; every child is stopped by PID.

mod peers;
mod procfs;
mod relay;
mod report;
mod run;
mod scenarios;
mod serve;
mod soak;
mod tls;
mod ws;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ws-bench",
    about = "Benchmark websockify against its peers",
    version
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the benchmark (what scripts/bench calls).
    Run {
        /// Smoke test: one round, smaller sizes, 1,000 connections only.
        #[arg(long)]
        quick: bool,
        /// Scenarios to run, comma-separated: throughput, rtt, connrate, conns, stall,
        /// bigframe, reverse, tls (or case ids such as throughput-up, conns-10000, tls-up).
        #[arg(long)]
        only: Option<String>,
        /// Peers to run, comma-separated: direct, relay, bare, ours, upstream, websocat, and
        /// (only when named) ours-metrics, ours-pp (the relay is always added: it is the
        /// baseline of every ratio).
        #[arg(long)]
        peers: Option<String>,
        /// Rounds per case (default: 5 for throughput, round trip and connection rate, 3 for
        /// the rest; quick: 1).
        #[arg(long)]
        rounds: Option<usize>,
        /// Connection counts for the many-connections scenario, comma-separated.
        #[arg(long)]
        conns: Option<String>,
        /// Bytes per throughput run (default 2 GiB, quick 128 MiB); a multiple of 64 KiB.
        #[arg(long)]
        throughput_mib: Option<u64>,
        /// How long a push must make no progress to count as stalled (default 2, quick 1).
        #[arg(long)]
        stall_seconds: Option<f64>,
        /// Our websockify binary.
        #[arg(long)]
        ours: PathBuf,
        /// Words to put before our binary, e.g. "valgrind --tool=callgrind" (profiling).
        #[arg(long, allow_hyphen_values = true)]
        ours_prefix: Option<String>,
        /// Upstream Python websockify (the venv's `bin/websockify`).
        #[arg(long)]
        upstream: Option<PathBuf>,
        /// websocat binary.
        #[arg(long)]
        websocat: Option<PathBuf>,
        /// Output directory for results.json, results.md and logs.
        #[arg(long, default_value = "target/bench")]
        out: PathBuf,
        /// Pin the peer under test to the last CPU and the load generator and targets to the
        /// others. Off by default: with 2 CPUs the load generator and target then share one
        /// core and can become the bottleneck; pinning steadies round trips, though.
        #[arg(long)]
        pin: bool,
        /// Also write the summary page here (scripts/bench passes docs/benchmarks.md on full runs).
        #[arg(long)]
        docs: Option<PathBuf>,
    },
    /// Run the target servers; prints their ports, exits when stdin closes.
    Serve,
    /// Soak one websockify: many connections exchanging random sizes both ways, SHA-256
    /// checked, RSS sampled; exits 1 on a mismatch, a failed session, a panic in the log or
    /// RSS drift of 5% or more after the warm-up (what scripts/soak runs).
    Soak {
        /// The websockify binary (started with --inetd on a listener bound here).
        #[arg(long)]
        websockify: PathBuf,
        /// How long to run, in seconds.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Connections open at all times.
        #[arg(long, default_value_t = 1000)]
        conns: usize,
        /// Largest message in bytes (sizes are uniform from 0 to this).
        #[arg(long, default_value_t = 1 << 20)]
        max_size: usize,
        /// Seconds between two RSS samples.
        #[arg(long, default_value_t = 2.0)]
        sample: f64,
        /// websockify's log (stdout and stderr), searched for panics at the end.
        #[arg(long, default_value = "target/soak/websockify.log")]
        log: PathBuf,
        /// Largest RSS drift allowed, in percent.
        #[arg(long, default_value_t = 5.0)]
        max_drift: f64,
    },
    /// Open many idle connections through one websockify, close them, and report its RSS
    /// before, with them open and after (exits 1 if more than 10 MiB stays).
    Spike {
        /// The websockify binary (started with --inetd on a listener bound here).
        #[arg(long)]
        websockify: PathBuf,
        /// Connections to open.
        #[arg(long, default_value_t = 9900)]
        count: usize,
        /// websockify's log (stdout and stderr).
        #[arg(long, default_value = "target/soak/spike.log")]
        log: PathBuf,
    },
    /// Run the plain TCP relay baseline; exits when stdin closes.
    Relay {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        #[arg(long)]
        to: SocketAddr,
        /// Copy buffer size per direction.
        #[arg(long, default_value_t = 64 * 1024)]
        buf: usize,
        /// Terminate TLS with this certificate (PEM) before copying (the wss:// floor).
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The private key (PEM) of --tls-cert.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
    },
}

/// Exits the process when stdin reaches EOF: children of the harness never outlive it.
pub fn exit_when_stdin_closes() {
    std::thread::spawn(|| {
        let mut buf = [0u8; 64];
        loop {
            use std::io::Read as _;
            match std::io::stdin().read(&mut buf) {
                Ok(0) | Err(_) => std::process::exit(0),
                Ok(_) => {}
            }
        }
    });
}

fn main() {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ws-bench: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let soak_like = matches!(cli.cmd, Cmd::Soak { .. } | Cmd::Spike { .. });
    match rt.block_on(real_main(cli)) {
        Ok(code) if soak_like => std::process::exit(code),
        Ok(_) => {}
        Err(e) => {
            peers::kill_all();
            eprintln!("ws-bench: {e:#}");
            std::process::exit(1);
        }
    }
}

async fn real_main(cli: Cli) -> Result<i32> {
    match cli.cmd {
        Cmd::Soak {
            websockify,
            seconds,
            conns,
            max_size,
            sample,
            log,
            max_drift,
        } => {
            soak::soak(soak::SoakOpts {
                websockify,
                seconds,
                conns: conns.max(1),
                max_size,
                sample: std::time::Duration::from_secs_f64(sample.clamp(0.1, 60.0)),
                log,
                max_drift_pct: max_drift,
            })
            .await
        }
        Cmd::Spike {
            websockify,
            count,
            log,
        } => {
            soak::spike(soak::SpikeOpts {
                websockify,
                count,
                log,
            })
            .await
        }
        other => real_main_bench(other).await.map(|()| 0),
    }
}

/// The benchmark commands (`run`, `serve`, `relay`).
async fn real_main_bench(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Soak { .. } | Cmd::Spike { .. } => bail!("soak and spike are run by real_main"),
        Cmd::Serve => serve::run().await,
        Cmd::Relay {
            listen,
            to,
            buf,
            tls_cert,
            tls_key,
        } => {
            let acceptor = match (tls_cert, tls_key) {
                (Some(c), Some(k)) => Some(tls::acceptor(&c, &k)?),
                _ => None,
            };
            relay::run(listen, to, buf, acceptor).await
        }
        Cmd::Run {
            quick,
            only,
            peers: peer_list,
            rounds,
            conns,
            throughput_mib,
            stall_seconds,
            ours,
            ours_prefix,
            upstream,
            websocat,
            out,
            pin,
            docs,
        } => {
            let mut plan = run::Plan::new(quick);
            if let Some(r) = rounds {
                plan.rounds = r.max(1);
                plan.rounds_cheap = r.max(1);
            }
            if let Some(o) = only {
                plan.only = run::parse_list(&o);
                for s in &plan.only {
                    let known = run::SCENARIOS.contains(&s.as_str())
                        || run::Plan::new(false).cases().iter().any(|c| c.id() == *s)
                        || s.starts_with("conns-");
                    if !known {
                        bail!(
                            "unknown scenario {s:?} (known: {})",
                            run::SCENARIOS.join(", ")
                        );
                    }
                    if let Some(k) = s
                        .strip_prefix("conns-")
                        .and_then(|k| k.parse::<usize>().ok())
                        && !plan.many.contains(&k)
                    {
                        plan.many.push(k);
                    }
                }
            }
            if let Some(m) = throughput_mib {
                plan.tp_bytes = m.max(1) << 20;
            }
            if let Some(sec) = stall_seconds {
                plan.stall = std::time::Duration::from_secs_f64(sec.clamp(0.1, 60.0));
            }
            if let Some(c) = conns {
                plan.many = run::parse_list(&c)
                    .iter()
                    .filter_map(|k| k.parse().ok())
                    .collect();
            }
            let mut peer_set = match peer_list {
                Some(p) => run::parse_peers(&p)?,
                None => peers::ALL.to_vec(),
            };
            if upstream.is_none() {
                peer_set.retain(|&p| p != peers::Peer::Upstream);
            }
            if websocat.is_none() {
                peer_set.retain(|&p| p != peers::Peer::Websocat);
            }
            if !peer_set.contains(&peers::Peer::Relay) {
                peer_set.push(peers::Peer::Relay);
            }
            peer_set.sort();
            peer_set.dedup();
            plan.peers = peer_set;
            let bench = std::env::current_exe()?;
            let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
            let peer_cpus = if pin && ncpu >= 2 {
                let own: Vec<usize> = (0..ncpu - 1).collect();
                peers::set_affinity(0, &own)?;
                // Every thread of this process, including the runtime's workers.
                for t in std::fs::read_dir("/proc/self/task")?.flatten() {
                    if let Some(tid) = t.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) {
                        let _ = peers::set_affinity(tid, &own);
                    }
                }
                eprintln!(
                    "ws-bench: load generator and targets on CPU 0..{}, peer under test on CPU {}",
                    ncpu - 2,
                    ncpu - 1
                );
                Some(vec![ncpu - 1])
            } else {
                None
            };
            plan.pinned = peer_cpus.is_some();
            let cmds = peers::Commands {
                bench,
                ours,
                ours_prefix: ours_prefix
                    .map(|p| p.split_whitespace().map(str::to_owned).collect())
                    .unwrap_or_default(),
                upstream,
                websocat,
                log_dir: out.join("logs"),
                peer_cpus,
            };
            // Stop every peer we started if the harness is interrupted.
            tokio::spawn(async {
                use tokio::signal::unix::{SignalKind, signal};
                let (Ok(mut int), Ok(mut term)) = (
                    signal(SignalKind::interrupt()),
                    signal(SignalKind::terminate()),
                ) else {
                    return;
                };
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
                eprintln!("ws-bench: interrupted; stopping the peers");
                peers::kill_all();
                std::process::exit(130);
            });
            run::run(run::Options {
                plan,
                cmds,
                out,
                docs,
            })
            .await
        }
    }
}
