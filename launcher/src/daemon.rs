//! Running in the background (`-D`) and the `--pid-file`.
//!
//! Upstream detaches with fork, `setsid`, fork. `fork` is `unsafe` in Rust (only sound while
//! single-threaded) and this crate forbids unsafe code, so we detach by re-executing ourselves
//! twice with `std::process::Command`, which gives the same process tree:
//!
//! ```text
//! stage 0  the command the user ran: spawns stage 1 (stdin, stderr /dev/null; stdout a pipe),
//!          waits up to READY_TIMEOUT for "ready" or "error MSG" on the pipe, exits 0 or 1
//! stage 1  WEBSOCKIFY_DAEMON_STAGE=1: setsid() (new session, no controlling terminal),
//!          spawns stage 2 into that session, exits at once
//! stage 2  WEBSOCKIFY_DAEMON_STAGE=2: not a session leader, so it can never regain a terminal;
//!          reparented to init; umask(0), chdir, stdout -> /dev/null; `daemonize` returns here
//! ```
//!
//! Each stage re-runs `main` with the same arguments, so `main` must call [`daemonize`] before
//! anything with side effects (runtime, threads, files, sockets) and after making relative
//! paths absolute. Stage 2 sends `pid N` at once, then `ready` ([`Daemon::ready`], after the
//! listener is bound) or `error MSG` ([`Daemon::failed`]); if the pipe closes first, stage 0
//! reports that the daemon exited during start-up.
//!
//! The [`PidFile`] is held under an exclusive `flock` for the life of the process, so a second
//! instance given the same file refuses to start (naming the first) instead of overwriting it,
//! and its failed start never removes the file of the instance that is running.

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead as _, BufReader, Read as _, Seek as _, Write as _};
use std::os::fd::AsFd as _;
use std::os::unix::fs::{FileExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg, OFlag};
use nix::sys::stat::Mode;

/// The environment variable that tells a re-executed copy which stage it is. Programs that
/// the daemon starts (wrap mode, plugins) should not inherit it: `.env_remove(STAGE_ENV)`.
pub const STAGE_ENV: &str = "WEBSOCKIFY_DAEMON_STAGE";

/// How long the command the user ran waits for the daemon to report that it is listening.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Detaches like upstream's `-D` (see the module docs) and returns in the detached process
/// only, with the working directory `chdir` (upstream: the `--web` directory, else `/`),
/// umask 0, stdout and stderr on `/dev/null`, and stdin on `/dev/null` unless `keep_stdin`
/// (`--inetd`, whose listening socket is stdin). The command the user ran exits inside this
/// call: 0 once the daemon is ready, or it returns the daemon's start-up error for `main` to
/// print. Call it before the tokio runtime or any thread starts.
pub fn daemonize(chdir: &Path, keep_stdin: bool) -> anyhow::Result<Daemon> {
    match std::env::var_os(STAGE_ENV) {
        None => launch(keep_stdin),
        Some(stage) if stage == "1" => new_session(),
        Some(stage) if stage == "2" => detach(chdir),
        Some(stage) => bail!("unexpected {STAGE_ENV}={}", stage.to_string_lossy()),
    }
}

/// The detached process's line back to the command the user ran. Dropping it without
/// calling [`Daemon::ready`] reports that start-up failed.
#[derive(Debug)]
pub struct Daemon {
    pipe: File,
}

impl Daemon {
    /// Tells the waiting command that the daemon is up (call after binding the listener).
    pub fn ready(self) {
        self.send("ready");
    }

    /// Tells the waiting command that start-up failed; it prints `websockify: MESSAGE`.
    pub fn failed(self, message: &str) {
        self.send(&format!("error {message}"));
    }

    /// Best effort: the waiting command may have timed out and gone.
    fn send(&self, line: &str) {
        let line = format!("{}\n", line.replace(['\n', '\r'], " "));
        let _ = (&self.pipe).write_all(line.as_bytes());
    }
}

