//! Logging: one `tracing` subscriber that feeds stderr, `--log-file` and `--syslog`, none of
//! which can block the thread that logs.
//!
//! ```text
//! tracing event -> EnvFilter (-v = debug, RUST_LOG overrides)
//!   -> fmt layer -> Sink -> stderr     timestamp, level, spans, message; ANSI on a terminal only;
//!                                      or one JSON object per line (--log-format json)
//!   -> fmt layer -> Sink -> LogFile    the same lines, never ANSI, appended; reopened by reopen()
//!   -> fmt layer -> Syslog             spans + message + fields only, wrapped in a syslog header,
//!                                      one non-blocking datagram per event (dropped when busy)
//! ```
//!
//! A `Sink` (see `sink`) queues at most [`QUEUE_LINES`] lines for a writer thread: a stderr or
//! log file that stops reading costs dropped lines, counted in [`DROPPED_LOG_LINES`] and
//! reported once it reads again, never a stalled session. [`Throttle`] summarises repeated
//! lines. The syslog transport and upstream's message format are in `syslog`. Unlike upstream,
//! the syslog socket survives `-D` because logging is set up after detaching.

use std::fs::{File, OpenOptions};
use std::io::{self, IsTerminal as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use tracing::Subscriber;
use tracing_subscriber::fmt::format::{DefaultFields, JsonFields, Writer};
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::fmt::{FormatFields, MakeWriter};
use tracing_subscriber::layer::{Layered, SubscriberExt as _};
use tracing_subscriber::registry::Registry;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer, field::RecordFields};

pub mod sink;
mod syslog;
mod text;
mod throttle;

use sink::Sink;
pub use sink::{DROPPED_LOG_LINES, QUEUE_LINES};
use syslog::{Header, Syslog, SyslogDest};
pub use text::Elapsed;
use text::{TextFields, TextFormat};
pub use throttle::Throttle;

/// How long [`LogGuard`] waits at exit for queued lines to be written.
const EXIT_FLUSH: Duration = Duration::from_secs(1);

/// The `--log-file` of the installed logger, for [`reopen`].
static LOG_FILE: Mutex<Option<LogFile>> = Mutex::new(None);

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
    /// `--log-format`: the line format of stderr and `--log-file` (syslog keeps upstream's).
    pub format: LogFormat,
}

/// `--log-format text|json`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// `TIMESTAMP LEVEL span{fields}: message fields`, as upstream's lines read.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `message` and the event's fields at the
    /// top level, the innermost span's name and fields under `span`, all spans under `spans`.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(value: &str) -> Result<LogFormat, String> {
        match value {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!(
                "invalid --log-format '{value}': use 'text' or 'json'"
            )),
        }
    }
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
/// Keep the guard until exit: dropping it writes out what is still queued (bounded).
pub fn init(settings: &LogSettings, stderr: bool) -> anyhow::Result<LogGuard> {
    let default = if settings.verbose { "debug" } else { "info" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let stderr = match stderr {
        true => {
            let sink = sink::stderr().context("cannot start the writer thread for stderr")?;
            Some((BoxMakeWriter::new(sink.clone()), io::stderr().is_terminal()))
        }
        false => None,
    };
    let logger = build(filter, settings, stderr)?;
    logger
        .subscriber
        .try_init()
        .context("cannot install the logger")?;
    *LOG_FILE.lock().unwrap_or_else(PoisonError::into_inner) = logger.log_file;
    Ok(LogGuard(()))
}

/// Reopens the `--log-file` of the installed logger, for logrotate (on SIGHUP): from the next
/// write on, lines go to a file newly opened (created if needed) at the same path, and the old
/// one is closed. Returns that path, or None when there is no `--log-file`. On error (named
/// file) logging carries on into the old file. Does a blocking `open(2)`: from async code call
/// it in `spawn_blocking`.
pub fn reopen() -> anyhow::Result<Option<PathBuf>> {
    let log_file = LOG_FILE.lock().unwrap_or_else(PoisonError::into_inner);
    let Some(log_file) = log_file.as_ref() else {
        return Ok(None);
    };
    log_file.reopen()?;
    Ok(Some(log_file.path.clone()))
}

/// Returned by [`init`]; dropping it (at exit) waits up to a second for queued log lines and
/// `--traffic` output to be written.
#[must_use = "dropping the guard at once would flush the log too early"]
pub struct LogGuard(());

impl Drop for LogGuard {
    fn drop(&mut self) {
        sink::flush_all(EXIT_FLUSH);
    }
}

type Base = Layered<EnvFilter, Registry>;
type BoxedLayer = Box<dyn Layer<Base> + Send + Sync>;

/// A built subscriber and the handle of its `--log-file`.
struct Logger<S> {
    subscriber: S,
    log_file: Option<LogFile>,
}

/// Builds the subscriber; `stderr` is the human-format sink and whether it gets ANSI colours.
fn build(
    filter: EnvFilter,
    settings: &LogSettings,
    stderr: Option<(BoxMakeWriter, bool)>,
) -> anyhow::Result<Logger<impl Subscriber + Send + Sync + 'static>> {
    let mut layers: Vec<BoxedLayer> = Vec::new();
    if let Some((writer, ansi)) = stderr {
        layers.push(line_layer::<_, STDERR>(writer, settings.format, ansi));
    }
    let log_file = match &settings.log_file {
        Some(path) => Some(LogFile::open(path)?),
        None => None,
    };
    if let Some(log_file) = &log_file {
        layers.push(line_layer::<_, FILE>(
            log_file.sink.clone(),
            settings.format,
            false,
        ));
    }
    if let Some(spec) = &settings.syslog {
        let header = Header::new(settings.daemon, settings.legacy_syslog);
        layers.push(
            tracing_subscriber::fmt::layer()
                .fmt_fields(Fields::<TextFields, SYSLOG>::default())
                .event_format(TextFormat { stamped: false })
                .with_writer(Syslog::connect(spec, header)?)
                .with_ansi(false)
                .boxed(),
        );
    }
    Ok(Logger {
        subscriber: tracing_subscriber::registry().with(filter).with(layers),
        log_file,
    })
}

