//! Mixed precision in the `lm` trainer on the bigram model (candle's CPU backend computes bf16
//! and f16): bf16 learns and leaves the master weights f32; f16's loss scale halves on an
//! overflow, whose step is skipped with the weights untouched, and grows back after good steps.

mod common;

use std::sync::Arc;

use common::{context, Bigram, Pattern, Recorder};
use llmlab_lm_trainer::new_lm_trainer;
use llmlab_plugin_api::candle::DType;
use llmlab_plugin_api::prelude::*;

fn config(extra: Value) -> Value {
    let mut config = json!({ "steps": 60, "batch_size": 4, "ctx": 8, "lr": 0.05, "min_lr": 0.005,
        "warmup": 5, "eval_every": 0, "log_every": 1, "seed": 3 });
    for (k, v) in extra.as_object().unwrap() {
        config[k] = v.clone();
    }
    config
}

fn assert_master_weights_f32(model: &Bigram) {
    for (name, var) in model.parameters() {
        assert_eq!(var.dtype(), DType::F32, "{name} is no longer f32");
    }
}

#[test]
fn bf16_training_lowers_the_loss_and_keeps_f32_master_weights() {
    let model = Bigram::new(16, 32, 0);
    let data = Pattern::new(2000, 300);
    let recorder = Arc::new(Recorder::default());
    let mut trainer = new_lm_trainer(&config(json!({ "precision": "bf16" }))).unwrap();
    let last = trainer
        .fit(
            &model,
            &TrainJob::tokens(&data),
            &context(recorder.clone(), None),
        )
        .unwrap();
    let first = recorder.losses()[0].1;
    assert!(
        last["loss"] < 0.7 && last["loss"] < first / 2.0,
        "bf16: loss {first} -> {}",
        last["loss"]
    );
    assert!(!last.contains_key("loss_scale"), "bf16 needs no loss scale");
    assert_master_weights_f32(&model);
}

#[test]
fn f16_overflow_halves_the_loss_scale_and_skips_the_update() {
    let model = Bigram::new(16, 32, 0);
    let data = Pattern::new(2000, 300);
    // 2^40 times the loss overflows f16's range (65504) in the logits' gradient: an injected
    // overflow through the real backward pass.
    let start = 2f64.powi(40);
    let mut trainer = new_lm_trainer(&config(
        json!({ "precision": "f16", "loss_scale": start, "loss_scale_window": 4 }),
    ))
    .unwrap();
    let ctx = context(Arc::new(Recorder::default()), None);
    let before = model.snapshot();
    let metrics = trainer
        .step(&model, &TrainJob::tokens(&data), &ctx)
        .unwrap();
    assert_eq!(metrics["skipped"], 1.0, "{metrics:?}");
    assert_eq!(metrics["loss_scale"], start / 2.0, "{metrics:?}");
    assert_eq!(
        model.snapshot(),
        before,
        "a skipped step must not move the weights"
    );
    assert_eq!(trainer.steps_done(), 1);
    assert_master_weights_f32(&model);

    // The scale keeps halving until the gradients fit, then steps apply and the loss falls;
    // after `loss_scale_window` good steps the scale doubles again.
    let recorder = Arc::new(Recorder::default());
    let ctx = context(recorder.clone(), None);
    trainer.fit(&model, &TrainJob::tokens(&data), &ctx).unwrap();
    let lines = recorder.lines.lock().unwrap().clone();
    let skipped = lines.iter().filter(|(_, m)| m["skipped"] == 1.0).count();
    assert!(skipped >= 5, "only {skipped} skipped steps from 2^39");
    let (_, applied) = lines
        .iter()
        .find(|(_, m)| m["skipped"] == 0.0)
        .expect("some step applied");
    let lowest = lines
        .iter()
        .map(|(_, m)| m["loss_scale"])
        .fold(f64::MAX, f64::min);
    let last = &lines.last().unwrap().1;
    assert!(
        last["loss_scale"] > lowest,
        "the scale never grew back: {last:?}"
    );
    assert!(
        last["loss"] < applied["loss"] / 2.0,
        "f16: loss {} -> {}",
        applied["loss"],
        last["loss"]
    );
    assert_master_weights_f32(&model);
}
