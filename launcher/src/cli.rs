//! Command line: upstream's optparse grammar, read with clap, validated into [`Settings`].
//!
//! Python websockify parses argv with `optparse`, and scripts such as noVNC's `novnc_proxy`
//! depend on its quirks: options after the positionals, `--opt=value`, unique prefixes of long
//! options, `--` starting a wrapped command, and its exact error messages. clap declares the
//! options and renders `--help`; a small scanner in front of it applies optparse's token rules
//! and error wording, then hands clap a canonical argv (`--long=value` … `--` positionals).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Arg, ArgAction, Args, Command, CommandFactory, FromArgMatches, Parser, ValueEnum};

use crate::client::TrustedProxies;
use crate::config::{
    AuthSettings, Config, Listen, MetricsListen, Settings, SslVersion, Target, TargetTlsSettings,
    TokenSettings, WebSettings, WrapMode, WrapSettings,
};
use crate::logging::{LogFormat, LogSettings};
use crate::proxy_header;

/// Result of parsing argv.
#[derive(Debug)]
pub enum Parsed {
    /// Run the server.
    Run(Box<Settings>),
    /// `-h/--help` or `--version`: print this text (it ends with a newline) to stdout, exit 0.
    Print(String),
}

/// A usage error: printed as upstream's usage block, then `websockify: error: <message>`, exit 2.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct UsageError {
    /// The text after `error: `, worded as upstream's.
    pub message: String,
}

impl UsageError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        UsageError {
            message: message.into(),
        }
    }

    /// The usage block, an empty line and `{prog}: error: {message}`, as optparse prints them.
    pub fn render(&self, prog: &str) -> String {
        format!("{}\n{prog}: error: {}\n", usage_block(prog), self.message)
    }
}

pub(crate) const USAGE_LINES: [&str; 4] = [
    "[source_addr:]source_port target_addr:target_port",
    "--token-plugin=CLASS [source_addr:]source_port",
    "--unix-target=FILE [source_addr:]source_port",
    "[source_addr:]source_port -- WRAP_COMMAND_LINE",
];

/// Upstream's usage block, `Usage: ` line included, ending with a newline.
pub(crate) fn usage_block(prog: &str) -> String {
    let mut block = String::from("Usage: \n");
    for line in USAGE_LINES {
        block.push_str(&format!("    {prog} [options] {line}\n"));
    }
    block
}

pub(crate) const INTRO: &str = "\
Bridges WebSocket clients (such as noVNC) to a TCP or Unix-socket server.

Arguments:
  [source_addr:]source_port  Where to listen. Without a host, on all addresses;
                             IPv6 hosts may be bracketed: [::1]:6080.
  target_addr:target_port    Where each WebSocket connection is forwarded.
  WRAP_COMMAND_LINE          A program to start whose listening on source_port
                             is moved to a private local port; websockify takes
                             source_port and forwards to the program.

Options may come before, between or after the arguments. Long options may be
shortened to any unambiguous prefix and take a value as --opt VALUE or
--opt=VALUE.

";

#[derive(Parser, Debug)]
#[command(
    name = "websockify",
    disable_help_flag = true,
    disable_version_flag = true,
    args_override_self = true,
    max_term_width = 100,
    next_line_help = true
)]
struct Cli {
    #[command(flatten)]
    listen: ListenArgs,
    #[command(flatten)]
    target: TargetArgs,
    #[command(flatten)]
    tls: TlsArgs,
    #[command(flatten)]
    web: WebArgs,
    #[command(flatten)]
    log: LogArgs,
    #[command(flatten)]
    life: LifeArgs,
    #[command(flatten)]
    fleet: FleetArgs,
    /// Listen address, target and wrapped command, in order (the scanner puts them after `--`).
    #[arg(hide = true, num_args = 0..)]
    positionals: Vec<String>,
}

#[derive(Args, Debug)]
#[command(next_help_heading = "Listening")]
struct ListenArgs {
    /// Prefer IPv6 addresses when resolving the listen host
    #[arg(short = '6', long)]
    prefer_ipv6: bool,
    /// Accept connections on the listening socket given as standard input (no listen argument)
    #[arg(long)]
    inetd: bool,
    /// Listen on the Unix socket FILE instead of a TCP port (no listen argument)
    #[arg(long, value_name = "FILE")]
    unix_listen: Option<String>,
    /// Permissions of the --unix-listen socket, in octal [default: 0600]
    #[arg(long, value_name = "UNIX_LISTEN_MODE")]
    unix_listen_mode: Option<String>,
}

#[derive(Args, Debug)]
#[command(next_help_heading = "Target")]
struct TargetArgs {
    /// Connect to the Unix socket FILE instead of target_addr:target_port
    #[arg(long, value_name = "FILE")]
    unix_target: Option<String>,
    /// Connect to the target over TLS, checking its certificate against the system roots
    #[arg(long)]
    ssl_target: bool,
    /// Trust the CA certificates in FILE (PEM) for the target instead of the system roots;
    /// implies --ssl-target
    #[arg(long, value_name = "FILE")]
    ssl_target_ca: Option<String>,
    /// Do not verify the target's certificate at all (a warning is logged at start-up);
    /// implies --ssl-target
    #[arg(long)]
    ssl_target_insecure: bool,
    /// Server name to send to the target (SNI) and to verify its certificate against
    /// [default: the target host]; implies --ssl-target
    #[arg(long, value_name = "NAME")]
    ssl_target_sni: Option<String>,
    /// Client certificate chain (PEM) to present to the target; needs --ssl-target-key,
    /// implies --ssl-target
    #[arg(long, value_name = "FILE")]
    ssl_target_cert: Option<String>,
    /// Private key (unencrypted PEM) of --ssl-target-cert
    #[arg(long, value_name = "FILE")]
    ssl_target_key: Option<String>,
    /// When the wrapped program exits: exit, ignore or respawn
    #[arg(long, value_name = "MODE", default_value = "exit", value_parser = choice::<WrapChoice>("--wrap-mode"))]
    wrap_mode: WrapChoice,
}

