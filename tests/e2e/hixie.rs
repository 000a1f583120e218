//! `--hixie`: clients of draft-hixie-thewebsocketprotocol-75 and -76, written here from the
//! drafts (handshake, `0x00 base64 0xFF` frames, `0xFF 0x00` close), through websockify to
//! an echo target; and the 400 that names the flag when it is not given.

use std::net::SocketAddr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use websockify::Config;
use websockify::config::TokenSettings;

use crate::util::*;

/// The keys and body of the server-side example of draft-76 (section 5.2), and its answer.
const KEY1: &str = "18x 6]8vM;54 *(5:  {   U1]8  z [  8";
const KEY2: &str = "1_ tx7X d  <  nw  334J702) 7]o}` 0e";
const KEY3: &[u8; 8] = b"Tm[K T2u";
const ANSWER: &[u8; 16] = b"fQJ,fN/4F4!~K~MH";

fn hixie_config(target: SocketAddr) -> Config {
    let mut config = config_to(target);
    config.hixie = true;
    config
}

/// A Hixie-76 request head for `path` (the 8 key bytes are sent separately).
fn request_76(addr: SocketAddr, path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nUpgrade: WebSocket\r\nConnection: Upgrade\r\nHost: {addr}\r\n\
         Origin: http://example.com\r\nSec-WebSocket-Key1: {KEY1}\r\nSec-WebSocket-Key2: {KEY2}\r\n\
         {extra}\r\n"
    )
}

/// A Hixie-75 request head for `path`.
fn request_75(addr: SocketAddr, path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nUpgrade: WebSocket\r\nConnection: Upgrade\r\nHost: {addr}\r\n\
         Origin: http://example.com\r\n{extra}\r\n"
    )
}

/// Connects and sends `head`, then (for -76) the 8 key bytes in two later writes, so that
/// they may reach the server in reads of their own.
async fn hixie_connect(
    addr: SocketAddr,
    head: &str,
    key3: Option<&[u8; 8]>,
) -> (TcpStream, String) {
    let mut stream = within("connect", TcpStream::connect(addr))
        .await
        .expect("connect");
    stream.write_all(head.as_bytes()).await.expect("send head");
    if let Some(key3) = key3 {
        stream.flush().await.expect("flush");
        stream.write_all(&key3[..3]).await.expect("send key3");
        stream.flush().await.expect("flush");
        stream.write_all(&key3[3..]).await.expect("send key3");
    }
    let response = read_head(&mut stream).await;
    (stream, response)
}

/// A client-to-server frame: `0x00`, the base64 of `data`, `0xFF`.
fn frame(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x00];
    out.extend_from_slice(STANDARD.encode(data).as_bytes());
    out.push(0xff);
    out
}

/// Reads frames until `want` decoded bytes arrived; every frame must be a `0x00` text frame.
async fn read_data(reader: &mut BufReader<TcpStream>, want: usize) -> Vec<u8> {
    within("Hixie frames", async {
        let mut out = Vec::with_capacity(want);
        while out.len() < want {
            let kind = reader.read_u8().await.expect("frame type");
            assert_eq!(kind, 0x00, "a text frame");
            let mut text = Vec::new();
            reader.read_until(0xff, &mut text).await.expect("frame");
            assert_eq!(text.pop(), Some(0xff), "frame ends with 0xFF");
            out.extend(STANDARD.decode(&text).expect("base64 text"));
        }
        out
    })
    .await
}

/// Every byte value, 0x00 and 0xFF included, and then some.
fn all_bytes(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 256) as u8).collect()
}

/// Sends our close and expects the server's close, then the end of the connection.
async fn close(mut reader: BufReader<TcpStream>) {
    reader
        .get_mut()
        .write_all(&[0xff, 0x00])
        .await
        .expect("close");
    let mut rest = Vec::new();
    within("close reply and EOF", reader.read_to_end(&mut rest))
        .await
        .expect("read to EOF");
    assert_eq!(rest, [0xff, 0x00], "the server's close, then EOF");
}

