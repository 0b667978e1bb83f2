//! Structured and expert pruning (issue 22): whole heads, feed-forward channels and MoE experts
//! leave the model with their tensors; units that contribute nothing go first and leave the
//! outputs as they were; the smaller model saves and loads; bad options are named errors.

mod common;

use common::{ids, max_abs_diff, option_sets, tiny};
use llmlab_gpt::Gpt;
use llmlab_plugin_api::candle::{DType, Tensor};
use llmlab_plugin_api::serde_json::{json, Value};
use llmlab_plugin_api::{Context, ForwardOptions, Model};

fn logits(model: &dyn Model, x: &Tensor) -> Tensor {
    model.forward(x, &ForwardOptions::default()).unwrap().logits
}

fn sample() -> Tensor {
    ids(&[
        &[3, 1, 4, 1, 5, 9, 2, 6, 5, 3],
        &[2, 7, 1, 8, 2, 8, 1, 8, 2, 8],
    ])
}

/// Sets rows (`dim` 0) or columns (`dim` 1) `range` of parameter `name` to zero.
fn zero(model: &Gpt, name: &str, dim: usize, range: std::ops::Range<usize>) {
    let Some(var) = model.parameters_by_name().get(name).cloned() else {
        return;
    };
    let t = var.as_tensor().to_dtype(DType::F32).unwrap();
    let mut keep = vec![1f32; t.dim(dim).unwrap()];
    keep[range].iter_mut().for_each(|k| *k = 0.0);
    let n = keep.len();
    let keep = Tensor::from_vec(keep, n, t.device()).unwrap();
    let keep = match (t.rank(), dim) {
        (1, _) => keep,
        (_, 0) => keep.reshape((n, 1)).unwrap(),
        _ => keep.reshape((1, n)).unwrap(),
    };
    var.set(&t.broadcast_mul(&keep).unwrap()).unwrap();
}

/// Zeroes the second half of the key/value groups (their query, key and value rows, their
/// `c_proj` columns) and of the feed-forward channels in every block: units that contribute
/// nothing, as many as pruning at sparsity 0.5 removes. Returns the silenced groups.
fn silence_units(model: &Gpt) -> Vec<usize> {
    let c = model.gpt_config().clone();
    let (h, kv, hd) = (c.n_head, c.kv_heads(), c.head_dim());
    let per = h / kv;
    let hidden = c.ffn_hidden();
    let groups: Vec<usize> = (kv - kv / 2..kv).collect();
    for i in 0..c.n_layer {
        for &g in &groups {
            let p = |s: &str| format!("transformer.h.{i}.{s}");
            let q = g * per * hd..(g + 1) * per * hd;
            for name in ["attn.c_attn.weight", "attn.c_attn.bias"] {
                zero(model, &p(name), 0, q.clone());
                zero(model, &p(name), 0, h * hd + g * hd..h * hd + (g + 1) * hd);
                zero(
                    model,
                    &p(name),
                    0,
                    (h + kv) * hd + g * hd..(h + kv) * hd + (g + 1) * hd,
                );
            }
            zero(model, &p("attn.c_proj.weight"), 1, q);
        }
        let p = |s: &str| format!("transformer.h.{i}.{s}");
        for name in ["mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_gate.weight"] {
            zero(model, &p(name), 0, hidden / 2..hidden);
        }
        zero(model, &p("mlp.c_proj.weight"), 1, hidden / 2..hidden);
    }
    groups
}

