//! The `reward` aligner on a tiny model: it learns a separable preference, scores, leaves the
//! caller's model alone, and refuses data without rejected answers.

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
