//! The WebSocket opening handshake (RFC 6455 section 4.2): is this request an upgrade, is it a
//! valid one, and which subprotocol do we answer with. Pure functions over the request head.

use std::borrow::Cow;

use base64::Engine as _;
use hyper::header::{
    HeaderMap, HeaderValue, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL, SEC_WEBSOCKET_VERSION,
    UPGRADE,
};
use hyper::{Method, Version};

use crate::relay::Mode;

/// A valid upgrade request: what the 101 response says and how the relay frames data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accept {
    /// `Sec-WebSocket-Accept` value.
    pub accept_key: String,
    /// `Sec-WebSocket-Protocol` to answer with, if any.
    pub protocol: Option<Cow<'static, str>>,
    /// Binary frames, or base64 in text frames.
    pub mode: Mode,
    /// A Hixie-75/76 handshake (`--hixie`): its 101 is written by [`crate::hixie`], and
    /// `accept_key` is empty.
    pub hixie: Option<crate::hixie::Handshake>,
}

/// Why an upgrade request is refused; the text is upstream's reason phrase for the 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("Missing Sec-WebSocket-Version header")]
    MissingVersion,
    #[error("Unsupported protocol version {0}")]
    UnsupportedVersion(String),
    #[error("Missing Sec-WebSocket-Key header")]
    MissingKey,
    /// RFC 6455 4.2.1: the key is the base64 of 16 random bytes.
    #[error("Invalid Sec-WebSocket-Key header")]
    InvalidKey,
    /// RFC 6455 4.1: the upgrade needs HTTP/1.1 or newer; an HTTP/1.0 client cannot use it.
    #[error("WebSocket upgrade needs HTTP/1.1")]
    OldHttp,
    #[error("Invalid protocol selected")]
    InvalidProtocol,
    /// A Hixie-75/76 handshake without `--hixie`; the page says how to enable it.
    #[error("Hixie WebSocket protocol not enabled")]
    HixieNotEnabled,
    /// A Hixie handshake after other requests on a `--web` connection: the -76 key bytes
    /// follow the head, which only the first request's hand-read head can take.
    #[error("Hixie handshake must be the first request")]
    HixieNotFirst,
    /// A malformed Hixie handshake; the text is the reason phrase.
    #[error("{0}")]
    Hixie(&'static str),
}

impl From<crate::hixie::Refusal> for HandshakeError {
    fn from(refusal: crate::hixie::Refusal) -> Self {
        use crate::hixie::Refusal;
        match refusal {
            Refusal::OldHttp => HandshakeError::OldHttp,
            Refusal::InvalidProtocol => HandshakeError::InvalidProtocol,
            Refusal::Malformed(reason) => HandshakeError::Hixie(reason),
        }
    }
}

/// True for a GET whose `Upgrade` header names `websocket` (upstream's test; anything else
/// goes to the web server).
pub fn is_upgrade(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::GET
        && headers
            .get_all(UPGRADE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("websocket"))
}

/// Validates an upgrade request (HTTP/1.1; WebSocket versions 13, 8 and 7, as upstream; a key
/// of 16 bytes) and picks the subprotocol; `extra` are the `--subprotocol` names.
pub fn accept(
    http: Version,
    headers: &HeaderMap,
    extra: &[String],
) -> Result<Accept, HandshakeError> {
    if http < Version::HTTP_11 {
        return Err(HandshakeError::OldHttp);
    }
    let version = headers
        .get(SEC_WEBSOCKET_VERSION)
        .ok_or(HandshakeError::MissingVersion)?;
    let version = String::from_utf8_lossy(version.as_bytes());
    let version = version.trim();
    if !matches!(version, "7" | "8" | "13") {
        return Err(HandshakeError::UnsupportedVersion(version.to_owned()));
    }
    let key = headers
        .get(SEC_WEBSOCKET_KEY)
        .map(|k| k.as_bytes().trim_ascii())
        .filter(|k| !k.is_empty())
        .ok_or(HandshakeError::MissingKey)?;
    let mut nonce = [0u8; 18];
    if base64::engine::general_purpose::STANDARD.decode_slice(key, &mut nonce) != Ok(16) {
        return Err(HandshakeError::InvalidKey);
    }
    let (protocol, mode) = choose_protocol(headers.get_all(SEC_WEBSOCKET_PROTOCOL).iter(), extra)?;
    Ok(Accept {
        accept_key: accept_key(key),
        protocol,
        mode,
        hixie: None,
    })
}

