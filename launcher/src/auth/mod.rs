//! Authentication: upstream's `--auth-plugin` classes and the `--allowed-origin` allow-list,
//! checked once per request (before any token lookup) and turned into an [`AuthReject`] whose
//! fields choose the HTTP response.
//!
//! Upstream (`websockify/auth_plugins.py`) hands a plugin the request headers, with the TLS client
//! certificate's commonName added as an `SSL_CLIENT_S_DN_CN` header. Its sanitiser only removes
//! names starting with upper-case `SSL_`, so a plain `ws://` client sending
//! `ssl_client_s_dn_cn: alice` passes `ClientCertCNAuth`. Here the verified certificate is a
//! separate argument of [`Auth::check`], and no request header is ever read for it.

use std::fmt;

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{HeaderMap, StatusCode};
use subtle::{Choice, ConstantTimeEq};

mod client_cert;

pub use client_cert::subject_cn;

/// Upstream's module path; `--auth-plugin` takes a class name with or without it.
const PLUGIN_PREFIX: &str = "websockify.auth_plugins.";

/// Standard base64 that also accepts missing padding and non-zero trailing bits, as Python's
/// `b64decode` does for the latter; browsers always pad, other clients may not.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// What the auth step decided against; the variant/fields choose the HTTP response.
#[derive(Debug, Clone)]
pub struct AuthReject {
    /// 400, 401 or 403.
    pub status: StatusCode,
    /// Short, shown to the client (e.g. "Invalid Origin").
    pub reason: &'static str,
    /// Extra response headers, e.g. `WWW-Authenticate`.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Detail for the log; never a password or an `Authorization` value.
    pub log: String,
}

impl AuthReject {
    /// 401 with the Basic challenge, so browsers ask the user for credentials.
    fn unauthorized(log: String) -> AuthReject {
        AuthReject {
            status: StatusCode::UNAUTHORIZED,
            reason: "Unauthorized",
            headers: vec![(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"Websockify\""),
            )],
            log,
        }
    }

    /// 400 for an `Authorization` header that cannot be parsed.
    fn malformed(log: String) -> AuthReject {
        AuthReject {
            status: StatusCode::BAD_REQUEST,
            reason: "Malformed Authorization header",
            headers: Vec::new(),
            log,
        }
    }

    /// 403: the client is known or claims to be someone who may not connect.
    fn forbidden(reason: &'static str, log: String) -> AuthReject {
        AuthReject {
            status: StatusCode::FORBIDDEN,
            reason,
            headers: Vec::new(),
            log,
        }
    }
}

impl AuthReject {
    /// Whether the browser origin was refused (`--allowed-origin`, `ExpectOrigin`), as opposed
    /// to the credentials or certificate: for the metrics' `origin` reason.
    pub fn about_origin(&self) -> bool {
        matches!(self.reason, "Origin not allowed" | "Invalid Origin")
    }
}

impl fmt::Display for AuthReject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.reason, self.log)
    }
}

/// Why the auth options cannot be used; each message names the option to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthConfigError {
    #[error(
        "unknown --auth-plugin '{name}'; use one of BasePlugin, BasicHTTPAuth, ExpectOrigin, \
         ClientCertCNAuth (optionally prefixed with websockify.auth_plugins.; custom Python \
         plugins are not supported)"
    )]
    UnknownPlugin { name: String },
    /// Upstream's usage error, word for word.
    #[error("You must use --auth-plugin to use --auth-source")]
    SourceWithoutPlugin,
    #[error("--auth-plugin {plugin} needs --auth-source {usage}")]
    MissingSource {
        plugin: &'static str,
        usage: &'static str,
    },
    /// The value itself is not echoed: it may be the password.
    #[error("--auth-source for BasicHTTPAuth must be USER:PASSWORD, but it contains no ':'")]
    NoColon,
    #[error("--auth-source for {plugin} is empty; give {usage}")]
    EmptyList {
        plugin: &'static str,
        usage: &'static str,
    },
    #[error("--allowed-origin '{origin}' {why}")]
    BadAllowedOrigin { origin: String, why: &'static str },
}

/// Configured authentication: an optional plugin plus an optional origin allow-list.
#[derive(Clone)]
pub struct Auth {
    plugin: Option<Plugin>,
    /// `--allowed-origin` entries, normalised by [`normalize_allowed_origin`].
    allowed_origins: Vec<String>,
}

/// One of upstream's classes in `websockify.auth_plugins`.
#[derive(Clone)]
enum Plugin {
    /// `BasePlugin`: upstream's base class, which allows everything.
    Base,
    /// `BasicHTTPAuth`, source `user:password`.
    Basic(BasicCredentials),
    /// `ExpectOrigin`, source: the allowed `Origin` values, matched exactly.
    ExpectOrigin(Vec<String>),
    /// `ClientCertCNAuth`, source: the allowed client-certificate commonNames.
    ClientCertCn(Vec<String>),
}

