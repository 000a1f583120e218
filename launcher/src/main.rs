//! The `websockify` command: parse the command line and run it ([`websockify::entry::run`]).

#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;

use websockify::cli::{self, UsageError};
use websockify::entry;

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    let prog = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .map_or_else(
            || "websockify".to_owned(),
            |n| n.to_string_lossy().into_owned(),
        );
    entry::run("websockify", &prog, cli::parse(args), UsageError::render)
}
