//! Token-based target selection: the `--token-plugin` backends that turn the token of an
//! upgrade request into a [`Target`].
//!
//! ```text
//! token_from_request   one source, chosen by the options (TokenSource): ?token=... (parse_qs
//!                      rules), or the Host header (--host-token), a cookie (--token-cookie)
//!                      or the last path segment (--token-path)
//!        |
//! Tokens::lookup       one backend, built once by Tokens::new and shared by all connections:
//!                      TokenFile / ReadOnlyTokenFile   cached `token: host:port` files     file.rs
//!                      TokenFileName                   <dir>/<token> holds `host:port`     file.rs
//!                      BaseTokenAPI / JSONTokenApi     HTTP GET, pooled client, 5 s deadline api.rs
//!                      JWTTokenApi                     signed JWT with host/port claims    jwt.rs
//!                                                      or a JWE wrapping one               jwe.rs
//!                      TokenRedis                      GET [namespace:]token, one multiplexed
//!                                                      connection, reconnected             redis.rs
//!                      UnixDomainSocketDirectory       a socket inside a directory         socket.rs
//!        |
//! Ok(Some(Target)) | Ok(None) (unknown token) | Err(TokenError) (the backend failed)
//! ```
//!
//! The back-ends share leaf modules: `value` parses what they hand back into a target, `error`
//! holds [`TokenError`] and [`token_tag`], `read` reads source files safely (regular files
//! only, size-capped) and `changes` watches a file source with inotify. Every lookup runs under
//! one overall deadline.
//!
//! Names, source formats and file syntax follow upstream's `websockify/token_plugins.py`.
//! Differences are deliberate fixes: tokens never appear in logs or error messages (use
//! [`token_tag`]), token files are reloaded only when they change, HTTP lookups have a timeout
//! and URL-encode the token, and the directory plugins cannot be escaped with `..`.

mod api;
mod changes;
mod error;
mod file;
mod jwe;
mod jwt;
mod read;
mod redis;
mod socket;
mod value;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use hyper::Uri;
use hyper::header::{COOKIE, HOST, HeaderMap};
use tracing::debug;

use crate::config::Target;
use api::HttpApi;
use file::TokenFiles;
use jwt::JwtKeys;
use redis::RedisTokens;

pub use error::{TokenError, token_tag};

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
/// Deadline for connecting to Redis and for each Redis command.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);
/// Deadline for a whole lookup, whatever the backend: above the backends' own deadlines, so
/// that it only ends what has no deadline of its own (a file system that hangs, a queue).
const LOOKUP_DEADLINE: Duration = Duration::from_secs(10);

/// A configured token backend; shared by all connections (read-mostly: file caches reload on change).
pub struct Tokens {
    name: &'static str,
    backend: Backend,
    deadline: Duration,
}

