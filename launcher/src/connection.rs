//! One client connection, start to finish: (PROXY header) -> sniff -> TLS -> request ->
//! connect target -> relay -> close. Every step is bounded in time, and every failure ends
//! this connection only, with one log line saying why.

use std::sync::Arc;

use tokio::time::Instant;

use crate::client::ClientAddr;
use crate::config::Target;
use crate::frame::close_code;
use crate::limits::{Over, Slot};
use crate::listen::Peer;
use crate::logging::{Elapsed, Throttle};
use crate::metrics::{METRICS, Refusal};
use crate::proxy_header;
use crate::record;
use crate::relay::{self, RelayOptions};
use crate::request::{self, Admission};
use crate::sniff::{self, Sniffed};
use crate::state::Shared;
use crate::stream::{ClientStream, TargetStream};
use crate::target;

/// Rate limits for the lines a flood of bad connections would write.
static NO_PROXY_HEADER: Throttle = Throttle::new("PROXY header missing", tracing::Level::INFO);
static TLS_FAILED: Throttle = Throttle::new("TLS handshake failed", tracing::Level::INFO);
static PLAIN_REFUSED: Throttle = Throttle::new("non-TLS connection refused", tracing::Level::INFO);
static DROPPED: Throttle = Throttle::new("connection dropped", tracing::Level::INFO);

/// Serves one accepted connection; logs instead of returning errors. `slot` is its place in
/// `--max-connections`, taken at accept (or the limit that refused it: the client then gets
/// 503 once its request is read).
///
/// A task is laid out for its largest state, and most sessions spend their life idle in the
/// relay. So the steps before it (TLS handshake, request, connect: up to 3.6 KiB of future
/// state) run in a boxed future freed when they end, and the task itself holds only the
/// relay's state (README, "Memory per connection").
///
/// Not an `async fn`: that would keep room for its arguments in the task for its whole life.
pub fn handle(
    client: ClientStream,
    peer: Peer,
    slot: Result<Slot, Over>,
    shared: Arc<Shared>,
) -> impl Future<Output = ()> + Send {
    let open = Box::pin(open(client, peer, slot, Arc::clone(&shared)));
    async move {
        let Some(mut session) = open.await else {
            return;
        };
        session.relay(&shared).await;
    }
}

/// A session with the WebSocket handshake done and the target connected: what the relay and
/// the summary line need.
struct Session {
    client: ClientStream,
    target: TargetStream,
    mode: relay::Mode,
    /// Client bytes that came with the request, already frames.
    leftover: bytes::Bytes,
    target_desc: Target,
    recording: Option<Box<record::Recording>>,
    /// Not read: holds the connection's places in the limits until the session is dropped.
    _slot: Result<Slot, Over>,
}

