//! Helpers shared by the end-to-end tests, one copy each: bounded waits, servers and targets
//! on port 0, ports for what cannot take port 0, WebSocket and HTTP by hand, child processes,
//! /proc, and what this machine has.

#![allow(dead_code)]

use std::future::Future;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub use nix::sys::signal::Signal;
use nix::sys::signal::kill;
use nix::unistd::Pid;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use websockify::{Config, Target};

/// Default bound for one step of a test.
pub const STEP: Duration = Duration::from_secs(10);

/// Awaits `fut`, failing the test with `step` in the message if it takes longer than [`STEP`].
pub async fn within<F: Future>(step: &str, fut: F) -> F::Output {
    match tokio::time::timeout(STEP, fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out after {STEP:?}: {step}"),
    }
}

/// Asserts that `fut` does not complete within `wait` (the one short wait tests may use).
pub async fn stays_pending<F: Future>(what: &str, wait: Duration, fut: F) {
    if tokio::time::timeout(wait, fut).await.is_ok() {
        panic!("expected nothing within {wait:?}: {what}");
    }
}

/// A server running in-process on 127.0.0.1:0.
pub struct TestServer {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl TestServer {
    pub async fn start(config: Config) -> TestServer {
        Self::start_on(config, "127.0.0.1:0").await
    }

    pub async fn start_on(config: Config, bind: &str) -> TestServer {
        let listener = TcpListener::bind(bind).await.expect("bind test listener");
        let addr = listener.local_addr().expect("local addr");
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(websockify::run(config, listener, shutdown.clone()));
        TestServer {
            addr,
            shutdown,
            handle,
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/websockify", self.addr)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// A config proxying to `target` with the defaults of the command line.
pub fn config_to(target: SocketAddr) -> Config {
    Config::new(Target::Tcp {
        host: target.ip().to_string(),
        port: target.port(),
    })
}

/// Starts a TCP echo server on 127.0.0.1:0; each connection echoes until EOF.
pub async fn echo_server() -> SocketAddr {
    echo_server_on("127.0.0.1:0").await
}

/// Starts a TCP echo server on `bind` (a port 0 address); each connection echoes until EOF.
pub async fn echo_server_on(bind: &str) -> SocketAddr {
    let listener = TcpListener::bind(bind).await.expect("bind echo");
    let addr = listener.local_addr().expect("echo addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// A target that accepts connections and hands each accepted stream to the test.
pub async fn scripted_target() -> (SocketAddr, tokio::sync::mpsc::Receiver<TcpStream>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind target");
    let addr = listener.local_addr().expect("target addr");
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            if tx.send(stream).await.is_err() {
                break;
            }
        }
    });
    (addr, rx)
}

/// A loopback address where connecting is refused: a socket bound to it that never listens.
/// The port stays taken while the value lives, so no other test can start listening on it.
pub struct ClosedPort {
    pub addr: SocketAddr,
    _socket: socket2::Socket,
}

/// An address nobody listens on, held (bound, not listening) until the value is dropped.
pub fn closed_port() -> ClosedPort {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind");
    let addr = socket
        .local_addr()
        .expect("addr")
        .as_socket()
        .expect("an IPv4 address");
    ClosedPort {
        addr,
        _socket: socket,
    }
}

/// How many ports [`on_free_port`] tries.
pub const PORT_ATTEMPTS: usize = 5;

/// Starts something that must be told its TCP port before it starts and cannot be handed a
/// listening socket (websockify in wrap mode: the wrapped program binds the port itself, so
/// port 0 is refused). `start` gets a port that no socket holds right now and returns `Err`
/// with what it saw when another process took the port in between; the whole start then runs
/// again on another port, at most [`PORT_ATTEMPTS`] times. Everything else uses port 0 or a
/// listener handed to the server.
pub fn on_free_port<T>(mut start: impl FnMut(u16) -> Result<T, String>) -> T {
    let mut taken = Vec::new();
    for _ in 0..PORT_ATTEMPTS {
        let port = unheld_port();
        match start(port) {
            Ok(started) => return started,
            Err(why) => {
                eprintln!("port {port} was taken meanwhile, trying another: {why}");
                taken.push(format!("port {port}: {why}"));
            }
        }
    }
    panic!(
        "the start failed on {PORT_ATTEMPTS} ports in a row:\n{}",
        taken.join("\n")
    );
}

/// Whether `stderr` of websockify says that its listen port was taken.
pub fn port_was_taken(stderr: &str) -> bool {
    stderr.contains("cannot listen") && stderr.contains("in use")
}

/// A port that no socket holds on any address (IPv6 and IPv4) right now: bound, then closed.
/// Only [`on_free_port`] may use it, as it retries when the port is taken meanwhile.
fn unheld_port() -> u16 {
    let listener = std::net::TcpListener::bind((std::net::Ipv6Addr::UNSPECIFIED, 0))
        .or_else(|_| std::net::TcpListener::bind("0.0.0.0:0"))
        .expect("bind a port to learn a free one");
    listener.local_addr().expect("local addr").port()
}

// ---------------------------------------------------------------------------------------------
// WebSocket by hand: the upgrade request, frames, an echo, the close

/// An upgrade request for `/websockify` with `extra_headers` (each line ending in CRLF).
pub fn upgrade_request(host: &str, extra_headers: &str) -> String {
    upgrade_request_for("/websockify", host, extra_headers)
}

/// An upgrade request for `path` with `extra_headers` (each line ending in CRLF).
pub fn upgrade_request_for(path: &str, host: &str, extra_headers: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra_headers}\r\n"
    )
}

/// Connects to `addr`, sends `prefix` (a PROXY header, or nothing) and an upgrade request
/// with `extra_headers`; returns the stream and the response head.
pub async fn raw_upgrade_after(
    addr: SocketAddr,
    prefix: &[u8],
    extra_headers: &str,
) -> (TcpStream, String) {
    let mut stream = within("connect", TcpStream::connect(addr))
        .await
        .expect("connect");
    let mut request = prefix.to_vec();
    request.extend_from_slice(upgrade_request(&addr.to_string(), extra_headers).as_bytes());
    within("send the upgrade request", stream.write_all(&request))
        .await
        .expect("send the upgrade request");
    let head = read_head(&mut stream).await;
    (stream, head)
}

/// Sends a raw upgrade request; returns the stream and the response head.
pub async fn raw_upgrade(addr: SocketAddr, extra_headers: &str) -> (TcpStream, String) {
    raw_upgrade_after(addr, b"", extra_headers).await
}

/// Sends an upgrade request on an open stream (TCP or unix); returns the response head.
pub async fn upgrade_on<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, host: &str) -> String {
    let request = upgrade_request(host, "");
    within(
        "send the upgrade request",
        stream.write_all(request.as_bytes()),
    )
    .await
    .expect("send the upgrade request");
    read_head(stream).await
}

