//! Cameras: where frames come from.
//!
//! Each configured camera ([`CameraConfig`], a `[[camera]]` table of the
//! daemon's TOML config) gets its own capture thread ([`Camera::spawn`]) that
//! keeps only the newest frame. Questions are slow (seconds of model time) and
//! frames are cheap, so a backlog would only make answers describe the past:
//! [`Camera::latest`] always returns the most recent picture, or says why
//! there is none.
//!
//! Cameras fail in the field (USB webcams get unplugged, network shares
//! vanish, files are replaced mid-write). A failing source never stops the
//! daemon or the other cameras: its thread retries with exponential backoff
//! and the failure is visible through [`Camera::status`] and as
//! [`CameraError::Unavailable`] from [`Camera::latest`].
//!
//! Sources: a synthetic test pattern (no hardware needed), an image file
//! checked every tick (so another program can keep replacing it), a folder of
//! images shown in turn, and V4L2 devices (`v4l2.rs`: YUYV, MJPEG or RGB24 via
//! [`convert`]).

pub mod convert;
pub mod scene;
mod v4l2;

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use image::RgbImage;
use serde::{Deserialize, Serialize};

// ---------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------

/// One `[[camera]]` entry of the daemon's configuration.
///
/// In TOML the source's `type` and settings sit next to `name`:
///
/// ```toml
/// [[camera]]
/// name = "door"
/// type = "v4l2"
/// device = "/dev/video0"
/// ```
///
/// Unknown keys are rejected (a typo such as `fsp = 5` must not silently fall
/// back to a default). serde cannot combine `flatten` with
/// `deny_unknown_fields`, so (de)serialization goes through a private
/// internally tagged enum that repeats `name` in every variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "CameraToml", into = "CameraToml")]
pub struct CameraConfig {
    /// Identifies the camera in MQTT topics, logs and status; `[A-Za-z0-9_-]+`.
    pub name: String,
    /// Where its frames come from.
    pub source: SourceConfig,
}

/// Where a camera's frames come from (the `type` key and its settings).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SourceConfig {
    /// A synthetic picture, no hardware needed: the demo model's shape
    /// scenes (a new one every `interval` seconds, from `seed` on), or colour
    /// bars with a moving block (every frame differs).
    TestPattern {
        #[serde(default = "default_pattern_width")]
        width: u32,
        #[serde(default = "default_pattern_height")]
        height: u32,
        #[serde(default = "default_pattern_fps")]
        fps: f32,
        #[serde(default)]
        pattern: PatternKind,
        #[serde(default)]
        seed: u64,
        #[serde(default = "default_scene_interval")]
        interval: f32,
    },
    /// An image file, decoded again whenever it changes and checked every
    /// tick, so a replaced or removed file is noticed.
    File {
        path: PathBuf,
        #[serde(default = "default_file_fps")]
        fps: f32,
    },
    /// The images of a folder (png, jpg, jpeg, bmp, webp), in name order,
    /// looped, one every `interval` seconds; new files are picked up.
    Folder {
        path: PathBuf,
        #[serde(default = "default_folder_interval")]
        interval: f32,
    },
    /// A Video4Linux2 capture device (USB/UVC webcam, CSI camera with a V4L2
    /// driver).
    V4l2 {
        #[serde(default = "default_v4l2_device")]
        device: PathBuf,
        #[serde(default = "default_v4l2_width")]
        width: u32,
        #[serde(default = "default_v4l2_height")]
        height: u32,
        #[serde(default = "default_v4l2_fps")]
        fps: u32,
        /// `None`: the best the device offers (MJPEG, then YUYV, then RGB24).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        format: Option<PixelFormat>,
    },
}

/// V4L2 pixel formats blipd can convert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PixelFormat {
    /// Packed YUV 4:2:2 (`YUYV`): uncompressed, limited by USB bandwidth.
    Yuyv,
    /// Motion-JPEG (`MJPG`/`JPEG`): compressed, allows larger sizes over USB 2.
    Mjpeg,
    /// Packed 8-bit RGB (`RGB3`).
    Rgb24,
}

impl PixelFormat {
    /// The spelling used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            PixelFormat::Yuyv => "yuyv",
            PixelFormat::Mjpeg => "mjpeg",
            PixelFormat::Rgb24 => "rgb24",
        }
    }
}

impl std::fmt::Display for PixelFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl SourceConfig {
    /// A `test_pattern` source drawing the demo scenes from seed 0, a new one
    /// every 10 s.
    pub fn test_pattern(width: u32, height: u32, fps: f32) -> Self {
        SourceConfig::TestPattern {
            width,
            height,
            fps,
            pattern: PatternKind::Scenes,
            seed: 0,
            interval: default_scene_interval(),
        }
    }
}

/// A test pattern's size when the config gives none.
pub const TEST_PATTERN_SIZE: (u32, u32) = (640, 480);

fn default_pattern_width() -> u32 {
    TEST_PATTERN_SIZE.0
}
fn default_pattern_height() -> u32 {
    TEST_PATTERN_SIZE.1
}
fn default_pattern_fps() -> f32 {
    2.0
}
fn default_scene_interval() -> f32 {
    10.0
}
fn default_file_fps() -> f32 {
    1.0
}
fn default_folder_interval() -> f32 {
    5.0
}
fn default_v4l2_device() -> PathBuf {
    PathBuf::from("/dev/video0")
}
fn default_v4l2_width() -> u32 {
    640
}
fn default_v4l2_height() -> u32 {
    480
}
fn default_v4l2_fps() -> u32 {
    5
}

/// What a `test_pattern` camera draws.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PatternKind {
    /// The demo model's shape scenes ([`scene`]), so the zero-config daemon
    /// has something to answer questions about.
    #[default]
    Scenes,
    /// Colour bars and a moving block: every frame differs.
    Bars,
}

