//! The bundle check: the model files, verified as `blipd serve` verifies them.

use super::*;

/// Opens and fully verifies the bundle (what `blipd serve` does at load).
/// Returns the manifest whenever it could be read, even if a file is bad, so
/// the memory check can still size the model.
pub(super) fn bundle_check(dir: &Path) -> (Check, Option<Manifest>) {
    let shown = dir.display();
    let bundle = match Bundle::open(dir) {
        Ok(b) => b,
        Err(e) => {
            let fix = match &e {
                BundleError::NotADirectory(_) => format!(
                    "set `model` in the config to the bundle directory written by \
                     models/export.py (it holds {MANIFEST}), or copy the bundle to {shown}"
                ),
                BundleError::MissingFile { .. } => format!(
                    "{shown} has no {MANIFEST}: copy the whole bundle directory, or point \
                     `model` at the directory that holds {MANIFEST}"
                ),
                BundleError::Io { .. } => {
                    format!("make {shown} and its files readable by the user running blipd")
                }
                _ => "re-export the bundle with this blipd's models/export.py".into(),
            };
            return (Check::fail("bundle", e.to_string(), fix), None);
        }
    };
    let manifest = bundle.manifest.clone();
    let total: u64 = manifest.files.values().map(|f| f.size).sum();
    let summary = format!(
        "{} files, {} ({})",
        manifest.files.len(),
        human_bytes(total),
        manifest.precisions()
    );
    let check = match bundle.verify() {
        Ok(()) => Check::ok(
            "bundle",
            format!("{shown}: {summary}, sizes and sha256 match {MANIFEST}"),
        ),
        Err(e) => {
            let fix = match &e {
                BundleError::Io { .. } => {
                    format!("make the files of {shown} readable by the user running blipd")
                }
                _ => format!(
                    "the copy in {shown} is incomplete or damaged: copy the bundle again (e.g. \
                     `rsync -a --checksum SRC/ {shown}/`) or re-export it with models/export.py"
                ),
            };
            Check::fail("bundle", format!("{shown} ({summary}): {e}"), fix)
        }
    };
    (check, Some(manifest))
}
