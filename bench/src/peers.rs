//! Starting and stopping the peers under test, each in its own process group so that a peer
//! that forks (upstream websockify forks one process per connection) is stopped whole.
//!
//! Every child we start is registered; the harness's signal handler and `Drop` stop them.

use std::fs::OpenOptions;
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::procfs;

/// Process groups we started and have not yet stopped.
static STARTED: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn register(pid: u32) {
    if let Ok(mut v) = STARTED.lock() {
        v.push(pid);
    }
}

fn unregister(pid: u32) {
    if let Ok(mut v) = STARTED.lock() {
        v.retain(|&p| p != pid);
    }
}

/// Kills every process group still registered (on SIGINT/SIGTERM of the harness).
pub fn kill_all() {
    if let Ok(v) = STARTED.lock() {
        for &pid in v.iter() {
            procfs::kill_group(pid, libc::SIGKILL);
        }
    }
}

/// The peers, in the order they appear in the tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Peer {
    /// The client talks WebSocket straight to the bench's WebSocket target.
    Direct,
    /// tokio `copy_bidirectional` between the client and the bench's WebSocket target.
    Relay,
    /// The same relay between a raw TCP client and the bench's raw TCP target: no WebSocket
    /// anywhere, the floor of any copying proxy.
    Bare,
    /// Our websockify (release build), WebSocket in, TCP out.
    Ours,
    /// Upstream Python websockify (with numpy), WebSocket in, TCP out.
    Upstream,
    /// `websocat --binary ws-l: tcp:`, WebSocket in, TCP out.
    Websocat,
    /// Ours with `--metrics-listen` (a metrics endpoint counting every connection and byte).
    OursMetrics,
    /// Ours with `--proxy-protocol` (the client sends a PROXY v2 header first).
    OursProxyProtocol,
}

pub const ALL: [Peer; 6] = [
    Peer::Direct,
    Peer::Relay,
    Peer::Bare,
    Peer::Ours,
    Peer::Upstream,
    Peer::Websocat,
];

impl Peer {
    pub fn id(self) -> &'static str {
        match self {
            Peer::Direct => "direct",
            Peer::Relay => "relay",
            Peer::Bare => "bare",
            Peer::Ours => "ours",
            Peer::Upstream => "upstream",
            Peer::Websocat => "websocat",
            Peer::OursMetrics => "ours-metrics",
            Peer::OursProxyProtocol => "ours-pp",
        }
    }
    pub fn title(self) -> &'static str {
        match self {
            Peer::Direct => "direct (no proxy)",
            Peer::Relay => "TCP relay (tokio copy)",
            Peer::Bare => "bare TCP relay (raw TCP both ends)",
            Peer::Ours => "websockify (Rust, ours)",
            Peer::Upstream => "websockify (Python)",
            Peer::Websocat => "websocat",
            Peer::OursMetrics => "ours + --metrics-listen",
            Peer::OursProxyProtocol => "ours + --proxy-protocol",
        }
    }
    pub fn from_id(s: &str) -> Option<Peer> {
        ALL.into_iter()
            .chain([Peer::OursMetrics, Peer::OursProxyProtocol])
            .find(|p| p.id() == s)
    }
    /// Whether the client speaks raw TCP (no WebSocket) through it.
    pub fn raw(self) -> bool {
        self == Peer::Bare
    }
    /// Whether the client sends a PROXY v2 header first.
    pub fn proxy_v2(self) -> bool {
        self == Peer::OursProxyProtocol
    }
    /// Our websockify, in any configuration.
    pub fn is_ours(self) -> bool {
        matches!(
            self,
            Peer::Ours | Peer::OursMetrics | Peer::OursProxyProtocol
        )
    }
    /// Whether the client speaks to a WebSocket target through it (baselines) rather than
    /// to a WebSocket-to-TCP proxy.
    pub fn ws_target(self) -> bool {
        matches!(self, Peer::Direct | Peer::Relay)
    }
}

/// Which target a run needs.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    Echo,
    Ctl,
}

/// The bench's target servers (a `ws-bench serve` child).
pub struct Targets {
    pub tcp_echo: SocketAddr,
    pub tcp_ctl: SocketAddr,
    pub ws_echo: SocketAddr,
    pub ws_ctl: SocketAddr,
    pub pid: u32,
    child: Child,
}