#[test]
fn silent_heads_and_channels_go_first_and_the_outputs_stay() {
    for extra in option_sets() {
        let model = tiny(extra.clone());
        let kv = model.gpt_config().kv_heads();
        // With one key/value group (n_kv_head 1) no head can go; the channels still can.
        let silent = silence_units(&model);
        let x = sample();
        let before = logits(&model, &x);
        let (small, report) = llmlab_gpt::prune::pruned(
            &model,
            &json!({ "pattern": "structured", "method": "magnitude", "sparsity": 0.5 }),
            &[],
        )
        .unwrap();
        let (c, s) = (model.gpt_config(), small.gpt_config());
        assert_eq!(s.ffn_hidden(), c.ffn_hidden() / 2, "{extra}: {report}");
        assert_eq!(s.kv_heads(), kv - kv / 2, "{extra}");
        assert_eq!(s.head_dim(), c.head_dim(), "{extra}");
        assert_eq!(s.n_head, s.kv_heads() * (c.n_head / kv), "{extra}");
        for layer in report["layers"].as_array().unwrap() {
            assert_eq!(
                layer["heads_removed"],
                json!(silent),
                "{extra}: the silent groups go: {layer}"
            );
        }
        let shape = |name: &str| small.parameters_by_name()[name].as_tensor().dims().to_vec();
        let d = c.d_model;
        assert_eq!(
            shape("transformer.h.1.attn.c_attn.weight"),
            [(s.n_head + 2 * s.kv_heads()) * s.head_dim(), d]
        );
        assert_eq!(
            shape("transformer.h.1.attn.c_proj.weight"),
            [d, s.n_head * s.head_dim()]
        );
        assert_eq!(
            shape("transformer.h.0.mlp.c_fc.weight"),
            [s.ffn_hidden(), d]
        );
        assert_eq!(
            shape("transformer.h.0.mlp.c_proj.weight"),
            [d, s.ffn_hidden()]
        );
        assert!(small.num_params() < model.num_params(), "{extra}");
        assert_eq!(
            report["params"]["after"],
            json!(small.num_params()),
            "{extra}"
        );
        let after = logits(&small, &x);
        assert!(
            max_abs_diff(&before, &after) < 1e-4,
            "{extra}: removing units that contribute nothing changed the logits by {}",
            max_abs_diff(&before, &after)
        );
        // The model it came from is left as it was.
        assert_eq!(max_abs_diff(&before, &logits(&model, &x)), 0.0);
    }
}

#[test]
fn the_smaller_model_saves_loads_trains_and_generates() {
    let model = tiny(json!({ "pos": "rope", "n_head": 4 }));
    let (small, _) = llmlab_gpt::prune::pruned(
        &model,
        &json!({ "pattern": "structured", "sparsity": 0.25 }),
        &[],
    )
    .unwrap();
    assert_eq!(small.gpt_config().n_head, 3);
    let dir = tempfile::tempdir().unwrap();
    small.save(dir.path()).unwrap();
    let loaded = llmlab_gpt::save_load::load(dir.path(), &Context::cpu()).unwrap();
    assert_eq!(loaded.config(), small.config());
    let x = sample();
    assert_eq!(max_abs_diff(&logits(&small, &x), &logits(&loaded, &x)), 0.0);
    let saved: u64 = std::fs::metadata(dir.path().join("model.safetensors"))
        .unwrap()
        .len();
    let full = tempfile::tempdir().unwrap();
    model.save(full.path()).unwrap();
    let original = std::fs::metadata(full.path().join("model.safetensors"))
        .unwrap()
        .len();
    assert!(saved < original, "{saved} bytes vs {original}");
    // Its parameters train (every one gets a gradient) and it generates.
    let out = loaded
        .forward(
            &x,
            &ForwardOptions {
                train: true,
                hidden_states: false,
                no_grad: false,
            },
        )
        .unwrap();
    let grads = out
        .logits
        .sqr()
        .unwrap()
        .mean_all()
        .unwrap()
        .backward()
        .unwrap();
    for (name, var) in loaded.parameters() {
        assert!(
            grads.get(var.as_tensor()).is_some(),
            "no gradient for {name}"
        );
    }
    let tokens = loaded
        .generate(
            &[vec![1, 2, 3]],
            &llmlab_plugin_api::GenerateOptions {
                max_tokens: 5,
                ..Default::default()
            },
            &mut |_, _| true,
        )
        .unwrap();
    assert_eq!(tokens[0].len(), 5);
}

#[test]
fn wanda_importance_uses_the_calibration_activations() {
    let model = tiny(json!({}));
    let config = json!({ "pattern": "structured", "method": "wanda", "sparsity": 0.5 });
    let err = llmlab_gpt::prune::pruned(&model, &config, &[])
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("calibration"), "{err}");
    let silent = silence_units(&model);
    let x = sample();
    let (small, report) =
        llmlab_gpt::prune::pruned(&model, &config, std::slice::from_ref(&x)).unwrap();
    assert_eq!(report["method"], json!("wanda"));
    for layer in report["layers"].as_array().unwrap() {
        assert_eq!(layer["heads_removed"], json!(silent), "{report}");
    }
    assert!(max_abs_diff(&logits(&model, &x), &logits(&small, &x)) < 1e-4);
}