/// Every step up to a connected target; `None` when the connection ended before (logged).
async fn open(
    mut client: ClientStream,
    peer: Peer,
    slot: Result<Slot, Over>,
    shared: Arc<Shared>,
) -> Option<Session> {
    let config = &shared.config;
    let accepted = Instant::now();
    let deadline = accepted + config.handshake_timeout;
    tracing::debug!(%peer, "accepted connection");

    let mut client_addr = peer.addr().map(ClientAddr::from);
    if config.proxy_protocol {
        let timeout = config.first_byte_timeout;
        match proxy_header::read(&mut client, accepted + timeout, timeout).await {
            Ok(Some(source)) => client_addr = Some(source.into()),
            Ok(None) => {}
            Err(err) => {
                METRICS.refused(Refusal::ProxyHeader);
                if NO_PROXY_HEADER.admit() {
                    tracing::info!(%peer, "connection refused: {err}");
                }
                return None;
            }
        }
    }
    let peer_trusted = peer
        .addr()
        .is_some_and(|addr| config.trusted_proxies.contains(addr.ip()));
    if !peer_trusted && let Some(addr) = &client_addr {
        tracing::Span::current().record("client", tracing::field::display(addr));
    }

    let stream = match sniff::sniff(&client, config.first_byte_timeout).await {
        Ok(Sniffed::Tls) => {
            let acceptor = match shared.tls.acceptor() {
                Ok(acceptor) => acceptor,
                Err(err) => {
                    METRICS.tls_handshake(false);
                    tracing::warn!("TLS connection refused: {err}");
                    return None;
                }
            };
            let handshake = tokio::time::timeout_at(deadline, acceptor.accept(client)).await;
            METRICS.tls_handshake(matches!(handshake, Ok(Ok(_))));
            match handshake {
                Ok(Ok(tls)) => ClientStream::Tls(Box::new(tls)),
                Ok(Err(err)) => {
                    METRICS.refused(Refusal::Tls);
                    if TLS_FAILED.admit() {
                        tracing::info!("TLS handshake failed: {err}");
                    }
                    return None;
                }
                Err(_) => {
                    METRICS.refused(Refusal::Tls);
                    if TLS_FAILED.admit() {
                        tracing::info!(
                            "TLS handshake not finished within {:?}",
                            config.handshake_timeout
                        );
                    }
                    return None;
                }
            }
        }
        Ok(Sniffed::Plain | Sniffed::FlashPolicy) if config.tls.ssl_only => {
            METRICS.refused(Refusal::Tls);
            if PLAIN_REFUSED.admit() {
                tracing::info!("non-TLS connection refused (--ssl-only)");
            }
            return None;
        }
        Ok(Sniffed::FlashPolicy) => {
            match sniff::answer_flash_policy(&mut client, config.first_byte_timeout).await {
                Ok(true) => tracing::info!("answered a Flash policy request"),
                _ => tracing::debug!(
                    "dropped a connection that started with '<' but is no policy request"
                ),
            }
            return None;
        }
        Ok(Sniffed::Plain) => client,
        Err(err) => {
            tracing::debug!("connection dropped: {err}");
            return None;
        }
    };
    let scheme = if stream.is_tls() { "wss" } else { "ws" };

    let mut admission = Admission {
        client: client_addr,
        peer_trusted,
        slot,
    };
    let head_time = deadline.saturating_duration_since(Instant::now());
    let upgraded = match request::serve(stream, head_time, &shared, &mut admission).await {
        Ok(Some(upgraded)) => upgraded,
        Ok(None) => {
            tracing::debug!("connection closed without a WebSocket upgrade");
            return None;
        }
        Err(err) => {
            if DROPPED.admit() {
                tracing::info!("connection dropped: {err}");
            }
            return None;
        }
    };
    if config.run_once {
        shared.stop_accepting.cancel();
    }
    let target_desc = &upgraded.target;
    let tls_note = if config.ssl_target {
        " (using TLS)"
    } else {
        ""
    };
    tracing::info!(
        path = %upgraded.path,
        protocol = upgraded.protocol.as_deref().unwrap_or("none"),
        websocket = upgraded.version,
        target = %target_desc,
        "{scheme}:// WebSocket connection, connecting to {target_desc}{tls_note}"
    );
    METRICS.session_opened();
    // Opened before connecting, as upstream: a failed connect still leaves a (short) file.
    let recording = shared
        .recorder
        .as_ref()
        .and_then(|recorder| match recorder.start() {
            Ok(recording) => Some(Box::new(recording)),
            Err(err) => {
                tracing::warn!("not recording this session: {err}");
                None
            }
        });
    if config.traffic {
        record::traffic_legend();
    }

    let mut client = upgraded.stream;
    let proxy = config.target_proxy_protocol.map(|version| {
        (
            version,
            admission.client.as_ref().map(ClientAddr::socket_addr),
        )
    });
    let connect = target::connect(
        target_desc,
        shared.target_tls.as_ref(),
        proxy,
        config.connect_timeout,
    );
    let connected = tokio::select! {
        connected = connect => connected,
        () = shared.close_sessions.cancelled() => {
            tracing::info!("shutting down while connecting to {target_desc}");
            relay::send_close(&mut client, upgraded.mode, close_code::GOING_AWAY, "Server shutting down").await;
            METRICS.session_closed(close_code::GOING_AWAY, 0, 0);
            return None;
        }
    };
    let target = match connected {
        Ok(target) => target,
        Err(err) => {
            tracing::warn!("Failed to connect to {target_desc}: {err}");
            relay::send_close(
                &mut client,
                upgraded.mode,
                close_code::INTERNAL,
                "Failed to connect to downstream server",
            )
            .await;
            METRICS.session_closed(close_code::INTERNAL, 0, 0);
            return None;
        }
    };
    Some(Session {
        client,
        target,
        mode: upgraded.mode,
        leftover: upgraded.leftover,
        target_desc: upgraded.target,
        recording,
        _slot: admission.slot,
    })
}

impl Session {
    /// Relays until the session ends, then writes its summary line. By reference, so the
    /// session is laid out once in the task, not again inside this future.
    async fn relay(&mut self, shared: &Shared) {
        let config = &shared.config;
        let session_start = Instant::now();
        let options = RelayOptions {
            heartbeat: config.heartbeat,
            linger: std::time::Duration::from_secs(2),
            shutdown: shared.close_sessions.clone(),
            traffic: config.traffic,
            tls_client: self.client.is_tls(),
        };
        let outcome = relay::run(
            &mut self.client,
            &mut self.target,
            self.mode,
            std::mem::take(&mut self.leftover),
            self.recording.take(),
            &options,
        )
        .await;
        let code = outcome.reason.code();
        METRICS.session_closed(code, outcome.bytes_to_target, outcome.bytes_to_client);
        tracing::info!(
            target = %self.target_desc,
            duration = %Elapsed(session_start.elapsed()),
            to_target = outcome.bytes_to_target,
            to_client = outcome.bytes_to_client,
            code,
            "session closed: {}",
            outcome.reason
        );
    }
}
