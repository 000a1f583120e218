//! The WebSocket-to-TCP relay, end to end: handshake, subprotocols, close cases, streaming,
//! backpressure, and many sessions at once.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_tungstenite::{WebSocketStream, client_async};
use websockify::{Config, Target};

use crate::util::*;

type Client = WebSocketStream<TcpStream>;

/// Connects a tungstenite client, offering `protocols` (comma-separated) if given.
async fn ws_client(server: &TestServer, protocols: Option<&str>) -> Client {
    let stream = within("connect", TcpStream::connect(server.addr))
        .await
        .expect("connect");
    let mut request = server.url().into_client_request().expect("request");
    if let Some(protocols) = protocols {
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", protocols.parse().expect("header"));
    }
    let (client, _response) = within("handshake", client_async(request, stream))
        .await
        .expect("handshake");
    client
}

/// Receives the next data message's bytes (pings are answered by tungstenite itself).
async fn next_binary(client: &mut Client) -> Bytes {
    loop {
        match within("next message", client.next()).await {
            Some(Ok(Message::Binary(bytes))) => return bytes,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected a binary message, got {other:?}"),
        }
    }
}

/// Reads until `want` bytes arrived (echoes may come back in several messages).
async fn read_echo(client: &mut Client, want: usize) -> Vec<u8> {
    let mut got = Vec::with_capacity(want);
    while got.len() < want {
        got.extend_from_slice(&next_binary(client).await);
    }
    got
}

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 56) as u8
        })
        .collect()
}

#[tokio::test]
async fn echoes_binary_messages_of_many_sizes() {
    let server = TestServer::start(config_to(echo_server().await)).await;
    let mut client = ws_client(&server, None).await;
    for size in [1usize, 125, 126, 65535, 65536, 200_000] {
        let data = pseudo_random(size, size as u64);
        within("send", client.send(Message::binary(data.clone())))
            .await
            .expect("send");
        assert_eq!(read_echo(&mut client, size).await, data, "size {size}");
    }
    within("close", client.close(None)).await.expect("close");
}

#[tokio::test]
async fn answers_the_rfc_6455_handshake_and_chooses_subprotocols() {
    let server = TestServer::start(config_to(echo_server().await)).await;
    let (_s, head) = raw_upgrade(server.addr, "").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.contains("sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
        "{head}"
    );
    assert!(
        !head.to_ascii_lowercase().contains("sec-websocket-protocol"),
        "{head}"
    );

    for (offer, chosen) in [
        ("binary", "binary"),
        ("base64, binary", "binary"),
        ("base64", "base64"),
    ] {
        let (_s, head) =
            raw_upgrade(server.addr, &format!("Sec-WebSocket-Protocol: {offer}\r\n")).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{offer}: {head}");
        assert!(
            head.contains(&format!("sec-websocket-protocol: {chosen}\r\n")),
            "{offer}: {head}"
        );
    }
    let (_s, head) = raw_upgrade(server.addr, "Sec-WebSocket-Protocol: chat\r\n").await;
    assert!(
        head.starts_with("HTTP/1.1 400 Invalid protocol selected"),
        "{head}"
    );
}

