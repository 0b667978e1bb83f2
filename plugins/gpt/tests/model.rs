//! The model as a training component: config checks, init, parameters and their names,
//! gradients through every option, save/load and frozen copies.

mod common;

use common::{ids, max_abs_diff, option_sets, tiny};
use llmlab_gpt::model::cross_entropy;
use llmlab_plugin_api::candle::{DType, Tensor};
use llmlab_plugin_api::serde_json::{json, Value};
use llmlab_plugin_api::{Context, ForwardOptions, Model};

#[test]
fn every_parameter_gets_a_finite_nonzero_gradient_for_every_option_set() {
    let mut sets = option_sets();
    sets.push(json!({ "dropout": 0.1 }));
    for extra in sets {
        let model = tiny(extra.clone());
        let x = ids(&[&[1, 5, 9, 2, 7, 3, 30, 11], &[4, 4, 8, 15, 16, 23, 42, 0]]);
        let y = ids(&[&[5, 9, 2, 7, 3, 30, 11, 1], &[4, 8, 15, 16, 23, 42, 0, 4]]);
        let options = ForwardOptions {
            train: true,
            hidden_states: false,
            no_grad: false,
        };
        let out = model.forward(&x, &options).unwrap();
        let loss = cross_entropy(&out.logits, &y).unwrap();
        let grads = loss.backward().unwrap();
        for (name, var) in model.parameters() {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{extra}: no gradient for {name}"));
            let values: Vec<f32> = g.flatten_all().unwrap().to_vec1().unwrap();
            assert!(
                values.iter().all(|v| v.is_finite()),
                "{extra}: {name} has a non-finite gradient"
            );
            assert!(
                values.iter().any(|v| *v != 0.0),
                "{extra}: {name} has an all-zero gradient"
            );
        }
    }
}

/// `train: false` means no dropout, not no gradient: GRPO's and PPO's policy terms
/// backpropagate through plain `forward` calls, so every parameter must still get a gradient
/// (the owned inference pass, which returns detached logits, is opt-in for this reason).
#[test]
fn forward_without_train_stays_differentiable() {
    let model = tiny(json!({}));
    let x = ids(&[&[1, 5, 9, 2, 7, 3, 30, 11]]);
    let y = ids(&[&[5, 9, 2, 7, 3, 30, 11, 1]]);
    let out = model.forward(&x, &ForwardOptions::default()).unwrap();
    let grads = cross_entropy(&out.logits, &y).unwrap().backward().unwrap();
    for (name, var) in model.parameters() {
        assert!(
            grads.get(var.as_tensor()).is_some(),
            "no gradient for {name} through forward(train: false)"
        );
    }
}

#[test]
fn parameters_have_gpt2_names_and_counts() {
    let model = tiny(json!({}));
    let names: Vec<String> = model.parameters().into_iter().map(|(n, _)| n).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "parameters() is sorted by name");
    for expected in [
        "transformer.wte.weight",
        "transformer.wpe.weight",
        "transformer.h.0.ln_1.weight",
        "transformer.h.0.ln_1.bias",
        "transformer.h.0.attn.c_attn.weight",
        "transformer.h.0.attn.c_attn.bias",
        "transformer.h.1.attn.c_proj.weight",
        "transformer.h.1.mlp.c_fc.weight",
        "transformer.h.1.mlp.c_proj.bias",
        "transformer.ln_f.weight",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "missing {expected} in {names:?}"
        );
    }
    assert!(
        !names.iter().any(|n| n == "lm_head.weight"),
        "tied head is not a parameter"
    );
    // GPT-2 count: wte + wpe + per layer (2 LN + attn + mlp) + ln_f.
    let (v, d, c, l) = (48, 32, 32, 2);
    let per_layer =
        2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d);
    assert_eq!(model.num_params(), v * d + c * d + l * per_layer + 2 * d);

    let gqa =
        tiny(json!({ "n_kv_head": 1, "tie_embeddings": false, "pos": "rope", "bias": false }));
    let shapes: Vec<(String, Vec<usize>)> = gqa
        .parameters()
        .into_iter()
        .map(|(n, v)| (n, v.dims().to_vec()))
        .collect();
    let qkv = shapes
        .iter()
        .find(|(n, _)| n == "transformer.h.0.attn.c_attn.weight")
        .unwrap();
    assert_eq!(qkv.1, vec![32 + 2 * 8, 32], "one kv head of size 8");
    assert!(shapes.iter().any(|(n, _)| n == "lm_head.weight"));
    assert!(!shapes
        .iter()
        .any(|(n, _)| n.contains("wpe") || n.ends_with(".bias")));
}

