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

use crate::config::{Config, SnapshotConfig};
use crate::llm::GenerateParams;
use crate::mqtt::ledger::{puback_outcome, Ledger, Outcome};
use crate::mqtt::wire::{self, ErrorCode, ErrorReply, SnapshotInfo};
use crate::mqtt::Topics;
use crate::serve::cameras::Cameras;
use crate::serve::dedupe::{Dedupe, Seen, StoredReply};
use crate::serve::homeassistant::Discovery;
use crate::serve::intake;
use crate::serve::stats::Stats;
use crate::serve::watch::Watches;
use crate::serve::worker::{Job, Origin, PushError, Queue, ReplyTo, Snapshot, WorkerEvent};
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, Publish, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop};
use rumqttc::Outgoing;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedReceiver;

/// A request as the broker delivered it, in the broker session it came in:
/// its packet id means something only in that session.
#[derive(Debug)]
struct Delivery {
    publish: Publish,
    session: u64,
}

/// What to do when the broker acknowledges one of our publishes.
#[derive(Debug, Default)]
struct OnAck {
    /// Requests to acknowledge now that their reply is safe.
    requests: Vec<Delivery>,
    /// Dedupe key to mark answered.
    answered: Option<String>,
    /// For a reply: the reply itself (published again if a lost broker
    /// session dropped it) and, when it went to a client-named topic, the
    /// default answer topic and id for an error if the broker refuses it.
    reply: Option<StoredReply>,
    fallback: Option<(String, String)>,
}

struct OutMsg {
    topic: String,
    payload: Vec<u8>,
    retain: bool,
    correlation: Option<Vec<u8>>,
    on_ack: OnAck,
}

/// Inputs of the session.
pub struct SessionConfig {
    pub topics: Topics,
    /// The running config (SIGHUP replaces the parts that apply live).
    pub config: Config,
    /// Re-read on SIGHUP; None: zero-config, nothing to reload.
    pub config_path: Option<PathBuf>,
    pub cameras: Arc<Cameras>,
    /// Shared with the worker, which encodes the snapshots.
    pub snapshot: Arc<Mutex<SnapshotConfig>>,
    pub device_id: String,
    pub model_name: String,
    pub default_params: GenerateParams,
    /// Builds the retained info message from the running config.
    pub info: Box<dyn Fn(&Config) -> String + Send>,
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
    /// Every delivery of each request in progress, acked when answered.
    in_progress: HashMap<String, Vec<Delivery>>,
    /// Answers handed to rumqttc and not yet acknowledged by the broker, with
    /// redeliveries of their requests that arrived meanwhile (acked together).
    answers_in_flight: HashMap<String, Vec<Delivery>>,
    outbox: VecDeque<OutMsg>,
    ledger: Ledger<OnAck>,
    /// Topics the broker refused a publish on (each logged once).
    refused_topics: BTreeSet<String>,
    auto_id: u64,
    ever_connected: bool,
    /// Between a CONNACK and the next connection error.
    connected: bool,
    ready_sent: bool,
    outage_logged: bool,
    /// When to subscribe again after the broker refused the request subscription.
    subscribe_retry: Option<Instant>,
    watches: Watches,
    discovery: Option<Discovery>,
    stats: Stats,
    next_stats: Option<Instant>,
}

/// Why the session loop ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    Shutdown,
}

impl Session {
    pub fn new(client: AsyncClient, cfg: SessionConfig, queue: Queue, dedupe: Dedupe) -> Self {
        let watches = Watches::new(&cfg.config, cfg.model_name.clone(), Instant::now());
        let discovery = discovery_of(&cfg);
        let mut s = Self {
            watches,
            discovery,
            stats: Stats::new(),
            next_stats: None,
            client,
            cfg,
            queue: Some(queue),
            dedupe,
            in_progress: HashMap::new(),
            answers_in_flight: HashMap::new(),
            outbox: VecDeque::new(),
            ledger: Ledger::default(),
            refused_topics: BTreeSet::new(),
            auto_id: 0,
            ever_connected: false,
            connected: false,
            ready_sent: false,
            outage_logged: false,
            subscribe_retry: None,
        };
        s.serving_status_update();
        s
    }