#[tokio::test]
async fn a_subprotocol_given_with_the_option_is_echoed_and_relays_bytes() {
    let mut config = config_to(echo_server().await);
    config.subprotocols = vec!["sip".into()];
    let server = TestServer::start(config).await;
    // A SIP-over-WebSocket client (RFC 7118) offers `sip` and sends text and binary frames;
    // the target gets the bytes either way, and they come back in binary frames.
    let (mut client, head) = raw_upgrade(server.addr, "Sec-WebSocket-Protocol: sip\r\n").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.contains("sec-websocket-protocol: sip\r\n"), "{head}");
    let register = b"REGISTER sip:example.org SIP/2.0\r\n\r\n";
    client
        .write_all(&client_frame(0x82, register))
        .await
        .expect("send");
    assert_eq!(read_frame(&mut client).await, (0x82, register.to_vec()));
    let options = b"OPTIONS sip:example.org SIP/2.0\r\n\r\n";
    client
        .write_all(&client_frame(0x81, options))
        .await
        .expect("send");
    assert_eq!(read_frame(&mut client).await, (0x82, options.to_vec()));
    // The first accepted name in the client's order wins; unknown ones are still refused.
    for (offer, chosen) in [("chat, sip, binary", "sip"), ("binary, sip", "binary")] {
        let (_s, head) =
            raw_upgrade(server.addr, &format!("Sec-WebSocket-Protocol: {offer}\r\n")).await;
        assert!(
            head.contains(&format!("sec-websocket-protocol: {chosen}\r\n")),
            "{offer}: {head}"
        );
    }
    let (_s, head) = raw_upgrade(server.addr, "Sec-WebSocket-Protocol: chat\r\n").await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");

    // tungstenite as the client checks that the answer is the protocol it offered.
    let mut ws = ws_client(&server, Some("sip")).await;
    within("send", ws.send(Message::binary(register.to_vec())))
        .await
        .expect("send");
    assert_eq!(read_echo(&mut ws, register.len()).await, register);
    within("close", ws.close(None)).await.expect("close");
}

#[tokio::test]
async fn refuses_bad_handshakes_and_plain_http_with_a_status() {
    let server = TestServer::start(config_to(echo_server().await)).await;
    let cases = [
        ("GET / HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 405"),
        (
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 405",
        ),
        (
            "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nSec-WebSocket-Key: a\r\nSec-WebSocket-Version: 12\r\n\r\n",
            "HTTP/1.1 400 Unsupported protocol version 12",
        ),
        (
            "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nSec-WebSocket-Key: a\r\n\r\n",
            "HTTP/1.1 400 Missing Sec-WebSocket-Version header",
        ),
        (
            "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n",
            "HTTP/1.1 400 Missing Sec-WebSocket-Key header",
        ),
        ("GARBAGE\r\n\r\n", "HTTP/1.1 400"),
    ];
    for (request, status) in cases {
        let mut stream = TcpStream::connect(server.addr).await.expect("connect");
        stream.write_all(request.as_bytes()).await.expect("write");
        let head = read_head(&mut stream).await;
        assert!(head.starts_with(status), "{request:?} -> {head}");
    }
}

#[tokio::test]
async fn oversized_request_heads_get_431() {
    let server = TestServer::start(config_to(echo_server().await)).await;
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let many = format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n");
    for request in [big, many] {
        let mut stream = TcpStream::connect(server.addr).await.expect("connect");
        let _ = stream.write_all(request.as_bytes()).await;
        let head = read_head(&mut stream).await;
        assert!(head.starts_with("HTTP/1.1 431"), "{head}");
    }
}

#[tokio::test]
async fn base64_subprotocol_carries_base64_text_both_ways() {
    let (target_addr, mut targets) = scripted_target().await;
    let server = TestServer::start(config_to(target_addr)).await;
    let (mut client, head) = raw_upgrade(server.addr, "Sec-WebSocket-Protocol: base64\r\n").await;
    assert!(head.contains("sec-websocket-protocol: base64"), "{head}");
    let mut target = within("target accept", targets.recv())
        .await
        .expect("target");

    // "hello world" in two text frames of one message, split inside a base64 group.
    client
        .write_all(&client_frame(0x01, b"aGVsbG8gd2"))
        .await
        .expect("send");
    client
        .write_all(&client_frame(0x80, b"9ybGQ="))
        .await
        .expect("send");
    let mut got = [0u8; 11];
    within("target read", target.read_exact(&mut got))
        .await
        .expect("read");
    assert_eq!(&got, b"hello world");

    target
        .write_all(b"\x00\xffbytes")
        .await
        .expect("target write");
    let (b0, payload) = read_frame(&mut client).await;
    assert_eq!(b0, 0x81, "a final text frame");
    assert_eq!(payload, b"AP9ieXRlcw==");
}

