//! V4L2 capture (USB/UVC webcams, CSI cameras with a V4L2 driver) through
//! the `v4l` crate: raw ioctls and mmap, no libv4l needed.
//!
//! One [`Source::run`] is one session: open the device, negotiate format,
//! size and rate, stream memory-mapped buffers and convert each frame with
//! [`super::convert`]. Any error ends the session with a reason; the capture
//! thread backs off and opens the device again, which is how an unplugged
//! and re-plugged camera comes back without restarting the daemon.
//!
//! Waiting for a frame is done in short slices so a stop request is noticed
//! within [`POLL_SLICE`], and a device that stays silent is treated as failed
//! after [`STALL_MIN`] (or three frame periods) instead of hanging forever.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use image::RgbImage;
use v4l::buffer::{Flags as BufferFlags, Type};
use v4l::capability::Flags as CapFlags;
use v4l::io::mmap::Stream;
use v4l::io::traits::{CaptureStream, Stream as _};
use v4l::video::capture::Parameters;
use v4l::video::Capture;
use v4l::{Device, Format, FourCC};

use super::capture::{Shared, Source};
use super::convert::{mjpeg_to_rgb, rgb24_to_rgb, yuyv_to_rgb};
use super::PixelFormat;

/// Buffers shared with the driver: enough that the camera never waits for
/// us, few enough that a queued frame is at most a few periods old.
const BUFFERS: u32 = 4;
/// Longest uninterrupted wait for a frame (stop latency).
const POLL_SLICE: Duration = Duration::from_millis(200);
/// A session with no usable frame for this long (or three periods, if
/// longer) is failed and the device reopened. Generous enough for the slow
/// first frame of UVC cameras after stream-on.
const STALL_MIN: Duration = Duration::from_secs(5);
/// `POLLIN` from `<poll.h>` (the same value on every Linux architecture).
const POLLIN: i16 = 0x0001;
/// `ENODEV`: the device went away (unplugged). Linux value, as `v4l` uses.
const ENODEV: i32 = 19;
/// `ENXIO`: no such device (node exists, driver gone).
const ENXIO: i32 = 6;
/// `ENOTTY`: the file is not a V4L2 device (ioctl not supported).
const ENOTTY: i32 = 25;

/// A configured V4L2 camera; holds no open resources between sessions.
pub(super) struct V4l2Source {
    device: PathBuf,
    width: u32,
    height: u32,
    fps: u32,
    format: Option<PixelFormat>,
}

/// What the driver agreed to.
#[derive(Debug, Clone, Copy)]
struct Negotiated {
    format: PixelFormat,
    fourcc: FourCC,
    width: u32,
    height: u32,
    /// Bytes per line of raw formats (padding included).
    stride: usize,
}

impl V4l2Source {
    pub(super) fn new(
        device: PathBuf,
        width: u32,
        height: u32,
        fps: u32,
        format: Option<PixelFormat>,
    ) -> Self {
        V4l2Source {
            device,
            width,
            height,
            fps,
            format,
        }
    }

    fn open(&self) -> Result<Device, String> {
        Device::with_path(&self.device).map_err(|e| open_error(&self.device, &e))
    }