enum Backend {
    File(Arc<TokenFiles>),
    FileName(PathBuf),
    Http(HttpApi),
    Jwt(JwtKeys),
    Redis(RedisTokens),
    SocketDir(PathBuf),
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
            "TokenFile" => Backend::File(Arc::new(TokenFiles::new(name, source, true)?)),
            "ReadOnlyTokenFile" => Backend::File(Arc::new(TokenFiles::new(name, source, false)?)),
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
        Ok(Tokens {
            name,
            backend,
            deadline: LOOKUP_DEADLINE,
        })
    }

    /// Looks a token up. `Ok(None)` is an unknown token (also an expired, badly signed or
    /// encrypted JWT); `Err` a backend failure (Redis down, HTTP error, unreadable file, a
    /// backend answer that is not a target, no answer within the deadline).
    pub async fn lookup(&self, token: &str) -> Result<Option<Target>, TokenError> {
        self.lookup_timed(token).await.0
    }

    /// [`Tokens::lookup`], and how long it took: for a lookup-duration metric by plugin
    /// ([`Tokens::name`]) and outcome ([`outcome`]).
    pub async fn lookup_timed(
        &self,
        token: &str,
    ) -> (Result<Option<Target>, TokenError>, Duration) {
        let started = tokio::time::Instant::now();
        let result = tokio::time::timeout(self.deadline, self.backend_lookup(token))
            .await
            .unwrap_or(Err(TokenError::Deadline(self.deadline)));
        let elapsed = started.elapsed();
        let tag = token_tag(token);
        let ms = elapsed.as_secs_f64() * 1000.0;
        match &result {
            Ok(Some(target)) => {
                debug!(plugin = self.name, token = %tag, %target, ms, "token resolved")
            }
            Ok(None) => debug!(plugin = self.name, token = %tag, ms, "token not found"),
            Err(e) => {
                debug!(plugin = self.name, token = %tag, error = %e, kind = e.kind(), ms, "token lookup failed")
            }
        }
        (result, elapsed)
    }

    async fn backend_lookup(&self, token: &str) -> Result<Option<Target>, TokenError> {
        match &self.backend {
            Backend::File(files) => files.lookup(token).await,
            Backend::FileName(dir) => file::lookup_file_name(dir, token).await,
            Backend::Http(api) => api.lookup(token).await,
            Backend::Jwt(keys) => keys.lookup(token),
            Backend::Redis(redis) => redis.lookup(token).await,
            Backend::SocketDir(dir) => socket::lookup_socket(dir, token).await,
        }
    }

    /// Re-reads the token files now (`TokenFile`, and also `ReadOnlyTokenFile`, which otherwise
    /// never reloads), e.g. on SIGHUP: `Ok(Some(n))` with the number of tokens loaded, `Ok(None)`
    /// for plugins with nothing to reload, `Err` if the source cannot be read (lookups then fail
    /// until it can, as after any change that makes it unreadable).
    pub async fn reload(&self) -> Result<Option<usize>, TokenError> {
        match &self.backend {
            Backend::File(files) => tokio::time::timeout(self.deadline, files.reload())
                .await
                .unwrap_or(Err(TokenError::Deadline(self.deadline)))
                .map(Some),
            _ => Ok(None),
        }
    }

    /// The plugin name for the banner ("proxying from X to targets generated by TokenFile"),
    /// also a stable metrics label.
    pub fn name(&self) -> &'static str {
        self.name
    }
}

/// The outcome of a lookup as a small, stable metrics label: `"found"`, `"unknown"`, or the
/// error's [`TokenError::kind`].
pub fn outcome(result: &Result<Option<Target>, TokenError>) -> &'static str {
    match result {
        Ok(Some(_)) => "found",
        Ok(None) => "unknown",
        Err(e) => e.kind(),
    }
}

/// Where the token of an upgrade request is read: exactly one place, chosen by the options
/// (`--host-token`, `--token-cookie` and `--token-path` exclude each other; none of them means
/// `?token=`). A request whose token is elsewhere has none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource<'a> {
    /// The first non-empty `token` query parameter (upstream's default).
    Query,
    /// The Host header without its port (`--host-token`).
    Host,
    /// The cookie of this name (`--token-cookie NAME`).
    Cookie(&'a str),
    /// The last segment of the path, `/websockify/TOKEN` (`--token-path`).
    Path,
}

impl TokenSource<'_> {
    /// Where the token was looked for, for the page of a request that has none.
    pub fn describe(&self) -> String {
        match self {
            TokenSource::Query => "?token= query parameter".into(),
            TokenSource::Host => "Host header".into(),
            TokenSource::Cookie(name) => format!("cookie {name}"),
            TokenSource::Path => "last segment of the path (/websockify/TOKEN)".into(),
        }
    }
}

/// The token of an upgrade request, from `source`:
/// - query: the first non-empty `token` parameter (percent-decoded, `+` as space, trailing
///   newlines stripped, as upstream's `parse_qs`);
/// - Host: the header without its port (`[::1]:6080` gives `::1`, where upstream cuts at the
///   first `:`);
/// - cookie: the first non-empty cookie of that name in the `Cookie` headers (`a=1; b=2`,
///   spaces around pairs ignored, a value in double quotes unquoted, then percent-decoded as
///   `encodeURIComponent` writes it);
/// - path: the last segment of the path, percent-decoded; the query is not part of it, and an
///   empty last segment (`/websockify/`) is no token.
pub fn token_from_request(uri: &Uri, headers: &HeaderMap, source: TokenSource) -> Option<String> {
    let token = match source {
        TokenSource::Host => {
            let host = match headers.get(HOST) {
                Some(value) => value.to_str().ok()?.trim().to_owned(),
                None => uri.authority()?.as_str().rsplit('@').next()?.to_owned(),
            };
            host_without_port(&host)?.to_owned()
        }
        TokenSource::Query => {
            // parse_qs drops blank values, so `?token=&token=abc` yields "abc".
            let (_, value) = form_urlencoded::parse(uri.query()?.as_bytes())
                .find(|(key, value)| key == "token" && !value.is_empty())?;
            value.trim_end_matches('\n').to_owned()
        }
        TokenSource::Cookie(name) => cookie(headers, name)?,
        TokenSource::Path => {
            let segment = uri.path().rsplit('/').next()?;
            percent_encoding::percent_decode_str(segment)
                .decode_utf8_lossy()
                .into_owned()
        }
    };
    (!token.is_empty()).then_some(token)
}

