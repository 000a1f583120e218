//! Results: `results.json` (every run), `results.md` (the table and the bars) and, for full
//! runs, `docs/benchmarks.md` (machine, versions, table, method).

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::Result;
use serde_json::{Value, json};

use crate::peers::{Commands, Peer};
use crate::run::{Case, CaseResult, Options, Plan};

/// The machine and the versions of everything measured.
pub struct Env {
    pub date: String,
    pub nproc: String,
    pub lscpu: String,
    pub kernel: String,
    pub rustc: String,
    pub versions: Vec<(String, String)>,
}

fn cmd(prog: &str, args: &[&str]) -> String {
    Command::new(prog)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            let mut s = String::from_utf8_lossy(&o.stdout).trim().to_owned();
            if s.is_empty() {
                s = String::from_utf8_lossy(&o.stderr).trim().to_owned();
            }
            s
        })
        .unwrap_or_else(|| "unknown".into())
}

pub fn environment(cmds: &Commands) -> Env {
    let mut versions = vec![("websockify (ours)".to_owned(), {
        let v = cmd(&cmds.ours.to_string_lossy(), &["--version"]);
        let git = cmd("git", &["rev-parse", "--short", "HEAD"]);
        let dirty = if cmd("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty() {
            ""
        } else {
            "+changes"
        };
        format!("{v} (git {git}{dirty}, release build)")
    })];
    if let Some(up) = &cmds.upstream {
        let py = up.with_file_name("python");
        let v = cmd(
            &py.to_string_lossy(),
            &[
                "-c",
                "import importlib.metadata as m, sys; print('websockify', m.version('websockify'), \
                 '+ numpy', m.version('numpy'), 'on Python', sys.version.split()[0])",
            ],
        );
        versions.push(("websockify (Python)".into(), v));
    }
    if let Some(w) = &cmds.websocat {
        versions.push(("websocat".into(), cmd(&w.to_string_lossy(), &["--version"])));
    }
    versions.push((
        "tokio (relay, load generator)".into(),
        "1.x, copy_bidirectional_with_sizes 64 KiB".into(),
    ));
    let lscpu = cmd("lscpu", &[]);
    Env {
        date: cmd("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        nproc: cmd("nproc", &[]),
        lscpu: lscpu.lines().take(10).collect::<Vec<_>>().join("\n"),
        kernel: cmd("uname", &["-sr"]),
        rustc: cmd("rustc", &["-V"]),
        versions,
    }
}

/// A table row: one metric of one case.
struct Row {
    key: &'static str,
    label: &'static str,
    unit: &'static str,
    higher_better: bool,
    /// Show a ratio to the relay.
    ratio: bool,
}

fn rows(cases: &[Case]) -> Vec<(Case, Row)> {
    let mut out = Vec::new();
    let mut add = |c: Case, key, label, unit, higher_better, ratio| {
        out.push((
            c,
            Row {
                key,
                label,
                unit,
                higher_better,
                ratio,
            },
        ));
    };
    for &c in cases {
        match c {
            Case::TpUp => {
                add(
                    c,
                    "mib_s",
                    "1. throughput up (client→target), 64 KiB messages",
                    "MiB/s",
                    true,
                    true,
                );
                add(
                    c,
                    "mib_per_cpu_s",
                    "1. up: MiB per CPU-second of the proxy",
                    "MiB/CPU-s",
                    true,
                    true,
                );
            }
            Case::TpDown => {
                add(
                    c,
                    "mib_s",
                    "1. throughput down (target→client), 64 KiB writes",
                    "MiB/s",
                    true,
                    true,
                );
                add(
                    c,
                    "mib_per_cpu_s",
                    "1. down: MiB per CPU-second of the proxy",
                    "MiB/CPU-s",
                    true,
                    true,
                );
            }
            Case::Rtt => {
                add(
                    c,
                    "p50_us",
                    "2. round trip, 64-byte messages, p50",
                    "µs",
                    false,
                    true,
                );
                add(
                    c,
                    "p99_us",
                    "2. round trip, 64-byte messages, p99",
                    "µs",
                    false,
                    true,
                );
            }
            Case::ConnSeq => add(
                c,
                "conn_s",
                "3. connection rate, sequential",
                "conn/s",
                true,
                true,
            ),
            Case::Conn16 => add(
                c,
                "conn_s",
                "3. connection rate, 16 at a time",
                "conn/s",
                true,
                true,
            ),
            Case::Many(k) => {
                let label: &'static str = Box::leak(
                    format!("4. {k} connections: memory per connection").into_boxed_str(),
                );
                add(c, "mem_kib_per_conn", label, "KiB", false, true);
                let label: &'static str = Box::leak(
                    format!("4. {k} connections: still echoing (worst round)").into_boxed_str(),
                );
                add(c, "echo_ok", label, "of K", true, false);
            }
            Case::StallUp => {
                add(
                    c,
                    "rss_growth_mib",
                    "5. target stops reading, 1 GiB pushed up: RSS growth",
                    "MiB",
                    false,
                    false,
                );
                add(
                    c,
                    "accepted_mib",
                    "5. up: bytes accepted before the push stalled",
                    "MiB",
                    false,
                    false,
                );
            }
            Case::StallDown => {
                add(
                    c,
                    "rss_growth_mib",
                    "5. client stops reading, 1 GiB pushed down: RSS growth",
                    "MiB",
                    false,
                    false,
                );
                add(
                    c,
                    "accepted_mib",
                    "5. down: bytes accepted before the push stalled",
                    "MiB",
                    false,
                    false,
                );
            }
            Case::TlsUp => {
                add(
                    c,
                    "mib_s",
                    "T1. wss:// throughput up, 64 KiB messages",
                    "MiB/s",
                    true,
                    true,
                );
                add(
                    c,
                    "mib_per_cpu_s",
                    "T1. wss:// up: MiB per CPU-second of the proxy",
                    "MiB/CPU-s",
                    true,
                    true,
                );
            }
            Case::TlsDown => {
                add(
                    c,
                    "mib_s",
                    "T1. wss:// throughput down, 64 KiB writes",
                    "MiB/s",
                    true,
                    true,
                );
                add(
                    c,
                    "mib_per_cpu_s",
                    "T1. wss:// down: MiB per CPU-second of the proxy",
                    "MiB/CPU-s",
                    true,
                    true,
                );
            }
            Case::TlsConn16 => add(
                c,
                "conn_s",
                "T2. wss:// connections (TLS handshake, WebSocket handshake, 32 B echo, close), 16 at a time",
                "conn/s",
                true,
                true,
            ),
            Case::TlsMany(k) => {
                let label: &'static str = Box::leak(
                    format!("T3. {k} idle wss:// connections: memory per connection")
                        .into_boxed_str(),
                );
                add(c, "mem_kib_per_conn", label, "KiB", false, true);
                let label: &'static str = Box::leak(
                    format!("T3. {k} wss:// connections: still echoing (worst round)")
                        .into_boxed_str(),
                );
                add(c, "echo_ok", label, "of K", true, false);
            }
            Case::RevUp => {
                add(
                    c,
                    "ack_max_us",
                    "7. up saturated: 24 B acks down, max delay",
                    "µs",
                    false,
                    true,
                );
                add(
                    c,
                    "ack_p99_us",
                    "7. up saturated: 24 B acks down, p99 delay",
                    "µs",
                    false,
                    true,
                );
            }
            Case::RevDown => {
                add(
                    c,
                    "probe_p99_us",
                    "7. down saturated: 8 B probes up, p99 delay",
                    "µs",
                    false,
                    true,
                );
                add(
                    c,
                    "probe_max_us",
                    "7. down saturated: 8 B probes up, max delay",
                    "µs",
                    false,
                    true,
                );
            }
            Case::BigFrame => {
                add(
                    c,
                    "mib_s",
                    "6. one frame declaring 2^40 bytes, 1 GiB streamed",
                    "MiB/s",
                    true,
                    true,
                );
                add(
                    c,
                    "rss_growth_mib",
                    "6. 2^40-byte frame: RSS growth",
                    "MiB",
                    false,
                    false,
                );
            }
        }
    }
    out
}

fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn cell(cr: &CaseResult, p: Peer, row: &Row) -> String {
    let Some(runs) = cr.runs.get(&p) else {
        return "–".into();
    };
    if runs.iter().all(|r| r.skipped) {
        return "skipped".into();
    }
    if row.key == "echo_ok" {
        let req = cr.median(p, "requested").unwrap_or(0.0);
        return match cr.min(p, "echo_ok") {
            Some(v) => format!("{v:.0}/{req:.0}"),
            None => "–".into(),
        };
    }
    let failed = runs.iter().filter(|r| r.error.is_some()).count();
    let Some(v) = cr.median(p, row.key) else {
        let stalled = runs
            .iter()
            .any(|r| r.metrics.values.get("stalled") == Some(&1.0));
        return if failed > 0 {
            "failed".into()
        } else if stalled {
            "stalled".into()
        } else {
            "–".into()
        };
    };
    let mut s = fmt_num(v);
    if row.ratio
        && p != Peer::Relay
        && let Some(r) = cr.ratio(p, row.key)
    {
        let _ = write!(s, " ({r:.2}×)");
    }
    if failed > 0 {
        let _ = write!(s, " ({failed}/{} failed)", runs.len());
    }
    s
}

/// A bar our websockify must meet.
struct Bar {
    text: String,
    measured: Option<f64>,
    met: Option<bool>,
    shown: String,
}

fn bars(results: &[CaseResult]) -> Vec<Bar> {
    let find = |c: Case| results.iter().find(|r| r.case == c);
    let mut out = Vec::new();
    let ratio_bar =
        |out: &mut Vec<Bar>, c: Case, key: &str, text: &str, limit: f64, at_least: bool| {
            let r = find(c).and_then(|cr| cr.ratio(Peer::Ours, key));
            out.push(Bar {
                text: text.into(),
                measured: r,
                met: r.map(|r| if at_least { r >= limit } else { r <= limit }),
                shown: r.map_or("not measured".into(), |r| format!("{r:.2}× relay")),
            });
        };
    ratio_bar(
        &mut out,
        Case::TpUp,
        "mib_s",
        "throughput up ≥ 1.0× relay",
        1.0,
        true,
    );
    ratio_bar(
        &mut out,
        Case::TpDown,
        "mib_s",
        "throughput down ≥ 1.0× relay",
        1.0,
        true,
    );
    ratio_bar(
        &mut out,
        Case::Rtt,
        "p50_us",
        "round trip p50 ≤ 1.1× relay",
        1.1,
        false,
    );
    ratio_bar(
        &mut out,
        Case::Rtt,
        "p99_us",
        "round trip p99 ≤ 1.25× relay",
        1.25,
        false,
    );
    ratio_bar(
        &mut out,
        Case::Conn16,
        "conn_s",
        "connections/s at 16 concurrent ≥ 1.0× relay",
        1.0,
        true,
    );
    {
        let cr = find(Case::Many(10_000));
        let kib = cr.and_then(|c| c.median(Peer::Ours, "mem_kib_per_conn"));
        let ok = cr.and_then(|c| c.min(Peer::Ours, "echo_ok"));
        let req = cr
            .and_then(|c| c.median(Peer::Ours, "requested"))
            .unwrap_or(10_000.0);
        out.push(Bar {
            text: "≤ 12 KiB per idle connection at 10,000, all still echoing".into(),
            measured: kib,
            met: kib.zip(ok).map(|(k, ok)| k <= 12.0 && ok >= req),
            shown: match (kib, ok) {
                (Some(k), Some(ok)) => format!("{k:.2} KiB, {ok:.0}/{req:.0} echo"),
                _ => "not measured".into(),
            },
        });
    }
    for (c, text) in [
        (Case::StallUp, "stalled push up: RSS growth ≤ 4 MiB"),
        (Case::StallDown, "stalled push down: RSS growth ≤ 4 MiB"),
        (Case::BigFrame, "2^40-byte frame: RSS growth ≤ 4 MiB"),
    ] {
        let v = find(c).and_then(|cr| cr.median(Peer::Ours, "rss_growth_mib"));
        out.push(Bar {
            text: text.into(),
            measured: v,
            met: v.map(|v| v <= 4.0),
            shown: v.map_or("not measured".into(), |v| format!("{v:.2} MiB")),
        });
    }
    out
}

