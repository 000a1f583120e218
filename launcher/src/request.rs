//! The request step: read the client's first request head and decide it: the 101 with the
//! target the session will go to, a refusal ([`Reject`]), or a file (`--web`).
//!
//! The first head is read by `http` (16 KiB, 100 fields, the handshake deadline). An upgrade
//! or a refusal is answered right there, so a WebSocket client never meets an HTTP server.
//! With `--web`, a connection whose first request is not an upgrade is handed to hyper (the
//! bytes already read put back in front), which serves it and any later requests on the
//! connection, keep-alive and all; an upgrade among those is answered through hyper, and the
//! raw stream is taken back from it by type with the bytes the client sent after the head.
//!
//! The order of the checks for an upgrade: handshake validity, then authentication (so that
//! unauthenticated clients cannot probe tokens or load a backend), then the token lookup.

use std::borrow::Cow;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::time::Instant;
use tracing::Level;

use crate::client::{self, ClientAddr};
use crate::config::Target;
use crate::handshake::{self, Accept, HandshakeError};
use crate::hixie;
use crate::http::{self, HeadError, MAX_HEAD, MAX_HEADERS};
use crate::limits::{Over, Slot};
use crate::logging::Throttle;
use crate::metrics::{METRICS, Refusal};
use crate::relay::Mode;
use crate::response::{Body, Reject, SERVER, empty_body};
use crate::state::Shared;
use crate::stream::{ClientStream, Prefixed};
use crate::token::{self, Tokens};

/// A client that completed the WebSocket handshake.
pub struct Upgraded {
    pub stream: ClientStream,
    /// Bytes the client sent after the request head (already WebSocket frames).
    pub leftover: Bytes,
    pub mode: Mode,
    /// Request path (without the query, which may hold a token), for the log.
    pub path: String,
    /// The subprotocol we answered with, for the log.
    pub protocol: Option<Cow<'static, str>>,
    /// The WebSocket protocol, for the log: `rfc6455`, `hixie-75` or `hixie-76`.
    pub version: &'static str,
    /// Where this session goes (from the token, or the configured target).
    pub target: Target,
}

