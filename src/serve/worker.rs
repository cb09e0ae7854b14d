//! The inference worker: one thread that owns the model and answers jobs in
//! order. A board has one CPU/accelerator budget, so answers are serialised;
//! the bounded queue in front of it is what turns overload into `busy`
//! replies instead of an ever-growing backlog.

use crate::camera::{CameraError, Frame};
use crate::config::SnapshotConfig;
use crate::llm::TextStream;
pub use crate::mqtt::wire::Trigger;
use crate::mqtt::wire::{self, AnswerReply, ErrorCode, ErrorReply, Timings};
use crate::pipeline::FrameFeatures;
use crate::serve::cameras::Cameras;
use crate::serve::queue::{self, Intake};
pub use crate::serve::queue::{
    HttpEvent, HttpReply, Job, Origin, PushError, Queue, ReplyTo, Submitter,
};
use crate::serve::systemd::Liveness;
use crate::{Pipeline, PipelineError};
use image::RgbImage;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc::UnboundedSender;

/// The JPEG of an answered frame.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub jpeg: Vec<u8>,
    pub width: u32,
    pub height: u32,
}

/// What the worker reports back to the MQTT task.
// One event per job or chunk, moved once through a channel: boxing the
// larger variant would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum WorkerEvent {
    /// New text of a streamed answer.
    Chunk {
        reply: ReplyTo,
        chunk: wire::StreamChunk,
    },
    /// The job is finished: exactly one per job.
    Done {
        origin: Origin,
        result: Result<AnswerReply, ErrorReply>,
        snapshot: Option<Snapshot>,
    },
}

/// Starts the worker thread. It stops when the [`Queue`] is dropped,
/// after answering the requests already queued.
pub fn spawn(
    pipeline: Pipeline,
    cameras: Arc<Cameras>,
    model_name: String,
    queue_len: usize,
    snapshot: Arc<Mutex<SnapshotConfig>>,
    events: UnboundedSender<WorkerEvent>,
    liveness: Arc<Liveness>,
) -> std::io::Result<(Queue, std::thread::JoinHandle<()>)> {
    let (queue, intake) = queue::new(queue_len);
    let handle = std::thread::Builder::new()
        .name("inference".into())
        .spawn(move || {
            let mut w = Worker {
                pipeline,
                cameras,
                model_name,
                cache: HashMap::new(),
                snapshot,
                events,
                liveness,
            };
            w.run(intake)
        })?;
    Ok((queue, handle))
}

struct CachedFeatures {
    image: Arc<RgbImage>,
    frame: FrameFeatures,
}

struct Worker {
    pipeline: Pipeline,
    cameras: Arc<Cameras>,
    model_name: String,
    /// Newest image features per camera: a second question about the same
    /// frame skips the vision encoder.
    cache: HashMap<String, CachedFeatures>,
    snapshot: Arc<Mutex<SnapshotConfig>>,
    events: UnboundedSender<WorkerEvent>,
    liveness: Arc<Liveness>,
}

