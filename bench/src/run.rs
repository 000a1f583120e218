//! The orchestrator (`ws-bench run`): for every case, every round, every peer (in an order
//! that rotates each round), start the peer fresh, drive the case, stop the peer by PID.
//! Then take medians over rounds and ratios to the TCP relay of the same run.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result};
use serde_json::{Value, json};

use crate::peers::{self, Commands, Peer, Target, Targets};
use crate::report;
use crate::scenarios::{self, ManyOpts, Metrics, Probe, PushOpts};
use crate::ws;

/// One measured case (a scenario and a direction or size).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    TpUp,
    TpDown,
    Rtt,
    ConnSeq,
    Conn16,
    Many(usize),
    StallUp,
    StallDown,
    BigFrame,
    RevUp,
    RevDown,
    /// wss:// (TLS on the client side of every peer; the relay terminates TLS).
    TlsUp,
    TlsDown,
    TlsConn16,
    TlsMany(usize),
}

impl Case {
    pub fn id(self) -> String {
        match self {
            Case::TpUp => "throughput-up".into(),
            Case::TpDown => "throughput-down".into(),
            Case::Rtt => "rtt".into(),
            Case::ConnSeq => "connrate-seq".into(),
            Case::Conn16 => "connrate-16".into(),
            Case::Many(k) => format!("conns-{k}"),
            Case::StallUp => "stall-up".into(),
            Case::StallDown => "stall-down".into(),
            Case::BigFrame => "bigframe".into(),
            Case::RevUp => "reverse-up".into(),
            Case::RevDown => "reverse-down".into(),
            Case::TlsUp => "tls-up".into(),
            Case::TlsDown => "tls-down".into(),
            Case::TlsConn16 => "tls-connrate-16".into(),
            Case::TlsMany(k) => format!("tls-conns-{k}"),
        }
    }
    /// The scenario name `--only` selects.
    pub fn scenario(self) -> &'static str {
        match self {
            Case::TpUp | Case::TpDown => "throughput",
            Case::Rtt => "rtt",
            Case::ConnSeq | Case::Conn16 => "connrate",
            Case::Many(_) => "conns",
            Case::StallUp | Case::StallDown => "stall",
            Case::BigFrame => "bigframe",
            Case::RevUp | Case::RevDown => "reverse",
            Case::TlsUp | Case::TlsDown | Case::TlsConn16 | Case::TlsMany(_) => "tls",
        }
    }
    /// A wss:// case.
    pub fn tls(self) -> bool {
        matches!(
            self,
            Case::TlsUp | Case::TlsDown | Case::TlsConn16 | Case::TlsMany(_)
        )
    }
    fn target(self) -> Target {
        match self {
            Case::Rtt
            | Case::ConnSeq
            | Case::Conn16
            | Case::Many(_)
            | Case::TlsConn16
            | Case::TlsMany(_) => Target::Echo,
            _ => Target::Ctl,
        }
    }
    /// The direct path has no proxy whose memory could be read: it is run where it gives a
    /// speed to compare with.
    fn applies(self, p: Peer) -> bool {
        if self.tls() {
            return matches!(
                p,
                Peer::Relay | Peer::Ours | Peer::Upstream | Peer::Websocat
            );
        }
        match p {
            Peer::Direct => !matches!(self, Case::Many(_) | Case::StallUp | Case::StallDown),
            // The bare floor: speed only (its memory and bounds are the relay's).
            Peer::Bare => matches!(
                self,
                Case::TpUp
                    | Case::TpDown
                    | Case::Rtt
                    | Case::ConnSeq
                    | Case::Conn16
                    | Case::RevUp
                    | Case::RevDown
            ),
            _ => true,
        }
    }
}

pub const SCENARIOS: [&str; 8] = [
    "throughput",
    "rtt",
    "connrate",
    "conns",
    "stall",
    "bigframe",
    "reverse",
    "tls",
];

/// Sizes and bounds of a run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub quick: bool,
    pub rounds: usize,
    /// Rounds for the cheap cases (throughput, round trip, connection rate).
    pub rounds_cheap: usize,
    pub tp_bytes: u64,
    pub rtt_count: usize,
    pub conn_max: u64,
    pub conn_time: Duration,
    pub many: Vec<usize>,
    /// Idle wss:// connections for the TLS memory case.
    pub tls_many: usize,
    pub activity: Duration,
    pub push_bytes: u64,
    pub stall: Duration,
    pub peers: Vec<Peer>,
    pub only: Vec<String>,
    /// The open-file limit every process gets (the proxy needs two descriptors per connection).
    pub nofile: u64,
    /// Whether the peer runs on its own CPU.
    pub pinned: bool,
}

