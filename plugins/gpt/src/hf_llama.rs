//! Hugging Face Llama-family import: `LlamaForCausalLM`, `MistralForCausalLM`,
//! `Qwen2ForCausalLM` and `Qwen3ForCausalLM` directories load into a `gpt` with `norm: "rms"`,
//! `pos: "rope"`, `mlp: "swiglu"`, `bias: false`, plus what each family adds: Qwen2's
//! query/key/value biases (`qkv_bias`), Qwen3's per-head query/key RMSNorm (`qk_norm`) and
//! free `head_dim`, Llama 3's `rope_scaling`.
//!
//! Weights come from `model.safetensors` or from the shards a `model.safetensors.index.json`
//! names; bf16/f16 weights are cast to the session dtype on load (kept for bf16 compute).
//! Names map one to one except the separate `q_proj`/`k_proj`/`v_proj`, which are stacked
//! into our fused `c_attn` (rows: queries, keys, values). The RoPE layout needs no permutation:
//! transformers and `rope.rs` both rotate the two halves of each head.
//!
//! What the config asks for and the gpt cannot do is refused naming the key: another
//! `hidden_act`, a RoPE scaling other than linear/llama3, a sliding window shorter than the
//! context (a window at least as long as the context is plain causal attention, so `ctx` is
//! capped at the window instead).

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use llmlab_plugin_api::candle::safetensors as candle_safetensors;
use llmlab_plugin_api::candle::Tensor;
use llmlab_plugin_api::config::TypedConfig;
use llmlab_plugin_api::serde_json::Value;
use llmlab_plugin_api::{Context, Error, Result};

use crate::config::{GptConfig, MlpKind, NormKind, PosKind, RopeScaling};
use crate::model::Gpt;
use crate::save_load::{read_json, CONFIG_FILE, WEIGHTS_FILE};
use llmlab_nn::params::Source;

/// The index of a sharded checkpoint (`save_pretrained` with `max_shard_size`).
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// The longest context an import gets: the causal mask is `ctx x ctx`, and real configs say
/// 32k-128k. Longer sequences are refused by the model with a message naming `ctx`.
pub const MAX_IMPORTED_CTX: usize = 4096;

/// The model families this file imports (and `hf_export.rs` writes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
}

impl Family {
    /// The family of a `config.json` `model_type`.
    pub fn from_model_type(model_type: &str) -> Option<Family> {
        match model_type {
            "llama" => Some(Family::Llama),
            "mistral" => Some(Family::Mistral),
            "qwen2" => Some(Family::Qwen2),
            "qwen3" => Some(Family::Qwen3),
            _ => None,
        }
    }

    pub fn model_type(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Mistral => "mistral",
            Family::Qwen2 => "qwen2",
            Family::Qwen3 => "qwen3",
        }
    }

    /// The transformers class (`architectures` in `config.json`).
    pub fn architecture(self) -> &'static str {
        match self {
            Family::Llama => "LlamaForCausalLM",
            Family::Mistral => "MistralForCausalLM",
            Family::Qwen2 => "Qwen2ForCausalLM",
            Family::Qwen3 => "Qwen3ForCausalLM",
        }
    }
}

/// Reads typed keys of a HF `config.json`, naming the family and key in errors.
struct HfKeys<'a> {
    hf: &'a Value,
    family: Family,
}

impl HfKeys<'_> {
    fn fail(&self, message: String) -> Error {
        Error::msg(format!("{} config: {message}", self.family.model_type()))
    }

    fn int(&self, key: &str) -> Result<Option<usize>> {
        match self.hf.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_u64().map(|n| Some(n as usize)).ok_or_else(|| {
                self.fail(format!("`{key}` must be a non-negative integer, got {v}"))
            }),
        }
    }

    fn required(&self, key: &str) -> Result<usize> {
        self.int(key)?
            .ok_or_else(|| self.fail(format!("missing `{key}`")))
    }

    fn float(&self, key: &str, default: f64) -> Result<f64> {
        match self.hf.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| self.fail(format!("`{key}` must be a number, got {v}"))),
        }
    }

    fn flag(&self, key: &str, default: bool) -> Result<bool> {
        match self.hf.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.fail(format!("`{key}` must be true or false, got {v}"))),
        }
    }
}

