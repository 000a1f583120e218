//! The manual pages `websockify(1)` and `wswrap(1)` and the bash, zsh and fish completions,
//! made from the same clap definitions as `--help` (clap_mangen, clap_complete), so they list
//! exactly the options the parser accepts.
//!
//! A package build cannot run a program while cargo-deb assembles it, so the files are written
//! by hidden flags of the built binary (`websockify --generate-man DIR`, `websockify
//! --generate-completions DIR`, not shown by `--help`), which `scripts/package` runs first.

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Command;
use clap_complete::Shell;
use clap_mangen::Man;
use roff::{Roff, bold, italic, roman};

use crate::cli;
use crate::wswrap;

/// The hidden flag that writes `websockify.1` and `wswrap.1` into a directory.
pub const GENERATE_MAN: &str = "--generate-man";
/// The hidden flag that writes the completions into `DIR/{bash,zsh,fish}/`.
pub const GENERATE_COMPLETIONS: &str = "--generate-completions";
/// The shells completions are made for.
pub const SHELLS: [Shell; 3] = [Shell::Bash, Shell::Zsh, Shell::Fish];

const DESCRIPTION: &str = "\
websockify accepts WebSocket connections on a port and relays each connection's bytes to a \
TCP server, a Unix socket or a TLS server; with --web it also serves files over HTTP on the \
same port (noVNC's pages, for instance). It is a drop-in replacement for the Python websockify \
of the noVNC project: the same command line, options and wire behaviour.

TLS (wss:// and https://) is detected per connection when --cert names a certificate, so one \
port serves both ws:// and wss://. A token plugin picks a target per connection; an auth \
plugin checks each client first.

Options may come before, between or after the arguments. Long options may be shortened to any \
unambiguous prefix and take a value as --opt VALUE or --opt=VALUE.";

/// `websockify`'s command as the manual shows it: the parser's options, upstream's usage.
fn websockify_command() -> Command {
    let usage: Vec<String> = cli::USAGE_LINES
        .iter()
        .map(|line| format!("websockify [options] {line}"))
        .collect();
    cli::command("websockify")
        .about("WebSocket-to-TCP bridge (for noVNC and other WebSocket clients)")
        .long_about(DESCRIPTION)
        .override_usage(usage.join("\n"))
        .version(env!("CARGO_PKG_VERSION"))
}

/// `wswrap`'s command as the manual shows it.
fn wswrap_command() -> Command {
    let intro = wswrap::INTRO
        .split("\n\nExample:")
        .next()
        .unwrap_or(wswrap::INTRO);
    // The help text is wrapped for a terminal; roff fills paragraphs itself.
    let paragraphs: Vec<String> = intro
        .split("\n\n")
        .map(|p| p.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    wswrap::command("wswrap")
        .about("run a program and serve WebSocket clients on the port it listens on")
        .long_about(paragraphs.join("\n\n"))
        .override_usage(format!("wswrap {}", wswrap::USAGE))
        .version(env!("CARGO_PKG_VERSION"))
}

/// A section of plain paragraphs and `.TP` items.
enum Part<'a> {
    Para(&'a str),
    Item(&'a str, &'a str),
    Code(&'a [&'a str]),
}

fn section(roff: &mut Roff, title: &str, parts: &[Part]) {
    roff.control("SH", [title]);
    for part in parts {
        match part {
            Part::Para(text) => {
                roff.control("PP", []);
                roff.text([roman(*text)]);
            }
            Part::Item(term, text) => {
                roff.control("TP", []);
                roff.text([bold(*term)]);
                roff.text([roman(*text)]);
            }
            Part::Code(lines) => {
                roff.control("PP", []);
                roff.control("RS", ["4"]);
                roff.control("nf", []);
                for line in *lines {
                    roff.text([roman(*line)]);
                }
                roff.control("fi", []);
                roff.control("RE", []);
            }
        }
    }
}

fn render(man: &Man, before_options: &Roff, after_options: &Roff) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing into a Vec cannot fail.
    let _ = man.render_title(&mut out);
    let _ = man.render_name_section(&mut out);
    let _ = man.render_synopsis_section(&mut out);
    let _ = man.render_description_section(&mut out);
    out.extend(before_options.to_roff().into_bytes());
    let _ = man.render_options_section(&mut out);
    out.extend(after_options.to_roff().into_bytes());
    let _ = man.render_version_section(&mut out);
    out
}