/// The table of the plain (`tls` false) or the wss:// cases (`tls` true; the relay column
/// is then the TLS-terminating relay). Empty when no such case ran.
fn table(results: &[CaseResult], peers: &[Peer], tls: bool) -> String {
    let cases: Vec<Case> = results
        .iter()
        .map(|r| r.case)
        .filter(|c| c.tls() == tls)
        .collect();
    if cases.is_empty() {
        return String::new();
    }
    let peers: Vec<Peer> = if tls {
        peers
            .iter()
            .copied()
            .filter(|&p| {
                matches!(
                    p,
                    Peer::Relay | Peer::Ours | Peer::Upstream | Peer::Websocat
                )
            })
            .collect()
    } else {
        peers.to_vec()
    };
    let peers = &peers[..];
    let mut s = String::new();
    let _ = write!(s, "| scenario | unit |");
    for p in peers {
        let title = if tls && *p == Peer::Relay {
            "TLS relay (rustls + tokio copy)"
        } else {
            p.title()
        };
        let _ = write!(s, " {title} |");
    }
    let _ = write!(s, "\n|---|---|");
    for _ in peers {
        s.push_str("---:|");
    }
    s.push('\n');
    for (c, row) in rows(&cases) {
        let Some(cr) = results.iter().find(|r| r.case == c) else {
            continue;
        };
        let better = if row.key == "echo_ok" || row.key == "accepted_mib" {
            ""
        } else if row.higher_better {
            " ↑"
        } else {
            " ↓"
        };
        let _ = write!(s, "| {} | {}{} |", row.label, row.unit, better);
        for &p in peers {
            let _ = write!(s, " {} |", cell(cr, p, &row));
        }
        s.push('\n');
    }
    s
}

/// Ours against both floors: the WebSocket relay and the bare TCP relay, with the goals of
/// issue 14 (ratios to the bare floor).
fn floors_table(results: &[CaseResult]) -> String {
    let rows: [(Case, &str, &str, &str); 10] = [
        (Case::TpUp, "mib_s", "up, 64 KiB messages (MiB/s)", "≥ 1.00"),
        (
            Case::TpUp,
            "mib_per_cpu_s",
            "up, MiB per proxy CPU-second",
            "≥ 1.00",
        ),
        (Case::TpDown, "mib_s", "down (MiB/s)", "≥ 1.20"),
        (
            Case::TpDown,
            "mib_per_cpu_s",
            "down, MiB per proxy CPU-second",
            "–",
        ),
        (Case::ConnSeq, "conn_s", "connections/s, one at a time", "–"),
        (
            Case::Conn16,
            "conn_s",
            "connections/s, 16 at a time",
            "≥ 1.00",
        ),
        (
            Case::Rtt,
            "p50_us",
            "round trip p50, 64 B (µs, lower is better)",
            "≤ 1.00",
        ),
        (
            Case::Rtt,
            "p99_us",
            "round trip p99, 64 B (µs, lower is better)",
            "≤ 1.00",
        ),
        (
            Case::RevUp,
            "ack_max_us",
            "up saturated: 24 B ack max (µs, lower is better)",
            "≤ 5 ms",
        ),
        (
            Case::RevDown,
            "probe_p99_us",
            "down saturated: 8 B probe p99 (µs, lower is better)",
            "≤ 5 ms",
        ),
    ];
    let mut s = String::from(
        "| figure | bare TCP relay | TCP relay (WebSocket through) | ours | ours / relay | ours / bare | goal / bare |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut any = false;
    for (c, key, label, goal) in rows {
        let Some(cr) = results.iter().find(|r| r.case == c) else {
            continue;
        };
        let v = |p: Peer| cr.median(p, key).map_or("–".into(), fmt_num);
        let r = |base: Peer| {
            cr.ratio_to(Peer::Ours, base, key)
                .map_or("–".into(), |r| format!("{r:.2}"))
        };
        if cr.median(Peer::Bare, key).is_some() {
            any = true;
        }
        let _ = writeln!(
            s,
            "| {label} | {} | {} | {} | {} | {} | {goal} |",
            v(Peer::Bare),
            v(Peer::Relay),
            v(Peer::Ours),
            r(Peer::Relay),
            r(Peer::Bare)
        );
    }
    if any { s } else { String::new() }
}

/// Our websockify with an option on, over the same without it.
fn options_table(results: &[CaseResult]) -> String {
    let mut s = String::from(
        "| run | ours | + --metrics-listen | ratio | + --proxy-protocol (PROXY v2 header) | ratio |\n\
         |---|---:|---:|---:|---:|---:|\n",
    );
    let mut any = false;
    for (c, key, label) in [
        (Case::TpUp, "mib_s", "up (MiB/s)"),
        (Case::TpDown, "mib_s", "down (MiB/s)"),
        (Case::Rtt, "p50_us", "round trip p50 (µs)"),
        (Case::Conn16, "conn_s", "connections/s, 16 at a time"),
    ] {
        let Some(cr) = results.iter().find(|r| r.case == c) else {
            continue;
        };
        if cr.median(Peer::OursMetrics, key).is_none()
            && cr.median(Peer::OursProxyProtocol, key).is_none()
        {
            continue;
        }
        any = true;
        let v = |p: Peer| cr.median(p, key).map_or("–".into(), fmt_num);
        let r = |p: Peer| {
            cr.ratio_to(p, Peer::Ours, key)
                .map_or("–".into(), |r| format!("{r:.2}"))
        };
        let _ = writeln!(
            s,
            "| {label} | {} | {} | {} | {} | {} |",
            v(Peer::Ours),
            v(Peer::OursMetrics),
            r(Peer::OursMetrics),
            v(Peer::OursProxyProtocol),
            r(Peer::OursProxyProtocol)
        );
    }
    if any { s } else { String::new() }
}

fn cpu_table(results: &[CaseResult], peers: &[Peer]) -> String {
    let mut s = String::from("| run | process |");
    for p in peers {
        let _ = write!(s, " {} |", p.title());
    }
    s.push_str("\n|---|---|");
    for _ in peers {
        s.push_str("---:|");
    }
    s.push('\n');
    for cr in results.iter().filter(|r| {
        matches!(
            r.case,
            Case::TpUp | Case::TpDown | Case::Rtt | Case::Conn16 | Case::BigFrame
        )
    }) {
        for (key, who) in [
            ("proxy_cpu_pct", "proxy"),
            ("client_cpu_pct", "load generator (ws-bench)"),
            ("target_cpu_pct", "target (ws-bench serve)"),
            ("other_cpu_pct", "everything else on the machine"),
        ] {
            let _ = write!(s, "| {} | {who} |", cr.case.id());
            for &p in peers {
                let v = cr.median(p, key).map_or("–".into(), |v| format!("{v:.0}%"));
                let _ = write!(s, " {v} |");
            }
            s.push('\n');
        }
    }
    s
}

/// A warning when other work on the machine took a noticeable share of CPU during runs.
fn noise_warning(results: &[CaseResult], peers: &[Peer]) -> Option<String> {
    let mut worst: Option<(f64, String)> = None;
    for cr in results {
        for &p in peers {
            if let Some(v) = cr.median(p, "other_cpu_pct")
                && v > 10.0
                && worst.as_ref().is_none_or(|w| v > w.0)
            {
                worst = Some((v, format!("{} / {}", cr.case.id(), p.id())));
            }
        }
    }
    worst.map(|(v, at)| {
        format!(
            "**Noise:** other processes used up to {v:.0}% of a core during the measured runs (median, at {at}); \
             compare ratios rather than absolute numbers, or re-run on a quiet machine."
        )
    })
}

fn notes(results: &[CaseResult], peers: &[Peer]) -> String {
    let mut s = String::new();
    for cr in results {
        for &p in peers {
            let n = cr.notes(p);
            if !n.is_empty() {
                let _ = writeln!(s, "- `{}` / {}: {}", cr.case.id(), p.id(), n.join("; "));
            }
        }
    }
    s
}

fn bars_md(results: &[CaseResult]) -> String {
    let mut s = String::from("| bar for our websockify | measured | met |\n|---|---|---|\n");
    for b in bars(results) {
        let met = match b.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "–",
        };
        let _ = writeln!(s, "| {} | {} | {met} |", b.text, b.shown);
    }
    s
}

