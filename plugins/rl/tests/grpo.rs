//! The `grpo` aligner on a tiny model that samples: group advantages match hand-computed
//! values, the first update is on-policy (ratio 1, KL 0), the mean reward rises on a toy task
//! while the reference stays put, and a failing or missing reward stops the run with a message
//! naming the cause, before any update.

mod common;

use common::{job, job_with_reward, merged, Chars, LowFirstDigit, Pairs, PrefixMean};
use llmlab_plugin_api::prelude::*;
use llmlab_rl::advantage::group_normalized;
use llmlab_rl::new_grpo;

#[test]
fn group_advantages_match_hand_computed_values() {
    // Group 1: mean 0.25, population std sqrt(0.1875); group 2 is flat: all zero.
    let rewards = [1.0, 0.0, 0.0, 0.0, 0.5, 0.5, 0.5, 0.5];
    let a = group_normalized(&rewards, 4, true, 0.0);
    let s = 0.1875f32.sqrt();
    let expected = [
        0.75 / s,
        -0.25 / s,
        -0.25 / s,
        -0.25 / s,
        0.0,
        0.0,
        0.0,
        0.0,
    ];
    for (x, y) in a.iter().zip(expected) {
        assert!((x - y).abs() < 1e-5, "{a:?} vs {expected:?}");
    }
    let centred = group_normalized(&rewards, 4, false, 0.0);
    assert_eq!(centred, vec![0.75, -0.25, -0.25, -0.25, 0.0, 0.0, 0.0, 0.0]);
}

fn config(extra: Value) -> Value {
    merged(
        json!({
            "batch_size": 6, "group_size": 4, "max_tokens": 3, "lr": 0.05, "warmup": 0,
            "seed": 5, "kl_coef": 0.01,
        }),
        extra,
    )
}

#[test]
fn first_update_is_on_policy_ratio_one_kl_zero() {
    let policy = PrefixMean::new(8);
    let data = Pairs::separable(20);
    let mut grpo = new_grpo(&config(json!({ "epochs": 1, "minibatch_size": 0 }))).unwrap();
    let m = grpo
        .step(
            &job_with_reward(&policy, &Chars, &data, &LowFirstDigit),
            &Context::cpu(),
        )
        .unwrap();
    assert!((m["ratio"] - 1.0).abs() < 1e-5, "{m:?}");
    assert!(m["kl"].abs() < 1e-7, "{m:?}");
    assert_eq!(m["clip_fraction"], 0.0, "{m:?}");
    for key in [
        "reward_mean",
        "reward_max",
        "completion_len",
        "rollout_tokens_per_s",
        "update_tokens_per_s",
    ] {
        assert!(m[key].is_finite(), "{key}: {m:?}");
    }
}

#[test]
fn reward_rises_on_a_toy_task_and_reference_stays_put() {
    let policy = PrefixMean::new(8);
    let start = PrefixMean::snapshot(&policy);
    let data = Pairs::separable(20);
    let mut grpo = new_grpo(&config(
        json!({ "steps": 30, "epochs": 2, "minibatch_size": 12 }),
    ))
    .unwrap();
    let j = job_with_reward(&policy, &Chars, &data, &LowFirstDigit);
    let ctx = Context::cpu();
    let first = grpo.step(&j, &ctx).unwrap()["reward_mean"];
    let mut late = Vec::new();
    for _ in 1..30 {
        late.push(grpo.step(&j, &ctx).unwrap()["reward_mean"]);
    }
    let late_mean = late[late.len() - 5..].iter().sum::<f64>() / 5.0;
    assert!(
        late_mean > first + 0.3 && late_mean > 0.85,
        "reward {first} -> {late:?}"
    );
    let greedy = grpo.evaluate(&j, &ctx).unwrap();
    assert_eq!(greedy["val_reward"], 1.0, "{greedy:?}");
    assert_eq!(
        PrefixMean::snapshot(grpo.reference().unwrap()),
        start,
        "the reference moved"
    );
    assert_ne!(
        PrefixMean::snapshot(&policy),
        start,
        "the policy did not move"
    );
}

struct Fails;

impl RewardFn for Fails {
    fn score(&self, prompt: &str, completion: &str) -> Result<f64> {
        Err(Error::msg(format!(
            "reward function failed on prompt {prompt:?}, completion {completion:?}: boom"
        )))
    }
}

struct NotANumber;

impl RewardFn for NotANumber {
    fn score(&self, _: &str, _: &str) -> Result<f64> {
        Ok(f64::NAN)
    }
}

