//! Minimal WebSocket framing (RFC 6455) for the load generator: just enough to drive proxies
//! as fast as the kernel allows and to send frames no library would (a frame declaring 2^40
//! bytes whose payload is streamed).
//!
//! Client frames are always masked, as RFC 6455 requires and as the proxies check. To keep
//! masking off the client's CPU budget, bulk senders build their frames once (each with its
//! own masking key) and send the same bytes again and again: the proxy still unmasks every
//! byte, which is the work being measured.

use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use base64::Engine as _;
use sha1::Digest as _;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// A small xorshift generator: masking keys and jitter need no cryptographic quality.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    pub fn mask_key(&mut self) -> [u8; 4] {
        (self.next_u64() as u32).to_ne_bytes()
    }
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }
}

/// XORs `buf` with `key`, where `buf` starts at payload offset `pos`.
pub fn apply_mask(buf: &mut [u8], key: [u8; 4], pos: u64) {
    let shift = (pos % 4) as usize;
    let k = [
        key[shift],
        key[(shift + 1) % 4],
        key[(shift + 2) % 4],
        key[(shift + 3) % 4],
    ];
    let wide = u64::from_ne_bytes([k[0], k[1], k[2], k[3], k[0], k[1], k[2], k[3]]);
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= k[i % 4];
    }
}

/// Writes a frame header for a payload of `len` bytes; returns the header bytes used.
pub fn header(out: &mut [u8; 14], fin: bool, opcode: u8, len: u64, mask: Option<[u8; 4]>) -> usize {
    out[0] = if fin { 0x80 } else { 0 } | opcode;
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut n = if len < 126 {
        out[1] = mask_bit | len as u8;
        2
    } else if len <= 0xFFFF {
        out[1] = mask_bit | 126;
        out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        out[1] = mask_bit | 127;
        out[2..10].copy_from_slice(&len.to_be_bytes());
        10
    };
    if let Some(key) = mask {
        out[n..n + 4].copy_from_slice(&key);
        n += 4;
    }
    n
}

/// One complete frame: header plus (masked, if a key is given) payload.
pub fn frame(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut hdr = [0u8; 14];
    let n = header(&mut hdr, true, opcode, payload.len() as u64, mask);
    let mut out = Vec::with_capacity(n + payload.len());
    out.extend_from_slice(&hdr[..n]);
    let start = out.len();
    out.extend_from_slice(payload);
    if let Some(key) = mask {
        apply_mask(&mut out[start..], key, 0);
    }
    out
}

/// A close frame with a status code.
pub fn close_frame(code: u16, mask: Option<[u8; 4]>) -> Vec<u8> {
    frame(OP_CLOSE, &code.to_be_bytes(), mask)
}

/// What the streaming decoder reports.
pub enum Event<'a> {
    /// A frame header was parsed.
    Start { len: u64 },
    /// Payload bytes of the current frame, still masked if `mask` is set; `pos` is the offset
    /// of `data[0]` in the frame's payload.
    Payload {
        opcode: u8,
        data: &'a mut [u8],
        mask: Option<[u8; 4]>,
        pos: u64,
    },
    /// The current frame's payload is complete.
    End { opcode: u8, fin: bool },
}

/// An incremental frame decoder: feed it whatever a read returned, in any chunking. It never
/// buffers payload, so a frame declaring 2^40 bytes costs nothing more than a small one.
#[derive(Default)]
pub struct Decoder {
    hdr: [u8; 14],
    hdr_len: usize,
    /// Payload bytes left in the current frame, with its opcode, fin, key and position.
    cur: Option<Current>,
}