/// A WebSocket session over TCP to `addr`, upgraded.
pub async fn session(addr: SocketAddr) -> TcpStream {
    let (stream, head) = raw_upgrade(addr, "").await;
    assert!(head.starts_with("HTTP/1.1 101"), "upgrade refused:\n{head}");
    stream
}

/// Reads an HTTP response head byte by byte (so no frame bytes are consumed); what came
/// before EOF if the peer closes first.
pub async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> String {
    let mut head = Vec::new();
    within("response head", async {
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if stream.read(&mut byte).await.expect("read head") == 0 {
                break;
            }
            head.push(byte[0]);
        }
    })
    .await;
    String::from_utf8_lossy(&head).into_owned()
}

/// Encodes a masked client frame with first byte `b0`.
pub fn client_frame(b0: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = vec![b0];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// Reads one server frame: (first byte, payload). Panics on EOF.
pub async fn read_frame<S: AsyncRead + Unpin>(stream: &mut S) -> (u8, Vec<u8>) {
    within("read a frame", async {
        let mut head = [0u8; 2];
        stream.read_exact(&mut head).await.expect("frame header");
        assert_eq!(head[1] & 0x80, 0, "server frames are never masked");
        let len = match head[1] & 0x7f {
            126 => u64::from(stream.read_u16().await.expect("len16")),
            127 => stream.read_u64().await.expect("len64"),
            n => u64::from(n),
        };
        let mut payload = vec![0u8; usize::try_from(len).expect("frame length")];
        stream.read_exact(&mut payload).await.expect("payload");
        (head[0], payload)
    })
    .await
}

/// Reads frames until a close frame; returns its code and reason, skipping data frames.
pub async fn read_close<S: AsyncRead + Unpin>(stream: &mut S) -> (u16, String) {
    loop {
        let (b0, payload) = read_frame(stream).await;
        if b0 & 0x0f == 0x8 {
            if payload.len() < 2 {
                return (1005, String::new());
            }
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            return (code, String::from_utf8_lossy(&payload[2..]).into_owned());
        }
    }
}

/// Sends `payload` as one binary message and expects it back (pings skipped; the echo may
/// come back in several frames).
pub async fn echo_on<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, payload: &[u8]) {
    within(
        "send a frame",
        stream.write_all(&client_frame(0x82, payload)),
    )
    .await
    .expect("send a frame");
    let mut got = Vec::new();
    while got.len() < payload.len() {
        let (b0, data) = read_frame(stream).await;
        match b0 & 0x0f {
            0x9 | 0xa => {}
            0x2 | 0x0 => got.extend_from_slice(&data),
            other => panic!("expected the echo, got opcode {other:#x}: {data:?}"),
        }
    }
    assert_eq!(got, payload, "echo");
}

