//! Wires the stages: frame -> features (once per frame) -> answer (per question).

pub mod derive;

use crate::bundle::{Bundle, BundleError};
use crate::graph::GraphError;
use crate::llm::{GenerateParams, Llm, LlmError, LlmOptions, StopReason};
use crate::preprocess::{PreprocessError, Preprocessor};
use crate::qformer::{QFormer, QFormerError, QFormerInput};
use crate::vision::{ImageFeatures, Vision};
use image::RgbImage;
use serde::Serialize;
use std::path::Path;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Preprocess(#[from] PreprocessError),
    #[error(transparent)]
    Graph(#[from] GraphError),
    #[error(transparent)]
    QFormer(#[from] QFormerError),
    #[error(transparent)]
    Llm(#[from] LlmError),
    /// `blipd quantize`: a derived graph strays from its f32 source.
    #[error("the derived graphs disagree with the f32 ones ({0}); the bundle was not written")]
    Disagreement(String),
}

impl PipelineError {
    /// True when the request was at fault (bad prompt, bad image), not the model.
    pub fn is_input_error(&self) -> bool {
        matches!(
            self,
            PipelineError::Preprocess(_)
                | PipelineError::QFormer(QFormerError::EmptyPrompt)
                | PipelineError::QFormer(QFormerError::PromptTooLong { .. })
                | PipelineError::Llm(LlmError::EmptyPrompt)
                | PipelineError::Llm(LlmError::PromptTooLong { .. })
        )
    }
}

/// Load-time options.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    /// Threads for tract (vision, Q-Former) and llama.cpp.
    pub threads: usize,
    pub llm: LlmOptions,
    /// Hash every bundle file against the manifest before loading.
    pub verify_checksums: bool,
    /// Where verified stamps are kept (see `bundle::stamp`): files unchanged
    /// since they last matched are not hashed again. None: hash everything.
    pub stamps: Option<std::path::PathBuf>,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        let llm = LlmOptions::default();
        Self {
            threads: llm.threads as usize,
            llm,
            verify_checksums: true,
            stamps: None,
        }
    }
}

/// The one way the CLI, the daemon, benchmarks and tests set options, so a
/// thread count always reaches both runtimes (setting `threads` alone would
/// leave llama.cpp on every core).
impl PipelineOptions {
    /// Threads for tract and llama.cpp alike; at least 1.
    pub fn with_threads(mut self, threads: usize) -> Self {
        let threads = threads.clamp(1, i32::MAX as usize);
        self.threads = threads;
        self.llm.threads = threads as i32;
        self
    }

    /// The LLM's context length; 0 = the model's training context.
    pub fn with_context(mut self, n_ctx: u32) -> Self {
        self.llm.n_ctx = n_ctx;
        self
    }

    /// How llama.cpp loads the GGUF (GPU layers, mmap, repacking).
    pub fn with_llm_model(mut self, model: crate::llm::ffi::ModelParams) -> Self {
        self.llm.model = model;
        self
    }

    /// Whether every bundle file is hashed against the manifest at load.
    pub fn with_checksums(mut self, verify: bool) -> Self {
        self.verify_checksums = verify;
        self
    }

    /// Trust files whose verified stamp in `stamps` is unchanged.
    pub fn with_stamps(mut self, stamps: Option<std::path::PathBuf>) -> Self {
        self.stamps = stamps;
        self
    }
}

/// Per-stage wall times of one answer, in milliseconds.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct StageTimings {
    pub preprocess_ms: f64,
    pub vision_ms: f64,
    pub qformer_ms: f64,
    pub prefill_ms: f64,
    pub decode_ms: f64,
    /// Generated tokens per second after the first one.
    pub decode_tokens_per_s: f64,
    pub total_ms: f64,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Features of one frame plus what it cost to compute them.
#[derive(Debug, Clone)]
pub struct FrameFeatures {
    pub features: ImageFeatures,
    pub preprocess: Duration,
    pub vision: Duration,
}

/// One answer.
#[derive(Debug, Clone, Serialize)]
pub struct Answer {
    pub text: String,
    pub tokens: Vec<u32>,
    pub prompt_tokens: usize,
    pub stop: StopReason,
    pub timings: StageTimings,
}

/// A question checked against every stage's limits, ready to run.
#[derive(Debug, Clone)]
pub struct Prepared {
    qformer: QFormerInput,
    llm_ids: Vec<u32>,
}

impl Prepared {
    pub fn llm_ids(&self) -> &[u32] {
        &self.llm_ids
    }
    pub fn qformer_ids(&self) -> &[i64] {
        &self.qformer.ids
    }
}

/// The loaded model: all stages, set up once.
pub struct Pipeline {
    bundle: Bundle,
    pre: Preprocessor,
    vision: Vision,
    qformer: QFormer,
    llm: Llm,
    pixels: Vec<f32>,
    load_time: Duration,
}

impl Pipeline {
    pub fn load(dir: impl AsRef<Path>, opts: &PipelineOptions) -> Result<Self, PipelineError> {
        let t0 = Instant::now();
        let bundle = Bundle::open(dir)?;
        match (&opts.stamps, opts.verify_checksums) {
            (_, false) => {}
            (None, true) => bundle.verify()?,
            (Some(stamps), true) => {
                let t = Instant::now();
                let v = bundle.verify_stamped(stamps)?;
                tracing::info!(
                    hashed = v.hashed,
                    mib_hashed = v.bytes_hashed >> 20,
                    unchanged = v.trusted,
                    ms = t.elapsed().as_millis() as u64,
                    "bundle verified"
                );
                if let Some(e) = v.save_error {
                    tracing::warn!(error = %e, "cannot save the verified stamps; the next start hashes the bundle again");
                }
            }
        }
        let pre = Preprocessor::new(&bundle.manifest.image)?;
        let threads = opts.threads.max(1);
        let vision = Vision::load(&bundle, threads)?;
        let qformer = QFormer::load(&bundle, threads)?;
        // Before the LLM maps its weights: the graph loaders' temporaries go
        // back to the OS, so they do not add to the peak.
        crate::llm::ffi::release_free_heap();
        let llm = Llm::load(&bundle, &opts.llm)?;
        let load_time = t0.elapsed();
        tracing::info!(
            bundle = %bundle.dir.display(),
            llm = %llm.description(),
            n_ctx = llm.n_ctx(),
            threads,
            load_ms = ms(load_time) as u64,
            "model loaded"
        );
        Ok(Self {
            bundle,
            pre,
            vision,
            qformer,
            llm,
            pixels: Vec::new(),
            load_time,
        })
    }

    pub fn bundle(&self) -> &Bundle {
        &self.bundle
    }

    pub fn load_time(&self) -> Duration {
        self.load_time
    }

    /// The bundle's default generation settings.
    pub fn default_params(&self) -> GenerateParams {
        GenerateParams::from_spec(&self.bundle.manifest.generation)
    }

    pub fn llm(&self) -> &Llm {
        &self.llm
    }

    /// `pixel_values` of a frame (for inspection and tests).
    pub fn pixel_values(&mut self, img: &RgbImage) -> Result<&[f32], PipelineError> {
        self.pre.run_into(img, &mut self.pixels)?;
        Ok(&self.pixels)
    }

    /// Preprocess + vision: the instruction-independent part, reusable for
    /// any number of questions about the same frame.
    pub fn image_features(&mut self, img: &RgbImage) -> Result<FrameFeatures, PipelineError> {
        let t0 = Instant::now();
        self.pre.run_into(img, &mut self.pixels)?;
        let t1 = Instant::now();
        let features = self.vision.run(&self.pixels)?;
        Ok(FrameFeatures {
            features,
            preprocess: t1 - t0,
            vision: t1.elapsed(),
        })
    }

    /// Tokenizes the instruction for both tokenizers and checks every limit
    /// (empty, Q-Former length, LLM context) before any model runs.
    pub fn prepare(&self, prompt: &str) -> Result<Prepared, PipelineError> {
        let qformer = self.qformer.tokenize(prompt)?;
        let llm_ids = self.llm.tokenize(prompt)?;
        self.llm
            .check_fits(self.qformer.num_query_tokens(), llm_ids.len())?;
        Ok(Prepared { qformer, llm_ids })
    }

    /// Q-Former output (the soft prompt) for features + instruction.
    pub fn soft_prompt(
        &self,
        features: &ImageFeatures,
        prepared: &Prepared,
    ) -> Result<Vec<f32>, PipelineError> {
        Ok(self.qformer.run(features, &prepared.qformer)?)
    }

    /// Answers one instruction about a frame whose features are computed.
    /// `on_token` sees each generated token id as it is produced.
    pub fn answer(
        &mut self,
        frame: &FrameFeatures,
        prompt: &str,
        params: &GenerateParams,
        on_token: impl FnMut(u32),
    ) -> Result<Answer, PipelineError> {
        let prepared = self.prepare(prompt)?;
        self.answer_prepared(frame, &prepared, params, on_token)
    }

    /// [`Pipeline::answer`] for an instruction already checked by [`Pipeline::prepare`].
    pub fn answer_prepared(
        &mut self,
        frame: &FrameFeatures,
        prepared: &Prepared,
        params: &GenerateParams,
        on_token: impl FnMut(u32),
    ) -> Result<Answer, PipelineError> {
        let t0 = Instant::now();
        let soft = self.soft_prompt(&frame.features, prepared)?;
        let qformer = t0.elapsed();
        let gen = self
            .llm
            .generate(&soft, &prepared.llm_ids, params, on_token)?;
        let decoded_after_first = gen.tokens.len().saturating_sub(1);
        let timings = StageTimings {
            preprocess_ms: ms(frame.preprocess),
            vision_ms: ms(frame.vision),
            qformer_ms: ms(qformer),
            prefill_ms: ms(gen.prefill),
            decode_ms: ms(gen.decode),
            decode_tokens_per_s: if gen.decode.is_zero() || decoded_after_first == 0 {
                0.0
            } else {
                decoded_after_first as f64 / gen.decode.as_secs_f64()
            },
            total_ms: ms(frame.preprocess + frame.vision + t0.elapsed()),
        };
        Ok(Answer {
            text: gen.text,
            tokens: gen.tokens,
            prompt_tokens: gen.prompt_tokens,
            stop: gen.stop,
            timings,
        })
    }

    /// Frame + instruction -> answer, all stages.
    pub fn ask(
        &mut self,
        img: &RgbImage,
        prompt: &str,
        params: &GenerateParams,
    ) -> Result<Answer, PipelineError> {
        // Check the prompt before spending time on the vision encoder.
        let prepared = self.prepare(prompt)?;
        let frame = self.image_features(img)?;
        self.answer_prepared(&frame, &prepared, params, |_| {})
    }
}
