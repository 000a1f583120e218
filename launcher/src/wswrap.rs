//! `wswrap [options] PORT PROGRAM [ARGS...]`: the command line of noVNC's old `wswrap`, run
//! by websockify's wrap mode.
//!
//! The old `wswrap` preloaded an interposer into PROGRAM that turned PROGRAM's own listening
//! socket on PORT into a WebSocket endpoint (`wswrap 5901 vncserver -geometry 640x480 :1`:
//! display `:1` listens on 5901, and 5901 then spoke WebSocket). Here the same command is
//! `websockify [options] PORT -- PROGRAM ARGS`: PROGRAM's bind() of PORT is moved to a private
//! loopback port and websockify serves PORT. The interposer lived inside the program, so it
//! served as long as the program's processes did, even after vncserver had started Xvnc and
//! exited; wswrap's default wrap mode ([`WrapMode::Tree`]) does the same. websockify's options
//! may come before PORT; everything after PROGRAM belongs to PROGRAM.

use std::ffi::OsString;
use std::path::Path;

use clap::{Arg, ArgAction, Command, ValueHint};

use crate::cli::{self, Parsed, Stop, UsageError};
use crate::config::WrapMode;

/// The one usage line, after the program name.
pub const USAGE: &str = "[options] [source_addr:]PORT PROGRAM [ARGS...]";

pub(crate) const INTRO: &str = "\
Runs PROGRAM and serves WebSocket clients (such as noVNC) on PORT, the port PROGRAM itself
listens on: PROGRAM's bind() of PORT is moved to a private loopback port, and each WebSocket
connection on PORT is forwarded to it. For a VNC server on display :N, PORT is 5900+N.

This is `websockify [options] PORT -- PROGRAM ARGS`, except that wswrap keeps serving while
PROGRAM or any process it started runs (vncserver starts Xvnc and exits), and exits with
PROGRAM's status once all of them have exited. --wrap-mode=exit, ignore or respawn chooses
websockify's behaviour instead.

websockify's options may come before PORT; everything after PROGRAM is passed to it.

Example:
  wswrap 5901 vncserver -geometry 640x480 :1

";

/// `Usage: wswrap [options] ...`, ending with a newline.
pub fn usage_line(prog: &str) -> String {
    format!("Usage: {prog} {USAGE}\n")
}

/// A usage error as wswrap prints it: its usage line, then `{prog}: error: {message}`.
pub fn render_error(err: &UsageError, prog: &str) -> String {
    format!("{}\n{prog}: error: {}\n", usage_line(prog), err.message)
}

/// The clap command behind `wswrap --help`, its man page and its completions: websockify's
/// options plus PORT, PROGRAM and ARGS.
pub fn command(prog: &str) -> Command {
    let options: Vec<Arg> = cli::command(prog)
        .get_arguments()
        .filter(|a| !a.is_positional())
        .cloned()
        .collect();
    Command::new("wswrap")
        .bin_name(prog)
        .disable_help_flag(true)
        .disable_version_flag(true)
        .max_term_width(100)
        .next_line_help(true)
        .next_help_heading("Arguments")
        .arg(
            Arg::new("port")
                .value_name("[source_addr:]PORT")
                .required(true)
                .display_order(1)
                .help("The port PROGRAM listens on, where WebSocket clients connect"),
        )
        .arg(
            Arg::new("program")
                .value_name("PROGRAM")
                .required(true)
                .value_hint(ValueHint::CommandName)
                .display_order(2)
                .help("The program to start (found on PATH, run without a shell)"),
        )
        .arg(
            Arg::new("args")
                .value_name("ARGS")
                .num_args(0..)
                .trailing_var_arg(true)
                .allow_hyphen_values(true)
                .action(ArgAction::Append)
                .value_hint(ValueHint::CommandWithArguments)
                .display_order(3)
                .help("Arguments for PROGRAM"),
        )
        .args(options)
        .mut_arg("wrap_mode", |a| {
            a.hide_default_value(true).help(
                "When PROGRAM exits: exit, ignore or respawn [default: serve until PROGRAM and \
                 every process it started have exited]",
            )
        })
        .help_template(format!("{}\n{INTRO}{{all-args}}", usage_line(prog)))
}

