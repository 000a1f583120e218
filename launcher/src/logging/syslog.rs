//! `--syslog`: each log event as one syslog message, over UDP or a Unix socket, never blocking.
//!
//! Upstream's `WebsockifySysLogHandler` defines the bytes we mirror: RFC 5424
//! `<PRI>1 TIMESTAMP HOSTNAME websockify PID - - MSG` (UTC, whole seconds), or with
//! `--legacy-syslog` `<PRI>websockify[PID]: MSG`; newlines in MSG become spaces, non-ASCII MSG
//! is UTF-8 behind a BOM, and stream sockets get a trailing newline. A busy or absent server
//! costs dropped messages, counted and reported in the next message that gets through.

use std::io::{self, Write as _};
use std::net::{SocketAddr, ToSocketAddrs as _, UdpSocket};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

use super::sink::{DROPPED_LOG_LINES, stderr};

/// `--syslog SERVER`, parsed as upstream does.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum SyslogDest {
    Udp { host: String, port: u16 },
    Unix(PathBuf),
}

impl SyslogDest {
    pub(super) fn parse(spec: &str) -> io::Result<SyslogDest> {
        let Some((host, port)) = spec.rsplit_once(':') else {
            return Ok(SyslogDest::Unix(PathBuf::from(spec)));
        };
        let port = port.parse().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid syslog port {port:?}"),
            )
        })?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let host = if host.is_empty() { "localhost" } else { host };
        Ok(SyslogDest::Udp {
            host: host.to_owned(),
            port,
        })
    }
}

/// The fixed part of every syslog message.
#[derive(Debug, Clone)]
pub(super) struct Header {
    /// 1 (user) or 3 (daemon).
    facility: u8,
    /// Printable ASCII, at most 255 bytes, `-` when unknown (RFC 5424 NILVALUE).
    pub(super) hostname: String,
    pid: u32,
    legacy: bool,
}

const APP_NAME: &str = "websockify";
const SEVERITY_WARNING: u8 = 4;

impl Header {
    pub(super) fn new(daemon: bool, legacy: bool) -> Header {
        let hostname = nix::unistd::gethostname()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        Header {
            facility: if daemon { 3 } else { 1 },
            hostname: clean_hostname(&hostname),
            pid: std::process::id(),
            legacy,
        }
    }

    /// One message without the stream tail: header, then `text` with newlines as spaces,
    /// as ASCII or as UTF-8 behind a BOM.
    fn format(&self, severity: u8, time: SystemTime, text: &str) -> Vec<u8> {
        let pri = u16::from(self.facility) * 8 + u16::from(severity);
        let mut msg = if self.legacy {
            format!("<{pri}>{APP_NAME}[{}]: ", self.pid)
        } else {
            format!(
                "<{pri}>1 {} {} {APP_NAME} {} - - ",
                utc_timestamp(time),
                self.hostname,
                self.pid
            )
        }
        .into_bytes();
        if !text.is_ascii() {
            msg.extend_from_slice("\u{feff}".as_bytes());
        }
        msg.extend(
            text.bytes()
                .map(|b| if b == b'\n' || b == b'\r' { b' ' } else { b }),
        );
        msg
    }
}

/// Printable ASCII only (upstream drops the rest), at most 255 bytes, `-` if nothing is left.
fn clean_hostname(name: &str) -> String {
    let name: String = name
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(255)
        .collect();
    if name.is_empty() {
        "-".to_owned()
    } else {
        name
    }
}

