//! Full-depth parity with transformers: every layer of ViT-g/14, the
//! Q-Former and a 22-layer LLaMA, on the f32 bundle and the goldens that
//! `models/parity_full.py` builds and records (about 20 GB, never in git).
//!
//! Ignored in the suite (the bundle is not there); run it with
//! `.venv/bin/python models/parity_full.py`, which sets
//! BLIPD_FULL_DEPTH_BUNDLE and BLIPD_FULL_DEPTH_GOLDEN and calls
//! `cargo test --release --test full_depth -- --ignored --nocapture`.
//! The checks and tolerances are tests/reference.rs's, stage by stage, each
//! stage fed the reference's own input so a difference is located.

mod common;

use blipd::llm::GenerateParams;
use blipd::preprocess::{load_rgb, Preprocessor};
use blipd::{Pipeline, PipelineOptions};
use common::*;
use std::path::PathBuf;

const FEATURE_TOL: f32 = 1e-4;
const PIXEL_TOL: f32 = 1e-6;
/// A greedy step the reference decided by less than this (make_tiny's
/// MIN_MARGIN) is a tie float rounding may break either way.
const TIE_MARGIN: f64 = 1e-3;

fn env_path(var: &str) -> PathBuf {
    std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("{var} is not set: run .venv/bin/python models/parity_full.py"))
}

/// Largest |x| of a reference tensor: the scale a max-abs difference is read against.
fn max_abs(a: &[f32]) -> f32 {
    a.iter().fold(0.0f32, |m, x| m.max(x.abs()))
}

#[test]
#[ignore = "needs the full-depth bundle of models/parity_full.py"]
fn full_depth_bundle_matches_transformers() {
    let dir = env_path("BLIPD_FULL_DEPTH_BUNDLE");
    let g = golden_at(&env_path("BLIPD_FULL_DEPTH_GOLDEN"));
    let bundle = blipd::bundle::Bundle::open(&dir).unwrap();
    assert_eq!(
        bundle.manifest.llm.weight_type, "f32",
        "the parity bundle is f32"
    );
    assert_eq!(bundle.manifest.vision.precision, "f32");

    let pre = Preprocessor::new(&bundle.manifest.image).unwrap();
    for (name, img) in &g.images {
        let px = pre.run(&load_rgb(&image_path(name)).unwrap()).unwrap();
        let diff = max_abs_diff(&px, &img.pixel_values);
        eprintln!("{name}: pixel_values max abs diff {diff:e}");
        assert!(diff <= PIXEL_TOL, "{name}: pixel_values differ by {diff}");
    }

    // One stage in memory at a time: the f32 ViT-g alone is 4 GB.
    let mut worst_vision = 0.0f32;
    {
        let vision = blipd::vision::Vision::load(&bundle, 2).unwrap();
        for (name, img) in &g.images {
            let feats = vision.run(&img.pixel_values).unwrap();
            assert_eq!(vec![1, feats.positions, feats.hidden], img.vision_shape);
            let diff = max_abs_diff(&feats.data, &img.vision);
            eprintln!(
                "{name}: vision (39 layers) max abs diff {diff:e} (largest |value| {:.3})",
                max_abs(&img.vision)
            );
            worst_vision = worst_vision.max(diff);
        }
    }
    let mut worst_qformer = 0.0f32;
    {
        let qformer = blipd::qformer::QFormer::load(&bundle, 2).unwrap();
        for case in &g.cases {
            let diff = qformer_case_diff(&qformer, &g, case);
            eprintln!(
                "{} {:.24}: Q-Former + projection max abs diff {diff:e} (largest |value| {:.3})",
                case.image,
                case.prompt,
                max_abs(&case.qformer)
            );
            worst_qformer = worst_qformer.max(diff);
        }
    }

    let opts = PipelineOptions::default().with_threads(2);
    let mut p = Pipeline::load(&dir, &opts).unwrap();
    let params = GenerateParams {
        max_new_tokens: g.max_new_tokens,
        sampling: None,
        constraint: None,
    };
    let (mut identical, mut ties) = (0, 0);
    for case in &g.cases {
        let prepared = p.prepare(&case.prompt).unwrap();
        assert_eq!(
            prepared.llm_ids(),
            &case.llm_input_ids[..],
            "LLM tokens of {:?}",
            case.prompt
        );
        assert_eq!(
            case.logit_margins.len(),
            case.tokens.len(),
            "goldens without step margins"
        );
        let img = load_rgb(&image_path(&case.image)).unwrap();
        let answer = p.ask(&img, &case.prompt, &params).unwrap();
        let agree = answer
            .tokens
            .iter()
            .zip(&case.tokens)
            .take_while(|(a, b)| a == b)
            .count();
        let same = answer.tokens == case.tokens && answer.text == case.text;
        let verdict = if same {
            identical += 1;
            String::new()
        } else {
            // Past the first difference the two continue from different
            // text, so only that step can be judged: the reference must
            // itself have been on a knife's edge there.
            let margin = case
                .logit_margins
                .get(agree)
                .copied()
                .unwrap_or(f64::INFINITY);
            assert!(
                margin < TIE_MARGIN,
                "{} {:?}: differs from transformers at token {agree}, where its logit margin \
                 was {margin} (not a near tie): ours {:?}, reference {:?}",
                case.image,
                case.prompt,
                answer.tokens,
                case.tokens
            );
            ties += 1;
            format!(
                "  <- parts at token {agree}, a near tie in the reference (margin {margin:.1e})"
            )
        };
        eprintln!(
            "{} {:.24}: {agree} of {} tokens identical, smallest reference logit margin {:.4}{verdict}",
            case.image,
            case.prompt,
            case.tokens.len(),
            case.min_logit_margin,
        );
    }
    eprintln!(
        "full depth: {identical}/{} cases token-identical, {ties} parted at a near tie; \
         worst vision diff {worst_vision:e}, worst Q-Former diff {worst_qformer:e} (bound {FEATURE_TOL:e})",
        g.cases.len()
    );
    assert!(
        worst_vision <= FEATURE_TOL,
        "vision differs by {worst_vision}"
    );
    assert!(
        worst_qformer <= FEATURE_TOL,
        "Q-Former differs by {worst_qformer}"
    );
    assert!(identical >= 6, "only {identical} cases token-identical");
    assert!(g.cases.len() >= 6);
}
