//! The first request head of a connection (`http::read_head`) and what is decided from it
//! without I/O: is it an upgrade, is the handshake valid (`handshake::accept`), the client
//! named by `Forwarded`/`X-Forwarded-For`, the token from the query or `Host`.
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
use websockify::http::{self, HeadError, MAX_HEAD, MAX_HEADERS};
use websockify::relay::Mode;

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

    let upgrade = handshake::is_upgrade(request.method(), headers);
    match handshake::accept(request.version(), headers) {
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
            match accept.protocol {
                Some("binary") | None => assert_eq!(accept.mode, Mode::Binary),
                Some("base64") => assert_eq!(accept.mode, Mode::Base64),
                Some(other) => panic!("unknown subprotocol {other} chosen"),
            }
        }
        Err(err) => {
            assert!(!err.to_string().is_empty());
        }
    }
    let _ = upgrade;
    if let Some(client) = websockify::client::forwarded_client(headers) {
        let _ = client.socket_addr();
    }
    for host_token in [false, true] {
        if let Some(token) =
            websockify::token::token_from_request(request.uri(), headers, host_token)
        {
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
