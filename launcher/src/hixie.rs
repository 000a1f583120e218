//! The Hixie WebSocket drafts of 2010 (draft-hixie-thewebsocketprotocol-75 and -76), accepted
//! with `--hixie` only: they have no masking, and browsers dropped them in 2011. The seeds'
//! websockify spoke them, with base64 in every frame.
//!
//! - Detection: a GET with `Upgrade: WebSocket` and `Sec-WebSocket-Key1`/`Key2` is -76 (8
//!   bytes of key material follow the head); one with neither those nor RFC 6455's
//!   `Sec-WebSocket-Key`/`Version` is -75.
//! - The -76 answer: each key's digits read as one number, divided by the key's spaces (a
//!   key with no space, or a remainder, is refused), both as 32-bit big-endian integers, then
//!   the 8 body bytes: the MD5 of these 16 bytes is the 16-byte body of the 101.
//! - Frames: `0x00`, text, `0xFF` (the text is base64 both ways here); `0xFF 0x00` closes.
//!   Frames with the high bit of the type set carry a length and are skipped, as the draft
//!   says. [`Decoder`] streams: text is reported as ranges of the caller's buffer as it
//!   arrives, and one frame may hold at most [`MAX_FRAME`] bytes.

use hyper::header::{HOST, HeaderMap, HeaderValue, ORIGIN, SEC_WEBSOCKET_PROTOCOL};
use hyper::{Uri, Version};
use md5::{Digest as _, Md5};

use crate::frame::{DataKind, Event, ProtocolError, close_code};

/// Which draft a client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Draft {
    /// draft-hixie-thewebsocketprotocol-75: no keys, no body.
    Hixie75,
    /// draft-hixie-thewebsocketprotocol-76: two keys and 8 bytes after the head.
    Hixie76,
}

impl Draft {
    /// The name in logs.
    pub fn name(self) -> &'static str {
        match self {
            Draft::Hixie75 => "hixie-75",
            Draft::Hixie76 => "hixie-76",
        }
    }
}

/// Bytes of key material a -76 client sends after its request head.
pub const KEY3_LEN: usize = 8;

/// Most bytes one client frame may hold (its text, or a skipped length-prefixed frame).
/// Frames stream through the relay's buffer whatever their length; the bound ends a client
/// that never closes its frame.
pub const MAX_FRAME: u64 = 16 * 1024 * 1024;

const KEY1: &str = "sec-websocket-key1";
const KEY2: &str = "sec-websocket-key2";

/// The draft of a Hixie upgrade request, or `None` for an RFC 6455 one. Only called for
/// requests that are upgrades (`handshake::is_upgrade`).
pub fn detect(headers: &HeaderMap) -> Option<Draft> {
    if headers.contains_key(KEY1) || headers.contains_key(KEY2) {
        Some(Draft::Hixie76)
    } else if !headers.contains_key(hyper::header::SEC_WEBSOCKET_KEY)
        && !headers.contains_key(hyper::header::SEC_WEBSOCKET_VERSION)
    {
        Some(Draft::Hixie75)
    } else {
        None
    }
}

/// A valid Hixie upgrade request: what its 101 needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handshake {
    pub draft: Draft,
    /// -76: the two key numbers, waiting for the 8 bytes after the head.
    pub keys: Option<(u32, u32)>,
    /// The `Origin` header, echoed in `[Sec-]WebSocket-Origin`.
    pub origin: Option<HeaderValue>,
    /// The `Host` header, for `[Sec-]WebSocket-Location`.
    pub host: HeaderValue,
    /// The resource name (path and query as requested), for the location too.
    pub resource: String,
    /// The client asked for the `base64` subprotocol: it is echoed.
    pub base64: bool,
}

/// Why a Hixie upgrade request is refused (a `400`; the handshake module's `HandshakeError`
/// carries it to the response with the same reason phrase).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The drafts, like RFC 6455, need HTTP/1.1.
    #[error("WebSocket upgrade needs HTTP/1.1")]
    OldHttp,
    /// A subprotocol other than `base64`.
    #[error("Invalid protocol selected")]
    InvalidProtocol,
    /// A missing or malformed header; the text is the reason phrase.
    #[error("{0}")]
    Malformed(&'static str),
}