#[tokio::test]
async fn echoes_the_clients_close_and_closes_the_target() {
    let (target_addr, mut targets) = scripted_target().await;
    let server = TestServer::start(config_to(target_addr)).await;
    let (mut client, _) = raw_upgrade(server.addr, "").await;
    let mut target = within("target accept", targets.recv())
        .await
        .expect("target");

    let mut close = vec![0x0f, 0xa0];
    close.extend_from_slice(b"bye");
    let mut frames = client_frame(0x82, b"last words");
    frames.extend(client_frame(0x88, &close));
    client.write_all(&frames).await.expect("send");
    assert_eq!(read_close(&mut client).await, (4000, "bye".to_owned()));

    let mut delivered = Vec::new();
    within("target EOF", target.read_to_end(&mut delivered))
        .await
        .expect("read");
    assert_eq!(
        delivered, b"last words",
        "data before the close reaches the target"
    );
}

#[tokio::test]
async fn empty_client_close_is_echoed_empty() {
    let server = TestServer::start(config_to(echo_server().await)).await;
    let (mut client, _) = raw_upgrade(server.addr, "").await;
    client
        .write_all(&client_frame(0x88, b""))
        .await
        .expect("send");
    let (b0, payload) = read_frame(&mut client).await;
    assert_eq!((b0, payload.len()), (0x88, 0));
}

#[tokio::test]
async fn delivers_everything_then_closes_1000_when_the_target_closes() {
    let (target_addr, mut targets) = scripted_target().await;
    let server = TestServer::start(config_to(target_addr)).await;
    let (mut client, _) = raw_upgrade(server.addr, "").await;
    let mut target = within("target accept", targets.recv())
        .await
        .expect("target");
    let data = pseudo_random(300_000, 7);
    target.write_all(&data).await.expect("write");
    drop(target);

    let mut got = Vec::new();
    loop {
        let (b0, payload) = read_frame(&mut client).await;
        match b0 {
            0x82 => got.extend_from_slice(&payload),
            0x88 => {
                assert_eq!(&payload[..2], &1000u16.to_be_bytes());
                assert_eq!(&payload[2..], b"Target closed");
                break;
            }
            other => panic!("unexpected frame {other:#x}"),
        }
    }
    assert_eq!(got, data);
}

#[tokio::test]
async fn closes_1011_when_the_target_is_unreachable() {
    let closed = closed_port();
    let server = TestServer::start(config_to(closed.addr)).await;
    let (mut client, head) = raw_upgrade(server.addr, "").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(
        read_close(&mut client).await,
        (1011, "Failed to connect to downstream server".to_owned())
    );
}

#[tokio::test]
async fn protocol_violations_close_with_1002_or_1003() {
    let server = TestServer::start(config_to(echo_server().await)).await;
    let mut top_bit = vec![0x82, 0xff];
    top_bit.extend_from_slice(&(1u64 << 63).to_be_bytes());
    top_bit.extend_from_slice(&[1, 2, 3, 4]);
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("text frame in binary mode", client_frame(0x81, b"hi"), 1003),
        ("unmasked frame", vec![0x82, 0x02, b'h', b'i'], 1002),
        ("reserved bit", client_frame(0xc2, b"hi"), 1002),
        ("reserved opcode", client_frame(0x83, b"hi"), 1002),
        (
            "control frame over 125 bytes",
            client_frame(0x89, &[0; 126]),
            1002,
        ),
        ("fragmented ping", client_frame(0x09, b"hi"), 1002),
        (
            "continuation without start",
            client_frame(0x80, b"hi"),
            1002,
        ),
        ("64-bit length with top bit", top_bit, 1002),
    ];
    for (what, frame, code) in cases {
        let (mut client, _) = raw_upgrade(server.addr, "").await;
        client.write_all(&frame).await.expect("send");
        assert_eq!(read_close(&mut client).await.0, code, "{what}");
        let mut rest = Vec::new();
        within("EOF after the close", client.read_to_end(&mut rest))
            .await
            .expect("EOF");
    }
}

#[tokio::test]
async fn answers_pings_with_the_same_payload() {
    let server = TestServer::start(config_to(echo_server().await)).await;
    let (mut client, _) = raw_upgrade(server.addr, "").await;
    client
        .write_all(&client_frame(0x89, b"are you there?"))
        .await
        .expect("ping");
    assert_eq!(
        read_frame(&mut client).await,
        (0x8a, b"are you there?".to_vec())
    );
}

