//! Operations end to end (issue 5): `--record` read back by node as noVNC's playback does,
//! `--traffic`, `-D` with `--pid-file`, `--log-file` and `--syslog` (checked through /proc and
//! real receiver sockets), `--inetd` in "wait" and "nowait" modes, `--unix-listen`, systemd
//! socket activation with `sd_notify`, `--libserver`, the Flash policy answer, and noVNC's
//! `utils/novnc_proxy` command line (and the real script when the `novnc` package is installed).
//!
//! No test sleeps to synchronise: processes that are not our children are awaited through a
//! pidfd, files are read after the log line or exit that guarantees their contents.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::os::unix::fs::{
    FileTypeExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _,
};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket, UnixDatagram, UnixStream};

use crate::util::*;

// ---------------------------------------------------------------------------------------------
// Processes

/// Spawns the binary and waits for its banner line (a unix socket has no address to parse).
fn start(args: &[&str]) -> (ChildGuard, String) {
    let child = spawn_websockify(args);
    let line = block(|| child.wait_for_line("listening on"));
    (child, line)
}

/// Sends `signal` to a process that is not our child (or, with a negative pid, to a group).
fn kill(pid: i32, signal: Signal) {
    nix::sys::signal::kill(Pid::from_raw(pid), signal)
        .unwrap_or_else(|err| panic!("kill({pid}, {signal}): {err}"));
}

// ---------------------------------------------------------------------------------------------
// --record: read back by node as noVNC's playback page does

/// Evaluates a recording with node's `vm` (as the playback page's `<script>` tag does) and
/// prints one line per element of `VNC_frame_data`: `DIR TS CODES` (char codes joined by
/// commas), or `EOF`.
const LOAD_RECORDING_JS: &str = r#"
const fs = require('fs');
const vm = require('vm');
const context = {};
vm.runInNewContext(fs.readFileSync(process.argv[2], 'utf8'), context);
const lines = [];
for (const frame of context.VNC_frame_data) {
    if (frame === 'EOF') { lines.push('EOF'); continue; }
    const dir = frame[0];
    const end = frame.indexOf(dir, 1);
    const ts = parseInt(frame.slice(1, end), 10);
    const codes = [];
    for (let i = end + 1; i < frame.length; i++) codes.push(frame.charCodeAt(i));
    lines.push(dir + ' ' + ts + ' ' + codes.join(','));
}
process.stdout.write(lines.join('\n') + '\n');
"#;

/// One element of `VNC_frame_data` as node sees it.
#[derive(Debug, PartialEq, Eq)]
enum Frame {
    Data { dir: char, ms: u64, bytes: Vec<u8> },
    Eof,
}

/// Loads `file` with node; `None` (after saying so) when node is not installed.
fn node_frames(dir: &Path, file: &Path) -> Option<Vec<Frame>> {
    let script = dir.join("load-recording.js");
    std::fs::write(&script, LOAD_RECORDING_JS).expect("write the node script");
    let output = match Command::new("node").arg(&script).arg(file).output() {
        Ok(output) => output,
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            eprintln!("node is not installed: recording not parsed");
            return None;
        }
        Err(err) => panic!("run node: {err}"),
    };
    assert!(
        output.status.success(),
        "node failed on {}:\n{}",
        file.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).expect("node output");
    let frames = text
        .lines()
        .map(|line| {
            if line == "EOF" {
                return Frame::Eof;
            }
            let mut parts = line.splitn(3, ' ');
            let dir = parts.next().and_then(|d| d.chars().next()).expect("dir");
            let ms = parts
                .next()
                .and_then(|t| t.parse().ok())
                .expect("timestamp");
            let bytes = parts
                .next()
                .unwrap_or_default()
                .split(',')
                .filter(|c| !c.is_empty())
                .map(|c| {
                    let code: u32 = c.parse().expect("char code");
                    u8::try_from(code).unwrap_or_else(|_| panic!("char code {code} > 255"))
                })
                .collect();
            Frame::Data { dir, ms, bytes }
        })
        .collect();
    Some(frames)
}