#[derive(Args, Debug)]
#[command(next_help_heading = "TLS (wss:// and https:// on the listening port)")]
struct TlsArgs {
    /// PEM certificate chain; may also hold the private key
    #[arg(long, value_name = "CERT", default_value = "self.pem")]
    cert: String,
    /// PEM private key, when it is not in the --cert file
    #[arg(long, value_name = "KEY")]
    key: Option<String>,
    /// Password of an encrypted private key (visible in ps: prefer --key-password-file or
    /// the WEBSOCKIFY_KEY_PASSWORD environment variable)
    #[arg(long, value_name = "KEY_PASSWORD")]
    key_password: Option<String>,
    /// Read the --key password from FILE (one trailing newline is ignored); --key-password
    /// wins over it, and it wins over WEBSOCKIFY_KEY_PASSWORD
    #[arg(long, value_name = "FILE")]
    key_password_file: Option<String>,
    /// Refuse clients that do not use TLS
    #[arg(long)]
    ssl_only: bool,
    /// Oldest TLS version accepted: default, tlsv1_1, tlsv1_2 or tlsv1_3
    #[arg(long, value_name = "SSL_VERSION", default_value = "default", value_parser = choice::<SslChoice>("--ssl-version"))]
    ssl_version: SslChoice,
    /// Cipher suites allowed, as an OpenSSL-style list [default: the TLS library's]
    #[arg(long, value_name = "SSL_CIPHERS")]
    ssl_ciphers: Option<String>,
    /// Require TLS clients to present a certificate from a trusted CA
    #[arg(long)]
    verify_client: bool,
    /// CA certificates trusted by --verify-client [default: the system's]
    #[arg(long, value_name = "FILE")]
    cafile: Option<String>,
}

#[derive(Args, Debug)]
#[command(next_help_heading = "Web server, tokens and authentication")]
struct WebArgs {
    /// Also serve the files in DIR over HTTP on the listening port
    #[arg(long, value_name = "DIR")]
    web: Option<String>,
    /// Do not list directories that have no index file
    #[arg(long)]
    file_only: bool,
    /// Check web requests with the --auth-plugin too
    #[arg(long)]
    web_auth: bool,
    /// Pick each connection's target with the token plugin CLASS, e.g. TokenFile
    #[arg(long, value_name = "CLASS")]
    token_plugin: Option<String>,
    /// Argument for the token plugin, e.g. a token file or directory
    #[arg(long, value_name = "ARG")]
    token_source: Option<String>,
    /// Take the token from the Host header instead of the ?token= parameter
    #[arg(long)]
    host_token: bool,
    /// Take the token from the cookie NAME of the upgrade request instead of the ?token=
    /// parameter (one of --host-token, --token-cookie, --token-path)
    #[arg(long, value_name = "NAME")]
    token_cookie: Option<String>,
    /// Take the token from the last segment of the path, /websockify/TOKEN, instead of the
    /// ?token= parameter
    #[arg(long)]
    token_path: bool,
    /// Deprecated: same as --token-plugin TokenFile --token-source FILE
    #[arg(long, value_name = "FILE")]
    target_config: Option<String>,
    /// Check each connection with the auth plugin CLASS, e.g. BasicHTTPAuth
    #[arg(long, value_name = "CLASS")]
    auth_plugin: Option<String>,
    /// Argument for the auth plugin; for BasicHTTPAuth USER:PASSWORD, or @FILE to read that
    /// line from FILE (kept out of ps)
    #[arg(long, value_name = "ARG")]
    auth_source: Option<String>,
    /// Only browsers on these origins may connect (space- or comma-separated,
    /// e.g. "https://vnc.example.org"); works with or without an auth plugin
    #[arg(long, value_name = "ORIGINS")]
    allowed_origin: Option<String>,
    /// Also accept the WebSocket subprotocol NAME (repeatable; e.g. sip): the first name the
    /// client offers among binary and these is answered, and bytes are relayed as with binary
    #[arg(long, value_name = "NAME", action = ArgAction::Append)]
    subprotocol: Vec<String>,
    /// Also accept clients of the 2010 Hixie-75/76 WebSocket drafts (no masking; browsers
    /// dropped them in 2011), with base64 in every frame
    #[arg(long)]
    hixie: bool,
}

#[derive(Args, Debug)]
#[command(next_help_heading = "Logging")]
struct LogArgs {
    /// Log debug messages too
    #[arg(short, long)]
    verbose: bool,
    /// Print a token per WebSocket frame to stdout
    #[arg(long)]
    traffic: bool,
    /// Record each session's frames to FILE.<session number>
    #[arg(long, value_name = "FILE")]
    record: Option<String>,
    /// Also write the log to FILE
    #[arg(long, value_name = "FILE")]
    log_file: Option<String>,
    /// Send the log to syslog: a local socket such as /dev/log, or a UDP host:port
    #[arg(long, value_name = "SERVER")]
    syslog: Option<String>,
    /// Use the old BSD syslog format (RFC 3164) instead of RFC 5424
    #[arg(long)]
    legacy_syslog: bool,
    /// Log lines as text, or as json (one object per line, for log collectors)
    #[arg(long, value_name = "FORMAT", default_value = "text", value_parser = choice::<FormatChoice>("--log-format"))]
    log_format: FormatChoice,
}

#[derive(Args, Debug)]
#[command(next_help_heading = "Process and session lifetime")]
struct LifeArgs {
    /// Run in the background as a daemon
    #[arg(short = 'D', long)]
    daemon: bool,
    /// Write the process id to FILE (removed at exit); handy with --daemon
    #[arg(long, value_name = "FILE")]
    pid_file: Option<String>,
    /// After opening the listening socket(s), the pid file and the certificate, run as USER
    /// (a name or uid; needs root), with USER's groups
    #[arg(long, value_name = "USER")]
    user: Option<String>,
    /// Run as GROUP (a name or gid) instead of the --user's primary group
    #[arg(long, value_name = "GROUP")]
    group: Option<String>,
    /// Exit after the first WebSocket session ends
    #[arg(long)]
    run_once: bool,
    /// Stop accepting TIMEOUT seconds after start, exit once sessions end (0: never)
    #[arg(long, value_name = "TIMEOUT", default_value = "0", value_parser = seconds("--timeout"))]
    timeout: u64,
    /// Exit after IDLE_TIMEOUT seconds with no open connection (0: never)
    #[arg(long, value_name = "IDLE_TIMEOUT", default_value = "0", value_parser = seconds("--idle-timeout"))]
    idle_timeout: u64,
    /// Ping each client every INTERVAL seconds (0: never)
    #[arg(long, value_name = "INTERVAL", default_value = "0", value_parser = seconds("--heartbeat"))]
    heartbeat: u64,
    /// Accepted for compatibility with Python websockify's SocketServer engine
    #[arg(long)]
    libserver: bool,
}

