//! The websockify process around the server: the runtime, the listening socket, signals, the
//! wrapped program, and the exit status.
//!
//! `main` parses the command line, detaches (`-D`) and sets up logging; then [`run`] does the
//! rest: pid file, async runtime, bind (or take the socket from systemd/inetd), the start-up
//! banner, readiness (systemd, the `-D` launcher), [`crate::run`], and in wrap mode the
//! supervision of the program. SIGINT/SIGTERM drain the sessions; a second one exits at once.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Listen, Settings, Target};
use crate::daemon::{Daemon, PidFile};
use crate::listen::{self, Listener};
use crate::privileges;
use crate::server;
use crate::wrap::{self, WrapEnd, Wrapper};

/// Runs the server described by `settings` until it ends; returns the exit status.
/// `daemon` is the channel to the waiting `-D` launcher; it is taken and told once start-up
/// is done.
pub fn run(settings: Settings, daemon: &mut Option<Daemon>) -> anyhow::Result<i32> {
    raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(serve(settings, daemon));
    // Tasks still running (a stuck lookup, a blocking read) must not keep the process alive
    // once the server has drained.
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
    result
}

/// How long exiting waits for leftover runtime tasks and blocking threads.
const RUNTIME_SHUTDOWN: Duration = Duration::from_secs(1);

/// Binds, serves, and in wrap mode supervises the program; returns the exit status.
async fn serve(settings: Settings, daemon: &mut Option<Daemon>) -> anyhow::Result<i32> {
    let mut config = settings.server;
    let closed = crate::daemon::INHERITED_CLOSED.load(std::sync::atomic::Ordering::Relaxed);
    if closed > 0 {
        tracing::info!("daemon: closed {closed} inherited file descriptors");
    }
    if settings.libserver {
        tracing::warn!("--libserver has no effect: websockify always uses its own server engine");
    }
    // Looked up before anything is bound, so that a typo costs nothing.
    let switch = privileges::resolve(settings.user.as_deref(), settings.group.as_deref())?;
    let listener = match listen::from_systemd()? {
        Some(listener) => {
            tracing::info!(
                "using the socket passed by systemd (LISTEN_FDS); the listen argument is ignored"
            );
            listener
        }
        None => listen::bind(&config.listen)?,
    };
    // Written once the port is ours: a second instance that cannot bind leaves the first
    // one's pid file alone.
    let _pid_file = settings
        .pid_file
        .as_deref()
        .map(PidFile::create)
        .transpose()?;
    let local = listener.describe();
    let shutdown = CancellationToken::new();
    let reload = Arc::new(Notify::new());
    spawn_signal_handler(shutdown.clone(), Arc::clone(&reload))?;

    let Some(wrap_settings) = settings.wrap else {
        banner(&config, &local, None);
        let prepared = server::prepare(config, listener).await?;
        drop_privileges(switch.as_ref(), &prepared)?;
        ready(daemon);
        prepared.serve(shutdown, reload).await?;
        listen::sd_notify("STOPPING=1");
        return Ok(0);
    };
    if matches!(config.listen, Listen::Tcp { port: 0, .. }) {
        anyhow::bail!("wrapping a program needs the port it listens on, not 0");
    }
    // A wrapped program may take a while to start: sessions wait for it as long as the
    // start-up check does.
    config.connect_timeout = config.connect_timeout.max(wrap::LISTEN_DEADLINE);
    let Listener::Tcp(tcp) = &listener else {
        anyhow::bail!("wrapping a program needs a TCP listen port (not --unix-listen or --inetd)");
    };
    let public_port = tcp.local_addr()?.port();
    let owner = switch.as_ref().map(|s| (s.uid, s.gid));
    let mut wrapper = Wrapper::new(wrap_settings, public_port, owner)?;
    config.target = Target::Loopback {
        port: wrapper.loopback_port(),
    };
    banner(&config, &local, Some(&wrapper.describe()));
    let prepared = server::prepare(config, listener).await?;
    drop_privileges(switch.as_ref(), &prepared)?;
    ready(daemon);

    let mut server = std::pin::pin!(prepared.serve(shutdown.clone(), reload));
    enum First {
        Server(anyhow::Result<()>),
        Wrapper(anyhow::Result<WrapEnd>),
    }
    let first = tokio::select! {
        result = &mut server => First::Server(result),
        end = wrapper.supervise(shutdown.clone()) => First::Wrapper(end),
    };
    let (server_result, code) = match first {
        First::Server(result) => (result, 0),
        First::Wrapper(end) => {
            // The program ended the run (exit mode) or failed to start: close the sessions.
            shutdown.cancel();
            let code = match end {
                Ok(WrapEnd::ProgramExited(code)) => code,
                Ok(WrapEnd::Shutdown) => 0,
                Err(err) => {
                    let result = server.await;
                    wrapper.stop().await;
                    return result.and(Err(err));
                }
            };
            (server.await, code)
        }
    };
    wrapper.stop().await;
    server_result.map(|()| code)
}

