//! `blipd doctor`: checks a board before and after install.
//!
//! Each check looks at one thing the daemon depends on (config, bundle,
//! memory, cameras, broker, state directory) and says what is wrong and what
//! to do about it. The daemon itself reports the same problems, but one at a
//! time, in a log, after a model load of minutes; the doctor reports all of
//! them at once, in seconds, in the terminal of whoever is installing.
//!
//! Checks reuse the daemon's own code paths ([`Config::load`],
//! [`Bundle::verify`], [`Camera::spawn`], [`crate::mqtt::options`]) so that
//! "doctor says ok" means "the daemon will get past this", not "a second
//! implementation agrees".

use crate::bundle::{default_bundle_dir, Bundle, BundleError, Manifest, MANIFEST};
use crate::camera::{Camera, CameraError, SourceConfig};
use crate::config::{Config, ConfigError};
use crate::mqtt::{MqttError, Topics};
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

// ---------------------------------------------------------------------------
// Bundle
// ---------------------------------------------------------------------------

/// Opens and fully verifies the bundle (what `blipd serve` does at load).
/// Returns the manifest whenever it could be read, even if a file is bad, so
/// the memory check can still size the model.
fn bundle_check(dir: &Path) -> (Check, Option<Manifest>) {
    let shown = dir.display();
    let bundle = match Bundle::open(dir) {
        Ok(b) => b,
        Err(e) => {
            let fix = match &e {
                BundleError::NotADirectory(_) => format!(
                    "set `model` in the config to the bundle directory written by \
                     models/export.py (it holds {MANIFEST}), or copy the bundle to {shown}"
                ),
                BundleError::MissingFile { .. } => format!(
                    "{shown} has no {MANIFEST}: copy the whole bundle directory, or point \
                     `model` at the directory that holds {MANIFEST}"
                ),
                BundleError::Io { .. } => {
                    format!("make {shown} and its files readable by the user running blipd")
                }
                _ => "re-export the bundle with this blipd's models/export.py".into(),
            };
            return (Check::fail("bundle", e.to_string(), fix), None);
        }
    };
    let manifest = bundle.manifest.clone();
    let total: u64 = manifest.files.values().map(|f| f.size).sum();
    let summary = format!(
        "{} files, {} (llm {})",
        manifest.files.len(),
        human_bytes(total),
        manifest.llm.weight_type
    );
    let check = match bundle.verify() {
        Ok(()) => Check::ok(
            "bundle",
            format!("{shown}: {summary}, sizes and sha256 match {MANIFEST}"),
        ),
        Err(e) => {
            let fix = match &e {
                BundleError::Io { .. } => {
                    format!("make the files of {shown} readable by the user running blipd")
                }
                _ => format!(
                    "the copy in {shown} is incomplete or damaged: copy the bundle again (e.g. \
                     `rsync -a --checksum SRC/ {shown}/`) or re-export it with models/export.py"
                ),
            };
            Check::fail("bundle", format!("{shown} ({summary}): {e}"), fix)
        }
    };
    (check, Some(manifest))
}

// ---------------------------------------------------------------------------
// Memory
// ---------------------------------------------------------------------------

/// Compares MemAvailable with a rough need: every bundle file loaded once
/// plus the LLM's KV cache.
fn memory_check(cfg: &Config, manifest: Option<&Manifest>) -> Check {
    let Some(m) = manifest else {
        return Check::warn(
            "memory",
            "not estimated: the bundle manifest could not be read",
            "fix the bundle first, then run `blipd doctor` again",
        );
    };
    let files: u64 = m.files.values().map(|f| f.size).sum();
    let n_ctx = if cfg.n_ctx > 0 {
        cfg.n_ctx as u64
    } else {
        m.llm.context_length as u64
    };
    let (kv, layers) = kv_cache_estimate(m, n_ctx);
    let need = files + kv;
    let need_text = format!(
        "estimated need {} (bundle {} + KV cache {} for {n_ctx} tokens x ~{layers} layers)",
        human_bytes(need),
        human_bytes(files),
        human_bytes(kv)
    );
    let available = match mem_available() {
        Ok(a) => a,
        Err(e) => {
            return Check::warn(
                "memory",
                format!("{need_text}; cannot read MemAvailable: {e}"),
                "check free memory by hand (`free -h`) against the estimate",
            )
        }
    };
    let detail = format!("{} available, {need_text}", human_bytes(available));
    let running = "if blipd is already running, its memory does not count as available: \
                   stop it and run `blipd doctor` again";
    if available < need {
        Check::fail(
            "memory",
            detail,
            format!(
                "use a smaller bundle (`blipd quantize BUNDLE OUT q4_k_m`), a shorter context \
                 (`n_ctx` in the config), stop other programs or add swap; {running}"
            ),
        )
    } else if (available as f64) < need as f64 * MEMORY_HEADROOM {
        Check::warn(
            "memory",
            format!("{detail}: less than {MEMORY_HEADROOM}x headroom"),
            format!(
                "the estimate leaves out compute buffers and other programs; consider a smaller \
                 bundle or `n_ctx`; {running}"
            ),
        )
    } else {
        Check::ok("memory", detail)
    }
}

