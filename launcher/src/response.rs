//! HTTP responses that websockify writes itself: the body type, our `Server` header, and
//! [`Reject`], a refused request whose variant chooses the status line.
//!
//! Every refusal on the request path (no `--web`, a bad upgrade, authentication, the token
//! lookup, the static file server) is a `Reject`. The client gets a short reason in the status
//! line (upstream puts its error text there) and a small HTML page; the log gets the detail.

use std::borrow::Cow;
use std::io;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Full};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Response, StatusCode};

use crate::auth::AuthReject;
use crate::handshake::HandshakeError;
use crate::limits::Over;

/// The value of our `Server` header.
pub const SERVER: &str = concat!("WebSockify Rust/", env!("CARGO_PKG_VERSION"));

/// A response body: boxed, so files stream and small pages are in memory.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, io::Error>;

/// Boxes an in-memory page as a [`Body`].
pub fn full_body(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An empty [`Body`].
pub fn empty_body() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// Why a request is refused. The variant decides the status; [`Reject::response`] builds the
/// page.
#[derive(Debug)]
pub enum Reject {
    /// A plain HTTP request on a port without `--web`: 405 with `Allow: GET`.
    WebSocketOnly,
    /// A malformed WebSocket upgrade: 400 with upstream's reason.
    Handshake(HandshakeError),
    /// More than one `Host` header (RFC 9112 section 3.2): 400.
    DuplicateHost,
    /// The `--allowed-origin` list or the auth plugin refused: 400, 401 or 403.
    Auth(AuthReject),
    /// The token plugin needs a token and the request has none: 400.
    TokenMissing {
        /// Where the token was looked for, for the page.
        looked_in: Cow<'static, str>,
    },
    /// The token is unknown to the token plugin: 404.
    TokenUnknown {
        /// A tag of the token for the log, never the token.
        tag: String,
    },
    /// The token backend could not be asked: 503.
    TokenUnavailable {
        /// A tag of the token for the log, never the token.
        tag: String,
        /// What went wrong, for the log.
        error: String,
    },
    /// `--max-connections` or `--max-connections-per-ip` reached: 503 with `Retry-After`.
    Overloaded(Over),
    /// `--web`: nothing servable at this path: 404, connection kept open.
    FileNotFound,
    /// `--web`: a method we know but do not serve: 405 with `Allow: GET, HEAD`.
    MethodNotAllowed,
    /// `--web`: a method we do not know: 501 with upstream's reason.
    NotImplemented(Method),
    /// `--web`: the file exists but could not be read: 500.
    FileUnreadable,
}

impl Reject {
    /// The status line's code.
    pub fn status(&self) -> StatusCode {
        match self {
            Reject::WebSocketOnly | Reject::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Reject::Handshake(_) | Reject::DuplicateHost | Reject::TokenMissing { .. } => {
                StatusCode::BAD_REQUEST
            }
            Reject::Auth(reject) => reject.status,
            Reject::TokenUnknown { .. } | Reject::FileNotFound => StatusCode::NOT_FOUND,
            Reject::TokenUnavailable { .. } | Reject::Overloaded(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Reject::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            Reject::FileUnreadable => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The reason phrase, when it is not the standard one for the status.
    fn reason(&self) -> Option<Cow<'static, str>> {
        match self {
            Reject::Handshake(err) => Some(err.to_string().into()),
            Reject::DuplicateHost => Some("Duplicate Host header".into()),
            Reject::Auth(reject) => Some(reject.reason.into()),
            Reject::TokenMissing { .. } => Some("Token not present".into()),
            Reject::TokenUnknown { .. } => Some("Token not found".into()),
            Reject::TokenUnavailable { .. } => Some("Token lookup failed".into()),
            Reject::FileNotFound => Some("File not found".into()),
            Reject::NotImplemented(method) => {
                Some(format!("Unsupported method ('{method}')").into())
            }
            Reject::WebSocketOnly
            | Reject::MethodNotAllowed
            | Reject::FileUnreadable
            | Reject::Overloaded(_) => None,
        }
    }

    /// The sentence on the page.
    fn message(&self) -> Cow<'static, str> {
        match self {
            Reject::WebSocketOnly => "This port serves WebSocket connections only (start websockify with --web DIR to serve files).".into(),
            Reject::TokenMissing { looked_in } => format!(
                "This server picks the target by a token in the {looked_in}, and the request has none."
            )
            .into(),
            Reject::TokenUnknown { .. } => "The token in this request is unknown or no longer valid.".into(),
            Reject::TokenUnavailable { .. } => {
                "The token backend could not be asked; try again later.".into()
            }
            Reject::MethodNotAllowed => "Only GET and HEAD are served here.".into(),
            Reject::Overloaded(_) => {
                "This server has as many connections as it takes; try again in a moment.".into()
            }
            Reject::FileUnreadable => "The file could not be read.".into(),
            Reject::Handshake(HandshakeError::HixieNotEnabled) => {
                "This is a WebSocket handshake of draft-hixie-thewebsocketprotocol-75 or -76, an \
                 old protocol without masking that browsers dropped in 2011. Start websockify \
                 with --hixie to accept it."
                    .into()
            }
            Reject::Handshake(HandshakeError::HixieNotFirst) => {
                "A Hixie WebSocket handshake must be the first request of its connection.".into()
            }
            other => other
                .reason()
                .unwrap_or(Cow::Borrowed(other.status().canonical_reason().unwrap_or(""))),
        }
    }

    /// The response: an HTML page with the reason, and the headers the variant calls for.
    /// Errors close the connection, except a 404 from the file server (a browser loading a
    /// page goes on with the next file).
    pub fn response(&self) -> Response<Body> {
        let status = self.status();
        let reason = self.reason();
        let mut response = error_page(status, reason.as_deref(), &self.message());
        let headers = response.headers_mut();
        match self {
            Reject::WebSocketOnly => {
                headers.insert(header::ALLOW, HeaderValue::from_static("GET"));
            }
            Reject::MethodNotAllowed => {
                headers.insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            }
            Reject::Handshake(HandshakeError::UnsupportedVersion(_)) => {
                headers.insert(
                    header::SEC_WEBSOCKET_VERSION,
                    HeaderValue::from_static("13"),
                );
            }
            Reject::Auth(reject) => {
                for (name, value) in &reject.headers {
                    headers.insert(name.clone(), value.clone());
                }
            }
            Reject::FileNotFound => {
                headers.remove(header::CONNECTION);
            }
            Reject::Overloaded(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response
    }
}

/// A small HTML error page that closes the connection; `reason` replaces the standard reason
/// phrase.
fn error_page(status: StatusCode, reason: Option<&str>, message: &str) -> Response<Body> {
    let body = format!(
        "<!DOCTYPE html>\n<html><head><title>{code} {text}</title></head>\n<body><h1>{code} {text}</h1>\n<p>{message}</p></body></html>\n",
        code = status.as_u16(),
        text = html_escape(reason.unwrap_or(status.canonical_reason().unwrap_or(""))),
        message = html_escape(message),
    );
    let mut response = Response::new(full_body(body));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_refusal_has_its_status_and_reason() {
        let cases = [
            (Reject::WebSocketOnly, 405, None),
            (
                Reject::Handshake(HandshakeError::MissingKey),
                400,
                Some("Missing Sec-WebSocket-Key header"),
            ),
            (
                Reject::TokenMissing {
                    looked_in: "Host header".into(),
                },
                400,
                Some("Token not present"),
            ),
            (
                Reject::TokenUnknown { tag: "t".into() },
                404,
                Some("Token not found"),
            ),
            (
                Reject::TokenUnavailable {
                    tag: "t".into(),
                    error: "down".into(),
                },
                503,
                Some("Token lookup failed"),
            ),
            (Reject::FileNotFound, 404, Some("File not found")),
            (
                Reject::NotImplemented(Method::from_bytes(b"BREW").unwrap()),
                501,
                Some("Unsupported method ('BREW')"),
            ),
        ];
        for (reject, status, reason) in cases {
            let response = reject.response();
            assert_eq!(response.status().as_u16(), status, "{reject:?}");
            let phrase = response
                .extensions()
                .get::<hyper::ext::ReasonPhrase>()
                .map(|p| String::from_utf8_lossy(p.as_bytes()).into_owned());
            assert_eq!(phrase.as_deref(), reason, "{reject:?}");
        }
    }

    #[test]
    fn only_a_missing_file_keeps_the_connection_open() {
        assert!(
            !Reject::FileNotFound
                .response()
                .headers()
                .contains_key(header::CONNECTION)
        );
        assert_eq!(
            Reject::TokenUnknown { tag: "t".into() }
                .response()
                .headers()[header::CONNECTION],
            "close"
        );
    }

    #[test]
    fn html_escape_covers_markup_characters() {
        assert_eq!(
            html_escape("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#x27;&amp;&#x27;&lt;/a&gt;"
        );
    }
}