/// Why a connection ended without an upgrade.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error(transparent)]
    Head(#[from] HeadError),
    #[error("no complete request head within {0:?}")]
    HeadTimeout(Duration),
    #[error("bad HTTP request: {0}")]
    Http(#[source] hyper::Error),
    #[error("upgrade failed: {0}")]
    Upgrade(String),
}

/// A request that passed every check: the 101 to send and where the session goes.
struct Decided {
    accept: Accept,
    path: String,
    target: Target,
}

/// What a request is answered with, short of a refusal.
enum Routed {
    /// A WebSocket upgrade that passed every check.
    Upgrade(Decided),
    /// A response from the static file server.
    Web(Response<Body>),
}

/// Who the connection is from and its place in the connection limits; the request step
/// completes it from the first request head.
pub struct Admission {
    /// The client so far: the direct peer, or the PROXY header's source.
    pub client: Option<ClientAddr>,
    /// The peer is in `--trusted-proxy`: the first head's `Forwarded`/`X-Forwarded-For` names
    /// the client (and it is recorded in the log span then, not before).
    pub peer_trusted: bool,
    /// The total-limit slot taken at accept, or which limit refused it; kept until the
    /// connection closes.
    pub slot: Result<Slot, Over>,
}

impl Admission {
    /// Settles the client from the head and takes its per-address place.
    fn admit<B>(&mut self, request: &Request<B>) -> Result<(), Reject> {
        if self.peer_trusted {
            if let Some(forwarded) = client::forwarded_client(request.headers()) {
                self.client = Some(forwarded);
            }
            if let Some(client) = &self.client {
                tracing::Span::current().record("client", tracing::field::display(client));
            }
        }
        let slot = self
            .slot
            .as_mut()
            .map_err(|over| Reject::Overloaded(*over))?;
        match &self.client {
            Some(client) => slot.assign(client.ip).map_err(Reject::Overloaded),
            None => Ok(()),
        }
    }
}

/// Serves requests on `stream` until a WebSocket upgrade (`Ok(Some)`), or until the client
/// goes away after non-upgrade requests (`Ok(None)`).
pub async fn serve(
    mut stream: ClientStream,
    head_timeout: Duration,
    shared: &Arc<Shared>,
    admission: &mut Admission,
) -> Result<Option<Upgraded>, RequestError> {
    let client_cert = stream.peer_certificate();
    let deadline = Instant::now() + head_timeout;
    let head = match http::read_head(&mut stream, deadline, head_timeout).await {
        Ok(Some(head)) => head,
        Ok(None) => return Ok(None),
        Err(err) => {
            if let Some(status) = err.status() {
                METRICS.refused(Refusal::Protocol);
                let _ = http::write_response(&mut stream, http::head_error_response(status)).await;
                let _ = stream.shutdown().await;
            }
            return Err(err.into());
        }
    };
    if let Err(reject) = admission.admit(&head.request) {
        log_refusal(&reject, &head.request, shared.config.token_path);
        let _ = http::write_response(&mut stream, reject.response()).await;
        let _ = stream.shutdown().await;
        return Ok(None);
    }
    if shared.web.is_some() && !handshake::is_upgrade(head.request.method(), head.request.headers())
    {
        let rest = deadline.saturating_duration_since(Instant::now());
        let stream = Prefixed::new(head.raw, stream);
        return serve_web(stream, rest, shared, client_cert).await;
    }
    let routed = route(&head.request, shared, client_cert.as_deref()).await;
    let decided = match routed {
        Ok(Routed::Upgrade(decided)) => decided,
        // Only with --web, which went to hyper above.
        Ok(Routed::Web(_)) => return Ok(None),
        Err(reject) => {
            log_refusal(&reject, &head.request, shared.config.token_path);
            let _ = http::write_response(&mut stream, reject.response()).await;
            let _ = stream.shutdown().await;
            return Ok(None);
        }
    };
    let mut leftover = head.rest();
    let version = match &decided.accept.hixie {
        None => {
            let written = async {
                stream
                    .write_all(&switching_protocols_head(&decided.accept))
                    .await?;
                stream.flush().await
            };
            written
                .await
                .map_err(|err| RequestError::Upgrade(format!("cannot send the 101: {err}")))?;
            "rfc6455"
        }
        Some(hixie) => {
            let key3 = match hixie.keys {
                Some(_) => Some(read_key3(&mut stream, &mut leftover, deadline).await?),
                None => None,
            };
            let response = hixie.response(stream.is_tls(), key3.as_ref());
            let written = async {
                stream.write_all(&response).await?;
                stream.flush().await
            };
            written
                .await
                .map_err(|err| RequestError::Upgrade(format!("cannot send the 101: {err}")))?;
            hixie.draft.name()
        }
    };
    Ok(Some(Upgraded {
        stream,
        leftover,
        mode: decided.accept.mode,
        path: decided.path,
        protocol: decided.accept.protocol,
        version,
        target: decided.target,
    }))
}

/// The 8 bytes a Hixie-76 client sends after its head, from `leftover` and then the stream,
/// by the request's deadline; `leftover` keeps what follows them (the first frames).
async fn read_key3(
    stream: &mut ClientStream,
    leftover: &mut Bytes,
    deadline: Instant,
) -> Result<[u8; hixie::KEY3_LEN], RequestError> {
    let mut buf = bytes::BytesMut::from(&leftover[..]);
    while buf.len() < hixie::KEY3_LEN {
        let read = tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await;
        let failed = match read {
            Ok(Ok(0)) => "the client closed the connection".to_owned(),
            Ok(Ok(_)) => continue,
            Ok(Err(err)) => format!("reading failed: {err}"),
            Err(_) => "the handshake deadline passed".to_owned(),
        };
        METRICS.refused(Refusal::Protocol);
        return Err(RequestError::Upgrade(format!(
            "the 8 key bytes of a Hixie-76 handshake did not arrive ({} of 8; {failed})",
            buf.len()
        )));
    }
    let mut key3 = [0u8; hixie::KEY3_LEN];
    key3.copy_from_slice(&buf[..hixie::KEY3_LEN]);
    *leftover = buf.freeze().slice(hixie::KEY3_LEN..);
    Ok(key3)
}

/// An upgrade accepted by the hyper service, waiting for hyper to hand the stream over.
struct PendingUpgrade {
    on_upgrade: hyper::upgrade::OnUpgrade,
    decided: Decided,
}

/// What one `--web` connection's requests are answered with.
struct Context {
    shared: Arc<Shared>,
    /// The verified TLS client certificate (DER), for `ClientCertCNAuth`.
    client_cert: Option<Vec<u8>>,
    slot: Mutex<Option<PendingUpgrade>>,
}

/// Serves a `--web` connection with hyper until an upgrade or until the client goes away.
async fn serve_web(
    stream: Prefixed<ClientStream>,
    head_timeout: Duration,
    shared: &Arc<Shared>,
    client_cert: Option<Vec<u8>>,
) -> Result<Option<Upgraded>, RequestError> {
    let context = Arc::new(Context {
        shared: Arc::clone(shared),
        client_cert,
        slot: Mutex::new(None),
    });
    let service_context = Arc::clone(&context);
    let service = service_fn(move |request| {
        let context = Arc::clone(&service_context);
        async move { Ok::<_, Infallible>(respond(request, &context).await) }
    });
    let result = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(head_timeout)
        .max_buf_size(MAX_HEAD)
        .max_headers(MAX_HEADERS)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades()
        .await;
    let pending = context.slot.lock().ok().and_then(|mut slot| slot.take());
    if let Err(err) = result {
        if err.is_timeout() {
            return Err(RequestError::HeadTimeout(head_timeout));
        }
        if pending.is_none() {
            return Err(RequestError::Http(err));
        }
    }
    let Some(pending) = pending else {
        return Ok(None);
    };
    let upgraded = pending
        .on_upgrade
        .await
        .map_err(|err| RequestError::Upgrade(err.to_string()))?;
    let parts = upgraded
        .downcast::<TokioIo<Prefixed<ClientStream>>>()
        .map_err(|_| RequestError::Upgrade("the upgraded stream has an unexpected type".into()))?;
    let (stream, unread) = parts.io.into_inner().into_parts();
    // Copies: a slice would keep hyper's whole read buffer alive for the session.
    let mut leftover = Vec::with_capacity(parts.read_buf.len() + unread.len());
    leftover.extend_from_slice(&parts.read_buf);
    leftover.extend_from_slice(&unread);
    let decided = pending.decided;
    Ok(Some(Upgraded {
        stream,
        leftover: Bytes::from(leftover),
        mode: decided.accept.mode,
        path: decided.path,
        protocol: decided.accept.protocol,
        version: "rfc6455",
        target: decided.target,
    }))
}

/// Answers one request on a `--web` connection; a refusal is logged here, once, and becomes
/// its error page.
async fn respond(mut request: Request<hyper::body::Incoming>, context: &Context) -> Response<Body> {
    match route(&request, &context.shared, context.client_cert.as_deref()).await {
        Ok(Routed::Web(response)) => response,
        Ok(Routed::Upgrade(decided)) if decided.accept.hixie.is_some() => {
            let reject = Reject::Handshake(HandshakeError::HixieNotFirst);
            log_refusal(&reject, &request, context.shared.config.token_path);
            reject.response()
        }
        Ok(Routed::Upgrade(decided)) => {
            let response = switching_protocols(&decided.accept);
            let on_upgrade = hyper::upgrade::on(&mut request);
            if let Ok(mut slot) = context.slot.lock() {
                *slot = Some(PendingUpgrade {
                    on_upgrade,
                    decided,
                });
            }
            response
        }
        Err(reject) => {
            log_refusal(&reject, &request, context.shared.config.token_path);
            reject.response()
        }
    }
}

/// Decides one request: a file (`--web`), an upgrade with its target, or why not.
async fn route<B>(
    request: &Request<B>,
    shared: &Shared,
    client_cert: Option<&[u8]>,
) -> Result<Routed, Reject> {
    if request
        .headers()
        .get_all(header::HOST)
        .iter()
        .nth(1)
        .is_some()
    {
        // RFC 9112 3.2: more than one Host is a bad request (and --host-token must not pick).
        return Err(Reject::DuplicateHost);
    }
    if !handshake::is_upgrade(request.method(), request.headers()) {
        let web = shared.web.as_ref().ok_or(Reject::WebSocketOnly)?;
        if shared.config.web_auth {
            shared
                .auth
                .check(request.headers(), client_cert)
                .map_err(Reject::Auth)?;
        }
        return Ok(Routed::Web(web.serve(request).await));
    }
    let accept = match hixie::detect(request.headers()) {
        None => handshake::accept(
            request.version(),
            request.headers(),
            &shared.config.subprotocols,
        ),
        Some(_) if !shared.config.hixie => Err(HandshakeError::HixieNotEnabled),
        Some(draft) => hixie::accept(draft, request.version(), request.uri(), request.headers())
            .map(|hixie| Accept {
                accept_key: String::new(),
                protocol: hixie.base64.then_some(Cow::Borrowed("base64")),
                mode: Mode::Hixie,
                hixie: Some(hixie),
            })
            .map_err(HandshakeError::from),
    }
    .map_err(Reject::Handshake)?;
    shared
        .auth
        .check(request.headers(), client_cert)
        .map_err(Reject::Auth)?;
    let target = match &shared.tokens {
        None => shared.config.target.clone(),
        Some(tokens) => choose_target(tokens, request, shared).await?,
    };
    Ok(Routed::Upgrade(Decided {
        accept,
        path: shown_path(request.uri().path(), shared.config.token_path),
        target,
    }))
}

/// The 101 that completes the WebSocket handshake.
fn switching_protocols(accept: &Accept) -> Response<Body> {
    let mut response = Response::new(empty_body());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::SERVER, HeaderValue::from_static(SERVER));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(value) = HeaderValue::from_str(&accept.accept_key) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, value);
    }
    if let Some(protocol) = &accept.protocol
        && let Ok(value) = HeaderValue::from_str(protocol)
    {
        headers.insert(header::SEC_WEBSOCKET_PROTOCOL, value);
    }
    response
}

