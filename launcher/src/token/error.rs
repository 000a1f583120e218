//! What a token lookup may say about itself: the [`TokenError`] of a failed lookup and the
//! [`token_tag`] that stands in for a token in logs. A leaf module: every back-end uses it.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use sha2::{Digest, Sha256};

/// Why a lookup failed (not "unknown token", which is `Ok(None)`). The message is one line and
/// never contains the token.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    /// A token file or directory could not be read.
    #[error("cannot read token source {}: {reason}", path.display())]
    Source { path: PathBuf, reason: String },
    /// The backend answered, but not with a usable target.
    #[error("{backend} returned an invalid target: {reason}")]
    BadTarget {
        backend: &'static str,
        reason: String,
    },
    /// The token API could not be reached or failed mid-answer.
    #[error("token API request failed: {0}")]
    Http(String),
    /// The token API did not answer in time.
    #[error("token API did not answer within {} ms", .0.as_millis())]
    HttpTimeout(Duration),
    /// Redis could not be reached or answered with an error.
    #[error("Redis lookup failed: {0}")]
    Redis(String),
    /// Redis did not answer in time.
    #[error("Redis did not answer within {} ms", .0.as_millis())]
    RedisTimeout(Duration),
    /// The lookup as a whole did not finish in time (whatever the backend was doing).
    #[error("token lookup did not finish within {} ms", .0.as_millis())]
    Deadline(Duration),
    /// The blocking task that reads token files did not finish.
    #[error("token file lookup task failed: {0}")]
    Task(String),
}

impl TokenError {
    /// Every value [`kind`](Self::kind) returns (the metrics create their series up front).
    pub const KINDS: [&'static str; 4] = ["timeout", "unavailable", "bad_answer", "internal"];

    /// A small, stable label for metrics and log fields: `"timeout"` (the backend or the lookup
    /// deadline ran out), `"unavailable"` (the source could not be read or reached, or refused
    /// us), `"bad_answer"` (it answered with something that is not a target) or `"internal"`.
    /// The caller answers all of them with 503; the label tells them apart without parsing
    /// messages, and never carries a token or an address (bounded cardinality).
    pub fn kind(&self) -> &'static str {
        match self {
            TokenError::HttpTimeout(_) | TokenError::RedisTimeout(_) | TokenError::Deadline(_) => {
                "timeout"
            }
            TokenError::Source { .. } | TokenError::Http(_) | TokenError::Redis(_) => "unavailable",
            TokenError::BadTarget { .. } => "bad_answer",
            TokenError::Task(_) => "internal",
        }
    }
}

/// A short, non-reversible tag of a token for logs (first 8 hex digits of its SHA-256), so log
/// lines about one token can be matched without the token itself being written anywhere.
pub fn token_tag(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    let mut tag = String::with_capacity(8);
    for byte in &digest[..4] {
        let _ = write!(tag, "{byte:02x}");
    }
    tag
}

/// An error and its sources on one line.
pub(super) fn one_line(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_listed_in_kinds() {
        let errors = [
            TokenError::Source {
                path: PathBuf::from("/x"),
                reason: "gone".into(),
            },
            TokenError::BadTarget {
                backend: "Redis",
                reason: "junk".into(),
            },
            TokenError::Http("refused".into()),
            TokenError::HttpTimeout(Duration::from_secs(1)),
            TokenError::Redis("refused".into()),
            TokenError::RedisTimeout(Duration::from_secs(1)),
            TokenError::Deadline(Duration::from_secs(1)),
            TokenError::Task("panicked".into()),
        ];
        for error in errors {
            assert!(TokenError::KINDS.contains(&error.kind()), "{error:?}");
        }
    }

    #[test]
    fn error_kinds_are_a_small_fixed_set() {
        let second = Duration::from_secs(1);
        let cases = [
            (TokenError::HttpTimeout(second), "timeout"),
            (TokenError::RedisTimeout(second), "timeout"),
            (TokenError::Deadline(second), "timeout"),
            (
                TokenError::Source {
                    path: "/x".into(),
                    reason: "gone".into(),
                },
                "unavailable",
            ),
            (TokenError::Http("refused".into()), "unavailable"),
            (TokenError::Redis("refused".into()), "unavailable"),
            (
                TokenError::BadTarget {
                    backend: "TokenRedis",
                    reason: "garbage".into(),
                },
                "bad_answer",
            ),
            (TokenError::Task("panicked".into()), "internal"),
        ];
        for (error, kind) in cases {
            assert_eq!(error.kind(), kind, "{error}");
        }
    }

    #[test]
    fn token_tag_is_short_stable_and_not_the_token() {
        let tag = token_tag("secret-token");
        assert_eq!(tag.len(), 8);
        assert!(tag.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(tag, token_tag("secret-token"));
        assert_ne!(tag, token_tag("secret-token2"));
        assert!(!tag.contains("secret"));
    }
}