/// The first non-empty value of cookie `name` (RFC 6265 section 5.4 `name=value; ...`; names
/// are case-sensitive).
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b';'))
        .filter_map(|pair| {
            let pair = std::str::from_utf8(pair).ok()?;
            let (key, value) = pair.split_once('=')?;
            if key.trim() != name {
                return None;
            }
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            let value = percent_encoding::percent_decode_str(value).decode_utf8_lossy();
            (!value.is_empty()).then(|| value.into_owned())
        })
        .next()
}

fn host_without_port(host: &str) -> Option<&str> {
    if let Some(rest) = host.strip_prefix('[') {
        let (inside, _) = rest.split_once(']')?;
        Some(inside)
    } else {
        host.split(':').next()
    }
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

/// Entry points for the fuzz targets (`fuzz/`): the parsers of what token back-ends return,
/// reached without a back-end. Not an API.
#[doc(hidden)]
pub mod fuzzing {
    use std::path::Path;

    use serde_json::{Map, Value};

    use super::TokenError;
    use crate::config::Target;

    /// One line of a `TokenFile`.
    pub fn token_line(line: &str) -> Result<Option<Entry>, String> {
        super::file::parse_token_line(line)
    }

    /// A token and its target.
    pub type Entry = (String, Target);

    /// A whole `TokenFile`: its entries, and its bad lines as (line number, reason).
    pub fn token_file(text: &str) -> (Vec<Entry>, Vec<(usize, String)>) {
        let (entries, errors) = super::file::parse_token_file(Path::new("fuzz"), text);
        let errors = errors.into_iter().map(|e| (e.line, e.reason)).collect();
        (entries, errors)
    }

    /// A `host:port` / `[v6]:port` / `unix_socket:/path` target as back-ends return it.
    pub fn target_text(text: &str) -> Result<Target, String> {
        super::value::parse_target(text)
    }

    /// A `{"host": ..., "port": ...}` object (JSON API, Redis).
    pub fn target_json(object: &Map<String, Value>) -> Result<Target, String> {
        super::value::target_from_json(object)
    }

    /// A value stored in Redis under a token.
    pub fn redis_value(value: &[u8]) -> Result<Target, TokenError> {
        super::redis::parse_redis_value(value)
    }

    /// The claims of a verified JWT.
    pub fn jwt_claims(claims: &Map<String, Value>) -> Result<Target, String> {
        super::jwt::target_from_claims(claims)
    }

    /// The keys of a `JWTTokenApi` key file.
    pub struct JwtKeys(super::jwt::JwtKeys);

    impl JwtKeys {
        pub fn load(path: &Path) -> anyhow::Result<JwtKeys> {
            super::jwt::JwtKeys::load(path).map(JwtKeys)
        }

        /// The target of a token, as a lookup gives it.
        pub fn lookup(&self, token: &str) -> Result<Option<Target>, TokenError> {
            self.0.lookup(token)
        }
    }
}

#[cfg(test)]
mod testing;

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use crate::token::testing::{bounded, tcp, token_service};

    #[tokio::test]
    async fn timed_lookups_give_outcome_labels_and_durations() {
        bounded(async {
            let dir = tempfile::tempdir().expect("tempdir");
            let file = dir.path().join("tokens");
            fs::write(&file, "vm1: 10.0.0.1:5900\n").expect("write");
            let tokens = Tokens::new("TokenFile", file.to_str()).expect("tokens");
            let (found, elapsed) = tokens.lookup_timed("vm1").await;
            assert_eq!(outcome(&found), "found");
            assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
            let (unknown, _) = tokens.lookup_timed("vm2").await;
            assert_eq!(outcome(&unknown), "unknown");
            fs::remove_file(&file).expect("remove");
            let (failed, _) = tokens.lookup_timed("vm1").await;
            assert_eq!(outcome(&failed), "unavailable");
            assert_eq!(tokens.name(), "TokenFile");
        })
        .await;
    }

    /// On the paused clock (the service runs in this runtime): the deadline passes in
    /// virtual time, and the elapsed time measured is the virtual one. The deadline is the
    /// earliest timer, so however the clock jumps the lookup can only end there.
    #[tokio::test(start_paused = true)]
    async fn a_lookup_that_hangs_ends_at_the_deadline() {
        bounded(async {
            // The service never answers, and the API's own timeout is longer than the deadline.
            let service = token_service().await;
            let api = HttpApi::new(
                &format!("http://{}/slow/%s", service.addr),
                false,
                Duration::from_secs(60),
            )
            .expect("api");
            let tokens = Tokens {
                name: "BaseTokenAPI",
                backend: Backend::Http(api),
                deadline: Duration::from_millis(200),
            };
            let (result, elapsed) = tokens.lookup_timed("secret-token").await;
            let err = result.expect_err("deadline");
            assert!(matches!(err, TokenError::Deadline(_)), "{err}");
            assert_eq!(err.to_string(), "token lookup did not finish within 200 ms");
            assert_eq!(err.kind(), "timeout");
            assert!(elapsed >= Duration::from_millis(200), "{elapsed:?}");
        })
        .await;
    }

    fn request_token(uri: &str, host: Option<&str>, host_token: bool) -> Option<String> {
        let uri: Uri = uri.parse().expect("uri");
        let mut headers = HeaderMap::new();
        if let Some(host) = host {
            headers.insert(HOST, host.parse().expect("header"));
        }
        let source = if host_token {
            TokenSource::Host
        } else {
            TokenSource::Query
        };
        token_from_request(&uri, &headers, source)
    }

    fn cookie_token(cookies: &[&str], name: &str) -> Option<String> {
        let uri: Uri = "/websockify?token=query".parse().expect("uri");
        let mut headers = HeaderMap::new();
        for cookie in cookies {
            headers.append(COOKIE, cookie.parse().expect("header"));
        }
        token_from_request(&uri, &headers, TokenSource::Cookie(name))
    }

    #[test]
    fn token_comes_from_the_named_cookie() {
        let one = |header: &str| cookie_token(&[header], "vnc_token");
        assert_eq!(one("vnc_token=abc"), Some("abc".into()));
        assert_eq!(
            one("session=x; vnc_token=abc; theme=dark"),
            Some("abc".into())
        );
        assert_eq!(one("session=x;vnc_token=abc"), Some("abc".into()));
        assert_eq!(one("  vnc_token = abc  ; x=y"), Some("abc".into()));
        assert_eq!(
            one("vnc_token=\"quoted value\""),
            Some("quoted value".into())
        );
        assert_eq!(one("vnc_token=a%20b%2Fc"), Some("a b/c".into()));
        assert_eq!(one("vnc_token=a+b"), Some("a+b".into()));
        assert_eq!(one("vnc_token=x=y"), Some("x=y".into()));
        // The first non-empty one wins; names are case-sensitive and must match whole.
        assert_eq!(one("vnc_token=; vnc_token=second"), Some("second".into()));
        assert_eq!(
            one("vnc_token=first; vnc_token=second"),
            Some("first".into())
        );
        assert_eq!(one("VNC_TOKEN=abc"), None);
        assert_eq!(one("my_vnc_token=abc; vnc_token_2=abc"), None);
        assert_eq!(one("vnc_token"), None);
        assert_eq!(one("vnc_token=\"\""), None);
        assert_eq!(
            cookie_token(&["a=1", "vnc_token=from-second-header"], "vnc_token"),
            Some("from-second-header".into())
        );
        // Only the cookie counts: ?token= in the same request is not looked at.
        assert_eq!(cookie_token(&[], "vnc_token"), None);
    }

    #[test]
    fn token_comes_from_the_last_path_segment() {
        let p = |uri: &str| {
            let uri: Uri = uri.parse().expect("uri");
            token_from_request(&uri, &HeaderMap::new(), TokenSource::Path)
        };
        assert_eq!(p("/websockify/abc"), Some("abc".into()));
        assert_eq!(p("/abc"), Some("abc".into()));
        assert_eq!(p("/a/b/c/vm%201?token=other&x=1"), Some("vm 1".into()));
        assert_eq!(p("/websockify/a+b"), Some("a+b".into()));
        assert_eq!(p("/websockify/"), None);
        assert_eq!(p("/"), None);
        assert_eq!(p("/websockify/?token=abc"), None);
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
}