pub const METHOD: &str = "\
### What each column measures

- **direct (no proxy)**: the load generator speaks WebSocket straight to the bench's own
  WebSocket target (`ws-bench serve`). A ceiling, not a proxy: in it the load generator and the
  target are the whole system, so their CPU (not a proxy's) is what bounds it.
- **TCP relay (tokio copy)**: `ws-bench relay`, tokio `copy_bidirectional_with_sizes` with
  64 KiB buffers on tokio's default multi-thread runtime, in front of that same WebSocket target;
  the client's WebSocket bytes cross it untouched. The floor for any proxy, and the denominator
  of every ratio.
- **bare TCP relay (raw TCP both ends)**: the same `ws-bench relay`, but the client speaks raw
  TCP through it to the bench's raw TCP target: no WebSocket anywhere, so no handshake, framing
  or masking is charged to anyone. The floor that any copying proxy stands on; run for
  throughput, round trip, connection rate and the reverse direction, and shown beside the relay
  in *Ours against both floors*.
- **ours + --metrics-listen**, **ours + --proxy-protocol** (run only when named in `--peers`,
  e.g. `--peers ours,ours-metrics,ours-pp`): our websockify with that option; with
  `--proxy-protocol` the client sends a PROXY v2 header before its handshake. *Options on vs
  off* gives each over plain ours.
- **websockify (Rust, ours)**, **websockify (Python)**, **websocat** (`--binary -E ws-l: tcp:`):
  the client speaks WebSocket to the proxy, the proxy speaks plain TCP to the bench's TCP target
  (echo, sink, source or never-read). These do the WebSocket work (unmasking, framing) that the
  relay leaves to the target.

### What each row measures

1. *Throughput*: one connection. Up: the client sends 2 GiB (quick: 128 MiB) as masked 64 KiB
   binary frames (four per `write`) to a sink, timed until the sink acknowledges the last byte.
   Down: the target writes the same amount in 64 KiB writes (64 KiB frames behind the relay),
   timed until the client has the last payload byte. *MiB per CPU-second*: bytes over the CPU
   time the proxy used during the transfer (its threads' run time from `/proc/PID/task/*/schedstat`,
   or utime+stime from `/proc/PID/stat`; the whole process tree).
2. *Round trip*: one connection, 64-byte binary messages sent one at a time to an echo target;
   each sample is the time from `write` to the last echoed byte; 20,000 samples after a warm-up
   (quick: 2,000).
3. *Connection rate*: open TCP, WebSocket handshake, one 32-byte echo, close handshake (close
   sent, close or EOF received; bare relay: open, one 32-byte echo, FIN, EOF received); completed cycles per second, one at a time and 16 at a time,
   for 2 s or 10,000 cycles (quick: 0.7 s or 2,000).
4. *Many connections*: after one warm-up cycle, K connections are opened (64 handshakes in
   flight, each echoing once), then each echoes once more at a random moment within 3 s
   (quick: 1 s); after 0.5 s idle the proxy's memory is read, then every connection echoes once
   more (*still echoing*). *Memory per connection* = (RSS when idle − RSS before opening) /
   connections opened; for a proxy that forks per connection (upstream) it is the sum of PSS
   over its processes, since summed RSS counts the pages the forks share once per process
   (`results.json` has both). Opening stops after K/50 failures; a peer for which not every
   connection echoed is skipped at larger K. A proxy needs two descriptors per connection: if
   the open-file hard limit is below 2K + 40 (this machine: 20,000, not raisable without
   CAP_SYS_RESOURCE), K is capped and the notes say so.
5. *Stalled reader*: up, the target reads the request and then never reads again while the
   client pushes 64 KiB frames; down, the target pushes while the client never reads. The push
   stops after 1 GiB or when it makes no progress for 2 s (quick: 1 s). *RSS growth* = peak RSS
   (sampled every 20 ms) − RSS after the handshake; *accepted* = bytes the pushing side got
   written (kernel socket buffers included, about 8 MiB on loopback). A proxy that buffers
   without bound shows RSS growth close to the bytes it accepted; if it reads in bursts, the
   2-second rule may stop the push before 1 GiB.
6. *2^40-byte frame*: one masked frame header declaring 2^40 bytes, then 1 GiB of its payload
   streamed to a sink; throughput until the sink acknowledges; *stalled* when the sink got no
   byte for 2 s (a proxy that waits for the whole frame), *failed* or a note when the proxy
   closes the connection; peak RSS growth as in 5.
7. *Reverse direction while the other is saturated* (a VNC session: a framebuffer stream one
   way, small input or acknowledgement messages the other). *Up saturated* (`reverse-up`): the
   client pushes 1 GiB (at least; or the throughput size) of 64 KiB frames to a sink that sends
   a 24-byte ack down after every MiB it has read; each ack carries the target's
   CLOCK_MONOTONIC at `write`, and its delay is taken when the client reads it; the row shows
   the worst and the 99th percentile. *Down saturated* (`reverse-down`): the target sources
   1 GiB while the client sends an 8-byte probe up every millisecond carrying its own
   CLOCK_MONOTONIC at `write`; the target takes each probe's delay when it reads it and answers
   the percentiles after the last byte. Client, proxy and target run on one machine, so the
   one clock serves all three. A relay that lets one direction monopolise its task (or its
   buffers) shows it here.

*wss:// (TLS)* table (scenario `tls`): at the start of the run ws-bench makes a throwaway CA and a
certificate for localhost / 127.0.0.1 with rcgen (`target/bench/tls/`); its client (tokio-rustls,
trusting that CA, session resumption on as rustls has it by default) speaks wss:// to every peer.
Our websockify and upstream get `--cert server.crt --key server.key`; websocat gets
`--pkcs12-der server.p12 wss-l:` (made with the openssl command); the floor is `ws-bench relay
--tls-cert --tls-key`, which terminates TLS with rustls and copies the plaintext WebSocket to the
bench's WebSocket target. T1 is scenario 1 over TLS, T2 scenario 3 at 16 at a time (each cycle a
TLS handshake, possibly resumed, then WebSocket handshake, 32-byte echo, close), T3 scenario 4
with 5,000 connections (quick: 1,000). Ratios in that table are to the TLS relay.

