//! A bundle made from another with its LLM rewritten (`blipd quantize
//! BUNDLE OUT`): the other files copied, the new GGUF written by the caller
//! (the bundle knows files, not llama.cpp), the manifest updated with its
//! hash, size and weight type. Everything is built in a hidden sibling
//! folder and renamed to `out` at the end, so an interrupted run leaves no
//! half bundle behind.

use super::{sha256_file, Bundle, BundleError, FileEntry};
use std::path::Path;

type WriteError = Box<dyn std::error::Error + Send + Sync>;

impl Bundle {
    /// Writes a copy of this bundle to `out` whose LLM is `write(from, to)`'s
    /// output, recorded as `weight_type`. `out` must not exist.
    pub fn derive_llm(
        &self,
        out: &Path,
        weight_type: &str,
        write: impl FnOnce(&Path, &Path) -> Result<(), WriteError>,
    ) -> Result<Bundle, BundleError> {
        if out.exists() {
            return Err(BundleError::Exists(out.to_path_buf()));
        }
        let name = out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "bundle".into());
        let tmp = out.with_file_name(format!(".{name}.partial-{}", std::process::id()));
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| BundleError::Io { path, source }
        };
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        let built = self.build_into(&tmp, weight_type, write);
        let result = built.and_then(|mut b| {
            std::fs::rename(&tmp, out).map_err(io(out))?;
            b.dir = out.to_path_buf();
            Ok(b)
        });
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        result
    }

    fn build_into(
        &self,
        dir: &Path,
        weight_type: &str,
        write: impl FnOnce(&Path, &Path) -> Result<(), WriteError>,
    ) -> Result<Bundle, BundleError> {
        let mut manifest = self.manifest.clone();
        let old_llm = manifest.llm.file.clone();
        for name in manifest.files.keys().filter(|n| **n != old_llm) {
            let to = dir.join(name);
            std::fs::copy(self.path(name), &to)
                .map_err(|source| BundleError::Io { path: to, source })?;
        }
        let new_llm = "llm.gguf".to_string();
        let to = dir.join(&new_llm);
        write(&self.path(&old_llm), &to).map_err(|source| BundleError::Write {
            path: to.clone(),
            source,
        })?;
        let size = std::fs::metadata(&to)
            .map_err(|source| BundleError::Io {
                path: to.clone(),
                source,
            })?
            .len();
        manifest.files.remove(&old_llm);
        manifest.files.insert(
            new_llm.clone(),
            FileEntry {
                sha256: sha256_file(&to)?,
                size,
            },
        );
        manifest.llm.file = new_llm;
        manifest.llm.weight_type = weight_type.to_string();
        let b = Bundle {
            dir: dir.to_path_buf(),
            manifest,
        };
        b.write_manifest()?;
        Ok(b)
    }
}