    fn negotiate(&self, dev: &Device, camera: &str) -> Result<Negotiated, String> {
        let shown = self.device.display();
        let caps = dev.query_caps().map_err(|e| match e.raw_os_error() {
            Some(ENOTTY) => format!("{shown} is not a V4L2 video device"),
            _ => device_error(&self.device, "querying its capabilities", &e),
        })?;
        let flags = caps.capabilities;
        if !flags.contains(CapFlags::VIDEO_CAPTURE) {
            let what = if flags.contains(CapFlags::META_CAPTURE) {
                "a metadata node, not a video stream (UVC cameras expose video on a \
                 neighbouring /dev/videoN; `v4l2-ctl --list-devices` shows which)"
            } else if flags.contains(CapFlags::VIDEO_CAPTURE_MPLANE) {
                "a multi-planar capture device, which blipd does not support"
            } else {
                "not a video capture device"
            };
            return Err(format!("{shown} ({}) is {what}", caps.card));
        }
        if !flags.contains(CapFlags::STREAMING) {
            return Err(format!(
                "{shown} ({}) does not support streaming (mmap) capture",
                caps.card
            ));
        }

        let offered: Vec<FourCC> = dev
            .enum_formats()
            .map_err(|e| device_error(&self.device, "listing its pixel formats", &e))?
            .into_iter()
            .map(|d| d.fourcc)
            .collect();
        let (format, fourcc) = choose_format(&offered, self.format).ok_or_else(|| {
            let list = offered
                .iter()
                .map(|f| f.to_string())
                .collect::<Vec<_>>()
                .join(", ");
            match self.format {
                Some(wanted) => format!(
                    "{shown} does not offer the configured format `{wanted}` (it offers: {list})"
                ),
                None => format!(
                    "{shown} offers no format blipd can convert (it offers: {list}; supported: \
                     MJPG, JPEG, YUYV, RGB3)"
                ),
            }
        })?;

        let got = dev
            .set_format(&Format::new(self.width, self.height, fourcc))
            .map_err(|e| {
                device_error(
                    &self.device,
                    &format!("setting format {fourcc} {}x{}", self.width, self.height),
                    &e,
                )
            })?;
        if got.fourcc != fourcc {
            return Err(format!(
                "{shown} did not accept pixel format {fourcc} (it chose {})",
                got.fourcc
            ));
        }
        if got.width == 0 || got.height == 0 {
            return Err(format!(
                "{shown} reported an empty frame size {}x{}",
                got.width, got.height
            ));
        }
        if (got.width, got.height) != (self.width, self.height) {
            // Drivers round to the nearest size they support; the model
            // resizes anyway, so this is information, not an error.
            tracing::info!(
                camera,
                device = %shown,
                requested = %format_args!("{}x{}", self.width, self.height),
                actual = %format_args!("{}x{}", got.width, got.height),
                "device adjusted the frame size"
            );
        }

        // Frame rate is best effort: some drivers have no S_PARM.
        let fps = match dev.set_params(&Parameters::with_fps(self.fps)) {
            Ok(p) if p.interval.numerator > 0 => {
                p.interval.denominator as f32 / p.interval.numerator as f32
            }
            Ok(_) => 0.0,
            Err(e) => {
                tracing::debug!(camera, device = %shown, error = %e, "device does not take a frame rate");
                0.0
            }
        };

        let bpp = match format {
            PixelFormat::Yuyv => 2,
            PixelFormat::Rgb24 => 3,
            PixelFormat::Mjpeg => 0,
        };
        let stride = match got.stride as usize {
            0 => got.width as usize * bpp,
            s => s,
        };
        tracing::info!(
            camera,
            device = %shown,
            driver = %caps.driver,
            card = %caps.card,
            bus = %caps.bus,
            fourcc = %fourcc,
            width = got.width,
            height = got.height,
            stride,
            device_fps = fps,
            "V4L2 device configured"
        );
        Ok(Negotiated {
            format,
            fourcc,
            width: got.width,
            height: got.height,
            stride,
        })
    }

    /// Streams until stopped or failed. Only the newest ready buffer is
    /// converted, and no more often than the configured rate, so a device
    /// that ignores the requested rate costs no extra decoding.
    fn stream(
        &self,
        stream: &mut Stream<'_>,
        dev: &Device,
        neg: &Negotiated,
        shared: &Shared,
    ) -> Result<(), String> {
        let shown = self.device.display();
        let handle = dev.handle();
        let period = shared.period();
        let stall_limit = (period * 3).max(STALL_MIN);
        // Frames arriving much sooner than the period after the last one
        // published are dropped (90%: tolerate jitter of the device clock).
        let min_gap = period.mul_f32(0.9);
        let mut last_good = Instant::now();
        let mut last_published: Option<Instant> = None;
        let mut last_problem: Option<String> = None;
        // After a timed-out wait every buffer is queued in the driver and
        // `next()` would queue one twice; one buffer must be taken back
        // first (see `v4l::io::mmap::Stream::next`).
        let mut must_dequeue = false;
        let mut skipped = 0u32;
        loop {
            if shared.stopped() {
                return Ok(());
            }
            if last_good.elapsed() > stall_limit {
                let detail = last_problem
                    .map(|p| format!(" (last problem: {p})"))
                    .unwrap_or_default();
                return Err(format!(
                    "no usable frame from {shown} for {:.0} s{detail}",
                    last_good.elapsed().as_secs_f32()
                ));
            }
            if must_dequeue {
                match CaptureStream::dequeue(stream) {
                    Ok(_) => must_dequeue = false,
                    Err(e) if transient(&e) => {}
                    Err(e) => return Err(device_error(&self.device, "capturing", &e)),
                }
                continue;
            }
            let (buf, meta) = match CaptureStream::next(stream) {
                Ok(frame) => frame,
                Err(e) if transient(&e) => {
                    must_dequeue = true;
                    continue;
                }
                Err(e) => return Err(device_error(&self.device, "capturing", &e)),
            };
            // A newer buffer already waiting: skip this one (bounded, so a
            // device faster than we can check cannot starve conversion).
            if skipped < BUFFERS && matches!(handle.poll(POLLIN, 0), Ok(n) if n > 0) {
                skipped += 1;
                continue;
            }
            skipped = 0;
            if meta.flags.contains(BufferFlags::ERROR) {
                last_problem = Some("the driver marked frames as corrupt".into());
                continue;
            }
            if last_published.is_some_and(|t| t.elapsed() < min_gap) {
                // Not a problem: the device is just faster than configured.
                last_good = Instant::now();
                continue;
            }
            let used = meta.bytesused as usize;
            let data = if used > 0 && used <= buf.len() {
                &buf[..used]
            } else {
                buf
            };
            match convert(neg, data) {
                Ok(image) => {
                    shared.publish(Arc::new(image));
                    last_good = Instant::now();
                    last_published = Some(last_good);
                }
                Err(e) => {
                    tracing::debug!(camera = shared.name(), device = %shown, error = %e, "dropping a frame that could not be converted");
                    last_problem = Some(e.to_string());
                }
            }
        }
    }
}