fn man(cmd: Command, title: &str) -> Man {
    Man::new(cmd)
        .title(title)
        .section("1")
        .source(format!("websockify {}", env!("CARGO_PKG_VERSION")))
        .manual("User Commands")
}

/// The text of `websockify.1` (roff).
pub fn websockify_page() -> Vec<u8> {
    let mut arguments = Roff::new();
    section(
        &mut arguments,
        "ARGUMENTS",
        &[
            Part::Item(
                "[source_addr:]source_port",
                "Where to listen. Without a host, on all addresses (IPv6 and IPv4); IPv6 \
                 hosts may be bracketed: [::1]:6080. Not given with --inetd or --unix-listen.",
            ),
            Part::Item(
                "target_addr:target_port",
                "Where each WebSocket connection is forwarded. Not given with --token-plugin, \
                 --unix-target or a wrapped command.",
            ),
            Part::Item(
                "-- WRAP_COMMAND_LINE",
                "A program to start whose listening on source_port is moved to a private \
                 loopback port (rebind.so, embedded in websockify, is preloaded into it); \
                 websockify serves source_port and forwards to the program. See wswrap(1).",
            ),
        ],
    );
    let mut after = Roff::new();
    section(
        &mut after,
        "SIGNALS",
        &[
            Part::Item(
                "SIGTERM, SIGINT",
                "Stop accepting (after --shutdown-delay), let open sessions go on for up to \
                 --drain-timeout seconds, close them with 1001, stop a wrapped program, exit. \
                 A second signal exits at once.",
            ),
            Part::Item(
                "SIGHUP",
                "Reload the TLS certificate and the token files, reopen --log-file.",
            ),
        ],
    );
    section(
        &mut after,
        "EXIT STATUS",
        &[
            Part::Item(
                "0",
                "Stopped by a signal, --timeout, --idle-timeout or --run-once.",
            ),
            Part::Item(
                "1",
                "A start-up or runtime failure, printed as one line (websockify: cannot listen \
                 on port 6080: Address already in use).",
            ),
            Part::Item("2", "A usage error, printed after the usage lines."),
            Part::Para(
                "With a wrapped program and --wrap-mode=exit, websockify exits with the \
                 program's status.",
            ),
        ],
    );
    section(
        &mut after,
        "ENVIRONMENT",
        &[
            Part::Item(
                "RUST_LOG",
                "Log filter (for example debug, or websockify=debug); overrides -v.",
            ),
            Part::Item(
                "WEBSOCKIFY_REBIND",
                "A rebind.so to preload into wrapped programs instead of the embedded one.",
            ),
            Part::Item(
                "LISTEN_FDS, LISTEN_PID, NOTIFY_SOCKET",
                "systemd socket activation and readiness: a socket passed by systemd is served \
                 instead of binding the listen address, and READY=1 is sent once listening.",
            ),
        ],
    );
    section(
        &mut after,
        "FILES",
        &[Part::Para(
            "The Debian package installs websockify.service and websockify.socket (systemd; \
             not enabled) and reads the service's arguments from /etc/default/websockify.",
        )],
    );
    section(
        &mut after,
        "EXAMPLES",
        &[
            Part::Para("noVNC's pages and a VNC server on localhost:5900, on port 6080:"),
            Part::Code(&["websockify --web /usr/share/novnc 6080 localhost:5900"]),
            Part::Para("The same over TLS too (ws:// and wss:// on one port):"),
            Part::Code(&["websockify --cert self.pem --web /usr/share/novnc 6080 localhost:5900"]),
            Part::Para("One target per token, from a file of lines token: host:port:"),
            Part::Code(&["websockify --token-plugin TokenFile --token-source tokens.cfg 6080"]),
            Part::Para("Start a VNC server and serve its display :1 port over WebSocket:"),
            Part::Code(&["websockify 5901 --wrap-mode=ignore -- vncserver :1"]),
        ],
    );
    let mut see_also = Roff::new();
    see_also.control("SH", ["SEE ALSO"]);
    see_also.text([
        bold("wswrap"),
        roman("(1), "),
        bold("systemd.socket"),
        roman("(5), "),
        italic("https://github.com/novnc/websockify"),
    ]);
    let mut page = render(&man(websockify_command(), "WEBSOCKIFY"), &arguments, &after);
    page.extend(see_also.to_roff().into_bytes());
    page
}

