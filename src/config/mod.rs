//! The daemon's configuration: one TOML file, validated at start.
//!
//! Every section has defaults, so an empty file (or none) is a working
//! zero-config setup: embedded broker, test-pattern camera, tiny bundle.
//! Errors name the offending key, because a daemon that refuses to start
//! must say what to fix. `systemd/blipd.toml` is the commented example.

use crate::camera::{CameraConfig, SourceConfig};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config {path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Identifies this board in topic names. Default: the hostname.
    #[serde(default)]
    pub device_id: Option<String>,
    /// Bundle directory. Default: the tiny test bundle of the source tree.
    #[serde(default)]
    pub model: Option<PathBuf>,
    /// Threads for inference. Default: all cores.
    #[serde(default)]
    pub threads: Option<usize>,
    /// Context length for the LLM (0 = the model's).
    #[serde(default)]
    pub n_ctx: u32,
    #[serde(default)]
    pub mqtt: MqttConfig,
    #[serde(default)]
    pub limits: Limits,
    /// Where the daemon keeps the ids of answered requests (survives restarts).
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// Camera that plain-text requests and requests without `camera` use.
    /// Default: the first camera.
    #[serde(default)]
    pub default_camera: Option<String>,
    #[serde(default, rename = "camera")]
    pub cameras: Vec<CameraConfig>,
}

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
            ca_file: None,
            cert_file: None,
            key_file: None,
            topic_prefix: default_prefix(),
            ask_topic: None,
            share_group: None,
            session_expiry_secs: default_session_expiry(),
            keep_alive_secs: default_keep_alive(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Requests waiting for the worker; more get `busy` at once.
    #[serde(default = "default_queue")]
    pub queue: usize,
    #[serde(default = "default_max_payload")]
    pub max_payload_bytes: usize,
    #[serde(default = "default_max_prompt")]
    pub max_prompt_chars: usize,
    /// Largest `max_tokens` a request may ask for.
    #[serde(default = "default_max_tokens")]
    pub max_tokens: usize,
    /// How many answered request ids are remembered to drop redeliveries.
    #[serde(default = "default_remember")]
    pub remember_answered: usize,
}

fn default_queue() -> usize {
    8
}
fn default_max_payload() -> usize {
    16 * 1024
}
fn default_max_prompt() -> usize {
    2000
}
fn default_max_tokens() -> usize {
    256
}
fn default_remember() -> usize {
    4096
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            queue: default_queue(),
            max_payload_bytes: default_max_payload(),
            max_prompt_chars: default_max_prompt(),
            max_tokens: default_max_tokens(),
            remember_answered: default_remember(),
        }
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates TOML text (`path` is for messages).
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        cfg.fill_defaults();
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// The zero-config setup: what `blipd serve` runs without `--config`.
    pub fn zero_config() -> Self {
        let mut cfg = Config::default();
        cfg.fill_defaults();
        cfg
    }

    fn fill_defaults(&mut self) {
        if self.cameras.is_empty() {
            self.cameras.push(CameraConfig {
                name: "test".into(),
                source: SourceConfig::TestPattern {
                    width: 640,
                    height: 480,
                    fps: 2.0,
                },
            });
        }
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key: key.to_string(),
            message,
        };
        if let Some(id) = &self.device_id {
            check_topic_level(id).map_err(|m| invalid("device_id", m))?;
        }
        if self.threads == Some(0) {
            return Err(invalid("threads", "must be at least 1".into()));
        }
        let m = &self.mqtt;
        if let Some(url) = &m.url {
            BrokerUrl::parse(url).map_err(|e| invalid("mqtt.url", e))?;
        }
        check_topic_level(&m.topic_prefix).map_err(|e| invalid("mqtt.topic_prefix", e))?;
        if let Some(t) = &m.ask_topic {
            if t.is_empty() || t.contains(['+', '#']) {
                return Err(invalid(
                    "mqtt.ask_topic",
                    format!("{t:?} must be a topic name without wildcards"),
                ));
            }
        }
        if let Some(g) = &m.share_group {
            check_topic_level(g).map_err(|e| invalid("mqtt.share_group", e))?;
        }
        if m.cert_file.is_some() != m.key_file.is_some() {
            return Err(invalid(
                "mqtt.cert_file",
                "cert_file and key_file go together".into(),
            ));
        }
        if m.keep_alive_secs < 5 {
            return Err(invalid("mqtt.keep_alive_secs", "must be at least 5".into()));
        }
        let l = &self.limits;
        for (key, v) in [
            ("limits.queue", l.queue),
            ("limits.max_payload_bytes", l.max_payload_bytes),
            ("limits.max_prompt_chars", l.max_prompt_chars),
            ("limits.max_tokens", l.max_tokens),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be at least 1".into()));
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, cam) in self.cameras.iter().enumerate() {
            cam.validate()
                .map_err(|e| invalid(&format!("camera[{i}]"), e))?;
            if !names.insert(cam.name.as_str()) {
                return Err(invalid(
                    &format!("camera[{i}].name"),
                    format!("duplicate camera name {:?}", cam.name),
                ));
            }
        }
        if let Some(d) = &self.default_camera {
            if !names.contains(d.as_str()) {
                return Err(invalid(
                    "default_camera",
                    format!("no [[camera]] is named {d:?}"),
                ));
            }
        }
        Ok(())
    }

    pub fn device_id(&self) -> String {
        self.device_id.clone().unwrap_or_else(|| {
            let host = gethostname::gethostname().to_string_lossy().into_owned();
            let clean: String = host
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            if clean.is_empty() {
                "blipd".into()
            } else {
                clean
            }
        })
    }

    pub fn default_camera(&self) -> &str {
        self.default_camera
            .as_deref()
            .or(self.cameras.first().map(|c| c.name.as_str()))
            .unwrap_or("test")
    }
}