Each cell is the median of the rounds (each round starts every peer afresh, in an order that
rotates from round to round); the ratio in brackets is that median over the TCP relay's median
from the same run (↑: higher is better, ↓: lower is better). Bulk frames are masked once with
distinct keys and re-sent, so the load generator spends no CPU masking; the proxy still unmasks
every byte. The CPU table shows each process's share of a core during the measured part of each
run: where a proxy is measured, the load generator stays well below one core, so it is not what
limits the proxy. Before each run the harness waits (up to 30 s) for the machine to be under 15%
busy; *everything else on the machine* shows what other processes used meanwhile.

### Profiling our websockify with the harness

`--ours-prefix` runs our binary under a tool (the relay still runs beside it as the baseline):

```
B=target/release/ws-bench; W=target/release/websockify; mkdir -p target/bench-prof
# time, kernel included (software cpu-clock event: this VM has no hardware counters)
$B run --only throughput-up --peers ours --rounds 1 --ours $W --out target/bench-prof \\
   --ours-prefix \"perf record -q -e cpu-clock -F 4999 -g -o target/bench-prof/perf.data --\"
perf report -i target/bench-prof/perf.data --no-children --sort dso,sym -g none --stdio
# instruction counts, user space only (repeatable on a noisy machine)
$B run --only throughput-up --peers ours --rounds 1 --throughput-mib 256 --ours $W \\
   --out target/bench-prof --ours-prefix \"valgrind --tool=callgrind --callgrind-out-file=target/bench-prof/cg.out\"
callgrind_annotate target/bench-prof/cg.out | head -40
# system calls per transfer
$B run --only throughput-up --peers ours --rounds 1 --throughput-mib 512 --ours $W \\
   --out target/bench-prof --ours-prefix \"strace -f -c -o target/bench-prof/strace.txt\"
```
";

/// Where the instructions go: the profile of issue 14 (kept on the page across full runs;
/// re-measure as it says when the relay or the handshake changes).
pub const PROFILE: &str = "\
## Where the instructions go (profile, issue 14)

Measured with callgrind (user-space instructions, repeatable on a busy machine) and `strace -c`
(system calls), release build, default logging (two INFO lines per session to stderr).

**How.** Up path: `ws-bench run --only throughput-up --peers ours --rounds 1 --throughput-mib 128
--ours target/release/websockify --ours-prefix \"valgrind --tool=callgrind
--callgrind-out-file=cg.out\"`, then `callgrind_annotate cg.out`; system calls the same way with
`--ours-prefix \"strace -f -c -o strace.txt\"`. Handshake path: websockify started by hand under
`valgrind --tool=callgrind` in front of `ws-bench serve`'s TCP echo, driven by a client doing N
sequential cycles (open, handshake, one 32-byte echo, close); N = 20 and N = 220, and the
difference divided by 200 gives the cost of one cycle without start-up (`callgrind_annotate
--inclusive=yes` for the split; `calls=` lines of the profile for allocations).

**Up path** (128 MiB in 64 KiB frames, 46.5 M instructions in all, about 4 M of them start-up):

- unmasking (`frame::Decoder::next`) is 39.6 M: 0.30 instructions per byte, about 20 k per frame;
- the relay's own bookkeeping (`relay.rs` poll loop) and tokio's readiness checks are about 1.5 k
  instructions per frame, `memcpy` 0.2 M in all (no payload is compacted): *per-frame
  bookkeeping* is cleared;
- so the up path's cost is the kernel's: `strace` counted **1.88 `recvfrom` per 64 KiB frame**
  (one `sendto`), against one read and one write per 64 KiB for the relay. *Frames straddling
  reads* is confirmed: a 65,550-byte frame never fits a 65,536-byte read, so every frame took a
  full read and a 16-byte read for its tail (held so that the frame goes out in one write).
  Fixed: binary modes read into the whole buffer (64 KiB + 16 bytes of headroom, which the up
  direction does not need), so a frame and its header arrive in one read: **1.00 `recvfrom` per
  frame** after (4,106 for 4,096 frames, 7,689 before), callgrind 46.51 M → 45.96 M instructions
  for the 128 MiB (a few hundred bytes of `memcpy` per frame now compact the start of the next
  frame behind the end of the last). In time the change is inside this machine's noise: one quick
  3-round run with another process using about a core throughout gave up MiB per proxy
  CPU-second 0.98× → 1.11× the relay and MiB/s 0.98× → 0.82× (round-to-round spread ±25 %).

**Down path: zero-copy with `splice(2)`, tried and not kept.** For plain-TCP binary sessions
the relay moved the target's bytes into a pooled pipe and from the pipe to the client socket
(`splice`, 64 KiB each), writing only the frame header itself (`send` with `MSG_MORE`), during
bulk transfers (a read that filled the buffer switched a session over, a splice under 16 KiB
switched it back). `strace` showed what was intended: 3 system calls per 64 KiB frame
(splice in 65,536, a 10-byte header, splice out 65,536), no payload through user space; the
copying path makes 2 (8,201 `recvfrom` and 8,195 `sendto` for 8,192 frames). `perf` (cpu-clock,
1 GiB down, the whole proxy) counted the same time for both (event count 1.152 G with splice,
1.147 G copying): the copies (`_copy_to_iter` 19 %, `_copy_from_iter` 11 % of the copying
proxy) were gone, and the transmit of frames made of 16 single-page fragments took their place
(`tcp_write_xmit` and loopback softirq time, shown at `_raw_spin_unlock_irqrestore` 36 % and
`handle_softirqs` 11 %, against 23 % and 4.5 % when copying). Side by side in one run (7 rounds
of 1 GiB, medians, machine shared with builds): splice 899 MiB/s and 1,114 MiB per proxy
CPU-second, copying 961 and 1,269, the TCP relay 1,143 and 1,427. Slower on this kernel
(6.18, a VM), so it was reverted (commit 0af3fef has it, with `--no-splice` and the bench peer
`ours-copy`).

