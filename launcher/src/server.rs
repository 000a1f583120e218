//! The accept loop: hands each connection to its own task, and decides when the server stops
//! (signal, `--timeout`, `--idle-timeout`, `--run-once`) and how it drains.
//!
//! Draining on SIGINT/SIGTERM (`shutdown` cancelled): `/readyz` turns 503 at once; new
//! connections are still accepted for `--shutdown-delay` so a load balancer's health check
//! notices first; then the listener closes; open sessions go on for up to `--drain-timeout`,
//! then get close 1001 (`Shared::close_sessions`) and a short, bounded time to finish.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::config::{Config, MetricsListen};
use crate::listen::Listener;
use crate::metrics;
use crate::state::Shared;

/// How long sessions get to send their 1001 and close once the drain timeout is over (the
/// relay's close linger is 2 s).
const CLOSE_GRACE: Duration = Duration::from_secs(3);

/// Serves `listener` until `shutdown` is cancelled (then drains) or a lifecycle option ends
/// the server.
pub async fn run(
    config: Config,
    listener: impl Into<Listener>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    run_with(config, listener, shutdown, Arc::new(Notify::new())).await
}

/// [`run`], and each notification of `reload` (SIGHUP) re-reads what can change while
/// running: the TLS certificate, the token files, and `--log-file` (reopened for logrotate).
pub async fn run_with(
    config: Config,
    listener: impl Into<Listener>,
    shutdown: CancellationToken,
    reload: Arc<Notify>,
) -> anyhow::Result<()> {
    prepare(config, listener)
        .await?
        .serve(shutdown, reload)
        .await
}

/// A server with everything opened (certificate, files, metrics listener) but not serving
/// yet: the process drops privileges (`--user`) between [`prepare`] and [`Prepared::serve`].
pub struct Prepared {
    shared: Arc<Shared>,
    listener: Listener,
    metrics_listener: Option<tokio::net::TcpListener>,
}

/// Builds the shared state (reads the certificate and the other start-up files) and binds
/// the metrics listener.
pub async fn prepare(config: Config, listener: impl Into<Listener>) -> anyhow::Result<Prepared> {
    let shared = Arc::new(Shared::new(config)?);
    let metrics_listener = match &shared.config.metrics_listen {
        Some(spec) => Some(bind_metrics(spec).await?),
        None => None,
    };
    Ok(Prepared {
        shared,
        listener: listener.into(),
        metrics_listener,
    })
}

impl Prepared {
    /// What the connections will share.
    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    /// Serves until `shutdown` (then drains) or a lifecycle option ends the server; each
    /// notification of `reload` re-reads what can change.
    pub async fn serve(
        self,
        shutdown: CancellationToken,
        reload: Arc<Notify>,
    ) -> anyhow::Result<()> {
        serve(self, shutdown, reload).await
    }
}