/// The bytes `http::write_response` writes for [`switching_protocols`] (a unit test holds
/// them equal), put together directly: no response, header map or body to build for each
/// connection (about 3 k instructions of a 85 k connection cycle).
fn switching_protocols_head(accept: &Accept) -> Vec<u8> {
    // What `HeaderValue::from_str` accepts: the response above leaves out anything else.
    let fits = |text: &str| text.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f));
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\nserver: ");
    out.extend_from_slice(SERVER.as_bytes());
    out.extend_from_slice(b"\r\nupgrade: websocket\r\nconnection: Upgrade\r\n");
    if fits(&accept.accept_key) {
        out.extend_from_slice(b"sec-websocket-accept: ");
        out.extend_from_slice(accept.accept_key.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(protocol) = &accept.protocol
        && fits(protocol)
    {
        out.extend_from_slice(b"sec-websocket-protocol: ");
        out.extend_from_slice(protocol.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Looks the request's token up. Upstream closes silently on token errors (the browser sees
/// only 1006); we answer with a status and a short reason, and log a tag of the token, never
/// the token itself.
async fn choose_target<B>(
    tokens: &Tokens,
    request: &Request<B>,
    shared: &Shared,
) -> Result<Target, Reject> {
    let source = token_source(&shared.config);
    let token =
        token::token_from_request(request.uri(), request.headers(), source).ok_or_else(|| {
            Reject::TokenMissing {
                looked_in: source.describe().into(),
            }
        })?;
    let tag = token::token_tag(&token);
    let (result, elapsed) = tokens.lookup_timed(&token).await;
    METRICS.token_lookup(
        tokens.name(),
        elapsed,
        result.as_ref().err().map(|err| err.kind()),
    );
    match result {
        Ok(Some(target)) => {
            tracing::info!(token = %tag, "token resolved to {target}");
            Ok(target)
        }
        Ok(None) => Err(Reject::TokenUnknown { tag }),
        Err(err) => Err(Reject::TokenUnavailable {
            tag,
            error: err.to_string(),
        }),
    }
}

/// Where the options say the token is (see [`token::TokenSource`]).
fn token_source(config: &crate::config::Config) -> token::TokenSource<'_> {
    if let Some(name) = &config.token_cookie {
        token::TokenSource::Cookie(name)
    } else if config.token_path {
        token::TokenSource::Path
    } else if config.token.as_ref().is_some_and(|t| t.host_token) {
        token::TokenSource::Host
    } else {
        token::TokenSource::Query
    }
}

/// The request path as logged: with `--token-path` its last segment is the token, which the
/// log never shows (the token's tag is logged instead).
fn shown_path(path: &str, token_path: bool) -> String {
    match path.rsplit_once('/') {
        Some((front, last)) if token_path && !last.is_empty() => format!("{front}/<token>"),
        _ => path.to_owned(),
    }
}

/// One log line per refused request (at most one per second per kind, then a count): the
/// detail the client is not told. Each refusal of a handshake is counted in the metrics.
fn log_refusal<B>(reject: &Reject, request: &Request<B>, token_path: bool) {
    static PLAIN: Throttle = Throttle::new("plain HTTP refused", Level::INFO);
    static HANDSHAKE: Throttle = Throttle::new("WebSocket handshake refused", Level::INFO);
    static AUTH: Throttle = Throttle::new("authentication refused", Level::INFO);
    static TOKEN_MISSING: Throttle = Throttle::new("token not present", Level::INFO);
    static TOKEN_UNKNOWN: Throttle = Throttle::new("token not found", Level::INFO);
    static TOKEN_FAILED: Throttle = Throttle::new("token lookup failed", Level::WARN);
    static LIMIT: Throttle = Throttle::new("connection limit reached", Level::INFO);
    let path = shown_path(request.uri().path(), token_path);
    let path = path.as_str();
    let refusal = match reject {
        Reject::WebSocketOnly => {
            if PLAIN.admit() {
                tracing::info!(method = %request.method(), path, "refused plain HTTP request: no --web directory");
            }
            Refusal::Protocol
        }
        Reject::Handshake(err) => {
            if HANDSHAKE.admit() {
                tracing::info!(path, "refused WebSocket handshake: {err}");
            }
            Refusal::Protocol
        }
        Reject::DuplicateHost => {
            if HANDSHAKE.admit() {
                tracing::info!(path, "refused request: more than one Host header");
            }
            Refusal::Protocol
        }
        Reject::Auth(reject) => {
            if AUTH.admit() {
                tracing::info!(
                    path,
                    status = reject.status.as_u16(),
                    "authentication refused: {}",
                    reject.log
                );
            }
            if reject.about_origin() {
                Refusal::Origin
            } else {
                Refusal::Auth
            }
        }
        Reject::TokenMissing { .. } => {
            if TOKEN_MISSING.admit() {
                tracing::info!(path, "refused WebSocket connection: Token not present");
            }
            Refusal::Token
        }
        Reject::TokenUnknown { tag } => {
            if TOKEN_UNKNOWN.admit() {
                tracing::info!(token = %tag, "refused WebSocket connection: Token not found");
            }
            Refusal::Token
        }
        Reject::TokenUnavailable { tag, error } => {
            if TOKEN_FAILED.admit() {
                tracing::warn!(token = %tag, "token lookup failed: {error}");
            }
            Refusal::Token
        }
        Reject::Overloaded(over) => {
            if LIMIT.admit() {
                tracing::info!(path, "refused connection: {over}");
            }
            Refusal::Limit
        }
        // The file server's refusals are part of its debug line, and no handshakes.
        Reject::FileNotFound
        | Reject::MethodNotAllowed
        | Reject::NotImplemented(_)
        | Reject::FileUnreadable => return,
    };
    METRICS.refused(refusal);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_101_written_directly_is_the_responses_bytes() {
        let key = handshake::accept_key(b"dGhlIHNhbXBsZSBub25jZQ==");
        let protocols = [
            None,
            Some(Cow::Borrowed("binary")),
            Some(Cow::Owned("chat.v2".to_owned())),
            Some(Cow::Owned("tab\there".to_owned())),
            Some(Cow::Owned("bad\u{7f}".to_owned())),
            Some(Cow::Owned("é".to_owned())),
        ];
        for accept_key in [key, String::new(), "bad\r\n".to_owned()] {
            for protocol in protocols.clone() {
                let accept = Accept {
                    accept_key: accept_key.clone(),
                    protocol,
                    mode: Mode::Binary,
                    hixie: None,
                };
                let mut through_hyper = Vec::new();
                http::write_response(&mut through_hyper, switching_protocols(&accept))
                    .await
                    .unwrap();
                assert_eq!(
                    String::from_utf8_lossy(&switching_protocols_head(&accept)),
                    String::from_utf8_lossy(&through_hyper),
                    "{accept:?}"
                );
            }
        }
    }
}