/// Stage 0: starts stage 1 and waits for stage 2's report. Exits 0 on success.
fn launch(keep_stdin: bool) -> anyhow::Result<Daemon> {
    let (read, write) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).context("cannot create a pipe for the daemon")?;
    {
        // The Command holds our copy of the write end: it must be gone before we read, or the
        // pipe never reports end of file.
        let mut command = reexec("1")?;
        command
            .stdin(if keep_stdin {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::from(write))
            .stderr(Stdio::null());
        command
            .spawn()
            .context("cannot start the background process")?;
    }
    match wait_for_report(File::from(read), READY_TIMEOUT) {
        Report::Ready(_) => std::process::exit(0),
        Report::Failed(message) => Err(anyhow!(message)),
        Report::Exited => Err(anyhow!(
            "the daemon exited during start-up (see --log-file or --syslog for why)"
        )),
        Report::Timeout(pid) => {
            let stopped = pid
                .and_then(|pid| i32::try_from(pid).ok())
                .map(nix::unistd::Pid::from_raw)
                .is_some_and(|pid| {
                    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).is_ok()
                });
            let what = if stopped { "; stopped it" } else { "" };
            Err(anyhow!(
                "the daemon did not report ready within {} s{what}",
                READY_TIMEOUT.as_secs()
            ))
        }
    }
}

/// Stage 1: a new session without a terminal, then stage 2 inside it. Never returns: errors go
/// up the pipe (our stdout), since stderr is /dev/null here.
fn new_session() -> ! {
    let result = nix::unistd::setsid()
        .context("cannot start a new session")
        .and_then(|_| reexec("2"))
        .and_then(|mut command| {
            command
                .stdin(Stdio::inherit())
                .stdout(Stdio::inherit())
                .stderr(Stdio::null())
                .spawn()
                .context("cannot start the background process")
        });
    match result {
        Ok(_) => std::process::exit(0),
        Err(err) => {
            let _ = writeln!(
                io::stdout(),
                "error {}",
                format!("{err:#}").replace('\n', " ")
            );
            let _ = io::stdout().flush();
            std::process::exit(1)
        }
    }
}

/// Stage 2: takes the pipe from stdout, reports its pid, then settles in.
fn detach(chdir: &Path) -> anyhow::Result<Daemon> {
    let pipe = io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .context("cannot take the start-up pipe")?;
    let daemon = Daemon {
        pipe: File::from(pipe),
    };
    daemon.send(&format!("pid {}", std::process::id()));
    let settle = || -> anyhow::Result<()> {
        let keep = std::os::fd::AsRawFd::as_raw_fd(&daemon.pipe);
        let closed = close_inherited(keep).context("cannot close inherited descriptors")?;
        INHERITED_CLOSED.store(closed, std::sync::atomic::Ordering::Relaxed);
        nix::sys::stat::umask(Mode::empty());
        nix::unistd::chdir(chdir)
            .with_context(|| format!("cannot change directory to {}", chdir.display()))?;
        let null = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .context("cannot open /dev/null")?;
        nix::unistd::dup2_stdout(&null).context("cannot redirect stdout to /dev/null")?;
        nix::unistd::dup2_stderr(&null).context("cannot redirect stderr to /dev/null")?;
        Ok(())
    };
    match settle() {
        Ok(()) => Ok(daemon),
        Err(err) => {
            daemon.failed(&format!("{err:#}"));
            Err(err)
        }
    }
}

/// How many inherited descriptors the daemon closed at start-up (logged once logging is up).
pub static INHERITED_CLOSED: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(0);