/// KV-cache bytes and the layer count used, estimated from the manifest.
///
/// The manifest does not record the LLM's layer count, so it is derived from
/// the weight count (GGUF size / bits per weight): a LLaMA layer holds about
/// 12 x hidden^2 weights, the token embeddings and output head 2 x vocab x
/// hidden. The cache itself is K and V per layer per position, f16
/// (llama.cpp's default cache type).
fn kv_cache_estimate(m: &Manifest, n_ctx: u64) -> (u64, u64) {
    let hidden = m.llm.hidden_size as f64;
    let llm_bytes = m.files.get(&m.llm.file).map(|f| f.size).unwrap_or(0) as f64;
    let weights = llm_bytes * 8.0 / bits_per_weight(&m.llm.weight_type);
    let embeddings = 2.0 * m.llm.vocab_size as f64 * hidden;
    let per_layer = 12.0 * hidden * hidden;
    let layers = if per_layer > 0.0 {
        ((weights - embeddings) / per_layer).round().max(1.0) as u64
    } else {
        1
    };
    let kv = n_ctx * layers * 2 * m.llm.hidden_size as u64 * 2;
    (kv, layers)
}

/// Average bits per weight of a GGUF tensor type (block scales included);
/// unknown types count as f16, which overestimates quantized ones' layers.
fn bits_per_weight(weight_type: &str) -> f64 {
    match weight_type.to_ascii_lowercase().as_str() {
        "f32" => 32.0,
        "f16" | "bf16" => 16.0,
        "q8_0" => 8.5,
        "q6_k" => 6.56,
        "q5_k_m" => 5.7,
        "q5_k_s" | "q5_0" | "q5_1" => 5.5,
        "q4_k_m" => 4.85,
        "q4_k_s" | "q4_0" | "q4_1" => 4.5,
        "q3_k_m" | "q3_k_s" | "q3_k_l" => 3.9,
        "q2_k" => 2.6,
        _ => 16.0,
    }
}

/// `MemAvailable` of /proc/meminfo, in bytes.
fn mem_available() -> Result<u64, String> {
    let text = std::fs::read_to_string("/proc/meminfo").map_err(|e| e.to_string())?;
    text.lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| "no MemAvailable line in /proc/meminfo".into())
}

// ---------------------------------------------------------------------------
// Cameras
// ---------------------------------------------------------------------------

