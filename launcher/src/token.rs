//! Token-based target selection: the `--token-plugin` backends that turn the token of an
//! upgrade request into a [`Target`].
//!
//! ```text
//! token_from_request   ?token=... (parse_qs rules) or, with --host-token, the Host header
//!        |
//! Tokens::lookup       one backend, built once by Tokens::new and shared by all connections:
//!                      TokenFile / ReadOnlyTokenFile   cached `token: host:port` files
//!                      TokenFileName                   <dir>/<token> holds `host:port`
//!                      BaseTokenAPI / JSONTokenApi     HTTP GET, pooled client, 5 s deadline
//!                      JWTTokenApi                     signed JWT with host/port claims
//!                      TokenRedis                      GET [namespace:]token, one multiplexed connection
//!                      UnixDomainSocketDirectory       a socket inside a directory
//!        |
//! Ok(Some(Target)) | Ok(None) (unknown token) | Err(TokenError) (the backend failed)
//! ```
//!
//! Names, source formats and file syntax follow upstream's `websockify/token_plugins.py`.
//! Differences are deliberate fixes: tokens never appear in logs or error messages (use
//! [`token_tag`]), token files are reloaded only when they change, HTTP lookups have a timeout
//! and URL-encode the token, and the directory plugins cannot be escaped with `..`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::net::Ipv6Addr;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::header::{HOST, HeaderMap, USER_AGENT};
use hyper::{Request, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tracing::{debug, info, warn};

use crate::config::Target;

/// Upstream's class names, in the order the error message lists them.
const KNOWN_PLUGINS: &[&str] = &[
    "TokenFile",
    "ReadOnlyTokenFile",
    "TokenFileName",
    "BaseTokenAPI",
    "JSONTokenApi",
    "JWTTokenApi",
    "TokenRedis",
    "UnixDomainSocketDirectory",
];

/// The module prefix upstream's `--token-plugin` accepts in front of a class name.
const UPSTREAM_MODULE: &str = "websockify.token_plugins.";

/// Deadline for one HTTP token lookup: connect, request and body (upstream has none).
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline for connecting to Redis and for each Redis reply.
const REDIS_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest HTTP answer or `TokenFileName` file read; a target is a few dozen bytes.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// A configured token backend; shared by all connections (read-mostly: file caches reload on change).
pub struct Tokens {
    name: &'static str,
    backend: Backend,
}

enum Backend {
    File(Arc<TokenFiles>),
    FileName(PathBuf),
    Http(HttpApi),
    Jwt(JwtKeys),
    Redis(RedisTokens),
    SocketDir(PathBuf),
}

/// Why a lookup failed (not "unknown token", which is `Ok(None)`). The message is one line and
/// never contains the token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// A token file or directory could not be read.
    #[error("cannot read token source {}: {reason}", path.display())]
    Source { path: PathBuf, reason: String },
    /// The backend answered, but not with a usable target.
    #[error("{backend} returned an invalid target: {reason}")]
    BadTarget {
        backend: &'static str,
        reason: String,
    },
    /// The token API could not be reached or failed mid-answer.
    #[error("token API request failed: {0}")]
    Http(String),
    /// The token API did not answer in time.
    #[error("token API did not answer within {} ms", .0.as_millis())]
    HttpTimeout(Duration),
    /// Redis could not be reached or answered with an error.
    #[error("Redis lookup failed: {0}")]
    Redis(String),
    /// Redis did not answer in time.
    #[error("Redis did not answer within {} ms", .0.as_millis())]
    RedisTimeout(Duration),
    /// The blocking task that reads token files did not finish.
    #[error("token file lookup task failed: {0}")]
    Task(String),
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("plugin", &self.name)
            .finish_non_exhaustive()
    }
}

impl Tokens {
    /// `plugin` is upstream's class name, bare (`TokenFile`) or dotted
    /// (`websockify.token_plugins.TokenFile`); an unknown name is an error listing the known
    /// ones. `source` is `--token-source`. Checks what can be checked at start: the directory
    /// plugins need a directory, the HTTP APIs a URL with `%s`, `JWTTokenApi` a key file that
    /// parses, `TokenRedis` a source in upstream's format.
    pub fn new(plugin: &str, source: Option<&str>) -> anyhow::Result<Tokens> {
        let bare = plugin.strip_prefix(UPSTREAM_MODULE).unwrap_or(plugin);
        let Some(&name) = KNOWN_PLUGINS.iter().find(|known| **known == bare) else {
            bail!(
                "unknown --token-plugin '{plugin}': the known plugins are {} (custom Python classes \
                 cannot be loaded)",
                KNOWN_PLUGINS.join(", ")
            );
        };
        let Some(source) = source else {
            bail!("--token-plugin {name} needs --token-source");
        };
        let backend = match name {
            "TokenFile" => Backend::File(Arc::new(TokenFiles::new(source, true))),
            "ReadOnlyTokenFile" => Backend::File(Arc::new(TokenFiles::new(source, false))),
            "TokenFileName" => Backend::FileName(require_dir(name, source)?),
            "BaseTokenAPI" => Backend::Http(HttpApi::new(source, false, HTTP_TIMEOUT)?),
            "JSONTokenApi" => Backend::Http(HttpApi::new(source, true, HTTP_TIMEOUT)?),
            "JWTTokenApi" => Backend::Jwt(JwtKeys::load(Path::new(source))?),
            "TokenRedis" => Backend::Redis(RedisTokens::new(source, REDIS_TIMEOUT)?),
            _ => {
                let dir = require_dir(name, source)?;
                let dir = fs::canonicalize(&dir).with_context(|| {
                    format!("--token-source={source}: cannot resolve the directory")
                })?;
                Backend::SocketDir(dir)
            }
        };
        Ok(Tokens { name, backend })
    }

    /// Looks a token up. `Ok(None)` is an unknown token (also an expired, badly signed or
    /// encrypted JWT); `Err` a backend failure (Redis down, HTTP error, unreadable file, a
    /// backend answer that is not a target).
    pub async fn lookup(&self, token: &str) -> Result<Option<Target>, TokenError> {
        let tag = token_tag(token);
        let result = match &self.backend {
            Backend::File(files) => {
                let files = Arc::clone(files);
                let targets = tokio::task::spawn_blocking(move || files.targets())
                    .await
                    .map_err(|e| TokenError::Task(one_line(&e)))??;
                Ok(targets.get(token).cloned())
            }
            Backend::FileName(dir) => lookup_file_name(dir, token).await,
            Backend::Http(api) => api.lookup(token).await,
            Backend::Jwt(keys) => keys.lookup(token),
            Backend::Redis(redis) => redis.lookup(token).await,
            Backend::SocketDir(dir) => lookup_socket(dir, token).await,
        };
        match &result {
            Ok(Some(target)) => debug!(plugin = self.name, token = %tag, %target, "token resolved"),
            Ok(None) => debug!(plugin = self.name, token = %tag, "token not found"),
            Err(e) => debug!(plugin = self.name, token = %tag, error = %e, "token lookup failed"),
        }
        result
    }

    /// The plugin name for the banner ("proxying from X to targets generated by TokenFile").
    pub fn name(&self) -> &str {
        self.name
    }
}

/// The token of an upgrade request: the first non-empty `token` query parameter (percent-decoded,
/// `+` as space, trailing newlines stripped, as upstream's `parse_qs`), or with `host_token` the
/// Host header without its port (`[::1]:6080` gives `::1`, where upstream cuts at the first `:`).
pub fn token_from_request(uri: &Uri, headers: &HeaderMap, host_token: bool) -> Option<String> {
    let token = if host_token {
        let host = match headers.get(HOST) {
            Some(value) => value.to_str().ok()?.trim().to_owned(),
            None => uri.authority()?.as_str().rsplit('@').next()?.to_owned(),
        };
        host_without_port(&host)?.to_owned()
    } else {
        // parse_qs drops blank values, so `?token=&token=abc` yields "abc".
        let (_, value) = form_urlencoded::parse(uri.query()?.as_bytes())
            .find(|(key, value)| key == "token" && !value.is_empty())?;
        value.trim_end_matches('\n').to_owned()
    };
    (!token.is_empty()).then_some(token)
}

fn host_without_port(host: &str) -> Option<&str> {
    if let Some(rest) = host.strip_prefix('[') {
        let (inside, _) = rest.split_once(']')?;
        Some(inside)
    } else {
        host.split(':').next()
    }
}

/// A short, non-reversible tag of a token for logs (first 8 hex digits of its SHA-256), so log
/// lines about one token can be matched without the token itself being written anywhere.
pub fn token_tag(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    let mut tag = String::with_capacity(8);
    for byte in &digest[..4] {
        let _ = write!(tag, "{byte:02x}");
    }
    tag
}

fn require_dir(plugin: &str, source: &str) -> anyhow::Result<PathBuf> {
    match fs::metadata(source) {
        Ok(meta) if meta.is_dir() => Ok(PathBuf::from(source)),
        Ok(_) => bail!("--token-source={source}: the {plugin} plugin requires a directory"),
        Err(e) => Err(e).with_context(|| {
            format!("--token-source={source}: the {plugin} plugin requires a directory")
        }),
    }
}

/// An error and its sources on one line.
fn one_line(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text.replace(['\n', '\r'], " ")
}

// ---------------------------------------------------------------------------------------------
// Targets

/// Parses a target as the token backends give it: `host:port` (split at the last `:`, so
/// `::1:5900` works), `[v6]:port`, or `unix_socket:/path`.
fn parse_target(text: &str) -> Result<Target, String> {
    let text = text.trim();
    if let Some(path) = text.strip_prefix("unix_socket:") {
        let path = path.trim();
        if path.is_empty() {
            return Err("unix_socket: needs a path".into());
        }
        return Ok(Target::Unix(PathBuf::from(path)));
    }
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or("'[' without a closing ']'")?;
        let port = after
            .strip_prefix(':')
            .ok_or("expected ':port' after ']'")?;
        (host, port)
    } else {
        text.rsplit_once(':').ok_or("expected host:port")?
    };
    Ok(Target::Tcp {
        host: check_host(host)?,
        port: parse_port(port)?,
    })
}

/// A host name or IP literal; a host with `:` must be an IPv6 address (optionally with `%zone`).
fn check_host(host: &str) -> Result<String, String> {
    let host = host.trim();
    if host.is_empty() {
        return Err("the host is empty".into());
    }
    if host.chars().any(|c| c.is_whitespace() || c == '/') {
        return Err("the host contains whitespace or '/'".into());
    }
    if host.contains(':') {
        let address = host.split('%').next().unwrap_or(host);
        if address.parse::<Ipv6Addr>().is_err() {
            return Err("the host is neither a name nor an IP address".into());
        }
    }
    Ok(host.to_owned())
}

fn parse_port(port: &str) -> Result<u16, String> {
    match port.trim().parse::<u16>() {
        Ok(0) | Err(_) => Err("the port is not a number from 1 to 65535".into()),
        Ok(port) => Ok(port),
    }
}

/// `{"host": ..., "port": ...}` as the JSON API, JWT claims and Redis give it. `port` may be a
/// number or a string; without `port`, `host` is a whole `host:port` (upstream's Redis format),
/// which also wins when `port` is present but `host` already is `host:port` (upstream ignores
/// `port` there). `"host": "unix_socket"` with a string `port` is a unix socket, as upstream.
fn target_from_json(object: &Map<String, Value>) -> Result<Target, String> {
    let host = object
        .get("host")
        .and_then(Value::as_str)
        .ok_or("no \"host\" string")?;
    let port = match object.get("port") {
        None | Some(Value::Null) => return parse_target(host),
        Some(port) => port,
    };
    if host == "unix_socket" {
        let path = port
            .as_str()
            .ok_or("a unix_socket \"port\" must be a path string")?;
        return parse_target(&format!("unix_socket:{path}"));
    }
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if bare.contains(':') && check_host(bare).is_err() {
        return parse_target(host);
    }
    let port = match port {
        Value::Number(n) => n
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .filter(|n| *n != 0)
            .ok_or("the port is not a number from 1 to 65535")?,
        Value::String(s) => parse_port(s)?,
        _ => return Err("\"port\" is neither a number nor a string".into()),
    };
    Ok(Target::Tcp {
        host: check_host(bare)?,
        port,
    })
}