/// Closes the session from the client side (1000), reads until the server closes TCP, and
/// returns the code of the server's close frame.
pub async fn close_on<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) -> u16 {
    within(
        "send a close frame",
        stream.write_all(&client_frame(0x88, &1000u16.to_be_bytes())),
    )
    .await
    .expect("send a close frame");
    let (code, _reason) = read_close(stream).await;
    let mut rest = Vec::new();
    within("the server closes TCP", stream.read_to_end(&mut rest))
        .await
        .expect("read to EOF");
    code
}

// ---------------------------------------------------------------------------------------------
// Plain HTTP

/// An HTTP response read to EOF.
#[derive(Debug)]
pub struct HttpResponse {
    /// The first line, e.g. `HTTP/1.1 200 OK`.
    pub status_line: String,
    /// The status code (0 when the status line has none).
    pub status: u16,
    /// The status line and the header lines.
    pub head: String,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The value of header `name` (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then_some(value.trim())
        })
    }
}

/// `GET path` over plain HTTP/1.1 (`Connection: close`), read to EOF.
pub async fn http_get(addr: SocketAddr, path: &str) -> HttpResponse {
    let mut stream = within("connect", TcpStream::connect(addr))
        .await
        .expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    within("send the request", stream.write_all(request.as_bytes()))
        .await
        .expect("send request");
    let mut response = Vec::new();
    within("HTTP response", stream.read_to_end(&mut response))
        .await
        .expect("read response");
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {:?}", String::from_utf8_lossy(&response)));
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let status_line = head.lines().next().unwrap_or_default().to_owned();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    HttpResponse {
        status_line,
        status,
        head,
        body: response[split + 4..].to_vec(),
    }
}

// ---------------------------------------------------------------------------------------------
// Child processes

/// Lines of `reader` on a channel, read by a thread until EOF or an error.
pub fn lines_of(reader: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The next line containing one of `needles`, or `None` on EOF or after [`STEP`].
pub fn next_line(lines: &mpsc::Receiver<String>, needles: &[&str]) -> Option<String> {
    let deadline = Instant::now() + STEP;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let line = lines.recv_timeout(left).ok()?;
        if needles.iter().any(|n| line.contains(n)) {
            return Some(line);
        }
    }
    None
}

/// Waits (bounded) for a line containing `needle`; returns it.
pub fn line_containing(lines: &mpsc::Receiver<String>, needle: &str) -> String {
    let deadline = Instant::now() + STEP;
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(line) => seen.push(line),
            Err(_) => break,
        }
    }
    panic!("no line containing {needle:?}; saw:\n{}", seen.join("\n"));
}

/// A child process, killed (SIGKILL) and reaped when dropped.
pub struct ChildGuard {
    pub pid: i32,
    exit: mpsc::Receiver<std::process::ExitStatus>,
    status: Option<std::process::ExitStatus>,
    pub stderr_lines: mpsc::Receiver<String>,
}

impl ChildGuard {
    /// Takes ownership of `child`; a thread waits for it so exits can be awaited with a bound.
    pub fn new(mut child: Child) -> ChildGuard {
        let pid = child.id() as i32;
        let stderr_lines = match child.stderr.take() {
            Some(stderr) => lines_of(stderr),
            None => mpsc::channel().1,
        };
        let (exit_tx, exit) = mpsc::channel();
        std::thread::spawn(move || {
            if let Ok(status) = child.wait() {
                let _ = exit_tx.send(status);
            }
        });
        ChildGuard {
            pid,
            exit,
            status: None,
            stderr_lines,
        }
    }

