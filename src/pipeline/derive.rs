//! `blipd quantize BUNDLE OUT [TYPE] [--vision int8|f16] [--qformer int8]`: a
//! bundle derived from another on the board itself, no Python needed. The
//! LLM goes through llama.cpp's quantizer, a graph through
//! [`crate::graph::rewrite`] (the graph onnxruntime's `quantize_dynamic` or
//! float16 converter writes, as `models/vision_precision.py` does on a
//! workstation). Before the new
//! bundle is renamed into place, the derived graphs are compared with the
//! source's in tract on the pictures models/vision_precision.py uses, and
//! the figures go into the manifest (`derived_from.agreement`).
//!
//! The comparison holds one graph at a time (a ViT-g in f32 is 4 GB), so a
//! board that can run the f32 bundle can derive from it.

use super::PipelineError;
use crate::bundle::{Bundle, Derivation, GraphPart, GraphRewrite, LlmRewrite, WriteError};
use crate::graph::rewrite::{f16, int8};
use crate::preprocess::{decode_rgb, Preprocessor};
use crate::qformer::QFormer;
use crate::vision::{ImageFeatures, Vision};
use std::path::Path;

/// The pictures and the instruction of models/vision_precision.py's
/// agreement check (tests/fixtures/images), built in so a board has them.
const PICTURES: [(&str, &[u8]); 3] = [
    (
        "garage.png",
        include_bytes!("../../tests/fixtures/images/garage.png"),
    ),
    (
        "porch.jpg",
        include_bytes!("../../tests/fixtures/images/porch.jpg"),
    ),
    (
        "sticker.png",
        include_bytes!("../../tests/fixtures/images/sticker.png"),
    ),
];
const PROMPT: &str = "What is in the picture?";
/// Below this cosine a derived graph is refused: onnxruntime's int8 ViT-g
/// reaches 0.99995 and its Q-Former 0.9997, a broken graph far less.
const MIN_COSINE: f64 = 0.99;

/// The precision a graph is rewritten to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GraphPrecision {
    /// Dynamic int8 MatMuls ([`int8`]).
    Int8,
    /// f16 weights and arithmetic, norms and softmax kept f32 ([`f16`]).
    F16,
}

impl GraphPrecision {
    /// The manifest's and the command line's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Int8 => "int8",
            Self::F16 => "f16",
        }
    }
}

/// What to rewrite.
pub struct QuantizePlan {
    /// The LLM's new GGUF type: llama.cpp's name and ftype number.
    pub llm: Option<(String, u32)>,
    pub vision: Option<GraphPrecision>,
    /// The Q-Former in int8 (an f16 Q-Former was never measured, as in
    /// models/vision_precision.py).
    pub qformer_int8: bool,
    /// Threads for llama.cpp's quantizer and tract; 0: all cores.
    pub threads: usize,
    pub llm_progress: Option<crate::llm::quantize::Progress>,
}

/// Writes the derived bundle `out` from `src` (verified by the caller).
pub fn quantize_bundle(
    src: &Bundle,
    out: &Path,
    plan: QuantizePlan,
) -> Result<Bundle, PipelineError> {
    let threads = match plan.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let mut derivation = Derivation::default();
    if let Some((weight_type, ftype)) = plan.llm {
        let mut progress = plan.llm_progress;
        derivation.llm = Some(LlmRewrite {
            weight_type,
            write: Box::new(move |from, to| {
                crate::llm::ffi::quantize(
                    from,
                    to,
                    ftype,
                    i32::try_from(threads).unwrap_or(i32::MAX),
                    progress.take(),
                )
                .map_err(Into::into)
            }),
        });
    }
    for (part, wanted) in [
        (GraphPart::Vision, plan.vision),
        (
            GraphPart::QFormer,
            plan.qformer_int8.then_some(GraphPrecision::Int8),
        ),
    ] {
        let Some(precision) = wanted else {
            continue;
        };
        derivation.graphs.push(GraphRewrite {
            part,
            precision: precision.name().into(),
            tool: match precision {
                GraphPrecision::Int8 => int8::TOOL,
                GraphPrecision::F16 => f16::TOOL,
            }
            .into(),
            write: Box::new(move |from, to| {
                match precision {
                    GraphPrecision::Int8 => {
                        let s = int8::quantize_graph(from, to)?;
                        tracing::info!(
                            graph = part.name(),
                            matmuls = s.matmuls,
                            weights = s.weights,
                            kept_f32 = s.kept,
                            f32_mb = s.f32_bytes / 1_000_000,
                            int8_mb = s.int8_bytes / 1_000_000,
                            "graph quantized to int8"
                        );
                    }
                    GraphPrecision::F16 => {
                        let s = f16::f16_graph(from, to)?;
                        tracing::info!(
                            graph = part.name(),
                            tensors = s.tensors,
                            kept_f32_tensors = s.kept_f32_tensors,
                            kept_f32_nodes = s.kept_f32_nodes,
                            casts = s.casts,
                            f32_mb = s.f32_bytes / 1_000_000,
                            f16_mb = s.f16_bytes / 1_000_000,
                            "graph rewritten in f16"
                        );
                    }
                }
                Ok(())
            }),
        });
    }
    derivation.check = Some(Box::new(move |src, new| {
        agreement(src, new, threads).map_err(|e| Box::new(e) as WriteError)
    }));
    Ok(src.derive(out, derivation)?)
}

