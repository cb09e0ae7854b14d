//! The one place that talks to llama.cpp's C API (through `llama-cpp-sys-2`).
//!
//! `llama-cpp-2`'s safe `LlamaBatch` can only carry token ids, and its raw
//! model/context pointers are private, so the InstructBLIP soft prompt (a batch
//! of *embeddings*) cannot go through it. This module wraps the handful of C
//! calls blipd needs in owned, `Send` types with `Drop`; all of the crate's
//! `unsafe` lives here, each block with the invariant it relies on.

use llama_cpp_sys_2 as sys;
use std::ffi::{c_char, c_void, CStr, CString};
use std::path::Path;
use std::ptr::NonNull;
use std::sync::{Arc, Once};

/// Errors from llama.cpp calls.
#[derive(Debug, thiserror::Error)]
pub enum LlamaError {
    #[error("llama.cpp could not load the model {0} (see the log above for its reason)")]
    Load(String),
    #[error("llama.cpp could not create a context (n_ctx {n_ctx}): out of memory?")]
    Context { n_ctx: u32 },
    #[error("path {0} is not valid UTF-8 or contains NUL")]
    Path(String),
    #[error("llama_decode failed with code {code} ({what})")]
    Decode { code: i32, what: &'static str },
    #[error("batch of {got} positions exceeds the context of {n_ctx}")]
    ContextFull { got: usize, n_ctx: u32 },
    #[error("embedding batch has {got} floats, not a multiple of n_embd {n_embd}")]
    EmbeddingShape { got: usize, n_embd: usize },
    #[error("quantization of {input} failed (llama_model_quantize returned {code})")]
    Quantize { input: String, code: u32 },
    #[error("llama.cpp refused the answer grammar (a bug in blipd's grammar for it)")]
    Grammar,
}

static BACKEND: Once = Once::new();

/// llama.cpp logs through a global callback: route it to `tracing` so the
/// daemon's logs stay structured, and keep its chatty load-time output at
/// debug level.
unsafe extern "C" fn log_callback(level: sys::ggml_log_level, text: *const c_char, _: *mut c_void) {
    if text.is_null() {
        return;
    }
    // SAFETY: llama.cpp passes a NUL-terminated string valid for this call.
    let msg = unsafe { CStr::from_ptr(text) }.to_string_lossy();
    let msg = msg.trim_end();
    if msg.is_empty() {
        return;
    }
    super::quantize::report(msg);
    match level {
        sys::GGML_LOG_LEVEL_ERROR => tracing::error!(target: "llama.cpp", "{msg}"),
        sys::GGML_LOG_LEVEL_WARN => tracing::warn!(target: "llama.cpp", "{msg}"),
        _ => tracing::debug!(target: "llama.cpp", "{msg}"),
    }
}

fn backend_init() {
    BACKEND.call_once(|| {
        // SAFETY: called once per process before any other llama.cpp call
        // (guarded by `Once`); the callback is a plain function valid forever.
        unsafe {
            sys::llama_log_set(Some(log_callback), std::ptr::null_mut());
            sys::llama_backend_init();
        }
    });
}

fn c_path(path: &Path) -> Result<CString, LlamaError> {
    let s = path
        .to_str()
        .ok_or_else(|| LlamaError::Path(path.display().to_string()))?;
    CString::new(s).map_err(|_| LlamaError::Path(s.to_string()))
}

/// How the model's weights are placed in memory.
#[derive(Debug, Clone, Copy)]
pub struct ModelParams {
    /// Layers to offload to a GPU (0 = CPU only; needs the `cuda` feature).
    pub gpu_layers: i32,
    /// Memory-map the file instead of reading it (lower resident memory for
    /// weights that are not repacked).
    pub use_mmap: bool,
    /// Let llama.cpp repack weights into CPU-friendly layouts (faster, but a
    /// second copy of the repacked tensors is resident).
    pub repack: bool,
}

impl Default for ModelParams {
    fn default() -> Self {
        Self {
            gpu_layers: 0,
            use_mmap: true,
            repack: true,
        }
    }
}

/// A loaded GGUF model. Read-only after load, so it can be shared by contexts.
#[derive(Debug)]
pub struct Model {
    ptr: NonNull<sys::llama_model>,
    vocab: NonNull<sys::llama_vocab>,
}

// SAFETY: llama.cpp does not mutate a `llama_model` after loading; contexts
// only read it, and llama.cpp documents sharing a model between threads.
unsafe impl Send for Model {}
// SAFETY: see above; every method here only reads the model.
unsafe impl Sync for Model {}

impl Model {
    pub fn load(path: &Path, params: ModelParams) -> Result<Self, LlamaError> {
        backend_init();
        let cpath = c_path(path)?;
        // SAFETY: returns a plain struct of defaults.
        let mut p = unsafe { sys::llama_model_default_params() };
        p.n_gpu_layers = params.gpu_layers;
        p.use_extra_bufts = params.repack;
        p.load_mode = if params.use_mmap {
            sys::LLAMA_LOAD_MODE_MMAP
        } else {
            sys::LLAMA_LOAD_MODE_NONE
        };
        // SAFETY: `cpath` is a valid NUL-terminated path that outlives the call;
        // `p` is a fully initialised params struct.
        let raw = unsafe { sys::llama_model_load_from_file(cpath.as_ptr(), p) };
        let ptr = NonNull::new(raw).ok_or_else(|| LlamaError::Load(path.display().to_string()))?;
        // SAFETY: `ptr` is a valid model; the vocab lives as long as the model.
        let vocab = unsafe { sys::llama_model_get_vocab(ptr.as_ptr()) };
        let vocab = NonNull::new(vocab as *mut sys::llama_vocab)
            .ok_or_else(|| LlamaError::Load(path.display().to_string()))?;
        Ok(Self { ptr, vocab })
    }