// ---------------------------------------------------------------------------------------------
// TokenFile, ReadOnlyTokenFile

/// A token file, or a directory of them, parsed once and cached. With `reload` (TokenFile) the
/// files are stat'ed on each lookup and re-parsed when one changed, appeared or went away;
/// without it (ReadOnlyTokenFile) the first successful parse is kept for good.
struct TokenFiles {
    source: PathBuf,
    reload: bool,
    cache: Mutex<Option<Parsed>>,
}

struct Parsed {
    stamps: Vec<FileStamp>,
    targets: Arc<HashMap<String, Target>>,
}

/// What identifies one version of a file without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    path: PathBuf,
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileStamp {
    fn new(path: PathBuf, meta: &fs::Metadata) -> Self {
        FileStamp {
            path,
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

impl TokenFiles {
    /// Parses right away so syntax errors show at start; a missing source is only a warning
    /// (upstream reads it on the first lookup, and lookups fail until it exists).
    fn new(source: &str, reload: bool) -> Self {
        let files = TokenFiles {
            source: PathBuf::from(source),
            reload,
            cache: Mutex::new(None),
        };
        match files.targets() {
            Ok(targets) => debug!(source, tokens = targets.len(), "token file loaded"),
            Err(e) => {
                warn!(error = %e, "token source is not readable yet; lookups fail until it is")
            }
        }
        files
    }

    /// The current token map, re-parsed if needed. Blocking: runs on a blocking thread.
    fn targets(&self) -> Result<Arc<HashMap<String, Target>>, TokenError> {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(parsed) = cache.as_ref().filter(|_| !self.reload) {
            return Ok(Arc::clone(&parsed.targets));
        }
        let stamps = self.stamps()?;
        if let Some(parsed) = cache.as_ref().filter(|parsed| parsed.stamps == stamps) {
            return Ok(Arc::clone(&parsed.targets));
        }
        let (targets, errors) = self.parse(&stamps)?;
        for error in &errors {
            warn!(
                file = %error.file.display(),
                line = error.line,
                reason = %error.reason,
                "syntax error in token file; line skipped"
            );
        }
        if cache.is_some() {
            info!(source = %self.source.display(), tokens = targets.len(), "token files changed; reloaded");
        }
        let targets = Arc::new(targets);
        *cache = Some(Parsed {
            stamps,
            targets: Arc::clone(&targets),
        });
        Ok(targets)
    }

    /// The files that make up the source: the file itself, or the regular files of the
    /// directory (not recursive; names starting with `.`, such as editor swap files, skipped),
    /// in name order so that later duplicates win predictably.
    fn stamps(&self) -> Result<Vec<FileStamp>, TokenError> {
        let meta = fs::metadata(&self.source).map_err(|e| self.source_error(&e))?;
        if !meta.is_dir() {
            return Ok(vec![FileStamp::new(self.source.clone(), &meta)]);
        }
        let mut stamps = Vec::new();
        for entry in fs::read_dir(&self.source).map_err(|e| self.source_error(&e))? {
            let entry = entry.map_err(|e| self.source_error(&e))?;
            if entry.file_name().as_encoded_bytes().starts_with(b".") {
                continue;
            }
            let path = entry.path();
            if let Some(meta) = fs::metadata(&path).ok().filter(fs::Metadata::is_file) {
                stamps.push(FileStamp::new(path, &meta));
            }
        }
        stamps.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(stamps)
    }

    /// Reads and parses the files of `stamps`, in order.
    fn parse(
        &self,
        stamps: &[FileStamp],
    ) -> Result<(HashMap<String, Target>, Vec<SyntaxError>), TokenError> {
        let single_file = !fs::metadata(&self.source).is_ok_and(|m| m.is_dir());
        let mut targets = HashMap::new();
        let mut errors = Vec::new();
        for stamp in stamps {
            let bytes = match fs::read(&stamp.path) {
                Ok(bytes) => bytes,
                Err(e) if single_file => return Err(self.source_error(&e)),
                Err(e) => {
                    // Removed or replaced between the listing and the read: the next lookup
                    // sees a different listing and parses again.
                    warn!(file = %stamp.path.display(), error = %e, "token file skipped");
                    continue;
                }
            };
            let text = String::from_utf8_lossy(&bytes);
            errors.extend(parse_token_file(&stamp.path, &text, &mut targets));
        }
        Ok((targets, errors))
    }

    fn source_error(&self, e: &io::Error) -> TokenError {
        TokenError::Source {
            path: self.source.clone(),
            reason: e.to_string(),
        }
    }
}

/// A bad line of a token file: where it is and what is wrong (never its content, which holds
/// the token).
#[derive(Debug, Clone, PartialEq, Eq)]
struct SyntaxError {
    file: PathBuf,
    /// 1-based, counted within `file` (upstream counts across all files of a directory).
    line: usize,
    reason: String,
}

/// Adds the entries of one token file to `targets` (later lines win) and returns its bad lines.
fn parse_token_file(
    path: &Path,
    text: &str,
    targets: &mut HashMap<String, Target>,
) -> Vec<SyntaxError> {
    let mut errors = Vec::new();
    for (index, line) in text.lines().enumerate() {
        match parse_token_line(line) {
            Ok(Some((token, target))) => {
                targets.insert(token, target);
            }
            Ok(None) => {}
            Err(reason) => errors.push(SyntaxError {
                file: path.to_path_buf(),
                line: index + 1,
                reason,
            }),
        }
    }
    errors
}

/// One `token: target` line. Blank lines and `#` comments are `Ok(None)`. Like upstream's
/// `re.split(r':\s', line)`, the line must contain exactly one `:` followed by whitespace.
fn parse_token_line(line: &str) -> Result<Option<(String, Target)>, String> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let mut separators = line.char_indices().filter(|&(i, c)| {
        c == ':'
            && line[i + 1..]
                .chars()
                .next()
                .is_some_and(char::is_whitespace)
    });
    let Some((split, _)) = separators.next() else {
        return Err("expected 'token: host:port' (a ':' followed by a space)".into());
    };
    if separators.next().is_some() {
        return Err("more than one ': ' on the line".into());
    }
    let token = line[..split].trim();
    if token.is_empty() {
        return Err("the token is empty".into());
    }
    let target = parse_target(&line[split + 1..])?;
    Ok(Some((token.to_owned(), target)))
}

// ---------------------------------------------------------------------------------------------
// TokenFileName, UnixDomainSocketDirectory

/// A token that can only name a file directly inside a directory.
fn is_plain_file_name(token: &str) -> bool {
    !token.is_empty() && token != "." && token != ".." && !token.contains(['/', '\\', '\0'])
}

/// `<dir>/<token>` holds the target. Upstream takes the basename of the token; tokens with a
/// path separator are unknown here instead.
async fn lookup_file_name(dir: &Path, token: &str) -> Result<Option<Target>, TokenError> {
    if !is_plain_file_name(token) {
        debug!(token = %token_tag(token), "token is not a plain file name");
        return Ok(None);
    }
    // Errors name the directory only: the file name is the token.
    let source_error = |e: io::Error| TokenError::Source {
        path: dir.to_path_buf(),
        reason: format!("the token's file: {e}"),
    };
    let path = dir.join(token);
    match tokio::fs::metadata(&path).await {
        Ok(meta) if meta.is_file() => {}
        Ok(_) => return Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(source_error(e)),
    }
    let file = tokio::fs::File::open(&path).await.map_err(source_error)?;
    let mut bytes = Vec::new();
    file.take(MAX_ANSWER_BYTES as u64)
        .read_to_end(&mut bytes)
        .await
        .map_err(source_error)?;
    let bad = |reason: String| TokenError::BadTarget {
        backend: "TokenFileName",
        reason,
    };
    let text = std::str::from_utf8(&bytes).map_err(|_| bad("the file is not UTF-8".into()))?;
    parse_target(text).map(Some).map_err(bad)
}

/// `<dir>/<token>` must be a unix socket that, symlinks resolved, is still inside `dir`
/// (canonical). Upstream's check can be escaped with `../` (0.13.0).
async fn lookup_socket(dir: &Path, token: &str) -> Result<Option<Target>, TokenError> {
    if !is_plain_file_name(token) || token.starts_with('.') {
        debug!(token = %token_tag(token), "token is not a plain socket name");
        return Ok(None);
    }
    let path = dir.join(token);
    let meta = match tokio::fs::symlink_metadata(&path).await {
        Ok(meta) => meta,
        Err(_) => return Ok(None),
    };
    let path = if meta.file_type().is_symlink() {
        let Ok(resolved) = tokio::fs::canonicalize(&path).await else {
            return Ok(None);
        };
        if !resolved.starts_with(dir) {
            warn!(token = %token_tag(token), "socket symlink points outside the directory; refused");
            return Ok(None);
        }
        resolved
    } else {
        path
    };
    match tokio::fs::metadata(&path).await {
        Ok(meta) if meta.file_type().is_socket() => Ok(Some(Target::Unix(path))),
        _ => Ok(None),
    }
}

// ---------------------------------------------------------------------------------------------
// BaseTokenAPI, JSONTokenApi

/// Characters left as they are when the token goes into the URL (RFC 3986 unreserved).
const URL_TOKEN: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// An HTTP token service: GET `source` with `%s` replaced by the URL-encoded token.
struct HttpApi {
    template: String,
    json: bool,
    timeout: Duration,
    client: HttpClient<HttpsConnector<HttpConnector>, Empty<Bytes>>,
}

impl HttpApi {
    fn new(source: &str, json: bool, timeout: Duration) -> anyhow::Result<Self> {
        // `%%s` is an escaped percent sign followed by `s`, not a placeholder.
        if expand_url(source, "a") == expand_url(source, "b") {
            bail!("--token-source={source}: the URL must contain %s where the token goes");
        }
        let probe: Uri = expand_url(source, "token")
            .parse()
            .with_context(|| format!("--token-source={source}: not a valid URL"))?;
        let https = match probe.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => bail!("--token-source={source}: the URL must start with http:// or https://"),
        };
        if probe.host().is_none_or(str::is_empty) {
            bail!("--token-source={source}: the URL has no host");
        }
        let mut roots = rustls::RootCertStore::empty();
        if https {
            let native = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(native.certs);
            if added == 0 {
                bail!(
                    "--token-source={source}: no trusted CA certificates found on this system \
                     (install ca-certificates or set SSL_CERT_FILE)"
                );
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("cannot set up TLS for the token API")?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        let client = HttpClient::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(HttpApi {
            template: source.to_owned(),
            json,
            timeout,
            client,
        })
    }

    fn backend(&self) -> &'static str {
        if self.json {
            "JSONTokenApi"
        } else {
            "BaseTokenAPI"
        }
    }

    async fn lookup(&self, token: &str) -> Result<Option<Target>, TokenError> {
        let encoded = utf8_percent_encode(token, URL_TOKEN).to_string();
        let uri: Uri = expand_url(&self.template, &encoded)
            .parse()
            .map_err(|_| TokenError::Http("the token does not make a valid URL".into()))?;
        let request = Request::get(uri)
            .header(
                USER_AGENT,
                concat!("websockify/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::new())
            .map_err(|e| TokenError::Http(one_line(&e)))?;
        let answer = tokio::time::timeout(self.timeout, async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| TokenError::Http(one_line(&e)))?;
            let status = response.status();
            if !status.is_success() {
                return Ok(Err(status));
            }
            let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| TokenError::Http(format!("reading the answer: {}", one_line(&*e))))?;
            Ok(Ok(body.to_bytes()))
        })
        .await
        .map_err(|_| TokenError::HttpTimeout(self.timeout))??;
        let body = match answer {
            Ok(body) => body,
            Err(status) => {
                // Upstream: any answer that is not ok means "no such token".
                debug!(backend = self.backend(), %status, "token API answered without a target");
                return Ok(None);
            }
        };
        let bad = |reason: String| TokenError::BadTarget {
            backend: self.backend(),
            reason,
        };
        if self.json {
            let value: Value =
                serde_json::from_slice(&body).map_err(|_| bad("the answer is not JSON".into()))?;
            let object = value
                .as_object()
                .ok_or_else(|| bad("the answer is not a JSON object".into()))?;
            target_from_json(object).map(Some).map_err(bad)
        } else {
            let text =
                std::str::from_utf8(&body).map_err(|_| bad("the answer is not UTF-8".into()))?;
            parse_target(text).map(Some).map_err(bad)
        }
    }
}

/// Python's `source % token` for a single `%s`: every `%s` becomes `token`, `%%` becomes `%`;
/// any other `%` is kept (Python would refuse the URL).
fn expand_url(template: &str, token: &str) -> String {
    let mut url = String::with_capacity(template.len() + token.len());
    let mut rest = template;
    while let Some(at) = rest.find('%') {
        url.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('s') {
            url.push_str(token);
            rest = tail;
        } else if let Some(tail) = after.strip_prefix('%') {
            url.push('%');
            rest = tail;
        } else {
            url.push('%');
            rest = after;
        }
    }
    url.push_str(rest);
    url
}

// ---------------------------------------------------------------------------------------------
// JWTTokenApi

/// Verification keys read once from the key file, with the algorithms each may check.
struct JwtKeys {
    keys: Vec<(DecodingKey, Vec<Algorithm>)>,
}

const RSA_ALGORITHMS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];
const HMAC_ALGORITHMS: &[Algorithm] = &[Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];