/// The agreement a derived bundle records, in one line for the terminal.
pub fn agreement_line(b: &Bundle) -> Option<String> {
    let m = &b.manifest;
    let a = [&m.vision.derived_from, &m.qformer.derived_from]
        .into_iter()
        .find_map(|d| d.as_ref()?.get("agreement"))?;
    let f = |k: &str| a[k].as_f64().unwrap_or(f64::NAN);
    Some(format!(
        "agreement with the f32 graphs ({}, {} pictures): image features cosine >= {:.6}, \
         max-abs {:.4}; Q-Former output cosine >= {:.6}, max-abs {:.4}",
        a["runtime"].as_str().unwrap_or("onnxruntime"),
        a["pictures"].as_array().map_or(0, |p| p.len()),
        f("vision_cosine_min"),
        f("vision_max_abs"),
        f("qformer_cosine_min"),
        f("qformer_max_abs"),
    ))
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    ab / (aa.sqrt() * bb.sqrt())
}

fn max_abs(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| f64::from((x - y).abs()))
        .fold(0.0, f64::max)
}

/// Image features and Q-Former output of `new`'s graphs against `src`'s,
/// in tract, on the built-in pictures: the shape models/vision_precision.py
/// records (it measures in onnxruntime), plus `"runtime": "tract"`.
pub fn agreement(
    src: &Bundle,
    new: &Bundle,
    threads: usize,
) -> Result<serde_json::Value, PipelineError> {
    let pre = Preprocessor::new(&src.manifest.image)?;
    let mut pixels = Vec::new();
    for (_, bytes) in PICTURES {
        pixels.push(pre.run(&decode_rgb(bytes)?)?);
    }
    let features = |bundle: &Bundle| -> Result<Vec<ImageFeatures>, PipelineError> {
        tracing::info!(bundle = %bundle.dir.display(), "agreement: vision");
        let vision = Vision::load(bundle, threads)?;
        Ok(pixels
            .iter()
            .map(|p| vision.run(p))
            .collect::<Result<_, _>>()?)
    };
    let f_src = features(src)?;
    let f_new = if new.manifest.vision.precision != src.manifest.vision.precision {
        features(new)?
    } else {
        f_src.clone()
    };
    let run_qformer =
        |q: &QFormer, feats: &[ImageFeatures]| -> Result<Vec<Vec<f32>>, PipelineError> {
            let text = q.tokenize(PROMPT)?;
            Ok(feats
                .iter()
                .map(|f| q.run(f, &text))
                .collect::<Result<_, _>>()?)
        };
    tracing::info!("agreement: qformer");
    let q = QFormer::load(src, threads)?;
    let q_src = run_qformer(&q, &f_src)?;
    let q_new = if new.manifest.qformer.precision == src.manifest.qformer.precision {
        run_qformer(&q, &f_new)?
    } else {
        drop(q);
        run_qformer(&QFormer::load(new, threads)?, &f_new)?
    };
    let mut rows = Vec::new();
    let (mut vc, mut vm, mut qc, mut qm) = (1f64, 0f64, 1f64, 0f64);
    let mut finite = true;
    for (i, (name, _)) in PICTURES.iter().enumerate() {
        let row = (
            cosine(&f_src[i].data, &f_new[i].data),
            max_abs(&f_src[i].data, &f_new[i].data),
            cosine(&q_src[i], &q_new[i]),
            max_abs(&q_src[i], &q_new[i]),
        );
        finite &= [row.0, row.1, row.2, row.3].iter().all(|v| v.is_finite());
        vc = vc.min(row.0);
        vm = vm.max(row.1);
        qc = qc.min(row.2);
        qm = qm.max(row.3);
        rows.push(serde_json::json!({
            "picture": name,
            "vision_cosine": row.0,
            "vision_max_abs": row.1,
            "qformer_cosine": row.2,
            "qformer_max_abs": row.3,
        }));
    }
    // NaN slips through min/max (and a NaN output gives a NaN cosine): any
    // non-finite figure is a failure.
    if !finite || vc < MIN_COSINE || qc < MIN_COSINE {
        return Err(PipelineError::Disagreement(format!(
            "image features cosine {vc:.6}, max-abs {vm:.4}; Q-Former output cosine {qc:.6}, \
             max-abs {qm:.4}; at least {MIN_COSINE} needed"
        )));
    }
    Ok(serde_json::json!({
        "runtime": "tract",
        "pictures": rows,
        "vision_cosine_min": vc,
        "vision_max_abs": vm,
        "qformer_cosine_min": qc,
        "qformer_max_abs": qm,
    }))
}
