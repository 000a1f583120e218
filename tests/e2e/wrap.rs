//! Wrap mode end to end (`websockify PORT -- PROGRAM ARGS`): real programs (a Python TCP
//! server, socat + telnetd, Xtigervnc) started under `rebind.so`, checked through the proxy and
//! through `/proc`: the public port is held only by websockify, the program listens only on
//! loopback, the wrap modes, exit statuses, and that stopping websockify leaves no process of
//! the program behind.
//!
//! Tests that need a program this machine lacks print why and pass, so the suite runs anywhere.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::util::*;

// ---------------------------------------------------------------------------------------------
// Programs to wrap

/// A TCP server that binds `0.0.0.0:PORT` (`4`) or `[::]:PORT` (`6`), greets each client and
/// echoes. `--ignore-term` ignores SIGTERM; `--delay=S` waits S seconds before binding (a slow
/// starter). Options apply in order, before the bind.
const SERVER_PY: &str = r#"
import signal, socket, sys, threading, time

port, family = int(sys.argv[1]), sys.argv[2]
for opt in sys.argv[3:]:
    if opt == "--ignore-term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    elif opt.startswith("--delay="):
        time.sleep(float(opt[len("--delay="):]))
if family == "6":
    server = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    address = ("::", port)
else:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    address = ("0.0.0.0", port)
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(address)
server.listen(8)

def serve(conn):
    with conn:
        conn.sendall(b"hello from python\n")
        while True:
            data = conn.recv(65536)
            if not data:
                break
            conn.sendall(data)

while True:
    conn, _ = server.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"#;

const GREETING: &[u8] = b"hello from python\n";

/// The Python server script written to a temporary directory (removed on drop).
struct PyServer {
    python: PathBuf,
    _dir: tempfile::TempDir,
    script: PathBuf,
}

