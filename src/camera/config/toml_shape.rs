//! The TOML shape of a `[[camera]]` table: `name` beside the tagged source
//! settings. serde cannot combine `flatten` with `deny_unknown_fields`, so
//! this private enum repeats `name` in every variant and converts to and
//! from [`CameraConfig`].

use super::*;

/// The TOML shape of [`CameraConfig`]: `name` next to the tagged settings.
#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub(super) enum CameraToml {
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
    Mqtt {
        name: String,
        topic: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_age: Option<f32>,
    },
    Http {
        name: String,
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
    Rtsp {
        name: String,
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
            CameraToml::Mqtt {
                name,
                topic,
                max_age,
            } => (name, SourceConfig::Mqtt { topic, max_age }),
            CameraToml::Rtsp {
                name,
                url,
                fps,
                username,
                password,
                password_file,
                transport,
                timeout,
            } => (
                name,
                SourceConfig::Rtsp {
                    url,
                    fps,
                    username,
                    password,
                    password_file,
                    transport,
                    timeout,
                },
            ),
            CameraToml::Http {
                name,
                url,
                fps,
                username,
                password,
                password_file,
                ca_file,
                timeout,
            } => (
                name,
                SourceConfig::Http {
                    url,
                    fps,
                    username,
                    password,
                    password_file,
                    ca_file,
                    timeout,
                },
            ),
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
            SourceConfig::Mqtt { topic, max_age } => CameraToml::Mqtt {
                name,
                topic,
                max_age,
            },
            SourceConfig::Rtsp {
                url,
                fps,
                username,
                password,
                password_file,
                transport,
                timeout,
            } => CameraToml::Rtsp {
                name,
                url,
                fps,
                username,
                password,
                password_file,
                transport,
                timeout,
            },
            SourceConfig::Http {
                url,
                fps,
                username,
                password,
                password_file,
                ca_file,
                timeout,
            } => CameraToml::Http {
                name,
                url,
                fps,
                username,
                password,
                password_file,
                ca_file,
                timeout,
            },
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
