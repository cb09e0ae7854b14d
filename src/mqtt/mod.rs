//! MQTT, the protocol: the wire format ([`wire`]), topic names and the one
//! topic-level encoder ([`topic`], [`Topics`]), client options, and the
//! client-side `ask` command. The daemon that speaks it lives in `serve/`.

pub mod ask;
pub mod image_ask;
pub mod ledger;
pub mod options;
pub mod topic;
pub mod wire;

pub use options::{BrokerUrl, MqttConfig};
use rumqttc::v5::mqttbytes::v5::LastWill;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::MqttOptions;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    #[error("mqtt.url: {0}")]
    Url(String),
    #[error("cannot read {path}: {source}")]
    ReadFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Every topic the daemon uses, derived once from the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    /// Where clients send requests.
    pub ask: String,
    /// What the daemon subscribes to (`ask`, or `$share/<group>/<ask>`).
    pub subscribe: String,
    /// Where clients send a picture as the payload: `<ask>/image` (and
    /// `<ask>/image/<id>/<prompt>` for 3.1.1 clients; see [`image_ask`]).
    pub ask_image: String,
    /// Its filter, `<ask>/image/#` (which matches `<ask>/image` too),
    /// share-prefixed like `subscribe`.
    pub subscribe_image: String,
    /// Retained `online` / `offline` (the Last Will).
    pub status: String,
    /// Retained JSON: version, model, cameras, limits.
    pub info: String,
    /// Answers to requests without a response topic: `<answer_prefix>/<id>`.
    pub answer_prefix: String,
    /// `<prefix>/<device>`: watches, snapshots and stats live under it.
    pub base: String,
    /// Retained metrics.
    pub stats: String,
}

impl Topics {
    pub fn new(cfg: &MqttConfig, device_id: &str) -> Self {
        let base = format!("{}/{}", cfg.topic_prefix, device_id);
        let ask = cfg
            .ask_topic
            .clone()
            .unwrap_or_else(|| format!("{base}/ask"));
        let shared = |t: String| match &cfg.share_group {
            Some(g) => format!("$share/{g}/{t}"),
            None => t,
        };
        let ask_image = format!("{ask}/image");
        Self {
            subscribe: shared(ask.clone()),
            subscribe_image: shared(format!("{ask_image}/#")),
            ask,
            ask_image,
            status: format!("{base}/status"),
            info: format!("{base}/info"),
            answer_prefix: format!("{base}/answer"),
            stats: format!("{base}/stats"),
            base,
        }
    }

    /// The part of an image-request topic after `<ask>/image` (`""` or
    /// `/<id>/<prompt...>`); None for any other topic.
    pub fn image_suffix<'a>(&self, topic: &'a str) -> Option<&'a str> {
        let rest = topic.strip_prefix(&self.ask_image)?;
        (rest.is_empty() || rest.starts_with('/')).then_some(rest)
    }

    /// Retained state of a watch.
    pub fn watch(&self, name: &str) -> String {
        format!("{}/watch/{name}", self.base)
    }

    /// Filter matching every watch state topic (for recalling them at start).
    pub fn watch_filter(&self) -> String {
        format!("{}/watch/+", self.base)
    }

    /// The watch name of a watch state topic.
    pub fn watch_name<'a>(&self, topic: &'a str) -> Option<&'a str> {
        let rest = topic.strip_prefix(&self.base)?.strip_prefix("/watch/")?;
        (!rest.is_empty() && !rest.contains('/')).then_some(rest)
    }

    /// Publishing anything here runs the watch now (Home Assistant's button).
    pub fn watch_run(&self, name: &str) -> String {
        format!("{}/watch/{name}/run", self.base)
    }

    /// Filter matching every watch's run topic.
    pub fn watch_run_filter(&self) -> String {
        format!("{}/watch/+/run", self.base)
    }

    /// The watch name of a run topic.
    pub fn watch_run_name<'a>(&self, topic: &'a str) -> Option<&'a str> {
        let rest = topic.strip_prefix(&self.base)?.strip_prefix("/watch/")?;
        let name = rest.strip_suffix("/run")?;
        (!name.is_empty() && !name.contains('/')).then_some(name)
    }

    /// Change events of a watch.
    pub fn watch_event(&self, name: &str) -> String {
        format!("{}/watch/{name}/event", self.base)
    }

    /// Retained JPEG of a watch's last answered frame.
    pub fn watch_snapshot(&self, name: &str) -> String {
        format!("{}/watch/{name}/snapshot", self.base)
    }

    /// JPEG of the frame a request was answered about.
    pub fn snapshot(&self, id: &str) -> String {
        format!("{}/snapshot/{}", self.base, topic::level(id))
    }

    pub fn answer(&self, id: &str) -> String {
        format!("{}/{}", self.answer_prefix, topic::level(id))
    }
}