/// Checks a recording frame by frame against `expected` (direction, bytes), timestamps never
/// going back, `EOF` last, and the file's exact framing.
fn assert_recording(dir: &Path, file: &Path, expected: &[(char, &[u8])]) {
    let text = std::fs::read(file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
    assert!(text.is_ascii(), "the recording is not ASCII");
    let text = String::from_utf8(text).expect("ASCII");
    assert!(
        text.starts_with("var VNC_frame_data = [\n") && text.ends_with("'EOF'];\n"),
        "framing of {}:\n{text:.400}",
        file.display()
    );
    let Some(frames) = node_frames(dir, file) else {
        return;
    };
    assert_eq!(
        frames.last(),
        Some(&Frame::Eof),
        "last element of {}",
        file.display()
    );
    let data = &frames[..frames.len() - 1];
    assert_eq!(
        data.len(),
        expected.len(),
        "frames in {}: {data:?}",
        file.display()
    );
    let mut previous = 0;
    for (i, (frame, (want_dir, want_bytes))) in data.iter().zip(expected).enumerate() {
        let Frame::Data { dir, ms, bytes } = frame else {
            panic!("frame {i} of {} is EOF", file.display());
        };
        assert_eq!(dir, want_dir, "direction of frame {i}");
        assert_eq!(bytes.as_slice(), *want_bytes, "payload of frame {i}");
        assert!(*ms >= previous, "frame {i}: timestamp {ms} < {previous}");
        previous = *ms;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_writes_one_file_per_session_that_node_reads_back_byte_for_byte() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dir.path().join("rec");
    let (target, mut accepted) = scripted_target().await;
    let (child, line) = start(&[
        "--record",
        base.to_str().expect("utf-8"),
        "127.0.0.1:0",
        &target.to_string(),
    ]);
    let addr = listening_addr(&line);

    // Client bytes with quotes, backslashes, NUL and every byte >= 0x80.
    let mut a = b"it's a \\path\\ with \"quotes\" \0 NUL, tab\t, CR\r, LF\n, high: ".to_vec();
    a.extend(0x80..=0xffu8);
    let b: Vec<u8> = (0..=255u8).rev().collect();
    let c = b"'\\'\0\x7f\xff\x80}{'EOF'".to_vec();
    let d = b"RFB 003.008\n\x00\x00\x00\x01'\\".to_vec();

    let mut client = session(addr).await;
    let mut server_side = within("the target is connected", accepted.recv())
        .await
        .expect("target connection");
    for (up, down) in [(&a, &b), (&c, &d)] {
        client
            .write_all(&client_frame(0x82, up))
            .await
            .expect("send");
        let mut got = vec![0u8; up.len()];
        within("the target reads", server_side.read_exact(&mut got))
            .await
            .expect("target read");
        assert_eq!(&got, up);
        server_side.write_all(down).await.expect("target write");
        let (b0, payload) = read_frame(&mut client).await;
        assert_eq!((b0, &payload), (0x82, down));
    }
    close_on(&mut client).await;
    block(|| child.wait_for_line("session closed"));
    let first = dir.path().join("rec.1");
    assert_recording(
        dir.path(),
        &first,
        &[('}', &a), ('{', &b), ('}', &c), ('{', &d)],
    );

    // A second session gets the next file.
    let mut client = session(addr).await;
    let mut server_side = within("the target is connected", accepted.recv())
        .await
        .expect("target connection");
    client
        .write_all(&client_frame(0x82, b"second"))
        .await
        .expect("send");
    let mut got = [0u8; 6];
    within("the target reads", server_side.read_exact(&mut got))
        .await
        .expect("target read");
    server_side.write_all(b"\xfe\xff").await.expect("write");
    assert_eq!(read_frame(&mut client).await, (0x82, b"\xfe\xff".to_vec()));
    close_on(&mut client).await;
    block(|| child.wait_for_line("session closed"));
    assert_recording(
        dir.path(),
        &dir.path().join("rec.2"),
        &[('}', b"second"), ('{', b"\xfe\xff")],
    );
    assert!(
        !dir.path().join("rec.3").exists(),
        "a file for a session that did not happen"
    );
}

// ---------------------------------------------------------------------------------------------
// --traffic

/// Upstream's legend (reference section 1.15), printed at the start of each session.
const TRAFFIC_LEGEND: &str = "\nTraffic Legend:\n    }  - Client receive\n    }. - Client receive \
    partial\n    {  - Target receive\n\n    >  - Target send\n    >. - Target send partial\n    \
    <  - Client send\n    <. - Client send partial\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_prints_the_legend_and_tokens_on_stdout() {
    let echo = echo_server().await;
    let mut command = websockify(&["--traffic", "127.0.0.1:0", &echo.to_string()]);
    let mut spawned = command.stdout(Stdio::piped()).spawn().expect("spawn");
    let mut stdout = spawned.stdout.take().expect("stdout");
    let child = ChildGuard::new(spawned);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut all = Vec::new();
        let _ = stdout.read_to_end(&mut all);
        let _ = tx.send(all);
    });
    let addr = listening_addr(&block(|| child.wait_for_line("listening on")));

    let mut client = session(addr).await;
    echo_on(&mut client, b"one message").await;
    close_on(&mut client).await;
    block(|| child.wait_for_line("session closed"));
    child.signal(Signal::SIGTERM);
    assert_eq!(exited(watch_exit(child)).await.code(), Some(0));

    let out = rx.recv_timeout(STEP).expect("stdout at exit");
    let out = String::from_utf8(out).expect("stdout is text");
    let tokens = out
        .strip_prefix(TRAFFIC_LEGEND)
        .unwrap_or_else(|| panic!("stdout does not start with the legend:\n{out:?}"));
    assert!(
        tokens.chars().all(|c| "}{<>.".contains(c)),
        "not only tokens after the legend: {tokens:?}"
    );
    // Client message received, sent to the target, echo read from it, frame sent back.
    let mut wanted = "}>{<".chars().peekable();
    for c in tokens.chars() {
        if wanted.peek() == Some(&c) {
            wanted.next();
        }
    }
    assert!(
        wanted.peek().is_none(),
        "tokens {tokens:?} lack `}}`, `>`, `{{`, `<` in order"
    );
}

