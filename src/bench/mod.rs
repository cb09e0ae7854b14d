//! `blipd bench`: how long each stage takes on this machine, and how much
//! memory the model needs, measured the way the daemon runs it.
//!
//! One load, then `warmup + runs` rounds of: a new frame (preprocess +
//! vision), a question about it (Q-Former, prefill, decode), and a second
//! question about the same frame, which the daemon answers from its feature
//! cache (no vision). Figures are medians with min-max over the measured
//! rounds; the warm-up rounds fill caches and page in the weights and are
//! not reported. Speed targets live here and in the comparison script, not
//! in timed tests.

use crate::llm::GenerateParams;
use crate::pipeline::FrameFeatures;
use crate::{Pipeline, PipelineError, PipelineOptions};
use image::RgbImage;
use serde::Serialize;
use std::path::Path;
use std::time::Instant;

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub runs: usize,
    pub warmup: usize,
    /// Tokens per answer (generation stops earlier only at end-of-sequence).
    pub tokens: usize,
    pub prompt: String,
    pub second_prompt: String,
    /// Wait for a line on stdin before each round and print each measured
    /// round as one JSON line: a comparison driver alternates runtimes
    /// round by round (A B A B) with one model load each.
    pub lockstep: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            runs: 5,
            warmup: 1,
            tokens: 20,
            prompt: "Is the garage door open? Answer yes or no.".into(),
            second_prompt: "How many people are in the picture?".into(),
            lockstep: false,
        }
    }
}

/// Median and range of one figure over the measured rounds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: &[f64]) -> Self {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return Self {
                median: 0.0,
                min: 0.0,
                max: 0.0,
            };
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Self {
            median,
            min: v[0],
            max: v[n - 1],
        }
    }
}

/// The report (`--json` prints it as is).
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub model: String,
    pub llm: String,
    pub threads: usize,
    pub runs: usize,
    pub warmup: usize,
    /// The model's input size (width, height) every frame is resized to.
    pub model_input: [u32; 2],
    /// Positions prefilled: the soft prompt plus the instruction's tokens.
    pub prompt_tokens: usize,
    pub soft_prompt_tokens: usize,
    pub answer_tokens: usize,
    pub load_ms: f64,
    pub preprocess_ms: Spread,
    pub vision_ms: Spread,
    pub qformer_ms: Spread,
    pub prefill_ms: Spread,
    pub prefill_tokens_per_s: Spread,
    pub decode_tokens_per_s: Spread,
    /// Frame in to first answer token: preprocess + vision + Q-Former + prefill.
    pub first_token_ms: Spread,
    /// Frame in to the whole answer (`answer_tokens` tokens).
    pub answer_ms: Spread,
    /// A second question about the same frame (vision features cached).
    pub cached_answer_ms: Spread,
    pub rss_after_load_mib: Option<f64>,
    pub peak_rss_mib: Option<f64>,
}

/// The per-round figures, in `BenchReport` field names.
const COLUMNS: [&str; 9] = [
    "preprocess_ms",
    "vision_ms",
    "qformer_ms",
    "prefill_ms",
    "prefill_tokens_per_s",
    "decode_tokens_per_s",
    "first_token_ms",
    "answer_ms",
    "cached_answer_ms",
];

/// Runs the benchmark on `image` with a loaded pipeline.
pub fn run(
    model: &Path,
    opts: &PipelineOptions,
    bench: &BenchOptions,
    image: &RgbImage,
) -> Result<BenchReport, PipelineError> {
    let t0 = Instant::now();
    let mut p = Pipeline::load(model, opts)?;
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    let rss_after_load_mib = crate::serve::stats::memory_mib().0;
    let params = GenerateParams {
        max_new_tokens: bench.tokens,
        sampling: None,
        constraint: None,
    };
    let first = p.prepare(&bench.prompt)?;
    let second = p.prepare(&bench.second_prompt)?;

    let n_query = p.bundle().manifest.qformer.num_query_tokens;
    let mut rows: Vec<[f64; 9]> = Vec::new();
    let (mut prompt_tokens, mut answer_tokens) = (0, 0);
    let stdin = std::io::stdin();
    for round in 0..bench.warmup + bench.runs.max(1) {
        if bench.lockstep {
            let mut line = String::new();
            if stdin.read_line(&mut line).unwrap_or(0) == 0 {
                break; // the driver is done
            }
        }
        let frame = p.image_features(image)?;
        let a = p.answer_prepared(&frame, &first, &params, |_| {})?;
        let cached = FrameFeatures {
            preprocess: Default::default(),
            vision: Default::default(),
            ..frame
        };
        let b = p.answer_prepared(&cached, &second, &params, |_| {})?;
        if round < bench.warmup {
            continue;
        }
        let t = &a.timings;
        prompt_tokens = n_query + a.prompt_tokens;
        answer_tokens = a.tokens.len();
        let prefill_tps = if t.prefill_ms > 0.0 {
            prompt_tokens as f64 / (t.prefill_ms / 1e3)
        } else {
            0.0
        };
        let row = [
            t.preprocess_ms,
            t.vision_ms,
            t.qformer_ms,
            t.prefill_ms,
            prefill_tps,
            t.decode_tokens_per_s,
            t.preprocess_ms + t.vision_ms + t.qformer_ms + t.prefill_ms,
            t.total_ms,
            b.timings.total_ms,
        ];
        if bench.lockstep {
            let names = COLUMNS.iter().zip(row.iter());
            let obj: serde_json::Map<String, serde_json::Value> =
                names.map(|(k, v)| (k.to_string(), (*v).into())).collect();
            println!("{}", serde_json::Value::Object(obj));
            use std::io::Write;
            let _ = std::io::stdout().flush();
        }
        rows.push(row);
    }
    let col = |i: usize| Spread::of(&rows.iter().map(|r| r[i]).collect::<Vec<_>>());
    let m = &p.bundle().manifest;
    Ok(BenchReport {
        model: model
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| model.display().to_string()),
        llm: p.llm().description(),
        threads: opts.threads,
        runs: rows.len(),
        warmup: bench.warmup,
        model_input: [m.image.width, m.image.height],
        prompt_tokens,
        soft_prompt_tokens: n_query,
        answer_tokens,
        load_ms,
        preprocess_ms: col(0),
        vision_ms: col(1),
        qformer_ms: col(2),
        prefill_ms: col(3),
        prefill_tokens_per_s: col(4),
        decode_tokens_per_s: col(5),
        first_token_ms: col(6),
        answer_ms: col(7),
        cached_answer_ms: col(8),
        rss_after_load_mib,
        peak_rss_mib: crate::serve::stats::memory_mib().1,
    })
}

