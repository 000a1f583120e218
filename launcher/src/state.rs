//! What every connection of one server shares: the settings and the pieces built from them
//! once at start (TLS, web root, auth, token backend, recorder). Read-only after start; the
//! TLS certificate cache inside [`TlsServer`] is the only part that changes, and only when the
//! certificate file does.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::auth::Auth;
use crate::config::Config;
use crate::limits::Limits;
use crate::metrics::Readiness;
use crate::record::Recorder;
use crate::tls::{TargetTls, TlsServer};
use crate::token::Tokens;
use crate::web::WebRoot;

/// Read-only state every connection sees.
pub struct Shared {
    pub config: Config,
    pub tls: TlsServer,
    /// `--web`: the static file root.
    pub web: Option<WebRoot>,
    /// Authentication (always present; empty when nothing is configured).
    pub auth: Auth,
    /// `--token-plugin`: the token backend.
    pub tokens: Option<Tokens>,
    /// `--record`: hands out one recording per session.
    pub recorder: Option<Recorder>,
    /// `--ssl-target`: the TLS client for targets.
    pub target_tls: Option<TargetTls>,
    /// `--max-connections`, `--max-connections-per-ip`, and what is open now.
    pub limits: Arc<Limits>,
    /// Set on SIGINT/SIGTERM: `/readyz` says 503 while open sessions drain.
    pub draining: AtomicBool,
    /// Cancelled when the drain ends: open sessions send close 1001.
    pub close_sessions: CancellationToken,
    /// Cancelled by the first WebSocket session under `--run-once`.
    pub stop_accepting: CancellationToken,
}

impl Shared {
    /// Builds everything `config` asks for; errors name the option to fix.
    pub fn new(config: Config) -> anyhow::Result<Shared> {
        let tls = TlsServer::new(&config.tls).context("TLS settings")?;
        if tls.cert_present()
            && let Err(err) = tls.check()
        {
            tracing::warn!("TLS connections will fail until this is fixed: {err}");
        }
        let target_tls = if config.ssl_target {
            let target_tls = TargetTls::new(&config.target_tls).context("--ssl-target")?;
            tracing::info!(
                "TLS to the target: {}",
                TargetTls::describe(&config.target_tls)
            );
            Some(target_tls)
        } else {
            None
        };
        let web = config
            .web
            .as_ref()
            .map(|web| WebRoot::new(&web.dir, web.file_only))
            .transpose()?;
        let auth = Auth::new(
            config.auth.plugin.as_deref(),
            config.auth.source.as_deref(),
            &config.auth.allowed_origins,
        )?;
        if auth.plugin_name() == Some("ClientCertCNAuth") && !config.tls.verify_client {
            tracing::warn!(
                "ClientCertCNAuth needs --verify-client: without it no client presents a certificate and every connection is refused"
            );
        }
        warn_about_footguns(&config, &auth);
        let tokens = config
            .token
            .as_ref()
            .map(|t| Tokens::new(&t.plugin, t.source.as_deref()))
            .transpose()?;
        if let Some(tokens) = &tokens {
            crate::metrics::METRICS.token_plugin(tokens.name());
        }
        let recorder = config.record.as_deref().map(Recorder::new).transpose()?;
        Ok(Shared {
            limits: Limits::new(config.max_connections, config.max_connections_per_ip),
            config,
            tls,
            web,
            auth,
            tokens,
            recorder,
            target_tls,
            draining: AtomicBool::new(false),
            close_sessions: CancellationToken::new(),
            stop_accepting: CancellationToken::new(),
        })
    }
}

/// Start-up warnings for settings that work but quietly do less than they seem to.
fn warn_about_footguns(config: &Config, auth: &Auth) {
    if config.tls.verify_client && !config.tls.ssl_only {
        tracing::warn!(
            "--verify-client without --ssl-only: plain ws:// and http:// clients are served without any certificate; add --ssl-only to require one"
        );
    }
    let basic = auth.plugin_name() == Some("BasicHTTPAuth");
    if (basic || config.web_auth) && config.auth.allowed_origins.is_empty() {
        tracing::warn!(
            "{} without --allowed-origin: a page on any other site can open WebSockets here with the browser's cached credentials (cross-site WebSocket hijacking); list your pages' origins with --allowed-origin",
            if basic { "BasicHTTPAuth" } else { "--web-auth" }
        );
    }
}

impl Readiness for Shared {
    fn ready(&self) -> bool {
        !self.draining.load(Ordering::Relaxed) && !self.limits.full()
    }
}