/// The TOML shape of [`CameraConfig`]: `name` next to the tagged settings.
#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum CameraToml {
    TestPattern {
        name: String,
        #[serde(default = "default_pattern_width")]
        width: u32,
        #[serde(default = "default_pattern_height")]
        height: u32,
        #[serde(default = "default_pattern_fps")]
        fps: f32,
        #[serde(default)]
        pattern: PatternKind,
        #[serde(default)]
        seed: u64,
        #[serde(default = "default_scene_interval")]
        interval: f32,
    },
    File {
        name: String,
        path: PathBuf,
        #[serde(default = "default_file_fps")]
        fps: f32,
    },
    Folder {
        name: String,
        path: PathBuf,
        #[serde(default = "default_folder_interval")]
        interval: f32,
    },
    V4l2 {
        name: String,
        #[serde(default = "default_v4l2_device")]
        device: PathBuf,
        #[serde(default = "default_v4l2_width")]
        width: u32,
        #[serde(default = "default_v4l2_height")]
        height: u32,
        #[serde(default = "default_v4l2_fps")]
        fps: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        format: Option<PixelFormat>,
    },
}

impl From<CameraToml> for CameraConfig {
    fn from(t: CameraToml) -> Self {
        let (name, source) = match t {
            CameraToml::TestPattern {
                name,
                width,
                height,
                fps,
                pattern,
                seed,
                interval,
            } => (
                name,
                SourceConfig::TestPattern {
                    width,
                    height,
                    fps,
                    pattern,
                    seed,
                    interval,
                },
            ),
            CameraToml::File { name, path, fps } => (name, SourceConfig::File { path, fps }),
            CameraToml::Folder {
                name,
                path,
                interval,
            } => (name, SourceConfig::Folder { path, interval }),
            CameraToml::V4l2 {
                name,
                device,
                width,
                height,
                fps,
                format,
            } => (
                name,
                SourceConfig::V4l2 {
                    device,
                    width,
                    height,
                    fps,
                    format,
                },
            ),
        };
        CameraConfig { name, source }
    }
}

impl From<CameraConfig> for CameraToml {
    fn from(c: CameraConfig) -> Self {
        let name = c.name;
        match c.source {
            SourceConfig::TestPattern {
                width,
                height,
                fps,
                pattern,
                seed,
                interval,
            } => CameraToml::TestPattern {
                name,
                width,
                height,
                fps,
                pattern,
                seed,
                interval,
            },
            SourceConfig::File { path, fps } => CameraToml::File { name, path, fps },
            SourceConfig::Folder { path, interval } => CameraToml::Folder {
                name,
                path,
                interval,
            },
            SourceConfig::V4l2 {
                device,
                width,
                height,
                fps,
                format,
            } => CameraToml::V4l2 {
                name,
                device,
                width,
                height,
                fps,
                format,
            },
        }
    }
}

/// Upper bound of the frame rates accepted: beyond this a camera thread
/// would just burn CPU on frames nobody asks about.
const MAX_FPS: f32 = 1000.0;
/// The longest frame period accepted (one frame a day), so durations stay
/// representable and staleness bounds meaningful.
const MAX_PERIOD_S: f32 = 86_400.0;
/// Largest synthetic test pattern side: 4096^2 RGB is already 48 MiB.
const MAX_PATTERN_SIDE: u32 = 4096;
/// Largest V4L2 frame side requested (beyond any real sensor).
const MAX_V4L2_SIDE: u32 = 16_384;
/// Longest camera name: it ends up in MQTT topics and thread names.
const MAX_NAME_LEN: usize = 64;

impl CameraConfig {
    /// Checks the values serde cannot: the name's characters, positive and
    /// finite rates, sane sizes, usable paths. The message names the offending
    /// key so the user can find it in the config file.
    pub fn validate(&self) -> Result<(), String> {
        let name = &self.name;
        if name.is_empty() {
            return Err("camera `name` must not be empty".into());
        }
        if name.len() > MAX_NAME_LEN
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(format!(
                "camera `name` {name:?} must be 1 to {MAX_NAME_LEN} characters of A-Z, a-z, 0-9, \
                 `_` or `-` (it is used in MQTT topics)"
            ));
        }
        let at = |key: &str| format!("camera {name:?}: `{key}`");
        let check_fps = |fps: f32| {
            if (1.0 / MAX_PERIOD_S..=MAX_FPS).contains(&fps) {
                Ok(())
            } else {
                Err(format!(
                    "{} must be a number between {} (one frame a day) and {MAX_FPS}, got {fps}",
                    at("fps"),
                    1.0 / MAX_PERIOD_S
                ))
            }
        };
        let check_side = |key: &str, v: u32, max: u32| {
            if (1..=max).contains(&v) {
                Ok(())
            } else {
                Err(format!("{} must be between 1 and {max}, got {v}", at(key)))
            }
        };
        let check_path = |key: &str, p: &Path| {
            let bytes = p.as_os_str().as_encoded_bytes();
            if bytes.is_empty() {
                Err(format!("{} must not be empty", at(key)))
            } else if bytes.contains(&0) {
                Err(format!("{} must not contain a NUL character", at(key)))
            } else {
                Ok(())
            }
        };
        match &self.source {
            SourceConfig::TestPattern {
                width,
                height,
                fps,
                interval,
                ..
            } => {
                check_side("width", *width, MAX_PATTERN_SIDE)?;
                check_side("height", *height, MAX_PATTERN_SIDE)?;
                check_fps(*fps)?;
                if !(interval.is_finite() && *interval > 0.0) {
                    return Err(format!(
                        "{} must be a positive number of seconds, not {interval}",
                        at("interval")
                    ));
                }
                Ok(())
            }
            SourceConfig::File { path, fps } => {
                check_path("path", path)?;
                check_fps(*fps)
            }
            SourceConfig::Folder { path, interval } => {
                check_path("path", path)?;
                if interval.is_finite() && *interval >= 1.0 / MAX_FPS && *interval <= MAX_PERIOD_S {
                    Ok(())
                } else {
                    Err(format!(
                        "{} must be a number of seconds between {} and {MAX_PERIOD_S}, got \
                         {interval}",
                        at("interval"),
                        1.0 / MAX_FPS
                    ))
                }
            }
            SourceConfig::V4l2 {
                device,
                width,
                height,
                fps,
                format: _,
            } => {
                check_path("device", device)?;
                check_side("width", *width, MAX_V4L2_SIDE)?;
                check_side("height", *height, MAX_V4L2_SIDE)?;
                if (1..=MAX_FPS as u32).contains(fps) {
                    Ok(())
                } else {
                    Err(format!(
                        "{} must be between 1 and {MAX_FPS}, got {fps}",
                        at("fps")
                    ))
                }
            }
        }
    }
}