#[tokio::test]
async fn a_hixie_76_client_round_trips_every_byte_value() {
    let server = TestServer::start(hixie_config(echo_server().await)).await;
    let head = request_76(
        server.addr,
        "/websockify?x=1",
        "Sec-WebSocket-Protocol: base64\r\n",
    );
    let (stream, response) = hixie_connect(server.addr, &head, Some(KEY3)).await;
    let expected = format!(
        "HTTP/1.1 101 WebSocket Protocol Handshake\r\nUpgrade: WebSocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Origin: http://example.com\r\n\
         Sec-WebSocket-Location: ws://{}/websockify?x=1\r\n\
         Sec-WebSocket-Protocol: base64\r\n\r\n",
        server.addr
    );
    assert_eq!(response, expected);
    let mut reader = BufReader::new(stream);
    let mut answer = [0u8; 16];
    within("challenge answer", reader.read_exact(&mut answer))
        .await
        .expect("answer");
    assert_eq!(&answer, ANSWER);

    for len in [1usize, 2, 3, 256, 70_000, 300_000] {
        let data = all_bytes(len);
        reader
            .get_mut()
            .write_all(&frame(&data))
            .await
            .expect("send");
        assert_eq!(read_data(&mut reader, len).await, data, "{len} bytes");
    }
    // One client frame split anywhere, an empty frame, and two frames in one write.
    let data = all_bytes(1000);
    let bytes = frame(&data);
    for piece in bytes.chunks(333) {
        reader.get_mut().write_all(piece).await.expect("send");
        reader.get_mut().flush().await.expect("flush");
    }
    assert_eq!(read_data(&mut reader, 1000).await, data);
    let mut two = frame(b"");
    two.extend(frame(b"\x00\xff"));
    two.extend(frame(b"abc"));
    reader.get_mut().write_all(&two).await.expect("send");
    assert_eq!(read_data(&mut reader, 5).await, b"\x00\xffabc");
    close(reader).await;
}

#[tokio::test]
async fn a_hixie_75_client_round_trips_and_sees_the_target_close() {
    let (target, mut accepted) = scripted_target().await;
    let server = TestServer::start(hixie_config(target)).await;
    let head = request_75(server.addr, "/websockify", "");
    let (stream, response) = hixie_connect(server.addr, &head, None).await;
    let expected = format!(
        "HTTP/1.1 101 Web Socket Protocol Handshake\r\nUpgrade: WebSocket\r\n\
         Connection: Upgrade\r\nWebSocket-Origin: http://example.com\r\n\
         WebSocket-Location: ws://{}/websockify\r\n\r\n",
        server.addr
    );
    assert_eq!(response, expected);
    let mut target = within("target accept", accepted.recv())
        .await
        .expect("target connection");
    let mut reader = BufReader::new(stream);

    let data = all_bytes(100_000);
    reader
        .get_mut()
        .write_all(&frame(&data))
        .await
        .expect("send");
    let mut got = vec![0u8; data.len()];
    within("target reads", target.read_exact(&mut got))
        .await
        .expect("target read");
    assert_eq!(got, data);
    target
        .write_all(b"\x00\xff from the target")
        .await
        .expect("write");
    assert_eq!(
        read_data(&mut reader, 18).await,
        b"\x00\xff from the target"
    );
    // The target closes: the client gets the close frame, then EOF.
    drop(target);
    let mut rest = Vec::new();
    within("close and EOF", reader.read_to_end(&mut rest))
        .await
        .expect("read to EOF");
    assert_eq!(rest, [0xff, 0x00]);
}

#[tokio::test]
async fn without_the_flag_hixie_requests_get_400_naming_it() {
    let server = TestServer::start(config_to(echo_server().await)).await;
    for head in [
        request_76(server.addr, "/websockify", ""),
        request_75(server.addr, "/websockify", ""),
    ] {
        let mut stream = within("connect", TcpStream::connect(server.addr))
            .await
            .expect("connect");
        stream.write_all(head.as_bytes()).await.expect("send");
        stream.write_all(KEY3).await.expect("send");
        let mut reply = Vec::new();
        within("reply", stream.read_to_end(&mut reply))
            .await
            .expect("read");
        let reply = String::from_utf8_lossy(&reply);
        assert!(
            reply.starts_with("HTTP/1.1 400 Hixie WebSocket protocol not enabled\r\n"),
            "{reply}"
        );
        assert!(reply.contains("--hixie"), "{reply}");
    }
}

