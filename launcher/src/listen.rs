//! Where connections come from: a TCP port, a unix socket, the socket inetd or systemd
//! hands over, or a single already-accepted connection on standard input.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use socket2::{Domain, Socket, Type};

use crate::config::Listen;
use crate::stream::ClientStream;

/// Pending connections the kernel may queue (upstream uses 100; more helps bursts).
const BACKLOG: i32 = 1024;

/// The direct peer of an accepted connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// A TCP peer.
    Ip(SocketAddr),
    /// A client of the unix socket listener (named by the socket's path).
    Unix(String),
    /// The connection inetd handed over, peer unknown.
    Inetd,
}

impl Peer {
    /// The peer's address, when it has one.
    pub fn addr(&self) -> Option<SocketAddr> {
        match self {
            Peer::Ip(addr) => Some(*addr),
            Peer::Unix(_) | Peer::Inetd => None,
        }
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Ip(addr) => write!(f, "{addr}"),
            Peer::Unix(path) => write!(f, "unix socket {path}"),
            Peer::Inetd => f.write_str("inetd"),
        }
    }
}

/// A source of client connections.
pub enum Listener {
    Tcp(tokio::net::TcpListener),
    /// A unix socket; `owned_path` is removed when the listener is dropped.
    Unix {
        listener: tokio::net::UnixListener,
        owned_path: Option<PathBuf>,
    },
    /// One connection handed over already accepted (inetd "nowait" mode): served, then done.
    Connected(Option<ClientStream>),
}

impl From<tokio::net::TcpListener> for Listener {
    fn from(listener: tokio::net::TcpListener) -> Self {
        Listener::Tcp(listener)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix {
            owned_path: Some(path),
            ..
        } = self
        {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Listener {
    /// Accepts the next connection and says who connected; `Ok(None)` when this listener
    /// has no more connections to give.
    pub async fn accept(&mut self) -> io::Result<Option<(ClientStream, Peer)>> {
        match self {
            Listener::Tcp(listener) => {
                let (stream, peer) = listener.accept().await?;
                let _ = stream.set_nodelay(true);
                Ok(Some((ClientStream::Tcp(stream), Peer::Ip(peer))))
            }
            Listener::Unix {
                listener,
                owned_path,
            } => {
                let (stream, _) = listener.accept().await?;
                let name = owned_path
                    .as_deref()
                    .map_or_else(|| "unix".to_owned(), |p| p.display().to_string());
                Ok(Some((ClientStream::Unix(stream), Peer::Unix(name))))
            }
            Listener::Connected(stream) => Ok(stream.take().map(|stream| {
                let peer = match &stream {
                    ClientStream::Tcp(tcp) => tcp.peer_addr().map_or(Peer::Inetd, Peer::Ip),
                    _ => Peer::Inetd,
                };
                (stream, peer)
            })),
        }
    }

    /// Where this listener listens, for the log.
    pub fn describe(&self) -> String {
        match self {
            Listener::Tcp(listener) => listener
                .local_addr()
                .map_or_else(|_| "a TCP socket".to_owned(), |a| a.to_string()),
            Listener::Unix {
                listener,
                owned_path,
            } => owned_path
                .as_deref()
                .map(|p| format!("unix socket {}", p.display()))
                .or_else(|| {
                    listener.local_addr().ok().and_then(|a| {
                        a.as_pathname()
                            .map(|p| format!("unix socket {}", p.display()))
                    })
                })
                .unwrap_or_else(|| "a unix socket".to_owned()),
            Listener::Connected(_) => "an inetd connection".to_owned(),
        }
    }
}

/// Opens what `listen` describes. Must run inside a tokio runtime.
pub fn bind(listen: &Listen) -> anyhow::Result<Listener> {
    match listen {
        Listen::Tcp {
            host,
            port,
            prefer_ipv6,
        } => bind_tcp(host.as_deref(), *port, *prefer_ipv6).map(Listener::Tcp),
        Listen::Unix { path, mode } => bind_unix(path, *mode),
        Listen::Inetd => from_stdin(),
    }
}

/// Binds a TCP port. A bare port listens on every address, IPv6 and IPv4 (one dual-stack
/// socket, or IPv4 only where IPv6 is off).
fn bind_tcp(
    host: Option<&str>,
    port: u16,
    prefer_ipv6: bool,
) -> anyhow::Result<tokio::net::TcpListener> {
    let socket = match host {
        None | Some("") => {
            let any6 = SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
            match bind_one(any6, Some(false)) {
                Ok(socket) => socket,
                Err(err) if ipv6_unavailable(&err) => {
                    bind_one(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)), None)
                        .with_context(|| format!("cannot listen on port {port}"))?
                }
                Err(err) => {
                    return Err(err).with_context(|| format!("cannot listen on port {port}"));
                }
            }
        }
        Some(host) => {
            let mut addrs: Vec<SocketAddr> = (host, port)
                .to_socket_addrs()
                .with_context(|| format!("cannot resolve listen address {host:?}"))?
                .collect();
            // Upstream takes the first result after sorting IPv4 first (IPv6 first with -6).
            addrs.sort_by_key(|a| a.is_ipv6() != prefer_ipv6);
            let Some(addr) = addrs.first().copied() else {
                bail!("listen address {host:?} resolves to no address");
            };
            bind_one(addr, None).with_context(|| format!("cannot listen on {addr}"))?
        }
    };
    tokio::net::TcpListener::from_std(socket.into()).context("cannot register the listening socket")
}

fn bind_one(addr: SocketAddr, v6_only: Option<bool>) -> io::Result<Socket> {
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

fn ipv6_unavailable(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EAFNOSUPPORT) | Some(libc::EADDRNOTAVAIL)
    )
}