impl Plan {
    pub fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                quick,
                rounds: 1,
                rounds_cheap: 1,
                tp_bytes: 128 << 20,
                rtt_count: 2000,
                conn_max: 2000,
                conn_time: Duration::from_millis(700),
                many: vec![1000],
                tls_many: 1000,
                activity: Duration::from_secs(1),
                push_bytes: 1 << 30,
                stall: Duration::from_secs(1),
                peers: peers::ALL.to_vec(),
                only: Vec::new(),
                nofile: 0,
                pinned: false,
            }
        } else {
            Plan {
                quick,
                rounds: 3,
                rounds_cheap: 5,
                tp_bytes: 2 << 30,
                rtt_count: 20_000,
                conn_max: 10_000,
                conn_time: Duration::from_secs(2),
                many: vec![1000, 5000, 10_000],
                tls_many: 5000,
                activity: Duration::from_secs(3),
                push_bytes: 1 << 30,
                stall: Duration::from_secs(2),
                peers: peers::ALL.to_vec(),
                only: Vec::new(),
                nofile: 0,
                pinned: false,
            }
        }
    }

    /// Bytes per reverse-direction run: at least 1 GiB, so that about a second of probes
    /// (one per millisecond) is collected even on a quick run.
    pub fn rev_bytes(&self) -> u64 {
        self.tp_bytes.max(1 << 30)
    }

    pub fn cases(&self) -> Vec<Case> {
        let mut v = vec![
            Case::TpUp,
            Case::TpDown,
            Case::Rtt,
            Case::ConnSeq,
            Case::Conn16,
        ];
        v.extend(self.many.iter().map(|&k| Case::Many(k)));
        v.extend([
            Case::StallUp,
            Case::StallDown,
            Case::BigFrame,
            Case::RevUp,
            Case::RevDown,
            Case::TlsUp,
            Case::TlsDown,
            Case::TlsConn16,
            Case::TlsMany(self.tls_many),
        ]);
        v.retain(|c| {
            self.only.is_empty() || self.only.iter().any(|o| o == c.scenario() || *o == c.id())
        });
        v
    }

    pub fn to_json(&self) -> Value {
        json!({
            "quick": self.quick,
            "rounds": self.rounds,
            "rounds_throughput_rtt_connrate": self.rounds_cheap,
            "throughput_bytes": self.tp_bytes,
            "rtt_messages": self.rtt_count,
            "connrate_max_cycles": self.conn_max,
            "connrate_seconds": self.conn_time.as_secs_f64(),
            "conns": self.many,
            "conns_activity_seconds": self.activity.as_secs_f64(),
            "push_bytes": self.push_bytes,
            "stall_seconds": self.stall.as_secs_f64(),
            "peers": self.peers.iter().map(|p| p.id()).collect::<Vec<_>>(),
            "open_file_limit": self.nofile,
            "pinned": self.pinned,
        })
    }
}

/// One run's outcome.
#[derive(Debug, Clone)]
pub struct RunRecord {
    pub round: usize,
    pub metrics: Metrics,
    pub error: Option<String>,
    pub skipped: bool,
}

/// All runs of one case, by peer.
pub struct CaseResult {
    pub case: Case,
    pub runs: BTreeMap<Peer, Vec<RunRecord>>,
}

impl CaseResult {
    /// Median of a metric over the rounds that produced it.
    pub fn median(&self, p: Peer, key: &str) -> Option<f64> {
        let mut v: Vec<f64> = self
            .runs
            .get(&p)?
            .iter()
            .filter(|r| r.error.is_none())
            .filter_map(|r| r.metrics.values.get(key).copied())
            .filter(|x| x.is_finite())
            .collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        Some(if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        })
    }

    /// The smallest value of a metric over rounds (a missing value counts as 0).
    pub fn min(&self, p: Peer, key: &str) -> Option<f64> {
        let runs = self.runs.get(&p)?;
        if runs.is_empty() || runs.iter().all(|r| r.skipped) {
            return None;
        }
        Some(
            runs.iter()
                .map(|r| r.metrics.values.get(key).copied().unwrap_or(0.0))
                .fold(f64::INFINITY, f64::min),
        )
    }

    pub fn ratio(&self, p: Peer, key: &str) -> Option<f64> {
        self.ratio_to(p, Peer::Relay, key)
    }

    /// The median of `p` over the median of `base` (another peer of the same run).
    pub fn ratio_to(&self, p: Peer, base: Peer, key: &str) -> Option<f64> {
        let b = self.median(base, key)?;
        let v = self.median(p, key)?;
        (b != 0.0).then(|| v / b)
    }

    /// Errors and notes for a peer, deduplicated.
    pub fn notes(&self, p: Peer) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for r in self.runs.get(&p).into_iter().flatten() {
            let mut add = |s: String| {
                if !out.contains(&s) {
                    out.push(s);
                }
            };
            if let Some(e) = &r.error {
                add(format!("round {}: {e}", r.round + 1));
            }
            for n in &r.metrics.notes {
                add(n.clone());
            }
        }
        out
    }
}