fn std_of(model: &dyn Model, name: &str) -> f64 {
    let (_, var) = model
        .parameters()
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap();
    let v: Vec<f32> = var.flatten_all().unwrap().to_vec1().unwrap();
    let mean = v.iter().map(|x| *x as f64).sum::<f64>() / v.len() as f64;
    (v.iter().map(|x| (*x as f64 - mean).powi(2)).sum::<f64>() / v.len() as f64).sqrt()
}

#[test]
fn init_is_gpt2_style_and_seeded() {
    let config = json!({ "vocab_size": 512, "n_layer": 8, "n_head": 4, "d_model": 64, "ctx": 64, "seed": 1 });
    let model = llmlab_gpt::new_gpt(&config, &Context::cpu()).unwrap();
    let wte = std_of(&model, "transformer.wte.weight");
    assert!((wte - 0.02).abs() < 0.001, "wte std {wte}");
    let proj = std_of(&model, "transformer.h.3.attn.c_proj.weight");
    let expected = 0.02 / (2.0f64 * 8.0).sqrt();
    assert!(
        (proj - expected).abs() < 0.1 * expected,
        "c_proj std {proj}, want {expected}"
    );
    assert_eq!(std_of(&model, "transformer.h.0.ln_1.bias"), 0.0);

    let again = llmlab_gpt::new_gpt(&config, &Context::cpu()).unwrap();
    let wte = |m: &dyn Model| {
        let (_, var) = m
            .parameters()
            .into_iter()
            .find(|(n, _)| n == "transformer.wte.weight")
            .unwrap();
        var.as_tensor().clone()
    };
    let (a, b) = (wte(&model), wte(&again));
    assert_eq!(max_abs_diff(&a, &b), 0.0, "same seed, same weights");
    let other = llmlab_gpt::new_gpt(&json!({ "vocab_size": 512, "n_layer": 8, "n_head": 4, "d_model": 64, "ctx": 64, "seed": 2 }), &Context::cpu()).unwrap();
    let c = wte(&other);
    assert!(max_abs_diff(&a, &c) > 0.0, "another seed, other weights");

    // Without a seed key the session seed is used and recorded.
    let mut ctx = Context::cpu();
    ctx.seed = 77;
    let m = llmlab_gpt::new_gpt(
        &json!({ "n_layer": 1, "d_model": 16, "vocab_size": 16, "ctx": 8 }),
        &ctx,
    )
    .unwrap();
    assert_eq!(m.config()["seed"], json!(77));
}

#[test]
fn bad_configs_are_refused_with_the_keys_named() {
    let err = |v: Value| {
        llmlab_gpt::new_gpt(&v, &Context::cpu())
            .err()
            .expect("refused")
            .to_string()
    };
    let e = err(json!({ "d_model": 30, "n_head": 4 }));
    assert!(
        e.contains("d_model (30)") && e.contains("n_head (4)"),
        "{e}"
    );
    let e = err(json!({ "n_kv_head": 3 }));
    assert!(e.contains("n_kv_head (3)"), "{e}");
    let e = err(json!({ "mlp": "relu" }));
    assert!(e.contains("relu") && e.contains("swiglu"), "{e}");
    let e = err(json!({ "n_layers": 3 }));
    assert!(e.contains("n_layers") && e.contains("n_layer"), "{e}");
}

