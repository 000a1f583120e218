//! Session recording (`--record FILE`) and traffic tokens (`--traffic`), byte for byte in the
//! formats of the Python websockify, so noVNC's playback page (`tests/vnc_playback.html`) plays
//! our recordings.
//!
//! # Recording format
//!
//! Each WebSocket session is written to `<FILE>.<n>` as a JavaScript source file:
//!
//! ```text
//! var VNC_frame_data = [
//! '}<ms>}<data>',          bytes from the client (written to the target)
//! '{<ms>{<data>',          bytes from the target (one frame to the client)
//! 'EOF'];
//! ```
//!
//! `<ms>` counts whole milliseconds since the session started and `<data>` is the payload
//! escaped as Python's `bytes.decode('latin1').encode('unicode_escape')` followed by
//! `.replace("'", "\\'")` (see [`escape`]), so a JavaScript parser gets the payload back as a
//! string whose char codes are the bytes.
//!
//! # Cost on the relay
//!
//! Lines are escaped straight into a per-session buffer, written to the file when it holds
//! 64 KiB or when a second has passed since the last write (checked whenever a line is
//! added, so no timer is needed), and at the end of the session. The write is a plain
//! blocking `write(2)` from the relay task: with the page cache behind it this is a short,
//! rare pause, much cheaper than handing each chunk to a blocking thread. A failed write (a
//! full disk, say) is logged once and ends the recording; the session itself goes on.
//!
//! # Traffic tokens
//!
//! [`traffic_legend`] prints upstream's legend at the start of a session and [`traffic`]
//! prints one token per event, without newlines. The partial target write prints `>.` as the
//! legend says (upstream's code prints `.>`). Both are queued for a writer thread (see
//! `logging::sink`): a stdout nobody reads drops tokens, counted in
//! [`DROPPED_TRAFFIC_TOKENS`], and never stalls a session.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsFd as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::logging::sink::{Settings, Sink, log_report};

/// The first line of every recording.
pub const HEADER: &str = "var VNC_frame_data = [\n";

/// The last line of every recording.
pub const TRAILER: &str = "'EOF'];\n";

/// Buffered bytes that trigger a write to the file.
const FLUSH_AT: usize = 64 * 1024;

/// Longest time lines stay buffered while frames keep coming.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// Payload escaped per step, so a huge payload never needs a huge buffer.
const ESCAPE_CHUNK: usize = 16 * 1024;

/// Existing recordings skipped in a row before a session goes unrecorded.
const MAX_SKIPPED: u32 = 100_000;

/// Client bytes held back while waiting for the end of their message; a longer message is
/// recorded as several lines.
const MAX_PENDING: usize = 64 * 1024;

/// Per-server recording settings: the absolute base path, and the number of the next
/// session (`<base>.1`, `<base>.2`, ...). Sessions are numbered in the order they start;
/// upstream numbers every accepted TCP connection, so its files have gaps where ours do not.
#[derive(Debug)]
pub struct Recorder {
    base: PathBuf,
    next: AtomicU64,
}

impl Recorder {
    /// Checks `--record FILE`: the path is made absolute (and normalised like Python's
    /// `os.path.abspath`, so a later `chdir`, e.g. by `--daemon`, does not move the files),
    /// and its directory must exist and be writable.
    pub fn new(base: &Path) -> anyhow::Result<Recorder> {
        if base.as_os_str().is_empty() {
            bail!("--record: empty file name");
        }
        let absolute = std::path::absolute(base)
            .with_context(|| format!("--record: cannot resolve {}", base.display()))?;
        let base = normalize(&absolute);
        let dir = base.parent().unwrap_or(Path::new("/"));
        match std::fs::metadata(dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => bail!("--record: {} is not a directory", dir.display()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                bail!("--record: directory {} does not exist", dir.display())
            }
            Err(err) => bail!("--record: cannot access directory {}: {err}", dir.display()),
        }
        nix::unistd::access(
            dir,
            nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
        )
        .map_err(|err| {
            anyhow::anyhow!(
                "--record: directory {} is not writable: {}",
                dir.display(),
                io::Error::from(err)
            )
        })?;
        Ok(Recorder {
            base,
            next: AtomicU64::new(1),
        })
    }

