//! The broker connection's configuration (`[mqtt]`): plain data, owned by
//! the protocol module and re-exported by `config`, so that `config` may
//! use `mqtt::topic` without an import circle.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// `mqtt://host:port` or `mqtts://host:port`. Absent: start the embedded
    /// broker on `embedded_listen` and connect to it.
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default = "default_embedded_listen")]
    pub embedded_listen: String,
    /// Default: `blipd-<device_id>`. Must be stable across restarts: the
    /// broker keeps the persistent session (and unanswered requests) under it.
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// A file holding the password (trailing newline ignored), instead of
    /// `password` in the config. A relative path is looked up in systemd's
    /// `$CREDENTIALS_DIRECTORY` when set (`LoadCredential=mqtt-password:...`
    /// with `password_file = "mqtt-password"`).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// PEM CA bundle for `mqtts://` (default: none = the URL must be mqtt://).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate and key for mutual TLS.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Topic prefix; topics are `<prefix>/<device_id>/...`.
    #[serde(default = "default_prefix")]
    pub topic_prefix: String,
    /// Request topic. Default `<prefix>/<device_id>/ask`.
    #[serde(default)]
    pub ask_topic: Option<String>,
    /// Join an MQTT shared subscription group: every board of the group
    /// subscribes to `$share/<group>/<ask_topic>` and the broker hands each
    /// request to one of them.
    #[serde(default)]
    pub share_group: Option<String>,
    /// How long the broker keeps the session (and queued requests) while
    /// the daemon is away.
    #[serde(default = "default_session_expiry")]
    pub session_expiry_secs: u32,
    #[serde(default = "default_keep_alive")]
    pub keep_alive_secs: u64,
    /// Topic trees a request may name as its reply topic (MQTT 5 response
    /// topic or the JSON `response_topic`). Absent: any topic outside
    /// blipd's tree (`<topic_prefix>/...`) and Home Assistant's
    /// (`<homeassistant.prefix>/...`), plus this device's answer tree. The
    /// request topic and this device's own state topics are never allowed.
    #[serde(default)]
    pub reply_topics: Option<Vec<String>>,
}

fn default_embedded_listen() -> String {
    "127.0.0.1:1883".into()
}
fn default_prefix() -> String {
    "blipd".into()
}
fn default_session_expiry() -> u32 {
    24 * 3600
}
fn default_keep_alive() -> u64 {
    30
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            url: None,
            embedded_listen: default_embedded_listen(),
            client_id: None,
            username: None,
            password: None,
            password_file: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
            topic_prefix: default_prefix(),
            ask_topic: None,
            share_group: None,
            session_expiry_secs: default_session_expiry(),
            keep_alive_secs: default_keep_alive(),
            reply_topics: None,
        }
    }
}

/// A parsed `mqtt://` / `mqtts://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl BrokerUrl {
    pub fn parse(url: &str) -> Result<Self, String> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("mqtts://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("mqtt://") {
            (false, r)
        } else if let Some(r) = url.strip_prefix("tcp://") {
            (false, r)
        } else {
            return Err(format!(
                "{url:?}: expected mqtt://host[:port] or mqtts://host[:port]"
            ));
        };
        let rest = rest.trim_end_matches('/');
        if rest.is_empty() || rest.contains('/') || rest.contains('@') {
            return Err(format!(
                "{url:?}: expected mqtt://host[:port] (credentials go in mqtt.username/password)"
            ));
        }
        let default_port = if tls { 8883 } else { 1883 };
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || rest.starts_with('[') => {
                let port = p
                    .parse::<u16>()
                    .map_err(|_| format!("{url:?}: bad port {p:?}"))?;
                (h.trim_start_matches('[').trim_end_matches(']'), port)
            }
            _ => (rest, default_port),
        };
        if host.is_empty() {
            return Err(format!("{url:?}: missing host"));
        }
        Ok(Self {
            tls,
            host: host.to_string(),
            port,
        })
    }
}
