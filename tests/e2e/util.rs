//! Helpers shared by the end-to-end tests: bounded waits, servers on port 0, raw frames.

#![allow(dead_code)]

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
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
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
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

/// Sends a raw upgrade request; returns the stream and the response head.
pub async fn raw_upgrade(addr: SocketAddr, extra_headers: &str) -> (TcpStream, String) {
    let mut stream = within("connect", TcpStream::connect(addr))
        .await
        .expect("connect");
    let request = format!(
        "GET /websockify HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra_headers}\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send request");
    let head = read_head(&mut stream).await;
    (stream, head)
}

/// Reads an HTTP response head byte by byte (so no frame bytes are consumed).
pub async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    within("response head", async {
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
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
pub async fn read_frame(stream: &mut TcpStream) -> (u8, Vec<u8>) {
    within("read a frame", async {
        let mut head = [0u8; 2];
        stream.read_exact(&mut head).await.expect("frame header");
        assert_eq!(head[1] & 0x80, 0, "server frames are never masked");
        let len = match head[1] & 0x7f {
            126 => u64::from(stream.read_u16().await.expect("len16")),
            127 => stream.read_u64().await.expect("len64"),
            n => u64::from(n),
        };
        let mut payload = vec![0u8; len as usize];
        stream.read_exact(&mut payload).await.expect("payload");
        (head[0], payload)
    })
    .await
}

/// Reads frames until a close frame; returns its code and reason, skipping data frames.
pub async fn read_close(stream: &mut TcpStream) -> (u16, String) {
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
        let (line_tx, stderr_lines) = mpsc::channel();
        if let Some(stderr) = child.stderr.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if line_tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
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
        let deadline = std::time::Instant::now() + STEP;
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.stderr_lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(line) => seen.push(line),
                Err(_) => break,
            }
        }
        panic!(
            "no stderr line containing {needle:?}; saw:\n{}",
            seen.join("\n")
        );
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

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: i32) {
        if self.status.is_none() {
            // SAFETY: kill(2) with a pid we spawned and have not reaped yet.
            unsafe { libc::kill(self.pid, signal) };
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.status.is_none() && self.exit.try_recv().is_err() {
            // SAFETY: as in `signal`; the waiting thread reaps the process.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
            let _ = self.exit.recv_timeout(STEP);
        }
    }
}

/// Path of the built `websockify` binary.
pub fn websockify_bin() -> &'static str {
    env!("CARGO_BIN_EXE_websockify")
}

/// Spawns the binary with `args`, stderr captured line by line.
pub fn spawn_websockify(args: &[&str]) -> ChildGuard {
    let child = Command::new(websockify_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .env_remove("RUST_LOG")
        .spawn()
        .expect("spawn websockify");
    ChildGuard::new(child)
}

/// Runs the binary to completion (bounded); returns (exit code, stdout, stderr).
pub fn run_websockify(args: &[&str]) -> (Option<i32>, String, String) {
    let child = Command::new(websockify_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("RUST_LOG")
        .spawn()
        .expect("spawn websockify");
    let pid = child.id() as i32;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let Ok(output) = rx.recv_timeout(STEP) else {
        // SAFETY: kill(2) on our own child; the thread above reaps it.
        unsafe { libc::kill(pid, libc::SIGKILL) };
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

/// The path of `name` on PATH (or in /usr/sbin, /usr/bin), if installed.
pub fn find_program(name: &str) -> Option<String> {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/usr/bin"])
        .map(|dir| format!("{dir}/{name}"))
        .find(|path| std::path::Path::new(path).exists())
}

/// A missing dependency: fails under WEBSOCKIFY_REQUIRE_ALL=1 (CI), else says it skipped.
pub fn skip_or_fail(why: &str) {
    if std::env::var("WEBSOCKIFY_REQUIRE_ALL").is_ok_and(|v| v == "1") {
        panic!("cannot run: {why} (WEBSOCKIFY_REQUIRE_ALL=1)");
    }
    eprintln!("skipped: {why}");
}
