//! The PROXY protocol (HAProxy's `send-proxy` and `send-proxy-v2`): the header a load balancer
//! puts in front of each connection to say who the client is (`--proxy-protocol`), and the one
//! websockify puts in front of each target connection (`--target-proxy-protocol`).
//!
//! Parsing and building are the `ppp` crate's; this module only moves bytes. The header is read
//! without consuming anything that follows it: each attempt peeks at what has arrived, and
//! consumes exactly the header once it is complete (or everything peeked while it is not, since
//! all of that is header), so the TLS/HTTP sniffing that comes next sees the client's own bytes.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ppp::{HeaderResult, PartialResult as _, v1, v2};
use tokio::io::{AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::time::Instant;

use crate::stream::ClientStream;

/// Largest header accepted. A v1 header is at most 107 bytes; v2 headers from HAProxy carry a
/// few small TLVs. Larger ones are refused rather than buffered.
pub const MAX_HEADER: usize = 4096;

/// The PROXY protocol version to send to the target (`--target-proxy-protocol v1|v2`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// The text header: `PROXY TCP4 src dst sport dport\r\n`.
    V1,
    /// The binary header.
    V2,
}

/// Why a connection's PROXY header was refused; the connection is closed and counted.
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("no PROXY protocol header within {0:?} (is the load balancer sending one?)")]
    Timeout(Duration),
    #[error("closed before a complete PROXY protocol header")]
    Closed,
    #[error("not a PROXY protocol header ({0}); --proxy-protocol expects one on every connection")]
    Invalid(String),
    #[error("PROXY protocol header longer than {MAX_HEADER} bytes")]
    TooLarge,
    #[error("reading the PROXY protocol header failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads the PROXY header at the start of `stream` by `deadline`. Returns the client's address,
/// or `None` when the header names none (a v2 LOCAL command such as a health check, `UNKNOWN`,
/// or a unix-socket source): the direct peer is the client then.
pub async fn read(
    stream: &mut ClientStream,
    deadline: Instant,
    timeout: Duration,
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let mut consumed: Vec<u8> = Vec::new();
    let mut peeked = [0u8; 512];
    loop {
        let n = tokio::time::timeout_at(deadline, stream.peek(&mut peeked))
            .await
            .map_err(|_| ProxyHeaderError::Timeout(timeout))??;
        if n == 0 {
            return Err(ProxyHeaderError::Closed);
        }
        let mut candidate = consumed.clone();
        candidate.extend_from_slice(&peeked[..n]);
        match parse(&candidate)? {
            Parsed::Complete { len, source } => {
                let mut rest = vec![0u8; len - consumed.len()];
                stream.read_exact(&mut rest).await?;
                return Ok(source);
            }
            Parsed::Incomplete => {
                if candidate.len() >= MAX_HEADER {
                    return Err(ProxyHeaderError::TooLarge);
                }
                // Everything seen so far belongs to the header: take it, wait for the rest.
                stream.read_exact(&mut peeked[..n]).await?;
                consumed = candidate;
            }
        }
    }
}

/// A parse attempt over the bytes received so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A header of `len` bytes naming `source` (None: use the direct peer).
    Complete {
        len: usize,
        source: Option<SocketAddr>,
    },
    /// More bytes are needed.
    Incomplete,
}

