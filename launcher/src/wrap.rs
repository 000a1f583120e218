//! Wrap mode: start a program with `rebind.so` preloaded so its bind() of the public port
//! lands on a private loopback port, proxy the public port to it, and supervise it
//! (`--wrap-mode=exit|ignore|respawn`).
//!
//! websockify makes itself a child subreaper, so a program that daemonizes (vncserver forks
//! Xvnc and exits) stays in our process tree: we can check that something in that tree
//! really listens on the loopback port, reap every exited descendant (no zombies), and stop
//! the whole tree on exit (no orphans).

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, bail};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{WrapMode, WrapSettings};

/// `rebind.so`, built by `build.rs` and embedded so wrap mode needs no installed files.
static EMBEDDED_REBIND: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/rebind.so"));

/// Environment variable naming a `rebind.so` to use instead of the embedded one.
pub const REBIND_ENV: &str = "WEBSOCKIFY_REBIND";

/// How long a started program has to listen on its loopback port.
pub const LISTEN_DEADLINE: Duration = Duration::from_secs(30);
/// Upstream's respawn throttle: at most 3 starts within 10 seconds.
const RESPAWN_WINDOW: Duration = Duration::from_secs(10);
const RESPAWN_BURST: usize = 3;
/// Grace period between SIGTERM and SIGKILL when stopping the program.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// A `rebind.so` on disk; a copy written from the embedded bytes is deleted on drop.
pub struct RebindLibrary {
    pub path: PathBuf,
    temp_dir: Option<PathBuf>,
}

impl Drop for RebindLibrary {
    fn drop(&mut self) {
        if let Some(dir) = &self.temp_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl RebindLibrary {
    /// Finds `rebind.so`: `$WEBSOCKIFY_REBIND`, else the embedded copy (written to a private
    /// temporary directory), else `rebind.so` or `librebind.so` next to the executable.
    /// With `owner` (`--user`/`--group`), the embedded copy is written under the system
    /// temporary directory (not root's `XDG_RUNTIME_DIR`) and handed to that user and group,
    /// so that the wrapped program, which runs as them, can load it and websockify can remove it.
    pub fn locate(owner: Option<Owner>) -> anyhow::Result<RebindLibrary> {
        if let Some(path) = std::env::var_os(REBIND_ENV) {
            let path = PathBuf::from(path);
            if !path.is_file() {
                bail!(
                    "{REBIND_ENV}={} is not a file: point it at a built rebind.so",
                    path.display()
                );
            }
            return Ok(RebindLibrary {
                path: absolute(&path)?,
                temp_dir: None,
            });
        }
        if !EMBEDDED_REBIND.is_empty() {
            return Self::write_embedded(owner);
        }
        if let Some(dir) = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(Path::to_path_buf))
        {
            for name in ["rebind.so", "librebind.so"] {
                let candidate = dir.join(name);
                if candidate.is_file() {
                    return Ok(RebindLibrary {
                        path: candidate,
                        temp_dir: None,
                    });
                }
            }
        }
        bail!(
            "this websockify was built without rebind.so: build the workspace (cargo build --release) \
             or set {REBIND_ENV} to a rebind.so"
        );
    }

    /// Writes the embedded library into a new private directory.
    fn write_embedded(owner: Option<Owner>) -> anyhow::Result<RebindLibrary> {
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|d| d.is_dir() && owner.is_none())
            .unwrap_or_else(std::env::temp_dir);
        let dir = private_dir(&base)?;
        let path = dir.join("rebind.so");
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o500)
            .open(&path)
            .and_then(|mut file| file.write_all(EMBEDDED_REBIND));
        if let Err(err) = written {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(err).with_context(|| format!("cannot write {}", path.display()));
        }
        if let Some((uid, gid)) = owner {
            let handed = hand_over(&dir, &path, uid, gid);
            if let Err(err) = handed {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(err);
            }
        }
        Ok(RebindLibrary {
            path,
            temp_dir: Some(dir),
        })
    }
}

/// The user (if any) and group the process switches to (`--user`, `--group`).
pub type Owner = (Option<nix::unistd::Uid>, nix::unistd::Gid);

