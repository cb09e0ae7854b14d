//! The daemon's configuration: one TOML file, validated at start.
//!
//! Every section has defaults, so an empty file (or none) is a working
//! zero-config setup: embedded broker, test-pattern camera, tiny bundle.
//! Errors name the offending key, because a daemon that refuses to start
//! must say what to fix. `systemd/blipd.toml` is the commented example.

use crate::camera::{CameraConfig, SourceConfig};
use crate::mqtt::topic;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

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
    /// Bundle directory. Default: the demo bundle (models/demo, or where the package installed it).
    #[serde(default)]
    pub model: Option<PathBuf>,
    /// Threads for inference. Default: all cores.
    #[serde(default)]
    pub threads: Option<usize>,
    /// Context length for the LLM (0 = the model's).
    #[serde(default)]
    pub n_ctx: u32,
    /// LLM layers offloaded to the GPU (Jetson); needs a build with the
    /// `cuda` feature. 0 = CPU only; 999 = all.
    #[serde(default)]
    pub gpu_layers: u32,
    /// Let llama.cpp repack quantized weights for faster CPU matmuls. The
    /// repacked copy is resident on top of the mapped file (a 7B Q4_K_M
    /// needs about 2.8 GiB more); turn it off on boards short of memory.
    /// Default: on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm_repack: Option<bool>,
    /// Memory-map the GGUF (pages load on demand and can be dropped under
    /// pressure) instead of reading it into anonymous memory.
    /// Default: on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm_mmap: Option<bool>,
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
    /// Standing questions the daemon asks itself.
    #[serde(default, rename = "watch")]
    pub watches: Vec<WatchConfig>,
    #[serde(default)]
    pub homeassistant: HomeAssistant,
    #[serde(default)]
    pub snapshot: SnapshotConfig,
    #[serde(default)]
    pub stats: StatsConfig,
    /// The Ollama/OpenAI-compatible HTTP API.
    #[serde(default)]
    pub http: HttpConfig,
}

/// Home Assistant MQTT discovery.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HomeAssistant {
    /// Announce every watch as a sensor (and its snapshot as an image).
    #[serde(default)]
    pub discovery: bool,
    /// Home Assistant's discovery prefix.
    #[serde(default = "default_ha_prefix")]
    pub prefix: String,
}

fn default_ha_prefix() -> String {
    "homeassistant".into()
}

impl Default for HomeAssistant {
    fn default() -> Self {
        Self {
            discovery: false,
            prefix: default_ha_prefix(),
        }
    }
}

/// JPEG snapshots of answered frames.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SnapshotConfig {
    /// JPEG quality 1-100.
    #[serde(default = "default_quality")]
    pub quality: u8,
    /// Wider frames are scaled down to this width (aspect kept).
    #[serde(default = "default_snapshot_width")]
    pub max_width: u32,
}

fn default_quality() -> u8 {
    80
}
fn default_snapshot_width() -> u32 {
    1280
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        Self {
            quality: default_quality(),
            max_width: default_snapshot_width(),
        }
    }
}

/// The retained `stats` message.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StatsConfig {
    /// Publish interval ("60s"); "0s" turns stats off.
    #[serde(default = "default_stats_interval", with = "duration")]
    pub interval: Duration,
}

fn default_stats_interval() -> Duration {
    Duration::from_secs(60)
}

impl Default for StatsConfig {
    fn default() -> Self {
        Self {
            interval: default_stats_interval(),
        }
    }
}

pub use crate::mqtt::options::{BrokerUrl, MqttConfig};
pub use watch::WatchConfig;

mod durations;
mod http;
mod watch;

pub use http::{HttpConfig, DEMO_LISTEN};

use durations::duration;

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
    /// Longest request `id` in bytes (ids are echoed, remembered and become
    /// part of a topic).
    #[serde(default = "default_max_id")]
    pub max_id_bytes: usize,
    /// Largest image (width x height) decoded from a camera or a file,
    /// checked from its header before any pixel is allocated.
    #[serde(default = "default_max_image_pixels")]
    pub max_image_pixels: u64,
    /// Largest picture a request may carry (`image`, decoded bytes). Its
    /// base64 form plus `max_payload_bytes` must fit the 1 MiB packets the
    /// daemon accepts from the broker.
    #[serde(default = "default_max_image_bytes")]
    pub max_image_bytes: usize,
}