/// The family and the equivalent `gpt` config of a Llama-family `config.json`; `None` when its
/// `model_type` is not one of them.
pub fn config_from_hf(hf: &Value) -> Result<Option<(Family, GptConfig)>> {
    let Some(family) = hf
        .get("model_type")
        .and_then(Value::as_str)
        .and_then(Family::from_model_type)
    else {
        return Ok(None);
    };
    let keys = HfKeys { hf, family };
    let activation = hf
        .get("hidden_act")
        .and_then(Value::as_str)
        .unwrap_or("silu");
    if activation != "silu" {
        return Err(keys.fail(format!(
            "hidden_act \"{activation}\" is not supported (the gpt's swiglu gates with SiLU, \"silu\")"
        )));
    }
    let d_model = keys.required("hidden_size")?;
    let n_head = keys.required("num_attention_heads")?;
    let head_dim = keys.int("head_dim")?;
    let (bias, qkv_bias) = match family {
        Family::Qwen2 => (false, Some(true)),
        Family::Mistral => (false, None),
        Family::Llama | Family::Qwen3 => {
            let attention = keys.flag("attention_bias", false)?;
            let mlp = keys.flag("mlp_bias", false)?;
            match (attention, mlp) {
                (false, false) => (false, None),
                (true, true) => (true, None),
                _ => {
                    return Err(keys.fail(format!(
                        "attention_bias = {attention} with mlp_bias = {mlp} is not supported \
                         (the gpt's `bias` covers both; `qkv_bias` covers q/k/v only, not o_proj)"
                    )))
                }
            }
        }
    };
    let mut ctx = keys.required("max_position_embeddings")?;
    let windowed = match family {
        Family::Mistral => true,
        Family::Qwen2 | Family::Qwen3 => keys.flag("use_sliding_window", false)?,
        Family::Llama => false,
    };
    if windowed {
        if let Some(window) = keys.int("sliding_window")? {
            // Within the window sliding-window attention is full causal attention.
            ctx = ctx.min(window);
        }
    }
    ctx = ctx.min(MAX_IMPORTED_CTX);
    let config = GptConfig {
        vocab_size: keys.required("vocab_size")?,
        n_layer: keys.required("num_hidden_layers")?,
        n_head,
        n_kv_head: keys.int("num_key_value_heads")?.filter(|&kv| kv != n_head),
        d_model,
        ctx,
        dropout: 0.0,
        bias,
        norm: NormKind::Rms,
        norm_eps: keys.float("rms_norm_eps", 1e-6)?,
        pos: PosKind::Rope,
        rope_theta: rope_theta(&keys)?,
        rope_scaling: rope_scaling(&keys)?,
        head_dim: head_dim.filter(|&hd| n_head * hd != d_model || !d_model.is_multiple_of(n_head)),
        qkv_bias,
        qk_norm: family == Family::Qwen3,
        mlp: MlpKind::Swiglu,
        ffn_hidden: Some(keys.required("intermediate_size")?),
        tie_embeddings: keys.flag("tie_word_embeddings", false)?,
        seed: Some(0),
        ..GptConfig::default()
    };
    config.validate().map_err(|m| keys.fail(m))?;
    Ok(Some((family, config)))
}

/// transformers 5 writes `rope_parameters` (theta and scaling in one object); Hub configs
/// have top-level `rope_theta` and `rope_scaling`.
fn rope_parameters<'a>(keys: &HfKeys<'a>) -> Option<&'a Value> {
    keys.hf.get("rope_parameters").filter(|v| v.is_object())
}

fn rope_theta(keys: &HfKeys) -> Result<f64> {
    match rope_parameters(keys).and_then(|p| p.get("rope_theta")) {
        Some(theta) => theta.as_f64().ok_or_else(|| {
            keys.fail(format!(
                "`rope_parameters.rope_theta` must be a number, got {theta}"
            ))
        }),
        None => keys.float("rope_theta", 10_000.0),
    }
}