    /// Runs until `shutdown` fires, then drains: stops taking requests,
    /// waits (bounded) for the answer in hand, publishes `offline`, disconnects.
    pub async fn run(
        mut self,
        mut eventloop: EventLoop,
        mut events: UnboundedReceiver<WorkerEvent>,
        shutdown: impl std::future::Future<Output = ()>,
        mut reload: UnboundedReceiver<()>,
        mut on_connected: impl FnMut(),
    ) -> Ended {
        let mut backoff = Duration::from_millis(250);
        // While the broker is away the loop waits out the backoff here, as
        // one more branch of the select: signals, reloads and worker results
        // are still handled at once (a sleep inside a branch would hold
        // SIGTERM for up to 30 s).
        let retry = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(retry);
        let mut waiting = false;
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
        // Watch schedules and the stats message.
        let mut timers = tokio::time::interval(Duration::from_millis(200));
        timers.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = watchdog.tick() => {
                    self.cfg.systemd.keep_alive();
                }
                _ = timers.tick() => self.timers(),
                Some(()) = reload.recv() => self.reload(),
                () = &mut retry, if waiting => waiting = false,
                ev = eventloop.poll(), if !waiting => match ev {
                    Ok(ev) => {
                        backoff = Duration::from_millis(250);
                        if self.handle_event(ev) {
                            on_connected();
                        }
                    }
                    Err(e) => {
                        self.connection_failed(&e);
                        retry.as_mut().reset(tokio::time::Instant::now() + backoff);
                        waiting = true;
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

    fn connection_failed(&mut self, e: &rumqttc::v5::ConnectionError) {
        self.connected = false;
        self.ledger.connection_lost();
        if !self.outage_logged {
            self.cfg
                .systemd
                .status(&format!("MQTT broker unreachable ({e}); retrying"));
            if self.ever_connected {
                tracing::warn!(error = %e, "MQTT connection lost; reconnecting with backoff");
            } else {
                tracing::warn!(error = %e, "cannot connect to the MQTT broker; retrying with backoff");
            }
            self.outage_logged = true;
        } else {
            tracing::debug!(error = %e, "MQTT reconnect failed");
        }
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
            // Answers the worker still owes, and publishes the broker has not
            // confirmed. While the broker is away only the first are worth
            // waiting for: they are stored (write-ahead) and republished when
            // the broker redelivers their requests after the restart.
            let owed = !self.in_progress.is_empty();
            let unconfirmed = !self.outbox.is_empty() || self.ledger.unconfirmed() > 0;
            let pending = owed || (self.connected && unconfirmed);
            if !pending || Instant::now() >= deadline {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            tokio::select! {
                ev = eventloop.poll(), if self.connected || owed => {
                    match ev {
                        Ok(ev) => { self.handle_event(ev); }
                        Err(e) => {
                            self.connection_failed(&e);
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
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
                self.connected = true;
                if self.outage_logged {
                    tracing::info!(session_present = ack.session_present, "MQTT reconnected");
                } else {
                    tracing::info!(session_present = ack.session_present, "MQTT connected");
                }
                self.outage_logged = false;
                let dropped = self.ledger.connected(ack.session_present);
                // A first connection without a session is the normal start.
                if !ack.session_present && self.ledger.session() > 1 {
                    self.session_lost(dropped);
                }
                self.subscribe();
                false
            }
            Event::Incoming(Packet::SubAck(ack)) => {
                // Online only once requests can actually reach us.
                if let Some(refusal) = ack.return_codes.first().filter(|c| {
                    !matches!(
                        c,
                        rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::Success(_)
                    )
                }) {
                    self.subscription_refused(&format!("{refusal:?}"));
                    return false;
                }
                for (code, what) in ack
                    .return_codes
                    .iter()
                    .zip([
                        "watch states",
                        "Home Assistant configs",
                        "Home Assistant status",
                    ])
                    .skip(1)
                {
                    if !matches!(
                        code,
                        rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::Success(_)
                    ) {
                        tracing::warn!(subscription = what, reason = ?code, "the broker refused a subscription");
                    }
                }
                self.subscribe_retry = None;
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
                self.on_publish(p);
                false
            }
            Event::Incoming(Packet::PubAck(ack)) => {
                if let Some(done) = self.ledger.puback(ack.pkid) {
                    match puback_outcome(ack.reason) {
                        Outcome::Delivered => self.acked(done),
                        Outcome::Refused => self.refused(done, ack.reason),
                    }
                }
                false
            }
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                if let Some(done) = self.ledger.outgoing(pkid) {
                    self.acked(done);
                }
                false
            }
            _ => false,
        }
    }

    /// Requests (QoS 1, acknowledged with their answer), plus QoS 0 feeds:
    /// the retained watch states (baselines after a restart, and leftovers
    /// of removed watches) and Home Assistant's birth message and our
    /// retained discovery configs (leftovers are cleared).
    fn subscribe(&mut self) {
        let t = &self.cfg.topics;
        let mut filters = vec![
            Filter::new(t.subscribe.clone(), QoS::AtLeastOnce),
            Filter::new(t.watch_filter(), QoS::AtMostOnce),
        ];
        let ha = self.ha_topics();
        filters.push(Filter::new(ha.config_filter(), QoS::AtMostOnce));
        if self.discovery.is_some() {
            filters.push(Filter::new(ha.birth_topic(), QoS::AtMostOnce));
        }
        if let Err(e) = self.client.try_subscribe_many(filters) {
            tracing::error!(error = ?e, "cannot subscribe");
        }
    }

    fn announce(&mut self) {
        let t = &self.cfg.topics;
        let (status, info) = (t.status.clone(), t.info.clone());
        // Info first: whoever sees `online` can read it.
        let info_payload = (self.cfg.info)(&self.cfg.config).into_bytes();
        self.push(info, info_payload, true, None, OnAck::default());
        self.push(status, b"online".to_vec(), true, None, OnAck::default());
        self.announce_discovery();
        self.next_stats = Some(Instant::now());
    }

    fn announce_discovery(&mut self) {
        let Some(d) = &self.discovery else { return };
        let entities = d.all(self.watches.configs(), &self.cfg.topics);
        for e in entities {
            self.push(
                e.topic,
                e.payload.to_string().into_bytes(),
                true,
                None,
                OnAck::default(),
            );
        }
    }

    /// Topics of the discovery configs the running config wants.
    fn wanted_discovery(&self) -> BTreeSet<String> {
        match &self.discovery {
            Some(d) => d
                .all(self.watches.configs(), &self.cfg.topics)
                .into_iter()
                .map(|e| e.topic)
                .collect(),
            None => BTreeSet::new(),
        }
    }

    /// Home Assistant's topics for the running config, whether discovery is
    /// on or not (with it off, leftover configs are still cleared).
    fn ha_topics(&self) -> Discovery {
        let ha = &self.cfg.config.homeassistant;
        Discovery::new(&ha.prefix, &self.cfg.device_id, &self.cfg.model_name)
    }

    /// Removes a retained message (empty retained payload).
    fn clear_retained(&mut self, topic: String) {
        self.push(topic, Vec::new(), true, None, OnAck::default());
    }

    /// Routes an incoming publish: requests, or one of the QoS 0 feeds.
    fn on_publish(&mut self, p: Publish) {
        let topic = String::from_utf8_lossy(&p.topic).into_owned();
        let ha_prefix = &self.cfg.config.homeassistant.prefix;
        if topic.starts_with(ha_prefix.as_str()) && topic != self.cfg.topics.ask {
            let ha = self.ha_topics();
            if topic == ha.birth_topic() {
                if self.discovery.is_some() && &p.payload[..] == b"online" {
                    tracing::info!("Home Assistant is online: announcing the entities again");
                    self.announce_discovery();
                }
                return;
            }
            if ha.owns(&topic) {
                if !p.payload.is_empty() && !self.wanted_discovery().contains(&topic) {
                    tracing::info!(
                        topic,
                        "removing a Home Assistant entity the config no longer has"
                    );
                    self.clear_retained(topic);
                }
                return;
            }
        }
        if let Some(name) = self.cfg.topics.watch_name(&topic) {
            let name = name.to_string();
            if p.retain && !p.payload.is_empty() {
                if self.watches.config(&name).is_none() {
                    tracing::info!(
                        watch = name,
                        "clearing the retained state of a removed watch"
                    );
                    self.clear_retained(topic);
                    self.clear_retained(self.cfg.topics.watch_snapshot(&name));
                } else if let Ok(state) = serde_json::from_slice::<wire::WatchState>(&p.payload) {
                    self.watches.recall(&name, &state);
                }
            }
            return;
        }
        self.on_request(p);
    }

    /// Every 200 ms: queue the watches that are due, publish stats when due.
    fn timers(&mut self) {
        let now = Instant::now();
        if self.connected && self.subscribe_retry.is_some_and(|t| now >= t) {
            self.subscribe_retry = None;
            self.subscribe();
        }
        let connected = self.ever_connected && !self.outage_logged;
        if connected {
            if let Some(queue) = &self.queue {
                let mut auto_id = self.auto_id;
                let jobs =
                    self.watches
                        .due(now, &self.cfg.cameras, self.cfg.default_params, || {
                            auto_id += 1;
                            auto_id.to_string()
                        });
                self.auto_id = auto_id;
                let mut refused = Vec::new();
                for job in jobs {
                    if let Origin::Watch { name, .. } = &job.origin {
                        let name = name.clone();
                        if queue.try_push(job).is_err() {
                            refused.push(name);
                        }
                    }
                }
                for name in refused {
                    self.watches.not_queued(&name);
                }
            }
        }
        let interval = self.cfg.config.stats.interval;
        if connected && !interval.is_zero() && self.next_stats.is_some_and(|t| now >= t) {
            self.next_stats = Some(now + interval);
            let depth = self.queue.as_ref().map(|q| q.depth()).unwrap_or_default();
            let busy = self.cfg.systemd.liveness.stalled_for().is_some();
            let mut report = self.stats.report(depth, busy);
            report["cameras"] = serde_json::to_value(
                self.cfg
                    .cameras
                    .names()
                    .iter()
                    .filter_map(|n| self.cfg.cameras.get(n).map(|c| c.status()))
                    .collect::<Vec<_>>(),
            )
            .unwrap_or_default();
            let topic = self.cfg.topics.stats.clone();
            self.push(
                topic,
                report.to_string().into_bytes(),
                true,
                None,
                OnAck::default(),
            );
        }
    }

    /// SIGHUP: re-reads the config file and applies what can change live
    /// (cameras, watches, limits, snapshots, stats, Home Assistant). The
    /// model, threads, MQTT connection, device id and state dir stay as they
    /// are (a restart applies them); an invalid file changes nothing.
    fn reload(&mut self) {
        let Some(path) = self.cfg.config_path.clone() else {
            tracing::info!("SIGHUP: running without --config, nothing to reload");
            return;
        };
        self.cfg.systemd.reloading();
        let new = match Config::load(&path) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "config reload failed; keeping the running config");
                self.cfg
                    .systemd
                    .ready(&format!("reload failed ({e}); {}", self.cfg.serving_status));
                return;
            }
        };
        let old = self.cfg.config.clone();
        let mut effective = new.clone();
        let mut restart = Vec::new();
        if new.device_id != old.device_id {
            restart.push("device_id");
            effective.device_id = old.device_id.clone();
        }
        if new.model != old.model
            || new.threads != old.threads
            || new.n_ctx != old.n_ctx
            || new.gpu_layers != old.gpu_layers
            || new.llm_repack != old.llm_repack
            || new.llm_mmap != old.llm_mmap
        {
            restart.push("model/threads/n_ctx/gpu_layers/llm_repack/llm_mmap");
            effective.llm_repack = old.llm_repack;
            effective.llm_mmap = old.llm_mmap;
            effective.model = old.model.clone();
            effective.threads = old.threads;
            effective.n_ctx = old.n_ctx;
            effective.gpu_layers = old.gpu_layers;
        }
        if new.mqtt != old.mqtt {
            restart.push("mqtt");
            effective.mqtt = old.mqtt.clone();
        }
        if new.state_dir != old.state_dir
            || new.limits.remember_answered != old.limits.remember_answered
        {
            restart.push("state_dir/limits.remember_answered");
            effective.state_dir = old.state_dir.clone();
            effective.limits.remember_answered = old.limits.remember_answered;
        }
        if !restart.is_empty() {
            tracing::warn!(keys = ?restart, "these settings changed but apply only after a restart (systemctl restart blipd)");
        }
        let cameras = self.cfg.cameras.apply(&effective.cameras);
        if let Some(q) = &self.queue {
            q.set_capacity(effective.limits.queue);
        }
        *self.cfg.snapshot.lock().unwrap_or_else(|p| p.into_inner()) = effective.snapshot.clone();
        let old_entities = self.wanted_discovery();
        let watches = self.watches.reconfigure(&effective, Instant::now());
        for name in &watches.removed {
            self.clear_retained(self.cfg.topics.watch(name));
            self.clear_retained(self.cfg.topics.watch_snapshot(name));
        }
        if effective.stats.interval != old.stats.interval {
            self.next_stats = Some(Instant::now());
        }
        let ha_changed = effective.homeassistant != old.homeassistant;
        self.cfg.config = effective;
        self.discovery = discovery_of(&self.cfg);
        let new_entities = self.wanted_discovery();
        for topic in old_entities.difference(&new_entities) {
            self.clear_retained(topic.clone());
        }
        if ha_changed {
            self.subscribe();
        }
        self.serving_status_update();
        // Info (cameras, limits) and discovery (new or changed watches).
        self.announce();
        tracing::info!(
            cameras_added = ?cameras.added, cameras_removed = ?cameras.removed, cameras_restarted = ?cameras.restarted,
            watches_added = ?watches.added, watches_removed = ?watches.removed, watches_changed = ?watches.changed,
            "config reloaded (model kept)"
        );
        let status = self.cfg.serving_status.clone();
        self.cfg.systemd.ready(&status);
    }

    fn serving_status_update(&mut self) {
        let names: Vec<String> = self.cfg.cameras.names().into_iter().collect();
        self.cfg.serving_status = format!(
            "serving {}: model {}, cameras {}, watches {}",
            self.cfg.device_id,
            self.cfg.model_name,
            names.join(", "),
            self.watches.names().count()
        );
    }

    /// Publishes a snapshot (before the message that refers to it).
    fn publish_snapshot(&mut self, topic: String, snap: Snapshot, retain: bool) -> SnapshotInfo {
        let info = SnapshotInfo {
            topic: topic.clone(),
            width: snap.width,
            height: snap.height,
            bytes: snap.jpeg.len(),
        };
        self.push(topic, snap.jpeg, retain, None, OnAck::default());
        info
    }

    /// The broker had no session for us: it forgot the requests it had
    /// delivered (their acks are void) and rumqttc dropped our unconfirmed
    /// publishes. Replies among them are published again: their requests
    /// will not be redelivered, so this is the only way they arrive.
    fn session_lost(&mut self, dropped: Vec<OnAck>) {
        let mut again = 0;
        for d in dropped {
            if let Some(reply) = d.reply {
                again += 1;
                self.push(
                    reply.topic.clone(),
                    reply.payload.clone().into_bytes(),
                    false,
                    reply.correlation.clone(),
                    OnAck {
                        requests: Vec::new(),
                        answered: d.answered,
                        reply: Some(reply),
                        fallback: d.fallback,
                    },
                );
            }
        }
        tracing::warn!(
            replies_republished = again,
            in_progress = self.in_progress.len(),
            "the broker kept no session for blipd (restarted without persistence, or the session expired): requests it had delivered are forgotten; their replies are still published"
        );
    }

    /// The broker refused the request subscription (an ACL, say): no
    /// request can reach us, so we are not online. Retried every 30 s, as
    /// the broker's configuration may be fixed while we run.
    fn subscription_refused(&mut self, reason: &str) {
        let topic = self.cfg.topics.subscribe.clone();
        tracing::error!(
            topic,
            reason,
            "the broker refused the request subscription; not online; retrying in 30 s"
        );
        self.cfg.systemd.status(&format!(
            "the broker refused the subscription to {topic} ({reason}); retrying"
        ));
        self.subscribe_retry = Some(Instant::now() + Duration::from_secs(30));
    }

    /// The broker refused one of our publishes (PUBACK reason >= 0x80).
    fn refused(&mut self, done: OnAck, reason: rumqttc::v5::mqttbytes::v5::PubAckReason) {
        let topic = done.reply.as_ref().map(|r| r.topic.clone());
        self.stats.reply_refused();
        match (done.fallback, topic) {
            (Some((fallback, id)), Some(topic)) => {
                // Tell the client on the default answer topic instead; its
                // requests are acked with that error.
                tracing::warn!(
                    topic,
                    ?reason,
                    id,
                    "the broker refused a reply; sending the error to the default answer topic"
                );
                let e = ErrorReply::new(
                    id,
                    ErrorCode::BadResponseTopic,
                    format!(
                        "the broker refused the reply on {:?} ({reason:?})",
                        intake::shorten(&topic)
                    ),
                );
                let to = ReplyTo {
                    topic: fallback,
                    correlation: done.reply.and_then(|r| r.correlation),
                };
                self.reply_json(
                    &to,
                    &e,
                    OnAck {
                        requests: done.requests,
                        answered: done.answered,
                        ..Default::default()
                    },
                );
            }
            (_, topic) => {
                let topic = topic.unwrap_or_else(|| "(not a reply)".into());
                if self.refused_topics.insert(topic.clone()) {
                    tracing::warn!(
                        topic,
                        ?reason,
                        "the broker refused a publish (logged once per topic)"
                    );
                }
                // Retrying gets the same answer: settle it as done.
                self.acked(OnAck {
                    requests: done.requests,
                    answered: done.answered,
                    ..Default::default()
                });
            }
        }
    }

    fn acked(&mut self, done: OnAck) {
        let mut requests = done.requests;
        if let Some(key) = &done.answered {
            self.dedupe.delivered(key);
            requests.extend(self.answers_in_flight.remove(key).unwrap_or_default());
        }
        for p in &requests {
            self.ack(p);
        }
    }

    /// Publishes an answer (or a stored one again) for `key`, acking
    /// `requests` once the broker has it.
    fn publish_answer(
        &mut self,
        key: String,
        reply: StoredReply,
        requests: Vec<Delivery>,
        id: &str,
    ) {
        self.answers_in_flight.entry(key.clone()).or_default();
        let fallback = self.fallback(&reply.topic, id);
        self.push(
            reply.topic.clone(),
            reply.payload.clone().into_bytes(),
            false,
            reply.correlation.clone(),
            OnAck {
                requests,
                answered: Some(key),
                reply: Some(reply),
                fallback,
            },
        );
    }

    /// Where an error goes if the broker refuses a reply on `topic`.
    fn fallback(&self, topic: &str, id: &str) -> Option<(String, String)> {
        let default = self.cfg.topics.answer(id);
        (topic != default).then(|| (default, id.to_string()))
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
                self.ledger.handed(m.on_ack);
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
            WorkerEvent::Done {
                origin: Origin::Watch { name, trigger },
                result,
                snapshot,
            } => {
                match &result {
                    Ok(a) => self.stats.answer(&a.timings, true),
                    Err(_) => self.stats.watch_failed(),
                }
                if self.watches.config(&name).is_none() {
                    return; // removed by a reload while it ran
                }
                let snap = snapshot
                    .map(|s| self.publish_snapshot(self.cfg.topics.watch_snapshot(&name), s, true));
                let Some(outcome) = self.watches.finished(&name, trigger, &result, snap) else {
                    return;
                };
                match serde_json::to_vec(&outcome.state) {
                    Ok(p) => self.push(
                        self.cfg.topics.watch(&name),
                        p,
                        true,
                        None,
                        OnAck::default(),
                    ),
                    Err(e) => tracing::error!(error = %e, "cannot serialise watch state"),
                }
                if let Some(ev) = outcome.event {
                    tracing::info!(watch = name, answer = %ev.answer, previous = ?ev.previous, "watch answer changed");
                    match serde_json::to_vec(&ev) {
                        Ok(p) => self.push(
                            self.cfg.topics.watch_event(&name),
                            p,
                            false,
                            None,
                            OnAck::default(),
                        ),
                        Err(e) => tracing::error!(error = %e, "cannot serialise watch event"),
                    }
                }
            }
            WorkerEvent::Done {
                origin: Origin::Request { key, reply, .. },
                result,
                snapshot,
            } => {
                let requests = self.in_progress.remove(&key).unwrap_or_default();
                let mut result = result;
                match &mut result {
                    Ok(answer) => {
                        self.stats.answer(&answer.timings, false);
                        if let Some(s) = snapshot {
                            let topic = self.cfg.topics.snapshot(&answer.id);
                            answer.snapshot = Some(self.publish_snapshot(topic, s, false));
                        }
                    }
                    Err(e) => self.stats.error(e.error.code),
                }
                let id = match &result {
                    Ok(a) => a.id.clone(),
                    Err(e) => e.id.clone(),
                };
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
                self.publish_answer(key, stored, requests, &id);
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

    /// Intake: validate, deduplicate, enqueue or reply with an error (the
    /// rules are in [`intake`]). Every delivery is acknowledged exactly once,
    /// after its reply is out.
    fn on_request(&mut self, p: Publish) {
        let props = p.properties.clone().unwrap_or_default();
        let v5_reply = props.response_topic.clone();
        let correlation = props.correlation_data.clone().map(|b| b.to_vec());
        let max_payload = self.cfg.config.limits.max_payload_bytes;

        // Error replies before an id is known go under a generated id.
        if p.payload.len() > max_payload {
            let id = self.next_id();
            let msg = format!(
                "payload of {} bytes exceeds limits.max_payload_bytes = {}",
                p.payload.len(),
                max_payload
            );
            let reply = match self.reply_or_refuse(v5_reply.as_deref(), None, correlation, &id) {
                Ok(r) | Err((r, _)) => r,
            };
            self.refuse(p, &reply, &id, None, ErrorCode::LimitExceeded, msg);
            return;
        }
        let req = match wire::parse_request(&p.payload) {
            Ok(r) => r,
            Err(e) => {
                let readable =
                    e.id.filter(|i| intake::check_id(&self.cfg.config, i).is_ok());
                let id = match readable {
                    Some(id) => id,
                    None => self.next_id(),
                };
                let reply = match self.reply_or_refuse(v5_reply.as_deref(), None, correlation, &id)
                {
                    Ok(r) | Err((r, _)) => r,
                };
                self.refuse(p, &reply, &id, None, e.code, e.message);
                return;
            }
        };
        let id = req.id.clone().unwrap_or_else(|| self.next_id());
        let reply = match self.reply_or_refuse(
            v5_reply.as_deref(),
            req.response_topic.as_deref(),
            correlation,
            &id,
        ) {
            Ok(r) => r,
            Err((r, (code, msg))) => {
                self.refuse(p, &r, &id, req.camera.clone(), code, msg);
                return;
            }
        };
        if let Err((code, msg)) = intake::check_id(&self.cfg.config, &id) {
            // Too long to remember; the error goes under the (encoded) id.
            self.refuse(p, &reply, &id, req.camera.clone(), code, msg);
            return;
        }

        let key = intake::dedupe_key(&reply, req.id.as_deref(), &p.payload);
        let seen = self.dedupe.check(&key);
        let key = match (seen, req.id.is_some(), p.dup) {
            (Seen::InProgress, _, _) if req.id.is_some() || p.dup => {
                // A redelivery (or repeat) of a request we are answering:
                // ack this delivery too when the answer is out.
                tracing::debug!(
                    key,
                    "request already in progress; acking it with its answer"
                );
                let d = self.delivery(p);
                self.in_progress.entry(key).or_default().push(d);
                return;
            }
            (Seen::Answered { delivered }, has_id, dup) if has_id || dup => {
                let d = self.delivery(p);
                if let Some(waiting) = self.answers_in_flight.get_mut(&key) {
                    // Its answer is on the way: ack with it.
                    waiting.push(d);
                } else if delivered {
                    tracing::info!(
                        key,
                        "request already answered; acknowledging the redelivery"
                    );
                    self.ack(&d);
                } else if let Some(stored) = self.dedupe.reply(&key).cloned() {
                    // Answered before a crash, not confirmed by the broker:
                    // publish the same reply again rather than a new answer.
                    tracing::info!(
                        key,
                        "republishing the stored answer of a redelivered request"
                    );
                    self.publish_answer(key, stored, vec![d], &id);
                } else {
                    self.ack(&d);
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

        let camera = req
            .camera
            .clone()
            .unwrap_or_else(|| self.cfg.config.default_camera().to_string());
        let names = self.cfg.cameras.names();
        if let Err((code, msg)) = intake::validate(&self.cfg.config, &names, &req, &camera) {
            self.refuse(p, &reply, &id, Some(camera), code, msg);
            return;
        }
        let job = Job {
            id: id.clone(),
            camera: camera.clone(),
            params: intake::params(&req, self.cfg.default_params),
            prompt: req.prompt,
            snapshot: req.snapshot,
            origin: Origin::Request {
                key: key.clone(),
                reply: reply.clone(),
                stream: req.stream,
            },
            enqueued: Instant::now(),
        };
        let Some(queue) = &self.queue else {
            // Stopping: leave it unacknowledged, the broker redelivers it later.
            return;
        };
        match queue.try_push(job) {
            Ok(()) => {
                tracing::debug!(id, camera, "request queued");
                self.stats.accepted();
                self.dedupe.start(&key);
                let d = self.delivery(p);
                self.in_progress.entry(key).or_default().push(d);
            }
            Err(PushError::Full) => {
                let msg = format!(
                    "the queue is full ({} waiting); retry later",
                    self.cfg.config.limits.queue
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

    fn reply_or_refuse(
        &self,
        v5: Option<&str>,
        json: Option<&str>,
        correlation: Option<Vec<u8>>,
        id: &str,
    ) -> Result<ReplyTo, (ReplyTo, intake::Refusal)> {
        intake::reply_target(
            &self.cfg.config,
            &self.cfg.topics,
            v5,
            json,
            correlation,
            id,
        )
    }

    /// Acknowledges a delivery, unless it came in an older broker session
    /// (its packet id would now acknowledge some other message).
    fn ack(&self, d: &Delivery) {
        if d.session != self.ledger.session() {
            tracing::debug!("not acking a request of a lost broker session");
            return;
        }
        if let Err(e) = self.client.try_ack(&d.publish) {
            tracing::warn!(error = ?e, "cannot acknowledge request");
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
        self.stats.error(code);
        let mut e = ErrorReply::new(id, code, message);
        e.camera = camera;
        let payload = match serde_json::to_string(&e) {
            Ok(p) => p,
            Err(err) => {
                tracing::error!(error = %err, "cannot serialise reply");
                return;
            }
        };
        let stored = StoredReply {
            topic: reply.topic.clone(),
            correlation: reply.correlation.clone(),
            payload,
        };
        let on_ack = OnAck {
            requests: vec![self.delivery(p)],
            answered: None,
            fallback: self.fallback(&stored.topic, id),
            reply: Some(stored.clone()),
        };
        self.push(
            stored.topic,
            stored.payload.into_bytes(),
            false,
            stored.correlation,
            on_ack,
        );
    }

    /// A request delivered in the current broker session.
    fn delivery(&self, publish: Publish) -> Delivery {
        Delivery {
            publish,
            session: self.ledger.session(),
        }
    }
}

/// Discovery for the running config, when enabled.
fn discovery_of(cfg: &SessionConfig) -> Option<Discovery> {
    // Same topics as `Session::ha_topics`, present only when enabled.
    let ha = &cfg.config.homeassistant;
    ha.discovery
        .then(|| Discovery::new(&ha.prefix, &cfg.device_id, &cfg.model_name))
}
