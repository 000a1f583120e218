//! The `websockify` command: parse the command line, detach (`-D`), set up logging, bind,
//! serve, and in wrap mode supervise the program.

#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use tokio_util::sync::CancellationToken;
use websockify::cli::{self, Options, Parsed};
use websockify::config::{AuthSettings, Listen, Target, TokenSettings, WebSettings};
use websockify::daemon::{self, Daemon, PidFile};
use websockify::listen::{self, Listener};
use websockify::logging::{self, LogSettings};
use websockify::wrap::{WrapEnd, Wrapper};

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    let prog = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .map_or_else(
            || "websockify".to_owned(),
            |n| n.to_string_lossy().into_owned(),
        );
    let mut options = match cli::parse(args) {
        Ok(Parsed::Run(options)) => options,
        Ok(Parsed::Print(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            eprint!("{}", err.render(&prog));
            return ExitCode::from(2);
        }
    };
    let mut log = LogSettings {
        verbose: options.verbose,
        log_file: options.log_file.clone(),
        syslog: options.syslog.clone(),
        legacy_syslog: options.legacy_syslog,
        daemon: options.daemon,
        // --log-format is not on the command line yet: text.
        ..LogSettings::default()
    };
    // Upstream makes paths absolute at start, since the daemon changes directory.
    if let Err(err) = log
        .resolve_paths()
        .map_err(anyhow::Error::from)
        .and_then(|()| absolutize(&mut options))
    {
        eprintln!("websockify: {err:#}");
        return ExitCode::FAILURE;
    }
    // Detach before logging, the runtime, or any thread exists.
    let daemon = if options.daemon {
        let dir = options.web.clone().unwrap_or_else(|| PathBuf::from("/"));
        match daemon::daemonize(&dir, options.inetd) {
            Ok(daemon) => Some(daemon),
            Err(err) => {
                eprintln!("websockify: {err:#}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    let started = logging::init(&log, daemon.is_none()).and_then(|log_guard| {
        let pid_file = options
            .pid_file
            .as_deref()
            .map(PidFile::create)
            .transpose()?;
        Ok((log_guard, pid_file))
    });
    let (_log_guard, _pid_file) = match started {
        Ok(pid_file) => pid_file,
        Err(err) => return fail(daemon, &err),
    };
    raise_fd_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            return fail(
                daemon,
                &anyhow::Error::from(err).context("cannot start the async runtime"),
            );
        }
    };
    let mut daemon = daemon;
    match runtime.block_on(serve(*options, &mut daemon)) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(err) => fail(daemon, &err),
    }
}

/// Reports a start-up or runtime failure (to the waiting launcher under `-D`), exit 1.
fn fail(daemon: Option<Daemon>, err: &anyhow::Error) -> ExitCode {
    match daemon {
        Some(daemon) => daemon.failed(&format!("{err:#}")),
        None => eprintln!("websockify: {err:#}"),
    }
    ExitCode::FAILURE
}

/// Makes the paths the server opens later absolute (the daemon runs in `/` or the web root).
fn absolutize(options: &mut Options) -> anyhow::Result<()> {
    fn abs(path: &mut PathBuf) -> anyhow::Result<()> {
        *path = std::path::absolute(&*path)
            .map_err(|e| anyhow::anyhow!("cannot resolve {}: {e}", path.display()))?;
        Ok(())
    }
    let tls = &mut options.config.tls;
    abs(&mut tls.cert)?;
    for path in [
        &mut tls.key,
        &mut tls.cafile,
        &mut options.record,
        &mut options.web,
        &mut options.unix_listen,
        &mut options.pid_file,
    ]
    .into_iter()
    .flatten()
    {
        abs(path)?;
    }
    if let websockify::Target::Unix(path) = &mut options.config.target {
        abs(path)?;
    }
    // File-based token sources; URLs and Redis specs are left alone.
    if let Some(source) = &mut options.token_source
        && Path::new(source.as_str()).exists()
    {
        let mut path = PathBuf::from(&*source);
        abs(&mut path)?;
        *source = path.to_string_lossy().into_owned();
    }
    Ok(())
}

