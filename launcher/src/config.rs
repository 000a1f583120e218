//! Plain settings: what the command line means, with no parser types in it.
//!
//! `cli` builds [`Settings`] once: the server's [`Config`] and the process's options (logging,
//! daemon, pid file, wrapped program), with no field in both. `main` binds the listener the
//! config describes; [`crate::run`] serves it. Tests build a `Config` by hand with
//! [`Config::new`] and override the fields they need.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::client::TrustedProxies;
use crate::logging::LogSettings;
use crate::proxy_header;

/// Everything the command line asks for.
#[derive(Debug, Clone)]
pub struct Settings {
    /// What the server does with connections.
    pub server: Config,
    /// Where the log goes (`-v`, `--log-file`, `--syslog`, `--legacy-syslog`).
    pub log: LogSettings,
    /// `-D`: detach and run in the background.
    pub daemon: bool,
    /// `--pid-file FILE` (beyond upstream).
    pub pid_file: Option<PathBuf>,
    /// `-- PROGRAM ARGS`: the program to wrap, if any.
    pub wrap: Option<WrapSettings>,
    /// `--libserver`: accepted for compatibility, with a warning that it does nothing.
    pub libserver: bool,
    /// `--user`: run as this user once the listeners and the certificate are open.
    pub user: Option<String>,
    /// `--group`: run as this group (default: the `--user`'s primary group).
    pub group: Option<String>,
}

/// The wrapped program (`-- PROGRAM ARGS`) and `--wrap-mode`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrapSettings {
    /// Program and arguments; never empty.
    pub command: Vec<String>,
    pub mode: WrapMode,
}

/// What to do when the wrapped program exits (`--wrap-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WrapMode {
    /// Exit websockify too, with the program's status (upstream exits 0).
    #[default]
    Exit,
    /// Keep serving; connections wait for the program to listen again.
    Ignore,
    /// Start the program again, at most three times in ten seconds.
    Respawn,
    /// Exit once the program and every process it started have exited, with the program's
    /// status: `wswrap`'s default, so that a program that daemonizes (vncserver starts Xvnc
    /// and exits) stays served, as with the old interposer that lived inside the program.
    Tree,
}

/// Everything the server needs to know, decided before the first connection.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen (used by `main`; `run` gets an already-bound listener).
    pub listen: Listen,
    /// Where each WebSocket connection goes.
    pub target: Target,
    /// TLS on the listening side (wss:// and https:// on the same port as ws://).
    pub tls: TlsSettings,
    /// Wrap the target connection in TLS (`--ssl-target`).
    pub ssl_target: bool,
    /// How the TLS target is checked, and the client certificate (`--ssl-target-*`).
    pub target_tls: TargetTlsSettings,
    /// Send a ping every interval and drop peers that answer none for three (`--heartbeat`).
    pub heartbeat: Option<Duration>,
    /// Handle one WebSocket session, then exit (`--run-once`).
    pub run_once: bool,
    /// Stop accepting this long after start (`--timeout`, upstream's semantics).
    pub timeout: Option<Duration>,
    /// Exit when no connection has been open for this long (`--idle-timeout`).
    pub idle_timeout: Option<Duration>,
    /// How long a new connection may stay silent before its first byte (upstream: 3 s).
    pub first_byte_timeout: Duration,
    /// Absolute deadline for the TLS handshake plus the HTTP request head.
    pub handshake_timeout: Duration,
    /// Deadline for connecting to the target, over all its addresses.
    pub connect_timeout: Duration,
    /// After SIGINT/SIGTERM, how long open sessions may go on before they get close 1001
    /// (`--drain-timeout`).
    pub drain_timeout: Duration,
    /// After SIGINT/SIGTERM, how long new connections are still accepted while `/readyz` says
    /// 503, so that a load balancer's health check notices first (`--shutdown-delay`).
    pub shutdown_delay: Duration,
    /// Every connection starts with a PROXY protocol header (`--proxy-protocol`).
    pub proxy_protocol: bool,
    /// Peers whose `Forwarded`/`X-Forwarded-For` name the client (`--trusted-proxy`).
    pub trusted_proxies: TrustedProxies,
    /// Send a PROXY header to the target (`--target-proxy-protocol`).
    pub target_proxy_protocol: Option<proxy_header::Version>,
    /// At most this many open client connections (`--max-connections`).
    pub max_connections: Option<usize>,
    /// At most this many open connections per client address (`--max-connections-per-ip`).
    pub max_connections_per_ip: Option<usize>,
    /// Serve `/metrics`, `/healthz` and `/readyz` on this `[host:]port` (`--metrics-listen`).
    pub metrics_listen: Option<MetricsListen>,
    /// Record each session to `<record>.<n>` (`--record`).
    pub record: Option<PathBuf>,
    /// Print per-frame traffic tokens to stdout (`--traffic`).
    pub traffic: bool,
    /// Serve static files (`--web`, `--file-only`).
    pub web: Option<WebSettings>,
    /// Run the auth check for static files too (`--web-auth`).
    pub web_auth: bool,
    /// Authentication (`--auth-plugin`, `--auth-source`, `--allowed-origin`).
    pub auth: AuthSettings,
    /// Token-based targets (`--token-plugin`, `--token-source`, `--host-token`; the
    /// cookie and path sources are `token_cookie` and `token_path` below).
    pub token: Option<TokenSettings>,
    /// More subprotocol names answered like `binary` (`--subprotocol`, repeatable).
    pub subprotocols: Vec<String>,
    /// Take the token from this cookie of the upgrade request (`--token-cookie NAME`).
    pub token_cookie: Option<String>,
    /// Take the token from the last segment of the request path (`--token-path`).
    pub token_path: bool,
    /// Accept Hixie-75/76 WebSocket clients (`--hixie`).
    pub hixie: bool,
}