**Handshake path** (one cycle: open, handshake, 32-byte echo, close): **112 k instructions**, of
which `connection::handle` is 80 k:

- logging is the largest part: the two INFO lines (connection, session closed) cost 30 k
  (tracing-subscriber's formatting: timestamp, fields, the `Debug` of a `Duration`, `Display` of
  the target 2.2 k and of the client address 1.8 k), the per-connection span 2.1 k and recording
  its client field 3.2 k: about 37 k, a third of the cycle. *Per-connection spans and log
  formatting*: confirmed as the biggest user-space cost (cut by a formatter of our own that
  writes the same lines: *Handshake path, cut* below);
- `request::serve` 23.7 k: parsing the head 7.6 k (httparse 1.9 k, building the
  `http::Request` and its `HeaderMap` the rest), the accept key (SHA-1, base64) 4.2 k, writing
  the 101 3.2 k;
- relaying the echo and the close 12 k, connecting to the target 3.7 k;
- 31 `malloc`, 2 `realloc`, 1 `calloc` and 35 `free` per cycle (about 13 k instructions);
- *the hyper server connection per handshake*: cleared, main reads the head with httparse and
  builds no hyper connection (hyper serves only `--web`);
- *the first-byte peek with its timer*: one `recvfrom(MSG_PEEK)` and one tokio timer (about 200
  instructions to arm and drop) per connection: small; the peek is one of about 25 system calls
  of a cycle that could go if the head were read first and handed to TLS as a prefix;
- system calls per cycle (`strace -c`, 200 cycles): `recvfrom` 5 (peek, head, echo, close,
  target), `sendto` 4, `setsockopt` 4 (`TCP_NODELAY` both sides, `SO_RCVBUF` and
  `SO_KEEPALIVE` on the target), `epoll_ctl` 4, `shutdown` 2, `close` 2, `accept4` 2 (one
  `EAGAIN`), `socket`, `connect`, `getsockopt(SO_ERROR)`, and **`getpeername` 1: fixed** (it fed
  only the PROXY header towards the target, now asked for only with `--target-proxy-protocol`);
  plus cross-thread wake-ups (`futex` about 12, eventfd `write` 3) and the log writer thread's
  two `write`s.
**Handshake path, cut** (same measurement, N = 20 and 220, difference / 200; ±0.5 k between
runs): **110.5 k → 82.0 k instructions per cycle**, `connection::handle` 77.6 k → 53.1 k
(`request::serve` 22.0 k → 16.8 k), `malloc` 30 → 18 per cycle. What changed, each with the
cycle's count after it:

- the text log lines (stderr, `--log-file`, syslog) come from a formatter of our own
  (`logging/text.rs`) that writes byte for byte the stock formatter's lines (a unit test
  compares the two on spans, strings, integers, errors, raw identifiers and control
  characters): the timestamp built in a stack buffer, integers by hand, strings and the
  sanitised message in runs instead of one `char` at a time: 93.0 k. In the end (with the next
  items) the two lines are 30.2 k → 11.7 k, the span 1.9 k → 1.2 k and recording its client
  field 3.2 k → 1.8 k.
  Coloured output (a terminal) and `--log-format json` keep tracing-subscriber's formatters;
- the client address (IPv4) and the target are displayed by hand (1.8 k → 1.1 k and 1.8 k →
  1.3 k), the session's duration too, exactly as `Duration`'s `Debug` writes it (1.0 k → a
  few hundred; `logging::Elapsed`, checked against `Debug`);
- the session future is boxed before it is spawned: its several kilobytes are written once
  instead of being copied at each step of the spawn (`memcpy` 7.6 k → 4.2 k a cycle): 88.7 k
  with the previous item;
- the request head: the target and header values are slices of the bytes read (`Bytes`), not
  copies (9 `malloc` fewer), httparse fills an uninitialised field array instead of one cleared
  per request, and the 101's status line is written without `format!`: `http::parse` 6.2 k →
  5.9 k and `write_response` 3.1 k → 2.1 k; with the items above: 84.3 k;
- the 101 of the main path is written as bytes directly, with no `Response`, `HeaderMap` or
  body to build (`switching_protocols_head`; a unit test holds it equal to what
  `write_response` writes for the hyper response that `--web` upgrades keep): 3.7 k → 0.5 k,
  82.0 k.

In time the cut is not measurable here: three alternating quick `connrate` runs of the old and
the new binary (`ws-bench run --quick --only connrate --peers ours,bare`) with other work
keeping the load at 2.5 to 3.5 on the 2 cores gave, 16 at a time, ours 5,210 / 5,183 / 3,762
conn/s (new) against 2,991 / 3,423 / 3,589 (old), while the bare relay itself swung from 3,032
to 6,601 between runs; ours / bare 1.72, 1.31, 0.60 (new) and 0.45, 0.65, 0.90 (old). A
calm machine and more rounds are needed for the ≥ 1.0× and ≥ 0.90× per CPU-second bars.

Left as they were: the `http::Request` and `HeaderMap` themselves (auth plugins, token plugins
and `--web` take the request; a second, lighter request type would split that path in two),
the SHA-1 of the accept key (4.1 k, ring's portable code; SHA-NI would not show under
callgrind anyway), the relay (9.2 k for one echo and the close), connecting (3.5 k), and the
first-byte peek: reading instead of peeking would hand the first bytes on as a prefix, which
the TLS acceptor (and its `ClientStream::Tls` type), the Flash policy answer and the PROXY
header reader (which peeks as well) would all have to take; one system call does not pay for
that.
**Where a connection's time goes beyond user space.** The full run of 2026-12-04 gave one
proxy CPU-second per 4,969 connections at 16 at a time (201 µs each), while callgrind counts
about 84 k user-space instructions per cycle (tens of µs): the rest is the kernel and the
wake-ups between threads (accept thread, two workers, the log writer). The log writer was
woken for every line, two a session; it now sleeps 2 ms after the first line of a batch, so
that senders find no waiting receiver and wake nobody. Alternating runs of the binary before
and after (`--only connrate-16 --peers ours`, 3 rounds each, twice, quiet machine): ours
5,155 / 4,964 / 5,152 and 5,284 / 4,413 / 5,012 conn/s before, 5,886 / 5,997 / 5,907 and
5,834 / 6,144 / 5,761 after; per proxy CPU-second 4,409-5,282 before, 6,221-6,545 after; the
TCP relay 4,477-5,400 conn/s and 5,090-6,039 per CPU-second throughout. The hop from the
accept thread to the worker that spawns sessions (kept for the memory after a spike, see the
README) is the next wake-up to look at.

