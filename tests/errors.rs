//! Bad input gets a specific error naming the problem, never a panic.

mod common;

use blipd::bundle::BundleError;
use blipd::llm::{GenerateParams, LlmError};
use blipd::preprocess::{decode_rgb, load_rgb, PreprocessError};
use blipd::qformer::QFormerError;
use blipd::{Pipeline, PipelineError, PipelineOptions};
use common::*;

fn opts() -> PipelineOptions {
    PipelineOptions::default().with_threads(1)
}

fn load_err(dir: &std::path::Path) -> PipelineError {
    match Pipeline::load(dir, &opts()) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e,
    }
}

#[test]
fn missing_bundle_directory() {
    let e = load_err(std::path::Path::new("/nonexistent/bundle"));
    assert!(
        matches!(e, PipelineError::Bundle(BundleError::NotADirectory(_))),
        "{e}"
    );
    assert!(e.to_string().contains("/nonexistent/bundle"));
}

#[test]
fn missing_bundle_file() {
    let dir = copy_bundle("tiny-a");
    std::fs::remove_file(dir.path().join("qformer.onnx.data")).unwrap();
    let e = load_err(dir.path());
    assert!(
        matches!(e, PipelineError::Bundle(BundleError::MissingFile { .. })),
        "{e}"
    );
    assert!(e.to_string().contains("qformer.onnx.data"), "{e}");
}

#[test]
fn corrupt_file_fails_checksum() {
    let dir = copy_bundle("tiny-a");
    let path = dir.path().join("llm.gguf");
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    let e = load_err(dir.path());
    assert!(
        matches!(e, PipelineError::Bundle(BundleError::Checksum { .. })),
        "{e}"
    );
    assert!(
        e.to_string().contains("llm.gguf") && e.to_string().contains("corrupt"),
        "{e}"
    );
}

#[test]
fn truncated_file_fails_size_check() {
    let dir = copy_bundle("tiny-b");
    let path = dir.path().join("vision.onnx.data");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 3]).unwrap();
    let e = load_err(dir.path());
    assert!(
        matches!(e, PipelineError::Bundle(BundleError::Size { .. })),
        "{e}"
    );
}

#[test]
fn unparsable_manifest() {
    let dir = copy_bundle("tiny-a");
    std::fs::write(dir.path().join("bundle.json"), "{ not json").unwrap();
    let e = load_err(dir.path());
    assert!(
        matches!(e, PipelineError::Bundle(BundleError::Manifest { .. })),
        "{e}"
    );
}

