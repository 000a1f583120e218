//! Reading CPU time and memory of a process and its descendants from /proc.
//!
//! Upstream websockify forks a process per connection, so a peer is measured as its whole
//! process tree: CPU = Σ(utime + stime + cutime + cstime) over live members (a reaped child's
//! time is in its parent's cutime/cstime); memory = Σ VmRSS (and Σ Pss, which does not count
//! pages shared between forks twice). For a single-process peer these are just its own
//! figures.

use std::collections::HashMap;
use std::fs;

/// Clock ticks per second for /proc/PID/stat times.
pub fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// Fields after the `(comm)` of /proc/PID/stat, starting with `state` (field 3).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// The pid itself and all its live descendants.
pub fn tree(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    let mut any_child = false;
    if let Ok(dir) = fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(f) = stat_fields(pid)
                && let Some(ppid) = f.get(1).and_then(|p| p.parse::<u32>().ok())
            {
                children.entry(ppid).or_default().push(pid);
                any_child |= ppid == root;
            }
        }
    }
    let mut out = vec![root];
    if !any_child {
        return out;
    }
    let mut i = 0;
    while i < out.len() {
        if let Some(c) = children.get(&out[i]) {
            out.extend_from_slice(c);
        }
        i += 1;
    }
    out
}

/// CPU seconds used by one process (with its reaped children).
///
/// `/proc/PID/stat` counts in clock ticks (10 ms), too coarse for half-second transfers, so
/// the live threads' scheduler run time (`task/*/schedstat`, nanoseconds) is used instead,
/// unless the two disagree by more than 30 ms (threads that exited are only in `stat`).
pub fn cpu_one(pid: u32) -> f64 {
    let Some(f) = stat_fields(pid) else {
        return 0.0;
    };
    let field = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    // utime, stime, cutime, cstime are fields 14..17; f[0] is field 3.
    let own = (field(11) + field(12)) as f64 / clk_tck();
    let children = (field(13) + field(14)) as f64 / clk_tck();
    let mut ns = 0u64;
    let mut threads = 0;
    if let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) {
        for t in dir.flatten() {
            if let Some(v) = fs::read_to_string(t.path().join("schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            {
                ns += v;
                threads += 1;
            }
        }
    }
    let precise = ns as f64 / 1e9;
    let own = if threads > 0 && (precise - own).abs() <= 0.03 {
        precise
    } else {
        own
    };
    own + children
}

/// CPU seconds of the tree rooted at `pid`.
pub fn cpu_tree(pid: u32) -> f64 {
    tree(pid).into_iter().map(cpu_one).sum()
}

/// CPU seconds of this process.
pub fn cpu_self() -> f64 {
    cpu_one(std::process::id())
}

/// Resident bytes of one process (statm, cheap enough to sample every few ms).
pub fn rss_one(pid: u32) -> u64 {
    let Ok(s) = fs::read_to_string(format!("/proc/{pid}/statm")) else {
        return 0;
    };
    let pages: u64 = s
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    pages * page
}

/// Resident bytes of the tree (Σ VmRSS; counts pages shared by forks once per process).
pub fn rss_tree(pid: u32) -> u64 {
    let t = tree(pid);
    if t.len() == 1 {
        return rss_one(pid);
    }
    t.into_iter().map(rss_one).sum()
}

/// Proportional set size of the tree in bytes (shared pages divided among sharers).
pub fn pss_tree(pid: u32) -> u64 {
    tree(pid)
        .into_iter()
        .filter_map(|p| {
            let s = fs::read_to_string(format!("/proc/{p}/smaps_rollup")).ok()?;
            let line = s.lines().find(|l| l.starts_with("Pss:"))?;
            let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kb * 1024)
        })
        .sum()
}

/// Number of processes in the tree.
pub fn tree_size(pid: u32) -> usize {
    tree(pid).len()
}

/// MemAvailable from /proc/meminfo, in bytes.
pub fn mem_available() -> u64 {
    fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            let l = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
            l.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(u64::MAX, |kb| kb * 1024)
}

/// Raises this process's soft open-file limit to the hard limit (children inherit it).
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: lim is a valid rlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 0;
    }
    if lim.rlim_cur < lim.rlim_max {
        let new = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: new is a valid rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } == 0 {
            return lim.rlim_max;
        }
    }
    lim.rlim_cur
}

/// Sends `sig` to the process group led by `pgid` (a peer we started with its own group).
pub fn kill_group(pgid: u32, sig: i32) {
    // SAFETY: kill has no memory preconditions; a negative pid names a process group.
    unsafe {
        libc::kill(-(pgid as i32), sig);
    }
}

/// Busy and total CPU seconds of the whole machine (/proc/stat, all CPUs).
pub fn machine_cpu() -> (f64, f64) {
    let Ok(s) = fs::read_to_string("/proc/stat") else {
        return (0.0, 0.0);
    };
    let Some(line) = s.lines().find(|l| l.starts_with("cpu ")) else {
        return (0.0, 0.0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    let t = clk_tck();
    ((total - idle) as f64 / t, total as f64 / t)
}