fn default_max_image_bytes() -> usize {
    700 * 1024
}

/// Bytes of the base64 form of `n` bytes (padded).
pub fn base64_len(n: usize) -> usize {
    n.div_ceil(3) * 4
}

fn default_max_image_pixels() -> u64 {
    crate::preprocess::DEFAULT_MAX_PIXELS
}

fn default_max_id() -> usize {
    256
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
            max_image_bytes: default_max_image_bytes(),
            max_prompt_chars: default_max_prompt(),
            max_tokens: default_max_tokens(),
            remember_answered: default_remember(),
            max_id_bytes: default_max_id(),
            max_image_pixels: default_max_image_pixels(),
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
        // The demo answers Ollama and OpenAI clients on this machine too.
        cfg.http.listen = Some(DEMO_LISTEN.into());
        cfg
    }

    fn fill_defaults(&mut self) {
        if self.cameras.is_empty() {
            self.cameras.push(CameraConfig {
                name: "test".into(),
                source: SourceConfig::test_pattern(640, 480, 2.0),
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
        if self.gpu_layers > 0 && !cfg!(feature = "cuda") {
            return Err(invalid(
                "gpu_layers",
                "this blipd was built without GPU support (cargo build --features cuda)".into(),
            ));
        }
        self.http
            .validate()
            .map_err(|(key, message)| invalid(key, message))?;
        if self.threads == Some(0) {
            return Err(invalid("threads", "must be at least 1".into()));
        }
        let m = &self.mqtt;
        if let Some(url) = &m.url {
            BrokerUrl::parse(url).map_err(|e| invalid("mqtt.url", e))?;
        }
        check_topic_level(&m.topic_prefix).map_err(|e| invalid("mqtt.topic_prefix", e))?;
        if let Some(t) = &m.ask_topic {
            topic::check_name(t).map_err(|e| invalid("mqtt.ask_topic", format!("{t:?}: {e}")))?;
        }
        for (i, t) in m.reply_topics.iter().flatten().enumerate() {
            topic::check_name(t)
                .map_err(|e| invalid(&format!("mqtt.reply_topics[{i}]"), format!("{t:?}: {e}")))?;
        }
        if let Some(g) = &m.share_group {
            check_topic_level(g).map_err(|e| invalid("mqtt.share_group", e))?;
        }
        if m.password.is_some() && m.password_file.is_some() {
            return Err(invalid(
                "mqtt.password_file",
                "set mqtt.password or mqtt.password_file, not both".into(),
            ));
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
            ("limits.max_id_bytes", l.max_id_bytes),
            ("limits.max_image_pixels", l.max_image_pixels as usize),
            ("limits.max_image_bytes", l.max_image_bytes),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be at least 1".into()));
            }
        }
        let packet = crate::mqtt::MAX_INCOMING_PACKET as usize;
        if l.max_payload_bytes + base64_len(l.max_image_bytes) + 1024 > packet {
            return Err(invalid(
                "limits.max_image_bytes",
                format!(
                    "its base64 form ({} bytes) plus limits.max_payload_bytes ({}) must stay \
                     under the {packet}-byte packets the daemon accepts",
                    base64_len(l.max_image_bytes),
                    l.max_payload_bytes
                ),
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, cam) in self.cameras.iter().enumerate() {
            cam.validate()
                .map_err(|e| invalid(&format!("camera[{i}]"), e))?;
            if let crate::camera::SourceConfig::Mqtt { topic, .. } = &cam.source {
                // Frames must not be mistaken for requests, or blipd's own
                // publishes for frames.
                let own = crate::mqtt::topic::under(topic, &m.topic_prefix)
                    || topic.starts_with('+')
                    || topic.starts_with('#');
                if own {
                    return Err(invalid(
                        &format!("camera[{i}].topic"),
                        format!(
                            "{topic:?} must not start with a wildcard or lie in blipd's own \
                             tree ({}/...)",
                            m.topic_prefix
                        ),
                    ));
                }
            }
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
        let mut watch_names = std::collections::BTreeSet::new();
        for (i, w) in self.watches.iter().enumerate() {
            let key = |k: &str| format!("watch[{i}].{k}");
            w.validate(&names, l)
                .map_err(|(k, m)| invalid(&key(k), m))?;
            if !watch_names.insert(w.name.as_str()) {
                return Err(invalid(
                    &key("name"),
                    format!("duplicate watch name {:?}", w.name),
                ));
            }
        }
        check_topic_level(&self.homeassistant.prefix)
            .map_err(|e| invalid("homeassistant.prefix", e))?;
        if !(1..=100).contains(&self.snapshot.quality) {
            return Err(invalid("snapshot.quality", "must be 1..=100".into()));
        }
        if self.snapshot.max_width < 16 {
            return Err(invalid("snapshot.max_width", "must be at least 16".into()));
        }
        if !self.stats.interval.is_zero() && self.stats.interval < Duration::from_secs(1) {
            return Err(invalid(
                "stats.interval",
                "must be 0s (off) or at least 1s".into(),
            ));
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

    /// The camera a watch looks at.
    pub fn watch_camera<'a>(&'a self, w: &'a WatchConfig) -> &'a str {
        w.camera.as_deref().unwrap_or_else(|| self.default_camera())
    }

    pub fn default_camera(&self) -> &str {
        self.default_camera
            .as_deref()
            .or(self.cameras.first().map(|c| c.name.as_str()))
            .unwrap_or("test")
    }
}

/// A topic level: what `mqtt::topic` accepts as one.
fn check_topic_level(s: &str) -> Result<(), String> {
    topic::check_level(s).map_err(|e| format!("{s:?} must be one MQTT topic level: {e}"))
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
        // A config file, even an empty one, turns the HTTP API on only if it says so.
        let mut z = Config::zero_config();
        assert_eq!(z.http.listen.as_deref(), Some(DEMO_LISTEN));
        assert_eq!(c.http.listen, None);
        z.http.listen = None;
        assert_eq!(c, z);
    }

    #[test]
    fn errors_name_the_key() {
        let e = parse("[mqtt]\nurl = \"http://x\"").unwrap_err().to_string();
        assert!(e.contains("mqtt.url"), "{e}");
        let e = parse("[http]\nlisten = \"11434\"").unwrap_err().to_string();
        assert!(e.contains("http.listen"), "{e}");
        let e = parse("[http]\ncors_origins = [\"example.org\"]")
            .unwrap_err()
            .to_string();
        assert!(e.contains("http.cors_origins"), "{e}");
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
        let e = parse("[limits]\nmax_payload_bytes = 900000")
            .unwrap_err()
            .to_string();
        assert!(e.contains("limits.max_image_bytes"), "{e}");
    }

    #[test]
    fn mqtt_camera_topics() {
        let cam = |topic: &str, extra: &str| {
            parse(&format!(
                "[[camera]]\nname = \"door\"\ntype = \"mqtt\"\ntopic = \"{topic}\"\n{extra}"
            ))
        };
        let c = cam("frigate/door/+/snapshot", "max_age = 60").unwrap();
        assert_eq!(
            c.cameras[0].source,
            crate::camera::SourceConfig::Mqtt {
                topic: "frigate/door/+/snapshot".into(),
                max_age: Some(60.0)
            }
        );
        for (topic, extra, key) in [
            ("blipd/x/ask", "", "camera[0].topic"),
            ("#", "", "camera[0].topic"),
            ("+/snapshot", "", "camera[0].topic"),
            ("cam/#/x", "", "topic"),
            ("cam", "max_age = 0", "max_age"),
            ("cam", "fps = 1", "fps"),
        ] {
            let e = cam(topic, extra).unwrap_err().to_string();
            assert!(e.contains(key), "{topic} {extra}: {e}");
        }
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
