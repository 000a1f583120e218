//! The `TokenRedis` back-end: `GET [namespace:]token` from Redis, the value a target string or
//! upstream's JSON object; the source in upstream's `host:port:db:password:namespace` form.

use std::time::Duration;

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

/// Redis lookups over one multiplexed connection, opened on first use and reopened after a
/// connection failure (upstream opens a new client per lookup).
pub(super) struct RedisTokens {
    client: ::redis::Client,
    namespace: String,
    timeout: Duration,
    connection: tokio::sync::Mutex<Option<::redis::aio::MultiplexedConnection>>,
}

impl RedisTokens {
    pub(super) fn new(source: &str, timeout: Duration) -> anyhow::Result<Self> {
        let parsed = parse_redis_source(source).map_err(|e| anyhow!(e))?;
        let address = ::redis::ConnectionAddr::Tcp(parsed.host.clone(), parsed.port);
        let tokens = Self::connect_to(address, &parsed, timeout)?;
        info!(host = %parsed.host, port = parsed.port, db = parsed.db, "TokenRedis backend initialized");
        Ok(tokens)
    }

    /// A client for `address` with the db, password and namespace of `source` (no connection
    /// is opened yet).
    fn connect_to(
        address: ::redis::ConnectionAddr,
        source: &RedisSource,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let mut settings = ::redis::RedisConnectionInfo::default().set_db(source.db);
        if let Some(password) = &source.password {
            settings = settings.set_password(password);
        }
        let info = ::redis::IntoConnectionInfo::into_connection_info(address)
            .context("cannot configure the Redis client")?
            .set_redis_settings(settings);
        let client = ::redis::Client::open(info).context("cannot configure the Redis client")?;
        Ok(RedisTokens {
            client,
            namespace: source.namespace.clone(),
            timeout,
            connection: tokio::sync::Mutex::new(None),
        })
    }

    /// The shared connection, and whether it was just opened.
    async fn connection(&self) -> Result<(::redis::aio::MultiplexedConnection, bool), TokenError> {
        // Lookups queue here while one of them connects; bound the wait as well.
        let mut slot = tokio::time::timeout(self.timeout, self.connection.lock())
            .await
            .map_err(|_| TokenError::RedisTimeout(self.timeout))?;
        if let Some(connection) = slot.as_ref() {
            return Ok((connection.clone(), false));
        }
        let config = ::redis::AsyncConnectionConfig::new()
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

    pub(super) async fn lookup(&self, token: &str) -> Result<Option<Target>, TokenError> {
        let key = format!("{}{token}", self.namespace);
        let value = loop {
            let (mut connection, fresh) = self.connection().await?;
            let reply = tokio::time::timeout(
                self.timeout,
                ::redis::cmd("GET")
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

    /// A redis-server child listening on a unix socket only (no TCP port to race for), killed
    /// and reaped on drop.
    struct RedisServer {
        child: Child,
    }

    impl Drop for RedisServer {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// Starts redis-server (password `s3cret`) on the unix socket `socket` and returns once it
    /// logs that it accepts connections. A socket file left by a killed server is replaced.
    async fn start_redis(socket: &Path) -> RedisServer {
        let mut child = Command::new(REDIS_SERVER)
            .args(["--port", "0", "--unixsocket"])
            .arg(socket)
            .args([
                "--unixsocketperm",
                "700",
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
        assert!(ready, "redis-server exited before it was ready");
        server
    }

    /// A client of the server on `socket` with the db, password and namespace of `source`
    /// (upstream's form; its host and port are not used).
    fn unix_tokens(socket: &Path, source: &str) -> RedisTokens {
        let parsed = parse_redis_source(source).expect("source");
        let address = ::redis::ConnectionAddr::Unix(socket.to_path_buf());
        RedisTokens::connect_to(address, &parsed, Duration::from_secs(2)).expect("client")
    }

    async fn redis_set(socket: &Path, db: i64, pairs: &[(&str, &str)]) {
        let info = ::redis::IntoConnectionInfo::into_connection_info(
            ::redis::ConnectionAddr::Unix(socket.to_path_buf()),
        )
        .expect("info")
        .set_redis_settings(
            ::redis::RedisConnectionInfo::default()
                .set_db(db)
                .set_password("s3cret"),
        );
        let client = ::redis::Client::open(info).expect("client");
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
            let server = start_redis(&socket).await;
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
            let tokens = unix_tokens(&socket, "unused::2:s3cret");
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

            let namespaced = unix_tokens(&socket, "unused::2:s3cret:\"ns1:ns2\"");
            assert_eq!(
                namespaced.lookup("tok").await.expect("lookup"),
                Some(tcp("10.0.0.5", 5905))
            );
            assert_eq!(namespaced.lookup("plain").await.expect("lookup"), None);

            let wrong_password = unix_tokens(&socket, "unused::2:nope");
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
            let _server = start_redis(&socket).await;
            redis_set(&socket, 2, &[("plain", "127.0.0.1:5911")]).await;
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
            let (_refusing, port) = refused_port();
            let tokens =
                Tokens::new("TokenRedis", Some(&format!("127.0.0.1:{port}"))).expect("tokens");
            assert_eq!(tokens.name(), "TokenRedis");
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
