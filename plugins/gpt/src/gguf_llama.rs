//! GGUF export for llama.cpp (`m.save_gguf(path, tok)`; `gguf.rs` keeps llmlab's own GGUF
//! layout): the architecture names, tensor names and metadata keys of llama.cpp's
//! `convert_hf_to_gguf.py`, so the file is what that converter makes from our `save_hf`
//! directory.
//!
//! - Architectures: `llama` (Llama, Mistral), `qwen2`, `qwen3`, `gpt2` ([`hf_export::target`]).
//! - Keys: `general.architecture`, `general.name`, `general.file_type` (0, all F32),
//!   `{arch}.context_length`, `.embedding_length`, `.block_count`, `.feed_forward_length`,
//!   `.attention.head_count`, `.attention.head_count_kv`, `.attention.key_length`,
//!   `.attention.value_length`, `.attention.layer_norm_rms_epsilon` (or `layer_norm_epsilon`
//!   for gpt2), `.rope.freq_base`, `.rope.dimension_count`, `.rope.scaling.type/.factor`
//!   (linear), `.vocab_size`; the tokenizer as `tokenizer.ggml.model` = `gpt2` (byte-level
//!   BPE), `.pre`, `.tokens`, `.token_type`, `.merges`, `.bos_token_id`, `.eos_token_id`,
//!   `.padding_token_id`, `tokenizer.chat_template`.
//! - Tensors: `token_embd`, `output_norm`, `output`, `blk.N.{attn_norm, attn_q, attn_k, attn_v,
//!   attn_output, attn_q_norm, attn_k_norm, ffn_norm, ffn_gate, ffn_up, ffn_down}` (gpt2:
//!   `position_embd`, `attn_qkv`, biases); llama3 RoPE scaling as the `rope_freqs` tensor.
//! - llama.cpp's `llama` architecture rotates interleaved pairs, transformers rotates halves:
//!   the converter permutes the rows of `attn_q`/`attn_k` for it, and so do we. `qwen2`/`qwen3`
//!   use the NeoX (halves) rotation and keep their rows.

use std::io::Cursor;
use std::path::Path;

use llmlab_plugin_api::candle::quantized::{gguf_file, GgmlDType, QTensor};
use llmlab_plugin_api::candle::{Device, Tensor};
use llmlab_plugin_api::files::write_atomic;
use llmlab_plugin_api::serde_json::{self, Value};
use llmlab_plugin_api::{Error, Result, SpecialToken, Tokenizer};

use crate::config::{GptConfig, RopeScaling};
use crate::hf_export::{self, Target};
use crate::hf_llama::Family;
use crate::model::Gpt;

/// llama.cpp's architecture name for `target`.
pub fn arch(target: Target) -> &'static str {
    match target {
        Target::Gpt2 => "gpt2",
        Target::Llama(Family::Llama | Family::Mistral) => "llama",
        Target::Llama(Family::Qwen2) => "qwen2",
        Target::Llama(Family::Qwen3) => "qwen3",
    }
}

/// The row permutation of `convert_hf_to_gguf.py`'s `LlamaModel.permute`: within each head, the
/// rows of the two halves are interleaved (`(heads, 2, hd/2, ..)` → `(heads, hd/2, 2, ..)`).
pub fn permute_for_interleaved_rope(t: &Tensor, heads: usize) -> Result<Tensor> {
    let dims = t.dims().to_vec();
    let rows = dims[0];
    let rest: usize = dims[1..].iter().product();
    let half = rows / heads / 2;
    Ok(t.reshape((heads, 2, half, rest))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)?)
}