    /// Waits (bounded) for a stderr line containing `needle`; returns it.
    pub fn wait_for_line(&self, needle: &str) -> String {
        line_containing(&self.stderr_lines, needle)
    }

    /// The next stderr line containing one of `needles`, or `None` on EOF or after [`STEP`].
    pub fn next_line(&self, needles: &[&str]) -> Option<String> {
        next_line(&self.stderr_lines, needles)
    }

    /// Waits (bounded) for the process to exit; returns its status.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        if let Some(status) = self.status {
            return status;
        }
        let status = self
            .exit
            .recv_timeout(STEP)
            .unwrap_or_else(|_| panic!("process {} did not exit within {STEP:?}", self.pid));
        self.status = Some(status);
        status
    }

    /// Sends `signal` to the process (a pid we spawned and have not reaped yet).
    pub fn signal(&self, signal: Signal) {
        if self.status.is_none() {
            let _ = kill(Pid::from_raw(self.pid), signal);
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.status.is_none() && self.exit.try_recv().is_err() {
            // The waiting thread reaps the process.
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
            let _ = self.exit.recv_timeout(STEP);
        }
    }
}

/// Runs a blocking wait (a child's line or exit) without stalling the other tasks of a
/// multi-threaded runtime; elsewhere (a current-thread runtime, a plain test) runs it as is.
pub fn block<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) if runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Waits for the process to exit on a blocking thread, so the runtime keeps serving the
/// test's sockets meanwhile; the handle is a future for `stays_pending` and `within`.
pub fn watch_exit(mut child: ChildGuard) -> JoinHandle<(ChildGuard, ExitStatus)> {
    tokio::task::spawn_blocking(move || {
        let status = child.wait_exit();
        (child, status)
    })
}

/// Awaits a [`watch_exit`] handle (bounded), passing a panic in the watcher on.
pub async fn exited(watch: JoinHandle<(ChildGuard, ExitStatus)>) -> ExitStatus {
    match within("process exit", watch).await {
        Ok((_child, status)) => status,
        Err(err) => std::panic::resume_unwind(err.into_panic()),
    }
}

/// Path of the built `websockify` binary.
pub fn websockify_bin() -> &'static str {
    env!("CARGO_BIN_EXE_websockify")
}

/// The binary with `args`: stdin and stdout on /dev/null, stderr piped, no `RUST_LOG`.
pub fn websockify(args: &[&str]) -> Command {
    let mut command = Command::new(websockify_bin());
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .env_remove("RUST_LOG");
    command
}

/// The binary in inetd "wait" mode (`--inetd <args>`): stdin is a listener on 127.0.0.1:0
/// that the test bound, so its address is known before the process starts.
pub fn inetd_websockify(args: &[&str]) -> (Command, SocketAddr) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the inetd listener");
    let addr = listener.local_addr().expect("inetd listener address");
    let mut command = websockify(&[&["--inetd"], args].concat());
    command.stdin(Stdio::from(std::os::fd::OwnedFd::from(listener)));
    (command, addr)
}

/// Makes `fd` (open in this process until `command` is spawned) the child's descriptor
/// `target`, without close-on-exec: systemd's fd 3, HAProxy's `bind fd@3`, a marker fd.
pub fn pass_fd(command: &mut Command, fd: RawFd, target: RawFd) {
    use nix::fcntl::{F_GETFD, F_SETFD, FdFlag, fcntl};
    use std::os::fd::{BorrowedFd, IntoRawFd as _};
    use std::os::unix::process::CommandExt as _;
    // SAFETY: between fork and exec only dup2 and fcntl run (async-signal-safe, no
    // allocation); `fd` stays open until the command is spawned, as the caller promises.
    unsafe {
        command.pre_exec(move || {
            let source = BorrowedFd::borrow_raw(fd);
            if fd == target {
                let flags = FdFlag::from_bits_truncate(fcntl(source, F_GETFD)?);
                fcntl(source, F_SETFD(flags - FdFlag::FD_CLOEXEC))?;
            } else {
                // The new descriptor stays open for the program: it is not dropped here.
                let _ = nix::unistd::dup2_raw(source, target)?.into_raw_fd();
            }
            Ok(())
        });
    }
}

/// Spawns the binary with `args`, stderr captured line by line.
pub fn spawn_websockify(args: &[&str]) -> ChildGuard {
    ChildGuard::new(websockify(args).spawn().expect("spawn websockify"))
}