/// Starts every configured camera at once (so the wait is shared) and
/// reports, per camera, the first frame or the reason there was none.
fn camera_checks(cfg: &Config) -> Vec<Check> {
    let cameras: Vec<Camera> = cfg
        .cameras
        .iter()
        .map(|c| Camera::spawn(c.clone()))
        .collect();
    let deadline = Instant::now() + WAIT;
    let mut results: Vec<Option<Result<(u32, u32), String>>> = vec![None; cameras.len()];
    loop {
        for (cam, result) in cameras.iter().zip(results.iter_mut()) {
            if let Some(Ok(_)) = result {
                continue;
            }
            *result = match cam.latest() {
                Ok(frame) => Some(Ok(frame.image.dimensions())),
                Err(CameraError::Unavailable { reason, .. }) => Some(Err(reason)),
                Err(CameraError::NoFrameYet { .. }) => None,
            };
        }
        let all_ok = results.iter().all(|r| matches!(r, Some(Ok(_))));
        if all_ok || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Stop the capture threads before probing V4L2 devices again below.
    drop(cameras);
    cfg.cameras
        .iter()
        .zip(results)
        .map(|(c, result)| {
            let name = format!("camera {}", c.name);
            let kind = c.source.kind();
            let (where_, extra) = match &c.source {
                SourceConfig::File { path, .. } | SourceConfig::Folder { path, .. } => {
                    (format!(" {}", path.display()), None)
                }
                SourceConfig::V4l2 { device, .. } => {
                    (format!(" {}", device.display()), Some(v4l2_probe(device)))
                }
                SourceConfig::TestPattern { .. } => (String::new(), None),
            };
            let probe_text = extra
                .as_ref()
                .and_then(|p| p.detail.as_ref())
                .map(|d| format!("; {d}"))
                .unwrap_or_default();
            match result {
                Some(Ok((w, h))) => {
                    Check::ok(name, format!("{kind}{where_}: {w}x{h} frame{probe_text}"))
                }
                other => {
                    let reason = match other {
                        Some(Err(reason)) => reason,
                        _ => format!("no frame within {} s", WAIT.as_secs()),
                    };
                    let fix = camera_fix(&c.name, &c.source, &reason, extra.as_ref());
                    Check::fail(name, format!("{kind}{where_}: {reason}{probe_text}"), fix)
                }
            }
        })
        .collect()
}

/// What a user can do about a camera that gave no frame.
fn camera_fix(
    name: &str,
    source: &SourceConfig,
    reason: &str,
    probe: Option<&V4l2Probe>,
) -> String {
    match source {
        SourceConfig::File { .. } => format!(
            "check `path` of [[camera]] {name:?}: it must be an existing, readable image file \
             (png, jpeg, bmp, webp) that this user can read"
        ),
        SourceConfig::Folder { .. } => format!(
            "check `path` of [[camera]] {name:?}: it must be a readable folder with at least \
             one png, jpeg, bmp or webp image"
        ),
        SourceConfig::TestPattern { .. } => format!(
            "check the settings of [[camera]] {name:?} (`blipd check-config` names bad keys)"
        ),
        SourceConfig::V4l2 { .. } => {
            if let Some(fix) = probe.and_then(|p| p.fix.clone()) {
                fix
            } else if reason.contains("busy") {
                "another program streams from the camera (a running blipd too: stop it \
                 first); `fuser -v /dev/video*` shows which"
                    .into()
            } else if reason.contains("format") {
                format!(
                    "set `format` of [[camera]] {name:?} to one the device offers (mjpeg, yuyv \
                     or rgb24), or remove it to let blipd choose"
                )
            } else {
                format!(
                    "check `device` of [[camera]] {name:?}: `v4l2-ctl --list-devices` shows \
                     the capture nodes (some cameras expose metadata on a neighbouring node)"
                )
            }
        }
    }
}

/// What could be learned about a V4L2 device node without streaming.
struct V4l2Probe {
    /// Added to the camera's detail; `None` when the capture code's own
    /// reason already says it (a missing node, permission denied).
    detail: Option<String>,
    fix: Option<String>,
}

/// Opens the device node (as the capture code does) and lists its pixel
/// formats: access problems are the common install mistake, and the format
/// list is what a `format = ...` setting must pick from.
fn v4l2_probe(device: &Path) -> V4l2Probe {
    use v4l::video::Capture;
    let shown = device.display();
    if !device.exists() {
        return V4l2Probe {
            detail: None,
            fix: Some(
                "plug the camera in (`ls /dev/video*` lists the device nodes) and set `device` \
                 of the camera to its node"
                    .into(),
            ),
        };
    }
    match v4l::Device::with_path(device) {
        Ok(dev) => match dev.enum_formats() {
            Ok(formats) => {
                let list: Vec<String> = formats
                    .iter()
                    .map(|f| format!("{} ({})", f.fourcc, f.description))
                    .collect();
                V4l2Probe {
                    detail: Some(format!(
                        "{shown} is read/writable, formats: {}",
                        list.join(", ")
                    )),
                    fix: None,
                }
            }
            Err(e) => V4l2Probe {
                detail: Some(format!("{shown} opens but cannot list its formats: {e}")),
                fix: None,
            },
        },
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => V4l2Probe {
            detail: None,
            fix: Some(
                "add the user to the `video` group: `sudo usermod -aG video $USER`, then log in \
                 again (the systemd unit gets it through SupplementaryGroups=video)"
                    .into(),
            ),
        },
        Err(e) => V4l2Probe {
            detail: Some(format!("cannot open {shown}: {e}")),
            fix: None,
        },
    }
}

// ---------------------------------------------------------------------------
// Broker
// ---------------------------------------------------------------------------

fn broker_check(cfg: &Config) -> Check {
    match &cfg.mqtt.url {
        Some(url) => remote_broker_check(cfg, url),
        None => embedded_broker_check(&cfg.mqtt.embedded_listen),
    }
}

/// Connects once with the daemon's credentials and TLS settings.
///
/// The options come from [`crate::mqtt::options`] (so TLS and credentials are
/// exactly the daemon's), but the connection is the doctor's own: its own
/// client id with a clean start, so it neither takes over nor discards the
/// daemon's persistent session, and no Last Will, so disconnecting does not
/// publish `offline` for a daemon that is running fine.
fn remote_broker_check(cfg: &Config, url: &str) -> Check {
    let client_id = format!("blipd-doctor-{}", std::process::id());
    let topics = Topics::new(&cfg.mqtt, &cfg.device_id());
    let daemon_opts = match crate::mqtt::options(&cfg.mqtt, &client_id, &topics) {
        Ok(o) => o,
        Err(e) => {
            let fix = match &e {
                MqttError::ReadFile { path, .. } => {
                    format!("make {path} exist and be readable by the user running blipd")
                }
                MqttError::Url(_) => {
                    "set mqtt.ca_file to the CA that signed the broker's certificate".into()
                }
            };
            return Check::fail("broker", format!("{url}: {e}"), fix);
        }
    };
    let (host, port) = daemon_opts.broker_address();
    let mut opts = rumqttc::v5::MqttOptions::new(client_id.clone(), host, port);
    opts.set_transport(daemon_opts.transport());
    if let Some(login) = daemon_opts.credentials() {
        opts.set_credentials(login.username, login.password);
    }
    opts.set_keep_alive(Duration::from_secs(cfg.mqtt.keep_alive_secs));
    opts.set_clean_start(true);
    opts.set_connection_timeout(WAIT.as_secs());

    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return Check::fail(
                "broker",
                format!("cannot start an async runtime to test {url}: {e}"),
                "check the process limits of this user (threads, open files)",
            )
        }
    };
    let outcome = rt.block_on(async {
        let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(opts, 10);
        let result = tokio::time::timeout(WAIT, async {
            loop {
                match eventloop.poll().await {
                    Ok(rumqttc::v5::Event::Incoming(
                        rumqttc::v5::mqttbytes::v5::Packet::ConnAck(_),
                    )) => return Ok(()),
                    Ok(_) => {}
                    Err(e) => return Err(e),
                }
            }
        })
        .await;
        if let Ok(Ok(())) = result {
            // Leave politely; the broker would otherwise log a dropped client.
            let _ = client.try_disconnect();
            let _ = tokio::time::timeout(Duration::from_millis(500), async {
                while let Ok(ev) = eventloop.poll().await {
                    if matches!(
                        ev,
                        rumqttc::v5::Event::Outgoing(rumqttc::Outgoing::Disconnect)
                    ) {
                        break;
                    }
                }
            })
            .await;
        }
        result
    });
    let credentials = match &cfg.mqtt.username {
        Some(u) => format!(" as user {u:?}"),
        None => String::new(),
    };
    match outcome {
        Ok(Ok(())) => Check::ok(
            "broker",
            format!("{url}: connected{credentials} (MQTT 5, test client id {client_id})"),
        ),
        Ok(Err(e)) => broker_error(url, &e),
        Err(_) => Check::fail(
            "broker",
            format!("{url}: no CONNACK within {} s", WAIT.as_secs()),
            "the host accepts connections slowly or is not an MQTT broker: check host, port \
             (1883 plain, 8883 TLS), firewalls, and that mqtts:// is used for a TLS port",
        ),
    }
}

