//! `[http]`: the Ollama- and OpenAI-compatible HTTP API (off unless `listen` is set).

use super::durations::duration;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// Where the zero-config demo listens: Ollama's own port, loopback only.
pub const DEMO_LISTEN: &str = "127.0.0.1:11434";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address to serve on, e.g. "127.0.0.1:11434" or "0.0.0.0:11434".
    /// Unset: no HTTP API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// A file holding the bearer token clients must send
    /// (`Authorization: Bearer <token>`); unset: no authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_file: Option<PathBuf>,
    /// Largest request body. The default fits a picture of
    /// `limits.max_image_bytes` in base64 plus the rest of a request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<usize>,
    /// Connections served at once; more wait in the listen backlog.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Time a client has to send a request's headers, and how long an idle
    /// keep-alive connection stays open.
    #[serde(default = "default_header_timeout", with = "duration")]
    pub header_timeout: Duration,
    /// Time a client has to send a request's body once its headers are in.
    #[serde(default = "default_body_timeout", with = "duration")]
    pub body_timeout: Duration,
    /// OpenAI `image_url`s that are http(s) URLs are fetched only when this
    /// is on (the daemon would otherwise fetch any URL a client names).
    #[serde(default)]
    pub allow_image_urls: bool,
    /// Origins allowed to call the API from a browser (CORS); empty: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cors_origins: Vec<String>,
}

fn default_max_connections() -> usize {
    64
}
fn default_header_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_body_timeout() -> Duration {
    Duration::from_secs(30)
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: None,
            api_key_file: None,
            max_body_bytes: None,
            max_connections: default_max_connections(),
            header_timeout: default_header_timeout(),
            body_timeout: default_body_timeout(),
            allow_image_urls: false,
            cors_origins: Vec::new(),
        }
    }
}

impl HttpConfig {
    /// The body limit in force: the configured one, or room for the largest
    /// picture a request may carry (base64) and 64 KiB of everything else.
    pub fn body_limit(&self, max_image_bytes: usize) -> usize {
        self.max_body_bytes
            .unwrap_or_else(|| super::base64_len(max_image_bytes) + 64 * 1024)
    }

    /// Checks what can be checked without binding: the address parses, the
    /// limits are usable. Returns (key, message) of the first problem.
    pub(super) fn validate(&self) -> Result<(), (&'static str, String)> {
        if let Some(l) = &self.listen {
            l.parse::<std::net::SocketAddr>().map_err(|e| {
                (
                    "http.listen",
                    format!("{l:?} is not an address like \"127.0.0.1:11434\": {e}"),
                )
            })?;
        }
        if self.max_connections == 0 {
            return Err(("http.max_connections", "must be at least 1".into()));
        }
        if self.max_body_bytes == Some(0) {
            return Err(("http.max_body_bytes", "must be at least 1".into()));
        }
        for (key, d) in [
            ("http.header_timeout", self.header_timeout),
            ("http.body_timeout", self.body_timeout),
        ] {
            if d.is_zero() {
                return Err((key, "must be more than 0".into()));
            }
        }
        for o in &self.cors_origins {
            if o != "*" && !(o.starts_with("http://") || o.starts_with("https://")) {
                return Err((
                    "http.cors_origins",
                    format!("{o:?} is not an origin like \"http://192.168.1.10:8123\" or \"*\""),
                ));
            }
        }
        Ok(())
    }
}