/// Parses wswrap's argv (program name first) into websockify's settings for wrap mode.
pub fn parse<I, T>(args: I) -> Result<Parsed, UsageError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let mut argv = args
        .into_iter()
        .map(|a| a.into().to_string_lossy().into_owned());
    let prog = argv
        .next()
        .and_then(|a| {
            Path::new(&a)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "wswrap".to_owned());
    let args: Vec<String> = argv.collect();
    let help = || Ok(Parsed::Print(command(&prog).render_help().to_string()));
    let version = || {
        let version = format!("wswrap (websockify) {}\n", env!("CARGO_PKG_VERSION"));
        Ok(Parsed::Print(version))
    };
    let too_few = || UsageError::new("Too few arguments: wswrap needs PORT and PROGRAM");

    let websockify = cli::command("websockify");
    let specs = cli::specs(&websockify);
    let mut options: Vec<String> = Vec::new();
    let mut mode_given = false;
    let mut rest = args.iter();
    // The options before PORT, consumed as optparse would (values included), then PORT.
    let port = loop {
        let arg = rest.next().ok_or_else(too_few)?;
        if arg == "--" {
            break rest.next().ok_or_else(too_few)?;
        }
        if let Some(body) = arg.strip_prefix("--") {
            let (name, inline) = match body.split_once('=') {
                Some((name, _)) => (name, true),
                None => (body, false),
            };
            let (long, _, takes_value) = match cli::match_long(&specs, name) {
                Ok(spec) => spec,
                Err(Stop::Error(err)) => return Err(err),
                Err(Stop::Help) => return help(),
                Err(Stop::Version) => return version(),
            };
            match long {
                "help" => return help(),
                "version" => return version(),
                "wrap-mode" => mode_given = true,
                _ => {}
            }
            options.push(arg.clone());
            if takes_value && !inline {
                let value = rest.next().ok_or_else(|| {
                    UsageError::new(format!("--{long} option requires 1 argument"))
                })?;
                options.push(value.clone());
            }
        } else if arg.len() > 1 && arg.starts_with('-') {
            options.push(arg.clone());
            for (at, ch) in arg.char_indices().skip(1) {
                let Some(&(long, _, takes_value)) = specs.iter().find(|s| s.1 == Some(ch)) else {
                    return Err(UsageError::new(format!("no such option: -{ch}")));
                };
                if long == "help" {
                    return help();
                }
                if takes_value {
                    if arg[at + ch.len_utf8()..].is_empty() {
                        let value = rest.next().ok_or_else(|| {
                            UsageError::new(format!("-{ch} option requires 1 argument"))
                        })?;
                        options.push(value.clone());
                    }
                    break;
                }
            }
        } else {
            break arg;
        }
    };
    // `wswrap 5901 -- prog` reads as `wswrap 5901 prog`.
    let mut rest = rest.peekable();
    rest.next_if(|a| *a == "--");
    let program: Vec<String> = rest.cloned().collect();
    if program.is_empty() {
        return Err(too_few());
    }

    let websockify_argv = std::iter::once(prog.clone())
        .chain(options)
        .chain([port.clone(), "--".to_owned()])
        .chain(program);
    match cli::parse(websockify_argv)? {
        Parsed::Run(mut settings) => {
            if let Some(wrap) = settings.wrap.as_mut().filter(|_| !mode_given) {
                wrap.mode = WrapMode::Tree;
            }
            Ok(Parsed::Run(settings))
        }
        // Help and version were answered above; nothing else prints.
        Parsed::Print(text) => Ok(Parsed::Print(text)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Listen, Settings};

    fn parse_line(line: &str) -> Result<Parsed, UsageError> {
        parse(std::iter::once("wswrap").chain(line.split_whitespace()))
    }

    fn run(line: &str) -> Settings {
        match parse_line(line) {
            Ok(Parsed::Run(settings)) => *settings,
            other => panic!("expected settings for {line:?}, got {other:?}"),
        }
    }

    fn error(line: &str) -> String {
        match parse_line(line) {
            Err(err) => err.message,
            other => panic!("expected an error for {line:?}, got {other:?}"),
        }
    }

    #[test]
    fn runs_the_seed_command_line_as_wrap_mode_on_that_port() {
        let s = run("5901 vncserver -geometry 640x480 :1");
        let wrap = s.wrap.expect("wrap settings");
        assert_eq!(wrap.command, ["vncserver", "-geometry", "640x480", ":1"]);
        assert_eq!(wrap.mode, WrapMode::Tree);
        assert!(matches!(s.server.listen, Listen::Tcp { port: 5901, .. }));
    }

    #[test]
    fn takes_websockify_options_before_port_and_leaves_the_rest_to_the_program() {
        let s = run("-v --wrap-mode respawn --web=/w --heart 5 127.0.0.1:5901 -- prog -v --web x");
        let wrap = s.wrap.expect("wrap settings");
        assert_eq!(wrap.command, ["prog", "-v", "--web", "x"]);
        assert_eq!(wrap.mode, WrapMode::Respawn);
        assert!(s.log.verbose);
        assert_eq!(s.server.heartbeat, Some(std::time::Duration::from_secs(5)));
        assert_eq!(s.server.web.expect("--web").dir, Path::new("/w"));
        match s.server.listen {
            Listen::Tcp { host, port, .. } => {
                assert_eq!((host.as_deref(), port), (Some("127.0.0.1"), 5901));
            }
            other => panic!("unexpected listen {other:?}"),
        }
    }

    #[test]
    fn reports_usage_errors() {
        let too_few = "Too few arguments: wswrap needs PORT and PROGRAM";
        assert_eq!(error(""), too_few);
        assert_eq!(error("5901"), too_few);
        assert_eq!(error("-v 5901 --"), too_few);
        assert_eq!(error("--nope 5901 prog"), "no such option: --nope");
        assert_eq!(error("--record"), "--record option requires 1 argument");
        assert_eq!(error("abc prog"), "Error parsing listen port");
        let text = render_error(&UsageError::new("x"), "wswrap");
        assert_eq!(text, format!("Usage: wswrap {USAGE}\n\nwswrap: error: x\n"));
    }

    #[test]
    fn prints_help_and_version() {
        let Ok(Parsed::Print(help)) = parse_line("--hel") else {
            panic!("no help");
        };
        assert!(help.starts_with(&usage_line("wswrap")), "{help}");
        for needle in ["5900+N", "--wrap-mode <MODE>", "PROGRAM", "vncserver"] {
            assert!(help.contains(needle), "missing {needle}:\n{help}");
        }
        let Ok(Parsed::Print(version)) = parse_line("-v --version") else {
            panic!("no version");
        };
        assert!(version.starts_with("wswrap (websockify) "));
    }
}
