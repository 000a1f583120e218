//! The request step: read HTTP requests (with hyper) until one asks for a WebSocket upgrade.
//!
//! hyper enforces the head limits (16 KiB, 100 header fields: 431 beyond), the head deadline
//! and HTTP/1.1 framing. For an upgrade we answer 101 ourselves and then take the raw stream
//! back from hyper by type (`Upgraded::downcast`), with any bytes the client sent after the
//! head, so the relay runs on the bare socket with no HTTP machinery left per connection.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};

use crate::auth::AuthReject;
use crate::config::Target;
use crate::handshake::{self, HandshakeError};
use crate::relay::Mode;
use crate::server::Shared;
use crate::stream::ClientStream;
use crate::token::{self, Tokens};
use crate::web::{WebBody, full_body, into_web};

/// Most bytes of a request head (request line plus headers).
pub const MAX_HEAD: usize = 16 * 1024;
/// Most header fields in a request head.
pub const MAX_HEADERS: usize = 100;

/// The value of our `Server` header.
pub const SERVER: &str = concat!("WebSockify Rust/", env!("CARGO_PKG_VERSION"));

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

/// Answers one request: a file (`--web`), 405 without a web root, 400 for a bad upgrade,
/// 401/403 from authentication, 4xx/5xx from the token lookup, or 101 for a good upgrade
/// (remembered in the context's slot for [`serve`]).
async fn respond(mut request: Request<Incoming>, context: &Context) -> Response<WebBody> {
    let shared = &context.shared;
    let client_cert = context.client_cert.as_deref();
    if !handshake::is_upgrade(request.method(), request.headers()) {
        let Some(web) = &shared.web else {
            tracing::info!(method = %request.method(), path = request.uri().path(), "refused plain HTTP request: no --web directory");
            let mut response = error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                None,
                "This port serves WebSocket connections only (start websockify with --web DIR to serve files).",
            );
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET"));
            return into_web(response);
        };
        if shared.config.web_auth
            && let Err(reject) = shared.auth.check(request.headers(), client_cert)
        {
            return reject_response(&reject, request.uri().path());
        }
        return web.serve(&request).await;
    }
    let accept = match handshake::accept(request.headers()) {
        Ok(accept) => accept,
        Err(err) => {
            tracing::info!(
                path = request.uri().path(),
                "refused WebSocket handshake: {err}"
            );
            let mut response = error_response(
                StatusCode::BAD_REQUEST,
                Some(&err.to_string()),
                &err.to_string(),
            );
            if matches!(err, HandshakeError::UnsupportedVersion(_)) {
                response.headers_mut().insert(
                    header::SEC_WEBSOCKET_VERSION,
                    HeaderValue::from_static("13"),
                );
            }
            return into_web(response);
        }
    };
    // Authentication first: unauthenticated clients must not probe tokens or load a backend.
    if let Err(reject) = shared.auth.check(request.headers(), client_cert) {
        return reject_response(&reject, request.uri().path());
    }
    let target = match &shared.tokens {
        None => shared.config.target.clone(),
        Some(tokens) => match choose_target(tokens, &request, shared).await {
            Ok(target) => target,
            Err(response) => return response,
        },
    };
    let path = request.uri().path().to_owned();
    let on_upgrade = hyper::upgrade::on(&mut request);
    if let Ok(mut slot) = context.slot.lock() {
        *slot = Some(PendingUpgrade {
            on_upgrade,
            mode: accept.mode,
            path,
            protocol: accept.protocol,
            target,
        });
    }
    let mut response = Response::new(full_body(Bytes::new()));
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
) -> Result<Target, Response<WebBody>> {
    let host_token = shared.config.token.as_ref().is_some_and(|t| t.host_token);
    let Some(token) = token::token_from_request(request.uri(), request.headers(), host_token)
    else {
        tracing::info!("refused WebSocket connection: Token not present");
        let where_ = if host_token {
            "Host header"
        } else {
            "?token= query parameter"
        };
        return Err(into_web(error_response(
            StatusCode::BAD_REQUEST,
            Some("Token not present"),
            &format!(
                "This server picks the target by a token in the {where_}, and the request has none."
            ),
        )));
    };
    let tag = token::token_tag(&token);
    match tokens.lookup(&token).await {
        Ok(Some(target)) => {
            tracing::info!(token = %tag, "token resolved to {target}");
            Ok(target)
        }
        Ok(None) => {
            tracing::info!(token = %tag, "refused WebSocket connection: Token not found");
            Err(into_web(error_response(
                StatusCode::NOT_FOUND,
                Some("Token not found"),
                "The token in this request is unknown or no longer valid.",
            )))
        }
        Err(err) => {
            tracing::warn!(token = %tag, "token lookup failed: {err}");
            Err(into_web(error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                Some("Token lookup failed"),
                "The token backend could not be asked; try again later.",
            )))
        }
    }
}

/// The response for a failed authentication check, with the plugin's headers.
fn reject_response(reject: &AuthReject, path: &str) -> Response<WebBody> {
    tracing::info!(
        path,
        status = reject.status.as_u16(),
        "authentication refused: {}",
        reject.log
    );
    let mut response = error_response(reject.status, Some(reject.reason), reject.reason);
    for (name, value) in &reject.headers {
        response.headers_mut().insert(name.clone(), value.clone());
    }
    into_web(response)
}

/// A small HTML error page that closes the connection; `reason` replaces the standard
/// reason phrase (upstream puts its error text there).
pub fn error_response(
    status: StatusCode,
    reason: Option<&str>,
    message: &str,
) -> Response<Full<Bytes>> {
    let body = format!(
        "<!DOCTYPE html>\n<html><head><title>{code} {text}</title></head>\n<body><h1>{code} {text}</h1>\n<p>{message}</p></body></html>\n",
        code = status.as_u16(),
        text = html_escape(reason.unwrap_or(status.canonical_reason().unwrap_or(""))),
        message = html_escape(message),
    );
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Some(reason) = reason
        && let Ok(phrase) = hyper::ext::ReasonPhrase::try_from(reason.as_bytes().to_vec())
    {
        response.extensions_mut().insert(phrase);
    }
    let headers = response.headers_mut();
    headers.insert(header::SERVER, HeaderValue::from_static(SERVER));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Escapes text for HTML.
pub fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#x27;"),
            c => out.push(c),
        }
    }
    out
}
