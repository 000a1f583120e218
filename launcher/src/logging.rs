//! Logging: one `tracing` subscriber that feeds stderr, `--log-file` and `--syslog`.
//!
//! ```text
//! tracing event -> EnvFilter (-v = debug, RUST_LOG overrides)
//!   -> fmt layer -> stderr            timestamp, level, spans, message; ANSI on a terminal only
//!   -> fmt layer -> LogFile           the same lines, never ANSI, one append write(2) per line
//!   -> fmt layer -> Syslog            spans + message + fields only, wrapped in a syslog header,
//!                                     one non-blocking datagram per event (dropped when busy)
//! ```
//!
//! Upstream's `WebsockifySysLogHandler` defines the syslog bytes we mirror: RFC 5424
//! `<PRI>1 TIMESTAMP HOSTNAME websockify PID - - MSG` (UTC, whole seconds), or with
//! `--legacy-syslog` `<PRI>websockify[PID]: MSG`; newlines in MSG become spaces, non-ASCII MSG
//! is UTF-8 behind a BOM, and stream sockets get a trailing newline. Unlike upstream, the
//! syslog socket survives `-D` because logging is set up after detaching.

use std::fs::{File, OpenOptions};
use std::io::{self, IsTerminal as _, Write as _};
use std::net::{SocketAddr, ToSocketAddrs as _, UdpSocket};
use std::os::unix::fs::OpenOptionsExt as _;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use tracing::{Level, Metadata, Subscriber};
use tracing_subscriber::fmt::format::{DefaultFields, Writer};
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::fmt::{FormatFields, MakeWriter};
use tracing_subscriber::layer::{Layered, SubscriberExt as _};
use tracing_subscriber::registry::Registry;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer, field::RecordFields};

/// Where log lines go, from the command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogSettings {
    /// `-v`: debug instead of info (`RUST_LOG` overrides both).
    pub verbose: bool,
    /// `--log-file FILE`: appended to, created (0644) if missing.
    pub log_file: Option<PathBuf>,
    /// `--syslog SERVER`: UDP `host:port` when it contains `:`, else a Unix socket path.
    pub syslog: Option<String>,
    /// `--legacy-syslog`: `<PRI>websockify[PID]: MSG` instead of RFC 5424.
    pub legacy_syslog: bool,
    /// `-D`: syslog facility `daemon` (3) instead of `user` (1).
    pub daemon: bool,
}

impl LogSettings {
    /// Makes the log file and a Unix syslog socket path absolute, as upstream does at start.
    /// Call it before [`crate::daemon::daemonize`], which changes the working directory.
    pub fn resolve_paths(&mut self) -> io::Result<()> {
        if let Some(path) = &mut self.log_file {
            *path = std::path::absolute(&*path)?;
        }
        if let Some(spec) = &mut self.syslog
            && let SyslogDest::Unix(path) = SyslogDest::parse(spec)?
        {
            *spec = std::path::absolute(path)?.to_string_lossy().into_owned();
        }
        Ok(())
    }
}

/// Installs the global subscriber: stderr unless `stderr` is false (after detaching), plus the
/// log file and syslog when configured. Fails, naming the file or server, if one cannot be opened.
pub fn init(settings: &LogSettings, stderr: bool) -> anyhow::Result<()> {
    let default = if settings.verbose { "debug" } else { "info" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let stderr = stderr.then(|| (BoxMakeWriter::new(io::stderr), io::stderr().is_terminal()));
    build(filter, settings, stderr)?
        .try_init()
        .context("cannot install the logger")
}

type Base = Layered<EnvFilter, Registry>;
type BoxedLayer = Box<dyn Layer<Base> + Send + Sync>;

/// Builds the subscriber; `stderr` is the human-format sink and whether it gets ANSI colours.
fn build(
    filter: EnvFilter,
    settings: &LogSettings,
    stderr: Option<(BoxMakeWriter, bool)>,
) -> anyhow::Result<impl Subscriber + Send + Sync + 'static> {
    let mut layers: Vec<BoxedLayer> = Vec::new();
    if let Some((writer, ansi)) = stderr {
        layers.push(
            tracing_subscriber::fmt::layer()
                .with_writer(writer)
                .with_ansi(ansi)
                .with_target(false)
                .boxed(),
        );
    }
    if let Some(path) = &settings.log_file {
        layers.push(
            tracing_subscriber::fmt::layer()
                .fmt_fields(PlainFields::default())
                .with_writer(Arc::new(LogFile::open(path)?))
                .with_ansi(false)
                .with_target(false)
                .boxed(),
        );
    }
    if let Some(spec) = &settings.syslog {
        let header = Header::new(settings.daemon, settings.legacy_syslog);
        let format = tracing_subscriber::fmt::format()
            .without_time()
            .with_level(false)
            .with_target(false);
        layers.push(
            tracing_subscriber::fmt::layer()
                .fmt_fields(PlainFields::default())
                .event_format(format)
                .with_writer(Syslog::connect(spec, header)?)
                .with_ansi(false)
                .boxed(),
        );
    }
    Ok(tracing_subscriber::registry().with(filter).with(layers))
}