// ---------------------------------------------------------------------------------------------
// -D / --daemon

/// Runs the binary to completion on a blocking thread (bounded); (code, stdout, stderr).
async fn run_blocking(args: Vec<String>) -> (Option<i32>, String, String) {
    let run = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_websockify(&args)
    });
    match run.await {
        Ok(out) => out,
        Err(err) => std::panic::resume_unwind(err.into_panic()),
    }
}

/// Starts `websockify -D --pid-file F <options> 127.0.0.1:0 <echo>`, expects the command
/// to exit 0 promptly with nothing on stderr, and checks through /proc that the daemon really
/// detached. Returns its pid (killed on drop) and the pid file; the address it listens on is
/// in its log (`--log-file` or `--syslog` among `options`).
async fn start_daemon(dir: &Path, options: &[&str]) -> (KillOnDrop, i32, PathBuf) {
    let echo = echo_server().await;
    let pid_file = dir.join("ws.pid");
    let mut args: Vec<String> = vec![
        "-D".into(),
        "--pid-file".into(),
        pid_file.display().to_string(),
    ];
    args.extend(options.iter().map(|o| (*o).to_owned()));
    args.push("127.0.0.1:0".to_owned());
    args.push(echo.to_string());
    let launched = Instant::now();
    let (code, stdout, stderr) = run_blocking(args).await;
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        launched.elapsed() < Duration::from_secs(5),
        "the command took {:?} to return",
        launched.elapsed()
    );
    assert_eq!(stderr, "", "the command printed to stderr");

    let text = std::fs::read_to_string(&pid_file).expect("pid file written before the exit");
    assert!(text.ends_with('\n'), "{text:?}");
    let pid: i32 = text.trim().parse().unwrap_or_else(|_| panic!("{text:?}"));
    let guard = KillOnDrop::new(&[pid]);
    let stat = proc_stat(pid).unwrap_or_else(|| panic!("daemon {pid} is not running"));
    assert!(alive(pid), "daemon {pid}: state {}", stat.state);
    let our_session = nix::unistd::getsid(None).expect("getsid").as_raw();
    let our_pid = nix::unistd::getpid().as_raw();
    let (session, tty) = (stat.session, stat.tty_nr);
    assert_ne!(session, our_session, "the daemon is still in our session");
    assert_ne!(
        session, pid,
        "the daemon leads its session (could regain a tty)"
    );
    assert_eq!(tty, 0, "the daemon has a controlling terminal");
    assert_ne!(stat.ppid, our_pid, "the daemon is our child");
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).expect("daemon cwd");
    assert_eq!(cwd, Path::new("/"), "upstream changes directory to /");
    for fd in 0..3 {
        let target = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).expect("daemon fd");
        assert_eq!(target, Path::new("/dev/null"), "fd {fd} of the daemon");
    }
    (guard, pid, pid_file)
}

