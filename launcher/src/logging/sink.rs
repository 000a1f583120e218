//! Non-blocking, bounded output: log lines and `--traffic` tokens are queued for a writer
//! thread, so a sink that stops reading (a full pipe, a stalled disk) never blocks the thread
//! that logs, and so never a runtime thread.
//!
//! ```text
//! caller --try_send--> bounded queue (N chunks) --> writer thread --write(2)--> fd / file
//!           full? the chunk is dropped and counted; once a later batch gets through, the
//!           thread reports "N log lines dropped: ... was not reading" through `report`
//! ```
//!
//! Written by hand rather than with `tracing-appender`'s lossy `non_blocking`: that writer
//! counts drops but cannot say so in the log once the sink recovers, cannot swap its file for
//! logrotate, and flushes only when its guard is dropped. The queue is std's bounded channel,
//! lock-free on the sending side, so a `--traffic` token per frame takes no lock.

use std::io::{self, Write};
use std::os::fd::AsFd as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

/// Log lines lost since the start because a log sink (stderr, `--log-file`, `--syslog`) was not
/// taking them: a plain counter for a metric.
pub static DROPPED_LOG_LINES: AtomicU64 = AtomicU64::new(0);

/// Lines each log sink (stderr, `--log-file`) holds while it is not reading; more are dropped.
pub const QUEUE_LINES: usize = 1024;

/// Bytes gathered from the queue into one `write(2)`.
const BATCH: usize = 64 * 1024;

/// How long the writer waits after the first line of a batch for more to arrive: lines
/// appear at most this much later.
const GATHER: Duration = Duration::from_millis(2);

/// The stderr sink, started on first use.
static STDERR: OnceLock<Option<Sink>> = OnceLock::new();

/// Every sink ever started, for [`flush_all`] at exit.
static SINKS: Mutex<Vec<Weak<Shared>>> = Mutex::new(Vec::new());

/// What the writer thread tells its owner, as one line for the log.
pub type Report = Box<dyn Fn(&str) + Send>;

/// A destination the writer thread owns.
pub type Destination = Box<dyn Write + Send>;

/// How a sink describes itself and counts its losses.
pub struct Settings {
    /// Named in reports, e.g. "the log sink (stderr)".
    pub name: String,
    /// What a chunk is, in reports: "log lines", "traffic tokens".
    pub unit: &'static str,
    /// Chunks the queue holds before new ones are dropped.
    pub capacity: usize,
    /// A process-wide counter this sink's drops are added to (a metric).
    pub counter: &'static AtomicU64,
}

/// The sending side; cheap to clone. Dropping every clone lets the thread finish the queue
/// and exit.
#[derive(Clone)]
pub struct Sink {
    shared: Arc<Shared>,
    queue: SyncSender<Chunk>,
}

struct Shared {
    name: String,
    unit: &'static str,
    /// Chunks accepted into the queue.
    sent: AtomicU64,
    /// Chunks the thread has finished with (written or failed), with its condition variable.
    done: Mutex<u64>,
    done_changed: Condvar,
    /// Chunks dropped because the queue was full, since the start.
    dropped: AtomicU64,
    counter: &'static AtomicU64,
    /// A new destination for the thread to take before its next write ([`Sink::replace`]).
    replacement: Mutex<Option<Destination>>,
}

enum Chunk {
    Owned(Vec<u8>),
    Static(&'static str),
    /// Nothing to write: makes the thread look at `replacement`.
    Wake,
}

impl Sink {
    /// Starts the writer thread for `destination`.
    pub fn spawn(settings: Settings, destination: Destination, report: Report) -> io::Result<Sink> {
        let (queue, receiver) = std::sync::mpsc::sync_channel(settings.capacity.max(1));
        let shared = Arc::new(Shared {
            name: settings.name,
            unit: settings.unit,
            sent: AtomicU64::new(0),
            done: Mutex::new(0),
            done_changed: Condvar::new(),
            dropped: AtomicU64::new(0),
            counter: settings.counter,
            replacement: Mutex::new(None),
        });
        let thread = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("websockify-output".into())
            .spawn(move || thread.run(receiver, destination, &report))?;
        let mut sinks = SINKS.lock().unwrap_or_else(PoisonError::into_inner);
        sinks.retain(|sink| sink.strong_count() > 0);
        sinks.push(Arc::downgrade(&shared));
        Ok(Sink { shared, queue })
    }

    /// Queues a copy of `bytes`; false (and counted) when the queue is full.
    pub fn send(&self, bytes: &[u8]) -> bool {
        self.push(Chunk::Owned(bytes.to_vec()))
    }

    /// Queues a static text without copying it; false (and counted) when the queue is full.
    pub fn send_static(&self, text: &'static str) -> bool {
        self.push(Chunk::Static(text))
    }

    fn push(&self, chunk: Chunk) -> bool {
        match self.queue.try_send(chunk) {
            Ok(()) => {
                self.shared.sent.fetch_add(1, Ordering::Release);
                true
            }
            Err(TrySendError::Full(_)) => {
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                self.shared.counter.fetch_add(1, Ordering::Relaxed);
                false
            }
            // The thread is gone (it could not be kept alive); nothing to count against.
            Err(TrySendError::Disconnected(_)) => false,
        }
    }