impl Worker {
    fn run(&mut self, intake: Intake) {
        while let Some(job) = intake.next() {
            let span = tracing::info_span!("job", id = %job.id, camera = %job.camera);
            let _g = span.enter();
            self.liveness.progress();
            // A panic in one job (a bug, or a model failure llama.cpp or
            // tract reports by panicking) must not leave every later request
            // unanswered: it becomes this job's `internal` error.
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                fault::inject(&job.prompt);
                self.answer(&job)
            }))
            .unwrap_or_else(|panic| {
                let what = panic_message(&*panic);
                tracing::error!(panic = %what, "the job panicked; answering internal and serving on");
                Err((ErrorCode::Internal, format!("internal error: {what}")))
            });
            let (result, snapshot) = match outcome {
                Ok((answer, frame)) => {
                    let snapshot = job.snapshot.then(|| self.encode(&frame)).flatten();
                    (Ok(answer), snapshot)
                }
                Err((code, message)) => {
                    tracing::debug!(?code, %message, "job failed");
                    let mut e = ErrorReply::new(job.id.clone(), code, message);
                    e.camera = (!job.camera.is_empty()).then(|| job.camera.clone());
                    (Err(e), None)
                }
            };
            self.liveness.idle();
            let done = WorkerEvent::Done {
                origin: job.origin,
                result,
                snapshot,
            };
            if self.events.send(done).is_err() {
                break;
            }
        }
        tracing::debug!("inference worker stopped");
    }

    /// JPEG of the answered frame, scaled down to `snapshot.max_width`.
    fn encode(&self, frame: &Frame) -> Option<Snapshot> {
        let cfg = self
            .snapshot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let img = &*frame.image;
        let scaled;
        let img = if img.width() > cfg.max_width {
            let h = ((img.height() as u64 * cfg.max_width as u64) / img.width() as u64).max(1);
            scaled = image::imageops::resize(
                img,
                cfg.max_width,
                h as u32,
                image::imageops::FilterType::Triangle,
            );
            &scaled
        } else {
            img
        };
        match turbojpeg::compress_image(img, cfg.quality as i32, turbojpeg::Subsamp::Sub2x2) {
            Ok(buf) => Some(Snapshot {
                jpeg: buf.to_vec(),
                width: img.width(),
                height: img.height(),
            }),
            Err(e) => {
                tracing::warn!(error = %e, "cannot encode the snapshot");
                None
            }
        }
    }

    fn features(
        &mut self,
        camera: &str,
        frame: &Frame,
    ) -> Result<(FrameFeatures, bool), PipelineError> {
        if let Some(c) = self.cache.get(camera) {
            if Arc::ptr_eq(&c.image, &frame.image) || *c.image == *frame.image {
                return Ok((c.frame.clone(), true));
            }
        }
        let f = self.pipeline.image_features(&frame.image)?;
        self.cache.insert(
            camera.to_string(),
            CachedFeatures {
                image: frame.image.clone(),
                frame: f.clone(),
            },
        );
        Ok((f, false))
    }

    fn answer(&mut self, job: &Job) -> Result<(AnswerReply, Frame), (ErrorCode, String)> {
        let queue_ms = job.enqueued.elapsed().as_secs_f64() * 1e3;
        let prepared = self.pipeline.prepare(&job.prompt).map_err(classify)?;
        let frame = match &job.image {
            Some(bytes) => request_frame(bytes)?,
            None => {
                let cam = self.cameras.get(&job.camera).ok_or_else(|| {
                    (
                        ErrorCode::UnknownCamera,
                        format!("no camera named {:?}", job.camera),
                    )
                })?;
                cam.latest().map_err(|e| match e {
                    CameraError::Unavailable { .. } | CameraError::NoFrameYet { .. } => {
                        (ErrorCode::CameraUnavailable, e.to_string())
                    }
                })?
            }
        };
        let (features, cached) = self.features(&job.camera, &frame).map_err(classify)?;
        self.liveness.progress();
        let frame_for_timing = if cached {
            // The vision work was done for an earlier question: this one cost nothing.
            FrameFeatures {
                preprocess: Default::default(),
                vision: Default::default(),
                ..features
            }
        } else {
            features
        };

        let to = match &job.origin {
            Origin::Request {
                reply,
                stream: true,
                ..
            } => Some(ChunkTo::Mqtt(reply.clone())),
            Origin::Http {
                reply,
                stream: true,
            } => Some(ChunkTo::Http(reply.clone())),
            _ => None,
        };
        let mut streamer =
            to.map(|to| Streamer::new(job.id.clone(), to, self.pipeline.llm().detokenizer()));
        let events = &self.events;
        let liveness = &self.liveness;
        let answer = self
            .pipeline
            .answer_prepared(&frame_for_timing, &prepared, &job.params, |t| {
                liveness.progress();
                if let Some(s) = streamer.as_mut() {
                    s.push(t, events);
                }
            })
            .map_err(classify)?;
        if let Some(s) = streamer.as_mut() {
            s.finish(&answer.text, events);
        }
        let reply = AnswerReply {
            id: job.id.clone(),
            camera: job.camera.clone(),
            answer: answer.text,
            tokens: answer.tokens.len(),
            prompt_tokens: answer.prompt_tokens,
            stop: answer.stop,
            frame_time: wire::rfc3339(frame.captured),
            model: self.model_name.clone(),
            vision_cached: cached,
            timings: Timings {
                queue_ms,
                stages: answer.timings,
            },
            snapshot: None,
        };
        Ok((reply, frame))
    }
}

