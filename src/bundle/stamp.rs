//! Verified stamps: a 7B bundle is 4-15 GB, and hashing all of it at every
//! start of the daemon takes tens of seconds on a board. After a file has
//! been hashed and matched the manifest, its stamp (device, inode, size,
//! modification and change times) is recorded with the hash; at the next
//! start a file whose stamp is unchanged is trusted without reading it. Any
//! write to the file, a copy over it, or a `touch` changes its ctime (which
//! userland cannot set back), so a changed file is hashed again. `blipd
//! doctor` and `blipd check-bundle` always hash everything.

use super::{file_error, sha256_file, Bundle, BundleError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    sha256: String,
}

impl Stamp {
    fn of(m: &std::fs::Metadata, sha256: &str) -> Self {
        let ns = |s: i64, n: i64| s as i128 * 1_000_000_000 + n as i128;
        Self {
            dev: m.dev(),
            ino: m.ino(),
            size: m.len(),
            mtime_ns: ns(m.mtime(), m.mtime_nsec()),
            ctime_ns: ns(m.ctime(), m.ctime_nsec()),
            sha256: sha256.to_ascii_lowercase(),
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Stamps {
    /// By canonical file path.
    files: BTreeMap<String, Stamp>,
}

/// What a stamped verification did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verified {
    /// Files hashed (new, changed, or without a stamp).
    pub hashed: usize,
    pub bytes_hashed: u64,
    /// Files trusted from their unchanged stamp.
    pub trusted: usize,
    /// Why the stamps could not be saved (the verification itself stands).
    pub save_error: Option<String>,
}

impl Bundle {
    /// Like [`Bundle::verify`], but a file whose stamp in `stamps` (a JSON
    /// file, created if missing) is unchanged since it last matched the
    /// manifest is not read again. An unreadable or foreign stamps file is
    /// treated as empty.
    pub fn verify_stamped(&self, stamps: &Path) -> Result<Verified, BundleError> {
        let mut known: Stamps = std::fs::read(stamps)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let mut out = Verified::default();
        let mut changed = false;
        for (name, entry) in &self.manifest.files {
            let path = self.path(name);
            let real = std::fs::canonicalize(&path).map_err(|e| file_error(&path, e))?;
            let key = real.to_string_lossy().into_owned();
            let before = std::fs::metadata(&real).map_err(|e| file_error(&path, e))?;
            if before.len() != entry.size {
                return Err(BundleError::Size {
                    path,
                    expected: entry.size,
                    actual: before.len(),
                });
            }
            let stamp = Stamp::of(&before, &entry.sha256);
            if known.files.get(&key) == Some(&stamp) {
                out.trusted += 1;
                continue;
            }
            let actual = sha256_file(&real)?;
            if !actual.eq_ignore_ascii_case(&entry.sha256) {
                known.files.remove(&key);
                let _ = save(stamps, &known);
                return Err(BundleError::Checksum {
                    path,
                    expected: entry.sha256.clone(),
                    actual,
                });
            }
            out.hashed += 1;
            out.bytes_hashed += entry.size;
            // Recorded only if the file did not change while it was read.
            let after = std::fs::metadata(&real).map_err(|e| file_error(&path, e))?;
            if Stamp::of(&after, &entry.sha256) == stamp {
                known.files.insert(key, stamp);
                changed = true;
            }
        }
        if changed {
            out.save_error = save(stamps, &known).err();
        }
        Ok(out)
    }
}

/// Writes the stamps atomically (a temporary file renamed into place).
fn save(path: &Path, stamps: &Stamps) -> Result<(), String> {
    let text = serde_json::to_vec_pretty(stamps).map_err(|e| e.to_string())?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy_tiny(to: &Path) -> Bundle {
        let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-a");
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
        Bundle::open(to).unwrap()
    }

    #[test]
    fn unchanged_files_are_trusted_changed_ones_hashed_again() {
        let dir = tempfile::tempdir().unwrap();
        let b = copy_tiny(&dir.path().join("b"));
        let stamps = dir.path().join("state/verified.json");
        let n = b.manifest.files.len();
        let first = b.verify_stamped(&stamps).unwrap();
        assert_eq!(
            (first.hashed, first.trusted, first.save_error),
            (n, 0, None)
        );
        let again = b.verify_stamped(&stamps).unwrap();
        assert_eq!((again.hashed, again.trusted, again.bytes_hashed), (0, n, 0));

        // One byte flipped in place (same size): hashed again, and refused.
        let f = b.path(&b.manifest.llm.file);
        let mut bytes = std::fs::read(&f).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 1;
        std::fs::write(&f, &bytes).unwrap();
        let e = b.verify_stamped(&stamps).unwrap_err();
        assert!(matches!(e, BundleError::Checksum { .. }), "{e}");
        // Put back: hashed once more, then trusted.
        bytes[mid] ^= 1;
        std::fs::write(&f, &bytes).unwrap();
        let fixed = b.verify_stamped(&stamps).unwrap();
        assert_eq!((fixed.hashed, fixed.trusted), (1, n - 1));
        assert_eq!(b.verify_stamped(&stamps).unwrap().hashed, 0);

        // A garbled stamps file is no stamps at all.
        std::fs::write(&stamps, "not json").unwrap();
        assert_eq!(b.verify_stamped(&stamps).unwrap().hashed, n);
    }
}