    /// Chunks this sink has dropped since it started.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Hands the thread a new destination, used from its next write on (the old one is
    /// dropped, i.e. closed, then). Never waits for the thread.
    pub fn replace(&self, destination: Destination) {
        *self
            .shared
            .replacement
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(destination);
        // A full queue means the thread is busy and will look at the slot anyway.
        if self.queue.try_send(Chunk::Wake).is_ok() {
            self.shared.sent.fetch_add(1, Ordering::Release);
        }
    }

    /// Waits until everything queued so far is written, at most `timeout`; true if it was.
    pub fn flush(&self, timeout: Duration) -> bool {
        self.shared.flush(Instant::now() + timeout)
    }
}

/// Log lines for stderr: a sink writing to a duplicate of fd 2 (so that std's own `Stderr`,
/// used for messages at exit, is never held by a stalled writer). None if it cannot start.
pub fn stderr() -> Option<&'static Sink> {
    STDERR
        .get_or_init(|| {
            let fd = io::stderr().as_fd().try_clone_to_owned().ok()?;
            let settings = Settings {
                name: "the log sink (stderr)".into(),
                unit: "log lines",
                capacity: QUEUE_LINES,
                counter: &DROPPED_LOG_LINES,
            };
            Sink::spawn(
                settings,
                Box::new(std::fs::File::from(fd)),
                Box::new(log_report),
            )
            .ok()
        })
        .as_ref()
}

/// A sink's report as a warning in the log (through whatever subscriber is installed).
pub fn log_report(line: &str) {
    tracing::warn!("{line}");
}

/// Flushes every sink in the process (log sinks, `--traffic`), all within `timeout` together.
/// Returns false if one of them did not drain in time (its sink is not reading).
pub fn flush_all(timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let sinks: Vec<Arc<Shared>> = SINKS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .filter_map(Weak::upgrade)
        .collect();
    // Each sink gets its chance even after one timed out.
    let stalled = sinks.iter().filter(|sink| !sink.flush(deadline)).count();
    stalled == 0
}

impl Shared {
    fn flush(&self, deadline: Instant) -> bool {
        let target = self.sent.load(Ordering::Acquire);
        let done = self.done.lock().unwrap_or_else(PoisonError::into_inner);
        let timeout = deadline.saturating_duration_since(Instant::now());
        let (done, _) = self
            .done_changed
            .wait_timeout_while(done, timeout, |done| *done < target)
            .unwrap_or_else(PoisonError::into_inner);
        *done >= target
    }

    /// The writer thread: batches what is queued into writes of up to [`BATCH`] bytes.
    fn run(&self, queue: Receiver<Chunk>, mut destination: Destination, report: &Report) {
        let mut batch = Vec::with_capacity(BATCH);
        let mut reported = 0;
        let mut failing = false;
        while let Ok(first) = queue.recv() {
            // Let a burst gather: while this thread sleeps, senders find no receiver waiting
            // and wake nobody, so a busy server pays one wake-up per [`GATHER`] instead of one
            // per line (two lines a session).
            std::thread::sleep(GATHER);
            let mut taken = 1;
            append(&mut batch, &first);
            while batch.len() < BATCH
                && let Ok(next) = queue.try_recv()
            {
                append(&mut batch, &next);
                taken += 1;
            }
            if let Some(new) = self
                .replacement
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take()
            {
                destination = new;
            }
            let result = if batch.is_empty() {
                Ok(())
            } else {
                destination
                    .write_all(&batch)
                    .and_then(|()| destination.flush())
            };
            batch.clear();
            if batch.capacity() > 2 * BATCH {
                batch.shrink_to(BATCH);
            }
            match result {
                Ok(()) => {
                    failing = false;
                    // The sink took a write again: say what was lost while it did not.
                    let dropped = self.dropped.load(Ordering::Relaxed);
                    if dropped > reported {
                        report(&format!(
                            "{} {} dropped: {} was not reading",
                            dropped - reported,
                            self.unit,
                            self.name
                        ));
                        reported = dropped;
                    }
                }
                Err(err) if !failing => {
                    failing = true;
                    report(&format!("cannot write to {}: {err}", self.name));
                }
                Err(_) => {}
            }
            // After the report, so that a flush that returns has seen it made.
            *self.done.lock().unwrap_or_else(PoisonError::into_inner) += taken;
            self.done_changed.notify_all();
        }
        let _ = destination.flush();
    }
}

fn append(batch: &mut Vec<u8>, chunk: &Chunk) {
    match chunk {
        Chunk::Owned(bytes) => batch.extend_from_slice(bytes),
        Chunk::Static(text) => batch.extend_from_slice(text.as_bytes()),
        Chunk::Wake => {}
    }
}