/// Closes every descriptor above stderr except `keep` (the start-up pipe), as upstream's
/// daemonize does: a daemon must not hold the terminal session's files, sockets or pipes
/// open (a pipe kept open makes the shell or CI job that started it wait forever). The
/// listeners are opened later, and an `--inetd` socket is stdin. Returns how many it closed.
#[allow(unsafe_code)]
fn close_inherited(keep: std::os::fd::RawFd) -> io::Result<usize> {
    // Listed first and the directory closed before closing anything, so its own descriptor
    // (in the list) is gone and gets EBADF below.
    let fds: Vec<std::os::fd::RawFd> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd > 2 && fd != keep)
        .collect();
    let mut closed = 0;
    for fd in fds {
        // SAFETY: stage 2 is still single-threaded (no runtime, logging or other thread
        // exists yet, see `daemonize`), and no Rust object owns these descriptors: they were
        // inherited across exec and never wrapped, except `keep`, which is skipped. Closing a
        // number that is not open (the directory's) only returns EBADF.
        if unsafe { libc::close(fd) } == 0 {
            closed += 1;
        }
    }
    Ok(closed)
}

/// Our own executable with our arguments and `argv[0]`, marked as `stage`.
fn reexec(stage: &str) -> anyhow::Result<Command> {
    // /proc/self/exe still works if the binary was replaced or deleted since we started.
    let exe = Path::new("/proc/self/exe");
    let exe = if exe.exists() {
        exe.to_owned()
    } else {
        std::env::current_exe().context("cannot find our own executable")?
    };
    let mut args = std::env::args_os();
    let mut command = Command::new(exe);
    if let Some(arg0) = args.next() {
        command.arg0(arg0);
    }
    command.args(args).env(STAGE_ENV, OsStr::new(stage));
    Ok(command)
}

/// What stage 0 learnt from the pipe.
#[derive(Debug, PartialEq, Eq)]
enum Report {
    /// `ready` (with the pid if it was sent).
    Ready(Option<u32>),
    /// `error MSG`.
    Failed(String),
    /// The pipe closed without either.
    Exited,
    /// Neither within the time limit.
    Timeout(Option<u32>),
}

/// Reads report lines until one decides, the pipe closes, or `timeout` passes.
fn wait_for_report(pipe: File, timeout: Duration) -> Report {
    let (lines, receive) = mpsc::channel();
    // A thread gives the read a time limit; if it times out, we exit and it goes with us.
    let spawned = std::thread::Builder::new()
        .name("daemon-report".into())
        .spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
    if spawned.is_err() {
        return Report::Exited;
    }
    let deadline = Instant::now() + timeout;
    let mut pid = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match receive.recv_timeout(left) {
            Ok(line) => {
                if line == "ready" {
                    return Report::Ready(pid);
                } else if let Some(message) = line.strip_prefix("error ") {
                    return Report::Failed(message.to_owned());
                } else if let Some(n) = line.strip_prefix("pid ") {
                    pid = n.parse().ok();
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => return Report::Timeout(pid),
            Err(mpsc::RecvTimeoutError::Disconnected) => return Report::Exited,
        }
    }
}

/// `--pid-file FILE`: holds our pid while we run, under an exclusive `flock` that a second
/// instance cannot take; removed on drop if it is still our file and still names us.
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
    pid: u32,
    /// The open file, locked until we exit (the lock goes with the descriptor).
    file: Flock<File>,
}

