//! The `lm` trainer on a bigram model: it learns, reaches every parameter, reports the metrics
//! it promises, stops on divergence and on Ctrl-C, and refuses what it cannot train on.

mod common;

use std::sync::Arc;

use common::{context, Bigram, Chars, Pattern, Recorder, Sums};
use llmlab_lm_trainer::{loss, new_lm_trainer};
use llmlab_plugin_api::prelude::*;
use llmlab_plugin_api::CancelFlag;

fn base() -> Value {
    json!({ "steps": 60, "batch_size": 4, "ctx": 8, "lr": 0.05, "min_lr": 0.005, "warmup": 5,
            "eval_every": 20, "eval_batches": 2, "log_every": 1, "seed": 3 })
}

fn with(mut config: Value, extra: Value) -> Value {
    for (k, v) in extra.as_object().unwrap() {
        config[k] = v.clone();
    }
    config
}

#[test]
fn loss_falls_on_a_learnable_pattern_and_val_metrics_are_reported() {
    let model = Bigram::new(16, 32, 0);
    let data = Pattern::new(2000, 300);
    let recorder = Arc::new(Recorder::default());
    let mut trainer = new_lm_trainer(&base()).unwrap();
    let last = trainer
        .fit(
            &model,
            &TrainJob::tokens(&data),
            &context(recorder.clone(), None),
        )
        .unwrap();
    let losses = recorder.losses();
    assert_eq!(losses.len(), 60);
    assert_eq!(trainer.steps_done(), 60);
    let first = losses[0].1;
    assert!(
        (first - (common::VOCAB as f64).ln()).abs() < 0.5,
        "first loss {first}"
    );
    assert!(
        last["loss"] < 0.6,
        "final loss {} (first {first})",
        last["loss"]
    );
    for key in [
        "loss",
        "lr",
        "grad_norm",
        "tokens_per_s",
        "val_loss",
        "val_ppl",
    ] {
        assert!(last.contains_key(key), "missing {key}: {last:?}");
    }
    assert!((last["val_ppl"] - last["val_loss"].exp()).abs() < 1e-9);
    assert!(last["val_loss"] < 0.6);
    let evals: Vec<u64> = recorder
        .lines
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, m)| m.contains_key("val_loss"))
        .map(|(s, _)| *s)
        .collect();
    assert_eq!(evals, vec![20, 40, 60]);
    // The schedule: warmup to 0.05 by step 5, min_lr at the end.
    let lrs: Vec<f64> = recorder
        .lines
        .lock()
        .unwrap()
        .iter()
        .map(|(_, m)| m["lr"])
        .collect();
    assert!((lrs[0] - 0.01).abs() < 1e-12 && (lrs[4] - 0.05).abs() < 1e-12);
    assert!(lrs[59] < 0.0055, "{}", lrs[59]);
}

#[test]
fn every_parameter_gets_a_finite_gradient_and_changes_after_one_step() {
    let model = Bigram::new(8, 16, 0);
    let data = Pattern::new(500, 100);
    // The gradient the trainer's loss produces reaches every parameter.
    let ids = Tensor::new(&[[0u32, 1, 2, 3], [4, 5, 6, 7]], &Device::Cpu).unwrap();
    let targets = Tensor::new(&[[1u32, 2, 3, 9], [5, 6, 7, 0]], &Device::Cpu).unwrap();
    let logits = model
        .forward(&ids, &ForwardOptions::default())
        .unwrap()
        .logits;
    let grads = loss::cross_entropy(&logits, &targets)
        .unwrap()
        .backward()
        .unwrap();
    for (name, var) in model.parameters() {
        let g: Vec<f32> = grads
            .get(&var)
            .unwrap_or_else(|| panic!("{name}: no gradient"))
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(
            g.iter().all(|x| x.is_finite()),
            "{name}: non-finite gradient"
        );
        assert!(g.iter().any(|&x| x != 0.0), "{name}: zero gradient");
    }
    let before = model.snapshot();
    let mut trainer = new_lm_trainer(&with(base(), json!({ "warmup": 0 }))).unwrap();
    let metrics = trainer
        .step(&model, &TrainJob::tokens(&data), &Context::cpu())
        .unwrap();
    assert!(metrics["grad_norm"].is_finite() && metrics["grad_norm"] > 0.0);
    assert!(!metrics.contains_key("val_loss"));
    for (name, after) in model.snapshot() {
        let changed = after
            .iter()
            .zip(&before[&name])
            .filter(|(a, b)| a != b)
            .count();
        assert!(changed > 0, "{name} did not change");
    }
}