/// Sorts a connection error into refused / unreachable / TLS with a fix each.
fn broker_error(url: &str, e: &rumqttc::v5::ConnectionError) -> Check {
    use rumqttc::v5::mqttbytes::v5::ConnectReturnCode as Code;
    use rumqttc::v5::{ConnectionError as E, StateError};
    let refused = |code: &Code| {
        let fix = match code {
            Code::BadUserNamePassword | Code::NotAuthorized | Code::BadAuthenticationMethod => {
                "check mqtt.username and mqtt.password against the broker's users (and its ACL \
                 for this client)"
            }
            Code::ClientIdentifierNotValid | Code::BadClientId => {
                "the broker restricts client ids: allow `blipd-*` (and mqtt.client_id) in its \
                 configuration"
            }
            Code::UnsupportedProtocolVersion | Code::RefusedProtocolVersion => {
                "blipd speaks MQTT 5: enable MQTT 5 on the broker (mosquitto >= 1.6, EMQX, \
                 HiveMQ, ...)"
            }
            _ => "see the broker's log for why it refused the connection",
        };
        Check::fail(
            "broker",
            format!("{url}: broker refused the connection: {code:?}"),
            fix,
        )
    };
    match e {
        E::ConnectionRefused(code) => refused(code),
        E::MqttState(StateError::ConnFail { reason }) => refused(reason),
        E::Tls(t) => Check::fail(
            "broker",
            format!("{url}: TLS failed: {t}"),
            "check that the port speaks TLS (usually 8883; a plain MQTT port needs mqtt://), \
             that mqtt.ca_file is the CA that signed the broker's certificate, that the URL's \
             host name is in that certificate, and (mutual TLS) mqtt.cert_file/key_file",
        ),
        E::Io(io) | E::MqttState(StateError::Io(io)) => {
            use std::io::ErrorKind as K;
            let (what, fix) = match io.kind() {
                K::ConnectionRefused => (
                    "unreachable: connection refused (nothing listens on that port)",
                    "start the broker (e.g. `sudo systemctl start mosquitto`) or fix the port in \
                     mqtt.url",
                ),
                K::TimedOut => (
                    "unreachable: connection timed out",
                    "check the host in mqtt.url, the network and firewalls on the way",
                ),
                K::ConnectionReset | K::UnexpectedEof | K::ConnectionAborted => (
                    "the broker closed the connection during the handshake",
                    "a TLS port needs mqtts:// (and a plain port mqtt://); see the broker's log",
                ),
                _ if io.to_string().contains("lookup") || io.to_string().contains("resolve") => (
                    "unreachable: the host name does not resolve",
                    "check the host in mqtt.url (DNS, /etc/hosts)",
                ),
                _ => (
                    "unreachable",
                    "check the host and port in mqtt.url and the network",
                ),
            };
            Check::fail("broker", format!("{url}: {what} ({io})"), fix)
        }
        E::MqttState(StateError::Deserialization(_) | StateError::ConnectionAborted) => {
            Check::fail(
                "broker",
                format!("{url}: the broker closed the connection during the handshake ({e})"),
                "a TLS port needs mqtts:// and mqtt.ca_file (a plain port mqtt://); the broker's \
                 log says why it dropped the client",
            )
        }
        other => Check::fail(
            "broker",
            format!("{url}: connection failed: {other}"),
            "check mqtt.url, and that the broker speaks MQTT 5 on that port",
        ),
    }
}

