//! LoRA (issue 22): adapters start as the identity, only they train (the base never gets a
//! gradient and never changes), merge/unmerge fold them in and out, PEFT-layout adapters round
//! trip bit-exactly, and removing them gives the base model back.

mod common;

use std::collections::HashMap;

use common::{ids, max_abs_diff, option_sets, tiny};
use llmlab_plugin_api::candle::{DType, Tensor};
use llmlab_plugin_api::candle_nn::{AdamW, Optimizer, ParamsAdamW};
use llmlab_plugin_api::serde_json::{json, Value};
use llmlab_plugin_api::{ForwardOptions, Model};

fn batch() -> (Tensor, Tensor) {
    let rows: Vec<Vec<u32>> = (0..3)
        .map(|r| {
            (0..17)
                .map(|i| ((i * 5 + r * 11 + 1) % 48) as u32)
                .collect()
        })
        .collect();
    let x: Vec<&[u32]> = rows.iter().map(|r| &r[..16]).collect();
    let y: Vec<&[u32]> = rows.iter().map(|r| &r[1..]).collect();
    (ids(&x), ids(&y))
}

fn logits(model: &dyn Model, x: &Tensor) -> Tensor {
    model.forward(x, &ForwardOptions::default()).unwrap().logits
}

fn snapshot(named: Vec<(String, Tensor)>) -> HashMap<String, Vec<f32>> {
    named
        .into_iter()
        .map(|(n, t)| (n, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect()
}

/// `steps` AdamW steps of the next-token loss on `parameters()`; the loss before and after.
fn train(model: &dyn Model, steps: usize) -> (f32, f32) {
    let (x, y) = batch();
    let mut opt = AdamW::new(
        model.parameters().into_iter().map(|(_, v)| v).collect(),
        ParamsAdamW {
            lr: 1e-2,
            weight_decay: 0.0,
            ..Default::default()
        },
    )
    .unwrap();
    let mut losses = Vec::new();
    for _ in 0..steps {
        let mut loss_value = 0.0;
        let grads = model
            .forward_backward(
                &x,
                &ForwardOptions {
                    train: true,
                    ..Default::default()
                },
                DType::F32,
                &mut |out| {
                    let l = llmlab_gpt::model::cross_entropy(&out.logits, &y)?;
                    loss_value = l.to_scalar::<f32>()?;
                    Ok(l)
                },
            )
            .unwrap();
        opt.step(&grads).unwrap();
        losses.push(loss_value);
    }
    (losses[0], *losses.last().unwrap())
}

#[test]
fn adapters_start_as_identity_and_only_they_train() {
    for options in option_sets() {
        let model = tiny(options.clone());
        let (x, _) = batch();
        let before = logits(&model, &x);
        let base = snapshot(model.tensors());
        let total = model.num_params();
        let summary = model
            .set_lora(Some(
                &json!({ "rank": 4, "alpha": 8, "targets": ["c_attn", "c_fc"] }),
            ))
            .unwrap();
        // B = 0: the adapted model computes exactly what the base computes.
        assert_eq!(max_abs_diff(&before, &logits(&model, &x)), 0.0, "{options}");
        let params = model.parameters();
        assert!(
            params.iter().all(|(n, _)| n.contains(".lora_")),
            "{options}"
        );
        // Two targets per block, an A and a B each.
        assert_eq!(params.len(), 2 * 2 * 2, "{options}");
        let trainable: usize = params.iter().map(|(_, v)| v.elem_count()).sum();
        assert_eq!(summary["trainable"], json!(trainable));
        assert!(trainable * 10 < total, "{trainable} of {total}");

        // One pass's gradients: the adapters', and no gradient of a base weight matrix or the
        // embedding is ever made (candle also differentiates untracked operands of tracked
        // binary ops, so activation-shaped gradients of frozen paths exist; none has a
        // weight's shape, with 3·13 positions per batch).
        let (full_x, full_y) = batch();
        let (short_x, short_y) = (
            full_x.narrow(1, 0, 13).unwrap(),
            full_y.narrow(1, 0, 13).unwrap(),
        );
        let grads = model
            .forward_backward(
                &short_x,
                &ForwardOptions::default(),
                DType::F32,
                &mut |out| llmlab_gpt::model::cross_entropy(&out.logits, &short_y),
            )
            .unwrap();
        let weight_shapes: Vec<Vec<usize>> = model
            .tensors()
            .iter()
            .filter(|(_, t)| t.rank() == 2)
            .map(|(_, t)| t.dims().to_vec())
            .collect();
        for id in grads.get_ids() {
            let g = grads.get_id(*id).unwrap();
            let is_adapter = params.iter().any(|(_, v)| v.as_tensor().id() == *id);
            assert!(
                is_adapter || !weight_shapes.contains(&g.dims().to_vec()),
                "{options}: a gradient of shape {:?}",
                g.dims()
            );
        }
        for (_, var) in &params {
            assert!(grads.get(var.as_tensor()).is_some(), "{options}");
        }
        let (first, last) = train(&model, 15);
        assert!(last < first - 0.1, "{options}: loss {first} -> {last}");
        assert_eq!(snapshot(model.tensors()), base, "{options}: the base moved");
        assert!(max_abs_diff(&before, &logits(&model, &x)) > 1e-4);

        // Removed, the base model computes as before.
        model.set_lora(None).unwrap();
        assert_eq!(max_abs_diff(&before, &logits(&model, &x)), 0.0, "{options}");
        assert!(model.parameters().iter().all(|(n, _)| !n.contains("lora")));
    }
}

#[test]
fn merge_folds_the_adapters_into_the_weights_and_unmerge_takes_them_out() {
    let model = tiny(json!({}));
    model
        .set_lora(Some(&json!({ "rank": 2, "alpha": 4 })))
        .unwrap();
    train(&model, 5);
    let (x, _) = batch();
    let adapted = logits(&model, &x);
    let base = snapshot(model.tensors());
    model.lora_merge(true).unwrap();
    assert!(max_abs_diff(&adapted, &logits(&model, &x)) < 1e-4);
    assert_ne!(snapshot(model.tensors()), base, "merge wrote the weights");
    let err = model.lora_merge(true).unwrap_err().to_string();
    assert!(err.contains("already merged"), "{err}");
    // With the adapters merged, removing them leaves merged weights silently: refused.
    assert!(model.set_lora(None).is_err());
    model.lora_merge(false).unwrap();
    assert!(max_abs_diff(&adapted, &logits(&model, &x)) < 1e-4);
    let restored = snapshot(model.tensors());
    for (name, values) in &base {
        let diff = values
            .iter()
            .zip(&restored[name])
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-6, "{name}: {diff}");
    }
}

#[test]
fn peft_adapters_round_trip_bit_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(json!({ "norm": "rms", "pos": "rope", "mlp": "swiglu", "bias": false }));
    model
        .set_lora(Some(&json!({ "rank": 4, "alpha": 16, "dropout": 0.1 })))
        .unwrap();
    train(&model, 3);
    model.save_lora(dir.path()).unwrap();
    let (x, _) = batch();
    let adapted = logits(&model, &x);

    let config: Value = llmlab_plugin_api::serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["r"], 4);
    assert_eq!(config["lora_alpha"], 16.0);
    let tensors = llmlab_plugin_api::candle::safetensors::load(
        dir.path().join("adapter_model.safetensors"),
        &llmlab_plugin_api::candle::Device::Cpu,
    )
    .unwrap();
    let a = &tensors["base_model.model.transformer.h.0.attn.c_attn.lora_A.weight"];
    let b = &tensors["base_model.model.transformer.h.0.attn.c_attn.lora_B.weight"];
    assert_eq!(a.dims(), &[4, 32]);
    assert_eq!(b.dims(), &[96, 4]);
    assert!(tensors.contains_key("base_model.model.transformer.h.1.mlp.c_gate.lora_A.weight"));

    // A fresh base (same seed) with the adapters loaded: the same numbers, bit for bit.
    let fresh = tiny(json!({ "norm": "rms", "pos": "rope", "mlp": "swiglu", "bias": false }));
    let summary = fresh.load_lora(dir.path()).unwrap();
    assert_eq!(summary["rank"], 4);
    let saved = snapshot(
        model
            .parameters()
            .into_iter()
            .map(|(n, v)| (n, v.as_tensor().clone()))
            .collect(),
    );
    let loaded = snapshot(
        fresh
            .parameters()
            .into_iter()
            .map(|(n, v)| (n, v.as_tensor().clone()))
            .collect(),
    );
    for (name, values) in &saved {
        let bits = |v: &Vec<f32>| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(values), bits(&loaded[name]), "{name}");
    }
    assert_eq!(max_abs_diff(&adapted, &logits(&fresh, &x)), 0.0);
}

