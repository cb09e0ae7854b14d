//! `GET /metrics`: the figures of the MQTT stats message in Prometheus'
//! text exposition format (version 0.0.4), so a Prometheus or Grafana
//! Agent on the network scrapes the same numbers Home Assistant sees.

use serde_json::Value;
use std::fmt::Write as _;

/// The content type of the exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP blipd_{name} {help}");
        let _ = writeln!(self.0, "# TYPE blipd_{name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], v: f64) {
        let _ = write!(self.0, "blipd_{name}");
        if !labels.is_empty() {
            let l: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            let _ = write!(self.0, "{{{}}}", l.join(","));
        }
        let _ = writeln!(self.0, " {v}");
    }

    fn one(&mut self, name: &str, kind: &str, help: &str, v: Option<f64>) {
        if let Some(v) = v {
            self.family(name, kind, help);
            self.sample(name, &[], v);
        }
    }
}

/// A label value: backslash, quote and newline escaped.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Renders the stats figures (`Stats::figures`, with `cameras` added as
/// in the stats message).
pub fn render(f: &Value) -> String {
    let mut o = Out(String::new());
    let n = |k: &str| f.get(k).and_then(Value::as_f64);
    o.one(
        "uptime_seconds",
        "gauge",
        "Seconds since the daemon started.",
        n("uptime_s"),
    );
    o.one(
        "requests_total",
        "counter",
        "Requests accepted into the queue (MQTT and HTTP).",
        n("requests"),
    );
    o.one(
        "answered_total",
        "counter",
        "Requests answered.",
        n("answered"),
    );
    if let Some(errors) = f.get("errors").and_then(Value::as_object) {
        o.family(
            "errors_total",
            "counter",
            "Requests that got an error, by code.",
        );
        for (code, v) in errors {
            o.sample("errors_total", &[("code", code)], v.as_f64().unwrap_or(0.0));
        }
    }
    o.one(
        "refused_by_broker_total",
        "counter",
        "Publishes the MQTT broker refused.",
        n("refused_by_broker"),
    );
    o.one(
        "watch_runs_total",
        "counter",
        "Runs of the configured watches.",
        n("watch_runs"),
    );
    o.one(
        "watch_errors_total",
        "counter",
        "Watch runs that failed.",
        n("watch_errors"),
    );
    if let Some(q) = f.get("queue") {
        o.family(
            "queue_depth",
            "gauge",
            "Jobs waiting for the worker, by lane.",
        );
        for lane in ["requests", "watches"] {
            let v = q.get(lane).and_then(Value::as_f64).unwrap_or(0.0);
            o.sample("queue_depth", &[("lane", lane)], v);
        }
    }
    o.one(
        "worker_busy",
        "gauge",
        "1 while the worker is answering.",
        f.get("worker_busy")
            .and_then(Value::as_bool)
            .map(|b| b as u8 as f64),
    );
    o.one(
        "busy_fraction",
        "gauge",
        "Fraction of time the worker was busy since the last stats message.",
        n("busy_fraction"),
    );
    if let Some(lat) = f.get("latency").and_then(Value::as_object) {
        let stages: Vec<(&String, &Value)> = lat.iter().filter(|(_, v)| v.is_object()).collect();
        for (stat, help) in [("mean", "Mean"), ("p95", "95th percentile")] {
            let name = format!("latency_{stat}");
            o.family(&name, "gauge", &format!("{help} over the recent answers, per stage (milliseconds; tokens per second for decode_tokens_per_s)."));
            for (stage, v) in &stages {
                if let Some(x) = v.get(stat).and_then(Value::as_f64) {
                    o.sample(&name, &[("stage", stage.trim_end_matches("_ms"))], x);
                }
            }
        }
    }
    let mib = |k: &str| {
        f.get("memory")
            .and_then(|m| m.get(k))
            .and_then(Value::as_f64)
            .map(|m| m * 1048576.0)
    };
    o.one(
        "resident_memory_bytes",
        "gauge",
        "Resident memory of the daemon.",
        mib("rss_mib"),
    );
    o.one(
        "peak_resident_memory_bytes",
        "gauge",
        "Peak resident memory of the daemon.",
        mib("peak_rss_mib"),
    );
    if let Some(t) = f
        .get("temperatures_c")
        .and_then(Value::as_object)
        .filter(|t| !t.is_empty())
    {
        o.family(
            "temperature_celsius",
            "gauge",
            "Thermal zones of the board.",
        );
        for (zone, v) in t {
            o.sample(
                "temperature_celsius",
                &[("zone", zone)],
                v.as_f64().unwrap_or(0.0),
            );
        }
    }
    if let Some(cams) = f.get("cameras").and_then(Value::as_array) {
        o.family(
            "camera_up",
            "gauge",
            "1 while the camera has a current frame, 0 while starting or unavailable.",
        );
        for c in cams {
            let name = c.get("name").and_then(Value::as_str).unwrap_or("");
            let up = c.get("state").and_then(Value::as_str) == Some("ok");
            o.sample("camera_up", &[("camera", name)], up as u8 as f64);
        }
    }
    o.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_and_labels() {
        let f = serde_json::json!({
            "uptime_s": 12, "requests": 3, "answered": 2, "errors": {"busy": 1},
            "refused_by_broker": 0, "watch_runs": 0, "watch_errors": 0,
            "queue": {"requests": 1, "watches": 0}, "worker_busy": true, "busy_fraction": 0.5,
            "latency": {"answers": 2, "total_ms": {"mean": 100.0, "p95": 150.0}, "vision_ms": null},
            "memory": {"rss_mib": 1.0, "peak_rss_mib": 2.0},
            "temperatures_c": {"cpu\"zone": 40.5},
            "cameras": [{"name": "door", "state": "ok"}, {"name": "yard", "state": "unavailable"}],
        });
        let t = render(&f);
        for want in [
            "# TYPE blipd_requests_total counter\nblipd_requests_total 3\n",
            "blipd_errors_total{code=\"busy\"} 1\n",
            "blipd_queue_depth{lane=\"requests\"} 1\n",
            "blipd_worker_busy 1\n",
            "blipd_latency_p95{stage=\"total\"} 150\n",
            "blipd_resident_memory_bytes 1048576\n",
            "blipd_temperature_celsius{zone=\"cpu\\\"zone\"} 40.5\n",
            "blipd_camera_up{camera=\"door\"} 1\n",
            "blipd_camera_up{camera=\"yard\"} 0\n",
        ] {
            assert!(t.contains(want), "{want:?} not in\n{t}");
        }
        assert!(
            !t.contains("vision"),
            "a stage without figures is left out:\n{t}"
        );
    }
}
