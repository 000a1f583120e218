//! The first step of a connection: wait (bounded) for its first byte and tell TLS from
//! plain HTTP (or a Flash policy request) by it, without consuming anything.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::stream::ClientStream;

/// What the first byte says the client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniffed {
    /// A TLS ClientHello (0x16) or an SSLv2-style hello (0x80), as upstream detects.
    Tls,
    /// `<`: the start of a Flash `<policy-file-request/>` (never valid HTTP).
    FlashPolicy,
    /// Anything else: plain HTTP.
    Plain,
}

/// Why sniffing found nothing to serve.
#[derive(Debug, thiserror::Error)]
pub enum SniffError {
    #[error("no data within {0:?} of connecting")]
    Silent(Duration),
    #[error("closed before sending anything")]
    Closed,
    #[error("reading the first byte failed: {0}")]
    Io(#[from] io::Error),
}

/// Peeks at the first byte within `deadline` (upstream waits 3 s).
pub async fn sniff(stream: &ClientStream, deadline: Duration) -> Result<Sniffed, SniffError> {
    let first = tokio::time::timeout(deadline, stream.peek_first())
        .await
        .map_err(|_| SniffError::Silent(deadline))??;
    first.map(classify).ok_or(SniffError::Closed)
}

/// Classifies a first byte.
pub fn classify(byte: u8) -> Sniffed {
    match byte {
        0x16 | 0x80 => Sniffed::Tls,
        b'<' => Sniffed::FlashPolicy,
        _ => Sniffed::Plain,
    }
}

/// What a Flash client sends first.
pub const POLICY_REQUEST: &[u8] = b"<policy-file-request/>\0";
/// Upstream's answer: any domain, any port.
pub const POLICY_RESPONSE: &[u8] =
    b"<cross-domain-policy><allow-access-from domain=\"*\" to-ports=\"*\" /></cross-domain-policy>\n";

/// Answers a Flash policy request (read within `deadline`); anything else is dropped.
pub async fn answer_flash_policy(
    stream: &mut ClientStream,
    deadline: Duration,
) -> io::Result<bool> {
    let mut request = [0u8; POLICY_REQUEST.len()];
    let read = tokio::time::timeout(deadline, stream.read_exact(&mut request)).await;
    if !matches!(read, Ok(Ok(_))) || request != POLICY_REQUEST {
        return Ok(false);
    }
    stream.write_all(POLICY_RESPONSE).await?;
    stream.shutdown().await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_bytes_are_classified_like_upstream() {
        assert_eq!(classify(0x16), Sniffed::Tls);
        assert_eq!(classify(0x80), Sniffed::Tls);
        assert_eq!(classify(b'<'), Sniffed::FlashPolicy);
        assert_eq!(classify(b'G'), Sniffed::Plain);
    }
}