impl SourceConfig {
    /// The `type` key: `test_pattern`, `file`, `folder` or `v4l2`.
    pub fn kind(&self) -> &'static str {
        match self {
            SourceConfig::TestPattern { .. } => "test_pattern",
            SourceConfig::File { .. } => "file",
            SourceConfig::Folder { .. } => "folder",
            SourceConfig::V4l2 { .. } => "v4l2",
        }
    }

    /// Time between frames, clamped to the validated range so an unvalidated
    /// value cannot make a `Duration` panic.
    fn period(&self) -> Duration {
        let secs = match self {
            SourceConfig::TestPattern { fps, .. } | SourceConfig::File { fps, .. } => 1.0 / *fps,
            SourceConfig::Folder { interval, .. } => *interval,
            SourceConfig::V4l2 { fps, .. } => 1.0 / (*fps).max(1) as f32,
        };
        let secs = if secs.is_finite() { secs } else { MAX_PERIOD_S };
        Duration::from_secs_f32(secs.clamp(1.0 / MAX_FPS, MAX_PERIOD_S))
    }
}

// ---------------------------------------------------------------------------
// Public runtime types
// ---------------------------------------------------------------------------

/// One captured picture.
///
/// The pixels are shared (`Arc`): handing the newest frame to several
/// questions, or keeping it while the camera moves on, copies nothing.
#[derive(Clone)]
pub struct Frame {
    pub image: Arc<RgbImage>,
    /// Wall-clock time of capture (reported to users, not used for timing).
    pub captured: SystemTime,
    /// Per-camera counter, 0 for the first frame; gaps mean frames that were
    /// replaced before anyone asked for them.
    pub seq: u64,
}

impl std::fmt::Debug for Frame {
    // The derived form would print every pixel.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frame")
            .field("width", &self.image.width())
            .field("height", &self.image.height())
            .field("captured", &self.captured)
            .field("seq", &self.seq)
            .finish()
    }
}

/// Why [`Camera::latest`] has no frame to give.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CameraError {
    /// The source is failing (or stuck); the capture thread keeps retrying.
    #[error("camera {camera:?} is unavailable: {reason}")]
    Unavailable { camera: String, reason: String },
    /// The camera was just started and has not captured anything yet.
    #[error("camera {camera:?} has not delivered a frame yet (it is starting; try again shortly)")]
    NoFrameYet { camera: String },
}

/// Health of a camera as reported in [`CameraStatus`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CameraState {
    /// Started, no frame and no failure yet.
    Starting,
    /// Delivering fresh frames.
    Ok,
    /// Failing or stuck; see `last_error`.
    Unavailable,
}

/// A snapshot of a camera's health, for status messages and logs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CameraStatus {
    pub name: String,
    /// The source `type`: `test_pattern`, `file`, `folder` or `v4l2`.
    pub kind: String,
    pub state: CameraState,
    /// The most recent failure, kept after recovery for diagnosis.
    pub last_error: Option<String>,
    /// Frames captured since the camera was spawned.
    pub frames_captured: u64,
    /// Capture time of the newest frame, milliseconds since the Unix epoch.
    pub last_frame_unix_ms: Option<u64>,
}

// ---------------------------------------------------------------------------
// Camera and its capture thread
// ---------------------------------------------------------------------------

/// Frames older than this many periods are stale (the source is stuck).
const STALE_PERIODS: u32 = 3;
/// Staleness never triggers sooner than this, whatever the frame rate: a
/// slow decode or a scheduling hiccup must not flap the status.
const STALE_MIN: Duration = Duration::from_secs(10);
/// First retry delay after a failure; doubles up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(500);
/// Longest retry delay: an unplugged camera is found again within this.
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long dropping a [`Camera`] waits for its thread before detaching it
/// (a read on a hung network share cannot be interrupted).
const JOIN_TIMEOUT: Duration = Duration::from_secs(2);