/// The frame whose payload is being decoded.
#[derive(Clone, Copy)]
struct Current {
    opcode: u8,
    fin: bool,
    mask: Option<[u8; 4]>,
    remaining: u64,
    pos: u64,
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// Decodes `buf`, calling `f` for each event.
    pub fn feed(
        &mut self,
        mut buf: &mut [u8],
        f: &mut dyn FnMut(Event<'_>) -> Result<()>,
    ) -> Result<()> {
        loop {
            if let Some(Current {
                opcode,
                fin,
                mask,
                remaining,
                pos,
            }) = self.cur
            {
                let take = remaining.min(buf.len() as u64) as usize;
                if take > 0 {
                    let (data, rest) = buf.split_at_mut(take);
                    f(Event::Payload {
                        opcode,
                        data,
                        mask,
                        pos,
                    })?;
                    buf = rest;
                }
                let remaining = remaining - take as u64;
                if remaining == 0 {
                    self.cur = None;
                    f(Event::End { opcode, fin })?;
                } else {
                    self.cur = Some(Current {
                        opcode,
                        fin,
                        mask,
                        remaining,
                        pos: pos + take as u64,
                    });
                    return Ok(());
                }
                continue;
            }
            if buf.is_empty() {
                return Ok(());
            }
            // Accumulate a header (it may straddle reads).
            let need = |h: &[u8], have: usize| -> usize {
                if have < 2 {
                    return 2;
                }
                let ext = match h[1] & 0x7F {
                    126 => 2,
                    127 => 8,
                    _ => 0,
                };
                2 + ext + if h[1] & 0x80 != 0 { 4 } else { 0 }
            };
            loop {
                let want = need(&self.hdr, self.hdr_len);
                if self.hdr_len >= want {
                    break;
                }
                if buf.is_empty() {
                    return Ok(());
                }
                let take = (want - self.hdr_len).min(buf.len());
                self.hdr[self.hdr_len..self.hdr_len + take].copy_from_slice(&buf[..take]);
                self.hdr_len += take;
                buf = &mut buf[take..];
            }
            let h = self.hdr;
            let fin = h[0] & 0x80 != 0;
            let opcode = h[0] & 0x0F;
            let (len, mut at) = match h[1] & 0x7F {
                126 => (u16::from_be_bytes([h[2], h[3]]) as u64, 4),
                127 => (
                    u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]),
                    10,
                ),
                n => (n as u64, 2),
            };
            let mask = if h[1] & 0x80 != 0 {
                let key = [h[at], h[at + 1], h[at + 2], h[at + 3]];
                at += 4;
                Some(key)
            } else {
                None
            };
            debug_assert_eq!(at, self.hdr_len);
            self.hdr_len = 0;
            f(Event::Start { len })?;
            self.cur = Some(Current {
                opcode,
                fin,
                mask,
                remaining: len,
                pos: 0,
            });
        }
    }
}

/// The `Sec-WebSocket-Accept` value for a key.
pub fn accept_key(key: &str) -> String {
    let mut sha = sha1::Sha1::new();
    sha.update(key.as_bytes());
    sha.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// A client connection: plain TCP or TLS (wss://).
pub enum Stream {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Reads an HTTP head (up to 16 KiB) ending in a blank line; returns it and any bytes after.
pub async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> Result<(String, Vec<u8>)> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .context("reading the HTTP head")?;
        if n == 0 {
            bail!(
                "connection closed during the HTTP head ({} bytes read)",
                buf.len()
            );
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Ok((String::from_utf8_lossy(&buf).into_owned(), rest));
        }
        if buf.len() > 16 * 1024 {
            bail!("HTTP head longer than 16 KiB");
        }
    }
}

/// Client side of the opening handshake; returns bytes that arrived after the 101 head.
pub async fn client_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    host: &str,
    rng: &mut Rng,
) -> Result<Vec<u8>> {
    let key_bytes: [u8; 16] = {
        let a = rng.next_u64().to_ne_bytes();
        let b = rng.next_u64().to_ne_bytes();
        let mut k = [0u8; 16];
        k[..8].copy_from_slice(&a);
        k[8..].copy_from_slice(&b);
        k
    };
    let key = base64::engine::general_purpose::STANDARD.encode(key_bytes);
    let req = format!(
        "GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: binary\r\nOrigin: http://{host}\r\n\r\n"
    );
    stream
        .write_all(req.as_bytes())
        .await
        .context("sending the handshake")?;
    stream.flush().await.context("sending the handshake")?;
    let (head, rest) = read_head(stream).await?;
    let status = head.lines().next().unwrap_or("");
    if !status.contains(" 101") {
        bail!("handshake refused: {status:?}");
    }
    let want = accept_key(&key);
    let ok = head.lines().any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("sec-websocket-accept") && v.trim() == want
        })
    });
    if !ok {
        bail!("handshake answer has no valid Sec-WebSocket-Accept");
    }
    Ok(rest)
}

/// Server side of the opening handshake (the bench's own WebSocket targets).
pub async fn server_handshake(stream: &mut TcpStream) -> Result<Vec<u8>> {
    let (head, rest) = read_head(stream).await?;
    let key = head
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.trim().eq_ignore_ascii_case("sec-websocket-key"))
                .map(|(_, v)| v.trim().to_owned())
        })
        .context("request has no Sec-WebSocket-Key")?;
    let proto = if head.to_ascii_lowercase().contains("sec-websocket-protocol") {
        "Sec-WebSocket-Protocol: binary\r\n"
    } else {
        ""
    };
    let resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n{proto}\r\n",
        accept_key(&key)
    );
    stream.write_all(resp.as_bytes()).await?;
    Ok(rest)
}