#[tokio::test]
async fn bytes_sent_with_the_handshake_are_relayed() {
    let server = TestServer::start(config_to(echo_server().await)).await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    let mut request = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        .to_vec();
    request.extend(client_frame(0x82, b"early"));
    stream.write_all(&request).await.expect("write");
    assert!(read_head(&mut stream).await.starts_with("HTTP/1.1 101"));
    assert_eq!(read_frame(&mut stream).await, (0x82, b"early".to_vec()));
}

#[tokio::test]
async fn client_disconnect_closes_the_target() {
    let (target_addr, mut targets) = scripted_target().await;
    let server = TestServer::start(config_to(target_addr)).await;
    let (client, _) = raw_upgrade(server.addr, "").await;
    let mut target = within("target accept", targets.recv())
        .await
        .expect("target");
    drop(client);
    let mut rest = Vec::new();
    within("target EOF", target.read_to_end(&mut rest))
        .await
        .expect("EOF");
}

#[tokio::test]
async fn streams_64_mib_of_random_data_both_ways() {
    let server = TestServer::start(config_to(echo_server().await)).await;
    let client = ws_client(&server, Some("binary")).await;
    let (mut sink, mut stream) = client.split();
    const TOTAL: usize = 64 << 20;
    const CHUNK: usize = 256 << 10;
    let writer = tokio::spawn(async move {
        let mut hash = Sha256::new();
        for i in 0..TOTAL / CHUNK {
            let data = pseudo_random(CHUNK, i as u64);
            hash.update(&data);
            sink.send(Message::binary(data)).await.expect("send");
        }
        (hash.finalize(), sink)
    });
    let mut hash = Sha256::new();
    let mut received = 0;
    let reader = async {
        while received < TOTAL {
            match stream.next().await {
                Some(Ok(Message::Binary(bytes))) => {
                    hash.update(&bytes);
                    received += bytes.len();
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .expect("64 MiB echoed within 60 s");
    let (sent_hash, _sink) = within("writer", writer).await.expect("writer");
    assert_eq!(hash.finalize(), sent_hash);
}

#[tokio::test]
async fn a_frame_declaring_2_pow_40_bytes_streams_through() {
    let (target_addr, mut targets) = scripted_target().await;
    let server = TestServer::start(config_to(target_addr)).await;
    let (mut client, _) = raw_upgrade(server.addr, "").await;
    let mut target = within("target accept", targets.recv())
        .await
        .expect("target");
    let mut header = vec![0x82, 0xff];
    header.extend_from_slice(&(1u64 << 40).to_be_bytes());
    header.extend_from_slice(&[0, 0, 0, 0]);
    client.write_all(&header).await.expect("header");
    let chunk = vec![0x5a; 1 << 20];
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0;
        while total < 8 << 20 {
            let n = target.read(&mut buf).await.expect("read");
            assert!(n > 0);
            assert!(buf[..n].iter().all(|&b| b == 0x5a));
            total += n;
        }
        total
    });
    for _ in 0..8 {
        within("stream 1 MiB", client.write_all(&chunk))
            .await
            .expect("write");
    }
    assert_eq!(
        within("target got 8 MiB", reader).await.expect("reader"),
        8 << 20
    );
}

#[tokio::test]
async fn a_target_that_stops_reading_stops_the_client_side() {
    let (target_addr, mut targets) = scripted_target().await;
    let server = TestServer::start(config_to(target_addr)).await;
    let (mut client, _) = raw_upgrade(server.addr, "").await;
    let _target = within("target accept", targets.recv())
        .await
        .expect("target");
    let frame = client_frame(0x82, &vec![1u8; 1 << 20]);
    // The target never reads: after the kernel buffers and one relay buffer fill up, the
    // client's writes must stall instead of piling up in the proxy.
    stays_pending("client writes stall", Duration::from_secs(2), async {
        for _ in 0..256 {
            client.write_all(&frame).await.expect("write");
        }
    })
    .await;
}

#[tokio::test]
async fn serves_200_concurrent_sessions() {
    let server = TestServer::start(config_to(echo_server().await)).await;
    let mut tasks = Vec::new();
    for i in 0..200u64 {
        let url = server.url();
        let addr = server.addr;
        tasks.push(tokio::spawn(async move {
            let stream = TcpStream::connect(addr).await.expect("connect");
            let (mut client, _) = client_async(url, stream).await.expect("handshake");
            let data = pseudo_random(1000 + i as usize, i);
            client
                .send(Message::binary(data.clone()))
                .await
                .expect("send");
            assert_eq!(read_echo(&mut client, data.len()).await, data);
            client
        }));
    }
    let mut clients = Vec::new();
    for task in tasks {
        clients.push(within("session", task).await.expect("task"));
    }
    for mut client in clients {
        let close = CloseFrame {
            code: CloseCode::Normal,
            reason: "done".into(),
        };
        within("close", client.close(Some(close)))
            .await
            .expect("close");
    }
}

#[tokio::test]
async fn proxies_to_a_unix_socket_target() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("target.sock");
    let listener = tokio::net::UnixListener::bind(&path).expect("bind unix");
    tokio::spawn(async move {
        if let Ok((mut stream, _)) = listener.accept().await {
            let (mut r, mut w) = stream.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
        }
    });
    let server = TestServer::start(Config::new(Target::Unix(path))).await;
    let mut client = ws_client(&server, None).await;
    within("send", client.send(Message::binary(b"over unix".to_vec())))
        .await
        .expect("send");
    assert_eq!(read_echo(&mut client, 9).await, b"over unix");
}

#[tokio::test]
async fn serves_ipv6_clients_and_targets() {
    if !ipv6_loopback() {
        skip_or_fail("no IPv6 loopback on this machine");
        return;
    }
    let echo = echo_server_on("[::1]:0").await;
    let server = TestServer::start_on(config_to(echo), "[::1]:0").await;
    let mut client = ws_client(&server, None).await;
    within("send", client.send(Message::binary(b"v6".to_vec())))
        .await
        .expect("send");
    assert_eq!(read_echo(&mut client, 2).await, b"v6");
}

#[tokio::test]
async fn heartbeat_pings_and_drops_silent_clients() {
    let mut config = config_to(echo_server().await);
    config.heartbeat = Some(Duration::from_millis(200));
    let server = TestServer::start(config).await;
    let (mut client, _) = raw_upgrade(server.addr, "").await;
    let (b0, payload) = read_frame(&mut client).await;
    assert_eq!((b0, payload.len()), (0x89, 0), "an empty ping");
    // Never answer: after three unanswered pings the proxy drops the client.
    let mut rest = Vec::new();
    within("dropped", client.read_to_end(&mut rest))
        .await
        .expect("EOF");
}

#[tokio::test]
async fn shutdown_sends_1001_to_open_sessions() {
    let mut config = config_to(echo_server().await);
    config.drain_timeout = Duration::ZERO;
    let server = TestServer::start(config).await;
    let (mut client, _) = raw_upgrade(server.addr, "").await;
    client
        .write_all(&client_frame(0x82, b"x"))
        .await
        .expect("send");
    assert_eq!(read_frame(&mut client).await, (0x82, b"x".to_vec()));
    server.shutdown.cancel();
    assert_eq!(read_close(&mut client).await.0, 1001);
    client
        .write_all(&client_frame(0x88, &1001u16.to_be_bytes()))
        .await
        .expect("reply");
    // The server finishes once the session has closed.
    let mut server = server;
    within("server exits", &mut server.handle)
        .await
        .expect("join")
        .expect("run");
}

#[tokio::test]
async fn answers_every_ping_of_a_burst_in_order() {
    let server = TestServer::start(config_to(echo_server().await)).await;
    let (mut client, _) = raw_upgrade(server.addr, "").await;
    let burst: Vec<u8> = (0..10)
        .flat_map(|i| client_frame(0x89, format!("payload-{i}").as_bytes()))
        .collect();
    client.write_all(&burst).await.expect("pings");
    for i in 0..10 {
        assert_eq!(
            read_frame(&mut client).await,
            (0x8a, format!("payload-{i}").into_bytes())
        );
    }
}
