//! Prometheus metrics and the health endpoints, on their own listener (`--metrics-listen`):
//! `GET /metrics` (the classic text format, `text/plain; version=0.0.4`, written by the
//! `prometheus` crate), `GET /healthz` (200 while the process serves) and `GET /readyz` (200
//! while accepting, 503 while draining or at `--max-connections`).
//!
//! Every metric is a process-wide counter, gauge or histogram updated with atomic operations:
//! at session start and end, per refused handshake, per token lookup; never per frame. Labels
//! have small fixed value sets (close codes, refusal reasons, the one token plugin): no label
//! per client or token.

use std::convert::Infallible;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::{
    Encoder as _, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Why a handshake was refused, as the `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The auth plugin (credentials, client certificate).
    Auth,
    /// `--allowed-origin` or `ExpectOrigin`.
    Origin,
    /// No token, an unknown token, or a failed lookup.
    Token,
    /// `--max-connections` or `--max-connections-per-ip`.
    Limit,
    /// Not a valid WebSocket or HTTP request, or plain HTTP without `--web`.
    Protocol,
    /// The TLS handshake failed, or plain text under `--ssl-only`.
    Tls,
    /// `--proxy-protocol` and no valid PROXY header.
    ProxyHeader,
}

impl Refusal {
    const ALL: [Refusal; 7] = [
        Refusal::Auth,
        Refusal::Origin,
        Refusal::Token,
        Refusal::Limit,
        Refusal::Protocol,
        Refusal::Tls,
        Refusal::ProxyHeader,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Auth => "auth",
            Refusal::Origin => "origin",
            Refusal::Token => "token",
            Refusal::Limit => "limit",
            Refusal::Protocol => "protocol",
            Refusal::Tls => "tls",
            Refusal::ProxyHeader => "proxy_header",
        }
    }
}

/// Close codes websockify itself sends or records (1000 target closed, 1001 shutdown, 1002,
/// 1003 and 1007 protocol errors, 1006 client gone, 1011 target failed); their series exist
/// from the start, at zero.
const OWN_CLOSE_CODES: [u16; 7] = [1000, 1001, 1002, 1003, 1006, 1007, 1011];

/// The `code` label of a session's close code: the codes RFC 6455 and IANA define (1000 to
/// 1014, except the reserved 1004) as themselves, any other code as `other`. Clients choose
/// the code of their close frame (3000-4999 are the application's), so a label per value
/// would let them create series at will.
fn close_label(code: u16) -> String {
    if (1000..=1014).contains(&code) && code != 1004 {
        code.to_string()
    } else {
        "other".to_owned()
    }
}

/// The process's metrics.
pub struct Metrics {
    registry: Registry,
    sessions_opened: IntCounter,
    sessions_closed: IntCounterVec,
    sessions_open: IntGauge,
    bytes_to_target: IntCounter,
    bytes_to_client: IntCounter,
    refused: Vec<IntCounter>,
    token_lookup: HistogramVec,
    token_errors: IntCounterVec,
    tls_handshakes: IntCounter,
    tls_failures: IntCounter,
    program_starts: IntCounter,
    program_exits: IntCounter,
    log_lines_dropped: IntCounter,
    /// What `log_lines_dropped` last saw of the logging counter.
    log_lines_seen: AtomicU64,
}

/// The metrics of this process.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// Creates and registers one metric; the names and labels are constants checked by a test.
fn register<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: prometheus::Result<M>,
) -> M {
    #[allow(clippy::expect_used)]
    let metric = metric.expect("metric names and labels are valid constants");
    #[allow(clippy::expect_used)]
    registry
        .register(Box::new(metric.clone()))
        .expect("each metric is registered once");
    metric
}

impl Metrics {
    fn new() -> Metrics {
        let r = Registry::new();
        let counter = |name: &str, help: &str| register(&r, IntCounter::new(name, help));
        let refused_vec = register(
            &r,
            IntCounterVec::new(
                Opts::new(
                    "websockify_handshakes_refused_total",
                    "Connections refused before a session started, by reason.",
                ),
                &["reason"],
            ),
        );
        let build_info = register(
            &r,
            IntGaugeVec::new(
                Opts::new(
                    "websockify_build_info",
                    "Always 1; the version label says which websockify runs.",
                ),
                &["version"],
            ),
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let sessions_closed = register(
            &r,
            IntCounterVec::new(
                Opts::new(
                    "websockify_sessions_closed_total",
                    "WebSocket sessions ended, by the close code the client saw.",
                ),
                &["code"],
            ),
        );
        for code in OWN_CLOSE_CODES {
            sessions_closed.with_label_values(&[close_label(code)]);
        }
        Metrics {
            sessions_opened: counter(
                "websockify_sessions_opened_total",
                "WebSocket sessions started (handshake done, target being connected).",
            ),
            sessions_closed,
            sessions_open: register(
                &r,
                IntGauge::new("websockify_sessions_open", "WebSocket sessions open now."),
            ),
            bytes_to_target: counter(
                "websockify_bytes_to_target_total",
                "Payload bytes relayed from clients to targets (counted when a session ends).",
            ),
            bytes_to_client: counter(
                "websockify_bytes_to_client_total",
                "Payload bytes relayed from targets to clients (counted when a session ends).",
            ),
            refused: Refusal::ALL
                .iter()
                .map(|reason| refused_vec.with_label_values(&[reason.label()]))
                .collect(),
            token_lookup: register(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "websockify_token_lookup_duration_seconds",
                        "How long token lookups took, by token plugin.",
                    )
                    .buckets(vec![
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                        5.0, 10.0,
                    ]),
                    &["plugin"],
                ),
            ),
            token_errors: register(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "websockify_token_lookup_errors_total",
                        "Token lookups that failed (not unknown tokens), by plugin and kind.",
                    ),
                    &["plugin", "kind"],
                ),
            ),
            tls_handshakes: counter(
                "websockify_tls_handshakes_total",
                "TLS handshakes completed with clients.",
            ),
            tls_failures: counter(
                "websockify_tls_handshake_failures_total",
                "TLS handshakes with clients that failed or timed out.",
            ),
            program_starts: counter(
                "websockify_wrapped_program_starts_total",
                "Starts of the wrapped program (wrap mode).",
            ),
            program_exits: counter(
                "websockify_wrapped_program_exits_total",
                "Exits of the wrapped program (wrap mode).",
            ),
            log_lines_dropped: counter(
                "websockify_log_lines_dropped_total",
                "Log lines dropped because the log sink was not reading.",
            ),
            log_lines_seen: AtomicU64::new(0),
            registry: r,
        }
    }

    /// A WebSocket session started.
    pub fn session_opened(&self) {
        self.sessions_opened.inc();
        self.sessions_open.inc();
    }

    /// A session ended with close `code` after moving these bytes.
    pub fn session_closed(&self, code: u16, to_target: u64, to_client: u64) {
        self.sessions_open.dec();
        self.bytes_to_target.inc_by(to_target);
        self.bytes_to_client.inc_by(to_client);
        self.sessions_closed
            .with_label_values(&[close_label(code)])
            .inc();
    }

    /// Creates the series of token plugin `plugin` at zero (its lookup histogram and an error
    /// counter per kind), so that `rate()` and alerts see the first error too: a counter
    /// series that appears only with its first increment hides that increment from `rate()`.
    pub fn token_plugin(&self, plugin: &str) {
        self.token_lookup.with_label_values(&[plugin]);
        for kind in crate::token::TokenError::KINDS {
            self.token_errors.with_label_values(&[plugin, kind]);
        }
    }

    /// A connection was refused before its session started.
    pub fn refused(&self, reason: Refusal) {
        if let Some(counter) = Refusal::ALL
            .iter()
            .position(|r| *r == reason)
            .and_then(|i| self.refused.get(i))
        {
            counter.inc();
        }
    }

    /// A token lookup by `plugin` took `elapsed`; `error` is the failure kind, if it failed.
    pub fn token_lookup(&self, plugin: &str, elapsed: Duration, error: Option<&str>) {
        self.token_lookup
            .with_label_values(&[plugin])
            .observe(elapsed.as_secs_f64());
        if let Some(kind) = error {
            self.token_errors.with_label_values(&[plugin, kind]).inc();
        }
    }

    /// A client TLS handshake ended, well or not.
    pub fn tls_handshake(&self, ok: bool) {
        if ok {
            self.tls_handshakes.inc();
        } else {
            self.tls_failures.inc();
        }
    }

    /// The wrapped program was started.
    pub fn program_started(&self) {
        self.program_starts.inc();
    }

    /// The wrapped program exited.
    pub fn program_exited(&self) {
        self.program_exits.inc();
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let dropped = crate::logging::DROPPED_LOG_LINES.load(Ordering::Relaxed);
        let seen = self.log_lines_seen.swap(dropped, Ordering::Relaxed);
        self.log_lines_dropped.inc_by(dropped.saturating_sub(seen));
        let mut out = Vec::with_capacity(8 * 1024);
        // Encoding into a Vec fails only for invalid metric families, which we never build.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

/// What `/readyz` reports.
pub trait Readiness: Send + Sync + 'static {
    /// Whether this instance should get new connections.
    fn ready(&self) -> bool;
}

/// Serves the metrics and health endpoints on `listener` until `stop` is cancelled.
pub async fn serve(
    listener: TcpListener,
    readiness: std::sync::Arc<dyn Readiness>,
    stop: CancellationToken,
) {
    loop {
        let (stream, _) = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!("metrics listener: accept failed: {err}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let readiness = std::sync::Arc::clone(&readiness);
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                let readiness = std::sync::Arc::clone(&readiness);
                async move { Ok::<_, Infallible>(answer(&request, readiness.ready())) }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Answers one request to the metrics listener.
fn answer<B>(request: &Request<B>, ready: bool) -> Response<Full<Bytes>> {
    let (status, content_type, body): (StatusCode, &'static str, Bytes) =
        match (request.method(), request.uri().path()) {
            (&Method::GET | &Method::HEAD, "/metrics") => (
                StatusCode::OK,
                prometheus::TEXT_FORMAT,
                Bytes::from(METRICS.render()),
            ),
            (&Method::GET | &Method::HEAD, "/healthz") => {
                (StatusCode::OK, "text/plain", Bytes::from_static(b"ok\n"))
            }
            (&Method::GET | &Method::HEAD, "/readyz") if ready => {
                (StatusCode::OK, "text/plain", Bytes::from_static(b"ready\n"))
            }
            (&Method::GET | &Method::HEAD, "/readyz") => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                Bytes::from_static(b"not ready: draining or at --max-connections\n"),
            ),
            (&Method::GET | &Method::HEAD, _) => (
                StatusCode::NOT_FOUND,
                "text/plain",
                Bytes::from_static(b"not found: try /metrics, /healthz or /readyz\n"),
            ),
            _ => (
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                Bytes::from_static(b"only GET and HEAD\n"),
            ),
        };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_exposed_with_its_labels() {
        METRICS.session_opened();
        METRICS.session_closed(1000, 5, 7);
        METRICS.refused(Refusal::ProxyHeader);
        METRICS.token_lookup("TokenFile", Duration::from_millis(3), Some("timeout"));
        METRICS.tls_handshake(false);
        let text = String::from_utf8(METRICS.render()).unwrap();
        for needle in [
            "websockify_sessions_opened_total ",
            "websockify_sessions_closed_total{code=\"1000\"} ",
            "websockify_sessions_open ",
            "websockify_bytes_to_target_total ",
            "websockify_bytes_to_client_total ",
            "websockify_handshakes_refused_total{reason=\"proxy_header\"} ",
            "websockify_handshakes_refused_total{reason=\"limit\"} 0",
            "websockify_token_lookup_duration_seconds_bucket{plugin=\"TokenFile\",le=\"0.005\"} ",
            "websockify_token_lookup_errors_total{kind=\"timeout\",plugin=\"TokenFile\"} ",
            "websockify_tls_handshake_failures_total ",
            "websockify_wrapped_program_starts_total 0",
            "websockify_log_lines_dropped_total ",
            "websockify_build_info{version=",
        ] {
            assert!(text.contains(needle), "{needle} missing in\n{text}");
        }
    }

    #[test]
    fn close_codes_outside_the_rfc_are_one_label_and_own_codes_start_at_zero() {
        assert_eq!(close_label(1000), "1000");
        assert_eq!(close_label(1014), "1014");
        assert_eq!(close_label(1004), "other");
        assert_eq!(close_label(4000), "other");
        assert_eq!(close_label(999), "other");
        METRICS.token_plugin("TokenRedis");
        let text = String::from_utf8(METRICS.render()).unwrap();
        for needle in [
            "websockify_sessions_closed_total{code=\"1011\"} ",
            "websockify_sessions_closed_total{code=\"1001\"} ",
            "websockify_token_lookup_errors_total{kind=\"timeout\",plugin=\"TokenRedis\"} ",
            "websockify_token_lookup_errors_total{kind=\"unavailable\",plugin=\"TokenRedis\"} ",
            "websockify_token_lookup_duration_seconds_count{plugin=\"TokenRedis\"} ",
        ] {
            assert!(text.contains(needle), "{needle} missing in\n{text}");
        }
    }

    #[test]
    fn readyz_follows_readiness() {
        let request = Request::get("/readyz").body(()).unwrap();
        assert_eq!(answer(&request, true).status(), StatusCode::OK);
        assert_eq!(
            answer(&request, false).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        let request = Request::get("/metrics").body(()).unwrap();
        let response = answer(&request, false);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/plain; version=0.0.4"
        );
    }
}
