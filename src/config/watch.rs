//! `[[watch]]`: a standing question and its checks.

use super::durations::{duration, opt_duration};
use super::Limits;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::time::Duration;

/// A standing question (`[[watch]]`): asked on a schedule and/or when the
/// picture changes; the answer is published retained, and an event when it
/// changes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WatchConfig {
    /// Topic level and Home Assistant object id: `[A-Za-z0-9_-]+`.
    pub name: String,
    /// Default: the default camera.
    #[serde(default)]
    pub camera: Option<String>,
    pub prompt: String,
    /// Ask at this interval ("30s", "5m", "1h 30m").
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub every: Option<Duration>,
    /// Ask when the picture changed by at least this fraction (0-1: mean
    /// absolute difference of a small grey thumbnail, 0.05 is a person
    /// walking through a 640x480 frame).
    #[serde(default)]
    pub on_change: Option<f32>,
    /// How often frames are compared for `on_change`.
    #[serde(default = "default_check_every", with = "duration")]
    pub check_every: Duration,
    /// Change-triggered runs are at least this far apart (a flickering
    /// light must not monopolise the model).
    #[serde(default = "default_min_interval", with = "duration")]
    pub min_interval: Duration,
    /// Regular expression: an event is published only when a new answer
    /// matches it (e.g. `"(?i)^yes"`). The retained state is always updated.
    #[serde(default)]
    pub only_if: Option<String>,
    #[serde(default)]
    pub max_tokens: Option<usize>,
    /// Also publish the JPEG of the answered frame.
    #[serde(default)]
    pub snapshot: bool,
    /// The answer is exactly one of these: in Home Assistant a
    /// `binary_sensor` with two (on = the first), an enum `sensor` with more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub choices: Option<Vec<String>>,
    /// `"number"` (a numeric sensor in Home Assistant) or `"json"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// With `format = "json"`: a JSON Schema the answer validates against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<serde_json::Value>,
    /// Home Assistant's `device_class` for the entity (`door`, `occupancy`,
    /// `temperature` ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_class: Option<String>,
}

fn default_check_every() -> Duration {
    Duration::from_secs(1)
}
fn default_min_interval() -> Duration {
    Duration::from_secs(5)
}

impl WatchConfig {
    /// Everything about one watch that does not depend on the others; the
    /// error names the key (`name`, `camera`, ...) and what is wrong.
    pub(super) fn validate(
        &self,
        cameras: &BTreeSet<&str>,
        l: &Limits,
    ) -> Result<(), (&'static str, String)> {
        let w = self;
        if w.name.is_empty()
            || !w
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err((
                "name",
                format!("{:?} must be letters, digits, '_' or '-'", w.name),
            ));
        }
        if let Some(c) = &w.camera {
            if !cameras.contains(c.as_str()) {
                return Err(("camera", format!("no [[camera]] is named {c:?}")));
            }
        }
        if w.prompt.trim().is_empty() || w.prompt.chars().count() > l.max_prompt_chars {
            return Err((
                "prompt",
                format!(
                    "must be 1..={} characters (limits.max_prompt_chars)",
                    l.max_prompt_chars
                ),
            ));
        }
        if w.every.is_none() && w.on_change.is_none() {
            return Err((
                "every",
                "a watch needs `every` (a schedule), `on_change` (a threshold) or both".into(),
            ));
        }
        if w.every.is_some_and(|d| d < Duration::from_secs(1)) {
            return Err(("every", "must be at least 1s".into()));
        }
        if let Some(t) = w.on_change {
            if !(t > 0.0 && t <= 1.0) {
                return Err(("on_change", format!("must be in (0, 1], got {t}")));
            }
        }
        if w.check_every < Duration::from_millis(100) {
            return Err(("check_every", "must be at least 100ms".into()));
        }
        if let Some(re) = &w.only_if {
            regex::Regex::new(re).map_err(|e| ("only_if", e.to_string()))?;
        }
        crate::llm::Constraint::from_parts(
            w.choices.as_deref(),
            w.format.as_deref(),
            w.schema.as_ref(),
        )
        .map_err(|e| {
            let k = if w.choices.is_some() {
                "choices"
            } else {
                "format"
            };
            (k, e)
        })?;
        if let Some(dc) = &w.device_class {
            let ok = !dc.is_empty()
                && dc.len() <= 32
                && dc.chars().all(|c| c.is_ascii_lowercase() || c == '_');
            if !ok {
                return Err((
                    "device_class",
                    format!("{dc:?} must be a Home Assistant device class such as \"door\""),
                ));
            }
        }
        if let Some(n) = w.max_tokens {
            if n == 0 || n > l.max_tokens {
                return Err((
                    "max_tokens",
                    format!("must be 1..={} (limits.max_tokens)", l.max_tokens),
                ));
            }
        }
        Ok(())
    }
}