**That hop, tried (2026-12-05) and not kept.** With the accept loop itself spawned on a runtime
worker and sessions spawned straight from it (no wake-up of the accepting thread, no hop to the
spawner), 4 alternating pairs of `--only connrate-16 --peers ours,bare --rounds 3` gave ours
11,981 / 12,063 / 11,836 / 12,900 conn/s before and 12,877 / 12,927 / 13,053 / 12,936 after
(ours / bare 0.83-0.98 → 0.96-1.02), per proxy CPU-second 12,745-14,175 before and
13,886-14,468 after, the bare relay 12,552-14,503 throughout. But `ws-bench spike` (9,900 idle
sessions opened, then closed) kept 21.1 MiB of the 24.4 MiB grown, against 7.9 of 25.2 before;
the accept loop alone on a worker (spawner kept) kept 18.5, sessions spawned by the accepting
thread itself 20.1. It is not the per-connection span: with spans filtered out (`RUST_LOG=warn`)
the worker variant still kept 21.0. So allocations made where connections are accepted pin
session pages when they share an arena with them, and which allocations those are is not found
yet; `tests/e2e/memory.rs` holds the memory given back to at least half of the growth, so the
hop stays until that is known.

**wss:// down: one `writev` per frame.** `strace -f -c` over 256 MiB down through wss:// counted
20,487 `sendto` for 4,096 frames: 5 per frame. rustls hands its encrypted records to the socket
as one vectored write, but the client stream under TLS (`ClientStream`, and `Prefixed` in front
of it) did not forward `poll_write_vectored`, and tokio's default writes only the first buffer:
one system call per 16 KiB record. Forwarded, the count fell to 8,195 `writev` (2 per frame: a
frame of 64 KiB of payload and its 10-byte header is four full records plus a fifth of 10
bytes, encrypted and written after the first four). For a TLS client the relay now reads at
most 65,532 bytes per frame, so that with its 4-byte header a frame is exactly 64 KiB, four
full records: 4,100 `writev` for 4,097 frames, the same one-to-one as the TLS relay (5,444 `recvfrom`, 5,444
`writev`, by `strace -p` on it). In time, the vectored writes alone against the binary before
them, 3 alternating pairs of `--only tls-down --rounds 3 --throughput-mib 1024`: ours / TLS
relay 0.99, 0.92, 0.94 before, 0.95, 0.95, 0.97 after (noise); the 64 KiB frames against the
vectored writes alone, 4 pairs: MiB/s 0.94, 0.95, 0.93, 0.89 → 0.98, 1.04, 1.03, 1.03 and per
proxy CPU-second 0.86, 0.87, 0.91, 0.84 → 1.01, 0.97, 1.04, 1.03. `perf record` of ours and of
the TLS relay over 4 GiB down then show the same entries in the same shares (AES-GCM 17 %, the
loopback transmit under `_raw_spin_unlock_irqrestore` 20-23 %, the two copies 14-18 %). Plain
ws:// down with the same frame size, 4 pairs of `throughput-down`: ours 1,080-1,243 MiB/s
before and 1,159-1,215 after, per CPU-second 1,339-1,621 and 1,479-1,544: inside the noise; and
Autobahn 1.2.6-1.2.8 (a 65,535- or 65,536-byte message echoed by the target must come back as
one message) then failed, so plain clients keep frames of up to 64 KiB of payload.

**The target's receive buffer.** The target socket asks for a 256 KiB receive buffer before it
connects (the kernel doubles it to 512 KiB and stops autotuning it; the TCP relay leaves
autotuning on). Without it, 6 alternating pairs of `throughput-down` (3 rounds of 1 GiB): ours
1,143-1,211 MiB/s with it and 1,199-1,260 without, per proxy CPU-second 1,375-1,916 and
1,649-2,029; in the noise, so it stays.
";

