//! Standing questions (`[[watch]]`): the scheduler that decides when each
//! watch asks, and what its answer publishes.
//!
//! A watch runs at start (so its retained state is current), every `every`,
//! and when the camera's picture changed by `on_change` since the frame of
//! its last run (a grey 32x24 thumbnail, mean absolute difference: cheap
//! enough to check every second on the MQTT task, robust to sensor noise).
//! At most one run per watch is queued or running at a time; the worker
//! alternates watch runs with on-demand requests, so neither starves.
//!
//! Plain state machine, no I/O: the session feeds it the clock, the cameras
//! and the results, and publishes what it returns.

use crate::camera::Frame;
use crate::config::{Config, WatchConfig};
use crate::llm::{Constraint, GenerateParams};
use crate::mqtt::wire::{self, AnswerReply, ErrorReply, SnapshotInfo, WatchEvent, WatchState};
use crate::serve::cameras::Cameras;
use crate::serve::worker::{Job, Origin, Trigger};
use regex::Regex;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

const THUMB_W: u32 = 32;
const THUMB_H: u32 = 24;

/// A small grey picture of a frame, for change detection.
#[derive(Debug, Clone, PartialEq)]
pub struct Thumb(Vec<u8>);

impl Thumb {
    /// Box-averaged 32x24 luma of an RGB frame.
    pub fn of(img: &image::RgbImage) -> Self {
        let (w, h) = img.dimensions();
        let mut sum = vec![0u32; (THUMB_W * THUMB_H) as usize];
        let mut count = vec![0u32; sum.len()];
        for (x, y, p) in img.enumerate_pixels() {
            let tx = (x as u64 * THUMB_W as u64 / w.max(1) as u64) as usize;
            let ty = (y as u64 * THUMB_H as u64 / h.max(1) as u64) as usize;
            let i = ty * THUMB_W as usize + tx;
            // Rec. 601 luma in integer arithmetic.
            sum[i] += (299 * p[0] as u32 + 587 * p[1] as u32 + 114 * p[2] as u32) / 1000;
            count[i] += 1;
        }
        Self(
            sum.iter()
                .zip(&count)
                .map(|(s, c)| if *c == 0 { 0 } else { (s / c) as u8 })
                .collect(),
        )
    }

    /// Mean absolute difference, 0 (same) to 1 (black vs white).
    pub fn difference(&self, other: &Thumb) -> f32 {
        let total: u64 = self
            .0
            .iter()
            .zip(&other.0)
            .map(|(a, b)| a.abs_diff(*b) as u64)
            .sum();
        total as f32 / (self.0.len().max(1) as f32 * 255.0)
    }
}

struct Watch {
    cfg: WatchConfig,
    camera: String,
    only_if: Option<Regex>,
    /// A run is queued or in the worker.
    pending: bool,
    /// The next run is the first since start/reload.
    start_due: bool,
    next_scheduled: Option<Instant>,
    next_check: Instant,
    last_run: Option<Instant>,
    /// Thumbnail of the frame the last run looked at (change reference).
    reference: Option<Thumb>,
    last_seq: Option<u64>,
    answer: Option<String>,
    changed_at: Option<SystemTime>,
    /// The answer constraint of `cfg` (validated with the config).
    constraint: Option<Arc<Constraint>>,
    /// Asked to run now ([`Watches::run_now`]).
    run_now: bool,
}

impl Watch {
    fn new(cfg: WatchConfig, camera: String, now: Instant) -> Self {
        // Validated with the config; a bad pattern here means no filter.
        let only_if = cfg.only_if.as_deref().and_then(|r| Regex::new(r).ok());
        let constraint = Constraint::from_parts(
            cfg.choices.as_deref(),
            cfg.format.as_deref(),
            cfg.schema.as_ref(),
        )
        .ok()
        .flatten()
        .map(Arc::new);
        Self {
            constraint,
            run_now: false,
            camera,
            only_if,
            pending: false,
            start_due: true,
            next_scheduled: None,
            next_check: now,
            last_run: None,
            reference: None,
            last_seq: None,
            answer: None,
            changed_at: None,
            cfg,
        }
    }

    fn matches(&self, answer: &str) -> Option<bool> {
        self.only_if.as_ref().map(|r| r.is_match(answer))
    }
}

/// What a finished run publishes.
#[derive(Debug)]
pub struct Outcome {
    pub state: WatchState,
    pub event: Option<WatchEvent>,
}

/// What a reconfiguration changed (by watch name).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct WatchChanges {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