/// A running camera: a capture thread and its newest frame.
///
/// Dropping it (or [`Camera::stop`]) stops the thread promptly.
pub struct Camera {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Camera {
    /// Starts capturing on a thread named `cam-<name>`.
    ///
    /// Never blocks and never fails: an invalid configuration, a thread that
    /// cannot be created or a source that does not work all show up as
    /// [`CameraState::Unavailable`] with a reason, so one bad camera cannot
    /// keep the daemon (and the other cameras) from starting.
    pub fn spawn(cfg: CameraConfig) -> Camera {
        let kind = cfg.source.kind();
        let stale_after = (cfg.source.period() * STALE_PERIODS).max(STALE_MIN);
        let shared = Arc::new(Shared {
            name: cfg.name.clone(),
            kind,
            period: cfg.source.period(),
            stale_after,
            inner: Mutex::new(Inner {
                stop: false,
                exited: false,
                state: CameraState::Starting,
                last_error: None,
                latest: None,
                frames: 0,
                unavailable_since: None,
            }),
            wake: Condvar::new(),
        });
        if let Err(msg) = cfg.validate() {
            shared.mark_unavailable(format!("invalid configuration: {msg}"), None);
            return Camera {
                shared,
                thread: None,
            };
        }
        let source: Box<dyn Source> = match cfg.source {
            SourceConfig::TestPattern {
                width,
                height,
                pattern: PatternKind::Bars,
                ..
            } => Box::new(TestPattern::new(width, height)),
            SourceConfig::TestPattern {
                width,
                height,
                fps,
                pattern: PatternKind::Scenes,
                seed,
                interval,
            } => Box::new(SceneSource::new(width, height, seed, interval * fps)),
            SourceConfig::File { path, .. } => Box::new(FileSource { path, cache: None }),
            SourceConfig::Folder { path, .. } => Box::new(FolderSource {
                path,
                last: None,
                unreadable: HashSet::new(),
            }),
            SourceConfig::V4l2 {
                device,
                width,
                height,
                fps,
                format,
            } => Box::new(v4l2::V4l2Source::new(device, width, height, fps, format)),
        };
        tracing::info!(camera = %shared.name, kind, "starting camera");
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("cam-{}", cfg.name))
            .spawn(move || capture_thread(thread_shared, source));
        match thread {
            Ok(handle) => Camera {
                shared,
                thread: Some(handle),
            },
            Err(e) => {
                shared.mark_unavailable(format!("could not start its capture thread: {e}"), None);
                Camera {
                    shared,
                    thread: None,
                }
            }
        }
    }

    /// The configured name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The newest frame, never an older one.
    ///
    /// Errors: [`CameraError::Unavailable`] while the source is failing, or
    /// when the newest frame is older than `max(3 frame periods, 10 s)` (the
    /// source is stuck: answering about an old picture as if it were current
    /// would mislead); [`CameraError::NoFrameYet`] right after start.
    pub fn latest(&self) -> Result<Frame, CameraError> {
        let inner = self.shared.lock();
        match self.shared.assess(&inner, Instant::now()) {
            Assessment::Fresh => match &inner.latest {
                Some((frame, _)) => Ok(frame.clone()),
                None => Err(CameraError::NoFrameYet {
                    camera: self.shared.name.clone(),
                }),
            },
            Assessment::Starting => Err(CameraError::NoFrameYet {
                camera: self.shared.name.clone(),
            }),
            Assessment::Unavailable(reason) => Err(CameraError::Unavailable {
                camera: self.shared.name.clone(),
                reason,
            }),
        }
    }

    /// Health snapshot (cheap: one lock, no I/O).
    pub fn status(&self) -> CameraStatus {
        let inner = self.shared.lock();
        let (state, last_error) = match self.shared.assess(&inner, Instant::now()) {
            Assessment::Fresh => (CameraState::Ok, inner.last_error.clone()),
            Assessment::Starting => (CameraState::Starting, inner.last_error.clone()),
            Assessment::Unavailable(reason) => (CameraState::Unavailable, Some(reason)),
        };
        CameraStatus {
            name: self.shared.name.clone(),
            kind: self.shared.kind.to_string(),
            state,
            last_error,
            frames_captured: inner.frames,
            last_frame_unix_ms: inner.latest.as_ref().map(|(f, _)| {
                f.captured
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0)
            }),
        }
    }

    /// Stops the capture thread and waits (briefly) for it to exit.
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for Camera {
    fn drop(&mut self) {
        let Some(handle) = self.thread.take() else {
            return;
        };
        self.shared.lock().stop = true;
        self.shared.wake.notify_all();
        let deadline = Instant::now() + JOIN_TIMEOUT;
        let mut inner = self.shared.lock();
        while !inner.exited {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            inner = self
                .shared
                .wake
                .wait_timeout(inner, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        let exited = inner.exited;
        drop(inner);
        if exited {
            // The thread catches its own panics, so this cannot fail.
            let _ = handle.join();
            tracing::debug!(camera = %self.shared.name, "camera stopped");
        } else {
            tracing::warn!(
                camera = %self.shared.name,
                waited_s = JOIN_TIMEOUT.as_secs_f32(),
                "camera thread is blocked (in a read?) and did not stop in time; \
                 leaving it to exit in the background"
            );
        }
    }
}

/// State shared by a [`Camera`] and its capture thread.
///
/// One mutex guards everything: it is held only for field updates and
/// clones of an `Arc`, never across I/O or decoding.
pub(crate) struct Shared {
    name: String,
    kind: &'static str,
    period: Duration,
    stale_after: Duration,
    inner: Mutex<Inner>,
    /// Signals `stop` to the capture thread and `exited` back to `drop`.
    wake: Condvar,
}

struct Inner {
    stop: bool,
    exited: bool,
    state: CameraState,
    last_error: Option<String>,
    /// The newest frame and when it arrived (monotonic, for staleness).
    latest: Option<(Frame, Instant)>,
    frames: u64,
    unavailable_since: Option<Instant>,
}

enum Assessment {
    Starting,
    Fresh,
    Unavailable(String),
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere while holding the lock leaves plain data behind,
        // never a broken invariant: keep going rather than poison the daemon.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn assess(&self, inner: &Inner, now: Instant) -> Assessment {
        match inner.state {
            CameraState::Starting => Assessment::Starting,
            CameraState::Unavailable => Assessment::Unavailable(
                inner
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "unknown error".into()),
            ),
            CameraState::Ok => match &inner.latest {
                Some((_, at)) if now.saturating_duration_since(*at) > self.stale_after => {
                    Assessment::Unavailable(format!(
                        "no new frame for {:.0} s (one was expected every {:.1} s); the source \
                         seems stuck",
                        now.saturating_duration_since(*at).as_secs_f32(),
                        self.period.as_secs_f32()
                    ))
                }
                _ => Assessment::Fresh,
            },
        }
    }

    /// The camera's name, for log fields.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Whether the camera is being stopped; sources check it between frames.
    pub(crate) fn stopped(&self) -> bool {
        self.lock().stop
    }

    /// Sleeps until `deadline` or until stopped; `false` means stopped.
    pub(crate) fn sleep_until(&self, deadline: Instant) -> bool {
        let mut inner = self.lock();
        loop {
            if inner.stop {
                return false;
            }
            let now = Instant::now();
            if now >= deadline {
                return true;
            }
            inner = self
                .wake
                .wait_timeout(inner, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// The `seq` the next published frame will get.
    pub(crate) fn next_seq(&self) -> u64 {
        self.lock().frames
    }

    /// The configured time between frames.
    pub(crate) fn period(&self) -> Duration {
        self.period
    }

    /// Makes `image` the newest frame (replacing, not queueing, the previous
    /// one) and marks the camera healthy.
    pub(crate) fn publish(&self, image: Arc<RgbImage>) {
        let (width, height) = image.dimensions();
        let mut inner = self.lock();
        let seq = inner.frames;
        inner.frames += 1;
        inner.latest = Some((
            Frame {
                image,
                captured: SystemTime::now(),
                seq,
            },
            Instant::now(),
        ));
        let previous = std::mem::replace(&mut inner.state, CameraState::Ok);
        let down_since = inner.unavailable_since.take();
        drop(inner);
        match previous {
            CameraState::Starting => {
                tracing::info!(camera = %self.name, kind = self.kind, width, height, "camera delivering frames")
            }
            CameraState::Unavailable => tracing::info!(
                camera = %self.name,
                kind = self.kind,
                width,
                height,
                down_s = down_since.map(|t| t.elapsed().as_secs_f32()).unwrap_or(0.0),
                "camera recovered"
            ),
            CameraState::Ok => {}
        }
    }

    /// Records a failure. Logged at `warn` only when the camera changes to
    /// unavailable, so a camera unplugged for a day does not flood the log.
    fn mark_unavailable(&self, reason: String, retry_in: Option<Duration>) {
        let mut inner = self.lock();
        let previous = std::mem::replace(&mut inner.state, CameraState::Unavailable);
        if previous != CameraState::Unavailable {
            inner.unavailable_since = Some(Instant::now());
        }
        inner.last_error = Some(reason.clone());
        drop(inner);
        let retry_in_s = retry_in.map(|d| d.as_secs_f32());
        if previous != CameraState::Unavailable {
            tracing::warn!(camera = %self.name, kind = self.kind, error = %reason, retry_in_s, "camera unavailable");
        } else {
            tracing::debug!(camera = %self.name, kind = self.kind, error = %reason, retry_in_s, "camera still unavailable");
        }
    }
}

/// A frame source, driven by the capture thread.
pub(crate) trait Source: Send {
    /// Captures and [`Shared::publish`]es frames until stopped (`Ok`) or
    /// until the source fails (`Err` with a reason a user can act on). The
    /// thread then backs off and calls `run` again, so `run` (re)opens
    /// whatever it needs.
    fn run(&mut self, shared: &Shared) -> Result<(), String>;
}

/// Sets `exited` when the capture thread ends, however it ends.
struct ExitGuard<'a>(&'a Shared);

impl Drop for ExitGuard<'_> {
    fn drop(&mut self) {
        self.0.lock().exited = true;
        self.0.wake.notify_all();
    }
}

/// Exponential retry delay: 0.5 s, 1 s, 2 s, ... 30 s; reset on success.
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Self {
        Backoff { next: BACKOFF_MIN }
    }

    fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (d * 2).min(BACKOFF_MAX);
        d
    }

    fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }
}

