//! The first step of a connection: wait (bounded) for its first byte and tell TLS from
//! plain HTTP by it, without consuming anything.

use std::io;
use std::time::Duration;

use tokio::net::TcpStream;

/// What the first byte says the client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniffed {
    /// A TLS ClientHello (0x16) or an SSLv2-style hello (0x80), as upstream detects.
    Tls,
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
pub async fn sniff(stream: &TcpStream, deadline: Duration) -> Result<Sniffed, SniffError> {
    let mut first = [0u8; 1];
    let n = tokio::time::timeout(deadline, stream.peek(&mut first))
        .await
        .map_err(|_| SniffError::Silent(deadline))??;
    if n == 0 {
        return Err(SniffError::Closed);
    }
    Ok(classify(first[0]))
}

/// Classifies a first byte.
pub fn classify(byte: u8) -> Sniffed {
    match byte {
        0x16 | 0x80 => Sniffed::Tls,
        _ => Sniffed::Plain,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_record_and_sslv2_hello_are_tls() {
        assert_eq!(classify(0x16), Sniffed::Tls);
        assert_eq!(classify(0x80), Sniffed::Tls);
        assert_eq!(classify(b'G'), Sniffed::Plain);
    }
}
