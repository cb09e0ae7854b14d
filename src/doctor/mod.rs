//! `blipd doctor`: checks a board before and after install.
//!
//! Each check looks at one thing the daemon depends on (config, bundle,
//! memory, cameras, broker, HTTP API, state directory) and says what is wrong and what
//! to do about it. The daemon itself reports the same problems, but one at a
//! time, in a log, after a model load of minutes; the doctor reports all of
//! them at once, in seconds, in the terminal of whoever is installing.
//!
//! Checks reuse the daemon's own code paths ([`Config::load`],
//! [`Bundle::verify`], [`Camera::spawn`], [`crate::mqtt::connection`]) so that
//! "doctor says ok" means "the daemon will get past this", not "a second
//! implementation agrees".

mod broker;
mod bundle;
mod cameras;
mod http;
mod memory;
mod state_dir;

use broker::broker_check;
use bundle::bundle_check;
use cameras::camera_checks;
use http::http_check;
use memory::memory_check;
use state_dir::state_dir_check;

use crate::bundle::{default_bundle_dir, Bundle, BundleError, Manifest, MANIFEST};
use crate::camera::{Camera, CameraError, SourceConfig};
use crate::config::{Config, ConfigError};
use crate::mqtt::MqttError;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a camera gets to deliver its first frame, and the broker to
/// answer CONNECT. Generous for a healthy board (both take milliseconds),
/// short enough that a doctor run stays interactive.
const WAIT: Duration = Duration::from_secs(5);
/// Available memory below this multiple of the estimate is a warning: the
/// estimate leaves out compute buffers, the OS and everything else running.
const MEMORY_HEADROOM: f64 = 1.25;

/// Outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    /// Works, but something is likely to bite later.
    Warn,
    /// The daemon will not work (or not fully) until this is fixed.
    Fail,
}

impl Status {
    /// The word printed in front of the check, padded so details line up.
    pub fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok  ",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        }
    }
}

/// One line of the report (and one object of `--json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// `config`, `bundle`, `memory`, `camera <name>`, `broker`, `state_dir`.
    #[serde(rename = "check")]
    pub name: String,
    pub status: Status,
    pub detail: String,
    /// What to do about a warning or failure; `None` when ok.
    pub fix: Option<String>,
}

impl Check {
    fn ok(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            status: Status::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    fn warn(name: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            status: Status::Warn,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    fn fail(name: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            status: Status::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    /// The human form: `ok    bundle: ...`, then `      fix: ...` when not ok.
    pub fn render(&self) -> String {
        let mut s = format!("{}  {}: {}", self.status.label(), self.name, self.detail);
        if let Some(fix) = &self.fix {
            s.push_str("\n      fix: ");
            s.push_str(fix);
        }
        s
    }
}

/// Loads the config the way `blipd serve` would (`None`: zero-config).
///
/// A config that does not load is returned as the failed `config` check:
/// every other check needs the config, so the report stops there.
pub fn load_config(path: Option<&Path>) -> Result<Config, Check> {
    let Some(path) = path else {
        return Ok(Config::zero_config());
    };
    Config::load(path).map_err(|e| {
        let shown = path.display();
        let fix = match &e {
            ConfigError::Read { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                format!(
                    "create {shown} (systemd/blipd.toml is the commented example) or point \
                     --config / BLIPD_CONFIG at the right file"
                )
            }
            ConfigError::Read { .. } => {
                format!("make {shown} readable by this user (blipd reads it at start)")
            }
            ConfigError::Parse { .. } | ConfigError::Invalid { .. } => format!(
                "edit {shown} at the key named above (systemd/blipd.toml documents every key); \
                 `blipd check-config {shown}` re-checks it"
            ),
        };
        Check::fail("config", e.to_string(), fix)
    })
}

/// Runs every check against a loaded config; `config_path` is only for the
/// report (`None`: zero-config).
pub fn run(cfg: &Config, config_path: Option<&Path>) -> Vec<Check> {
    let mut checks = vec![config_check(cfg, config_path)];
    let model_dir = cfg.model.clone().unwrap_or_else(default_bundle_dir);
    let (bundle_check, manifest) = bundle_check(&model_dir);
    checks.push(bundle_check);
    checks.push(memory_check(cfg, manifest.as_ref()));
    checks.extend(camera_checks(cfg));
    checks.push(broker_check(cfg));
    checks.extend(http_check(cfg));
    checks.push(state_dir_check(cfg));
    checks
}

fn config_check(cfg: &Config, path: Option<&Path>) -> Check {
    let cameras = cfg.cameras.len();
    let broker = match &cfg.mqtt.url {
        Some(url) => url.clone(),
        None => "embedded".into(),
    };
    let summary = format!(
        "device_id {}, {cameras} camera{}, broker {broker}",
        cfg.device_id(),
        if cameras == 1 { "" } else { "s" }
    );
    match path {
        Some(p) => Check::ok(
            "config",
            format!("{} parses and validates ({summary})", p.display()),
        ),
        None => Check::ok(
            "config",
            format!("no config file: zero-config defaults ({summary})"),
        ),
    }
}

/// `1.5 GiB`, `320.0 KiB`, `12 B`.
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = UNITS[0];
    for u in &UNITS[1..] {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_readable() {
        assert_eq!(human_bytes(12), "12 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }

    #[test]
    fn render_puts_the_fix_on_its_own_line() {
        let c = Check::fail("bundle", "llm.gguf is corrupt", "copy it again");
        assert_eq!(
            c.render(),
            "FAIL  bundle: llm.gguf is corrupt\n      fix: copy it again"
        );
        assert_eq!(Check::ok("config", "fine").render(), "ok    config: fine");
    }
}
