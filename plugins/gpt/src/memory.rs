//! What a `gpt` config costs in memory before anything is allocated: its parameters and the
//! buffers it builds (the causal mask, ctx × ctx; rotary tables), refused over the memory budget
//! (`llmlab_plugin_api::memory`) with the key that made it too large. Without this check,
//! `d_model: 1e9` aborted the process ("memory allocation of N bytes failed") and `n_layer: 1e9`
//! grew until the machine gave out.
//!
//! Generation's beam search has its own estimate here ([`ensure_beams_fit`]): each beam holds a
//! KV cache and a row of logits.

use llmlab_plugin_api::candle::{DType, Device};
use llmlab_plugin_api::memory::{available_bytes, over_budget, Budget};
use llmlab_plugin_api::{Error, Result};

use crate::config::{GptConfig, PosKind};

/// Parameters a config creates (f64: a product of absurd settings must not overflow).
pub fn parameter_count(c: &GptConfig) -> f64 {
    let (v, d, t, l) = (
        c.vocab_size as f64,
        c.d_model as f64,
        c.ctx as f64,
        c.n_layer as f64,
    );
    let head = d / c.n_head.max(1) as f64;
    let kv = head * c.kv_heads() as f64;
    let hidden = c.ffn_hidden() as f64;
    let bias = if c.bias { 1.0 } else { 0.0 };
    let attention = d * (d + 2.0 * kv) + d * d + bias * (d + 2.0 * kv + d);
    let mlp_matrices = match c.mlp {
        crate::config::MlpKind::Gelu => 2.0,
        crate::config::MlpKind::Swiglu => 3.0,
    };
    let mlp = mlp_matrices * d * hidden + bias * (hidden + d);
    let norms = 2.0 * d * (1.0 + bias);
    let embeddings = v * d * if c.tie_embeddings { 1.0 } else { 2.0 };
    let positions = if c.pos == PosKind::Learned {
        t * d
    } else {
        0.0
    };
    embeddings + positions + l * (attention + mlp + norms) + d * (1.0 + bias)
}

/// Bytes of the model's parameters plus its fixed buffers, in `dtype`.
pub fn model_bytes(c: &GptConfig, dtype: DType) -> f64 {
    let width = dtype.size_in_bytes() as f64;
    let t = c.ctx as f64;
    // The causal mask is built as an f32 vector first, then converted.
    let mask = t * t * (4.0 + width);
    let rope = if c.pos == PosKind::Rope {
        2.0 * t * (c.d_model / c.n_head.max(1)) as f64 * width
    } else {
        0.0
    };
    parameter_count(c) * width + mask + rope
}

/// The size keys, the settings a user makes absurd.
const SIZE_KEYS: [&str; 4] = ["d_model", "n_layer", "vocab_size", "ctx"];

fn with_default(c: &GptConfig, key: &str) -> GptConfig {
    let default = GptConfig::default();
    let mut c = c.clone();
    match key {
        "d_model" => {
            c.d_model = default.d_model;
            c.n_head = default.n_head;
            c.n_kv_head = None;
        }
        "n_layer" => c.n_layer = default.n_layer,
        "vocab_size" => c.vocab_size = default.vocab_size,
        _ => c.ctx = default.ctx,
    }
    c
}

fn key_value(c: &GptConfig, key: &str) -> usize {
    match key {
        "d_model" => c.d_model,
        "n_layer" => c.n_layer,
        "vocab_size" => c.vocab_size,
        _ => c.ctx,
    }
}

/// Refuses a config whose parameters and buffers exceed `budget`, naming the size key whose
/// value is most to blame: the one that, put back to its default, shrinks the estimate most.
pub fn ensure_model_fits_in(c: &GptConfig, dtype: DType, budget: Option<&Budget>) -> Result<()> {
    let bytes = model_bytes(c, dtype);
    let culprit = SIZE_KEYS
        .iter()
        .copied()
        .min_by(|a, b| {
            model_bytes(&with_default(c, a), dtype)
                .total_cmp(&model_bytes(&with_default(c, b), dtype))
        })
        .unwrap_or("d_model");
    let what = format!(
        "`{culprit}` = {} (d_model {}, n_layer {}, vocab_size {}, ctx {}: {:.3e} parameters plus \
         the ctx × ctx causal mask)",
        key_value(c, culprit),
        c.d_model,
        c.n_layer,
        c.vocab_size,
        c.ctx,
        parameter_count(c)
    );
    match over_budget(budget, &what, bytes, &format!("lower `{culprit}`")) {
        Some(message) => Err(Error::invalid_config("gpt", message)),
        None => Ok(()),
    }
}