/// `--metrics-listen [host:]port`; without a host, loopback only (metrics are not public).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsListen {
    pub host: Option<String>,
    pub port: u16,
}

/// `--web DIR` and `--file-only`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSettings {
    pub dir: PathBuf,
    pub file_only: bool,
}

/// The auth plugin and the origin allow-list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthSettings {
    pub plugin: Option<String>,
    pub source: Option<String>,
    pub allowed_origins: Vec<String>,
}

/// The token plugin: its class name, its argument, and where the token comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSettings {
    pub plugin: String,
    pub source: Option<String>,
    pub host_token: bool,
}

/// The listening socket's address, as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// `[host:]port`; `host` is `None` for a bare port (all addresses).
    Tcp {
        host: Option<String>,
        port: u16,
        prefer_ipv6: bool,
    },
    /// `--unix-listen FILE` with `--unix-listen-mode` (octal permissions).
    Unix { path: PathBuf, mode: u32 },
    /// `--inetd`: the socket on standard input (listening, or one accepted connection).
    Inetd,
}

/// Where proxied connections go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `host:port`; every resolved address is tried in order.
    Tcp { host: String, port: u16 },
    /// `--unix-target FILE`.
    Unix(PathBuf),
    /// A wrapped program's moved port: 127.0.0.1, then ::1. While the program starts,
    /// connections wait (bounded by the connect deadline) instead of failing at once.
    Loopback { port: u16 },
}

/// Minimum TLS protocol version (`--ssl-version`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslVersion {
    /// TLS 1.2 and 1.3 (rustls has no TLS 1.0 or 1.1).
    #[default]
    Default,
    /// Upstream's `tlsv1_1`: TLS 1.1 or newer, which with rustls means 1.2 and 1.3.
    Tlsv1_1,
    /// TLS 1.2 or newer.
    Tlsv1_2,
    /// TLS 1.3 only.
    Tlsv1_3,
}

/// Server-side TLS settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// Certificate chain file; may hold the private key too (`--cert`, default `self.pem`).
    pub cert: PathBuf,
    /// Separate private key file (`--key`).
    pub key: Option<PathBuf>,
    /// Password of an encrypted PKCS#8 key (`--key-password`).
    pub key_password: Option<String>,
    /// File holding that password (`--key-password-file`); read by `secrets::resolve` at start-up.
    pub key_password_file: Option<PathBuf>,
    /// Refuse plain connections (`--ssl-only`).
    pub ssl_only: bool,
    /// `--ssl-version`.
    pub min_version: SslVersion,
    /// OpenSSL-style cipher list (`--ssl-ciphers`).
    pub ciphers: Option<String>,
    /// Require a client certificate (`--verify-client`).
    pub verify_client: bool,
    /// CA bundle for client certificates (`--cafile`); system roots when absent.
    pub cafile: Option<PathBuf>,
}