/// `--user`/`--group`: switch now that everything privileged is open, then check what will
/// be opened later as the new user: a `--record` directory it cannot write is an error; a
/// certificate it cannot re-read stays as loaded (the warning says so).
fn drop_privileges(
    switch: Option<&privileges::Switch>,
    prepared: &server::Prepared,
) -> anyhow::Result<()> {
    let Some(switch) = switch else {
        return Ok(());
    };
    switch.apply()?;
    let shared = prepared.shared();
    if let Some(record) = &shared.config.record {
        crate::record::Recorder::new(record)
            .with_context(|| format!("as {}", switch.description))?;
    }
    // Loaded at start-up (when present); this tells the operator whether reloads can work.
    shared.tls.check_rereadable(&switch.description);
    Ok(())
}

/// Start-up is complete: tell systemd and, under `-D`, the waiting launcher.
fn ready(daemon: &mut Option<Daemon>) {
    listen::sd_notify("READY=1");
    if let Some(daemon) = daemon.take() {
        // The launcher exits when told; the banner should be in the log file by then. Bounded,
        // once, before the first connection.
        crate::logging::sink::flush_all(std::time::Duration::from_millis(500));
        daemon.ready();
    }
}

/// Upstream's settings banner, plus the address actually bound (port 0 picks one).
fn banner(config: &Config, local: &str, wrapped: Option<&str>) {
    tracing::info!("WebSocket server settings:");
    match &config.listen {
        Listen::Tcp { host, port, .. } => {
            tracing::info!("  - Listen on {}:{port}", host.as_deref().unwrap_or(""))
        }
        Listen::Unix { path, .. } => tracing::info!("  - Listen on unix socket {}", path.display()),
        Listen::Inetd => tracing::info!("  - Listen for inetd connections"),
    }
    tracing::info!("  - listening on {local}");
    if config.tls.cert.exists() {
        tracing::info!("  - SSL/TLS support");
    } else {
        tracing::info!("  - No SSL/TLS support (no cert file)");
    }
    if config.tls.ssl_only {
        tracing::info!("  - Deny non-SSL/TLS connections");
    }
    if let Some(web) = &config.web {
        let listing = if web.file_only {
            " (no directory listings)"
        } else {
            ""
        };
        tracing::info!("  - Web server{listing}. Web root: {}", web.dir.display());
    }
    if let Some(record) = &config.record {
        tracing::info!("  - Recording to '{}.*'", record.display());
    }
    let ssl = if config.ssl_target {
        " (using SSL)"
    } else {
        ""
    };
    let target = match (&config.target, wrapped, &config.token) {
        (_, Some(command), _) => command.to_owned(),
        (_, None, Some(token)) => format!("targets generated by {}", token.plugin),
        (Target::Unix(path), None, None) => path.display().to_string(),
        (target, None, None) => target.to_string(),
    };
    tracing::info!("  - proxying from {local} to {target}{ssl}");
}

/// Raises the soft open-file limit to the hard limit: each session needs two descriptors.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_err()
    {
        tracing::warn!("cannot raise the open-file limit from {soft} to {hard}");
    }
}

/// What each signal means. SIGINT/SIGTERM: the first cancels `shutdown` (the server drains),
/// the second exits at once. SIGHUP (a closed terminal, logrotate): reload what can be
/// reloaded. SIGUSR1/SIGUSR2: ignored (their default would end the process with no cleanup).
///
/// The signals are taken on a thread of their own, not on the async runtime: a second signal
/// must end the process even when every runtime thread is stuck.
fn spawn_signal_handler(shutdown: CancellationToken, reload: Arc<Notify>) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGUSR2};
    let mut signals =
        signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP, SIGUSR1, SIGUSR2])
            .context("cannot install the signal handlers")?;
    std::thread::Builder::new()
        .name("websockify-signals".into())
        .spawn(move || {
            let mut stops = 0;
            for signal in signals.forever() {
                let name = match signal {
                    SIGINT => "SIGINT",
                    SIGTERM => "SIGTERM",
                    SIGHUP => {
                        reload.notify_one();
                        continue;
                    }
                    SIGUSR1 | SIGUSR2 => {
                        let name = if signal == SIGUSR1 {
                            "SIGUSR1"
                        } else {
                            "SIGUSR2"
                        };
                        tracing::info!("{name} received: ignored");
                        continue;
                    }
                    _ => continue,
                };
                stops += 1;
                if stops == 1 {
                    tracing::info!("{name} received: draining; send it again to exit at once");
                    shutdown.cancel();
                } else {
                    tracing::warn!("{name} received again: exiting now");
                    // A wrapped program runs in its own process group: take it down with us.
                    wrap::kill_descendants();
                    crate::logging::sink::flush_all(Duration::from_millis(200));
                    std::process::exit(1);
                }
            }
        })
        .context("cannot start the signal thread")?;
    Ok(())
}
