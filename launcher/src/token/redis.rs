//! The `TokenRedis` back-end: `GET [namespace:]token` from Redis, the value a target string or
//! upstream's JSON object; the source in upstream's `host:port:db:password:namespace` form or
//! a `redis://`, `rediss://` (TLS) or `redis+unix://` URL.

use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{ConnectionAddr, ConnectionInfo};
use anyhow::{Context, anyhow};
use serde_json::{Map, Value};
use tracing::{debug, info};

use super::error::{TokenError, one_line};
use super::value::{parse_target, target_from_json};
use crate::config::Target;

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

/// The URL schemes accepted besides upstream's form (`rediss` is TLS, verified against the
/// system's CAs or `SSL_CERT_FILE`).
const URL_SCHEMES: &[&str] = &["redis", "rediss", "redis+unix", "unix"];

/// A `redis://`, `rediss://`, `redis+unix://` or `unix://` URL as the redis crate reads it
/// (`redis://[user][:password@]host[:port][/db]`, `redis+unix:///path?db=N&pass=P`), plus our
/// `namespace=NS` query parameter (keys are then `NS:token`, as upstream's fifth field).
/// `Ok(None)` if `source` is not such a URL.
fn parse_redis_url(source: &str) -> Result<Option<(ConnectionInfo, String)>, String> {
    let Some((scheme, _)) = source.split_once("://") else {
        return Ok(None);
    };
    if !URL_SCHEMES.contains(&scheme) {
        return Ok(None);
    }
    let mut url = url::Url::parse(source)
        .map_err(|e| format!("--token-source is not a valid Redis URL: {e}"))?;
    // For messages: the URL with its password (user info or `pass=`) masked.
    let shown = {
        let mut shown = url.clone();
        if shown.password().is_some() {
            let _ = shown.set_password(Some("***"));
        }
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(key, value)| {
                let value = if key == "pass" { "***".into() } else { value };
                (key.into_owned(), value.into_owned())
            })
            .collect();
        if !pairs.is_empty() {
            shown.query_pairs_mut().clear().extend_pairs(pairs);
        }
        shown
    };
    let mut namespace = String::new();
    let mut rest = Vec::new();
    for (key, value) in url.query_pairs() {
        if key == "namespace" {
            namespace = format!("{value}:");
        } else {
            rest.push((key.into_owned(), value.into_owned()));
        }
    }
    if rest.is_empty() {
        url.set_query(None);
    } else {
        url.query_pairs_mut().clear().extend_pairs(rest);
    }
    let info = ::redis::IntoConnectionInfo::into_connection_info(url).map_err(|e| {
        format!(
            "--token-source='{shown}' is not a usable Redis URL: {}",
            one_line(&e)
        )
    })?;
    Ok(Some((
        info,
        if namespace == ":" {
            String::new()
        } else {
            namespace
        },
    )))
}

/// The connection settings and key namespace of a `--token-source`: a Redis URL, or upstream's
/// `host[:port[:db[:password[:namespace]]]]`.
fn redis_connection(source: &str) -> Result<(ConnectionInfo, String), String> {
    if let Some(url) = parse_redis_url(source)? {
        return Ok(url);
    }
    let parsed = parse_redis_source(source)?;
    let mut settings = ::redis::RedisConnectionInfo::default().set_db(parsed.db);
    if let Some(password) = &parsed.password {
        settings = settings.set_password(password);
    }
    let info = ::redis::IntoConnectionInfo::into_connection_info(ConnectionAddr::Tcp(
        parsed.host.clone(),
        parsed.port,
    ))
    .map_err(|e| format!("cannot configure the Redis client: {}", one_line(&e)))?
    .set_redis_settings(settings);
    Ok((info, parsed.namespace))
}

/// Redis lookups over one multiplexed connection (the redis crate's `ConnectionManager`),
/// opened on first use and reopened in the background when it breaks (Redis restarted).
/// Upstream opens a new client per lookup.
pub(super) struct RedisTokens {
    client: ::redis::Client,
    namespace: String,
    timeout: Duration,
    /// Made on the first lookup: the manager needs the runtime, `Tokens::new` does not.
    connection: tokio::sync::OnceCell<ConnectionManager>,
}