#[tokio::test]
async fn hixie_handshakes_are_checked_and_go_through_origin_and_token_checks() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let echo = echo_server().await;
    let file = tmp.path().join("tokens");
    std::fs::write(&file, format!("vm1: {echo}\n")).expect("write");
    let mut config = hixie_config(echo);
    config.token = Some(TokenSettings {
        plugin: "TokenFile".into(),
        source: Some(file.to_str().expect("utf-8").into()),
        host_token: false,
    });
    config.auth.allowed_origins = vec!["http://example.com".into()];
    let server = TestServer::start(config).await;
    let addr = server.addr;

    // A good token: the session echoes.
    let (stream, response) = hixie_connect(
        addr,
        &request_76(addr, "/websockify?token=vm1", ""),
        Some(KEY3),
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 101"), "{response}");
    let mut reader = BufReader::new(stream);
    let mut answer = [0u8; 16];
    within("answer", reader.read_exact(&mut answer))
        .await
        .expect("answer");
    reader
        .get_mut()
        .write_all(&frame(b"token"))
        .await
        .expect("send");
    assert_eq!(read_data(&mut reader, 5).await, b"token");
    close(reader).await;

    let refused = |head: String, status: &'static str| async move {
        let (_s, response) = hixie_connect(addr, &head, Some(KEY3)).await;
        assert!(response.starts_with(status), "{head}\n=> {response}");
    };
    refused(
        request_75(addr, "/websockify?token=vm2", ""),
        "HTTP/1.1 404 Token not found",
    )
    .await;
    refused(
        request_75(addr, "/websockify", ""),
        "HTTP/1.1 400 Token not present",
    )
    .await;
    refused(
        request_75(addr, "/websockify?token=vm1", "").replace("example.com", "evil.example"),
        "HTTP/1.1 403",
    )
    .await;
    // A key that does not divide by its spaces, a missing key, an unknown subprotocol.
    refused(
        request_76(addr, "/websockify?token=vm1", "").replace("7]o}` 0e", "7]o}` 3e"),
        "HTTP/1.1 400 Invalid Sec-WebSocket-Key2 header",
    )
    .await;
    refused(
        request_76(addr, "/websockify?token=vm1", "").replace("Sec-WebSocket-Key1", "X-Key1"),
        "HTTP/1.1 400 Missing Sec-WebSocket-Key1 header",
    )
    .await;
    refused(
        request_75(
            addr,
            "/websockify?token=vm1",
            "WebSocket-Protocol: chat\r\n",
        ),
        "HTTP/1.1 400 Invalid protocol selected",
    )
    .await;
}

#[tokio::test]
async fn a_hixie_76_client_whose_key_bytes_never_come_is_dropped_at_the_deadline() {
    let mut config = hixie_config(echo_server().await);
    config.handshake_timeout = std::time::Duration::from_millis(500);
    let server = TestServer::start(config).await;
    let mut stream = within("connect", TcpStream::connect(server.addr))
        .await
        .expect("connect");
    let head = request_76(server.addr, "/websockify", "");
    stream.write_all(head.as_bytes()).await.expect("send");
    stream.write_all(&KEY3[..5]).await.expect("send");
    let mut reply = Vec::new();
    within("dropped", stream.read_to_end(&mut reply))
        .await
        .expect("read");
    assert_eq!(reply, b"", "no 101 without the 8 key bytes");
}

#[tokio::test]
async fn bad_base64_or_an_endless_frame_gets_the_close_frame() {
    let server = TestServer::start(hixie_config(echo_server().await)).await;
    let (mut stream, response) =
        hixie_connect(server.addr, &request_75(server.addr, "/", ""), None).await;
    assert!(response.starts_with("HTTP/1.1 101"), "{response}");
    stream.write_all(b"\x00!!!!\xff").await.expect("send");
    let mut rest = Vec::new();
    within("close and EOF", stream.read_to_end(&mut rest))
        .await
        .expect("read");
    assert_eq!(rest, [0xff, 0x00]);

    // A frame that never ends is closed once past the bound (16 MiB). Its type (0x01, text
    // that the draft says to skip) spares the test decoding 16 MiB of base64 in a debug build.
    let (mut stream, _) = hixie_connect(server.addr, &request_75(server.addr, "/", ""), None).await;
    let (mut reader, mut writer) = stream.split();
    let send = async {
        writer.write_all(b"\x01").await.expect("send");
        let block = vec![b'A'; 1 << 20];
        // Writes fail once the server has closed; the bound is 16 blocks.
        for _ in 0..64 {
            if writer.write_all(&block).await.is_err() {
                break;
            }
        }
    };
    let receive = async {
        let mut rest = Vec::new();
        let _ = reader.read_to_end(&mut rest).await;
        rest
    };
    let ((), rest) = within("an endless frame", async { tokio::join!(send, receive) }).await;
    assert_eq!(rest, [0xff, 0x00]);
}

#[tokio::test]
async fn a_hixie_handshake_after_a_file_request_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::write(tmp.path().join("index.html"), "<p>hi</p>").expect("write");
    let mut config = hixie_config(echo_server().await);
    config.web = Some(websockify::config::WebSettings {
        dir: tmp.path().to_owned(),
        file_only: false,
    });
    let server = TestServer::start(config).await;
    let mut stream = within("connect", TcpStream::connect(server.addr))
        .await
        .expect("connect");
    let file = "GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n";
    let head = request_75(server.addr, "/websockify", "");
    stream
        .write_all(format!("{file}{head}").as_bytes())
        .await
        .expect("send");
    let mut reply = Vec::new();
    within("replies", stream.read_to_end(&mut reply))
        .await
        .expect("read");
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(
        reply.contains("HTTP/1.1 400 Hixie handshake must be the first request"),
        "{reply}"
    );
    // As the first request of its connection, the same handshake works with --web.
    let (_s, response) = hixie_connect(server.addr, &head, None).await;
    assert!(response.starts_with("HTTP/1.1 101"), "{response}");
}
