//! The fleet, for real: three websockify binaries behind Debian's HAProxy (run from
//! `deploy/haproxy.cfg`) or nginx (`deploy/nginx.conf`), tokens in a real `redis-server`,
//! scrapes checked by `promtool`. Every program runs on loopback: HAProxy takes a listener
//! the test bound on port 0 (`bind fd@3`); the instances bind port 0 and are read back from
//! their logs; a restarted instance and nginx bind a port of their own, with a bounded retry.
//! Clients connect from their own 127.x.y.z addresses, so that the address the instances and
//! targets report is the client's and never HAProxy's 127.0.0.1.
//!
//! Every wait is bounded; every process is killed by its PID when its guard drops. The counts
//! (handshakes, failures, restarts) are printed: run with `--nocapture` to see them.

use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use tokio::io::{
    AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt,
    BufReader as AsyncBufReader,
};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::util::{
    ChildGuard, STEP, Signal, block, client_frame, find_program, http_get, on_free_port, pass_fd,
    port_was_taken, skip_or_fail, websockify_bin, within,
};

/// Number of instances, as in `deploy/haproxy.cfg`.
const INSTANCES: usize = 3;
/// Echo targets, one per token.
const TOKENS: usize = 30;

// ---- processes and their output --------------------------------------------------------------

/// The lines a process writes (stdout and stderr together), for bounded waits on them.
#[derive(Clone, Default)]
struct Lines(Arc<(Mutex<LinesState>, Condvar)>);

#[derive(Default)]
struct LinesState {
    lines: Vec<String>,
    /// Output streams at EOF (2: the process is gone).
    closed: usize,
}

impl Lines {
    /// Copies `source` line by line, on a thread of its own.
    fn capture(&self, source: impl Read + Send + 'static) {
        let lines = self.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(source).lines().map_while(Result::ok) {
                lines.update(|state| state.lines.push(line));
            }
            lines.update(|state| state.closed += 1);
        });
    }

    fn update(&self, change: impl FnOnce(&mut LinesState)) {
        let (state, cond) = &*self.0;
        change(&mut state.lock().unwrap_or_else(PoisonError::into_inner));
        cond.notify_all();
    }

    fn snapshot(&self) -> Vec<String> {
        let (state, _) = &*self.0;
        state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .lines
            .clone()
    }

    fn len(&self) -> usize {
        let (state, _) = &*self.0;
        state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .lines
            .len()
    }

    /// The first line from index `from` on for which `found` holds: `Some((index, line))`, or
    /// `None` if the process closed its output first. Blocks, at most [`STEP`].
    fn find_from(&self, from: usize, found: impl Fn(&str) -> bool) -> Option<(usize, String)> {
        let (state, cond) = &*self.0;
        let deadline = Instant::now() + STEP;
        let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut next = from;
        loop {
            if let Some(offset) = state.lines[next.min(state.lines.len())..]
                .iter()
                .position(|line| found(line))
            {
                let index = next + offset;
                return Some((index, state.lines[index].clone()));
            }
            next = state.lines.len().max(from);
            if state.closed >= 2 {
                return None;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!(
                    "no awaited line within {STEP:?}; output:\n{}",
                    state.lines.join("\n")
                );
            }
            state = cond
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// As [`find_from`](Self::find_from), failing the test if the process ends first.
    fn wait_from(&self, from: usize, what: &str, found: impl Fn(&str) -> bool) -> (usize, String) {
        self.find_from(from, found).unwrap_or_else(|| {
            panic!(
                "the process ended before {what}; output:\n{}",
                self.snapshot().join("\n")
            )
        })
    }
}

/// A child process with its output captured; killed (SIGKILL, by PID) and reaped on drop.
struct Proc {
    guard: ChildGuard,
    out: Lines,
}

impl Proc {
    /// Starts `command` with stdin from /dev/null and both outputs captured.
    fn spawn(command: &mut Command) -> Proc {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env_remove("RUST_LOG")
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {command:?}: {err}"));
        let out = Lines::default();
        if let Some(stdout) = child.stdout.take() {
            out.capture(stdout);
        }
        if let Some(stderr) = child.stderr.take() {
            out.capture(stderr);
        }
        Proc {
            guard: ChildGuard::new(child),
            out,
        }
    }
}

/// The programs the fleet tests need, or `None` (after `skip_or_fail`) if one is missing.
fn programs(names: &[&str]) -> Option<Vec<PathBuf>> {
    let mut found = Vec::new();
    for name in names {
        match find_program(name) {
            Some(path) => found.push(path),
            None => {
                skip_or_fail(&format!(
                    "{name} is not installed (scripts/install-test-deps installs it)"
                ));
                return None;
            }
        }
    }
    Some(found)
}

/// A deployment file of `deploy/`.
fn deploy_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(name)
}

/// Replaces `from` with `to` in a deployment template; `from` must be there, so that a change
/// of the file cannot leave the test running something else than it believes.
fn edit(text: &mut String, from: &str, to: &str) {
    assert!(
        text.contains(from),
        "the deploy/ file no longer contains {from:?}: update tests/e2e/fleet.rs"
    );
    *text = text.replace(from, to);
}

// ---- websockify instances --------------------------------------------------------------------

/// The message of a JSON log line; a text line as it is (its message ends it too).
fn message(line: &str) -> String {
    if line.starts_with('{')
        && let Ok(serde_json::Value::Object(object)) = serde_json::from_str(line)
        && let Some(serde_json::Value::String(message)) = object.get("message")
    {
        return message.clone();
    }
    line.to_owned()
}

/// The address at the end of a "listening on ADDR" message.
fn address_in(message: &str) -> SocketAddr {
    let text = message.rsplit(' ').next().unwrap_or_default();
    text.parse()
        .unwrap_or_else(|_| panic!("no address at the end of {message:?}"))
}

/// One websockify process of the fleet and the addresses it keeps across restarts.
struct Instance {
    args: Vec<String>,
    /// Positionals after the listen address (a target), if any.
    tail: Vec<String>,
    public: SocketAddr,
    metrics: SocketAddr,
    proc: Proc,
}

impl Instance {
    /// Starts the binary with `args` (then the listen address, then `tail`) on ports 0;
    /// reads back the ports it got.
    fn start(args: &[String], tail: &[String]) -> Instance {
        match Self::try_start(args, tail, "127.0.0.1:0", "127.0.0.1:0") {
            Ok(instance) => instance,
            Err(output) => panic!("websockify did not start:\n{output}"),
        }
    }

