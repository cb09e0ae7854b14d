//! systemd integration: readiness, status lines and the watchdog.
//!
//! All of it is a no-op unless systemd (or a test) set `NOTIFY_SOCKET`.
//! READY is sent once the model is loaded and the broker connection is up.
//! The watchdog is fed from the MQTT task, but only while the inference
//! worker shows progress (a job boundary, a stage or a token within the
//! watchdog period): a hung model stops the keep-alives and systemd restarts
//! the service; a long answer that keeps producing tokens does not.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Progress of the inference worker, shared with the watchdog.
#[derive(Debug)]
pub struct Liveness {
    start: Instant,
    /// Milliseconds since `start` of the last progress; 0 = idle.
    busy_progress_ms: AtomicU64,
}

impl Default for Liveness {
    fn default() -> Self {
        Self {
            start: Instant::now(),
            busy_progress_ms: AtomicU64::new(0),
        }
    }
}

impl Liveness {
    /// The worker made progress (or started a job).
    pub fn progress(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.busy_progress_ms.store(ms.max(1), Ordering::Relaxed);
    }

    /// The worker is waiting for work.
    pub fn idle(&self) {
        self.busy_progress_ms.store(0, Ordering::Relaxed);
    }

    /// How long the current job has gone without progress (None = idle).
    pub fn stalled_for(&self) -> Option<Duration> {
        match self.busy_progress_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(
                self.start
                    .elapsed()
                    .saturating_sub(Duration::from_millis(ms)),
            ),
        }
    }
}

/// Talks to systemd's notification socket.
#[derive(Debug, Clone)]
pub struct Systemd {
    pub watchdog: Option<Duration>,
    pub liveness: Arc<Liveness>,
}

impl Systemd {
    pub fn from_env() -> Self {
        Self {
            watchdog: sd_notify::watchdog_enabled(),
            liveness: Arc::new(Liveness::default()),
        }
    }

    fn send(&self, states: &[sd_notify::NotifyState]) {
        if std::env::var_os("NOTIFY_SOCKET").is_none() {
            return;
        }
        if let Err(e) = sd_notify::notify(states) {
            tracing::debug!(error = %e, "sd_notify failed");
        }
    }

    pub fn status(&self, msg: &str) {
        self.send(&[sd_notify::NotifyState::Status(msg)]);
    }

    pub fn ready(&self, msg: &str) {
        self.send(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status(msg),
        ]);
    }

    /// A config reload starts (`ready` again when it is done).
    pub fn reloading(&self) {
        let mut states = vec![sd_notify::NotifyState::Reloading];
        if let Ok(now) = sd_notify::NotifyState::monotonic_usec_now() {
            states.push(now);
        }
        states.push(sd_notify::NotifyState::Status("reloading the config"));
        self.send(&states);
    }

    pub fn stopping(&self) {
        self.send(&[
            sd_notify::NotifyState::Stopping,
            sd_notify::NotifyState::Status("stopping"),
        ]);
    }

    /// Feeds the watchdog if the worker is idle or progressing; returns
    /// false (and logs) when the worker looks hung.
    pub fn keep_alive(&self) -> bool {
        let Some(period) = self.watchdog else {
            return true;
        };
        match self.liveness.stalled_for() {
            Some(stalled) if stalled >= period => {
                tracing::error!(
                    stalled_s = stalled.as_secs(),
                    "inference worker made no progress; not feeding the watchdog"
                );
                false
            }
            _ => {
                self.send(&[sd_notify::NotifyState::Watchdog]);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness() {
        let l = Liveness::default();
        assert_eq!(l.stalled_for(), None);
        l.progress();
        assert!(l.stalled_for().unwrap() < Duration::from_millis(50));
        l.idle();
        assert_eq!(l.stalled_for(), None);
    }

    #[test]
    fn a_stalled_worker_starves_the_watchdog_a_progressing_one_does_not() {
        let sd = Systemd {
            watchdog: Some(Duration::from_millis(100)),
            liveness: Arc::new(Liveness::default()),
        };
        assert!(sd.keep_alive(), "idle worker: feed");
        // A long answer that keeps producing tokens: fed all along.
        for _ in 0..4 {
            sd.liveness.progress();
            std::thread::sleep(Duration::from_millis(40));
            assert!(sd.keep_alive());
        }
        // Hung inside a job: no progress for a whole period -> not fed.
        std::thread::sleep(Duration::from_millis(120));
        assert!(!sd.keep_alive());
        sd.liveness.idle();
        assert!(sd.keep_alive());
    }
}