    /// Embedding width (what the soft prompt must have per position).
    pub fn n_embd(&self) -> usize {
        // SAFETY: valid model pointer for the lifetime of `self`.
        unsafe { sys::llama_model_n_embd(self.ptr.as_ptr()) as usize }
    }

    pub fn n_vocab(&self) -> usize {
        // SAFETY: valid vocab pointer for the lifetime of `self`.
        unsafe { sys::llama_vocab_n_tokens(self.vocab.as_ptr()) as usize }
    }

    pub fn n_ctx_train(&self) -> usize {
        // SAFETY: valid model pointer.
        unsafe { sys::llama_model_n_ctx_train(self.ptr.as_ptr()) as usize }
    }

    /// End-of-generation token (EOS, EOT ...)?
    pub fn is_eog(&self, token: i32) -> bool {
        // SAFETY: valid vocab pointer; out-of-range ids are checked by llama.cpp.
        unsafe { sys::llama_vocab_is_eog(self.vocab.as_ptr(), token) }
    }

    /// Human-readable description, e.g. "llama 7B Q4_K - Medium".
    pub fn description(&self) -> String {
        let mut buf = vec![0u8; 256];
        // SAFETY: `buf` is writable for `buf.len()` bytes; llama.cpp NUL-terminates.
        let n = unsafe {
            sys::llama_model_desc(
                self.ptr.as_ptr(),
                buf.as_mut_ptr() as *mut c_char,
                buf.len(),
            )
        };
        buf.truncate(n.clamp(0, 255) as usize);
        String::from_utf8_lossy(&buf).into_owned()
    }
}

impl Drop for Model {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from llama_model_load_from_file and is freed once;
        // every Context holds an Arc<Model>, so none outlives it.
        unsafe { sys::llama_model_free(self.ptr.as_ptr()) }
    }
}

/// Context sizes and threads.
#[derive(Debug, Clone, Copy)]
pub struct ContextParams {
    pub n_ctx: u32,
    pub n_threads: i32,
    /// KV cache in f32 and flash attention off (llama.cpp's defaults: an f16
    /// cache, flash attention where it is available). The f16 cache rounds
    /// keys and values to 11 bits: on the 22-layer full-depth model of
    /// models/parity_full.py it flipped a greedy step that transformers'
    /// float32 decided by a logit margin of 0.012 (8 of 9 cases identical;
    /// with this, 9 of 9). A quantized model's own error is far larger, so it
    /// keeps the smaller cache.
    pub f32_attention: bool,
}

/// An inference context (KV cache + compute buffers) over a shared model.
pub struct Context {
    ptr: NonNull<sys::llama_context>,
    model: Arc<Model>,
    n_ctx: u32,
    n_embd: usize,
}

// SAFETY: a llama_context may be used from any thread as long as it is not used
// from two at once; `&mut self` on every mutating method enforces that.
unsafe impl Send for Context {}

