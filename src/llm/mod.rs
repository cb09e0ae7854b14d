//! Language model stage: soft prompt + instruction -> answer tokens, in llama.cpp.
//!
//! The reference (`InstructBlipForConditionalGeneration.generate`) feeds the LLM
//! `[Q projected query embeddings ; embed(BOS) ; embed(prompt tokens)]` at
//! consecutive positions from 0 and decodes greedily. We do the same: one
//! embeddings batch at positions `0..Q`, one token batch at `Q..`, then one
//! token per step. Prompt tokenization and answer detokenization use the LLM's
//! own Hugging Face tokenizer from the bundle, so the ids and text are the
//! reference's, including its byte-fallback and special-token rules.

mod constraint;
pub mod ffi;
pub mod quantize;
pub mod schema;

use crate::bundle::{Bundle, GenerationSpec, LlmSpec};
pub use constraint::Constraint;
use ffi::{Context, ContextParams, LlamaError, Model, Sampler};
pub use ffi::{ModelParams, SamplerParams};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokenizers::Tokenizer;

#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    #[error(transparent)]
    Llama(#[from] LlamaError),
    #[error("cannot load the LLM tokenizer {path}: {message}")]
    Tokenizer { path: String, message: String },
    #[error("tokenizing the prompt failed: {0}")]
    Encode(String),
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("the prompt needs {needed} positions ({query} image + {prompt} text + 1 to answer) but the context holds {n_ctx}")]
    PromptTooLong {
        needed: usize,
        query: usize,
        prompt: usize,
        n_ctx: usize,
    },
    #[error("the GGUF model has embedding width {gguf} but the manifest says {manifest}")]
    WidthMismatch { gguf: usize, manifest: usize },
    #[error("the GGUF vocabulary has {gguf} tokens but the tokenizer knows ids up to {tokenizer}")]
    VocabMismatch { gguf: usize, tokenizer: usize },
    #[error("soft prompt has {got} floats, expected a multiple of {n_embd}")]
    SoftPrompt { got: usize, n_embd: usize },
}

/// Options chosen when the model is loaded (not per question).
#[derive(Debug, Clone, Copy)]
pub struct LlmOptions {
    pub model: ModelParams,
    /// Context length; 0 = the model's training context.
    pub n_ctx: u32,
    pub threads: i32,
}

impl Default for LlmOptions {
    fn default() -> Self {
        Self {
            model: ModelParams::default(),
            n_ctx: 0,
            threads: default_threads(),
        }
    }
}

/// Threads for llama.cpp and tract when none are given: the available cores.
pub fn default_threads() -> i32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as i32)
        .unwrap_or(1)
}

/// How to pick tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateParams {
    pub max_new_tokens: usize,
    /// `None` = greedy (the reference's default).
    pub sampling: Option<SamplerParams>,
    /// `None` = free text (token-identical to the reference when greedy).
    pub constraint: Option<Arc<Constraint>>,
}

impl GenerateParams {
    /// The bundle's defaults (from the checkpoint's `generation_config.json`).
    pub fn from_spec(g: &GenerationSpec) -> Self {
        Self {
            max_new_tokens: g.max_new_tokens,
            sampling: g.do_sample.then_some(SamplerParams {
                temperature: g.temperature,
                top_k: g.top_k,
                top_p: g.top_p,
                repeat_penalty: g.repetition_penalty,
                seed: 0,
            }),
            constraint: None,
        }
    }
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    Eos,
    MaxTokens,
    ContextFull,
}

/// A generated answer.
#[derive(Debug, Clone)]
pub struct Generation {
    pub tokens: Vec<u32>,
    pub text: String,
    pub prompt_tokens: usize,
    pub stop: StopReason,
    /// Soft prompt + instruction prefill.
    pub prefill: Duration,
    /// All decode steps after the first token.
    pub decode: Duration,
}

/// The language model with its context; owned by one worker.
pub struct Llm {
    ctx: Context,
    tokenizer: Arc<Tokenizer>,
    special: Arc<std::collections::HashSet<u32>>,
    spec: LlmSpec,
    image_token_id: Option<u32>,
    eos: Vec<u32>,
}