/// A topic level: no separators or wildcards, not empty.
fn check_topic_level(s: &str) -> Result<(), String> {
    if s.is_empty() || s.contains(['/', '+', '#', '\0']) {
        return Err(format!(
            "{s:?} must be a non-empty MQTT topic level (no '/', '+', '#')"
        ));
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::parse(s, Path::new("test.toml"))
    }

    #[test]
    fn empty_config_is_zero_config() {
        let c = parse("").unwrap();
        assert_eq!(c.cameras.len(), 1);
        assert_eq!(c.default_camera(), "test");
        assert!(c.mqtt.url.is_none());
        assert_eq!(c, Config::zero_config());
    }

    #[test]
    fn errors_name_the_key() {
        let e = parse("[mqtt]\nurl = \"http://x\"").unwrap_err().to_string();
        assert!(e.contains("mqtt.url"), "{e}");
        let e = parse("[limits]\nqueue = 0").unwrap_err().to_string();
        assert!(e.contains("limits.queue"), "{e}");
        let e = parse("colour = 1").unwrap_err().to_string();
        assert!(e.contains("colour"), "{e}");
        let e = parse("device_id = \"a/b\"").unwrap_err().to_string();
        assert!(e.contains("device_id"), "{e}");
        let e = parse("default_camera = \"nope\"").unwrap_err().to_string();
        assert!(e.contains("default_camera"), "{e}");
        let e = parse("[mqtt]\ncert_file = \"/c.pem\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("mqtt.cert_file"), "{e}");
    }

    #[test]
    fn broker_urls() {
        assert_eq!(
            BrokerUrl::parse("mqtt://localhost").unwrap(),
            BrokerUrl {
                tls: false,
                host: "localhost".into(),
                port: 1883
            }
        );
        let u = BrokerUrl::parse("mqtts://broker.lan:8884").unwrap();
        assert!(u.tls && u.port == 8884 && u.host == "broker.lan");
        assert_eq!(BrokerUrl::parse("mqtt://[::1]:1884").unwrap().host, "::1");
        assert!(BrokerUrl::parse("mqtt://h:notaport").is_err());
        assert!(BrokerUrl::parse("mqtt://user:pw@h").is_err());
        assert!(BrokerUrl::parse("h:1883").is_err());
    }
}