impl Targets {
    pub fn start(exe: &PathBuf) -> Result<Targets> {
        let mut child = Command::new(exe)
            .arg("serve")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .context("cannot start `ws-bench serve`")?;
        register(child.id());
        let line = read_line(&mut child, Duration::from_secs(10))?;
        let port = |name: &str| -> Result<SocketAddr> {
            let v = line
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
                .with_context(|| format!("serve did not announce {name}: {line:?}"))?;
            Ok(SocketAddr::from(([127, 0, 0, 1], v.parse::<u16>()?)))
        };
        Ok(Targets {
            tcp_echo: port("tcp-echo")?,
            tcp_ctl: port("tcp-ctl")?,
            ws_echo: port("ws-echo")?,
            ws_ctl: port("ws-ctl")?,
            pid: child.id(),
            child,
        })
    }

    /// Where a peer (or the direct client) should send its traffic for `t`.
    pub fn addr(&self, ws: bool, t: Target) -> SocketAddr {
        match (ws, t) {
            (true, Target::Echo) => self.ws_echo,
            (true, Target::Ctl) => self.ws_ctl,
            (false, Target::Echo) => self.tcp_echo,
            (false, Target::Ctl) => self.tcp_ctl,
        }
    }
}

impl Drop for Targets {
    fn drop(&mut self) {
        stop_child(&mut self.child, Duration::from_secs(2));
    }
}

/// Reads one line from a child's stdout (bounded in time).
fn read_line(child: &mut Child, limit: Duration) -> Result<String> {
    use std::io::BufRead as _;
    let stdout = child.stdout.take().context("child has no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut r = std::io::BufReader::new(stdout);
        let mut line = String::new();
        let _ = r.read_line(&mut line);
        let _ = tx.send(line);
        // Keep draining so the child never blocks on a full pipe.
        let mut sink = String::new();
        while r.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
            sink.clear();
        }
    });
    let line = rx
        .recv_timeout(limit)
        .context("child announced nothing in time")?;
    if line.is_empty() {
        bail!("child exited before announcing its address");
    }
    Ok(line.trim().to_owned())
}