fn edit_manifest(dir: &std::path::Path, f: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("bundle.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

#[test]
fn manifest_dimension_mismatch_with_graph() {
    // The manifest claims another vision width than the graph produces.
    let dir = copy_bundle("tiny-a");
    edit_manifest(dir.path(), |v| v["vision"]["hidden_size"] = 80.into());
    let e = load_err(dir.path());
    assert!(matches!(e, PipelineError::Graph(_)), "{e}");
    assert!(e.to_string().contains("manifest"), "{e}");

    // The manifest's image size does not fit the vision graph's patches.
    let dir = copy_bundle("tiny-a");
    edit_manifest(dir.path(), |v| {
        v["image"]["height"] = 40.into();
        v["image"]["width"] = 40.into();
    });
    let e = load_err(dir.path());
    assert!(matches!(e, PipelineError::Graph(_)), "{e}");
}

#[test]
fn manifest_inconsistent_widths() {
    let dir = copy_bundle("tiny-b");
    edit_manifest(dir.path(), |v| v["llm"]["hidden_size"] = 128.into());
    let e = load_err(dir.path());
    assert!(
        matches!(e, PipelineError::Bundle(BundleError::Inconsistent(_))),
        "{e}"
    );
}

#[test]
fn newer_manifest_version_is_refused() {
    let dir = copy_bundle("tiny-b");
    edit_manifest(dir.path(), |v| v["format_version"] = 99.into());
    let e = load_err(dir.path());
    assert!(
        matches!(
            e,
            PipelineError::Bundle(BundleError::Version { found: 99, .. })
        ),
        "{e}"
    );
}

#[test]
fn unreadable_and_truncated_images() {
    let e = load_rgb(std::path::Path::new("/nonexistent.png")).unwrap_err();
    assert!(matches!(e, PreprocessError::Read { .. }));
    assert!(e.to_string().contains("/nonexistent.png"), "{e}");

    let png = std::fs::read(image_path("garage.png")).unwrap();
    let e = decode_rgb(&png[..png.len() / 2]).unwrap_err();
    assert!(matches!(e, PreprocessError::Read { .. }), "{e}");

    let jpg = std::fs::read(image_path("porch.jpg")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cut = dir.path().join("cut.jpg");
    for len in [2, 200, jpg.len() / 2, jpg.len() - 10] {
        std::fs::write(&cut, &jpg[..len]).unwrap();
        let e = load_rgb(&cut).expect_err("a truncated JPEG must not decode");
        assert!(e.to_string().contains("cut.jpg"), "{e}");
    }

    let e = decode_rgb(b"this is not an image").unwrap_err();
    assert!(matches!(e, PreprocessError::Read { .. }), "{e}");
}

#[test]
fn empty_and_too_long_instructions() {
    let mut p = Pipeline::load(bundle_dir("tiny-a"), &opts()).unwrap();
    let img = load_rgb(&image_path("garage.png")).unwrap();
    let params = GenerateParams {
        max_new_tokens: 4,
        sampling: None,
        constraint: None,
    };
    for empty in ["", "   ", "\n\t"] {
        let e = p.ask(&img, empty, &params).unwrap_err();
        assert!(
            matches!(e, PipelineError::QFormer(QFormerError::EmptyPrompt)),
            "{empty:?}: {e}"
        );
        assert!(e.is_input_error());
    }
    // tiny-a: Q-Former takes 128 text positions, the LLM context is 256.
    let long = "count the people ".repeat(60);
    let e = p.ask(&img, &long, &params).unwrap_err();
    assert!(
        matches!(
            e,
            PipelineError::QFormer(QFormerError::PromptTooLong { max: 128, .. })
        ),
        "{e}"
    );
    assert!(e.is_input_error());

    // Short enough for the Q-Former, too long for the LLM context (digits are
    // one LLaMA token each but one WordPiece per number).
    let digits = "1234567890 ".repeat(25);
    let e = p.ask(&img, &digits, &params).unwrap_err();
    assert!(
        matches!(
            e,
            PipelineError::Llm(LlmError::PromptTooLong { n_ctx: 256, .. })
        ),
        "{e}"
    );
    assert!(e.to_string().contains("context"), "{e}");

    // Still answers afterwards.
    assert!(p.ask(&img, "What is in the picture?", &params).is_ok());
}

#[test]
fn zero_sized_image_is_an_error() {
    let mut p = Pipeline::load(bundle_dir("tiny-b"), &opts()).unwrap();
    let img = image::RgbImage::new(0, 0);
    let e = p.image_features(&img).unwrap_err();
    assert!(
        matches!(
            e,
            PipelineError::Preprocess(PreprocessError::EmptyImage { .. })
        ),
        "{e}"
    );
}

#[test]
fn manifest_file_names_stay_inside_the_bundle() {
    // A manifest naming `../x` or `/x` would have verify read, and a derived
    // bundle write, outside the bundle's folder.
    for name in [
        "../outside.txt",
        "/etc/hostname",
        "sub/dir.bin",
        "bundle.json",
    ] {
        let dir = copy_bundle("tiny-a");
        edit_manifest(dir.path(), |v| {
            v["files"][name] = serde_json::json!({"sha256": "00", "size": 0});
        });
        let e = load_err(dir.path());
        assert!(
            matches!(e, PipelineError::Bundle(BundleError::Inconsistent(_))),
            "{name}: {e}"
        );
        assert!(e.to_string().contains("not a plain file name"), "{e}");
    }
}

#[test]
fn manifest_unknown_precision_is_refused() {
    // A precision this blipd does not know (a newer exporter, a typo) is
    // named, not run as if it were f32.
    for (part, precision) in [("vision", "int4"), ("qformer", "f16")] {
        let dir = copy_bundle("tiny-a");
        edit_manifest(dir.path(), |v| v[part]["precision"] = precision.into());
        let e = load_err(dir.path());
        assert!(
            matches!(e, PipelineError::Bundle(BundleError::Inconsistent(_))),
            "{e}"
        );
        assert!(
            e.to_string()
                .contains(&format!("{part}.precision \"{precision}\"")),
            "{e}"
        );
    }
}
