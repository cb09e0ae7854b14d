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
//! directory (JSON lines), compacted when it grows past four times its
//! capacity. Power-loss safe: every appended line is fsynced before the
//! reply it records is published; a compaction writes a new file, fsyncs
//! it, renames it over the old one and fsyncs the directory; at load a line
//! cut short by a crash (even inside a multi-byte character) is skipped,
//! never the lines before it.

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
    /// The file, open for appending (None until the first append or after an error).
    appender: Option<std::fs::File>,
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
            appender: None,
            lines: 0,
        };
        if let Some(dir) = state_dir {
            if let Err(e) = std::fs::create_dir_all(&dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot create state directory; answered ids are kept in memory only");
                return d;
            }
            let path = dir.join(FILE_NAME);
            match std::fs::read(&path) {
                Ok(bytes) => d.load(&bytes),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    // Never compact over a file we could not read.
                    tracing::warn!(file = %path.display(), error = %e, "cannot read the answered-requests file; answered ids are kept in memory only");
                    return d;
                }
            }
            d.file = Some(path);
            d.compact();
        }
        d
    }

    /// Replays the file's lines; unreadable ones (cut short by a crash or a
    /// power loss, not UTF-8, not JSON) are skipped one by one.
    fn load(&mut self, bytes: &[u8]) {
        let mut skipped = 0;
        for line in bytes.split(|&b| b == b'\n') {
            if line.is_empty() {
                continue;
            }
            match serde_json::from_slice::<Line>(line) {
                Ok(Line::Answered { k, r }) => self.insert(k, r, false),
                Ok(Line::Delivered { k }) => {
                    if let Some(e) = self.answered.get_mut(&k) {
                        e.delivered = true;
                    }
                }
                Err(_) => skipped += 1,
            }
        }
        if skipped > 0 {
            tracing::info!(
                skipped,
                "skipped unreadable lines of the answered-requests file (cut by a crash)"
            );
        }
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
        if self.appender.is_none() {
            match std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
            {
                Ok(f) => self.appender = Some(f),
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "cannot record answered request");
                    return;
                }
            }
        }
        let res = self.appender.as_mut().map(|f| {
            f.write_all(text.as_bytes())
                // On disk before the reply it records can reach anyone.
                .and_then(|()| f.sync_data())
        });
        if let Some(Err(e)) = res {
            tracing::warn!(file = %path.display(), error = %e, "cannot record answered request");
            self.appender = None;
        }
        self.lines += 1;
        if self.lines > 4 * self.capacity {
            self.compact();
        }
    }

    fn compact(&mut self) {
        let Some(path) = self.file.clone() else {
            return;
        };
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
        self.appender = None;
        if let Err(e) = replace_file(&path, text.as_bytes()) {
            tracing::warn!(file = %path.display(), error = %e, "cannot rewrite the answered-requests file");
        }
        self.lines = lines;
    }
}

/// Atomically replaces `path` with `bytes`, durable across a power loss:
/// write a temporary file, fsync it, rename it over `path`, fsync the directory.
fn replace_file(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
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

    #[test]
    fn a_file_cut_inside_a_character_keeps_every_whole_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        {
            let mut d = Dedupe::new(10, Some(dir.path().to_path_buf()));
            d.answered("a", reply("réponse à a"));
            d.delivered("a");
            d.answered("b", reply("ответ на b"));
        }
        let mut bytes = std::fs::read(&path).unwrap();
        // Cut the last line inside the two-byte 'т' (0xD1 0x82).
        let cut = bytes.windows(2).rposition(|w| w == [0xd1, 0x82]).unwrap() + 1;
        bytes.truncate(cut);
        std::fs::write(&path, &bytes).unwrap();
        assert!(
            std::str::from_utf8(&bytes).is_err(),
            "the file is no longer UTF-8"
        );
        let d = Dedupe::new(10, Some(dir.path().to_path_buf()));
        assert_eq!(d.check("a"), Seen::Answered { delivered: true });
        assert_eq!(d.reply("a").unwrap(), &reply("réponse à a"));
        assert_eq!(d.check("b"), Seen::New, "the cut line is dropped, alone");
        // Compacted at load: the file is whole again and keeps "a".
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        let d = Dedupe::new(10, Some(dir.path().to_path_buf()));
        assert_eq!(d.check("a"), Seen::Answered { delivered: true });
    }

    #[test]
    fn an_unreadable_file_is_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the file should be: reading fails (not NotFound).
        std::fs::create_dir(dir.path().join(FILE_NAME)).unwrap();
        let mut d = Dedupe::new(10, Some(dir.path().to_path_buf()));
        d.answered("a", reply("A"));
        assert_eq!(d.check("a"), Seen::Answered { delivered: false });
        assert!(dir.path().join(FILE_NAME).is_dir());
    }
}
