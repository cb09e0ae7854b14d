//! The `rtsp` source: H.264 over RTSP, the way most IP cameras and NVRs
//! (and Frigate's go2rtc restream) offer video.
//!
//! - RTSP with `retina` (pure Rust, used by Moonfire NVR against many real
//!   cameras): TCP interleaved by default (through NAT and firewalls, no
//!   lost packets), UDP on request (experimental); Basic/Digest
//!   authentication.
//! - H.264 with `openh264` (Cisco's decoder, built from source by the
//!   crate: no system FFmpeg, so the aarch64 cross build stays one `cargo`).
//!
//! Every access unit is handed to the decoder, because a P frame is only a
//! difference to the ones before it; but the decoded picture is converted
//! to RGB (the expensive, allocating step) only when a new frame is due
//! (`fps`), and only the newest counts. A camera's sub-stream (e.g.
//! 640x360) costs a fraction of the main one and is what the model needs
//! anyway (it sees 224x224).
//!
//! The stream is untrusted: a picture over the pixel limit, a stream that
//! stops delivering video for `timeout`, or one that never decodes makes the
//! camera unavailable with the reason, and the capture thread reconnects.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use image::RgbImage;
use retina::client::{PlayOptions, Session, SessionOptions, SetupOptions, Transport};
use retina::codec::{CodecItem, FrameFormat};

use super::capture::{Shared, Source};

/// Access units in a row that may fail to decode (a stream joined between
/// keyframes fails until the next one) before the camera is unavailable.
const MAX_DECODE_ERRORS: u32 = 300;

/// What the `[[camera]]` table says.
#[derive(Debug, Clone)]
pub struct RtspSettings {
    pub url: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub password_file: Option<PathBuf>,
    pub udp: bool,
    pub timeout: Duration,
}

pub(super) struct RtspSource {
    settings: RtspSettings,
    shown: String,
}

impl RtspSource {
    pub(super) fn new(settings: RtspSettings) -> Self {
        RtspSource {
            shown: super::http::redact(&settings.url),
            settings,
        }
    }

    fn credentials(&self) -> Result<Option<retina::client::Credentials>, String> {
        let s = &self.settings;
        let password = match (&s.password, &s.password_file) {
            (Some(p), _) => p.clone(),
            (None, Some(f)) => {
                crate::mqtt::read_secret(f).map_err(|e| format!("password_file: {e}"))?
            }
            (None, None) => String::new(),
        };
        Ok(s.username
            .clone()
            .map(|username| retina::client::Credentials { username, password }))
    }

