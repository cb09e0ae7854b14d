//! A bundle made from another with some parts rewritten (`blipd quantize
//! BUNDLE OUT [TYPE] [--vision int8] [--qformer int8]`): the LLM in another
//! GGUF type, a graph in int8. The bundle knows files, not llama.cpp or
//! ONNX: the caller's writers produce the new files, this module copies the
//! rest, hashes what is new and records in the manifest what each part is
//! and what it was made from. Everything is built in a hidden sibling folder
//! and renamed to `out` at the end, so an interrupted run leaves no half
//! bundle behind.

use super::{sha256_file, Bundle, BundleError, FileEntry, Manifest};
use std::collections::BTreeSet;
use std::path::Path;

pub type WriteError = Box<dyn std::error::Error + Send + Sync>;
/// Writes a new file at the second path from the source one at the first.
pub type Writer<'a> = Box<dyn FnOnce(&Path, &Path) -> Result<(), WriteError> + 'a>;
/// Compares the derived bundle (second) with its source (first) once every
/// file is written; the value is recorded as `derived_from.agreement`.
pub type Check<'a> =
    Box<dyn FnOnce(&Bundle, &Bundle) -> Result<serde_json::Value, WriteError> + 'a>;

/// Which graph of a bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GraphPart {
    Vision,
    QFormer,
}

impl GraphPart {
    pub fn name(self) -> &'static str {
        match self {
            GraphPart::Vision => "vision",
            GraphPart::QFormer => "qformer",
        }
    }

    /// The part's graph file and precision in `m`.
    fn spec(self, m: &Manifest) -> (&str, &str) {
        match self {
            GraphPart::Vision => (&m.vision.file, &m.vision.precision),
            GraphPart::QFormer => (&m.qformer.file, &m.qformer.precision),
        }
    }

    /// What a derivation records about the part: precision, derived_from.
    fn record(self, m: &mut Manifest) -> (&mut String, &mut Option<serde_json::Value>) {
        match self {
            GraphPart::Vision => (&mut m.vision.precision, &mut m.vision.derived_from),
            GraphPart::QFormer => (&mut m.qformer.precision, &mut m.qformer.derived_from),
        }
    }
}

/// Maps an I/O error to one that names `path`.
fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BundleError {
    let path = path.to_path_buf();
    move |source| BundleError::Io { path, source }
}

/// A graph rewritten in another precision. The writer writes the graph file
/// under its old name; external data goes beside it (`vision.onnx.data`).
pub struct GraphRewrite<'a> {
    pub part: GraphPart,
    pub precision: String,
    /// How it was made, as `derived_from.tool` records it.
    pub tool: String,
    pub write: Writer<'a>,
}

/// The LLM rewritten as another GGUF weight type (`llm.gguf`).
pub struct LlmRewrite<'a> {
    pub weight_type: String,
    pub write: Writer<'a>,
}

/// What [`Bundle::derive`] changes.
#[derive(Default)]
pub struct Derivation<'a> {
    pub llm: Option<LlmRewrite<'a>>,
    pub graphs: Vec<GraphRewrite<'a>>,
    /// Run before the rename when a graph was rewritten.
    pub check: Option<Check<'a>>,
}

/// The file a graph part reads and its external data (`vision.onnx`,
/// `vision.onnx.data`), among the manifest's files.
fn graph_files<'a>(files: impl Iterator<Item = &'a String>, graph: &str) -> BTreeSet<String> {
    files
        .filter(|n| *n == graph || n.starts_with(&format!("{graph}.")))
        .cloned()
        .collect()
}