/// A request's own picture as a frame: decoded like a camera's (same
/// pixel limit, checked from the header first), captured now.
fn request_frame(bytes: &[u8]) -> Result<Frame, (ErrorCode, String)> {
    use crate::preprocess::PreprocessError;
    let image = crate::preprocess::decode_rgb(bytes).map_err(|e| match e {
        PreprocessError::TooLarge {
            width,
            height,
            max_pixels,
            ..
        } => (
            ErrorCode::LimitExceeded,
            format!("the image is {width}x{height}: over limits.max_image_pixels = {max_pixels}"),
        ),
        other => (
            ErrorCode::BadImage,
            format!("the image cannot be decoded: {other}"),
        ),
    })?;
    Ok(Frame {
        image: Arc::new(image),
        captured: std::time::SystemTime::now(),
        seq: 0,
    })
}

/// The text of a caught panic.
fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

/// Test-only fault injection, through the environment (nothing a client
/// sends can set it): a job whose prompt equals `BLIPD_TEST_PANIC_ON_PROMPT`
/// panics inside the worker, one whose prompt equals
/// `BLIPD_TEST_SLOW_PROMPT` takes 3 s more, so the test suite can prove a
/// panicking job is answered and a broker lost mid-answer loses nothing.
mod fault {
    use std::sync::OnceLock;

    pub fn inject(prompt: &str) {
        static PANIC: OnceLock<Option<String>> = OnceLock::new();
        static SLOW: OnceLock<Option<String>> = OnceLock::new();
        let var = |name| std::env::var(name).ok();
        if PANIC
            .get_or_init(|| var("BLIPD_TEST_PANIC_ON_PROMPT"))
            .as_deref()
            == Some(prompt)
        {
            panic!("injected by BLIPD_TEST_PANIC_ON_PROMPT");
        }
        if SLOW
            .get_or_init(|| var("BLIPD_TEST_SLOW_PROMPT"))
            .as_deref()
            == Some(prompt)
        {
            std::thread::sleep(std::time::Duration::from_secs(3));
        }
    }
}

/// Maps pipeline errors to wire error codes: the requester's fault or ours.
fn classify(e: PipelineError) -> (ErrorCode, String) {
    use crate::llm::LlmError;
    use crate::qformer::QFormerError;
    let code = match &e {
        PipelineError::QFormer(QFormerError::EmptyPrompt)
        | PipelineError::Llm(LlmError::EmptyPrompt) => ErrorCode::EmptyPrompt,
        PipelineError::QFormer(QFormerError::PromptTooLong { .. })
        | PipelineError::Llm(LlmError::PromptTooLong { .. }) => ErrorCode::PromptTooLong,
        PipelineError::Preprocess(_) => ErrorCode::CameraUnavailable,
        _ => {
            tracing::error!(error = %e, "inference failed");
            ErrorCode::Internal
        }
    };
    (code, e.to_string())
}

/// Where a streamed answer's text goes.
enum ChunkTo {
    /// Numbered chunks on the requester's reply topic, through the session.
    Mqtt(ReplyTo),
    /// Straight to the HTTP handler.
    Http(HttpReply),
}

/// Publishes a streamed answer as numbered chunks (see [`TextStream`]).
struct Streamer {
    id: String,
    reply: ChunkTo,
    text: TextStream,
    seq: u32,
}

impl Streamer {
    fn new(id: String, reply: ChunkTo, detok: crate::llm::Detokenizer) -> Self {
        Self {
            id,
            reply,
            text: TextStream::new(detok),
            seq: 0,
        }
    }

    fn emit(&mut self, text: String, events: &UnboundedSender<WorkerEvent>) {
        if text.is_empty() {
            return;
        }
        match &self.reply {
            ChunkTo::Mqtt(reply) => {
                let _ = events.send(WorkerEvent::Chunk {
                    reply: reply.clone(),
                    chunk: wire::StreamChunk {
                        id: self.id.clone(),
                        seq: self.seq,
                        text,
                    },
                });
            }
            // A handler whose client went away has dropped its receiver.
            ChunkTo::Http(reply) => {
                let _ = reply.send(HttpEvent::Text(text));
            }
        }
        self.seq += 1;
    }

    fn push(&mut self, token: u32, events: &UnboundedSender<WorkerEvent>) {
        if let Some(new) = self.text.push(token) {
            self.emit(new, events);
        }
    }

    fn finish(&mut self, full: &str, events: &UnboundedSender<WorkerEvent>) {
        match self.text.finish(full) {
            Some(rest) => self.emit(rest, events),
            None => tracing::warn!(
                id = %self.id,
                "streamed text diverged from the final answer; the final answer is authoritative"
            ),
        }
    }
}