    /// Starts the binary on `public` and `metrics`; `Err(output)` if it exits first.
    fn try_start(
        args: &[String],
        tail: &[String],
        public: &str,
        metrics: &str,
    ) -> Result<Instance, String> {
        let proc = Proc::spawn(
            Command::new(websockify_bin())
                .args(args)
                .args(["--metrics-listen", metrics, public])
                .args(tail),
        );
        // Text ("INFO   - listening on ADDR") or JSON ("message":"  - listening on ADDR").
        let listening = proc
            .out
            .find_from(0, |line| line.contains("  - listening on "));
        let metrics_line = listening.as_ref().and_then(|(at, _)| {
            proc.out
                .find_from(*at, |line| line.contains("metrics listening on "))
        });
        match (listening, metrics_line) {
            (Some((_, public)), Some((_, metrics))) => Ok(Instance {
                args: args.to_vec(),
                tail: tail.to_vec(),
                public: address_in(&message(&public)),
                metrics: address_in(&message(&metrics)),
                proc,
            }),
            _ => Err(proc.out.snapshot().join("\n")),
        }
    }

    /// Starts the instance again on the same two ports (the balancer's configuration names
    /// them). The previous process has exited, but another program may have taken a port in
    /// between: then it is tried again, at most five times.
    fn restart(&mut self) {
        let (public, metrics) = (self.public.to_string(), self.metrics.to_string());
        let mut failures = Vec::new();
        for _ in 0..5 {
            match Self::try_start(&self.args, &self.tail, &public, &metrics) {
                Ok(instance) => {
                    self.proc = instance.proc;
                    return;
                }
                Err(output) if port_was_taken(&output) => failures.push(output),
                Err(output) => panic!("websockify did not start again:\n{output}"),
            }
        }
        panic!(
            "websockify could not bind {public} and {metrics} again in 5 attempts:\n{}",
            failures.join("\n---\n")
        );
    }

    /// The JSON "session closed" lines logged so far.
    fn sessions(&self) -> Vec<serde_json::Value> {
        self.proc
            .out
            .snapshot()
            .iter()
            .filter(|line| line.starts_with('{') && line.contains("\"session closed"))
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }
}

// ---- targets, Redis, HAProxy -----------------------------------------------------------------

/// An echo target that expects a PROXY v1 header first and remembers the source it names.
struct Target {
    addr: SocketAddr,
    sources: Arc<Mutex<Vec<SocketAddr>>>,
}

async fn proxy_echo_target() -> Target {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind target");
    let addr = listener.local_addr().expect("target address");
    let sources = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&sources);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut read = AsyncBufReader::new(read);
                let mut header = Vec::new();
                // A v1 header is at most 107 bytes, ending in CRLF.
                if (&mut read)
                    .take(107)
                    .read_until(b'\n', &mut header)
                    .await
                    .is_err()
                {
                    return;
                }
                let header = String::from_utf8_lossy(&header).into_owned();
                // PROXY TCP4 <source> <destination> <source port> <destination port>
                let fields: Vec<&str> = header.split_whitespace().collect();
                let source = match fields.as_slice() {
                    ["PROXY", "TCP4", ip, _, port, _] => format!("{ip}:{port}").parse().ok(),
                    _ => None,
                };
                let Some(source) = source else {
                    let _ = write.write_all(b"no PROXY v1 header\n").await;
                    return;
                };
                seen.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(source);
                let _ = tokio::io::copy(&mut read, &mut write).await;
                let _ = write.shutdown().await;
            });
        }
    });
    Target { addr, sources }
}

/// redis-server on a unix socket in `dir` (no TCP port to race for).
struct Redis {
    _proc: Proc,
    socket: PathBuf,
}

impl Redis {
    fn start(program: &Path, dir: &Path) -> Redis {
        let socket = dir.join("redis.sock");
        let proc = Proc::spawn(
            Command::new(program)
                .args(["--port", "0", "--unixsocket"])
                .arg(&socket)
                .args([
                    "--unixsocketperm",
                    "700",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .args(["--logfile", ""]),
        );
        block(|| {
            proc.out.wait_from(0, "redis-server is ready", |line| {
                line.contains("eady to accept connections")
            })
        });
        Redis {
            _proc: proc,
            socket,
        }
    }

    /// `redis+unix://` URL of the server, as websockify's --token-source takes it.
    fn url(&self) -> String {
        format!("redis+unix://{}", self.socket.display())
    }

    async fn set(&self, pairs: &[(String, String)]) {
        let client = redis::Client::open(self.url()).expect("redis client");
        let mut connection = within(
            "connect to redis",
            client.get_multiplexed_async_connection(),
        )
        .await
        .expect("connect to redis");
        for (key, value) in pairs {
            within(
                "redis SET",
                redis::cmd("SET")
                    .arg(key)
                    .arg(value)
                    .query_async::<()>(&mut connection),
            )
            .await
            .expect("redis SET");
        }
    }
}

/// `deploy/haproxy.cfg` for loopback: the frontend on descriptor 3, the instances' ports,
/// checks every 100 ms, nothing that needs root (chroot, user, admin socket).
fn haproxy_config(instances: &[Instance]) -> String {
    let path = deploy_file("haproxy.cfg");
    let mut cfg = std::fs::read_to_string(&path)
        .unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()));
    for line in [
        "    log /dev/log local0\n",
        "    chroot /var/lib/haproxy\n",
        "    user haproxy\n",
        "    group haproxy\n",
        "    stats socket /run/haproxy/admin.sock mode 660 level admin\n",
    ] {
        edit(&mut cfg, line, "");
    }
    edit(&mut cfg, "    maxconn 20000\n", "    maxconn 4000\n");
    edit(&mut cfg, "bind :6080", "bind fd@3");
    edit(
        &mut cfg,
        "inter 2s fall 2 rise 2",
        "inter 100ms fall 2 rise 2",
    );
    for (i, instance) in instances.iter().enumerate() {
        let n = i + 1;
        edit(
            &mut cfg,
            &format!("server ws{n} 10.0.0.1{n}:6080 check port 9180"),
            &format!(
                "server ws{n} {} check port {}",
                instance.public,
                instance.metrics.port()
            ),
        );
    }
    cfg
}