/// The fmt layer asks for a writer per event and writes the whole formatted line at once.
impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Sink {
    type Writer = &'a Sink;

    fn make_writer(&'a self) -> &'a Sink {
        self
    }
}

impl Write for &Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // A full queue is not an error for the caller: the line is counted and reported later.
        self.send(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    const STEP: Duration = Duration::from_secs(10);

    static COUNTER: AtomicU64 = AtomicU64::new(0);

    fn settings(capacity: usize) -> Settings {
        Settings {
            name: "the test pipe".into(),
            unit: "test lines",
            capacity,
            counter: &COUNTER,
        }
    }

    /// Reports collected for the test to read.
    fn reports() -> (Report, std::sync::mpsc::Receiver<String>) {
        let (tx, rx) = std::sync::mpsc::channel();
        let tx = Mutex::new(tx);
        let report: Report = Box::new(move |line: &str| {
            let _ = tx.lock().unwrap().send(line.to_owned());
        });
        (report, rx)
    }

    fn pipe() -> (std::fs::File, std::fs::File) {
        let (read, write) = nix::unistd::pipe().unwrap();
        (std::fs::File::from(read), std::fs::File::from(write))
    }

    #[test]
    fn a_pipe_nobody_reads_never_blocks_the_sender_and_drops_are_reported_once_it_drains() {
        let (mut read, write) = pipe();
        let (report, reports) = reports();
        let sink = Sink::spawn(settings(8), Box::new(write), report).unwrap();
        let line = [b'x'; 1000];
        // Fill the pipe: each line is written before the next is sent, until one cannot be.
        let mut lines = 0;
        while sink.flush(Duration::from_millis(50)) {
            sink.send(&line);
            lines += 1;
            assert!(lines < 10_000, "the pipe never filled");
        }
        let start = Instant::now();
        for _ in 0..3000 {
            sink.send(&line);
        }
        assert!(start.elapsed() < STEP, "sending blocked");
        assert!(sink.dropped() > 0);
        assert!(
            !sink.flush(Duration::from_millis(50)),
            "a full pipe cannot drain"
        );

        // Drain the pipe in the background; the queued lines, then a new one, get through.
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            while read.read(&mut buf).is_ok_and(|n| n > 0) {}
        });
        assert!(sink.flush(STEP));
        let dropped = sink.dropped();
        assert!(sink.send(b"after\n"));
        assert!(sink.flush(STEP));
        // Drops may be reported in parts (a write can get through while the queue is full).
        let reported: u64 = reports
            .try_iter()
            .map(|report| {
                let count = report
                    .strip_suffix(" test lines dropped: the test pipe was not reading")
                    .unwrap_or_else(|| panic!("unexpected report {report:?}"));
                count.parse::<u64>().unwrap()
            })
            .sum();
        assert_eq!(reported, dropped);
        assert!(COUNTER.load(Ordering::Relaxed) >= dropped);
    }

    #[derive(Clone, Default)]
    struct Memory(Arc<Mutex<Vec<u8>>>);

    impl Write for Memory {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn chunks_arrive_in_order_and_flush_waits_for_them() {
        let memory = Memory::default();
        let (report, reports) = reports();
        let sink = Sink::spawn(settings(100_000), Box::new(memory.clone()), report).unwrap();
        let mut expected = Vec::new();
        for i in 0..10_000 {
            let text = format!("{i},");
            sink.send(text.as_bytes());
            sink.send_static("}");
            expected.extend_from_slice(text.as_bytes());
            expected.push(b'}');
        }
        assert!(sink.flush(STEP));
        assert_eq!(*memory.0.lock().unwrap(), expected);
        assert_eq!(sink.dropped(), 0);
        assert!(reports.try_recv().is_err());
    }

    #[test]
    fn replace_switches_destination_before_the_next_write() {
        let (first, second) = (Memory::default(), Memory::default());
        let (report, _reports) = reports();
        let sink = Sink::spawn(settings(16), Box::new(first.clone()), report).unwrap();
        sink.send(b"one\n");
        assert!(sink.flush(STEP));
        sink.replace(Box::new(second.clone()));
        sink.send(b"two\n");
        assert!(sink.flush(STEP));
        assert_eq!(*first.0.lock().unwrap(), b"one\n");
        assert_eq!(*second.0.lock().unwrap(), b"two\n");
    }

    struct Broken;

    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from_raw_os_error(libc::ENOSPC))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn write_errors_are_reported_once_per_outage() {
        let (report, reports) = reports();
        let sink = Sink::spawn(settings(16), Box::new(Broken), report).unwrap();
        for _ in 0..5 {
            sink.send(b"lost\n");
            assert!(sink.flush(STEP));
        }
        let report = reports.recv_timeout(STEP).unwrap();
        assert!(
            report.starts_with("cannot write to the test pipe: No space left on device"),
            "{report}"
        );
        assert!(reports.try_recv().is_err(), "reported more than once");
    }

    #[test]
    fn flush_all_includes_every_live_sink() {
        let memory = Memory::default();
        let (report, _reports) = reports();
        let sink = Sink::spawn(settings(16), Box::new(memory.clone()), report).unwrap();
        sink.send(b"at exit\n");
        // Other tests' sinks may be stalled on purpose: only ours must be written.
        flush_all(Duration::from_millis(200));
        assert!(sink.flush(STEP));
        assert_eq!(*memory.0.lock().unwrap(), b"at exit\n");
    }
}