/// The text of `wswrap.1` (roff).
pub fn wswrap_page() -> Vec<u8> {
    let mut after = Roff::new();
    section(
        &mut after,
        "EXIT STATUS",
        &[Part::Para(
            "The program's status once it and every process it started have exited; 1 when \
             wswrap cannot start (the port is taken, the program cannot be run or never \
             listens on the port), 2 for a usage error.",
        )],
    );
    section(
        &mut after,
        "EXAMPLES",
        &[
            Part::Para("A VNC server on display :1 (port 5901), for noVNC:"),
            Part::Code(&["wswrap 5901 vncserver -geometry 640x480 :1"]),
            Part::Para(
                "With noVNC's pages on the same port, restarting the program when it exits:",
            ),
            Part::Code(&[
                "wswrap --web /usr/share/novnc --wrap-mode=respawn 5901 Xtigervnc :1 -SecurityTypes None",
            ]),
        ],
    );
    let mut see_also = Roff::new();
    see_also.control("SH", ["SEE ALSO"]);
    see_also.text([bold("websockify"), roman("(1)")]);
    let mut page = render(&man(wswrap_command(), "WSWRAP"), &Roff::new(), &after);
    page.extend(see_also.to_roff().into_bytes());
    page
}

/// The completion script of `bin` (`websockify` or `wswrap`) for `shell`.
pub fn completion(shell: Shell, bin: &str) -> Vec<u8> {
    let mut cmd = if bin == "wswrap" {
        wswrap::command("wswrap")
    } else {
        cli::command("websockify")
    };
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, bin, &mut out);
    out
}

/// Where a completion goes under `DIR`, named as each shell's completion directory expects
/// (`/usr/share/bash-completion/completions/NAME`, `.../vendor-completions/_NAME`,
/// `.../vendor_completions.d/NAME.fish`).
pub fn completion_path(shell: Shell, bin: &str) -> String {
    match shell {
        Shell::Zsh => format!("zsh/_{bin}"),
        Shell::Fish => format!("fish/{bin}.fish"),
        other => format!("{other}/{bin}"),
    }
}

fn write(dir: &Path, name: &str, text: &[u8]) -> anyhow::Result<()> {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create directory {}", parent.display()))?;
    }
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// Writes `websockify.1` and `wswrap.1` into `dir`.
pub fn write_man_pages(dir: &Path) -> anyhow::Result<()> {
    write(dir, "websockify.1", &websockify_page())?;
    write(dir, "wswrap.1", &wswrap_page())
}

/// Writes the completions of both commands for every shell into `dir/{bash,zsh,fish}/`.
pub fn write_completions(dir: &Path) -> anyhow::Result<()> {
    for shell in SHELLS {
        for bin in ["websockify", "wswrap"] {
            write(dir, &completion_path(shell, bin), &completion(shell, bin))?;
        }
    }
    Ok(())
}

