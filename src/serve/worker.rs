//! The inference worker: one thread that owns the model and answers jobs in
//! order. A board has one CPU/accelerator budget, so answers are serialised;
//! the bounded queue in front of it is what turns overload into `busy`
//! replies instead of an ever-growing backlog.

use crate::camera::{Camera, CameraError, Frame};
use crate::llm::{GenerateParams, TextStream};
use crate::mqtt::wire::{self, AnswerReply, ErrorCode, ErrorReply, Timings};
use crate::pipeline::FrameFeatures;
use crate::serve::systemd::Liveness;
use crate::{Pipeline, PipelineError};
use image::RgbImage;
use std::collections::HashMap;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc::UnboundedSender;

/// Where a reply goes: an MQTT topic and, for v5 requesters, their correlation data.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplyTo {
    pub topic: String,
    pub correlation: Option<Vec<u8>>,
}

/// One accepted request, ready to run.
#[derive(Debug, Clone)]
pub struct Job {
    /// Deduplication key (see `serve::dedupe`).
    pub key: String,
    pub id: String,
    pub camera: String,
    pub prompt: String,
    pub params: GenerateParams,
    pub stream: bool,
    pub reply: ReplyTo,
    pub enqueued: Instant,
}

/// What the worker reports back to the MQTT task.
#[derive(Debug)]
pub enum WorkerEvent {
    /// New text of a streamed answer.
    Chunk {
        reply: ReplyTo,
        chunk: wire::StreamChunk,
    },
    /// The job is finished: exactly one per job.
    Done {
        key: String,
        reply: ReplyTo,
        result: Result<AnswerReply, ErrorReply>,
    },
}

/// The sending side of the bounded queue.
#[derive(Clone)]
pub struct Queue {
    tx: SyncSender<Job>,
}

/// Why a job was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    Full,
    WorkerStopped,
}

impl Queue {
    /// Enqueues without waiting.
    pub fn try_push(&self, job: Job) -> Result<(), PushError> {
        self.tx.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => PushError::Full,
            TrySendError::Disconnected(_) => PushError::WorkerStopped,
        })
    }
}

/// Starts the worker thread. It stops when every [`Queue`] is dropped,
/// after finishing the job in hand.
pub fn spawn(
    pipeline: Pipeline,
    cameras: Arc<HashMap<String, Camera>>,
    model_name: String,
    queue_len: usize,
    events: UnboundedSender<WorkerEvent>,
    liveness: Arc<Liveness>,
) -> std::io::Result<(Queue, std::thread::JoinHandle<()>)> {
    let (tx, rx) = std::sync::mpsc::sync_channel(queue_len);
    let handle = std::thread::Builder::new()
        .name("inference".into())
        .spawn(move || {
            let mut w = Worker {
                pipeline,
                cameras,
                model_name,
                cache: HashMap::new(),
                events,
                liveness,
            };
            w.run(rx)
        })?;
    Ok((Queue { tx }, handle))
}

struct CachedFeatures {
    image: Arc<RgbImage>,
    frame: FrameFeatures,
}

struct Worker {
    pipeline: Pipeline,
    cameras: Arc<HashMap<String, Camera>>,
    model_name: String,
    /// Newest image features per camera: a second question about the same
    /// frame skips the vision encoder.
    cache: HashMap<String, CachedFeatures>,
    events: UnboundedSender<WorkerEvent>,
    liveness: Arc<Liveness>,
}

impl Worker {
    fn run(&mut self, rx: Receiver<Job>) {
        while let Ok(job) = rx.recv() {
            let span = tracing::info_span!("job", id = %job.id, camera = %job.camera);
            let _g = span.enter();
            let key = job.key.clone();
            let reply = job.reply.clone();
            self.liveness.progress();
            let result = self.answer(&job).map_err(|(code, message)| {
                tracing::debug!(?code, %message, "request failed");
                let mut e = ErrorReply::new(job.id.clone(), code, message);
                e.camera = Some(job.camera.clone());
                e
            });
            self.liveness.idle();
            if self
                .events
                .send(WorkerEvent::Done { key, reply, result })
                .is_err()
            {
                break;
            }
        }
        tracing::debug!("inference worker stopped");
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

    fn answer(&mut self, job: &Job) -> Result<AnswerReply, (ErrorCode, String)> {
        let queue_ms = job.enqueued.elapsed().as_secs_f64() * 1e3;
        let cam = self.cameras.get(&job.camera).ok_or_else(|| {
            (
                ErrorCode::UnknownCamera,
                format!("no camera named {:?}", job.camera),
            )
        })?;
        let prepared = self.pipeline.prepare(&job.prompt).map_err(classify)?;
        let frame = cam.latest().map_err(|e| match e {
            CameraError::Unavailable { .. } | CameraError::NoFrameYet { .. } => {
                (ErrorCode::CameraUnavailable, e.to_string())
            }
        })?;
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

        let mut streamer = job
            .stream
            .then(|| Streamer::new(job, self.pipeline.llm().detokenizer()));
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
        Ok(AnswerReply {
            id: job.id.clone(),
            camera: job.camera.clone(),
            answer: answer.text,
            tokens: answer.tokens.len(),
            stop: answer.stop,
            frame_time: wire::rfc3339(frame.captured),
            model: self.model_name.clone(),
            vision_cached: cached,
            timings: Timings {
                queue_ms,
                stages: answer.timings,
            },
        })
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

/// Publishes a streamed answer as numbered chunks (see [`TextStream`]).
struct Streamer {
    id: String,
    reply: ReplyTo,
    text: TextStream,
    seq: u32,
}

impl Streamer {
    fn new(job: &Job, detok: crate::llm::Detokenizer) -> Self {
        Self {
            id: job.id.clone(),
            reply: job.reply.clone(),
            text: TextStream::new(detok),
            seq: 0,
        }
    }

    fn emit(&mut self, text: String, events: &UnboundedSender<WorkerEvent>) {
        if text.is_empty() {
            return;
        }
        let _ = events.send(WorkerEvent::Chunk {
            reply: self.reply.clone(),
            chunk: wire::StreamChunk {
                id: self.id.clone(),
                seq: self.seq,
                text,
            },
        });
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
