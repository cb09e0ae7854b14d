//! The `[[camera]]` tables of the daemon's config: parsing (unknown keys
//! refused), defaults and validation with the offending key named.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod toml_shape;
use toml_shape::CameraToml;

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
    /// Frames published to the broker (JPEG/PNG payloads): a Frigate
    /// snapshot topic, an ESP32-CAM's topic. The daemon's MQTT session
    /// subscribes to `topic` (a filter: `+`/`#` allowed) and hands each
    /// payload to the camera, which decodes the newest on its own thread.
    Mqtt {
        topic: String,
        /// Seconds after the last frame at which the camera reports
        /// `camera_unavailable`; `None`: a frame stays current until the next.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_age: Option<f32>,
    },
    /// A camera or NVR over HTTP(S): a snapshot URL fetched `fps` times a
    /// second, or an MJPEG stream (told apart by the response), with Basic
    /// or Digest authentication (`username` and `password` or
    /// `password_file`, or in the URL), a private CA (`ca_file`) and a
    /// `timeout` in seconds for connecting and each read.
    Http {
        url: String,
        #[serde(default = "default_http_fps")]
        fps: f32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        username: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        password: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        password_file: Option<PathBuf>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ca_file: Option<PathBuf>,
        #[serde(default = "default_http_timeout")]
        timeout: f32,
    },
    /// An H.264 RTSP stream (an IP camera, an NVR, go2rtc): TCP
    /// interleaved unless `transport = "udp"`; authentication as for `http`;
    /// a frame decoded to RGB `fps` times a second.
    Rtsp {
        url: String,
        #[serde(default = "default_http_fps")]
        fps: f32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        username: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        password: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        password_file: Option<PathBuf>,
        #[serde(default)]
        transport: RtspTransport,
        #[serde(default = "default_http_timeout")]
        timeout: f32,
    },
}

/// How RTSP media travel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RtspTransport {
    /// Interleaved in the RTSP connection: through NAT, nothing lost.
    #[default]
    Tcp,
    /// RTP over UDP: lower latency on a clean LAN, lost packets are lost.
    /// Experimental (as in retina): not proven by the test suite.
    Udp,
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
fn default_http_fps() -> f32 {
    1.0
}
fn default_http_timeout() -> f32 {
    10.0
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
            SourceConfig::Mqtt { topic, max_age } => {
                crate::mqtt::topic::check_filter(topic)
                    .map_err(|e| format!("{}: {e}", at("topic")))?;
                match max_age {
                    Some(a) if !(a.is_finite() && *a > 0.0 && *a <= MAX_PERIOD_S) => Err(format!(
                        "{} must be a number of seconds between 0 and {MAX_PERIOD_S}, got {a}",
                        at("max_age")
                    )),
                    _ => Ok(()),
                }
            }
            SourceConfig::Http {
                url,
                fps,
                username,
                password,
                password_file,
                ca_file,
                timeout,
            } => {
                super::http::check_url(url, &["http", "https"])
                    .map_err(|e| format!("{}: {e}", at("url")))?;
                check_fps(*fps)?;
                let secret = (username, password, password_file);
                check_network(&at, secret, *timeout, &check_path)?;
                match ca_file {
                    Some(p) => check_path("ca_file", p),
                    None => Ok(()),
                }
            }
            SourceConfig::Rtsp {
                url,
                fps,
                username,
                password,
                password_file,
                timeout,
                transport: _,
            } => {
                super::http::check_url(url, &["rtsp"])
                    .map_err(|e| format!("{}: {e}", at("url")))?;
                check_fps(*fps)?;
                check_network(
                    &at,
                    (username, password, password_file),
                    *timeout,
                    &check_path,
                )
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

/// The credentials and timeout of a network camera.
fn check_network(
    at: &dyn Fn(&str) -> String,
    (username, password, password_file): (&Option<String>, &Option<String>, &Option<PathBuf>),
    timeout: f32,
    check_path: &dyn Fn(&str, &Path) -> Result<(), String>,
) -> Result<(), String> {
    if password.is_some() && password_file.is_some() {
        return Err(format!(
            "{}: give `password` or `password_file`, not both",
            at("password")
        ));
    }
    if username.is_none() && (password.is_some() || password_file.is_some()) {
        return Err(format!(
            "{} is missing (a password is given)",
            at("username")
        ));
    }
    if let Some(p) = password_file {
        check_path("password_file", p)?;
    }
    if !(timeout.is_finite() && (0.1..=600.0).contains(&timeout)) {
        return Err(format!(
            "{} must be a number of seconds between 0.1 and 600, got {timeout}",
            at("timeout")
        ));
    }
    Ok(())
}

impl SourceConfig {
    /// The `type` key: `test_pattern`, `file`, `folder`, `v4l2`, `mqtt`,
    /// `http` or `rtsp`.
    pub fn kind(&self) -> &'static str {
        match self {
            SourceConfig::TestPattern { .. } => "test_pattern",
            SourceConfig::File { .. } => "file",
            SourceConfig::Folder { .. } => "folder",
            SourceConfig::V4l2 { .. } => "v4l2",
            SourceConfig::Mqtt { .. } => "mqtt",
            SourceConfig::Http { .. } => "http",
            SourceConfig::Rtsp { .. } => "rtsp",
        }
    }

    /// How old the newest frame may be before the camera counts as stuck:
    /// three frame periods (at least 10 s, so a slow decode does not flap
    /// the status), or an `mqtt` camera's `max_age`.
    pub(super) fn stale_after(&self) -> Duration {
        const STALE_PERIODS: u32 = 3;
        const STALE_MIN: Duration = Duration::from_secs(10);
        match self {
            SourceConfig::Mqtt { max_age, .. } => {
                Duration::from_secs_f32(max_age.unwrap_or(100.0 * 365.0 * 86_400.0))
            }
            _ => (self.period() * STALE_PERIODS).max(STALE_MIN),
        }
    }

    /// Time between frames, clamped to the validated range so an unvalidated
    /// value cannot make a `Duration` panic.
    pub(super) fn period(&self) -> Duration {
        let secs = match self {
            SourceConfig::TestPattern { fps, .. }
            | SourceConfig::File { fps, .. }
            | SourceConfig::Http { fps, .. }
            | SourceConfig::Rtsp { fps, .. } => 1.0 / *fps,
            SourceConfig::Folder { interval, .. } => *interval,
            SourceConfig::V4l2 { fps, .. } => 1.0 / (*fps).max(1) as f32,
            // Frames come when the publisher sends them.
            SourceConfig::Mqtt { max_age, .. } => max_age.unwrap_or(MAX_PERIOD_S),
        };
        let secs = if secs.is_finite() { secs } else { MAX_PERIOD_S };
        Duration::from_secs_f32(secs.clamp(1.0 / MAX_FPS, MAX_PERIOD_S))
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
}
