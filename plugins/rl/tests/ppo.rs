//! The `ppo` aligner on a tiny model that samples: GAE and whitening match hand-computed values,
//! the first update is on-policy (ratio 1, KL 0), the mean reward rises on a toy task while the
//! reference stays put, the value head is checkpointed, and bad settings are named.

mod common;

use common::{job_with_reward, merged, Chars, LowFirstDigit, Pairs, PrefixMean};
use llmlab_plugin_api::prelude::*;
use llmlab_rl::advantage::whiten;
use llmlab_rl::gae::gae;
use llmlab_rl::new_ppo;

fn close(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5)
}

#[test]
fn gae_matches_hand_computed_values() {
    // δ2 = 1 − 0.3 = 0.7; δ1 = 0.9·0.3 − 0.4 = −0.13; δ0 = 0.9·0.4 − 0.5 = −0.14;
    // A2 = 0.7, A1 = −0.13 + 0.72·0.7 = 0.374, A0 = −0.14 + 0.72·0.374 = 0.12928.
    let (a, r) = gae(&[0.0, 0.0, 1.0], &[0.5, 0.4, 0.3], 0.9, 0.8);
    assert!(close(&a, &[0.12928, 0.374, 0.7]), "{a:?}");
    assert!(close(&r, &[0.62928, 0.774, 1.0]), "{r:?}");
    // γ = λ = 1: Monte-Carlo return minus the value.
    let (a, r) = gae(&[0.5, -0.25, 1.0], &[0.5, 0.4, 0.3], 1.0, 1.0);
    assert!(close(&a, &[0.75, 0.35, 0.7]), "{a:?}");
    assert!(close(&r, &[1.25, 0.75, 1.0]), "{r:?}");
    // λ = 0: one-step TD errors.
    let (a, _) = gae(&[0.0, 0.0, 1.0], &[0.5, 0.4, 0.3], 0.9, 0.0);
    assert!(close(&a, &[-0.14, -0.13, 0.7]), "{a:?}");
}

#[test]
fn whitening_matches_hand_computed_values() {
    let mut v = vec![1.0, 2.0, 3.0, 6.0];
    whiten(&mut v, 0.0);
    // mean 3, population variance (4 + 1 + 0 + 9) / 4 = 3.5
    let s = 3.5f32.sqrt();
    assert!(close(&v, &[-2.0 / s, -1.0 / s, 0.0, 3.0 / s]), "{v:?}");
}

fn config(extra: Value) -> Value {
    merged(
        json!({
            "batch_size": 16, "max_tokens": 3, "lr": 0.05, "warmup": 0, "seed": 5, "kl_coef": 0.01,
            "vf_coef": 0.5,
        }),
        extra,
    )
}

#[test]
fn first_update_is_on_policy_ratio_one_kl_zero() {
    let policy = PrefixMean::new(8);
    let data = Pairs::separable(20);
    let mut ppo = new_ppo(&config(json!({ "epochs": 1, "minibatch_size": 0 }))).unwrap();
    let m = ppo
        .step(
            &job_with_reward(&policy, &Chars, &data, &LowFirstDigit),
            &Context::cpu(),
        )
        .unwrap();
    assert!((m["ratio"] - 1.0).abs() < 1e-5, "{m:?}");
    assert!(m["kl"].abs() < 1e-7, "{m:?}");
    assert_eq!(m["clip_fraction"], 0.0, "{m:?}");
    assert!(m["value_loss"] > 0.0, "{m:?}");
}

#[test]
fn reward_rises_on_a_toy_task_and_reference_stays_put() {
    let policy = PrefixMean::new(8);
    let start = PrefixMean::snapshot(&policy);
    let data = Pairs::separable(20);
    let mut ppo = new_ppo(&config(json!({ "epochs": 2, "minibatch_size": 8 }))).unwrap();
    let j = job_with_reward(&policy, &Chars, &data, &LowFirstDigit);
    let ctx = Context::cpu();
    let first = ppo.step(&j, &ctx).unwrap()["reward_mean"];
    let late: Vec<f64> = (1..40)
        .map(|_| ppo.step(&j, &ctx).unwrap()["reward_mean"])
        .collect();
    let late_mean = late[late.len() - 5..].iter().sum::<f64>() / 5.0;
    assert!(
        late_mean > first + 0.3 && late_mean > 0.85,
        "reward {first} -> {late:?}"
    );
    assert_eq!(
        PrefixMean::snapshot(ppo.reference().unwrap()),
        start,
        "the reference moved"
    );
}

#[test]
fn tricks_switch_off_and_the_value_head_is_checkpointed() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = Context {
        run_dir: Some(dir.path().to_path_buf()),
        ..Context::cpu()
    };
    let policy = PrefixMean::new(8);
    let data = Pairs::separable(20);
    let mut ppo = new_ppo(&config(json!({
        "steps": 2, "whiten_advantages": false, "reward_norm": false, "reward_clip": 0.0,
        "clip_value_loss": false, "kl_coef": 0.0,
    })))
    .unwrap();
    let m = ppo
        .fit(
            &job_with_reward(&policy, &Chars, &data, &LowFirstDigit),
            &ctx,
        )
        .unwrap();
    assert!(ppo.reference().is_none(), "kl_coef 0 needs no reference");
    assert_eq!(m["kl"], 0.0);
    // Without normalisation the score is the raw reward.
    assert_eq!(m["score_mean"], m["reward_mean"], "{m:?}");
    for file in [
        "aligner.json",
        "model.safetensors",
        "optimizer.safetensors",
        "value_head.safetensors",
    ] {
        assert!(dir.path().join("checkpoint").join(file).is_file(), "{file}");
    }
    let err = new_ppo(&json!({ "gamma": 2.0 })).err().unwrap().to_string();
    assert!(err.contains("`gamma`") && err.contains("ppo"), "{err}");
}