impl PidFile {
    /// Takes the pid file and writes our pid and a newline (mode 0644 when created). Refuses,
    /// naming the other pid, when another process holds the file's lock or the file names
    /// another live process (an instance that does not lock, e.g. upstream's). A file naming a
    /// process that is gone is stale and replaced. Symbolic links are not followed. A relative
    /// path is taken from the current directory, which [`daemonize`] changes: make it absolute
    /// first.
    pub fn create(path: &Path) -> anyhow::Result<PidFile> {
        let pid = std::process::id();
        let fail = || format!("cannot write pid file {}", path.display());
        // Another instance may unlink the file between our open and our lock: then the lock is
        // on a file nobody sees, so open the path again.
        for _ in 0..3 {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .custom_flags(libc::O_NOFOLLOW)
                .mode(0o644)
                .open(path)
                .with_context(fail)?;
            let file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(locked) => locked,
                Err((file, Errno::EWOULDBLOCK)) => {
                    let holder = match read_pid(&file) {
                        Some(other) => format!("websockify process {other}"),
                        None => "another process".to_owned(),
                    };
                    bail!(
                        "pid file {} is locked by {holder}, which is still running; stop it or \
                         choose another --pid-file",
                        path.display()
                    );
                }
                Err((_, errno)) => {
                    return Err(io::Error::from(errno)).with_context(fail);
                }
            };
            if !same_file(path, &file) {
                continue;
            }
            match read_pid(&file) {
                Some(other) if other != pid && is_alive(other) => bail!(
                    "pid file {} names process {other}, which is still running; stop it, or \
                     remove the file if that process is not websockify",
                    path.display()
                ),
                Some(other) if other != pid => {
                    tracing::info!(
                        "replacing stale pid file {} (process {other} is gone)",
                        path.display()
                    );
                }
                _ => {}
            }
            file.set_len(0).with_context(fail)?;
            file.write_all_at(format!("{pid}\n").as_bytes(), 0)
                .with_context(fail)?;
            return Ok(PidFile {
                path: path.to_owned(),
                pid,
                file,
            });
        }
        bail!(
            "cannot write pid file {}: it keeps being replaced by another process",
            path.display()
        )
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        // Leave it alone if it is no longer our file, or no longer names us.
        if same_file(&self.path, &self.file) && read_pid(&self.file) == Some(self.pid) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The pid in a pid file (first line, surrounding blanks ignored), if it holds one.
fn read_pid(file: &File) -> Option<u32> {
    let mut text = String::new();
    let mut reader = file;
    reader.seek(io::SeekFrom::Start(0)).ok()?;
    reader.take(64).read_to_string(&mut text).ok()?;
    text.lines()
        .next()?
        .trim()
        .parse()
        .ok()
        .filter(|&pid| pid > 0)
}

/// Whether process `pid` exists (signal 0: `EPERM` means it exists but is not ours).
fn is_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) | Err(Errno::EPERM) => true,
        Err(_) => false,
    }
}

