//! The client frame decoder (`frame::Decoder`), fed in chunks of every size.
//!
//! Two halves, picked by the first byte:
//! - any bytes: no panic; every data range lies inside the input and ends where the decoder
//!   stopped; `None` only when the input is used up; control payloads stay within 125 bytes;
//!   close codes are valid ones and reasons UTF-8; no more payload out than bytes in.
//! - a valid stream built from the input (data frames, fragments, pings, pongs and a close,
//!   in every length form, masked): decodes back to the same payloads and events, and the
//!   server's own control frames (`ControlFrame`) and headers (`write_header`) decode to what
//!   they were made from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use websockify::frame::{self, ControlFrame, DataKind, Decoder, Event, MAX_SERVER_HEADER};

fuzz_target!(|data: &[u8]| {
    let Some((&choice, rest)) = data.split_first() else {
        return;
    };
    let step = 1 + usize::from(choice >> 1);
    if choice & 1 == 0 {
        any_bytes(rest, step);
    } else {
        round_trip(rest, step);
    }
});

/// What a decoder produced.
#[derive(Debug, Default, PartialEq)]
struct Decoded {
    /// Payload of each complete data message, with its kind.
    messages: Vec<(DataKind, Vec<u8>)>,
    /// Payload of each ping, and of each pong.
    pings: Vec<Vec<u8>>,
    pongs: Vec<Vec<u8>>,
    close: Option<(Option<u16>, String)>,
}

/// Feeds `input` in chunks of `step` bytes; returns what came out and whether it ended in a
/// protocol error.
fn decode(input: &[u8], step: usize) -> (Decoded, bool) {
    let mut decoder = Decoder::new();
    let mut out = Decoded::default();
    let mut message: Option<(DataKind, Vec<u8>)> = None;
    let mut payload_out = 0usize;
    for chunk in input.chunks(step) {
        let mut buf = chunk.to_vec();
        let mut pos = 0;
        loop {
            let event = match decoder.next(&mut buf, &mut pos) {
                Ok(Some(event)) => event,
                Ok(None) => {
                    assert_eq!(pos, buf.len(), "None before the input was used up");
                    break;
                }
                Err(err) => {
                    assert!(
                        matches!(err.code, 1002 | 1007 | 1009),
                        "unexpected close code {}",
                        err.code
                    );
                    assert!(pos <= buf.len());
                    return (out, true);
                }
            };
            assert!(pos <= buf.len());
            assert!(decoder.control_payload().len() <= 125);
            match event {
                Event::Data {
                    start,
                    end,
                    kind,
                    message_end,
                } => {
                    assert!(start <= end && end == pos, "data {start}..{end} at {pos}");
                    payload_out += end - start;
                    let (current, bytes) = message.get_or_insert_with(|| (kind, Vec::new()));
                    assert_eq!(*current, kind, "kind changed inside a message");
                    bytes.extend_from_slice(&buf[start..end]);
                    if message_end {
                        out.messages.extend(message.take());
                    }
                }
                Event::Ping => out.pings.push(decoder.control_payload().to_vec()),
                Event::Pong => out.pongs.push(decoder.control_payload().to_vec()),
                Event::Close { code } => {
                    if let Some(code) = code {
                        assert!(frame::valid_close_code(code), "close code {code} accepted");
                        let payload = decoder.control_payload();
                        assert_eq!(payload.get(2..), Some(decoder.close_reason().as_bytes()));
                    } else {
                        assert!(decoder.control_payload().is_empty());
                    }
                    out.close = Some((code, decoder.close_reason().to_owned()));
                }
            }
        }
    }
    assert!(payload_out <= input.len());
    (out, false)
}

fn any_bytes(input: &[u8], step: usize) {
    let (one, failed_one) = decode(input, input.len().max(1));
    let (chunked, failed_chunked) = decode(input, step);
    // The chunking must not change the outcome.
    assert_eq!(one, chunked);
    assert_eq!(failed_one, failed_chunked);
}

/// Reads the fuzz input as the recipe of a valid client stream.
struct Recipe<'a>(&'a [u8]);

impl Recipe<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }
}