impl Plugin {
    fn new(name: &str, source: Option<&str>) -> Result<Plugin, AuthConfigError> {
        // Upstream imports `websockify.auth_plugins.<name>` for a name without a dot and the
        // dotted path as given otherwise; only the built-in classes exist here.
        match name.strip_prefix(PLUGIN_PREFIX).unwrap_or(name) {
            "BasePlugin" => Ok(Plugin::Base),
            "BasicHTTPAuth" => {
                let source = source.ok_or(AuthConfigError::MissingSource {
                    plugin: "BasicHTTPAuth",
                    usage: "USER:PASSWORD",
                })?;
                BasicCredentials::new(source).map(Plugin::Basic)
            }
            "ExpectOrigin" => {
                let origins = word_list(source, "ExpectOrigin", "'ORIGIN [ORIGIN ...]'")?;
                for origin in origins.iter().filter(|o| !looks_like_browser_origin(o)) {
                    tracing::warn!(
                        %origin,
                        "ExpectOrigin compares exactly, and browsers send lower-case origins \
                         without a path: this entry will never match"
                    );
                }
                Ok(Plugin::ExpectOrigin(origins))
            }
            "ClientCertCNAuth" => {
                word_list(source, "ClientCertCNAuth", "'CN [CN ...]'").map(Plugin::ClientCertCn)
            }
            _ => Err(AuthConfigError::UnknownPlugin {
                name: name.to_owned(),
            }),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Plugin::Base => "BasePlugin",
            Plugin::Basic(_) => "BasicHTTPAuth",
            Plugin::ExpectOrigin(_) => "ExpectOrigin",
            Plugin::ClientCertCn(_) => "ClientCertCNAuth",
        }
    }
}

/// A whitespace-separated `--auth-source` list (Python's `str.split()`), which must not be empty.
fn word_list(
    source: Option<&str>,
    plugin: &'static str,
    usage: &'static str,
) -> Result<Vec<String>, AuthConfigError> {
    let source = source.ok_or(AuthConfigError::MissingSource { plugin, usage })?;
    let words: Vec<String> = source.split_whitespace().map(str::to_owned).collect();
    if words.is_empty() {
        return Err(AuthConfigError::EmptyList { plugin, usage });
    }
    Ok(words)
}

/// Whether `origin` could equal what a browser sends: lower case, and no path after the host.
fn looks_like_browser_origin(origin: &str) -> bool {
    let no_path = origin
        .split_once("://")
        .is_some_and(|(_, rest)| !rest.contains('/'));
    (no_path || origin == "null") && !origin.bytes().any(|b| b.is_ascii_uppercase())
}

impl Auth {
    /// `plugin` is upstream's class name, bare (`BasicHTTPAuth`) or dotted
    /// (`websockify.auth_plugins.BasicHTTPAuth`); unknown names are an error listing the known
    /// ones; bad sources are errors naming --auth-source. `allowed_origins` comes from
    /// `--allowed-origin` (empty = no origin check). Errors are [`AuthConfigError`]s.
    pub fn new(
        plugin: Option<&str>,
        source: Option<&str>,
        allowed_origins: &[String],
    ) -> anyhow::Result<Auth> {
        let allowed_origins = allowed_origins
            .iter()
            .map(|origin| normalize_allowed_origin(origin))
            .collect::<Result<Vec<_>, _>>()?;
        let plugin = match plugin {
            Some(name) => Some(Plugin::new(name, source)?),
            None if source.is_some() => return Err(AuthConfigError::SourceWithoutPlugin.into()),
            None => None,
        };
        Ok(Auth {
            plugin,
            allowed_origins,
        })
    }

    /// True when nothing is configured (no plugin, no origin list).
    pub fn is_empty(&self) -> bool {
        self.plugin.is_none() && self.allowed_origins.is_empty()
    }

    /// The plugin's upstream class name (bare), for the start-up log.
    pub fn plugin_name(&self) -> Option<&'static str> {
        self.plugin.as_ref().map(Plugin::name)
    }

    /// Checks one request. `client_cert` is the DER of the verified TLS client certificate (end
    /// entity), if any. The `--allowed-origin` list is checked before the plugin.
    pub fn check(&self, headers: &HeaderMap, client_cert: Option<&[u8]>) -> Result<(), AuthReject> {
        if !self.allowed_origins.is_empty() {
            check_allowed_origin(&self.allowed_origins, headers)?;
        }
        match &self.plugin {
            None | Some(Plugin::Base) => Ok(()),
            Some(Plugin::Basic(credentials)) => credentials.check(headers),
            Some(Plugin::ExpectOrigin(expected)) => expect_origin(expected, headers),
            Some(Plugin::ClientCertCn(allowed)) => client_cert_cn(allowed, client_cert),
        }
    }
}

/// Never shows the password.
impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth")
            .field("plugin", &self.plugin_name())
            .field("allowed_origins", &self.allowed_origins)
            .finish()
    }
}

/// The expected `user:password` of `BasicHTTPAuth`.
#[derive(Clone)]
struct BasicCredentials {
    /// As UTF-8, which current browsers send.
    utf8: Vec<u8>,
    /// As ISO-8859-1, upstream's decoding, when the source has non-ASCII characters that all fit.
    latin1: Option<Vec<u8>>,
}

impl BasicCredentials {
    fn new(source: &str) -> Result<BasicCredentials, AuthConfigError> {
        // Upstream splits at the first ':', so the password may contain ':' but the user not.
        let Some((_, password)) = source.split_once(':') else {
            return Err(AuthConfigError::NoColon);
        };
        if password.is_empty() {
            tracing::warn!("--auth-source for BasicHTTPAuth has an empty password");
        }
        let latin1 = if source.is_ascii() {
            None
        } else {
            source.chars().map(|c| u8::try_from(c).ok()).collect()
        };
        Ok(BasicCredentials {
            utf8: source.as_bytes().to_vec(),
            latin1,
        })
    }

    /// Compares the whole decoded `user:password` with both encodings, without short-circuiting
    /// on the user name or between the two encodings.
    fn matches(&self, given: &[u8]) -> bool {
        let mut equal = ct_eq(given, &self.utf8);
        if let Some(latin1) = &self.latin1 {
            equal |= ct_eq(given, latin1);
        }
        equal.into()
    }

