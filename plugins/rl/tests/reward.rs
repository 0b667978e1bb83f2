//! The `reward` aligner on a tiny model: both heads learn a separable preference (`tokens`
//! starting from the body's own answer log-likelihood), score, leave the caller's model alone,
//! and data without rejected answers is refused.

mod common;

use common::{job, Chars, Pairs, PrefixMean};
use llmlab_plugin_api::prelude::*;
use llmlab_rl::new_reward_model;

#[test]
fn learns_a_trivially_separable_preference() {
    let model = PrefixMean::new(8);
    let before = PrefixMean::snapshot(&model);
    let data = Pairs::separable(60);
    let mut rm = new_reward_model(&json!({
        "steps": 60, "batch_size": 16, "lr": 0.05, "warmup": 5, "eval_every": 0, "seed": 1
    }))
    .unwrap();
    let ctx = Context::cpu();
    let untrained = rm.evaluate(&job(&model, &Chars, &data), &ctx).unwrap();
    let metrics = rm.fit(&job(&model, &Chars, &data), &ctx).unwrap();
    assert!(
        metrics["val_accuracy"] > 0.9,
        "held-out preference accuracy {} (untrained {})",
        metrics["val_accuracy"],
        untrained["val_accuracy"]
    );
    assert!(metrics["val_loss"] < untrained["val_loss"], "{metrics:?}");
    assert!(rm.score("1+2", "03").unwrap() > rm.score("1+2", "87").unwrap());
    assert_eq!(
        PrefixMean::snapshot(&model),
        before,
        "the caller's model was changed"
    );
}

#[test]
fn data_without_rejected_answers_is_refused_with_the_example() {
    let model = PrefixMean::new(4);
    let mut data = Pairs::separable(10);
    data.0[3].rejected = None;
    let mut rm = new_reward_model(&json!({ "steps": 2 })).unwrap();
    let err = rm
        .fit(&job(&model, &Chars, &data), &Context::cpu())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("example 3") && err.contains("no rejected answer"),
        "{err}"
    );
}

#[test]
fn scoring_before_training_says_what_to_do() {
    let rm = new_reward_model(&Value::Null).unwrap();
    let err = rm.score("1+1", "2").unwrap_err().to_string();
    assert!(err.contains("not trained yet"), "{err}");
    let err = new_reward_model(&json!({ "val_fraction": 0 }))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("val_fraction"), "{err}");
}

/// `Σ log p` of `answer` and the end-of-text after `prompt`, straight from the model's logits.
fn answer_log_likelihood(model: &dyn Model, prompt: &str, answer: &str) -> f64 {
    let mut ids = Chars.encode(prompt).unwrap();
    let start = ids.len();
    ids.extend(Chars.encode(answer).unwrap());
    ids.push(common::EOT);
    let input = llmlab_plugin_api::candle::Tensor::new(ids.as_slice(), model.device())
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let out = model.forward(&input, &ForwardOptions::default()).unwrap();
    let logits: Vec<Vec<f32>> = out.logits.squeeze(0).unwrap().to_vec2().unwrap();
    (start..ids.len())
        .map(|t| {
            let row = &logits[t - 1];
            let max = row.iter().fold(f32::MIN, |m, &x| m.max(x)) as f64;
            let log_z = max
                + row
                    .iter()
                    .map(|&x| (x as f64 - max).exp())
                    .sum::<f64>()
                    .ln();
            row[ids[t] as usize] as f64 - log_z
        })
        .sum()
}

#[test]
fn tokens_head_scores_the_answer_log_likelihood_and_learns() {
    let model = PrefixMean::new(8);
    let before = PrefixMean::snapshot(&model);
    let data = Pairs::separable(60);
    let mut rm = new_reward_model(&json!({
        "head": "tokens", "steps": 60, "batch_size": 16, "lr": 0.05, "warmup": 5,
        "eval_every": 0, "seed": 1
    }))
    .unwrap();
    let ctx = Context::cpu();
    let untrained = rm.evaluate(&job(&model, &Chars, &data), &ctx).unwrap();
    for (prompt, answer) in [("1+2", "03"), ("4+4", "87")] {
        let want = answer_log_likelihood(&model, prompt, answer);
        let got = rm.score(prompt, answer).unwrap();
        assert!(
            (got - want).abs() < 1e-4,
            "{prompt}{answer}: {got} vs {want}"
        );
    }
    let metrics = rm.fit(&job(&model, &Chars, &data), &ctx).unwrap();
    assert!(
        metrics["val_accuracy"] > 0.9 && metrics["val_loss"] < untrained["val_loss"],
        "trained {metrics:?}, untrained {untrained:?}"
    );
    assert!(rm.score("1+2", "03").unwrap() > rm.score("1+2", "87").unwrap());
    assert_eq!(
        PrefixMean::snapshot(&model),
        before,
        "the caller's model was changed"
    );
}