/// Spawns the binary and waits (bounded) for its banner; returns it with the address it
/// reports (port 0 picks one).
pub fn start_websockify(args: &[&str]) -> (ChildGuard, SocketAddr) {
    let child = spawn_websockify(args);
    let addr = listening_addr(&block(|| child.wait_for_line("listening on")));
    (child, addr)
}

/// Runs the binary to completion (bounded); returns (exit code, stdout, stderr).
pub fn run_websockify(args: &[&str]) -> (Option<i32>, String, String) {
    let child = websockify(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn websockify");
    let pid = child.id() as i32;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let Ok(output) = rx.recv_timeout(STEP) else {
        // Our own child; the thread above reaps it.
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        panic!("websockify {args:?} did not exit within {STEP:?}");
    };
    let output = output.expect("output");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Parses the address from the "listening on ADDR" banner line.
pub fn listening_addr(line: &str) -> SocketAddr {
    let addr = line
        .rsplit("listening on ")
        .next()
        .expect("listening line")
        .trim();
    addr.parse()
        .unwrap_or_else(|_| panic!("bad address in {line:?}"))
}

// ---------------------------------------------------------------------------------------------
// /proc: processes that need not be our children

/// Fields of /proc/PID/stat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStat {
    /// `R`, `S`, ..., `Z` (zombie), `X` (dead).
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
    pub session: i32,
    pub tty_nr: i64,
    /// When the process started, in clock ticks since boot: with the pid, names one process.
    pub start_time: u64,
}

/// /proc/PID/stat, `None` when the process is gone.
pub fn proc_stat(pid: i32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = text
        .get(text.rfind(')')? + 2..)?
        .split_whitespace()
        .collect();
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        pgrp: fields.get(2)?.parse().ok()?,
        session: fields.get(3)?.parse().ok()?,
        tty_nr: fields.get(4)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// A pidfd for `pid`, which need not be our child: it becomes readable when the process
/// exits. None when the process is already gone (reaped).
fn pidfd(pid: i32) -> Option<std::os::fd::OwnedFd> {
    // nix (0.31) has no pidfd_open: the one system call made directly.
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        let err = std::io::Error::last_os_error();
        assert_eq!(
            err.raw_os_error(),
            Some(nix::errno::Errno::ESRCH as i32),
            "pidfd_open({pid})"
        );
        return None;
    }
    let fd = i32::try_from(fd).expect("fd");
    // SAFETY: pidfd_open returned a new descriptor that nothing else owns.
    Some(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// Waits (bounded) until `pid`, which need not be our child, has exited: a pidfd becomes
/// readable then. The process may remain as a zombie until its parent reaps it.
pub async fn gone(pid: i32) {
    let Some(fd) = pidfd(pid) else { return };
    // SAFETY: the AsyncFd owns the descriptor, which stays open and the same until it drops.
    let fd = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
    }
    .map_err(std::io::Error::from)
    .expect("register the pidfd");
    let _ready = within("the process exits", fd.readable())
        .await
        .expect("poll the pidfd");
    assert!(!alive(pid), "process {pid} is still running");
}

/// [`gone`] outside async code (a `Drop`): waits at most [`STEP`] for `pid` to exit; never
/// panics, so it is safe during unwinding.
pub fn gone_blocking(pid: i32) {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd as _;
    let Some(fd) = pidfd(pid) else { return };
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    let timeout = PollTimeout::try_from(STEP).unwrap_or(PollTimeout::MAX);
    let _ = poll(&mut fds, timeout);
}

/// Whether `pid` is a live process (neither gone nor a zombie waiting to be reaped).
pub fn alive(pid: i32) -> bool {
    proc_stat(pid).is_some_and(|stat| stat.state != 'Z' && stat.state != 'X')
}

/// The pid and stat of every process.
pub fn all_processes() -> Vec<(i32, ProcStat)> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse().ok()?;
            Some((pid, proc_stat(pid)?))
        })
        .collect()
}

/// Live descendants of `root`.
pub fn descendants(root: i32) -> Vec<i32> {
    let parents: Vec<(i32, i32)> = all_processes()
        .into_iter()
        .filter(|(_, stat)| stat.state != 'Z')
        .map(|(pid, stat)| (pid, stat.ppid))
        .collect();
    let mut out = Vec::new();
    let mut stack = vec![root];
    while let Some(parent) = stack.pop() {
        for &(pid, ppid) in &parents {
            if ppid == parent {
                out.push(pid);
                stack.push(pid);
            }
        }
    }
    out
}

