//! Plain settings for one server: what the command line means, with no parser types in it.
//!
//! `cli` builds a [`Config`]; `main` binds the listener it describes; [`crate::run`] serves it.
//! Tests build a `Config` by hand with [`Config::new`] and override the fields they need.

use std::path::PathBuf;
use std::time::Duration;

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
    /// How long SIGINT/SIGTERM waits for open sessions to close before exiting anyway.
    pub drain_timeout: Duration,
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
    /// Token-based targets (`--token-plugin`, `--token-source`, `--host-token`).
    pub token: Option<TokenSettings>,
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

impl Default for TlsSettings {
    fn default() -> Self {
        TlsSettings {
            cert: PathBuf::from("self.pem"),
            key: None,
            key_password: None,
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
            heartbeat: None,
            run_once: false,
            timeout: None,
            idle_timeout: None,
            first_byte_timeout: Duration::from_secs(3),
            handshake_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(10),
            record: None,
            traffic: false,
            web: None,
            web_auth: false,
            auth: AuthSettings::default(),
            token: None,
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Target::Tcp { host, port } => write!(f, "{host}:{port}"),
            Target::Unix(path) => write!(f, "unix socket {}", path.display()),
            Target::Loopback { port } => write!(f, "loopback port {port}"),
        }
    }
}
