//! Who the client is. Behind a load balancer the direct peer is the balancer; the real client
//! comes from the PROXY protocol header (`--proxy-protocol`, see `proxy_header`) or, from a
//! peer in `--trusted-proxy`, from the last `Forwarded: for=` / `X-Forwarded-For` entry. That
//! address is the one in the log lines, the session summary, the per-IP limit and the PROXY
//! header sent to the target; the direct peer stays in the debug lines.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use hyper::HeaderMap;
use hyper::header::{FORWARDED, HeaderName};
use ipnet::IpNet;

/// `X-Forwarded-For` (not in `http`'s constants).
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// A client address: an IP, and the port when the source told it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr {
    pub ip: IpAddr,
    pub port: Option<u16>,
}

impl ClientAddr {
    /// As a socket address, port 0 when unknown (for the PROXY header to the target).
    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.port.unwrap_or(0))
    }
}

impl From<SocketAddr> for ClientAddr {
    fn from(addr: SocketAddr) -> Self {
        // An IPv4 client on a dual-stack socket shows as ::ffff:a.b.c.d: log it as a.b.c.d.
        ClientAddr {
            ip: addr.ip().to_canonical(),
            port: Some(addr.port()),
        }
    }
}

impl fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.ip, self.port) {
            (IpAddr::V4(ip), Some(port)) => {
                // The common case, by hand: `write!` of an address and a port takes ~1.8 k
                // instructions, and every session's log lines show it.
                let mut text = [0u8; 21];
                let mut len = 0;
                let mut number = itoa::Buffer::new();
                for (i, octet) in ip.octets().into_iter().enumerate() {
                    if i > 0 {
                        text[len] = b'.';
                        len += 1;
                    }
                    let digits = number.format(octet).as_bytes();
                    text[len..len + digits.len()].copy_from_slice(digits);
                    len += digits.len();
                }
                text[len] = b':';
                len += 1;
                let digits = number.format(port).as_bytes();
                text[len..len + digits.len()].copy_from_slice(digits);
                len += digits.len();
                f.pad(std::str::from_utf8(&text[..len]).map_err(|_| fmt::Error)?)
            }
            (IpAddr::V6(ip), Some(port)) => write!(f, "[{ip}]:{port}"),
            (ip, None) => write!(f, "{ip}"),
        }
    }
}

/// The peers whose forwarding headers are believed (`--trusted-proxy CIDR[,CIDR...]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
}

impl TrustedProxies {
    /// Parses `CIDR[,CIDR...]` (also space-separated; a bare address is a /32 or /128).
    pub fn parse(list: &str) -> Result<TrustedProxies, String> {
        let mut nets = Vec::new();
        for item in list.split([',', ' ']).filter(|s| !s.is_empty()) {
            let net = match item.parse::<IpNet>() {
                Ok(net) => net,
                Err(_) => item.parse::<IpAddr>().map(IpNet::from).map_err(|_| {
                    format!("'{item}' is not an address or CIDR network (e.g. 10.0.0.0/8, ::1)")
                })?,
            };
            nets.push(net.trunc());
        }
        Ok(TrustedProxies { nets })
    }

    /// True when nothing is trusted (the default).
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// Whether `peer` is one of the trusted proxies.
    pub fn contains(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.nets.iter().any(|net| net.contains(&peer))
    }
}

/// The client a trusted proxy names in the request: the last `Forwarded: for=` element, or
/// else the last `X-Forwarded-For` entry (each proxy appends; the last one is the hop that
/// reached the trusted proxy). `None` when neither names an address (absent, `unknown`, an
/// obfuscated `_name`, or garbage): the direct peer stays the client.
pub fn forwarded_client(headers: &HeaderMap) -> Option<ClientAddr> {
    let forwarded = last_element(headers, &FORWARDED).and_then(|element| {
        element.split(';').find_map(|pair| {
            let (name, value) = pair.split_once('=')?;
            name.trim()
                .eq_ignore_ascii_case("for")
                .then(|| node(value.trim().trim_matches('"')))?
        })
    });
    forwarded.or_else(|| last_element(headers, &X_FORWARDED_FOR).and_then(node))
}