    fn check(&self, headers: &HeaderMap) -> Result<(), AuthReject> {
        let values: Vec<&HeaderValue> = headers.get_all(header::AUTHORIZATION).iter().collect();
        let value = match values.as_slice() {
            [] => {
                return Err(AuthReject::unauthorized(
                    "BasicHTTPAuth: no Authorization header".to_owned(),
                ));
            }
            [one] => one.as_bytes(),
            // Authorization is not a list field, so it may appear once (RFC 9110 section 5.3).
            _ => {
                return Err(AuthReject::malformed(
                    "BasicHTTPAuth: several Authorization headers".to_owned(),
                ));
            }
        };
        let mut parts = value.splitn(2, |&b| b == b' ');
        let scheme = parts.next().unwrap_or_default();
        let token = parts.next().unwrap_or_default().trim_ascii();
        if !scheme.eq_ignore_ascii_case(b"Basic") {
            // Upstream answers 403 here. RFC 9110 (sections 11.6.1 and 15.5.2) says credentials
            // the server cannot accept, another scheme included, get 401 with a challenge for the
            // scheme it does take, so a browser holding stale Bearer/Negotiate credentials asks
            // the user for Basic ones instead of failing for good.
            // The scheme is not logged: a client that leaves it out sends its credentials there.
            return Err(AuthReject::unauthorized(
                "BasicHTTPAuth: Authorization scheme is not Basic".to_owned(),
            ));
        }
        // Upstream crashes on bad base64 and closes with no response; 400 says what is wrong.
        let Ok(decoded) = BASE64.decode(token) else {
            return Err(AuthReject::malformed(
                "BasicHTTPAuth: Basic credentials are not valid base64".to_owned(),
            ));
        };
        let Some(colon) = decoded.iter().position(|&b| b == b':') else {
            return Err(AuthReject::malformed(
                "BasicHTTPAuth: Basic credentials have no ':' between user and password".to_owned(),
            ));
        };
        if self.matches(&decoded) {
            return Ok(());
        }
        let user = decoded.get(..colon).unwrap_or_default();
        Err(AuthReject::unauthorized(format!(
            "BasicHTTPAuth: wrong user name or password (user '{}')",
            printable(user)
        )))
    }
}

/// `given == secret` without data-dependent exits: one pass over all of `given` that never stops
/// at the first differing byte or on a length mismatch (`subtle`'s slice `ct_eq` returns early
/// when the lengths differ), so response timing does not show how much of a guess was right.
/// Only `cycle`'s wrap-around, once per `secret.len()` bytes, depends on the secret at all.
fn ct_eq(given: &[u8], secret: &[u8]) -> Choice {
    if secret.is_empty() {
        // Never the case for credentials (they contain ':'); whether it is empty is no secret.
        return Choice::from(u8::from(given.is_empty()));
    }
    let mut equal = given.len().ct_eq(&secret.len());
    for (g, s) in given.iter().zip(secret.iter().cycle()) {
        equal &= g.ct_eq(s);
    }
    equal
}

/// All `Origin` header values of a request (browsers send exactly one).
fn origins(headers: &HeaderMap) -> Vec<&HeaderValue> {
    headers.get_all(header::ORIGIN).iter().collect()
}

/// `'a', 'b'` for the log, or `'None'` like upstream's `'%s' % None`.
fn shown_origins(values: &[&HeaderValue]) -> String {
    if values.is_empty() {
        return "'None'".to_owned();
    }
    let quoted: Vec<String> = values
        .iter()
        .map(|v| format!("'{}'", printable(v.as_bytes())))
        .collect();
    quoted.join(", ")
}

/// Python's `repr` of a list of strings: `['a', 'b']`, as upstream's log line shows it.
fn python_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| format!("'{i}'")).collect();
    format!("[{}]", quoted.join(", "))
}

/// `--allowed-origin` (beyond upstream).
///
/// Browsers always send `Origin` on a WebSocket upgrade, whatever page opens it, so a page on
/// another site (cross-site WebSocket hijacking, which rides on cached Basic credentials or
/// cookies) is always caught here. A request without `Origin` comes from a non-browser client
/// (a native VNC client, websocat), which no web page can impersonate; it is let through and left
/// to the plugin.
fn check_allowed_origin(allowed: &[String], headers: &HeaderMap) -> Result<(), AuthReject> {
    let values = origins(headers);
    match values.as_slice() {
        [] => Ok(()),
        [one]
            if allowed
                .iter()
                .any(|a| a.as_bytes().eq_ignore_ascii_case(one.as_bytes())) =>
        {
            Ok(())
        }
        _ => Err(AuthReject::forbidden(
            "Origin not allowed",
            format!(
                "Origin {} is not in --allowed-origin {}",
                shown_origins(&values),
                python_list(allowed)
            ),
        )),
    }
}

/// `ExpectOrigin`: exactly one `Origin` header, equal to one of the list (case-sensitive, like
/// upstream). Several `Origin` headers are refused (upstream would look at the first).
fn expect_origin(expected: &[String], headers: &HeaderMap) -> Result<(), AuthReject> {
    let values = origins(headers);
    if let [one] = values.as_slice()
        && expected.iter().any(|e| e.as_bytes() == one.as_bytes())
    {
        return Ok(());
    }
    Err(AuthReject::forbidden(
        "Invalid Origin",
        format!(
            "Invalid Origin Header: Expected one of {}, got {}",
            python_list(expected),
            shown_origins(&values)
        ),
    ))
}

