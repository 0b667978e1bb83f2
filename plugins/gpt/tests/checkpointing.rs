//! The training pass (`Model::forward_backward`) with activation checkpointing and mixed
//! precision: for every option set, recomputing each block in backward gives the gradients of
//! the ordinary pass (same weights, same batch), in f32 and in bf16; bf16 gradients land on the
//! f32 weights close to the f32 ones; checkpointing with dropout is refused by name.

mod common;

use common::{option_sets, tiny};
use llmlab_plugin_api::candle::{DType, Device, Tensor};
use llmlab_plugin_api::rng::SplitMix64;
use llmlab_plugin_api::serde_json::{json, Value};
use llmlab_plugin_api::{ForwardOptions, Model};
use llmlab_train::loss;

const SEQ: usize = 24;

fn batch(vocab: usize) -> (Tensor, Tensor) {
    let mut rng = SplitMix64::new(9);
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

/// Loss and gradients by parameter name (in the order of `parameters()`), all f32.
fn gradients(extra: &Value, checkpoint: bool, compute: DType) -> (f32, Vec<(String, Tensor)>) {
    let mut config = json!({ "n_layer": 3, "checkpoint_activations": checkpoint });
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
    let mut loss_value = f32::NAN;
    let grads = model
        .forward_backward(&x, &options, compute, &mut |out| {
            assert_eq!(out.logits.dtype(), DType::F32, "the loss sees f32 logits");
            let l = loss::cross_entropy(&out.logits, &y)?;
            loss_value = l.to_scalar::<f32>()?;
            Ok(l)
        })
        .unwrap();
    let by_name = model
        .parameters()
        .into_iter()
        .map(|(name, var)| {
            assert_eq!(var.dtype(), DType::F32, "{name}: master weights stay f32");
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{extra}: no gradient for {name}"))
                .clone();
            assert_eq!(g.dtype(), DType::F32, "{name}: gradient dtype");
            (name, g)
        })
        .collect();
    (loss_value, by_name)
}

/// Largest `|a - b|` over all parameters, relative to the largest `|a|`.
fn relative_difference(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> (f32, String) {
    let scale = a
        .iter()
        .map(|(_, g)| {
            g.abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        })
        .fold(0f32, f32::max);
    let mut worst = (0f32, String::new());
    for ((name, ga), (_, gb)) in a.iter().zip(b) {
        let diff = (ga - gb)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            / scale;
        if diff > worst.0 {
            worst = (diff, name.clone());
        }
    }
    worst
}

#[test]
fn checkpointed_gradients_equal_the_ordinary_ones() {
    for extra in option_sets() {
        let (loss_plain, plain) = gradients(&extra, false, DType::F32);
        let (loss_ckpt, ckpt) = gradients(&extra, true, DType::F32);
        assert_eq!(loss_plain, loss_ckpt, "{extra}: the same forward pass");
        let (diff, name) = relative_difference(&plain, &ckpt);
        // Only the order of float additions differs.
        assert!(
            diff < 1e-5,
            "{extra}: f32 gradients differ by {diff} (relative) at {name}"
        );

        let (_, plain16) = gradients(&extra, false, DType::BF16);
        let (_, ckpt16) = gradients(&extra, true, DType::BF16);
        let (diff, name) = relative_difference(&plain16, &ckpt16);
        // bf16 sums round at 2^-8: allow a few of its ulps.
        assert!(
            diff < 2e-2,
            "{extra}: bf16 gradients differ by {diff} (relative) at {name}"
        );

        let (diff, name) = relative_difference(&plain, &plain16);
        assert!(
            diff < 0.1,
            "{extra}: bf16 vs f32 gradients differ by {diff} at {name}"
        );
    }
}

#[test]
fn checkpointing_with_dropout_is_refused_by_name() {
    let err = llmlab_gpt::new_gpt(
        &json!({ "checkpoint_activations": true, "dropout": 0.1 }),
        &llmlab_plugin_api::Context::cpu(),
    )
    .err()
    .expect("refused")
    .to_string();
    assert!(
        err.contains("checkpoint_activations") && err.contains("dropout"),
        "{err}"
    );
}
