//! The running cameras, by name, replaceable on a config reload.
//!
//! The worker and the watch scheduler look cameras up per job, so a reload
//! that adds, removes or reconfigures a camera takes effect for the next
//! job; a job already holding a camera finishes with it (the `Arc` keeps the
//! old capture thread alive until then).

use crate::camera::{Camera, CameraConfig, SourceConfig};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

/// Cameras with the config each was started from.
#[derive(Default)]
pub struct Cameras {
    inner: RwLock<HashMap<String, (CameraConfig, Arc<Camera>)>>,
}

/// What a reload changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CameraChanges {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub restarted: Vec<String>,
}

impl Cameras {
    pub fn start(configs: &[CameraConfig]) -> Self {
        let c = Self::default();
        c.apply(configs);
        c
    }

    pub fn get(&self, name: &str) -> Option<Arc<Camera>> {
        self.read().get(name).map(|(_, cam)| cam.clone())
    }

    pub fn names(&self) -> BTreeSet<String> {
        self.read().keys().cloned().collect()
    }

    /// Every camera's health, in name order (the stats message and `/metrics`).
    pub fn statuses(&self) -> Vec<crate::camera::CameraStatus> {
        let mut v: Vec<_> = self.read().values().map(|(_, cam)| cam.status()).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// The topic filters of the `mqtt` cameras (for the session to subscribe).
    pub fn frame_topics(&self) -> BTreeSet<String> {
        self.read()
            .values()
            .filter_map(|(cfg, _)| match &cfg.source {
                SourceConfig::Mqtt { topic, .. } => Some(topic.clone()),
                _ => None,
            })
            .collect()
    }

    /// Hands a publish to every `mqtt` camera whose filter matches `topic`;
    /// false when none does (it is something else, e.g. a request).
    pub fn push_frame(&self, topic: &str, payload: &[u8]) -> bool {
        let map = self.read();
        let mut encoded: Option<Arc<[u8]>> = None;
        for (cfg, cam) in map.values() {
            if let SourceConfig::Mqtt { topic: filter, .. } = &cfg.source {
                if crate::mqtt::topic::matches(filter, topic) {
                    let e = encoded.get_or_insert_with(|| payload.into());
                    cam.push(e.clone());
                }
            }
        }
        encoded.is_some()
    }

    /// Brings the set in line with `configs`: starts new cameras, restarts
    /// changed ones, stops removed ones; unchanged cameras keep running.
    pub fn apply(&self, configs: &[CameraConfig]) -> CameraChanges {
        let mut changes = CameraChanges::default();
        let mut stopped = Vec::new();
        {
            let mut map = self.inner.write().unwrap_or_else(|p| p.into_inner());
            let wanted: BTreeSet<&str> = configs.iter().map(|c| c.name.as_str()).collect();
            let gone: Vec<String> = map
                .keys()
                .filter(|k| !wanted.contains(k.as_str()))
                .cloned()
                .collect();
            for name in gone {
                if let Some((_, cam)) = map.remove(&name) {
                    stopped.push(cam);
                }
                changes.removed.push(name);
            }
            for cfg in configs {
                match map.get(&cfg.name) {
                    Some((old, _)) if old == cfg => {}
                    Some(_) => {
                        let cam = Arc::new(Camera::spawn(cfg.clone()));
                        if let Some((_, old)) = map.insert(cfg.name.clone(), (cfg.clone(), cam)) {
                            stopped.push(old);
                        }
                        changes.restarted.push(cfg.name.clone());
                    }
                    None => {
                        let cam = Arc::new(Camera::spawn(cfg.clone()));
                        map.insert(cfg.name.clone(), (cfg.clone(), cam));
                        changes.added.push(cfg.name.clone());
                    }
                }
            }
        }
        // Stopping joins capture threads: outside the lock.
        drop(stopped);
        changes
    }

    /// Stops every camera.
    pub fn clear(&self) {
        let all: Vec<_> = self
            .inner
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .collect();
        drop(all);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, (CameraConfig, Arc<Camera>)>> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }
}
