//! The `websockify` command: parse the command line, set up logging, bind, serve.

use std::ffi::OsString;
use std::process::ExitCode;

use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;
use websockify::cli::{self, Options, Parsed};
use websockify::config::{Listen, Target};
use websockify::listen;

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
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            eprintln!("websockify: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Options accepted for compatibility whose behaviour is not built yet: refusing them beats
/// silently running without them.
fn not_implemented(options: &Options) -> Option<&'static str> {
    let checks: [(bool, &'static str); 12] = [
        (
            !options.wrap_command.is_empty(),
            "wrapping a program (-- PROGRAM ARGS)",
        ),
        (options.web.is_some(), "--web"),
        (options.record.is_some(), "--record"),
        (options.traffic, "--traffic"),
        (options.daemon, "--daemon"),
        (options.inetd, "--inetd"),
        (options.unix_listen.is_some(), "--unix-listen"),
        (
            options.token_plugin.is_some(),
            "--token-plugin/--target-config",
        ),
        (options.auth_plugin.is_some(), "--auth-plugin"),
        (options.log_file.is_some(), "--log-file"),
        (options.syslog.is_some(), "--syslog"),
        (options.libserver, "--libserver"),
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

async fn serve(options: Options) -> anyhow::Result<()> {
    let config = options.config;
    let listener = listen::bind(&config.listen)?;
    let local = listener.local_addr()?;
    banner(&config, local);

    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone())?;
    websockify::run(config, listener, shutdown).await
}

/// Upstream's settings banner, plus the address actually bound (port 0 picks one).
fn banner(config: &websockify::Config, local: std::net::SocketAddr) {
    tracing::info!("WebSocket server settings:");
    let Listen::Tcp { host, port, .. } = &config.listen;
    tracing::info!("  - Listen on {}:{port}", host.as_deref().unwrap_or(""));
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
    let target = match &config.target {
        Target::Unix(path) => path.display().to_string(),
        target => target.to_string(),
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