#[derive(Args, Debug)]
#[command(next_help_heading = "Behind a load balancer: client address, limits, metrics, draining")]
struct FleetArgs {
    /// Every connection starts with a PROXY protocol v1 or v2 header (HAProxy send-proxy,
    /// send-proxy-v2) naming the client; connections without one are closed
    #[arg(long)]
    proxy_protocol: bool,
    /// Believe X-Forwarded-For / Forwarded (the last entry) from these peers only, e.g.
    /// "127.0.0.1,10.0.0.0/8" (a TLS-terminating nginx in front)
    #[arg(long, value_name = "CIDRS")]
    trusted_proxy: Option<String>,
    /// Send a PROXY protocol header (v1 or v2) with the client's address to the target
    #[arg(long, value_name = "VERSION", value_parser = choice::<ProxyChoice>("--target-proxy-protocol"))]
    target_proxy_protocol: Option<ProxyChoice>,
    /// At most N open client connections; more get 503 with Retry-After (0: no limit)
    #[arg(long, value_name = "N", default_value = "0", value_parser = seconds("--max-connections"))]
    max_connections: u64,
    /// At most N open connections per client address (0: no limit)
    #[arg(long, value_name = "N", default_value = "0", value_parser = seconds("--max-connections-per-ip"))]
    max_connections_per_ip: u64,
    /// Serve GET /metrics (Prometheus), /healthz and /readyz on [HOST:]PORT; without a host,
    /// on 127.0.0.1 only
    #[arg(long, value_name = "[HOST:]PORT")]
    metrics_listen: Option<String>,
    /// After SIGTERM/SIGINT, keep accepting for SECS while /readyz says 503, so that a load
    /// balancer notices first
    #[arg(long, value_name = "SECS", default_value = "0", value_parser = seconds("--shutdown-delay"))]
    shutdown_delay: u64,
    /// After SIGTERM/SIGINT (and the shutdown delay), let open sessions go on for up to SECS,
    /// then close them with 1001; a second signal exits at once
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = seconds("--drain-timeout"))]
    drain_timeout: u64,
}

/// `--target-proxy-protocol` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum ProxyChoice {
    V1,
    V2,
}

impl From<ProxyChoice> for proxy_header::Version {
    fn from(choice: ProxyChoice) -> Self {
        match choice {
            ProxyChoice::V1 => proxy_header::Version::V1,
            ProxyChoice::V2 => proxy_header::Version::V2,
        }
    }
}

/// `--ssl-version` values; kept here so that `config` stays free of clap types.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum SslChoice {
    Default,
    #[value(name = "tlsv1_1")]
    Tlsv1_1,
    #[value(name = "tlsv1_2")]
    Tlsv1_2,
    #[value(name = "tlsv1_3")]
    Tlsv1_3,
}

impl From<SslChoice> for SslVersion {
    fn from(choice: SslChoice) -> Self {
        match choice {
            SslChoice::Default => SslVersion::Default,
            SslChoice::Tlsv1_1 => SslVersion::Tlsv1_1,
            SslChoice::Tlsv1_2 => SslVersion::Tlsv1_2,
            SslChoice::Tlsv1_3 => SslVersion::Tlsv1_3,
        }
    }
}

/// `--wrap-mode` values; the runtime's [`WrapMode`] stays free of clap types.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum WrapChoice {
    Exit,
    Ignore,
    Respawn,
}

impl From<WrapChoice> for WrapMode {
    fn from(choice: WrapChoice) -> Self {
        match choice {
            WrapChoice::Exit => WrapMode::Exit,
            WrapChoice::Ignore => WrapMode::Ignore,
            WrapChoice::Respawn => WrapMode::Respawn,
        }
    }
}

/// `--log-format` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum FormatChoice {
    Text,
    Json,
}

impl From<FormatChoice> for LogFormat {
    fn from(choice: FormatChoice) -> Self {
        match choice {
            FormatChoice::Text => LogFormat::Text,
            FormatChoice::Json => LogFormat::Json,
        }
    }
}

/// A clap value parser for optparse's `type="int"` (decimal only, no sign) with its message.
fn seconds(opt: &'static str) -> impl Fn(&str) -> Result<u64, UsageError> + Clone + Send + Sync {
    move |value| {
        value
            .bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| value.parse().ok())
            .flatten()
            .ok_or_else(|| {
                UsageError::new(format!(
                    "option {opt}: invalid integer value: {}",
                    py_repr(value)
                ))
            })
    }
}

/// A clap value parser for optparse's `choices=` (exact, case-sensitive) with its message.
fn choice<E: ValueEnum + Send + Sync + 'static>(
    opt: &'static str,
) -> impl Fn(&str) -> Result<E, UsageError> + Clone + Send + Sync {
    move |value| {
        let name = |v: &E| v.to_possible_value().map(|p| p.get_name().to_owned());
        let variants = E::value_variants();
        if let Some(found) = variants.iter().find(|v| name(v).as_deref() == Some(value)) {
            return Ok(found.clone());
        }
        let names: Vec<String> = variants
            .iter()
            .filter_map(name)
            .map(|n| py_repr(&n))
            .collect();
        Err(UsageError::new(format!(
            "option {opt}: invalid choice: {} (choose from {})",
            py_repr(value),
            names.join(", ")
        )))
    }
}

/// Python's `repr()` of a string, which optparse puts in its messages.
fn py_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::from(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => out.extend(['\\', c]),
            c if (c as u32) < 0x20 || c == '\x7f' => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// The clap command: the derived options plus help/version, under our help template.
pub(crate) fn command(prog: &str) -> Command {
    Cli::command()
        .next_help_heading("Information")
        .arg(
            Arg::new("help")
                .short('h')
                .long("help")
                .action(ArgAction::SetTrue)
                .help("Print this help and exit"),
        )
        .arg(
            Arg::new("version")
                .long("version")
                .action(ArgAction::SetTrue)
                .help("Print the version and exit"),
        )
        .help_template(format!("{}\n{INTRO}{{all-args}}", usage_block(prog)))
}

/// The options the scanner knows: long name, short letter, whether each takes a value.
pub(crate) fn specs(cmd: &Command) -> Vec<Spec<'_>> {
    cmd.get_arguments()
        .filter_map(|a| Some((a.get_long()?, a.get_short(), a.get_action().takes_values())))
        .collect()
}

/// Why the scanner stopped before the end of argv.
pub(crate) enum Stop {
    Error(UsageError),
    Help,
    Version,
}

/// One option as the scanner sees it: long name, short letter, whether it takes a value.
pub(crate) type Spec<'a> = (&'a str, Option<char>, bool);

/// Output of the optparse-style scan: canonical option tokens and the positionals, in order.
#[derive(Default)]
struct Scan {
    options: Vec<String>,
    positionals: Vec<String>,
}

impl Scan {
    fn push(&mut self, long: &str, value: Option<&str>) -> Result<(), Stop> {
        match (long, value) {
            ("help", _) => return Err(Stop::Help),
            ("version", _) => return Err(Stop::Version),
            (_, Some(value)) => self.options.push(format!("--{long}={value}")),
            (_, None) => self.options.push(format!("--{long}")),
        }
        Ok(())
    }
}

/// optparse's `_match_abbrev`: an exact name, else the only option it is a prefix of.
pub(crate) fn match_long<'a>(specs: &[Spec<'a>], name: &str) -> Result<Spec<'a>, Stop> {
    if let Some(spec) = specs.iter().find(|s| s.0 == name) {
        return Ok(*spec);
    }
    let mut found: Vec<Spec<'a>> = specs
        .iter()
        .filter(|s| s.0.starts_with(name))
        .copied()
        .collect();
    match found.len() {
        1 => Ok(found[0]),
        0 => Err(Stop::Error(UsageError::new(format!(
            "no such option: --{name}"
        )))),
        _ => {
            found.sort_by_key(|s| s.0);
            let names: Vec<String> = found.iter().map(|s| format!("--{}", s.0)).collect();
            let message = format!("ambiguous option: --{name} ({}?)", names.join(", "));
            Err(Stop::Error(UsageError::new(message)))
        }
    }
}