/// The GUID of RFC 6455 section 1.3, appended to the client's key before hashing.
const WEBSOCKET_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// `Sec-WebSocket-Accept`: base64 of the SHA-1 of the client's key and the GUID. ring (already
/// linked for TLS) provides SHA-1, so no WebSocket library is needed for this one value.
pub fn accept_key(key: &[u8]) -> String {
    use base64::Engine as _;
    let mut context = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    context.update(key);
    context.update(WEBSOCKET_GUID);
    base64::engine::general_purpose::STANDARD.encode(context.finish())
}

/// Subprotocol choice: the first offered name that is `binary` or one of the `--subprotocol`
/// names (`extra`) is answered (the latter with [`Mode::Other`]: bytes as with `binary`, the
/// client's text frames passed on too); failing that, `base64` selects the legacy
/// base64 mode; nothing offered means no header; only unknown names are refused. List
/// elements are trimmed (upstream does not trim, so `base64, binary` fails there).
pub fn choose_protocol<'a>(
    values: impl Iterator<Item = &'a HeaderValue>,
    extra: &[String],
) -> Result<(Option<Cow<'static, str>>, Mode), HandshakeError> {
    let mut offered_any = false;
    let mut base64 = false;
    for value in values {
        let value = String::from_utf8_lossy(value.as_bytes());
        for name in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            offered_any = true;
            match name {
                "binary" => return Ok((Some(Cow::Borrowed("binary")), Mode::Binary)),
                "base64" => base64 = true,
                _ => {
                    if let Some(known) = extra.iter().find(|known| *known == name) {
                        return Ok((Some(Cow::Owned(known.clone())), Mode::Other));
                    }
                }
            }
        }
    }
    match (offered_any, base64) {
        (false, _) => Ok((None, Mode::Binary)),
        (true, true) => Ok((Some(Cow::Borrowed("base64")), Mode::Base64)),
        (true, false) => Err(HandshakeError::InvalidProtocol),
    }
}

