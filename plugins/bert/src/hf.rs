//! Hugging Face BERT import: a `BertModel`, `BertForMaskedLM`, `BertForPreTraining`,
//! `BertForSequenceClassification` or `BertForTokenClassification` directory (`config.json`
//! with `"model_type": "bert"` and `model.safetensors`). The config keys map onto `bert`'s;
//! tensor names get the `bert.` prefix a bare `BertModel` lacks, and old `gamma`/`beta`
//! LayerNorm names become `weight`/`bias`. Parts a directory does not have (the MLM head of a
//! `BertModel`, the pooler of a `BertForMaskedLM`) start from the seeded init and are named in
//! the log; a tensor the model has no place for is an error naming it.
//!
//! Import only: `bert` has no Hugging Face export (`save_hf` refuses, the trait's default).
//! Imported heads pool [CLS] (`BertForSequenceClassification`'s pooler); a head with `pooling`
//! mean or max has no transformers architecture, so an export added later must refuse it
//! rather than write a `BertForSequenceClassification` that would predict differently.

use std::collections::HashMap;
use std::path::Path;

use llmlab_nn::params::Source;
use llmlab_plugin_api::candle::Tensor;
use llmlab_plugin_api::serde_json::Value;
use llmlab_plugin_api::{tracing, Context, Error, Model, Result};

use crate::config::{Activation, BertConfig, HeadConfig, HeadKind, NormPosition, Pooling};
use crate::model::Bert;

/// Tensors a Hugging Face checkpoint may hold that are not parameters here: buffers, the
/// decoder weight tied to the word embeddings (and its bias, the same tensor as
/// `cls.predictions.bias`), and the next-sentence head of `BertForPreTraining`.
fn ignored(name: &str) -> bool {
    name.ends_with("position_ids")
        || name == "cls.predictions.decoder.weight"
        || name == "cls.predictions.decoder.bias"
        || name.starts_with("cls.seq_relationship.")
}

/// A Hugging Face tensor name in this model's naming.
pub fn our_name(hf: &str) -> String {
    let name = if ["embeddings.", "encoder.", "pooler."]
        .iter()
        .any(|p| hf.starts_with(p))
    {
        format!("bert.{hf}")
    } else {
        hf.to_string()
    };
    name.replace("LayerNorm.gamma", "LayerNorm.weight")
        .replace("LayerNorm.beta", "LayerNorm.bias")
}

/// `bert`'s config for a Hugging Face `config.json`.
pub fn config_from_hf(json: &Value, path: &Path) -> Result<BertConfig> {
    let key = |k: &str| -> Result<usize> {
        json.get(k)
            .and_then(Value::as_u64)
            .map(|v| v as usize)
            .ok_or_else(|| Error::Data(format!("{}: no integer `{k}`", path.display())))
    };
    if let Some(kind) = json.get("position_embedding_type").and_then(Value::as_str) {
        if kind != "absolute" {
            return Err(Error::unsupported(
                "bert",
                format!(
                    "position_embedding_type \"{kind}\" ({}); only \"absolute\"",
                    path.display()
                ),
            ));
        }
    }
    let activation = match json
        .get("hidden_act")
        .and_then(Value::as_str)
        .unwrap_or("gelu")
    {
        "gelu" => Activation::Gelu,
        "gelu_new" | "gelu_pytorch_tanh" => Activation::GeluNew,
        other => {
            return Err(Error::unsupported(
                "bert",
                format!(
                    "hidden_act \"{other}\" ({}); gelu or gelu_new",
                    path.display()
                ),
            ))
        }
    };
    let architecture = json
        .get("architectures")
        .and_then(|a| a.get(0))
        .and_then(Value::as_str)
        .unwrap_or("BertModel");
    // id2label: {"0": "negative", "1": "positive"}, in index order.
    let labels: Vec<String> = json
        .get("id2label")
        .and_then(Value::as_object)
        .map(|m| {
            (0..m.len())
                .map(|i| {
                    m.get(&i.to_string())
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string()
                })
                .collect()
        })
        .unwrap_or_default();
    let num_labels = if labels.is_empty() {
        json.get("num_labels")
            .and_then(Value::as_u64)
            .map_or(2, |n| n as usize)
    } else {
        labels.len()
    };
    let head = match architecture {
        "BertForSequenceClassification" => Some(
            if num_labels == 1
                || json.get("problem_type").and_then(Value::as_str) == Some("regression")
            {
                HeadConfig {
                    kind: HeadKind::Regression,
                    num_labels: 1,
                    labels: Vec::new(),
                    pair: false,
                    pooling: Pooling::Cls,
                }
            } else {
                HeadConfig {
                    kind: HeadKind::Sequence,
                    num_labels,
                    labels: labels.clone(),
                    pair: false,
                    pooling: Pooling::Cls,
                }
            },
        ),
        "BertForTokenClassification" => Some(HeadConfig {
            kind: HeadKind::Token,
            num_labels,
            labels,
            pair: false,
            pooling: Pooling::Cls,
        }),
        _ => None,
    };
    let dropout = json
        .get("hidden_dropout_prob")
        .and_then(Value::as_f64)
        .unwrap_or(0.1);
    Ok(BertConfig {
        vocab_size: key("vocab_size")?,
        n_layer: key("num_hidden_layers")?,
        n_head: key("num_attention_heads")?,
        d_model: key("hidden_size")?,
        d_ff: Some(key("intermediate_size")?),
        ctx: key("max_position_embeddings")?,
        type_vocab_size: key("type_vocab_size").unwrap_or(2),
        dropout,
        norm_eps: json
            .get("layer_norm_eps")
            .and_then(Value::as_f64)
            .unwrap_or(1e-12),
        norm_position: NormPosition::Post,
        activation,
        head,
        seed: None,
    })
}

