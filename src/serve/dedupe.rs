//! Exactly-once answers across redeliveries and restarts.
//!
//! Requests arrive at QoS 1 and are acknowledged only after their reply is
//! acknowledged by the broker, so the broker redelivers any request the
//! daemon had not finished (after a reconnect or a crash). This table
//! recognises those redeliveries:
//! - a request still being answered is not queued twice;
//! - a request already answered is not run again. Its reply is written here
//!   *before* it is published; if the broker confirmed it, the redelivery is
//!   just acknowledged, otherwise the *stored* reply is published again
//!   (identical bytes), so a crash between answering and acknowledging
//!   never produces a second, different answer, and never loses one.
//!
//! The table lives in memory and in an append-only file in the state
//! directory (JSON lines), compacted when it grows past twice its capacity.

use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Write;
use std::path::PathBuf;

/// What the table knows about a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    New,
    InProgress,
    /// Answered; `delivered` once the broker acknowledged the reply.
    Answered {
        delivered: bool,
    },
}

/// A reply as published: enough to publish it again byte for byte.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredReply {
    pub topic: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation: Option<Vec<u8>>,
    pub payload: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "e", rename_all = "snake_case")]
enum Line {
    Answered { k: String, r: StoredReply },
    Delivered { k: String },
}

struct Entry {
    reply: StoredReply,
    delivered: bool,
}

pub struct Dedupe {
    in_progress: HashSet<String>,
    answered: HashMap<String, Entry>,
    order: VecDeque<String>,
    capacity: usize,
    file: Option<PathBuf>,
    lines: usize,
}

const FILE_NAME: &str = "answered.jsonl";

impl Dedupe {
    /// `state_dir`: where answered keys persist (None = memory only).
    pub fn new(capacity: usize, state_dir: Option<PathBuf>) -> Self {
        let mut d = Self {
            in_progress: HashSet::new(),
            answered: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
            file: None,
            lines: 0,
        };
        if let Some(dir) = state_dir {
            if let Err(e) = std::fs::create_dir_all(&dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot create state directory; answered ids are kept in memory only");
                return d;
            }
            let path = dir.join(FILE_NAME);
            if let Ok(text) = std::fs::read_to_string(&path) {
                for line in text.lines() {
                    match serde_json::from_str::<Line>(line) {
                        Ok(Line::Answered { k, r }) => d.insert(k, r, false),
                        Ok(Line::Delivered { k }) => {
                            if let Some(e) = d.answered.get_mut(&k) {
                                e.delivered = true;
                            }
                        }
                        // A line cut short by a crash: skip it.
                        Err(_) => {}
                    }
                }
            }
            d.file = Some(path);
            d.compact();
        }
        d
    }

    pub fn check(&self, key: &str) -> Seen {
        if self.in_progress.contains(key) {
            Seen::InProgress
        } else if let Some(e) = self.answered.get(key) {
            Seen::Answered {
                delivered: e.delivered,
            }
        } else {
            Seen::New
        }
    }

    pub fn start(&mut self, key: &str) {
        self.in_progress.insert(key.to_string());
    }

    /// The stored reply of an answered key.
    pub fn reply(&self, key: &str) -> Option<&StoredReply> {
        self.answered.get(key).map(|e| &e.reply)
    }

    /// Records a key's reply before it is published (write-ahead).
    pub fn answered(&mut self, key: &str, reply: StoredReply) {
        self.in_progress.remove(key);
        // Memory first: a compaction triggered by the append rewrites the
        // file from memory, and must include this entry.
        self.insert(key.to_string(), reply.clone(), false);
        self.append(&Line::Answered {
            k: key.to_string(),
            r: reply,
        });
    }

    /// The broker acknowledged the key's reply.
    pub fn delivered(&mut self, key: &str) {
        if let Some(e) = self.answered.get_mut(key) {
            if !e.delivered {
                e.delivered = true;
                self.append(&Line::Delivered { k: key.to_string() });
            }
        }
    }

    fn insert(&mut self, key: String, reply: StoredReply, delivered: bool) {
        if self
            .answered
            .insert(key.clone(), Entry { reply, delivered })
            .is_none()
        {
            self.order.push_back(key);
        }
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.answered.remove(&old);
            }
        }
    }

    fn append(&mut self, line: &Line) {
        let Some(path) = &self.file else { return };
        let Ok(mut text) = serde_json::to_string(line) else {
            return;
        };
        text.push('\n');
        let res = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| f.write_all(text.as_bytes()));
        if let Err(e) = res {
            tracing::warn!(file = %path.display(), error = %e, "cannot record answered request");
        }
        self.lines += 1;
        if self.lines > 4 * self.capacity {
            self.compact();
        }
    }

    fn compact(&mut self) {
        let Some(path) = &self.file else { return };
        let mut text = String::new();
        let mut lines = 0;
        for k in &self.order {
            if let Some(e) = self.answered.get(k) {
                let mut push = |l: &Line| {
                    if let Ok(s) = serde_json::to_string(l) {
                        text.push_str(&s);
                        text.push('\n');
                        lines += 1;
                    }
                };
                push(&Line::Answered {
                    k: k.clone(),
                    r: e.reply.clone(),
                });
                if e.delivered {
                    push(&Line::Delivered { k: k.clone() });
                }
            }
        }
        let tmp = path.with_extension("tmp");
        if let Err(e) = std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, path)) {
            tracing::warn!(file = %path.display(), error = %e, "cannot rewrite the answered-requests file");
        }
        self.lines = lines;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(p: &str) -> StoredReply {
        StoredReply {
            topic: "t".into(),
            correlation: Some(vec![1, 2]),
            payload: p.into(),
        }
    }

    #[test]
    fn lifecycle_and_capacity() {
        let mut d = Dedupe::new(2, None);
        assert_eq!(d.check("a"), Seen::New);
        d.start("a");
        assert_eq!(d.check("a"), Seen::InProgress);
        d.answered("a", reply("A"));
        assert_eq!(d.check("a"), Seen::Answered { delivered: false });
        d.delivered("a");
        assert_eq!(d.check("a"), Seen::Answered { delivered: true });
        d.answered("b", reply("B"));
        d.answered("c", reply("C"));
        assert_eq!(d.check("a"), Seen::New, "oldest forgotten past capacity");
        assert_eq!(d.reply("c").unwrap().payload, "C");
    }

    #[test]
    fn answers_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut d = Dedupe::new(3, Some(dir.path().to_path_buf()));
            for k in ["a", "b", "c", "d", "e", "f", "g", "h"] {
                d.answered(k, reply(k));
                if k != "h" {
                    d.delivered(k);
                }
            }
        }
        // A crash can leave half a line.
        let path = dir.path().join(FILE_NAME);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"{\"e\":\"answered\",\"k\":\"x").unwrap();
        let d = Dedupe::new(3, Some(dir.path().to_path_buf()));
        assert_eq!(d.check("h"), Seen::Answered { delivered: false });
        assert_eq!(d.reply("h").unwrap(), &reply("h"));
        assert_eq!(d.check("g"), Seen::Answered { delivered: true });
        assert_eq!(d.check("a"), Seen::New);
        assert_eq!(d.check("x"), Seen::New);
        let lines = std::fs::read_to_string(&path).unwrap();
        assert!(lines.lines().count() <= 6, "compacted at load");
    }
}