fn capture_thread(shared: Arc<Shared>, mut source: Box<dyn Source>) {
    let _exit = ExitGuard(&shared);
    let mut backoff = Backoff::new();
    while !shared.stopped() {
        let frames_before = shared.next_seq();
        // Device bindings and decoders are not ours; a panic in them must
        // cost one retry, not the camera (or, unwinding further, the daemon).
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| source.run(&shared)));
        let reason = match outcome {
            Ok(Ok(())) => break,
            Ok(Err(reason)) => reason,
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                format!("internal error in the capture code ({msg})")
            }
        };
        if shared.stopped() {
            break;
        }
        if shared.next_seq() > frames_before {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        shared.mark_unavailable(reason, Some(delay));
        if !shared.sleep_until(Instant::now() + delay) {
            break;
        }
    }
}

/// Runs a source that produces a frame on demand (`grab`) at a fixed rate.
///
/// Ticks are scheduled from the previous deadline, so the rate does not
/// drift by the decode time; after falling behind (a slow decode) it skips
/// ahead instead of bursting to catch up.
fn run_ticks(
    shared: &Shared,
    mut grab: impl FnMut(&Shared) -> Result<Arc<RgbImage>, String>,
) -> Result<(), String> {
    let period = shared.period();
    let mut next = Instant::now();
    while !shared.stopped() {
        let image = grab(shared)?;
        shared.publish(image);
        next += period;
        let now = Instant::now();
        if next < now {
            next = now;
        }
        if !shared.sleep_until(next) {
            break;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Test pattern
// ---------------------------------------------------------------------------

/// Colour bars plus a block that moves with `seq` and the bits of `seq` in a
/// strip at the bottom, so every frame differs and is recognisable.
struct TestPattern {
    width: u32,
    height: u32,
    /// Built on the capture thread at first use, so `spawn` stays cheap.
    bars: Option<RgbImage>,
}

impl TestPattern {
    const BARS: [[u8; 3]; 8] = [
        [255, 255, 255],
        [255, 255, 0],
        [0, 255, 255],
        [0, 255, 0],
        [255, 0, 255],
        [255, 0, 0],
        [0, 0, 255],
        [0, 0, 0],
    ];

    fn new(width: u32, height: u32) -> Self {
        TestPattern {
            width,
            height,
            bars: None,
        }
    }

    fn frame(&mut self, seq: u64) -> RgbImage {
        let (width, height) = (self.width, self.height);
        let bars = self.bars.get_or_insert_with(|| {
            RgbImage::from_fn(width, height, |x, _| {
                let i = (x as u64 * Self::BARS.len() as u64 / width as u64) as usize;
                image::Rgb(Self::BARS[i.min(Self::BARS.len() - 1)])
            })
        });
        let mut img = bars.clone();
        let (w, h) = img.dimensions();
        // A grey block sliding left to right, one step per frame.
        let side = (w.min(h) / 6).max(1);
        let span = (w - side + 1) as u64;
        let step = (w as u64 / 32).max(1);
        let x0 = (seq.wrapping_mul(step) % span) as u32;
        let y0 = (h - side) / 2;
        for y in y0..y0 + side {
            for x in x0..x0 + side {
                img.put_pixel(x, y, image::Rgb([128, 128, 128]));
            }
        }
        // The low 32 bits of seq, white for 1 and black for 0.
        let cell = w / 32;
        let strip = (h / 16).max(1);
        if cell > 0 {
            for bit in 0..32u32 {
                let v = if (seq >> bit) & 1 == 1 { 255 } else { 0 };
                for y in h - strip..h {
                    for x in bit * cell..(bit + 1) * cell {
                        img.put_pixel(x, y, image::Rgb([v, v, v]));
                    }
                }
            }
        }
        img
    }
}

impl Source for TestPattern {
    fn run(&mut self, shared: &Shared) -> Result<(), String> {
        run_ticks(shared, |s| Ok(Arc::new(self.frame(s.next_seq()))))
    }
}

/// The demo scenes: scene `seed + n` during the n-th `interval`, counted in
/// frames so the sequence is the same however busy the machine is. A scene is
/// drawn once and its frame shared until the next one.
struct SceneSource {
    width: u32,
    height: u32,
    seed: u64,
    frames_per_scene: u64,
    current: Option<(u64, Arc<RgbImage>)>,
}

impl SceneSource {
    fn new(width: u32, height: u32, seed: u64, frames_per_scene: f32) -> Self {
        SceneSource {
            width,
            height,
            seed,
            frames_per_scene: (frames_per_scene.round() as u64).max(1),
            current: None,
        }
    }

    /// The scene seed shown at frame `seq`.
    fn scene_at(&self, seq: u64) -> u64 {
        self.seed.wrapping_add(seq / self.frames_per_scene)
    }

    fn frame(&mut self, seq: u64) -> Arc<RgbImage> {
        let want = self.scene_at(seq);
        match &self.current {
            Some((seed, img)) if *seed == want => img.clone(),
            _ => {
                let scene = scene::Scene::sample(want);
                tracing::debug!(seed = want, scene = %scene.describe(), "test pattern: next scene");
                let img = Arc::new(scene.render(self.width, self.height));
                self.current = Some((want, img.clone()));
                img
            }
        }
    }
}

impl Source for SceneSource {
    fn run(&mut self, shared: &Shared) -> Result<(), String> {
        run_ticks(shared, |s| Ok(self.frame(s.next_seq())))
    }
}

// ---------------------------------------------------------------------------
// File
// ---------------------------------------------------------------------------

/// What identifies a version of a file without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
    dev: u64,
    ino: u64,
}

impl FileStamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        FileStamp {
            len: meta.len(),
            modified: meta.modified().ok(),
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// An image file checked every tick; decoded again only when it changed
/// (size, mtime or inode), so a high rate costs a `stat`, not a decode, and
/// a removed or replaced file is noticed within one tick.
struct FileSource {
    path: PathBuf,
    cache: Option<(FileStamp, Arc<RgbImage>)>,
}

/// Decode attempts on a file that keeps changing while it is read.
const FILE_SETTLE_ATTEMPTS: u32 = 5;
/// Pause between those attempts.
const FILE_SETTLE_PAUSE: Duration = Duration::from_millis(100);

impl FileSource {
    fn stat(&self) -> Result<FileStamp, String> {
        let shown = self.path.display();
        let meta = std::fs::metadata(&self.path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => format!("image file {shown} does not exist"),
            _ => format!("cannot access image file {shown}: {e}"),
        })?;
        if !meta.is_file() {
            return Err(format!("{shown} is not a regular file"));
        }
        Ok(FileStamp::of(&meta))
    }

    fn grab(&mut self, shared: &Shared) -> Result<Arc<RgbImage>, String> {
        let mut attempts = 0;
        loop {
            let stamp = self.stat()?;
            if let Some((cached, image)) = &self.cache {
                if *cached == stamp {
                    return Ok(Arc::clone(image));
                }
            }
            match crate::preprocess::load_rgb(&self.path) {
                Ok(image) => {
                    let image = Arc::new(image);
                    self.cache = Some((stamp, Arc::clone(&image)));
                    return Ok(image);
                }
                Err(e) => {
                    // Producers that rewrite the file in place (rather than
                    // write-and-rename) expose half-written content for a
                    // moment. While the file is still changing, give the
                    // writer time instead of flapping to unavailable; a file
                    // that stays corrupt fails after one pause.
                    self.cache = None;
                    attempts += 1;
                    if attempts < FILE_SETTLE_ATTEMPTS
                        && shared.sleep_until(Instant::now() + FILE_SETTLE_PAUSE)
                        && self.stat().ok() != Some(stamp)
                    {
                        continue;
                    }
                    return Err(e.to_string());
                }
            }
        }
    }
}

impl Source for FileSource {
    fn run(&mut self, shared: &Shared) -> Result<(), String> {
        run_ticks(shared, |s| self.grab(s))
    }
}

// ---------------------------------------------------------------------------
// Folder
// ---------------------------------------------------------------------------

/// File extensions (lowercase) a folder camera shows.
const IMAGE_EXTENSIONS: [&str; 5] = ["png", "jpg", "jpeg", "bmp", "webp"];

/// The images of a folder in name order, listed again on every tick.
///
/// Position is remembered by name, not index, so files added or removed
/// between ticks do not make it skip or repeat: the next image is the first
/// whose name sorts after the one shown last, wrapping around.
struct FolderSource {
    path: PathBuf,
    last: Option<OsString>,
    /// Files that failed to decode, warned about once until they recover.
    unreadable: HashSet<OsString>,
}

impl FolderSource {
    fn list(&self) -> Result<Vec<OsString>, String> {
        let shown = self.path.display();
        let entries = std::fs::read_dir(&self.path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => format!("image folder {shown} does not exist"),
            _ => format!("cannot list image folder {shown}: {e}"),
        })?;
        let mut names: Vec<OsString> = entries
            .filter_map(|entry| entry.ok())
            .map(|entry| entry.file_name())
            .filter(is_image_name)
            // Follows symlinks; skips subfolders and vanished entries.
            .filter(|name| {
                std::fs::metadata(self.path.join(name))
                    .map(|m| m.is_file())
                    .unwrap_or(false)
            })
            .collect();
        names.sort();
        Ok(names)
    }

    fn grab(&mut self, camera: &str) -> Result<Arc<RgbImage>, String> {
        let names = self.list()?;
        if names.is_empty() {
            return Err(format!(
                "image folder {} contains no images ({})",
                self.path.display(),
                IMAGE_EXTENSIONS.join(", ")
            ));
        }
        self.unreadable
            .retain(|name| names.binary_search(name).is_ok());
        let start = match &self.last {
            Some(last) => names.partition_point(|n| n <= last) % names.len(),
            None => 0,
        };
        let mut last_error = String::new();
        for k in 0..names.len() {
            let name = &names[(start + k) % names.len()];
            let path = self.path.join(name);
            match crate::preprocess::load_rgb(&path) {
                Ok(image) => {
                    if self.unreadable.remove(name) {
                        tracing::info!(camera, file = %path.display(), "image in folder readable again");
                    }
                    self.last = Some(name.clone());
                    return Ok(Arc::new(image));
                }
                Err(e) => {
                    last_error = e.to_string();
                    if self.unreadable.insert(name.clone()) {
                        tracing::warn!(camera, file = %path.display(), error = %e, "skipping unreadable image in folder");
                    }
                }
            }
        }
        Err(format!(
            "none of the {} images in folder {} can be read (last error: {last_error})",
            names.len(),
            self.path.display()
        ))
    }
}

fn is_image_name(name: &OsString) -> bool {
    let path = Path::new(name);
    let hidden = name.as_encoded_bytes().first() == Some(&b'.');
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase());
    !hidden && ext.is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.as_str()))
}