/// All watches of the config.
#[derive(Default)]
pub struct Watches {
    watches: BTreeMap<String, Watch>,
    model: String,
}

impl Watches {
    pub fn new(cfg: &Config, model: String, now: Instant) -> Self {
        let mut w = Self {
            watches: BTreeMap::new(),
            model,
        };
        w.reconfigure(cfg, now);
        w
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.watches.keys().map(String::as_str)
    }

    pub fn config(&self, name: &str) -> Option<&WatchConfig> {
        self.watches.get(name).map(|w| &w.cfg)
    }

    pub fn configs(&self) -> impl Iterator<Item = &WatchConfig> {
        self.watches.values().map(|w| &w.cfg)
    }

    /// Applies a (reloaded) config: unchanged watches keep their state and
    /// schedule; new and changed ones run at once.
    pub fn reconfigure(&mut self, cfg: &Config, now: Instant) -> WatchChanges {
        let mut changes = WatchChanges::default();
        let mut next = BTreeMap::new();
        for wc in &cfg.watches {
            let camera = cfg.watch_camera(wc).to_string();
            match self.watches.remove(&wc.name) {
                Some(old) if old.cfg == *wc && old.camera == camera => {
                    next.insert(wc.name.clone(), old);
                }
                Some(old) => {
                    let mut w = Watch::new(wc.clone(), camera, now);
                    // Same question, same camera: the last answer stays the baseline for events.
                    if old.cfg.prompt == wc.prompt && old.camera == w.camera {
                        w.answer = old.answer;
                        w.changed_at = old.changed_at;
                    }
                    w.pending = old.pending;
                    next.insert(wc.name.clone(), w);
                    changes.changed.push(wc.name.clone());
                }
                None => {
                    next.insert(wc.name.clone(), Watch::new(wc.clone(), camera, now));
                    changes.added.push(wc.name.clone());
                }
            }
        }
        changes.removed = self.watches.keys().cloned().collect();
        self.watches = next;
        changes
    }

    /// Runs watch `name` at the next tick (once, even if asked repeatedly
    /// meanwhile); false when there is no such watch.
    pub fn run_now(&mut self, name: &str) -> bool {
        match self.watches.get_mut(name) {
            Some(w) => {
                w.run_now = true;
                true
            }
            None => false,
        }
    }

    /// A retained state from before a restart: its answer is the baseline
    /// for the next event, so a restart does not fire "changed" events.
    pub fn recall(&mut self, name: &str, state: &WatchState) {
        if let Some(w) = self.watches.get_mut(name) {
            if w.answer.is_none() && w.last_run.is_none() && state.prompt == w.cfg.prompt {
                w.answer = state.answer.clone();
            }
        }
    }

    /// Jobs for the watches due now (each is then pending until [`finished`]).
    ///
    /// [`finished`]: Watches::finished
    pub fn due(
        &mut self,
        now: Instant,
        cameras: &Cameras,
        params: &GenerateParams,
        mut next_id: impl FnMut() -> String,
    ) -> Vec<Job> {
        let mut jobs = Vec::new();
        for (name, w) in &mut self.watches {
            if w.pending {
                continue;
            }
            let mut trigger = if w.run_now {
                Some(Trigger::Manual)
            } else if w.start_due {
                Some(Trigger::Start)
            } else if w.next_scheduled.is_some_and(|t| now >= t) {
                Some(Trigger::Schedule)
            } else {
                None
            };
            let mut frame: Option<Frame> = None;
            if let Some(threshold) = w.cfg.on_change {
                if now >= w.next_check {
                    w.next_check = now + w.cfg.check_every;
                    let cam = cameras.get(&w.camera);
                    if let Some(f) = cam.and_then(|c| c.latest().ok()) {
                        if w.last_seq != Some(f.seq) {
                            w.last_seq = Some(f.seq);
                            let thumb = Thumb::of(&f.image);
                            let rested = w
                                .last_run
                                .is_none_or(|t| now.duration_since(t) >= w.cfg.min_interval);
                            let moved = w
                                .reference
                                .as_ref()
                                .is_some_and(|r| r.difference(&thumb) >= threshold);
                            if trigger.is_none() && moved && rested {
                                trigger = Some(Trigger::Change);
                            }
                            if trigger.is_some() {
                                w.reference = Some(thumb);
                            }
                            frame = Some(f);
                        }
                    }
                }
            }
            let Some(trigger) = trigger else { continue };
            if w.reference.is_none() && w.cfg.on_change.is_some() {
                // Start reference for change detection: the frame being answered.
                let f = frame.or_else(|| cameras.get(&w.camera).and_then(|c| c.latest().ok()));
                if let Some(f) = f {
                    w.last_seq = Some(f.seq);
                    w.reference = Some(Thumb::of(&f.image));
                }
            }
            w.pending = true;
            w.start_due = false;
            w.run_now = false;
            w.last_run = Some(now);
            if let Some(every) = w.cfg.every {
                w.next_scheduled = Some(now + every);
            }
            let mut params = params.clone();
            if let Some(n) = w.cfg.max_tokens {
                params.max_new_tokens = n;
            }
            params.constraint = w.constraint.clone();
            jobs.push(Job {
                id: format!("watch-{name}-{}", next_id()),
                camera: w.camera.clone(),
                image: None,
                prompt: w.cfg.prompt.clone(),
                params,
                snapshot: w.cfg.snapshot,
                origin: Origin::Watch {
                    name: name.clone(),
                    trigger,
                },
                enqueued: now,
            });
        }
        jobs
    }

