//! The `websockify` command: parse the command line, set up logging, bind, serve.

#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::io::IsTerminal as _;
use std::process::ExitCode;

use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;
use websockify::cli::{self, Options, Parsed};
use websockify::config::{Listen, Target};
use websockify::listen::{self, Listener};
use websockify::wrap::{WrapEnd, Wrapper};

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    let prog = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .map_or_else(
            || "websockify".to_owned(),
            |n| n.to_string_lossy().into_owned(),
        );
    let options = match cli::parse(args) {
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
    if let Some(option) = not_implemented(&options) {
        eprintln!(
            "websockify: {option} is not supported by this build yet; remove it, or use Python websockify for now"
        );
        return ExitCode::FAILURE;
    }
    init_logging(options.verbose);
    raise_fd_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("websockify: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(*options)) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(err) => {
            eprintln!("websockify: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Options accepted for compatibility whose behaviour is not built yet: refusing them beats
/// silently running without them.
fn not_implemented(options: &Options) -> Option<&'static str> {
    let checks: [(bool, &'static str); 8] = [
        (options.web.is_some(), "--web"),
        (options.record.is_some(), "--record"),
        (options.traffic, "--traffic"),
        (options.daemon, "--daemon"),
        (
            options.token_plugin.is_some(),
            "--token-plugin/--target-config",
        ),
        (options.auth_plugin.is_some(), "--auth-plugin"),
        (options.log_file.is_some(), "--log-file"),
        (options.syslog.is_some(), "--syslog"),
    ];
    checks
        .into_iter()
        .find(|(set, _)| *set)
        .map(|(_, name)| name)
}

fn init_logging(verbose: bool) {
    let default = if verbose { "debug" } else { "info" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
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

/// Binds, serves, and in wrap mode supervises the program; returns the exit status.
async fn serve(options: Options) -> anyhow::Result<i32> {
    let mut config = options.config;
    if options.inetd {
        config.listen = Listen::Inetd;
    } else if let Some(path) = &options.unix_listen {
        config.listen = Listen::Unix {
            path: path.clone(),
            mode: options.unix_listen_mode,
        };
    }
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
        listen::sd_notify("READY=1");
        websockify::run(config, listener, shutdown).await?;
        listen::sd_notify("STOPPING=1");
        return Ok(0);
    }
    let Listener::Tcp(tcp) = &listener else {
        anyhow::bail!("wrapping a program needs a TCP listen port (not --unix-listen or --inetd)");
    };
    let public_port = tcp.local_addr()?.port();
    let mut wrapper = Wrapper::new(options.wrap_command, options.wrap_mode, public_port)?;
    config.target = Target::Loopback {
        port: wrapper.loopback_port(),
    };
    banner(&config, &local, Some(&wrapper.describe()));
    listen::sd_notify("READY=1");

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
    let ssl = if config.ssl_target {
        " (using SSL)"
    } else {
        ""
    };
    let target = match (&config.target, wrapped) {
        (_, Some(command)) => command.to_owned(),
        (Target::Unix(path), None) => path.display().to_string(),
        (target, None) => target.to_string(),
    };
    tracing::info!("  - proxying from {local} to {target}{ssl}");
}

/// First SIGINT/SIGTERM: graceful shutdown. Second: exit at once.
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
                std::process::exit(1);
            }
        }
    });
    Ok(())
}