impl Context {
    pub fn new(model: Arc<Model>, params: ContextParams) -> Result<Self, LlamaError> {
        // SAFETY: returns a plain struct of defaults.
        let mut p = unsafe { sys::llama_context_default_params() };
        p.n_ctx = params.n_ctx;
        // One decode call carries a whole prompt.
        p.n_batch = params.n_ctx;
        p.n_ubatch = params.n_ctx.min(512);
        p.n_seq_max = 1;
        p.n_threads = params.n_threads;
        p.n_threads_batch = params.n_threads;
        p.no_perf = true;
        if params.f32_attention {
            p.type_k = sys::GGML_TYPE_F32;
            p.type_v = sys::GGML_TYPE_F32;
            p.flash_attn_type = sys::LLAMA_FLASH_ATTN_TYPE_DISABLED;
        }
        // SAFETY: the model pointer is valid and kept alive by the Arc we store.
        let raw = unsafe { sys::llama_init_from_model(model.ptr.as_ptr(), p) };
        let ptr = NonNull::new(raw).ok_or(LlamaError::Context {
            n_ctx: params.n_ctx,
        })?;
        // SAFETY: valid context pointer.
        let n_ctx = unsafe { sys::llama_n_ctx(ptr.as_ptr()) };
        let n_embd = model.n_embd();
        Ok(Self {
            ptr,
            model,
            n_ctx,
            n_embd,
        })
    }

    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    pub fn n_ctx(&self) -> u32 {
        self.n_ctx
    }

    pub fn set_threads(&mut self, n: i32) {
        // SAFETY: valid context, exclusive access.
        unsafe { sys::llama_set_n_threads(self.ptr.as_ptr(), n, n) }
    }

    /// Forgets every position (start of a new answer).
    pub fn clear(&mut self) {
        // SAFETY: valid context; the memory handle belongs to it.
        unsafe {
            let mem = sys::llama_get_memory(self.ptr.as_ptr());
            if !mem.is_null() {
                sys::llama_memory_clear(mem, true);
            }
        }
    }

    fn check_room(&self, pos0: i32, n: usize) -> Result<(), LlamaError> {
        if pos0 < 0 || pos0 as usize + n > self.n_ctx as usize {
            return Err(LlamaError::ContextFull {
                got: pos0.max(0) as usize + n,
                n_ctx: self.n_ctx,
            });
        }
        Ok(())
    }

    /// Decodes `embd` (`n * n_embd` floats, row-major) at positions
    /// `pos0..pos0+n`, sequence 0, without producing logits.
    pub fn decode_embeddings(&mut self, embd: &[f32], pos0: i32) -> Result<(), LlamaError> {
        if embd.is_empty() || !embd.len().is_multiple_of(self.n_embd) {
            return Err(LlamaError::EmbeddingShape {
                got: embd.len(),
                n_embd: self.n_embd,
            });
        }
        let n = embd.len() / self.n_embd;
        self.check_room(pos0, n)?;
        let batch = Batch::new(n, self.n_embd);
        // SAFETY: the batch was allocated for `n` rows of `n_embd` floats with
        // one sequence id per row; we write exactly that many elements.
        unsafe {
            let b = batch.raw;
            std::ptr::copy_nonoverlapping(embd.as_ptr(), b.embd, embd.len());
            for i in 0..n {
                *b.pos.add(i) = pos0 + i as i32;
                *b.n_seq_id.add(i) = 1;
                *(*b.seq_id.add(i)) = 0;
                *b.logits.add(i) = 0;
            }
        }
        self.decode(batch, n, "embeddings")
    }

    /// Decodes `tokens` at positions `pos0..`, producing logits for the last one.
    pub fn decode_tokens(&mut self, tokens: &[i32], pos0: i32) -> Result<(), LlamaError> {
        let n = tokens.len();
        if n == 0 {
            return Ok(());
        }
        self.check_room(pos0, n)?;
        let batch = Batch::new(n, 0);
        // SAFETY: the batch was allocated for `n` tokens with one sequence id
        // each; we write exactly `n` entries of each array.
        unsafe {
            let b = batch.raw;
            std::ptr::copy_nonoverlapping(tokens.as_ptr(), b.token, n);
            for i in 0..n {
                *b.pos.add(i) = pos0 + i as i32;
                *b.n_seq_id.add(i) = 1;
                *(*b.seq_id.add(i)) = 0;
                *b.logits.add(i) = (i + 1 == n) as i8;
            }
        }
        self.decode(batch, n, "tokens")
    }

