//! The HTTP API server: Ollama's and OpenAI's endpoints (shapes in
//! [`crate::http`]) in front of the same worker queue, limits, feature
//! cache and stats as MQTT.
//!
//! One accept loop on the session's runtime, connections served one task
//! each by hyper's HTTP/1 with axum's router. Every limit is ours to set
//! and holds for hostile clients: at most `http.max_connections` at once
//! (the rest wait in the listen backlog), `http.header_timeout` for each
//! request's headers and for an idle keep-alive, `http.body_timeout` and
//! the body limit for the body, and a lifetime cap per connection (a client
//! that stops reading cannot hold one for ever). Nothing here blocks the
//! MQTT session: the two meet only at the queue and the stats.

mod ask;
mod routes;

use crate::config::Config;
use crate::http::ollama::ModelInfo;
use crate::llm::GenerateParams;
use crate::serve::cameras::Cameras;
use crate::serve::stats::SharedStats;
use crate::serve::systemd::Liveness;
use crate::serve::worker::Submitter;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

/// The longest a connection stays open, whatever it does: several minutes
/// of a queued answer on a slow board fit; a client that never reads its
/// response is cut off.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, thiserror::Error)]
pub enum ApiStartError {
    #[error("http.listen {addr}: cannot listen: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("http.api_key_file {path}: {message}")]
    ApiKey { path: String, message: String },
}

/// What every handler reads.
pub struct ApiState {
    /// The running config, as the session publishes it after each reload
    /// (the limits apply live; the `[http]` section itself at the next start).
    pub config: tokio::sync::watch::Receiver<Arc<Config>>,
    pub cameras: Arc<Cameras>,
    pub queue: Submitter,
    pub stats: SharedStats,
    pub default_params: GenerateParams,
    pub liveness: Arc<Liveness>,
    pub model: ModelInfo,
    /// The bearer token clients must present, when `api_key_file` is set.
    pub api_key: Option<String>,
    /// For request ids (`http-<n>`) in logs and answers.
    pub next_id: AtomicU64,
}

impl ApiState {
    /// The running config.
    pub fn config(&self) -> Arc<Config> {
        self.config.borrow().clone()
    }

    pub fn body_limit(&self) -> usize {
        let c = self.config();
        c.http.body_limit(c.limits.max_image_bytes)
    }

    /// Camera names, in a stable order.
    pub fn camera_names(&self) -> Vec<String> {
        self.cameras.names().into_iter().collect()
    }
}

/// Reads the API key file: one line, the token (surrounding space ignored).
pub fn read_api_key(cfg: &Config) -> Result<Option<String>, ApiStartError> {
    let Some(path) = &cfg.http.api_key_file else {
        return Ok(None);
    };
    let err = |message: String| ApiStartError::ApiKey {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let key = text.trim();
    if key.is_empty() {
        return Err(err("the file is empty".into()));
    }
    if key.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(err(
            "the token has spaces or control characters in it".into()
        ));
    }
    Ok(Some(key.to_string()))
}

/// Binds the listener (before the model loads, so a taken port fails fast).
pub fn bind(addr: &str) -> Result<std::net::TcpListener, ApiStartError> {
    let bind = || {
        let l = std::net::TcpListener::bind(addr)?;
        l.set_nonblocking(true)?;
        Ok::<_, std::io::Error>(l)
    };
    bind().map_err(|source| ApiStartError::Bind {
        addr: addr.to_string(),
        source,
    })
}

/// Serves until the runtime ends. Must run inside the tokio runtime.
pub async fn run(listener: std::net::TcpListener, state: Arc<ApiState>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot serve the HTTP API");
            return;
        }
    };
    let app = routes::router(state.clone());
    let permits = Arc::new(tokio::sync::Semaphore::new(
        state.config().http.max_connections,
    ));
    let header_timeout = state.config().http.header_timeout;
    let mut accept_failures = 0u32;
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(s) => {
                accept_failures = 0;
                s
            }
            Err(e) => {
                // Out of file descriptors, say: wait rather than spin.
                if accept_failures == 0 {
                    tracing::warn!(error = %e, "HTTP API: cannot accept a connection");
                }
                accept_failures = accept_failures.saturating_add(1);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let svc = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_buf_size(64 * 1024)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
            match tokio::time::timeout(CONNECTION_LIFETIME, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "HTTP connection ended"),
                Err(_) => tracing::debug!(%peer, "HTTP connection open too long; closed"),
            }
            drop(permit);
        });
    }
}
