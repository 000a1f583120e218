//! The PROXY protocol header parser (v1 text, v2 binary), and the header we send to targets.
//!
//! Invariants: no panic; a complete header lies within the input, and parses the same with
//! anything after it; a header built for any pair of addresses (v1 and v2, mixed families)
//! parses back to its length and its source (IPv4 mapped to IPv6 when the families differ).
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use websockify::proxy_header::{self, Parsed, Version};

fuzz_target!(|data: &[u8]| {
    if let Ok(Parsed::Complete { len, source }) = proxy_header::parse(data) {
        assert!(
            len > 0 && len <= data.len(),
            "length {len} of {}",
            data.len()
        );
        let mut longer = data[..len].to_vec();
        longer.extend_from_slice(b"GET / HTTP/1.1\r\n");
        assert_eq!(
            proxy_header::parse(&longer).ok(),
            Some(Parsed::Complete { len, source })
        );
    }

    // Round trip: addresses from the input.
    let mut bytes = [0u8; 38];
    let n = data.len().min(bytes.len());
    bytes[..n].copy_from_slice(&data[..n]);
    let address = |at: usize, v6: bool| -> SocketAddr {
        let port = u16::from_be_bytes([bytes[at], bytes[at + 1]]);
        let ip = if v6 {
            let octets: [u8; 16] = bytes[at + 2..at + 18].try_into().expect("16 bytes");
            IpAddr::V6(Ipv6Addr::from(octets))
        } else {
            let octets: [u8; 4] = bytes[at + 2..at + 6].try_into().expect("4 bytes");
            IpAddr::V4(Ipv4Addr::from(octets))
        };
        SocketAddr::new(ip, port)
    };
    let flags = bytes[37];
    let source = address(0, flags & 1 != 0);
    let destination = address(18, flags & 2 != 0);
    let expected = if source.is_ipv4() == destination.is_ipv4() {
        source
    } else {
        match source.ip() {
            IpAddr::V4(ip) => SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), source.port()),
            IpAddr::V6(_) => source,
        }
    };
    for version in [Version::V1, Version::V2] {
        let header = proxy_header::build(version, Some((source, destination)));
        let mut stream = header.clone();
        stream.extend_from_slice(data);
        assert_eq!(
            proxy_header::parse(&stream).ok(),
            Some(Parsed::Complete {
                len: header.len(),
                source: Some(expected)
            }),
            "{version:?} header for {source} -> {destination}: {header:?}"
        );
        let local = proxy_header::build(version, None);
        let mut stream = local.clone();
        stream.extend_from_slice(data);
        assert_eq!(
            proxy_header::parse(&stream).ok(),
            Some(Parsed::Complete {
                len: local.len(),
                source: None
            })
        );
    }
});
