//! What `blipd quantize` offers and how it reports progress; the call into
//! llama.cpp's quantizer itself is in [`super::ffi::quantize`].

use std::sync::Mutex;

/// GGUF quantization types `blipd quantize` offers, by llama.cpp's names.
pub const QUANT_TYPES: &[(&str, u32)] = &[
    ("f32", 0),
    ("f16", 1),
    ("q4_0", 2),
    ("q4_1", 3),
    ("q8_0", 7),
    ("q5_0", 8),
    ("q5_1", 9),
    ("q2_k", 10),
    ("q3_k_s", 11),
    ("q3_k_m", 12),
    ("q3_k_l", 13),
    ("q4_k_s", 14),
    ("q4_k_m", 15),
    ("q5_k_s", 16),
    ("q5_k_m", 17),
    ("q6_k", 18),
    // Non-linear 4-bit, no importance matrix needed; llama.cpp repacks
    // iq4_nl (not iq4_xs) for AVX2 and ARM dotprod, as it does q4_0.
    ("iq4_nl", 25),
    ("iq4_xs", 30),
    ("bf16", 32),
];

/// A type name `blipd quantize` does not offer.
#[derive(Debug, thiserror::Error)]
#[error("unknown type {name}; choose one of {choices}")]
pub struct UnknownType {
    name: String,
    choices: String,
}

/// The canonical (lower-case) name and llama.cpp's ftype of a type name.
pub fn ftype(name: &str) -> Result<(String, u32), UnknownType> {
    let lower = name.to_ascii_lowercase();
    QUANT_TYPES
        .iter()
        .find(|(n, _)| *n == lower)
        .map(|&(n, f)| (n.to_string(), f))
        .ok_or_else(|| UnknownType {
            name: name.into(),
            choices: QUANT_TYPES
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// "quantizing: 40% (116/291 tensors, 52 s)" on stderr at every tenth of the
/// tensors begun: a 7B model takes minutes (models/export.py passes it through).
pub fn stderr_progress() -> Progress {
    let start = std::time::Instant::now();
    let mut shown = 0;
    Box::new(move |i, n| {
        // llama.cpp announces tensor i before converting it.
        let tenth = (i * 10).checked_div(n).unwrap_or(0);
        if tenth > shown {
            shown = tenth;
            eprintln!(
                "quantizing: {}% ({i}/{n} tensors, {:.0} s)",
                i * 100 / n.max(1),
                start.elapsed().as_secs_f64()
            );
        }
    })
}

/// Where [`ffi::quantize`](super::ffi::quantize) reports "tensor i of n": llama.cpp only says it in its
/// log, one `[   i/   n] name ...` line per tensor, so the log callback reads
/// the counter from there while a quantization runs.
pub type Progress = Box<dyn FnMut(usize, usize) + Send>;
static QUANTIZE_PROGRESS: Mutex<Option<Progress>> = Mutex::new(None);

/// `(i, n)` from a quantizer log line `[   i/   n] name - [...]`.
fn tensor_counter(msg: &str) -> Option<(usize, usize)> {
    let inner = msg.strip_prefix('[')?.split_once(']')?.0;
    let (i, n) = inner.split_once('/')?;
    Some((i.trim().parse().ok()?, n.trim().parse().ok()?))
}

/// Called by the llama.cpp log callback with every message.
pub(super) fn report(msg: &str) {
    if let Some((i, n)) = tensor_counter(msg) {
        if let Ok(mut slot) = QUANTIZE_PROGRESS.lock() {
            if let Some(progress) = slot.as_mut() {
                progress(i, n);
            }
        }
    }
}

/// Holds [`QUANTIZE_PROGRESS`] for one quantization and clears it after,
/// also when the call fails.
pub(super) struct ProgressSlot;

impl ProgressSlot {
    pub(super) fn set(progress: Option<Progress>) -> Self {
        if let Ok(mut slot) = QUANTIZE_PROGRESS.lock() {
            *slot = progress;
        }
        Self
    }
}

impl Drop for ProgressSlot {
    fn drop(&mut self) {
        if let Ok(mut slot) = QUANTIZE_PROGRESS.lock() {
            *slot = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{ftype, tensor_counter};

    #[test]
    fn type_names_are_llama_cpps_in_any_case() {
        assert_eq!(ftype("Q4_K_M").unwrap(), ("q4_k_m".to_string(), 15));
        let e = ftype("q3_bogus").unwrap_err().to_string();
        assert!(e.contains("q3_bogus") && e.contains("q8_0"), "{e}");
    }

    #[test]
    fn reads_the_quantizers_tensor_counter() {
        let line = "[  12/ 291]                  blk.1.attn_q.weight - [ 4096,  4096,     1,     1], type =    f16, ";
        assert_eq!(tensor_counter(line), Some((12, 291)));
        assert_eq!(
            tensor_counter("llama_model_quantize_impl: model size = 12.5 MiB"),
            None
        );
        assert_eq!(tensor_counter("[x/2] y"), None);
        assert_eq!(tensor_counter("[3/] y"), None);
    }
}