    /// The absolute base path; sessions are recorded to `<base>.<n>`.
    pub fn base(&self) -> &Path {
        &self.base
    }

    /// The file of session `n`.
    pub fn path_for(&self, n: u64) -> PathBuf {
        let mut name = OsString::from(self.base.as_os_str());
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    /// Creates the file of the next session (mode 0600) and buffers the header; the session
    /// clock starts now. An existing file is never opened: its number is skipped, so a
    /// recording of an earlier run is not truncated, and a planted `FILE.n -> victim` symlink
    /// is neither followed nor replaced (upstream truncates whatever is there). The error
    /// names the file.
    pub fn start(&self) -> io::Result<Recording> {
        for _ in 0..MAX_SKIPPED {
            let path = self.path_for(self.next.fetch_add(1, Ordering::Relaxed));
            let created = OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .mode(0o600)
                .open(&path);
            match created {
                Ok(file) => return Ok(Recording::new(path, file)),
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
                    tracing::debug!("not recording to {}: it exists", path.display());
                }
                Err(err) => {
                    return Err(io::Error::new(
                        err.kind(),
                        format!("{}: {err}", path.display()),
                    ));
                }
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{}.*: {MAX_SKIPPED} numbers in a row already exist; move old recordings away",
                self.base.display()
            ),
        ))
    }
}

/// Lexical normalisation: drops `.`, resolves `..` against the preceding component (never
/// above the root) and trailing slashes, as Python's `os.path.normpath`.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                if out.parent().is_some() {
                    out.pop();
                }
            }
            other => out.push(other),
        }
    }
    out
}

/// One session's recording. Dropping it finishes the file (writes `'EOF'];`).
#[derive(Debug)]
pub struct Recording {
    path: PathBuf,
    /// `None` once finished or after a write error.
    file: Option<File>,
    buf: Vec<u8>,
    /// Client bytes of a message that has not ended yet ([`Recording::client_part`]).
    pending: Vec<u8>,
    started: Instant,
    last_flush: Instant,
}

impl Recording {
    fn new(path: PathBuf, file: File) -> Recording {
        tracing::info!("opening record file: {}", path.display());
        let now = Instant::now();
        let mut buf = Vec::with_capacity(4096);
        buf.extend_from_slice(HEADER.as_bytes());
        Recording {
            path,
            file: Some(file),
            buf,
            pending: Vec::new(),
            started: now,
            last_flush: now,
        }
    }

    /// The file this session is recorded to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// False once finished, or after a write error stopped the recording.
    pub fn is_active(&self) -> bool {
        self.file.is_some()
    }

    /// Records one complete client message (or one chunk of client bytes): `'}<ms>}<data>',`.
    pub fn from_client(&mut self, data: &[u8]) {
        if self.file.is_some() {
            let now = Instant::now();
            self.flush_pending(now);
            self.line(b'}', now, data);
        }
    }

    /// Records client payload as it is decoded, one piece at a time: the pieces of a message
    /// are joined into one line, written when `message_end` is true (upstream writes one line
    /// per message). An empty final piece with nothing before it records an empty message.
    /// Messages longer than 64 KiB are split into several lines.
    pub fn client_part(&mut self, data: &[u8], message_end: bool) {
        if self.file.is_none() {
            return;
        }
        let now = Instant::now();
        if self.pending.len() + data.len() > MAX_PENDING && !self.pending.is_empty() {
            self.flush_pending(now);
        }
        if (message_end && self.pending.is_empty()) || data.len() > MAX_PENDING {
            // A whole message, or a piece too long to hold back (nothing is pending then).
            self.line(b'}', now, data);
        } else {
            self.pending.extend_from_slice(data);
            if message_end {
                self.flush_pending(now);
            }
        }
    }

    /// Records one frame's payload sent to the client (one target read): `'{<ms>{<data>',`.
    pub fn from_target(&mut self, data: &[u8]) {
        if self.file.is_some() {
            self.line(b'{', Instant::now(), data);
        }
    }