    fn decode(&mut self, mut batch: Batch, n: usize, what: &'static str) -> Result<(), LlamaError> {
        batch.raw.n_tokens = n as i32;
        // SAFETY: valid context with exclusive access; the batch is fully
        // initialised for `n_tokens` entries and outlives the call.
        let code = unsafe { sys::llama_decode(self.ptr.as_ptr(), batch.raw) };
        if code != 0 {
            return Err(LlamaError::Decode { code, what });
        }
        Ok(())
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from llama_init_from_model and is freed once,
        // before the Arc<Model> field is dropped.
        unsafe { sys::llama_free(self.ptr.as_ptr()) }
    }
}

/// An owned `llama_batch`.
struct Batch {
    raw: sys::llama_batch,
}

impl Batch {
    fn new(n: usize, n_embd: usize) -> Self {
        // SAFETY: allocates arrays for `n` entries (embeddings of `n_embd`
        // floats when n_embd > 0), one sequence id each; freed in Drop.
        let raw = unsafe { sys::llama_batch_init(n as i32, n_embd as i32, 1) };
        Self { raw }
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        // SAFETY: allocated by llama_batch_init, freed once.
        unsafe { sys::llama_batch_free(self.raw) }
    }
}

/// Sampling settings, applied in the order transformers applies them:
/// repetition penalty, temperature, top-k, top-p, then a seeded draw.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplerParams {
    pub temperature: f32,
    pub top_k: i32,
    pub top_p: f32,
    pub repeat_penalty: f32,
    pub seed: u32,
}