/// [`ensure_model_fits_in`] against the machine's budget, for a model built in host memory.
/// Device memory is the device's business (candle reports its allocation failures as errors).
pub fn ensure_model_fits(c: &GptConfig, dtype: DType, device: &Device) -> Result<()> {
    if !device.is_cpu() {
        return Ok(());
    }
    ensure_model_fits_in(c, dtype, available_bytes().as_ref())
}

/// Beam search keeps, per beam, a KV cache over the whole context and a row of logits: refuses
/// `num_beams` (naming it) when they exceed the budget.
pub fn ensure_beams_fit(
    c: &GptConfig,
    num_beams: usize,
    dtype: DType,
    device: &Device,
) -> Result<()> {
    if !device.is_cpu() {
        return Ok(());
    }
    let width = dtype.size_in_bytes() as f64;
    let head = (c.d_model / c.n_head.max(1)) as f64;
    // Keys and values for every layer over the context; the beam's logits row and its
    // (score, beam, token) candidates.
    let per_beam = 2.0 * c.n_layer as f64 * c.ctx as f64 * c.kv_heads() as f64 * head * width
        + c.vocab_size as f64 * (4.0 + 24.0);
    let what = format!(
        "`num_beams` = {num_beams} (a KV cache of {} context tokens and a row of {} logits per beam)",
        c.ctx, c.vocab_size
    );
    match over_budget(
        available_bytes().as_ref(),
        &what,
        num_beams as f64 * per_beam,
        "use fewer beams",
    ) {
        Some(message) => Err(Error::invalid_config("gpt", message)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmlab_plugin_api::config::TypedConfig;
    use llmlab_plugin_api::serde_json::json;

    fn budget(gib: u64) -> Budget {
        Budget {
            bytes: gib << 30,
            source: "test".into(),
        }
    }

    fn config(v: llmlab_plugin_api::serde_json::Value) -> GptConfig {
        GptConfig::from_json("gpt", &v).unwrap()
    }

    #[test]
    fn parameter_count_matches_gpt2_small() {
        // GPT-2 small: 124,439,808 parameters (tied head, learned positions, biases).
        let c = config(
            json!({ "vocab_size": 50257, "n_layer": 12, "n_head": 12, "d_model": 768, "ctx": 1024 }),
        );
        assert_eq!(parameter_count(&c), 124_439_808.0);
        let swiglu = config(
            json!({ "mlp": "swiglu", "d_model": 96, "n_head": 4, "bias": false, "norm": "rms", "pos": "rope" }),
        );
        assert!(parameter_count(&swiglu) > 0.0);
    }

    #[test]
    fn absurd_sizes_are_refused_naming_the_key() {
        let b = budget(16);
        for (key, value) in [
            ("d_model", 1_000_000_000u64),
            ("n_layer", 1_000_000_000),
            ("vocab_size", 100_000_000_000),
            ("ctx", 100_000_000_000),
        ] {
            let mut v = json!({ "d_model": 64, "n_head": 4 });
            v[key] = json!(value);
            if key == "d_model" {
                v["n_head"] = json!(8);
            }
            let c = config(v);
            let error = ensure_model_fits_in(&c, DType::F32, Some(&b))
                .unwrap_err()
                .to_string();
            assert!(
                error.contains(&format!("`{key}` = {value}"))
                    && error.contains("16.0 GiB available"),
                "{key}: {error}"
            );
        }
        // The defaults and GPT-2 small fit in 16 GiB.
        ensure_model_fits_in(&GptConfig::default(), DType::F32, Some(&b)).unwrap();
        let small = config(
            json!({ "vocab_size": 50257, "n_layer": 12, "n_head": 12, "d_model": 768, "ctx": 1024 }),
        );
        ensure_model_fits_in(&small, DType::F32, Some(&b)).unwrap();
        ensure_model_fits_in(&small, DType::F32, None).unwrap();
    }
}
