//! The `websockify` command: parse the command line and run it ([`websockify::entry::run`]).
//! Two hidden flags write the manual page and shell completions for packaging
//! (`--generate-man DIR`, `--generate-completions DIR`; see [`websockify::manual`]).

#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;

use websockify::cli::{self, UsageError};
use websockify::{entry, manual};

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    if let Some(code) = manual::generate_from_args(&args) {
        return code;
    }
    let prog = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .map_or_else(
            || "websockify".to_owned(),
            |n| n.to_string_lossy().into_owned(),
        );
    entry::run("websockify", &prog, cli::parse(args), UsageError::render)
}
