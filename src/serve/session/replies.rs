//! The outgoing side: replies and announcements queued in the outbox,
//! handed to rumqttc in order, and what happens when the broker
//! acknowledges, refuses or forgets them (the [`Ledger`]).

use super::*;

impl Session {
    /// Queues a JSON message that needs nothing done on its acknowledgement.
    pub(super) fn push_json<T: serde::Serialize>(&mut self, topic: String, body: &T, retain: bool) {
        match serde_json::to_vec(body) {
            Ok(p) => self.push(topic, p, retain, None, OnAck::default()),
            Err(e) => tracing::error!(error = %e, topic, "cannot serialise a message"),
        }
    }

    /// Publishes a snapshot (before the message that refers to it).
    pub(super) fn publish_snapshot(
        &mut self,
        topic: String,
        snap: Snapshot,
        retain: bool,
    ) -> SnapshotInfo {
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
    pub(super) fn session_lost(&mut self, dropped: Vec<OnAck>) {
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
    pub(super) fn subscription_refused(&mut self, reason: &str) {
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
    pub(super) fn refused(
        &mut self,
        done: OnAck,
        reason: rumqttc::v5::mqttbytes::v5::PubAckReason,
    ) {
        let topic = done.reply.as_ref().map(|r| r.topic.clone());
        self.stats.lock().reply_refused();
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

    pub(super) fn acked(&mut self, done: OnAck) {
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
    pub(super) fn publish_answer(
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
    pub(super) fn fallback(&self, topic: &str, id: &str) -> Option<(String, String)> {
        let default = self.cfg.topics.answer(id);
        (topic != default).then(|| (default, id.to_string()))
    }

    pub(super) fn push(
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
    pub(super) fn flush(&mut self) {
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

    pub(super) fn reply_json<T: serde::Serialize>(
        &mut self,
        reply: &ReplyTo,
        body: &T,
        on_ack: OnAck,
    ) {
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

    pub(super) fn handle_worker(&mut self, ev: WorkerEvent) {
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
                    Ok(a) => self.stats.lock().answer(&a.timings, true),
                    Err(_) => self.stats.lock().watch_failed(),
                }
                if self.watches.config(&name).is_none() {
                    return; // removed by a reload while it ran
                }
                let snap = snapshot
                    .map(|s| self.publish_snapshot(self.cfg.topics.watch_snapshot(&name), s, true));
                let Some(outcome) = self.watches.finished(&name, trigger, &result, snap) else {
                    return;
                };
                self.push_json(self.cfg.topics.watch(&name), &outcome.state, true);
                if let Some(ev) = outcome.event {
                    tracing::info!(watch = name, answer = %ev.answer, previous = ?ev.previous, "watch answer changed");
                    self.push_json(self.cfg.topics.watch_event(&name), &ev, false);
                }
            }
            WorkerEvent::Done {
                origin: Origin::Http { reply, .. },
                result,
                ..
            } => {
                match &result {
                    Ok(a) => self.stats.lock().answer(&a.timings, false),
                    Err(e) => self.stats.lock().error(e.error.code),
                }
                // The handler is gone if its client hung up: nobody to tell.
                let _ = reply.send(HttpEvent::Done(result));
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
                        self.stats.lock().answer(&answer.timings, false);
                        if let Some(s) = snapshot {
                            let topic = self.cfg.topics.snapshot(&answer.id);
                            answer.snapshot = Some(self.publish_snapshot(topic, s, false));
                        }
                    }
                    Err(e) => self.stats.lock().error(e.error.code),
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
}