/// The layer writing whole lines (stderr, `--log-file`) in `format`; `ansi` colours text.
/// `SINK` tells the layers' span-field caches apart (see [`Fields`]).
fn line_layer<W, const SINK: u8>(writer: W, format: LogFormat, ansi: bool) -> BoxedLayer
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let layer = tracing_subscriber::fmt::layer().with_target(false);
    match format {
        LogFormat::Json => layer
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .fmt_fields(Fields::<JsonFields, SINK>::default())
            .with_ansi(false)
            .with_writer(writer)
            .boxed(),
        // Colours (a terminal) take the stock formatter; plain lines our faster one.
        LogFormat::Text if ansi => layer
            .fmt_fields(Fields::<DefaultFields, SINK>::default())
            .with_ansi(true)
            .with_writer(writer)
            .boxed(),
        LogFormat::Text => layer
            .fmt_fields(Fields::<TextFields, SINK>::default())
            .event_format(TextFormat { stamped: true })
            .with_ansi(false)
            .with_writer(writer)
            .boxed(),
    }
}

/// Tags of the sinks, for [`Fields`].
const STDERR: u8 = 0;
const FILE: u8 = 1;
const SYSLOG: u8 = 2;

/// A field formatter under a type of its own per sink. Each fmt layer caches a span's
/// formatted fields in the span, keyed by the formatter's type: two layers with the same type
/// would both append to one cache (a field recorded later, such as the client address, then
/// shows twice), and the coloured stderr layer's ANSI codes would reach the file and syslog.
#[derive(Default)]
struct Fields<F, const SINK: u8>(F);

impl<'w, F, const SINK: u8> FormatFields<'w> for Fields<F, SINK>
where
    F: for<'a> FormatFields<'a>,
{
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> std::fmt::Result {
        self.0.format_fields(writer, fields)
    }

    fn add_fields(
        &self,
        current: &'w mut tracing_subscriber::fmt::FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> std::fmt::Result {
        // Delegates with the inner formatter's own separator rules (JSON merges objects).
        let mut inner =
            tracing_subscriber::fmt::FormattedFields::<F>::new(std::mem::take(&mut current.fields));
        let result = <F as FormatFields<'_>>::add_fields(&self.0, &mut inner, fields);
        current.fields = inner.fields;
        result
    }
}

/// `--log-file`: lines appended by a writer thread, batched into few `write(2)`s.
struct LogFile {
    path: PathBuf,
    sink: Sink,
}