pub struct Options {
    pub plan: Plan,
    pub cmds: Commands,
    pub out: PathBuf,
    pub docs: Option<PathBuf>,
}

async fn run_case(
    case: Case,
    plan: &Plan,
    running: &peers::Running,
    targets: &Targets,
    peer: Peer,
    tls: Option<&crate::tls::TlsFiles>,
) -> Result<Metrics> {
    let addr = ws::Dial {
        addr: running.addr,
        raw: peer.raw(),
        proxy_v2: peer.proxy_v2(),
        tls: if case.tls() {
            tls.map(|t| t.connector.clone())
        } else {
            None
        },
    };
    let probe = Probe {
        proxy: running.pid,
        serve: targets.pid,
    };
    let tp_limit = Duration::from_secs(if plan.quick { 60 } else { 120 });
    let push = PushOpts {
        bytes: plan.push_bytes,
        stall: plan.stall,
        limit: Duration::from_secs(60),
    };
    match case {
        Case::TlsUp => scenarios::throughput_up(addr, probe, plan.tp_bytes, tp_limit).await,
        Case::TlsDown => scenarios::throughput_down(addr, probe, plan.tp_bytes, tp_limit).await,
        Case::TlsConn16 => {
            scenarios::conn_rate(addr, probe, 16, plan.conn_max, plan.conn_time).await
        }
        Case::TlsMany(k) => {
            let opts = ManyOpts {
                count: k.min(max_conns(plan.nofile)),
                activity: plan.activity,
                open_limit: Duration::from_secs(90),
            };
            scenarios::many(addr, running.pid, &opts).await
        }
        Case::TpUp => scenarios::throughput_up(addr, probe, plan.tp_bytes, tp_limit).await,
        Case::TpDown => scenarios::throughput_down(addr, probe, plan.tp_bytes, tp_limit).await,
        Case::Rtt => {
            scenarios::round_trip(addr, probe, plan.rtt_count, Duration::from_secs(20)).await
        }
        Case::ConnSeq => scenarios::conn_rate(addr, probe, 1, plan.conn_max, plan.conn_time).await,
        Case::Conn16 => scenarios::conn_rate(addr, probe, 16, plan.conn_max, plan.conn_time).await,
        Case::Many(k) => {
            let count = k.min(max_conns(plan.nofile));
            let opts = ManyOpts {
                count,
                activity: plan.activity,
                open_limit: Duration::from_secs(90),
            };
            let mut m = scenarios::many(addr, running.pid, &opts).await?;
            if count < k {
                m.notes.push(format!(
                    "{count} connections, not {k}: the open-file hard limit is {} and a proxy needs two \
                     descriptors per connection",
                    plan.nofile
                ));
            }
            Ok(m)
        }
        Case::StallUp => scenarios::stall_up(addr, running.pid, targets.tcp_ctl, &push).await,
        Case::StallDown => scenarios::stall_down(addr, running.pid, targets.tcp_ctl, &push).await,
        Case::BigFrame => scenarios::big_frame(addr, probe, targets.tcp_ctl, &push).await,
        Case::RevUp => scenarios::reverse_up(addr, probe, plan.rev_bytes(), tp_limit).await,
        Case::RevDown => scenarios::reverse_down(addr, probe, plan.rev_bytes(), tp_limit).await,
    }
}

