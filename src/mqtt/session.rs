//! The daemon's MQTT session: one task owns the rumqttc event loop.
//!
//! Delivery contract: requests arrive at QoS 1 on a persistent session and
//! are acknowledged only once their answer (or error) has been acknowledged
//! by the broker. A request in flight when the daemon or the connection dies
//! is therefore redelivered, and [`Dedupe`] makes sure it is answered once.
//!
//! rumqttc reports the packet id of each outgoing QoS 1 publish as an
//! `Outgoing::Publish(pkid)` event, in the order the publishes were handed
//! to it. Publishes are only handed over from this task, so a FIFO of
//! "what to do once this one is acknowledged" lines up with those events;
//! retransmissions after a reconnect reuse a pkid we already track and are
//! recognised as such.

use super::wire::{self, ErrorCode, ErrorReply};
use super::Topics;
use crate::config::Limits;
use crate::llm::{GenerateParams, SamplerParams};
use crate::serve::dedupe::{Dedupe, Seen, StoredReply};
use crate::serve::worker::{Job, PushError, Queue, ReplyTo, WorkerEvent};
use rumqttc::v5::mqttbytes::v5::{Packet, Publish, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop};
use rumqttc::Outgoing;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedReceiver;

/// What to do when the broker acknowledges one of our publishes.
#[derive(Debug, Default)]
struct OnAck {
    /// Requests to acknowledge now that their reply is safe.
    requests: Vec<Publish>,
    /// Dedupe key to mark answered.
    answered: Option<String>,
}

struct OutMsg {
    topic: String,
    payload: Vec<u8>,
    retain: bool,
    correlation: Option<Vec<u8>>,
    on_ack: OnAck,
}

/// Static inputs of the session.
pub struct SessionConfig {
    pub topics: Topics,
    pub limits: Limits,
    pub default_camera: String,
    pub cameras: HashSet<String>,
    pub default_params: GenerateParams,
    /// The retained info message.
    pub info: String,
    /// How long to wait for the answer in hand when stopping.
    pub shutdown_grace: Duration,
    /// Readiness, status lines and watchdog (no-ops outside systemd).
    pub systemd: crate::serve::systemd::Systemd,
    /// The STATUS= line while connected.
    pub serving_status: String,
}

pub struct Session {
    client: AsyncClient,
    cfg: SessionConfig,
    queue: Option<Queue>,
    dedupe: Dedupe,
    /// Latest delivery of each request in progress, acked when answered.
    in_progress: HashMap<String, Option<Publish>>,
    /// Answers handed to rumqttc and not yet acknowledged by the broker, with
    /// redeliveries of their requests that arrived meanwhile (acked together).
    answers_in_flight: HashMap<String, Vec<Publish>>,
    outbox: VecDeque<OutMsg>,
    fifo: VecDeque<OnAck>,
    awaiting: HashMap<u16, OnAck>,
    auto_id: u64,
    ever_connected: bool,
    ready_sent: bool,
    outage_logged: bool,
}

/// Why the session loop ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    Shutdown,
}

impl Session {
    pub fn new(client: AsyncClient, cfg: SessionConfig, queue: Queue, dedupe: Dedupe) -> Self {
        Self {
            client,
            cfg,
            queue: Some(queue),
            dedupe,
            in_progress: HashMap::new(),
            answers_in_flight: HashMap::new(),
            outbox: VecDeque::new(),
            fifo: VecDeque::new(),
            awaiting: HashMap::new(),
            auto_id: 0,
            ever_connected: false,
            ready_sent: false,
            outage_logged: false,
        }
    }

