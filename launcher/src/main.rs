//! The `websockify` command: parse the command line, detach (`-D`), set up logging, run the
//! process ([`websockify::process::run`]) and turn its result into an exit status.

#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use websockify::cli::{self, Parsed};
use websockify::daemon::{self, Daemon};
use websockify::{logging, process};

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    let prog = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .map_or_else(
            || "websockify".to_owned(),
            |n| n.to_string_lossy().into_owned(),
        );
    let mut settings = match cli::parse(args) {
        Ok(Parsed::Run(settings)) => *settings,
        Ok(Parsed::Print(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            eprint!("{}", err.render(&prog));
            return ExitCode::from(2);
        }
    };
    if let Err(err) = settings.make_paths_absolute() {
        return fail(None, &err);
    }
    // Before detaching and before --user: the files may be readable by root only.
    if let Err(err) = websockify::secrets::resolve(&mut settings) {
        return fail(None, &err);
    }
    // Detach before logging, the runtime, or any thread exists.
    let daemon = if settings.daemon {
        let dir = settings
            .server
            .web
            .as_ref()
            .map_or_else(|| PathBuf::from("/"), |web| web.dir.clone());
        let inetd = matches!(settings.server.listen, websockify::config::Listen::Inetd);
        match daemon::daemonize(&dir, inetd) {
            Ok(daemon) => Some(daemon),
            Err(err) => return fail(None, &err),
        }
    } else {
        None
    };
    // Kept until exit: dropping it writes out the log lines still queued.
    let _log_guard = match logging::init(&settings.log, daemon.is_none()) {
        Ok(guard) => guard,
        Err(err) => return fail(daemon, &err),
    };
    // `run` tells the `-D` launcher once it is ready (taking `daemon`); an earlier failure
    // goes to the launcher, a later one to the log.
    let mut daemon = daemon;
    match process::run(settings, &mut daemon) {
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