/// The RoPE scaling as transformers spells it (`rope_type`, or the older `type`).
fn rope_scaling(keys: &HfKeys) -> Result<Option<RopeScaling>> {
    let scaling = match rope_parameters(keys).or_else(|| keys.hf.get("rope_scaling")) {
        None | Some(Value::Null) => return Ok(None),
        Some(s) => s,
    };
    let kind = scaling
        .get("rope_type")
        .or_else(|| scaling.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let number = |key: &str| -> Result<f64> {
        scaling
            .get(key)
            .and_then(Value::as_f64)
            .ok_or_else(|| keys.fail(format!("rope_scaling ({kind}): missing number `{key}`")))
    };
    Ok(match kind {
        "default" => None,
        "linear" => Some(RopeScaling::Linear {
            factor: number("factor")?,
        }),
        "llama3" => Some(RopeScaling::Llama3 {
            factor: number("factor")?,
            low_freq_factor: number("low_freq_factor")?,
            high_freq_factor: number("high_freq_factor")?,
            original_max_position_embeddings: number("original_max_position_embeddings")? as usize,
        }),
        other => {
            return Err(keys.fail(format!(
                "rope_scaling type \"{other}\" is not supported (supported: \"linear\", \"llama3\")"
            )))
        }
    })
}

/// Every tensor of the checkpoint in `dir`: `model.safetensors`, or the shards named by
/// `model.safetensors.index.json`.
pub fn read_hf_weights(dir: &Path, ctx: &Context) -> Result<HashMap<String, Tensor>> {
    let single = dir.join(WEIGHTS_FILE);
    let index_path = dir.join(INDEX_FILE);
    let shards: Vec<String> = if index_path.exists() {
        let index = read_json(&index_path)?;
        let map = index
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| {
                Error::msg(format!("{}: no `weight_map` object", index_path.display()))
            })?;
        let files: BTreeSet<String> = map
            .values()
            .map(|v| {
                v.as_str().map(str::to_string).ok_or_else(|| {
                    Error::msg(format!(
                        "{}: weight_map values must be file names, got {v}",
                        index_path.display()
                    ))
                })
            })
            .collect::<Result<_>>()?;
        for file in &files {
            // A shard name is a file beside the index, never a path elsewhere.
            if file.contains('/') || file.contains('\\') || file == ".." {
                return Err(Error::msg(format!(
                    "{}: shard `{file}` is not a file name in this directory",
                    index_path.display()
                )));
            }
        }
        files.into_iter().collect()
    } else if single.exists() {
        vec![WEIGHTS_FILE.to_string()]
    } else {
        return Err(Error::msg(format!(
            "{}: neither {WEIGHTS_FILE} nor {INDEX_FILE}",
            dir.display()
        )));
    };
    let mut tensors = HashMap::new();
    for shard in shards {
        let path = dir.join(&shard);
        if !path.is_file() {
            return Err(Error::msg(format!(
                "{}: shard {shard} named in {INDEX_FILE} is missing",
                dir.display()
            )));
        }
        let part = candle_safetensors::load(&path, &ctx.device)
            .map_err(|e| Error::msg(format!("{}: {e}", path.display())))?;
        tensors.extend(part);
    }
    Ok(tensors)
}