/// Three instances sharing tokens in Redis behind HAProxy, each token to its own target.
struct Fleet {
    _dir: tempfile::TempDir,
    _redis: Redis,
    targets: Vec<Target>,
    instances: Vec<Instance>,
    haproxy: Proc,
    /// Where clients connect (HAProxy's frontend).
    front: SocketAddr,
    _front_listener: std::net::TcpListener,
}

impl Fleet {
    /// Starts it all, each instance with `extra` options; `None` if a program is missing.
    async fn start(extra: &[&str]) -> Option<Fleet> {
        let [haproxy, redis_server] = programs(&["haproxy", "redis-server"])?.try_into().ok()?;
        let dir = tempfile::tempdir().expect("tempdir");
        let redis = block(|| Redis::start(&redis_server, dir.path()));
        let mut targets = Vec::new();
        for _ in 0..TOKENS {
            targets.push(proxy_echo_target().await);
        }
        let tokens: Vec<(String, String)> = targets
            .iter()
            .enumerate()
            .map(|(k, target)| (format!("tok{k}"), target.addr.to_string()))
            .collect();
        redis.set(&tokens).await;

        let args: Vec<String> = [
            "--proxy-protocol",
            "--target-proxy-protocol",
            "v1",
            "--token-plugin",
            "TokenRedis",
            "--token-source",
            &redis.url(),
            "--log-format",
            "json",
        ]
        .iter()
        .chain(extra)
        .map(|arg| (*arg).to_owned())
        .collect();
        let instances: Vec<Instance> = block(|| {
            (0..INSTANCES)
                .map(|_| Instance::start(&args, &[]))
                .collect()
        });

        let cfg_path = dir.path().join("haproxy.cfg");
        std::fs::write(&cfg_path, haproxy_config(&instances)).expect("write haproxy.cfg");
        let front_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind frontend");
        let front = front_listener.local_addr().expect("frontend address");
        let mut check = Command::new(&haproxy);
        check.arg("-c").arg("-f").arg(&cfg_path);
        pass_fd(&mut check, front_listener.as_raw_fd(), 3);
        let checked = block(|| run_bounded(&mut check, b""));
        assert!(
            checked.0,
            "haproxy -c rejects the generated configuration:\n{}",
            checked.1
        );
        let mut command = Command::new(&haproxy);
        command.arg("-db").arg("-f").arg(&cfg_path);
        pass_fd(&mut command, front_listener.as_raw_fd(), 3);
        // HAProxy accepts on the listener the test bound: connections queue until it runs.
        let haproxy = Proc::spawn(&mut command);
        Some(Fleet {
            _dir: dir,
            _redis: redis,
            targets,
            instances,
            haproxy,
            front,
            _front_listener: front_listener,
        })
    }

    /// Waits (bounded) for HAProxy to report server `ws{n}` `state` ("UP", "DOWN") after
    /// output line `from`; returns the line's index and the line.
    fn haproxy_says(&self, from: usize, n: usize, state: &str) -> (usize, String) {
        let needle = format!("Server websockify/ws{n} is {state}");
        block(|| {
            self.haproxy
                .out
                .wait_from(from, &format!("HAProxy: {needle}"), |line| {
                    line.contains(&needle)
                })
        })
    }

    /// All JSON session lines of all instances (current processes).
    fn sessions(&self) -> Vec<serde_json::Value> {
        self.instances.iter().flat_map(Instance::sessions).collect()
    }
}

/// Runs a short command to completion with `input` on stdin (bounded): (success, output).
fn run_bounded(command: &mut Command, input: &[u8]) -> (bool, String) {
    use std::io::Write as _;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("cannot run {command:?}: {err}"));
    let pid = child.id() as i32;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input)
            .expect("write to the command's stdin");
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let Ok(output) = rx.recv_timeout(STEP) else {
        // Our own child; the thread above reaps it.
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
        panic!("{command:?} did not finish within {STEP:?}");
    };
    let output = output.expect("command output");
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

// ---- clients ---------------------------------------------------------------------------------

/// A client address of its own: 127.`net`.`i / 250`.`i % 250 + 2` (never 127.0.0.1).
fn client_ip(net: u8, i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, net, (i / 250) as u8, (i % 250 + 2) as u8)
}

/// Connects to `to` from `source` (any port).
async fn connect_from(source: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
    socket.connect(to).await
}

/// Sends an upgrade request for `path` with `extra` header lines; returns the response head.
async fn upgrade<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    path: &str,
    extra: &str,
) -> Result<String, String> {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: binary\r\n{extra}\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("sending the upgrade request: {e}"))?;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let byte = stream
            .read_u8()
            .await
            .map_err(|e| format!("reading the response head (got {head:?}): {e}"))?;
        head.push(byte);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

/// Reads one server frame: (first byte, payload).
async fn recv_frame<S: AsyncRead + Unpin>(stream: &mut S) -> Result<(u8, Vec<u8>), String> {
    let mut head = [0u8; 2];
    stream
        .read_exact(&mut head)
        .await
        .map_err(|e| format!("reading a frame: {e}"))?;
    let len = match head[1] & 0x7f {
        126 => u64::from(stream.read_u16().await.map_err(|e| e.to_string())?),
        127 => stream.read_u64().await.map_err(|e| e.to_string())?,
        n => u64::from(n),
    };
    let mut payload = vec![0u8; len as usize];
    stream
        .read_exact(&mut payload)
        .await
        .map_err(|e| format!("reading a frame's payload: {e}"))?;
    Ok((head[0], payload))
}

/// The close code of a close frame's payload.
fn close_code(payload: &[u8]) -> u16 {
    match payload {
        [a, b, ..] => u16::from_be_bytes([*a, *b]),
        _ => 1005,
    }
}

/// Sends `payload` in a binary frame and expects it back.
async fn echo<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    payload: &[u8],
) -> Result<(), String> {
    stream
        .write_all(&client_frame(0x82, payload))
        .await
        .map_err(|e| format!("sending a frame: {e}"))?;
    let mut back = Vec::new();
    while back.len() < payload.len() {
        match recv_frame(stream).await? {
            (0x82, data) => back.extend_from_slice(&data),
            (0x88, close) => {
                return Err(format!(
                    "closed with {} instead of an echo",
                    close_code(&close)
                ));
            }
            (b0, _) => return Err(format!("unexpected frame {b0:#x}")),
        }
    }
    if back == payload {
        Ok(())
    } else {
        Err("the echo differs from what was sent".to_owned())
    }
}