/// Syslog severity for a tracing level (upstream's `mapPriority`).
fn severity(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => SEVERITY_WARNING,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` in UTC, as upstream's `time.strftime('%Y-%m-%dT%H:%M:%SZ', gmtime())`.
fn utc_timestamp(time: SystemTime) -> String {
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    i64::try_from(secs)
        .ok()
        .and_then(|secs| OffsetDateTime::from_unix_timestamp(secs).ok())
        .and_then(|at| at.format(&Rfc3339).ok())
        .unwrap_or_else(|| "-".to_owned())
}

/// How long to wait before reconnecting a Unix syslog socket that failed.
const RECONNECT_INTERVAL: Duration = Duration::from_secs(1);

/// An open syslog socket. All are non-blocking: a busy server costs a dropped message, never
/// a stalled connection task.
enum Socket {
    Udp {
        socket: UdpSocket,
        addr: SocketAddr,
    },
    Dgram(UnixDatagram),
    /// A stream socket frames messages with `\n`; a partly written message is finished
    /// before the next one starts.
    Stream {
        stream: UnixStream,
        pending: Vec<u8>,
    },
    Closed,
}

impl Socket {
    fn udp(host: &str, port: u16) -> io::Result<Socket> {
        let addr = (host, port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "the name has no address"))?;
        let local: SocketAddr = if addr.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            ([0u16; 8], 0).into()
        };
        let socket = UdpSocket::bind(local)?;
        socket.set_nonblocking(true)?;
        Ok(Socket::Udp { socket, addr })
    }

    /// Datagram first, then stream, like upstream's `_connect_unixsocket`.
    fn unix(path: &Path) -> io::Result<Socket> {
        let dgram_err = match UnixDatagram::unbound().and_then(|s| s.connect(path).map(|()| s)) {
            Ok(socket) => {
                socket.set_nonblocking(true)?;
                return Ok(Socket::Dgram(socket));
            }
            Err(err) => err,
        };
        match UnixStream::connect(path) {
            Ok(stream) => {
                stream.set_nonblocking(true)?;
                Ok(Socket::Stream {
                    stream,
                    pending: Vec::new(),
                })
            }
            // A stream socket refuses the datagram connect with EPROTOTYPE: its error is the
            // interesting one then; otherwise the datagram error is.
            Err(err) if dgram_err.raw_os_error() == Some(libc::EPROTOTYPE) => Err(err),
            Err(_) => Err(dgram_err),
        }
    }

    fn send(&mut self, msg: &[u8]) -> io::Result<()> {
        match self {
            Socket::Udp { socket, addr } => socket.send_to(msg, *addr).map(drop),
            Socket::Dgram(socket) => socket.send(msg).map(drop),
            Socket::Stream { stream, pending } => {
                if !pending.is_empty() {
                    let n = stream.write(pending)?;
                    pending.drain(..n);
                    if !pending.is_empty() {
                        return Err(io::ErrorKind::WouldBlock.into());
                    }
                }
                let mut framed = Vec::with_capacity(msg.len() + 1);
                framed.extend_from_slice(msg);
                framed.push(b'\n');
                let n = stream.write(&framed)?;
                pending.extend_from_slice(framed.get(n..).unwrap_or_default());
                Ok(())
            }
            Socket::Closed => Err(io::ErrorKind::NotConnected.into()),
        }
    }
}

/// The mutable half of [`Syslog`].
struct State {
    socket: Socket,
    /// Messages lost since the last one that got through; reported in the next message.
    dropped: u64,
    /// Set after a send error was reported, so an outage is reported once.
    failing: bool,
    reconnect_at: Instant,
}

/// `--syslog`: a `MakeWriter` whose writers send the formatted event when dropped.
pub(super) struct Syslog {
    header: Header,
    dest: SyslogDest,
    /// For messages: the server as given.
    name: String,
    state: Mutex<State>,
}

impl Syslog {
    pub(super) fn connect(spec: &str, header: Header) -> anyhow::Result<Syslog> {
        let fail = || format!("cannot connect to syslog server {spec}");
        let dest = SyslogDest::parse(spec).with_context(fail)?;
        let socket = match &dest {
            SyslogDest::Udp { host, port } => Socket::udp(host, *port),
            SyslogDest::Unix(path) => Socket::unix(path),
        }
        .with_context(fail)?;
        Ok(Syslog {
            header,
            dest,
            name: spec.to_owned(),
            state: Mutex::new(State {
                socket,
                dropped: 0,
                failing: false,
                reconnect_at: Instant::now(),
            }),
        })
    }

    /// Sends one event's text (the fmt layer's line, trailing newline included).
    fn log(&self, severity: u8, text: &str) {
        let text = text.trim_end_matches('\n');
        if text.is_empty() {
            return;
        }
        let now = SystemTime::now();
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.dropped > 0 {
            let notice = format!(
                "{} log message(s) were dropped: the syslog server was busy or unreachable",
                state.dropped
            );
            let notice = self.header.format(SEVERITY_WARNING, now, &notice);
            if self.deliver(&mut state, &notice) {
                state.dropped = 0;
            }
        }
        let msg = self.header.format(severity, now, text);
        if !self.deliver(&mut state, &msg) {
            state.dropped += 1;
            DROPPED_LOG_LINES.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// One send, plus one reconnect for a Unix socket whose server went away (upstream
    /// reconnects on every error; we at most once a second). Never blocks.
    fn deliver(&self, state: &mut State, msg: &[u8]) -> bool {
        let err = match state.socket.send(msg) {
            Ok(()) => {
                state.failing = false;
                return true;
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return false,
            Err(err) => err,
        };
        if let SyslogDest::Unix(path) = &self.dest
            && Instant::now() >= state.reconnect_at
        {
            state.reconnect_at = Instant::now() + RECONNECT_INTERVAL;
            state.socket = Socket::unix(path).unwrap_or(Socket::Closed);
            if state.socket.send(msg).is_ok() {
                state.failing = false;
                return true;
            }
        }
        if !state.failing {
            state.failing = true;
            // To stderr, through its sink: this runs inside a log event, which cannot log.
            if let Some(stderr) = stderr() {
                let notice = format!(
                    "websockify: cannot send to syslog server {}: {err}; dropping messages until \
                     it recovers\n",
                    self.name
                );
                stderr.send(notice.as_bytes());
            }
        }
        false
    }
}

impl<'a> MakeWriter<'a> for Syslog {
    type Writer = SyslogWriter<'a>;

    fn make_writer(&'a self) -> SyslogWriter<'a> {
        SyslogWriter {
            syslog: self,
            severity: severity(&Level::INFO),
            buf: Vec::new(),
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> SyslogWriter<'a> {
        SyslogWriter {
            syslog: self,
            severity: severity(meta.level()),
            buf: Vec::new(),
        }
    }
}

/// Collects one formatted event; sends it on drop (the fmt layer drops it after the event).
pub(super) struct SyslogWriter<'a> {
    syslog: &'a Syslog,
    severity: u8,
    buf: Vec<u8>,
}

impl io::Write for SyslogWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for SyslogWriter<'_> {
    fn drop(&mut self) {
        self.syslog
            .log(self.severity, &String::from_utf8_lossy(&self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STEP: Duration = Duration::from_secs(5);

    fn text(bytes: &[u8]) -> String {
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    /// 2026-11-22T00:07:33Z, the time in the reference's upstream example.
    fn example_time() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_795_306_053)
    }

    fn header(facility: u8, legacy: bool) -> Header {
        Header {
            facility,
            hostname: "vm".to_owned(),
            pid: 20032,
            legacy,
        }
    }

    #[test]
    fn rfc5424_header_matches_upstream_layout() {
        let msg = header(1, false).format(6, example_time(), "WebSocket server settings:");
        assert_eq!(
            text(&msg),
            "<14>1 2026-11-22T00:07:33Z vm websockify 20032 - - WebSocket server settings:"
        );
    }

    #[test]
    fn legacy_header_has_ident_and_pid_only() {
        let msg = header(3, true).format(6, example_time(), "  - Listen on :6080");
        assert_eq!(text(&msg), "<30>websockify[20032]:   - Listen on :6080");
    }

    #[test]
    fn pri_is_facility_times_eight_plus_severity() {
        let pri = |facility, level: Level| {
            let msg = text(&header(facility, true).format(severity(&level), example_time(), "x"));
            msg[1..msg.find('>').unwrap()].to_owned()
        };
        let user: Vec<String> = [
            Level::ERROR,
            Level::WARN,
            Level::INFO,
            Level::DEBUG,
            Level::TRACE,
        ]
        .into_iter()
        .map(|l| pri(1, l))
        .collect();
        assert_eq!(user, ["11", "12", "14", "15", "15"]);
        let daemon: Vec<String> = [Level::ERROR, Level::WARN, Level::INFO, Level::DEBUG]
            .into_iter()
            .map(|l| pri(3, l))
            .collect();
        assert_eq!(daemon, ["27", "28", "30", "31"]);
    }

    #[test]
    fn newlines_in_the_message_become_spaces() {
        let msg = header(1, true).format(6, example_time(), "one\ntwo\r\nthree");
        assert_eq!(text(&msg), "<14>websockify[20032]: one two  three");
    }

    #[test]
    fn non_ascii_message_is_utf8_behind_a_bom() {
        let msg = header(1, false).format(6, example_time(), "café ✓");
        let mut expected = b"<14>1 2026-11-22T00:07:33Z vm websockify 20032 - - ".to_vec();
        expected.extend_from_slice(b"\xef\xbb\xbfcaf\xc3\xa9 \xe2\x9c\x93");
        assert_eq!(msg, expected);
        let legacy = header(1, true).format(6, example_time(), "é");
        assert_eq!(legacy, b"<14>websockify[20032]: \xef\xbb\xbf\xc3\xa9");
        let ascii = header(1, false).format(6, example_time(), "plain");
        assert!(!ascii.windows(3).any(|w| w == b"\xef\xbb\xbf"));
    }

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        let at = |secs| utc_timestamp(UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(at(1_795_999_653), "2026-11-30T00:47:33Z");
        assert_eq!(at(4_107_542_399), "2100-02-28T23:59:59Z");
        assert_eq!(at(4_107_542_400), "2100-03-01T00:00:00Z");
    }

    #[test]
    fn hostname_is_printable_ascii_at_most_255_bytes() {
        assert_eq!(clean_hostname("my host\u{e9}.lan"), "myhost.lan");
        assert_eq!(clean_hostname(""), "-");
        assert_eq!(clean_hostname(&"a".repeat(300)).len(), 255);
    }

    #[test]
    fn syslog_server_is_udp_when_it_has_a_colon() {
        let udp = |host: &str, port| SyslogDest::Udp {
            host: host.to_owned(),
            port,
        };
        assert_eq!(
            SyslogDest::parse("logs.lan:514").unwrap(),
            udp("logs.lan", 514)
        );
        assert_eq!(SyslogDest::parse("[::1]:514").unwrap(), udp("::1", 514));
        assert_eq!(SyslogDest::parse("::1:514").unwrap(), udp("::1", 514));
        assert_eq!(SyslogDest::parse(":514").unwrap(), udp("localhost", 514));
        assert_eq!(
            SyslogDest::parse("/dev/log").unwrap(),
            SyslogDest::Unix(PathBuf::from("/dev/log"))
        );
        assert!(SyslogDest::parse("host:syslog").is_err());
    }

    #[test]
    fn reports_dropped_messages_once_the_server_drains() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let receiver = UnixDatagram::bind(&path).unwrap();
        let syslog = Syslog::connect(path.to_str().unwrap(), header(1, true)).unwrap();
        // Fill the receiver's queue without reading: sends must fail fast, not block.
        let start = Instant::now();
        let mut sent = 0;
        while syslog.state.lock().unwrap().dropped == 0 {
            syslog.log(6, "filler\n");
            sent += 1;
            assert!(sent < 100_000, "the queue never filled");
        }
        syslog.log(6, "also dropped\n");
        assert!(start.elapsed() < STEP);
        assert_eq!(syslog.state.lock().unwrap().dropped, 2);

        receiver.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 2048];
        while receiver.recv(&mut buf).is_ok() {}
        receiver.set_nonblocking(false).unwrap();
        receiver.set_read_timeout(Some(STEP)).unwrap();
        syslog.log(6, "after\n");
        let pid = 20032;
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(
            text(&buf[..n]),
            format!(
                "<12>websockify[{pid}]: 2 log message(s) were dropped: \
                 the syslog server was busy or unreachable"
            )
        );
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(text(&buf[..n]), format!("<14>websockify[{pid}]: after"));
        assert_eq!(syslog.state.lock().unwrap().dropped, 0);
    }

    #[test]
    fn reconnects_when_the_unix_receiver_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let first = UnixDatagram::bind(&path).unwrap();
        let syslog = Syslog::connect(path.to_str().unwrap(), header(1, true)).unwrap();
        drop(first);
        std::fs::remove_file(&path).unwrap();
        let second = UnixDatagram::bind(&path).unwrap();
        second.set_read_timeout(Some(STEP)).unwrap();
        syslog.log(6, "hello again\n");
        let mut buf = [0u8; 2048];
        let n = second.recv(&mut buf).unwrap();
        assert_eq!(text(&buf[..n]), "<14>websockify[20032]: hello again");
    }
}