fn missing_value(opt: &str) -> Stop {
    Stop::Error(UsageError::new(format!("{opt} option requires 1 argument")))
}

/// Walk argv as optparse's `_process_args` does, until the end, `--`, help or the first error.
fn scan(specs: &[Spec], args: &[String], out: &mut Scan) -> Result<(), Stop> {
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        if arg == "--" {
            out.positionals.extend(rest.cloned());
            return Ok(());
        } else if let Some(body) = arg.strip_prefix("--") {
            let (name, inline) = match body.split_once('=') {
                Some((name, value)) => (name, Some(value)),
                None => (body, None),
            };
            let (long, _, takes_value) = match_long(specs, name)?;
            let value = match (takes_value, inline) {
                (true, Some(value)) => Some(value),
                (true, None) => Some(
                    rest.next()
                        .ok_or_else(|| missing_value(&format!("--{long}")))?
                        .as_str(),
                ),
                (false, Some(_)) => {
                    let message = format!("--{long} option does not take a value");
                    return Err(Stop::Error(UsageError::new(message)));
                }
                (false, None) => None,
            };
            out.push(long, value)?;
        } else if arg.len() > 1 && arg.starts_with('-') {
            for (at, ch) in arg.char_indices().skip(1) {
                let Some(&(long, _, takes_value)) = specs.iter().find(|s| s.1 == Some(ch)) else {
                    return Err(Stop::Error(UsageError::new(format!(
                        "no such option: -{ch}"
                    ))));
                };
                if !takes_value {
                    out.push(long, None)?;
                    continue;
                }
                // A short option with a value takes the rest of the word, or the next word.
                let attached = &arg[at + ch.len_utf8()..];
                let value = match attached {
                    "" => rest
                        .next()
                        .ok_or_else(|| missing_value(&format!("-{ch}")))?
                        .as_str(),
                    _ => attached,
                };
                out.push(long, Some(value))?;
                break;
            }
        } else {
            out.positionals.push(arg.clone());
        }
    }
    Ok(())
}

/// The message of a clap error: ours when a value parser above failed, else clap's first line.
fn from_clap(err: clap::Error) -> UsageError {
    if let Some(ours) = std::error::Error::source(&err).and_then(|s| s.downcast_ref::<UsageError>())
    {
        return ours.clone();
    }
    let text = err.to_string();
    let line = text.lines().next().unwrap_or_default();
    UsageError::new(line.strip_prefix("error: ").unwrap_or(line))
}

/// Parse argv (program name first) the way upstream's optparse setup does.
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
        .unwrap_or_else(|| "websockify".to_owned());
    let args: Vec<String> = argv.collect();

    let mut cmd = command(&prog);
    let specs = specs(&cmd);
    let mut scanned = Scan::default();
    let stop = scan(&specs, &args, &mut scanned).err();

    // clap converts the options scanned so far, in order, so a bad value before the point
    // where the scan stopped is reported first, as optparse would.
    let canonical = std::iter::once(prog.clone())
        .chain(scanned.options)
        .chain(std::iter::once("--".to_owned()))
        .chain(scanned.positionals);
    let matches = cmd.try_get_matches_from_mut(canonical).map_err(from_clap)?;
    match stop {
        Some(Stop::Error(err)) => return Err(err),
        Some(Stop::Help) => return Ok(Parsed::Print(cmd.render_help().to_string())),
        Some(Stop::Version) => {
            let version = format!("websockify {}\n", env!("CARGO_PKG_VERSION"));
            return Ok(Parsed::Print(version));
        }
        None => {}
    }
    let cli = Cli::from_arg_matches(&matches).map_err(from_clap)?;
    // Upstream: `if sys.argv.count('--'): wrap_cmd = args[1:]`.
    let wrap = args.iter().any(|a| a == "--");
    build(cli, wrap).map(|settings| Parsed::Run(Box::new(settings)))
}

/// Python treats an empty option value like a missing one (`if opts.web:`).
fn given(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.is_empty())
}

/// `host:port` split on the last `:`, brackets stripped; `None` if there is no `:`.
fn split_host_port(arg: &str) -> Option<(String, &str)> {
    let (host, port) = arg.rsplit_once(':')?;
    Some((host.trim_matches(['[', ']']).to_owned(), port))
}

fn port(text: &str, message: &str) -> Result<u16, UsageError> {
    text.parse().map_err(|_| UsageError::new(message))
}

/// Octal like Python's `int(x, 8)`: optional `0o` prefix.
fn octal(text: &str) -> Option<u32> {
    let digits = text
        .strip_prefix("0o")
        .or_else(|| text.strip_prefix("0O"))
        .unwrap_or(text);
    u32::from_str_radix(digits, 8)
        .ok()
        .filter(|_| !digits.starts_with(['+', '-']))
}

/// `--ssl-target-*`: each implies `--ssl-target`; contradictions are usage errors.
fn target_tls(t: &TargetArgs) -> Result<TargetTlsSettings, UsageError> {
    let file = |value: &Option<String>| given(value.clone()).map(PathBuf::from);
    let settings = TargetTlsSettings {
        ca: file(&t.ssl_target_ca),
        insecure: t.ssl_target_insecure,
        sni: given(t.ssl_target_sni.clone()),
        cert: file(&t.ssl_target_cert),
        key: file(&t.ssl_target_key),
    };
    if settings.insecure && settings.ca.is_some() {
        return Err(UsageError::new(
            "--ssl-target-insecure and --ssl-target-ca contradict each other; use one",
        ));
    }
    match (&settings.cert, &settings.key) {
        (Some(_), None) => {
            return Err(UsageError::new(
                "--ssl-target-cert needs --ssl-target-key (the client certificate's private key)",
            ));
        }
        (None, Some(_)) => {
            return Err(UsageError::new(
                "--ssl-target-key needs --ssl-target-cert (the client certificate)",
            ));
        }
        _ => {}
    }
    if let Some(name) = &settings.sni
        && crate::tls::server_name(name).is_err()
    {
        return Err(UsageError::new(format!(
            "option --ssl-target-sni: {} is not a DNS name or IP address",
            py_repr(name)
        )));
    }
    if given(t.unix_target.clone()).is_some() && settings != TargetTlsSettings::default() {
        return Err(UsageError::new(
            "the --ssl-target-* options need a TCP target; --unix-target connections do not use TLS",
        ));
    }
    Ok(settings)
}

