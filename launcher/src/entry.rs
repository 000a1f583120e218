//! What `main` does once the command line is read, shared by the `websockify` and `wswrap`
//! commands: detach (`-D`), set up logging, run the process ([`crate::process::run`]) and turn
//! its result into an exit status.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::cli::{Parsed, UsageError};
use crate::daemon::{self, Daemon};
use crate::{logging, process};

/// Runs a parsed command line. `name` prefixes runtime errors (`websockify: cannot listen
/// ...`); `render` prints a usage error for the program `prog` (exit 2).
pub fn run(
    name: &str,
    prog: &str,
    parsed: Result<Parsed, UsageError>,
    render: fn(&UsageError, &str) -> String,
) -> ExitCode {
    let mut settings = match parsed {
        Ok(Parsed::Run(settings)) => *settings,
        Ok(Parsed::Print(text)) => {
            // `websockify --help | head` closes the pipe early: not worth a panic (print!).
            let _ = std::io::Write::write_all(&mut std::io::stdout(), text.as_bytes());
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            eprint!("{}", render(&err, prog));
            return ExitCode::from(2);
        }
    };
    if let Err(err) = settings.make_paths_absolute() {
        return fail(name, None, &err);
    }
    // Before detaching and before --user: the files may be readable by root only.
    if let Err(err) = crate::secrets::resolve(&mut settings) {
        return fail(name, None, &err);
    }
    // Detach before logging, the runtime, or any thread exists.
    let daemon = if settings.daemon {
        let dir = settings
            .server
            .web
            .as_ref()
            .map_or_else(|| PathBuf::from("/"), |web| web.dir.clone());
        let inetd = matches!(settings.server.listen, crate::config::Listen::Inetd);
        match daemon::daemonize(&dir, inetd) {
            Ok(daemon) => Some(daemon),
            Err(err) => return fail(name, None, &err),
        }
    } else {
        None
    };
    // Kept until exit: dropping it writes out the log lines still queued.
    let _log_guard = match logging::init(&settings.log, daemon.is_none()) {
        Ok(guard) => guard,
        Err(err) => return fail(name, daemon, &err),
    };
    // `run` tells the `-D` launcher once it is ready (taking `daemon`); an earlier failure
    // goes to the launcher, a later one to the log.
    let mut daemon = daemon;
    match process::run(settings, &mut daemon) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(err) => fail(name, daemon, &err),
    }
}

/// Reports a start-up or runtime failure (to the waiting launcher under `-D`), exit 1.
fn fail(name: &str, daemon: Option<Daemon>, err: &anyhow::Error) -> ExitCode {
    match daemon {
        Some(daemon) => daemon.failed(&format!("{err:#}")),
        None => eprintln!("{name}: {err:#}"),
    }
    ExitCode::FAILURE
}