/// The last comma-separated element over every field of `name`, trimmed.
fn last_element<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .rfind(|element| !element.is_empty())
}

/// A node: `192.0.2.7`, `192.0.2.7:4711`, `2001:db8::1`, `[2001:db8::1]` or `[2001:db8::1]:4711`.
fn node(text: &str) -> Option<ClientAddr> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Some(addr.into());
    }
    let ip = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    ip.parse::<IpAddr>().ok().map(|ip| ClientAddr {
        ip: ip.to_canonical(),
        port: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn headers(pairs: &[(&str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_static(value),
            );
        }
        map
    }

    fn client(pairs: &[(&str, &'static str)]) -> Option<String> {
        forwarded_client(&headers(pairs)).map(|c| c.to_string())
    }

    #[test]
    fn the_last_x_forwarded_for_entry_is_the_client() {
        assert_eq!(
            client(&[("x-forwarded-for", "203.0.113.9, 192.0.2.7")]).as_deref(),
            Some("192.0.2.7")
        );
        assert_eq!(
            client(&[
                ("x-forwarded-for", "203.0.113.9"),
                ("x-forwarded-for", "2001:db8::7")
            ])
            .as_deref(),
            Some("2001:db8::7")
        );
        assert_eq!(client(&[("x-forwarded-for", "unknown")]), None);
        assert_eq!(client(&[]), None);
    }

    #[test]
    fn forwarded_for_wins_and_may_carry_ports_and_quotes() {
        assert_eq!(
            client(&[
                ("x-forwarded-for", "203.0.113.9"),
                (
                    "forwarded",
                    "for=198.51.100.1;proto=https, For=\"[2001:db8::7]:4711\";by=x"
                )
            ])
            .as_deref(),
            Some("[2001:db8::7]:4711")
        );
        // An obfuscated identifier names no address: fall back to X-Forwarded-For.
        assert_eq!(
            client(&[
                ("forwarded", "for=_hidden"),
                ("x-forwarded-for", "192.0.2.7")
            ])
            .as_deref(),
            Some("192.0.2.7")
        );
    }

    #[test]
    fn ipv4_clients_display_as_std_writes_them() {
        for text in [
            "0.0.0.0:0",
            "192.0.2.7:5",
            "255.255.255.255:65535",
            "10.20.30.40:8080",
        ] {
            let addr: SocketAddr = text.parse().unwrap();
            assert_eq!(ClientAddr::from(addr).to_string(), text);
        }
        let addr = ClientAddr::from("10.0.0.1:80".parse::<SocketAddr>().unwrap());
        assert_eq!(format!("[{addr:>12}]"), "[ 10.0.0.1:80]");
    }

    #[test]
    fn trusted_proxies_are_networks_or_addresses() {
        let trusted = TrustedProxies::parse("10.0.0.0/8, ::1 127.0.0.1").unwrap();
        assert!(trusted.contains("10.1.2.3".parse().unwrap()));
        assert!(trusted.contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(trusted.contains("::1".parse().unwrap()));
        assert!(!trusted.contains("11.0.0.1".parse().unwrap()));
        assert!(TrustedProxies::parse("10.0.0.0/33").is_err());
        assert!(TrustedProxies::parse("nginx").is_err());
        assert!(TrustedProxies::parse("").unwrap().is_empty());
    }

    #[test]
    fn ipv4_mapped_peers_are_shown_as_ipv4() {
        let addr: SocketAddr = "[::ffff:192.0.2.7]:5".parse().unwrap();
        assert_eq!(ClientAddr::from(addr).to_string(), "192.0.2.7:5");
    }
}
