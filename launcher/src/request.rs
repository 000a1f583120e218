//! The request step: read HTTP requests (with hyper) until one asks for a WebSocket upgrade,
//! and decide each one: a file (`--web`), a refusal ([`Reject`]), or the 101 with the target
//! the session will go to.
//!
//! hyper enforces the head limits (16 KiB, 100 header fields: 431 beyond), the head deadline
//! and HTTP/1.1 framing. For an upgrade we answer 101 ourselves and then take the raw stream
//! back from hyper by type (`Upgraded::downcast`), with any bytes the client sent after the
//! head, so the relay runs on the bare socket with no HTTP machinery left per connection.
//!
//! The order of the checks for an upgrade: handshake validity, then authentication (so that
//! unauthenticated clients cannot probe tokens or load a backend), then the token lookup.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};

use crate::config::Target;
use crate::handshake::{self, Accept};
use crate::relay::Mode;
use crate::response::{Body, Reject, SERVER, empty_body};
use crate::state::Shared;
use crate::stream::ClientStream;
use crate::token::{self, Tokens};

/// Most bytes of a request head (request line plus headers).
pub const MAX_HEAD: usize = 16 * 1024;
/// Most header fields in a request head.
pub const MAX_HEADERS: usize = 100;

/// A client that completed the WebSocket handshake.
pub struct Upgraded {
    pub stream: ClientStream,
    /// Bytes the client sent after the request head (already WebSocket frames).
    pub leftover: Bytes,
    pub mode: Mode,
    /// Request path (without the query, which may hold a token), for the log.
    pub path: String,
    /// The subprotocol we answered with, for the log.
    pub protocol: Option<&'static str>,
    /// Where this session goes (from the token, or the configured target).
    pub target: Target,
}

/// Why a connection ended without an upgrade.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("no complete request head within {0:?}")]
    HeadTimeout(Duration),
    #[error("bad HTTP request: {0}")]
    Http(#[source] hyper::Error),
    #[error("upgrade failed: {0}")]
    Upgrade(String),
}

/// An upgrade accepted by the service, waiting for hyper to hand the stream over.
struct PendingUpgrade {
    on_upgrade: hyper::upgrade::OnUpgrade,
    mode: Mode,
    path: String,
    protocol: Option<&'static str>,
    target: Target,
}

/// What one connection's requests are answered with.
struct Context {
    shared: Arc<Shared>,
    /// The verified TLS client certificate (DER), for `ClientCertCNAuth`.
    client_cert: Option<Vec<u8>>,
    slot: Mutex<Option<PendingUpgrade>>,
}

/// Serves requests on `stream` until a WebSocket upgrade (`Ok(Some)`), or until the client
/// goes away after non-upgrade requests (`Ok(None)`).
pub async fn serve(
    stream: ClientStream,
    head_timeout: Duration,
    shared: &Arc<Shared>,
) -> Result<Option<Upgraded>, RequestError> {
    let context = Arc::new(Context {
        shared: Arc::clone(shared),
        client_cert: stream.peer_certificate(),
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
        .downcast::<TokioIo<ClientStream>>()
        .map_err(|_| RequestError::Upgrade("the upgraded stream has an unexpected type".into()))?;
    Ok(Some(Upgraded {
        stream: parts.io.into_inner(),
        // A copy: a slice would keep hyper's whole read buffer alive for the session.
        leftover: if parts.read_buf.is_empty() {
            Bytes::new()
        } else {
            Bytes::copy_from_slice(&parts.read_buf)
        },
        mode: pending.mode,
        path: pending.path,
        protocol: pending.protocol,
        target: pending.target,
    }))
}

/// Answers one request; a refusal is logged here, once, and becomes its error page.
async fn respond(mut request: Request<Incoming>, context: &Context) -> Response<Body> {
    match route(&mut request, context).await {
        Ok(response) => response,
        Err(reject) => {
            log_refusal(&reject, &request);
            reject.response()
        }
    }
}

/// A file (`--web`), or the 101 for a good upgrade (remembered in the context's slot for
/// [`serve`]), or why not.
async fn route(
    request: &mut Request<Incoming>,
    context: &Context,
) -> Result<Response<Body>, Reject> {
    let shared = &context.shared;
    let client_cert = context.client_cert.as_deref();
    if !handshake::is_upgrade(request.method(), request.headers()) {
        let web = shared.web.as_ref().ok_or(Reject::WebSocketOnly)?;
        if shared.config.web_auth {
            shared
                .auth
                .check(request.headers(), client_cert)
                .map_err(Reject::Auth)?;
        }
        return Ok(web.serve(request).await);
    }
    let accept = handshake::accept(request.headers()).map_err(Reject::Handshake)?;
    shared
        .auth
        .check(request.headers(), client_cert)
        .map_err(Reject::Auth)?;
    let target = match &shared.tokens {
        None => shared.config.target.clone(),
        Some(tokens) => choose_target(tokens, request, shared).await?,
    };
    let pending = PendingUpgrade {
        on_upgrade: hyper::upgrade::on(&mut *request),
        mode: accept.mode,
        path: request.uri().path().to_owned(),
        protocol: accept.protocol,
        target,
    };
    if let Ok(mut slot) = context.slot.lock() {
        *slot = Some(pending);
    }
    Ok(switching_protocols(&accept))
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
    if let Some(protocol) = accept.protocol {
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(protocol),
        );
    }
    response
}

/// Looks the request's token up. Upstream closes silently on token errors (the browser sees
/// only 1006); we answer with a status and a short reason, and log a tag of the token, never
/// the token itself.
async fn choose_target(
    tokens: &Tokens,
    request: &Request<Incoming>,
    shared: &Shared,
) -> Result<Target, Reject> {
    let host_token = shared.config.token.as_ref().is_some_and(|t| t.host_token);
    let token = token::token_from_request(request.uri(), request.headers(), host_token).ok_or(
        Reject::TokenMissing {
            looked_in: if host_token {
                "Host header"
            } else {
                "?token= query parameter"
            },
        },
    )?;
    let tag = token::token_tag(&token);
    match tokens.lookup(&token).await {
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

/// One log line per refused request: the detail the client is not told.
fn log_refusal(reject: &Reject, request: &Request<Incoming>) {
    let path = request.uri().path();
    match reject {
        Reject::WebSocketOnly => tracing::info!(
            method = %request.method(),
            path,
            "refused plain HTTP request: no --web directory"
        ),
        Reject::Handshake(err) => tracing::info!(path, "refused WebSocket handshake: {err}"),
        Reject::Auth(reject) => tracing::info!(
            path,
            status = reject.status.as_u16(),
            "authentication refused: {}",
            reject.log
        ),
        Reject::TokenMissing { .. } => {
            tracing::info!(path, "refused WebSocket connection: Token not present")
        }
        Reject::TokenUnknown { tag } => {
            tracing::info!(token = %tag, "refused WebSocket connection: Token not found")
        }
        Reject::TokenUnavailable { tag, error } => {
            tracing::warn!(token = %tag, "token lookup failed: {error}")
        }
        // The file server's refusals are part of its debug line.
        Reject::FileNotFound
        | Reject::MethodNotAllowed
        | Reject::NotImplemented(_)
        | Reject::FileUnreadable => {}
    }
}