impl Source for FolderSource {
    fn run(&mut self, shared: &Shared) -> Result<(), String> {
        run_ticks(shared, |s| self.grab(s.name()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Daemon {
        camera: Vec<CameraConfig>,
    }

    fn parse(toml_text: &str) -> Result<Vec<CameraConfig>, String> {
        toml::from_str::<Daemon>(toml_text)
            .map(|d| d.camera)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn toml_all_types_with_defaults() {
        let cams = parse(
            r#"
            [[camera]]
            name = "door"
            type = "v4l2"
            device = "/dev/video2"

            [[camera]]
            name = "bars"
            type = "test_pattern"
            pattern = "bars"

            [[camera]]
            name = "snap"
            type = "file"
            path = "/tmp/x.jpg"
            fps = 4

            [[camera]]
            name = "album"
            type = "folder"
            path = "/srv/pics"
            interval = 0.5

            [[camera]]
            name = "hd"
            type = "v4l2"
            width = 1280
            height = 720
            fps = 10
            format = "mjpeg"
            "#,
        )
        .unwrap();
        assert_eq!(
            cams,
            vec![
                CameraConfig {
                    name: "door".into(),
                    source: SourceConfig::V4l2 {
                        device: "/dev/video2".into(),
                        width: 640,
                        height: 480,
                        fps: 5,
                        format: None
                    }
                },
                CameraConfig {
                    name: "bars".into(),
                    source: SourceConfig::TestPattern {
                        width: 640,
                        height: 480,
                        fps: 2.0,
                        pattern: PatternKind::Bars,
                        seed: 0,
                        interval: 10.0,
                    }
                },
                CameraConfig {
                    name: "snap".into(),
                    source: SourceConfig::File {
                        path: "/tmp/x.jpg".into(),
                        fps: 4.0
                    }
                },
                CameraConfig {
                    name: "album".into(),
                    source: SourceConfig::Folder {
                        path: "/srv/pics".into(),
                        interval: 0.5
                    }
                },
                CameraConfig {
                    name: "hd".into(),
                    source: SourceConfig::V4l2 {
                        device: "/dev/video0".into(),
                        width: 1280,
                        height: 720,
                        fps: 10,
                        format: Some(PixelFormat::Mjpeg)
                    }
                },
            ]
        );
        for c in &cams {
            c.validate().unwrap();
        }
    }

    #[test]
    fn toml_rejects_unknown_keys_and_types() {
        let err = parse("[[camera]]\nname = \"a\"\ntype = \"v4l2\"\nfsp = 5\n").unwrap_err();
        assert!(err.contains("unknown field `fsp`"), "{err}");
        let err = parse("[[camera]]\nname = \"a\"\ntype = \"usb\"\n").unwrap_err();
        assert!(err.contains("unknown variant `usb`"), "{err}");
        let err = parse("[[camera]]\nname = \"a\"\n").unwrap_err();
        assert!(err.contains("missing field `type`"), "{err}");
        let err = parse("[[camera]]\ntype = \"test_pattern\"\n").unwrap_err();
        assert!(err.contains("missing field `name`"), "{err}");
        let err = parse("[[camera]]\nname = \"a\"\ntype = \"file\"\n").unwrap_err();
        assert!(err.contains("missing field `path`"), "{err}");
        let err =
            parse("[[camera]]\nname = \"a\"\ntype = \"v4l2\"\nformat = \"h264\"\n").unwrap_err();
        assert!(err.contains("unknown variant `h264`"), "{err}");
        // A key of another type is still unknown for this one.
        let err = parse("[[camera]]\nname = \"a\"\ntype = \"file\"\npath = \"x\"\ninterval = 1\n")
            .unwrap_err();
        assert!(err.contains("unknown field `interval`"), "{err}");
    }

    #[test]
    fn toml_round_trip() {
        let cams = parse(
            "[[camera]]\nname = \"a\"\ntype = \"folder\"\npath = \"/p\"\n\
             [[camera]]\nname = \"b\"\ntype = \"v4l2\"\nformat = \"yuyv\"\n",
        )
        .unwrap();
        #[derive(Serialize)]
        struct Out<'a> {
            camera: &'a [CameraConfig],
        }
        let text = toml::to_string(&Out { camera: &cams }).unwrap();
        assert!(text.contains("type = \"folder\""), "{text}");
        assert_eq!(parse(&text).unwrap(), cams);
    }

    fn cam(name: &str, source: SourceConfig) -> CameraConfig {
        CameraConfig {
            name: name.into(),
            source,
        }
    }

    #[test]
    fn validate_names_the_key() {
        let tp = SourceConfig::test_pattern;
        let bad = [
            (cam("", tp(1, 1, 1.0)), "`name`"),
            (cam("a b", tp(1, 1, 1.0)), "`name`"),
            (cam("a/b", tp(1, 1, 1.0)), "`name`"),
            (cam(&"x".repeat(65), tp(1, 1, 1.0)), "`name`"),
            (cam("a", tp(0, 1, 1.0)), "`width`"),
            (cam("a", tp(1, 5000, 1.0)), "`height`"),
            (cam("a", tp(1, 1, 0.0)), "`fps`"),
            (cam("a", tp(1, 1, -2.0)), "`fps`"),
            (cam("a", tp(1, 1, f32::NAN)), "`fps`"),
            (cam("a", tp(1, 1, f32::INFINITY)), "`fps`"),
            (cam("a", tp(1, 1, 1e-9)), "`fps`"),
            (
                cam(
                    "a",
                    SourceConfig::File {
                        path: "".into(),
                        fps: 1.0,
                    },
                ),
                "`path`",
            ),
            (
                cam(
                    "a",
                    SourceConfig::Folder {
                        path: "/x".into(),
                        interval: 0.0,
                    },
                ),
                "`interval`",
            ),
            (
                cam(
                    "a",
                    SourceConfig::V4l2 {
                        device: "/dev/vid\0eo".into(),
                        width: 1,
                        height: 1,
                        fps: 1,
                        format: None,
                    },
                ),
                "`device`",
            ),
            (
                cam(
                    "a",
                    SourceConfig::V4l2 {
                        device: "/dev/video0".into(),
                        width: 640,
                        height: 480,
                        fps: 0,
                        format: None,
                    },
                ),
                "`fps`",
            ),
        ];
        for (cfg, key) in bad {
            let msg = cfg
                .validate()
                .expect_err(&format!("{cfg:?} must be invalid"));
            assert!(msg.contains(key), "{msg:?} should name {key}");
        }
        cam("Front-door_2", tp(4096, 1, 1000.0)).validate().unwrap();
    }

    #[test]
    fn invalid_config_is_unavailable_not_a_panic() {
        let camera = Camera::spawn(cam("bad", SourceConfig::test_pattern(10, 10, f32::NAN)));
        let err = camera.latest().unwrap_err();
        assert!(
            matches!(&err, CameraError::Unavailable { reason, .. } if reason.contains("fps")),
            "{err}"
        );
        assert_eq!(camera.status().state, CameraState::Unavailable);
    }

    #[test]
    fn backoff_doubles_to_thirty_seconds_and_resets() {
        let mut b = Backoff::new();
        let delays: Vec<f32> = (0..9).map(|_| b.next_delay().as_secs_f32()).collect();
        assert_eq!(delays, [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]);
        b.reset();
        assert_eq!(b.next_delay(), BACKOFF_MIN);
    }

    #[test]
    fn test_pattern_frames_differ_and_are_deterministic() {
        for (w, h) in [(640, 480), (1, 1), (7, 3), (33, 100)] {
            let mut tp = TestPattern::new(w, h);
            let a = tp.frame(0);
            let b = tp.frame(1);
            assert_eq!(a.dimensions(), (w, h));
            if w >= 32 {
                assert_ne!(a, b);
            }
            assert_eq!(a, TestPattern::new(w, h).frame(0));
            // Large seq values must not overflow anything.
            let _ = tp.frame(u64::MAX);
        }
    }

    #[test]
    fn image_names() {
        for yes in ["a.png", "b.JPG", "c.jpeg", "d.bmp", "e.webp"] {
            assert!(is_image_name(&yes.into()), "{yes}");
        }
        for no in [".a.png", "a.png.tmp", "README", "a.gif", "png"] {
            assert!(!is_image_name(&no.into()), "{no}");
        }
    }

    #[test]
    fn stale_frame_is_unavailable() {
        let shared = Shared {
            name: "s".into(),
            kind: "file",
            period: Duration::from_millis(50),
            stale_after: Duration::from_secs(10),
            inner: Mutex::new(Inner {
                stop: false,
                exited: false,
                state: CameraState::Starting,
                last_error: None,
                latest: None,
                frames: 0,
                unavailable_since: None,
            }),
            wake: Condvar::new(),
        };
        shared.publish(Arc::new(RgbImage::new(2, 2)));
        let now = Instant::now();
        assert!(matches!(
            shared.assess(&shared.lock(), now),
            Assessment::Fresh
        ));
        let later = now + Duration::from_secs(11);
        let assessed = shared.assess(&shared.lock(), later);
        match assessed {
            Assessment::Unavailable(reason) => assert!(reason.contains("no new frame"), "{reason}"),
            _ => panic!("a frame older than the bound must be stale"),
        }
    }
}