/// Upstream's checks after `parse_args()`, in upstream's order.
fn build(cli: Cli, wrap: bool) -> Result<Settings, UsageError> {
    let Cli {
        listen: l,
        target: t,
        tls,
        web: w,
        log,
        life,
        fleet,
        positionals,
    } = cli;
    let (token_plugin, token_source) = (given(w.token_plugin), given(w.token_source));
    let (auth_plugin, auth_source) = (given(w.auth_plugin), given(w.auth_source));
    let (web, syslog) = (given(w.web), given(log.syslog));
    let (no_token, no_auth) = (token_plugin.is_none(), auth_plugin.is_none());
    let missing = if token_source.is_some() && no_token {
        Some(("--token-plugin", "--token-source"))
    } else if w.host_token && no_token {
        Some(("--token-plugin", "--host-token"))
    } else if w.token_cookie.is_some() && no_token {
        Some(("--token-plugin", "--token-cookie"))
    } else if w.token_path && no_token {
        Some(("--token-plugin", "--token-path"))
    } else if auth_source.is_some() && no_auth {
        Some(("--auth-plugin", "--auth-source"))
    } else if w.web_auth && no_auth {
        Some(("--auth-plugin", "--web-auth"))
    } else if w.web_auth && web.is_none() {
        Some(("--web", "--web-auth"))
    } else if log.legacy_syslog && syslog.is_none() {
        Some(("--syslog", "--legacy-syslog"))
    } else {
        None
    };
    if let Some((needed, used)) = missing {
        return Err(UsageError::new(format!(
            "You must use {needed} to use {used}"
        )));
    }
    let token_cookie = w.token_cookie;
    let sources = [w.host_token, token_cookie.is_some(), w.token_path];
    if sources.iter().filter(|given| **given).count() > 1 {
        return Err(UsageError::new(
            "--host-token, --token-cookie and --token-path each name where the token is: \
             use only one",
        ));
    }
    if let Some(name) = &token_cookie
        && !crate::handshake::is_token(name)
    {
        return Err(UsageError::new(format!(
            "option --token-cookie: invalid cookie name {}",
            py_repr(name)
        )));
    }
    if let Some((_, syslog_port)) = syslog.as_deref().and_then(|s| s.rsplit_once(':')) {
        port(syslog_port, "Error parsing syslog port")?;
    }
    // Checked after the requirements above, so `--target-config` does not satisfy them (upstream).
    let target_config = given(w.target_config);
    let (token_plugin, token_source) = match &target_config {
        Some(file) => (Some("TokenFile".to_owned()), Some(file.clone())),
        None => (token_plugin, token_source),
    };
    let wrap_command = match (wrap, positionals.get(1..)) {
        (true, Some(rest)) => rest.to_vec(),
        _ => Vec::new(),
    };
    if tls.ssl_only && !Path::new(&tls.cert).exists() {
        return Err(UsageError::new(format!(
            "SSL only and {} not found",
            tls.cert
        )));
    }

    let mut args = positionals.into_iter();
    let too_few = || UsageError::new("Too few arguments");
    // With --inetd or --unix-listen there is no listen argument.
    let listen = if l.inetd {
        Listen::Inetd
    } else if let Some(path) = given(l.unix_listen) {
        let mode = match given(l.unix_listen_mode) {
            Some(mode) => octal(&mode)
                .ok_or_else(|| UsageError::new("Error parsing listen unix socket mode"))?,
            None => 0o600,
        };
        Listen::Unix {
            path: PathBuf::from(path),
            mode,
        }
    } else {
        let arg = args.next().ok_or_else(too_few)?;
        let (host, text) = match split_host_port(&arg) {
            Some((host, text)) => (Some(host).filter(|h| !h.is_empty()), text),
            None => (None, arg.as_str()),
        };
        Listen::Tcp {
            host,
            port: port(text, "Error parsing listen port")?,
            prefer_ipv6: l.prefer_ipv6,
        }
    };

    let target_tls = target_tls(&t)?;
    let unix_target = given(t.unix_target);
    let target = if let Some(path) = &unix_target {
        Target::Unix(PathBuf::from(path))
    } else if !wrap_command.is_empty() || token_plugin.is_some() {
        // Placeholder: the token plugin picks the target per connection; in wrap mode the
        // server sets the port it moves the wrapped program to.
        Target::Tcp {
            host: "127.0.0.1".into(),
            port: 0,
        }
    } else {
        let arg = args.next().ok_or_else(too_few)?;
        let (host, text) =
            split_host_port(&arg).ok_or_else(|| UsageError::new("Error parsing target"))?;
        Target::Tcp {
            host,
            port: port(text, "Error parsing target port")?,
        }
    };
    if args.next().is_some() && !wrap {
        return Err(UsageError::new("Too many arguments"));
    }

    // Capped at ~136 years so that `Instant + duration` in the server cannot overflow.
    let secs = |n: u64| (n > 0).then(|| Duration::from_secs(n.min(u32::MAX.into())));
    let mut config = Config::new(target);
    config.listen = listen;
    config.tls.cert = PathBuf::from(tls.cert);
    config.tls.key = given(tls.key).map(PathBuf::from);
    config.tls.key_password = given(tls.key_password);
    config.tls.key_password_file = given(tls.key_password_file).map(PathBuf::from);
    config.tls.ssl_only = tls.ssl_only;
    config.tls.min_version = tls.ssl_version.into();
    config.tls.ciphers = given(tls.ssl_ciphers);
    config.tls.verify_client = tls.verify_client;
    config.tls.cafile = given(tls.cafile).map(PathBuf::from);
    config.ssl_target = t.ssl_target || target_tls != TargetTlsSettings::default();
    config.target_tls = target_tls;
    config.heartbeat = secs(life.heartbeat);
    config.run_once = life.run_once;
    config.timeout = secs(life.timeout);
    config.idle_timeout = secs(life.idle_timeout);
    config.record = given(log.record).map(PathBuf::from);
    config.traffic = log.traffic;
    config.web = web.map(|dir| WebSettings {
        dir: PathBuf::from(dir),
        file_only: w.file_only,
    });
    config.web_auth = w.web_auth;
    config.auth = AuthSettings {
        plugin: auth_plugin,
        source: auth_source,
        allowed_origins: w
            .allowed_origin
            .iter()
            .flat_map(|list| list.split([' ', ',']))
            .filter(|o| !o.is_empty())
            .map(str::to_owned)
            .collect(),
    };
    for name in &w.subprotocol {
        if !crate::handshake::is_token(name) {
            return Err(UsageError::new(format!(
                "option --subprotocol: invalid subprotocol name {}: it must be an HTTP token \
                 (visible ASCII, no spaces or any of ()<>@,;:\\\"/[]?={{}})",
                py_repr(name)
            )));
        }
        if !config.subprotocols.contains(name) {
            config.subprotocols.push(name.clone());
        }
    }
    config.proxy_protocol = fleet.proxy_protocol;
    if let Some(list) = given(fleet.trusted_proxy) {
        config.trusted_proxies = TrustedProxies::parse(&list)
            .map_err(|why| UsageError::new(format!("option --trusted-proxy: {why}")))?;
    }
    config.target_proxy_protocol = fleet.target_proxy_protocol.map(Into::into);
    let limit = |n: u64| (n > 0).then(|| usize::try_from(n).unwrap_or(usize::MAX));
    config.max_connections = limit(fleet.max_connections);
    config.max_connections_per_ip = limit(fleet.max_connections_per_ip);
    if let Some(spec) = given(fleet.metrics_listen) {
        let bad = || UsageError::new("Error parsing --metrics-listen port");
        config.metrics_listen = Some(match split_host_port(&spec) {
            Some((host, text)) => MetricsListen {
                host: Some(host).filter(|h| !h.is_empty()),
                port: text.parse().map_err(|_| bad())?,
            },
            None => MetricsListen {
                host: None,
                port: spec.parse().map_err(|_| bad())?,
            },
        });
    }
    config.shutdown_delay = Duration::from_secs(fleet.shutdown_delay.min(u32::MAX.into()));
    config.drain_timeout = Duration::from_secs(fleet.drain_timeout.min(u32::MAX.into()));
    config.hixie = w.hixie;
    config.token_cookie = token_cookie;
    config.token_path = w.token_path;
    config.token = token_plugin.map(|plugin| TokenSettings {
        plugin,
        source: token_source,
        host_token: w.host_token,
    });

    Ok(Settings {
        server: config,
        log: LogSettings {
            verbose: log.verbose,
            log_file: given(log.log_file).map(PathBuf::from),
            syslog,
            legacy_syslog: log.legacy_syslog,
            daemon: life.daemon,
            format: log.log_format.into(),
        },
        daemon: life.daemon,
        pid_file: given(life.pid_file).map(PathBuf::from),
        wrap: (!wrap_command.is_empty()).then(|| WrapSettings {
            command: wrap_command,
            mode: t.wrap_mode.into(),
        }),
        libserver: life.libserver,
        user: given(life.user),
        group: given(life.group),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parse a command line given as one string (words split on whitespace).
    fn parse_line(line: &str) -> Result<Parsed, UsageError> {
        parse(std::iter::once("websockify").chain(line.split_whitespace()))
    }

    fn run(line: &str) -> Settings {
        match parse_line(line) {
            Ok(Parsed::Run(options)) => *options,
            other => panic!("expected options for {line:?}, got {other:?}"),
        }
    }

    fn error(line: &str) -> String {
        match parse_line(line) {
            Err(err) => err.message,
            other => panic!("expected an error for {line:?}, got {other:?}"),
        }
    }

    fn print(line: &str) -> String {
        match parse_line(line) {
            Ok(Parsed::Print(text)) => text,
            other => panic!("expected text for {line:?}, got {other:?}"),
        }
    }

    fn tcp(host: &str, port: u16) -> Target {
        Target::Tcp {
            host: host.into(),
            port,
        }
    }

    fn listen(host: Option<&str>, port: u16) -> Listen {
        Listen::Tcp {
            host: host.map(Into::into),
            port,
            prefer_ipv6: false,
        }
    }

    const EXISTING: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    const SECS: fn(u64) -> Option<Duration> = |n| Some(Duration::from_secs(n));

    #[test]
    fn accepts_novnc_proxy_line_with_options_after_positionals() {
        let o = run(&format!(
            "--file-only --web /usr/share/novnc --cert {EXISTING} --key /k.pem 6080 localhost:5900 \
             --heartbeat 30 --idle-timeout 60 --record /tmp/rec --timeout 10 --web-auth \
             --auth-plugin BasicHTTPAuth --auth-source user:pass"
        ));
        assert_eq!(o.server.listen, listen(None, 6080));
        assert_eq!(o.server.target, tcp("localhost", 5900));
        let web = o.server.web.as_ref().unwrap();
        assert_eq!(web.dir, PathBuf::from("/usr/share/novnc"));
        assert_eq!(o.server.tls.cert, PathBuf::from(EXISTING));
        assert_eq!(o.server.tls.key, Some(PathBuf::from("/k.pem")));
        assert_eq!(o.server.heartbeat, SECS(30));
        assert_eq!(o.server.idle_timeout, SECS(60));
        assert_eq!(o.server.timeout, SECS(10));
        assert_eq!(o.server.record, Some(PathBuf::from("/tmp/rec")));
        assert!(web.file_only && o.server.web_auth && o.wrap.is_none());
        assert_eq!(o.server.auth.plugin.as_deref(), Some("BasicHTTPAuth"));
        assert_eq!(o.server.auth.source.as_deref(), Some("user:pass"));
    }

    #[test]
    fn defaults_match_upstream() {
        let o = run("6080 localhost:5900");
        assert_eq!(o.server.tls, crate::config::TlsSettings::default());
        let c = &o.server;
        assert_eq!((c.heartbeat, c.timeout, c.idle_timeout), (None, None, None));
        assert_eq!(o.wrap, None);
        assert!(!o.log.verbose && !o.daemon && !c.run_once && !c.ssl_target);
        assert!(matches!(c.listen, Listen::Tcp { .. }));
    }

    #[test]
    fn takes_values_inline_or_separate_and_sets_every_field() {
        let o = run(
            "--ssl-version=tlsv1_3 --ssl-ciphers HIGH --key-password=pw -6vD --verify-client \
             --cafile=/ca.pem --ssl-target --run-once --traffic --log-file /l --syslog=loghost:514 \
             --legacy-syslog --libserver [::1]:6080 host:1",
        );
        let tls = &o.server.tls;
        assert_eq!(tls.min_version, SslVersion::Tlsv1_3);
        assert_eq!(tls.ciphers.as_deref(), Some("HIGH"));
        assert_eq!(tls.key_password.as_deref(), Some("pw"));
        assert_eq!(tls.cafile, Some(PathBuf::from("/ca.pem")));
        assert!(tls.verify_client && o.server.ssl_target && o.server.run_once);
        assert!(o.log.verbose && o.daemon && o.log.daemon && o.server.traffic);
        assert!(o.log.legacy_syslog && o.libserver);
        assert_eq!(o.log.syslog.as_deref(), Some("loghost:514"));
        assert_eq!(o.log.log_file, Some(PathBuf::from("/l")));
        let expected = Listen::Tcp {
            host: Some("::1".into()),
            port: 6080,
            prefer_ipv6: true,
        };
        assert_eq!(o.server.listen, expected);
    }

    #[test]
    fn treats_values_like_optparse() {
        // A value may start with '-'; an empty value counts as not given; the last one wins.
        let o = run("--record -x --web= -vv --heartbeat=1 --heartbeat 2 6080 h:1");
        assert_eq!(o.server.record, Some(PathBuf::from("-x")));
        assert_eq!((o.server.web, o.log.verbose), (None, true));
        assert_eq!(o.server.heartbeat, SECS(2));
    }

    #[test]
    fn accepts_unique_prefixes_of_long_options() {
        let o = run("--verb --idle-t 1 --heart=5 6080 h:1");
        assert!(o.log.verbose);
        assert_eq!(
            (o.server.idle_timeout, o.server.heartbeat),
            (SECS(1), SECS(5))
        );
    }

    #[test]
    fn rejects_ambiguous_prefixes_like_optparse() {
        assert_eq!(
            error("--s 6080 h:1"),
            "ambiguous option: --s (--shutdown-delay, --ssl-ciphers, --ssl-only, --ssl-target, \
             --ssl-target-ca, --ssl-target-cert, --ssl-target-insecure, --ssl-target-key, \
             --ssl-target-sni, --ssl-version, --subprotocol, --syslog?)"
        );
        assert_eq!(
            error("--he"),
            "ambiguous option: --he (--heartbeat, --help?)"
        );
    }

    #[test]
    fn parses_listen_and_target_forms() {
        let cases = [
            ("6080", None, 6080),
            ("[::1]:6080", Some("::1"), 6080),
            ("::1:6080", Some("::1"), 6080),
            ("localhost:6080", Some("localhost"), 6080),
            ("0.0.0.0:6080", Some("0.0.0.0"), 6080),
            (":6080", None, 6080),
        ];
        for (arg, host, port) in cases {
            assert_eq!(
                run(&format!("{arg} h:1")).server.listen,
                listen(host, port),
                "{arg}"
            );
        }
        assert_eq!(run("6080 [::1]:5900").server.target, tcp("::1", 5900));
        assert_eq!(run("6080 fe80::1:5900").server.target, tcp("fe80::1", 5900));
    }

    #[test]
    fn parses_wrap_command_after_double_dash() {
        let wrap = |o: &Settings| o.wrap.clone().expect("a wrapped program");
        let o = run("5901 --wrap-mode=ignore -- vncserver -v :1");
        assert_eq!((wrap(&o).mode, o.log.verbose), (WrapMode::Ignore, false));
        assert_eq!(wrap(&o).command, ["vncserver", "-v", ":1"]);
        assert_eq!(o.server.listen, listen(None, 5901));
        assert_eq!(o.server.target, tcp("127.0.0.1", 0));
        let o = run("5901 -- vncserver -geometry 1024x768 :1");
        assert_eq!(wrap(&o).mode, WrapMode::Exit);
        assert_eq!(
            wrap(&o).command,
            ["vncserver", "-geometry", "1024x768", ":1"]
        );
        // Upstream: positionals after the first one join the command too.
        let o = run("--wrap-mode respawn 5901 prog -- -x");
        assert_eq!(wrap(&o).mode, WrapMode::Respawn);
        assert_eq!(wrap(&o).command, ["prog", "-x"]);
    }

    #[test]
    fn builds_targets_for_unix_socket_and_token_plugins() {
        let o = run("--unix-target /run/vnc.sock 6080");
        assert_eq!(o.server.target, Target::Unix("/run/vnc.sock".into()));
        let o = run("--token-plugin TokenFile --token-source /t --host-token 6080");
        assert_eq!(o.server.target, tcp("127.0.0.1", 0));
        let token = o.server.token.expect("token settings");
        assert_eq!(
            (token.source.as_deref(), token.host_token),
            (Some("/t"), true)
        );
        let o = run("--token-plugin X --target-config /cfg 6080");
        let token = o.server.token.expect("token settings");
        assert_eq!(token.plugin, "TokenFile");
        assert_eq!(token.source.as_deref(), Some("/cfg"));
    }

    #[test]
    fn inetd_and_unix_listen_skip_the_listen_argument() {
        let o = run("--inetd localhost:5900");
        assert_eq!(o.server.listen, Listen::Inetd);
        assert_eq!(o.server.target, tcp("localhost", 5900));
        let unix = |path: &str, mode| Listen::Unix {
            path: path.into(),
            mode,
        };
        let o = run("--unix-listen=/s h:1");
        assert_eq!(o.server.listen, unix("/s", 0o600));
        let o = run("--unix-listen=/s --unix-listen-mode 0750 h:1");
        assert_eq!(o.server.listen, unix("/s", 0o750));
        let o = run("--unix-listen=/s --unix-listen-mode=0o640 h:1");
        assert_eq!(o.server.listen, unix("/s", 0o640));
    }

    #[test]
    fn reports_optparse_errors() {
        let cases = [
            ("--foo 6080 h:1", "no such option: --foo"),
            ("--foo=1 6080 h:1", "no such option: --foo"),
            ("-x 6080 h:1", "no such option: -x"),
            ("-vx 6080 h:1", "no such option: -x"),
            ("6080 h:1 --record", "--record option requires 1 argument"),
            (
                "--verbose=1 6080 h:1",
                "--verbose option does not take a value",
            ),
            (
                "--heartbeat abc",
                "option --heartbeat: invalid integer value: 'abc'",
            ),
            (
                "--timeout -1",
                "option --timeout: invalid integer value: '-1'",
            ),
            (
                "--idle-t=1.5",
                "option --idle-timeout: invalid integer value: '1.5'",
            ),
            (
                "--heartbeat=",
                "option --heartbeat: invalid integer value: ''",
            ),
            (
                "--ssl-version tlsv1_0",
                "option --ssl-version: invalid choice: 'tlsv1_0' \
                 (choose from 'default', 'tlsv1_1', 'tlsv1_2', 'tlsv1_3')",
            ),
            (
                "--wrap-mode=foo",
                "option --wrap-mode: invalid choice: 'foo' (choose from 'exit', 'ignore', 'respawn')",
            ),
        ];
        for (line, message) in cases {
            assert_eq!(error(line), message, "{line}");
        }
    }

    #[test]
    fn reports_the_first_error_in_argv_order() {
        let bad_int = "option --heartbeat: invalid integer value: 'x'";
        assert_eq!(error("--heartbeat=x --foo"), bad_int);
        assert_eq!(error("--foo --heartbeat=x"), "no such option: --foo");
        assert_eq!(error("--heartbeat=x --help"), bad_int);
        assert!(print("--help --foo").starts_with("Usage: \n"));
    }

    #[test]
    fn reports_upstream_usage_errors_in_upstream_order() {
        let cases = [
            (
                "--token-source x 6080",
                "You must use --token-plugin to use --token-source",
            ),
            (
                "--target-config f --token-source x 6080",
                "You must use --token-plugin to use --token-source",
            ),
            (
                "--host-token 6080",
                "You must use --token-plugin to use --host-token",
            ),
            (
                "--auth-source x 6080 h:1",
                "You must use --auth-plugin to use --auth-source",
            ),
            (
                "--web-auth --web /w 6080 h:1",
                "You must use --auth-plugin to use --web-auth",
            ),
            (
                "--web-auth --auth-plugin A 6080 h:1",
                "You must use --web to use --web-auth",
            ),
            (
                "--legacy-syslog 6080 h:1",
                "You must use --syslog to use --legacy-syslog",
            ),
            (
                "--syslog host:notanumber 6080 h:1",
                "Error parsing syslog port",
            ),
            (
                "--ssl-only --cert /nonexistent/x.pem 6080",
                "SSL only and /nonexistent/x.pem not found",
            ),
            (
                "--unix-listen /s --unix-listen-mode 9 h:1",
                "Error parsing listen unix socket mode",
            ),
            ("", "Too few arguments"),
            ("6080", "Too few arguments"),
            ("5901 --", "Too few arguments"),
            ("abc h:1", "Error parsing listen port"),
            ("70000 h:1", "Error parsing listen port"),
            ("6080 localhost", "Error parsing target"),
            ("6080 h:x", "Error parsing target port"),
            ("6080 h:65536", "Error parsing target port"),
            ("6080 h:1 extra", "Too many arguments"),
        ];
        for (line, message) in cases {
            assert_eq!(error(line), message, "{line}");
        }
        assert!(
            run(&format!("--ssl-only --cert {EXISTING} 6080 h:1"))
                .server
                .tls
                .ssl_only
        );
    }

    #[test]
    fn ssl_target_options_imply_ssl_target_and_refuse_contradictions() {
        let o = run("--ssl-target-ca ca.pem --ssl-target-sni vnc.internal 6080 h:1");
        assert!(o.server.ssl_target);
        let t = &o.server.target_tls;
        assert_eq!(t.ca, Some(PathBuf::from("ca.pem")));
        assert_eq!(t.sni.as_deref(), Some("vnc.internal"));
        assert!(run("--ssl-target-insecure 6080 h:1").server.ssl_target);
        let o = run("--ssl-target-cert c.pem --ssl-target-key k.pem 6080 h:1");
        assert!(o.server.ssl_target);
        assert_eq!(o.server.target_tls.key, Some(PathBuf::from("k.pem")));
        // The prefix of --ssl-target is still --ssl-target itself.
        let o = run("--ssl-target 6080 h:1");
        assert!(o.server.ssl_target);
        assert_eq!(o.server.target_tls, TargetTlsSettings::default());
        assert!(!run("6080 h:1").server.ssl_target);

        let cases = [
            (
                "--ssl-target-cert c.pem 6080 h:1",
                "--ssl-target-cert needs --ssl-target-key (the client certificate's private key)",
            ),
            (
                "--ssl-target-key k.pem 6080 h:1",
                "--ssl-target-key needs --ssl-target-cert (the client certificate)",
            ),
            (
                "--ssl-target-insecure --ssl-target-ca ca.pem 6080 h:1",
                "--ssl-target-insecure and --ssl-target-ca contradict each other; use one",
            ),
            (
                "--ssl-target-sni=a..b 6080 h:1",
                "option --ssl-target-sni: 'a..b' is not a DNS name or IP address",
            ),
            (
                "--ssl-target-ca ca.pem --unix-target /s 6080",
                "the --ssl-target-* options need a TCP target; --unix-target connections do not use TLS",
            ),
        ];
        for (line, message) in cases {
            assert_eq!(error(line), message, "{line}");
        }
    }

    #[test]
    fn renders_usage_errors_like_optparse() {
        let text = UsageError::new("Too few arguments").render("websockify");
        let expected = "Usage: \n    \
            websockify [options] [source_addr:]source_port target_addr:target_port\n    \
            websockify [options] --token-plugin=CLASS [source_addr:]source_port\n    \
            websockify [options] --unix-target=FILE [source_addr:]source_port\n    \
            websockify [options] [source_addr:]source_port -- WRAP_COMMAND_LINE\n\n\
            websockify: error: Too few arguments\n";
        assert_eq!(text, expected);
    }

    #[test]
    fn help_starts_with_usage_block_and_lists_options() {
        let help = print("6080 -h");
        assert!(help.starts_with(&usage_block("websockify")), "{help}");
        let needles = [
            "--idle-timeout <IDLE_TIMEOUT>",
            "-6, --prefer-ipv6",
            "[default: self.pem]",
        ];
        for needle in needles.iter().chain(&["before, between or after"]) {
            assert!(help.contains(needle), "missing {needle}:\n{help}");
        }
        assert_eq!(print("--hel"), help);
        let Ok(Parsed::Print(help)) = parse(["/usr/bin/wsproxy", "--help"]) else {
            panic!("no help");
        };
        assert!(
            help.contains(
                "\n    wsproxy [options] [source_addr:]source_port -- WRAP_COMMAND_LINE\n"
            )
        );
    }

    #[test]
    fn prints_version() {
        let expected = format!("websockify {}\n", env!("CARGO_PKG_VERSION"));
        assert_eq!(print("6080 --version"), expected);
    }

    #[test]
    fn subprotocol_is_repeatable_and_checked() {
        let o = run("--subprotocol sip --subprotocol=mqtt --subprotocol sip 6080 h:1");
        assert_eq!(o.server.subprotocols, ["sip", "mqtt"]);
        assert!(run("6080 h:1").server.subprotocols.is_empty());
        let err = error("--subprotocol a/b 6080 h:1");
        assert!(
            err.starts_with("option --subprotocol: invalid subprotocol name 'a/b'"),
            "{err}"
        );
        assert!(error("--subprotocol= 6080 h:1").contains("invalid subprotocol name ''"));
    }

    #[test]
    fn token_cookie_and_token_path_need_a_plugin_and_exclude_each_other() {
        let plugin = "--token-plugin TokenFile --token-source /t";
        let o = run(&format!("{plugin} --token-cookie vnc_token 6080"));
        assert_eq!(o.server.token_cookie.as_deref(), Some("vnc_token"));
        assert!(!o.server.token_path);
        let o = run(&format!("{plugin} --token-path 6080"));
        assert!(o.server.token_path && o.server.token_cookie.is_none());
        assert_eq!(
            error("--token-cookie c 6080 h:1"),
            "You must use --token-plugin to use --token-cookie"
        );
        assert_eq!(
            error("--token-path 6080 h:1"),
            "You must use --token-plugin to use --token-path"
        );
        for both in [
            "--host-token --token-path",
            "--token-cookie c --token-path",
            "--host-token --token-cookie c",
        ] {
            let err = error(&format!("{plugin} {both} 6080"));
            assert!(err.contains("use only one"), "{both}: {err}");
        }
        let err = error(&format!("{plugin} --token-cookie a;b 6080"));
        assert_eq!(err, "option --token-cookie: invalid cookie name 'a;b'");
    }

    #[test]
    fn quotes_values_like_python_repr() {
        assert_eq!(py_repr("it's"), "\"it's\"");
        assert_eq!(py_repr("a'\"b\n"), "'a\\'\"b\\n'");
    }
}