#[test]
fn bad_lora_input_is_an_error_naming_the_cause() {
    let model = tiny(json!({}));
    let err = model
        .set_lora(Some(&json!({ "rank": 4, "targets": ["q_proj"] })))
        .unwrap_err()
        .to_string();
    assert!(err.contains("q_proj") && err.contains("c_attn"), "{err}");
    let err = model
        .set_lora(Some(&json!({ "rank": 0 })))
        .unwrap_err()
        .to_string();
    assert!(err.contains("rank"), "{err}");
    let err = model
        .set_lora(Some(&json!({ "rnak": 4 })))
        .unwrap_err()
        .to_string();
    assert!(err.contains("rnak"), "{err}");
    // The tied head is the embedding.
    let err = model
        .set_lora(Some(&json!({ "targets": ["lm_head"] })))
        .unwrap_err()
        .to_string();
    assert!(err.contains("tie_embeddings"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let err = model.load_lora(dir.path()).unwrap_err().to_string();
    assert!(err.contains("adapter_config.json"), "{err}");
    // Nothing was half-installed by the failures.
    assert!(model.parameters().iter().all(|(n, _)| !n.contains("lora")));
}

#[test]
fn frozen_copy_keeps_the_adapters_and_generation_uses_them() {
    let model = tiny(json!({}));
    model.set_lora(Some(&json!({ "rank": 2 }))).unwrap();
    train(&model, 5);
    let (x, _) = batch();
    let copy = model.frozen_copy().unwrap();
    assert_eq!(
        max_abs_diff(&logits(&model, &x), &logits(copy.as_ref(), &x)),
        0.0
    );
    // Cached decoding goes through the adapters too: last-position logits agree.
    let mut cache = model.new_cache(3).unwrap();
    let cached = model.forward_cached(&x, cache.as_mut()).unwrap().logits;
    assert!(max_abs_diff(&cached, &logits(&model, &x)) < 1e-4);
}