/// Handles `websockify --generate-man DIR` and `--generate-completions DIR` (argv exactly
/// so); `None` for any other command line.
pub fn generate_from_args(args: &[OsString]) -> Option<ExitCode> {
    let flag = args.get(1)?.to_str()?;
    let write: fn(&Path) -> anyhow::Result<()> = match flag {
        GENERATE_MAN => write_man_pages,
        GENERATE_COMPLETIONS => write_completions,
        _ => return None,
    };
    let [_, _, dir] = args else {
        eprintln!("websockify: {flag} needs exactly one argument, the output directory");
        return Some(ExitCode::from(2));
    };
    match write(Path::new(dir)) {
        Ok(()) => Some(ExitCode::SUCCESS),
        Err(err) => {
            eprintln!("websockify: {err:#}");
            Some(ExitCode::FAILURE)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The page's text with roff's escapes and font changes taken out.
    fn plain(page: &[u8]) -> String {
        let text = String::from_utf8_lossy(page)
            .replace("\\-", "-")
            .replace("\\(aq", "'")
            .replace("\\*(Aq", "'")
            .replace("\\fB", "")
            .replace("\\fI", "")
            .replace("\\fR", "")
            .replace("\\fP", "");
        text.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn websockify_page_lists_every_long_option_with_its_help() {
        let page = plain(&websockify_page());
        let cmd = cli::command("websockify");
        let mut count = 0;
        for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
            let Some(long) = arg.get_long() else {
                continue;
            };
            count += 1;
            assert!(page.contains(&format!("--{long}")), "--{long} missing");
            let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
            let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
            assert!(!help.is_empty(), "--{long} has no help");
            assert!(page.contains(&help), "help of --{long} missing: {help}");
        }
        assert!(count > 40, "only {count} options");
        for needle in [
            ".TH WEBSOCKIFY 1",
            "SYNOPSIS",
            "-- WRAP_COMMAND_LINE",
            "EXIT STATUS",
        ] {
            assert!(page.contains(needle), "{needle} missing");
        }
    }

    #[test]
    fn wswrap_page_has_its_usage_arguments_and_the_options() {
        let page = plain(&wswrap_page());
        for needle in [
            ".TH WSWRAP 1",
            "wswrap [options] [source_addr:]PORT PROGRAM [ARGS...]",
            "5900+N",
            "--wrap-mode",
            "vncserver -geometry 640x480 :1",
        ] {
            assert!(page.contains(needle), "{needle} missing:\n{page}");
        }
    }

    #[test]
    fn completions_generate_for_bash_zsh_and_fish() {
        for shell in SHELLS {
            for bin in ["websockify", "wswrap"] {
                let text = String::from_utf8(completion(shell, bin)).expect("UTF-8 completion");
                assert!(text.contains("heartbeat"), "{shell} {bin}:\n{text}");
                assert!(text.contains("idle-timeout"), "{shell} {bin}");
                assert!(text.contains(bin), "{shell} {bin}");
                assert!(!text.contains("generate-man"), "{shell} {bin}");
            }
        }
        assert_eq!(completion_path(Shell::Bash, "wswrap"), "bash/wswrap");
        assert_eq!(completion_path(Shell::Zsh, "websockify"), "zsh/_websockify");
    }

    #[test]
    fn writes_the_files_and_ignores_other_command_lines() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let argv = |flag: &str| -> Vec<OsString> {
            vec!["websockify".into(), flag.into(), dir.path().into()]
        };
        assert_eq!(
            generate_from_args(&argv(GENERATE_MAN)),
            Some(ExitCode::SUCCESS)
        );
        assert_eq!(
            generate_from_args(&argv(GENERATE_COMPLETIONS)),
            Some(ExitCode::SUCCESS)
        );
        for name in [
            "websockify.1",
            "wswrap.1",
            "bash/websockify",
            "zsh/_wswrap",
            "fish/websockify.fish",
        ] {
            assert!(dir.path().join(name).is_file(), "{name} not written");
        }
        assert_eq!(generate_from_args(&argv("--verbose")), None);
        let short = vec![OsString::from("websockify"), GENERATE_MAN.into()];
        assert_eq!(generate_from_args(&short), Some(ExitCode::from(2)));
    }
}
