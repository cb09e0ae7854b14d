//! The memory check: what the bundle will need against what the board has.

use super::*;

/// Compares MemAvailable with a rough need: every bundle file loaded once
/// plus the LLM's KV cache.
pub(super) fn memory_check(cfg: &Config, manifest: Option<&Manifest>) -> Check {
    let Some(m) = manifest else {
        return Check::warn(
            "memory",
            "not estimated: the bundle manifest could not be read",
            "fix the bundle first, then run `blipd doctor` again",
        );
    };
    let files: u64 = m.files.values().map(|f| f.size).sum();
    let n_ctx = if cfg.n_ctx > 0 {
        cfg.n_ctx as u64
    } else {
        m.llm.context_length as u64
    };
    let (kv, layers) = kv_cache_estimate(m, n_ctx);
    let need = files + kv;
    let need_text = format!(
        "estimated need {} (bundle {} + KV cache {} for {n_ctx} tokens x ~{layers} layers)",
        human_bytes(need),
        human_bytes(files),
        human_bytes(kv)
    );
    let available = match mem_available() {
        Ok(a) => a,
        Err(e) => {
            return Check::warn(
                "memory",
                format!("{need_text}; cannot read MemAvailable: {e}"),
                "check free memory by hand (`free -h`) against the estimate",
            )
        }
    };
    let detail = format!("{} available, {need_text}", human_bytes(available));
    let running = "if blipd is already running, its memory does not count as available: \
                   stop it and run `blipd doctor` again";
    if available < need {
        Check::fail(
            "memory",
            detail,
            format!(
                "use a smaller bundle (`blipd quantize BUNDLE OUT q4_k_m`), a shorter context \
                 (`n_ctx` in the config), stop other programs or add swap; {running}"
            ),
        )
    } else if (available as f64) < need as f64 * MEMORY_HEADROOM {
        Check::warn(
            "memory",
            format!("{detail}: less than {MEMORY_HEADROOM}x headroom"),
            format!(
                "the estimate leaves out compute buffers and other programs; consider a smaller \
                 bundle or `n_ctx`; {running}"
            ),
        )
    } else {
        Check::ok("memory", detail)
    }
}

/// KV-cache bytes and the layer count used, estimated from the manifest.
///
/// The manifest does not record the LLM's layer count, so it is derived from
/// the weight count (GGUF size / bits per weight): a LLaMA layer holds about
/// 12 x hidden^2 weights, the token embeddings and output head 2 x vocab x
/// hidden. The cache itself is K and V per layer per position, f16
/// (llama.cpp's default cache type).
fn kv_cache_estimate(m: &Manifest, n_ctx: u64) -> (u64, u64) {
    let hidden = m.llm.hidden_size as f64;
    let llm_bytes = m.files.get(&m.llm.file).map(|f| f.size).unwrap_or(0) as f64;
    let weights = llm_bytes * 8.0 / bits_per_weight(&m.llm.weight_type);
    let embeddings = 2.0 * m.llm.vocab_size as f64 * hidden;
    let per_layer = 12.0 * hidden * hidden;
    let layers = if per_layer > 0.0 {
        ((weights - embeddings) / per_layer).round().max(1.0) as u64
    } else {
        1
    };
    let kv = n_ctx * layers * 2 * m.llm.hidden_size as u64 * 2;
    (kv, layers)
}

/// Average bits per weight of a GGUF tensor type (block scales included);
/// unknown types count as f16, which overestimates quantized ones' layers.
fn bits_per_weight(weight_type: &str) -> f64 {
    match weight_type.to_ascii_lowercase().as_str() {
        "f32" => 32.0,
        "f16" | "bf16" => 16.0,
        "q8_0" => 8.5,
        "q6_k" => 6.56,
        "q5_k_m" => 5.7,
        "q5_k_s" | "q5_0" | "q5_1" => 5.5,
        "q4_k_m" => 4.85,
        "q4_k_s" | "q4_0" | "q4_1" => 4.5,
        "q3_k_m" | "q3_k_s" | "q3_k_l" => 3.9,
        "q2_k" => 2.6,
        _ => 16.0,
    }
}

/// `MemAvailable` of /proc/meminfo, in bytes.
fn mem_available() -> Result<u64, String> {
    let text = std::fs::read_to_string("/proc/meminfo").map_err(|e| e.to_string())?;
    text.lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| "no MemAvailable line in /proc/meminfo".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_estimate_of_a_7b_model() {
        let dir = default_bundle_dir();
        let mut m = Bundle::open(&dir).unwrap().manifest;
        // Vicuna-7B in q4_k_m: 32 layers, hidden 4096, 32000 tokens.
        m.llm.hidden_size = 4096;
        m.llm.vocab_size = 32000;
        m.llm.weight_type = "q4_k_m".into();
        let llm = m.llm.file.clone();
        m.files.get_mut(&llm).unwrap().size = 4_080_000_000;
        let (kv, layers) = kv_cache_estimate(&m, 2048);
        assert!((30..=34).contains(&layers), "{layers}");
        assert_eq!(kv, 2048 * layers * 2 * 4096 * 2);
    }
}