#[test]
fn failing_reward_stops_the_run_before_any_update() {
    let policy = PrefixMean::new(8);
    let start = PrefixMean::snapshot(&policy);
    let data = Pairs::separable(20);
    let mut grpo = new_grpo(&config(json!({ "steps": 5 }))).unwrap();
    let err = grpo
        .fit(
            &job_with_reward(&policy, &Chars, &data, &Fails),
            &Context::cpu(),
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("step 1") && err.contains("boom") && err.contains("prompt \""),
        "{err}"
    );
    assert_eq!(
        PrefixMean::snapshot(&policy),
        start,
        "updated despite the error"
    );

    let err = new_grpo(&config(json!({})))
        .unwrap()
        .step(
            &job_with_reward(&policy, &Chars, &data, &NotANumber),
            &Context::cpu(),
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("NaN") && err.contains("prompt"), "{err}");

    let err = new_grpo(&config(json!({})))
        .unwrap()
        .step(&job(&policy, &Chars, &data), &Context::cpu())
        .unwrap_err()
        .to_string();
    assert!(err.contains("needs a reward"), "{err}");

    let err = new_grpo(&config(json!({ "max_tokens": 40 })))
        .unwrap()
        .step(
            &job_with_reward(&policy, &Chars, &data, &LowFirstDigit),
            &Context::cpu(),
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("`max_tokens` (40)"), "{err}");
}

#[test]
fn fit_writes_a_checkpoint_into_the_run_directory() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = Context {
        run_dir: Some(dir.path().to_path_buf()),
        ..Context::cpu()
    };
    let policy = PrefixMean::new(8);
    let data = Pairs::separable(20);
    let mut grpo = new_grpo(&config(json!({ "steps": 2 }))).unwrap();
    grpo.fit(
        &job_with_reward(&policy, &Chars, &data, &LowFirstDigit),
        &ctx,
    )
    .unwrap();
    let manifest = std::fs::read_to_string(dir.path().join("checkpoint/aligner.json")).unwrap();
    assert!(
        manifest.contains("\"grpo\"") && manifest.contains("\"step\": 2"),
        "{manifest}"
    );
    assert!(dir.path().join("checkpoint/model.safetensors").is_file());
}

#[test]
fn every_variant_learns_the_toy_task() {
    for variant in [
        json!({ "loss_type": "dapo" }),
        json!({ "loss_type": "rloo" }),
        json!({ "loss_type": "reinforce_pp" }),
        json!({ "importance": "sequence", "clip_eps": 0.05 }),
    ] {
        let policy = PrefixMean::new(8);
        let data = Pairs::separable(20);
        let mut grpo = new_grpo(&config(merged(
            json!({ "steps": 30, "epochs": 2, "minibatch_size": 12 }),
            variant.clone(),
        )))
        .unwrap();
        let j = job_with_reward(&policy, &Chars, &data, &LowFirstDigit);
        let ctx = Context::cpu();
        let first = grpo.step(&j, &ctx).unwrap();
        for key in ["reward_mean", "loss", "kl", "ratio", "kept_groups"] {
            assert!(first[key].is_finite(), "{variant}: {key}: {first:?}");
        }
        let mut late = Vec::new();
        for _ in 1..30 {
            late.push(grpo.step(&j, &ctx).unwrap()["reward_mean"]);
        }
        let late_mean = late[late.len() - 5..].iter().sum::<f64>() / 5.0;
        assert!(
            late_mean > first["reward_mean"] + 0.2,
            "{variant}: reward {} -> {late:?}",
            first["reward_mean"]
        );
    }
}

#[test]
fn dapo_dynamic_sampling_learns_only_from_groups_with_a_signal() {
    // A constant reward: every group is flat, so dynamic sampling finds nothing to learn from,
    // tries `max_resample` more batches, and makes no update.
    struct Constant;
    impl RewardFn for Constant {
        fn score(&self, _: &str, _: &str) -> Result<f64> {
            Ok(1.0)
        }
    }
    let policy = PrefixMean::new(8);
    let start = PrefixMean::snapshot(&policy);
    let data = Pairs::separable(20);
    let mut grpo = new_grpo(&config(json!({ "loss_type": "dapo", "max_resample": 2 }))).unwrap();
    let m = grpo
        .step(
            &job_with_reward(&policy, &Chars, &data, &Constant),
            &Context::cpu(),
        )
        .unwrap();
    assert_eq!(m["kept_groups"], 0.0, "{m:?}");
    assert_eq!(m["rollout_batches"], 3.0, "{m:?}");
    assert_eq!(
        PrefixMean::snapshot(&policy),
        start,
        "no update without a signal"
    );
}