/// Closes with 1000 and reads the server's close; returns its code.
async fn close<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) -> Result<u16, String> {
    stream
        .write_all(&client_frame(0x88, &1000u16.to_be_bytes()))
        .await
        .map_err(|e| format!("sending a close: {e}"))?;
    loop {
        if let (0x88, payload) = recv_frame(stream).await? {
            return Ok(close_code(&payload));
        }
    }
}

/// A WebSocket session through `front` from `source` with token `tok{token}`: the stream,
/// its local address (the client HAProxy sees), and the response head.
async fn open(
    front: SocketAddr,
    source: Ipv4Addr,
    token: usize,
) -> Result<(TcpStream, SocketAddr, String), String> {
    let mut stream = connect_from(source, front)
        .await
        .map_err(|e| format!("connecting from {source}: {e}"))?;
    let local = stream.local_addr().map_err(|e| e.to_string())?;
    let head = upgrade(&mut stream, &format!("/websockify?token=tok{token}"), "").await?;
    Ok((stream, local, head))
}

/// One short session: open (101 required), echo `payload`, close with 1000. Bounded.
async fn short_session(
    front: SocketAddr,
    source: Ipv4Addr,
    token: usize,
    payload: &[u8],
) -> Result<SocketAddr, String> {
    let session = async {
        let (mut stream, local, head) = open(front, source, token).await?;
        if !head.starts_with("HTTP/1.1 101") {
            return Err(format!(
                "handshake refused: {}",
                head.lines().next().unwrap_or("")
            ));
        }
        echo(&mut stream, payload).await?;
        match close(&mut stream).await? {
            1000 => Ok(local),
            code => Err(format!("closed with {code}")),
        }
    };
    tokio::time::timeout(STEP, session)
        .await
        .unwrap_or_else(|_| Err(format!("session not done within {STEP:?}")))
}

/// The outcome of each session a load generator ran.
#[derive(Default)]
struct LoadLog {
    /// (when it started, its result).
    sessions: Mutex<Vec<(Instant, Result<(), String>)>>,
    done: AtomicUsize,
    /// Payload bytes echoed by successful sessions.
    bytes: AtomicU64,
}

impl LoadLog {
    fn failures(&self) -> Vec<(Instant, String)> {
        self.sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter_map(|(at, result)| result.clone().err().map(|e| (*at, e)))
            .collect()
    }

    fn count(&self) -> usize {
        self.done.load(Ordering::Relaxed)
    }
}

/// A steady stream of new short sessions: `workers` loops, each opening one session after
/// another (token and source address changing each time) until `stop`.
struct Load {
    log: Arc<LoadLog>,
    progress: watch::Receiver<usize>,
    stop: CancellationToken,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(front: SocketAddr, workers: usize, net: u8) -> Load {
        let log = Arc::new(LoadLog::default());
        let (tx, progress) = watch::channel(0usize);
        let tx = Arc::new(tx);
        let stop = CancellationToken::new();
        let workers = (0..workers)
            .map(|w| {
                let (log, tx, stop) = (Arc::clone(&log), Arc::clone(&tx), stop.clone());
                tokio::spawn(async move {
                    let mut n = 0usize;
                    while !stop.is_cancelled() {
                        let source = Ipv4Addr::new(127, net, w as u8, (n % 250 + 2) as u8);
                        let payload = format!("worker {w} session {n}").into_bytes();
                        let started = Instant::now();
                        let result = short_session(front, source, (n * 7 + w) % TOKENS, &payload)
                            .await
                            .map(|_| ());
                        if result.is_ok() {
                            log.bytes.fetch_add(payload.len() as u64, Ordering::Relaxed);
                        }
                        log.sessions
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push((started, result));
                        let done = log.done.fetch_add(1, Ordering::Relaxed) + 1;
                        tx.send_replace(done);
                        n += 1;
                    }
                })
            })
            .collect();
        Load {
            log,
            progress,
            stop,
            workers,
        }
    }

    /// Waits (bounded) until `more` further sessions are done.
    async fn wait_more(&mut self, more: usize) {
        let goal = self.log.count() + more;
        within(
            &format!("{more} more load sessions"),
            self.progress.wait_for(|n| *n >= goal),
        )
        .await
        .expect("load generator alive");
    }

    /// Stops the workers (each finishes its session) and returns the log.
    async fn stop(self) -> Arc<LoadLog> {
        self.stop.cancel();
        for worker in self.workers {
            within("load worker stops", worker)
                .await
                .expect("load worker");
        }
        self.log
    }
}

