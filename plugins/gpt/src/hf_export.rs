//! Hugging Face export (`m.save_hf(dir)`): a directory transformers loads with
//! `AutoModelForCausalLM.from_pretrained`: `config.json` with its `architectures`,
//! `model.safetensors` with HF tensor names (f32), and with a tokenizer its `tokenizer.json` and
//! `tokenizer_config.json`.
//!
//! Which architecture a gpt becomes follows from its options ([`target`]): LayerNorm + learned
//! positions + GELU + biases is `GPT2LMHeadModel`; RMSNorm + RoPE + SwiGLU is
//! `LlamaForCausalLM`, or `Qwen2ForCausalLM` with q/k/v-only biases, or `Qwen3ForCausalLM` with
//! q/k norms. Anything else (mixed options, MoE, quantized weights) is refused naming the option.
//! The inverse of `hf.rs` and `hf_llama.rs`.

use std::collections::HashMap;
use std::path::Path;

use llmlab_plugin_api::candle::{DType, Tensor};
use llmlab_plugin_api::files::write_atomic;
use llmlab_plugin_api::serde_json::{self, json, Value};
use llmlab_plugin_api::{Error, Result, SpecialToken, Tokenizer};

use crate::config::{GptConfig, MlpKind, NormKind, PosKind, RopeScaling};
use crate::hf_llama::Family;
use crate::model::Gpt;

/// The HF architecture a gpt config maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Gpt2,
    Llama(Family),
}

impl Target {
    pub fn architecture(self) -> &'static str {
        match self {
            Target::Gpt2 => "GPT2LMHeadModel",
            Target::Llama(family) => family.architecture(),
        }
    }
}

fn refuse(what: String) -> Error {
    Error::msg(format!(
        "gpt: no Hugging Face architecture for this model: {what}"
    ))
}

/// The architecture `config` maps to, or an error naming the option that prevents it.
pub fn target(config: &GptConfig) -> Result<Target> {
    if config.moe.is_some() {
        return Err(refuse(
            "`moe` is set (mixture-of-experts blocks map to no exported architecture)".into(),
        ));
    }
    match (config.norm, config.pos, config.mlp) {
        (NormKind::Layer, PosKind::Learned, MlpKind::Gelu) => {
            let problems = [
                (!config.bias, "bias: false (GPT-2 has biases everywhere)"),
                (config.qkv_bias == Some(false), "qkv_bias: false"),
                (
                    config.kv_heads() != config.n_head,
                    "n_kv_head != n_head (GPT-2 has no grouped-query attention)",
                ),
                (
                    config.attn_dim() != config.d_model,
                    "head_dim * n_head != d_model",
                ),
                (config.qk_norm, "qk_norm: true"),
            ];
            match problems.iter().find(|(bad, _)| *bad) {
                Some((_, what)) => Err(refuse(format!("GPT-2 layout, but {what}"))),
                None => Ok(Target::Gpt2),
            }
        }
        (NormKind::Rms, PosKind::Rope, MlpKind::Swiglu) => {
            let qkv = config.qkv_bias();
            match (config.bias, qkv, config.qk_norm) {
                (true, false, _) => Err(refuse(
                    "bias: true with qkv_bias: false (Llama's attention_bias covers q/k/v and o)"
                        .into(),
                )),
                (false, true, true) => Err(refuse(
                    "qk_norm with q/k/v-only biases (Qwen3 has no biases, Qwen2 no q/k norms)"
                        .into(),
                )),
                (true, true, true) => Err(refuse(
                    "qk_norm with biases (Qwen3's attention_bias has no MLP biases)".into(),
                )),
                (_, _, true) => Ok(Target::Llama(Family::Qwen3)),
                (false, true, false) => Ok(Target::Llama(Family::Qwen2)),
                _ => Ok(Target::Llama(Family::Llama)),
            }
        }
        (norm, pos, mlp) => Err(refuse(format!(
            "norm {norm:?}, pos {pos:?}, mlp {mlp:?}: GPT-2 needs layer/learned/gelu, \
             Llama rms/rope/swiglu"
        ))),
    }
}

/// The special token's text, if the tokenizer has one for `role`.
fn special_text(tokenizer: &dyn Tokenizer, role: SpecialToken) -> Option<String> {
    tokenizer
        .special_token(role)
        .and_then(|id| tokenizer.id_to_token(id))
}