/// SIGTERM via the pid file; waits (bounded) for the daemon to exit and its pid file to go.
async fn stop_daemon(pid_file: &Path) {
    let pid: i32 = std::fs::read_to_string(pid_file)
        .expect("pid file while running")
        .trim()
        .parse()
        .expect("pid");
    kill(pid, Signal::SIGTERM);
    gone(pid).await;
    assert!(
        !pid_file.exists(),
        "pid file {} left behind",
        pid_file.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_detaches_keeps_its_log_file_serves_and_stops_via_the_pid_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("ws.log");
    let (_guard, _pid, pid_file) =
        start_daemon(dir.path(), &["--log-file", log.to_str().expect("utf-8")]).await;

    // The command exits after the daemon reports ready, which is after the banner.
    let text = std::fs::read_to_string(&log).expect("log file");
    assert!(text.contains("WebSocket server settings"), "log:\n{text}");
    let banner = text
        .lines()
        .find(|line| line.contains("listening on"))
        .unwrap_or_else(|| panic!("no `listening on` line in the log:\n{text}"));
    let addr = listening_addr(banner);

    let mut client = session(addr).await;
    echo_on(&mut client, b"through the daemon").await;
    close_on(&mut client).await;
    // The log file is written by its own thread: wait for the line to land (it raced this
    // read when the machine was busy).
    let mut poll = tokio::time::interval(Duration::from_millis(20));
    within("the session line in the daemon's log file", async {
        while !std::fs::read_to_string(&log).is_ok_and(|text| text.contains("WebSocket connection"))
        {
            poll.tick().await;
        }
    })
    .await;

    stop_daemon(&pid_file).await;
    let text = std::fs::read_to_string(&log).expect("log file");
    assert!(text.contains("SIGTERM received"), "log:\n{text}");
    assert!(!text.contains('\x1b'), "escape codes in the log file");
}

/// A syslog receiver: a UDP or a unix datagram socket.
trait Datagrams {
    async fn recv_one(&self, buf: &mut [u8]) -> io::Result<usize>;
}

impl Datagrams for UdpSocket {
    async fn recv_one(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.recv(buf).await
    }
}

impl Datagrams for UnixDatagram {
    async fn recv_one(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.recv(buf).await
    }
}

/// Receives datagrams (bounded) until one contains `needle`; returns every one received.
async fn datagrams_until(socket: &impl Datagrams, needle: &str) -> Vec<String> {
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 65536];
    within(&format!("a syslog datagram containing {needle:?}"), async {
        loop {
            let n = socket.recv_one(&mut buf).await.expect("recv");
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let done = msg.contains(needle);
            seen.push(msg);
            if done {
                break;
            }
        }
    })
    .await;
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_keeps_sending_to_a_udp_syslog_server_with_the_daemon_facility() {
    let dir = tempfile::tempdir().expect("tempdir");
    let receiver = UdpSocket::bind("127.0.0.1:0").await.expect("bind udp");
    let server = receiver.local_addr().expect("udp addr").to_string();
    let (_guard, pid, pid_file) = start_daemon(dir.path(), &["--syslog", &server]).await;
    let header_end = format!(" websockify {pid} - - ");

    let mut all = datagrams_until(&receiver, "listening on").await;
    let addr = listening_addr(all.last().expect("the banner datagram"));
    let mut client = session(addr).await;
    echo_on(&mut client, b"logged after detaching").await;
    all.extend(datagrams_until(&receiver, "WebSocket connection").await);
    close_on(&mut client).await;
    all.extend(datagrams_until(&receiver, "session closed").await);
    stop_daemon(&pid_file).await;
    all.extend(datagrams_until(&receiver, "SIGTERM received").await);

    for msg in &all {
        assert!(
            msg.starts_with("<30>1 ") || msg.starts_with("<28>1 "),
            "not facility daemon in RFC 5424: {msg:?}"
        );
        assert!(msg.contains(&header_end), "header of {msg:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// --log-file and --syslog (foreground)

/// A pseudo-terminal: (master, slave), or `None` when this machine has none.
fn open_pty() -> Option<(File, File)> {
    use nix::fcntl::OFlag;
    use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC).ok()?;
    grantpt(&master).ok()?;
    unlockpt(&master).ok()?;
    let path = ptsname_r(&master).ok()?;
    let slave = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(OFlag::O_NOCTTY.bits())
        .open(path)
        .ok()?;
    Some((File::from(OwnedFd::from(master)), slave))
}

/// Removes `ESC [ ... letter` sequences.
fn strip_ansi(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_file_gets_plain_lines_even_when_stderr_is_a_coloured_terminal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("ws.log");
    let echo = echo_server().await;
    let mut command = websockify(&[
        "--log-file",
        log.to_str().expect("utf-8"),
        "127.0.0.1:0",
        &echo.to_string(),
    ]);
    // On a terminal stderr gets colours: they must not leak into the file.
    let pty = open_pty();
    let stderr_lines = match pty {
        Some((master, slave)) => {
            command.stderr(Stdio::from(slave));
            Some(lines_of(master))
        }
        None => {
            eprintln!("no pseudo-terminal here: stderr is a pipe");
            None
        }
    };
    let spawned = command.spawn().expect("spawn");
    let child = ChildGuard::new(spawned);
    let banner = match &stderr_lines {
        Some(lines) => block(|| line_containing(lines, "listening on")),
        None => block(|| child.wait_for_line("listening on")),
    };
    if stderr_lines.is_some() {
        assert!(
            banner.contains('\x1b'),
            "no colours on a terminal: {banner:?}"
        );
    }
    let addr = listening_addr(strip_ansi(&banner).trim());

    let mut client = session(addr).await;
    echo_on(&mut client, b"logged").await;
    close_on(&mut client).await;
    child.signal(Signal::SIGTERM);
    assert_eq!(exited(watch_exit(child)).await.code(), Some(0));

    let text = std::fs::read_to_string(&log).expect("log file");
    for needle in [
        "WebSocket server settings",
        &format!("listening on {addr}"),
        "WebSocket connection",
        "session closed",
        "SIGTERM received",
    ] {
        assert!(text.contains(needle), "no {needle:?} in the log:\n{text}");
    }
    assert!(
        !text.contains('\x1b'),
        "escape codes in the log file:\n{text}"
    );
    let mode = std::fs::metadata(&log).expect("log").permissions().mode() & 0o777;
    assert_eq!(mode & 0o022, 0, "log file mode {mode:o}");
}

/// A unix datagram syslog receiver in `dir`; returns it and its path.
fn syslog_socket(dir: &Path) -> (UnixDatagram, PathBuf) {
    let path = dir.join("log.sock");
    let socket = UnixDatagram::bind(&path).expect("bind the syslog socket");
    (socket, path)
}

/// Checks `<PRI>1 YYYY-MM-DDTHH:MM:SSZ HOST websockify PID - - MSG`; returns (PRI, MSG).
fn parse_rfc5424(msg: &str, pid: i32) -> (u32, String) {
    let fields: Vec<&str> = msg.splitn(8, ' ').collect();
    assert_eq!(fields.len(), 8, "RFC 5424 fields of {msg:?}");
    let pri = fields[0]
        .strip_prefix('<')
        .and_then(|f| f.strip_suffix(">1"))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("<PRI>1 of {msg:?}"));
    let ts = fields[1].as_bytes();
    let shape = ts.len() == 20
        && ts.iter().enumerate().all(|(i, &c)| match i {
            4 | 7 => c == b'-',
            10 => c == b'T',
            13 | 16 => c == b':',
            19 => c == b'Z',
            _ => c.is_ascii_digit(),
        });
    assert!(shape, "timestamp of {msg:?}");
    assert!(
        !fields[2].is_empty() && fields[2].bytes().all(|c| c.is_ascii_graphic()),
        "hostname of {msg:?}"
    );
    assert_eq!(fields[3], "websockify", "app name of {msg:?}");
    assert_eq!(fields[4], pid.to_string(), "pid of {msg:?}");
    assert_eq!((fields[5], fields[6]), ("-", "-"), "msgid, sd of {msg:?}");
    assert!(!msg.ends_with('\n'), "datagrams have no newline: {msg:?}");
    (pri, fields[7].to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syslog_to_a_unix_datagram_socket_uses_rfc_5424_and_facility_user() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (receiver, path) = syslog_socket(dir.path());
    let echo = echo_server().await;
    let (child, _banner) = start(&[
        "--syslog",
        path.to_str().expect("utf-8"),
        "127.0.0.1:0",
        &echo.to_string(),
    ]);
    let all = datagrams_until(&receiver, "listening on").await;
    let (pri, first) = parse_rfc5424(&all[0], child.pid);
    assert_eq!(
        (pri, first.as_str()),
        (14, "WebSocket server settings:"),
        "first message"
    );
    for msg in &all {
        assert_eq!(parse_rfc5424(msg, child.pid).0, 14, "{msg:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_syslog_uses_the_bsd_format() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (receiver, path) = syslog_socket(dir.path());
    let (child, _banner) = start(&[
        "--legacy-syslog",
        "--syslog",
        path.to_str().expect("utf-8"),
        "127.0.0.1:0",
        "127.0.0.1:1",
    ]);
    let all = datagrams_until(&receiver, "listening on").await;
    assert_eq!(
        all[0],
        format!("<14>websockify[{}]: WebSocket server settings:", child.pid)
    );
    let prefix = format!("<14>websockify[{}]: ", child.pid);
    for msg in &all {
        assert!(msg.starts_with(&prefix), "{msg:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// --inetd

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inetd_wait_mode_serves_a_listening_socket_on_stdin() {
    let echo = echo_server().await;
    let (mut command, addr) = inetd_websockify(&[&echo.to_string()]);
    let child = ChildGuard::new(command.spawn().expect("spawn"));
    block(|| child.wait_for_line("Listen for inetd connections"));
    let banner = block(|| child.wait_for_line("listening on"));
    assert_eq!(listening_addr(&banner), addr);

    // Several connections: the socket keeps listening.
    for round in 0..2 {
        let mut client = session(addr).await;
        echo_on(&mut client, format!("inetd wait {round}").as_bytes()).await;
        close_on(&mut client).await;
    }
    child.signal(Signal::SIGTERM);
    assert_eq!(exited(watch_exit(child)).await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inetd_nowait_mode_serves_the_accepted_connection_then_exits_0() {
    let echo = echo_server().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    let mut client = client.expect("connect");
    let (accepted, _) = accepted.expect("accept");
    let accepted = accepted.into_std().expect("into_std");
    let mut command = websockify(&["--inetd", &echo.to_string()]);
    command.stdin(Stdio::from(OwnedFd::from(accepted)));
    let child = ChildGuard::new(command.spawn().expect("spawn"));
    let exit = watch_exit(child);

    let head = upgrade_on(&mut client, &addr.to_string()).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    echo_on(&mut client, b"the one inetd connection").await;
    echo_on(&mut client, b"still the same").await;
    close_on(&mut client).await;
    assert_eq!(exited(exit).await.code(), Some(0));
}

// ---------------------------------------------------------------------------------------------
// --unix-listen

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_listen_replaces_a_stale_socket_applies_the_mode_and_removes_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ws.sock");
    // A stale socket: bound, then the listener closed; the file stays.
    drop(std::os::unix::net::UnixListener::bind(&path).expect("bind stale"));
    let stale = std::fs::symlink_metadata(&path).expect("stale file");
    assert!(stale.file_type().is_socket());

    let echo = echo_server().await;
    let (child, banner) = start(&[
        "--unix-listen",
        path.to_str().expect("utf-8"),
        "--unix-listen-mode",
        "0660",
        &echo.to_string(),
    ]);
    assert!(
        banner.contains(&format!("unix socket {}", path.display())),
        "{banner}"
    );
    let meta = std::fs::symlink_metadata(&path).expect("socket file");
    assert!(meta.file_type().is_socket(), "{meta:?}");
    assert_eq!(meta.permissions().mode() & 0o777, 0o660, "socket mode");
    assert_ne!(
        (meta.ino(), meta.ctime_nsec()),
        (stale.ino(), stale.ctime_nsec()),
        "the stale file was not replaced"
    );

    let mut client = within("connect", UnixStream::connect(&path))
        .await
        .expect("connect to the unix socket");
    let head = upgrade_on(&mut client, "localhost").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    echo_on(&mut client, b"over a unix socket").await;
    close_on(&mut client).await;

    child.signal(Signal::SIGTERM);
    assert_eq!(exited(watch_exit(child)).await.code(), Some(0));
    assert!(!path.exists(), "socket file left behind");
}

#[test]
fn unix_listen_default_mode_is_0600() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ws.sock");
    let child = ChildGuard::new(
        websockify(&[
            "--unix-listen",
            path.to_str().expect("utf-8"),
            "127.0.0.1:1",
        ])
        .spawn()
        .expect("spawn"),
    );
    child.wait_for_line("listening on");
    let mode = std::fs::metadata(&path)
        .expect("socket")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "default mode {mode:o}");
}

#[test]
fn unix_listen_refuses_to_replace_a_regular_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("not-a-socket");
    std::fs::write(&path, "precious").expect("write");
    let (code, _stdout, stderr) = run_websockify(&[
        "--unix-listen",
        path.to_str().expect("utf-8"),
        "127.0.0.1:1",
    ]);
    assert!(
        matches!(code, Some(c) if c != 0),
        "exit {code:?}; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains(&path.display().to_string()),
        "the error does not name {}:\n{stderr}",
        path.display()
    );
    assert_eq!(
        std::fs::read_to_string(&path).expect("file"),
        "precious",
        "the file was touched"
    );
}

// ---------------------------------------------------------------------------------------------
// systemd socket activation and sd_notify

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_socket_activation_serves_fd_3_and_notifies_ready() {
    let dir = tempfile::tempdir().expect("tempdir");
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).expect("bind notify socket");
    let echo = echo_server().await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let fd = listener.as_raw_fd();

    // LISTEN_PID must be the pid of websockify itself: the shell execs it, keeping its pid.
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg("LISTEN_PID=$$; export LISTEN_PID; exec \"$0\" \"$@\"")
        .arg(websockify_bin())
        .args(["127.0.0.1:0", &echo.to_string()])
        .env("LISTEN_FDS", "1")
        .env("NOTIFY_SOCKET", &notify_path)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    pass_fd(&mut command, fd, 3);
    let child = ChildGuard::new(command.spawn().expect("spawn"));
    drop(listener);

    let mut buf = [0u8; 256];
    let n = within("READY=1", notify.recv(&mut buf))
        .await
        .expect("recv");
    assert_eq!(&buf[..n], b"READY=1");
    block(|| child.wait_for_line("using the socket passed by systemd"));
    let banner = block(|| child.wait_for_line("listening on"));
    assert_eq!(listening_addr(&banner), addr, "not the passed socket");

    let mut client = session(addr).await;
    echo_on(&mut client, b"socket activated").await;
    close_on(&mut client).await;

    child.signal(Signal::SIGTERM);
    let n = within("STOPPING=1", notify.recv(&mut buf))
        .await
        .expect("recv");
    assert_eq!(&buf[..n], b"STOPPING=1");
    assert_eq!(exited(watch_exit(child)).await.code(), Some(0));
}

// ---------------------------------------------------------------------------------------------
// --libserver, Flash policy

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libserver_warns_that_it_has_no_effect_and_serves() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (receiver, path) = syslog_socket(dir.path());
    let echo = echo_server().await;
    let child = ChildGuard::new(
        websockify(&[
            "--libserver",
            "--syslog",
            path.to_str().expect("utf-8"),
            "127.0.0.1:0",
            &echo.to_string(),
        ])
        .spawn()
        .expect("spawn"),
    );
    let warning = block(|| child.wait_for_line("--libserver"));
    assert!(warning.contains("no effect"), "{warning}");
    assert!(warning.contains("WARN"), "not a warning: {warning}");
    let addr = listening_addr(&block(|| child.wait_for_line("listening on")));
    // Severity warning (4), facility user (1).
    let all = datagrams_until(&receiver, "--libserver").await;
    let (pri, _) = parse_rfc5424(all.last().expect("message"), child.pid);
    assert_eq!(pri, 12, "{all:?}");

    let mut client = session(addr).await;
    echo_on(&mut client, b"libserver is ignored").await;
    close_on(&mut client).await;
}

#[tokio::test]
async fn flash_policy_request_gets_the_policy_and_the_connection_closes() {
    let echo = echo_server().await;
    let server = TestServer::start(config_to(echo)).await;
    let mut stream = within("connect", TcpStream::connect(server.addr))
        .await
        .expect("connect");
    stream
        .write_all(b"<policy-file-request/>\0")
        .await
        .expect("send");
    let mut response = Vec::new();
    within("policy, then EOF", stream.read_to_end(&mut response))
        .await
        .expect("read to EOF");
    assert_eq!(
        String::from_utf8_lossy(&response),
        "<cross-domain-policy><allow-access-from domain=\"*\" to-ports=\"*\" />\
         </cross-domain-policy>\n"
    );
}

// ---------------------------------------------------------------------------------------------
// noVNC's utils/novnc_proxy

/// A web root with a `vnc.html`.
fn web_root(dir: &Path) -> PathBuf {
    let web = dir.join("web");
    std::fs::create_dir(&web).expect("mkdir web");
    std::fs::write(
        web.join("vnc.html"),
        "<!DOCTYPE html><title>noVNC</title>\n",
    )
    .expect("write");
    web
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn novnc_proxy_command_line_starts_and_serves_files_and_websockets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let web = web_root(dir.path());
    let cert = dir.path().join("self.pem");
    let key = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    std::fs::write(
        &cert,
        format!("{}{}", key.cert.pem(), key.signing_key.serialize_pem()),
    )
    .expect("write cert");
    let record = dir.path().join("rec");
    let (receiver, syslog) = syslog_socket(dir.path());
    let echo = echo_server().await;
    // As novnc_proxy passes them: options after the two positionals, values as separate words.
    let (child, banner) = start(&[
        "--web",
        web.to_str().expect("utf-8"),
        "--cert",
        cert.to_str().expect("utf-8"),
        "127.0.0.1:0",
        &echo.to_string(),
        "--heartbeat",
        "30",
        "--idle-timeout",
        "60",
        "--record",
        record.to_str().expect("utf-8"),
        "--syslog",
        syslog.to_str().expect("utf-8"),
        "--file-only",
    ]);
    let addr = listening_addr(&banner);

    let page = http_get(addr, "/vnc.html").await;
    assert_eq!(page.status_line, "HTTP/1.1 200 OK", "{}", page.head);
    let content_type = page.header("content-type").unwrap_or_default();
    assert!(content_type.starts_with("text/html"), "{}", page.head);
    assert_eq!(
        page.body,
        std::fs::read(web.join("vnc.html")).expect("read")
    );
    // --file-only: no directory listing.
    let listing = http_get(addr, "/").await;
    assert_eq!(listing.status, 404, "{}", listing.head);

    let mut client = session(addr).await;
    echo_on(&mut client, b"noVNC says hello").await;
    close_on(&mut client).await;
    block(|| child.wait_for_line("session closed"));
    let recorded = std::fs::read_to_string(dir.path().join("rec.1")).expect("rec.1");
    assert!(recorded.ends_with("'EOF'];\n"), "{recorded}");
    let logged = datagrams_until(&receiver, "WebSocket connection").await;
    assert!(logged.iter().all(|m| m.starts_with("<14>1 ")), "{logged:?}");
}

/// Live processes whose process group is `pgid`.
fn group_members(pgid: i32) -> Vec<i32> {
    all_processes()
        .into_iter()
        .filter(|(_, stat)| stat.pgrp == pgid && stat.state != 'Z' && stat.state != 'X')
        .map(|(pid, _)| pid)
        .collect()
}

/// Kills a process group on drop unless disarmed.
struct KillGroupOnDrop(Option<i32>);

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        if let Some(pgid) = self.0
            && !group_members(pgid).is_empty()
        {
            // The process group this test created.
            let _ = nix::sys::signal::kill(Pid::from_raw(-pgid), Signal::SIGKILL);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_novnc_proxy_script_runs_our_binary() {
    let script = Path::new("/usr/share/novnc/utils/novnc_proxy");
    let web = Path::new("/usr/share/novnc");
    if !script.exists() || !web.join("vnc.html").exists() {
        skip_or_fail("noVNC is not installed (apt package novnc)");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).expect("mkdir");
    std::os::unix::fs::symlink(websockify_bin(), bin.join("websockify")).expect("symlink");
    let path = std::env::join_paths(std::iter::once(bin.clone()).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))
    .expect("PATH");
    let echo = echo_server().await;

    // Port 0: the script passes it on, and websockify reports the port it bound.
    let mut spawned = Command::new(script)
        .args(["--listen", "0"])
        .args(["--vnc", &echo.to_string()])
        .arg("--web")
        .arg(web)
        .current_dir(dir.path())
        .env("PATH", path)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("spawn novnc_proxy");
    let pgid = i32::try_from(spawned.id()).expect("pid");
    let mut cleanup = KillGroupOnDrop(Some(pgid));
    let stdout = lines_of(spawned.stdout.take().expect("stdout"));
    let child = ChildGuard::new(spawned);

    let using = block(|| line_containing(&stdout, "websockify at"));
    assert!(
        using.contains(&bin.join("websockify").display().to_string()),
        "the script did not pick our binary: {using}"
    );
    block(|| line_containing(&stdout, "Navigate to this URL"));
    let banner = block(|| child.wait_for_line("listening on"));
    let addr = SocketAddr::from(([127, 0, 0, 1], listening_addr(&banner).port()));
    let page = http_get(addr, "/vnc.html").await;
    assert_eq!(page.status_line, "HTTP/1.1 200 OK", "{}", page.head);
    let mut client = session(addr).await;
    echo_on(&mut client, b"via novnc_proxy").await;
    close_on(&mut client).await;

    let members = group_members(pgid);
    assert!(members.len() >= 2, "script and websockify: {members:?}");
    kill(-pgid, Signal::SIGTERM);
    exited(watch_exit(child)).await;
    for pid in members {
        gone(pid).await;
    }
    let left = group_members(pgid);
    assert!(left.is_empty(), "still running after SIGTERM: {left:?}");
    cleanup.0 = None;
}