/// The default field format under its own type. Each fmt layer caches a span's formatted
/// fields keyed by the formatter's type, so sharing `DefaultFields` with the coloured stderr
/// layer would copy its ANSI codes into the file and syslog lines.
#[derive(Default)]
struct PlainFields(DefaultFields);

impl<'w> FormatFields<'w> for PlainFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> std::fmt::Result {
        self.0.format_fields(writer, fields)
    }
}

/// `--log-file`: each formatted line reaches the file in one unbuffered append write.
struct LogFile {
    file: File,
    path: PathBuf,
    /// Set after a failed write, so a full disk is reported once rather than per line.
    failing: AtomicBool,
}

impl LogFile {
    fn open(path: &Path) -> anyhow::Result<LogFile> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o644)
            .open(path)
            .with_context(|| format!("cannot open log file {}", path.display()))?;
        Ok(LogFile {
            file,
            path: path.to_owned(),
            failing: AtomicBool::new(false),
        })
    }
}

impl io::Write for &LogFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match (&self.file).write_all(buf) {
            Ok(()) => self.failing.store(false, Ordering::Relaxed),
            Err(err) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    eprintln!(
                        "websockify: cannot write to log file {}: {err}",
                        self.path.display()
                    );
                }
            }
        }
        // Claim success: the layer would otherwise print its own error for every line.
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// `--syslog SERVER`, parsed as upstream does.
#[derive(Debug, PartialEq, Eq)]
enum SyslogDest {
    Udp { host: String, port: u16 },
    Unix(PathBuf),
}