/// Gives the private directory and the library to the user and group the process becomes;
/// with a group only, the group may read and enter (nothing in it is secret; only its owner
/// may write).
fn hand_over(
    dir: &Path,
    library: &Path,
    uid: Option<nix::unistd::Uid>,
    gid: nix::unistd::Gid,
) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    for path in [dir, library] {
        nix::unistd::chown(path, uid, Some(gid))
            .with_context(|| format!("cannot hand {} to --user/--group", path.display()))?;
    }
    if uid.is_none() {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750))
            .with_context(|| format!("cannot set the mode of {}", dir.display()))?;
        std::fs::set_permissions(library, std::fs::Permissions::from_mode(0o550))
            .with_context(|| format!("cannot set the mode of {}", library.display()))?;
    }
    Ok(())
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("cannot resolve {}", path.display()))
}

/// Creates a new directory only we can read (mode 0700), with a name nobody could predict.
fn private_dir(base: &Path) -> anyhow::Result<PathBuf> {
    let seed = std::process::id() as u128
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
    for attempt in 0..16u128 {
        let dir = base.join(format!(
            "websockify-{:x}",
            seed.wrapping_mul(0x9e37_79b9).wrapping_add(attempt)
        ));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(err) => {
                return Err(err)
                    .with_context(|| format!("cannot create a directory in {}", base.display()));
            }
        }
    }
    bail!("cannot create a private directory in {}", base.display())
}

/// Picks a port free on 127.0.0.1 (and on ::1 where IPv6 exists), just before spawning.
pub fn pick_loopback_port() -> anyhow::Result<u16> {
    for _ in 0..20 {
        let v4 =
            std::net::TcpListener::bind("127.0.0.1:0").context("cannot bind a loopback port")?;
        let port = v4.local_addr()?.port();
        match std::net::TcpListener::bind(("::1", port)) {
            Ok(_) => return Ok(port),
            Err(err) if err.raw_os_error() == Some(libc::EADDRNOTAVAIL) => return Ok(port),
            Err(_) => continue,
        }
    }
    bail!("cannot find a port free on both 127.0.0.1 and ::1")
}

/// Makes the kernel send the program SIGKILL when websockify dies, even by `kill -9` (no
/// cleanup of ours can run then). Only the program itself is covered, not what it forks;
/// those are stopped by the normal exit path (`kill_descendants`).
#[allow(unsafe_code)]
fn die_with_parent(command: &mut Command) {
    let parent = nix::unistd::getpid().as_raw();
    // SAFETY: the closure runs in the forked child before exec. It calls only prctl(2) and
    // getppid(2), which are async-signal-safe, and builds its errors from raw codes without
    // allocating.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            // We died between fork and prctl: the signal will never come, so do not run.
            if libc::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// A start of the program to fork, and where to send its pid.
type SpawnRequest = (Command, std::sync::mpsc::SyncSender<std::io::Result<u32>>);

/// Spawns `command` from one thread that lives as long as the process. `PR_SET_PDEATHSIG`
/// fires when the *thread* that forked the child exits, not the process: forked from a tokio
/// blocking thread (ended after 10 s idle) the program would be killed at a random moment.
/// Reaping stays ours (waitpid on every SIGCHLD): the `Child` is dropped without waiting.
fn spawn_on_spawner_thread(command: Command) -> std::io::Result<u32> {
    use std::sync::OnceLock;
    use std::sync::mpsc;
    static SPAWNER: OnceLock<Option<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let sender = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("websockify-spawner".into())
            .spawn(move || {
                for (mut command, reply) in rx {
                    let _ = reply.send(command.spawn().map(|child| child.id()));
                }
            })
            .ok()
            .map(|_| tx)
    });
    let gone = || std::io::Error::other("the thread that starts the wrapped program is gone");
    let sender = sender.as_ref().ok_or_else(|| {
        std::io::Error::other("cannot start the thread that starts the wrapped program")
    })?;
    let (reply, answer) = mpsc::sync_channel(1);
    sender.send((command, reply)).map_err(|_| gone())?;
    answer.recv().map_err(|_| gone())?
}