/// Without `mqtt.url`, `blipd serve` either uses a broker already on
/// `embedded_listen` or starts its own there (MQTT 3.1.1 and 5 on the one
/// port): the same decision as `serve::broker::start_or_reuse`, without
/// starting one.
fn embedded_broker_check(listen: &str) -> Check {
    match crate::serve::broker::plan(listen) {
        Ok(crate::serve::broker::Plan::Reuse(addr)) => Check::ok(
            "broker",
            format!(
                "no mqtt.url: something already listens on {addr}; blipd serve will use it \
                 as the broker instead of starting the embedded one"
            ),
        ),
        Ok(crate::serve::broker::Plan::Start(addr, _)) => Check::ok(
            "broker",
            format!(
                "no mqtt.url: blipd serve will start its embedded demo broker on {addr} \
                 (MQTT 3.1.1 and 5, no authentication); the port is free"
            ),
        ),
        Err(e) => Check::fail(
            "broker",
            format!("no mqtt.url: the embedded broker: {e}"),
            "set mqtt.embedded_listen to a free address such as \"127.0.0.1:1883\", \
             or set mqtt.url to a broker",
        ),
    }
}

// ---------------------------------------------------------------------------
// State directory
// ---------------------------------------------------------------------------

/// The daemon remembers answered request ids in `state_dir` so a request
/// redelivered after a restart is not answered twice.
fn state_dir_check(cfg: &Config) -> Check {
    let Some(dir) = &cfg.state_dir else {
        return Check::warn(
            "state_dir",
            "not set: answered request ids are kept in memory only, so a request redelivered \
             after a restart can be answered twice",
            "set state_dir in the config (as a service: \"/var/lib/blipd/state\")",
        );
    };
    let shown = dir.display();
    let not_writable = format!(
        "give the user running blipd write access to {shown} (as a service, use a directory \
         under /var/lib/blipd: StateDirectory= makes it writable)"
    );
    if dir.is_dir() {
        return match probe_writable(dir) {
            Ok(()) => Check::ok("state_dir", format!("{shown} exists and is writable")),
            Err(e) => Check::fail(
                "state_dir",
                format!("{shown} is not writable: {e}"),
                not_writable,
            ),
        };
    }
    if dir.exists() {
        return Check::fail(
            "state_dir",
            format!("{shown} exists but is not a directory"),
            "point state_dir at a directory (blipd keeps answered.jsonl in it)",
        );
    }
    // blipd serve creates it (create_dir_all): the nearest existing ancestor
    // must be writable.
    let Some(parent) = nearest_existing_ancestor(dir) else {
        return Check::fail(
            "state_dir",
            format!("{shown} does not exist and has no existing parent"),
            not_writable,
        );
    };
    match probe_writable(&parent) {
        Ok(()) => Check::ok(
            "state_dir",
            format!(
                "{shown} does not exist yet; blipd serve will create it ({} is writable)",
                parent.display()
            ),
        ),
        Err(e) => Check::fail(
            "state_dir",
            format!(
                "{shown} does not exist and cannot be created: {} is not writable ({e})",
                parent.display()
            ),
            format!("create it: `sudo install -d -o $USER {shown}`, or as a service use a directory under /var/lib/blipd"),
        ),
    }
}