impl SyslogDest {
    fn parse(spec: &str) -> io::Result<SyslogDest> {
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
struct Header {
    /// 1 (user) or 3 (daemon).
    facility: u8,
    /// Printable ASCII, at most 255 bytes, `-` when unknown (RFC 5424 NILVALUE).
    hostname: String,
    pid: u32,
    legacy: bool,
}

const APP_NAME: &str = "websockify";
const SEVERITY_WARNING: u8 = 4;

impl Header {
    fn new(daemon: bool, legacy: bool) -> Header {
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
    let (year, month, day) = civil_from_days(secs / 86_400);
    let rem = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day): Howard Hinnant's `civil_from_days`.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
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
struct Syslog {
    header: Header,
    dest: SyslogDest,
    /// For messages: the server as given.
    name: String,
    state: Mutex<State>,
}

impl Syslog {
    fn connect(spec: &str, header: Header) -> anyhow::Result<Syslog> {
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
            eprintln!(
                "websockify: cannot send to syslog server {}: {err}; dropping messages until it recovers",
                self.name
            );
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
struct SyslogWriter<'a> {
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
    use std::os::unix::fs::PermissionsExt as _;
    use std::os::unix::net::UnixListener;
    use std::time::Duration;

    const STEP: Duration = Duration::from_secs(5);

    fn header(facility: u8, legacy: bool) -> Header {
        Header {
            facility,
            hostname: "vm".to_owned(),
            pid: 20032,
            legacy,
        }
    }

    /// 2026-11-22T00:07:33Z, the time in the reference's upstream example.
    fn example_time() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_795_306_053)
    }

    fn text(bytes: &[u8]) -> String {
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    fn syslog_to(syslog: &str) -> LogSettings {
        LogSettings {
            syslog: Some(syslog.to_owned()),
            ..LogSettings::default()
        }
    }

    /// Logs what the relay logs: an event with a field inside a connection span.
    fn log_in_span(settings: &LogSettings) {
        let subscriber = build(EnvFilter::new("debug"), settings, None).unwrap();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info_span!("conn", id = 7).in_scope(|| {
                tracing::info!(bytes = 12, "proxying");
            });
        });
    }

    /// What follows `<PRI>1 TIMESTAMP `, and the timestamp's shape.
    fn after_timestamp(msg: &str, pri: &str) -> String {
        let rest = msg.strip_prefix(&format!("<{pri}>1 ")).unwrap();
        let (stamp, rest) = rest.split_once(' ').unwrap();
        assert_eq!(stamp.len(), 20, "{stamp}");
        assert!(
            stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T',
            "{stamp}"
        );
        rest.to_owned()
    }

    fn expected_tail(text: &str) -> String {
        let host = Header::new(false, false).hostname;
        format!("{host} websockify {} - - {text}", std::process::id())
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
    fn resolve_paths_makes_file_and_unix_socket_absolute() {
        let mut settings = LogSettings {
            log_file: Some(PathBuf::from("ws.log")),
            syslog: Some("run/log.sock".to_owned()),
            ..LogSettings::default()
        };
        settings.resolve_paths().unwrap();
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(settings.log_file, Some(cwd.join("ws.log")));
        assert_eq!(
            settings.syslog,
            Some(cwd.join("run/log.sock").to_string_lossy().into_owned())
        );
        let mut udp = syslog_to("127.0.0.1:514");
        udp.resolve_paths().unwrap();
        assert_eq!(udp.syslog.as_deref(), Some("127.0.0.1:514"));
    }

    #[test]
    fn sends_rfc5424_datagrams_to_a_udp_receiver() {
        let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
        receiver.set_read_timeout(Some(STEP)).unwrap();
        let mut settings = syslog_to(&receiver.local_addr().unwrap().to_string());
        log_in_span(&settings);
        settings.daemon = true;
        log_in_span(&settings);

        let mut buf = [0u8; 2048];
        for pri in ["14", "30"] {
            let n = receiver.recv(&mut buf).unwrap();
            let msg = text(&buf[..n]);
            assert_eq!(
                after_timestamp(&msg, pri),
                expected_tail("conn{id=7}: proxying bytes=12")
            );
        }
    }

    #[test]
    fn sends_legacy_datagrams_with_severity() {
        let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
        receiver.set_read_timeout(Some(STEP)).unwrap();
        let settings = LogSettings {
            legacy_syslog: true,
            ..syslog_to(&receiver.local_addr().unwrap().to_string())
        };
        let subscriber = build(EnvFilter::new("info"), &settings, None).unwrap();
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!("cannot\nconnect");
            tracing::debug!("filtered out");
            tracing::error!(code = 1011, "failed");
        });
        let pid = std::process::id();
        let mut buf = [0u8; 2048];
        let mut got = Vec::new();
        for _ in 0..2 {
            let n = receiver.recv(&mut buf).unwrap();
            got.push(text(&buf[..n]));
        }
        assert_eq!(
            got,
            [
                format!("<12>websockify[{pid}]: cannot connect"),
                format!("<11>websockify[{pid}]: failed code=1011"),
            ]
        );
    }