/// Largest packet the daemon accepts from the broker. Requests bigger than
/// the configured payload limit but under this get a `limit_exceeded`
/// reply; without this headroom rumqttc would drop the connection instead.
pub const MAX_INCOMING_PACKET: u32 = 1 << 20;

/// The daemon's connection options: [`connection`], plus a persistent
/// session, manual acks and the Last Will.
pub fn options(
    cfg: &MqttConfig,
    client_id: &str,
    topics: &Topics,
) -> Result<MqttOptions, MqttError> {
    let mut o = connection(cfg, client_id)?;
    // Requests must survive a daemon restart: the broker keeps the session
    // and the unacknowledged requests under this client id.
    o.set_clean_start(false);
    o.set_session_expiry_interval(Some(cfg.session_expiry_secs));
    o.set_manual_acks(true);
    o.set_last_will(LastWill::new(
        topics.status.clone(),
        "offline",
        QoS::AtLeastOnce,
        true,
        None,
    ));
    Ok(o)
}

/// Reaching the broker (URL, credentials, TLS), for the daemon and for
/// `blipd ask --mqtt` alike.
pub fn connection(cfg: &MqttConfig, client_id: &str) -> Result<MqttOptions, MqttError> {
    let url = cfg
        .url
        .as_deref()
        .ok_or_else(|| MqttError::Url("no broker URL".into()))?;
    let url = BrokerUrl::parse(url).map_err(MqttError::Url)?;
    let mut o = MqttOptions::new(client_id, url.host.clone(), url.port);
    o.set_keep_alive(Duration::from_secs(cfg.keep_alive_secs));
    o.set_max_packet_size(Some(MAX_INCOMING_PACKET));
    let password = match (&cfg.password, &cfg.password_file) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(f)) => Some(read_secret(f)?),
        (None, None) => None,
    };
    if let Some(u) = &cfg.username {
        o.set_credentials(u.clone(), password.unwrap_or_default());
    }
    if url.tls {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|source| MqttError::ReadFile {
                path: p.display().to_string(),
                source,
            })
        };
        let ca = match &cfg.ca_file {
            Some(p) => read(p)?,
            None => {
                return Err(MqttError::Url(
                    "mqtts:// needs mqtt.ca_file (the CA that signed the broker's certificate)"
                        .into(),
                ))
            }
        };
        let client_auth = match (&cfg.cert_file, &cfg.key_file) {
            (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
            _ => None,
        };
        // rumqttc leaves the crypto provider to the application.
        let _ = rustls::crypto::ring::default_provider().install_default();
        o.set_transport(rumqttc::Transport::tls(ca, client_auth, None));
    }
    Ok(o)
}

/// Reads a secret file: a relative path is taken from systemd's
/// `$CREDENTIALS_DIRECTORY` when set; one trailing newline is dropped.
pub fn read_secret(path: &std::path::Path) -> Result<String, MqttError> {
    let path = match std::env::var_os("CREDENTIALS_DIRECTORY") {
        Some(dir) if path.is_relative() => std::path::Path::new(&dir).join(path),
        _ => path.to_path_buf(),
    };
    let text = std::fs::read_to_string(&path).map_err(|source| MqttError::ReadFile {
        path: path.display().to_string(),
        source,
    })?;
    let text = text.strip_suffix('\n').unwrap_or(&text);
    Ok(text.strip_suffix('\r').unwrap_or(text).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "s3cret\n").unwrap();
        assert_eq!(read_secret(&f).unwrap(), "s3cret");
        assert!(matches!(
            read_secret(&dir.path().join("missing")),
            Err(MqttError::ReadFile { .. })
        ));
    }

    #[test]
    fn topic_layout() {
        let mut cfg = MqttConfig::default();
        let t = Topics::new(&cfg, "garage");
        assert_eq!(t.ask, "blipd/garage/ask");
        assert_eq!(t.subscribe, "blipd/garage/ask");
        assert_eq!(t.status, "blipd/garage/status");
        assert_eq!(t.answer("q/1#"), "blipd/garage/answer/q%2F1%23");
        assert_eq!(t.answer("\u{1}"), "blipd/garage/answer/%01");
        assert_eq!(t.watch("door"), "blipd/garage/watch/door");
        assert_eq!(t.watch_name("blipd/garage/watch/door"), Some("door"));
        assert_eq!(t.watch_name("blipd/garage/watch/door/event"), None);
        assert_eq!(t.snapshot("a/b"), "blipd/garage/snapshot/a%2Fb");
        assert_eq!(t.stats, "blipd/garage/stats");
        cfg.share_group = Some("fleet".into());
        cfg.ask_topic = Some("blipd/fleet/ask".into());
        let t = Topics::new(&cfg, "garage");
        assert_eq!(t.subscribe, "$share/fleet/blipd/fleet/ask");
    }
}