/// Validates a Hixie upgrade request (HTTP/1.1, one `Host`, for -76 both keys) and reads
/// the subprotocol: `base64` (echoed) or none; every frame carries base64 text either way.
pub fn accept(
    draft: Draft,
    http: Version,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Handshake, Refusal> {
    if http < Version::HTTP_11 {
        return Err(Refusal::OldHttp);
    }
    let host = headers
        .get(HOST)
        .cloned()
        .ok_or(Refusal::Malformed("Missing Host header"))?;
    let keys = match draft {
        Draft::Hixie75 => None,
        Draft::Hixie76 => {
            let key = |name, missing, invalid| {
                let value: &HeaderValue = headers.get(name).ok_or(Refusal::Malformed(missing))?;
                key_number(value.as_bytes()).ok_or(Refusal::Malformed(invalid))
            };
            Some((
                key(
                    KEY1,
                    "Missing Sec-WebSocket-Key1 header",
                    "Invalid Sec-WebSocket-Key1 header",
                )?,
                key(
                    KEY2,
                    "Missing Sec-WebSocket-Key2 header",
                    "Invalid Sec-WebSocket-Key2 header",
                )?,
            ))
        }
    };
    // -76 sends Sec-WebSocket-Protocol, -75 WebSocket-Protocol; a single name in both.
    let offered: Vec<String> = headers
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .chain(headers.get_all("websocket-protocol").iter())
        .flat_map(|value| {
            String::from_utf8_lossy(value.as_bytes())
                .split(',')
                .map(|name| name.trim().to_owned())
                .filter(|name| !name.is_empty())
                .collect::<Vec<_>>()
        })
        .collect();
    let base64 = offered.iter().any(|name| name == "base64");
    if !offered.is_empty() && !base64 {
        return Err(Refusal::InvalidProtocol);
    }
    let resource = uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".to_owned());
    Ok(Handshake {
        draft,
        keys,
        origin: headers.get(ORIGIN).cloned(),
        host,
        resource,
        base64,
    })
}

/// A -76 key's number: its digits read as one decimal number, divided by its spaces. `None`
/// for a key without digits or spaces, a number that does not divide evenly, or a quotient
/// past 32 bits (the draft's keys are at most 4294967295 times the spaces).
pub fn key_number(key: &[u8]) -> Option<u32> {
    let mut number: u64 = 0;
    let mut digits = 0usize;
    let mut spaces: u64 = 0;
    for &b in key {
        match b {
            b'0'..=b'9' => {
                number = number.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
                digits += 1;
            }
            b' ' => spaces += 1,
            _ => {}
        }
    }
    if digits == 0 || spaces == 0 || !number.is_multiple_of(spaces) {
        return None;
    }
    u32::try_from(number / spaces).ok()
}

/// The -76 challenge response: MD5 of both key numbers (32-bit big-endian) and the 8 bytes.
pub fn challenge_response(key1: u32, key2: u32, key3: &[u8; KEY3_LEN]) -> [u8; 16] {
    let mut md5 = Md5::new();
    md5.update(key1.to_be_bytes());
    md5.update(key2.to_be_bytes());
    md5.update(key3);
    md5.finalize().into()
}

impl Handshake {
    /// The whole 101 (head and, for -76, the 16-byte body). `tls` picks `wss://` for the
    /// location; `key3` is the 8 bytes a -76 client sent after its head.
    pub fn response(&self, tls: bool, key3: Option<&[u8; KEY3_LEN]>) -> Vec<u8> {
        let (status, prefix) = match self.draft {
            // -75 clients compare the first three lines byte for byte.
            Draft::Hixie75 => ("HTTP/1.1 101 Web Socket Protocol Handshake", ""),
            Draft::Hixie76 => ("HTTP/1.1 101 WebSocket Protocol Handshake", "Sec-"),
        };
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(status.as_bytes());
        out.extend_from_slice(b"\r\nUpgrade: WebSocket\r\nConnection: Upgrade\r\n");
        if let Some(origin) = &self.origin {
            out.extend_from_slice(format!("{prefix}WebSocket-Origin: ").as_bytes());
            out.extend_from_slice(origin.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        let scheme = if tls { "wss" } else { "ws" };
        out.extend_from_slice(format!("{prefix}WebSocket-Location: {scheme}://").as_bytes());
        out.extend_from_slice(self.host.as_bytes());
        out.extend_from_slice(self.resource.as_bytes());
        out.extend_from_slice(b"\r\n");
        if self.base64 {
            out.extend_from_slice(format!("{prefix}WebSocket-Protocol: base64\r\n").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        if let (Some((key1, key2)), Some(key3)) = (self.keys, key3) {
            out.extend_from_slice(&challenge_response(key1, key2, key3));
        }
        out
    }
}

/// Where the decoder stands in the client's byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for a frame's type byte.
    FrameType,
    /// Inside a text frame (type with the high bit clear) until `0xFF`; only type `0x00`
    /// carries data, the others are skipped.
    Text { data: bool },
    /// Reading a length (7 bits per byte, high bit: more follow); `close` for type `0xFF`.
    Length { close: bool, length: u64 },
    /// Skipping the rest of a length-prefixed frame.
    Skip { remaining: u64 },
    /// After the close frame: nothing more is read.
    Closed,
}

/// Incremental decoder of a Hixie client's frames; reports [`Event::Data`] (always text) and
/// [`Event::Close`] like [`crate::frame::Decoder`], with no allocation and no buffering.
#[derive(Debug)]
pub struct Decoder {
    state: State,
    /// Bytes of the current frame so far.
    frame_len: u64,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

const TOO_LONG: ProtocolError = ProtocolError {
    code: close_code::PROTOCOL,
    reason: "Protocol error: frame too long",
};

impl Decoder {
    pub fn new() -> Self {
        Decoder {
            state: State::FrameType,
            frame_len: 0,
        }
    }

    /// Decodes from `input[*pos..]`, advancing `*pos`; `None` when the input is used up. A
    /// text frame's end may come as an empty range with `message_end` set.
    pub fn next(&mut self, input: &[u8], pos: &mut usize) -> Result<Option<Event>, ProtocolError> {
        loop {
            if *pos >= input.len() || self.state == State::Closed {
                return Ok(None);
            }
            match self.state {
                State::FrameType => {
                    let kind = input[*pos];
                    *pos += 1;
                    self.frame_len = 0;
                    self.state = if kind & 0x80 == 0 {
                        State::Text { data: kind == 0 }
                    } else {
                        State::Length {
                            close: kind == 0xff,
                            length: 0,
                        }
                    };
                }
                State::Text { data } => {
                    let start = *pos;
                    let found = input[start..].iter().position(|&b| b == 0xff);
                    let end = found.map_or(input.len(), |at| start + at);
                    self.frame_len += (end - start) as u64;
                    if self.frame_len > MAX_FRAME {
                        return Err(TOO_LONG);
                    }
                    *pos = if found.is_some() { end + 1 } else { end };
                    if found.is_some() {
                        self.state = State::FrameType;
                    }
                    if data && (end > start || found.is_some()) {
                        return Ok(Some(Event::Data {
                            start,
                            end,
                            kind: DataKind::Text,
                            message_end: found.is_some(),
                        }));
                    }
                }
                State::Length { close, length } => {
                    let b = input[*pos];
                    *pos += 1;
                    let length = length * 128 + u64::from(b & 0x7f);
                    if length > MAX_FRAME {
                        return Err(TOO_LONG);
                    }
                    if b & 0x80 != 0 {
                        self.state = State::Length { close, length };
                    } else if close && length == 0 {
                        self.state = State::Closed;
                        return Ok(Some(Event::Close { code: None }));
                    } else if length == 0 {
                        self.state = State::FrameType;
                    } else {
                        self.state = State::Skip { remaining: length };
                    }
                }
                State::Skip { remaining } => {
                    let take = remaining.min((input.len() - *pos) as u64);
                    *pos += take as usize;
                    let remaining = remaining - take;
                    self.state = if remaining == 0 {
                        State::FrameType
                    } else {
                        State::Skip { remaining }
                    };
                }
                State::Closed => return Ok(None),
            }
        }
    }
}

/// The close frame, both ways.
pub const CLOSE: [u8; 2] = crate::frame::HIXIE_CLOSE;

#[cfg(test)]
mod tests {
    use super::*;

    /// The server-side handshake example of draft-hixie-thewebsocketprotocol-76 (section
    /// 5.2): key numbers 1868545188 / 12 and 1733470270 / 10.
    #[test]
    fn the_draft_76_example_gives_its_challenge_response() {
        let key1 = key_number(K1.as_bytes()).unwrap();
        let key2 = key_number(K2.as_bytes()).unwrap();
        assert_eq!((key1, key2), (155712099, 173347027));
        // With its last digit changed, the second key no longer divides by its 10 spaces.
        assert_eq!(key_number(b"1_ tx7X d  <  nw  334J702) 7]o}` 3e"), None);
        assert_eq!(
            &challenge_response(key1, key2, b"Tm[K T2u"),
            b"fQJ,fN/4F4!~K~MH"
        );
    }

    #[test]
    fn keys_without_spaces_or_with_a_remainder_are_refused() {
        assert_eq!(key_number(b"12 34"), Some(1234));
        assert_eq!(key_number(b"1234"), None, "no space");
        assert_eq!(key_number(b"1 2 3"), None, "123 / 2");
        assert_eq!(key_number(b"  "), None, "no digits");
        assert_eq!(key_number(b"99999999999 "), None, "past 32 bits");
        assert_eq!(
            key_number(b"99999999999999999999999 "),
            None,
            "past 64 bits"
        );
        assert_eq!(key_number(b"8589934590  "), Some(u32::MAX));
    }

    fn request(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                hyper::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    const K1: &str = "18x 6]8vM;54 *(5:  {   U1]8  z [  8";
    const K2: &str = "1_ tx7X d  <  nw  334J702) 7]o}` 0e";

    #[test]
    fn drafts_are_told_apart_by_their_headers() {
        let up = ("upgrade", "WebSocket");
        assert_eq!(
            detect(&request(&[
                up,
                ("sec-websocket-key1", K1),
                ("sec-websocket-key2", K2)
            ])),
            Some(Draft::Hixie76)
        );
        assert_eq!(
            detect(&request(&[up, ("origin", "http://x")])),
            Some(Draft::Hixie75)
        );
        assert_eq!(
            detect(&request(&[up, ("sec-websocket-version", "13")])),
            None
        );
        assert_eq!(detect(&request(&[up, ("sec-websocket-key", "x")])), None);
    }

    #[test]
    fn the_101_follows_each_draft() {
        let uri: Uri = "/demo?token=a".parse().unwrap();
        let headers = request(&[
            ("host", "example.com"),
            ("origin", "http://example.com"),
            ("sec-websocket-key1", K1),
            ("sec-websocket-key2", K2),
            ("sec-websocket-protocol", "base64"),
        ]);
        let hs = accept(Draft::Hixie76, Version::HTTP_11, &uri, &headers).unwrap();
        let response = hs.response(false, Some(b"Tm[K T2u"));
        assert_eq!(
            String::from_utf8_lossy(&response),
            "HTTP/1.1 101 WebSocket Protocol Handshake\r\nUpgrade: WebSocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Origin: http://example.com\r\n\
             Sec-WebSocket-Location: ws://example.com/demo?token=a\r\n\
             Sec-WebSocket-Protocol: base64\r\n\r\nfQJ,fN/4F4!~K~MH"
        );
        let headers = request(&[("host", "example.com:81"), ("origin", "http://o")]);
        let hs = accept(Draft::Hixie75, Version::HTTP_11, &uri, &headers).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&hs.response(true, None)),
            "HTTP/1.1 101 Web Socket Protocol Handshake\r\nUpgrade: WebSocket\r\n\
             Connection: Upgrade\r\nWebSocket-Origin: http://o\r\n\
             WebSocket-Location: wss://example.com:81/demo?token=a\r\n\r\n"
        );
    }

    #[test]
    fn bad_hixie_requests_are_refused() {
        let uri: Uri = "/".parse().unwrap();
        let check = |draft, pairs: &[(&str, &str)]| {
            accept(draft, Version::HTTP_11, &uri, &request(pairs))
                .unwrap_err()
                .to_string()
        };
        let host = ("host", "h");
        assert_eq!(
            check(Draft::Hixie76, &[host, ("sec-websocket-key1", K1)]),
            "Missing Sec-WebSocket-Key2 header"
        );
        assert_eq!(
            check(
                Draft::Hixie76,
                &[
                    host,
                    ("sec-websocket-key1", "1 2 3"),
                    ("sec-websocket-key2", K2)
                ]
            ),
            "Invalid Sec-WebSocket-Key1 header"
        );
        assert_eq!(
            check(
                Draft::Hixie76,
                &[
                    host,
                    ("sec-websocket-key1", K1),
                    ("sec-websocket-key2", "1234")
                ]
            ),
            "Invalid Sec-WebSocket-Key2 header"
        );
        assert_eq!(check(Draft::Hixie75, &[]), "Missing Host header");
        assert_eq!(
            check(Draft::Hixie75, &[host, ("websocket-protocol", "chat")]),
            "Invalid protocol selected"
        );
        let http10 = accept(Draft::Hixie75, Version::HTTP_10, &uri, &request(&[host]));
        assert_eq!(http10, Err(Refusal::OldHttp));
    }

    /// Decodes `input` fed in chunks of `chunk` bytes; returns (data, closes).
    fn decode(input: &[u8], chunk: usize) -> Result<(Vec<u8>, Vec<bool>, usize), ProtocolError> {
        let mut decoder = Decoder::new();
        let mut data = Vec::new();
        let mut ends = Vec::new();
        let mut closes = 0;
        for piece in input.chunks(chunk) {
            let mut pos = 0;
            while let Some(event) = decoder.next(piece, &mut pos)? {
                match event {
                    Event::Data {
                        start,
                        end,
                        message_end,
                        ..
                    } => {
                        data.extend_from_slice(&piece[start..end]);
                        ends.push(message_end);
                    }
                    Event::Close { code: None } => closes += 1,
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        Ok((data, ends, closes))
    }

    #[test]
    fn frames_stream_in_any_chunking() {
        let mut input = Vec::new();
        input.extend_from_slice(b"\x00aGVsbG8=\xff");
        input.extend_from_slice(b"\x00\xff");
        input.extend_from_slice(b"\x05skipped text\xff");
        input.extend_from_slice(b"\x80\x03abc");
        input.extend_from_slice(b"\x81\x01z");
        input.extend_from_slice(&[0x81, 0x81, 0x00]);
        input.extend_from_slice(&[b'x'; 128]);
        input.extend_from_slice(b"\x00IQ==\xff\xff\x00\x00after close\xff");
        for chunk in 1..=input.len() {
            let (data, ends, closes) = decode(&input, chunk).unwrap();
            assert_eq!(data, b"aGVsbG8=IQ==", "chunk {chunk}");
            assert_eq!(ends.iter().filter(|e| **e).count(), 3, "chunk {chunk}");
            assert_eq!(closes, 1, "chunk {chunk}");
        }
    }

    #[test]
    fn a_frame_past_the_bound_is_an_error() {
        let mut decoder = Decoder::new();
        let mut pos = 0;
        assert!(decoder.next(b"\x00", &mut pos).unwrap().is_none());
        let block = vec![b'A'; 1 << 20];
        let mut sent = 0u64;
        let err = loop {
            let mut pos = 0;
            match decoder.next(&block, &mut pos) {
                Ok(_) => sent += block.len() as u64,
                Err(err) => break err,
            }
            assert!(sent <= MAX_FRAME, "no error after {sent} bytes");
        };
        assert_eq!(err, TOO_LONG);
        // A length-prefixed frame declaring too much is refused at its length.
        let mut decoder = Decoder::new();
        let mut pos = 0;
        let err = decoder
            .next(&[0x80, 0xff, 0xff, 0xff, 0xff, 0x7f], &mut pos)
            .unwrap_err();
        assert_eq!(err, TOO_LONG);
    }
}