    async fn session(&self, shared: &Shared) -> Result<(), String> {
        let t = self.settings.timeout;
        let shown = &self.shown;
        let url = url::Url::parse(&super::http::strip_userinfo(&self.settings.url))
            .map_err(|e| format!("{shown}: {e}"))?;
        let (url_user, url_pass) = super::http::userinfo(&self.settings.url);
        let creds = match self.credentials()? {
            Some(c) => Some(c),
            None => url_user.map(|username| retina::client::Credentials {
                username,
                password: url_pass.unwrap_or_default(),
            }),
        };
        let options = SessionOptions::default()
            .creds(creds)
            .user_agent(concat!("blipd/", env!("CARGO_PKG_VERSION")).to_string());
        let step =
            |what: &'static str| move |e: retina::Error| format!("{shown}: {what} failed: {e}");
        let timed = |what: &'static str| {
            move |_| {
                format!(
                    "{shown}: no answer to {what} within {:.1} s",
                    t.as_secs_f32()
                )
            }
        };
        let mut session = tokio::time::timeout(t, Session::describe(url, options))
            .await
            .map_err(timed("DESCRIBE"))?
            .map_err(step("DESCRIBE"))?;
        let found: Vec<String> = session
            .streams()
            .iter()
            .map(|s| format!("{}/{}", s.media(), s.encoding_name()))
            .collect();
        let video = session
            .streams()
            .iter()
            .position(|s| s.media() == "video" && s.encoding_name() == "h264")
            .ok_or_else(|| {
                format!(
                    "{shown} offers no H.264 video (it offers {}); blipd decodes H.264 (set \
                     the camera's stream to H.264, e.g. its sub-stream)",
                    if found.is_empty() {
                        "nothing".to_string()
                    } else {
                        found.join(", ")
                    }
                )
            })?;
        let transport = if self.settings.udp {
            Transport::Udp(Default::default())
        } else {
            Transport::Tcp(Default::default())
        };
        let setup = SetupOptions::default()
            .transport(transport)
            .frame_format(FrameFormat::SIMPLE);
        tokio::time::timeout(t, session.setup(video, setup))
            .await
            .map_err(timed("SETUP"))?
            .map_err(step("SETUP"))?;
        let playing = tokio::time::timeout(t, session.play(PlayOptions::default()))
            .await
            .map_err(timed("PLAY"))?
            .map_err(step("PLAY"))?;
        let mut frames = playing.demuxed().map_err(step("PLAY"))?;
        let mut decoder = openh264::decoder::Decoder::new()
            .map_err(|e| format!("cannot start the H.264 decoder: {e}"))?;
        let period = shared.period();
        let mut due = Instant::now();
        let mut last_video = Instant::now();
        // Video that arrives but never decodes (lost packets over UDP, a
        // stream joined between keyframes that never sends another) is a
        // failure too: reconnecting asks the server for a fresh keyframe.
        let mut last_picture = Instant::now();
        let undecodable = |since: Instant| {
            format!(
                "{shown}: video arrives but no picture decoded for {:.1} s (packets lost? \
                 transport = \"tcp\" avoids that)",
                since.elapsed().as_secs_f32()
            )
        };
        let mut errors = 0u32;
        let mut rgb: Vec<u8> = Vec::new();
        loop {
            if shared.stopped() {
                return Ok(());
            }
            // Short waits, so a stop is noticed promptly.
            let item = match tokio::time::timeout(Duration::from_millis(200), frames.next()).await {
                Err(_) => {
                    if last_video.elapsed() > t {
                        return Err(format!(
                            "{shown} sent no video for {:.1} s",
                            last_video.elapsed().as_secs_f32()
                        ));
                    }
                    continue;
                }
                Ok(item) => item,
            };
            let frame = match item {
                Some(Ok(CodecItem::VideoFrame(f))) => f,
                Some(Ok(_)) if last_video.elapsed() > t => {
                    return Err(format!(
                        "{shown} sent no video for {:.1} s",
                        t.as_secs_f32()
                    ))
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(format!("{shown}: {e}")),
                None => return Err(format!("{shown} ended the stream")),
            };
            last_video = Instant::now();
            let decoded = match decoder.decode(frame.data()) {
                Ok(d) => {
                    errors = 0;
                    d
                }
                Err(_) if last_picture.elapsed() > t => return Err(undecodable(last_picture)),
                Err(e) => {
                    errors += 1;
                    if errors >= MAX_DECODE_ERRORS {
                        return Err(format!(
                            "{shown}: {errors} access units in a row did not decode ({e})"
                        ));
                    }
                    continue;
                }
            };
            let Some(yuv) = decoded else {
                if last_picture.elapsed() > t {
                    return Err(undecodable(last_picture));
                }
                continue;
            };
            last_picture = Instant::now();
            if Instant::now() < due {
                continue;
            }
            use openh264::formats::YUVSource as _;
            let (w, h) = yuv.dimensions();
            let (w32, h32) = (w as u32, h as u32);
            crate::preprocess::check_pixels(w32, h32)
                .map_err(|e| format!("{shown}: the video is {w}x{h}: {e}"))?;
            rgb.resize(w * h * 3, 0);
            yuv.write_rgb8(&mut rgb);
            let image = RgbImage::from_raw(w32, h32, std::mem::take(&mut rgb))
                .ok_or_else(|| format!("{shown}: a decoded picture has the wrong size"))?;
            shared.publish(Arc::new(image));
            due += period;
            due = due.max(Instant::now());
        }
    }
}

impl Source for RtspSource {
    fn run(&mut self, shared: &Shared) -> Result<(), String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the RTSP client's runtime: {e}"))?;
        runtime.block_on(self.session(shared))
    }
}
