//! The queue in front of the inference worker: two lanes (on-demand
//! requests, bounded; watch runs, one per watch) served alternately, a
//! [`Queue`] whose drop closes it, [`Submitter`]s that push without keeping
//! it open (the HTTP API), and the worker's blocking [`Intake`].

use crate::llm::GenerateParams;
use crate::mqtt::wire::{AnswerReply, ErrorReply, Trigger};
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;
use tokio::sync::mpsc::UnboundedSender;

/// Where a reply goes: an MQTT topic and, for v5 requesters, their correlation data.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplyTo {
    pub topic: String,
    pub correlation: Option<Vec<u8>>,
}

/// Who gets the result of a job.
#[derive(Debug, Clone)]
pub enum Origin {
    /// An MQTT request: replied to, deduplicated by `key`.
    Request {
        /// Deduplication key (see `serve::dedupe`).
        key: String,
        reply: ReplyTo,
        stream: bool,
    },
    /// A standing question of the config.
    Watch { name: String, trigger: Trigger },
    /// An HTTP API request: its handler waits on `reply` (the text as it is
    /// generated when `stream`, then the result, forwarded by the session
    /// once it has counted it).
    Http { reply: HttpReply, stream: bool },
}

/// What the handler of an HTTP request hears of its job.
// Moved once through a channel, as [`WorkerEvent`]: boxing would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum HttpEvent {
    /// New text of the answer (streamed requests only).
    Text(String),
    /// The job is finished: exactly one per job.
    Done(Result<AnswerReply, ErrorReply>),
}

/// The channel an HTTP request's handler listens on.
pub type HttpReply = UnboundedSender<HttpEvent>;

/// One accepted job, ready to run.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: String,
    /// Empty when the request carried its own picture (`image`).
    pub camera: String,
    /// The request's picture, still encoded (decoded here, on the worker).
    pub image: Option<Arc<[u8]>>,
    pub prompt: String,
    pub params: GenerateParams,
    /// Also encode the answered frame as JPEG.
    pub snapshot: bool,
    pub origin: Origin,
    pub enqueued: Instant,
}

/// Why a job was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    Full,
    WorkerStopped,
}

/// The queue in front of the worker, in two lanes served alternately:
/// on-demand requests (bounded; overflow gets `busy`) and watches (at most
/// one pending run per watch, coalesced by the scheduler). Alternating keeps
/// a burst of requests from starving the watches and a dozen watches from
/// starving requests.
#[derive(Default)]
struct Lanes {
    requests: VecDeque<Job>,
    watches: VecDeque<Job>,
    capacity: usize,
    /// The last job taken was a request: a waiting watch goes next.
    last_was_request: bool,
    closed: bool,
}

impl Lanes {
    fn pop(&mut self) -> Option<Job> {
        let watch_first = self.last_was_request;
        let job = if watch_first {
            self.watches
                .pop_front()
                .or_else(|| self.requests.pop_front())
        } else {
            self.requests
                .pop_front()
                .or_else(|| self.watches.pop_front())
        };
        if let Some(j) = &job {
            self.last_was_request = !matches!(j.origin, Origin::Watch { .. });
        }
        job
    }
}

type Shared = Arc<(Mutex<Lanes>, Condvar)>;

/// The producing side of the queue, owned by the MQTT task. Dropping it
/// closes the queue: the worker answers the requests already queued and stops.
pub struct Queue {
    inner: Submitter,
}

/// Another way into the same queue (the HTTP API's): it does not keep the
/// queue open; once the [`Queue`] is dropped every push is `WorkerStopped`.
#[derive(Clone)]
pub struct Submitter {
    shared: Shared,
}

impl Queue {
    fn lanes(&self) -> std::sync::MutexGuard<'_, Lanes> {
        self.inner.lanes()
    }

    /// Enqueues without waiting (see [`Submitter::try_push`]).
    pub fn try_push(&self, job: Job) -> Result<(), PushError> {
        self.inner.try_push(job)
    }

    /// A handle for pushing from elsewhere (the HTTP API).
    pub fn submitter(&self) -> Submitter {
        self.inner.clone()
    }

    /// Changes the request lane's capacity (config reload).
    pub fn set_capacity(&self, capacity: usize) {
        self.lanes().capacity = capacity.max(1);
    }

    /// Requests and watch runs waiting (not counting the one in hand).
    pub fn depth(&self) -> (usize, usize) {
        self.inner.depth()
    }
}