/// How the load generator reaches a peer.
#[derive(Clone)]
pub struct Dial {
    pub addr: std::net::SocketAddr,
    /// Raw TCP: no handshake, no framing (the bare TCP relay in front of a raw TCP target).
    pub raw: bool,
    /// Send a PROXY protocol v2 header first (for a proxy run with `--proxy-protocol`).
    pub proxy_v2: bool,
    /// wss://: TLS to the peer (which presents the bench's certificate for localhost).
    pub tls: Option<tokio_rustls::TlsConnector>,
}

/// A PROXY protocol v2 header for a TCP/IPv4 connection from `src` to `dst`.
pub fn proxy_v2_header(src: std::net::SocketAddr, dst: std::net::SocketAddr) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    // Version 2, PROXY command; TCP over IPv4 (or IPv6).
    h.push(0x21);
    match (src, dst) {
        (std::net::SocketAddr::V4(s), std::net::SocketAddr::V4(d)) => {
            h.push(0x11);
            h.extend_from_slice(&12u16.to_be_bytes());
            h.extend_from_slice(&s.ip().octets());
            h.extend_from_slice(&d.ip().octets());
            h.extend_from_slice(&s.port().to_be_bytes());
            h.extend_from_slice(&d.port().to_be_bytes());
        }
        _ => {
            let v6 = |a: std::net::SocketAddr| match a.ip() {
                std::net::IpAddr::V4(ip) => ip.to_ipv6_mapped(),
                std::net::IpAddr::V6(ip) => ip,
            };
            h.push(0x21);
            h.extend_from_slice(&36u16.to_be_bytes());
            h.extend_from_slice(&v6(src).octets());
            h.extend_from_slice(&v6(dst).octets());
            h.extend_from_slice(&src.port().to_be_bytes());
            h.extend_from_slice(&dst.port().to_be_bytes());
        }
    }
    h
}

/// A connected WebSocket (or, in raw mode, plain TCP) client with a streaming reader.
pub struct Client {
    pub stream: Stream,
    /// Raw TCP: payload is the byte stream itself.
    pub raw: bool,
    dec: Decoder,
    rbuf: Vec<u8>,
    /// Bytes that came with the handshake answer, not yet decoded.
    initial: Vec<u8>,
    /// Payload received beyond what the last caller wanted.
    extra: Vec<u8>,
    pub rng: Rng,
    /// Close code received from the server, if any.
    pub closed: Option<u16>,
}

/// Reads payload from the read half of a client's stream while its write half is busy
/// elsewhere (the reverse-direction scenario).
pub struct PayloadReader {
    dec: Decoder,
    raw: bool,
    buf: Vec<u8>,
    initial: Vec<u8>,
}

impl PayloadReader {
    /// One read: calls `f` with each chunk of data-frame payload (raw: the bytes). Returns
    /// false at EOF or on a close frame.
    pub async fn read<R: tokio::io::AsyncRead + Unpin>(
        &mut self,
        rd: &mut R,
        f: &mut (dyn FnMut(&[u8]) + Send),
    ) -> Result<bool> {
        let n = if !self.initial.is_empty() {
            let n = self.initial.len().min(self.buf.len());
            self.buf[..n].copy_from_slice(&self.initial[..n]);
            self.initial.drain(..n);
            n
        } else {
            rd.read(&mut self.buf)
                .await
                .context("reading from the server")?
        };
        if n == 0 {
            return Ok(false);
        }
        if self.raw {
            f(&self.buf[..n]);
            return Ok(true);
        }
        let mut open = true;
        self.dec.feed(&mut self.buf[..n], &mut |ev| {
            match ev {
                Event::Payload {
                    opcode: OP_BINARY | OP_TEXT | OP_CONT,
                    data,
                    mask,
                    pos,
                } => {
                    if let Some(key) = mask {
                        apply_mask(data, key, pos);
                    }
                    f(data);
                }
                Event::End {
                    opcode: OP_CLOSE, ..
                } => open = false,
                _ => {}
            }
            Ok(())
        })?;
        Ok(open)
    }
}

