//! The `file` source: one image file, read again whenever it changes (so
//! another program can keep replacing it).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use image::RgbImage;

use super::capture::{run_ticks, Shared, Source};

// ---------------------------------------------------------------------------
// File
// ---------------------------------------------------------------------------

/// What identifies a version of a file without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
    dev: u64,
    ino: u64,
}

impl FileStamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        FileStamp {
            len: meta.len(),
            modified: meta.modified().ok(),
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// An image file checked every tick; decoded again only when it changed
/// (size, mtime or inode), so a high rate costs a `stat`, not a decode, and
/// a removed or replaced file is noticed within one tick.
pub(super) struct FileSource {
    path: PathBuf,
    cache: Option<(FileStamp, Arc<RgbImage>)>,
}

/// Decode attempts on a file that keeps changing while it is read.
const FILE_SETTLE_ATTEMPTS: u32 = 5;
/// Pause between those attempts.
const FILE_SETTLE_PAUSE: Duration = Duration::from_millis(100);

impl FileSource {
    pub(super) fn new(path: PathBuf) -> Self {
        FileSource { path, cache: None }
    }

    fn stat(&self) -> Result<FileStamp, String> {
        let shown = self.path.display();
        let meta = std::fs::metadata(&self.path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => format!("image file {shown} does not exist"),
            _ => format!("cannot access image file {shown}: {e}"),
        })?;
        if !meta.is_file() {
            return Err(format!("{shown} is not a regular file"));
        }
        Ok(FileStamp::of(&meta))
    }

    fn grab(&mut self, shared: &Shared) -> Result<Arc<RgbImage>, String> {
        let mut attempts = 0;
        loop {
            let stamp = self.stat()?;
            if let Some((cached, image)) = &self.cache {
                if *cached == stamp {
                    return Ok(Arc::clone(image));
                }
            }
            match crate::preprocess::load_rgb(&self.path) {
                Ok(image) => {
                    let image = Arc::new(image);
                    self.cache = Some((stamp, Arc::clone(&image)));
                    return Ok(image);
                }
                Err(e) => {
                    // Producers that rewrite the file in place (rather than
                    // write-and-rename) expose half-written content for a
                    // moment. While the file is still changing, give the
                    // writer time instead of flapping to unavailable; a file
                    // that stays corrupt fails after one pause.
                    self.cache = None;
                    attempts += 1;
                    if attempts < FILE_SETTLE_ATTEMPTS
                        && shared.sleep_until(Instant::now() + FILE_SETTLE_PAUSE)
                        && self.stat().ok() != Some(stamp)
                    {
                        continue;
                    }
                    return Err(e.to_string());
                }
            }
        }
    }
}

impl Source for FileSource {
    fn run(&mut self, shared: &Shared) -> Result<(), String> {
        run_ticks(shared, |s| self.grab(s))
    }
}