impl JwtKeys {
    /// A PEM public key (RSA, EC P-256/P-384, Ed25519; SPKI, PKCS#1 or certificate) or
    /// unencrypted private key (PKCS#8, PKCS#1), else an HMAC secret. As upstream (jwcrypto's
    /// `kty=oct` JWK), the secret is the file's text read as base64url; the file's raw text
    /// (trimmed) is accepted as a second secret, as most JWT libraries use it.
    fn load(path: &Path) -> anyhow::Result<Self> {
        let shown = path.display();
        let bytes = fs::read(path)
            .with_context(|| format!("--token-source={shown}: cannot read the JWT key file"))?;
        if let Some(label) = pem_label(&bytes) {
            let key = pem_key(label, &bytes).with_context(|| {
                format!("--token-source={shown}: cannot use the PEM key ({label})")
            })?;
            return Ok(JwtKeys { keys: vec![key] });
        }
        let text = std::str::from_utf8(&bytes).with_context(|| {
            format!("--token-source={shown}: the HMAC secret is not UTF-8 text")
        })?;
        let raw = text.trim();
        if raw.is_empty() {
            bail!("--token-source={shown}: the JWT key file is empty");
        }
        let mut keys = Vec::new();
        if let Some(secret) = jwk_k_secret(raw) {
            keys.push((DecodingKey::from_secret(&secret), HMAC_ALGORITHMS.to_vec()));
        }
        keys.push((
            DecodingKey::from_secret(raw.as_bytes()),
            HMAC_ALGORITHMS.to_vec(),
        ));
        Ok(JwtKeys { keys })
    }

    /// Expired, not yet valid, badly signed or otherwise unusable tokens are unknown tokens
    /// (`Ok(None)`), with the reason logged as upstream does.
    fn lookup(&self, token: &str) -> Result<Option<Target>, TokenError> {
        match self.verify(token) {
            Ok(target) => Ok(Some(target)),
            Err(reason) => {
                warn!(token = %token_tag(token), %reason, "JWT rejected");
                Ok(None)
            }
        }
    }

    /// The target of a valid token, or why the token is refused.
    fn verify(&self, token: &str) -> Result<Target, String> {
        if is_jwe(token) {
            return Err("encrypted JWE tokens are not supported".into());
        }
        let mut failure = "malformed token";
        for (key, algorithms) in &self.keys {
            let mut validation = Validation::default();
            validation.algorithms.clone_from(algorithms);
            validation.leeway = 0;
            validation.validate_exp = true;
            validation.validate_nbf = true;
            validation.validate_aud = false;
            validation.required_spec_claims.clear();
            let error = match jsonwebtoken::decode::<Map<String, Value>>(token, key, &validation) {
                Ok(data) => return target_from_claims(&data.claims),
                Err(error) => error,
            };
            failure = match error.kind() {
                ErrorKind::InvalidSignature => "bad signature",
                ErrorKind::ExpiredSignature => "token has expired",
                ErrorKind::ImmatureSignature => "token cannot be used yet (nbf)",
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                    "its algorithm does not match the key"
                }
                _ => "malformed token",
            };
            // Only a bad signature leaves hope for the next key (the other HMAC secret).
            if !matches!(error.kind(), ErrorKind::InvalidSignature) {
                break;
            }
        }
        Err(failure.into())
    }
}

/// `host` and `port` claims; `exp`/`nbf` must be numbers (jsonwebtoken skips other types,
/// while upstream's comparison fails on them).
fn target_from_claims(claims: &Map<String, Value>) -> Result<Target, String> {
    if ["exp", "nbf"]
        .iter()
        .any(|claim| claims.get(*claim).is_some_and(|v| !v.is_number()))
    {
        return Err("exp or nbf is not a number".into());
    }
    target_from_json(claims).map_err(|reason| format!("no usable host/port claims: {reason}"))
}

/// A JWE compact token has five parts, or a header with `enc`.
fn is_jwe(token: &str) -> bool {
    if token.split('.').count() == 5 {
        return true;
    }
    let header = token.split('.').next().unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Map<String, Value>>(&bytes).ok())
        .is_some_and(|header| header.contains_key("enc"))
}

/// The label of the first PEM block (`PUBLIC KEY`, ...), if the file is PEM.
fn pem_label(bytes: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(bytes).ok()?;
    let start = text.find("-----BEGIN ")? + "-----BEGIN ".len();
    let len = text[start..].find("-----")?;
    Some(&text[start..start + len])
}

fn pem_key(label: &str, bytes: &[u8]) -> anyhow::Result<(DecodingKey, Vec<Algorithm>)> {
    match label {
        "PUBLIC KEY" | "RSA PUBLIC KEY" | "CERTIFICATE" => {
            if let Ok(key) = DecodingKey::from_rsa_pem(bytes) {
                return Ok((key, RSA_ALGORITHMS.to_vec()));
            }
            if let Ok(key) = DecodingKey::from_ec_pem(bytes) {
                let algorithms = ec_algorithms(key.as_bytes().len())?;
                return Ok((key, algorithms));
            }
            if let Ok(key) = DecodingKey::from_ed_pem(bytes) {
                // jsonwebtoken slices the first 32 bytes when verifying: check them here.
                if key.as_bytes().len() != 32 {
                    bail!("an Ed25519 public key has 32 bytes");
                }
                return Ok((key, vec![Algorithm::EdDSA]));
            }
            bail!("not an RSA, EC (P-256, P-384) or Ed25519 key")
        }
        "PRIVATE KEY" | "RSA PRIVATE KEY" => public_of_private(bytes),
        "EC PRIVATE KEY" => bail!(
            "SEC1 EC private keys are not supported: give the public key, or convert with \
             `openssl pkcs8 -topk8 -nocrypt`"
        ),
        "ENCRYPTED PRIVATE KEY" => {
            bail!("encrypted private keys are not supported: give the public key")
        }
        _ => bail!("not a public or private key"),
    }
}

/// ES256 or ES384, from the length of the public point (uncompressed or compressed).
fn ec_algorithms(point_len: usize) -> anyhow::Result<Vec<Algorithm>> {
    match point_len {
        65 | 33 => Ok(vec![Algorithm::ES256]),
        97 | 49 => Ok(vec![Algorithm::ES384]),
        _ => bail!("unsupported EC curve (P-256 and P-384 are supported)"),
    }
}

/// The verification key of a private key file (upstream's jwcrypto accepts those too).
fn public_of_private(bytes: &[u8]) -> anyhow::Result<(DecodingKey, Vec<Algorithm>)> {
    use ring::signature::{self, KeyPair as _};
    use rustls_pki_types::PrivateKeyDer;
    use rustls_pki_types::pem::PemObject as _;

    let der = PrivateKeyDer::from_pem_slice(bytes).map_err(|e| anyhow!("{e}"))?;
    match der {
        PrivateKeyDer::Pkcs1(der) => {
            let pair = signature::RsaKeyPair::from_der(der.secret_pkcs1_der())
                .map_err(|e| anyhow!("RSA key rejected: {e}"))?;
            Ok((
                DecodingKey::from_rsa_der(pair.public().as_ref()),
                RSA_ALGORITHMS.to_vec(),
            ))
        }
        PrivateKeyDer::Pkcs8(der) => {
            let der = der.secret_pkcs8_der();
            if let Ok(pair) = signature::RsaKeyPair::from_pkcs8(der) {
                return Ok((
                    DecodingKey::from_rsa_der(pair.public().as_ref()),
                    RSA_ALGORITHMS.to_vec(),
                ));
            }
            let rng = ring::rand::SystemRandom::new();
            for (curve, algorithm) in [
                (
                    &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                    Algorithm::ES256,
                ),
                (
                    &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
                    Algorithm::ES384,
                ),
            ] {
                if let Ok(pair) = signature::EcdsaKeyPair::from_pkcs8(curve, der, &rng) {
                    return Ok((
                        DecodingKey::from_ec_der(pair.public_key().as_ref()),
                        vec![algorithm],
                    ));
                }
            }
            if let Ok(pair) = signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
                return Ok((
                    DecodingKey::from_ed_der(pair.public_key().as_ref()),
                    vec![Algorithm::EdDSA],
                ));
            }
            bail!("not an RSA, EC (P-256, P-384) or Ed25519 key")
        }
        _ => bail!("unsupported private key format"),
    }
}

/// The secret of a `kty=oct` JWK whose `k` is the file's text: base64url, read leniently as
/// Python's base64 module does (other characters ignored, padding optional).
fn jwk_k_secret(text: &str) -> Option<Vec<u8>> {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    let cleaned: String = text
        .chars()
        .filter_map(|c| match c {
            'A'..='Z' | 'a'..='z' | '0'..='9' => Some(c),
            '-' | '+' => Some('+'),
            '_' | '/' => Some('/'),
            _ => None,
        })
        .collect();
    let engine = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_allow_trailing_bits(true)
            .with_decode_padding_mode(DecodePaddingMode::RequireNone),
    );
    engine
        .decode(cleaned)
        .ok()
        .filter(|secret| !secret.is_empty())
}

// ---------------------------------------------------------------------------------------------
// TokenRedis

/// `host[:port[:db[:password[:namespace]]]]`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RedisSource {
    host: String,
    port: u16,
    db: i64,
    password: Option<String>,
    /// Empty, or the namespace with its trailing `:` (keys are `namespace:token`).
    namespace: String,
}

/// Upstream's `parse_source_args`: split on `:`, except that a field wrapped in double quotes
/// (right after a `:` or at the start, and ending at a `:` or the end) keeps its colons.
fn split_source_fields(source: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut rest = source;
    loop {
        let quoted = rest.strip_prefix('"').and_then(|inner| {
            let close = inner.find('"')?;
            let after = &inner[close + 1..];
            (close > 0 && (after.is_empty() || after.starts_with(':')))
                .then(|| (&inner[..close], after))
        });
        let (field, after) = match quoted {
            Some(parts) => parts,
            None => match rest.find(':') {
                Some(at) => (&rest[..at], &rest[at..]),
                None => (rest, ""),
            },
        };
        fields.push(field.to_owned());
        match after.strip_prefix(':') {
            Some(next) => rest = next,
            None => return fields,
        }
    }
}