impl Llm {
    pub fn load(bundle: &Bundle, opts: &LlmOptions) -> Result<Self, LlmError> {
        let spec = bundle.manifest.llm.clone();
        let tok_path = bundle.path(&spec.tokenizer);
        let tokenizer = Tokenizer::from_file(&tok_path).map_err(|e| LlmError::Tokenizer {
            path: tok_path.display().to_string(),
            message: e.to_string(),
        })?;
        let model = Arc::new(Model::load(&bundle.path(&spec.file), opts.model)?);
        if model.n_embd() != spec.hidden_size {
            return Err(LlmError::WidthMismatch {
                gguf: model.n_embd(),
                manifest: spec.hidden_size,
            });
        }
        let tok_size = tokenizer.get_vocab_size(true);
        if tok_size > model.n_vocab() {
            return Err(LlmError::VocabMismatch {
                gguf: model.n_vocab(),
                tokenizer: tok_size,
            });
        }
        let n_ctx = if opts.n_ctx == 0 {
            model.n_ctx_train() as u32
        } else {
            opts.n_ctx
        };
        let ctx = Context::new(
            model,
            ContextParams {
                n_ctx,
                n_threads: opts.threads,
                // An f32 GGUF is the reference path: keep attention in f32 too.
                f32_attention: spec.weight_type == "f32",
            },
        )?;
        let image_token_id = tokenizer.token_to_id("<image>");
        let eos = spec.eos_token_ids.iter().map(|&e| e as u32).collect();
        let special = tokenizer
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special)
            .map(|(id, _)| id)
            .collect();
        Ok(Self {
            ctx,
            special: Arc::new(special),
            tokenizer: Arc::new(tokenizer),
            spec,
            image_token_id,
            eos,
        })
    }

    /// Usable context: llama.cpp rounds its context up (to a multiple of
    /// 256), but positions past the model's training context are not used.
    pub fn n_ctx(&self) -> usize {
        (self.ctx.n_ctx() as usize).min(self.ctx.model().n_ctx_train())
    }

    pub fn n_embd(&self) -> usize {
        self.spec.hidden_size
    }

    pub fn description(&self) -> String {
        self.ctx.model().description()
    }

    pub fn set_threads(&mut self, n: i32) {
        self.ctx.set_threads(n);
    }

    /// `BOS + tokens(prompt)`, exactly as the reference's LLaMA tokenizer.
    pub fn tokenize(&self, prompt: &str) -> Result<Vec<u32>, LlmError> {
        if prompt.trim().is_empty() {
            return Err(LlmError::EmptyPrompt);
        }
        let enc = self
            .tokenizer
            .encode(prompt, true)
            .map_err(|e| LlmError::Encode(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Checks that `query_positions + prompt + 1` fits the context.
    pub fn check_fits(&self, query_positions: usize, prompt_tokens: usize) -> Result<(), LlmError> {
        let needed = query_positions + prompt_tokens + 1;
        if needed > self.n_ctx() {
            return Err(LlmError::PromptTooLong {
                needed,
                query: query_positions,
                prompt: prompt_tokens,
                n_ctx: self.n_ctx(),
            });
        }
        Ok(())
    }

    /// Answer text of `tokens` as `tokenizer.decode(tokens, skip_special_tokens=True)`.
    pub fn detokenize(&self, tokens: &[u32]) -> String {
        self.detokenizer().decode(tokens)
    }

    /// A cheap handle that decodes token ids to text independently of the
    /// model (for streaming while the model is busy generating).
    pub fn detokenizer(&self) -> Detokenizer {
        Detokenizer {
            tokenizer: self.tokenizer.clone(),
            special: self.special.clone(),
            clean_up: self.spec.clean_up_tokenization_spaces,
        }
    }

    /// Generates the answer for one soft prompt (`Q * n_embd` floats) and the
    /// instruction's token ids (with BOS). `on_token` sees each new token id.
    pub fn generate(
        &mut self,
        soft_prompt: &[f32],
        prompt_ids: &[u32],
        params: &GenerateParams,
        mut on_token: impl FnMut(u32),
    ) -> Result<Generation, LlmError> {
        let n_embd = self.n_embd();
        if soft_prompt.is_empty() || !soft_prompt.len().is_multiple_of(n_embd) {
            return Err(LlmError::SoftPrompt {
                got: soft_prompt.len(),
                n_embd,
            });
        }
        let n_query = soft_prompt.len() / n_embd;
        self.check_fits(n_query, prompt_ids.len())?;
        let ids: Vec<i32> = prompt_ids.iter().map(|&t| t as i32).collect();

        let t0 = Instant::now();
        self.ctx.clear();
        self.ctx.decode_embeddings(soft_prompt, 0)?;
        self.ctx.decode_tokens(&ids, n_query as i32)?;
        let mut pos = (n_query + ids.len()) as i32;

        let grammar = params.constraint.as_ref().map(|c| c.grammar());
        let grammar = grammar.as_deref().map(|g| (&**self.ctx.model(), g));
        let max_new_tokens = params
            .constraint
            .as_ref()
            .map_or(params.max_new_tokens, |c| {
                params.max_new_tokens.max(c.min_tokens())
            });
        let mut sampler = match params.sampling {
            None => Sampler::greedy(grammar)?,
            Some(p) => {
                let mut s =
                    Sampler::sampling(p, self.ctx.model().n_vocab(), self.n_ctx(), grammar)?;
                // transformers' repetition penalty covers the whole input:
                // the image placeholders and the prompt.
                if let Some(img) = self.image_token_id {
                    s.accept(&vec![img as i32; n_query]);
                }
                s.accept(&ids);
                s
            }
        };

        let mut tokens = Vec::with_capacity(max_new_tokens);
        let mut stop = StopReason::MaxTokens;
        let mut prefill = Duration::ZERO;
        let mut decode_start = None;
        while tokens.len() < max_new_tokens {
            let next = sampler.sample(&mut self.ctx);
            if prefill.is_zero() {
                prefill = t0.elapsed();
                decode_start = Some(Instant::now());
            }
            let next_u = next as u32;
            if self.eos.contains(&next_u) || self.ctx.model().is_eog(next) {
                stop = StopReason::Eos;
                break;
            }
            tokens.push(next_u);
            on_token(next_u);
            if tokens.len() == max_new_tokens {
                break;
            }
            if pos as usize >= self.n_ctx() {
                stop = StopReason::ContextFull;
                break;
            }
            self.ctx.decode_tokens(&[next], pos)?;
            pos += 1;
        }
        let decode = decode_start.map(|s| s.elapsed()).unwrap_or_default();
        let mut text = self.detokenize(&tokens);
        if let Some(c) = &params.constraint {
            text = c.clean(&text);
        }
        Ok(Generation {
            tokens,
            text,
            prompt_tokens: ids.len(),
            stop,
            prefill,
            decode,
        })
    }
}

/// Decodes token ids exactly as the reference's tokenizer does.
#[derive(Clone)]
pub struct Detokenizer {
    tokenizer: Arc<Tokenizer>,
    /// Special tokens: dropped by `skip_special_tokens`, so they do not end a
    /// run of byte tokens.
    special: Arc<std::collections::HashSet<u32>>,
    clean_up: bool,
}

impl Detokenizer {
    /// A byte-fallback token (`<0x0A>`). A run of them is decoded as one
    /// byte string, so its text can change when the next byte arrives.
    pub fn is_byte_token(&self, id: u32) -> bool {
        self.tokenizer
            .id_to_token(id)
            .is_some_and(|t| t.len() == 6 && t.starts_with("<0x") && t.ends_with('>'))
    }

    /// Length of the prefix of `tokens` whose decoded text is final: up to
    /// the last token that is neither a byte-fallback token nor a special
    /// token (skipped special tokens join the byte runs around them).
    pub fn stable_prefix(&self, tokens: &[u32]) -> usize {
        tokens
            .iter()
            .rposition(|&t| !self.is_byte_token(t) && !self.special.contains(&t))
            .map_or(0, |i| i + 1)
    }

    pub fn decode(&self, tokens: &[u32]) -> String {
        let text = self.tokenizer.decode(tokens, true).unwrap_or_default();
        if self.clean_up {
            clean_up_tokenization(&text)
        } else {
            text
        }
    }
}

/// Incremental answer text for streaming: every piece it returns is final,
/// and the pieces concatenate to the reference's decoding of all tokens.
///
/// Text that may still change is held back: a trailing run of byte-fallback
/// tokens (possibly with skipped special tokens in it), which decodes as one
/// byte string, and trailing whitespace, which tokenizer clean-up may remove.
pub struct TextStream {
    detok: Detokenizer,
    tokens: Vec<u32>,
    stable: usize,
    sent: String,
}

impl TextStream {
    pub fn new(detok: Detokenizer) -> Self {
        Self {
            detok,
            tokens: Vec::new(),
            stable: 0,
            sent: String::new(),
        }
    }

    /// Feeds one generated token; returns text that became final, if any.
    pub fn push(&mut self, token: u32) -> Option<String> {
        self.tokens.push(token);
        let k = self.detok.stable_prefix(&self.tokens);
        if k <= self.stable {
            return None;
        }
        self.stable = k;
        let text = self.detok.decode(&self.tokens[..k]);
        let text = text.trim_end_matches([' ', '\n', '\t']);
        let new = text.strip_prefix(self.sent.as_str())?.to_string();
        if new.is_empty() {
            return None;
        }
        self.sent.push_str(&new);
        Some(new)
    }

    /// The remainder once generation is over, given the final text. `None`
    /// if the text sent so far is not a prefix of it (then the final answer
    /// is authoritative).
    pub fn finish(&mut self, full: &str) -> Option<String> {
        let rest = full.strip_prefix(self.sent.as_str())?.to_string();
        self.sent.push_str(&rest);
        Some(rest)
    }
}

/// transformers' `clean_up_tokenization` (used when the tokenizer asks for it).
fn clean_up_tokenization(s: &str) -> String {
    s.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
}
