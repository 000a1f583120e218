//! Zero-copy for the down direction: target bytes move into a pipe and from the pipe to the
//! client socket with `splice(2)`, never through user space. Only the frame header is
//! written by us (with `MSG_MORE`, so it leaves in the same segment as the payload).
//!
//! Pipes are lent by a small per-thread pool, like relay buffers: a session takes one just
//! before it splices and gives it back, empty, as soon as the target has nothing to read, so
//! an idle connection holds no pipe (and no descriptors beyond its two sockets). A pipe
//! still holding bytes when its session ends is closed instead of pooled.
//!
//! Streams say whether they can take part through [`SpliceIo`]: plain TCP and unix sockets
//! can; TLS streams (whose bytes must pass through rustls) and in-memory test streams
//! cannot, and the relay then reads and writes as usual.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsFd, AsRawFd as _, OwnedFd};
use std::task::{Context, Poll};

use nix::fcntl::{OFlag, SpliceFFlags, splice};
use nix::sys::socket::{MsgFlags, send};
use tokio::io::Interest;
use tokio::net::{TcpStream, UnixStream};

use crate::stream::{ClientStream, TargetStream};

/// Pipes kept per thread at most; more are closed instead of pooled.
const POOL_LIMIT: usize = 4;

thread_local! {
    static POOL: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
}

/// A non-blocking pipe (default capacity: 16 pages, 64 KiB on x86-64).
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    /// Takes an empty pipe from this thread's pool, or makes one (which can fail at the
    /// descriptor limit: the caller then copies through user space instead).
    pub fn take() -> io::Result<Pipe> {
        if let Some(pipe) = POOL.with(|pool| pool.borrow_mut().pop()) {
            return Ok(pipe);
        }
        let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        Ok(Pipe { read, write })
    }

    /// Returns an empty pipe to this thread's pool (closes it when the pool is full).
    /// A pipe that may still hold bytes must be dropped instead.
    pub fn give_back(self) {
        // `try_with`: during thread teardown the pool may already be gone; then just close.
        let _ = POOL.try_with(|pool| {
            let mut pool = pool.borrow_mut();
            if pool.len() < POOL_LIMIT {
                pool.push(self);
            }
        });
    }
}

/// Pipes in this thread's pool (for tests of the idle rule).
#[cfg(test)]
pub fn pooled() -> usize {
    POOL.with(|pool| pool.borrow().len())
}

/// A stream the relay can splice from (the target) or into (the client).
///
/// The default says no; the socket-backed streams override every method.
pub trait SpliceIo {
    /// Whether this stream is a plain socket that `splice(2)` can read or write.
    fn can_splice(&self) -> bool {
        false
    }

    /// Moves up to `len` bytes from this socket into the empty `pipe`: `Ready(Ok(0))` at
    /// end of stream.
    fn poll_splice_from(
        &self,
        _cx: &mut Context<'_>,
        _pipe: &Pipe,
        _len: usize,
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Err(unsupported()))
    }

    /// Moves up to `len` bytes from `pipe` into this socket.
    fn poll_splice_into(
        &self,
        _cx: &mut Context<'_>,
        _pipe: &Pipe,
        _len: usize,
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Err(unsupported()))
    }

    /// Writes `buf` (a frame header) telling the kernel that more follows at once, so the
    /// header and the spliced payload leave together.
    fn poll_send_more(&self, _cx: &mut Context<'_>, _buf: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Err(unsupported()))
    }
}

fn unsupported() -> io::Error {
    io::Error::new(io::ErrorKind::Unsupported, "this stream cannot splice")
}

impl SpliceIo for tokio::io::DuplexStream {}

