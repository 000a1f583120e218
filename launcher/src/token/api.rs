//! The HTTP back-ends, `BaseTokenAPI` and `JSONTokenApi`: GET a URL with the token in it, over
//! one pooled hyper client (HTTP or HTTPS with the system's CAs) with a deadline per lookup.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::header::USER_AGENT;
use hyper::{Request, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::Value;
use tracing::debug;

use super::error::{TokenError, one_line};
use super::value::{parse_target, target_from_json};
use crate::config::Target;

/// Largest HTTP answer read; a target is a few dozen bytes.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Characters left as they are when the token goes into the URL (RFC 3986 unreserved).
const URL_TOKEN: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// An HTTP token service: GET `source` with `%s` replaced by the URL-encoded token.
pub(super) struct HttpApi {
    template: String,
    json: bool,
    timeout: Duration,
    client: HttpClient<HttpsConnector<HttpConnector>, Empty<Bytes>>,
}

impl HttpApi {
    pub(super) fn new(source: &str, json: bool, timeout: Duration) -> anyhow::Result<Self> {
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

    pub(super) async fn lookup(&self, token: &str) -> Result<Option<Target>, TokenError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    use crate::token::testing::{bounded, refused_port, tcp, token_service};
    use crate::token::{TokenError, Tokens};

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

    /// On the paused clock: the 300 ms timeout passes in virtual time as soon as the client
    /// and the service (both in this runtime) only wait. It is the earliest timer, so however
    /// the clock jumps (it also jumps while loopback I/O is still in the kernel) the lookup
    /// can only end in this timeout.
    #[tokio::test(start_paused = true)]
    async fn token_api_timeouts_are_errors_without_the_token() {
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
        })
        .await;
    }

    /// On real time: a paused clock could jump to the HTTP timeout while the refusal is still
    /// on its way through the kernel.
    #[tokio::test]
    async fn token_api_refusals_are_errors_without_the_token() {
        bounded(async {
            let (_refusing, port) = refused_port();
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
}