impl BenchOptions {
    /// The defaults for a bundle. The demo model knows shape scenes and their
    /// questions only, and answers the default ones ("Is the garage door
    /// open? ...") in one token, which leaves no decode to time: it is
    /// benched on its own world instead.
    pub fn for_bundle(model: &Path) -> Self {
        let mut o = Self::default();
        if is_demo(model) {
            o.prompt = "Describe the scene.".into();
            o.second_prompt = "How many circles are there?".into();
        }
        o
    }
}

/// The picture to bench with when none is given: a demo scene for the demo
/// model, else [`test_image`].
pub fn default_image(model: &Path) -> RgbImage {
    if is_demo(model) {
        let (w, h) = crate::camera::TEST_PATTERN_SIZE;
        crate::camera::scene::Scene::sample(0).render(w, h)
    } else {
        test_image()
    }
}

fn is_demo(model: &Path) -> bool {
    model == crate::bundle::default_bundle_dir()
}

/// A deterministic 640x480 test picture (gradients and blocks), so the
/// benchmark needs no file.
pub fn test_image() -> RgbImage {
    RgbImage::from_fn(640, 480, |x, y| {
        let block = ((x / 80) + (y / 60)) % 2 == 0;
        image::Rgb([
            (x * 255 / 639) as u8,
            (y * 255 / 479) as u8,
            if block { 200 } else { 40 },
        ])
    })
}

impl BenchReport {
    /// The human table.
    pub fn table(&self) -> String {
        let s = |x: &Spread, unit: &str| {
            format!("{:>10.1} {unit:<4} ({:.1} - {:.1})", x.median, x.min, x.max)
        };
        let mut out = format!(
            "blipd bench: {} ({}), {} threads, median (min - max) of {} runs after {} warm-up\n\
             prompt {} positions ({} soft prompt + instruction), answers of {} tokens\n\n",
            self.model,
            self.llm,
            self.threads,
            self.runs,
            self.warmup,
            self.prompt_tokens,
            self.soft_prompt_tokens,
            self.answer_tokens
        );
        let answer = format!("{}-token answer", self.answer_tokens);
        let rows = [
            ("preprocess", s(&self.preprocess_ms, "ms")),
            ("vision", s(&self.vision_ms, "ms")),
            ("Q-Former + projection", s(&self.qformer_ms, "ms")),
            ("prefill", s(&self.prefill_ms, "ms")),
            ("prefill speed", s(&self.prefill_tokens_per_s, "t/s")),
            ("decode speed", s(&self.decode_tokens_per_s, "t/s")),
            ("time to first token", s(&self.first_token_ms, "ms")),
            (answer.as_str(), s(&self.answer_ms, "ms")),
            ("2nd question, same frame", s(&self.cached_answer_ms, "ms")),
        ];
        out.push_str(&format!("{:<26}{:>10.1} ms\n", "load", self.load_ms));
        for (name, v) in rows {
            out.push_str(&format!("{name:<26}{v}\n"));
        }
        let mib = |v: Option<f64>| {
            v.map(|m| format!("{m:.0} MiB"))
                .unwrap_or_else(|| "n/a".into())
        };
        out.push_str(&format!(
            "{:<26}{:>13} after load, {} peak\n",
            "resident memory",
            mib(self.rss_after_load_mib),
            mib(self.peak_rss_mib)
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads() {
        assert_eq!(
            Spread::of(&[3.0, 1.0, 2.0]),
            Spread {
                median: 2.0,
                min: 1.0,
                max: 3.0
            }
        );
        assert_eq!(Spread::of(&[4.0, 1.0, 2.0, 3.0]).median, 2.5);
        assert_eq!(Spread::of(&[]).median, 0.0);
    }
}