/// The readiness side of tokio's sockets, shared by TCP and unix streams.
trait Readiness: AsFd {
    fn ready(&self, cx: &mut Context<'_>, interest: Interest) -> Poll<io::Result<()>>;
    fn attempt(
        &self,
        interest: Interest,
        f: impl FnOnce() -> io::Result<usize>,
    ) -> io::Result<usize>;
}

macro_rules! readiness {
    ($ty:ty) => {
        impl Readiness for $ty {
            fn ready(&self, cx: &mut Context<'_>, interest: Interest) -> Poll<io::Result<()>> {
                if interest.is_readable() {
                    self.poll_read_ready(cx)
                } else {
                    self.poll_write_ready(cx)
                }
            }

            fn attempt(
                &self,
                interest: Interest,
                f: impl FnOnce() -> io::Result<usize>,
            ) -> io::Result<usize> {
                self.try_io(interest, f)
            }
        }
    };
}

readiness!(TcpStream);
readiness!(UnixStream);

/// Waits for `interest` and runs `op` until it does not report `WouldBlock` (which clears
/// tokio's readiness, so the next poll waits for the kernel again).
fn poll_op<S: Readiness>(
    socket: &S,
    cx: &mut Context<'_>,
    interest: Interest,
    mut op: impl FnMut(&S) -> io::Result<usize>,
) -> Poll<io::Result<usize>> {
    loop {
        match socket.ready(cx, interest) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
            Poll::Pending => return Poll::Pending,
        }
        match socket.attempt(interest, || op(socket)) {
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
            result => return Poll::Ready(result),
        }
    }
}

const FLAGS: SpliceFFlags = SpliceFFlags::SPLICE_F_NONBLOCK.union(SpliceFFlags::SPLICE_F_MOVE);

fn splice_from<S: Readiness>(
    socket: &S,
    cx: &mut Context<'_>,
    pipe: &Pipe,
    len: usize,
) -> Poll<io::Result<usize>> {
    poll_op(socket, cx, Interest::READABLE, |socket| {
        Ok(splice(socket, None, &pipe.write, None, len, FLAGS)?)
    })
}

fn splice_into<S: Readiness>(
    socket: &S,
    cx: &mut Context<'_>,
    pipe: &Pipe,
    len: usize,
) -> Poll<io::Result<usize>> {
    poll_op(socket, cx, Interest::WRITABLE, |socket| {
        Ok(splice(&pipe.read, None, socket, None, len, FLAGS)?)
    })
}

fn send_more<S: Readiness>(
    socket: &S,
    cx: &mut Context<'_>,
    buf: &[u8],
) -> Poll<io::Result<usize>> {
    let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::from_bits_retain(libc::MSG_MORE);
    poll_op(socket, cx, Interest::WRITABLE, |socket| {
        Ok(send(
            socket.as_fd().as_raw_fd(),
            buf,
            flags | MsgFlags::MSG_NOSIGNAL,
        )?)
    })
}

/// Forwards [`SpliceIo`] to the socket inside each plain variant of a stream enum; other
/// variants (TLS) cannot splice.
macro_rules! splice_io {
    ($ty:ident { $($variant:ident),+ }) => {
        impl SpliceIo for $ty {
            fn can_splice(&self) -> bool {
                matches!(self, $($ty::$variant(_))|+)
            }

            fn poll_splice_from(&self, cx: &mut Context<'_>, pipe: &Pipe, len: usize) -> Poll<io::Result<usize>> {
                match self {
                    $($ty::$variant(s) => splice_from(s, cx, pipe, len),)+
                    #[allow(unreachable_patterns)]
                    _ => Poll::Ready(Err(unsupported())),
                }
            }

            fn poll_splice_into(&self, cx: &mut Context<'_>, pipe: &Pipe, len: usize) -> Poll<io::Result<usize>> {
                match self {
                    $($ty::$variant(s) => splice_into(s, cx, pipe, len),)+
                    #[allow(unreachable_patterns)]
                    _ => Poll::Ready(Err(unsupported())),
                }
            }

            fn poll_send_more(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
                match self {
                    $($ty::$variant(s) => send_more(s, cx, buf),)+
                    #[allow(unreachable_patterns)]
                    _ => Poll::Ready(Err(unsupported())),
                }
            }
        }
    };
}

splice_io!(ClientStream { Tcp, Unix });
splice_io!(TargetStream { Tcp, Unix });