/// SIGTERM to the child's process group, a bounded wait, then SIGKILL; always reaps.
fn stop_child(child: &mut Child, grace: Duration) {
    let pid = child.id();
    if let Ok(Some(_)) = child.try_wait() {
        // The leader is gone; members of its group may remain.
        procfs::kill_group(pid, libc::SIGKILL);
        unregister(pid);
        return;
    }
    procfs::kill_group(pid, libc::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    procfs::kill_group(pid, libc::SIGKILL);
    let _ = child.wait();
    unregister(pid);
}

/// How to start each proxy.
#[derive(Clone)]
pub struct Commands {
    pub bench: PathBuf,
    pub ours: PathBuf,
    /// Words put before our binary (e.g. `valgrind --tool=callgrind`), for profiling.
    pub ours_prefix: Vec<String>,
    pub upstream: Option<PathBuf>,
    pub websocat: Option<PathBuf>,
    pub log_dir: PathBuf,
    /// CPUs for the peer under test (none: no pinning).
    pub peer_cpus: Option<Vec<usize>>,
}

/// Restricts the calling process (or a child about to exec) to `cpus`.
pub fn set_affinity(pid: i32, cpus: &[usize]) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_ZERO/CPU_SET write within it; sched_setaffinity
    // reads it. Used in pre_exec, where only async-signal-safe calls are allowed: these are
    // a syscall and plain memory writes.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        for &c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        if libc::sched_setaffinity(pid, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A running peer.
pub struct Running {
    /// Where the client connects.
    pub addr: SocketAddr,
    /// The process (group leader) to measure; none for `direct`.
    pub pid: Option<u32>,
    child: Option<Child>,
    /// How long a SIGTERM may take before SIGKILL (long under valgrind, which must write
    /// its profile on exit).
    grace: Duration,
}

impl Running {
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop_child(&mut c, self.grace);
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> Result<u16> {
    let l = StdListener::bind("127.0.0.1:0").context("cannot bind a free port")?;
    Ok(l.local_addr()?.port())
}

/// websocat's TLS listener takes a PKCS#12 archive: made once from the PEM files with the
/// openssl command (empty password).
fn pkcs12(tls: &crate::tls::TlsFiles) -> Result<PathBuf> {
    let out = tls.cert.with_file_name("server.p12");
    if !out.exists() {
        let st = Command::new("openssl")
            .args(["pkcs12", "-export", "-passout", "pass:", "-in"])
            .arg(&tls.cert)
            .arg("-inkey")
            .arg(&tls.key)
            .arg("-out")
            .arg(&out)
            .status()
            .context("cannot run openssl to make websocat's PKCS#12 file")?;
        if !st.success() {
            bail!("openssl pkcs12 -export failed ({st})");
        }
    }
    Ok(out)
}

/// Starts `peer` in front of target `t` (with TLS on its listening side when `tls` is
/// given); returns once it accepts connections.
pub fn start(
    cmds: &Commands,
    targets: &Targets,
    peer: Peer,
    t: Target,
    tls: Option<&crate::tls::TlsFiles>,
) -> Result<Running> {
    let target = targets.addr(peer.ws_target(), t);
    let metrics_port = if peer == Peer::OursMetrics {
        free_port()?
    } else {
        0
    };
    if peer == Peer::Direct {
        return Ok(Running {
            addr: target,
            pid: None,
            child: None,
            grace: Duration::ZERO,
        });
    }
    let port = free_port()?;
    let listen = format!("127.0.0.1:{port}");
    let to = target.to_string();
    let mut cmd = match peer {
        Peer::Relay | Peer::Bare => {
            let mut c = Command::new(&cmds.bench);
            c.args(["relay", "--listen", &listen, "--to", &to]);
            if let Some(tls) = tls {
                c.arg("--tls-cert").arg(&tls.cert);
                c.arg("--tls-key").arg(&tls.key);
            }
            c.stdin(Stdio::piped());
            c
        }
        Peer::Ours | Peer::OursMetrics | Peer::OursProxyProtocol => {
            let mut c = if let Some((first, rest)) = cmds.ours_prefix.split_first() {
                let mut c = Command::new(first);
                c.args(rest).arg(&cmds.ours);
                c
            } else {
                Command::new(&cmds.ours)
            };
            match peer {
                Peer::OursMetrics => {
                    c.arg("--metrics-listen")
                        .arg(format!("127.0.0.1:{metrics_port}"));
                }
                Peer::OursProxyProtocol => {
                    c.arg("--proxy-protocol");
                }
                _ => {}
            }
            if let Some(tls) = tls {
                c.arg("--cert").arg(&tls.cert).arg("--key").arg(&tls.key);
            }
            c.args([&listen, &to]);
            c.stdin(Stdio::null());
            c
        }
        Peer::Upstream => {
            let exe = cmds
                .upstream
                .as_ref()
                .context("upstream websockify is not installed")?;
            let mut c = Command::new(exe);
            if let Some(tls) = tls {
                c.arg("--cert").arg(&tls.cert).arg("--key").arg(&tls.key);
            }
            c.args([&listen, &to]);
            c.stdin(Stdio::null());
            c
        }
        Peer::Websocat => {
            let exe = cmds
                .websocat
                .as_ref()
                .context("websocat is not installed")?;
            let mut c = Command::new(exe);
            c.args(["--binary", "-E"]);
            if let Some(tls) = tls {
                c.arg("--pkcs12-der").arg(pkcs12(tls)?);
                c.arg(format!("wss-l:{listen}"));
            } else {
                c.arg(format!("ws-l:{listen}"));
            }
            c.arg(format!("tcp:{to}"));
            c.stdin(Stdio::null());
            c
        }
        Peer::Direct => unreachable!(),
    };
    let log_path = cmds.log_dir.join(format!("{}.log", peer.id()));
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)?;
    cmd.stdout(log.try_clone()?).stderr(log).process_group(0);
    if let Some(cpus) = cmds.peer_cpus.clone() {
        // SAFETY: the closure only makes the sched_setaffinity syscall (async-signal-safe).
        unsafe {
            cmd.pre_exec(move || set_affinity(0, &cpus));
        }
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", peer.title()))?;
    register(child.id());
    let pid = child.id();
    let addr: SocketAddr = listen.parse()?;
    let limit = if cmds.ours_prefix.is_empty() {
        Duration::from_secs(15)
    } else {
        Duration::from_secs(120)
    };
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            unregister(pid);
            bail!(
                "{} exited at start ({status}); see {}",
                peer.title(),
                log_path.display()
            );
        }
        if StdStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            break;
        }
        if Instant::now() > deadline {
            stop_child(&mut child, Duration::from_secs(1));
            bail!("{} did not listen on {addr} within {limit:?}", peer.title());
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    Ok(Running {
        addr,
        pid: Some(pid),
        child: Some(child),
        grace: if peer.is_ours() && !cmds.ours_prefix.is_empty() {
            Duration::from_secs(120)
        } else {
            Duration::from_secs(3)
        },
    })
}