impl Bundle {
    /// Writes a copy of this bundle to `out` with the parts `plan` names
    /// rewritten. `out` must not exist; a graph must be f32 to be derived.
    pub fn derive(&self, out: &Path, plan: Derivation) -> Result<Bundle, BundleError> {
        if out.exists() {
            return Err(BundleError::Exists(out.to_path_buf()));
        }
        for g in &plan.graphs {
            let (_, precision) = g.part.spec(&self.manifest);
            if precision != "f32" {
                return Err(BundleError::NotF32 {
                    dir: self.dir.clone(),
                    part: g.part.name(),
                    precision: precision.into(),
                });
            }
        }
        let name = out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "bundle".into());
        let tmp = out.with_file_name(format!(".{name}.partial-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        // Removes the half-built folder on every way out but success, a
        // panic in tract or llama.cpp included.
        struct Partial<'p>(&'p Path, bool);
        impl Drop for Partial<'_> {
            fn drop(&mut self) {
                if !self.1 {
                    let _ = std::fs::remove_dir_all(self.0);
                }
            }
        }
        let mut partial = Partial(&tmp, false);
        let mut b = self.build_into(&tmp, plan)?;
        std::fs::File::open(&tmp)
            .and_then(|d| d.sync_all())
            .map_err(io(&tmp))?;
        std::fs::rename(&tmp, out).map_err(io(out))?;
        partial.1 = true;
        b.dir = out.to_path_buf();
        Ok(b)
    }

    fn build_into(&self, dir: &Path, plan: Derivation) -> Result<Bundle, BundleError> {
        let src = &self.manifest;
        let mut manifest = src.clone();
        let mut replaced = BTreeSet::new();
        if plan.llm.is_some() {
            replaced.insert(src.llm.file.clone());
            if src.llm.file != "llm.gguf" && src.files.contains_key("llm.gguf") {
                return Err(BundleError::Inconsistent(
                    "llm.gguf, the name of the new LLM, is another file of the bundle".into(),
                ));
            }
        }
        let mut graphs = BTreeSet::new();
        for part in [GraphPart::Vision, GraphPart::QFormer] {
            let files = graph_files(src.files.keys(), part.spec(src).0);
            if plan.graphs.iter().any(|g| g.part == part) {
                replaced.extend(files);
            } else {
                graphs.extend(files);
            }
        }
        for name in src.files.keys().filter(|n| !replaced.contains(*n)) {
            let to = dir.join(name);
            let from = self.path(name);
            // A large LLM is hard-linked where the file system allows (a
            // symlink is copied: a link to it would dangle or resolve
            // elsewhere); graphs are copied: onnx (Python) refuses external
            // data from a file with several links (a "hardlink attack").
            let linkable = std::fs::symlink_metadata(&from).is_ok_and(|m| m.is_file());
            if graphs.contains(name) || !linkable || std::fs::hard_link(&from, &to).is_err() {
                std::fs::copy(&from, &to).map_err(|source| BundleError::Io { path: to, source })?;
            }
        }
        let write_err = |to: &Path| {
            let path = to.to_path_buf();
            move |source| BundleError::Write { path, source }
        };
        if let Some(llm) = plan.llm {
            let to = dir.join("llm.gguf");
            (llm.write)(&self.path(&src.llm.file), &to).map_err(write_err(&to))?;
            manifest.llm.file = "llm.gguf".into();
            manifest.llm.weight_type = llm.weight_type;
        }
        let mut derived = Vec::new();
        for g in plan.graphs {
            let file = g.part.spec(src).0;
            let to = dir.join(file);
            (g.write)(&self.path(file), &to).map_err(write_err(&to))?;
            let (precision, from) = g.part.record(&mut manifest);
            *precision = g.precision;
            *from = Some(serde_json::json!({
                "precision": "f32",
                "sha256": src.files.get(file).map(|e| e.sha256.clone()),
                "tool": g.tool,
            }));
            derived.push(g.part);
        }
        manifest.files.retain(|name, _| !replaced.contains(name));
        for entry in std::fs::read_dir(dir).map_err(io(dir))? {
            let entry = entry.map_err(io(dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if manifest.files.contains_key(&name) || name == super::MANIFEST {
                continue;
            }
            let path = entry.path();
            let size = entry.metadata().map_err(io(&path))?.len();
            let sha256 = sha256_file(&path)?;
            // On disk before the rename: a board may lose power right after.
            std::fs::File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(io(&path))?;
            manifest.files.insert(name, FileEntry { sha256, size });
        }
        let mut b = Bundle {
            dir: dir.to_path_buf(),
            manifest,
        };
        if let Some(check) = plan.check.filter(|_| !derived.is_empty()) {
            let agreement = check(self, &b).map_err(BundleError::Check)?;
            for part in derived {
                if let (_, Some(from)) = part.record(&mut b.manifest) {
                    from["agreement"] = agreement.clone();
                }
            }
        }
        b.write_manifest()?;
        Ok(b)
    }
}