async fn serve(
    prepared: Prepared,
    shutdown: CancellationToken,
    reload: Arc<Notify>,
) -> anyhow::Result<()> {
    let Prepared {
        shared,
        mut listener,
        metrics_listener,
    } = prepared;
    let reloader = tokio::spawn(reload_on(reload, Arc::clone(&shared)));
    let _stop_reloader = AbortOnDrop(reloader);
    let trimmer = tokio::spawn(crate::memory::trim_when_quiet(Arc::clone(&shared.limits)));
    let _stop_trimmer = AbortOnDrop(trimmer);
    let config = &shared.config;
    let metrics_stop = CancellationToken::new();
    let _stop_metrics = metrics_stop.clone().drop_guard();
    if let Some(metrics_listener) = metrics_listener {
        tracing::info!(
            "metrics listening on {}",
            metrics_listener
                .local_addr()
                .map_or_else(|_| "?".to_owned(), |a| a.to_string())
        );
        let readiness: Arc<dyn metrics::Readiness> = shared.clone();
        tokio::spawn(metrics::serve(metrics_listener, readiness, metrics_stop));
    }
    let tracker = TaskTracker::new();
    let (to_spawner, accepted_rx) = tokio::sync::mpsc::channel(SPAWN_QUEUE);
    let spawner = tokio::spawn(spawn_sessions(
        accepted_rx,
        tracker.clone(),
        Arc::clone(&shared),
    ));
    let stop_at = config.timeout.map(|t| Instant::now() + t);
    let mut idle_since = Instant::now();
    let mut idle_tick = tokio::time::interval(Duration::from_secs(1));
    let mut next_id: u64 = 0;
    // Set once draining: new connections are taken until then.
    let mut accept_until: Option<Instant> = None;

    loop {
        tokio::select! {
            () = shutdown.cancelled(), if accept_until.is_none() => {
                shared.draining.store(true, Ordering::Relaxed);
                accept_until = Some(Instant::now() + config.shutdown_delay);
                tracing::info!(
                    open = tracker.len(),
                    "shutting down: not ready; accepting for {:?} more, then sessions have {:?} to finish",
                    config.shutdown_delay,
                    config.drain_timeout
                );
            }
            () = tokio::time::sleep_until(accept_until.unwrap_or_else(Instant::now)), if accept_until.is_some() => {
                tracing::info!(open = tracker.len(), "listener closed: draining open sessions");
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
                    let slot = shared.limits.admit();
                    let span = tracing::info_span!("conn", id = next_id, client = tracing::field::Empty);
                    // Spawned by a runtime thread, not by this loop: see `spawn_sessions`.
                    if to_spawner.send((stream, peer, slot, span)).await.is_err() {
                        tracing::warn!("session spawner gone: connection dropped");
                    }
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
    // Every accepted connection is spawned (and tracked) before the tracker closes.
    drop(to_spawner);
    let _ = spawner.await;
    tracker.close();
    if !shutdown.is_cancelled() {
        tokio::select! {
            () = tracker.wait() => return Ok(()),
            () = shutdown.cancelled() => shared.draining.store(true, Ordering::Relaxed),
        }
    }
    if tokio::time::timeout(config.drain_timeout, tracker.wait())
        .await
        .is_ok()
    {
        return Ok(());
    }
    tracing::info!(
        open = tracker.len(),
        "drain timeout of {:?} over: closing the remaining sessions (1001)",
        config.drain_timeout
    );
    shared.close_sessions.cancel();
    if tokio::time::timeout(CLOSE_GRACE, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = tracker.len(),
            "sessions still open {CLOSE_GRACE:?} after their close; exiting anyway"
        );
    }
    Ok(())
}

/// Accepted connections on their way to [`spawn_sessions`]; the accept loop waits when full.
const SPAWN_QUEUE: usize = 64;

/// An accepted connection, its place in the limits and its span.
type Accepted = (
    crate::stream::ClientStream,
    crate::listen::Peer,
    Result<crate::limits::Slot, crate::limits::Over>,
    tracing::Span,
);

/// Spawns a session task for each accepted connection, from a runtime worker thread.
///
/// Why not from the accept loop: it runs on the thread that called `block_on`, and glibc
/// gives each thread its own heap (arena). Every session's span keeps a small block in that
/// heap for as long as the process lives (tracing's registry pools span data), so session
/// tasks allocated there too would leave every page of a spike pinned by small blocks:
/// ~48 MiB stayed after 9,900 idle sessions closed. Allocated by a worker, a session's
/// memory goes back in whole pages when it ends (README, "Memory after a spike").
async fn spawn_sessions(
    mut accepted: tokio::sync::mpsc::Receiver<Accepted>,
    tracker: TaskTracker,
    shared: Arc<Shared>,
) {
    while let Some((stream, peer, slot, span)) = accepted.recv().await {
        // Not boxed again: `handle` already boxes its large first steps, so the task holds
        // about 1.2 KiB; a second box measured 1.6 k instructions a cycle cheaper (less to
        // copy while spawning) but 0.05 KiB more per idle wss:// connection (10.0 against
        // 9.95 at 5,000), the bar being 10.
        let session = crate::connection::handle(stream, peer, slot, Arc::clone(&shared));
        tracker.spawn(session.instrument(span));
    }
}

/// Aborts a background task when the server returns.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reloads on every notification, logging what it did.
async fn reload_on(reload: Arc<Notify>, shared: Arc<Shared>) {
    loop {
        reload.notified().await;
        tracing::info!("SIGHUP: reloading the certificate, the token files and the log file");
        if shared.tls.cert_present() {
            match shared.tls.check() {
                Ok(()) => tracing::info!(
                    "TLS certificate in use: {}",
                    shared.config.tls.cert.display()
                ),
                Err(err) => tracing::warn!("TLS certificate: {err}"),
            }
        }
        if let Some(tokens) = &shared.tokens {
            match tokens.reload().await {
                Ok(Some(count)) => tracing::info!("{}: {count} tokens loaded", tokens.name()),
                Ok(None) => tracing::info!("{}: nothing to reload (not file-based)", tokens.name()),
                Err(err) => tracing::warn!("{}: reload failed: {err}", tokens.name()),
            }
        }
        match tokio::task::spawn_blocking(crate::logging::reopen).await {
            Ok(Ok(Some(path))) => tracing::info!("log file reopened: {}", path.display()),
            Ok(Ok(None)) => {}
            Ok(Err(err)) => tracing::warn!("log file not reopened: {err:#}"),
            Err(err) => tracing::warn!("log file not reopened: {err}"),
        }
    }
}

/// Binds the metrics listener: `host:port`, or loopback for a bare port.
async fn bind_metrics(spec: &MetricsListen) -> anyhow::Result<tokio::net::TcpListener> {
    let host = spec.host.as_deref().unwrap_or("127.0.0.1");
    tokio::net::TcpListener::bind((host, spec.port))
        .await
        .with_context(|| format!("cannot listen for metrics on {host}:{}", spec.port))
}