/// HF tensor names (with separate q/k/v projections) → ours (fused `c_attn`). Every tensor
/// must be used; unknown ones are listed in the error.
pub fn tensors_from_hf(
    mut tensors: HashMap<String, Tensor>,
    config: &GptConfig,
) -> Result<HashMap<String, Tensor>> {
    let mut out = HashMap::new();
    let mut take = |name: &str| -> Result<Tensor> {
        tensors
            .remove(name)
            .ok_or_else(|| Error::msg(format!("missing tensor `{name}`")))
    };
    out.insert(
        "transformer.wte.weight".to_string(),
        take("model.embed_tokens.weight")?,
    );
    out.insert(
        "transformer.ln_f.weight".to_string(),
        take("model.norm.weight")?,
    );
    for i in 0..config.n_layer {
        let hf = |n: &str| format!("model.layers.{i}.{n}");
        let ours = |n: &str| format!("transformer.h.{i}.{n}");
        let qkv = |kind: &str, take: &mut dyn FnMut(&str) -> Result<Tensor>| -> Result<Tensor> {
            let parts = ["q_proj", "k_proj", "v_proj"]
                .iter()
                .map(|p| take(&hf(&format!("self_attn.{p}.{kind}"))))
                .collect::<Result<Vec<_>>>()?;
            Ok(Tensor::cat(&parts, 0)?)
        };
        out.insert(ours("attn.c_attn.weight"), qkv("weight", &mut take)?);
        if config.qkv_bias() {
            out.insert(ours("attn.c_attn.bias"), qkv("bias", &mut take)?);
        }
        let mut pairs = vec![
            ("input_layernorm.weight", "ln_1.weight"),
            ("post_attention_layernorm.weight", "ln_2.weight"),
            ("self_attn.o_proj.weight", "attn.c_proj.weight"),
            ("mlp.gate_proj.weight", "mlp.c_gate.weight"),
            ("mlp.up_proj.weight", "mlp.c_fc.weight"),
            ("mlp.down_proj.weight", "mlp.c_proj.weight"),
        ];
        if config.bias {
            pairs.extend([
                ("self_attn.o_proj.bias", "attn.c_proj.bias"),
                ("mlp.gate_proj.bias", "mlp.c_gate.bias"),
                ("mlp.up_proj.bias", "mlp.c_fc.bias"),
                ("mlp.down_proj.bias", "mlp.c_proj.bias"),
            ]);
        }
        if config.qk_norm {
            pairs.extend([
                ("self_attn.q_norm.weight", "attn.q_norm.weight"),
                ("self_attn.k_norm.weight", "attn.k_norm.weight"),
            ]);
        }
        for (theirs, mine) in pairs {
            out.insert(ours(mine), take(&hf(theirs))?);
        }
    }
    match tensors.remove("lm_head.weight") {
        Some(head) if !config.tie_embeddings => {
            out.insert("lm_head.weight".to_string(), head);
        }
        Some(_) => {} // a tied head saved anyway is `embed_tokens`
        None if config.tie_embeddings => {}
        None => {
            return Err(Error::msg(
                "missing tensor `lm_head.weight` (tie_word_embeddings is false)",
            ))
        }
    }
    // Old checkpoints carry RoPE's frequency buffers; they follow from the config.
    tensors.retain(|name, _| !name.ends_with(".rotary_emb.inv_freq"));
    if !tensors.is_empty() {
        let mut unknown: Vec<&String> = tensors.keys().collect();
        unknown.sort();
        return Err(Error::msg(format!(
            "tensors this config does not use: {}",
            unknown
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(out)
}

/// Loads `dir` if its `config.json` is a Llama-family one; `Ok(None)` otherwise.
pub fn try_load(dir: &Path, ctx: &Context) -> Result<Option<Gpt>> {
    let config_path = dir.join(CONFIG_FILE);
    if !config_path.is_file() {
        return Ok(None);
    }
    let hf = read_json(&config_path)?;
    let in_dir = |e: Error| Error::msg(format!("{}: {e}", dir.display()));
    let Some((family, config)) = config_from_hf(&hf).map_err(in_dir)? else {
        return Ok(None);
    };
    let tensors = read_hf_weights(dir, ctx)?;
    let tensors = tensors_from_hf(tensors, &config).map_err(|e| {
        in_dir(Error::msg(format!(
            "{} checkpoint: {e}",
            family.architecture()
        )))
    })?;
    Gpt::new(
        config,
        Source::Tensors(tensors),
        &ctx.device,
        ctx.dtype,
        ctx.cancel.clone(),
    )
    .map(Some)
    .map_err(|e| {
        in_dir(Error::msg(format!(
            "{} checkpoint: {e}",
            family.architecture()
        )))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmlab_plugin_api::serde_json::json;

    fn llama() -> Value {
        json!({
            "model_type": "llama", "vocab_size": 300, "hidden_size": 32, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 80,
            "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
            "hidden_act": "silu", "tie_word_embeddings": false
        })
    }

    #[test]
    fn llama_config_maps_key_by_key() {
        let (family, c) = config_from_hf(&llama()).unwrap().unwrap();
        assert_eq!(family, Family::Llama);
        assert_eq!(
            (c.d_model, c.n_head, c.kv_heads(), c.ffn_hidden()),
            (32, 4, 2, 80)
        );
        assert_eq!((c.norm_eps, c.rope_theta, c.ctx), (1e-5, 500000.0, 64));
        assert!(!c.bias && !c.tie_embeddings && !c.qk_norm);
        assert_eq!(c.head_dim(), 8);
    }

    #[test]
    fn unsupported_keys_are_named() {
        let mut hf = llama();
        hf["hidden_act"] = json!("gelu");
        let err = config_from_hf(&hf).unwrap_err().to_string();
        assert!(err.contains("hidden_act") && err.contains("gelu"), "{err}");
        let mut hf = llama();
        hf["rope_scaling"] = json!({"rope_type": "yarn", "factor": 4.0});
        let err = config_from_hf(&hf).unwrap_err().to_string();
        assert!(
            err.contains("rope_scaling") && err.contains("yarn"),
            "{err}"
        );
        let mut hf = llama();
        hf["attention_bias"] = json!(true);
        let err = config_from_hf(&hf).unwrap_err().to_string();
        assert!(err.contains("attention_bias"), "{err}");
        assert!(config_from_hf(&json!({"model_type": "gpt2"}))
            .unwrap()
            .is_none());
    }

    #[test]
    fn sliding_window_caps_the_context_and_qwen_families_add_their_options() {
        let mut hf = llama();
        hf["model_type"] = json!("mistral");
        hf["sliding_window"] = json!(16);
        let (_, c) = config_from_hf(&hf).unwrap().unwrap();
        assert_eq!(c.ctx, 16);
        hf["model_type"] = json!("qwen2");
        let (_, c) = config_from_hf(&hf).unwrap().unwrap();
        assert_eq!(
            c.ctx, 64,
            "Qwen2 ignores the window unless use_sliding_window"
        );
        assert!(c.qkv_bias() && !c.bias);
        hf["model_type"] = json!("qwen3");
        hf["head_dim"] = json!(16);
        let (_, c) = config_from_hf(&hf).unwrap().unwrap();
        assert!(c.qk_norm && !c.qkv_bias());
        assert_eq!((c.head_dim(), c.attn_dim()), (16, 64));
    }
}