    #[test]
    fn sends_datagrams_to_a_unix_datagram_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let receiver = UnixDatagram::bind(&path).unwrap();
        receiver.set_read_timeout(Some(STEP)).unwrap();
        log_in_span(&syslog_to(path.to_str().unwrap()));
        let mut buf = [0u8; 2048];
        let n = receiver.recv(&mut buf).unwrap();
        let msg = text(&buf[..n]);
        assert_eq!(
            after_timestamp(&msg, "14"),
            expected_tail("conn{id=7}: proxying bytes=12")
        );
    }

    #[test]
    fn falls_back_to_a_unix_stream_socket_with_newline_framing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let listener = UnixListener::bind(&path).unwrap();
        let settings = LogSettings {
            legacy_syslog: true,
            ..syslog_to(path.to_str().unwrap())
        };
        let subscriber = build(EnvFilter::new("info"), &settings, None).unwrap();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("first");
            tracing::info!("second");
        });
        let (mut stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(STEP)).unwrap();
        let pid = std::process::id();
        let expected = format!("<14>websockify[{pid}]: first\n<14>websockify[{pid}]: second\n");
        let mut got = vec![0u8; expected.len()];
        io::Read::read_exact(&mut stream, &mut got).unwrap();
        assert_eq!(text(&got), expected);
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

    #[test]
    fn unreachable_syslog_server_is_named_in_the_error() {
        let err = build(EnvFilter::new("info"), &syslog_to("/nonexistent/log"), None)
            .err()
            .unwrap();
        assert!(
            format!("{err:#}").starts_with("cannot connect to syslog server /nonexistent/log: "),
            "{err:#}"
        );
    }

    #[test]
    fn unopenable_log_file_is_named_in_the_error() {
        let settings = LogSettings {
            log_file: Some(PathBuf::from("/nonexistent/ws.log")),
            ..LogSettings::default()
        };
        let err = build(EnvFilter::new("info"), &settings, None)
            .err()
            .unwrap();
        assert!(
            format!("{err:#}").starts_with("cannot open log file /nonexistent/ws.log: "),
            "{err:#}"
        );
    }

    /// A stderr stand-in the test can read.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn log_file_gets_appended_lines_without_ansi_even_beside_a_coloured_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ws.log");
        std::fs::write(&path, "earlier line\n").unwrap();
        let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
        receiver.set_read_timeout(Some(STEP)).unwrap();
        let settings = LogSettings {
            log_file: Some(path.clone()),
            ..syslog_to(&receiver.local_addr().unwrap().to_string())
        };
        let stderr = Captured::default();
        let writer = stderr.clone();
        let make = BoxMakeWriter::new(move || writer.clone());
        let subscriber = build(EnvFilter::new("info"), &settings, Some((make, true))).unwrap();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info_span!("conn", id = 3, peer = %"127.0.0.1:5000").in_scope(|| {
                tracing::info!(bytes = 12, "closed");
                tracing::warn!("second");
            });
        });

        let coloured = text(&stderr.0.lock().unwrap());
        assert!(coloured.contains('\x1b'), "the test needs ANSI on stderr");
        let log = std::fs::read_to_string(&path).unwrap();
        assert!(!log.contains('\x1b'), "{log:?}");
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(lines.len(), 3, "{log:?}");
        assert_eq!(lines[0], "earlier line");
        assert!(
            lines[1].ends_with(" INFO conn{id=3 peer=127.0.0.1:5000}: closed bytes=12"),
            "{}",
            lines[1]
        );
        assert!(lines[2].contains(" WARN conn{id=3 peer=127.0.0.1:5000}: second"));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o7000, 0);

        let mut buf = [0u8; 2048];
        let n = receiver.recv(&mut buf).unwrap();
        let msg = text(&buf[..n]);
        assert!(!msg.contains('\x1b'), "{msg:?}");
        assert!(msg.ends_with(" - - conn{id=3 peer=127.0.0.1:5000}: closed bytes=12"));
    }

    #[test]
    fn new_log_file_is_created_0644() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.log");
        let settings = LogSettings {
            log_file: Some(path.clone()),
            ..LogSettings::default()
        };
        let subscriber = build(EnvFilter::new("info"), &settings, None).unwrap();
        tracing::subscriber::with_default(subscriber, || tracing::info!("hello"));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        // The process umask can only take bits away.
        assert_eq!(mode & !0o644, 0, "{mode:o}");
        assert!(
            std::fs::read_to_string(&path)
                .unwrap()
                .ends_with(" INFO hello\n")
        );
    }
}
