//! The retained `<prefix>/<device>/stats` message: counters since start,
//! latency over the recent answers, and the board's memory and temperatures.
//!
//! Fed by the MQTT task (it sees every result and the MQTT intake
//! decisions) and by the HTTP API's intake; shared behind one mutex
//! ([`SharedStats`]), held only to count or to read the figures.

use crate::mqtt::wire::{ErrorCode, Timings};
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// The one set of counters, shared by the MQTT session and the HTTP API.
#[derive(Debug, Clone, Default)]
pub struct SharedStats(Arc<Mutex<Stats>>);

impl SharedStats {
    pub fn new() -> Self {
        Self(Arc::new(Mutex::new(Stats::new())))
    }

    /// The counters (a poisoned lock still holds usable counters).
    pub fn lock(&self) -> MutexGuard<'_, Stats> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Latency figures are over this many most recent answers.
const WINDOW: usize = 256;

#[derive(Debug, Default)]
pub struct Stats {
    started: Option<Instant>,
    requests: u64,
    answered: u64,
    errors: BTreeMap<String, u64>,
    watch_runs: u64,
    watch_errors: u64,
    /// Publishes the broker refused (PUBACK reason >= 0x80).
    refused_by_broker: u64,
    recent: VecDeque<Timings>,
    /// Worker time since the last report, for the busy fraction.
    busy_ms: f64,
    last_report: Option<Instant>,
}

/// Mean and 95th percentile of one stage, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Latency {
    pub mean: f64,
    pub p95: f64,
}

impl Latency {
    fn of(mut v: Vec<f64>) -> Option<Self> {
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        // Nearest-rank percentile.
        let rank = ((0.95 * v.len() as f64).ceil() as usize).clamp(1, v.len());
        Some(Self {
            mean: round(mean),
            p95: round(v[rank - 1]),
        })
    }
}

fn round(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

impl Stats {
    pub fn new() -> Self {
        Self {
            started: Some(Instant::now()),
            last_report: Some(Instant::now()),
            ..Default::default()
        }
    }

    /// The broker refused one of our publishes (an ACL, a quota).
    pub fn reply_refused(&mut self) {
        self.refused_by_broker += 1;
    }

    /// A request was accepted into the queue.
    pub fn accepted(&mut self) {
        self.requests += 1;
    }

    /// A request got an error reply (refused at intake or failed).
    pub fn error(&mut self, code: ErrorCode) {
        let name = serde_json::to_value(code)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| format!("{code:?}"));
        *self.errors.entry(name).or_default() += 1;
    }

    /// A job finished with an answer (`watch`: a standing question).
    pub fn answer(&mut self, t: &Timings, watch: bool) {
        if watch {
            self.watch_runs += 1;
        } else {
            self.answered += 1;
        }
        self.busy_ms += t.stages.total_ms;
        if self.recent.len() == WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back(t.clone());
    }

    /// Mean answer time over the recent answers (Retry-After for `busy`).
    pub fn mean_total_ms(&self) -> Option<f64> {
        let n = self.recent.len();
        (n > 0).then(|| self.recent.iter().map(|t| t.stages.total_ms).sum::<f64>() / n as f64)
    }

    pub fn watch_failed(&mut self) {
        self.watch_runs += 1;
        self.watch_errors += 1;
    }

    /// The stats message; resets the busy-fraction window.
    pub fn report(&mut self, queue: (usize, usize), worker_busy: bool) -> serde_json::Value {
        let r = self.figures(queue, worker_busy);
        self.busy_ms = 0.0;
        self.last_report = Some(Instant::now());
        r
    }

    /// The figures of the stats message, without starting a new
    /// busy-fraction window (`GET /metrics` reads them as often as it likes).
    pub fn figures(&self, queue: (usize, usize), worker_busy: bool) -> serde_json::Value {
        let now = Instant::now();
        let window = self
            .last_report
            .map(|t| now.duration_since(t).as_secs_f64() * 1e3)
            .unwrap_or(0.0);
        let busy_fraction = if window > 0.0 {
            (self.busy_ms / window).min(1.0)
        } else {
            0.0
        };
        let stage = |f: fn(&Timings) -> f64| Latency::of(self.recent.iter().map(f).collect());
        let latency = serde_json::json!({
            "answers": self.recent.len(),
            "queue_ms": stage(|t| t.queue_ms),
            "preprocess_ms": stage(|t| t.stages.preprocess_ms),
            "vision_ms": stage(|t| t.stages.vision_ms),
            "qformer_ms": stage(|t| t.stages.qformer_ms),
            "prefill_ms": stage(|t| t.stages.prefill_ms),
            "decode_ms": stage(|t| t.stages.decode_ms),
            "total_ms": stage(|t| t.stages.total_ms),
            "decode_tokens_per_s": stage(|t| t.stages.decode_tokens_per_s),
        });
        serde_json::json!({
            "time": crate::mqtt::wire::rfc3339(std::time::SystemTime::now()),
            "uptime_s": self.started.map(|t| now.duration_since(t).as_secs()).unwrap_or(0),
            "requests": self.requests,
            "answered": self.answered,
            "errors": self.errors,
            "refused_by_broker": self.refused_by_broker,
            "watch_runs": self.watch_runs,
            "watch_errors": self.watch_errors,
            "queue": {"requests": queue.0, "watches": queue.1},
            "worker_busy": worker_busy,
            "busy_fraction": round(busy_fraction * 100.0) / 100.0,
            "latency": latency,
            "memory": memory(),
            "temperatures_c": temperatures(),
        })
    }
}

/// Resident and peak resident memory of this process, in MiB (Linux).
pub fn memory_mib() -> (Option<f64>, Option<f64>) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    let mib = |v: Option<u64>| v.map(|k| round(k as f64 / 1024.0));
    (mib(kib("VmRSS:")), mib(kib("VmHWM:")))
}

fn memory() -> serde_json::Value {
    let (rss, peak) = memory_mib();
    serde_json::json!({"rss_mib": rss, "peak_rss_mib": peak})
}

/// `/sys/class/thermal` zones, by type (`cpu-thermal`, `GPU-therm`, ...).
fn temperatures() -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/sys/class/thermal") else {
        return out;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("thermal_zone") {
            continue;
        }
        let read = |f: &str| std::fs::read_to_string(e.path().join(f)).ok();
        let (Some(kind), Some(temp)) = (read("type"), read("temp")) else {
            continue;
        };
        let Ok(milli) = temp.trim().parse::<i64>() else {
            continue;
        };
        let mut key = kind.trim().to_string();
        if out.contains_key(&key) {
            key = format!("{key}_{name}");
        }
        out.insert(key, milli as f64 / 1000.0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_percentiles() {
        let mut s = Stats::new();
        for i in 1..=20 {
            s.accepted();
            let mut t = Timings::default();
            t.stages.total_ms = i as f64 * 10.0;
            s.answer(&t, false);
        }
        s.error(ErrorCode::Busy);
        s.error(ErrorCode::Busy);
        let r = s.report((1, 0), false);
        assert_eq!(r["requests"], 20);
        assert_eq!(r["answered"], 20);
        assert_eq!(r["errors"]["busy"], 2);
        assert_eq!(r["latency"]["total_ms"]["mean"], 105.0);
        assert_eq!(r["latency"]["total_ms"]["p95"], 190.0);
        assert!(r["memory"]["rss_mib"].as_f64().unwrap() > 0.0);
        assert!(r["latency"]["vision_ms"]["p95"].is_number());
    }
}