/// The sum of all samples of `metric` (any labels) in a scrape.
fn total(scrape: &str, metric: &str) -> f64 {
    scrape
        .lines()
        .filter(|line| {
            line.strip_prefix(metric)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

// ---- the scenarios ---------------------------------------------------------------------------

/// Scenario 1: 300 clients, 30 tokens in Redis (each to its own echo target), through
/// HAProxy (PROXY v2) to any of three instances: every client reaches the target of its
/// token, the target's PROXY v1 header names the client, and so does the instance's JSON
/// session line (with every field of the text line).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_fleet_serves_300_clients_and_everyone_sees_the_client() {
    let Some(fleet) = Fleet::start(&[]).await else {
        return;
    };
    const CLIENTS: usize = 300;
    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let front = fleet.front;
            tokio::spawn(async move {
                let payload = vec![b'a' + (i % 26) as u8; 100 + i];
                let result = short_session(front, client_ip(11, i), i % TOKENS, &payload).await;
                (i, result)
            })
        })
        .collect();
    let mut reached = Vec::new();
    let mut failures = Vec::new();
    for client in clients {
        match within("a client finishes", client)
            .await
            .expect("client task")
        {
            (i, Ok(local)) => reached.push((i, local)),
            (i, Err(err)) => failures.push(format!("client {i}: {err}")),
        }
    }
    println!(
        "fleet 1: {CLIENTS} clients over {TOKENS} tokens: {} handshakes, {} failures, {:?}",
        reached.len(),
        failures.len(),
        started.elapsed()
    );
    assert!(failures.is_empty(), "{failures:#?}");

    // Each target saw exactly the clients holding its token, by their own address.
    for (i, local) in &reached {
        assert_eq!(local.ip(), IpAddr::V4(client_ip(11, *i)));
        let target = &fleet.targets[i % TOKENS];
        let sources = target
            .sources
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        assert!(
            sources.contains(local),
            "target {} (token tok{}) never saw client {local}: {sources:?}",
            target.addr,
            i % TOKENS
        );
    }
    let seen: usize = fleet
        .targets
        .iter()
        .map(|t| {
            t.sources
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .len()
        })
        .sum();
    assert_eq!(seen, CLIENTS, "connections at the targets");

    // Each instance logged its sessions with the client's address; all three served some.
    let mut poll = tokio::time::interval(Duration::from_millis(20));
    let lines = within("300 session lines in the logs", async {
        loop {
            let lines = fleet.sessions();
            if lines.len() >= CLIENTS {
                return lines;
            }
            poll.tick().await;
        }
    })
    .await;
    let per_instance: Vec<usize> = fleet.instances.iter().map(|i| i.sessions().len()).collect();
    println!("fleet 1: sessions per instance {per_instance:?}");
    assert!(
        per_instance.iter().all(|n| *n > 0),
        "every instance serves: {per_instance:?}"
    );
    for (i, local) in &reached {
        let client = local.to_string();
        let line = lines
            .iter()
            .find(|l| l["span"]["client"] == client.as_str())
            .unwrap_or_else(|| panic!("no session line names client {client}"));
        assert_eq!(
            line["target"],
            fleet.targets[i % TOKENS].addr.to_string().as_str(),
            "{line}"
        );
        assert_eq!(line["to_target"], 100 + i, "{line}");
        assert_eq!(line["to_client"], 100 + i, "{line}");
        assert_eq!(line["code"], 1000, "{line}");
        assert_eq!(line["level"], "INFO", "{line}");
        assert!(
            line["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{line}"
        );
        assert!(
            line["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("session closed")),
            "{line}"
        );
        assert!(line["span"]["id"].as_u64().is_some(), "{line}");
        assert!(line["duration"].as_str().is_some(), "{line}");
    }
    assert!(
        !lines.iter().any(|l| l["span"]["client"]
            .as_str()
            .is_some_and(|c| c.starts_with("127.0.0.1:"))),
        "a session line names HAProxy's address"
    );
}

/// Scenario 2: one instance is killed (SIGKILL) under a steady stream of new sessions;
/// HAProxy's health check marks it down, and from then on every new session succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_marks_a_killed_instance_down_and_new_sessions_succeed() {
    let Some(fleet) = Fleet::start(&[]).await else {
        return;
    };
    let mut load = Load::start(fleet.front, 4, 21);
    load.wait_more(60).await;
    let from = fleet.haproxy.out.len();
    let killed_at = Instant::now();
    fleet.instances[1].proc.guard.signal(Signal::SIGKILL);
    let (_, down) = fleet.haproxy_says(from, 2, "DOWN");
    let down_at = Instant::now();
    assert!(
        down.contains("Layer4") || down.contains("Layer7"),
        "marked down by its health check: {down}"
    );
    load.wait_more(200).await;
    let log = load.stop().await;
    let failures = log.failures();
    // Sessions in flight on ws2 when it died are lost with it; new ones must not be.
    let in_flight = failures.iter().filter(|(at, _)| *at < killed_at).count();
    let after: Vec<_> = failures.iter().filter(|(at, _)| *at >= down_at).collect();
    println!(
        "fleet 2: kill -9 of ws2: {} sessions, {} failures: {in_flight} in flight on ws2 at the \
         kill, {} started between the kill and HAProxy marking it down {:?} later, {} after",
        log.count(),
        failures.len(),
        failures.len() - in_flight - after.len(),
        down_at - killed_at,
        after.len()
    );
    for (at, failure) in &failures {
        let when = if *at < killed_at { "before" } else { "after" };
        println!("fleet 2: a session started {when} the kill failed: {failure}");
    }
    assert!(
        after.is_empty(),
        "sessions failed after ws2 was marked down: {after:#?}"
    );
}

/// A long session that sends a frame every 100 ms and counts the echoes, until the server
/// closes it; records when and with which code.
struct LongSession {
    local: SocketAddr,
    echoes: Arc<AtomicU64>,
    closed: Arc<Mutex<Option<(Instant, u16)>>>,
    failed: Arc<Mutex<Option<String>>>,
}

impl LongSession {
    async fn open(front: SocketAddr, source: Ipv4Addr, token: usize) -> LongSession {
        let (mut stream, local, head) = within("open a long session", open(front, source, token))
            .await
            .unwrap_or_else(|e| panic!("long session from {source}: {e}"));
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        within("first echo", echo(&mut stream, b"hello"))
            .await
            .expect("first echo");
        let (mut read, mut write) = stream.into_split();
        let echoes = Arc::new(AtomicU64::new(0));
        let closed = Arc::new(Mutex::new(None));
        let failed = Arc::new(Mutex::new(None));
        let done = Arc::new(AtomicBool::new(false));
        {
            let (echoes, closed, failed, done) =
                (echoes.clone(), closed.clone(), failed.clone(), done.clone());
            tokio::spawn(async move {
                loop {
                    match recv_frame(&mut read).await {
                        Ok((0x82, _)) => {
                            echoes.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok((0x88, payload)) => {
                            *closed.lock().unwrap_or_else(PoisonError::into_inner) =
                                Some((Instant::now(), close_code(&payload)));
                            break;
                        }
                        Ok((b0, _)) => {
                            *failed.lock().unwrap_or_else(PoisonError::into_inner) =
                                Some(format!("unexpected frame {b0:#x}"));
                            break;
                        }
                        Err(e) => {
                            *failed.lock().unwrap_or_else(PoisonError::into_inner) = Some(e);
                            break;
                        }
                    }
                }
                done.store(true, Ordering::Relaxed);
            });
        }
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                if done.load(Ordering::Relaxed) {
                    // Answer the server's close, as a browser does.
                    let _ = write
                        .write_all(&client_frame(0x88, &1001u16.to_be_bytes()))
                        .await;
                    break;
                }
                if write.write_all(&client_frame(0x82, b"tick")).await.is_err() {
                    break;
                }
            }
        });
        LongSession {
            local,
            echoes,
            closed,
            failed,
        }
    }

    fn closed(&self) -> Option<(Instant, u16)> {
        *self.closed.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn failed(&self) -> Option<String> {
        self.failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Scenario 3: all three instances restarted one by one (SIGTERM, exit, start, HAProxy sees
/// it up) under a steady stream of new sessions and with long sessions open: no handshake
/// fails, sessions on the other instances carry on, and the restarting instance's sessions
/// end with 1001 only once its shutdown delay and drain timeout are over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_loses_no_handshake_and_drains_with_1001() {
    const DELAY: Duration = Duration::from_secs(1);
    const DRAIN: Duration = Duration::from_secs(2);
    let Some(mut fleet) = Fleet::start(&["--shutdown-delay", "1", "--drain-timeout", "2"]).await
    else {
        return;
    };
    let mut long = Vec::new();
    for i in 0..12 {
        long.push(LongSession::open(fleet.front, client_ip(31, i), i % TOKENS).await);
    }
    let mut load = Load::start(fleet.front, 4, 32);
    load.wait_more(30).await;
    let mut restarts = 0;
    // When each instance got SIGTERM and when it had exited.
    let mut windows = Vec::new();
    for i in 0..INSTANCES {
        let n = i + 1;
        let from = fleet.haproxy.out.len();
        let signalled = Instant::now();
        fleet.instances[i].proc.guard.signal(Signal::SIGTERM);
        // Marked down by /readyz's 503 while the instance still accepts (--shutdown-delay),
        // not by a refused connection.
        let (_, down) = fleet.haproxy_says(from, n, "DOWN");
        assert!(down.contains("503"), "ws{n}: {down}");
        let status = block(|| fleet.instances[i].proc.guard.wait_exit());
        let exited = Instant::now();
        assert_eq!(status.code(), Some(0), "ws{n} exit status {status:?}");
        windows.push((signalled, exited));
        block(|| fleet.instances[i].restart());
        restarts += 1;
        fleet.haproxy_says(from, n, "UP");
        // The sessions not on this instance carried on: each gets echoes again.
        let alive: Vec<(&LongSession, u64)> = long
            .iter()
            .filter(|s| s.closed().is_none())
            .map(|s| (s, s.echoes.load(Ordering::Relaxed)))
            .collect();
        let mut poll = tokio::time::interval(Duration::from_millis(20));
        within("open long sessions still echo", async {
            while alive.iter().any(|(s, before)| {
                s.failed().is_none() && s.echoes.load(Ordering::Relaxed) <= *before
            }) {
                poll.tick().await;
            }
        })
        .await;
        load.wait_more(20).await;
    }
    let log = load.stop().await;
    let failures = log.failures();
    let closed_1001 = long
        .iter()
        .filter(|s| s.closed().is_some_and(|(_, c)| c == 1001))
        .count();
    println!(
        "fleet 3: rolling restart: {restarts} restarts, {} new sessions, {} failed handshakes \
         or sessions; {} long sessions, {closed_1001} closed with 1001",
        log.count(),
        failures.len(),
        long.len()
    );
    assert!(failures.is_empty(), "{failures:#?}");
    for session in &long {
        assert_eq!(session.failed(), None, "long session {}", session.local);
        let Some((at, code)) = session.closed() else {
            panic!(
                "long session {} was never closed, yet every instance restarted",
                session.local
            );
        };
        assert_eq!(code, 1001, "long session {}", session.local);
        let (signalled, exited) = windows
            .iter()
            .find(|(signalled, exited)| {
                at >= *signalled && at <= *exited + Duration::from_millis(500)
            })
            .unwrap_or_else(|| {
                panic!(
                    "long session {} closed outside every restart",
                    session.local
                )
            });
        assert!(
            at - *signalled >= DELAY + DRAIN,
            "long session {} got 1001 {:?} after SIGTERM, before the delay and drain ({:?})",
            session.local,
            at - *signalled,
            DELAY + DRAIN
        );
        assert!(*exited + Duration::from_millis(500) >= at);
    }
}

/// Scenario 4: scrapes taken during load pass `promtool check metrics`; once the load is
/// over, the counters add up (ended = opened - open, bytes = what the clients sent), and
/// every metric the alert rules use exists. The rules pass `promtool check rules` and their
/// unit tests (`deploy/prometheus-rules.test.yml`) pass `promtool test rules`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrapes_under_load_pass_promtool_and_the_counters_add_up() {
    let Some([promtool]) = programs(&["promtool"]).and_then(|p| <[PathBuf; 1]>::try_from(p).ok())
    else {
        return;
    };
    let rules = deploy_file("prometheus-rules.yml");
    let (ok, output) = block(|| {
        run_bounded(
            Command::new(&promtool)
                .arg("check")
                .arg("rules")
                .arg(&rules),
            b"",
        )
    });
    assert!(ok, "promtool check rules {}: {output}", rules.display());
    let rule_tests = deploy_file("prometheus-rules.test.yml");
    let (ok, output) = block(|| {
        run_bounded(
            Command::new(&promtool)
                .args(["test", "rules"])
                .arg(&rule_tests),
            b"",
        )
    });
    assert!(ok, "promtool test rules {}: {output}", rule_tests.display());
    let Some(fleet) = Fleet::start(&[]).await else {
        return;
    };
    // Long sessions stay open through the scrapes, after one echo each.
    let mut long = Vec::new();
    let mut long_bytes = 0u64;
    for i in 0..6 {
        let (mut stream, _, head) = within("open", open(fleet.front, client_ip(41, i), i))
            .await
            .expect("open a long session");
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let payload = vec![b'L'; 1000 + i];
        within("echo", echo(&mut stream, &payload))
            .await
            .expect("echo");
        long_bytes += payload.len() as u64;
        long.push(stream);
    }
    let mut load = Load::start(fleet.front, 6, 42);
    load.wait_more(100).await;
    let mut during = Vec::new();
    for instance in &fleet.instances {
        let response = http_get(instance.metrics, "/metrics").await;
        assert_eq!(response.status, 200, "{response:?}");
        assert!(
            response
                .header("content-type")
                .is_some_and(|value| value.contains("text/plain; version=0.0.4")),
            "{response:?}"
        );
        during.push(response.text());
    }
    let sessions_during = load.log.count();
    load.wait_more(50).await;
    let log = load.stop().await;
    for scrape in &during {
        let (ok, output) = block(|| {
            run_bounded(
                Command::new(&promtool).args(["check", "metrics"]),
                scrape.as_bytes(),
            )
        });
        assert!(ok, "promtool check metrics: {output}\n{scrape}");
        // Mid-load a session may be between its counters (at most one per client at a time).
        let opened = total(scrape, "websockify_sessions_opened_total");
        let open = total(scrape, "websockify_sessions_open");
        let closed = total(scrape, "websockify_sessions_closed_total");
        assert!(
            (opened - open - closed).abs() <= 6.0,
            "{opened} {open} {closed}\n{scrape}"
        );
    }
    let failures = log.failures();
    assert!(failures.is_empty(), "{failures:#?}");

    // Quiet now: the six long sessions are open, everything else ended.
    let short_sessions = log.count() as f64;
    let mut poll = tokio::time::interval(Duration::from_millis(20));
    let scrapes = within("the counters settle", async {
        loop {
            let mut scrapes = Vec::new();
            for instance in &fleet.instances {
                scrapes.push(http_get(instance.metrics, "/metrics").await.text());
            }
            let closed: f64 = scrapes
                .iter()
                .map(|s| total(s, "websockify_sessions_closed_total"))
                .sum();
            if closed >= short_sessions {
                return scrapes;
            }
            poll.tick().await;
        }
    })
    .await;
    let sum = |metric: &str| -> f64 { scrapes.iter().map(|s| total(s, metric)).sum() };
    for scrape in &scrapes {
        let opened = total(scrape, "websockify_sessions_opened_total");
        let open = total(scrape, "websockify_sessions_open");
        let closed = total(scrape, "websockify_sessions_closed_total");
        assert_eq!(closed, opened - open, "ended = opened - open:\n{scrape}");
    }
    assert_eq!(sum("websockify_sessions_open"), 6.0);
    assert_eq!(sum("websockify_sessions_closed_total"), short_sessions);
    assert_eq!(
        sum("websockify_sessions_opened_total"),
        short_sessions + 6.0
    );
    let sent = log.bytes.load(Ordering::Relaxed) as f64;
    assert_eq!(
        sum("websockify_bytes_to_target_total"),
        sent,
        "bytes to targets"
    );
    assert_eq!(
        sum("websockify_bytes_to_client_total"),
        sent,
        "bytes to clients"
    );

    // The long sessions' bytes count when they end.
    for stream in &mut long {
        assert_eq!(within("close", close(stream)).await, Ok(1000));
    }
    let scrapes = within("the long sessions counted", async {
        loop {
            let mut scrapes = Vec::new();
            for instance in &fleet.instances {
                scrapes.push(http_get(instance.metrics, "/metrics").await.text());
            }
            if scrapes
                .iter()
                .map(|s| total(s, "websockify_sessions_open"))
                .sum::<f64>()
                == 0.0
            {
                return scrapes;
            }
            poll.tick().await;
        }
    })
    .await;
    let sum = |metric: &str| -> f64 { scrapes.iter().map(|s| total(s, metric)).sum() };
    assert_eq!(
        sum("websockify_bytes_to_target_total"),
        sent + long_bytes as f64
    );
    assert_eq!(
        sum("websockify_bytes_to_client_total"),
        sent + long_bytes as f64
    );

    // Every metric an alert uses is one websockify serves (or Prometheus' own `up`).
    let rules_text = std::fs::read_to_string(&rules).expect("read the rules");
    let mut used: Vec<&str> = rules_text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("websockify_"))
        .collect();
    used.sort_unstable();
    used.dedup();
    for metric in &used {
        assert!(
            scrapes[0].lines().any(|l| l.starts_with(metric)),
            "the alert rules use {metric}, which no scrape has"
        );
    }

    println!(
        "fleet 4: {} sessions ({sessions_during} when scraped), {} failures; scrape of ws1 \
         taken during the load:",
        log.count(),
        failures.len()
    );
    for line in during[0]
        .lines()
        .filter(|l| !l.starts_with('#') && !l.contains("_bucket"))
    {
        println!("    {line}");
    }
}

