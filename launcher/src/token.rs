//! Token plugins (stub until the real module lands).
use crate::config::Target;

/// A configured token backend.
pub struct Tokens;

/// Why a lookup failed.
#[derive(Debug, thiserror::Error)]
#[error("token backend failed")]
pub struct TokenError;

impl Tokens {
    pub fn new(_plugin: &str, _source: Option<&str>) -> anyhow::Result<Tokens> {
        anyhow::bail!("token plugins are not built yet")
    }
    pub async fn lookup(&self, _token: &str) -> Result<Option<Target>, TokenError> {
        Ok(None)
    }
    pub fn name(&self) -> &str {
        "stub"
    }
}

pub fn token_from_request(
    _uri: &hyper::Uri,
    _headers: &hyper::HeaderMap,
    _host_token: bool,
) -> Option<String> {
    None
}

pub fn token_tag(_token: &str) -> String {
    String::new()
}