/// Binds a unix socket with `mode` permissions, replacing a stale socket file; the file is
/// removed again when the listener is dropped.
fn bind_unix(path: &Path, mode: u32) -> anyhow::Result<Listener> {
    use std::os::unix::fs::FileTypeExt as _;
    let path =
        std::path::absolute(path).with_context(|| format!("cannot resolve {}", path.display()))?;
    match std::fs::symlink_metadata(&path) {
        Ok(meta) if meta.file_type().is_socket() => {
            std::fs::remove_file(&path)
                .with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
        }
        Ok(_) => bail!(
            "--unix-listen {}: the file exists and is not a socket; remove it or pick another path",
            path.display()
        ),
        Err(_) => {}
    }
    // Like upstream: the umask decides the socket's permissions at bind time, so nobody can
    // connect through wider permissions before a chmod.
    let mask = nix::sys::stat::Mode::from_bits_truncate((0o777 ^ mode) as libc::mode_t);
    let previous = nix::sys::stat::umask(mask);
    let bound = std::os::unix::net::UnixListener::bind(&path);
    nix::sys::stat::umask(previous);
    let listener =
        bound.with_context(|| format!("cannot listen on unix socket {}", path.display()))?;
    listener.set_nonblocking(true)?;
    let listener =
        tokio::net::UnixListener::from_std(listener).context("cannot register the unix socket")?;
    Ok(Listener::Unix {
        listener,
        owned_path: Some(path),
    })
}

/// `--inetd`: standard input is a listening socket ("wait" mode, as upstream) or a single
/// accepted connection ("nowait" mode, which upstream cannot do).
fn from_stdin() -> anyhow::Result<Listener> {
    let fd = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .context("--inetd: cannot use standard input")?;
    from_socket_fd(fd, "--inetd: standard input")
}

/// Wraps an inherited socket: listening sockets become listeners, a connected one becomes a
/// single connection. TCP (IPv4/IPv6) and unix stream sockets are accepted.
pub fn from_socket_fd(fd: OwnedFd, what: &str) -> anyhow::Result<Listener> {
    use nix::sys::socket::{
        AddressFamily, SockaddrLike as _, SockaddrStorage, getsockname, getsockopt, sockopt,
    };
    let listening = getsockopt(&fd, sockopt::AcceptConn)
        .map_err(io::Error::from)
        .with_context(|| format!("{what} is not a socket"))?;
    let family = getsockname::<SockaddrStorage>(std::os::fd::AsRawFd::as_raw_fd(&fd))
        .ok()
        .and_then(|addr| addr.family());
    match (family, listening) {
        (Some(AddressFamily::Inet | AddressFamily::Inet6), true) => {
            let listener = std::net::TcpListener::from(fd);
            listener.set_nonblocking(true)?;
            Ok(Listener::Tcp(tokio::net::TcpListener::from_std(listener)?))
        }
        (Some(AddressFamily::Unix), true) => {
            let listener = std::os::unix::net::UnixListener::from(fd);
            listener.set_nonblocking(true)?;
            Ok(Listener::Unix {
                listener: tokio::net::UnixListener::from_std(listener)?,
                owned_path: None,
            })
        }
        (Some(AddressFamily::Inet | AddressFamily::Inet6), false) => {
            let stream = std::net::TcpStream::from(fd);
            stream.set_nonblocking(true)?;
            let stream = tokio::net::TcpStream::from_std(stream)?;
            let _ = stream.set_nodelay(true);
            Ok(Listener::Connected(Some(ClientStream::Tcp(stream))))
        }
        (Some(AddressFamily::Unix), false) => {
            let stream = std::os::unix::net::UnixStream::from(fd);
            stream.set_nonblocking(true)?;
            Ok(Listener::Connected(Some(ClientStream::Unix(
                tokio::net::UnixStream::from_std(stream)?,
            ))))
        }
        (family, _) => bail!(
            "{what} is a socket of an unsupported family ({family:?}); expected TCP or unix stream"
        ),
    }
}

/// systemd socket activation: the first socket passed with `LISTEN_FDS` (fd 3), if the
/// variables are meant for this process (`LISTEN_PID`).
#[allow(unsafe_code)]
pub fn from_systemd() -> anyhow::Result<Option<Listener>> {
    let for_us = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|pid| pid.parse::<u32>().ok())
        .is_some_and(|pid| pid == std::process::id());
    let count = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse::<u32>().ok())
        .unwrap_or(0);
    if !for_us || count == 0 {
        return Ok(None);
    }
    if count > 1 {
        tracing::warn!("systemd passed {count} sockets; using the first (fd 3)");
    }
    // SAFETY: with LISTEN_PID equal to our pid, the sd_listen_fds protocol hands fd 3 to this
    // process to own; nothing else in websockify opens or closes fd 3 before this point
    // (called once, at start-up, before any file is opened).
    let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(3) };
    from_socket_fd(fd, "the socket passed by systemd (fd 3)").map(Some)
}

/// Tells systemd (`NOTIFY_SOCKET`) our state, e.g. `READY=1` once listening; a no-op
/// without systemd.
pub fn sd_notify(state: &str) {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(socket) = std::os::unix::net::UnixDatagram::unbound() else {
        return;
    };
    let target = target.to_string_lossy().into_owned();
    let sent = if let Some(name) = target.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt as _;
        std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .and_then(|addr| socket.send_to_addr(state.as_bytes(), &addr))
    } else {
        socket.send_to(state.as_bytes(), &target)
    };
    if let Err(err) = sent {
        tracing::debug!("sd_notify to {target} failed: {err}");
    }
}