/// Scenario 5: `--max-connections-per-ip 2` behind HAProxy counts the real client: one
/// client gets 2 sessions per instance and then 503, while other clients, which all arrive
/// from HAProxy's address too, are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_ip_limit_counts_the_client_behind_haproxy() {
    let Some(fleet) = Fleet::start(&["--max-connections-per-ip", "2"]).await else {
        return;
    };
    let greedy = client_ip(51, 0);
    let mut held = Vec::new();
    let mut refused = Vec::new();
    for _ in 0..(2 * INSTANCES + 1) {
        let (mut stream, _, head) = within("open", open(fleet.front, greedy, 0))
            .await
            .expect("open");
        if head.starts_with("HTTP/1.1 101") {
            within("echo", echo(&mut stream, b"mine"))
                .await
                .expect("echo");
            held.push(stream);
        } else {
            refused.push(head);
        }
    }
    println!(
        "fleet 5: one client with --max-connections-per-ip 2 on {INSTANCES} instances: {} \
         sessions, {} refused",
        held.len(),
        refused.len()
    );
    // leastconn spreads the client's sessions, so it reaches the limit on each instance.
    assert_eq!(held.len(), 2 * INSTANCES, "refusals: {refused:?}");
    assert_eq!(refused.len(), 1);
    assert!(refused[0].starts_with("HTTP/1.1 503"), "{}", refused[0]);
    assert!(
        refused[0].to_ascii_lowercase().contains("retry-after: 1"),
        "{}",
        refused[0]
    );
    // Ten other clients, three or four per instance, all from HAProxy's 127.0.0.1.
    let mut others = Vec::new();
    for i in 1..=10 {
        let (mut stream, _, head) = within("open", open(fleet.front, client_ip(51, i), i))
            .await
            .expect("open");
        assert!(head.starts_with("HTTP/1.1 101"), "client {i}: {head}");
        within("echo", echo(&mut stream, b"other"))
            .await
            .expect("echo");
        others.push(stream);
    }
    for stream in &mut held {
        within("echo", echo(stream, b"still mine"))
            .await
            .expect("the held sessions go on");
    }
    let mut limit_refusals = 0.0;
    for instance in &fleet.instances {
        let response = http_get(instance.metrics, "/metrics").await.text();
        limit_refusals += total(
            &response,
            "websockify_handshakes_refused_total{reason=\"limit\"}",
        );
    }
    assert_eq!(limit_refusals, 1.0);
    let logged = fleet.instances.iter().any(|instance| {
        instance.proc.out.snapshot().iter().any(|line| {
            line.contains("refused connection: --max-connections-per-ip 2")
                && line.contains(&format!("\"client\":\"{greedy}:"))
        })
    });
    assert!(logged, "the refusal is logged with the client's address");
}