/// The HF `config.json` for `config` exported as `target`.
pub fn hf_config(config: &GptConfig, target: Target, tokenizer: Option<&dyn Tokenizer>) -> Value {
    let eos = tokenizer.and_then(|t| t.special_token(SpecialToken::EndOfText));
    let bos = tokenizer
        .and_then(|t| t.tokenizer_config())
        .and_then(|c| c.get("bos_token").cloned())
        .and_then(|b| match b {
            Value::String(s) => Some(s),
            Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
            _ => None,
        })
        .and_then(|b| tokenizer?.token_to_id(&b));
    let mut out = match target {
        Target::Gpt2 => json!({
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "vocab_size": config.vocab_size,
            "n_positions": config.ctx,
            "n_ctx": config.ctx,
            "n_embd": config.d_model,
            "n_layer": config.n_layer,
            "n_head": config.n_head,
            "n_inner": config.ffn_hidden(),
            "activation_function": "gelu_new",
            "layer_norm_epsilon": config.norm_eps,
            "resid_pdrop": config.dropout,
            "embd_pdrop": config.dropout,
            "attn_pdrop": config.dropout,
            "scale_attn_weights": true,
            "tie_word_embeddings": config.tie_embeddings,
        }),
        Target::Llama(family) => {
            let mut c = json!({
                "architectures": [family.architecture()],
                "model_type": family.model_type(),
                "vocab_size": config.vocab_size,
                "hidden_size": config.d_model,
                "intermediate_size": config.ffn_hidden(),
                "num_hidden_layers": config.n_layer,
                "num_attention_heads": config.n_head,
                "num_key_value_heads": config.kv_heads(),
                "head_dim": config.head_dim(),
                "max_position_embeddings": config.ctx,
                "rms_norm_eps": config.norm_eps,
                "rope_theta": config.rope_theta,
                "rope_scaling": rope_scaling_json(config.rope_scaling.as_ref()),
                "hidden_act": "silu",
                "attention_dropout": 0.0,
                "tie_word_embeddings": config.tie_embeddings,
            });
            match family {
                Family::Llama | Family::Mistral => {
                    c["attention_bias"] = json!(config.bias);
                    c["mlp_bias"] = json!(config.bias);
                }
                Family::Qwen2 => {
                    c["use_sliding_window"] = json!(false);
                    c["sliding_window"] = Value::Null;
                }
                Family::Qwen3 => {
                    c["attention_bias"] = json!(false);
                    c["use_sliding_window"] = json!(false);
                    c["sliding_window"] = Value::Null;
                }
            }
            c
        }
    };
    out["torch_dtype"] = json!("float32");
    out["bos_token_id"] = json!(bos);
    out["eos_token_id"] = json!(eos);
    out
}

fn rope_scaling_json(scaling: Option<&RopeScaling>) -> Value {
    match scaling {
        None => Value::Null,
        Some(RopeScaling::Linear { factor }) => json!({ "rope_type": "linear", "factor": factor }),
        Some(RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        }) => json!({
            "rope_type": "llama3",
            "factor": factor,
            "low_freq_factor": low_freq_factor,
            "high_freq_factor": high_freq_factor,
            "original_max_position_embeddings": original_max_position_embeddings,
        }),
    }
}

