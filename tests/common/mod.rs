//! Shared helpers for the integration tests: fixture paths and the goldens
//! recorded by `models/make_tiny.py` from Hugging Face transformers.
#![allow(dead_code)]

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

pub const PRESETS: &[&str] = &["tiny-a", "tiny-b"];

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn bundle_dir(preset: &str) -> PathBuf {
    fixtures().join(preset)
}

pub fn image_path(name: &str) -> PathBuf {
    fixtures().join("images").join(name)
}

#[derive(Debug, Deserialize)]
pub struct GoldenImage {
    pub pixel_values_shape: Vec<usize>,
    pub pixel_values: Vec<f32>,
    pub vision_shape: Vec<usize>,
    pub vision: Vec<f32>,
}

#[derive(Debug, Deserialize)]
pub struct GoldenCase {
    pub image: String,
    pub prompt: String,
    pub qformer_input_ids: Vec<i64>,
    pub llm_input_ids: Vec<u32>,
    pub qformer_shape: Vec<usize>,
    pub qformer: Vec<f32>,
    pub tokens: Vec<u32>,
    pub text: String,
    pub min_logit_margin: f64,
    /// Each greedy step's top-1/top-2 margin (full-depth goldens only).
    #[serde(default)]
    pub logit_margins: Vec<f64>,
}

#[derive(Debug, Deserialize)]
pub struct Golden {
    pub preset: String,
    pub num_query_tokens: usize,
    pub max_new_tokens: usize,
    pub images: BTreeMap<String, GoldenImage>,
    pub cases: Vec<GoldenCase>,
}

pub fn golden(preset: &str) -> Golden {
    golden_at(&fixtures().join("goldens").join(format!("{preset}.json")))
}

/// Goldens in a file of the same shape elsewhere (models/parity_full.py).
pub fn golden_at(path: &std::path::Path) -> Golden {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The Q-Former (+ projection) on one golden case, fed the reference's own
/// image features so the stage is measured alone; checks the Q-Former
/// token ids and returns the max-abs difference from the reference output.
pub fn qformer_case_diff(qformer: &blipd::qformer::QFormer, g: &Golden, case: &GoldenCase) -> f32 {
    let img = &g.images[&case.image];
    let text = qformer.tokenize(&case.prompt).unwrap();
    assert_eq!(
        text.ids, case.qformer_input_ids,
        "{}: Q-Former tokens of {:?}",
        g.preset, case.prompt
    );
    let feats = blipd::vision::ImageFeatures {
        positions: img.vision_shape[1],
        hidden: img.vision_shape[2],
        data: std::sync::Arc::new(img.vision.clone()),
    };
    let out = qformer.run(&feats, &text).unwrap();
    max_abs_diff(&out, &case.qformer)
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max)
}

/// Copies a bundle directory into a fresh temp dir (for tests that damage it).
pub fn copy_bundle(preset: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for entry in std::fs::read_dir(bundle_dir(preset)).expect("read bundle") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).expect("copy");
    }
    dir
}

/// Runs a command that must succeed (its stderr is the failure message) and
/// parses its stdout as JSON.
pub fn json_stdout(cmd: &mut std::process::Command) -> serde_json::Value {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}