/// Scenario 6: nginx terminates TLS (`deploy/nginx.conf`) and passes X-Forwarded-For; the
/// session line names that client only when nginx's address is in --trusted-proxy (and a
/// client's own X-Forwarded-For entry is never believed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_nginx_the_forwarded_client_counts_only_from_a_trusted_proxy() {
    let Some([nginx]) = programs(&["nginx"]).and_then(|p| <[PathBuf; 1]>::try_from(p).ok()) else {
        return;
    };
    let client = client_ip(61, 5);
    for (trusted, expected) in [
        ("127.0.0.1", format!("client={client}}}:")),
        ("192.0.2.0/24", "client=127.0.0.1:".to_owned()),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let echo_target = crate::util::echo_server().await.to_string();
        let args = ["--trusted-proxy".to_owned(), trusted.to_owned()];
        let tail = [echo_target];
        let instances: Vec<Instance> = block(|| {
            (0..INSTANCES)
                .map(|_| Instance::start(&args, &tail))
                .collect()
        });
        let key = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
        let cert = dir.path().join("cert.pem");
        let key_path = dir.path().join("key.pem");
        std::fs::write(&cert, key.cert.pem()).expect("write cert");
        std::fs::write(&key_path, key.signing_key.serialize_pem()).expect("write key");
        let (_nginx, port) =
            block(|| start_nginx(&nginx, dir.path(), &instances, &cert, &key_path));

        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(key.cert.der().clone())
            .expect("trust the certificate");
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        let front = SocketAddr::from(([127, 0, 0, 1], port));
        let tcp = within("connect to nginx", connect_from(client, front))
            .await
            .expect("connect to nginx");
        let name = ServerName::try_from("localhost").expect("server name");
        let mut tls = within(
            "TLS handshake with nginx",
            tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp),
        )
        .await
        .expect("TLS handshake with nginx");
        // The client names someone else; nginx appends the address it saw.
        let head = within(
            "upgrade through nginx",
            upgrade(&mut tls, "/websockify", "X-Forwarded-For: 203.0.113.66\r\n"),
        )
        .await
        .expect("upgrade");
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        within("echo through nginx", echo(&mut tls, b"through nginx"))
            .await
            .expect("echo");
        assert_eq!(within("close", close(&mut tls)).await, Ok(1000));
        let mut poll = tokio::time::interval(Duration::from_millis(20));
        let line = within("the session line", async {
            loop {
                if let Some(line) = instances
                    .iter()
                    .flat_map(|i| i.proc.out.snapshot())
                    .find(|l| l.contains("session closed"))
                {
                    return line;
                }
                poll.tick().await;
            }
        })
        .await;
        println!("fleet 6: --trusted-proxy {trusted}: {line}");
        assert!(
            line.contains(&expected),
            "--trusted-proxy {trusted}: {line}"
        );
        assert!(!line.contains("203.0.113.66"), "{line}");
    }
}

