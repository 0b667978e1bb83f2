//! Pruning (issue 22): magnitude and Wanda, unstructured and N:M, report what they did, the
//! sparsity report agrees, pruned weights stay zero through training, and bad options are
//! errors naming the cause.

mod common;

use common::{ids, tiny};
use llmlab_plugin_api::candle::{DType, Tensor};
use llmlab_plugin_api::candle_nn::{AdamW, Optimizer, ParamsAdamW};
use llmlab_plugin_api::serde_json::{json, Value};
use llmlab_plugin_api::{ForwardOptions, Model};

fn calibration() -> Vec<Tensor> {
    let rows: Vec<Vec<u32>> = (0..4)
        .map(|r| (0..32).map(|i| ((i * 7 + r * 5 + 2) % 48) as u32).collect())
        .collect();
    let refs: Vec<&[u32]> = rows.iter().map(|r| r.as_slice()).collect();
    vec![ids(&refs)]
}

fn weight(model: &llmlab_gpt::Gpt, name: &str) -> Vec<Vec<f32>> {
    model.parameters_by_name()[name]
        .as_tensor()
        .to_vec2::<f32>()
        .unwrap()
}

#[test]
fn magnitude_zeroes_the_smallest_weights_of_each_layer() {
    let model = tiny(json!({}));
    let before = weight(&model, "transformer.h.0.mlp.c_fc.weight");
    let report = model
        .prune(&json!({ "method": "magnitude", "sparsity": 0.5 }), &[])
        .unwrap();
    let layers = report["layers"].as_array().unwrap();
    // Two blocks, c_attn, c_proj, c_fc, c_proj each; the head is not pruned.
    assert_eq!(layers.len(), 8);
    for layer in layers {
        assert_eq!(layer["sparsity"], json!(0.5), "{layer}");
    }
    let after = weight(&model, "transformer.h.0.mlp.c_fc.weight");
    let mut kept_min = f32::INFINITY;
    let mut pruned_max = 0f32;
    for (row_b, row_a) in before.iter().zip(&after) {
        for (b, a) in row_b.iter().zip(row_a) {
            if *a == 0.0 {
                pruned_max = pruned_max.max(b.abs());
            } else {
                assert_eq!(a, b, "kept weights keep their values");
                kept_min = kept_min.min(b.abs());
            }
        }
    }
    assert!(pruned_max <= kept_min, "{pruned_max} > {kept_min}");
    let sparsity = model.sparsity_report().unwrap();
    let fc = sparsity["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["layer"] == "transformer.h.0.mlp.c_fc")
        .unwrap()
        .clone();
    assert_eq!(fc["sparsity"], json!(0.5));
    let head = sparsity["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["layer"] == "lm_head");
    assert!(head.is_none_or(|h| h["sparsity"].as_f64().unwrap() < 0.1));
}

#[test]
fn wanda_prunes_half_of_every_row_by_weight_times_input_norm() {
    let magnitude = tiny(json!({}));
    let wanda = tiny(json!({}));
    magnitude
        .prune(&json!({ "method": "magnitude", "sparsity": 0.5 }), &[])
        .unwrap();
    wanda
        .prune(
            &json!({ "method": "wanda", "sparsity": 0.5, "skip": ["attn"] }),
            &calibration(),
        )
        .unwrap();
    let w = weight(&wanda, "transformer.h.1.mlp.c_proj.weight");
    for row in &w {
        let zeros = row.iter().filter(|x| **x == 0.0).count();
        assert_eq!(zeros, row.len() / 2);
    }
    assert_ne!(w, weight(&magnitude, "transformer.h.1.mlp.c_proj.weight"));
    // `skip` left the attention layers dense.
    let attn = weight(&wanda, "transformer.h.0.attn.c_attn.weight");
    assert!(attn.iter().flatten().all(|x| *x != 0.0));
    let err = wanda
        .prune(&json!({ "method": "wanda", "sparsity": 0.5 }), &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("calibration"), "{err}");
}

#[test]
fn n_of_m_patterns_zero_m_minus_n_of_every_group() {
    for (pattern, n, m) in [("2:4", 2, 4), ("4:8", 4, 8)] {
        let model = tiny(json!({}));
        let report = model
            .prune(
                &json!({ "method": "wanda", "pattern": pattern }),
                &calibration(),
            )
            .unwrap();
        assert_eq!(report["sparsity"], json!(1.0 - n as f64 / m as f64));
        for row in weight(&model, "transformer.h.0.attn.c_proj.weight") {
            for group in row.chunks(m) {
                assert_eq!(
                    group.iter().filter(|x| **x == 0.0).count(),
                    m - n,
                    "{pattern}"
                );
            }
        }
    }
}

#[test]
fn pruned_weights_stay_zero_through_training() {
    let model = tiny(json!({}));
    model
        .prune(&json!({ "method": "magnitude", "sparsity": 0.6 }), &[])
        .unwrap();
    let zeros = |m: &llmlab_gpt::Gpt| m.sparsity_report().unwrap()["zeros"].as_u64().unwrap();
    let pruned = zeros(&model);
    let rows: Vec<Vec<u32>> = (0..3)
        .map(|r| {
            (0..17)
                .map(|i| ((i * 5 + r * 11 + 1) % 48) as u32)
                .collect()
        })
        .collect();
    let x: Vec<&[u32]> = rows.iter().map(|r| &r[..16]).collect();
    let y: Vec<&[u32]> = rows.iter().map(|r| &r[1..]).collect();
    let (x, y) = (ids(&x), ids(&y));
    let mut opt = AdamW::new(
        model.parameters().into_iter().map(|(_, v)| v).collect(),
        ParamsAdamW {
            lr: 1e-2,
            weight_decay: 0.1,
            ..Default::default()
        },
    )
    .unwrap();
    let mut losses = Vec::new();
    for _ in 0..8 {
        let mut value = 0.0;
        let grads = model
            .forward_backward(&x, &ForwardOptions::default(), DType::F32, &mut |out| {
                let l = llmlab_gpt::model::cross_entropy(&out.logits, &y)?;
                value = l.to_scalar::<f32>()?;
                Ok(l)
            })
            .unwrap();
        opt.step(&grads).unwrap();
        losses.push(value);
    }
    assert!(losses[7] < losses[0], "{losses:?}");
    assert_eq!(zeros(&model), pruned, "training kept the masks");
    // Progressive: pruning further keeps the earlier zeros and adds to them.
    let before = weight(&model, "transformer.h.0.mlp.c_fc.weight");
    model
        .prune(&json!({ "method": "magnitude", "sparsity": 0.8 }), &[])
        .unwrap();
    let after = weight(&model, "transformer.h.0.mlp.c_fc.weight");
    for (rb, ra) in before.iter().zip(&after) {
        for (b, a) in rb.iter().zip(ra) {
            assert!(*b != 0.0 || *a == 0.0);
        }
    }
    assert!(zeros(&model) > pruned);
}

#[test]
fn bad_prune_options_are_errors_naming_the_cause() {
    let model = tiny(json!({}));
    let cases: [(Value, &str); 6] = [
        (json!({ "method": "random", "sparsity": 0.5 }), "random"),
        (json!({ "sparsity": 1.5 }), "sparsity"),
        (json!({}), "sparsity"),
        (json!({ "pattern": "4:2" }), "4:2"),
        (json!({ "pattern": "2:4", "sparsity": 0.3 }), "2:4"),
        (json!({ "sparsty": 0.5 }), "sparsty"),
    ];
    for (config, needle) in cases {
        let err = model.prune(&config, &[]).unwrap_err().to_string();
        assert!(err.contains(needle), "{config}: {err}");
    }
    assert_eq!(model.sparsity_report().unwrap()["zeros"], json!(0));
}
