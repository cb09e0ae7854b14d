//! The model bundle: a directory written by `models/export.py`.
//!
//! `bundle.json` holds everything the runtime must not guess (image size,
//! normalisation, token ids, generation defaults) and the sha256 of every
//! file, so a truncated copy or a mixed-up file is caught at load time with a
//! message that names it, instead of as garbage answers later.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

mod derive;
mod stamp;

pub use derive::{Check, Derivation, GraphPart, GraphRewrite, LlmRewrite, WriteError, Writer};
pub use stamp::Verified;

/// Name of the manifest inside a bundle directory.
pub const MANIFEST: &str = "bundle.json";
/// The manifest format this build understands.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("bundle directory {0} does not exist or is not a directory")]
    NotADirectory(PathBuf),
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid blipd manifest: {source}")]
    Manifest {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: unsupported bundle format_version {found} (this blipd reads {expected}); re-export with the matching models/export.py")]
    Version {
        path: PathBuf,
        found: u32,
        expected: u32,
    },
    #[error("bundle file {path} is missing")]
    MissingFile { path: PathBuf },
    #[error("bundle file {path} is corrupt: sha256 {actual}, manifest says {expected}")]
    Checksum {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("bundle file {path} has {actual} bytes, manifest says {expected}")]
    Size {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error("manifest is inconsistent: {0}")]
    Inconsistent(String),
    #[error("{0} already exists; choose a new folder for the derived bundle")]
    Exists(PathBuf),
    #[error("{dir}: its {part} is already {precision}; derive from an f32 bundle")]
    NotF32 {
        dir: PathBuf,
        part: &'static str,
        precision: String,
    },
    #[error("checking the derived bundle: {0}")]
    Check(Box<dyn std::error::Error + Send + Sync>),
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// How frames are turned into `pixel_values` (`BlipImageProcessor`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ImageSpec {
    pub height: u32,
    pub width: u32,
    /// PIL filter name: `bicubic` or `bilinear`.
    pub resample: String,
    pub rescale_factor: f64,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VisionSpec {
    pub file: String,
    pub hidden_size: usize,
    /// CLS + patches.
    pub num_positions: usize,
    pub patch_size: usize,
    pub num_layers: usize,
    /// Arithmetic of the graph's matmuls: `f32` (as exported), `int8` or
    /// `f16` (derived by models/vision_precision.py; not token-identical).
    #[serde(default = "f32_name")]
    pub precision: String,
    /// For a derived graph: what it was made from, how, and its agreement
    /// with the f32 graph.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub derived_from: Option<serde_json::Value>,
}

fn f32_name() -> String {
    "f32".into()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct QFormerSpec {
    pub file: String,
    pub tokenizer: String,
    pub num_query_tokens: usize,
    pub hidden_size: usize,
    /// Width of the projected outputs (= the LLM's embedding width).
    pub output_size: usize,
    /// Longest instruction (in Q-Former tokens, with [CLS]/[SEP]) the graph accepts.
    pub max_text_tokens: usize,
    /// Arithmetic of the graph's matmuls: `f32` (as exported) or `int8`
    /// (derived by models/vision_precision.py --qformer int8).
    #[serde(default = "f32_name")]
    pub precision: String,
    /// For a derived graph: what it was made from, how, and its agreement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub derived_from: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LlmSpec {
    pub file: String,
    /// The LLM's Hugging Face tokenizer (prompt encoding, answer decoding).
    pub tokenizer: String,
    /// GGUF tensor type of the weights: f32, f16, q8_0, q4_k_m ...
    pub weight_type: String,
    pub hidden_size: usize,
    pub vocab_size: usize,
    pub context_length: usize,
    pub bos_token_id: i32,
    pub eos_token_ids: Vec<i32>,
    pub add_bos: bool,
    /// HF `clean_up_tokenization_spaces` of the LLM tokenizer.
    pub clean_up_tokenization_spaces: bool,
}

/// Generation defaults from the checkpoint's `generation_config.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GenerationSpec {
    pub max_new_tokens: usize,
    pub do_sample: bool,
    pub temperature: f32,
    pub top_k: i32,
    pub top_p: f32,
    pub repetition_penalty: f32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileEntry {
    pub sha256: String,
    pub size: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    /// Free-form description of the source checkpoint (hub id or path).
    pub source: serde_json::Value,
    /// Exporter name and versions of the tools that wrote the bundle.
    pub exporter: serde_json::Value,
    pub image: ImageSpec,
    pub vision: VisionSpec,
    pub qformer: QFormerSpec,
    pub llm: LlmSpec,
    pub generation: GenerationSpec,
    /// sha256 and size of every file of the bundle, by relative path.
    pub files: BTreeMap<String, FileEntry>,
}

impl Manifest {
    /// What each stage runs in, as doctor and check-bundle print it:
    /// `llm q4_k_m, vision int8, qformer int8`.
    pub fn precisions(&self) -> String {
        format!(
            "llm {}, vision {}, qformer {}",
            self.llm.weight_type, self.vision.precision, self.qformer.precision
        )
    }
}

/// A bundle directory with its parsed manifest.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl Bundle {
    /// Reads the manifest and checks it is self-consistent. Does not hash the
    /// files: call [`Bundle::verify`] for that (done once at model load).
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, BundleError> {
        let dir = dir.as_ref().to_path_buf();
        if !dir.is_dir() {
            return Err(BundleError::NotADirectory(dir));
        }
        let path = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&path).map_err(|e| file_error(&path, e))?;
        let manifest: Manifest =
            serde_json::from_str(&text).map_err(|source| BundleError::Manifest {
                path: path.clone(),
                source,
            })?;
        if manifest.format_version != FORMAT_VERSION {
            return Err(BundleError::Version {
                path,
                found: manifest.format_version,
                expected: FORMAT_VERSION,
            });
        }
        let bundle = Self { dir, manifest };
        bundle.check_consistency()?;
        Ok(bundle)
    }

    fn check_consistency(&self) -> Result<(), BundleError> {
        let m = &self.manifest;
        let inconsistent = |msg: String| Err(BundleError::Inconsistent(msg));
        // Every name is a plain file inside the bundle: a manifest must not
        // reach outside it (`../x`, `/x`) when it is verified or derived.
        for f in m.files.keys() {
            let mut parts = Path::new(f).components();
            let plain = matches!(
                (parts.next(), parts.next()),
                (Some(std::path::Component::Normal(_)), None)
            );
            if !plain || f == MANIFEST {
                return inconsistent(format!(
                    "\"files\" names {f:?}: not a plain file name inside the bundle"
                ));
            }
        }
        for f in [
            &m.vision.file,
            &m.qformer.file,
            &m.qformer.tokenizer,
            &m.llm.file,
            &m.llm.tokenizer,
        ] {
            if !m.files.contains_key(f) {
                return inconsistent(format!("{f} is used but has no entry in \"files\""));
            }
        }
        if m.image.width == 0 || m.image.height == 0 {
            return inconsistent(format!(
                "image size {}x{} is empty",
                m.image.width, m.image.height
            ));
        }
        if m.image.std.contains(&0.0) {
            return inconsistent("image.std contains 0".into());
        }
        if m.qformer.num_query_tokens == 0 {
            return inconsistent("qformer.num_query_tokens is 0".into());
        }
        for (part, precision, known) in [
            ("vision", &m.vision.precision, &["f32", "int8", "f16"][..]),
            ("qformer", &m.qformer.precision, &["f32", "int8"][..]),
        ] {
            if !known.contains(&precision.as_str()) {
                return inconsistent(format!(
                    "{part}.precision \"{precision}\" is not one of {}",
                    known.join(", ")
                ));
            }
        }
        if m.qformer.output_size != m.llm.hidden_size {
            return inconsistent(format!(
                "qformer.output_size {} != llm.hidden_size {}",
                m.qformer.output_size, m.llm.hidden_size
            ));
        }
        Ok(())
    }

    /// Absolute path of a bundle file.
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// Checks the size and sha256 of every file listed in the manifest.
    pub fn verify(&self) -> Result<(), BundleError> {
        for (name, entry) in &self.manifest.files {
            let path = self.path(name);
            let meta = std::fs::metadata(&path).map_err(|e| file_error(&path, e))?;
            if meta.len() != entry.size {
                return Err(BundleError::Size {
                    path,
                    expected: entry.size,
                    actual: meta.len(),
                });
            }
            let actual = sha256_file(&path)?;
            if !actual.eq_ignore_ascii_case(&entry.sha256) {
                return Err(BundleError::Checksum {
                    path,
                    expected: entry.sha256.clone(),
                    actual,
                });
            }
        }
        Ok(())
    }

    /// Rewrites the manifest after a file changed ([`Bundle::derive`]).
    pub fn write_manifest(&self) -> Result<(), BundleError> {
        let path = self.dir.join(MANIFEST);
        let text = serde_json::to_string_pretty(&self.manifest).map_err(|source| {
            BundleError::Manifest {
                path: path.clone(),
                source,
            }
        })?;
        let write = |path: &Path| -> std::io::Result<()> {
            let mut f = std::fs::File::create(path)?;
            std::io::Write::write_all(&mut f, (text + "\n").as_bytes())?;
            f.sync_all()
        };
        write(&path).map_err(|source| BundleError::Io { path, source })
    }
}

/// A missing file is named as such; other I/O errors keep their cause.
fn file_error(path: &Path, source: std::io::Error) -> BundleError {
    if source.kind() == std::io::ErrorKind::NotFound {
        BundleError::MissingFile {
            path: path.to_path_buf(),
        }
    } else {
        BundleError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Where the packages (.deb) install the demo bundle.
pub const INSTALLED_DEMO_BUNDLE: &str = "/usr/share/blipd/demo";

/// The bundle used when none is configured: the demo model (a few MB,
/// `models/train_demo.py`), which answers questions about the shape scenes
/// the test-pattern camera draws; from the source tree this binary was built
/// in, else where the package installed it.
pub fn default_bundle_dir() -> PathBuf {
    let source = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/demo");
    let installed = PathBuf::from(INSTALLED_DEMO_BUNDLE);
    if !source.join("bundle.json").is_file() && installed.join("bundle.json").is_file() {
        installed
    } else {
        source
    }
}

/// Hex sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String, BundleError> {
    let io = |source| BundleError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}