/// Starts nginx from `deploy/nginx.conf` in front of `instances`. nginx binds its port itself
/// (its inherited-socket mechanism, the `NGINX` variable, is meant for binary upgrades), so
/// it runs through `on_free_port`: another port if one was taken in between. Returns nginx
/// and its port.
fn start_nginx(
    program: &Path,
    dir: &Path,
    instances: &[Instance],
    cert: &Path,
    key: &Path,
) -> (Proc, u16) {
    let path = deploy_file("nginx.conf");
    let template = std::fs::read_to_string(&path)
        .unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()));
    on_free_port(|port| {
        let mut conf = template.clone();
        let d = dir.display();
        edit(
            &mut conf,
            "pid /run/nginx-websockify.pid;",
            &format!("pid {d}/nginx.pid;"),
        );
        edit(
            &mut conf,
            "error_log /var/log/nginx/websockify-error.log;",
            "error_log stderr notice;",
        );
        edit(
            &mut conf,
            "access_log /var/log/nginx/websockify-access.log;",
            &format!(
                "access_log {d}/access.log;\n    client_body_temp_path {d}/body;\n    \
                 proxy_temp_path {d}/proxy;\n    fastcgi_temp_path {d}/fastcgi;\n    \
                 uwsgi_temp_path {d}/uwsgi;\n    scgi_temp_path {d}/scgi;"
            ),
        );
        edit(
            &mut conf,
            "listen 443 ssl;",
            &format!("listen 127.0.0.1:{port} ssl;"),
        );
        edit(
            &mut conf,
            "/etc/ssl/websockify/fullchain.pem",
            &cert.display().to_string(),
        );
        edit(
            &mut conf,
            "/etc/ssl/websockify/privkey.pem",
            &key.display().to_string(),
        );
        for (i, instance) in instances.iter().enumerate() {
            edit(
                &mut conf,
                &format!("server 10.0.0.1{}:6080 ", i + 1),
                &format!("server {} ", instance.public),
            );
        }
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("write nginx.conf");
        let proc = Proc::spawn(
            Command::new(program)
                .args(["-e", "stderr", "-p"])
                .arg(dir)
                .arg("-c")
                .arg(&conf_path)
                .args(["-g", "daemon off; master_process off;"]),
        );
        // nginx names its version once its sockets are bound; a bind failure is "[emerg]".
        match proc.out.find_from(0, |line| {
            line.contains("nginx/") || line.contains("[emerg]")
        }) {
            Some((_, line)) if !line.contains("[emerg]") => Ok((proc, port)),
            _ => {
                let output = proc.out.snapshot().join("\n");
                if output.contains("Address already in use") {
                    Err(output)
                } else {
                    panic!("nginx did not start:\n{output}");
                }
            }
        }
    })
}