fn parse_redis_source(source: &str) -> Result<RedisSource, String> {
    let fields = split_source_fields(source);
    let format_error = |why: &str| {
        // Upstream echoes the source; the password field is masked here.
        let mut shown = fields.clone();
        if let Some(password) = shown.get_mut(3).filter(|p| !p.is_empty()) {
            *password = "***".into();
        }
        format!(
            "--token-source='{}' is not in the expected format \
             <host>[:<port>[:<db>[:<password>[:<namespace>]]]]: {why}",
            shown.join(":")
        )
    };
    if fields.len() > 5 {
        return Err(format_error(
            "too many ':'-separated fields (quote a namespace containing ':')",
        ));
    }
    let field = |i: usize| fields.get(i).map(String::as_str).unwrap_or_default();
    let host = field(0).to_owned();
    if host.is_empty() {
        return Err(format_error("the host is empty"));
    }
    let port = match field(1) {
        "" => 6379,
        port => port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format_error("the port is not a number from 1 to 65535"))?,
    };
    let db = match field(2) {
        "" => 0,
        db => db
            .parse::<i64>()
            .ok()
            .filter(|db| *db >= 0)
            .ok_or_else(|| format_error("the db is not a number"))?,
    };
    let password = Some(field(3).to_owned()).filter(|p| !p.is_empty());
    let namespace = match field(4) {
        "" => String::new(),
        namespace => format!("{namespace}:"),
    };
    Ok(RedisSource {
        host,
        port,
        db,
        password,
        namespace,
    })
}

/// Redis lookups over one multiplexed connection, opened on first use and reopened after a
/// connection failure (upstream opens a new client per lookup).
struct RedisTokens {
    client: redis::Client,
    namespace: String,
    timeout: Duration,
    connection: tokio::sync::Mutex<Option<redis::aio::MultiplexedConnection>>,
}

impl RedisTokens {
    fn new(source: &str, timeout: Duration) -> anyhow::Result<Self> {
        let parsed = parse_redis_source(source).map_err(|e| anyhow!(e))?;
        let mut settings = redis::RedisConnectionInfo::default().set_db(parsed.db);
        if let Some(password) = &parsed.password {
            settings = settings.set_password(password);
        }
        let info = redis::IntoConnectionInfo::into_connection_info(redis::ConnectionAddr::Tcp(
            parsed.host.clone(),
            parsed.port,
        ))
        .context("cannot configure the Redis client")?
        .set_redis_settings(settings);
        let client = redis::Client::open(info).context("cannot configure the Redis client")?;
        info!(host = %parsed.host, port = parsed.port, db = parsed.db, "TokenRedis backend initialized");
        Ok(RedisTokens {
            client,
            namespace: parsed.namespace,
            timeout,
            connection: tokio::sync::Mutex::new(None),
        })
    }

    /// The shared connection, and whether it was just opened.
    async fn connection(&self) -> Result<(redis::aio::MultiplexedConnection, bool), TokenError> {
        // Lookups queue here while one of them connects; bound the wait as well.
        let mut slot = tokio::time::timeout(self.timeout, self.connection.lock())
            .await
            .map_err(|_| TokenError::RedisTimeout(self.timeout))?;
        if let Some(connection) = slot.as_ref() {
            return Ok((connection.clone(), false));
        }
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        let connection = tokio::time::timeout(
            self.timeout * 2,
            self.client
                .get_multiplexed_async_connection_with_config(&config),
        )
        .await
        .map_err(|_| TokenError::RedisTimeout(self.timeout))?
        .map_err(redis_error)?;
        *slot = Some(connection.clone());
        Ok((connection, true))
    }

    async fn lookup(&self, token: &str) -> Result<Option<Target>, TokenError> {
        let key = format!("{}{token}", self.namespace);
        let value = loop {
            let (mut connection, fresh) = self.connection().await?;
            let reply = tokio::time::timeout(
                self.timeout,
                redis::cmd("GET")
                    .arg(&key)
                    .query_async::<Option<Vec<u8>>>(&mut connection),
            )
            .await;
            let error = match reply {
                Ok(Ok(value)) => break value,
                Ok(Err(e)) if !(e.is_io_error() || e.is_connection_dropped() || e.is_timeout()) => {
                    return Err(redis_error(e));
                }
                Ok(Err(e)) => redis_error(e),
                Err(_) => TokenError::RedisTimeout(self.timeout),
            };
            // The connection is broken: forget it, and retry once if it was an old one
            // (Redis restarted since it was opened).
            *self.connection.lock().await = None;
            if fresh {
                return Err(error);
            }
            debug!(error = %error, "Redis connection lost; reconnecting");
        };
        let Some(value) = value else {
            return Ok(None);
        };
        let bad = |reason: String| TokenError::BadTarget {
            backend: "TokenRedis",
            reason,
        };
        let text = std::str::from_utf8(&value).map_err(|_| bad("the value is not UTF-8".into()))?;
        let text = text.trim();
        if text.starts_with('{') {
            let value: Map<String, Value> = serde_json::from_str(text)
                .map_err(|_| bad("the value is not valid JSON".into()))?;
            target_from_json(&value).map(Some).map_err(bad)
        } else {
            parse_target(text).map(Some).map_err(bad)
        }
    }
}