/// Processes a test started that need not be its children (a daemon, a wrapped program's
/// tree), killed on drop if still alive: a bug that orphans them must fail the test, not
/// leave them running. A pid is killed only while it names the same process (same start time).
pub struct KillOnDrop(Vec<(i32, u64)>);

impl KillOnDrop {
    pub fn new(pids: &[i32]) -> KillOnDrop {
        KillOnDrop(
            pids.iter()
                .filter_map(|&pid| Some((pid, proc_stat(pid)?.start_time)))
                .collect(),
        )
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for &(pid, started) in &self.0 {
            if alive(pid) && proc_stat(pid).map(|stat| stat.start_time) == Some(started) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Certificates (rcgen)

/// A certificate with its private key, as PEM and DER.
pub struct Identity {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: CertificateDer<'static>,
}

impl Identity {
    /// Certificate and key in one PEM file, the way `self.pem` is usually made.
    pub fn combined_pem(&self) -> String {
        format!("{}{}", self.cert_pem, self.key_pem)
    }

    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).expect("parse generated key")
    }
}

/// A self-signed server certificate for `localhost`.
pub fn self_signed() -> Identity {
    self_signed_for("localhost")
}

/// A self-signed server certificate for `name`.
pub fn self_signed_for(name: &str) -> Identity {
    let key = KeyPair::generate().expect("generate key");
    let cert = CertificateParams::new(vec![name.to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("self-sign");
    Identity {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        cert_der: cert.der().clone(),
    }
}

/// A test certificate authority.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    pub fn new() -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "websockify test CA");
        let key = KeyPair::generate().expect("generate CA key");
        Ca {
            issuer: CertifiedIssuer::self_signed(params, key).expect("self-sign CA"),
        }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    pub fn der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// A certificate for `name` (its DNS name and commonName), signed by this CA, for
    /// `purpose` (a server, or a client presenting it).
    pub fn issue(&self, name: &str, purpose: ExtendedKeyUsagePurpose) -> Identity {
        let key = KeyPair::generate().expect("generate leaf key");
        let mut params = CertificateParams::new(vec![name.to_owned()]).expect("params");
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![purpose];
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        Identity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().clone(),
        }
    }
}

/// What a [`tls_echo_target`] saw of one handshake: the SNI it was asked for, or the error.
pub type Handshake = Result<Option<String>, String>;

/// A TLS echo target on 127.0.0.1:0 presenting `identity`; with `client_ca`, it requires a
/// client certificate from that CA. Reports each handshake to the test.
pub async fn tls_echo_target(
    identity: &Identity,
    client_ca: Option<&Ca>,
) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<Handshake>) {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("target versions");
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.der()).expect("client CA");
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .expect("client verifier");
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(vec![identity.cert_der.clone()], identity.key_der())
        .expect("target cert");
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind TLS target");
    let addr = listener.local_addr().expect("TLS target addr");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match acceptor.accept(tcp).await {
                    Ok(tls) => {
                        let sni = tls.get_ref().1.server_name().map(str::to_owned);
                        let _ = tx.send(Ok(sni));
                        let (mut r, mut w) = tokio::io::split(tls);
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                        let _ = w.shutdown().await;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                    }
                }
            });
        }
    });
    (addr, rx)
}

// ---------------------------------------------------------------------------------------------
// What this machine has

/// Whether this machine has an IPv6 loopback to test with.
pub fn ipv6_loopback() -> bool {
    std::net::TcpListener::bind((std::net::Ipv6Addr::LOCALHOST, 0)).is_ok()
}

/// `name` in /usr/bin, /usr/sbin, /bin, /sbin or on `PATH`, if installed as an executable
/// file (the system's first: a pyenv shim for python3 is a shell script that costs a
/// noticeable start-up).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    ["/usr/bin", "/usr/sbin", "/bin", "/sbin"]
        .into_iter()
        .map(PathBuf::from)
        .chain(std::env::split_paths(&path))
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A missing dependency: fails under WEBSOCKIFY_REQUIRE_ALL=1 (CI), else says it skipped.
pub fn skip_or_fail(why: &str) {
    if std::env::var("WEBSOCKIFY_REQUIRE_ALL").is_ok_and(|v| v == "1") {
        panic!("cannot run: {why} (WEBSOCKIFY_REQUIRE_ALL=1)");
    }
    eprintln!("skipped: {why}");
}