impl RedisTokens {
    /// `source` is a Redis URL or upstream's form; `timeout` bounds connecting and each command.
    pub(super) fn new(source: &str, timeout: Duration) -> anyhow::Result<Self> {
        let (info, namespace) = redis_connection(source).map_err(|e| anyhow!(e))?;
        if matches!(info.addr(), ConnectionAddr::TcpTls { .. }) {
            // The redis crate builds its TLS client on the process's default provider: make it
            // ring, as the rest of the binary uses (an error only means one is installed).
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let address = info.addr().to_string();
        let db = info.redis_settings().db();
        let client = ::redis::Client::open(info).context("cannot configure the Redis client")?;
        info!(%address, db, "TokenRedis backend initialized");
        Ok(Self::with_client(client, namespace, timeout))
    }

    /// Lookups through `client`, keys prefixed with `namespace` (empty or ending in `:`).
    fn with_client(client: ::redis::Client, namespace: String, timeout: Duration) -> Self {
        RedisTokens {
            client,
            namespace,
            timeout,
            connection: tokio::sync::OnceCell::new(),
        }
    }

    /// The shared connection manager (it connects on first use, not here).
    async fn manager(&self) -> Result<ConnectionManager, TokenError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            // One attempt per reconnection: while Redis is down a lookup fails at once (and
            // the next one tries again) instead of waiting through a backoff.
            .set_number_of_retries(0);
        let manager = self
            .connection
            .get_or_try_init(|| async {
                ConnectionManager::new_lazy_with_config(self.client.clone(), config)
            })
            .await
            .map_err(redis_error)?;
        Ok(manager.clone())
    }

    pub(super) async fn lookup(&self, token: &str) -> Result<Option<Target>, TokenError> {
        let key = format!("{}{token}", self.namespace);
        let mut retried = false;
        let value = loop {
            let mut connection = self.manager().await?;
            let reply = tokio::time::timeout(
                self.timeout,
                ::redis::cmd("GET")
                    .arg(&key)
                    .query_async::<Option<Vec<u8>>>(&mut connection),
            )
            .await;
            match reply {
                Ok(Ok(value)) => break value,
                // The connection broke (Redis restarted since it was opened): the manager is
                // reconnecting already; GET is safe to send once more.
                Ok(Err(e)) if !retried && (e.is_connection_dropped() || e.is_io_error()) => {
                    debug!(error = %one_line(&e), "Redis connection lost; reconnecting");
                    retried = true;
                }
                Ok(Err(e)) if e.is_timeout() => {
                    return Err(TokenError::RedisTimeout(self.timeout));
                }
                Ok(Err(e)) => return Err(redis_error(e)),
                Err(_) => return Err(TokenError::RedisTimeout(self.timeout)),
            }
        };
        let Some(value) = value else {
            return Ok(None);
        };
        parse_redis_value(&value).map(Some)
    }
}

/// The target a Redis value names: a JSON object (`{"host": ..., "port": ...}`) or plain
/// `host:port` text, as upstream stores them.
pub(super) fn parse_redis_value(value: &[u8]) -> Result<Target, TokenError> {
    let bad = |reason: String| TokenError::BadTarget {
        backend: "TokenRedis",
        reason,
    };
    let text = std::str::from_utf8(value).map_err(|_| bad("the value is not UTF-8".into()))?;
    let text = text.trim();
    if text.starts_with('{') {
        let value: Map<String, Value> =
            serde_json::from_str(text).map_err(|_| bad("the value is not valid JSON".into()))?;
        target_from_json(&value).map_err(bad)
    } else {
        parse_target(text).map_err(bad)
    }
}

