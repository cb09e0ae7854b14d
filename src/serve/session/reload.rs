//! SIGHUP: the parts of a new config file that apply without a restart.

use super::*;

impl Session {
    /// SIGHUP: re-reads the config file and applies what can change live
    /// (cameras, watches, limits, snapshots, stats, Home Assistant). The
    /// model, threads, MQTT connection, device id and state dir stay as they
    /// are (a restart applies them); an invalid file changes nothing.
    pub(super) fn reload(&mut self) {
        let Some(path) = self.cfg.config_path.clone() else {
            tracing::info!("SIGHUP: running without --config, nothing to reload");
            return;
        };
        self.cfg.systemd.reloading();
        let new = match Config::load(&path) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "config reload failed; keeping the running config");
                self.cfg
                    .systemd
                    .ready(&format!("reload failed ({e}); {}", self.cfg.serving_status));
                return;
            }
        };
        let old = self.cfg.config.clone();
        let mut effective = new.clone();
        let mut restart = Vec::new();
        if new.device_id != old.device_id {
            restart.push("device_id");
            effective.device_id = old.device_id.clone();
        }
        if new.model != old.model
            || new.threads != old.threads
            || new.n_ctx != old.n_ctx
            || new.gpu_layers != old.gpu_layers
            || new.llm_repack != old.llm_repack
            || new.llm_mmap != old.llm_mmap
        {
            restart.push("model/threads/n_ctx/gpu_layers/llm_repack/llm_mmap");
            effective.llm_repack = old.llm_repack;
            effective.llm_mmap = old.llm_mmap;
            effective.model = old.model.clone();
            effective.threads = old.threads;
            effective.n_ctx = old.n_ctx;
            effective.gpu_layers = old.gpu_layers;
        }
        if new.mqtt != old.mqtt {
            restart.push("mqtt");
            effective.mqtt = old.mqtt.clone();
        }
        if new.http != old.http {
            restart.push("http");
            effective.http = old.http.clone();
        }
        if new.state_dir != old.state_dir
            || new.limits.remember_answered != old.limits.remember_answered
        {
            restart.push("state_dir/limits.remember_answered");
            effective.state_dir = old.state_dir.clone();
            effective.limits.remember_answered = old.limits.remember_answered;
        }
        if !restart.is_empty() {
            tracing::warn!(keys = ?restart, "these settings changed but apply only after a restart (systemctl restart blipd)");
        }
        let cameras = self.cfg.cameras.apply(&effective.cameras);
        if let Some(q) = &self.queue {
            q.set_capacity(effective.limits.queue);
        }
        *self.cfg.snapshot.lock().unwrap_or_else(|p| p.into_inner()) = effective.snapshot.clone();
        let old_entities = self.wanted_discovery();
        let watches = self.watches.reconfigure(&effective, Instant::now());
        for name in &watches.removed {
            self.clear_retained(self.cfg.topics.watch(name));
            self.clear_retained(self.cfg.topics.watch_snapshot(name));
        }
        if effective.stats.interval != old.stats.interval {
            self.next_stats = Some(Instant::now());
        }
        let ha_changed = effective.homeassistant != old.homeassistant;
        self.cfg.config = effective;
        // The HTTP API applies the new limits from its next request on.
        self.cfg
            .published
            .send_replace(Arc::new(self.cfg.config.clone()));
        self.discovery = super::announce::discovery_of(&self.cfg);
        let new_entities = self.wanted_discovery();
        for topic in old_entities.difference(&new_entities) {
            self.clear_retained(topic.clone());
        }
        let frame_topics = self.cfg.cameras.frame_topics();
        for gone in self.frame_topics.difference(&frame_topics) {
            if let Err(e) = self.client.try_unsubscribe(gone.clone()) {
                tracing::warn!(error = ?e, topic = gone, "cannot unsubscribe");
            }
        }
        if ha_changed || frame_topics != self.frame_topics {
            self.subscribe();
        }
        self.serving_status_update();
        // Info (cameras, limits) and discovery (new or changed watches).
        self.announce();
        tracing::info!(
            cameras_added = ?cameras.added, cameras_removed = ?cameras.removed, cameras_restarted = ?cameras.restarted,
            watches_added = ?watches.added, watches_removed = ?watches.removed, watches_changed = ?watches.changed,
            "config reloaded (model kept)"
        );
        let status = self.cfg.serving_status.clone();
        self.cfg.systemd.ready(&status);
    }
}
