//! A camera's capture thread: newest frame only, staleness, retry with
//! exponential backoff, prompt stop. Sources only produce pictures
//! ([`Source`]); everything about health and timing lives here.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use image::RgbImage;

use super::file::FileSource;
use super::folder::FolderSource;
use super::http::{HttpSettings, HttpSource};
use super::mqtt::MqttSource;
use super::pattern::{SceneSource, TestPattern};
use super::rtsp::{RtspSettings, RtspSource};
use super::v4l2::V4l2Source;
use super::{
    CameraConfig, CameraError, CameraState, CameraStatus, Frame, PatternKind, RtspTransport,
    SourceConfig,
};

// ---------------------------------------------------------------------------
// Camera and its capture thread
// ---------------------------------------------------------------------------

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
        let shared = Arc::new(Shared::new(
            cfg.name.clone(),
            kind,
            cfg.source.period(),
            cfg.source.stale_after(),
        ));
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
            SourceConfig::File { path, .. } => Box::new(FileSource::new(path)),
            SourceConfig::Folder { path, .. } => Box::new(FolderSource::new(path)),
            SourceConfig::V4l2 {
                device,
                width,
                height,
                fps,
                format,
            } => Box::new(V4l2Source::new(device, width, height, fps, format)),
            SourceConfig::Mqtt { .. } => Box::new(MqttSource),
            SourceConfig::Http {
                url,
                username,
                password,
                password_file,
                ca_file,
                timeout,
                ..
            } => Box::new(HttpSource::new(HttpSettings {
                url,
                username,
                password,
                password_file,
                ca_file,
                timeout: Duration::from_secs_f32(timeout),
            })),
            SourceConfig::Rtsp {
                url,
                username,
                password,
                password_file,
                transport,
                timeout,
                ..
            } => Box::new(RtspSource::new(RtspSettings {
                url,
                username,
                password,
                password_file,
                udp: transport == RtspTransport::Udp,
                timeout: Duration::from_secs_f32(timeout),
            })),
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

    /// Hands an encoded frame (JPEG, PNG, ...) to a camera whose frames
    /// arrive from outside (`mqtt`): it replaces any frame not decoded yet,
    /// and the capture thread decodes it. Ignored by other cameras.
    pub fn push(&self, encoded: Arc<[u8]>) {
        if self.shared.kind != "mqtt" {
            return;
        }
        self.shared.lock().pending = Some(encoded);
        self.shared.wake.notify_all();
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
    /// The newest encoded frame handed in by [`Camera::push`] and not yet
    /// decoded (an `mqtt` camera); a newer one replaces it.
    pending: Option<Arc<[u8]>>,
}

enum Assessment {
    Starting,
    Fresh,
    Unavailable(String),
}

impl Shared {
    fn new(name: String, kind: &'static str, period: Duration, stale_after: Duration) -> Self {
        Shared {
            name,
            kind,
            period,
            stale_after,
            inner: Mutex::new(Inner {
                stop: false,
                exited: false,
                state: CameraState::Starting,
                last_error: None,
                latest: None,
                frames: 0,
                unavailable_since: None,
                pending: None,
            }),
            wake: Condvar::new(),
        }
    }

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

    /// Waits for the next frame handed to [`Camera::push`]; `None` when
    /// stopped.
    pub(crate) fn wait_pushed(&self) -> Option<Arc<[u8]>> {
        let mut inner = self.lock();
        loop {
            if inner.stop {
                return None;
            }
            if let Some(p) = inner.pending.take() {
                return Some(p);
            }
            inner = self
                .wake
                .wait(inner)
                .unwrap_or_else(PoisonError::into_inner);
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
pub(super) struct Backoff {
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
pub(super) fn run_ticks(
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

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn invalid_config_is_unavailable_not_a_panic() {
        let camera = Camera::spawn(CameraConfig {
            name: "bad".into(),
            source: SourceConfig::test_pattern(10, 10, f32::NAN),
        });
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
    fn stale_frame_is_unavailable() {
        let shared = Shared::new(
            "s".into(),
            "file",
            Duration::from_millis(50),
            Duration::from_secs(10),
        );
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