impl Source for V4l2Source {
    fn run(&mut self, shared: &Shared) -> Result<(), String> {
        let dev = self.open()?;
        let neg = self.negotiate(&dev, shared.name())?;
        let mut stream = Stream::with_buffers(&dev, Type::VideoCapture, BUFFERS)
            .map_err(|e| device_error(&self.device, "allocating capture buffers", &e))?;
        stream.set_timeout(POLL_SLICE);
        tracing::debug!(camera = shared.name(), fourcc = %neg.fourcc, "streaming");
        let result = self.stream(&mut stream, &dev, &neg, shared);
        close(stream, &self.device, shared.name());
        result
    }
}

/// Stops streaming before the stream is dropped.
///
/// `v4l`'s `Drop` for the stream panics when `VIDIOC_STREAMOFF` fails with
/// anything but `ENODEV`, and its buffer arena then panics again while
/// unwinding, which would abort the process. Stopping here first turns that
/// into a logged error: on such a failure the stream is leaked instead of
/// dropped (a few mapped buffers; the driver reclaims them when the device
/// goes away).
fn close(mut stream: Stream<'_>, device: &Path, camera: &str) {
    match stream.stop() {
        Ok(()) => drop(stream),
        Err(e) if e.raw_os_error() == Some(ENODEV) => drop(stream),
        Err(e) => {
            tracing::error!(camera, device = %device.display(), error = %e, "could not stop streaming; leaking the capture buffers rather than aborting");
            std::mem::forget(stream);
        }
    }
}

/// Waiting that ran out (or was interrupted) rather than a device failure.
fn transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

/// Picks the pixel format: the configured one if the device offers it, else
/// MJPEG (smallest over USB, allows large sizes), then YUYV, then RGB24.
fn choose_format(offered: &[FourCC], wanted: Option<PixelFormat>) -> Option<(PixelFormat, FourCC)> {
    const PREFERENCE: [(&[u8; 4], PixelFormat); 4] = [
        (b"MJPG", PixelFormat::Mjpeg),
        (b"JPEG", PixelFormat::Mjpeg),
        (b"YUYV", PixelFormat::Yuyv),
        (b"RGB3", PixelFormat::Rgb24),
    ];
    PREFERENCE
        .iter()
        .filter(|(_, format)| wanted.is_none_or(|w| w == *format))
        .map(|(code, format)| (*format, FourCC::new(code)))
        .find(|(_, fourcc)| offered.contains(fourcc))
}

fn convert(neg: &Negotiated, data: &[u8]) -> Result<RgbImage, super::convert::ConvertError> {
    match neg.format {
        PixelFormat::Yuyv => yuyv_to_rgb(data, neg.width, neg.height, neg.stride),
        PixelFormat::Rgb24 => rgb24_to_rgb(data, neg.width, neg.height, neg.stride),
        PixelFormat::Mjpeg => mjpeg_to_rgb(data),
    }
}

