//! The `sft` trainer: the loss counts answer and end-of-text tokens only, it learns a small
//! task, and it refuses token datasets.

mod common;

use common::{Bigram, Chars, Pattern, Sums, EOT};
use llmlab_lm_trainer::new_sft_trainer;
use llmlab_plugin_api::prelude::*;

/// The bigram model's mean NLL of the answer + end-of-text tokens of `examples`, by hand.
fn answer_nll_by_hand(model: &Bigram, examples: &Sums) -> f64 {
    let (mut total, mut count) = (0f64, 0usize);
    for ex in &examples.0 {
        let mut ids: Vec<u32> = Chars.encode(&ex.prompt).unwrap();
        let answer_start = ids.len();
        ids.extend(Chars.encode(&ex.answer).unwrap());
        ids.push(EOT);
        let input = Tensor::new(ids.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let logits: Vec<Vec<f32>> = model
            .forward(&input, &ForwardOptions::default())
            .unwrap()
            .logits
            .squeeze(0)
            .unwrap()
            .to_vec2()
            .unwrap();
        for target in answer_start..ids.len() {
            let row = &logits[target - 1];
            let lse = row.iter().map(|x| (*x as f64).exp()).sum::<f64>().ln();
            total += lse - row[ids[target] as usize] as f64;
            count += 1;
        }
    }
    total / count as f64
}

#[test]
fn loss_counts_answer_tokens_only() {
    let model = Bigram::new(8, 16, 0);
    let examples = Sums::new(12);
    // One batch holds every example, so the step's loss is the mean over all answer tokens.
    let config = json!({ "steps": 1, "batch_size": 12, "eval_every": 0, "seed": 1, "lr": 0.01 });
    let expected = answer_nll_by_hand(&model, &examples);
    let mut trainer = new_sft_trainer(&config).unwrap();
    let metrics = trainer
        .step(
            &model,
            &TrainJob::examples(&examples, &Chars),
            &Context::cpu(),
        )
        .unwrap();
    assert!(
        (metrics["loss"] - expected).abs() < 1e-5,
        "{} vs {expected}",
        metrics["loss"]
    );
}

#[test]
fn learns_a_task_and_evaluates_on_held_out_examples() {
    let model = Bigram::new(16, 16, 0);
    let examples = Sums::new(200);
    let config = json!({ "steps": 80, "batch_size": 16, "lr": 0.05, "min_lr": 0.005, "warmup": 5,
                         "eval_every": 40, "eval_batches": 1, "seed": 2 });
    let mut trainer = new_sft_trainer(&config).unwrap();
    let data = TrainJob::examples(&examples, &Chars);
    let first = trainer.step(&model, &data, &Context::cpu()).unwrap();
    let last = trainer.fit(&model, &data, &Context::cpu()).unwrap();
    assert_eq!(trainer.steps_done(), 80);
    // The bigram model sees only the previous token (the second digit), so the sum is not
    // learnable exactly; the end-of-text after the answer is. The loss must still fall clearly.
    assert!(
        last["loss"] < first["loss"] - 0.5,
        "{} -> {}",
        first["loss"],
        last["loss"]
    );
    assert!(last["val_loss"].is_finite() && last.contains_key("val_ppl"));
}

#[test]
fn refuses_a_token_dataset() {
    let model = Bigram::new(8, 16, 0);
    let mut trainer = new_sft_trainer(&json!({ "steps": 1 })).unwrap();
    let err = trainer
        .step(
            &model,
            &TrainJob::tokens(&Pattern::new(100, 10)),
            &Context::cpu(),
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("sft") && err.contains("lm"), "{err}");
}

#[test]
fn resume_is_bit_exact_across_epochs() {
    use std::sync::Arc;
    let examples = Sums::new(20);
    let data = TrainJob::examples(&examples, &Chars);
    // batch 8 of 20 examples: epochs wrap mid-batch, before and after the checkpoint.
    let config = json!({ "steps": 12, "batch_size": 8, "lr": 0.02, "warmup": 2, "eval_every": 0,
                         "checkpoint_every": 6, "log_every": 1, "seed": 4 });
    let straight_model = Bigram::new(8, 16, 0);
    let straight = Arc::new(common::Recorder::default());
    new_sft_trainer(&config)
        .unwrap()
        .fit(
            &straight_model,
            &data,
            &common::context(straight.clone(), None),
        )
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let ctx = common::context(Arc::new(common::Recorder::default()), Some(dir.path()));
    let first_model = Bigram::new(8, 16, 0);
    let mut first = new_sft_trainer(&config).unwrap();
    let mut losses: Vec<f64> = (0..6)
        .map(|_| first.step(&first_model, &data, &ctx).unwrap()["loss"])
        .collect();

    let mut resume = config.clone();
    resume["resume"] = json!(dir.path().to_str().unwrap());
    let resumed_model = Bigram::new(8, 16, 3);
    let resumed = Arc::new(common::Recorder::default());
    new_sft_trainer(&resume)
        .unwrap()
        .fit(
            &resumed_model,
            &data,
            &common::context(resumed.clone(), None),
        )
        .unwrap();
    losses.extend(resumed.losses().iter().map(|(_, l)| *l));
    let expected: Vec<f64> = straight.losses().iter().map(|(_, l)| *l).collect();
    assert_eq!(losses, expected);
    assert_eq!(resumed_model.snapshot(), straight_model.snapshot());
}
