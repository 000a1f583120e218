//! One client connection, start to finish: sniff -> TLS -> request -> connect target ->
//! relay -> close. Every step is bounded in time, and every failure ends this connection
//! only, with one log line saying why.

use std::sync::Arc;

use tokio::time::Instant;

use crate::frame::close_code;
use crate::record;
use crate::relay::{self, RelayOptions};
use crate::request;
use crate::sniff::{self, Sniffed};
use crate::state::Shared;
use crate::stream::ClientStream;
use crate::target;

/// Serves one accepted connection; logs instead of returning errors.
pub async fn handle(client: ClientStream, shared: Arc<Shared>) {
    let config = &shared.config;
    let accepted = Instant::now();
    let deadline = accepted + config.handshake_timeout;
    tracing::debug!("accepted connection");

    let stream = match sniff::sniff(&client, config.first_byte_timeout).await {
        Ok(Sniffed::Tls) => {
            let acceptor = match shared.tls.acceptor() {
                Ok(acceptor) => acceptor,
                Err(err) => {
                    tracing::warn!("TLS connection refused: {err}");
                    return;
                }
            };
            match tokio::time::timeout_at(deadline, acceptor.accept(client)).await {
                Ok(Ok(tls)) => ClientStream::Tls(Box::new(tls)),
                Ok(Err(err)) => {
                    tracing::info!("TLS handshake failed: {err}");
                    return;
                }
                Err(_) => {
                    tracing::info!(
                        "TLS handshake not finished within {:?}",
                        config.handshake_timeout
                    );
                    return;
                }
            }
        }
        Ok(Sniffed::Plain | Sniffed::FlashPolicy) if config.tls.ssl_only => {
            tracing::info!("non-TLS connection refused (--ssl-only)");
            return;
        }
        Ok(Sniffed::FlashPolicy) => {
            let mut client = client;
            match sniff::answer_flash_policy(&mut client, config.first_byte_timeout).await {
                Ok(true) => tracing::info!("answered a Flash policy request"),
                _ => tracing::debug!(
                    "dropped a connection that started with '<' but is no policy request"
                ),
            }
            return;
        }
        Ok(Sniffed::Plain) => client,
        Err(err) => {
            tracing::debug!("connection dropped: {err}");
            return;
        }
    };
    let scheme = if stream.is_tls() { "wss" } else { "ws" };

    let head_time = deadline.saturating_duration_since(Instant::now());
    let upgraded = match request::serve(stream, head_time, &shared).await {
        Ok(Some(upgraded)) => upgraded,
        Ok(None) => {
            tracing::debug!("connection closed without a WebSocket upgrade");
            return;
        }
        Err(err) => {
            tracing::info!("connection dropped: {err}");
            return;
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
        protocol = upgraded.protocol.unwrap_or("none"),
        "{scheme}:// WebSocket connection, connecting to {target_desc}{tls_note}"
    );
    // Opened before connecting, as upstream: a failed connect still leaves a (short) file.
    let recording = shared
        .recorder
        .as_ref()
        .and_then(|recorder| match recorder.start() {
            Ok(recording) => Some(recording),
            Err(err) => {
                tracing::warn!("not recording this session: {err}");
                None
            }
        });
    if config.traffic {
        record::traffic_legend();
    }

    let mut client = upgraded.stream;
    let connect = target::connect(
        target_desc,
        shared.target_tls.as_ref(),
        config.connect_timeout,
    );
    let connected = tokio::select! {
        connected = connect => connected,
        () = shared.shutdown.cancelled() => {
            tracing::info!("shutting down while connecting to {target_desc}");
            relay::send_close(&mut client, close_code::GOING_AWAY, "Server shutting down").await;
            return;
        }
    };
    let mut target = match connected {
        Ok(target) => target,
        Err(err) => {
            tracing::warn!("Failed to connect to {target_desc}: {err}");
            relay::send_close(
                &mut client,
                close_code::INTERNAL,
                "Failed to connect to downstream server",
            )
            .await;
            return;
        }
    };

    let session_start = Instant::now();
    let options = RelayOptions {
        heartbeat: config.heartbeat,
        linger: std::time::Duration::from_secs(2),
        shutdown: shared.shutdown.clone(),
        traffic: config.traffic,
    };
    let outcome = relay::run(
        &mut client,
        &mut target,
        upgraded.mode,
        upgraded.leftover,
        recording,
        &options,
    )
    .await;
    tracing::info!(
        duration = ?session_start.elapsed(),
        to_target = outcome.bytes_to_target,
        to_client = outcome.bytes_to_client,
        code = outcome.reason.code(),
        "session closed: {}",
        outcome.reason
    );
}