/// Whether `name` is an RFC 6455 subprotocol name: an HTTP token (RFC 2616 section 2.2:
/// visible ASCII without separators), as `--subprotocol` requires.
pub fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    fn protocol_with(
        offer: Option<&'static str>,
        extra: &[&str],
    ) -> Result<(Option<&'static str>, Mode), HandshakeError> {
        let map = offer
            .map(|o| headers(&[("sec-websocket-protocol", o)]))
            .unwrap_or_default();
        let extra: Vec<String> = extra.iter().map(|e| e.to_string()).collect();
        choose_protocol(map.get_all(SEC_WEBSOCKET_PROTOCOL).iter(), &extra)
            .map(|(p, mode)| (p.map(|p| &*String::leak(p.into_owned())), mode))
    }

    fn protocol_for(
        offer: Option<&'static str>,
    ) -> Result<(Option<&'static str>, Mode), HandshakeError> {
        protocol_with(offer, &[])
    }

    #[test]
    fn subprotocol_names_given_with_the_option_are_accepted_like_binary() {
        let extra = ["sip", "mqtt"];
        let with = |offer| protocol_with(Some(offer), &extra);
        assert_eq!(with("sip"), Ok((Some("sip"), Mode::Other)));
        assert_eq!(with("chat, mqtt, sip"), Ok((Some("mqtt"), Mode::Other)));
        // The first accepted name the client offers wins, binary included.
        assert_eq!(with("sip, binary"), Ok((Some("sip"), Mode::Other)));
        assert_eq!(with("binary, sip"), Ok((Some("binary"), Mode::Binary)));
        // binary or an extra name beats base64, as binary always has.
        assert_eq!(with("base64, sip"), Ok((Some("sip"), Mode::Other)));
        assert_eq!(with("base64"), Ok((Some("base64"), Mode::Base64)));
        assert_eq!(with("SIP"), Err(HandshakeError::InvalidProtocol));
        assert_eq!(with("chat"), Err(HandshakeError::InvalidProtocol));
        assert_eq!(protocol_with(None, &extra), Ok((None, Mode::Binary)));
    }

    #[test]
    fn subprotocol_names_must_be_tokens() {
        for good in [
            "sip",
            "v12.stomp",
            "x-my_proto~1",
            "mqtt",
            "a!#$%&'*+-.^`|~",
        ] {
            assert!(is_token(good), "{good}");
        }
        for bad in [
            "",
            "a b",
            "a,b",
            "a;b",
            "a/b",
            "a\"b",
            "caf\u{e9}",
            "a\tb",
            "{x}",
            "a=b",
        ] {
            assert!(!is_token(bad), "{bad:?}");
        }
    }

    #[test]
    fn subprotocol_choice_follows_upstream_but_trims_whitespace() {
        assert_eq!(protocol_for(None), Ok((None, Mode::Binary)));
        assert_eq!(protocol_for(Some("")), Ok((None, Mode::Binary)));
        assert_eq!(
            protocol_for(Some("binary")),
            Ok((Some("binary"), Mode::Binary))
        );
        assert_eq!(
            protocol_for(Some("base64, binary")),
            Ok((Some("binary"), Mode::Binary))
        );
        assert_eq!(
            protocol_for(Some("binary , base64")),
            Ok((Some("binary"), Mode::Binary))
        );
        assert_eq!(
            protocol_for(Some("base64")),
            Ok((Some("base64"), Mode::Base64))
        );
        assert_eq!(
            protocol_for(Some("chat")),
            Err(HandshakeError::InvalidProtocol)
        );
        assert_eq!(
            protocol_for(Some("chat, superchat")),
            Err(HandshakeError::InvalidProtocol)
        );
    }

    #[test]
    fn accept_key_matches_rfc_6455_example() {
        let map = headers(&[
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ]);
        let accept = accept(Version::HTTP_11, &map, &[]).unwrap();
        assert_eq!(accept.accept_key, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(accept.protocol, None);
    }

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    #[test]
    fn versions_and_keys_are_checked_with_upstream_messages() {
        let check =
            |pairs: &[(&'static str, &'static str)]| accept(Version::HTTP_11, &headers(pairs), &[]);
        let err = check(&[("sec-websocket-key", KEY)]).unwrap_err();
        assert_eq!(err.to_string(), "Missing Sec-WebSocket-Version header");
        let err =
            check(&[("sec-websocket-version", "12"), ("sec-websocket-key", KEY)]).unwrap_err();
        assert_eq!(err.to_string(), "Unsupported protocol version 12");
        let err = check(&[("sec-websocket-version", "8")]).unwrap_err();
        assert_eq!(err.to_string(), "Missing Sec-WebSocket-Key header");
        assert!(check(&[("sec-websocket-version", "7"), ("sec-websocket-key", KEY)]).is_ok());
    }

    #[test]
    fn a_key_that_is_not_16_bytes_of_base64_is_refused() {
        for key in [
            "x",
            "dGhlIHNhbXBsZSBub25jZQ",
            "dGhlIHNhbXBsZSBub25jZXg=",
            "!!!!",
        ] {
            let mut map = headers(&[("sec-websocket-version", "13")]);
            map.insert("sec-websocket-key", HeaderValue::from_static(key));
            assert_eq!(
                accept(Version::HTTP_11, &map, &[]),
                Err(HandshakeError::InvalidKey),
                "{key}"
            );
        }
    }

    #[test]
    fn an_http_1_0_upgrade_is_refused() {
        let map = headers(&[("sec-websocket-version", "13"), ("sec-websocket-key", KEY)]);
        assert_eq!(
            accept(Version::HTTP_10, &map, &[]),
            Err(HandshakeError::OldHttp)
        );
    }

    #[test]
    fn only_get_with_upgrade_websocket_is_an_upgrade() {
        let up = headers(&[("upgrade", "WebSocket")]);
        assert!(is_upgrade(&Method::GET, &up));
        assert!(!is_upgrade(&Method::POST, &up));
        assert!(!is_upgrade(&Method::GET, &headers(&[("upgrade", "h2c")])));
        assert!(!is_upgrade(&Method::GET, &HeaderMap::new()));
    }
}