/// Client-side TLS to the target; used only with `ssl_target`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TargetTlsSettings {
    /// Trust these CAs instead of the system roots (`--ssl-target-ca`).
    pub ca: Option<PathBuf>,
    /// Accept any certificate (`--ssl-target-insecure`).
    pub insecure: bool,
    /// Server name to send and verify instead of the target host (`--ssl-target-sni`).
    pub sni: Option<String>,
    /// Client certificate chain and its key (`--ssl-target-cert`, `--ssl-target-key`).
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl Default for TlsSettings {
    fn default() -> Self {
        TlsSettings {
            cert: PathBuf::from("self.pem"),
            key: None,
            key_password: None,
            key_password_file: None,
            ssl_only: false,
            min_version: SslVersion::Default,
            ciphers: None,
            verify_client: false,
            cafile: None,
        }
    }
}

impl Config {
    /// A config with upstream's defaults for everything but the target.
    pub fn new(target: Target) -> Self {
        Config {
            listen: Listen::Tcp {
                host: None,
                port: 0,
                prefer_ipv6: false,
            },
            target,
            tls: TlsSettings::default(),
            ssl_target: false,
            target_tls: TargetTlsSettings::default(),
            heartbeat: None,
            run_once: false,
            timeout: None,
            idle_timeout: None,
            first_byte_timeout: Duration::from_secs(3),
            handshake_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(10),
            shutdown_delay: Duration::ZERO,
            proxy_protocol: false,
            trusted_proxies: TrustedProxies::default(),
            target_proxy_protocol: None,
            max_connections: None,
            max_connections_per_ip: None,
            metrics_listen: None,
            record: None,
            traffic: false,
            web: None,
            web_auth: false,
            auth: AuthSettings::default(),
            token: None,
            subprotocols: Vec::new(),
            token_cookie: None,
            token_path: false,
            hixie: false,
        }
    }
}

impl Settings {
    /// Makes every path the process opens later absolute, as upstream does at start: the
    /// daemon changes its directory to `/` (or the web root) before opening them.
    pub fn make_paths_absolute(&mut self) -> anyhow::Result<()> {
        fn abs(path: &mut PathBuf) -> anyhow::Result<()> {
            *path = std::path::absolute(&*path)
                .map_err(|e| anyhow::anyhow!("cannot resolve {}: {e}", path.display()))?;
            Ok(())
        }
        self.log.resolve_paths()?;
        let server = &mut self.server;
        abs(&mut server.tls.cert)?;
        let web = server.web.as_mut().map(|web| &mut web.dir);
        let unix_listen = match &mut server.listen {
            Listen::Unix { path, .. } => Some(path),
            _ => None,
        };
        let unix_target = match &mut server.target {
            Target::Unix(path) => Some(path),
            _ => None,
        };
        for path in [
            server.tls.key.as_mut(),
            server.tls.cafile.as_mut(),
            server.tls.key_password_file.as_mut(),
            server.target_tls.ca.as_mut(),
            server.target_tls.cert.as_mut(),
            server.target_tls.key.as_mut(),
            server.record.as_mut(),
            web,
            unix_listen,
            unix_target,
            self.pid_file.as_mut(),
        ]
        .into_iter()
        .flatten()
        {
            abs(path)?;
        }
        // File-based token sources; URLs and Redis specs are left alone.
        if let Some(source) = server.token.as_mut().and_then(|t| t.source.as_mut())
            && Path::new(source.as_str()).exists()
        {
            let mut path = PathBuf::from(&*source);
            abs(&mut path)?;
            *source = path.to_string_lossy().into_owned();
        }
        Ok(())
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            // By hand: every session logs its target two or three times.
            Target::Tcp { host, port } => {
                f.write_str(host)?;
                f.write_str(":")?;
                f.write_str(itoa::Buffer::new().format(*port))
            }
            Target::Unix(path) => write!(f, "unix socket {}", path.display()),
            Target::Loopback { port } => write!(f, "loopback port {port}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_display_as_host_and_port() {
        let tcp = |host: &str, port| Target::Tcp {
            host: host.to_owned(),
            port,
        };
        assert_eq!(tcp("localhost", 5900).to_string(), "localhost:5900");
        assert_eq!(tcp("10.0.0.1", 0).to_string(), "10.0.0.1:0");
        assert_eq!(tcp("h", 65535).to_string(), "h:65535");
        assert_eq!(tcp("::1", 5900).to_string(), "[::1]:5900");
        assert_eq!(
            Target::Loopback { port: 80 }.to_string(),
            "loopback port 80"
        );
    }
}