/// Moves the command-line options that the server itself uses into its config.
fn server_config(options: &Options) -> websockify::Config {
    let mut config = options.config.clone();
    if options.inetd {
        config.listen = Listen::Inetd;
    } else if let Some(path) = &options.unix_listen {
        config.listen = Listen::Unix {
            path: path.clone(),
            mode: options.unix_listen_mode,
        };
    }
    config.record = options.record.clone();
    config.traffic = options.traffic;
    config.web = options.web.clone().map(|dir| WebSettings {
        dir,
        file_only: options.file_only,
    });
    config.web_auth = options.web_auth;
    config.auth = AuthSettings {
        plugin: options.auth_plugin.clone(),
        source: options.auth_source.clone(),
        allowed_origins: options.allowed_origins.clone(),
    };
    config.token = options.token_plugin.clone().map(|plugin| TokenSettings {
        plugin,
        source: options.token_source.clone(),
        host_token: options.host_token,
    });
    config
}

/// Binds, serves, and in wrap mode supervises the program; returns the exit status.
async fn serve(options: Options, daemon: &mut Option<Daemon>) -> anyhow::Result<i32> {
    let mut config = server_config(&options);
    if options.libserver {
        tracing::warn!("--libserver has no effect: websockify always uses its own server engine");
    }
    let listener = match listen::from_systemd()? {
        Some(listener) => {
            tracing::info!(
                "using the socket passed by systemd (LISTEN_FDS); the listen argument is ignored"
            );
            listener
        }
        None => listen::bind(&config.listen)?,
    };
    let local = listener.describe();
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone())?;

    if options.wrap_command.is_empty() {
        banner(&config, &local, None);
        ready(daemon);
        websockify::run(config, listener, shutdown).await?;
        listen::sd_notify("STOPPING=1");
        return Ok(0);
    }
    if matches!(config.listen, Listen::Tcp { port: 0, .. }) {
        anyhow::bail!("wrapping a program needs the port it listens on, not 0");
    }
    // A wrapped program may take a while to start: sessions wait for it as long as the
    // start-up check does.
    config.connect_timeout = config
        .connect_timeout
        .max(websockify::wrap::LISTEN_DEADLINE);
    let Listener::Tcp(tcp) = &listener else {
        anyhow::bail!("wrapping a program needs a TCP listen port (not --unix-listen or --inetd)");
    };
    let public_port = tcp.local_addr()?.port();
    let mut wrapper = Wrapper::new(options.wrap_command, options.wrap_mode, public_port)?;
    config.target = Target::Loopback {
        port: wrapper.loopback_port(),
    };
    banner(&config, &local, Some(&wrapper.describe()));
    ready(daemon);

    let mut server = std::pin::pin!(websockify::run(config, listener, shutdown.clone()));
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

/// Start-up is complete: tell systemd and, under `-D`, the waiting launcher.
fn ready(daemon: &mut Option<Daemon>) {
    listen::sd_notify("READY=1");
    if let Some(daemon) = daemon.take() {
        daemon.ready();
    }
}

/// Upstream's settings banner, plus the address actually bound (port 0 picks one).
fn banner(config: &websockify::Config, local: &str, wrapped: Option<&str>) {
    tracing::info!("WebSocket server settings:");
    match &config.listen {
        Listen::Tcp { host, port, .. } => {
            tracing::info!("  - Listen on {}:{port}", host.as_deref().unwrap_or(""))
        }
        Listen::Unix { path, .. } => tracing::info!("  - Listen on unix socket {}", path.display()),
        Listen::Inetd => tracing::info!("  - Listen for inetd connections"),
    }
    tracing::info!("  - listening on {local}");
    if std::path::Path::new(&config.tls.cert).exists() {
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
    let target = match (&config.target, wrapped) {
        (_, Some(command)) => command.to_owned(),
        (_, None) if config.token.is_some() => {
            let plugin = config.token.as_ref().map_or("", |t| t.plugin.as_str());
            format!("targets generated by {plugin}")
        }
        (Target::Unix(path), None) => path.display().to_string(),
        (target, None) => target.to_string(),
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
        eprintln!("websockify: warning: cannot raise the open-file limit from {soft} to {hard}");
    }
}

fn spawn_signal_handler(shutdown: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::spawn(async move {
        for round in 0..2 {
            let name = tokio::select! {
                _ = interrupt.recv() => "SIGINT",
                _ = terminate.recv() => "SIGTERM",
            };
            if round == 0 {
                tracing::info!("{name} received: closing sessions; send it again to exit at once");
                shutdown.cancel();
            } else {
                tracing::warn!("{name} received again: exiting now");
                // A wrapped program runs in its own process group: take it down with us.
                websockify::wrap::kill_descendants();
                std::process::exit(1);
            }
        }
    });
    Ok(())
}