impl Client {
    /// Hands the decoder state to a `PayloadReader` (the client's own `recv` is not used
    /// afterwards).
    pub fn payload_reader(&mut self) -> PayloadReader {
        PayloadReader {
            dec: std::mem::take(&mut self.dec),
            raw: self.raw,
            buf: vec![0; 64 * 1024],
            initial: std::mem::take(&mut self.initial),
        }
    }

    /// Connects, sets TCP_NODELAY and performs the handshake (none in raw mode).
    pub async fn connect(dial: &Dial, seed: u64, rbuf: usize) -> Result<Client> {
        let addr = dial.addr;
        let mut stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        if dial.proxy_v2 {
            let h = proxy_v2_header(stream.local_addr()?, addr);
            stream
                .write_all(&h)
                .await
                .context("sending the PROXY v2 header")?;
        }
        let mut stream = match &dial.tls {
            None => Stream::Tcp(stream),
            Some(connector) => {
                let name = rustls::pki_types::ServerName::try_from("localhost")?;
                Stream::Tls(Box::new(
                    connector
                        .connect(name, stream)
                        .await
                        .with_context(|| format!("TLS handshake with {addr}"))?,
                ))
            }
        };
        let mut rng = Rng::new(seed);
        let initial = if dial.raw {
            Vec::new()
        } else {
            client_handshake(&mut stream, &addr.to_string(), &mut rng).await?
        };
        Ok(Client {
            stream,
            raw: dial.raw,
            dec: Decoder::new(),
            rbuf: vec![0; rbuf],
            initial,
            extra: Vec::new(),
            rng,
            closed: None,
        })
    }

    /// Sends one masked binary frame (in raw mode, the payload bytes alone).
    pub async fn send_binary(&mut self, payload: &[u8]) -> Result<()> {
        if self.raw {
            self.stream
                .write_all(payload)
                .await
                .context("sending bytes")?;
        } else {
            let key = self.rng.mask_key();
            let bytes = frame(OP_BINARY, payload, Some(key));
            self.stream
                .write_all(&bytes)
                .await
                .context("sending a frame")?;
        }
        self.stream.flush().await.context("sending")?;
        Ok(())
    }

    /// Receives `want` bytes of data-frame payload, appending them to `out` when given.
    /// Fails on EOF or a close frame.
    pub async fn recv(&mut self, want: u64, mut out: Option<&mut Vec<u8>>) -> Result<()> {
        let mut got = 0u64;
        if !self.extra.is_empty() {
            let take = (want as usize).min(self.extra.len());
            if let Some(o) = out.as_deref_mut() {
                o.extend_from_slice(&self.extra[..take]);
            }
            self.extra.drain(..take);
            got += take as u64;
        }
        while got < want {
            let n = if !self.initial.is_empty() {
                let n = self.initial.len().min(self.rbuf.len());
                self.rbuf[..n].copy_from_slice(&self.initial[..n]);
                self.initial.drain(..n);
                n
            } else {
                self.stream
                    .read(&mut self.rbuf)
                    .await
                    .context("reading from the server")?
            };
            if n == 0 {
                bail!("server closed the connection after {got} of {want} payload bytes");
            }
            if self.raw {
                let take = ((want - got) as usize).min(n);
                if let Some(o) = out.as_deref_mut() {
                    o.extend_from_slice(&self.rbuf[..take]);
                }
                got += take as u64;
                self.extra.extend_from_slice(&self.rbuf[take..n]);
                continue;
            }
            let closed = &mut self.closed;
            let extra = &mut self.extra;
            let mut close_payload = Vec::new();
            self.dec.feed(&mut self.rbuf[..n], &mut |ev| {
                match ev {
                    Event::Payload {
                        opcode: OP_BINARY | OP_TEXT | OP_CONT,
                        data,
                        mask,
                        pos,
                    } => {
                        if let Some(key) = mask {
                            apply_mask(data, key, pos);
                        }
                        let take = ((want - got) as usize).min(data.len());
                        if let Some(o) = out.as_deref_mut() {
                            o.extend_from_slice(&data[..take]);
                        }
                        got += take as u64;
                        extra.extend_from_slice(&data[take..]);
                    }
                    Event::Payload {
                        opcode: OP_CLOSE,
                        data,
                        ..
                    } => close_payload.extend_from_slice(data),
                    Event::End {
                        opcode: OP_CLOSE, ..
                    } => {
                        let code = if close_payload.len() >= 2 {
                            u16::from_be_bytes([close_payload[0], close_payload[1]])
                        } else {
                            1005
                        };
                        *closed = Some(code);
                    }
                    _ => {}
                }
                Ok(())
            })?;
            if let Some(code) = self.closed
                && got < want
            {
                let reason =
                    String::from_utf8_lossy(close_payload.get(2..).unwrap_or(&[])).into_owned();
                bail!("server sent close {code} {reason:?} after {got} of {want} payload bytes");
            }
        }
        Ok(())
    }

