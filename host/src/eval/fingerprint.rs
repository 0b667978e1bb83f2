//! The identity of what was evaluated, for results.json: a SHA-256 over the model's parameters
//! (names, shapes and values, in name order), its config and size, and the tokenizer's
//! vocabulary size. Two results with one fingerprint scored the same weights.

use llmlab_plugin_api::candle::DType;
use llmlab_plugin_api::serde_json::{json, Value};
use llmlab_plugin_api::{Model, Result, Tokenizer};
use sha2::{Digest, Sha256};

pub fn model_fingerprint(model: &dyn Model, tokenizer: &dyn Tokenizer) -> Result<Value> {
    let mut hasher = Sha256::new();
    for (name, var) in model.parameters() {
        hasher.update(name.as_bytes());
        hasher.update(format!("{:?}", var.dims()).as_bytes());
        let values: Vec<f32> = var
            .as_tensor()
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1()?;
        for v in values {
            hasher.update(v.to_le_bytes());
        }
    }
    let digest: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(json!({
        "name": model.name(),
        "sha256": digest,
        "num_params": model.num_params(),
        "config": model.config(),
        "tokenizer": { "name": tokenizer.name(), "vocab_size": tokenizer.vocab_size() },
    }))
}
