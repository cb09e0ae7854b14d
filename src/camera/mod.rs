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
//! images shown in turn, V4L2 devices (`v4l2.rs`: YUYV, MJPEG or RGB24 via
//! [`convert`]), frames published on the broker (`mqtt.rs`), and HTTP(S)
//! snapshot URLs and MJPEG streams (`http/`), and H.264 RTSP streams (`rtsp.rs`).

mod capture;
mod config;
pub mod convert;
mod file;
mod folder;
mod http;
mod mqtt;
mod pattern;
mod rtsp;
pub mod scene;
mod v4l2;

use std::sync::Arc;
use std::time::SystemTime;

use image::RgbImage;
use serde::{Deserialize, Serialize};

pub use capture::Camera;
pub use config::{
    CameraConfig, PatternKind, PixelFormat, RtspTransport, SourceConfig, TEST_PATTERN_SIZE,
};
/// How blipd fetches a picture over HTTP (also the HTTP API's `image_url`s).
pub use http::agent as http_agent;
pub use http::redact as redact_url;
pub use v4l2::{probe as probe_v4l2, V4l2Probe};

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