    /// Runs until `shutdown` fires, then drains: stops taking requests,
    /// waits (bounded) for the answer in hand, publishes `offline`, disconnects.
    pub async fn run(
        mut self,
        mut eventloop: EventLoop,
        mut events: UnboundedReceiver<WorkerEvent>,
        shutdown: impl std::future::Future<Output = ()>,
        mut on_connected: impl FnMut(),
    ) -> Ended {
        let mut backoff = Duration::from_millis(250);
        tokio::pin!(shutdown);
        // Feed the watchdog at half its period (a long idle tick without one).
        let tick = self
            .cfg
            .systemd
            .watchdog
            .map(|w| w / 2)
            .unwrap_or(Duration::from_secs(3600));
        let mut watchdog = tokio::time::interval(tick);
        watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = watchdog.tick() => {
                    self.cfg.systemd.keep_alive();
                }
                ev = eventloop.poll() => match ev {
                    Ok(ev) => {
                        backoff = Duration::from_millis(250);
                        if self.handle_event(ev) {
                            on_connected();
                        }
                    }
                    Err(e) => {
                        if !self.outage_logged {
                            self.cfg.systemd.status(&format!("MQTT broker unreachable ({e}); retrying"));
                            if self.ever_connected {
                                tracing::warn!(error = %e, "MQTT connection lost; reconnecting with backoff");
                            } else {
                                tracing::warn!(error = %e, "cannot connect to the MQTT broker; retrying with backoff");
                            }
                            self.outage_logged = true;
                        } else {
                            tracing::debug!(error = %e, "MQTT reconnect failed");
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                    }
                },
                Some(ev) = events.recv() => self.handle_worker(ev),
                _ = &mut shutdown => break,
            }
            self.flush();
        }
        self.drain(eventloop, events).await;
        Ended::Shutdown
    }

    async fn drain(
        &mut self,
        mut eventloop: EventLoop,
        mut events: UnboundedReceiver<WorkerEvent>,
    ) {
        tracing::info!("stopping: no new requests; finishing the answer in hand");
        self.cfg.systemd.stopping();
        // Dropping the queue lets the worker thread end after its current job.
        self.queue = None;
        let deadline = Instant::now() + self.cfg.shutdown_grace;
        loop {
            let pending = !self.in_progress.is_empty()
                || !self.outbox.is_empty()
                || !self.awaiting.is_empty();
            if !pending || Instant::now() >= deadline {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            tokio::select! {
                ev = eventloop.poll() => {
                    if let Ok(ev) = ev { self.handle_event(ev); } else {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                Some(ev) = events.recv() => self.handle_worker(ev),
                _ = tokio::time::sleep(left) => {}
            }
            self.flush();
        }
        if !self.in_progress.is_empty() {
            tracing::warn!(
                unanswered = self.in_progress.len(),
                "stopping with requests unanswered; the broker redelivers them at the next start"
            );
        }
        let _ = self.client.try_publish(
            self.cfg.topics.status.clone(),
            QoS::AtLeastOnce,
            true,
            "offline",
        );
        let _ = self.client.try_disconnect();
        // Let the event loop send the last publishes and the DISCONNECT.
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until {
            match tokio::time::timeout(Duration::from_millis(500), eventloop.poll()).await {
                Ok(Ok(Event::Outgoing(Outgoing::Disconnect))) | Ok(Err(_)) | Err(_) => break,
                Ok(Ok(_)) => {}
            }
        }
    }

    /// Returns true when a connection was (re)established.
    fn handle_event(&mut self, ev: Event) -> bool {
        match ev {
            Event::Incoming(Packet::ConnAck(ack)) => {
                self.ever_connected = true;
                if self.outage_logged {
                    tracing::info!(session_present = ack.session_present, "MQTT reconnected");
                } else {
                    tracing::info!(session_present = ack.session_present, "MQTT connected");
                }
                self.outage_logged = false;
                if !ack.session_present {
                    // Publishes in flight were dropped with the old session;
                    // their requests went with it (the broker forgot them).
                    self.awaiting.clear();
                    self.fifo.clear();
                    self.answers_in_flight.clear();
                }
                let sub = self.cfg.topics.subscribe.clone();
                if let Err(e) = self.client.try_subscribe(sub.clone(), QoS::AtLeastOnce) {
                    tracing::error!(topic = %sub, error = ?e, "cannot subscribe");
                }
                false
            }
            Event::Incoming(Packet::SubAck(_)) => {
                // Online only once requests can actually reach us.
                self.announce();
                let status = self.cfg.serving_status.clone();
                if self.ready_sent {
                    self.cfg.systemd.status(&status);
                } else {
                    // READY: model loaded (before the session started) and
                    // the broker connection and subscription are up.
                    self.cfg.systemd.ready(&status);
                    self.ready_sent = true;
                }
                true
            }
            Event::Incoming(Packet::Publish(p)) => {
                self.on_request(p);
                false
            }
            Event::Incoming(Packet::PubAck(ack)) => {
                if let Some(done) = self.awaiting.remove(&ack.pkid) {
                    self.acked(done);
                }
                false
            }
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                if pkid != 0 && self.awaiting.contains_key(&pkid) {
                    return false; // retransmission of a publish we track
                }
                if let Some(on_ack) = self.fifo.pop_front() {
                    if pkid == 0 {
                        self.acked(on_ack);
                    } else {
                        self.awaiting.insert(pkid, on_ack);
                    }
                }
                false
            }
            _ => false,
        }
    }

    fn announce(&mut self) {
        let t = &self.cfg.topics;
        let (status, info) = (t.status.clone(), t.info.clone());
        // Info first: whoever sees `online` can read it.
        let info_payload = self.cfg.info.clone().into_bytes();
        self.push(info, info_payload, true, None, OnAck::default());
        self.push(status, b"online".to_vec(), true, None, OnAck::default());
    }

    fn acked(&mut self, done: OnAck) {
        let mut requests = done.requests;
        if let Some(key) = &done.answered {
            self.dedupe.delivered(key);
            requests.extend(self.answers_in_flight.remove(key).unwrap_or_default());
        }
        for p in &requests {
            if let Err(e) = self.client.try_ack(p) {
                tracing::warn!(error = ?e, "cannot acknowledge request");
            }
        }
    }

    /// Publishes an answer (or a stored one again) for `key`, acking
    /// `requests` once the broker has it.
    fn publish_answer(&mut self, key: String, reply: StoredReply, requests: Vec<Publish>) {
        self.answers_in_flight.entry(key.clone()).or_default();
        self.push(
            reply.topic,
            reply.payload.into_bytes(),
            false,
            reply.correlation,
            OnAck {
                requests,
                answered: Some(key),
            },
        );
    }

    fn push(
        &mut self,
        topic: String,
        payload: Vec<u8>,
        retain: bool,
        correlation: Option<Vec<u8>>,
        on_ack: OnAck,
    ) {
        self.outbox.push_back(OutMsg {
            topic,
            payload,
            retain,
            correlation,
            on_ack,
        });
    }

    /// Hands queued publishes to rumqttc while its request channel has room.
    fn flush(&mut self) {
        while let Some(m) = self.outbox.front() {
            // Properties only where they carry something: the correlation
            // data of an MQTT 5 requester. (rumqttd's 3.1.1 listener panics
            // forwarding a publish with properties to a 3.1.1 subscriber.)
            let r = match &m.correlation {
                Some(c) => self.client.try_publish_with_properties(
                    m.topic.clone(),
                    QoS::AtLeastOnce,
                    m.retain,
                    m.payload.clone(),
                    PublishProperties {
                        correlation_data: Some(c.clone().into()),
                        ..Default::default()
                    },
                ),
                None => self.client.try_publish(
                    m.topic.clone(),
                    QoS::AtLeastOnce,
                    m.retain,
                    m.payload.clone(),
                ),
            };
            if r.is_err() {
                break; // channel full; retried after the next event
            }
            if let Some(m) = self.outbox.pop_front() {
                self.fifo.push_back(m.on_ack);
            }
        }
    }

    fn reply_json<T: serde::Serialize>(&mut self, reply: &ReplyTo, body: &T, on_ack: OnAck) {
        match serde_json::to_vec(body) {
            Ok(payload) => self.push(
                reply.topic.clone(),
                payload,
                false,
                reply.correlation.clone(),
                on_ack,
            ),
            Err(e) => tracing::error!(error = %e, "cannot serialise reply"),
        }
    }

    fn handle_worker(&mut self, ev: WorkerEvent) {
        match ev {
            WorkerEvent::Chunk { reply, chunk } => {
                self.reply_json(&reply, &chunk, OnAck::default())
            }
            WorkerEvent::Done { key, reply, result } => {
                let request = self.in_progress.remove(&key).flatten();
                let payload = match &result {
                    Ok(answer) => {
                        tracing::debug!(id = %answer.id, tokens = answer.tokens, total_ms = answer.timings.stages.total_ms as u64, "answered");
                        serde_json::to_string(answer)
                    }
                    Err(err) => serde_json::to_string(err),
                };
                let payload = match payload {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot serialise reply");
                        return;
                    }
                };
                let stored = StoredReply {
                    topic: reply.topic,
                    correlation: reply.correlation,
                    payload,
                };
                // Write-ahead: the reply is on record before it can reach anyone.
                self.dedupe.answered(&key, stored.clone());
                self.publish_answer(key, stored, request.into_iter().collect());
            }
        }
    }

    fn next_id(&mut self) -> String {
        self.auto_id += 1;
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        format!("auto-{ms}-{}", self.auto_id)
    }

    /// Intake: validate, deduplicate, enqueue or reply with an error.
    fn on_request(&mut self, p: Publish) {
        let props = p.properties.clone().unwrap_or_default();
        let v5_reply = props
            .response_topic
            .clone()
            .filter(|t| valid_reply_topic(t));
        let correlation = props.correlation_data.clone().map(|b| b.to_vec());

        // Error replies before an id is known go to the answer topic of a
        // generated id (or the v5 response topic).
        if p.payload.len() > self.cfg.limits.max_payload_bytes {
            let id = self.next_id();
            let reply = self.reply_to(v5_reply, None, correlation, &id);
            let msg = format!(
                "payload of {} bytes exceeds limits.max_payload_bytes = {}",
                p.payload.len(),
                self.cfg.limits.max_payload_bytes
            );
            self.refuse(p, &reply, &id, None, ErrorCode::LimitExceeded, msg);
            return;
        }
        let req = match wire::parse_request(&p.payload) {
            Ok(r) => r,
            Err(e) => {
                let id = e.id.clone().unwrap_or_else(|| self.next_id());
                let reply = self.reply_to(v5_reply, None, correlation, &id);
                self.refuse(p, &reply, &id, None, e.code, e.message);
                return;
            }
        };

        let key = match &req.id {
            Some(id) => format!("id:{id}"),
            None => {
                let mut h = Sha256::new();
                h.update(&p.payload);
                h.update(correlation.as_deref().unwrap_or_default());
                h.update(v5_reply.as_deref().unwrap_or_default());
                let hex: String = h.finalize()[..12]
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                format!("h:{hex}")
            }
        };
        let seen = self.dedupe.check(&key);
        let key = match (seen, req.id.is_some(), p.dup) {
            (Seen::InProgress, _, _) if req.id.is_some() || p.dup => {
                // A redelivery of a request we are answering: ack this
                // delivery when the answer is out.
                tracing::debug!(key, "redelivered request already in progress");
                self.in_progress.insert(key, Some(p));
                return;
            }
            (Seen::Answered { delivered }, has_id, dup) if has_id || dup => {
                if let Some(waiting) = self.answers_in_flight.get_mut(&key) {
                    // Its answer is on the way: ack with it.
                    waiting.push(p);
                } else if delivered {
                    tracing::info!(
                        key,
                        "request already answered; acknowledging the redelivery"
                    );
                    if let Err(e) = self.client.try_ack(&p) {
                        tracing::warn!(error = ?e, "cannot acknowledge request");
                    }
                } else if let Some(stored) = self.dedupe.reply(&key).cloned() {
                    // Answered before a crash, not confirmed by the broker:
                    // publish the same reply again rather than a new answer.
                    tracing::info!(
                        key,
                        "republishing the stored answer of a redelivered request"
                    );
                    self.publish_answer(key, stored, vec![p]);
                }
                return;
            }
            // The same plain question again (not a redelivery): a new request.
            (Seen::InProgress, false, false) => {
                let n = self.next_id();
                format!("{key}#{n}")
            }
            _ => key,
        };

        let id = req.id.clone().unwrap_or_else(|| self.next_id());
        let camera = req
            .camera
            .clone()
            .unwrap_or_else(|| self.cfg.default_camera.clone());
        let reply = self.reply_to(v5_reply, req.response_topic.clone(), correlation, &id);
        if let Err((code, msg)) = self.validate(&req, &camera) {
            self.refuse(p, &reply, &id, Some(camera), code, msg);
            return;
        }
        let mut params = self.cfg.default_params;
        if let Some(n) = req.max_tokens {
            params.max_new_tokens = n;
        }
        if let Some(t) = req.temperature {
            params.sampling = Some(SamplerParams {
                temperature: t,
                top_k: req.top_k.unwrap_or(0),
                top_p: req.top_p.unwrap_or(1.0),
                repeat_penalty: 1.0,
                seed: req.seed.unwrap_or(0),
            });
        }
        let job = Job {
            key: key.clone(),
            id: id.clone(),
            camera: camera.clone(),
            prompt: req.prompt,
            params,
            stream: req.stream,
            reply: reply.clone(),
            enqueued: Instant::now(),
        };
        let Some(queue) = &self.queue else {
            // Stopping: leave it unacknowledged, the broker redelivers it later.
            return;
        };
        match queue.try_push(job) {
            Ok(()) => {
                tracing::debug!(id, camera, "request queued");
                self.dedupe.start(&key);
                self.in_progress.insert(key, Some(p));
            }
            Err(PushError::Full) => {
                let msg = format!(
                    "the queue is full ({} waiting); retry later",
                    self.cfg.limits.queue
                );
                self.refuse(p, &reply, &id, Some(camera), ErrorCode::Busy, msg);
            }
            Err(PushError::WorkerStopped) => {
                tracing::error!("the inference worker has stopped");
                self.refuse(
                    p,
                    &reply,
                    &id,
                    Some(camera),
                    ErrorCode::Internal,
                    "the inference worker has stopped".into(),
                );
            }
        }
    }

    fn validate(&self, req: &wire::Request, camera: &str) -> Result<(), (ErrorCode, String)> {
        let l = &self.cfg.limits;
        if req.prompt.trim().is_empty() {
            return Err((ErrorCode::EmptyPrompt, "the prompt is empty".into()));
        }
        let chars = req.prompt.chars().count();
        if chars > l.max_prompt_chars {
            return Err((
                ErrorCode::PromptTooLong,
                format!(
                    "the prompt has {chars} characters; limits.max_prompt_chars is {}",
                    l.max_prompt_chars
                ),
            ));
        }
        if let Some(n) = req.max_tokens {
            if n == 0 || n > l.max_tokens {
                return Err((
                    ErrorCode::LimitExceeded,
                    format!(
                        "max_tokens must be 1..={} (limits.max_tokens), got {n}",
                        l.max_tokens
                    ),
                ));
            }
        }
        if let Some(t) = req.temperature {
            if !(t > 0.0 && t.is_finite() && t <= 10.0) {
                return Err((
                    ErrorCode::LimitExceeded,
                    format!("temperature must be in (0, 10], got {t}"),
                ));
            }
        }
        if let Some(p) = req.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err((
                    ErrorCode::LimitExceeded,
                    format!("top_p must be in (0, 1], got {p}"),
                ));
            }
        }
        if let Some(k) = req.top_k {
            if k < 0 {
                return Err((
                    ErrorCode::LimitExceeded,
                    format!("top_k must be >= 0, got {k}"),
                ));
            }
        }
        if !self.cfg.cameras.contains(camera) {
            let mut known: Vec<_> = self.cfg.cameras.iter().map(String::as_str).collect();
            known.sort_unstable();
            return Err((
                ErrorCode::UnknownCamera,
                format!("no camera named {camera:?} (cameras: {})", known.join(", ")),
            ));
        }
        Ok(())
    }

    fn reply_to(
        &self,
        v5: Option<String>,
        json: Option<String>,
        correlation: Option<Vec<u8>>,
        id: &str,
    ) -> ReplyTo {
        match v5.or(json.filter(|t| valid_reply_topic(t))) {
            Some(topic) => ReplyTo { topic, correlation },
            None => ReplyTo {
                topic: self.cfg.topics.answer(id),
                correlation,
            },
        }
    }

    fn refuse(
        &mut self,
        p: Publish,
        reply: &ReplyTo,
        id: &str,
        camera: Option<String>,
        code: ErrorCode,
        message: String,
    ) {
        tracing::debug!(id, ?code, %message, "request refused");
        let mut e = ErrorReply::new(id, code, message);
        e.camera = camera;
        self.reply_json(
            reply,
            &e,
            OnAck {
                requests: vec![p],
                answered: None,
            },
        );
    }
}

/// A topic we may publish to: not empty, no wildcards, not a `$` system topic.
fn valid_reply_topic(t: &str) -> bool {
    !t.is_empty() && !t.contains(['+', '#', '\0']) && !t.starts_with('$')
}
