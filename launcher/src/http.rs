//! The first request head of a connection, read by hand: bounded in bytes, header fields and
//! time, parsed with `httparse`, and the small responses of the request step written back.
//!
//! Why not hyper for this: a WebSocket connection makes one request, the upgrade, and then
//! leaves HTTP for good. Reading that one head directly costs a fraction of setting up hyper's
//! connection machinery per client (callgrind: hyper's dispatch was about a fifth of the
//! instructions of a whole short session). hyper still serves everything else: `--web`
//! requests, and whatever follows them on a keep-alive connection (see `request`).

use std::io;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt as _;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::time::Instant;

use crate::response::Body;

/// Most bytes of a request head (request line plus headers); beyond: 431.
pub const MAX_HEAD: usize = 16 * 1024;
/// Most header fields in a request head; beyond: 431.
pub const MAX_HEADERS: usize = 100;
/// First read size: a browser's upgrade request is well under 1 KiB.
const FIRST_READ: usize = 1024;

/// A request head, and what the client sent after it.
#[derive(Debug)]
pub struct Head {
    /// Method, target, version and header fields; no body.
    pub request: Request<()>,
    /// Every byte read so far, the head included (to hand the connection to hyper).
    pub raw: Bytes,
    /// Where the head ends in `raw`: `raw[head_len..]` came after it.
    pub head_len: usize,
}

impl Head {
    /// The bytes the client sent after the head (for an upgrade: its first frames).
    pub fn rest(&self) -> Bytes {
        self.raw.slice(self.head_len..)
    }
}

/// Why no request head could be read.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    #[error("no complete request head within {0:?}")]
    Timeout(Duration),
    #[error("request head larger than {MAX_HEAD} bytes")]
    TooLarge,
    #[error("more than {MAX_HEADERS} header fields")]
    TooManyFields,
    #[error("malformed request head: {0}")]
    Malformed(String),
    #[error("connection closed in the middle of the request head")]
    Truncated,
    #[error("reading the request head failed: {0}")]
    Io(#[from] io::Error),
}

impl HeadError {
    /// The status to answer with before closing, when the client is still there to read it.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            HeadError::TooLarge | HeadError::TooManyFields => {
                Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
            }
            HeadError::Malformed(_) => Some(StatusCode::BAD_REQUEST),
            HeadError::Timeout(_) | HeadError::Truncated | HeadError::Io(_) => None,
        }
    }
}

/// Reads one request head by `deadline`. `Ok(None)`: the client closed before sending a byte.
pub async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
    deadline: Instant,
    timeout: Duration,
) -> Result<Option<Head>, HeadError> {
    let mut buf = BytesMut::with_capacity(FIRST_READ);
    loop {
        let read = tokio::time::timeout_at(deadline, stream.read_buf(&mut buf))
            .await
            .map_err(|_| HeadError::Timeout(timeout))??;
        if read == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(HeadError::Truncated)
            };
        }
        if let Some((request, raw, head_len)) = parse(&mut buf)? {
            return Ok(Some(Head {
                request,
                raw,
                head_len,
            }));
        }
        if buf.len() >= MAX_HEAD {
            return Err(HeadError::TooLarge);
        }
        // Room for the next read, never past the limit (plus one byte to see it exceeded).
        let room = (buf.len() * 2).clamp(FIRST_READ, MAX_HEAD + 1) - buf.len();
        buf.reserve(room);
    }
}

/// Parses a complete head at the start of `buf`; `None` while it is incomplete. Once it is
/// complete, takes what was read out of `buf` and returns it with the request and the head's
/// length: the request target and the header values are slices of those bytes, not copies
/// (a dozen allocations fewer per connection).
fn parse(buf: &mut BytesMut) -> Result<Option<(Request<()>, Bytes, usize)>, HeadError> {
    // Uninitialised: httparse fills what it uses, and clearing ~2 KiB per request is not free.
    let mut fields = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let head_len = match parsed.parse_with_uninit_headers(buf, &mut fields) {
        Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD => len,
        Ok(httparse::Status::Complete(_)) => return Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyFields),
        Err(err) => return Err(HeadError::Malformed(err.to_string())),
    };
    let malformed = |what: &str| HeadError::Malformed(what.to_owned());
    let method = Method::from_bytes(parsed.method.unwrap_or_default().as_bytes())
        .map_err(|_| malformed("invalid method"))?;
    let version = match parsed.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    // Where the pieces lie in `buf` (httparse hands out slices of it), to cut them out of the
    // frozen bytes below.
    let base = buf.as_ptr() as usize;
    let place = |piece: &[u8]| {
        let at = (piece.as_ptr() as usize).wrapping_sub(base);
        (at, at.wrapping_add(piece.len()))
    };
    let target = parsed
        .path
        .map(|path| place(path.as_bytes()))
        .ok_or_else(|| malformed("invalid request target"))?;
    let places: Vec<_> = parsed
        .headers
        .iter()
        .map(|field| (place(field.name.as_bytes()), place(field.value)))
        .collect();

    let raw = std::mem::take(buf).freeze();
    let cut = |(from, to): (usize, usize)| match from <= to && to <= raw.len() {
        true => Ok(raw.slice(from..to)),
        false => Err(malformed("request head out of place")),
    };
    let uri =
        Uri::from_maybe_shared(cut(target)?).map_err(|_| malformed("invalid request target"))?;
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    let headers = request.headers_mut();
    headers.reserve(places.len());
    for (name, value) in places {
        let name =
            HeaderName::from_bytes(&cut(name)?).map_err(|_| malformed("invalid header name"))?;
        let value = HeaderValue::from_maybe_shared(cut(value)?)
            .map_err(|_| malformed("invalid header value"))?;
        headers.append(name, value);
    }
    Ok(Some((request, raw, head_len)))
}