impl LogFile {
    fn open(path: &Path) -> anyhow::Result<LogFile> {
        let file = open_log_file(path)?;
        let settings = sink::Settings {
            name: format!("the log file {}", path.display()),
            unit: "log lines",
            capacity: QUEUE_LINES,
            counter: &DROPPED_LOG_LINES,
        };
        let sink = Sink::spawn(settings, Box::new(file), Box::new(sink::log_report))
            .with_context(|| format!("cannot start the writer for log file {}", path.display()))?;
        Ok(LogFile {
            path: path.to_owned(),
            sink,
        })
    }

    /// Opens the path anew and hands the file to the writer thread, which switches to it
    /// before its next write.
    fn reopen(&self) -> anyhow::Result<()> {
        let file = open_log_file(&self.path)?;
        self.sink.replace(Box::new(file));
        Ok(())
    }
}

/// Opens `path` for appending, creating it 0644. A symbolic link is refused rather than
/// followed: a link planted where the log goes must not make us append to its target.
fn open_log_file(path: &Path) -> anyhow::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o644)
        .open(path)
        .map_err(|err| match err.raw_os_error() {
            Some(libc::ELOOP) => anyhow::anyhow!(
                "cannot open log file {}: it is a symbolic link, which websockify does not \
                 follow; give the real path",
                path.display()
            ),
            _ => {
                anyhow::Error::new(err).context(format!("cannot open log file {}", path.display()))
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::unix::fs::PermissionsExt as _;
    use std::os::unix::net::UnixDatagram;
    use std::os::unix::net::UnixListener;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    const STEP: Duration = Duration::from_secs(5);

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
        let subscriber = build(EnvFilter::new("debug"), settings, None)
            .unwrap()
            .subscriber;
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
        let subscriber = build(EnvFilter::new("info"), &settings, None)
            .unwrap()
            .subscriber;
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
        let subscriber = build(EnvFilter::new("info"), &settings, None)
            .unwrap()
            .subscriber;
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
        let Logger {
            subscriber,
            log_file,
        } = build(EnvFilter::new("info"), &settings, Some((make, true))).unwrap();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info_span!("conn", id = 3, peer = %"127.0.0.1:5000").in_scope(|| {
                tracing::info!(bytes = 12, "closed");
                tracing::warn!("second");
            });
        });
        assert!(log_file.unwrap().sink.flush(STEP));

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
        let Logger {
            subscriber,
            log_file,
        } = build(EnvFilter::new("info"), &settings, None).unwrap();
        tracing::subscriber::with_default(subscriber, || tracing::info!("hello"));
        assert!(log_file.unwrap().sink.flush(STEP));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        // The process umask can only take bits away.
        assert_eq!(mode & !0o644, 0, "{mode:o}");
        assert!(
            std::fs::read_to_string(&path)
                .unwrap()
                .ends_with(" INFO hello\n")
        );
    }

    #[test]
    fn log_format_parses_text_and_json_only() {
        assert_eq!("text".parse(), Ok(LogFormat::Text));
        assert_eq!("json".parse(), Ok(LogFormat::Json));
        assert_eq!(LogFormat::default(), LogFormat::Text);
        let err = "JSON".parse::<LogFormat>().unwrap_err();
        assert_eq!(err, "invalid --log-format 'JSON': use 'text' or 'json'");
    }

    /// Parses every line of `text` as a JSON object.
    fn json_lines(text: &str) -> Vec<serde_json::Map<String, serde_json::Value>> {
        text.lines()
            .map(|line| match serde_json::from_str(line) {
                Ok(serde_json::Value::Object(object)) => object,
                other => panic!("not a JSON object: {line:?} ({other:?})"),
            })
            .collect()
    }

    #[test]
    fn json_lines_parse_and_carry_event_and_span_fields() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ws.log");
        let settings = LogSettings {
            log_file: Some(path.clone()),
            format: LogFormat::Json,
            ..LogSettings::default()
        };
        let stderr = Captured::default();
        let writer = stderr.clone();
        let make = BoxMakeWriter::new(move || writer.clone());
        // Even on a terminal JSON has no colour codes.
        let Logger {
            subscriber,
            log_file,
        } = build(EnvFilter::new("info"), &settings, Some((make, true))).unwrap();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info_span!("conn", id = 3, peer = %"127.0.0.1:5000").in_scope(|| {
                tracing::info!(
                    duration = ?Duration::from_millis(1500),
                    to_target = 12,
                    to_client = 34,
                    code = 1000,
                    target = "localhost:5900",
                    "session closed: {}",
                    "Target closed"
                );
                tracing::warn!("a \"quoted\"\nline");
            });
            tracing::info!("outside any session");
        });
        assert!(log_file.unwrap().sink.flush(STEP));

        let from_stderr = text(&stderr.0.lock().unwrap());
        let from_file = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            json_lines(&from_stderr).len(),
            json_lines(&from_file).len(),
            "{from_stderr}\n{from_file}"
        );
        for output in [from_stderr, from_file] {
            assert!(!output.contains('\x1b'), "{output:?}");
            let lines = json_lines(&output);
            assert_eq!(lines.len(), 3, "{output}");
            let closed = &lines[0];
            let timestamp = closed["timestamp"].as_str().unwrap();
            assert!(
                timestamp.ends_with('Z') && timestamp.contains('T'),
                "{timestamp}"
            );
            assert_eq!(closed["level"], "INFO");
            assert_eq!(closed["message"], "session closed: Target closed");
            assert_eq!(closed["to_target"], 12);
            assert_eq!(closed["to_client"], 34);
            assert_eq!(closed["code"], 1000);
            assert_eq!(closed["duration"], "1.5s");
            assert_eq!(closed["target"], "localhost:5900");
            assert_eq!(closed["span"]["name"], "conn");
            assert_eq!(closed["span"]["id"], 3);
            assert_eq!(closed["span"]["peer"], "127.0.0.1:5000");
            assert_eq!(closed["spans"][0]["peer"], "127.0.0.1:5000");

            assert_eq!(lines[1]["level"], "WARN");
            assert_eq!(lines[1]["message"], "a \"quoted\"\nline");
            assert_eq!(lines[1]["span"]["id"], 3);

            assert_eq!(lines[2]["message"], "outside any session");
            assert!(!lines[2].contains_key("span"), "{:?}", lines[2]);
        }
    }

    #[test]
    fn log_file_that_is_a_symlink_is_refused_and_its_target_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious\n").unwrap();
        let path = dir.path().join("ws.log");
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        let settings = LogSettings {
            log_file: Some(path.clone()),
            ..LogSettings::default()
        };
        let err = build(EnvFilter::new("info"), &settings, None)
            .err()
            .unwrap();
        let message = format!("{err:#}");
        assert!(
            message.starts_with(&format!("cannot open log file {}: ", path.display()))
                && message.contains("symbolic link"),
            "{message}"
        );
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    }

    #[test]
    fn reopen_moves_to_a_new_file_after_logrotate_renamed_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ws.log");
        let rotated = dir.path().join("ws.log.1");
        let settings = LogSettings {
            log_file: Some(path.clone()),
            ..LogSettings::default()
        };
        let Logger {
            subscriber,
            log_file,
        } = build(EnvFilter::new("info"), &settings, None).unwrap();
        let log_file = log_file.unwrap();
        let dispatch = tracing::Dispatch::new(subscriber);
        let log = |message: &str| {
            tracing::dispatcher::with_default(&dispatch, || tracing::info!("{message}"));
            assert!(log_file.sink.flush(STEP));
        };
        log("before rotation");
        std::fs::rename(&path, &rotated).unwrap();
        log("still the old file");
        log_file.reopen().unwrap();
        log("after rotation");
        let old = std::fs::read_to_string(&rotated).unwrap();
        let new = std::fs::read_to_string(&path).unwrap();
        assert_eq!(old.lines().count(), 2, "{old}");
        assert!(old.contains("before rotation") && old.contains("still the old file"));
        assert_eq!(new.lines().count(), 1, "{new}");
        assert!(new.ends_with(" INFO after rotation\n"), "{new}");

        // A reopen that fails says why and leaves logging on the file it had.
        std::fs::rename(&path, &rotated).unwrap();
        std::os::unix::fs::symlink(dir.path().join("victim"), &path).unwrap();
        let err = log_file.reopen().unwrap_err();
        assert!(format!("{err:#}").contains("symbolic link"), "{err:#}");
        log("kept going");
        assert!(
            std::fs::read_to_string(&rotated)
                .unwrap()
                .ends_with(" INFO kept going\n")
        );
        assert!(!dir.path().join("victim").exists());
    }

    #[test]
    fn reopen_without_an_installed_log_file_does_nothing() {
        // Unit tests never install the global logger.
        assert!(reopen().unwrap().is_none());
    }
}