impl Submitter {
    fn lanes(&self) -> std::sync::MutexGuard<'_, Lanes> {
        self.shared.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Enqueues without waiting. Requests (MQTT and HTTP alike) beyond the
    /// capacity are refused; watch jobs always fit (the scheduler keeps one
    /// per watch).
    pub fn try_push(&self, job: Job) -> Result<(), PushError> {
        let mut l = self.lanes();
        if l.closed {
            return Err(PushError::WorkerStopped);
        }
        match job.origin {
            Origin::Request { .. } | Origin::Http { .. } => {
                if l.requests.len() >= l.capacity {
                    return Err(PushError::Full);
                }
                l.requests.push_back(job);
            }
            Origin::Watch { .. } => l.watches.push_back(job),
        }
        drop(l);
        self.shared.1.notify_one();
        Ok(())
    }

    /// Requests and watch runs waiting (not counting the one in hand).
    pub fn depth(&self) -> (usize, usize) {
        let l = self.lanes();
        (l.requests.len(), l.watches.len())
    }

    /// False once the queue is closed (stopping).
    pub fn is_open(&self) -> bool {
        !self.lanes().closed
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        let mut l = self.lanes();
        l.closed = true;
        // Watch runs are not owed to anyone.
        l.watches.clear();
        drop(l);
        self.inner.shared.1.notify_all();
    }
}

/// The worker's side: blocks for the next job; None once closed and empty.
pub(crate) struct Intake {
    shared: Shared,
}

impl Intake {
    pub(crate) fn next(&self) -> Option<Job> {
        let (lock, cv) = &*self.shared;
        let mut l = lock.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(j) = l.pop() {
                return Some(j);
            }
            if l.closed {
                return None;
            }
            l = cv.wait(l).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// A new queue: the producing side and the worker's side.
pub(crate) fn new(capacity: usize) -> (Queue, Intake) {
    let shared: Shared = Arc::new((
        Mutex::new(Lanes {
            capacity: capacity.max(1),
            ..Default::default()
        }),
        Condvar::new(),
    ));
    let intake = Intake {
        shared: shared.clone(),
    };
    (
        Queue {
            inner: Submitter { shared },
        },
        intake,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(watch: bool, n: usize) -> Job {
        Job {
            id: format!("{}{n}", if watch { "w" } else { "r" }),
            camera: "c".into(),
            image: None,
            prompt: "p".into(),
            params: GenerateParams {
                max_new_tokens: 1,
                sampling: None,
                constraint: None,
            },
            snapshot: false,
            origin: if watch {
                Origin::Watch {
                    name: format!("w{n}"),
                    trigger: Trigger::Schedule,
                }
            } else {
                Origin::Request {
                    key: format!("k{n}"),
                    reply: ReplyTo {
                        topic: "t".into(),
                        correlation: None,
                    },
                    stream: false,
                }
            },
            enqueued: Instant::now(),
        }
    }

    #[test]
    fn lanes_alternate_and_requests_are_bounded() {
        let shared: Shared = Arc::new((
            Mutex::new(Lanes {
                capacity: 3,
                ..Default::default()
            }),
            Condvar::new(),
        ));
        let q = Queue {
            inner: Submitter {
                shared: shared.clone(),
            },
        };
        for i in 0..3 {
            q.try_push(job(false, i)).unwrap();
        }
        assert_eq!(q.try_push(job(false, 9)), Err(PushError::Full));
        for i in 0..5 {
            q.try_push(job(true, i)).unwrap(); // watches are not bounded by `capacity`
        }
        assert_eq!(q.depth(), (3, 5));
        let intake = Intake { shared };
        let order: Vec<String> = (0..6).map(|_| intake.next().unwrap().id).collect();
        assert_eq!(order, ["r0", "w0", "r1", "w1", "r2", "w2"]);
        // Closing drops the watch runs, keeps the requests owed an answer.
        q.try_push(job(false, 3)).unwrap();
        drop(q);
        assert_eq!(intake.next().unwrap().id, "r3");
        assert!(intake.next().is_none());
    }
}
