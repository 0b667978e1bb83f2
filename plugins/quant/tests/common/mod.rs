//! Test models and comparisons shared by the quantization tests.
#![allow(dead_code, unused_imports)]

pub use llmlab_gpt::Gpt;
pub use llmlab_plugin_api::candle::{Device, Tensor};
pub use llmlab_plugin_api::serde_json::{json, Value};
pub use llmlab_plugin_api::{Context, ForwardOptions, GenerateOptions, Model};
pub use llmlab_quant::scheme::{QuantConfig, Scheme};
pub use llmlab_quant::{kquants, legacy};

pub const ALL_SCHEMES: [&Scheme; 5] = [
    &legacy::Q8_0,
    &legacy::Q4_0,
    &legacy::Q4_1,
    &kquants::Q4K,
    &kquants::Q6K,
];

/// A tiny model; `extra` overrides the config. Weights are scaled up from GPT-2's init (std 0.02
/// gives near-uniform logits) so that quantization error is measured against a real signal.
pub fn tiny(extra: Value) -> Gpt {
    let mut config = json!({
        "vocab_size": 64, "n_layer": 2, "n_head": 4, "d_model": 64, "ctx": 32, "seed": 5
    });
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        config[k] = v;
    }
    let model = llmlab_gpt::new_gpt(&config, &Context::cpu()).expect("valid tiny config");
    for (name, var) in model.parameters() {
        if name.ends_with("weight") && var.rank() == 2 {
            var.set(&(var.as_tensor() * 3.0).unwrap()).unwrap();
        }
    }
    model
}

/// The option sets of the gpt tests: learned/rope positions, gelu/swiglu (ragged hidden width),
/// GQA, biases, tied and untied heads.
pub fn option_sets() -> Vec<Value> {
    vec![
        json!({}),
        json!({ "norm": "rms", "pos": "rope", "mlp": "swiglu", "n_kv_head": 2, "bias": false }),
        json!({ "norm": "rms", "mlp": "swiglu", "n_kv_head": 1, "tie_embeddings": false }),
    ]
}

pub fn ids(len: usize, batch: usize) -> Tensor {
    let flat: Vec<u32> = (0..len * batch)
        .map(|i| ((i * 7 + 3) % 64) as u32)
        .collect();
    Tensor::from_vec(flat, (batch, len), &Device::Cpu).unwrap()
}

pub fn logits(model: &dyn Model, ids: &Tensor) -> Tensor {
    model
        .forward(ids, &ForwardOptions::default())
        .unwrap()
        .logits
}

pub fn max_abs(t: &Tensor) -> f32 {
    t.abs().unwrap().max_all().unwrap().to_scalar().unwrap()
}

/// `max |a - b| / max |b|`.
pub fn relative_error(a: &Tensor, b: &Tensor) -> f32 {
    max_abs(&(a - b).unwrap()) / max_abs(b)
}

pub fn quantize(model: &Gpt, scheme: &Scheme, skip: &[&str]) -> Box<dyn Model> {
    let skip: Vec<String> = skip.iter().map(|s| s.to_string()).collect();
    model
        .quantized(&scheme.quantizer(QuantConfig::default()), &skip)
        .unwrap()
}
