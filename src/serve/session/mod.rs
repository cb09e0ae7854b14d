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

mod announce;
mod reload;
mod replies;
mod requests;
mod timers;

use crate::config::{Config, SnapshotConfig};
use crate::llm::GenerateParams;
use crate::mqtt::ledger::{puback_outcome, Ledger, Outcome};
use crate::mqtt::wire::{self, ErrorCode, ErrorReply, SnapshotInfo};
use crate::mqtt::Topics;
use crate::serve::cameras::Cameras;
use crate::serve::dedupe::{Dedupe, Seen, StoredReply};
use crate::serve::homeassistant::Discovery;
use crate::serve::intake;
use crate::serve::stats::SharedStats;
use crate::serve::watch::Watches;
use crate::serve::worker::{
    HttpEvent, Job, Origin, PushError, Queue, ReplyTo, Snapshot, WorkerEvent,
};
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
    /// Counters, shared with the HTTP API.
    pub stats: SharedStats,
    /// Where the running config is published for the HTTP API.
    pub published: tokio::sync::watch::Sender<Arc<Config>>,
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
    /// The filters of the last SUBSCRIBE, in order (to name refusals).
    subscribed: Vec<String>,
    /// The `mqtt` cameras' topics subscribed to.
    frame_topics: BTreeSet<String>,
    watches: Watches,
    discovery: Option<Discovery>,
    stats: SharedStats,
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
        let discovery = announce::discovery_of(&cfg);
        let mut s = Self {
            watches,
            discovery,
            stats: cfg.stats.clone(),
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
            subscribed: Vec::new(),
            frame_topics: BTreeSet::new(),
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
                for (code, filter) in ack.return_codes.iter().zip(&self.subscribed).skip(1) {
                    if !matches!(
                        code,
                        rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::Success(_)
                    ) {
                        tracing::warn!(filter, reason = ?code, "the broker refused a subscription");
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
}