/// The wrapped program and its supervision state.
pub struct Wrapper {
    command: Vec<String>,
    mode: WrapMode,
    public_port: u16,
    loopback_port: u16,
    library: RebindLibrary,
    /// Process group (= pid) of the current start of the program.
    child: Option<Pid>,
    starts: VecDeque<Instant>,
    /// `WrapMode::Tree`: the program exited with this status while its descendants live on.
    tree_status: Option<i32>,
}

/// How supervision ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WrapEnd {
    /// The server is shutting down for another reason.
    Shutdown,
    /// `--wrap-mode=exit` (or [`WrapMode::Tree`]) and the program exited with this status code.
    ProgramExited(i32),
}

impl Wrapper {
    /// Prepares to wrap the program: finds rebind.so and picks the loopback port. `owner`:
    /// the user and group the process will switch to before starting the program.
    pub fn new(
        settings: WrapSettings,
        public_port: u16,
        owner: Option<Owner>,
    ) -> anyhow::Result<Wrapper> {
        let WrapSettings { command, mode } = settings;
        if command.is_empty() {
            bail!("no program to wrap after --");
        }
        if public_port == 0 {
            bail!(
                "wrapping a program needs a fixed listen port (the program binds that port), not 0"
            );
        }
        let library = RebindLibrary::locate(owner)?;
        // Orphaned descendants (daemons) become our children, so we can watch and reap them.
        nix::sys::prctl::set_child_subreaper(true).context("cannot become a child subreaper")?;
        Ok(Wrapper {
            command,
            mode,
            public_port,
            loopback_port: pick_loopback_port()?,
            library,
            child: None,
            starts: VecDeque::new(),
            tree_status: None,
        })
    }

    /// The loopback port the program's bind() is moved to.
    pub fn loopback_port(&self) -> u16 {
        self.loopback_port
    }

    /// Upstream's description: `'CMD ARGS' (port N)`.
    pub fn describe(&self) -> String {
        format!("'{}' (port {})", self.command.join(" "), self.loopback_port)
    }

    /// Starts the program with rebind.so preloaded (argv, no shell; own process group).
    fn spawn(&mut self) -> anyhow::Result<()> {
        let preload = match std::env::var_os("LD_PRELOAD").filter(|v| !v.is_empty()) {
            Some(existing) => {
                let mut value = self.library.path.clone().into_os_string();
                value.push(":");
                value.push(existing);
                value
            }
            None => self.library.path.clone().into_os_string(),
        };
        let mut command = Command::new(&self.command[0]);
        command
            .args(&self.command[1..])
            .env("LD_PRELOAD", preload)
            .env("REBIND_OLD_PORT", self.public_port.to_string())
            .env("REBIND_NEW_PORT", self.loopback_port.to_string())
            .env_remove(crate::daemon::STAGE_ENV)
            .env_remove(crate::secrets::KEY_PASSWORD_ENV)
            .process_group(0);
        die_with_parent(&mut command);
        let pid = spawn_on_spawner_thread(command)
            .with_context(|| format!("cannot start {:?}", self.command[0]))?;
        let pid = Pid::from_raw(pid as i32);
        tracing::info!(pid = pid.as_raw(), "Starting '{}'", self.command.join(" "));
        crate::metrics::METRICS.program_started();
        self.child = Some(pid);
        self.starts.push_back(Instant::now());
        while self.starts.len() > RESPAWN_BURST {
            self.starts.pop_front();
        }
        Ok(())
    }