fn redis_error(e: redis::RedisError) -> TokenError {
    TokenError::Redis(one_line(&e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::io::{BufRead, BufReader};
    use std::process::{Child, Command, Stdio};

    use hyper::Response;
    use hyper::body::Incoming;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use jsonwebtoken::{EncodingKey, Header, encode, get_current_timestamp};
    use serde_json::json;

    /// Every async test runs under this bound.
    async fn bounded<F: Future>(future: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(20), future)
            .await
            .expect("test took too long")
    }

    fn tcp(host: &str, port: u16) -> Target {
        Target::Tcp {
            host: host.into(),
            port,
        }
    }

    // Test-only keys, made with openssl for these tests.
    const RSA_PRIVATE_PKCS1: &str = "\
-----BEGIN RSA PRIVATE KEY-----\n\
MIIEpQIBAAKCAQEA2zfTiB03+tzmhTGXaCr+l+Hf6sqniQXnzNjO0h6L/0LvWLOs\n\
25uRG2W2qeL6LCz3rUJeYBXrNd9mKKJvwYxXiCMa10yLy/EF746uNUnT4vXwP0tu\n\
mJ87/MWhNaJMOKShme2NeP3YMGNW41+O5p7IccWytQ/nsDIcaiQSFuhVJq8dANIK\n\
NsdJlTfDonaVTc33ZA95vVEiuQuAUj0Q2ns3/Isa7mZPbSHJWp/d2+4o8lYmMSeL\n\
zxTBlHUe85/Hl3gRcXiMWGKvWWQtyobCO6q1Y0HNGIPVWojztcEUI9KErGtaNc94\n\
stlrxEL4ZzM5WrDGMquPKgBDmha2xCqvF5bbDQIDAQABAoIBAAG2BVCUgCqa13dQ\n\
iWOzDDWeaIzlEolG0pdp7Mw9dUv09HKE55ZUZoliRmv2K9HYCkere9SABpHAjYQN\n\
LW2JDsXu/00z8MTwB2jPDdq4H4DHG94wDtTE5qzkyKI4mjsbZ3wiJvX2C/tcKJaR\n\
x6oNAomM+hcsMjiuIxWvRZ3fkJYIfamOXTBZthx2ns+5WWATK7d34IKrkPWNbmk0\n\
E2x2ntMRXV0gbvRL0fp2wmbShIKLg6HxSSa+w61DuAaYNiof5Mv7yNG0mvh1XbMP\n\
57gFiocXNYp00wjP0AAM/0pOpqUPb2CfXrPAhL1tTHLHgHfC0h1chs3PxjDp7qAA\n\
/1Cd3okCgYEA+3C/v/KHV6TfJJ0914ALYtVB6leU4GFjr20B5Ctn3O3ToZPg1Ain\n\
vppe0/nhWuc6dLAx1fazOenPvMUiN7QIhINzypoaW9Qosh40KJzu2Tbc1Rvdgkoi\n\
X4x2usTFFPe34SlDqbMPbkcKSmUvIOdRcOedn2uBw7oGVXp+39xOUkkCgYEA3zF+\n\
Knh8FqiPq+Tw2h4+b7Q2IloJ1cAAMHxA5oIIyA25M/mcrdYJRuGB0F46lypdJ3zW\n\
c9M2uOQmR2ufOaml75sYBWnmlDU6ZzOLS+nsh0otwrTvMUV1YTdclPqrjQljSBDB\n\
g7V8Ay5JogO5bNF/ZwlsMRFW0D4XDHTjjei9QqUCgYEAtW8ETkN5Odr0UX1NNIVm\n\
sehkae7MtKRRxDIKXVSc26SZQ0xrvVSJhlXp+1eiL3AOlEjXjSc46J84kWRGbp9w\n\
Tf50vUs5ne2Xd/+nb27eQsr9yqES04MfDodS3S5Db//YJZcbBgb5KYAFgu1Edp+z\n\
+p6G9JQkzNEc5O1BQ9O6iFECgYEAkoM9zAltg75BGdje1oAWAmPtSV2LqToxpaJb\n\
RDXGJ/UCR4Eq/d5MFrB/89V3ZrYTkpFbgYr8GCEEk8utKUAZQpGwEhWznETYwthO\n\
L5Yug50JLxBxGAn9hMS/zLhElv+7oZoGPjyLXNcs1OLW/P0FQhEoaYl1UJwBq1ar\n\
7gMDAlUCgYEA4keve3sUtnDlzAnOu08EcCIde1QATljdcE300HWa4pQdiKYNzLnQ\n\
o3kD/msvS1O5Xf05Zdo9NjKhpHP+WiLZkB3fMgomd49lK1YnnKdqmel0TUZFvn78\n\
Cvcqz+iJqC6q9iYlhE3IwBt1gxMvX12HVcCDkLAIsbmbYbvHDnoIeCg=\n\
-----END RSA PRIVATE KEY-----\n\
";

    const RSA_PUBLIC: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA2zfTiB03+tzmhTGXaCr+\n\
l+Hf6sqniQXnzNjO0h6L/0LvWLOs25uRG2W2qeL6LCz3rUJeYBXrNd9mKKJvwYxX\n\
iCMa10yLy/EF746uNUnT4vXwP0tumJ87/MWhNaJMOKShme2NeP3YMGNW41+O5p7I\n\
ccWytQ/nsDIcaiQSFuhVJq8dANIKNsdJlTfDonaVTc33ZA95vVEiuQuAUj0Q2ns3\n\
/Isa7mZPbSHJWp/d2+4o8lYmMSeLzxTBlHUe85/Hl3gRcXiMWGKvWWQtyobCO6q1\n\
Y0HNGIPVWojztcEUI9KErGtaNc94stlrxEL4ZzM5WrDGMquPKgBDmha2xCqvF5bb\n\
DQIDAQAB\n\
-----END PUBLIC KEY-----\n\
";

    const OTHER_RSA_PUBLIC: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEApNtBPN68LVIR5S8jKP4s\n\
U6epgxcSDWVWDqp74wYCJfzxLS8SfUtmoazfJwsbF2KJQ6XhYG61Sdxmg+1oQZDV\n\
JloQZKVUFd8h8rq+9p7RS4p9urr+7mc1BSqAKl5YbnbeMhkb5C8ZVCYPn5jjaXae\n\
20btyIZpAWN2faU0ClnkvlMdeDJnPYnjoaZ6rAe9uc0H6FgCeYmitvzi/Tz0rDGE\n\
u7YGeviI2VSnHVcf+3pub7kSN2InmMHoeZ3E7ChN9cBbEARU2O8/gy9mEHuYymVX\n\
QpHiGgCemIq3DBDDVfYbuEJshQQfq/8834Uv/bfk5A5eWQAig7S4fRhmIMZYN2cI\n\
dwIDAQAB\n\
-----END PUBLIC KEY-----\n\
";

    const EC_PRIVATE: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgxM8/E/RvhacGfC39\n\
lCB2/Kf8oE4kSbdVZiha9NTawgqhRANCAAQcj/2m0Uji4hMqTACJgAgMxlbqvqyE\n\
0I3B4eRTndDxlHpKTc2S4HSiH7cObCmbPPPhdOvwAUTUoHAnPbMNFq0J\n\
-----END PRIVATE KEY-----\n\
";

    const EC_PUBLIC: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEHI/9ptFI4uITKkwAiYAIDMZW6r6s\n\
hNCNweHkU53Q8ZR6Sk3NkuB0oh+3Dmwpmzzz4XTr8AFE1KBwJz2zDRatCQ==\n\
-----END PUBLIC KEY-----\n\
";

    const ED_PRIVATE: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MC4CAQAwBQYDK2VwBCIEILUVdhqeajcV2ETd80LwNDUZkER5bnlO46dLb/QIT/7Q\n\
-----END PRIVATE KEY-----\n\
";

    const ED_PUBLIC: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MCowBQYDK2VwAyEASGNu7aysNPI+5trjAC4iPd97e+/kR4tayZXF1H9bt2g=\n\
-----END PUBLIC KEY-----\n\
";

    // ---- targets and token lines ----

    #[test]
    fn token_lines_parse_like_upstream() {
        let line = |l: &str| parse_token_line(l).expect("valid line");
        assert_eq!(
            line("vm1: 10.0.0.1:5900"),
            Some(("vm1".into(), tcp("10.0.0.1", 5900)))
        );
        assert_eq!(
            line("  vm1:\thost.example:5901  "),
            Some(("vm1".into(), tcp("host.example", 5901)))
        );
        assert_eq!(line("a:b: h:1"), Some(("a:b".into(), tcp("h", 1))));
        assert_eq!(line("v6: ::1:5900"), Some(("v6".into(), tcp("::1", 5900))));
        assert_eq!(
            line("v6b: [::1]:5900"),
            Some(("v6b".into(), tcp("::1", 5900)))
        );
        assert_eq!(
            line("v6c: [fe80::1%eth0]:5900"),
            Some(("v6c".into(), tcp("fe80::1%eth0", 5900)))
        );
        assert_eq!(
            line("sock: unix_socket:/run/vnc/a:b.sock"),
            Some((
                "sock".into(),
                Target::Unix(PathBuf::from("/run/vnc/a:b.sock"))
            ))
        );
        assert_eq!(line(""), None);
        assert_eq!(line("   "), None);
        assert_eq!(line("# vm1: 10.0.0.1:5900"), None);
        assert_eq!(line("  # indented comment"), None);
    }

    #[test]
    fn bad_token_lines_are_errors() {
        for bad in [
            "vm1:10.0.0.1:5900",
            "vm1 10.0.0.1:5900",
            "vm1: host: 5900",
            "vm1: host",
            "vm1: host:notaport",
            "vm1: host:0",
            "vm1: host:70000",
            "vm1: :5900",
            ": host:5900",
            "vm1: [::1:5900",
            "vm1: fe80::1::5900",
            "vm1: unix_socket:",
            "vm1: a b:5900",
        ] {
            assert!(
                parse_token_line(bad).is_err(),
                "{bad:?} should be a syntax error"
            );
        }
    }

    #[test]
    fn json_targets_accept_upstream_and_split_forms() {
        let target = |v: Value| target_from_json(v.as_object().expect("object"));
        assert_eq!(
            target(json!({"host": "h", "port": 5900})),
            Ok(tcp("h", 5900))
        );
        assert_eq!(
            target(json!({"host": "h", "port": "5900"})),
            Ok(tcp("h", 5900))
        );
        assert_eq!(target(json!({"host": "h:5900"})), Ok(tcp("h", 5900)));
        // Upstream's TokenRedis ignores "port" when "host" is host:port.
        assert_eq!(
            target(json!({"host": "h:5900", "port": 1})),
            Ok(tcp("h", 5900))
        );
        assert_eq!(
            target(json!({"host": "::1", "port": 5900})),
            Ok(tcp("::1", 5900))
        );
        assert_eq!(
            target(json!({"host": "[::1]", "port": 5900})),
            Ok(tcp("::1", 5900))
        );
        assert_eq!(
            target(json!({"host": "unix_socket", "port": "/run/a.sock"})),
            Ok(Target::Unix(PathBuf::from("/run/a.sock")))
        );
        assert!(target(json!({"port": 5900})).is_err());
        assert!(target(json!({"host": "h", "port": 0})).is_err());
        assert!(target(json!({"host": "h", "port": 65536})).is_err());
        assert!(target(json!({"host": "h", "port": [1]})).is_err());
        assert!(target(json!({"host": "h"})).is_err());
    }

    // ---- TokenFile / ReadOnlyTokenFile ----

    #[test]
    fn syntax_errors_name_the_file_and_its_own_line_number() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(
            dir.path().join("a.conf"),
            "# first\nvm1: 10.0.0.1:5900\n\nvm2: 10.0.0.2:5900\n",
        )
        .expect("write");
        fs::write(
            dir.path().join("b.conf"),
            "vm3: 10.0.0.3:5900\nbroken line\n# c\nvm4 10.0.0.4:1\n",
        )
        .expect("write");
        let files = TokenFiles::new(dir.path().to_str().expect("utf-8"), true);
        let stamps = files.stamps().expect("stamps");
        let (targets, errors) = files.parse(&stamps).expect("parse");
        assert_eq!(targets.len(), 3);
        let where_: Vec<_> = errors
            .iter()
            .map(|e| {
                (
                    e.file
                        .file_name()
                        .and_then(|n| n.to_str())
                        .map(str::to_owned),
                    e.line,
                )
            })
            .collect();
        assert_eq!(
            where_,
            [(Some("b.conf".into()), 2), (Some("b.conf".into()), 4)]
        );
        // The reason never repeats the line (which holds the token).
        assert!(
            errors
                .iter()
                .all(|e| !e.reason.contains("broken") && !e.reason.contains("vm4"))
        );
    }

    #[tokio::test]
    async fn directory_source_reads_regular_files_and_later_duplicates_win() {
        bounded(async {
            let dir = tempfile::tempdir().expect("tempdir");
            fs::write(
                dir.path().join("10-first"),
                "dup: 10.0.0.1:1\nonly1: 10.0.0.1:2\n",
            )
            .expect("write");
            fs::write(dir.path().join("20-second"), "dup: 10.0.0.2:1\n").expect("write");
            fs::write(dir.path().join(".hidden.swp"), "hidden: 10.0.0.9:9\n").expect("write");
            fs::create_dir(dir.path().join("sub")).expect("mkdir");
            fs::write(dir.path().join("sub/inner"), "inner: 10.0.0.8:8\n").expect("write");
            let tokens = Tokens::new("TokenFile", dir.path().to_str()).expect("tokens");
            assert_eq!(
                tokens.lookup("dup").await.expect("lookup"),
                Some(tcp("10.0.0.2", 1))
            );
            assert_eq!(
                tokens.lookup("only1").await.expect("lookup"),
                Some(tcp("10.0.0.1", 2))
            );
            assert_eq!(tokens.lookup("hidden").await.expect("lookup"), None);
            assert_eq!(tokens.lookup("inner").await.expect("lookup"), None);
            assert_eq!(tokens.lookup("nope").await.expect("lookup"), None);
        })
        .await;
    }

    #[tokio::test]
    async fn token_file_reloads_when_a_file_changes() {
        bounded(async {
            let dir = tempfile::tempdir().expect("tempdir");
            let file = dir.path().join("tokens");
            fs::write(&file, "vm1: 10.0.0.1:5900\n").expect("write");
            let tokens =
                Tokens::new("websockify.token_plugins.TokenFile", file.to_str()).expect("tokens");
            assert_eq!(tokens.name(), "TokenFile");
            assert_eq!(
                tokens.lookup("vm1").await.expect("lookup"),
                Some(tcp("10.0.0.1", 5900))
            );
            fs::write(&file, "vm1: 10.0.0.11:5911\nvm2: 10.0.0.2:5900\n").expect("rewrite");
            assert_eq!(
                tokens.lookup("vm1").await.expect("lookup"),
                Some(tcp("10.0.0.11", 5911))
            );
            assert_eq!(
                tokens.lookup("vm2").await.expect("lookup"),
                Some(tcp("10.0.0.2", 5900))
            );
            // An atomic replace (new inode, same length) is seen too.
            let tmp = dir.path().join("tokens.new");
            fs::write(&tmp, "vm1: 10.0.0.12:5912\nvm3: 10.0.0.3:5900\n").expect("write");
            fs::rename(&tmp, &file).expect("rename");
            assert_eq!(
                tokens.lookup("vm1").await.expect("lookup"),
                Some(tcp("10.0.0.12", 5912))
            );
            assert_eq!(tokens.lookup("vm2").await.expect("lookup"), None);
            // Removing the file revokes every token: lookups fail instead of serving stale data.
            fs::remove_file(&file).expect("remove");
            let err = tokens.lookup("vm1").await.expect_err("missing source");
            assert!(matches!(err, TokenError::Source { .. }), "{err}");
        })
        .await;
    }

    #[tokio::test]
    async fn token_directory_sees_new_files() {
        bounded(async {
            let dir = tempfile::tempdir().expect("tempdir");
            let tokens = Tokens::new("TokenFile", dir.path().to_str()).expect("tokens");
            assert_eq!(tokens.lookup("vm1").await.expect("lookup"), None);
            fs::write(dir.path().join("new"), "vm1: 10.0.0.1:5900\n").expect("write");
            assert_eq!(
                tokens.lookup("vm1").await.expect("lookup"),
                Some(tcp("10.0.0.1", 5900))
            );
        })
        .await;
    }

    #[tokio::test]
    async fn read_only_token_file_never_reloads() {
        bounded(async {
            let dir = tempfile::tempdir().expect("tempdir");
            let file = dir.path().join("tokens");
            fs::write(&file, "vm1: 10.0.0.1:5900\n").expect("write");
            let tokens = Tokens::new("ReadOnlyTokenFile", file.to_str()).expect("tokens");
            assert_eq!(
                tokens.lookup("vm1").await.expect("lookup"),
                Some(tcp("10.0.0.1", 5900))
            );
            fs::write(&file, "vm1: 10.0.0.11:5911\nvm2: 10.0.0.2:5900\n").expect("rewrite");
            assert_eq!(
                tokens.lookup("vm1").await.expect("lookup"),
                Some(tcp("10.0.0.1", 5900))
            );
            assert_eq!(tokens.lookup("vm2").await.expect("lookup"), None);
        })
        .await;
    }

    #[tokio::test]
    async fn missing_token_file_fails_lookups_until_it_exists() {
        bounded(async {
            let dir = tempfile::tempdir().expect("tempdir");
            let file = dir.path().join("later");
            let tokens = Tokens::new("ReadOnlyTokenFile", file.to_str()).expect("start anyway");
            let err = tokens.lookup("vm1").await.expect_err("no file yet");
            assert!(err.to_string().contains("later"), "{err}");
            assert!(!err.to_string().contains("vm1"), "{err}");
            fs::write(&file, "vm1: 10.0.0.1:5900\n").expect("write");
            assert_eq!(
                tokens.lookup("vm1").await.expect("lookup"),
                Some(tcp("10.0.0.1", 5900))
            );
        })
        .await;
    }

    // ---- TokenFileName ----

    #[tokio::test]
    async fn token_file_name_reads_one_file_per_token_and_refuses_traversal() {
        bounded(async {
            let root = tempfile::tempdir().expect("tempdir");
            let dir = root.path().join("tokens");
            fs::create_dir(&dir).expect("mkdir");
            fs::write(dir.join("vm1"), "  10.0.0.1:5900\n").expect("write");
            fs::write(dir.join("vm6"), "[::1]:5901").expect("write");
            fs::write(dir.join("sock"), "unix_socket:/run/x.sock\n").expect("write");
            fs::write(dir.join("bad"), "no port here\n").expect("write");
            fs::write(root.path().join("outside"), "10.6.6.6:6666\n").expect("write");
            fs::create_dir(dir.join("subdir")).expect("mkdir");
            let tokens = Tokens::new("TokenFileName", dir.to_str()).expect("tokens");
            assert_eq!(
                tokens.lookup("vm1").await.expect("lookup"),
                Some(tcp("10.0.0.1", 5900))
            );
            assert_eq!(
                tokens.lookup("vm6").await.expect("lookup"),
                Some(tcp("::1", 5901))
            );
            assert_eq!(
                tokens.lookup("sock").await.expect("lookup"),
                Some(Target::Unix(PathBuf::from("/run/x.sock")))
            );
            for refused in [
                "../outside",
                "..",
                ".",
                "",
                "subdir",
                "subdir/../vm1",
                "a\\b",
                "vm1\0",
                "missing",
            ] {
                assert_eq!(
                    tokens.lookup(refused).await.expect("lookup"),
                    None,
                    "{refused:?}"
                );
            }
            let err = tokens.lookup("bad").await.expect_err("bad content");
            assert!(matches!(err, TokenError::BadTarget { .. }), "{err}");
        })
        .await;
    }

    #[test]
    fn directory_plugins_need_a_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("file");
        fs::write(&file, "x").expect("write");
        for plugin in ["TokenFileName", "UnixDomainSocketDirectory"] {
            for source in [file.to_str().expect("utf-8"), "/nonexistent/dir"] {
                let err = Tokens::new(plugin, Some(source)).expect_err("not a directory");
                let text = format!("{err:#}");
                assert!(
                    text.contains(plugin)
                        && text.contains(source)
                        && text.contains("--token-source"),
                    "{text}"
                );
            }
        }
    }

    // ---- UnixDomainSocketDirectory ----

    #[tokio::test]
    async fn socket_directory_finds_sockets_only_inside_the_directory() {
        bounded(async {
            let root = tempfile::tempdir().expect("tempdir");
            let socks = root.path().join("socks");
            let socks2 = root.path().join("socks2");
            fs::create_dir(&socks).expect("mkdir");
            fs::create_dir(&socks2).expect("mkdir");
            let _inside =
                std::os::unix::net::UnixListener::bind(socks.join("vm.sock")).expect("bind");
            let _outside =
                std::os::unix::net::UnixListener::bind(socks2.join("x.sock")).expect("bind");
            fs::write(socks.join("plain"), "").expect("write");
            std::os::unix::fs::symlink(socks2.join("x.sock"), socks.join("escape.sock"))
                .expect("symlink");
            std::os::unix::fs::symlink(socks.join("vm.sock"), socks.join("alias.sock"))
                .expect("symlink");
            let tokens = Tokens::new("UnixDomainSocketDirectory", socks.to_str()).expect("tokens");
            let canonical = fs::canonicalize(&socks).expect("canonical");
            assert_eq!(
                tokens.lookup("vm.sock").await.expect("lookup"),
                Some(Target::Unix(canonical.join("vm.sock")))
            );
            assert_eq!(
                tokens.lookup("alias.sock").await.expect("lookup"),
                Some(Target::Unix(canonical.join("vm.sock")))
            );
            for refused in [
                "../socks2/x.sock",
                "escape.sock",
                "plain",
                "missing.sock",
                "..",
                ".",
                ".hidden",
                "",
                "vm.sock\0",
                "/abs/vm.sock",
            ] {
                assert_eq!(
                    tokens.lookup(refused).await.expect("lookup"),
                    None,
                    "{refused:?}"
                );
            }
        })
        .await;
    }

    // ---- token_from_request / token_tag ----

    fn request_token(uri: &str, host: Option<&str>, host_token: bool) -> Option<String> {
        let uri: Uri = uri.parse().expect("uri");
        let mut headers = HeaderMap::new();
        if let Some(host) = host {
            headers.insert(HOST, host.parse().expect("header"));
        }
        token_from_request(&uri, &headers, host_token)
    }

    #[test]
    fn token_comes_from_the_query_like_parse_qs() {
        let q = |uri: &str| request_token(uri, Some("localhost:6080"), false);
        assert_eq!(q("/websockify?token=abc"), Some("abc".into()));
        assert_eq!(
            q("/any/path?x=1&token=a%20b+c&token=second"),
            Some("a b c".into())
        );
        assert_eq!(q("/?token=&token=second"), Some("second".into()));
        assert_eq!(q("/?token&token=third"), Some("third".into()));
        assert_eq!(q("/?%74oken=encoded-key"), Some("encoded-key".into()));
        assert_eq!(q("/?token=abc%0A%0A"), Some("abc".into()));
        assert_eq!(q("/?token=%2Fpath%3Dx"), Some("/path=x".into()));
        assert_eq!(q("/?token=%0A"), None);
        assert_eq!(q("/?tokens=abc"), None);
        assert_eq!(q("/websockify"), None);
        assert_eq!(q("/?token="), None);
    }

    #[test]
    fn host_token_is_the_host_header_without_port() {
        let h = |host: Option<&str>| request_token("/websockify?token=ignored", host, true);
        assert_eq!(
            h(Some("vm1.example.com:6080")),
            Some("vm1.example.com".into())
        );
        assert_eq!(h(Some("vm1.example.com")), Some("vm1.example.com".into()));
        assert_eq!(h(Some("[::1]:6080")), Some("::1".into()));
        assert_eq!(h(Some("[::1]")), Some("::1".into()));
        assert_eq!(h(Some(":6080")), None);
        assert_eq!(h(None), None);
        assert_eq!(
            request_token("http://vm2.example:6080/websockify", None, true),
            Some("vm2.example".into())
        );
    }

    #[test]
    fn token_tag_is_short_stable_and_not_the_token() {
        let tag = token_tag("secret-token");
        assert_eq!(tag.len(), 8);
        assert!(tag.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(tag, token_tag("secret-token"));
        assert_ne!(tag, token_tag("secret-token2"));
        assert!(!tag.contains("secret"));
    }

    // ---- plugin names ----

    #[test]
    fn unknown_plugins_and_missing_sources_are_clear_errors() {
        let err = Tokens::new("NoSuchPlugin", Some("x")).expect_err("unknown");
        let text = err.to_string();
        assert!(text.contains("NoSuchPlugin"), "{text}");
        for known in KNOWN_PLUGINS {
            assert!(text.contains(known), "{text}");
        }
        assert!(Tokens::new("mymodule.TokenFile", Some("x")).is_err());
        assert!(Tokens::new("tokenfile", Some("x")).is_err());
        let err = Tokens::new("TokenFile", None).expect_err("no source");
        assert!(err.to_string().contains("--token-source"), "{err}");
    }

    // ---- TokenRedis source ----

    fn redis_source(
        host: &str,
        port: u16,
        db: i64,
        password: Option<&str>,
        namespace: &str,
    ) -> RedisSource {
        RedisSource {
            host: host.into(),
            port,
            db,
            password: password.map(str::to_owned),
            namespace: namespace.into(),
        }
    }

    #[test]
    fn redis_sources_parse_like_upstream() {
        let cases = [
            ("127.0.0.1", redis_source("127.0.0.1", 6379, 0, None, "")),
            (
                "127.0.0.1:1234",
                redis_source("127.0.0.1", 1234, 0, None, ""),
            ),
            (
                "127.0.0.1:1234:2",
                redis_source("127.0.0.1", 1234, 2, None, ""),
            ),
            (
                "127.0.0.1:1234:2:verysecret",
                redis_source("127.0.0.1", 1234, 2, Some("verysecret"), ""),
            ),
            (
                "127.0.0.1:1234:2:verysecret:namespace",
                redis_source("127.0.0.1", 1234, 2, Some("verysecret"), "namespace:"),
            ),
            (
                "127.0.0.1:::verysecret",
                redis_source("127.0.0.1", 6379, 0, Some("verysecret"), ""),
            ),
            (
                "127.0.0.1::::",
                redis_source("127.0.0.1", 6379, 0, None, ""),
            ),
            ("127.0.0.1:::", redis_source("127.0.0.1", 6379, 0, None, "")),
            ("127.0.0.1::", redis_source("127.0.0.1", 6379, 0, None, "")),
            ("127.0.0.1:", redis_source("127.0.0.1", 6379, 0, None, "")),
            (
                "127.0.0.1::::namespace",
                redis_source("127.0.0.1", 6379, 0, None, "namespace:"),
            ),
            (
                "127.0.0.1::::\"ns1:ns2\"",
                redis_source("127.0.0.1", 6379, 0, None, "ns1:ns2:"),
            ),
            ("127.0.0.1::2", redis_source("127.0.0.1", 6379, 2, None, "")),
            (
                "127.0.0.1:1234::verysecret",
                redis_source("127.0.0.1", 1234, 0, Some("verysecret"), ""),
            ),
            (
                "127.0.0.1::2:verysecret",
                redis_source("127.0.0.1", 6379, 2, Some("verysecret"), ""),
            ),
            (
                "127.0.0.1::2:",
                redis_source("127.0.0.1", 6379, 2, None, ""),
            ),
            (
                "127.0.0.1::2::namespace",
                redis_source("127.0.0.1", 6379, 2, None, "namespace:"),
            ),
            (
                "127.0.0.1:1234:::namespace",
                redis_source("127.0.0.1", 1234, 0, None, "namespace:"),
            ),
            (
                "127.0.0.1::2:verysecret:namespace",
                redis_source("127.0.0.1", 6379, 2, Some("verysecret"), "namespace:"),
            ),
            (
                "127.0.0.1:1234::verysecret:namespace",
                redis_source("127.0.0.1", 1234, 0, Some("verysecret"), "namespace:"),
            ),
            (
                "127.0.0.1:1234:2::namespace",
                redis_source("127.0.0.1", 1234, 2, None, "namespace:"),
            ),
            (
                "my-redis-host::::\"first-ns:second-ns\"",
                redis_source("my-redis-host", 6379, 0, None, "first-ns:second-ns:"),
            ),
            (
                "h:::\"pass:word\"",
                redis_source("h", 6379, 0, Some("pass:word"), ""),
            ),
        ];
        for (source, expected) in cases {
            assert_eq!(parse_redis_source(source), Ok(expected), "{source}");
        }
    }

    #[test]
    fn redis_source_fields_split_like_parse_source_args() {
        let split = |s: &str| split_source_fields(s);
        assert_eq!(split("a:b:c:d"), ["a", "b", "c", "d"]);
        assert_eq!(split("a:\"b:c\":d"), ["a", "b:c", "d"]);
        assert_eq!(split("\"a:b\""), ["a:b"]);
        assert_eq!(split("a:"), ["a", ""]);
        assert_eq!(split(""), [""]);
        // Quotes only group when they close right before ':' or the end, and are not empty.
        assert_eq!(split("a:\"b\"c:d"), ["a", "\"b\"c", "d"]);
        assert_eq!(split("a:\"b:c\"d"), ["a", "\"b", "c\"d"]);
        assert_eq!(split("a:\"\":d"), ["a", "\"\"", "d"]);
    }

    #[test]
    fn bad_redis_sources_are_rejected_with_upstreams_message() {
        for bad in [
            "h:1:2:pw:ns:extra",
            "h:port",
            "h:1:db",
            ":6379",
            "h:0",
            "h:1:-1",
        ] {
            let err = parse_redis_source(bad).expect_err(bad);
            assert!(
                err.contains("is not in the expected format <host>[:<port>[:<db>[:<password>[:<namespace>]]]]"),
                "{err}"
            );
        }
        let err = parse_redis_source("h:1:2:topsecret:ns:extra").expect_err("too many fields");
        assert!(!err.contains("topsecret"), "{err}");
        let err = Tokens::new("TokenRedis", Some("h:1:2:pw:ns:extra")).expect_err("bad source");
        assert!(
            err.to_string()
                .contains("--token-source='h:1:2:***:ns:extra'"),
            "{err}"
        );
    }

    // ---- URL templates ----

    #[test]
    fn url_template_expands_like_python_percent_formatting() {
        assert_eq!(expand_url("http://h/t/%s", "a%20b"), "http://h/t/a%20b");
        assert_eq!(expand_url("http://h/?t=%s&u=%s", "x"), "http://h/?t=x&u=x");
        assert_eq!(expand_url("http://h/100%%/%s", "x"), "http://h/100%/x");
        assert_eq!(expand_url("http://h/%41/%s%", "x"), "http://h/%41/x%");
        assert_eq!(expand_url("http://h/%%s", "x"), "http://h/%s");
        assert_eq!(
            utf8_percent_encode("a b/c?d&e=f~g.h_i-j+é", URL_TOKEN).to_string(),
            "a%20b%2Fc%3Fd%26e%3Df~g.h_i-j%2B%C3%A9"
        );
    }

    #[test]
    fn token_api_sources_are_checked_at_start() {
        for (source, needle) in [
            ("http://127.0.0.1/token", "%s"),
            ("http://127.0.0.1/token/%%s", "%s"),
            ("ftp://127.0.0.1/%s", "http://"),
            ("/relative/%s", "http://"),
            ("http:///%s", "--token-source"),
        ] {
            let err = Tokens::new("BaseTokenAPI", Some(source)).expect_err(source);
            let text = format!("{err:#}");
            assert!(
                text.contains(needle) && text.contains("--token-source"),
                "{source}: {text}"
            );
        }
        assert!(Tokens::new("JSONTokenApi", Some("http://127.0.0.1:1/t?token=%s")).is_ok());
    }

    // ---- BaseTokenAPI / JSONTokenApi against a local server ----

    /// A tiny token service on 127.0.0.1:0. It records the paths it is asked for.
    struct TokenService {
        addr: std::net::SocketAddr,
        seen: Arc<Mutex<Vec<String>>>,
    }

    async fn token_service() -> TokenService {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let log = Arc::clone(&log);
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let log = Arc::clone(&log);
                        async move {
                            let path = request
                                .uri()
                                .path_and_query()
                                .map(|p| p.to_string())
                                .unwrap_or_default();
                            log.lock().expect("log").push(path.clone());
                            let (status, body) = if path.starts_with("/plain/") {
                                (200, "127.0.0.1:5901\n".to_string())
                            } else if path.starts_with("/json/") {
                                (200, json!({"host": "10.0.0.2", "port": "5902"}).to_string())
                            } else if path.starts_with("/jsonnum/") {
                                (200, json!({"host": "::1", "port": 5903}).to_string())
                            } else if let Some(port) = path.strip_prefix("/port/") {
                                (200, format!("127.0.0.1:{port}"))
                            } else if path.starts_with("/garbage/") {
                                (200, "not a target".to_string())
                            } else if path.starts_with("/slow/") {
                                tokio::time::sleep(Duration::from_secs(30)).await;
                                (200, "127.0.0.1:1".to_string())
                            } else if path.starts_with("/error/") {
                                (500, "oops".to_string())
                            } else {
                                (404, "not found".to_string())
                            };
                            let response = Response::builder()
                                .status(status)
                                .body(http_body_util::Full::new(Bytes::from(body)))
                                .expect("response");
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        TokenService { addr, seen }
    }

    #[tokio::test]
    async fn base_token_api_gets_the_url_encoded_token() {
        bounded(async {
            let service = token_service().await;
            let source = format!("http://{}/plain/%s?x=1", service.addr);
            let tokens = Tokens::new("BaseTokenAPI", Some(&source)).expect("tokens");
            assert_eq!(tokens.name(), "BaseTokenAPI");
            assert_eq!(
                tokens.lookup("vm 1/2?&").await.expect("lookup"),
                Some(tcp("127.0.0.1", 5901))
            );
            assert_eq!(
                tokens.lookup("vm2").await.expect("lookup"),
                Some(tcp("127.0.0.1", 5901))
            );
            let seen = service.seen.lock().expect("seen").clone();
            assert_eq!(seen, ["/plain/vm%201%2F2%3F%26?x=1", "/plain/vm2?x=1"]);
        })
        .await;
    }

    #[tokio::test]
    async fn token_api_non_success_is_an_unknown_token() {
        bounded(async {
            let service = token_service().await;
            for path in ["missing", "error"] {
                let tokens = Tokens::new(
                    "BaseTokenAPI",
                    Some(&format!("http://{}/{path}/%s", service.addr)),
                )
                .expect("tokens");
                assert_eq!(tokens.lookup("vm1").await.expect("lookup"), None, "{path}");
            }
        })
        .await;
    }

    #[tokio::test]
    async fn json_token_api_reads_host_and_port() {
        bounded(async {
            let service = token_service().await;
            let tokens = Tokens::new(
                "JSONTokenApi",
                Some(&format!("http://{}/json/%s", service.addr)),
            )
            .expect("tokens");
            assert_eq!(
                tokens.lookup("vm1").await.expect("lookup"),
                Some(tcp("10.0.0.2", 5902))
            );
            let tokens = Tokens::new(
                "JSONTokenApi",
                Some(&format!("http://{}/jsonnum/%s", service.addr)),
            )
            .expect("tokens");
            assert_eq!(
                tokens.lookup("vm1").await.expect("lookup"),
                Some(tcp("::1", 5903))
            );
            // A plain answer is not JSON.
            let tokens = Tokens::new(
                "JSONTokenApi",
                Some(&format!("http://{}/plain/%s", service.addr)),
            )
            .expect("tokens");
            let err = tokens.lookup("vm1").await.expect_err("not json");
            assert!(
                matches!(
                    err,
                    TokenError::BadTarget {
                        backend: "JSONTokenApi",
                        ..
                    }
                ),
                "{err}"
            );
            let tokens = Tokens::new(
                "BaseTokenAPI",
                Some(&format!("http://{}/garbage/%s", service.addr)),
            )
            .expect("tokens");
            let err = tokens.lookup("vm1").await.expect_err("garbage");
            assert!(
                matches!(
                    err,
                    TokenError::BadTarget {
                        backend: "BaseTokenAPI",
                        ..
                    }
                ),
                "{err}"
            );
        })
        .await;
    }

    #[tokio::test]
    async fn token_api_timeouts_and_refusals_are_errors_without_the_token() {
        bounded(async {
            let service = token_service().await;
            let api = HttpApi::new(
                &format!("http://{}/slow/%s", service.addr),
                false,
                Duration::from_millis(300),
            )
            .expect("api");
            let err = api.lookup("secret-token").await.expect_err("timeout");
            assert!(matches!(err, TokenError::HttpTimeout(_)), "{err}");
            assert!(!err.to_string().contains("secret-token"));

            let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            let port = closed.local_addr().expect("addr").port();
            drop(closed);
            let tokens = Tokens::new(
                "BaseTokenAPI",
                Some(&format!("http://127.0.0.1:{port}/t/%s")),
            )
            .expect("tokens");
            let err = tokens.lookup("secret-token").await.expect_err("refused");
            assert!(matches!(err, TokenError::Http(_)), "{err}");
            let text = err.to_string();
            assert!(
                !text.contains("secret-token") && !text.contains('\n'),
                "{text}"
            );
        })
        .await;
    }

    #[tokio::test]
    async fn concurrent_lookups_of_different_tokens_never_mix() {
        bounded(async {
            let dir = tempfile::tempdir().expect("tempdir");
            let file = dir.path().join("tokens");
            let lines: String = (1..=64)
                .map(|n| format!("vm{n}: 10.0.0.{n}:{}\n", 5900 + n))
                .collect();
            fs::write(&file, lines).expect("write");
            let service = token_service().await;
            let backends = [
                Tokens::new("TokenFile", file.to_str()).expect("file"),
                Tokens::new(
                    "BaseTokenAPI",
                    Some(&format!("http://{}/port/%s", service.addr)),
                )
                .expect("api"),
            ];
            for tokens in backends {
                let tokens = Arc::new(tokens);
                let mut lookups = tokio::task::JoinSet::new();
                for n in 1..=64u16 {
                    let tokens = Arc::clone(&tokens);
                    lookups.spawn(async move {
                        let token = if tokens.name() == "TokenFile" {
                            format!("vm{n}")
                        } else {
                            (5900 + n).to_string()
                        };
                        (n, tokens.lookup(&token).await.expect("lookup"))
                    });
                }
                while let Some(joined) = lookups.join_next().await {
                    let (n, target) = joined.expect("task");
                    let expected = if tokens.name() == "TokenFile" {
                        tcp(&format!("10.0.0.{n}"), 5900 + n)
                    } else {
                        tcp("127.0.0.1", 5900 + n)
                    };
                    assert_eq!(target, Some(expected));
                }
            }
        })
        .await;
    }

    // ---- JWTTokenApi ----

    fn key_file(dir: &tempfile::TempDir, name: &str, content: &str) -> String {
        let path = dir.path().join(name);
        fs::write(&path, content).expect("write key");
        path.to_str().expect("utf-8").to_owned()
    }

    fn jwt(algorithm: Algorithm, key: &EncodingKey, claims: Value) -> String {
        encode(&Header::new(algorithm), &claims, key).expect("sign")
    }

    fn rsa_signer() -> EncodingKey {
        EncodingKey::from_rsa_pem(RSA_PRIVATE_PKCS1.as_bytes()).expect("rsa key")
    }

    #[tokio::test]
    async fn jwt_rs256_es256_and_eddsa_tokens_resolve() {
        bounded(async {
            let dir = tempfile::tempdir().expect("tempdir");
            let claims = json!({"host": "remote_host", "port": "5900"});
            let cases = [
                (RSA_PUBLIC, Algorithm::RS256, rsa_signer()),
                (RSA_PUBLIC, Algorithm::PS512, rsa_signer()),
                // Upstream also accepts the private key file.
                (RSA_PRIVATE_PKCS1, Algorithm::RS384, rsa_signer()),
                (
                    EC_PUBLIC,
                    Algorithm::ES256,
                    EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).expect("ec"),
                ),
                (
                    EC_PRIVATE,
                    Algorithm::ES256,
                    EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).expect("ec"),
                ),
                (
                    ED_PUBLIC,
                    Algorithm::EdDSA,
                    EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).expect("ed"),
                ),
                (
                    ED_PRIVATE,
                    Algorithm::EdDSA,
                    EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).expect("ed"),
                ),
            ];
            for (index, (verify_with, algorithm, signer)) in cases.into_iter().enumerate() {
                let source = key_file(&dir, &format!("key{index}.pem"), verify_with);
                let tokens = Tokens::new("JWTTokenApi", Some(&source)).expect("tokens");
                let token = jwt(algorithm, &signer, claims.clone());
                assert_eq!(
                    tokens.lookup(&token).await.expect("lookup"),
                    Some(tcp("remote_host", 5900)),
                    "{algorithm:?} case {index}"
                );
            }
        })
        .await;
    }

    #[tokio::test]
    async fn jwt_hmac_secret_is_the_key_file_as_upstream_reads_it() {
        bounded(async {
            let dir = tempfile::tempdir().expect("tempdir");
            // Upstream's fixture: jwcrypto reads it as a base64url JWK "k".
            let text = "secret_sauce_secret_sauce_secret_sauce_secret_sauce";
            let source = key_file(&dir, "symmetric.key", &format!("{text}\n"));
            let tokens = Tokens::new("JWTTokenApi", Some(&source)).expect("tokens");
            // Python's base64 ignores the unused low bits of the last character.
            let python_like = base64::engine::GeneralPurpose::new(
                &base64::alphabet::URL_SAFE,
                base64::engine::GeneralPurposeConfig::new()
                    .with_decode_allow_trailing_bits(true)
                    .with_decode_padding_mode(base64::engine::DecodePaddingMode::RequireNone),
            );
            let decoded = python_like.decode(text).expect("b64");
            assert_eq!(decoded.len(), 38);
            let claims = json!({"host": "remote_host", "port": 5900});
            for (algorithm, secret) in [
                (Algorithm::HS256, decoded.as_slice()),
                (Algorithm::HS512, decoded.as_slice()),
                (Algorithm::HS256, text.as_bytes()),
            ] {
                let token = jwt(algorithm, &EncodingKey::from_secret(secret), claims.clone());
                assert_eq!(
                    tokens.lookup(&token).await.expect("lookup"),
                    Some(tcp("remote_host", 5900))
                );
            }
            let wrong = jwt(
                Algorithm::HS256,
                &EncodingKey::from_secret(b"wrong_sauce"),
                claims,
            );
            assert_eq!(tokens.lookup(&wrong).await.expect("lookup"), None);
        })
        .await;
    }

    #[tokio::test]
    async fn jwt_time_claims_are_checked_without_leeway() {
        bounded(async {
            let dir = tempfile::tempdir().expect("tempdir");
            let source = key_file(&dir, "pub.pem", RSA_PUBLIC);
            let tokens = Tokens::new("JWTTokenApi", Some(&source)).expect("tokens");
            let keys = JwtKeys::load(Path::new(&source)).expect("keys");
            let now = get_current_timestamp();
            let sign = |claims: Value| jwt(Algorithm::RS256, &rsa_signer(), claims);
            let reason = |claims: Value| keys.verify(&sign(claims)).expect_err("refused");
            assert_eq!(
                keys.verify(&sign(
                    json!({"host": "h", "port": 1, "nbf": now - 10, "exp": now + 60})
                )),
                Ok(tcp("h", 1))
            );
            let expired = json!({"host": "h", "port": 1, "exp": now - 2});
            assert_eq!(reason(expired.clone()), "token has expired");
            assert_eq!(
                reason(json!({"host": "h", "port": 1, "nbf": now + 60})),
                "token cannot be used yet (nbf)"
            );
            for claims in [
                json!({"host": "h", "port": 1, "exp": (now + 60).to_string()}),
                json!({"host": "h", "port": 1, "nbf": "0"}),
            ] {
                assert!(keys.verify(&sign(claims)).is_err());
            }
            for claims in [
                json!({"host": "h"}),
                json!({"port": 1}),
                json!({"host": "h", "port": "x"}),
            ] {
                assert!(reason(claims).starts_with("no usable host/port claims"));
            }
            // Refused tokens are unknown tokens to the caller, not backend failures.
            assert_eq!(tokens.lookup(&sign(expired)).await.expect("lookup"), None);
        })
        .await;
    }

    #[test]
    fn jwt_with_the_wrong_key_or_algorithm_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let claims = json!({"host": "h", "port": 1});
        let other =
            JwtKeys::load(Path::new(&key_file(&dir, "other.pem", OTHER_RSA_PUBLIC))).expect("keys");
        let rs256 = jwt(Algorithm::RS256, &rsa_signer(), claims.clone());
        assert_eq!(other.verify(&rs256), Err("bad signature".into()));
        // HS256 signed with the public key's text must not pass against an RSA key.
        let rsa = JwtKeys::load(Path::new(&key_file(&dir, "rsa.pem", RSA_PUBLIC))).expect("keys");
        let confused = jwt(
            Algorithm::HS256,
            &EncodingKey::from_secret(RSA_PUBLIC.as_bytes()),
            claims.clone(),
        );
        assert_eq!(
            rsa.verify(&confused),
            Err("its algorithm does not match the key".into())
        );
        let ec = jwt(
            Algorithm::ES256,
            &EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).expect("ec"),
            claims,
        );
        assert_eq!(
            rsa.verify(&ec),
            Err("its algorithm does not match the key".into())
        );
        for garbage in ["", "abc", "a.b.c", "a.b", "..."] {
            assert_eq!(
                rsa.verify(garbage),
                Err("malformed token".into()),
                "{garbage:?}"
            );
        }
    }

    #[tokio::test]
    async fn jwe_tokens_are_refused_with_a_clear_reason() {
        bounded(async {
            let dir = tempfile::tempdir().expect("tempdir");
            let source = key_file(&dir, "rsa.pem", RSA_PUBLIC);
            let tokens = Tokens::new("JWTTokenApi", Some(&source)).expect("tokens");
            let keys = JwtKeys::load(Path::new(&source)).expect("keys");
            let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
            let header = engine.encode(r#"{"alg":"RSA-OAEP","enc":"A256GCM"}"#);
            for token in [
                format!("{header}.a2V5.aXY.Y2lwaGVy.dGFn"),
                format!("{header}.e30.c2ln"),
            ] {
                assert_eq!(
                    keys.verify(&token),
                    Err("encrypted JWE tokens are not supported".into())
                );
                assert_eq!(tokens.lookup(&token).await.expect("lookup"), None);
            }
        })
        .await;
    }

    #[test]
    fn jwt_key_files_are_checked_at_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.pem");
        let err = Tokens::new("JWTTokenApi", missing.to_str()).expect_err("missing");
        assert!(format!("{err:#}").contains("missing.pem"), "{err:#}");
        let empty = key_file(&dir, "empty", " \n");
        assert!(Tokens::new("JWTTokenApi", Some(&empty)).is_err());
        let broken = key_file(
            &dir,
            "broken.pem",
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        );
        let err = Tokens::new("JWTTokenApi", Some(&broken)).expect_err("broken");
        assert!(format!("{err:#}").contains("broken.pem"), "{err:#}");
        let sec1 = key_file(
            &dir,
            "sec1.pem",
            "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n",
        );
        assert!(
            format!(
                "{:#}",
                Tokens::new("JWTTokenApi", Some(&sec1)).expect_err("sec1")
            )
            .contains("pkcs8")
        );
        // A truncated Ed25519 key would make jsonwebtoken panic on every lookup.
        let short_ed = key_file(
            &dir,
            "short-ed.pem",
            "-----BEGIN PUBLIC KEY-----\nMBowBQYDK2VwAxEAAAECAwQFBgcICQoLDA0ODw==\n-----END PUBLIC KEY-----\n",
        );
        assert!(Tokens::new("JWTTokenApi", Some(&short_ed)).is_err());
    }

    // ---- TokenRedis against a real redis-server ----

    /// A redis-server child process, killed and reaped on drop.
    struct RedisServer {
        child: Child,
    }

    impl Drop for RedisServer {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    const REDIS_SERVER: &str = "/usr/bin/redis-server";

    fn free_port() -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    }

    /// Starts redis-server on `port` and returns once it logs that it accepts connections.
    async fn start_redis(port: u16) -> RedisServer {
        let mut child = Command::new(REDIS_SERVER)
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--requirepass", "s3cret", "--logfile", ""])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        let stdout = child.stdout.take().expect("stdout");
        let server = RedisServer { child };
        let ready = tokio::task::spawn_blocking(move || {
            let mut lines = BufReader::new(stdout).lines();
            let ready = lines
                .by_ref()
                .map_while(Result::ok)
                .any(|l| l.contains("Ready to accept connections"));
            // Keep draining so the server never blocks on a full pipe.
            std::thread::spawn(move || lines.for_each(drop));
            ready
        });
        let ready = tokio::time::timeout(Duration::from_secs(10), ready)
            .await
            .expect("redis-server did not start in time")
            .expect("reader");
        assert!(ready, "redis-server exited before it was ready");
        server
    }

    async fn redis_set(port: u16, db: i64, pairs: &[(&str, &str)]) {
        let info = redis::IntoConnectionInfo::into_connection_info(redis::ConnectionAddr::Tcp(
            "127.0.0.1".into(),
            port,
        ))
        .expect("info")
        .set_redis_settings(
            redis::RedisConnectionInfo::default()
                .set_db(db)
                .set_password("s3cret"),
        );
        let client = redis::Client::open(info).expect("client");
        let mut connection = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect");
        for (key, value) in pairs {
            redis::cmd("SET")
                .arg(*key)
                .arg(*value)
                .query_async::<()>(&mut connection)
                .await
                .expect("SET");
        }
    }

    #[tokio::test]
    async fn redis_lookups_against_a_real_server() {
        if !Path::new(REDIS_SERVER).exists() {
            eprintln!("skipped: {REDIS_SERVER} not installed (apt-get install redis-server)");
            return;
        }
        bounded(async {
            let port = free_port();
            let server = start_redis(port).await;
            redis_set(
                port,
                2,
                &[
                    ("plain", " 127.0.0.1:5901\n"),
                    ("json", r#"{"host": "127.0.0.1:5902"}"#),
                    ("json2", r#"{"host": "::1", "port": 5903}"#),
                    ("v6", "[::1]:5904"),
                    ("bad", "garbage"),
                    ("ns1:ns2:tok", "10.0.0.5:5905"),
                ],
            )
            .await;
            let tokens = Tokens::new("TokenRedis", Some(&format!("127.0.0.1:{port}:2:s3cret")))
                .expect("tokens");
            assert_eq!(tokens.name(), "TokenRedis");
            assert_eq!(
                tokens.lookup("plain").await.expect("lookup"),
                Some(tcp("127.0.0.1", 5901))
            );
            assert_eq!(
                tokens.lookup("json").await.expect("lookup"),
                Some(tcp("127.0.0.1", 5902))
            );
            assert_eq!(
                tokens.lookup("json2").await.expect("lookup"),
                Some(tcp("::1", 5903))
            );
            assert_eq!(
                tokens.lookup("v6").await.expect("lookup"),
                Some(tcp("::1", 5904))
            );
            assert_eq!(tokens.lookup("missing").await.expect("lookup"), None);
            let err = tokens.lookup("bad").await.expect_err("bad value");
            assert!(
                matches!(
                    err,
                    TokenError::BadTarget {
                        backend: "TokenRedis",
                        ..
                    }
                ),
                "{err}"
            );

            let namespaced = Tokens::new(
                "TokenRedis",
                Some(&format!("127.0.0.1:{port}:2:s3cret:\"ns1:ns2\"")),
            )
            .expect("tokens");
            assert_eq!(
                namespaced.lookup("tok").await.expect("lookup"),
                Some(tcp("10.0.0.5", 5905))
            );
            assert_eq!(namespaced.lookup("plain").await.expect("lookup"), None);

            let wrong_password =
                Tokens::new("TokenRedis", Some(&format!("127.0.0.1:{port}:2:nope")))
                    .expect("tokens");
            assert!(matches!(
                wrong_password.lookup("plain").await,
                Err(TokenError::Redis(_))
            ));

            // Redis restarts: the lookup while it is down fails, the next one reconnects.
            drop(server);
            let err = tokens.lookup("plain").await.expect_err("redis down");
            assert!(
                matches!(err, TokenError::Redis(_) | TokenError::RedisTimeout(_)),
                "{err}"
            );
            let _server = start_redis(port).await;
            redis_set(port, 2, &[("plain", "127.0.0.1:5911")]).await;
            assert_eq!(
                tokens.lookup("plain").await.expect("lookup"),
                Some(tcp("127.0.0.1", 5911))
            );
        })
        .await;
    }

    #[tokio::test]
    async fn redis_down_is_an_error_not_an_unknown_token() {
        bounded(async {
            let port = free_port();
            let tokens =
                Tokens::new("TokenRedis", Some(&format!("127.0.0.1:{port}"))).expect("tokens");
            let err = tokens
                .lookup("secret-token")
                .await
                .expect_err("nothing listens");
            assert!(
                matches!(err, TokenError::Redis(_) | TokenError::RedisTimeout(_)),
                "{err}"
            );
            assert!(!err.to_string().contains("secret-token"), "{err}");
        })
        .await;
    }
}