/// The model's tensors under HF names and layouts (f32, contiguous).
pub fn hf_tensors(model: &Gpt, target: Target) -> Result<Vec<(String, Tensor)>> {
    let config = model.gpt_config();
    let mut ours: HashMap<String, Tensor> = model
        .tensors()
        .into_iter()
        .map(|(n, t)| Ok((n, t.to_dtype(DType::F32)?)))
        .collect::<Result<_>>()?;
    let mut take = |name: &str| -> Result<Tensor> {
        ours.remove(name)
            .ok_or_else(|| Error::msg(format!("gpt export: no parameter `{name}`")))
    };
    let mut out = Vec::new();
    match target {
        Target::Gpt2 => {
            let conv1d = [
                "attn.c_attn.weight",
                "attn.c_proj.weight",
                "mlp.c_fc.weight",
                "mlp.c_proj.weight",
            ];
            let names: Vec<String> = model.tensors().into_iter().map(|(n, _)| n).collect();
            for name in names {
                if name == "lm_head.weight" && config.tie_embeddings {
                    continue;
                }
                let t = take(&name)?;
                // HF's Conv1D stores (in, out).
                let t = if conv1d.iter().any(|s| name.ends_with(s)) {
                    t.t()?
                } else {
                    t
                };
                out.push((name, t));
            }
        }
        Target::Llama(_) => {
            out.push((
                "model.embed_tokens.weight".into(),
                take("transformer.wte.weight")?,
            ));
            out.push(("model.norm.weight".into(), take("transformer.ln_f.weight")?));
            if !config.tie_embeddings {
                out.push(("lm_head.weight".into(), take("lm_head.weight")?));
            }
            let (q_dim, kv_dim) = (config.attn_dim(), config.kv_heads() * config.head_dim());
            for i in 0..config.n_layer {
                let ours = |n: &str| format!("transformer.h.{i}.{n}");
                let hf = |n: &str| format!("model.layers.{i}.{n}");
                let mut split = |kind: &str| -> Result<()> {
                    let fused = take(&ours(&format!("attn.c_attn.{kind}")))?;
                    for (proj, start, len) in [
                        ("q_proj", 0, q_dim),
                        ("k_proj", q_dim, kv_dim),
                        ("v_proj", q_dim + kv_dim, kv_dim),
                    ] {
                        out.push((
                            hf(&format!("self_attn.{proj}.{kind}")),
                            fused.narrow(0, start, len)?,
                        ));
                    }
                    Ok(())
                };
                split("weight")?;
                if config.qkv_bias() {
                    split("bias")?;
                }
                let mut pairs = vec![
                    ("ln_1.weight", "input_layernorm.weight"),
                    ("ln_2.weight", "post_attention_layernorm.weight"),
                    ("attn.c_proj.weight", "self_attn.o_proj.weight"),
                    ("mlp.c_gate.weight", "mlp.gate_proj.weight"),
                    ("mlp.c_fc.weight", "mlp.up_proj.weight"),
                    ("mlp.c_proj.weight", "mlp.down_proj.weight"),
                ];
                if config.bias {
                    pairs.extend([
                        ("attn.c_proj.bias", "self_attn.o_proj.bias"),
                        ("mlp.c_gate.bias", "mlp.gate_proj.bias"),
                        ("mlp.c_fc.bias", "mlp.up_proj.bias"),
                        ("mlp.c_proj.bias", "mlp.down_proj.bias"),
                    ]);
                }
                if config.qk_norm {
                    pairs.extend([
                        ("attn.q_norm.weight", "self_attn.q_norm.weight"),
                        ("attn.k_norm.weight", "self_attn.k_norm.weight"),
                    ]);
                }
                for (mine, theirs) in pairs {
                    out.push((hf(theirs), take(&ours(mine))?));
                }
            }
        }
    }
    out.into_iter()
        .map(|(n, t)| Ok((n, t.contiguous()?)))
        .collect()
}

/// The `tokenizer_config.json` to write: the one the tokenizer was loaded with, or one made
/// from its special tokens and chat template.
pub fn tokenizer_config(tokenizer: &dyn Tokenizer, ctx: usize) -> Value {
    if let Some(config) = tokenizer.tokenizer_config() {
        return config;
    }
    let mut config = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": ctx,
        "clean_up_tokenization_spaces": false,
    });
    for (role, key) in [
        (SpecialToken::EndOfText, "eos_token"),
        (SpecialToken::Pad, "pad_token"),
        (SpecialToken::Unknown, "unk_token"),
    ] {
        if let Some(text) = special_text(tokenizer, role) {
            config[key] = json!(text);
        }
    }
    if let Some(template) = tokenizer.chat_template() {
        config["chat_template"] = json!(template);
    }
    config
}

/// Writes `model` (and `tokenizer`'s files) as a transformers directory in `dir`.
pub fn save_hf(model: &Gpt, dir: &Path, tokenizer: Option<&dyn Tokenizer>) -> Result<()> {
    if let Some(scheme) = model.scheme() {
        return Err(refuse(format!(
            "its linear weights are {scheme}-quantized; export the dense model"
        )));
    }
    let config = model.gpt_config();
    let target = target(config)?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let tensors = hf_tensors(model, target)?;
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let weights = dir.join(crate::save_load::WEIGHTS_FILE);
    let bytes = llmlab_plugin_api::safetensors::serialize(
        tensors.iter().map(|(n, t)| (n.as_str(), t)),
        Some(metadata),
    )
    .map_err(|e| Error::msg(format!("{}: {e}", weights.display())))?;
    write_atomic(&weights, &bytes)?;
    let hf = hf_config(config, target, tokenizer);
    write_atomic(
        &dir.join(crate::save_load::CONFIG_FILE),
        serde_json::to_string_pretty(&hf)?.as_bytes(),
    )?;
    if let Some(tokenizer) = tokenizer {
        write_atomic(&dir.join("tokenizer.json"), tokenizer.to_json()?.as_bytes())?;
        let config = tokenizer_config(tokenizer, config.ctx);
        write_atomic(
            &dir.join("tokenizer_config.json"),
            serde_json::to_string_pretty(&config)?.as_bytes(),
        )?;
    }
    Ok(())
}