    /// Starts the program and supervises it until shutdown or, in exit mode, its exit.
    /// Fails when the program never listens on its loopback port.
    pub async fn supervise(&mut self, shutdown: CancellationToken) -> anyhow::Result<WrapEnd> {
        let mut sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())
            .context("cannot watch child processes")?;
        self.spawn()?;
        let mut listen_deadline = Some(Instant::now() + LISTEN_DEADLINE);
        let mut check = tokio::time::interval(Duration::from_millis(50));
        // A slow scan (a big /proc/net/tcp) must not make ticks pile up.
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(WrapEnd::Shutdown),
                _ = sigchld.recv() => {}
                _ = check.tick(), if listen_deadline.is_some() => {}
            }
            if let Some(status) = self.reap() {
                let code = status_code(status);
                tracing::info!("wrapped program exited ({})", describe_status(status));
                match self.mode {
                    WrapMode::Exit => return Ok(WrapEnd::ProgramExited(code)),
                    WrapMode::Ignore => {}
                    WrapMode::Tree => self.tree_status = Some(code),
                    WrapMode::Respawn => {
                        self.wait_respawn_slot(&shutdown).await;
                        if shutdown.is_cancelled() {
                            return Ok(WrapEnd::Shutdown);
                        }
                        self.spawn()?;
                        listen_deadline = Some(Instant::now() + LISTEN_DEADLINE);
                    }
                }
            }
            if let Some(code) = self.tree_status {
                let me = std::process::id() as i32;
                if tokio::task::spawn_blocking(move || descendants(me).is_empty())
                    .await
                    .unwrap_or(false)
                {
                    tracing::info!("the wrapped program and every process it started have exited");
                    return Ok(WrapEnd::ProgramExited(code));
                }
            }
            if let Some(deadline) = listen_deadline {
                if self.tree_listens().await {
                    tracing::info!(
                        port = self.loopback_port,
                        "wrapped program listens on loopback port {}",
                        self.loopback_port
                    );
                    listen_deadline = None;
                } else if Instant::now() >= deadline {
                    bail!(
                        "the wrapped program did not listen on loopback port {} within {:?}: it may ignore \
                         LD_PRELOAD (setuid, statically linked or Go programs), or it does not bind port {}",
                        self.loopback_port,
                        LISTEN_DEADLINE,
                        self.public_port
                    );
                }
            }
        }
    }

    /// Waits until a start is allowed by the 3-in-10-seconds throttle.
    async fn wait_respawn_slot(&self, shutdown: &CancellationToken) {
        if self.starts.len() < RESPAWN_BURST {
            return;
        }
        let Some(oldest) = self.starts.front() else {
            return;
        };
        let allowed = *oldest + RESPAWN_WINDOW;
        if allowed > Instant::now() {
            tracing::warn!(
                "Command respawning too fast: waiting {:.1} s",
                (allowed - Instant::now()).as_secs_f64()
            );
            tokio::select! {
                () = tokio::time::sleep_until(allowed) => {}
                () = shutdown.cancelled() => {}
            }
        }
    }

    /// Reaps every exited child; returns the status of the current program if it exited.
    fn reap(&mut self) -> Option<WaitStatus> {
        let mut main_exit = None;
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(status) => {
                    if status.pid().is_some() && status.pid() == self.child {
                        self.child = None;
                        crate::metrics::METRICS.program_exited();
                        main_exit = Some(status);
                    } else if let Some(pid) = status.pid() {
                        tracing::debug!(
                            pid = pid.as_raw(),
                            "reaped a descendant of the wrapped program"
                        );
                    }
                }
            }
        }
        main_exit
    }

    /// True when a process in our tree listens on the loopback port. The /proc scan runs on
    /// a blocking thread: with thousands of sockets it takes milliseconds, and this task shares
    /// its thread with the accept loop.
    async fn tree_listens(&self) -> bool {
        let port = self.loopback_port;
        tokio::task::spawn_blocking(move || {
            let inodes = listening_inodes(port);
            !inodes.is_empty()
                && descendants(std::process::id() as i32)
                    .into_iter()
                    .any(|pid| process_has_socket(pid, &inodes))
        })
        .await
        .unwrap_or(false)
    }

    /// Stops the program and everything it started: SIGTERM to its process group and to
    /// every descendant, SIGKILL after a grace period, all reaped.
    pub async fn stop(&mut self) {
        let me = std::process::id() as i32;
        let mut targets: HashSet<i32> = descendants(me).into_iter().collect();
        if let Some(pid) = self.child {
            let _ = nix::sys::signal::killpg(pid, Signal::SIGTERM);
            targets.insert(pid.as_raw());
        }
        if targets.is_empty() {
            return;
        }
        tracing::info!(count = targets.len(), "stopping the wrapped program");
        for pid in &targets {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGTERM);
        }
        let deadline = Instant::now() + STOP_GRACE;
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        while Instant::now() < deadline {
            tick.tick().await;
            self.reap();
            if descendants(me).is_empty() {
                return;
            }
        }
        for pid in descendants(me) {
            tracing::warn!(pid, "wrapped process ignored SIGTERM: killing it");
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline && !descendants(me).is_empty() {
            tick.tick().await;
            self.reap();
        }
    }
}