impl PyServer {
    /// `None` (after saying so) when python3 is not installed.
    fn new() -> Option<PyServer> {
        let Some(python) = find_program("python3") else {
            skip_or_fail("python3 is not installed");
            return None;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let script = dir.path().join("server.py");
        std::fs::write(&script, SERVER_PY).expect("write server.py");
        Some(PyServer {
            python,
            _dir: dir,
            script,
        })
    }

    /// The command line after `--`: `python3 server.py PORT FAMILY OPTIONS...`.
    fn argv(&self, port: u16, family: &str, options: &[&str]) -> Vec<String> {
        let mut argv = vec![
            self.python.display().to_string(),
            self.script.display().to_string(),
            port.to_string(),
            family.to_owned(),
        ];
        argv.extend(options.iter().map(|o| (*o).to_owned()));
        argv
    }

    /// The same as one shell word list, for `sh -c`.
    fn shell(&self, port: u16, family: &str, options: &[&str]) -> String {
        self.argv(port, family, options)
            .iter()
            .map(|word| format!("'{}'", word.replace('\'', r"'\''")))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

// ---------------------------------------------------------------------------------------------
// Starting websockify in wrap mode

/// websockify in wrap mode; on drop, whatever is left of the wrapped program's tree is killed
/// before websockify itself (so a failing test leaves no program behind).
struct Wrapped {
    ws: ChildGuard,
    /// The public port, which websockify listens on and the program asks to bind.
    port: u16,
}

impl Drop for Wrapped {
    fn drop(&mut self) {
        // Frozen first, so that respawn mode cannot start the program again meanwhile.
        self.ws.signal(Signal::SIGSTOP);
        for pid in descendants(self.ws.pid) {
            // A live descendant of the websockify this test started.
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

impl Wrapped {
    /// Starts `websockify <listen(port)> <options> -- <program(port)>` on a free port and
    /// waits for its banner; starts again on another port if another process took the port
    /// meanwhile (wrap mode cannot listen on port 0: the program must be told the port).
    fn start(
        listen: impl Fn(u16) -> String,
        options: &[&str],
        program: impl Fn(u16) -> Vec<String>,
    ) -> Wrapped {
        on_free_port(|port| {
            let mut args = vec![listen(port)];
            args.extend(options.iter().map(|o| (*o).to_owned()));
            args.push("--".to_owned());
            args.extend(program(port));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let ws = spawn_websockify(&args);
            match ws.next_line(&["  - listening on", "cannot listen"]) {
                Some(line) if line.contains("listening on") => Ok(Wrapped { ws, port }),
                Some(line) if port_was_taken(&line) => Err(line),
                other => panic!("websockify {args:?} did not start: {other:?}"),
            }
        })
    }

    /// Waits for a stderr line containing `needle` (bounded), without stalling the runtime.
    fn line(&self, needle: &str) -> String {
        tokio::task::block_in_place(|| self.ws.wait_for_line(needle))
    }

    /// Waits for lines containing each of `needles`, in any order (bounded).
    fn lines(&self, needles: &[&str]) {
        let mut missing: Vec<&str> = needles.to_vec();
        while !missing.is_empty() {
            let line = tokio::task::block_in_place(|| self.ws.next_line(&missing))
                .unwrap_or_else(|| panic!("no stderr line containing {missing:?}"));
            missing.retain(|needle| !line.contains(needle));
        }
    }

    /// Waits for `wrapped program listens on loopback port N`; returns N.
    fn moved_port(&self) -> u16 {
        let line = self.line("wrapped program listens on loopback port");
        number_after(&line, "loopback port ").unwrap_or_else(|| panic!("no port in {line:?}"))
    }

    /// Waits for `Starting '...' pid=N`; returns N.
    fn started_pid(&self) -> i32 {
        let line = self.line("Starting '");
        number_after(&line, "pid=").unwrap_or_else(|| panic!("no pid in {line:?}"))
    }

    /// Waits (bounded) for websockify to exit, without stalling the runtime.
    fn exit(&mut self) -> ExitStatus {
        tokio::task::block_in_place(|| self.ws.wait_exit())
    }

    fn public_v4(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

/// Parses the decimal number right after `marker` in `line`.
fn number_after<T: std::str::FromStr>(line: &str, marker: &str) -> Option<T> {
    let rest = &line[line.find(marker)? + marker.len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Runs `websockify 127.0.0.1:PORT -- program` to completion (again on another port if the
/// port was taken meanwhile); returns its exit code and stderr.
fn run_wrapped(program: &[&str]) -> (Option<i32>, String) {
    on_free_port(|port| {
        let listen = format!("127.0.0.1:{port}");
        let mut args = vec![listen.as_str(), "--"];
        args.extend_from_slice(program);
        let (code, _stdout, stderr) = run_websockify(&args);
        if port_was_taken(&stderr) {
            return Err(stderr);
        }
        Ok((code, stderr))
    })
}

// ---------------------------------------------------------------------------------------------
// /proc: processes and listening sockets

/// A listening TCP socket from /proc/net/tcp or tcp6.
#[derive(Debug, Clone, Copy)]
struct Listening {
    addr: SocketAddr,
    inode: u64,
}

/// Every listening TCP socket in this network namespace.
fn listening_sockets() -> Vec<Listening> {
    let mut out = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(&"0A"), Some(inode)) =
                (fields.get(1), fields.get(3), fields.get(9))
            else {
                continue;
            };
            if let (Some(addr), Ok(inode)) = (parse_proc_addr(local), inode.parse()) {
                out.push(Listening { addr, inode });
            }
        }
    }
    out
}

/// Parses `0100007F:1F90` or a 32-digit IPv6 form: 32-bit words in host byte order.
fn parse_proc_addr(text: &str) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let mut bytes = Vec::with_capacity(16);
    for i in (0..ip.len()).step_by(8) {
        let word = u32::from_str_radix(ip.get(i..i + 8)?, 16).ok()?;
        bytes.extend_from_slice(&word.to_ne_bytes());
    }
    let ip = match bytes.len() {
        4 => IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?),
        16 => IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Socket inodes among the open descriptors of `pid`.
fn socket_inodes(pid: i32) -> HashSet<u64> {
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return HashSet::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let target = std::fs::read_link(entry.path()).ok()?;
            let target = target.to_str()?;
            target
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}

/// Children of `parent` that exited and were not reaped.
fn zombie_children(parent: i32) -> Vec<i32> {
    all_processes()
        .into_iter()
        .filter(|(_, stat)| stat.ppid == parent && stat.state == 'Z')
        .map(|(pid, _)| pid)
        .collect()
}

fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// The listening sockets `pid` holds.
fn listening_of(pid: i32, all: &[Listening]) -> Vec<Listening> {
    let inodes = socket_inodes(pid);
    all.iter()
        .copied()
        .filter(|l| inodes.contains(&l.inode))
        .collect()
}

/// Asserts that `port` is listened on, only by websockify (`ws`), and by none of its children.
fn assert_public_port_held_only_by_websockify(ws: i32, port: u16) {
    let all = listening_sockets();
    let public: Vec<Listening> = all
        .iter()
        .copied()
        .filter(|l| l.addr.port() == port)
        .collect();
    assert!(!public.is_empty(), "nothing listens on public port {port}");
    let mine = socket_inodes(ws);
    for socket in &public {
        assert!(
            mine.contains(&socket.inode),
            "{} (public port) is held by another process than websockify",
            socket.addr
        );
    }
    for pid in descendants(ws) {
        let held = listening_of(pid, &public);
        assert!(
            held.is_empty(),
            "wrapped process {pid} holds the public port: {held:?}"
        );
    }
}

/// Asserts that the listening sockets of `pids` on `ports` are all on loopback and that one
/// of them listens on `moved`; returns the addresses they listen on.
fn assert_listens_only_on_loopback(pids: &[i32], ports: &[u16], moved: u16) -> Vec<SocketAddr> {
    let all = listening_sockets();
    let mut addrs = Vec::new();
    for &pid in pids {
        for socket in listening_of(pid, &all) {
            if ports.contains(&socket.addr.port()) {
                assert!(
                    is_loopback(socket.addr.ip()),
                    "wrapped process {pid} listens on non-loopback {}",
                    socket.addr
                );
                addrs.push(socket.addr);
            }
        }
    }
    assert!(
        addrs.iter().any(|a| a.port() == moved),
        "no wrapped process listens on moved port {moved}; found {addrs:?}"
    );
    addrs
}

/// This machine's non-loopback addresses: IPv4 from /proc/net/fib_trie, IPv6 (global and
/// unique-local; link-local needs a scope) from /proc/net/if_inet6.
fn non_loopback_addrs() -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::new();
    let trie = std::fs::read_to_string("/proc/net/fib_trie").unwrap_or_default();
    let mut previous: Option<IpAddr> = None;
    for line in trie.lines() {
        let line = line.trim();
        if let Some(addr) = line.strip_prefix("|-- ") {
            previous = addr.parse().ok();
        } else if line.starts_with("/32 host LOCAL")
            && let Some(ip) = previous
            && !ip.is_loopback()
            && !out.contains(&ip)
        {
            out.push(ip);
        }
    }
    let inet6 = std::fs::read_to_string("/proc/net/if_inet6").unwrap_or_default();
    for line in inet6.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(hex), Some(&"00")) = (fields.first(), fields.get(3)) else {
            continue;
        };
        if let Ok(value) = u128::from_str_radix(hex, 16) {
            let ip = IpAddr::from(Ipv6Addr::from(value));
            if !ip.is_loopback() && !out.contains(&ip) {
                out.push(ip);
            }
        }
    }
    out
}

/// Asserts that `port` refuses connections on every non-loopback address of this machine.
async fn assert_unreachable_from_outside(port: u16) {
    for ip in non_loopback_addrs() {
        let addr = SocketAddr::new(ip, port);
        match within("connect from outside", TcpStream::connect(addr)).await {
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => {}
            other => panic!("moved port reachable on {addr}: {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// WebSocket side

/// Reads data frames until `needle` has arrived; returns everything read. Fails on a close.
async fn read_until(stream: &mut TcpStream, needle: &[u8]) -> Vec<u8> {
    let mut data = Vec::new();
    within("data through the proxy", async {
        while !contains(&data, needle) {
            let (b0, payload) = read_frame(stream).await;
            match b0 & 0x0f {
                0x8 => panic!(
                    "closed before {:?} arrived: {payload:?}; got {:?}",
                    String::from_utf8_lossy(needle),
                    String::from_utf8_lossy(&data)
                ),
                0x0..=0x2 => data.extend_from_slice(&payload),
                _ => {}
            }
        }
    })
    .await;
    data
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Sends `payload` as one binary frame.
async fn ws_send(stream: &mut TcpStream, payload: &[u8]) {
    within(
        "send a frame",
        stream.write_all(&client_frame(0x82, payload)),
    )
    .await
    .expect("send a frame");
}

/// Closes the session from the client side and waits for the server to finish it.
async fn ws_close(mut stream: TcpStream) {
    ws_send_close(&mut stream).await;
    let mut rest = Vec::new();
    let _ = within("server ends the session", stream.read_to_end(&mut rest)).await;
}

async fn ws_send_close(stream: &mut TcpStream) {
    within(
        "send close",
        stream.write_all(&client_frame(0x88, &1000u16.to_be_bytes())),
    )
    .await
    .expect("send close");
}

/// Greets through a session and checks the echo: the program is reached through the proxy.
async fn assert_python_session(addr: SocketAddr) {
    let mut stream = session(addr).await;
    read_until(&mut stream, GREETING).await;
    ws_send(&mut stream, b"through the proxy").await;
    read_until(&mut stream, b"through the proxy").await;
    ws_close(stream).await;
}

// ---------------------------------------------------------------------------------------------
// 1. A dynamic server binding 0.0.0.0:PORT or [::]:PORT

async fn moves_a_server_to_loopback(family: &str) {
    let Some(py) = PyServer::new() else { return };
    let server = Wrapped::start(|p| p.to_string(), &[], |p| py.argv(p, family, &[]));
    let program = server.started_pid();
    let moved = server.moved_port();

    assert_public_port_held_only_by_websockify(server.ws.pid, server.port);
    let tree = descendants(server.ws.pid);
    assert!(tree.contains(&program), "pid {program} not in {tree:?}");
    let addrs = assert_listens_only_on_loopback(&tree, &[server.port, moved], moved);
    let expected = if family == "6" {
        SocketAddr::from((Ipv6Addr::LOCALHOST, moved))
    } else {
        SocketAddr::from(([127, 0, 0, 1], moved))
    };
    assert_eq!(addrs, vec![expected], "where the program listens");
    let all = listening_sockets();
    for &pid in &tree {
        let exposed: Vec<Listening> = listening_of(pid, &all)
            .into_iter()
            .filter(|l| !is_loopback(l.addr.ip()))
            .collect();
        assert!(exposed.is_empty(), "process {pid} listens on {exposed:?}");
    }
    assert_unreachable_from_outside(moved).await;

    // Data flows, over IPv4 and (dual-stack listener) IPv6.
    assert_python_session(server.public_v4()).await;
    if ipv6_loopback() {
        assert_python_session(SocketAddr::from((Ipv6Addr::LOCALHOST, server.port))).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moves_a_server_binding_ipv4_any_to_loopback_and_proxies_to_it() {
    moves_a_server_to_loopback("4").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moves_a_server_binding_ipv6_any_to_loopback_and_proxies_to_it() {
    if !ipv6_loopback() {
        skip_or_fail("no IPv6 loopback");
        return;
    }
    moves_a_server_to_loopback("6").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loopback_listen_address_wraps_too() {
    let Some(py) = PyServer::new() else { return };
    let server = Wrapped::start(|p| format!("127.0.0.1:{p}"), &[], |p| py.argv(p, "4", &[]));
    let moved = server.moved_port();
    assert_public_port_held_only_by_websockify(server.ws.pid, server.port);
    let tree = descendants(server.ws.pid);
    assert_listens_only_on_loopback(&tree, &[server.port, moved], moved);
    assert_python_session(server.public_v4()).await;
}

// ---------------------------------------------------------------------------------------------
// 2. telnet (socat + inetutils telnetd) in respawn mode

const IAC: u8 = 255;
const DONT: u8 = 254;
const DO: u8 = 253;
const WONT: u8 = 252;
const WILL: u8 = 251;
const SB: u8 = 250;
const SE: u8 = 240;

/// A minimal telnet client: refuses every option (DO -> WONT, WILL -> DONT), skips
/// subnegotiations, and keeps the text.
#[derive(Default)]
struct Telnet {
    pending: Vec<u8>,
    text: Vec<u8>,
    commands: usize,
}

impl Telnet {
    /// Takes bytes from the server; returns the answer to send.
    fn feed(&mut self, data: &[u8]) -> Vec<u8> {
        self.pending.extend_from_slice(data);
        let mut reply = Vec::new();
        let mut i = 0;
        while i < self.pending.len() {
            if self.pending[i] != IAC {
                self.text.push(self.pending[i]);
                i += 1;
                continue;
            }
            let Some(&command) = self.pending.get(i + 1) else {
                break;
            };
            match command {
                DO | DONT | WILL | WONT => {
                    let Some(&option) = self.pending.get(i + 2) else {
                        break;
                    };
                    match command {
                        DO => reply.extend_from_slice(&[IAC, WONT, option]),
                        WILL => reply.extend_from_slice(&[IAC, DONT, option]),
                        _ => {}
                    }
                    self.commands += 1;
                    i += 3;
                }
                SB => {
                    let Some(end) = self.pending[i..].windows(2).position(|w| w == [IAC, SE])
                    else {
                        break;
                    };
                    self.commands += 1;
                    i += end + 2;
                }
                IAC => {
                    self.text.push(IAC);
                    i += 2;
                }
                _ => {
                    self.commands += 1;
                    i += 2;
                }
            }
        }
        self.pending.drain(..i);
        reply
    }
}

/// Runs the telnet dialogue through a WebSocket session until the login prompt.
async fn telnet_login_prompt(addr: SocketAddr) {
    let mut stream = session(addr).await;
    let mut telnet = Telnet::default();
    within("telnet negotiation and login prompt", async {
        while !contains(&telnet.text, b"login:") {
            let (b0, payload) = read_frame(&mut stream).await;
            assert_ne!(
                b0 & 0x0f,
                0x8,
                "closed before the login prompt: {payload:?}; text so far {:?}",
                String::from_utf8_lossy(&telnet.text)
            );
            let reply = telnet.feed(&payload);
            if !reply.is_empty() {
                ws_send(&mut stream, &reply).await;
            }
        }
    })
    .await;
    assert!(telnet.commands > 0, "no telnet negotiation (IAC) seen");
    ws_close(stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn respawns_a_one_shot_telnet_server_for_each_client() {
    let (Some(socat), Some(telnetd)) = (find_program("socat"), find_program("telnetd")) else {
        skip_or_fail("socat or telnetd is not installed");
        return;
    };
    if !nix::unistd::geteuid().is_root() {
        // login(1) under telnetd prompts only when started as root.
        skip_or_fail("telnetd needs root to reach the login prompt");
        return;
    }
    let mut server = Wrapped::start(
        |p| p.to_string(),
        &["--wrap-mode=respawn"],
        |p| {
            vec![
                socat.display().to_string(),
                format!("TCP-LISTEN:{p},reuseaddr"),
                format!("EXEC:{},nofork", telnetd.display()),
            ]
        },
    );
    let first = server.started_pid();
    server.moved_port();
    telnet_login_prompt(server.public_v4()).await;

    // socat served its one client and exited; respawn mode starts it again.
    server.line("wrapped program exited");
    let second = server.started_pid();
    assert_ne!(first, second, "a new process");
    server.moved_port();
    telnet_login_prompt(server.public_v4()).await;

    // Stopping does not respawn: nothing of the program is left.
    server.line("wrapped program exited");
    let third = server.started_pid();
    server.moved_port();
    let tree = descendants(server.ws.pid);
    assert!(tree.contains(&third), "pid {third} not in {tree:?}");
    let _cleanup = KillOnDrop::new(&tree);
    server.ws.signal(Signal::SIGTERM);
    let status = server.exit();
    assert_eq!(
        status.code(),
        Some(0),
        "websockify after SIGTERM: {status:?}"
    );
    let left: Vec<i32> = tree.iter().copied().filter(|&pid| alive(pid)).collect();
    assert!(left.is_empty(), "left running: {left:?} of {tree:?}");
}

// ---------------------------------------------------------------------------------------------
// 3. VNC (Xtigervnc) in ignore mode

/// An X display number nobody uses (no lock file, no socket).
fn free_display() -> Option<u32> {
    let unix = std::fs::read_to_string("/proc/net/unix").unwrap_or_default();
    let start = std::process::id() % 60;
    (0..60).map(|i| 20 + (start + i) % 60).find(|n| {
        !Path::new(&format!("/tmp/.X{n}-lock")).exists()
            && !Path::new(&format!("/tmp/.X11-unix/X{n}")).exists()
            && !unix.contains(&format!("/tmp/.X11-unix/X{n}\n"))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_xtigervnc_in_ignore_mode_and_stops_it_on_sigterm() {
    let Some(xvnc) = find_program("Xtigervnc") else {
        skip_or_fail("Xtigervnc is not installed");
        return;
    };
    let display = free_display().expect("a free X display number");
    let mut server = Wrapped::start(
        |p| p.to_string(),
        &["--wrap-mode=ignore"],
        |p| {
            vec![
                xvnc.display().to_string(),
                format!(":{display}"),
                "-rfbport".into(),
                p.to_string(),
                "-SecurityTypes".into(),
                "None".into(),
                "-localhost=0".into(),
            ]
        },
    );
    let xpid = server.started_pid();
    let moved = server.moved_port();
    let _cleanup = KillOnDrop::new(&[xpid]);

    // The RFB banner arrives through the proxy.
    let mut stream = session(server.public_v4()).await;
    let banner = read_until(&mut stream, b"\n").await;
    assert_eq!(banner, b"RFB 003.008\n");
    ws_close(stream).await;

    // Xtigervnc asked for every address (-localhost=0, IPv4 and IPv6); it got loopback only.
    assert_public_port_held_only_by_websockify(server.ws.pid, server.port);
    let addrs = assert_listens_only_on_loopback(&[xpid], &[server.port, moved], moved);
    if ipv6_loopback() {
        assert!(
            addrs.contains(&SocketAddr::from((Ipv6Addr::LOCALHOST, moved))),
            "the IPv6 listener moved to [::1]: {addrs:?}"
        );
    }
    assert_unreachable_from_outside(moved).await;
    // On the public port, only websockify answers: a raw TCP client gets no RFB banner.
    let outside = non_loopback_addrs()
        .into_iter()
        .map(|ip| SocketAddr::new(ip, server.port))
        .chain([server.public_v4()]);
    for addr in outside {
        let mut raw = within("connect raw", TcpStream::connect(addr))
            .await
            .expect("connect to the public port");
        let mut buf = [0u8; 12];
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(300), raw.read(&mut buf)).await
        {
            assert!(!buf[..n].starts_with(b"RFB"), "raw VNC on {addr}");
        }
    }

    server.ws.signal(Signal::SIGTERM);
    let status = server.exit();
    assert_eq!(
        status.code(),
        Some(0),
        "websockify after SIGTERM: {status:?}"
    );
    assert!(!alive(xpid), "Xtigervnc {xpid} outlived websockify");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignore_mode_keeps_proxying_to_a_program_that_daemonizes() {
    let Some(py) = PyServer::new() else { return };
    // Like vncserver: start the server in the background and exit at once.
    let mut server = Wrapped::start(
        |p| format!("127.0.0.1:{p}"),
        &["--wrap-mode=ignore"],
        |p| {
            vec![
                "sh".into(),
                "-c".into(),
                format!("{} & exit 0", py.shell(p, "4", &[])),
            ]
        },
    );
    server.lines(&[
        "wrapped program exited (status 0)",
        "wrapped program listens on loopback port",
    ]);
    let tree = descendants(server.ws.pid);
    assert_eq!(tree.len(), 1, "the daemon, adopted by websockify: {tree:?}");
    let _cleanup = KillOnDrop::new(&tree);
    assert_eq!(
        zombie_children(server.ws.pid),
        Vec::<i32>::new(),
        "unreaped"
    );
    assert_python_session(server.public_v4()).await;

    server.ws.signal(Signal::SIGTERM);
    let status = server.exit();
    assert_eq!(
        status.code(),
        Some(0),
        "websockify after SIGTERM: {status:?}"
    );
    assert!(!alive(tree[0]), "daemon {} outlived websockify", tree[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn respawn_mode_throttles_a_failing_program_to_three_starts_per_ten_seconds() {
    let mut server = Wrapped::start(
        |p| format!("127.0.0.1:{p}"),
        &["--wrap-mode=respawn"],
        |_| vec!["sh".into(), "-c".into(), "exit 1".into()],
    );
    for _ in 0..3 {
        server.started_pid();
        server.line("wrapped program exited (status 1)");
    }
    let line =
        tokio::task::block_in_place(|| server.ws.next_line(&["Starting '", "respawning too fast"]));
    assert!(
        line.as_deref()
            .is_some_and(|l| l.contains("respawning too fast")),
        "a fourth start within 10 s: {line:?}"
    );
    // A stop does not wait for the throttle.
    server.ws.signal(Signal::SIGTERM);
    let status = server.exit();
    assert_eq!(
        status.code(),
        Some(0),
        "websockify after SIGTERM: {status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_does_not_wait_for_a_session_still_waiting_for_the_program() {
    // `sleep` never listens; ignore mode keeps websockify up (the listen deadline is 30 s).
    // No drain: the waiting session is closed (1001) as soon as the listener closes.
    let mut server = Wrapped::start(
        |p| format!("127.0.0.1:{p}"),
        &["--wrap-mode=ignore", "--drain-timeout", "0"],
        |_| vec!["sleep".into(), "60".into()],
    );
    server.started_pid();
    let mut stream = session(server.public_v4()).await;
    server.line("wrapped program not listening yet: waiting for it");

    let sent = std::time::Instant::now();
    server.ws.signal(Signal::SIGTERM);
    let bound = Duration::from_secs(3);
    let (code, reason) = tokio::time::timeout(bound, read_close(&mut stream))
        .await
        .unwrap_or_else(|_| panic!("no close within {bound:?} of SIGTERM"));
    assert_eq!(code, 1001, "close on shutdown: {reason}");
    drop(stream);
    let status = server.exit();
    assert_eq!(
        status.code(),
        Some(0),
        "websockify after SIGTERM: {status:?}"
    );
    assert!(sent.elapsed() < bound, "exit took {:?}", sent.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_program_starts_with_default_signal_handling() {
    // websockify handles SIGINT/SIGTERM/SIGCHLD and ignores SIGPIPE itself; none of that may
    // leak into the program (upstream resets SIGPIPE by hand for the same reason).
    let mut server = Wrapped::start(
        |p| format!("127.0.0.1:{p}"),
        &["--wrap-mode=ignore"],
        |_| vec!["sleep".into(), "60".into()],
    );
    let pid = server.started_pid();
    let _cleanup = KillOnDrop::new(&[pid]);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let mask = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or_else(|| panic!("no {name} in {status}"))
    };
    let bit = |signal: Signal| 1u64 << (signal as i32 - 1);
    let watched =
        bit(Signal::SIGPIPE) | bit(Signal::SIGINT) | bit(Signal::SIGTERM) | bit(Signal::SIGCHLD);
    assert_eq!(mask("SigIgn:") & watched, 0, "ignored signals:\n{status}");
    assert_eq!(mask("SigBlk:"), 0, "blocked signals:\n{status}");
    server.ws.signal(Signal::SIGTERM);
    assert_eq!(server.exit().code(), Some(0));
    assert!(!alive(pid));
}

// ---------------------------------------------------------------------------------------------
// 4. Exit mode passes on the program's status

#[test]
fn exit_mode_exits_with_the_program_status() {
    let (code, stderr) = run_wrapped(&["sh", "-c", "exit 7"]);
    assert_eq!(code, Some(7), "{stderr}");
    assert!(
        stderr.contains("wrapped program exited (status 7)"),
        "{stderr}"
    );

    let (code, stderr) = run_wrapped(&["true"]);
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn exit_mode_reports_a_program_killed_by_a_signal_as_128_plus_n() {
    let (code, stderr) = run_wrapped(&["sh", "-c", "kill -TERM $$"]);
    assert_eq!(code, Some(128 + Signal::SIGTERM as i32), "{stderr}");
}

#[test]
fn exit_mode_stops_what_the_program_left_running() {
    let (code, stderr) = run_wrapped(&["sh", "-c", "sleep 300 & echo \"daemon=$!\" >&2; exit 3"]);
    assert_eq!(code, Some(3), "{stderr}");
    let daemon: i32 = stderr
        .lines()
        .find_map(|l| number_after(l.strip_prefix("daemon")?, "="))
        .unwrap_or_else(|| panic!("{stderr}"));
    let _cleanup = KillOnDrop::new(&[daemon]);
    assert!(!alive(daemon), "sleep {daemon} outlived websockify");
}

#[test]
fn the_program_gets_rebind_in_its_environment_from_a_private_directory() {
    let script = "echo \"preload=$LD_PRELOAD old=$REBIND_OLD_PORT new=$REBIND_NEW_PORT\" >&2; \
                  stat -c 'mode=%a' \"$(dirname \"${LD_PRELOAD%%:*}\")\" >&2";
    let (code, stderr) = run_wrapped(&["sh", "-c", script]);
    assert_eq!(code, Some(0), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("preload="))
        .unwrap_or_else(|| panic!("{stderr}"));
    let listen_port: u16 = number_after(&stderr, "  - Listen on 127.0.0.1:").expect("listen port");
    assert!(line.contains(&format!(" old={listen_port} ")), "{line}");
    let new: u16 = number_after(line, " new=").unwrap_or_else(|| panic!("{line}"));
    assert_ne!(new, listen_port, "{line}");
    let library = line
        .strip_prefix("preload=")
        .and_then(|l| l.split(' ').next())
        .expect("LD_PRELOAD value");
    assert!(library.ends_with("rebind.so"), "{line}");
    assert!(stderr.contains("mode=700"), "private directory: {stderr}");
    let dir = Path::new(library).parent().expect("directory");
    assert!(!dir.exists(), "{} is left behind", dir.display());
}

#[test]
fn an_existing_ld_preload_is_kept_after_rebind() {
    // Any library works; libc is always there (and is already loaded, so this is harmless).
    let existing = "libc.so.6";
    let (mut ws, line) = on_free_port(|port| {
        let listen = format!("127.0.0.1:{port}");
        let child = std::process::Command::new(websockify_bin())
            .args([
                listen.as_str(),
                "--",
                "sh",
                "-c",
                "echo \"preload=$LD_PRELOAD\" >&2",
            ])
            .env("LD_PRELOAD", existing)
            .env_remove("RUST_LOG")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn websockify");
        let ws = ChildGuard::new(child);
        // The program's own line, not the banner that quotes its command.
        loop {
            match ws.next_line(&["preload=", "cannot listen"]) {
                Some(line) if line.starts_with("preload=") => return Ok((ws, line)),
                Some(line) if port_was_taken(&line) => return Err(line),
                Some(_) => {}
                None => panic!("websockify did not start the program"),
            }
        }
    });
    assert!(line.ends_with(&format!("rebind.so:{existing}")), "{line}");
    assert_eq!(ws.wait_exit().code(), Some(0));
}

#[test]
fn a_program_that_cannot_be_started_is_an_error() {
    let (code, stderr) = run_wrapped(&["/nonexistent/program"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("/nonexistent/program"), "{stderr}");
}

// ---------------------------------------------------------------------------------------------
// 5. Stopping websockify stops the program's whole tree

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_whole_program_tree_including_escaped_daemons() {
    let Some(py) = PyServer::new() else { return };
    // A background child in the program's process group, one that left it (setsid), and the
    // server itself.
    let mut server = Wrapped::start(
        |p| format!("127.0.0.1:{p}"),
        &[],
        |p| {
            vec![
                "sh".into(),
                "-c".into(),
                format!(
                    "sleep 300 & setsid sleep 301 & exec {}",
                    py.shell(p, "4", &[])
                ),
            ]
        },
    );
    let program = server.started_pid();
    server.moved_port();
    assert_python_session(server.public_v4()).await;
    let tree = descendants(server.ws.pid);
    assert!(tree.contains(&program), "pid {program} not in {tree:?}");
    assert!(tree.len() >= 3, "server and two sleeps: {tree:?}");
    let _cleanup = KillOnDrop::new(&tree);

    server.ws.signal(Signal::SIGTERM);
    let status = server.exit();
    assert_eq!(
        status.code(),
        Some(0),
        "websockify after SIGTERM: {status:?}"
    );
    let left: Vec<i32> = tree.iter().copied().filter(|&pid| alive(pid)).collect();
    assert!(left.is_empty(), "left running: {left:?} of {tree:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_still_stops_the_program() {
    let Some(py) = PyServer::new() else { return };
    let mut server = Wrapped::start(|p| format!("127.0.0.1:{p}"), &[], |p| py.argv(p, "4", &[]));
    let program = server.started_pid();
    server.moved_port();
    let _cleanup = KillOnDrop::new(&[program]);
    // An open session makes the first signal wait (drain) instead of exiting at once.
    let mut stream = session(server.public_v4()).await;
    read_until(&mut stream, GREETING).await;

    server.ws.signal(Signal::SIGINT);
    server.line("SIGINT received");
    server.ws.signal(Signal::SIGINT);
    let status = server.exit();
    assert_ne!(status.code(), Some(0), "the immediate exit: {status:?}");
    assert!(!alive(program), "program {program} outlived websockify");
    drop(stream);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_kills_a_program_that_ignores_sigterm_after_the_grace_period() {
    let Some(py) = PyServer::new() else { return };
    let mut server = Wrapped::start(
        |p| format!("127.0.0.1:{p}"),
        &[],
        |p| py.argv(p, "4", &["--ignore-term"]),
    );
    let program = server.started_pid();
    // It ignores SIGTERM from here on: the option applies before the bind.
    server.moved_port();
    let _cleanup = KillOnDrop::new(&[program]);

    server.ws.signal(Signal::SIGINT);
    server.line("ignored SIGTERM: killing it");
    let status = server.exit();
    assert_eq!(
        status.code(),
        Some(0),
        "websockify after SIGINT: {status:?}"
    );
    assert!(!alive(program), "program {program} outlived websockify");
}

// ---------------------------------------------------------------------------------------------
// 6. A program that never listens: websockify gives it 30 s (LISTEN_DEADLINE in wrap.rs) before
// failing, too long for this suite, so that path is not tested here.

// ---------------------------------------------------------------------------------------------
// 7. A connection that arrives while the program starts waits for it

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_arriving_before_the_program_listens_waits_for_it() {
    let Some(py) = PyServer::new() else { return };
    let server = Wrapped::start(
        |p| format!("127.0.0.1:{p}"),
        &[],
        |p| py.argv(p, "4", &["--delay=1"]),
    );
    // Straight after the banner: the program sleeps a second before it binds.
    let mut stream = session(server.public_v4()).await;
    read_until(&mut stream, GREETING).await;
    ws_send(&mut stream, b"late but there").await;
    read_until(&mut stream, b"late but there").await;
    ws_close(stream).await;
    // The session really did arrive early.
    server.line("wrapped program not listening yet: waiting for it");
}

// ---------------------------------------------------------------------------------------------
// 8. wswrap PORT PROGRAM ARGS (the old noVNC wrapper's command line)

/// `wswrap [OPTIONS] 127.0.0.1:PORT <program(PORT)>` on a free port, once its banner is out.
fn start_wswrap(options: &[&str], program: impl Fn(u16) -> Vec<String>) -> Wrapped {
    on_free_port(|port| {
        let mut args: Vec<String> = options.iter().map(|o| (*o).to_owned()).collect();
        args.push(format!("127.0.0.1:{port}"));
        args.extend(program(port));
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_wswrap"))
            .args(&args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .env_remove("RUST_LOG")
            .spawn()
            .expect("spawn wswrap");
        let ws = ChildGuard::new(child);
        match ws.next_line(&["  - listening on", "cannot listen"]) {
            Some(line) if line.contains("listening on") => Ok(Wrapped { ws, port }),
            Some(line) if port_was_taken(&line) => Err(line),
            other => panic!("wswrap {args:?} did not start: {other:?}"),
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wswrap_serves_a_program_that_daemonizes_until_its_last_process_exits() {
    let Some(py) = PyServer::new() else { return };
    // The seed's `wswrap 5901 vncserver :1`: vncserver starts the real server and exits.
    let mut server = start_wswrap(&[], |p| {
        vec![
            "sh".into(),
            "-c".into(),
            format!("{} & exit 3", py.shell(p, "4", &[])),
        ]
    });
    server.lines(&[
        "wrapped program exited (status 3)",
        "wrapped program listens on loopback port",
    ]);
    let tree = descendants(server.ws.pid);
    assert_eq!(tree.len(), 1, "the server, adopted by wswrap: {tree:?}");
    let _cleanup = KillOnDrop::new(&tree);
    assert_public_port_held_only_by_websockify(server.ws.pid, server.port);
    assert_python_session(server.public_v4()).await;

    // When the last process of the program is gone, wswrap exits with the program's status.
    // The server this test started (its pid was just read from /proc).
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(tree[0]), Signal::SIGTERM)
        .expect("SIGTERM to the server");
    server.line("every process it started have exited");
    let status = server.exit();
    assert_eq!(status.code(), Some(3), "wswrap: {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wswrap_passes_websockify_options_and_a_foreground_program_ends_it() {
    let Some(py) = PyServer::new() else { return };
    let mut server = start_wswrap(&["--wrap-mode=exit", "-v"], |port| py.argv(port, "4", &[]));
    let program = server.started_pid();
    server.moved_port();
    assert_python_session(server.public_v4()).await;
    // The program wswrap started for this test.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(program), Signal::SIGKILL)
        .expect("SIGKILL to the program");
    let status = server.exit();
    // --wrap-mode=exit: the program's end (killed by a signal: 128 + 9) ends wswrap.
    assert_eq!(status.code(), Some(137), "wswrap: {status:?}");
}

// ---------------------------------------------------------------------------------------------
// Helpers' own checks

#[test]
fn parses_proc_net_addresses() {
    assert_eq!(
        parse_proc_addr("0100007F:1F90"),
        Some(SocketAddr::from(([127, 0, 0, 1], 8080)))
    );
    assert_eq!(
        parse_proc_addr("00000000000000000000000001000000:170D"),
        Some(SocketAddr::from((Ipv6Addr::LOCALHOST, 5901)))
    );
    assert_eq!(
        parse_proc_addr("0000000000000000FFFF00000100007F:0050"),
        Some("[::ffff:127.0.0.1]:80".parse().unwrap())
    );
    assert!(is_loopback("::ffff:127.0.0.1".parse().unwrap()));
}

#[test]
fn telnet_client_refuses_options_and_keeps_text() {
    let mut telnet = Telnet::default();
    let reply = telnet.feed(&[IAC, DO, 24, IAC, WILL, 1, b'h', IAC]);
    assert_eq!(reply, [IAC, WONT, 24, IAC, DONT, 1]);
    let reply = telnet.feed(&[SB, 24, 1, IAC, SE, b'i', IAC, IAC]);
    assert!(reply.is_empty());
    assert_eq!(telnet.text, [b'h', b'i', IAC]);
}

// ---------------------------------------------------------------------------------------------
// PR_SET_PDEATHSIG: no wrapped program outlives websockify, even after kill -9

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_websockify_takes_the_wrapped_program_down() {
    let Some(sleep) = find_program("sleep") else {
        return skip_or_fail("no sleep program");
    };
    // --wrap-mode=ignore and a program that never listens: websockify only waits for it.
    let server = Wrapped::start(
        |p| format!("127.0.0.1:{p}"),
        &["--wrap-mode=ignore"],
        |_| vec![sleep.display().to_string(), "1000".to_owned()],
    );
    let program = server.started_pid();
    let _cleanup = KillOnDrop::new(&[program]);
    assert!(
        alive(program),
        "the wrapped program {program} is not running"
    );
    server.ws.signal(Signal::SIGKILL);
    // Bounded by one test step: the program must not outlive websockify's kill -9.
    gone(program).await;
}