    /// The job could not be queued: try again at the next tick.
    pub fn not_queued(&mut self, name: &str) {
        if let Some(w) = self.watches.get_mut(name) {
            w.pending = false;
            w.start_due = true;
        }
    }

    /// Records a finished run and says what to publish. None when the
    /// watch was removed meanwhile.
    pub fn finished(
        &mut self,
        name: &str,
        trigger: Trigger,
        result: &Result<AnswerReply, ErrorReply>,
        snapshot: Option<SnapshotInfo>,
    ) -> Option<Outcome> {
        let model = self.model.clone();
        let w = self.watches.get_mut(name)?;
        w.pending = false;
        let now = SystemTime::now();
        let time = wire::rfc3339(now);
        let mut state = WatchState {
            name: name.to_string(),
            camera: w.camera.clone(),
            prompt: w.cfg.prompt.clone(),
            answer: w.answer.clone(),
            matched: None,
            trigger,
            time: time.clone(),
            frame_time: None,
            changed_at: w.changed_at.map(wire::rfc3339),
            tokens: None,
            model: Some(model),
            timings: None,
            snapshot: None,
            error: None,
        };
        let mut event = None;
        match result {
            Ok(a) => {
                let answer = a.answer.trim().to_string();
                let previous = w.answer.replace(answer.clone());
                let changed = previous.as_deref() != Some(answer.as_str());
                if changed {
                    w.changed_at = Some(now);
                }
                let matched = w.matches(&answer);
                if changed && matched != Some(false) {
                    event = Some(WatchEvent {
                        name: name.to_string(),
                        camera: w.camera.clone(),
                        answer: answer.clone(),
                        previous,
                        time,
                        frame_time: a.frame_time.clone(),
                        trigger,
                        snapshot: snapshot.clone(),
                    });
                }
                state.answer = Some(answer);
                state.matched = matched;
                state.changed_at = w.changed_at.map(wire::rfc3339);
                state.frame_time = Some(a.frame_time.clone());
                state.tokens = Some(a.tokens);
                state.timings = Some(a.timings.clone());
                state.snapshot = snapshot;
            }
            Err(e) => {
                tracing::debug!(watch = name, error = %e.error.message, "watch run failed");
                state.error = Some(e.error.clone());
            }
        }
        Some(Outcome { state, event })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::camera::{CameraConfig, SourceConfig};
    use crate::mqtt::wire::{ErrorCode, Timings};

    fn cfg(watches: &str) -> Config {
        Config::parse(
            &format!("[[camera]]\nname = \"c\"\ntype = \"test_pattern\"\nwidth = 64\nheight = 48\n{watches}"),
            std::path::Path::new("t.toml"),
        )
        .unwrap()
    }

    fn answer(text: &str) -> Result<AnswerReply, ErrorReply> {
        Ok(AnswerReply {
            id: "x".into(),
            camera: "c".into(),
            answer: text.into(),
            tokens: 1,
            prompt_tokens: 33,
            stop: crate::llm::StopReason::Eos,
            frame_time: "t".into(),
            model: "m".into(),
            vision_cached: false,
            timings: Timings::default(),
            snapshot: None,
        })
    }

    #[test]
    fn thumbnails_tell_change_from_noise() {
        let a = image::RgbImage::from_fn(64, 48, |x, _| image::Rgb([(x * 4) as u8, 0, 0]));
        let mut b = a.clone();
        b.put_pixel(3, 3, image::Rgb([255, 255, 255]));
        let c = image::RgbImage::from_pixel(64, 48, image::Rgb([255, 255, 255]));
        let (ta, tb, tc) = (Thumb::of(&a), Thumb::of(&b), Thumb::of(&c));
        assert!(ta.difference(&tb) < 0.01);
        assert!(ta.difference(&tc) > 0.5);
        assert_eq!(tc.difference(&tc), 0.0);
    }

    #[test]
    fn schedule_pending_events_and_only_if() {
        let c = cfg("[[watch]]\nname = \"w\"\nprompt = \"Is it open?\"\nevery = \"10s\"\nonly_if = \"(?i)^yes\"\n");
        let cams = Cameras::start(&[]);
        let t0 = Instant::now();
        let mut w = Watches::new(&c, "m".into(), t0);
        let mut n = 0;
        let mut id = || {
            n += 1;
            n.to_string()
        };
        let p = GenerateParams {
            max_new_tokens: 4,
            sampling: None,
            constraint: None,
        };
        let jobs = w.due(t0, &cams, &p, &mut id);
        assert_eq!(jobs.len(), 1);
        assert!(matches!(
            &jobs[0].origin,
            Origin::Watch {
                trigger: Trigger::Start,
                ..
            }
        ));
        // Pending: not again, even when due.
        assert!(w
            .due(t0 + std::time::Duration::from_secs(11), &cams, &p, &mut id)
            .is_empty());
        let o = w
            .finished("w", Trigger::Start, &answer("no"), None)
            .unwrap();
        assert_eq!(o.state.answer.as_deref(), Some("no"));
        assert_eq!(o.state.matched, Some(false));
        assert!(o.event.is_none(), "'no' does not match only_if");
        assert!(w
            .due(t0 + std::time::Duration::from_secs(5), &cams, &p, &mut id)
            .is_empty());
        let jobs = w.due(t0 + std::time::Duration::from_secs(10), &cams, &p, &mut id);
        assert!(matches!(
            &jobs[0].origin,
            Origin::Watch {
                trigger: Trigger::Schedule,
                ..
            }
        ));
        let o = w
            .finished("w", Trigger::Schedule, &answer("Yes "), None)
            .unwrap();
        let e = o.event.expect("changed and matches");
        assert_eq!(
            (e.answer.as_str(), e.previous.as_deref()),
            ("Yes", Some("no"))
        );
        // Same answer again: state, no event.
        w.due(t0 + std::time::Duration::from_secs(20), &cams, &p, &mut id);
        let o = w
            .finished("w", Trigger::Schedule, &answer("Yes"), None)
            .unwrap();
        assert!(o.event.is_none());
        // A failed run keeps the last answer and reports the error.
        w.due(t0 + std::time::Duration::from_secs(30), &cams, &p, &mut id);
        let err = Err(ErrorReply::new(
            "x",
            ErrorCode::CameraUnavailable,
            "unplugged",
        ));
        let o = w.finished("w", Trigger::Schedule, &err, None).unwrap();
        assert_eq!(o.state.answer.as_deref(), Some("Yes"));
        assert_eq!(o.state.error.unwrap().code, ErrorCode::CameraUnavailable);
    }

    #[test]
    fn reconfigure_reports_changes_and_keeps_unchanged_state() {
        let t0 = Instant::now();
        let a = "[[watch]]\nname = \"a\"\nprompt = \"p\"\nevery = \"10s\"\n";
        let b = "[[watch]]\nname = \"b\"\nprompt = \"q\"\nevery = \"10s\"\n";
        let mut w = Watches::new(&cfg(a), "m".into(), t0);
        let cams = Cameras::start(&[CameraConfig {
            name: "c".into(),
            source: SourceConfig::test_pattern(8, 8, 1.0),
        }]);
        w.due(
            t0,
            &cams,
            &GenerateParams {
                max_new_tokens: 4,
                sampling: None,
                constraint: None,
            },
            || "1".into(),
        );
        w.finished("a", Trigger::Start, &answer("x"), None);
        let ch = w.reconfigure(&cfg(&format!("{a}{b}")), t0);
        assert_eq!(ch.added, vec!["b".to_string()]);
        assert!(ch.removed.is_empty() && ch.changed.is_empty());
        let ch = w.reconfigure(&cfg(&a.replace("10s", "20s")), t0);
        assert_eq!(ch.removed, vec!["b".to_string()]);
        assert_eq!(ch.changed, vec!["a".to_string()]);
        assert!(w
            .finished("b", Trigger::Start, &answer("x"), None)
            .is_none());
    }
}
