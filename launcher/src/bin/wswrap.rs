//! The `wswrap` command: `wswrap [options] PORT PROGRAM [ARGS...]`, noVNC's old wrapper
//! command line, run by websockify's wrap mode (see [`websockify::wswrap`]).

#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;

use websockify::{entry, wswrap};

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    let prog = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .map_or_else(|| "wswrap".to_owned(), |n| n.to_string_lossy().into_owned());
    entry::run("wswrap", &prog, wswrap::parse(args), wswrap::render_error)
}