#[test]
fn gradient_accumulation_and_clipping_still_learn() {
    let model = Bigram::new(16, 32, 0);
    let data = Pattern::new(2000, 300);
    let config = with(
        base(),
        json!({ "grad_accum": 3, "batch_size": 2, "grad_clip": 0.5, "eval_every": 0 }),
    );
    let mut trainer = new_lm_trainer(&config).unwrap();
    let last = trainer
        .fit(&model, &TrainJob::tokens(&data), &Context::cpu())
        .unwrap();
    assert!(last["loss"] < 0.7, "{last:?}");
    assert!(!last.contains_key("val_loss"));
}

#[test]
fn divergence_stops_with_an_error_naming_the_step() {
    let model = Bigram::new(8, 16, 0);
    let data = Pattern::new(500, 100);
    let config = with(
        base(),
        json!({ "lr": 1e30, "min_lr": 0.0, "warmup": 0, "grad_clip": 0.0 }),
    );
    let mut trainer = new_lm_trainer(&config).unwrap();
    let err = trainer
        .fit(&model, &TrainJob::tokens(&data), &Context::cpu())
        .unwrap_err()
        .to_string();
    assert!(err.contains("diverged at step"), "{err}");
    assert!(err.contains("lr"), "{err}");
}

#[test]
fn cancellation_writes_a_checkpoint_and_stops() {
    let dir = tempfile::tempdir().unwrap();
    let model = Bigram::new(8, 16, 0);
    let data = Pattern::new(500, 100);
    let flag = CancelFlag::default();
    let recorder = Arc::new(Recorder {
        cancel_at: Some((3, flag.clone())),
        ..Recorder::default()
    });
    let mut ctx = context(recorder.clone(), Some(dir.path()));
    ctx.cancel = flag;
    let mut trainer = new_lm_trainer(&with(base(), json!({ "checkpoint_every": 0 }))).unwrap();
    let err = trainer
        .fit(&model, &TrainJob::tokens(&data), &ctx)
        .unwrap_err();
    assert!(matches!(err, Error::Cancelled), "{err}");
    assert_eq!(trainer.steps_done(), 3);
    let manifest: Value = llmlab_plugin_api::serde_json::from_slice(
        &std::fs::read(dir.path().join("checkpoint/trainer.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["step"], json!(3));
    assert_eq!(manifest["trainer"], json!("lm"));
}

#[test]
fn refuses_the_wrong_kind_of_data_and_a_ctx_beyond_the_model() {
    let model = Bigram::new(8, 16, 0);
    let sums = Sums::new(10);
    let mut trainer = new_lm_trainer(&base()).unwrap();
    let err = trainer
        .step(&model, &TrainJob::examples(&sums, &Chars), &Context::cpu())
        .unwrap_err()
        .to_string();
    assert!(err.contains("sft"), "{err}");

    let mut trainer = new_lm_trainer(&with(base(), json!({ "ctx": 64 }))).unwrap();
    let err = trainer
        .step(
            &model,
            &TrainJob::tokens(&Pattern::new(500, 0)),
            &Context::cpu(),
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("ctx") && err.contains("16"), "{err}");

    let mut trainer = new_lm_trainer(&with(base(), json!({ "ctx": 8 }))).unwrap();
    let err = trainer
        .step(
            &model,
            &TrainJob::tokens(&Pattern::new(5, 0)),
            &Context::cpu(),
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("5 tokens"), "{err}");
}

#[test]
fn unknown_config_key_names_key_and_accepted_keys() {
    let err = new_lm_trainer(&json!({ "stepz": 3 }))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("`stepz`") && err.contains("steps, batch_size"),
        "{err}"
    );
}
