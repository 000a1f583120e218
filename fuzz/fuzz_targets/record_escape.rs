//! The escaping of `--record` files (`record::escape`, Python's `unicode_escape` plus quotes,
//! read back by noVNC's player as JavaScript string literals).
//!
//! Invariants: no panic; at most 4 output bytes per input byte; only printable ASCII, no bare
//! quote; decoding the output as a single-quoted JavaScript literal gives the input back;
//! escaping in pieces gives the same bytes as escaping at once.
#![no_main]

use libfuzzer_sys::fuzz_target;
use websockify::record::escape;

fuzz_target!(|data: &[u8]| {
    let mut out = Vec::new();
    escape(data, &mut out);
    assert!(out.len() <= 4 * data.len());
    assert!(out.iter().all(|b| (0x20..=0x7e).contains(b)));
    assert_eq!(js_decode(&out), data);
    let cut = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
    let mut pieces = Vec::new();
    escape(&data[..cut], &mut pieces);
    escape(&data[cut..], &mut pieces);
    assert_eq!(pieces, out);
});

/// The body of a single-quoted JavaScript string literal, decoded to bytes (every char code
/// here is below 256).
fn js_decode(literal: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut chars = literal.iter();
    while let Some(&c) = chars.next() {
        assert_ne!(c, b'\'', "a bare quote");
        if c != b'\\' {
            bytes.push(c);
            continue;
        }
        let e = *chars.next().expect("a dangling backslash");
        bytes.push(match e {
            b'x' => {
                let hex = [*chars.next().expect("hex"), *chars.next().expect("hex")];
                let hex = std::str::from_utf8(&hex).expect("ASCII");
                u8::from_str_radix(hex, 16).expect("two hex digits")
            }
            b'n' => b'\n',
            b't' => b'\t',
            b'r' => b'\r',
            b'\\' | b'\'' => e,
            other => panic!("unexpected escape \\{}", char::from(other)),
        });
    }
    bytes
}
