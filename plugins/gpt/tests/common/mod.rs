//! Tiny models and helpers shared by the integration tests.
#![allow(dead_code)]

pub mod training;

use llmlab_gpt::Gpt;
use llmlab_plugin_api::candle::Tensor;
use llmlab_plugin_api::serde_json::{json, Value};
use llmlab_plugin_api::Context;

/// A model small enough for a test to build and run in milliseconds.
pub fn tiny(extra: Value) -> Gpt {
    let mut config = json!({
        "vocab_size": 48, "n_layer": 2, "n_head": 4, "d_model": 32, "ctx": 32, "seed": 3
    });
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        config[k] = v;
    }
    llmlab_gpt::new_gpt(&config, &Context::cpu()).expect("valid tiny config")
}

/// The option sets every behavioural test runs over.
pub fn option_sets() -> Vec<Value> {
    vec![
        json!({}),
        json!({ "pos": "rope" }),
        json!({ "norm": "rms", "pos": "rope", "mlp": "swiglu", "n_kv_head": 2, "bias": false }),
        json!({ "norm": "rms", "mlp": "swiglu", "n_kv_head": 1, "tie_embeddings": false }),
    ]
}

/// The option sets the owned pass covers (`owned_pass::eligibility`): the shared ones plus
/// each remaining option alone.
pub fn owned_pass_sets() -> Vec<Value> {
    let mut sets = option_sets();
    sets.extend([
        json!({ "tie_embeddings": false }),
        json!({ "bias": false }),
        json!({ "bias": false, "qkv_bias": true, "norm": "rms" }),
        json!({ "norm": "rms", "pos": "rope", "qk_norm": true, "n_kv_head": 2 }),
        json!({ "qk_norm": true }),
        json!({ "head_dim": 16, "n_kv_head": 2, "pos": "rope" }),
        json!({ "mlp": "swiglu" }),
        json!({ "pos": "rope", "rope_scaling": { "type": "linear", "factor": 2.0 } }),
    ]);
    sets
}

pub fn ids(rows: &[&[u32]]) -> Tensor {
    let t = rows[0].len();
    let flat: Vec<u32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Tensor::from_vec(
        flat,
        (rows.len(), t),
        &llmlab_plugin_api::candle::Device::Cpu,
    )
    .unwrap()
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}