/// A reason for a failed open that tells the user what to do.
fn open_error(device: &Path, e: &io::Error) -> String {
    let shown = device.display();
    match (e.kind(), e.raw_os_error()) {
        (io::ErrorKind::NotFound, _) => format!(
            "video device {shown} does not exist: is the camera plugged in? \
             (`ls /dev/video*` lists the devices)"
        ),
        (io::ErrorKind::PermissionDenied, _) => format!(
            "permission denied opening video device {shown}: add the user running blipd to \
             the `video` group"
        ),
        (io::ErrorKind::ResourceBusy, _) => {
            format!("video device {shown} is busy: another program is using the camera")
        }
        (_, Some(ENODEV | ENXIO)) => {
            format!("video device {shown} is gone (camera unplugged or driver unloaded)")
        }
        _ => format!("cannot open video device {shown}: {e}"),
    }
}

/// A reason for a failed ioctl on an open device.
fn device_error(device: &Path, doing: &str, e: &io::Error) -> String {
    let shown = device.display();
    match e.raw_os_error() {
        Some(ENODEV | ENXIO) => {
            format!("video device {shown} disappeared while {doing} (camera unplugged?)")
        }
        _ => format!("video device {shown} failed while {doing}: {e}"),
    }
}

/// What could be learned about a V4L2 device node without streaming.
pub struct V4l2Probe {
    /// Added to the camera's detail; `None` when the capture code's own
    /// reason already says it (a missing node, permission denied).
    pub detail: Option<String>,
    pub fix: Option<String>,
}

/// For `blipd doctor`: opens the device node as the capture code does and lists its pixel
/// formats: access problems are the common install mistake, and the format
/// list is what a `format = ...` setting must pick from.
pub fn probe(device: &Path) -> V4l2Probe {
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
    match Device::with_path(device) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cc(s: &[u8; 4]) -> FourCC {
        FourCC::new(s)
    }

    #[test]
    fn format_preference() {
        let all = [cc(b"YUYV"), cc(b"RGB3"), cc(b"MJPG")];
        assert_eq!(
            choose_format(&all, None),
            Some((PixelFormat::Mjpeg, cc(b"MJPG")))
        );
        assert_eq!(
            choose_format(&all[..2], None),
            Some((PixelFormat::Yuyv, cc(b"YUYV")))
        );
        assert_eq!(
            choose_format(&all[1..2], None),
            Some((PixelFormat::Rgb24, cc(b"RGB3")))
        );
        assert_eq!(
            choose_format(&[cc(b"JPEG")], None),
            Some((PixelFormat::Mjpeg, cc(b"JPEG")))
        );
        assert_eq!(
            choose_format(&all, Some(PixelFormat::Yuyv)),
            Some((PixelFormat::Yuyv, cc(b"YUYV")))
        );
        assert_eq!(choose_format(&all[..1], Some(PixelFormat::Mjpeg)), None);
        assert_eq!(choose_format(&[cc(b"H264"), cc(b"NV12")], None), None);
        assert_eq!(choose_format(&[], None), None);
    }

    #[test]
    fn open_errors_say_what_to_do() {
        let dev = Path::new("/dev/video7");
        let msg = open_error(dev, &io::Error::from(io::ErrorKind::NotFound));
        assert!(
            msg.contains("/dev/video7") && msg.contains("plugged in"),
            "{msg}"
        );
        let msg = open_error(dev, &io::Error::from(io::ErrorKind::PermissionDenied));
        assert!(msg.contains("`video` group"), "{msg}");
        let msg = open_error(dev, &io::Error::from_raw_os_error(ENODEV));
        assert!(msg.contains("gone"), "{msg}");
        let msg = device_error(dev, "capturing", &io::Error::from_raw_os_error(ENODEV));
        assert!(msg.contains("disappeared while capturing"), "{msg}");
    }

    #[test]
    fn regular_file_is_not_a_device() {
        // Opening works (it is a file), the first ioctl fails with ENOTTY.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("video0");
        std::fs::write(&path, b"not a device").unwrap();
        let src = V4l2Source::new(path.clone(), 640, 480, 5, None);
        let dev = src.open().unwrap();
        let msg = src.negotiate(&dev, "t").unwrap_err();
        assert!(
            msg.contains(&path.display().to_string()) && msg.contains("not a V4L2"),
            "{msg}"
        );
    }
}