impl SamplerParams {
    /// The one check of sampling values, for the CLI and for requests.
    pub fn validate(&self) -> Result<(), String> {
        let t = self.temperature;
        if !(t > 0.0 && t.is_finite() && t <= 10.0) {
            return Err(format!(
                "temperature must be in (0, 10] (omit it for greedy decoding), got {t}"
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if self.top_k < 0 {
            return Err(format!("top_k must be >= 0, got {}", self.top_k));
        }
        if !(self.repeat_penalty > 0.0 && self.repeat_penalty.is_finite()) {
            return Err(format!(
                "repeat_penalty must be > 0, got {}",
                self.repeat_penalty
            ));
        }
        Ok(())
    }
}

/// A llama.cpp sampler chain.
pub struct Sampler {
    ptr: NonNull<sys::llama_sampler>,
}

// SAFETY: a sampler is plain state, used through `&mut self` only.
unsafe impl Send for Sampler {}

impl Sampler {
    /// An empty chain, constrained first (before any token is picked) by a
    /// GBNF grammar when one is given: llama.cpp's grammar sampler masks
    /// every token that would leave the grammar, end-of-sequence included
    /// until the grammar is complete.
    fn chain(grammar: Option<(&Model, &str)>) -> Result<Self, LlamaError> {
        // SAFETY: returns a new owned chain (never NULL).
        let chain =
            unsafe { sys::llama_sampler_chain_init(sys::llama_sampler_chain_default_params()) };
        let s = Self {
            ptr: NonNull::new(chain).expect("llama_sampler_chain_init never returns NULL"),
        };
        if let Some((model, text)) = grammar {
            let text = CString::new(text).map_err(|_| LlamaError::Grammar)?;
            // SAFETY: valid vocab (kept alive by `model` for the call; the
            // grammar sampler copies what it needs) and NUL-terminated strings.
            let g = unsafe {
                sys::llama_sampler_init_grammar(
                    model.vocab.as_ptr(),
                    text.as_ptr(),
                    c"root".as_ptr(),
                )
            };
            if g.is_null() {
                return Err(LlamaError::Grammar);
            }
            // SAFETY: the chain takes ownership of the grammar sampler.
            unsafe { sys::llama_sampler_chain_add(s.ptr.as_ptr(), g) };
        }
        Ok(s)
    }

    /// Argmax (ties to the lowest id, as `torch.argmax`), what the reference
    /// does by default; within `grammar` when one is given.
    pub fn greedy(grammar: Option<(&Model, &str)>) -> Result<Self, LlamaError> {
        let s = Self::chain(grammar)?;
        // SAFETY: valid chain; the greedy sampler is moved into it.
        unsafe { sys::llama_sampler_chain_add(s.ptr.as_ptr(), sys::llama_sampler_init_greedy()) };
        Ok(s)
    }

    pub fn sampling(
        p: SamplerParams,
        n_vocab: usize,
        penalty_window: usize,
        grammar: Option<(&Model, &str)>,
    ) -> Result<Self, LlamaError> {
        let s = Self::chain(grammar)?;
        let chain = s.ptr.as_ptr();
        // SAFETY: valid chain; each added sampler is owned by it.
        unsafe {
            if p.repeat_penalty != 1.0 {
                sys::llama_sampler_chain_add(
                    chain,
                    sys::llama_sampler_init_penalties(
                        n_vocab as i32,
                        penalty_window as i32,
                        p.repeat_penalty,
                        0.0,
                        0.0,
                    ),
                );
            }
            sys::llama_sampler_chain_add(chain, sys::llama_sampler_init_temp(p.temperature));
            if p.top_k > 0 {
                sys::llama_sampler_chain_add(chain, sys::llama_sampler_init_top_k(p.top_k));
            }
            if p.top_p < 1.0 {
                sys::llama_sampler_chain_add(chain, sys::llama_sampler_init_top_p(p.top_p, 1));
            }
            sys::llama_sampler_chain_add(chain, sys::llama_sampler_init_dist(p.seed));
        }
        Ok(s)
    }

    /// Records tokens that are already in the sequence (for the repetition penalty).
    pub fn accept(&mut self, tokens: &[i32]) {
        for &t in tokens {
            // SAFETY: valid sampler, exclusive access.
            unsafe { sys::llama_sampler_accept(self.ptr.as_ptr(), t) }
        }
    }

    /// Picks the next token from the context's last logits (and accepts it).
    pub fn sample(&mut self, ctx: &mut Context) -> i32 {
        // SAFETY: both pointers are valid and exclusively borrowed; idx -1 is
        // the last output row of the previous decode.
        unsafe { sys::llama_sampler_sample(self.ptr.as_ptr(), ctx.ptr.as_ptr(), -1) }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        // SAFETY: the chain was created by llama_sampler_chain_init and owns its samplers.
        unsafe { sys::llama_sampler_free(self.ptr.as_ptr()) }
    }
}

/// Whether llama.cpp's GBNF parser accepts `gbnf` (start rule `root`), no
/// model needed: a grammar made from a request is checked before it is
/// accepted, so a generator bug is a `bad_request`, not a failed answer.
pub fn grammar_parses(gbnf: &str) -> bool {
    let Ok(text) = CString::new(gbnf) else {
        return false;
    };
    // SAFETY: NUL-terminated strings. A NULL vocabulary is only dereferenced
    // for token references (`<[id]>`) and when sampling; blipd's grammars
    // have none and this sampler is freed unused.
    let g = unsafe {
        sys::llama_sampler_init_grammar(std::ptr::null(), text.as_ptr(), c"root".as_ptr())
    };
    if g.is_null() {
        return false;
    }
    // SAFETY: `g` is a sampler we own and have not handed to a chain.
    unsafe { sys::llama_sampler_free(g) };
    true
}

/// Quantizes a GGUF file with llama.cpp's own quantizer.
pub fn quantize(
    input: &Path,
    output: &Path,
    ftype: u32,
    threads: i32,
    progress: Option<super::quantize::Progress>,
) -> Result<(), LlamaError> {
    backend_init();
    let _progress = super::quantize::ProgressSlot::set(progress);
    let (cin, cout) = (c_path(input)?, c_path(output)?);
    // SAFETY: plain defaults struct.
    let mut p = unsafe { sys::llama_model_quantize_default_params() };
    p.nthread = threads;
    p.ftype = ftype as _;
    // SAFETY: both paths are valid NUL-terminated strings; `p` is initialised
    // and only read during the call.
    let code = unsafe { sys::llama_model_quantize(cin.as_ptr(), cout.as_ptr(), &p) };
    if code != 0 {
        return Err(LlamaError::Quantize {
            input: input.display().to_string(),
            code,
        });
    }
    Ok(())
}

/// Hands freed heap memory back to the OS (glibc's `malloc_trim`).
///
/// Loading the ONNX graphs parses and optimizes gigabytes of weights through
/// temporary buffers; glibc keeps the freed space in its heap, where it would
/// count as resident for the daemon's whole life (about 2 GiB for ViT-g).
/// Called once after loading. It lives here because this is the crate's one
/// module for foreign calls.
pub fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> i32;
        }
        // SAFETY: malloc_trim only walks glibc's own allocator state under its
        // locks; it takes no pointers from us and is safe to call at any time.
        unsafe {
            malloc_trim(0);
        }
    }
}
