//! The byte streams a connection can ride on: plain or TLS towards the client, TCP, unix or
//! TLS towards the target. Enums rather than trait objects, so the relay's hot path is
//! monomorphic and a stream can be recovered by type after hyper hands back an upgrade.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

/// A client connection: accepted over TCP or a unix socket, possibly wrapped in TLS.
pub enum ClientStream {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<tokio_rustls::server::TlsStream<ClientStream>>),
}

impl ClientStream {
    /// Whether the client came over TLS (wss:// or https://).
    pub fn is_tls(&self) -> bool {
        matches!(self, ClientStream::Tls(_))
    }

    /// The DER of the client's verified TLS certificate (end entity), if it presented one.
    pub fn peer_certificate(&self) -> Option<Vec<u8>> {
        match self {
            ClientStream::Tls(tls) => tls
                .get_ref()
                .1
                .peer_certificates()?
                .first()
                .map(|c| c.to_vec()),
            _ => None,
        }
    }

    /// Waits (without consuming) until at least one byte can be read; returns the first
    /// byte, or `None` at EOF.
    pub async fn peek_first(&self) -> io::Result<Option<u8>> {
        let mut first = [0u8; 1];
        let n = self.peek(&mut first).await?;
        Ok((n > 0).then_some(first[0]))
    }

    /// Waits until data can be read and copies what is there into `buf` without consuming
    /// it; 0 at EOF (and always for TLS, which is never peeked).
    pub async fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            ClientStream::Tcp(tcp) => tcp.peek(buf).await,
            ClientStream::Unix(unix) => loop {
                unix.readable().await?;
                let peeked = unix.try_io(tokio::io::Interest::READABLE, || {
                    use nix::sys::socket::{MsgFlags, recv};
                    use std::os::fd::AsRawFd as _;
                    recv(
                        unix.as_raw_fd(),
                        buf,
                        MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
                    )
                    .map_err(io::Error::from)
                });
                match peeked {
                    Ok(n) => break Ok(n),
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(err) => return Err(err),
                }
            },
            ClientStream::Tls(_) => Ok(0),
        }
    }
}

/// A connection to the target.
pub enum TargetStream {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// Forwards the tokio I/O traits of an enum to the stream inside each variant.
macro_rules! forward_io {
    ($ty:ident { $($variant:ident),+ }) => {
        impl AsyncRead for $ty {
            fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $($ty::$variant(s) => Pin::new(s).poll_read(cx, buf),)+
                }
            }
        }

        impl AsyncWrite for $ty {
            fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $($ty::$variant(s) => Pin::new(s).poll_write(cx, buf),)+
                }
            }

            // Forwarded, not left to the default (which writes only the first buffer): rustls
            // hands its records to the socket as one vectored write, so without this every
            // 16 KiB record of a wss:// frame cost a `sendto` of its own (5 per 64 KiB frame).
            fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $($ty::$variant(s) => Pin::new(s).poll_write_vectored(cx, bufs),)+
                }
            }

            fn is_write_vectored(&self) -> bool {
                match self {
                    $($ty::$variant(s) => s.is_write_vectored(),)+
                }
            }

            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $($ty::$variant(s) => Pin::new(s).poll_flush(cx),)+
                }
            }

            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $($ty::$variant(s) => Pin::new(s).poll_shutdown(cx),)+
                }
            }
        }
    };
}

forward_io!(ClientStream { Tcp, Unix, Tls });
forward_io!(TargetStream { Tcp, Unix, Tls });

/// A stream with bytes already read from it put back in front: hyper gets the connection
/// after `request` has read the first head itself.
pub struct Prefixed<S> {
    prefix: bytes::Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    /// `prefix` is returned by the first reads, then `inner` is read.
    pub fn new(prefix: bytes::Bytes, inner: S) -> Self {
        Prefixed { prefix, inner }
    }

    /// The stream and the part of the prefix not read yet.
    pub fn into_parts(self) -> (S, bytes::Bytes) {
        (self.inner, self.prefix)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::io::IoSlice;

    use tokio::io::{AsyncReadExt as _, AsyncWrite as _};
    use tokio::net::{TcpListener, TcpStream};

    use super::{ClientStream, Prefixed};

    /// One vectored write reaches the socket as one: TLS gives its records to the client
    /// stream that way, and the default (first buffer only) cost a `sendto` per record.
    #[tokio::test]
    async fn vectored_writes_reach_the_socket_whole() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (connected, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let mut peer = connected.unwrap();
        let mut stream = Prefixed::new(bytes::Bytes::new(), ClientStream::Tcp(accepted.unwrap().0));
        assert!(stream.is_write_vectored());
        let bufs = [IoSlice::new(b"four"), IoSlice::new(b"five!")];
        let written = std::future::poll_fn(|cx| {
            std::pin::Pin::new(&mut stream).poll_write_vectored(cx, &bufs)
        })
        .await
        .unwrap();
        assert_eq!(written, 9);
        let mut got = [0u8; 9];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"fourfive!");
    }
}
