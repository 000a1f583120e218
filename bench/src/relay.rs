//! The plain TCP relay baseline (`ws-bench relay`): the floor for any proxy.
//!
//! It accepts on 127.0.0.1, connects each client to the target and runs tokio's
//! `copy_bidirectional_with_sizes` with 64 KiB buffers each way (websockify's `buffer_size`),
//! on tokio's default multi-thread runtime. It understands nothing of WebSocket: the client
//! speaks WebSocket through it to the bench's own WebSocket target, so every byte of framing
//! crosses it untouched. It prints `listening on ADDR` and exits when its stdin closes.
//!
//! With `--tls-cert`/`--tls-key` it terminates TLS (rustls) first and copies the plaintext:
//! the floor of the wss:// table.

use std::net::SocketAddr;

use anyhow::{Context as _, Result};
use tokio::net::{TcpListener, TcpStream};

pub async fn run(
    listen: SocketAddr,
    target: SocketAddr,
    buf: usize,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    println!("listening on {}", listener.local_addr()?);
    crate::exit_when_stdin_closes();
    loop {
        let (mut client, _) = match listener.accept().await {
            Ok(c) => c,
            Err(_) => {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let tls = tls.clone();
        tokio::spawn(async move {
            let _ = client.set_nodelay(true);
            let Ok(Ok(mut upstream)) = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                TcpStream::connect(target),
            )
            .await
            else {
                return;
            };
            let _ = upstream.set_nodelay(true);
            match tls {
                None => {
                    let _ = tokio::io::copy_bidirectional_with_sizes(
                        &mut client,
                        &mut upstream,
                        buf,
                        buf,
                    )
                    .await;
                }
                Some(acceptor) => {
                    let Ok(Ok(mut client)) = tokio::time::timeout(
                        std::time::Duration::from_secs(10),
                        acceptor.accept(client),
                    )
                    .await
                    else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional_with_sizes(
                        &mut client,
                        &mut upstream,
                        buf,
                        buf,
                    )
                    .await;
                }
            }
        });
    }
}
