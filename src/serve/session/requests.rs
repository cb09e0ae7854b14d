//! The incoming side: routing a publish (requests and the QoS 0 feeds),
//! and a request's way through intake (parse, validate, dedupe) to the
//! worker queue or an error reply.

use super::*;

impl Session {
    /// Routes an incoming publish: requests, or one of the QoS 0 feeds.
    pub(super) fn on_publish(&mut self, p: Publish) {
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
        if let Some(name) = self.cfg.topics.watch_run_name(&topic) {
            // A retained press would run the watch at every start.
            if !p.retain {
                if self.watches.run_now(name) {
                    tracing::info!(
                        watch = name,
                        "running the watch now (asked on its run topic)"
                    );
                } else {
                    tracing::debug!(watch = name, "run asked for an unknown watch");
                }
            }
            return;
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
        if let Some(suffix) = self.cfg.topics.image_suffix(&topic) {
            let suffix = suffix.to_string();
            self.on_request(p, Some(&suffix));
            return;
        }
        if topic != self.cfg.topics.ask {
            // Requests come only on the ask topic; anything else is a frame
            // for an `mqtt` camera, or a leftover of a removed one. A
            // retained frame is of unknown age: only live ones count.
            let live = !p.retain && !p.payload.is_empty();
            if !(live && self.cfg.cameras.push_frame(&topic, &p.payload)) {
                tracing::debug!(
                    topic,
                    retain = p.retain,
                    "ignoring a publish that is no request"
                );
            }
            return;
        }
        self.on_request(p, None);
    }

    pub(super) fn next_id(&mut self) -> String {
        self.auto_id += 1;
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        format!("auto-{ms}-{}", self.auto_id)
    }

    /// Intake: validate, deduplicate, enqueue or reply with an error (the
    /// rules are in [`intake`]). Every delivery is acknowledged exactly once,
    /// after its reply is out. `picture` is the image topic's suffix when
    /// the payload is the picture itself.
    pub(super) fn on_request(&mut self, p: Publish, picture: Option<&str>) {
        let props = p.properties.clone().unwrap_or_default();
        let v5_reply = props.response_topic.clone();
        let correlation = props.correlation_data.clone().map(|b| b.to_vec());
        let max_payload = self.cfg.config.limits.max_payload_bytes;
        if let Some(suffix) = picture {
            let parsed = crate::mqtt::image_ask::parse(suffix, &props.user_properties);
            let image = intake::raw_image(&self.cfg.config, &p.payload);
            return self.admit(p, parsed, image.map(Some), v5_reply, correlation);
        }

        // Error replies before an id is known go under a generated id. A
        // request over the payload limit is read only if it may be one that
        // carries a picture (which has its own limit).
        let image_budget = crate::config::base64_len(self.cfg.config.limits.max_image_bytes);
        let over = p.payload.len() > max_payload;
        let parsed = if !over || p.payload.len() <= max_payload + image_budget {
            wire::parse_request(&p.payload)
        } else {
            Err(wire::ParseError {
                code: ErrorCode::LimitExceeded,
                message: String::new(),
                id: None,
            })
        };
        if over && !matches!(&parsed, Ok(r) if r.image.is_some()) {
            let id = self.next_id();
            let msg = format!(
                "payload of {} bytes exceeds limits.max_payload_bytes = {} \
                 (a request with an `image` may add up to {image_budget} bytes of base64, \
                 limits.max_image_bytes)",
                p.payload.len(),
                max_payload
            );
            let reply = match self.reply_or_refuse(v5_reply.as_deref(), None, correlation, &id) {
                Ok(r) | Err((r, _)) => r,
            };
            self.refuse(p, &reply, &id, None, ErrorCode::LimitExceeded, msg);
            return;
        }
        self.admit(p, parsed, Ok(None), v5_reply, correlation);
    }

    /// The rest of intake, for JSON and picture requests alike: `image` is
    /// the picture payload, when there is one (its own checks done).
    fn admit(
        &mut self,
        p: Publish,
        parsed: Result<wire::Request, wire::ParseError>,
        image: Result<Option<std::sync::Arc<[u8]>>, intake::Refusal>,
        v5_reply: Option<String>,
        correlation: Option<Vec<u8>>,
    ) {
        let req = match parsed {
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

        let image = match image {
            Ok(Some(picture)) => Ok(Some(picture)),
            Ok(None) => intake::image(&self.cfg.config, &req),
            Err(e) => Err(e),
        };
        let image = match image {
            Ok(i) => i,
            Err((code, msg)) => {
                self.refuse(p, &reply, &id, req.camera.clone(), code, msg);
                return;
            }
        };
        // An image request answers about its picture, not a camera.
        let camera = match image {
            Some(_) => String::new(),
            None => req
                .camera
                .clone()
                .unwrap_or_else(|| self.cfg.config.default_camera().to_string()),
        };
        let cam = (!camera.is_empty()).then(|| camera.clone());
        let names = self.cfg.cameras.names();
        if let Err((code, msg)) = intake::validate(&self.cfg.config, &names, &req, cam.as_deref()) {
            self.refuse(p, &reply, &id, cam, code, msg);
            return;
        }
        let job = Job {
            id: id.clone(),
            camera: camera.clone(),
            image,
            params: intake::params(&req, self.cfg.default_params.clone()),
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
                self.stats.lock().accepted();
                self.dedupe.start(&key);
                let d = self.delivery(p);
                self.in_progress.entry(key).or_default().push(d);
            }
            Err(PushError::Full) => {
                let msg = format!(
                    "the queue is full ({} waiting); retry later",
                    self.cfg.config.limits.queue
                );
                self.refuse(p, &reply, &id, cam, ErrorCode::Busy, msg);
            }
            Err(PushError::WorkerStopped) => {
                tracing::error!("the inference worker has stopped");
                self.refuse(
                    p,
                    &reply,
                    &id,
                    cam,
                    ErrorCode::Internal,
                    "the inference worker has stopped".into(),
                );
            }
        }
    }

    pub(super) fn reply_or_refuse(
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
    pub(super) fn ack(&self, d: &Delivery) {
        if d.session != self.ledger.session() {
            tracing::debug!("not acking a request of a lost broker session");
            return;
        }
        if let Err(e) = self.client.try_ack(&d.publish) {
            tracing::warn!(error = ?e, "cannot acknowledge request");
        }
    }

    pub(super) fn refuse(
        &mut self,
        p: Publish,
        reply: &ReplyTo,
        id: &str,
        camera: Option<String>,
        code: ErrorCode,
        message: String,
    ) {
        tracing::debug!(id, ?code, %message, "request refused");
        self.stats.lock().error(code);
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
    pub(super) fn delivery(&self, publish: Publish) -> Delivery {
        Delivery {
            publish,
            session: self.ledger.session(),
        }
    }
}
