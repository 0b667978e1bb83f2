//! Hugging Face `T5ForConditionalGeneration` import: `config.json` mapped onto [`T5Config`]
//! and `model.safetensors` read by name (T5's names are ours). The copies of `shared` that HF
//! may store as `encoder.embed_tokens`/`decoder.embed_tokens` are dropped; a file with its own
//! `lm_head.weight` is untied (T5 v1.1 as transformers 4 saved it), one without is tied.
//! Whether the decoder output is scaled before the head follows `scale_decoder_outputs`
//! (transformers 5) or else `tie_word_embeddings` (transformers 4).
//! Hugging Face's `q` weights carry T5's folded `1/sqrt(d_kv)`; they are multiplied by
//! `sqrt(d_kv)` on import, since ours apply it in the forward pass (`attention.rs`).

use std::path::Path;

use llmlab_nn::params::Source;
use llmlab_nn::weights::read_weights;
use llmlab_plugin_api::candle::Tensor;
use llmlab_plugin_api::serde_json::Value;
use llmlab_plugin_api::{Context, Error, Result};

use crate::attention::query_scale;
use crate::config::{FeedForwardKind, T5Config};
use crate::model::T5;

fn usize_key(json: &Value, key: &str) -> Result<Option<usize>> {
    match json.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(|n| Some(n as usize)).ok_or_else(|| {
            Error::msg(format!(
                "config.json: `{key}` must be a whole number, got {v}"
            ))
        }),
    }
}

fn required(json: &Value, key: &str) -> Result<usize> {
    usize_key(json, key)?
        .ok_or_else(|| Error::msg(format!("config.json: a T5 config needs `{key}`")))
}

/// The llmlab config of a Hugging Face T5 `config.json`; `has_lm_head`: the weights have
/// their own `lm_head.weight`.
pub fn config_from_hf(json: &Value, has_lm_head: bool) -> Result<T5Config> {
    let ff = json
        .get("feed_forward_proj")
        .and_then(Value::as_str)
        .unwrap_or("relu");
    let feed_forward = match ff {
        "relu" => FeedForwardKind::Relu,
        "gated-gelu" => FeedForwardKind::GatedGelu,
        other => {
            return Err(Error::msg(format!(
                "config.json: feed_forward_proj `{other}` is not supported (t5 has \"relu\" and \"gated-gelu\")"
            )))
        }
    };
    let scale = json
        .get("scale_decoder_outputs")
        .and_then(Value::as_bool)
        .unwrap_or_else(|| {
            json.get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(true)
        });
    let id = |key: &str, default: u32| -> Result<u32> {
        Ok(usize_key(json, key)?.map_or(default, |v| v as u32))
    };
    let n_layer = required(json, "num_layers")?;
    Ok(T5Config {
        vocab_size: required(json, "vocab_size")?,
        d_model: required(json, "d_model")?,
        d_kv: required(json, "d_kv")?,
        d_ff: required(json, "d_ff")?,
        n_head: required(json, "num_heads")?,
        n_layer,
        n_decoder_layer: usize_key(json, "num_decoder_layers")?,
        ctx: usize_key(json, "n_positions")?.unwrap_or(512),
        relative_attention_num_buckets: usize_key(json, "relative_attention_num_buckets")?
            .unwrap_or(32),
        relative_attention_max_distance: usize_key(json, "relative_attention_max_distance")?
            .unwrap_or(128),
        feed_forward,
        tie_embeddings: !has_lm_head,
        scale_decoder_outputs: Some(scale),
        norm_eps: json
            .get("layer_norm_epsilon")
            .and_then(Value::as_f64)
            .unwrap_or(1e-6),
        dropout: 0.0,
        pad_token_id: id("pad_token_id", 0)?,
        eos_token_id: id("eos_token_id", 1)?,
        decoder_start_token_id: id("decoder_start_token_id", 0)?,
        seed: None,
    })
}

/// Hugging Face's `q` weights carry T5's folded `1/sqrt(d_kv)`; ours do not (`attention.rs`).
pub fn queries_from_hf(
    tensors: &mut std::collections::HashMap<String, Tensor>,
    d_kv: usize,
) -> Result<()> {
    let factor = 1.0 / query_scale(d_kv);
    for (name, t) in tensors.iter_mut() {
        if is_query_weight(name) {
            *t = (&*t * factor)?;
        }
    }
    Ok(())
}

/// Whether `name` is an attention's query weight (`...SelfAttention.q.weight`,
/// `...EncDecAttention.q.weight`).
pub fn is_query_weight(name: &str) -> bool {
    name.ends_with("Attention.q.weight")
}

pub fn load(dir: &Path, json: &Value, ctx: &Context) -> Result<T5> {
    let path = dir.join("model.safetensors");
    let mut tensors = read_weights(&path, &ctx.device)?;
    for copy in [
        "encoder.embed_tokens.weight",
        "decoder.embed_tokens.weight",
        "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",
    ] {
        tensors.remove(copy);
    }
    for t in tensors.values_mut() {
        *t = t.to_dtype(ctx.dtype)?;
    }
    let config = config_from_hf(json, tensors.contains_key("lm_head.weight"))
        .map_err(|e| Error::msg(format!("{}: {e}", dir.display())))?;
    queries_from_hf(&mut tensors, config.d_kv)?;
    T5::new(
        config,
        Source::Tensors(tensors),
        &ctx.device,
        ctx.dtype,
        ctx.cancel.clone(),
    )
    .map_err(|e| Error::msg(format!("{}: {e}", dir.display())))
}