    /// Writes `'EOF'];` and everything buffered, and closes the file. Called again (or on
    /// drop) it does nothing.
    pub fn finish(&mut self) {
        if self.file.is_none() {
            return;
        }
        self.flush_pending(Instant::now());
        self.buf.extend_from_slice(TRAILER.as_bytes());
        self.write_out();
        self.file = None;
        self.buf = Vec::new();
    }

    /// Writes the held-back client bytes as a line of their own.
    fn flush_pending(&mut self, now: Instant) {
        if self.pending.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut self.pending);
        self.line(b'}', now, &pending);
        self.pending = pending;
        self.pending.clear();
    }

    /// Appends `'<mark><ms><mark><escaped data>',\n` and writes the buffer out when it is
    /// full or a second has passed since the last write.
    fn line(&mut self, mark: u8, now: Instant, data: &[u8]) {
        let ms = now.saturating_duration_since(self.started).as_millis();
        self.line_at(mark, ms, data);
        if self.buf.len() >= FLUSH_AT
            || now.saturating_duration_since(self.last_flush) >= FLUSH_EVERY
        {
            self.last_flush = now;
            self.write_out();
        }
    }

    fn line_at(&mut self, mark: u8, ms: u128, data: &[u8]) {
        if self.file.is_none() {
            return;
        }
        self.buf.push(b'\'');
        self.buf.push(mark);
        // Writing to a Vec cannot fail.
        let _ = write!(self.buf, "{ms}");
        self.buf.push(mark);
        for chunk in data.chunks(ESCAPE_CHUNK) {
            escape(chunk, &mut self.buf);
            if self.buf.len() >= FLUSH_AT {
                self.write_out();
                if self.file.is_none() {
                    return;
                }
            }
        }
        self.buf.extend_from_slice(b"',\n");
    }

    /// Writes the buffer to the file; on failure logs once and stops recording.
    fn write_out(&mut self) {
        let Some(file) = self.file.as_mut() else {
            return;
        };
        if self.buf.is_empty() {
            return;
        }
        match file.write_all(&self.buf) {
            Ok(()) => {
                self.buf.clear();
                if self.buf.capacity() > 4 * FLUSH_AT {
                    self.buf.shrink_to(FLUSH_AT);
                }
            }
            Err(err) => {
                tracing::warn!(
                    "recording stopped, cannot write {}: {err}",
                    self.path.display()
                );
                self.file = None;
                self.buf = Vec::new();
                self.pending = Vec::new();
            }
        }
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        self.finish();
    }
}

/// What [`escape`] writes for each byte: up to 4 characters (the rest is padding) and how
/// many of them count.
const ESCAPES: [([u8; 4], u8); 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut table = [([0u8; 4], 0u8); 256];
    let mut b = 0;
    while b < 256 {
        table[b] = match b as u8 {
            b'\\' => ([b'\\', b'\\', 0, 0], 2),
            b'\'' => ([b'\\', b'\'', 0, 0], 2),
            b'\t' => ([b'\\', b't', 0, 0], 2),
            b'\n' => ([b'\\', b'n', 0, 0], 2),
            b'\r' => ([b'\\', b'r', 0, 0], 2),
            c @ 0x20..=0x7e => ([c, 0, 0, 0], 1),
            c => (
                [b'\\', b'x', HEX[(c >> 4) as usize], HEX[(c & 15) as usize]],
                4,
            ),
        };
        b += 1;
    }
    table
};

/// Appends `data` escaped as Python's
/// `data.decode('latin1').encode('unicode_escape').decode('ascii').replace("'", "\\'")`:
/// printable ASCII as it is, except `\` as `\\` and `'` as `\'`; tab, newline and carriage
/// return as `\t`, `\n`, `\r`; every other byte as `\xNN` (lower-case hex).
pub fn escape(data: &[u8], out: &mut Vec<u8>) {
    const STEP: usize = 256;
    // Each byte's 4 table characters are copied whole and the position advanced by its
    // length: no branch per byte. The last copy needs 3 bytes of slack.
    let mut scratch = [0u8; STEP * 4 + 3];
    out.reserve(data.len());
    for chunk in data.chunks(STEP) {
        let mut pos = 0;
        for &b in chunk {
            let (chars, len) = &ESCAPES[usize::from(b)];
            scratch[pos..pos + 4].copy_from_slice(chars);
            pos += usize::from(*len);
        }
        out.extend_from_slice(&scratch[..pos]);
    }
}