#[test]
fn skip_keeps_a_part_and_bad_options_are_named() {
    let model = tiny(json!({}));
    let (small, _) = llmlab_gpt::prune::pruned(
        &model,
        &json!({ "pattern": "structured", "sparsity": 0.5, "skip": ["attn"] }),
        &[],
    )
    .unwrap();
    assert_eq!(small.gpt_config().n_head, 4);
    assert_eq!(small.gpt_config().ffn_hidden(), 64);
    let err = |config: Value| {
        llmlab_gpt::prune::pruned(&model, &config, &[])
            .err()
            .unwrap()
            .to_string()
    };
    let e = err(json!({ "pattern": "structured" }));
    assert!(e.contains("sparsity"), "{e}");
    let e = err(json!({ "pattern": "structured", "sparsity": 1.0 }));
    assert!(e.contains("(0, 1)"), "{e}");
    let e = err(json!({ "pattern": "structured", "sparsity": 0.5, "skip": ["c_fc"] }));
    assert!(e.contains("\"attn\" or \"mlp\""), "{e}");
    let e = err(json!({ "pattern": "experts", "sparsity": 0.5 }));
    assert!(e.contains("no `moe`"), "{e}");
    // In place, the shape-changing patterns point at the way that works.
    let e = model
        .prune(&json!({ "pattern": "structured", "sparsity": 0.5 }), &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("new model"), "{e}");
}

#[test]
fn unused_experts_go_and_the_routing_stays() {
    let model = tiny(json!({
        "moe": { "experts": 4, "top_k": 2, "expert_ffn_mult": 2.0, "balance": "aux_free" }
    }));
    // The selection bias keeps experts 1 and 3 from ever being chosen.
    let bias = Tensor::new(
        &[0f32, -100.0, 0.0, -100.0],
        &llmlab_plugin_api::candle::Device::Cpu,
    )
    .unwrap();
    for i in 0..2 {
        model
            .set_state(
                &format!("transformer.h.{i}.mlp.router.selection_bias"),
                &bias,
            )
            .unwrap();
    }
    let x = sample();
    let before = logits(&model, &x);
    let err = llmlab_gpt::prune::pruned(
        &model,
        &json!({ "pattern": "experts", "sparsity": 0.5 }),
        &[],
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("calibration"), "{err}");
    let (small, report) = llmlab_gpt::prune::pruned(
        &model,
        &json!({ "pattern": "experts", "sparsity": 0.5 }),
        std::slice::from_ref(&x),
    )
    .unwrap();
    assert_eq!(small.gpt_config().moe.as_ref().unwrap().experts, 2);
    for layer in report["layers"].as_array().unwrap() {
        assert_eq!(layer["experts_removed"], json!([1, 3]), "{report}");
    }
    let old = model.parameters_by_name();
    let new = small.parameters_by_name();
    let router = |m: &std::collections::HashMap<String, llmlab_plugin_api::candle::Var>| {
        m["transformer.h.0.mlp.router.weight"].as_tensor().clone()
    };
    assert_eq!(router(&new).dims()[0], 2);
    assert_eq!(
        max_abs_diff(&router(&new).get(1).unwrap(), &router(&old).get(2).unwrap()),
        0.0,
        "expert 2 is now expert 1, its router row with it"
    );
    assert_eq!(
        max_abs_diff(
            new["transformer.h.1.mlp.experts.1.c_fc.weight"].as_tensor(),
            old["transformer.h.1.mlp.experts.2.c_fc.weight"].as_tensor()
        ),
        0.0
    );
    assert!(!new.contains_key("transformer.h.0.mlp.experts.2.c_fc.weight"));
    assert!(max_abs_diff(&before, &logits(&small, &x)) < 1e-4);
    let dir = tempfile::tempdir().unwrap();
    small.save(dir.path()).unwrap();
    let loaded = llmlab_gpt::save_load::load(dir.path(), &Context::cpu()).unwrap();
    assert_eq!(max_abs_diff(&logits(&small, &x), &logits(&loaded, &x)), 0.0);
}
