//! The connect step: open the target of a session, TCP (every resolved address in turn),
//! unix socket, or TLS over TCP (`--ssl-target`), all under one deadline.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpStream, UnixStream};
use tokio::time::Instant;

use crate::config::Target;
use crate::proxy_header;
use crate::stream::TargetStream;
use crate::tls::TargetTls;

/// Why the target could not be reached; logged, and the client gets close 1011.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot resolve {host}: {source}")]
    Resolve { host: String, source: io::Error },
    #[error("{host} resolves to no address")]
    NoAddress { host: String },
    #[error("{addr}: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("no connection within {0:?}")]
    Timeout(Duration),
    #[error("TLS handshake with {host} failed: {source}")]
    Tls { host: String, source: io::Error },
    #[error(
        "TLS certificate verification failed for {host} (server name {name}): {detail}; \
         trust its CA with --ssl-target-ca FILE, or name the certificate with --ssl-target-sni NAME"
    )]
    TlsVerify {
        host: String,
        name: String,
        detail: String,
    },
    #[error("{0}")]
    ServerName(String),
    #[error("cannot send the PROXY header: {0}")]
    ProxyHeader(io::Error),
}

/// `--target-proxy-protocol`: the header version and the real client's address (`None` when
/// it has none), written first on the target connection (before TLS with `--ssl-target`).
pub type ProxyHeader = Option<(proxy_header::Version, Option<SocketAddr>)>;

/// Connects to `target`; writes the PROXY header if asked; with `tls`, runs a TLS client
/// handshake over TCP (SNI = `--ssl-target-sni`, else the host).
pub async fn connect(
    target: &Target,
    tls: Option<&TargetTls>,
    proxy: ProxyHeader,
    deadline: Duration,
) -> Result<TargetStream, ConnectError> {
    let until = Instant::now() + deadline;
    let attempt = async {
        match target {
            Target::Unix(path) => {
                let mut unix =
                    UnixStream::connect(path)
                        .await
                        .map_err(|source| ConnectError::Connect {
                            addr: path.display().to_string(),
                            source,
                        })?;
                send_proxy_header(&mut unix, proxy, None).await?;
                Ok(TargetStream::Unix(unix))
            }
            Target::Loopback { port } => {
                let mut tcp = connect_loopback(*port).await?;
                // Only a PROXY header needs it: no getpeername(2) per connection otherwise.
                let destination = if proxy.is_some() {
                    tcp.peer_addr().ok()
                } else {
                    None
                };
                send_proxy_header(&mut tcp, proxy, destination).await?;
                Ok(TargetStream::Tcp(tcp))
            }
            Target::Tcp { host, port } => {
                let mut tcp = connect_tcp(host, *port, until).await?;
                let destination = if proxy.is_some() {
                    tcp.peer_addr().ok()
                } else {
                    None
                };
                send_proxy_header(&mut tcp, proxy, destination).await?;
                match tls {
                    None => Ok(TargetStream::Tcp(tcp)),
                    Some(tls) => {
                        let name = match &tls.sni {
                            Some(name) => name.clone(),
                            None => crate::tls::server_name(host)
                                .map_err(|e| ConnectError::ServerName(e.to_string()))?,
                        };
                        let shown = name.to_str().into_owned();
                        let stream = tls
                            .connector
                            .connect(name, tcp)
                            .await
                            .map_err(|source| tls_error(host, shown, source))?;
                        Ok(TargetStream::Tls(Box::new(stream)))
                    }
                }
            }
        }
    };
    tokio::time::timeout_at(until, attempt)
        .await
        .map_err(|_| ConnectError::Timeout(deadline))?
}

/// A failed client handshake; a certificate the target presented but we refused gets its own
/// message, since the fix is in our options rather than in the target.
fn tls_error(host: &str, name: String, source: io::Error) -> ConnectError {
    let rustls_error = source
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match rustls_error {
        Some(err @ rustls::Error::InvalidCertificate(_)) => ConnectError::TlsVerify {
            host: host.to_owned(),
            name,
            detail: err.to_string(),
        },
        _ => ConnectError::Tls {
            host: host.to_owned(),
            source,
        },
    }
}

/// Writes the PROXY header (if any) naming the client and `destination` (the target's side).
async fn send_proxy_header<S: tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    proxy: ProxyHeader,
    destination: Option<SocketAddr>,
) -> Result<(), ConnectError> {
    let Some((version, client)) = proxy else {
        return Ok(());
    };
    let addresses = client.map(|client| {
        // A unix target has no address: say "any" in the client's family.
        let unspecified = if client.is_ipv4() {
            SocketAddr::from(([0, 0, 0, 0], 0))
        } else {
            SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
        };
        (client, destination.unwrap_or(unspecified))
    });
    proxy_header::send(stream, version, addresses)
        .await
        .map_err(ConnectError::ProxyHeader)
}

/// Connects to a wrapped program's port on 127.0.0.1 or ::1, retrying while nothing listens
/// yet (the program may be starting or respawning); the caller's deadline bounds it.
async fn connect_loopback(port: u16) -> Result<TcpStream, ConnectError> {
    let addrs = [
        SocketAddr::from(([127, 0, 0, 1], port)),
        SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)),
    ];
    let mut logged = false;
    loop {
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    return Ok(stream);
                }
                Err(err) if refused_or_absent(&err) => {}
                Err(source) => {
                    return Err(ConnectError::Connect {
                        addr: addr.to_string(),
                        source,
                    });
                }
            }
        }
        if !logged {
            tracing::info!(port, "wrapped program not listening yet: waiting for it");
            logged = true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Receive buffer asked for before connecting: sets the initial TCP window.
const RCVBUF: u32 = 256 * 1024;

fn refused_or_absent(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::ConnectionRefused
        || matches!(
            err.raw_os_error(),
            Some(libc::EADDRNOTAVAIL) | Some(libc::ENETUNREACH)
        )
}

/// Tries every address `host` resolves to, in order; returns the first that connects.
async fn connect_tcp(host: &str, port: u16, until: Instant) -> Result<TcpStream, ConnectError> {
    // Upstream: an empty host (`:5900`) means this machine.
    let host = if host.is_empty() { "localhost" } else { host };
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|source| ConnectError::Resolve {
            host: host.to_owned(),
            source,
        })?
        .collect();
    let mut last_error = None;
    for addr in &addrs {
        // Leave later addresses a share of the time if this one hangs.
        let remaining = until.saturating_duration_since(Instant::now());
        let share = remaining / 2;
        let share = if addr == addrs.last().unwrap_or(addr) {
            remaining
        } else {
            share
        };
        let connect = async {
            let socket = if addr.is_ipv4() {
                tokio::net::TcpSocket::new_v4()?
            } else {
                tokio::net::TcpSocket::new_v6()?
            };
            let _ = socket.set_recv_buffer_size(RCVBUF);
            socket.connect(*addr).await
        };
        match tokio::time::timeout(share, connect).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                let _ = socket2::SockRef::from(&stream).set_keepalive(true);
                return Ok(stream);
            }
            Ok(Err(source)) => {
                tracing::debug!(%addr, "connect failed: {source}");
                last_error = Some(ConnectError::Connect {
                    addr: addr.to_string(),
                    source,
                });
            }
            Err(_) => {
                tracing::debug!(%addr, "connect timed out");
                last_error = Some(ConnectError::Connect {
                    addr: addr.to_string(),
                    source: io::ErrorKind::TimedOut.into(),
                });
            }
        }
    }
    Err(last_error.unwrap_or(ConnectError::NoAddress {
        host: host.to_owned(),
    }))
}