fn nearest_existing_ancestor(dir: &Path) -> Option<PathBuf> {
    let absolute = if dir.is_absolute() {
        dir.to_path_buf()
    } else {
        std::env::current_dir().ok()?.join(dir)
    };
    absolute
        .ancestors()
        .find(|a| a.is_dir())
        .map(Path::to_path_buf)
}

/// Creates and removes a file: the only reliable test (permission bits do
/// not tell about read-only mounts, ACLs or systemd's ProtectSystem=).
fn probe_writable(dir: &Path) -> std::io::Result<()> {
    let probe = dir.join(format!(".blipd-doctor-{}", std::process::id()));
    std::fs::write(&probe, b"")?;
    std::fs::remove_file(&probe)
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
    fn kv_estimate_of_a_7b_model() {
        let dir = default_bundle_dir();
        let mut m = Bundle::open(&dir).unwrap().manifest;
        // Vicuna-7B in q4_k_m: 32 layers, hidden 4096, 32000 tokens.
        m.llm.hidden_size = 4096;
        m.llm.vocab_size = 32000;
        m.llm.weight_type = "q4_k_m".into();
        let llm = m.llm.file.clone();
        m.files.get_mut(&llm).unwrap().size = 4_080_000_000;
        let (kv, layers) = kv_cache_estimate(&m, 2048);
        assert!((30..=34).contains(&layers), "{layers}");
        assert_eq!(kv, 2048 * layers * 2 * 4096 * 2);
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