/// Parses a PROXY header (v1 or v2) at the start of `input`.
pub fn parse(input: &[u8]) -> Result<Parsed, ProxyHeaderError> {
    // A v1 header ends at its first CRLF, within 107 bytes. ppp also takes a bare LF at the
    // end of what arrived so far (`PROXY UNKNOWN x \n`), which made the header's length
    // depend on how the bytes were cut into reads: so the line is cut here first.
    let mut v1_len = None;
    let input = if input.starts_with(b"PROXY") {
        match input.windows(2).position(|w| w == b"\r\n") {
            Some(end) if end + 2 <= V1_MAX_HEADER => {
                v1_len = Some(end + 2);
                &input[..end + 2]
            }
            Some(_) => return Err(v1_too_long()),
            None if input.len() >= V1_MAX_HEADER => return Err(v1_too_long()),
            None => return Ok(Parsed::Incomplete),
        }
    } else {
        input
    };
    let result = HeaderResult::parse(input);
    if result.is_incomplete() {
        // The whole v1 line is here: what ppp still finds incomplete is malformed.
        return match v1_len {
            Some(_) => Err(ProxyHeaderError::Invalid(
                "a v1 header line that is cut short".into(),
            )),
            None => Ok(Parsed::Incomplete),
        };
    }
    match result {
        HeaderResult::V1(Ok(header)) if v1_len.is_some_and(|len| len != header.header.len()) => {
            Err(ProxyHeaderError::Invalid(
                "a carriage return inside the v1 header line".into(),
            ))
        }
        HeaderResult::V1(Ok(header)) => {
            let source = match header.addresses {
                v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v1::Addresses::Unknown => None,
            };
            Ok(Parsed::Complete {
                len: header.header.len(),
                source,
            })
        }
        HeaderResult::V2(Ok(header)) => {
            let source = match (header.command, header.addresses) {
                (v2::Command::Local, _) => None,
                (v2::Command::Proxy, v2::Addresses::IPv4(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                (v2::Command::Proxy, v2::Addresses::IPv6(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                (v2::Command::Proxy, _) => None,
            };
            Ok(Parsed::Complete {
                len: header.len(),
                source,
            })
        }
        HeaderResult::V1(Err(err)) => Err(ProxyHeaderError::Invalid(err.to_string())),
        HeaderResult::V2(Err(err)) => Err(ProxyHeaderError::Invalid(err.to_string())),
    }
}

/// Longest v1 header, CRLF included (the PROXY protocol specification, section 2.1).
const V1_MAX_HEADER: usize = 107;

fn v1_too_long() -> ProxyHeaderError {
    ProxyHeaderError::Invalid(format!(
        "no CRLF within the first {V1_MAX_HEADER} bytes of a v1 header"
    ))
}

/// The header that tells the target who the client is: `addresses` are the real client and
/// the target's address on this connection; `None` when the client has no IP address (a unix
/// socket listener without a PROXY header): v1 `UNKNOWN`, v2 `LOCAL`.
pub fn build(version: Version, addresses: Option<(SocketAddr, SocketAddr)>) -> Vec<u8> {
    let addresses = addresses.map(|(source, destination)| same_family(source, destination));
    // Building into a Vec cannot fail; should it, an empty header makes the target refuse
    // the connection, which is what a wrong header would do too.
    match (version, addresses) {
        (Version::V1, Some(pair)) => v1::Addresses::from(pair).to_string().into_bytes(),
        (Version::V1, None) => v1::Addresses::Unknown.to_string().into_bytes(),
        (Version::V2, Some(pair)) => v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Stream,
            pair,
        )
        .build()
        .unwrap_or_default(),
        (Version::V2, None) => v2::Builder::new(
            v2::Version::Two | v2::Command::Local,
            v2::AddressFamily::Unspecified | v2::Protocol::Unspecified,
        )
        .build()
        .unwrap_or_default(),
    }
}

/// Writes the header in front of everything else sent to the target.
pub async fn send<T: AsyncWrite + Unpin>(
    target: &mut T,
    version: Version,
    addresses: Option<(SocketAddr, SocketAddr)>,
) -> std::io::Result<()> {
    target.write_all(&build(version, addresses)).await
}

/// Both addresses in one family (the header has one): IPv4 ones become IPv4-mapped IPv6 when
/// the other is IPv6.
fn same_family(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    fn v6(addr: SocketAddr) -> SocketAddr {
        match addr.ip() {
            IpAddr::V4(ip) => SocketAddr::from((ip.to_ipv6_mapped(), addr.port())),
            IpAddr::V6(_) => addr,
        }
    }
    if a.is_ipv4() == b.is_ipv4() {
        (a, b)
    } else {
        (v6(a), v6(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn v1_headers_name_the_client() {
        let header = b"PROXY TCP4 192.0.2.7 198.51.100.1 51234 6080\r\nGET / HTTP/1.1\r\n";
        assert_eq!(
            parse(header).unwrap(),
            Parsed::Complete {
                len: 46,
                source: Some(addr("192.0.2.7:51234"))
            }
        );
        let header = b"PROXY TCP6 2001:db8::7 2001:db8::1 51234 6080\r\n";
        assert_eq!(
            parse(header).unwrap(),
            Parsed::Complete {
                len: header.len(),
                source: Some(addr("[2001:db8::7]:51234"))
            }
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n").unwrap(),
            Parsed::Complete {
                len: 15,
                source: None
            }
        );
        assert_eq!(parse(b"PROXY TCP4 192.0").unwrap(), Parsed::Incomplete);
    }

    #[test]
    fn v2_headers_round_trip_and_local_means_the_peer() {
        let built = build(
            Version::V2,
            Some((addr("192.0.2.7:51234"), addr("198.51.100.1:6080"))),
        );
        let mut input = built.clone();
        input.extend_from_slice(b"\x16\x03\x01");
        assert_eq!(
            parse(&input).unwrap(),
            Parsed::Complete {
                len: built.len(),
                source: Some(addr("192.0.2.7:51234"))
            }
        );
        assert_eq!(parse(&built[..10]).unwrap(), Parsed::Incomplete);
        let local = build(Version::V2, None);
        assert_eq!(
            parse(&local).unwrap(),
            Parsed::Complete {
                len: 16,
                source: None
            }
        );
    }

    /// Found by fuzzing (fuzz/ proxy_header): ppp took `PROXY UNKNOWN 2.1 \n` (a bare LF at
    /// the end of the bytes so far) as a complete header, and the same bytes followed by a
    /// request line as a longer one. A v1 header now ends at its first CRLF only.
    #[test]
    fn a_v1_header_ends_at_its_first_crlf_whatever_follows() {
        assert_eq!(
            parse(b"PROXY UNKNOWN 2.1 \n").ok(),
            Some(Parsed::Incomplete)
        );
        let text = b"PROXY UNKNOWN 2.1 \nGET / HTTP/1.1\r\n";
        assert_eq!(
            parse(text).ok(),
            Some(Parsed::Complete {
                len: text.len(),
                source: None
            })
        );
        let header = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n";
        for cut in 0..header.len() {
            assert_eq!(
                parse(&header[..cut]).ok(),
                Some(Parsed::Incomplete),
                "{cut} bytes"
            );
        }
        let mut more = header.to_vec();
        more.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(
            parse(&more).ok(),
            Some(Parsed::Complete {
                len: header.len(),
                source: Some(addr("192.0.2.1:56324"))
            })
        );
        assert!(parse(b"PROXY UNKNOWN a\rb\r\n").is_err());
        assert!(parse(&[b"PROXY UNKNOWN ".as_slice(), &[b'x'; 100]].concat()).is_err());
    }

    #[test]
    fn anything_else_is_refused() {
        for input in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            b"\x16\x03\x01\x02\x00",
            b"PROXY TCP4 x y z w\r\n",
        ] {
            assert!(
                matches!(parse(input), Err(ProxyHeaderError::Invalid(_))),
                "{input:?}"
            );
        }
    }

    #[test]
    fn v1_header_for_the_target_mixes_families_as_ipv6() {
        let header = build(
            Version::V1,
            Some((addr("192.0.2.7:51234"), addr("[::1]:5900"))),
        );
        assert_eq!(
            String::from_utf8(header).unwrap(),
            "PROXY TCP6 ::ffff:192.0.2.7 ::1 51234 5900\r\n"
        );
        let header = build(
            Version::V1,
            Some((addr("192.0.2.7:51234"), addr("127.0.0.1:5900"))),
        );
        assert_eq!(
            String::from_utf8(header).unwrap(),
            "PROXY TCP4 192.0.2.7 127.0.0.1 51234 5900\r\n"
        );
        assert_eq!(build(Version::V1, None), b"PROXY UNKNOWN\r\n");
    }

    #[tokio::test]
    async fn reading_consumes_exactly_the_header_even_when_it_arrives_in_pieces() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let local = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut stream = tokio::net::TcpStream::connect(local).await.unwrap();
            stream.write_all(b"PROXY TCP4 192.0.2.7 ").await.unwrap();
            stream.flush().await.unwrap();
            tokio::task::yield_now().await;
            stream
                .write_all(b"198.51.100.1 51234 6080\r\nhello")
                .await
                .unwrap();
            stream
        });
        let (server, _) = listener.accept().await.unwrap();
        let mut stream = ClientStream::Tcp(server);
        let timeout = Duration::from_secs(5);
        let source = read(&mut stream, Instant::now() + timeout, timeout)
            .await
            .unwrap();
        assert_eq!(source, Some(addr("192.0.2.7:51234")));
        let mut rest = [0u8; 5];
        stream.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"hello");
        drop(client.await.unwrap());
    }
}
