//! The session's 200 ms tick: subscription retries, due watches, stats.

use super::*;

impl Session {
    /// Every 200 ms: queue the watches that are due, publish stats when due.
    pub(super) fn timers(&mut self) {
        let now = Instant::now();
        if self.connected && self.subscribe_retry.is_some_and(|t| now >= t) {
            self.subscribe_retry = None;
            self.subscribe();
        }
        let connected = self.ever_connected && !self.outage_logged;
        if connected {
            if let Some(queue) = &self.queue {
                let mut auto_id = self.auto_id;
                let jobs =
                    self.watches
                        .due(now, &self.cfg.cameras, &self.cfg.default_params, || {
                            auto_id += 1;
                            auto_id.to_string()
                        });
                self.auto_id = auto_id;
                let mut refused = Vec::new();
                for job in jobs {
                    if let Origin::Watch { name, .. } = &job.origin {
                        let name = name.clone();
                        if queue.try_push(job).is_err() {
                            refused.push(name);
                        }
                    }
                }
                for name in refused {
                    self.watches.not_queued(&name);
                }
            }
        }
        let interval = self.cfg.config.stats.interval;
        if connected && !interval.is_zero() && self.next_stats.is_some_and(|t| now >= t) {
            self.next_stats = Some(now + interval);
            let depth = self.queue.as_ref().map(|q| q.depth()).unwrap_or_default();
            let busy = self.cfg.systemd.liveness.stalled_for().is_some();
            let mut report = self.stats.lock().report(depth, busy);
            report["cameras"] =
                serde_json::to_value(self.cfg.cameras.statuses()).unwrap_or_default();
            let topic = self.cfg.topics.stats.clone();
            self.push(
                topic,
                report.to_string().into_bytes(),
                true,
                None,
                OnAck::default(),
            );
        }
    }
}
