//! Binding the listening socket from `[host:]port`.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};

use anyhow::{Context as _, bail};
use socket2::{Domain, Socket, Type};

use crate::config::Listen;

/// Pending connections the kernel may queue (upstream uses 100; more helps bursts).
const BACKLOG: i32 = 1024;

/// Binds the listening socket. A bare port listens on every address, IPv6 and IPv4 (one
/// dual-stack socket, or IPv4 only where IPv6 is off). Must run inside a tokio runtime.
pub fn bind(listen: &Listen) -> anyhow::Result<tokio::net::TcpListener> {
    let Listen::Tcp {
        host,
        port,
        prefer_ipv6,
    } = listen;
    let socket = match host.as_deref() {
        None | Some("") => {
            let any6 = SocketAddr::from((Ipv6Addr::UNSPECIFIED, *port));
            match bind_one(any6, Some(false)) {
                Ok(socket) => socket,
                Err(err) if ipv6_unavailable(&err) => {
                    bind_one(SocketAddr::from((Ipv4Addr::UNSPECIFIED, *port)), None)
                        .with_context(|| format!("cannot listen on port {port}"))?
                }
                Err(err) => {
                    return Err(err).with_context(|| format!("cannot listen on port {port}"));
                }
            }
        }
        Some(host) => {
            let mut addrs: Vec<SocketAddr> = (host, *port)
                .to_socket_addrs()
                .with_context(|| format!("cannot resolve listen address {host:?}"))?
                .collect();
            // Upstream takes the first result after sorting IPv4 first (IPv6 first with -6).
            addrs.sort_by_key(|a| a.is_ipv6() != *prefer_ipv6);
            let Some(addr) = addrs.first().copied() else {
                bail!("listen address {host:?} resolves to no address");
            };
            bind_one(addr, None).with_context(|| format!("cannot listen on {addr}"))?
        }
    };
    let std_listener: std::net::TcpListener = socket.into();
    tokio::net::TcpListener::from_std(std_listener).context("cannot register the listening socket")
}

fn bind_one(addr: SocketAddr, v6_only: Option<bool>) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    if let Some(only) = v6_only {
        socket.set_only_v6(only)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_keepalive(true)?;
    socket.set_nonblocking(true)?;
    socket.set_cloexec(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket)
}

fn ipv6_unavailable(err: &std::io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EAFNOSUPPORT) | Some(libc::EADDRNOTAVAIL)
    )
}
