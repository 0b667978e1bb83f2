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

/// The trainable parameters' values by name (adapters and saved-module copies).
fn trainable_snapshot(model: &dyn Model) -> HashMap<String, Vec<f32>> {
    snapshot(
        model
            .parameters()
            .into_iter()
            .map(|(n, v)| (n, v.as_tensor().clone()))
            .collect(),
    )
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
    let saved = trainable_snapshot(&model);
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

/// The modules (tensor names less their last part) of the model's own weights.
fn modules(model: &dyn Model) -> Vec<String> {
    let mut names: Vec<String> = model
        .parameters()
        .iter()
        .map(|(n, _)| n.rsplit_once('.').unwrap().0.to_string())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// One pass's gradients of `parameters()`, by name.
fn gradients(model: &dyn Model) -> HashMap<String, Vec<f32>> {
    let (x, y) = batch();
    let grads = model
        .forward_backward(&x, &ForwardOptions::default(), DType::F32, &mut |out| {
            llmlab_gpt::model::cross_entropy(&out.logits, &y)
        })
        .unwrap();
    model
        .parameters()
        .into_iter()
        .map(|(n, v)| {
            let g = grads
                .get(v.as_tensor())
                .unwrap_or_else(|| panic!("no gradient for {n}"));
            (n, g.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        })
        .collect()
}

#[test]
fn saving_every_module_without_targets_is_full_fine_tuning() {
    // The twin path with every module saved must compute the plain model's gradients: the
    // embedding (and the head tied to it), norms and linears all train through their copies.
    for options in option_sets() {
        let model = tiny(options.clone());
        let plain = gradients(&model);
        let all = modules(&model);
        let summary = model
            .set_lora(Some(
                &json!({ "targets": [], "modules_to_save": all.clone() }),
            ))
            .unwrap();
        // Training every module is training all of the model.
        assert_eq!(summary["trainable"], summary["total"], "{options}");
        assert_eq!(summary["trainable_fraction"], json!(1.0), "{options}");
        let adapted = gradients(&model);
        assert_eq!(adapted.len(), plain.len(), "{options}");
        for (name, g) in &plain {
            let (module, leaf) = name.rsplit_once('.').unwrap();
            let copy = &adapted[&format!("{module}.modules_to_save.{leaf}")];
            let diff = g
                .iter()
                .zip(copy)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(diff < 1e-6, "{options}: {name}: {diff}");
        }
    }
}

#[test]
fn modules_to_save_train_beside_the_adapters_merge_and_round_trip_in_peft_layout() {
    let options = json!({ "norm": "rms", "pos": "rope", "mlp": "swiglu", "bias": false });
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(options.clone());
    let (x, _) = batch();
    let before = logits(&model, &x);
    let base = snapshot(model.tensors());
    let config = json!({ "rank": 2, "alpha": 4, "targets": ["c_attn"],
                         "modules_to_save": ["ln_1", "ln_2", "ln_f"] });
    let summary = model.set_lora(Some(&config)).unwrap();
    assert_eq!(
        summary["modules_to_save"],
        json!([
            "transformer.h.0.ln_1.weight",
            "transformer.h.0.ln_2.weight",
            "transformer.h.1.ln_1.weight",
            "transformer.h.1.ln_2.weight",
            "transformer.ln_f.weight"
        ])
    );
    // 2 layers × (A 2×32 + B 96×2) + 5 norm gains of 32.
    assert_eq!(summary["trainable"], json!(2 * (2 * 32 + 96 * 2) + 5 * 32));
    assert_eq!(max_abs_diff(&before, &logits(&model, &x)), 0.0);
    let (first, last) = train(&model, 30);
    assert!(last < first - 0.1, "loss {first} -> {last}");
    // The base keeps its norms; the copies moved.
    assert_eq!(snapshot(model.tensors()), base, "the base moved");
    let trained = trainable_snapshot(&model);
    assert_ne!(
        trained["transformer.ln_f.modules_to_save.weight"],
        base["transformer.ln_f.weight"]
    );
    let adapted = logits(&model, &x);

    // PEFT's layout: the saved module's tensor under its own name, the config lists it.
    model.save_lora(dir.path()).unwrap();
    let peft: Value = llmlab_plugin_api::serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(peft["modules_to_save"], json!(["ln_1", "ln_2", "ln_f"]));
    let tensors = llmlab_plugin_api::candle::safetensors::load(
        dir.path().join("adapter_model.safetensors"),
        &llmlab_plugin_api::candle::Device::Cpu,
    )
    .unwrap();
    let mut keys: Vec<&String> = tensors.keys().collect();
    keys.sort();
    assert_eq!(keys.len(), 2 * 2 + 5, "{keys:?}");
    let ln_f = tensors["base_model.model.transformer.ln_f.weight"]
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(ln_f, trained["transformer.ln_f.modules_to_save.weight"]);
    let fresh = tiny(options);
    fresh.load_lora(dir.path()).unwrap();
    assert_eq!(max_abs_diff(&adapted, &logits(&fresh, &x)), 0.0);

    // Merged: the trained norms are written into the base; unmerged: the originals, exactly.
    model.lora_merge(true).unwrap();
    assert!(max_abs_diff(&adapted, &logits(&model, &x)) < 1e-4);
    let merged = snapshot(model.tensors());
    assert_eq!(
        merged["transformer.ln_f.weight"],
        trained["transformer.ln_f.modules_to_save.weight"]
    );
    assert!(model.set_lora(None).is_err(), "removing merged adapters");
    let copy = model.frozen_copy().unwrap();
    model.lora_merge(false).unwrap();
    for name in ["transformer.ln_f.weight", "transformer.h.1.ln_2.weight"] {
        assert_eq!(snapshot(model.tensors())[name], base[name], "{name}");
    }
    assert!(max_abs_diff(&adapted, &logits(&model, &x)) < 1e-4);
    // A copy made while merged unmerges to the same base.
    copy.lora_merge(false).unwrap();
    copy.set_lora(None).unwrap();
    let copy_base = snapshot(
        copy.parameters()
            .into_iter()
            .map(|(n, v)| (n, v.as_tensor().clone()))
            .collect(),
    );
    assert_eq!(
        copy_base["transformer.ln_f.weight"],
        base["transformer.ln_f.weight"]
    );
    // Removed: the base again (to the rounding of W + ΔW − ΔW in the adapted layers).
    model.set_lora(None).unwrap();
    assert!(max_abs_diff(&before, &logits(&model, &x)) < 1e-5);
}

#[test]
fn bad_modules_to_save_are_errors_naming_the_cause() {
    let model = tiny(json!({}));
    let err = model
        .set_lora(Some(&json!({ "modules_to_save": ["layernorm"] })))
        .unwrap_err()
        .to_string();
    assert!(err.contains("layernorm") && err.contains("ln_f"), "{err}");
    let err = model
        .set_lora(Some(
            &json!({ "targets": ["c_fc"], "modules_to_save": ["c_fc"] }),
        ))
        .unwrap_err()
        .to_string();
    assert!(err.contains("c_fc") && err.contains("both"), "{err}");
    let err = model
        .set_lora(Some(&json!({ "targets": [] })))
        .unwrap_err()
        .to_string();
    assert!(err.contains("nothing would train"), "{err}");
    assert!(model.parameters().iter().all(|(n, _)| !n.contains("lora")));
}

#[test]
fn peft_bias_modes_train_biases_and_save_them_under_peft_names() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(json!({}));
    let (x, _) = batch();
    let base = snapshot(model.tensors());
    let summary = model
        .set_lora(Some(
            &json!({ "rank": 2, "targets": ["c_attn"], "bias": "lora_only" }),
        ))
        .unwrap();
    assert_eq!(
        summary["biases"],
        json!([
            "transformer.h.0.attn.c_attn.bias",
            "transformer.h.1.attn.c_attn.bias"
        ])
    );
    assert_eq!(summary["trainable"], json!(2 * (2 * 32 + 96 * 2) + 2 * 96));
    train(&model, 10);
    assert_eq!(snapshot(model.tensors()), base, "the base moved");
    let trained = trainable_snapshot(&model);
    let bias = &trained["transformer.h.1.attn.c_attn.base_layer.bias"];
    assert_ne!(
        bias, &base["transformer.h.1.attn.c_attn.bias"],
        "bias trained"
    );
    let adapted = logits(&model, &x);
    model.save_lora(dir.path()).unwrap();
    let peft: Value = llmlab_plugin_api::serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(peft["bias"], "lora_only");
    let tensors = llmlab_plugin_api::candle::safetensors::load(
        dir.path().join("adapter_model.safetensors"),
        &llmlab_plugin_api::candle::Device::Cpu,
    )
    .unwrap();
    // PEFT's LoRA layer holds the original layer as `base_layer`.
    let saved = tensors["base_model.model.transformer.h.1.attn.c_attn.base_layer.bias"]
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(&saved, bias);
    assert_eq!(tensors.len(), 2 * 2 + 2);
    let fresh = tiny(json!({}));
    fresh.load_lora(dir.path()).unwrap();
    assert_eq!(max_abs_diff(&adapted, &logits(&fresh, &x)), 0.0);

    // "all": every bias, the untargeted layers' and the norms' under their own names.
    let model = tiny(json!({}));
    let summary = model
        .set_lora(Some(
            &json!({ "rank": 2, "targets": ["c_attn"], "bias": "all" }),
        ))
        .unwrap();
    let biases: Vec<String> = model
        .tensors()
        .into_iter()
        .filter(|(n, _)| n.ends_with(".bias"))
        .map(|(n, _)| n)
        .collect();
    assert_eq!(summary["biases"].as_array().unwrap().len(), biases.len());
    assert!(biases.contains(&"transformer.ln_f.bias".to_string()));
    train(&model, 3);
    model.save_lora(dir.path()).unwrap();
    let tensors = llmlab_plugin_api::candle::safetensors::load(
        dir.path().join("adapter_model.safetensors"),
        &llmlab_plugin_api::candle::Device::Cpu,
    )
    .unwrap();
    for key in [
        "base_model.model.transformer.h.0.attn.c_attn.base_layer.bias",
        "base_model.model.transformer.h.0.attn.c_proj.bias",
        "base_model.model.transformer.h.0.ln_1.bias",
        "base_model.model.transformer.ln_f.bias",
    ] {
        assert!(tensors.contains_key(key), "{key}");
    }
    let err = tiny(json!({}))
        .set_lora(Some(&json!({ "bias": "some" })))
        .unwrap_err()
        .to_string();
    assert!(err.contains("bias") && err.contains("lora_only"), "{err}");
}
