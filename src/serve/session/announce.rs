//! What the daemon tells the broker about itself: the subscriptions, the
//! retained info/status messages, Home Assistant discovery configs, and the
//! systemd STATUS= line.

use super::*;

impl Session {
    /// Requests (QoS 1, acknowledged with their answer: JSON on the ask
    /// topic, pictures under `<ask>/image`), plus QoS 0 feeds:
    /// the retained watch states (baselines after a restart, and leftovers
    /// of removed watches) and Home Assistant's birth message and our
    /// retained discovery configs (leftovers are cleared).
    pub(super) fn subscribe(&mut self) {
        let t = &self.cfg.topics;
        let mut filters = vec![
            Filter::new(t.subscribe.clone(), QoS::AtLeastOnce),
            Filter::new(t.subscribe_image.clone(), QoS::AtLeastOnce),
            Filter::new(t.watch_filter(), QoS::AtMostOnce),
            Filter::new(t.watch_run_filter(), QoS::AtMostOnce),
        ];
        let ha = self.ha_topics();
        filters.push(Filter::new(ha.config_filter(), QoS::AtMostOnce));
        if self.discovery.is_some() {
            filters.push(Filter::new(ha.birth_topic(), QoS::AtMostOnce));
        }
        // `mqtt` cameras: newest frame only, so QoS 0 is enough.
        self.frame_topics = self.cfg.cameras.frame_topics();
        for t in &self.frame_topics {
            filters.push(Filter::new(t.clone(), QoS::AtMostOnce));
        }
        self.subscribed = filters.iter().map(|f| f.path.clone()).collect();
        if let Err(e) = self.client.try_subscribe_many(filters) {
            tracing::error!(error = ?e, "cannot subscribe");
        }
    }

    pub(super) fn announce(&mut self) {
        let t = &self.cfg.topics;
        let (status, info) = (t.status.clone(), t.info.clone());
        // Info first: whoever sees `online` can read it.
        let info_payload = (self.cfg.info)(&self.cfg.config).into_bytes();
        self.push(info, info_payload, true, None, OnAck::default());
        self.push(status, b"online".to_vec(), true, None, OnAck::default());
        self.announce_discovery();
        self.next_stats = Some(Instant::now());
    }

    pub(super) fn announce_discovery(&mut self) {
        let Some(d) = &self.discovery else { return };
        let entities = d.all(self.watches.configs(), &self.cfg.topics);
        for e in entities {
            self.push(
                e.topic,
                e.payload.to_string().into_bytes(),
                true,
                None,
                OnAck::default(),
            );
        }
    }

    /// Topics of the discovery configs the running config wants.
    pub(super) fn wanted_discovery(&self) -> BTreeSet<String> {
        match &self.discovery {
            Some(d) => d
                .all(self.watches.configs(), &self.cfg.topics)
                .into_iter()
                .map(|e| e.topic)
                .collect(),
            None => BTreeSet::new(),
        }
    }

    /// Home Assistant's topics for the running config, whether discovery is
    /// on or not (with it off, leftover configs are still cleared).
    pub(super) fn ha_topics(&self) -> Discovery {
        let ha = &self.cfg.config.homeassistant;
        Discovery::new(&ha.prefix, &self.cfg.device_id, &self.cfg.model_name)
    }

    /// Removes a retained message (empty retained payload).
    pub(super) fn clear_retained(&mut self, topic: String) {
        self.push(topic, Vec::new(), true, None, OnAck::default());
    }

    pub(super) fn serving_status_update(&mut self) {
        let names: Vec<String> = self.cfg.cameras.names().into_iter().collect();
        self.cfg.serving_status = format!(
            "serving {}: model {}, cameras {}, watches {}",
            self.cfg.device_id,
            self.cfg.model_name,
            names.join(", "),
            self.watches.names().count()
        );
    }
}

/// Discovery for the running config, when enabled.
pub(super) fn discovery_of(cfg: &SessionConfig) -> Option<Discovery> {
    // Same topics as `Session::ha_topics`, present only when enabled.
    let ha = &cfg.config.homeassistant;
    ha.discovery
        .then(|| Discovery::new(&ha.prefix, &cfg.device_id, &cfg.model_name))
}