/// Upstream's legend, printed to stdout at the start of each session with `--traffic`.
pub const TRAFFIC_LEGEND: &str = "
Traffic Legend:
    }  - Client receive
    }. - Client receive partial
    {  - Target receive

    >  - Target send
    >. - Target send partial
    <  - Client send
    <. - Client send partial
";

/// One `--traffic` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token {
    /// `}`: a client message was received.
    ClientReceive,
    /// `}.`: client bytes arrived but no message was complete.
    ClientReceivePartial,
    /// `{`: the target was read.
    TargetReceive,
    /// `>`: everything waiting for the target was written.
    TargetSend,
    /// `>.`: part of it was written (upstream's code prints `.>`, its legend `>.`).
    TargetSendPartial,
    /// `<`: a frame was written to the client.
    ClientSend,
    /// `<.`: part of a frame was written to the client.
    ClientSendPartial,
}

impl Token {
    /// The characters printed for this event.
    pub const fn as_str(self) -> &'static str {
        match self {
            Token::ClientReceive => "}",
            Token::ClientReceivePartial => "}.",
            Token::TargetReceive => "{",
            Token::TargetSend => ">",
            Token::TargetSendPartial => ">.",
            Token::ClientSend => "<",
            Token::ClientSendPartial => "<.",
        }
    }
}

/// `--traffic` tokens lost since the start because stdout was not reading: a metric.
pub static DROPPED_TRAFFIC_TOKENS: AtomicU64 = AtomicU64::new(0);

/// Tokens (or legends) queued for stdout while it is not reading; more are dropped.
const TRAFFIC_QUEUE: usize = 8192;

/// The `--traffic` output, started on first use; None if it cannot start.
static TRAFFIC: OnceLock<Option<Sink>> = OnceLock::new();

/// Stdout behind a non-blocking sink: a duplicate of fd 1, written by its own thread, so that a
/// stdout nobody reads costs dropped tokens (counted, reported in the log when it reads again)
/// and never a stalled session. Upstream prints each token with a blocking write and flush.
fn traffic_out() -> Option<&'static Sink> {
    TRAFFIC
        .get_or_init(|| {
            let fd = io::stdout().as_fd().try_clone_to_owned().ok()?;
            let settings = Settings {
                name: "stdout (--traffic)".into(),
                unit: "traffic tokens",
                capacity: TRAFFIC_QUEUE,
                counter: &DROPPED_TRAFFIC_TOKENS,
            };
            Sink::spawn(settings, Box::new(File::from(fd)), Box::new(log_report)).ok()
        })
        .as_ref()
}

/// Prints the traffic legend to stdout (queued, never blocking).
pub fn traffic_legend() {
    if let Some(out) = traffic_out() {
        out.send_static(TRAFFIC_LEGEND);
    }
}