/// llama.cpp's tensor name for one of our HF-named tensors (`hf_export::hf_tensors`).
fn llama_cpp_name(hf: &str) -> Option<String> {
    let fixed = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(name) = fixed {
        return Some(name.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, tail) = rest.split_once('.')?;
    let (module, kind) = tail.rsplit_once('.')?;
    let short = match module {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{short}.{kind}"))
}

/// GPT-2's llama.cpp names, from our (GPT-2) parameter names.
fn gpt2_name(ours: &str) -> Option<String> {
    let fixed = match ours {
        "transformer.wte.weight" => Some("token_embd.weight"),
        "transformer.wpe.weight" => Some("position_embd.weight"),
        "transformer.ln_f.weight" => Some("output_norm.weight"),
        "transformer.ln_f.bias" => Some("output_norm.bias"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(name) = fixed {
        return Some(name.to_string());
    }
    let rest = ours.strip_prefix("transformer.h.")?;
    let (layer, tail) = rest.split_once('.')?;
    let (module, kind) = tail.rsplit_once('.')?;
    let short = match module {
        "ln_1" => "attn_norm",
        "ln_2" => "ffn_norm",
        "attn.c_attn" => "attn_qkv",
        "attn.c_proj" => "attn_output",
        "mlp.c_fc" => "ffn_up",
        "mlp.c_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{short}.{kind}"))
}

/// The tensors under llama.cpp's names, q/k permuted for the `llama` architecture.
fn tensors(model: &Gpt, target: Target) -> Result<Vec<(String, Tensor)>> {
    let config = model.gpt_config();
    let mut out = Vec::new();
    match target {
        Target::Gpt2 => {
            for (name, t) in model.tensors() {
                if name == "lm_head.weight" && config.tie_embeddings {
                    continue;
                }
                let gguf = gpt2_name(&name).ok_or_else(|| {
                    Error::msg(format!("gguf export: no llama.cpp name for `{name}`"))
                })?;
                out.push((gguf, t.to_dtype(llmlab_plugin_api::candle::DType::F32)?));
            }
        }
        Target::Llama(family) => {
            let interleave = matches!(family, Family::Llama | Family::Mistral);
            for (name, t) in hf_export::hf_tensors(model, target)? {
                let gguf = llama_cpp_name(&name).ok_or_else(|| {
                    Error::msg(format!("gguf export: no llama.cpp name for `{name}`"))
                })?;
                let t = if interleave && name.contains(".self_attn.q_proj.") {
                    permute_for_interleaved_rope(&t, config.n_head)?
                } else if interleave && name.contains(".self_attn.k_proj.") {
                    permute_for_interleaved_rope(&t, config.kv_heads())?
                } else {
                    t
                };
                out.push((gguf, t));
            }
            if let Some(RopeScaling::Llama3 { .. }) = config.rope_scaling {
                out.push(("rope_freqs.weight".into(), llama3_rope_factors(config)?));
            }
        }
    }
    Ok(out)
}

/// The per-frequency divisors llama.cpp applies for llama3 scaling (`rope_freqs`), as the
/// converter computes them.
fn llama3_rope_factors(config: &GptConfig) -> Result<Tensor> {
    let Some(RopeScaling::Llama3 {
        factor,
        low_freq_factor,
        high_freq_factor,
        original_max_position_embeddings,
    }) = config.rope_scaling
    else {
        return Err(Error::msg("llama3 rope factors without llama3 scaling"));
    };
    let hd = config.head_dim();
    let original = original_max_position_embeddings as f64;
    let (low_wavelen, high_wavelen) = (original / low_freq_factor, original / high_freq_factor);
    let factors: Vec<f32> = (0..hd / 2)
        .map(|i| {
            let freq = 1.0 / config.rope_theta.powf(2.0 * i as f64 / hd as f64);
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            let f = if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor
            } else {
                let smooth =
                    (original / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                1.0 / ((1.0 - smooth) / factor + smooth)
            };
            f as f32
        })
        .collect();
    Ok(Tensor::from_vec(factors, hd / 2, &Device::Cpu)?)
}

/// `tokenizer.ggml.pre`: llama.cpp's name for the tokenizer's pre-tokenizer regex.
fn pre_tokenizer_name(tokenizer_json: &Value) -> &'static str {
    let text = tokenizer_json["pre_tokenizer"].to_string();
    if text.contains(r"\\p{N}{1,3}") {
        "llama-bpe"
    } else if text.contains(r"\\p{N}|") || text.contains(r"\\p{N}| ?") {
        "qwen2"
    } else if text.contains("ByteLevel") && text.contains("\"use_regex\":true") {
        "gpt-2"
    } else {
        "default"
    }
}

/// The `tokenizer.ggml.*` and `tokenizer.chat_template` keys from a byte-level BPE tokenizer.
fn tokenizer_metadata(
    tokenizer: &dyn Tokenizer,
    metadata: &mut Vec<(String, gguf_file::Value)>,
) -> Result<()> {
    use gguf_file::Value as G;
    let json: Value = serde_json::from_str(&tokenizer.to_json()?)?;
    let model = &json["model"];
    if model["type"].as_str() != Some("BPE") {
        return Err(Error::msg(format!(
            "gguf export: tokenizer model {} is not BPE; llama.cpp's \"gpt2\" tokenizer needs byte-level BPE",
            model["type"]
        )));
    }
    let merges: Vec<G> = model["merges"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter_map(|merge| match merge {
                    Value::String(s) => Some(s.clone()),
                    Value::Array(pair) => Some(format!(
                        "{} {}",
                        pair.first()?.as_str()?,
                        pair.get(1)?.as_str()?
                    )),
                    _ => None,
                })
                .map(G::String)
                .collect()
        })
        .unwrap_or_default();
    let specials: std::collections::HashSet<u32> = json["added_tokens"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|t| t["special"].as_bool() == Some(true))
                .filter_map(|t| t["id"].as_u64().map(|id| id as u32))
                .collect()
        })
        .unwrap_or_default();
    let n = tokenizer.vocab_size() as u32;
    let mut tokens = Vec::with_capacity(n as usize);
    let mut types = Vec::with_capacity(n as usize);
    for id in 0..n {
        let token = tokenizer.id_to_token(id).ok_or_else(|| {
            Error::msg(format!(
                "gguf export: the tokenizer has no token for id {id}"
            ))
        })?;
        tokens.push(G::String(token));
        // llama.cpp's token types: 1 normal, 3 control.
        types.push(G::I32(if specials.contains(&id) { 3 } else { 1 }));
    }
    let text = |k: &str, v: &str| (k.to_string(), G::String(v.to_string()));
    metadata.push(text("tokenizer.ggml.model", "gpt2"));
    metadata.push(text("tokenizer.ggml.pre", pre_tokenizer_name(&json)));
    metadata.push(("tokenizer.ggml.tokens".into(), G::Array(tokens)));
    metadata.push(("tokenizer.ggml.token_type".into(), G::Array(types)));
    metadata.push(("tokenizer.ggml.merges".into(), G::Array(merges)));
    let bos = tokenizer
        .tokenizer_config()
        .and_then(|c| c.get("bos_token").cloned())
        .and_then(|b| match b {
            Value::String(s) => Some(s),
            Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
            _ => None,
        })
        .and_then(|b| tokenizer.token_to_id(&b));
    for (key, id) in [
        ("tokenizer.ggml.bos_token_id", bos),
        (
            "tokenizer.ggml.eos_token_id",
            tokenizer.special_token(SpecialToken::EndOfText),
        ),
        (
            "tokenizer.ggml.padding_token_id",
            tokenizer.special_token(SpecialToken::Pad),
        ),
    ] {
        if let Some(id) = id {
            metadata.push((key.into(), G::U32(id)));
        }
    }
    metadata.push(("tokenizer.ggml.add_bos_token".into(), G::Bool(false)));
    if let Some(template) = tokenizer.chat_template() {
        metadata.push(text("tokenizer.chat_template", &template));
    }
    Ok(())
}

