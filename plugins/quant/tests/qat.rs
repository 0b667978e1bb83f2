//! Quantization-aware training on the `gpt` plugin's model: fake-quantized forward passes see
//! what the quantized model computes, gradients reach every weight straight through, the switch
//! and `skip` behave as `quantize`'s, and training under fake quantization improves the
//! quantized model.

mod common;

use std::sync::Arc;

use common::*;
use llmlab_plugin_api::candle_nn::{AdamW, Optimizer, ParamsAdamW};
use llmlab_plugin_api::Quantizer;

fn quantizer(scheme: &Scheme) -> Arc<dyn Quantizer> {
    Arc::new(scheme.quantizer(QuantConfig::default()))
}

fn skip(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// Mean next-token cross-entropy of `model` on `ids` (inputs all but the last, targets shifted).
fn loss(model: &dyn Model, ids: &Tensor) -> Tensor {
    let len = ids.dim(1).unwrap();
    let inputs = ids.narrow(1, 0, len - 1).unwrap();
    let targets = ids.narrow(1, 1, len - 1).unwrap();
    let logits = model
        .forward(&inputs, &ForwardOptions::default())
        .unwrap()
        .logits;
    llmlab_gpt::model::cross_entropy(&logits, &targets).unwrap()
}

fn scalar(t: &Tensor) -> f32 {
    t.to_scalar::<f32>().unwrap()
}

#[test]
fn fake_quantized_forward_matches_the_quantized_model() {
    // The quantized model also rounds activations to 8 bits inside candle's kernels (ggml's
    // q4_0 × q8_0 dot product), which fake quantization does not model, so the two cannot be
    // identical; but the fake-quantized logits must be far closer to the quantized model's than
    // the f32 logits are — that is what makes QAT train the right thing.
    for options in option_sets() {
        let model = tiny(options.clone());
        let x = ids(16, 2);
        let dense = logits(&model, &x);
        let quantized = logits(quantize(&model, &legacy::Q4_0, &[]).as_ref(), &x);
        model
            .set_fake_quant(Some(quantizer(&legacy::Q4_0)), &[])
            .unwrap();
        assert_eq!(model.fake_quant().as_deref(), Some("q4_0"));
        let fake = logits(&model, &x);
        let fake_err = relative_error(&fake, &quantized);
        let dense_err = relative_error(&dense, &quantized);
        assert!(
            fake_err < dense_err / 3.0,
            "{options}: fake-quant is {fake_err} from the q4_0 model, f32 is {dense_err}"
        );
        model.set_fake_quant(None, &[]).unwrap();
        assert_eq!(model.fake_quant(), None);
        let restored = logits(&model, &x);
        assert_eq!(
            max_abs(&(&restored - &dense).unwrap()),
            0.0,
            "{options}: turning fake quantization off restores the f32 forward exactly"
        );
    }
}

#[test]
fn skip_keeps_matching_layers_dense_as_quantize_does() {
    let model = tiny(json!({ "norm": "rms", "mlp": "swiglu", "tie_embeddings": false }));
    let x = ids(12, 1);
    let dense = logits(&model, &x);
    // Skipping every layer leaves nothing fake-quantized.
    model
        .set_fake_quant(Some(quantizer(&legacy::Q4_0)), &skip(&["weight"]))
        .unwrap();
    assert_eq!(max_abs(&(&logits(&model, &x) - &dense).unwrap()), 0.0);
    // Skipping the head: the same layers as quantize(.., skip: ["lm_head"]).
    model
        .set_fake_quant(Some(quantizer(&legacy::Q8_0)), &skip(&["lm_head"]))
        .unwrap();
    let fake = logits(&model, &x);
    let quantized = logits(quantize(&model, &legacy::Q8_0, &["lm_head"]).as_ref(), &x);
    let all_quantized = logits(quantize(&model, &legacy::Q8_0, &[]).as_ref(), &x);
    assert!(
        relative_error(&fake, &quantized) < relative_error(&fake, &all_quantized),
        "fake quantization with skip should match the model quantized with the same skip"
    );
}

#[test]
fn gradients_pass_straight_through_to_every_linear_weight() {
    let model = tiny(json!({ "norm": "rms", "pos": "rope", "mlp": "swiglu" }));
    model
        .set_fake_quant(Some(quantizer(&legacy::Q4_0)), &[])
        .unwrap();
    let grads = loss(&model, &ids(16, 2)).backward().unwrap();
    for (name, var) in model.parameters() {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        let norm = scalar(&g.sqr().unwrap().sum_all().unwrap());
        assert!(
            norm.is_finite() && norm > 0.0,
            "{name}: gradient norm {norm}"
        );
    }
}

#[test]
fn fake_quant_is_refused_on_an_already_quantized_model() {
    let model = tiny(json!({}));
    let q = quantize(&model, &legacy::Q4_0, &[]);
    let err = q
        .set_fake_quant(Some(quantizer(&legacy::Q4_0)), &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("already q4_0-quantized"), "{err}");
}

#[test]
fn training_under_fake_quantization_lowers_the_quantized_models_loss() {
    // Fit one fixed batch with q4_0 fake quantization on: the loss of the *quantized* model on
    // that batch must fall, because the optimiser sees exactly its rounded weights.
    let model = tiny(json!({ "norm": "rms", "mlp": "swiglu" }));
    let batch = ids(24, 4);
    let q4_loss = |m: &Gpt| scalar(&loss(quantize(m, &legacy::Q4_0, &[]).as_ref(), &batch));
    let before = q4_loss(&model);
    model
        .set_fake_quant(Some(quantizer(&legacy::Q4_0)), &[])
        .unwrap();
    let vars = model.parameters().into_iter().map(|(_, v)| v).collect();
    let settings = ParamsAdamW {
        lr: 3e-3,
        weight_decay: 0.0,
        ..ParamsAdamW::default()
    };
    let mut opt = AdamW::new(vars, settings).unwrap();
    for _ in 0..30 {
        opt.backward_step(&loss(&model, &batch)).unwrap();
    }
    model.set_fake_quant(None, &[]).unwrap();
    let after = q4_loss(&model);
    assert!(
        after < before * 0.7,
        "q4_0 model loss {before} → {after} after 30 QAT steps"
    );
}
