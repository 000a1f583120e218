//! Helpers shared by the token back-ends' unit tests: a time bound, a target shorthand and a
//! small HTTP token service on loopback.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::json;

use crate::config::Target;

/// Every async test runs under this bound.
pub async fn bounded<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), future)
        .await
        .expect("test took too long")
}

/// A loopback port where connecting is refused: a bound socket that does not listen. The port
/// stays taken while the socket lives, so no other test can start listening on it.
pub fn refused_port() -> (socket2::Socket, u16) {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().expect("addr");
    socket.bind(&any.into()).expect("bind");
    let port = socket
        .local_addr()
        .expect("addr")
        .as_socket()
        .expect("inet")
        .port();
    (socket, port)
}

/// A TCP target.
pub fn tcp(host: &str, port: u16) -> Target {
    Target::Tcp {
        host: host.into(),
        port,
    }
}

/// A tiny token service on 127.0.0.1:0. It records the paths it is asked for.
pub struct TokenService {
    pub addr: std::net::SocketAddr,
    pub seen: Arc<Mutex<Vec<String>>>,
}

pub async fn token_service() -> TokenService {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let log = Arc::clone(&log);
                    async move {
                        let path = request
                            .uri()
                            .path_and_query()
                            .map(|p| p.to_string())
                            .unwrap_or_default();
                        log.lock().expect("log").push(path.clone());
                        let (status, body) = if path.starts_with("/plain/") {
                            (200, "127.0.0.1:5901\n".to_string())
                        } else if path.starts_with("/json/") {
                            (200, json!({"host": "10.0.0.2", "port": "5902"}).to_string())
                        } else if path.starts_with("/jsonnum/") {
                            (200, json!({"host": "::1", "port": 5903}).to_string())
                        } else if let Some(port) = path.strip_prefix("/port/") {
                            (200, format!("127.0.0.1:{port}"))
                        } else if path.starts_with("/garbage/") {
                            (200, "not a target".to_string())
                        } else if path.starts_with("/slow/") {
                            tokio::time::sleep(Duration::from_secs(30)).await;
                            (200, "127.0.0.1:1".to_string())
                        } else if path.starts_with("/error/") {
                            (500, "oops".to_string())
                        } else {
                            (404, "not found".to_string())
                        };
                        let response = Response::builder()
                            .status(status)
                            .body(http_body_util::Full::new(Bytes::from(body)))
                            .expect("response");
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    TokenService { addr, seen }
}
