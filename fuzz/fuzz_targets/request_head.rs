//! The first request head of a connection (`http::read_head`) and what is decided from it
//! without I/O: is the handshake valid (`handshake::accept`, and the Hixie-75/76 drafts'
//! `hixie::accept` with the 101 built from the request), the client named by
//! `Forwarded`/`X-Forwarded-For`, the token from the query, `Host`, a cookie or the path.
//!
//! Invariants: no panic; the head is a prefix of what was sent, within the size and field
//! limits; an accepted handshake has a 16-byte key, a 28-character accept key and a mode that
//! matches the subprotocol; a refused head has a status when it is the client's fault.
#![no_main]

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hyper::header::{HeaderValue, SEC_WEBSOCKET_KEY};
use libfuzzer_sys::fuzz_target;
use websockify::handshake;
use websockify::hixie;
use websockify::http::{self, HeadError, MAX_HEAD, MAX_HEADERS};
use websockify::relay::Mode;
use websockify::token::TokenSource;

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a tokio runtime");
}

fuzz_target!(|data: &[u8]| {
    RUNTIME.with(|rt| rt.block_on(check(data)));
});

async fn check(data: &[u8]) {
    let timeout = Duration::from_secs(10);
    let deadline = tokio::time::Instant::now() + timeout;
    // A reader that hands the bytes over in small pieces, as a slow client would.
    let step = 1 + usize::from(data.first().copied().unwrap_or(0) % 64);
    let mut reader = Pieces { data, step };
    let head = match http::read_head(&mut reader, deadline, timeout).await {
        Ok(Some(head)) => head,
        Ok(None) => {
            assert!(data.is_empty());
            return;
        }
        Err(err) => {
            match err {
                HeadError::Truncated | HeadError::Malformed(_) | HeadError::TooManyFields => {}
                HeadError::TooLarge => assert!(data.len() >= MAX_HEAD),
                HeadError::Timeout(_) | HeadError::Io(_) => panic!("unexpected {err}"),
            }
            let _ = err.status();
            return;
        }
    };
    assert!(head.head_len <= head.raw.len());
    assert!(head.head_len <= MAX_HEAD);
    assert!(data.starts_with(&head.raw), "the head is not what was sent");
    assert_eq!(head.rest(), head.raw.slice(head.head_len..));
    let request = &head.request;
    let headers = request.headers();
    assert!(headers.len() <= MAX_HEADERS);

    // One `--subprotocol` name besides binary and base64.
    let extra = ["sip".to_owned()];
    match handshake::accept(request.version(), headers, &extra) {
        Ok(accept) => {
            let key = headers
                .get(SEC_WEBSOCKET_KEY)
                .expect("accepted without a key")
                .as_bytes()
                .trim_ascii();
            assert_eq!(STANDARD.decode(key).map(|k| k.len()).ok(), Some(16));
            assert_eq!(accept.accept_key, handshake::accept_key(key));
            assert_eq!(accept.accept_key.len(), 28);
            assert!(HeaderValue::from_str(&accept.accept_key).is_ok());
            assert!(accept.hixie.is_none());
            match accept.protocol.as_deref() {
                Some("binary") | None => assert_eq!(accept.mode, Mode::Binary),
                Some("base64") => assert_eq!(accept.mode, Mode::Base64),
                Some("sip") => assert_eq!(accept.mode, Mode::Other),
                Some(other) => panic!("subprotocol {other} chosen, never offered by us"),
            }
        }
        Err(err) => {
            assert!(!err.to_string().is_empty());
        }
    }
    // The Hixie-75/76 drafts (`--hixie`), for upgrades that look like them.
    if handshake::is_upgrade(request.method(), headers)
        && let Some(draft) = hixie::detect(headers)
        && let Ok(hixie) = hixie::accept(draft, request.version(), request.uri(), headers)
    {
        let response = hixie.response(false, Some(&[7u8; hixie::KEY3_LEN]));
        assert!(response.starts_with(b"HTTP/1.1 101 "));
        let head_end = response
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("the 101 head ends");
        // Nothing from the request splits a header line of the response.
        let head = &response[..head_end];
        assert!(
            head.windows(2)
                .enumerate()
                .all(|(i, w)| w != b"\r\n" || !head[i + 2..].starts_with(b"\r\n")),
            "an empty line inside the 101 head"
        );
        assert!(!head.iter().any(|&b| b == 0));
        if hixie.keys.is_some() {
            assert_eq!(
                response.len() - head_end - 4,
                16,
                "the -76 challenge answer"
            );
        }
    }
    if let Some(client) = websockify::client::forwarded_client(headers) {
        let _ = client.socket_addr();
    }
    for source in [
        TokenSource::Query,
        TokenSource::Host,
        TokenSource::Cookie("token"),
        TokenSource::Path,
    ] {
        if let Some(token) = websockify::token::token_from_request(request.uri(), headers, source) {
            assert!(!token.is_empty(), "an empty token");
        }
    }
}

/// Hands `data` over `step` bytes per read.
struct Pieces<'a> {
    data: &'a [u8],
    step: usize,
}

impl tokio::io::AsyncRead for Pieces<'_> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let n = self.step.min(self.data.len()).min(buf.remaining());
        let (now, later) = self.data.split_at(n);
        buf.put_slice(now);
        self.data = later;
        std::task::Poll::Ready(Ok(()))
    }
}