/// Prints one traffic token to stdout (no newline; queued, never blocking).
pub fn traffic(token: Token) {
    if let Some(out) = traffic_out() {
        out.send_static(token.as_str());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Python's `unicode_escape` + quote replacement, written independently of [`escape`].
    fn python_escape(data: &[u8]) -> String {
        let mut s = String::new();
        for &b in data {
            match b {
                b'\\' => s.push_str("\\\\"),
                b'\'' => s.push_str("\\'"),
                b'\t' => s.push_str("\\t"),
                b'\n' => s.push_str("\\n"),
                b'\r' => s.push_str("\\r"),
                0x20..=0x7e => s.push(char::from(b)),
                _ => s.push_str(&format!("\\x{b:02x}")),
            }
        }
        s
    }

    fn escaped(data: &[u8]) -> String {
        let mut out = Vec::new();
        escape(data, &mut out);
        String::from_utf8(out).unwrap()
    }

    /// Decodes the body of a single-quoted JavaScript string literal into char codes.
    fn js_decode(literal: &str) -> Vec<u32> {
        let mut codes = Vec::new();
        let mut chars = literal.chars();
        while let Some(c) = chars.next() {
            assert_ne!(c, '\'', "unescaped quote in {literal:?}");
            assert!(c != '\n' && c != '\r', "raw line break in {literal:?}");
            if c != '\\' {
                codes.push(c as u32);
                continue;
            }
            let e = chars.next().expect("dangling backslash");
            let code = match e {
                'x' => {
                    let hex: String = chars.by_ref().take(2).collect();
                    u32::from_str_radix(&hex, 16).unwrap()
                }
                'n' => 10,
                't' => 9,
                'r' => 13,
                'b' => 8,
                'f' => 12,
                'v' => 11,
                '0' => 0,
                '\\' | '\'' | '"' => e as u32,
                other => panic!("unexpected escape \\{other}"),
            };
            codes.push(code);
        }
        codes
    }

    fn all_bytes() -> Vec<u8> {
        (0..=255u8).collect()
    }

    fn recorder(dir: &tempfile::TempDir) -> Recorder {
        Recorder::new(&dir.path().join("rec")).unwrap()
    }

    fn read(path: &Path) -> String {
        String::from_utf8(std::fs::read(path).unwrap()).unwrap()
    }

    /// Runs `f` with a subscriber that captures log output; returns what was logged.
    fn capture_logs(f: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl Write for Sink {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let sink = Sink::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let bytes = sink.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn escape_matches_upstream_example() {
        assert_eq!(escaped(b"hello'\x00\xff\n"), r"hello\'\x00\xff\n");
    }

    #[test]
    fn escape_every_byte_like_python() {
        for b in 0..=255u8 {
            assert_eq!(escaped(&[b]), python_escape(&[b]), "byte {b:#04x}");
        }
        let all = all_bytes();
        assert_eq!(escaped(&all), python_escape(&all));
        assert_eq!(escaped(b""), "");
        assert_eq!(escaped(b"plain text"), "plain text");
        assert_eq!(escaped(b"\\'\"\x7f\x80\x1b"), r#"\\\'"\x7f\x80\x1b"#);
        // Hex digits are lower case, as Python writes them.
        assert_eq!(escaped(b"\xab\xcd\xef"), r"\xab\xcd\xef");
    }

    #[test]
    fn escape_round_trips_through_a_js_literal_decoder() {
        let all = all_bytes();
        let mut data = all.clone();
        data.extend(all.iter().rev());
        data.extend_from_slice(b"''\\\\'\\x41\n\r\t");
        let codes = js_decode(&escaped(&data));
        let expected: Vec<u32> = data.iter().map(|&b| u32::from(b)).collect();
        assert_eq!(codes, expected);
        // Every output character is printable ASCII, so the literal stays on one line.
        assert!(escaped(&data).bytes().all(|b| (0x20..0x7f).contains(&b)));
    }

    #[test]
    fn recording_has_upstreams_exact_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let rec = recorder(&dir);
        let mut r = rec.start().unwrap();
        r.line_at(b'}', 1, b"hello'\x00\xff\n");
        r.line_at(b'{', 3, b"hello'\x00\xff\n");
        r.finish();
        assert_eq!(
            read(&rec.path_for(1)),
            "var VNC_frame_data = [\n\
             '}1}hello\\'\\x00\\xff\\n',\n\
             '{3{hello\\'\\x00\\xff\\n',\n\
             'EOF'];\n"
        );
    }

    #[test]
    fn header_and_eof_only_for_an_empty_session() {
        let dir = tempfile::tempdir().unwrap();
        let rec = recorder(&dir);
        let mut r = rec.start().unwrap();
        assert!(r.is_active());
        r.finish();
        assert!(!r.is_active());
        r.finish();
        r.from_target(b"after finish");
        drop(r);
        assert_eq!(read(&rec.path_for(1)), format!("{HEADER}{TRAILER}"));
    }

    #[test]
    fn live_lines_have_elapsed_milliseconds() {
        let dir = tempfile::tempdir().unwrap();
        let rec = recorder(&dir);
        let mut r = rec.start().unwrap();
        r.from_client(b"a");
        std::thread::sleep(Duration::from_millis(30));
        r.from_target(b"b");
        r.finish();
        let text = read(&rec.path_for(1));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4);
        let ms = |line: &str, mark: char| -> u64 {
            let body = line.strip_prefix('\'').unwrap().strip_prefix(mark).unwrap();
            body[..body.find(mark).unwrap()].parse().unwrap()
        };
        let first = ms(lines[1], '}');
        let second = ms(lines[2], '{');
        assert!(first < 30, "{first}");
        assert!(second >= 30 && second >= first, "{second}");
        assert!(lines[1].ends_with("}a',") && lines[2].ends_with("{b',"));
    }

    #[test]
    fn sessions_are_numbered_from_one_skipping_existing_files_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let rec = recorder(&dir);
        let earlier = "x".repeat(10_000);
        std::fs::write(dir.path().join("rec.2"), &earlier).unwrap();
        let first = rec.start().unwrap();
        let second = rec.start().unwrap();
        assert_eq!(first.path(), dir.path().join("rec.1"));
        assert_eq!(second.path(), dir.path().join("rec.3"));
        drop(first);
        drop(second);
        assert_eq!(read(&dir.path().join("rec.2")), earlier);
        assert_eq!(
            read(&dir.path().join("rec.3")),
            format!("{HEADER}{TRAILER}")
        );
        assert_eq!(rec.start().unwrap().path(), dir.path().join("rec.4"));
    }

    #[test]
    fn planted_symlinks_are_neither_followed_nor_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let rec = recorder(&dir);
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let missing = dir.path().join("would-be-created");
        std::os::unix::fs::symlink(&victim, rec.path_for(1)).unwrap();
        std::os::unix::fs::symlink(&missing, rec.path_for(2)).unwrap();
        let mut r = rec.start().unwrap();
        assert_eq!(r.path(), rec.path_for(3));
        r.from_client(b"keystrokes");
        r.finish();
        assert_eq!(read(&victim), "precious");
        assert!(!missing.exists(), "a dangling symlink was followed");
        for n in [1, 2] {
            let meta = std::fs::symlink_metadata(rec.path_for(n)).unwrap();
            assert!(meta.file_type().is_symlink(), "{n} replaced");
        }
        assert!(read(&rec.path_for(3)).contains("keystrokes"));
    }

    #[test]
    fn recordings_are_readable_by_the_owner_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let rec = recorder(&dir);
        drop(rec.start().unwrap());
        let mode = std::fs::metadata(rec.path_for(1))
            .unwrap()
            .permissions()
            .mode();
        // The umask can only take bits away from 0600.
        assert_eq!(mode & 0o177, 0, "{mode:o}");
    }

    #[test]
    fn drop_finishes_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let rec = recorder(&dir);
        {
            let mut r = rec.start().unwrap();
            r.line_at(b'{', 0, b"RFB 003.008\n");
            r.client_part(b"part", false);
        }
        assert_eq!(
            read(&rec.path_for(1)),
            format!("{HEADER}'{{0{{RFB 003.008\\n',\n'}}0}}part',\n{TRAILER}")
        );
    }

    #[test]
    fn client_parts_make_one_line_per_message() {
        let dir = tempfile::tempdir().unwrap();
        let rec = recorder(&dir);
        let mut r = rec.start().unwrap();
        r.client_part(b"ab", false);
        r.client_part(b"", false);
        r.client_part(b"c'", true);
        r.client_part(b"", true);
        r.client_part(b"whole", true);
        r.from_client(b"x");
        let big = vec![b'z'; MAX_PENDING + 10];
        r.client_part(&big[..100], false);
        r.client_part(&big[100..], true);
        r.finish();
        let text = read(&rec.path_for(1));
        let payloads: Vec<String> = text
            .lines()
            .skip(1)
            .take_while(|l| *l != "'EOF'];")
            .map(|l| {
                let body = &l[2..l.len() - 2];
                body[body.find('}').unwrap() + 1..].to_owned()
            })
            .collect();
        assert_eq!(payloads[..4], ["abc\\'", "", "whole", "x"]);
        // A message over the limit is split, nothing is lost.
        assert_eq!(payloads.len(), 6);
        assert_eq!(payloads[4].len() + payloads[5].len(), big.len());
        assert!(text.ends_with(TRAILER));
    }

    #[test]
    fn buffer_is_written_when_full_or_after_a_second() {
        let dir = tempfile::tempdir().unwrap();
        let rec = recorder(&dir);
        let path = rec.path_for(1);
        let mut r = rec.start().unwrap();
        r.from_target(b"small");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0, "still buffered");
        // 80 000 escaped bytes: the first 64 KiB go out in the middle of the line.
        r.from_target(&vec![0u8; 20_000]);
        let on_disk = std::fs::metadata(&path).unwrap().len();
        assert!(on_disk >= FLUSH_AT as u64 && on_disk < 80_000, "{on_disk}");
        r.from_target(b"tail");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), on_disk);
        r.last_flush = Instant::now() - Duration::from_secs(2);
        r.from_target(b"late");
        assert!(read(&path).ends_with("{late',\n"));
        r.finish();
        assert!(read(&path).ends_with(TRAILER));
    }

    #[test]
    fn write_error_is_logged_once_and_recording_stops() {
        let path = PathBuf::from("/tmp/session.1");
        let full = || File::options().write(true).open("/dev/full").unwrap();
        let logs = capture_logs(|| {
            let mut r = Recording::new(path.clone(), full());
            assert!(r.is_active());
            for _ in 0..10 {
                r.from_target(&vec![0xffu8; 30_000]);
                r.client_part(b"keys", true);
            }
            assert!(!r.is_active());
            r.from_client(b"more");
            r.finish();
        });
        assert_eq!(logs.matches("recording stopped").count(), 1, "{logs}");
        assert!(logs.contains("WARN"), "{logs}");
        assert!(logs.contains("/tmp/session.1"), "{logs}");
        assert!(logs.contains("No space left on device"), "{logs}");

        // Also when the only write is the final one.
        let logs = capture_logs(|| {
            let mut r = Recording::new(path.clone(), full());
            r.from_target(b"x");
            drop(r);
        });
        assert_eq!(logs.matches("recording stopped").count(), 1, "{logs}");
    }

    #[test]
    fn start_fails_with_the_file_name_when_the_directory_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        let rec = Recorder::new(&sub.join("rec")).unwrap();
        std::fs::remove_dir(&sub).unwrap();
        let err = rec.start().unwrap_err();
        assert!(
            err.to_string()
                .contains(&*sub.join("rec.1").to_string_lossy()),
            "{err}"
        );
    }

    #[test]
    fn recorder_checks_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let err = Recorder::new(&missing.join("rec")).unwrap_err().to_string();
        assert!(err.contains("does not exist") && err.contains(&*missing.to_string_lossy()));
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        let err = Recorder::new(&file.join("rec")).unwrap_err().to_string();
        assert!(err.contains("not a directory"), "{err}");
        assert!(Recorder::new(Path::new("")).is_err());
    }

    #[test]
    fn recorder_path_is_absolute_and_normalised() {
        let cwd = std::env::current_dir().unwrap();
        let rec = Recorder::new(Path::new("rec")).unwrap();
        assert_eq!(rec.base(), cwd.join("rec"));
        let dir = tempfile::tempdir().unwrap();
        let messy = format!("{}/./a/../rec/", dir.path().display());
        std::fs::create_dir(dir.path().join("a")).unwrap();
        let rec = Recorder::new(Path::new(&messy)).unwrap();
        assert_eq!(rec.base(), dir.path().join("rec"));
        assert_eq!(rec.path_for(12), dir.path().join("rec.12"));
        assert_eq!(normalize(Path::new("/../x/./y/..")), Path::new("/x"));
    }

    #[test]
    fn recording_is_send() {
        fn assert_send<T: Send + 'static>() {}
        assert_send::<Recording>();
        assert_send::<Recorder>();
    }

    /// noVNC loads the recording as a script; evaluate it with node and parse each frame as
    /// its playback does (direction, timestamp between the markers, payload char codes).
    #[test]
    fn node_reads_the_recording() {
        if std::process::Command::new("node")
            .arg("--version")
            .output()
            .is_err()
        {
            // CI sets WEBSOCKIFY_REQUIRE_ALL=1: there a missing program is a failure.
            assert!(
                std::env::var_os("WEBSOCKIFY_REQUIRE_ALL").is_none_or(|v| v != "1"),
                "node is not installed (apt-get install nodejs) and WEBSOCKIFY_REQUIRE_ALL=1"
            );
            eprintln!("node not installed: skipping");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let rec = recorder(&dir);
        let mut r = rec.start().unwrap();
        let all = all_bytes();
        let mut big: Vec<u8> = (0..150_000u32).map(|i| (i * 7 % 251) as u8).collect();
        big.extend_from_slice(b"'\\\0");
        let frames: Vec<(u8, u128, Vec<u8>)> = vec![
            (b'{', 0, b"RFB 003.008\n".to_vec()),
            (b'}', 5, b"RFB 003.008\n".to_vec()),
            (b'{', 17, all.clone()),
            (
                b'}',
                17,
                b"it's a \\path\\ with 'quotes' and \"dq\"".to_vec(),
            ),
            (b'{', 1234, vec![0, 0, 0]),
            (b'}', 1235, Vec::new()),
            (b'{', 99_999, (0x80..=0xffu8).collect()),
            (b'{', 100_000, big.clone()),
            (b'}', 100_001, b"}{}{'EOF'".to_vec()),
        ];
        for (mark, ms, data) in &frames {
            r.line_at(*mark, *ms, data);
        }
        r.finish();
        let script = r#"
            const fs = require('fs');
            const vm = require('vm');
            const ctx = {};
            vm.runInNewContext(fs.readFileSync(process.argv[1], 'latin1'), ctx);
            const out = [];
            for (const frame of ctx.VNC_frame_data) {
                if (frame === 'EOF') { out.push('EOF'); break; }
                const dir = frame[0];
                const end = frame.indexOf(dir, 1);
                const ts = parseInt(frame.slice(1, end), 10);
                const codes = [];
                for (let i = end + 1; i < frame.length; i++) codes.push(frame.charCodeAt(i));
                out.push([dir, ts, codes]);
            }
            out.push(ctx.VNC_frame_data.length);
            process.stdout.write(JSON.stringify(out));
        "#;
        let output = std::process::Command::new("node")
            .arg("-e")
            .arg(script)
            .arg(rec.path_for(1))
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let mut expected = String::from("[");
        for (mark, ms, data) in &frames {
            let codes: Vec<String> = data.iter().map(|b| b.to_string()).collect();
            expected.push_str(&format!(
                "[\"{}\",{ms},[{}]],",
                char::from(*mark),
                codes.join(",")
            ));
        }
        expected.push_str(&format!("\"EOF\",{}]", frames.len() + 1));
        let got = String::from_utf8(output.stdout).unwrap();
        assert!(got == expected, "node saw something else:\n{got:.400}");
    }

    #[test]
    fn traffic_legend_and_tokens() {
        assert_eq!(
            TRAFFIC_LEGEND,
            "\nTraffic Legend:\n    }  - Client receive\n    }. - Client receive partial\n    \
             {  - Target receive\n\n    >  - Target send\n    >. - Target send partial\n    \
             <  - Client send\n    <. - Client send partial\n"
        );
        let tokens = [
            Token::ClientReceive,
            Token::ClientReceivePartial,
            Token::TargetReceive,
            Token::TargetSend,
            Token::TargetSendPartial,
            Token::ClientSend,
            Token::ClientSendPartial,
        ];
        let mut out = String::new();
        for token in tokens {
            out.push_str(token.as_str());
            // Every token appears in the legend.
            assert!(TRAFFIC_LEGEND.contains(&format!("    {:<2} - ", token.as_str())));
        }
        assert_eq!(out, "}}.{>>.<<.");
    }
}