/// Waits (at most `limit`) until the machine is less than 15% busy over 300 ms, so runs do
/// not start in the middle of someone else's build. Returns the wait and the last reading.
async fn wait_quiet(limit: Duration) -> (Duration, f64) {
    let start = std::time::Instant::now();
    loop {
        let (b0, t0) = crate::procfs::machine_cpu();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (b1, t1) = crate::procfs::machine_cpu();
        let busy = if t1 > t0 {
            100.0 * (b1 - b0) / (t1 - t0)
        } else {
            0.0
        };
        if busy < 15.0 || start.elapsed() >= limit {
            return (start.elapsed(), busy);
        }
    }
}

/// The most connections a proxy can hold under the open-file limit (two sockets each, and a
/// few descriptors of its own).
pub fn max_conns(nofile: u64) -> usize {
    (nofile.saturating_sub(40) / 2) as usize
}

fn summary(case: Case, m: &Metrics) -> String {
    let g = |k: &str| m.values.get(k).copied().unwrap_or(f64::NAN);
    let s = match case {
        Case::TpUp | Case::TpDown | Case::TlsUp | Case::TlsDown => format!(
            "{:.0} MiB/s, proxy CPU {:.0}%, client CPU {:.0}%, target CPU {:.0}%",
            g("mib_s"),
            g("proxy_cpu_pct"),
            g("client_cpu_pct"),
            g("target_cpu_pct")
        ),
        Case::Rtt => format!(
            "p50 {:.1} us, p99 {:.1} us ({} samples)",
            g("p50_us"),
            g("p99_us"),
            g("samples")
        ),
        Case::ConnSeq | Case::Conn16 | Case::TlsConn16 => {
            format!(
                "{:.0} conn/s ({} ok, {} failed)",
                g("conn_s"),
                g("completed"),
                g("failed")
            )
        }
        Case::Many(k) | Case::TlsMany(k) => format!(
            "opened {}/{k}, echo ok {}, {:.2} KiB/conn RSS ({:.2} KiB PSS), open took {:.1} s",
            g("opened"),
            g("echo_ok"),
            g("rss_kib_per_conn"),
            g("pss_kib_per_conn"),
            g("open_seconds")
        ),
        Case::StallUp | Case::StallDown => format!(
            "accepted {:.1} MiB in {:.1} s, RSS growth {:.2} MiB{}",
            g("accepted_mib"),
            g("seconds"),
            g("rss_growth_mib"),
            if g("stalled") == 1.0 { ", stalled" } else { "" }
        ),
        Case::BigFrame => format!(
            "{:.0} MiB/s, delivered {:.0} MiB, RSS growth {:.2} MiB",
            g("mib_s"),
            g("delivered_mib"),
            g("rss_growth_mib")
        ),
        Case::RevUp => format!(
            "{:.0} MiB/s up; 24 B acks down: max {:.0} us, p99 {:.0} us ({} acks)",
            g("mib_s"),
            g("ack_max_us"),
            g("ack_p99_us"),
            g("acks")
        ),
        Case::RevDown => format!(
            "{:.0} MiB/s down; 8 B probes up: p99 {:.0} us, max {:.0} us ({} probes)",
            g("mib_s"),
            g("probe_p99_us"),
            g("probe_max_us"),
            g("probes")
        ),
    };
    if m.notes.is_empty() {
        s
    } else {
        format!("{s} [{}]", m.notes.join("; "))
    }
}