/// Writes a response whose body is in memory (a 101, or a refusal page) in one write.
pub async fn write_response<S: AsyncWrite + Unpin>(
    stream: &mut S,
    response: Response<Body>,
) -> io::Result<()> {
    let (parts, body) = response.into_parts();
    let body = body.collect().await?.to_bytes();
    let reason = match parts.extensions.get::<hyper::ext::ReasonPhrase>() {
        Some(phrase) => phrase.as_bytes(),
        None => parts.status.canonical_reason().unwrap_or("").as_bytes(),
    };
    let mut out = Vec::with_capacity(256 + body.len());
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason);
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if parts.status != StatusCode::SWITCHING_PROTOCOLS
        && !parts.headers.contains_key(header::CONTENT_LENGTH)
    {
        out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&body);
    stream.write_all(&out).await?;
    stream.flush().await
}

/// A bare error response for a head that could not be read (no page: the request is unknown).
pub fn head_error_response(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(crate::response::empty_body());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn head_of(input: &[u8]) -> Result<Option<Head>, HeadError> {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        client.write_all(input).await.unwrap();
        drop(client);
        let timeout = Duration::from_secs(5);
        read_head(&mut server, Instant::now() + timeout, timeout).await
    }

    #[tokio::test]
    async fn reads_a_head_and_keeps_what_follows() {
        let head = head_of(
            b"GET /websockify?token=a HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n\x82\x80",
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(head.request.method(), Method::GET);
        assert_eq!(head.request.uri().path(), "/websockify");
        assert_eq!(head.request.uri().query(), Some("token=a"));
        assert_eq!(head.request.version(), Version::HTTP_11);
        assert_eq!(head.request.headers()["upgrade"], "websocket");
        assert_eq!(&head.rest()[..], b"\x82\x80");
    }

    #[tokio::test]
    async fn an_empty_connection_is_not_an_error() {
        assert!(head_of(b"").await.unwrap().is_none());
        assert!(matches!(
            head_of(b"GET / HT").await,
            Err(HeadError::Truncated)
        ));
    }

    #[tokio::test]
    async fn limits_give_431_and_garbage_400() {
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        let err = head_of(big.as_bytes()).await.unwrap_err();
        assert_eq!(
            err.status(),
            Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
        );
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X{i}: v\r\n")).collect();
        let err = head_of(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes())
            .await
            .unwrap_err();
        assert_eq!(
            err.status(),
            Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
        );
        let err = head_of(b"GARBAGE\r\n\r\n").await.unwrap_err();
        assert_eq!(err.status(), Some(StatusCode::BAD_REQUEST));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_times_out() {
        let (_client, mut server) = tokio::io::duplex(1024);
        let timeout = Duration::from_secs(10);
        let err = read_head(&mut server, Instant::now() + timeout, timeout)
            .await
            .unwrap_err();
        assert!(matches!(err, HeadError::Timeout(_)));
    }

    #[tokio::test]
    async fn responses_carry_status_reason_headers_and_length() {
        let mut response = Response::new(crate::response::full_body("hi"));
        *response.status_mut() = StatusCode::NOT_FOUND;
        response
            .extensions_mut()
            .insert(hyper::ext::ReasonPhrase::try_from(b"Token not found".to_vec()).unwrap());
        response
            .headers_mut()
            .insert(header::SERVER, HeaderValue::from_static("s"));
        let mut out = Vec::new();
        write_response(&mut out, response).await.unwrap();
        assert_eq!(
            out,
            b"HTTP/1.1 404 Token not found\r\nserver: s\r\ncontent-length: 2\r\n\r\nhi"
        );
    }
}