fn redis_error(e: ::redis::RedisError) -> TokenError {
    TokenError::Redis(one_line(&e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::path::Path;
    use std::process::{Child, Command, Stdio};

    use crate::token::testing::{bounded, refused_port, tcp};
    use crate::token::{TokenError, Tokens};

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

    // ---- Redis URLs ----

    #[test]
    fn redis_urls_are_accepted_as_sources() {
        let url = |source: &str| {
            parse_redis_url(source)
                .expect(source)
                .expect("a URL, not upstream's form")
        };
        let (info, namespace) = url("redis://:pw@redis.example:6380/3?namespace=ns");
        assert_eq!(
            info.addr(),
            &ConnectionAddr::Tcp("redis.example".into(), 6380)
        );
        assert_eq!(info.redis_settings().db(), 3);
        assert_eq!(namespace, "ns:");
        let (info, namespace) = url("rediss://redis.example");
        assert!(
            matches!(info.addr(), ConnectionAddr::TcpTls { host, port: 6379, insecure: false, .. } if host == "redis.example"),
            "{:?}",
            info.addr()
        );
        assert_eq!(namespace, "");
        let (info, namespace) = url("redis+unix:///run/redis.sock?db=2&pass=x&namespace=a:b");
        assert_eq!(info.addr(), &ConnectionAddr::Unix("/run/redis.sock".into()));
        assert_eq!(info.redis_settings().db(), 2);
        assert_eq!(namespace, "a:b:");
        let (info, _) = url("unix:///run/redis.sock");
        assert_eq!(info.addr(), &ConnectionAddr::Unix("/run/redis.sock".into()));
        // Not a URL: upstream's form (where `redis` is a host name).
        assert!(matches!(parse_redis_url("redis:6379"), Ok(None)));
        assert!(matches!(parse_redis_url("ftp://h"), Ok(None)));
        for bad in [
            "redis://:secret@h/notadb",
            "redis://:secret@[::1/",
            "rediss://:secret@h/#nope",
            "redis+unix://relative?pass=secret",
        ] {
            let err = Tokens::new("TokenRedis", Some(bad)).expect_err(bad);
            let text = format!("{err:#}");
            assert!(
                text.contains("--token-source") && !text.contains("secret"),
                "{bad}: {text}"
            );
        }
    }

    // ---- TokenRedis against a real redis-server ----

    const REDIS_SERVER: &str = "/usr/bin/redis-server";

    /// Whether redis-server can run here. Without it the test is skipped with a message, except
    /// with WEBSOCKIFY_REQUIRE_ALL=1 (CI), where a test that cannot run fails.
    fn have_redis_server() -> bool {
        if Path::new(REDIS_SERVER).exists() {
            return true;
        }
        assert!(
            std::env::var_os("WEBSOCKIFY_REQUIRE_ALL").is_none_or(|v| v != "1"),
            "{REDIS_SERVER} is not installed and WEBSOCKIFY_REQUIRE_ALL=1 (apt-get install redis-server)"
        );
        eprintln!("skipped: {REDIS_SERVER} not installed (apt-get install redis-server)");
        false
    }

    /// A redis-server child, killed and reaped on drop.
    struct RedisServer {
        child: Child,
    }

    impl Drop for RedisServer {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    impl RedisServer {
        /// Sends `signal` to the server (SIGSTOP: it hangs, SIGCONT: it goes on).
        fn signal(&self, signal: nix::sys::signal::Signal) {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).expect("pid"));
            nix::sys::signal::kill(pid, signal).expect("kill");
        }
    }

    /// Starts redis-server with `args` (no persistence, log on stdout) and waits until it logs
    /// that it accepts connections; `None` if it exited first.
    async fn spawn_redis(args: &[&std::ffi::OsStr]) -> Option<RedisServer> {
        let mut child = Command::new(REDIS_SERVER)
            .args(args)
            .args(["--save", "", "--appendonly", "no", "--logfile", ""])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        let stdout = child.stdout.take().expect("stdout");
        let server = RedisServer { child };
        let ready = tokio::task::spawn_blocking(move || {
            let mut lines = BufReader::new(stdout).lines();
            let ready = lines.by_ref().map_while(Result::ok).any(|l| {
                l.to_ascii_lowercase()
                    .contains("ready to accept connections")
            });
            // Keep draining so the server never blocks on a full pipe.
            std::thread::spawn(move || lines.for_each(drop));
            ready
        });
        let ready = tokio::time::timeout(Duration::from_secs(10), ready)
            .await
            .expect("redis-server did not start in time")
            .expect("reader");
        ready.then_some(server)
    }

    /// redis-server (password `s3cret`) on the unix socket `socket` only: no TCP port to race
    /// for. A socket file left by a killed server is replaced.
    async fn start_redis(socket: &Path) -> RedisServer {
        let args = ["--port", "0", "--unixsocket"]
            .into_iter()
            .map(std::ffi::OsStr::new)
            .chain([socket.as_os_str()])
            .chain(["--unixsocketperm", "700", "--requirepass", "s3cret"].map(std::ffi::OsStr::new))
            .collect::<Vec<_>>();
        spawn_redis(&args)
            .await
            .expect("redis-server exited before it was ready")
    }

    /// redis-server with TLS only (`--tls-port`), on a free loopback port. redis-server cannot
    /// be handed a listening socket, so the port is found by a retry loop: take a free port,
    /// start the server, and try another port if the server exits because it was taken.
    async fn start_tls_redis(cert: &Path, key: &Path, ca: &Path) -> (RedisServer, u16) {
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("free port")
                .port()
                .to_string();
            let mut args: Vec<&std::ffi::OsStr> = [
                "--port",
                "0",
                "--bind",
                "127.0.0.1",
                "--tls-port",
                &port,
                "--tls-auth-clients",
                "no",
                "--tls-cert-file",
            ]
            .map(std::ffi::OsStr::new)
            .to_vec();
            args.extend([cert.as_os_str(), "--tls-key-file".as_ref(), key.as_os_str()]);
            args.extend(["--tls-ca-cert-file".as_ref(), ca.as_os_str()]);
            if let Some(server) = spawn_redis(&args).await {
                return (server, port.parse().expect("port"));
            }
        }
        panic!("redis-server with TLS did not start on any of 5 ports");
    }

    /// A `redis+unix://` source for the server on `socket`, with the given query.
    fn unix_source(socket: &Path, query: &str) -> String {
        format!("redis+unix://{}?{query}", socket.display())
    }

    async fn redis_set(socket: &Path, db: i64, pairs: &[(&str, &str)]) {
        let source = unix_source(socket, &format!("db={db}&pass=s3cret"));
        let client = ::redis::Client::open(source.as_str()).expect("client");
        let mut connection = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect");
        for (key, value) in pairs {
            ::redis::cmd("SET")
                .arg(*key)
                .arg(*value)
                .query_async::<()>(&mut connection)
                .await
                .expect("SET");
        }
    }

    #[tokio::test]
    async fn redis_lookups_against_a_real_server() {
        if !have_redis_server() {
            return;
        }
        bounded(async {
            let dir = tempfile::tempdir().expect("tempdir");
            let socket = dir.path().join("redis.sock");
            let _server = start_redis(&socket).await;
            redis_set(
                &socket,
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
            let tokens = Tokens::new(
                "TokenRedis",
                Some(&unix_source(&socket, "db=2&pass=s3cret")),
            )
            .expect("tokens");
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
                Some(&unix_source(&socket, "db=2&pass=s3cret&namespace=ns1:ns2")),
            )
            .expect("tokens");
            assert_eq!(
                namespaced.lookup("tok").await.expect("lookup"),
                Some(tcp("10.0.0.5", 5905))
            );
            assert_eq!(namespaced.lookup("plain").await.expect("lookup"), None);

            let wrong_password =
                Tokens::new("TokenRedis", Some(&unix_source(&socket, "db=2&pass=nope")))
                    .expect("tokens");
            let err = wrong_password.lookup("plain").await.expect_err("refused");
            assert!(matches!(err, TokenError::Redis(_)), "{err}");
        })
        .await;
    }

    #[tokio::test]
    async fn lookups_go_on_after_redis_restarts_on_the_same_socket() {
        if !have_redis_server() {
            return;
        }
        bounded(async {
            let dir = tempfile::tempdir().expect("tempdir");
            let socket = dir.path().join("redis.sock");
            let server = start_redis(&socket).await;
            redis_set(&socket, 0, &[("vm", "127.0.0.1:5901")]).await;
            let tokens = Tokens::new("TokenRedis", Some(&unix_source(&socket, "pass=s3cret")))
                .expect("tokens");
            assert_eq!(
                tokens.lookup("vm").await.expect("lookup"),
                Some(tcp("127.0.0.1", 5901))
            );

            // Killed and started again: the first lookup after it succeeds on a new connection.
            drop(server);
            let server = start_redis(&socket).await;
            redis_set(&socket, 0, &[("vm", "127.0.0.1:5902")]).await;
            assert_eq!(
                tokens.lookup("vm").await.expect("lookup after restart"),
                Some(tcp("127.0.0.1", 5902))
            );

            // While it is down lookups fail (never "unknown token"), then work again.
            drop(server);
            let err = tokens.lookup("vm").await.expect_err("redis down");
            assert!(matches!(err, TokenError::Redis(_)), "{err}");
            let _server = start_redis(&socket).await;
            redis_set(&socket, 0, &[("vm", "127.0.0.1:5903")]).await;
            assert_eq!(
                tokens.lookup("vm").await.expect("lookup after restart"),
                Some(tcp("127.0.0.1", 5903))
            );
        })
        .await;
    }

    #[tokio::test]
    async fn a_redis_that_hangs_gives_a_timeout_error() {
        if !have_redis_server() {
            return;
        }
        bounded(async {
            let dir = tempfile::tempdir().expect("tempdir");
            let socket = dir.path().join("redis.sock");
            let server = start_redis(&socket).await;
            redis_set(&socket, 0, &[("vm", "127.0.0.1:5901")]).await;
            let source = unix_source(&socket, "pass=s3cret");
            let (info, namespace) = redis_connection(&source).expect("source");
            let client = ::redis::Client::open(info).expect("client");
            let tokens = RedisTokens::with_client(client, namespace, Duration::from_millis(300));
            assert_eq!(
                tokens.lookup("vm").await.expect("lookup"),
                Some(tcp("127.0.0.1", 5901))
            );
            server.signal(nix::sys::signal::Signal::SIGSTOP);
            let started = tokio::time::Instant::now();
            let err = tokens.lookup("vm").await.expect_err("hung");
            assert!(matches!(err, TokenError::RedisTimeout(_)), "{err}");
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "{:?}",
                started.elapsed()
            );
            server.signal(nix::sys::signal::Signal::SIGCONT);
            assert_eq!(
                tokens.lookup("vm").await.expect("lookup after it woke up"),
                Some(tcp("127.0.0.1", 5901))
            );
        })
        .await;
    }

    #[tokio::test]
    async fn rediss_urls_speak_tls_and_verify_the_server() {
        if !have_redis_server() {
            return;
        }
        bounded(async {
            use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
            let dir = tempfile::tempdir().expect("tempdir");
            let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
            ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("key"))
                .expect("CA");
            let key = KeyPair::generate().expect("key");
            let cert = CertificateParams::new(vec!["localhost".to_owned()])
                .expect("params")
                .signed_by(&key, &ca)
                .expect("cert");
            let write = |name: &str, text: String| {
                let path = dir.path().join(name);
                std::fs::write(&path, text).expect("write");
                path
            };
            let ca_file = write("ca.pem", ca.pem());
            let cert_file = write("cert.pem", cert.pem());
            let key_file = write("key.pem", key.serialize_pem());
            let (_server, port) = start_tls_redis(&cert_file, &key_file, &ca_file).await;
            let source = format!("rediss://localhost:{port}/1?namespace=ns");

            // Trusting the test CA: the lookup goes through TLS.
            let (info, namespace) = redis_connection(&source).expect("source");
            let _ = rustls::crypto::ring::default_provider().install_default();
            let client = ::redis::Client::build_with_tls(
                info,
                ::redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.pem().into_bytes()),
                },
            )
            .expect("TLS client");
            let mut setter = client
                .get_multiplexed_async_connection()
                .await
                .expect("connect over TLS");
            ::redis::cmd("SET")
                .arg("ns:vm")
                .arg("127.0.0.1:5901")
                .query_async::<()>(&mut setter)
                .await
                .expect("SET");
            let tokens = RedisTokens::with_client(client, namespace, Duration::from_secs(2));
            assert_eq!(
                tokens.lookup("vm").await.expect("lookup over TLS"),
                Some(tcp("127.0.0.1", 5901))
            );

            // As configured from --token-source (the system's CAs), the test CA is not trusted:
            // the certificate is verified, and the failure is an error, not an unknown token.
            let system = Tokens::new("TokenRedis", Some(&source)).expect("tokens");
            let err = system
                .lookup("vm")
                .await
                .expect_err("untrusted certificate");
            assert!(matches!(err, TokenError::Redis(_)), "{err}");

            // Plain redis:// to the TLS port fails as well.
            let plain = Tokens::new("TokenRedis", Some(&format!("redis://localhost:{port}/1")))
                .expect("tokens");
            assert!(plain.lookup("vm").await.is_err());
        })
        .await;
    }

    #[tokio::test]
    async fn redis_down_is_an_error_not_an_unknown_token() {
        bounded(async {
            let (_refusing, port) = refused_port();
            let tokens =
                Tokens::new("TokenRedis", Some(&format!("127.0.0.1:{port}"))).expect("tokens");
            assert_eq!(tokens.name(), "TokenRedis");
            let err = tokens
                .lookup("secret-token")
                .await
                .expect_err("nothing listens");
            assert!(matches!(err, TokenError::Redis(_)), "{err}");
            assert!(!err.to_string().contains("secret-token"), "{err}");
        })
        .await;
    }
}