/// A masked client frame, with the length in the form `form` picks (any form that fits:
/// the decoder accepts non-minimal lengths, as RFC 6455 leaves them to the receiver).
fn client_frame(out: &mut Vec<u8>, b0: u8, payload: &[u8], mask: [u8; 4], form: u8) {
    out.push(b0);
    let len = payload.len();
    match form % 3 {
        // Control frames have the short form only.
        _ if b0 & 0x08 != 0 => out.push(0x80 | len as u8),
        0 if len < 126 => out.push(0x80 | len as u8),
        1 if len <= usize::from(u16::MAX) => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
}

fn round_trip(input: &[u8], step: usize) {
    let mut recipe = Recipe(input);
    let mut stream = Vec::new();
    let mut expected = Decoded::default();
    let mut message: Option<(DataKind, Vec<u8>)> = None;
    while let Some(flags) = recipe.byte() {
        let len = usize::from(recipe.byte().unwrap_or(0));
        let mask = {
            let m = recipe.bytes(4);
            [
                m.first().copied().unwrap_or(0),
                m.get(1).copied().unwrap_or(0),
                m.get(2).copied().unwrap_or(0),
                m.get(3).copied().unwrap_or(0),
            ]
        };
        let form = flags >> 4;
        match flags & 0x7 {
            0..=3 => {
                // A data frame: starts a message or continues the one in progress.
                let fin = flags & 0x8 != 0;
                let payload = recipe.bytes(len * 2).to_vec();
                let op = match &message {
                    Some(_) => 0x0,
                    None if flags & 1 == 0 => 0x2,
                    None => 0x1,
                };
                let kind = if op == 0x1 {
                    DataKind::Text
                } else {
                    DataKind::Binary
                };
                let (_, bytes) = message.get_or_insert_with(|| (kind, Vec::new()));
                bytes.extend_from_slice(&payload);
                client_frame(
                    &mut stream,
                    op | if fin { 0x80 } else { 0 },
                    &payload,
                    mask,
                    form,
                );
                if fin {
                    expected.messages.extend(message.take());
                }
            }
            4 => {
                let payload = recipe.bytes(len.min(125)).to_vec();
                client_frame(&mut stream, 0x89, &payload, mask, form);
                expected.pings.push(payload);
            }
            5 => {
                let payload = recipe.bytes(len.min(125)).to_vec();
                client_frame(&mut stream, 0x8a, &payload, mask, form);
                expected.pongs.push(payload);
            }
            _ => {
                // The server's own close frame, masked as a client would send it: the
                // decoder must give back the code and the (cut) reason.
                let code = u16::from_be_bytes([len as u8, recipe.byte().unwrap_or(0)]);
                let reason = String::from_utf8_lossy(recipe.bytes(200)).into_owned();
                let with_code = flags & 0x8 == 0;
                let ours = ControlFrame::close(with_code.then_some(code), &reason);
                let bytes = ours.as_bytes();
                assert!(bytes.len() <= 127);
                client_frame(&mut stream, bytes[0], &bytes[2..], mask, 0);
                let (events, failed) = decode(&stream, step);
                if with_code && !frame::valid_close_code(code) {
                    assert!(failed, "invalid close code {code} accepted");
                    return;
                }
                assert!(!failed, "our own close frame refused");
                let (_, sent_reason) = events.close.clone().expect("close decoded");
                assert!(reason.starts_with(&sent_reason));
                assert!(sent_reason.len() <= 123);
                if with_code {
                    assert!(sent_reason.len() == reason.len() || reason.len() > 123);
                    expected.close = Some((Some(code), sent_reason));
                } else {
                    expected.close = Some((None, String::new()));
                }
                assert_eq!(events, expected);
                return;
            }
        }
    }
    let (events, failed) = decode(&stream, step);
    assert!(!failed, "a valid stream was refused");
    assert_eq!(events, expected);

    // Server headers: the length written is the length read back.
    for len in [input.len(), input.len() * 500, input.len() << 20] {
        let mut header = [0u8; MAX_SERVER_HEADER];
        let used = frame::write_header(&mut header, 0x2, len);
        let h = &header[MAX_SERVER_HEADER - used..];
        assert_eq!(h[0], 0x82);
        let read = match h[1] {
            126 => usize::from(u16::from_be_bytes([h[2], h[3]])),
            127 => u64::from_be_bytes(h[2..10].try_into().expect("8 bytes")) as usize,
            n => usize::from(n),
        };
        assert_eq!(read, len);
    }
}