/// Whether `path` (not following a link) is the file open as `file`.
fn same_file(path: &Path, file: &File) -> bool {
    match (std::fs::symlink_metadata(path), file.metadata()) {
        (Ok(on_disk), Ok(open)) => on_disk.dev() == open.dev() && on_disk.ino() == open.ino(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    const STEP: Duration = Duration::from_secs(5);

    fn pipe() -> (File, File) {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        (File::from(read), File::from(write))
    }

    #[test]
    fn ready_after_pid_is_success() {
        let (read, mut write) = pipe();
        write.write_all(b"pid 42\nready\n").unwrap();
        assert_eq!(wait_for_report(read, STEP), Report::Ready(Some(42)));
    }

    #[test]
    fn error_line_carries_the_message() {
        let (read, mut write) = pipe();
        write
            .write_all(b"pid 42\nerror cannot bind 127.0.0.1:80: denied\n")
            .unwrap();
        assert_eq!(
            wait_for_report(read, STEP),
            Report::Failed("cannot bind 127.0.0.1:80: denied".to_owned())
        );
    }

    #[test]
    fn closed_pipe_without_report_means_the_daemon_exited() {
        let (read, mut write) = pipe();
        write.write_all(b"pid 42\n").unwrap();
        drop(write);
        assert_eq!(wait_for_report(read, STEP), Report::Exited);
    }

    #[test]
    fn silence_times_out_with_the_pid() {
        let (read, mut write) = pipe();
        write.write_all(b"pid 42\n").unwrap();
        let report = wait_for_report(read, Duration::from_millis(100));
        assert_eq!(report, Report::Timeout(Some(42)));
        drop(write);
    }

    #[test]
    fn daemon_handle_reports_ready_and_failure() {
        let (read, write) = pipe();
        Daemon { pipe: write }.ready();
        assert_eq!(wait_for_report(read, STEP), Report::Ready(None));

        let (read, write) = pipe();
        Daemon { pipe: write }.failed("cannot open log file /x:\nNo such file");
        assert_eq!(
            wait_for_report(read, STEP),
            Report::Failed("cannot open log file /x: No such file".to_owned())
        );

        let (read, write) = pipe();
        drop(Daemon { pipe: write });
        assert_eq!(wait_for_report(read, STEP), Report::Exited);
    }

    #[test]
    fn pid_file_holds_our_pid_and_is_removed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ws.pid");
        std::fs::write(&path, "stale contents that are longer\n").unwrap();
        let pid_file = PidFile::create(&path).unwrap();
        assert_eq!(pid_file.path(), path);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{}\n", std::process::id())
        );
        drop(pid_file);
        assert!(!path.exists());

        let fresh = dir.path().join("fresh.pid");
        let pid_file = PidFile::create(&fresh).unwrap();
        let mode = std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & !0o644, 0, "{mode:o}");
        drop(pid_file);
    }

    #[test]
    fn pid_file_of_another_instance_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ws.pid");
        let pid_file = PidFile::create(&path).unwrap();
        std::fs::write(&path, "1\n").unwrap();
        drop(pid_file);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "1\n");
    }

    #[test]
    fn unwritable_pid_file_is_named_in_the_error() {
        let err = PidFile::create(Path::new("/nonexistent/ws.pid")).unwrap_err();
        assert!(
            format!("{err:#}").starts_with("cannot write pid file /nonexistent/ws.pid: "),
            "{err:#}"
        );
    }

    #[test]
    fn pid_file_that_is_a_symlink_is_refused_and_its_target_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious\n").unwrap();
        let path = dir.path().join("ws.pid");
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        let err = PidFile::create(&path).unwrap_err();
        assert!(
            format!("{err:#}").starts_with(&format!("cannot write pid file {}", path.display())),
            "{err:#}"
        );
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
        assert!(
            std::fs::symlink_metadata(&path)
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }

    #[test]
    fn a_second_pid_file_on_the_same_path_is_refused_and_the_first_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ws.pid");
        let first = PidFile::create(&path).unwrap();
        let err = PidFile::create(&path).unwrap_err();
        let pid = std::process::id();
        assert_eq!(
            format!("{err:#}"),
            format!(
                "pid file {} is locked by websockify process {pid}, which is still running; \
                 stop it or choose another --pid-file",
                path.display()
            )
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{pid}\n"));
        drop(first);
        assert!(!path.exists());
    }

    #[test]
    fn pid_file_naming_another_live_process_is_refused_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ws.pid");
        // Process 1 always runs; an instance that does not lock (upstream) wrote this file.
        std::fs::write(&path, "1\n").unwrap();
        let err = PidFile::create(&path).unwrap_err();
        assert!(
            format!("{err:#}").contains("names process 1, which is still running"),
            "{err:#}"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "1\n");
    }

    #[test]
    fn stale_pid_file_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ws.pid");
        let mut gone = std::process::Command::new("true").spawn().unwrap();
        let gone_pid = gone.id();
        gone.wait().unwrap();
        std::fs::write(&path, format!("{gone_pid}\n")).unwrap();
        let pid_file = PidFile::create(&path).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{}\n", std::process::id())
        );
        drop(pid_file);
        assert!(!path.exists());
    }

    #[test]
    fn pid_file_replaced_by_another_file_is_not_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ws.pid");
        let pid_file = PidFile::create(&path).unwrap();
        // Someone else's file now sits at the path, even with our pid in it.
        let other = dir.path().join("other");
        std::fs::write(&other, format!("{}\n", std::process::id())).unwrap();
        std::fs::rename(&other, &path).unwrap();
        drop(pid_file);
        assert!(path.exists());
    }
}