    /// Sends one message and waits for the same number of bytes back.
    pub async fn echo(&mut self, payload: &[u8]) -> Result<()> {
        self.send_binary(payload).await?;
        let mut back = Vec::with_capacity(payload.len());
        self.recv(payload.len() as u64, Some(&mut back)).await?;
        if back != payload {
            bail!("echo returned different bytes");
        }
        Ok(())
    }

    /// Close handshake: send close 1000, wait (bounded) for the server's close or EOF.
    pub async fn close(mut self, wait: Duration) -> Result<()> {
        if self.raw {
            // Half-close, then wait (bounded) for the other side's EOF.
            self.stream.shutdown().await.context("sending FIN")?;
            let deadline = tokio::time::Instant::now() + wait;
            loop {
                match tokio::time::timeout_at(deadline, self.stream.read(&mut self.rbuf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => return Ok(()),
                    Ok(Ok(_)) => {}
                    Err(_) => bail!("no EOF within {wait:?}"),
                }
            }
        }
        let key = self.rng.mask_key();
        self.stream
            .write_all(&close_frame(1000, Some(key)))
            .await
            .context("sending close")?;
        self.stream.flush().await.context("sending close")?;
        let deadline = tokio::time::Instant::now() + wait;
        while self.closed.is_none() {
            let n = match tokio::time::timeout_at(deadline, self.stream.read(&mut self.rbuf)).await
            {
                Ok(r) => r.context("reading the close answer")?,
                Err(_) => bail!("no close answer within {wait:?}"),
            };
            if n == 0 {
                break;
            }
            let closed = &mut self.closed;
            self.dec.feed(&mut self.rbuf[..n], &mut |ev| {
                if let Event::End {
                    opcode: OP_CLOSE, ..
                } = ev
                {
                    *closed = Some(1000);
                }
                Ok(())
            })?;
        }
        let _ = self.stream.shutdown().await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoder_handles_any_chunking() {
        let mut rng = Rng::new(7);
        let mut wire = Vec::new();
        let sizes = [0usize, 1, 125, 126, 65535, 65536, 70000];
        for &s in &sizes {
            let payload: Vec<u8> = (0..s).map(|i| i as u8).collect();
            wire.extend(frame(OP_BINARY, &payload, Some(rng.mask_key())));
        }
        for step in [1usize, 3, 7, 4096, 1 << 20] {
            let mut dec = Decoder::new();
            let mut got: Vec<Vec<u8>> = Vec::new();
            let mut cur = Vec::new();
            let mut w = wire.clone();
            for chunk in w.chunks_mut(step) {
                dec.feed(chunk, &mut |ev| {
                    match ev {
                        Event::Payload {
                            data, mask, pos, ..
                        } => {
                            if let Some(k) = mask {
                                apply_mask(data, k, pos);
                            }
                            cur.extend_from_slice(data);
                        }
                        Event::End { .. } => got.push(std::mem::take(&mut cur)),
                        Event::Start { .. } => {}
                    }
                    Ok(())
                })
                .unwrap();
            }
            assert_eq!(got.len(), sizes.len());
            for (g, &s) in got.iter().zip(&sizes) {
                assert_eq!(g.len(), s);
                assert!(g.iter().enumerate().all(|(i, &b)| b == i as u8));
            }
        }
    }

    #[test]
    fn huge_declared_length_is_streamed() {
        let mut hdr = [0u8; 14];
        let n = header(&mut hdr, true, OP_BINARY, 1 << 40, Some([1, 2, 3, 4]));
        let mut dec = Decoder::new();
        let mut seen = 0u64;
        dec.feed(&mut hdr[..n], &mut |ev| {
            if let Event::Start { len, .. } = ev {
                seen = len;
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, 1 << 40);
        let mut data = vec![0u8; 1000];
        let mut payload = 0;
        dec.feed(&mut data, &mut |ev| {
            if let Event::Payload { data, .. } = ev {
                payload += data.len();
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(payload, 1000);
    }

    #[test]
    fn accept_key_matches_rfc_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