pub async fn run(opts: Options) -> Result<()> {
    std::fs::create_dir_all(&opts.out)?;
    let log_dir = opts.out.join("logs");
    std::fs::create_dir_all(&log_dir)?;
    let mut cmds = opts.cmds.clone();
    cmds.log_dir = log_dir;
    let nofile = crate::procfs::raise_nofile();
    let mut plan_owned = opts.plan.clone();
    plan_owned.nofile = nofile;
    let plan = &plan_owned;
    eprintln!("ws-bench: open-file limit {nofile}");
    if let Some(&k) = plan.many.iter().find(|&&k| k > max_conns(nofile)) {
        eprintln!(
            "ws-bench: warning: the open-file limit {nofile} allows a proxy {} connections, not {k}; \
             larger counts are capped (raise it with `ulimit -n` where permitted)",
            max_conns(nofile)
        );
    }
    let targets = Targets::start(&cmds.bench)?;
    let cases = plan.cases();
    let tls = if cases.iter().any(|c| c.tls()) {
        Some(
            crate::tls::make(&opts.out.join("tls"))
                .context("cannot make the TLS test certificates")?,
        )
    } else {
        None
    };
    let mut results: Vec<CaseResult> = Vec::new();
    let started = std::time::Instant::now();
    let mut failed_many: HashSet<Peer> = HashSet::new();
    for &case in &cases {
        let mut cr = CaseResult {
            case,
            runs: BTreeMap::new(),
        };
        let peers: Vec<Peer> = plan
            .peers
            .iter()
            .copied()
            .filter(|&p| case.applies(p))
            .collect();
        let rounds = if matches!(
            case,
            Case::TpUp
                | Case::TpDown
                | Case::Rtt
                | Case::ConnSeq
                | Case::Conn16
                | Case::TlsUp
                | Case::TlsDown
                | Case::TlsConn16
        ) {
            plan.rounds_cheap
        } else {
            plan.rounds
        };
        for round in 0..rounds {
            let n = peers.len().max(1);
            for i in 0..peers.len() {
                let peer = peers[(i + round) % n];
                let tag = format!("[{} {}/{}] {:<9}", case.id(), round + 1, rounds, peer.id());
                if matches!(case, Case::Many(_)) && failed_many.contains(&peer) {
                    eprintln!("{tag} skipped: not every connection echoed at a smaller count");
                    cr.runs.entry(peer).or_default().push(RunRecord {
                        round,
                        metrics: Metrics {
                            notes: vec![
                                "skipped: not every connection echoed at a smaller count".into(),
                            ],
                            ..Metrics::default()
                        },
                        error: None,
                        skipped: true,
                    });
                    continue;
                }
                let (waited, busy) =
                    wait_quiet(Duration::from_secs(if plan.quick { 5 } else { 30 })).await;
                if waited > Duration::from_secs(1) {
                    eprintln!(
                        "{tag} waited {:.0} s for other work on the machine to calm down ({busy:.0}% busy)",
                        waited.as_secs_f64()
                    );
                }
                let mut record = match peers::start(
                    &cmds,
                    &targets,
                    peer,
                    case.target(),
                    if case.tls() { tls.as_ref() } else { None },
                ) {
                    Err(e) => RunRecord {
                        round,
                        metrics: Metrics::default(),
                        error: Some(format!("{e:#}")),
                        skipped: false,
                    },
                    Ok(mut running) => {
                        let r = tokio::time::timeout(
                            Duration::from_secs(300),
                            run_case(case, plan, &running, &targets, peer, tls.as_ref()),
                        )
                        .await
                        .unwrap_or_else(|_| {
                            Err(anyhow::anyhow!("run did not finish within 300 s"))
                        });
                        running.stop();
                        match r {
                            Ok(metrics) => RunRecord {
                                round,
                                metrics,
                                error: None,
                                skipped: false,
                            },
                            Err(e) => RunRecord {
                                round,
                                metrics: Metrics::default(),
                                error: Some(format!("{e:#}")),
                                skipped: false,
                            },
                        }
                    }
                };
                record.metrics.set("busy_before_pct", busy);
                match &record.error {
                    None => eprintln!("{tag} {}", summary(case, &record.metrics)),
                    Some(e) => eprintln!("{tag} FAILED: {e}"),
                }
                // Connections the target still holds for a stalled push are let go.
                if matches!(case, Case::StallUp | Case::StallDown) {
                    let _ = scenarios::release_holds(targets.tcp_ctl).await;
                }
                cr.runs.entry(peer).or_default().push(record);
                // Give sockets in TIME_WAIT and exiting processes a moment between runs.
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        }
        if let Case::Many(k) = case {
            let want = k.min(max_conns(nofile)) as f64;
            for &p in &peers {
                if cr.min(p, "echo_ok").is_some_and(|ok| ok < want) {
                    failed_many.insert(p);
                }
            }
        }
        results.push(cr);
    }
    let elapsed = started.elapsed();
    drop(targets);
    let env = report::environment(&cmds);
    report::write(&opts, plan, &results, &env, elapsed)?;
    eprintln!(
        "ws-bench: done in {:.0} s; results in {}",
        elapsed.as_secs_f64(),
        opts.out.display()
    );
    Ok(())
}

/// Parses `--only`/`--peers` lists.
pub fn parse_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(|x| x.trim().to_owned())
        .filter(|x| !x.is_empty())
        .collect()
}

pub fn parse_peers(s: &str) -> Result<Vec<Peer>> {
    parse_list(s)
        .iter()
        .map(|p| {
            Peer::from_id(p).with_context(|| {
                format!(
                    "unknown peer {p:?} (direct, relay, bare, ours, upstream, websocat, \
                     ours-metrics, ours-pp)"
                )
            })
        })
        .collect()
}
