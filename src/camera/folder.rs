//! The `folder` source: the images of a folder shown in turn.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::RgbImage;

use super::capture::{run_ticks, Shared, Source};

// ---------------------------------------------------------------------------
// Folder
// ---------------------------------------------------------------------------

/// File extensions (lowercase) a folder camera shows.
const IMAGE_EXTENSIONS: [&str; 5] = ["png", "jpg", "jpeg", "bmp", "webp"];

/// The images of a folder in name order, listed again on every tick.
///
/// Position is remembered by name, not index, so files added or removed
/// between ticks do not make it skip or repeat: the next image is the first
/// whose name sorts after the one shown last, wrapping around.
pub(super) struct FolderSource {
    path: PathBuf,
    last: Option<OsString>,
    /// Files that failed to decode, warned about once until they recover.
    unreadable: HashSet<OsString>,
}

impl FolderSource {
    pub(super) fn new(path: PathBuf) -> Self {
        FolderSource {
            path,
            last: None,
            unreadable: HashSet::new(),
        }
    }

    fn list(&self) -> Result<Vec<OsString>, String> {
        let shown = self.path.display();
        let entries = std::fs::read_dir(&self.path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => format!("image folder {shown} does not exist"),
            _ => format!("cannot list image folder {shown}: {e}"),
        })?;
        let mut names: Vec<OsString> = entries
            .filter_map(|entry| entry.ok())
            .map(|entry| entry.file_name())
            .filter(is_image_name)
            // Follows symlinks; skips subfolders and vanished entries.
            .filter(|name| {
                std::fs::metadata(self.path.join(name))
                    .map(|m| m.is_file())
                    .unwrap_or(false)
            })
            .collect();
        names.sort();
        Ok(names)
    }

    fn grab(&mut self, camera: &str) -> Result<Arc<RgbImage>, String> {
        let names = self.list()?;
        if names.is_empty() {
            return Err(format!(
                "image folder {} contains no images ({})",
                self.path.display(),
                IMAGE_EXTENSIONS.join(", ")
            ));
        }
        self.unreadable
            .retain(|name| names.binary_search(name).is_ok());
        let start = match &self.last {
            Some(last) => names.partition_point(|n| n <= last) % names.len(),
            None => 0,
        };
        let mut last_error = String::new();
        for k in 0..names.len() {
            let name = &names[(start + k) % names.len()];
            let path = self.path.join(name);
            match crate::preprocess::load_rgb(&path) {
                Ok(image) => {
                    if self.unreadable.remove(name) {
                        tracing::info!(camera, file = %path.display(), "image in folder readable again");
                    }
                    self.last = Some(name.clone());
                    return Ok(Arc::new(image));
                }
                Err(e) => {
                    last_error = e.to_string();
                    if self.unreadable.insert(name.clone()) {
                        tracing::warn!(camera, file = %path.display(), error = %e, "skipping unreadable image in folder");
                    }
                }
            }
        }
        Err(format!(
            "none of the {} images in folder {} can be read (last error: {last_error})",
            names.len(),
            self.path.display()
        ))
    }
}

fn is_image_name(name: &OsString) -> bool {
    let path = Path::new(name);
    let hidden = name.as_encoded_bytes().first() == Some(&b'.');
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase());
    !hidden && ext.is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.as_str()))
}

impl Source for FolderSource {
    fn run(&mut self, shared: &Shared) -> Result<(), String> {
        run_ticks(shared, |s| self.grab(s.name()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn image_names() {
        for yes in ["a.png", "b.JPG", "c.jpeg", "d.bmp", "e.webp"] {
            assert!(is_image_name(&yes.into()), "{yes}");
        }
        for no in [".a.png", "a.png.tmp", "README", "a.gif", "png"] {
            assert!(!is_image_name(&no.into()), "{no}");
        }
    }
}
