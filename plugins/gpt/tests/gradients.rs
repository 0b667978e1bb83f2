//! Training through the fused kernels (issue 11): for every option set, one step of the `lm`
//! loss gives every parameter a finite, non-zero gradient on both `kernels` paths, and the fused
//! gradients equal the composed reference ones (same weights, same batch) to float noise.

mod common;

use std::collections::HashMap;

use common::{option_sets, tiny};
use llmlab_plugin_api::candle::{Device, Tensor};
use llmlab_plugin_api::rng::SplitMix64;
use llmlab_plugin_api::serde_json::{json, Value};
use llmlab_plugin_api::{ForwardOptions, Model};
use llmlab_train::loss;

/// 40 positions: the fused attention's second query block is partial.
const SEQ: usize = 40;

fn batch(vocab: usize) -> (Tensor, Tensor) {
    let mut rng = SplitMix64::new(5);
    let tokens: Vec<u32> = (0..3 * (SEQ + 1))
        .map(|_| rng.below(vocab) as u32)
        .collect();
    let rows: Vec<&[u32]> = tokens.chunks(SEQ + 1).collect();
    let x: Vec<u32> = rows.iter().flat_map(|r| r[..SEQ].to_vec()).collect();
    let y: Vec<u32> = rows.iter().flat_map(|r| r[1..].to_vec()).collect();
    (
        Tensor::from_vec(x, (3, SEQ), &Device::Cpu).unwrap(),
        Tensor::from_vec(y, (3, SEQ), &Device::Cpu).unwrap(),
    )
}

/// Loss and every parameter's gradient after one forward/backward, checked finite and non-zero.
fn one_step(extra: &Value) -> (f32, HashMap<String, Vec<f32>>) {
    let mut config = json!({ "ctx": 48 });
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        config[k] = v;
    }
    let model = tiny(config);
    let (x, y) = batch(model.vocab_size());
    let options = ForwardOptions {
        train: true,
        hidden_states: false,
        no_grad: false,
    };
    let out = model.forward(&x, &options).unwrap();
    let loss = loss::cross_entropy(&out.logits, &y).unwrap();
    let grads = loss.backward().unwrap();
    let mut by_name = HashMap::new();
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
        by_name.insert(name, values);
    }
    (loss.to_scalar::<f32>().unwrap(), by_name)
}

#[test]
fn fused_and_reference_kernels_give_the_same_gradients_for_every_option_set() {
    for extra in option_sets() {
        let mut reference = extra.clone();
        reference["kernels"] = json!("reference");
        let (loss_f, fused) = one_step(&extra);
        let (loss_r, composed) = one_step(&reference);
        assert!(
            (loss_f - loss_r).abs() < 1e-5 * loss_r.abs(),
            "{extra}: loss {loss_f} vs {loss_r}"
        );
        assert_eq!(fused.len(), composed.len());
        for (name, g) in &fused {
            let r = &composed[name];
            let scale = r.iter().fold(1e-12f32, |m, v| m.max(v.abs()));
            let worst = g
                .iter()
                .zip(r)
                .map(|(a, b)| (a - b).abs() / scale)
                .fold(0f32, f32::max);
            // f32 sums in a different order: a few ulp of the largest gradient entry.
            assert!(
                worst < 1e-4,
                "{extra}: {name} differs by {worst:e} (relative)"
            );
        }
    }
}

#[test]
fn dropout_falls_back_and_still_trains_every_parameter() {
    one_step(&json!({ "dropout": 0.1 }));
    one_step(&json!({ "dropout": 0.1, "pos": "rope", "norm": "rms", "mlp": "swiglu" }));
}