/// SIGKILLs every descendant at once and reaps them (bounded to one second): the exit path
/// of a second SIGINT/SIGTERM, so nothing outlives websockify.
pub fn kill_descendants() {
    let me = std::process::id() as i32;
    for pid in descendants(me) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    while std::time::Instant::now() < deadline && !descendants(me).is_empty() {
        while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            if status == WaitStatus::StillAlive {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The exit code websockify passes on for a child's wait status (128+N for a signal).
fn status_code(status: WaitStatus) -> i32 {
    match status {
        WaitStatus::Exited(_, code) => code,
        WaitStatus::Signaled(_, signal, _) => 128 + signal as i32,
        _ => 1,
    }
}

fn describe_status(status: WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, code) => format!("status {code}"),
        WaitStatus::Signaled(_, signal, _) => format!("killed by {signal}"),
        other => format!("{other:?}"),
    }
}

/// Socket inodes listening on `port` on any address (/proc/net/tcp and tcp6).
fn listening_inodes(port: u16) -> HashSet<u64> {
    let mut inodes = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) =
                (fields.get(1), fields.get(3), fields.get(9))
            else {
                continue;
            };
            let local_port = local
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if *state == "0A"
                && local_port == Some(port)
                && let Ok(inode) = inode.parse()
            {
                inodes.insert(inode);
            }
        }
    }
    inodes
}

/// Whether process `pid` holds one of `inodes` as an open socket.
fn process_has_socket(pid: i32, inodes: &HashSet<u64>) -> bool {
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    entries.flatten().any(|entry| {
        std::fs::read_link(entry.path())
            .ok()
            .and_then(|target| {
                let target = target.to_string_lossy().into_owned();
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .parse::<u64>()
                    .ok()
            })
            .is_some_and(|inode| inodes.contains(&inode))
    })
}

/// All live descendants of `root` (from /proc/*/stat parent links).
pub fn descendants(root: i32) -> Vec<i32> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // Fields after the command name, which is in parentheses and may contain spaces.
            let Some(rest) = stat.rfind(')').and_then(|i| stat.get(i + 2..)) else {
                continue;
            };
            let mut fields = rest.split_whitespace();
            let state = fields.next();
            let ppid = fields.next().and_then(|p| p.parse::<i32>().ok());
            if let (Some(ppid), Some(state)) = (ppid, state)
                && state != "Z"
            {
                children.entry(ppid).or_default().push(pid);
            }
        }
    }
    let mut out = Vec::new();
    let mut stack = vec![root];
    while let Some(pid) = stack.pop() {
        if let Some(kids) = children.get(&pid) {
            for &kid in kids {
                out.push(kid);
                stack.push(kid);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_shell_convention() {
        assert_eq!(status_code(WaitStatus::Exited(Pid::from_raw(1), 7)), 7);
        assert_eq!(
            status_code(WaitStatus::Signaled(
                Pid::from_raw(1),
                Signal::SIGTERM,
                false
            )),
            143
        );
    }

    #[test]
    fn finds_a_listening_socket_of_this_process() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let inodes = listening_inodes(port);
        assert!(!inodes.is_empty());
        assert!(process_has_socket(std::process::id() as i32, &inodes));
    }

    #[test]
    fn picked_ports_are_free() {
        let port = pick_loopback_port().unwrap();
        assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_ok());
    }
}