#[test]
fn forward_shapes_hidden_states_and_ctx_limit() {
    let model = tiny(json!({}));
    let x = ids(&[&[1, 2, 3], &[4, 5, 6]]);
    let out = model
        .forward(
            &x,
            &ForwardOptions {
                train: false,
                hidden_states: true,
                no_grad: false,
            },
        )
        .unwrap();
    assert_eq!(out.logits.dims(), &[2, 3, 48]);
    assert_eq!(out.hidden.unwrap().dims(), &[2, 3, 32]);
    assert!(out.aux_loss.is_none());
    let long: Vec<u32> = (0..33).map(|i| i % 48).collect();
    let e = model
        .forward(&ids(&[&long]), &ForwardOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("33 tokens") && e.contains("ctx = 32"), "{e}");
}

#[test]
fn causal_logits_ignore_the_future() {
    for extra in option_sets() {
        let model = tiny(extra.clone());
        let a = model
            .forward(&ids(&[&[1, 2, 3, 4]]), &ForwardOptions::default())
            .unwrap()
            .logits;
        let b = model
            .forward(&ids(&[&[1, 2, 3, 40]]), &ForwardOptions::default())
            .unwrap()
            .logits;
        let head = |t: &Tensor| t.narrow(1, 0, 3).unwrap();
        assert!(max_abs_diff(&head(&a), &head(&b)) < 1e-6, "{extra}");
        assert!(
            max_abs_diff(&a, &b) > 1e-4,
            "{extra}: the last position sees its token"
        );
    }
}

#[test]
fn save_and_load_round_trip_every_option_set() {
    let dir = tempfile::tempdir().unwrap();
    for (i, extra) in option_sets().into_iter().enumerate() {
        let model = tiny(extra.clone());
        let path = dir.path().join(format!("m{i}"));
        model.save(&path).unwrap();
        let config: Value = llmlab_plugin_api::serde_json::from_str(
            &std::fs::read_to_string(path.join("config.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(config["llmlab_model"], json!("gpt"));
        let loaded = llmlab_gpt::save_load::load(&path, &Context::cpu()).unwrap();
        assert_eq!(loaded.config(), model.config(), "{extra}");
        let x = ids(&[&[3, 1, 4, 1, 5, 9, 2, 6]]);
        let a = model
            .forward(&x, &ForwardOptions::default())
            .unwrap()
            .logits;
        let b = loaded
            .forward(&x, &ForwardOptions::default())
            .unwrap()
            .logits;
        assert_eq!(max_abs_diff(&a, &b), 0.0, "{extra}");
        // Loading by the weights file's path works too.
        llmlab_gpt::save_load::load(&path.join("model.safetensors"), &Context::cpu()).unwrap();
    }
}

#[test]
fn load_errors_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let e = llmlab_gpt::save_load::load(dir.path(), &Context::cpu())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("config.json"), "{e}");
    std::fs::write(dir.path().join("config.json"), r#"{"model_type": "llama"}"#).unwrap();
    let e = llmlab_gpt::save_load::load(dir.path(), &Context::cpu())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("not a gpt model"), "{e}");
    // Weights that do not fit the config.
    tiny(json!({})).save(dir.path()).unwrap();
    let mut config: Value = llmlab_plugin_api::serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("config.json")).unwrap(),
    )
    .unwrap();
    config["d_model"] = json!(64);
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let e = llmlab_gpt::save_load::load(dir.path(), &Context::cpu())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("transformer.") && e.contains("shape"), "{e}");
}

#[test]
fn frozen_copy_is_independent() {
    let model = tiny(json!({}));
    let copy = model.frozen_copy().unwrap();
    let x = ids(&[&[1, 2, 3]]);
    let before = copy.forward(&x, &ForwardOptions::default()).unwrap().logits;
    for (_, var) in model.parameters() {
        var.set(&var.zeros_like().unwrap()).unwrap();
    }
    let after = copy.forward(&x, &ForwardOptions::default()).unwrap().logits;
    assert_eq!(max_abs_diff(&before, &after), 0.0);
    let zeroed = model
        .forward(&x, &ForwardOptions::default())
        .unwrap()
        .logits;
    assert!(max_abs_diff(&zeroed, &before) > 0.0);
    assert_eq!(zeroed.dtype(), DType::F32);
}