pub fn write(
    opts: &Options,
    plan: &Plan,
    results: &[CaseResult],
    env: &Env,
    elapsed: Duration,
) -> Result<()> {
    let peers: Vec<Peer> = plan.peers.clone();
    // JSON: every run.
    let cases: Vec<Value> = results
        .iter()
        .map(|cr| {
            let mut runs = serde_json::Map::new();
            let mut medians = serde_json::Map::new();
            let mut ratios = serde_json::Map::new();
            let mut ratios_bare = serde_json::Map::new();
            for (p, rs) in &cr.runs {
                runs.insert(
                    p.id().into(),
                    Value::Array(
                        rs.iter()
                            .map(|r| {
                                json!({
                                    "round": r.round + 1,
                                    "metrics": r.metrics.values,
                                    "notes": r.metrics.notes,
                                    "error": r.error,
                                    "skipped": r.skipped,
                                })
                            })
                            .collect(),
                    ),
                );
                let keys: std::collections::BTreeSet<&String> =
                    rs.iter().flat_map(|r| r.metrics.values.keys()).collect();
                let mut med = serde_json::Map::new();
                let mut rat = serde_json::Map::new();
                let mut rat_bare = serde_json::Map::new();
                for k in keys {
                    if let Some(v) = cr.median(*p, k) {
                        med.insert(k.clone(), json!(v));
                    }
                    if let Some(r) = cr.ratio(*p, k) {
                        rat.insert(k.clone(), json!(r));
                    }
                    if let Some(r) = cr.ratio_to(*p, Peer::Bare, k) {
                        rat_bare.insert(k.clone(), json!(r));
                    }
                }
                medians.insert(p.id().into(), Value::Object(med));
                ratios.insert(p.id().into(), Value::Object(rat));
                ratios_bare.insert(p.id().into(), Value::Object(rat_bare));
            }
            json!({
                "id": cr.case.id(),
                "scenario": cr.case.scenario(),
                "median": medians,
                "ratio_to_relay": ratios,
                "ratio_to_bare": ratios_bare,
                "runs": runs,
            })
        })
        .collect();
    let bars_json: Vec<Value> = bars(results)
        .into_iter()
        .map(|b| json!({"bar": b.text, "measured": b.measured, "shown": b.shown, "met": b.met}))
        .collect();
    let doc = json!({
        "date": env.date,
        "elapsed_seconds": elapsed.as_secs_f64(),
        "machine": {"nproc": env.nproc, "lscpu": env.lscpu, "kernel": env.kernel, "rustc": env.rustc},
        "versions": env.versions.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "plan": plan.to_json(),
        "cases": cases,
        "bars": bars_json,
    });
    std::fs::write(
        opts.out.join("results.json"),
        serde_json::to_string_pretty(&doc)? + "\n",
    )?;

    let mode = if plan.quick {
        "quick (smoke test, not for publishing)"
    } else {
        "full"
    };
    let tbl = table(results, &peers, false);
    let tls_tbl = table(results, &peers, true);
    let note_text = notes(results, &peers);
    let rounds_text = if plan.rounds == plan.rounds_cheap {
        format!("{} round(s)", plan.rounds)
    } else {
        format!(
            "{} rounds (throughput, round trip, connection rate) or {} rounds (the rest)",
            plan.rounds_cheap, plan.rounds
        )
    };
    let pin_text = if plan.pinned {
        ", peer pinned to its own CPU"
    } else {
        ""
    };
    let mut md = String::new();
    let _ = writeln!(md, "# websockify benchmark results\n");
    let _ = writeln!(
        md,
        "{} · {} · {}{pin_text} · {} CPUs · {} · took {:.0} s\n",
        env.date,
        mode,
        rounds_text,
        env.nproc,
        env.kernel,
        elapsed.as_secs_f64()
    );
    let _ = writeln!(md, "{tbl}");
    if !tls_tbl.is_empty() {
        let _ = writeln!(
            md,
            "## wss:// (TLS)\n\nIn brackets: the ratio to the TLS-terminating relay.\n\n{tls_tbl}"
        );
    }
    if let Some(w) = noise_warning(results, &peers) {
        let _ = writeln!(md, "{w}\n");
    }
    let floors = floors_table(results);
    if !floors.is_empty() {
        let _ = writeln!(
            md,
            "## Ours against both floors (issue 14)\n\n{floors}\nRatios of medians; the bare relay's \
             client and target speak raw TCP, so every cost of WebSocket is ours.\n"
        );
    }
    let opts_tbl = options_table(results);
    if !opts_tbl.is_empty() {
        let _ = writeln!(md, "## Options on vs off\n\n{opts_tbl}");
    }
    let _ = writeln!(md, "## Bars\n\n{}", bars_md(results));
    let _ = writeln!(
        md,
        "## CPU during the runs (median, % of one core)\n\n{}",
        cpu_table(results, &peers)
    );
    if !note_text.is_empty() {
        let _ = writeln!(md, "## Notes, failures and errors\n\n{note_text}");
    }
    let _ = writeln!(md, "{METHOD}");
    std::fs::write(opts.out.join("results.md"), &md)?;

    if let Some(docs) = &opts.docs {
        write_docs(
            docs,
            plan.quick,
            env,
            &tbl,
            &tls_tbl,
            results,
            &peers,
            &note_text,
            &rounds_text,
        )?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn write_docs(
    path: &Path,
    quick: bool,
    env: &Env,
    tbl: &str,
    tls_tbl: &str,
    results: &[CaseResult],
    peers: &[Peer],
    note_text: &str,
    rounds: &str,
) -> Result<()> {
    let mut d = String::new();
    let _ = writeln!(d, "# Benchmarks\n");
    let _ = writeln!(
        d,
        "Our websockify side by side with upstream Python websockify, websocat, a plain TCP relay and no \
         proxy at all, in one run on one machine. Reproduce with one command:\n\n```\nscripts/bench            \
         # full run (about 12 minutes); --quick for a smoke test, --only SCENARIO for one\n```\n\n\
         It builds the load generator (`bench/`, binary `ws-bench`) and our websockify in release \
         mode, installs the peers into `bench-peers/` (ignored by git), runs every scenario and \
         writes `target/bench/results.json` (every run), `target/bench/results.md` and this page.\n"
    );
    let _ = writeln!(d, "## Machine\n");
    let _ = writeln!(
        d,
        "- date: {}{}",
        env.date,
        if quick { " (quick run)" } else { "" }
    );
    let _ = writeln!(d, "- `nproc`: {}", env.nproc);
    let _ = writeln!(d, "- kernel: {}", env.kernel);
    let _ = writeln!(d, "- {}", env.rustc);
    for (k, v) in &env.versions {
        let _ = writeln!(d, "- {k}: {v}");
    }
    let _ = writeln!(d, "\n```\n$ lscpu | head\n{}\n```\n", env.lscpu);
    let _ = writeln!(
        d,
        "## Results\n\nMedian of {rounds}; in brackets, the ratio to the TCP relay of the same run.\n"
    );
    let _ = writeln!(d, "{tbl}");
    if !tls_tbl.is_empty() {
        let _ = writeln!(
            d,
            "### wss:// (TLS)\n\nIn brackets: the ratio to the TLS-terminating relay.\n\n{tls_tbl}"
        );
    }
    if let Some(w) = noise_warning(results, peers) {
        let _ = writeln!(d, "{w}\n");
    }
    let floors = floors_table(results);
    if !floors.is_empty() {
        let _ = writeln!(
            d,
            "### Ours against both floors\n\n{floors}\nRatios of medians; the bare relay's \
             client and target speak raw TCP, so every cost of WebSocket is ours.\n"
        );
    }
    let opts_tbl = options_table(results);
    if !opts_tbl.is_empty() {
        let _ = writeln!(d, "### Options on vs off\n\n{opts_tbl}");
    }
    let _ = writeln!(d, "### Bars\n\n{}", bars_md(results));
    let _ = writeln!(
        d,
        "### CPU during the runs (median, % of one core)\n\n{}",
        cpu_table(results, peers)
    );
    if !note_text.is_empty() {
        let _ = writeln!(d, "### Notes, failures and errors\n\n{note_text}");
    }
    let _ = writeln!(d, "## Method\n\n{METHOD}");
    let _ = writeln!(d, "{PROFILE}");
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, d)?;
    Ok(())
}