/// `ClientCertCNAuth`: only the verified certificate counts; headers are not even looked at.
fn client_cert_cn(allowed: &[String], client_cert: Option<&[u8]>) -> Result<(), AuthReject> {
    let Some(der) = client_cert else {
        return Err(AuthReject::forbidden(
            "Client certificate required",
            "ClientCertCNAuth: no verified client certificate (the client must connect over \
             TLS, and websockify needs --verify-client)"
                .to_owned(),
        ));
    };
    let Some(cn) = subject_cn(der) else {
        return Err(AuthReject::forbidden(
            "Client certificate not allowed",
            "ClientCertCNAuth: the client certificate's subject has no readable commonName"
                .to_owned(),
        ));
    };
    if allowed.contains(&cn) {
        Ok(())
    } else {
        Err(AuthReject::forbidden(
            "Client certificate not allowed",
            format!(
                "ClientCertCNAuth: client certificate CN '{}' is not in --auth-source",
                printable(cn.as_bytes())
            ),
        ))
    }
}

/// Client-controlled bytes made safe for a log line: lossy UTF-8, control characters escaped,
/// at most 200 characters.
fn printable(bytes: &[u8]) -> String {
    const MAX: usize = 200;
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == MAX {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Checks one `--allowed-origin` entry and returns the form compared with `Origin` headers:
/// lower case, default port and a single trailing `/` removed.
fn normalize_allowed_origin(given: &str) -> Result<String, AuthConfigError> {
    let bad = |why| AuthConfigError::BadAllowedOrigin {
        origin: given.to_owned(),
        why,
    };
    const NOT_AN_ORIGIN: &str =
        "is not an origin; write scheme://host[:port] with no path, e.g. https://vnc.example.org";
    let origin = given.trim();
    if origin.contains('*') {
        return Err(bad(
            "has a wildcard, which is not supported; list each origin, or leave out \
             --allowed-origin to allow every origin",
        ));
    }
    if origin.eq_ignore_ascii_case("null") {
        // Browsers send `Origin: null` for sandboxed iframes, data: URLs and files, so any site
        // can produce it: allowing it would allow every site.
        return Err(bad(
            "cannot be allowed: any web page can send 'null' from a sandboxed iframe",
        ));
    }
    let Some((scheme, rest)) = origin.split_once("://") else {
        return Err(bad(NOT_AN_ORIGIN));
    };
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    let authority_ok = !authority.is_empty()
        && !authority.contains(|c: char| {
            matches!(c, '/' | '?' | '#' | '@' | '\\' | ',') || c.is_whitespace() || c.is_control()
        });
    if !scheme_ok || !authority_ok {
        return Err(bad(NOT_AN_ORIGIN));
    }
    let (host, port) = split_port(authority).ok_or_else(|| bad(NOT_AN_ORIGIN))?;
    let scheme = scheme.to_ascii_lowercase();
    let host = host.to_ascii_lowercase();
    // Browsers leave the default port out of the origin they send.
    let default_port = match scheme.as_str() {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    };
    Ok(match port {
        Some(port) if Some(port) != default_port => format!("{scheme}://{host}:{port}"),
        _ => format!("{scheme}://{host}"),
    })
}

/// Splits `host[:port]` or `[v6]:port`; None if the host or port is malformed.
fn split_port(authority: &str) -> Option<(&str, Option<u16>)> {
    let host_end = authority.rfind(']').map_or(0, |i| i + 1);
    let (host, port) = match authority.get(host_end..)?.rfind(':') {
        None => (authority, None),
        Some(colon) => {
            let (host, port) = authority.split_at_checked(host_end + colon)?;
            let digits = port.strip_prefix(':')?;
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            (host, Some(digits.parse::<u16>().ok()?))
        }
    };
    let bracketed = host.starts_with('[') && host.ends_with(']') && host.len() > 2;
    let plain = !host.is_empty() && !host.contains(['[', ']', ':']);
    (bracketed || plain).then_some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
    use rcgen::{DistinguishedName, DnType};

    use super::client_cert::tests::{cert_for, cert_with};

    const CHALLENGE: &str = "Basic realm=\"Websockify\"";

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn basic(user_pass: &[u8]) -> String {
        format!("Basic {}", STANDARD.encode(user_pass))
    }

    fn auth(plugin: &str, source: &str) -> Auth {
        Auth::new(Some(plugin), Some(source), &[]).unwrap()
    }

    fn config_error(
        plugin: Option<&str>,
        source: Option<&str>,
        origins: &[&str],
    ) -> AuthConfigError {
        let origins: Vec<String> = origins.iter().map(|o| o.to_string()).collect();
        Auth::new(plugin, source, &origins)
            .unwrap_err()
            .downcast::<AuthConfigError>()
            .unwrap()
    }

    fn assert_challenge(reject: &AuthReject) {
        assert_eq!(reject.status, StatusCode::UNAUTHORIZED);
        assert_eq!(reject.reason, "Unauthorized");
        assert_eq!(
            reject.headers,
            vec![(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(CHALLENGE)
            )]
        );
    }

    fn assert_status(reject: &AuthReject, status: StatusCode, reason: &str) {
        assert_eq!((reject.status, reject.reason), (status, reason), "{reject}");
        assert!(reject.headers.is_empty(), "{reject:?}");
    }

    // ---- constant-time comparison ----

    fn eq(a: &[u8], b: &[u8]) -> bool {
        ct_eq(a, b).into()
    }

    #[test]
    fn ct_eq_is_true_only_for_identical_bytes() {
        assert!(eq(b"alice:secret", b"alice:secret"));
        assert!(eq(b"", b""));
        assert!(!eq(b"Alice:secret", b"alice:secret")); // first byte
        assert!(!eq(b"alice:secreT", b"alice:secret")); // last byte
        assert!(!eq(b"alice:secre", b"alice:secret")); // prefix
        assert!(!eq(b"alice:secretX", b"alice:secret")); // longer
        assert!(!eq(b"alice:secretalice:secret", b"alice:secret")); // repeats the secret
        assert!(!eq(b"", b"alice:secret"));
        assert!(!eq(b"x", b""));
    }

    #[test]
    fn ct_eq_compares_every_byte_value() {
        let secret: Vec<u8> = (0..=255).collect();
        assert!(eq(&secret, &secret));
        for i in 0..secret.len() {
            let mut other = secret.clone();
            other[i] ^= 0x80;
            assert!(!eq(&other, &secret), "difference at {i} missed");
        }
    }

    // ---- BasicHTTPAuth ----

    #[test]
    fn basic_accepts_the_right_credentials() {
        let a = auth("BasicHTTPAuth", "alice:secret");
        let h = headers(&[("authorization", &basic(b"alice:secret"))]);
        assert!(a.check(&h, None).is_ok());
    }

    #[test]
    fn basic_scheme_is_case_insensitive_and_padding_optional() {
        let a = auth("BasicHTTPAuth", "alice:secret");
        let token = STANDARD.encode("alice:secret");
        for value in [
            format!("basic {token}"),
            format!("BASIC {token}"),
            format!("Basic   {token}"),
        ] {
            let h = headers(&[("authorization", &value)]);
            assert!(a.check(&h, None).is_ok(), "{value}");
        }
        let a = auth("BasicHTTPAuth", "alice:secret1");
        let unpadded = STANDARD_NO_PAD.encode("alice:secret1");
        assert_ne!(unpadded, STANDARD.encode("alice:secret1"));
        let h = headers(&[("authorization", &format!("Basic {unpadded}"))]);
        assert!(a.check(&h, None).is_ok());
    }

    #[test]
    fn basic_without_authorization_gets_401_with_the_challenge() {
        let a = auth("BasicHTTPAuth", "alice:secret");
        let reject = a.check(&HeaderMap::new(), None).unwrap_err();
        assert_challenge(&reject);
        assert_eq!(reject.log, "BasicHTTPAuth: no Authorization header");
    }

    #[test]
    fn basic_with_another_scheme_gets_401_with_the_challenge() {
        let a = auth("BasicHTTPAuth", "alice:secret");
        let token = STANDARD.encode("alice:secret");
        for value in [
            format!("Bearer {token}"),
            format!("Basic{token}"),
            token.clone(),
            String::new(),
            "Digest username=\"alice\"".to_owned(),
        ] {
            let reject = a
                .check(&headers(&[("authorization", &value)]), None)
                .unwrap_err();
            assert_challenge(&reject);
            assert_eq!(
                reject.log,
                "BasicHTTPAuth: Authorization scheme is not Basic"
            );
        }
    }

    #[test]
    fn basic_with_bad_base64_gets_400() {
        let a = auth("BasicHTTPAuth", "alice:secret");
        let token = STANDARD.encode("alice:secret");
        for value in [
            "Basic !!!!".to_owned(),
            "Basic YWxpY2U6c2VjcmV0=====".to_owned(),
            format!("Basic {}", &token[..token.len() - 3]), // one char left in a group
            "Basic YWxp Y2U6c2VjcmV0".to_owned(),
            "Basic YWxpY2U6c2VjcmV0%".to_owned(),
        ] {
            let reject = a
                .check(&headers(&[("authorization", &value)]), None)
                .unwrap_err();
            assert_status(
                &reject,
                StatusCode::BAD_REQUEST,
                "Malformed Authorization header",
            );
            assert_eq!(
                reject.log, "BasicHTTPAuth: Basic credentials are not valid base64",
                "{value}"
            );
        }
    }

    #[test]
    fn basic_without_colon_or_credentials_gets_400() {
        let a = auth("BasicHTTPAuth", "alice:secret");
        for value in [
            basic(b"alicesecret"),
            "Basic".to_owned(),
            "Basic ".to_owned(),
        ] {
            let reject = a
                .check(&headers(&[("authorization", &value)]), None)
                .unwrap_err();
            assert_status(
                &reject,
                StatusCode::BAD_REQUEST,
                "Malformed Authorization header",
            );
            assert!(reject.log.contains("no ':'"), "{value}: {}", reject.log);
        }
    }

    #[test]
    fn basic_with_two_authorization_headers_gets_400() {
        let a = auth("BasicHTTPAuth", "alice:secret");
        let good = basic(b"alice:secret");
        let h = headers(&[("authorization", &good), ("authorization", &good)]);
        let reject = a.check(&h, None).unwrap_err();
        assert_status(
            &reject,
            StatusCode::BAD_REQUEST,
            "Malformed Authorization header",
        );
    }

    #[test]
    fn basic_with_wrong_credentials_gets_401_and_logs_no_password() {
        let a = auth("BasicHTTPAuth", "alice:secret");
        for (given, user) in [
            (&b"alice:wrong"[..], "alice"),
            (b"bob:secret", "bob"),
            (b"alice:secretX", "alice"),
            (b"alice:", "alice"),
            (b":secret", ""),
            (b"alice:secret:", "alice"),
        ] {
            let value = basic(given);
            let reject = a
                .check(&headers(&[("authorization", &value)]), None)
                .unwrap_err();
            assert_challenge(&reject);
            assert_eq!(
                reject.log,
                format!("BasicHTTPAuth: wrong user name or password (user '{user}')")
            );
            assert!(!reject.log.contains("secret") && !reject.log.contains("wrong:"));
            assert!(!reject.log.contains(value.trim_start_matches("Basic ")));
        }
    }

    #[test]
    fn basic_password_may_contain_colons() {
        let a = auth("BasicHTTPAuth", "alice:se:cr:et");
        let ok = headers(&[("authorization", &basic(b"alice:se:cr:et"))]);
        assert!(a.check(&ok, None).is_ok());
        let wrong = headers(&[("authorization", &basic(b"alice:se"))]);
        assert_challenge(&a.check(&wrong, None).unwrap_err());
    }

    #[test]
    fn basic_accepts_utf8_and_iso_8859_1_encodings_of_the_source() {
        let a = auth("BasicHTTPAuth", "josé:pässword");
        let utf8 = headers(&[("authorization", &basic("josé:pässword".as_bytes()))]);
        assert!(a.check(&utf8, None).is_ok());
        // What upstream decodes: the same text as ISO-8859-1 bytes.
        let latin1 = headers(&[("authorization", &basic(b"jos\xe9:p\xe4ssword"))]);
        assert!(a.check(&latin1, None).is_ok());
        let reject = a
            .check(
                &headers(&[("authorization", &basic(b"jos\xe9:p\xe4sswort"))]),
                None,
            )
            .unwrap_err();
        assert_challenge(&reject);
        assert_eq!(
            reject.log,
            "BasicHTTPAuth: wrong user name or password (user 'jos\u{fffd}')"
        );
    }

    #[test]
    fn basic_source_beyond_latin1_matches_only_utf8() {
        let a = auth("BasicHTTPAuth", "zoë:密码");
        let utf8 = headers(&[("authorization", &basic("zoë:密码".as_bytes()))]);
        assert!(a.check(&utf8, None).is_ok());
        let latin1 = headers(&[("authorization", &basic(b"zo\xeb:??"))]);
        assert_challenge(&a.check(&latin1, None).unwrap_err());
    }

    #[test]
    fn basic_logs_hostile_user_names_escaped() {
        let a = auth("BasicHTTPAuth", "alice:secret");
        let user = format!("evil\n{}", "x".repeat(300));
        let value = basic(format!("{user}:pw").as_bytes());
        let reject = a
            .check(&headers(&[("authorization", &value)]), None)
            .unwrap_err();
        assert!(reject.log.contains("evil\\n") && !reject.log.contains('\n'));
        assert!(reject.log.chars().count() < 300, "{}", reject.log);
    }

    #[test]
    fn basic_needs_a_source_with_a_colon() {
        assert_eq!(
            config_error(Some("BasicHTTPAuth"), None, &[]),
            AuthConfigError::MissingSource {
                plugin: "BasicHTTPAuth",
                usage: "USER:PASSWORD"
            }
        );
        let err = config_error(Some("BasicHTTPAuth"), Some("justapassword"), &[]);
        assert_eq!(err, AuthConfigError::NoColon);
        let text = err.to_string();
        assert!(text.contains("--auth-source") && !text.contains("justapassword"));
        // Upstream accepts an empty user or password.
        assert!(Auth::new(Some("BasicHTTPAuth"), Some(":"), &[]).is_ok());
    }

    #[test]
    fn debug_output_hides_the_password() {
        let a = auth("BasicHTTPAuth", "alice:secret");
        let shown = format!("{a:?}");
        assert!(
            shown.contains("BasicHTTPAuth") && !shown.contains("secret"),
            "{shown}"
        );
    }

    // ---- ExpectOrigin ----

    #[test]
    fn expect_origin_accepts_listed_origins() {
        let a = auth("ExpectOrigin", "http://a.example  https://b.example:8443\n");
        for origin in ["http://a.example", "https://b.example:8443"] {
            assert!(a.check(&headers(&[("origin", origin)]), None).is_ok());
        }
    }

    #[test]
    fn expect_origin_refuses_a_missing_origin() {
        let a = auth("ExpectOrigin", "http://a.example https://b.example");
        let reject = a.check(&HeaderMap::new(), None).unwrap_err();
        assert_status(&reject, StatusCode::FORBIDDEN, "Invalid Origin");
        assert_eq!(
            reject.log,
            "Invalid Origin Header: Expected one of ['http://a.example', 'https://b.example'], \
             got 'None'"
        );
    }

    #[test]
    fn expect_origin_refuses_other_origins() {
        let a = auth("ExpectOrigin", "http://a.example https://b.example");
        let reject = a
            .check(&headers(&[("origin", "http://evil")]), None)
            .unwrap_err();
        assert_status(&reject, StatusCode::FORBIDDEN, "Invalid Origin");
        assert_eq!(
            reject.log,
            "Invalid Origin Header: Expected one of ['http://a.example', 'https://b.example'], \
             got 'http://evil'"
        );
        // Exact match, like upstream.
        for origin in [
            "HTTP://A.EXAMPLE",
            "http://a.example/",
            "http://a.example:80",
            "null",
        ] {
            let reject = a.check(&headers(&[("origin", origin)]), None).unwrap_err();
            assert_status(&reject, StatusCode::FORBIDDEN, "Invalid Origin");
        }
        let two = headers(&[("origin", "http://a.example"), ("origin", "http://evil")]);
        let reject = a.check(&two, None).unwrap_err();
        assert!(
            reject
                .log
                .ends_with("got 'http://a.example', 'http://evil'")
        );
    }

    #[test]
    fn expect_origin_needs_a_list() {
        for source in [None, Some(""), Some("  \t ")] {
            let err = config_error(Some("ExpectOrigin"), source, &[]);
            assert!(err.to_string().contains("--auth-source"), "{err}");
        }
    }

    // ---- ClientCertCNAuth ----

    #[test]
    fn client_cert_cn_accepts_a_listed_cn() {
        let a = auth("ClientCertCNAuth", "carol alice");
        assert!(a.check(&HeaderMap::new(), Some(&cert_for("alice"))).is_ok());
    }

    #[test]
    fn client_cert_cn_refuses_an_unlisted_cn() {
        let a = auth("ClientCertCNAuth", "alice");
        let reject = a
            .check(&HeaderMap::new(), Some(&cert_for("bob")))
            .unwrap_err();
        assert_status(
            &reject,
            StatusCode::FORBIDDEN,
            "Client certificate not allowed",
        );
        assert_eq!(
            reject.log,
            "ClientCertCNAuth: client certificate CN 'bob' is not in --auth-source"
        );
        // Exact match.
        let reject = a
            .check(&HeaderMap::new(), Some(&cert_for("Alice")))
            .unwrap_err();
        assert_status(
            &reject,
            StatusCode::FORBIDDEN,
            "Client certificate not allowed",
        );
    }

    #[test]
    fn client_cert_cn_refuses_a_client_without_certificate() {
        let a = auth("ClientCertCNAuth", "alice");
        let reject = a.check(&HeaderMap::new(), None).unwrap_err();
        assert_status(
            &reject,
            StatusCode::FORBIDDEN,
            "Client certificate required",
        );
    }

    #[test]
    fn client_cert_cn_refuses_a_certificate_without_cn() {
        let a = auth("ClientCertCNAuth", "alice");
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "alice");
        let reject = a
            .check(&HeaderMap::new(), Some(&cert_with(dn)))
            .unwrap_err();
        assert_status(
            &reject,
            StatusCode::FORBIDDEN,
            "Client certificate not allowed",
        );
        let reject = a.check(&HeaderMap::new(), Some(b"not a cert")).unwrap_err();
        assert_status(
            &reject,
            StatusCode::FORBIDDEN,
            "Client certificate not allowed",
        );
    }

    #[test]
    fn client_cert_cn_ignores_spoofed_headers() {
        // Upstream lets both of these through on a plain ws:// connection.
        let a = auth("ClientCertCNAuth", "alice");
        for name in [
            "ssl_client_s_dn_cn",
            "SSL_CLIENT_S_DN_CN",
            "Ssl_Client_S_Dn_Cn",
        ] {
            let spoof = headers(&[(name, "alice")]);
            let reject = a.check(&spoof, None).unwrap_err();
            assert_status(
                &reject,
                StatusCode::FORBIDDEN,
                "Client certificate required",
            );
            let reject = a.check(&spoof, Some(&cert_for("bob"))).unwrap_err();
            assert_status(
                &reject,
                StatusCode::FORBIDDEN,
                "Client certificate not allowed",
            );
            assert!(reject.log.contains("'bob'"), "{}", reject.log);
        }
    }

    #[test]
    fn client_cert_cn_needs_a_list() {
        for source in [None, Some(" ")] {
            let err = config_error(Some("ClientCertCNAuth"), source, &[]);
            assert!(err.to_string().contains("--auth-source"), "{err}");
        }
    }

    // ---- --allowed-origin ----

    fn with_origins(plugin: Option<&str>, source: Option<&str>, origins: &[&str]) -> Auth {
        let origins: Vec<String> = origins.iter().map(|o| o.to_string()).collect();
        Auth::new(plugin, source, &origins).unwrap()
    }

    #[test]
    fn allowed_origin_combines_with_basic_auth() {
        let a = with_origins(
            Some("BasicHTTPAuth"),
            Some("alice:secret"),
            &["https://vnc.example.org"],
        );
        let creds = basic(b"alice:secret");
        let ok = headers(&[
            ("origin", "https://vnc.example.org"),
            ("authorization", &creds),
        ]);
        assert!(a.check(&ok, None).is_ok());
        // A non-browser client without Origin is left to the plugin.
        assert!(
            a.check(&headers(&[("authorization", &creds)]), None)
                .is_ok()
        );
        assert_challenge(&a.check(&HeaderMap::new(), None).unwrap_err());
        let no_creds = headers(&[("origin", "https://vnc.example.org")]);
        assert_challenge(&a.check(&no_creds, None).unwrap_err());
        // Another site is refused before the plugin, even with good (cached) credentials, and
        // gets no challenge.
        let hijack = headers(&[
            ("origin", "https://evil.example"),
            ("authorization", &creds),
        ]);
        let reject = a.check(&hijack, None).unwrap_err();
        assert_status(&reject, StatusCode::FORBIDDEN, "Origin not allowed");
        assert_eq!(
            reject.log,
            "Origin 'https://evil.example' is not in --allowed-origin ['https://vnc.example.org']"
        );
    }

    #[test]
    fn allowed_origin_alone_checks_origins() {
        let a = with_origins(
            None,
            None,
            &["https://A.example:443/", "http://b.example:8080"],
        );
        assert!(!a.is_empty());
        assert_eq!(a.plugin_name(), None);
        for origin in [
            "https://a.example",
            "HTTPS://A.EXAMPLE",
            "http://b.example:8080",
        ] {
            assert!(
                a.check(&headers(&[("origin", origin)]), None).is_ok(),
                "{origin}"
            );
        }
        for origin in [
            "http://a.example",
            "https://a.example:8443",
            "null",
            "http://b.example",
        ] {
            let reject = a.check(&headers(&[("origin", origin)]), None).unwrap_err();
            assert_status(&reject, StatusCode::FORBIDDEN, "Origin not allowed");
        }
        let two = headers(&[
            ("origin", "https://a.example"),
            ("origin", "https://a.example"),
        ]);
        assert!(a.check(&two, None).is_err());
        // SSL_* headers mean nothing here either.
        assert!(a.check(&HeaderMap::new(), None).is_ok());
    }

    #[test]
    fn allowed_origin_normalises_entries() {
        for (given, expected) in [
            ("https://vnc.example.org", "https://vnc.example.org"),
            (" HTTPS://VNC.Example.org/ ", "https://vnc.example.org"),
            ("https://vnc.example.org:443", "https://vnc.example.org"),
            ("http://vnc.example.org:80", "http://vnc.example.org"),
            ("http://vnc.example.org:443", "http://vnc.example.org:443"),
            ("http://127.0.0.1:6080", "http://127.0.0.1:6080"),
            ("http://[::1]:6080", "http://[::1]:6080"),
            ("http://[::1]", "http://[::1]"),
            ("chrome-extension://abcdef", "chrome-extension://abcdef"),
        ] {
            assert_eq!(
                normalize_allowed_origin(given).as_deref(),
                Ok(expected),
                "{given}"
            );
        }
    }

    #[test]
    fn allowed_origin_rejects_non_origins() {
        for given in [
            "*",
            "https://*.example.org",
            "null",
            "",
            "vnc.example.org",
            "https://",
            "https://vnc.example.org/vnc.html",
            "https://vnc.example.org?x",
            "https://user@vnc.example.org",
            "https://vnc.example.org:",
            "https://vnc.example.org:99999",
            "https://vnc.example.org:8o",
            "https://a:b:80",
            "http://[::1",
            "http://[]:80",
            "1http://a.example",
            "https://a.example,https://b.example",
        ] {
            let err = config_error(None, None, &[given]);
            assert!(
                matches!(&err, AuthConfigError::BadAllowedOrigin { origin, .. } if origin == given),
                "{given}: {err:?}"
            );
            assert!(err.to_string().starts_with("--allowed-origin '"), "{err}");
        }
    }

    // ---- names, sources, BasePlugin ----

    #[test]
    fn plugin_names_bare_or_dotted() {
        for (name, source, plugin) in [
            ("BasicHTTPAuth", "a:b", "BasicHTTPAuth"),
            (
                "websockify.auth_plugins.BasicHTTPAuth",
                "a:b",
                "BasicHTTPAuth",
            ),
            (
                "websockify.auth_plugins.ExpectOrigin",
                "http://a",
                "ExpectOrigin",
            ),
            ("ClientCertCNAuth", "alice", "ClientCertCNAuth"),
            ("websockify.auth_plugins.BasePlugin", "", "BasePlugin"),
        ] {
            let a = Auth::new(Some(name), Some(source), &[]).unwrap();
            assert_eq!(a.plugin_name(), Some(plugin));
            assert!(!a.is_empty());
        }
    }

    #[test]
    fn unknown_plugin_names_list_the_known_ones() {
        for name in [
            "Foo",
            "basichttpauth",
            "mymodule.BasicHTTPAuth",
            "websockify.token_plugins.TokenFile",
            "websockify.auth_plugins.AuthenticationError",
            "websockify.auth_plugins.",
            "",
        ] {
            let err = config_error(Some(name), Some("a:b"), &[]);
            assert_eq!(
                err,
                AuthConfigError::UnknownPlugin {
                    name: name.to_owned()
                }
            );
            let text = err.to_string();
            assert!(
                text.starts_with(&format!("unknown --auth-plugin '{name}'")),
                "{text}"
            );
            for known in [
                "BasePlugin",
                "BasicHTTPAuth",
                "ExpectOrigin",
                "ClientCertCNAuth",
            ] {
                assert!(text.contains(known), "{text}");
            }
        }
    }

    #[test]
    fn source_without_plugin_is_upstreams_usage_error() {
        let err = config_error(None, Some("a:b"), &[]);
        assert_eq!(
            err.to_string(),
            "You must use --auth-plugin to use --auth-source"
        );
    }

    #[test]
    fn base_plugin_allows_everything() {
        let a = Auth::new(Some("BasePlugin"), None, &[]).unwrap();
        assert!(a.check(&HeaderMap::new(), None).is_ok());
        let h = headers(&[("authorization", "Basic !!!"), ("origin", "http://evil")]);
        assert!(a.check(&h, Some(b"junk")).is_ok());
    }

    #[test]
    fn nothing_configured_is_empty_and_allows_everything() {
        let a = Auth::new(None, None, &[]).unwrap();
        assert!(a.is_empty());
        assert_eq!(a.plugin_name(), None);
        assert!(
            a.check(&headers(&[("origin", "http://evil")]), None)
                .is_ok()
        );
    }

    #[test]
    fn reject_display_names_status_reason_and_detail() {
        let a = auth("ExpectOrigin", "http://a");
        let reject = a.check(&HeaderMap::new(), None).unwrap_err();
        assert_eq!(
            reject.to_string(),
            "403 Invalid Origin: Invalid Origin Header: Expected one of ['http://a'], got 'None'"
        );
    }
}