pub fn load(dir: &Path, json: &Value, ctx: &Context) -> Result<Bert> {
    let config_path = dir.join(crate::save_load::CONFIG_FILE);
    let mut config = config_from_hf(json, &config_path)?;
    config.seed = Some(ctx.seed);
    let weights_path = dir.join(crate::save_load::WEIGHTS_FILE);
    let hf = llmlab_nn::weights::read_weights(&weights_path, &ctx.device)?;
    // What the directory lacks comes from a freshly initialised model of the same config.
    let fresh = Bert::new(
        config.clone(),
        Source::Init { seed: ctx.seed },
        &ctx.device,
        ctx.dtype,
    )?;
    let wanted: HashMap<String, Tensor> = fresh.tensors().into_iter().collect();
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for (name, tensor) in hf {
        if ignored(&name) {
            continue;
        }
        let ours = our_name(&name);
        if !wanted.contains_key(&ours) {
            return Err(Error::Data(format!(
                "{}: tensor `{name}` has no place in a bert model of this config",
                weights_path.display()
            )));
        }
        tensors.insert(ours, tensor);
    }
    let mut fresh_parts: Vec<&String> = wanted
        .keys()
        .filter(|k| !tensors.contains_key(*k))
        .collect();
    fresh_parts.sort();
    if fresh_parts.len() == wanted.len() {
        return Err(Error::Data(format!(
            "{}: no BERT tensors in it",
            weights_path.display()
        )));
    }
    if !fresh_parts.is_empty() {
        tracing::info!(
            "{}: not in the checkpoint, initialised fresh: {}",
            dir.display(),
            fresh_parts
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    for name in fresh_parts {
        tensors.insert(name.clone(), wanted[name].clone());
    }
    let model = Bert::new(config, Source::Tensors(tensors), &ctx.device, ctx.dtype)
        .map_err(|e| Error::msg(format!("{}: {e}", dir.display())))?;
    debug_assert_eq!(model.parameters().len(), wanted.len());
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_names_map_onto_ours() {
        assert_eq!(
            our_name("embeddings.word_embeddings.weight"),
            "bert.embeddings.word_embeddings.weight"
        );
        assert_eq!(
            our_name("bert.encoder.layer.0.output.LayerNorm.gamma"),
            "bert.encoder.layer.0.output.LayerNorm.weight"
        );
        assert_eq!(our_name("cls.predictions.bias"), "cls.predictions.bias");
        assert!(ignored("bert.embeddings.position_ids"));
    }
}