/// Writes `model` as one GGUF file llama.cpp loads (all tensors F32).
pub fn save(model: &Gpt, path: &Path, tokenizer: Option<&dyn Tokenizer>) -> Result<()> {
    use gguf_file::Value as G;
    if let Some(scheme) = model.scheme() {
        return Err(Error::msg(format!(
            "gguf export for llama.cpp: the model is {scheme}-quantized in llmlab's padded layout; \
             export the dense model (llama.cpp's llama-quantize makes its own quantized files)"
        )));
    }
    let config = model.gpt_config();
    let target = hf_export::target(config)?;
    let arch = arch(target);
    let u32v = |v: usize| G::U32(v as u32);
    let mut metadata: Vec<(String, G)> = vec![
        ("general.architecture".into(), G::String(arch.into())),
        ("general.name".into(), G::String("llmlab-gpt".into())),
        ("general.file_type".into(), G::U32(0)),
    ];
    let key = |k: &str| format!("{arch}.{k}");
    metadata.extend([
        (key("context_length"), u32v(config.ctx)),
        (key("embedding_length"), u32v(config.d_model)),
        (key("block_count"), u32v(config.n_layer)),
        (key("feed_forward_length"), u32v(config.ffn_hidden())),
        (key("attention.head_count"), u32v(config.n_head)),
        (key("attention.head_count_kv"), u32v(config.kv_heads())),
        (key("vocab_size"), u32v(config.vocab_size)),
    ]);
    match target {
        Target::Gpt2 => metadata.push((
            key("attention.layer_norm_epsilon"),
            G::F32(config.norm_eps as f32),
        )),
        Target::Llama(_) => {
            metadata.extend([
                (
                    key("attention.layer_norm_rms_epsilon"),
                    G::F32(config.norm_eps as f32),
                ),
                (key("rope.freq_base"), G::F32(config.rope_theta as f32)),
                (key("rope.dimension_count"), u32v(config.head_dim())),
                (key("attention.key_length"), u32v(config.head_dim())),
                (key("attention.value_length"), u32v(config.head_dim())),
            ]);
            if let Some(RopeScaling::Linear { factor }) = config.rope_scaling {
                metadata.push((key("rope.scaling.type"), G::String("linear".into())));
                metadata.push((key("rope.scaling.factor"), G::F32(factor as f32)));
            }
        }
    }
    if let Some(tokenizer) = tokenizer {
        tokenizer_metadata(tokenizer, &mut metadata)?;
    }
    let context = |e: llmlab_plugin_api::candle::Error| {
        Error::msg(format!("{}: writing GGUF: {e}", path.display()))
    };
    let tensors = tensors(model, target)?
        .into_iter()
        .map(|(n, t)| {
            // A fresh buffer: candle's quantize reads a narrowed tensor's storage from its start.
            let values = t
                .flatten_all()
                .map_err(context)?
                .to_vec1::<f32>()
                .map_err(context)?;
            let t = Tensor::from_vec(values, t.shape(), &Device::Cpu).map_err(context)?;
            Ok((n, QTensor::quantize(&t, GgmlDType::F32).map_err(context)?))
        })
        .collect::<Result<Vec<_>>>()?;
    let metadata: Vec<(&str, &G)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, q)| (n.as_str(), q)).collect();
    let mut bytes = Cursor::new(Vec::new());
    gguf_file::write(&mut bytes, &metadata, &tensor_refs).map_err(context)?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    write_atomic(path, bytes.get_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_llama_cpp() {
        assert_eq!(
            llama_cpp_name("model.layers.3.self_attn.q_proj.bias").as_deref(),
            Some("blk.3.attn_q.bias")
        );
        assert_eq!(
            llama_cpp_name("model.layers.0.mlp.gate_proj.weight").as_deref(),
            Some("blk.0.ffn_gate.weight")
        );
        assert_eq!(
            gpt2_name("transformer.h.1.attn.c_attn.weight").as_deref(),
            Some("blk.1.attn_qkv.weight")
        );
        assert_eq!(llama_cpp_name("model.layers.0.bogus.weight"), None);
    }

    #[test]
    fn the_permutation_interleaves_the_halves_of_each_head() {
        // One head of 4 rows (two halves: rows 0,1 and 2,3) → 0,2,1,3.
        let t = Tensor::arange(0f32, 8., &Device::Cpu)
            .unwrap()
            .reshape((8, 1))
            .unwrap();
        let p = permute_for_interleaved_rope(&t, 2).unwrap();
        let v: Vec<f32> = p.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(v, vec![0., 2., 1., 3., 4., 6., 5., 7.]);
    }
}
