//! Hugging Face GPT-2 interop: a `GPT2LMHeadModel` directory (`config.json` + `model.safetensors`)
//! loads into a `gpt` with `norm: "layer"`, `pos: "learned"`, `mlp: "gelu"`.
//!
//! Parameter names already agree (`transformer.h.0.attn.c_attn.weight`, ...); what differs:
//! HF's `Conv1D` layers store their weight `(in, out)`, ours `(out, in)` like `nn.Linear`, so
//! those four matrices are transposed; the causal-mask buffers (`attn.bias`,
//! `attn.masked_bias`) are dropped; old checkpoints without the `transformer.` prefix get it;
//! a tied `lm_head.weight` is dropped (it is `wte`).

use std::collections::HashMap;
use std::path::Path;

use llmlab_plugin_api::candle::Tensor;
use llmlab_plugin_api::serde_json::Value;
use llmlab_plugin_api::{Context, Error, Result};

use crate::config::{GptConfig, MlpKind, NormKind, PosKind};
use crate::model::Gpt;
use crate::save_load::{read_weights, WEIGHTS_FILE};
use llmlab_nn::params::Source;

/// The `gpt` config equivalent to a Hugging Face `GPT2Config`.
pub fn config_from_hf(hf: &Value) -> Result<GptConfig> {
    let int = |key: &str| -> Result<Option<usize>> {
        match hf.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_u64().map(|n| Some(n as usize)).ok_or_else(|| {
                Error::msg(format!(
                    "GPT-2 config: `{key}` must be a non-negative integer, got {v}"
                ))
            }),
        }
    };
    let required = |key: &str| -> Result<usize> {
        int(key)?.ok_or_else(|| Error::msg(format!("GPT-2 config: missing `{key}`")))
    };
    let float = |key: &str, default: f64| hf.get(key).and_then(Value::as_f64).unwrap_or(default);
    let flag = |key: &str, default: bool| hf.get(key).and_then(Value::as_bool).unwrap_or(default);

    let activation = hf
        .get("activation_function")
        .and_then(Value::as_str)
        .unwrap_or("gelu_new");
    if !matches!(activation, "gelu_new" | "gelu_pytorch_tanh") {
        return Err(Error::msg(format!(
            "GPT-2 config: activation_function \"{activation}\" is not supported (gpt uses the tanh GELU, \"gelu_new\")"
        )));
    }
    for (key, supported) in [
        ("scale_attn_by_inverse_layer_idx", false),
        ("scale_attn_weights", true),
        ("add_cross_attention", false),
    ] {
        if flag(key, supported) != supported {
            return Err(Error::msg(format!(
                "GPT-2 config: {key} = {} is not supported",
                !supported
            )));
        }
    }
    let d_model = required("n_embd")?;
    let n_inner = int("n_inner")?.unwrap_or(4 * d_model);
    let config = GptConfig {
        vocab_size: required("vocab_size")?,
        n_layer: required("n_layer")?,
        n_head: required("n_head")?,
        n_kv_head: None,
        d_model,
        ctx: required("n_positions")?,
        dropout: float("resid_pdrop", 0.0),
        bias: true,
        norm: NormKind::Layer,
        norm_eps: float("layer_norm_epsilon", 1e-5),
        pos: PosKind::Learned,
        rope_theta: 10_000.0,
        mlp: MlpKind::Gelu,
        ffn_mult: n_inner as f64 / d_model.max(1) as f64,
        tie_embeddings: flag("tie_word_embeddings", true),
        seed: Some(0),
        ..GptConfig::default()
    };
    use llmlab_plugin_api::config::TypedConfig;
    config
        .validate()
        .map_err(|m| Error::msg(format!("GPT-2 config: {m}")))?;
    if config.ffn_hidden() != n_inner {
        return Err(Error::msg(format!(
            "GPT-2 config: n_inner {n_inner} is not representable"
        )));
    }
    Ok(config)
}

/// HF tensor names and layouts → ours.
pub fn tensors_from_hf(
    tensors: HashMap<String, Tensor>,
    config: &GptConfig,
) -> Result<HashMap<String, Tensor>> {
    let mut out = HashMap::new();
    for (name, tensor) in tensors {
        if name.ends_with(".attn.bias") || name.ends_with(".attn.masked_bias") {
            continue; // causal-mask buffers, not parameters
        }
        let name = if name.starts_with("transformer.") || name.starts_with("lm_head.") {
            name
        } else {
            format!("transformer.{name}")
        };
        if name == "lm_head.weight" && config.tie_embeddings {
            continue;
        }
        let conv1d = [
            "attn.c_attn.weight",
            "attn.c_proj.weight",
            "mlp.c_fc.weight",
            "mlp.c_proj.weight",
        ]
        .iter()
        .any(|suffix| name.ends_with(suffix));
        let tensor = if conv1d {
            tensor.t()?.contiguous()?
        } else {
            tensor
        };
        out.insert(name, tensor);
    }
    Ok(out)
}

pub fn load(dir: &Path, hf_config: &Value, ctx: &Context) -> Result<Gpt> {
    let config =
        config_from_hf(hf_config).map_err(|e| Error::msg(format!("{}: {e}", dir.display())))?;
    let tensors = read_weights(&dir.join(WEIGHTS_FILE), &ctx.device)?;
    let tensors = tensors_from_hf(tensors, &config)?;
    Gpt::new(
        config,
        Source::Tensors(tensors),
        &ctx.device,
        ctx.dtype,
        ctx.cancel.clone(),
    )
    .map_err(|e| Error::msg(format!("{}: GPT-2 checkpoint: {e}", dir.display())))
}
