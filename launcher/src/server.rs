//! The accept loop: hands each connection to its own task, and decides when the server stops
//! (signal, `--timeout`, `--idle-timeout`, `--run-once`) and how long it drains.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::config::Config;
use crate::listen::Listener;
use crate::state::Shared;

/// Serves `listener` until `shutdown` is cancelled or a lifecycle option ends the server.
pub async fn run(
    config: Config,
    listener: impl Into<Listener>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut listener = listener.into();
    let shared = Arc::new(Shared::new(config, shutdown.clone())?);
    let config = &shared.config;
    let tracker = TaskTracker::new();
    let stop_at = config.timeout.map(|t| Instant::now() + t);
    let mut idle_since = Instant::now();
    let mut idle_tick = tokio::time::interval(Duration::from_secs(1));
    let mut next_id: u64 = 0;

    loop {
        tokio::select! {
            () = shutdown.cancelled() => {
                tracing::info!(open = tracker.len(), "shutting down: closing sessions (up to {:?})", config.drain_timeout);
                break;
            }
            () = shared.stop_accepting.cancelled() => {
                tracing::info!("exiting after this session due to --run-once");
                break;
            }
            () = tokio::time::sleep_until(stop_at.unwrap_or_else(Instant::now)), if stop_at.is_some() => {
                tracing::info!("listener exit due to --timeout {}", config.timeout.unwrap_or_default().as_secs());
                break;
            }
            _ = idle_tick.tick(), if config.idle_timeout.is_some() => {
                let limit = config.idle_timeout.unwrap_or_default();
                if !tracker.is_empty() {
                    idle_since = Instant::now();
                } else if idle_since.elapsed() >= limit {
                    tracing::info!("listener exit due to --idle-timeout {}", limit.as_secs());
                    break;
                }
            }
            accepted = listener.accept() => match accepted {
                Ok(Some((stream, peer))) => {
                    next_id += 1;
                    let span = tracing::info_span!("conn", id = next_id, %peer);
                    tracker.spawn(crate::connection::handle(stream, Arc::clone(&shared)).instrument(span));
                }
                Ok(None) => {
                    tracing::debug!("no more connections from {}", listener.describe());
                    break;
                }
                Err(err) => {
                    // Out of file descriptors and the like: wait a moment instead of spinning.
                    tracing::warn!("accept failed: {err}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    drop(listener);
    tracker.close();
    if !shutdown.is_cancelled() {
        tokio::select! {
            () = tracker.wait() => return Ok(()),
            () = shutdown.cancelled() => {}
        }
    }
    if tokio::time::timeout(config.drain_timeout, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = tracker.len(),
            "sessions still open after {:?}; exiting anyway",
            config.drain_timeout
        );
    }
    Ok(())
}
