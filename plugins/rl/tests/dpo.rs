//! The `dpo` aligner on a tiny model: the loss starts at ln 2 (policy == reference) and falls,
//! the reference never moves, IPO works, and bad settings or data are named.

mod common;

use common::{job, merged, Chars, Pairs, PrefixMean};
use llmlab_plugin_api::prelude::*;
use llmlab_rl::{new_dpo, new_preset};

#[test]
fn loss_starts_at_ln2_falls_and_reference_stays_put() {
    let policy = PrefixMean::new(8);
    let start = PrefixMean::snapshot(&policy);
    let data = Pairs::separable(40);
    let mut dpo = new_dpo(&json!({
        "steps": 40, "batch_size": 8, "lr": 0.02, "warmup": 0, "beta": 0.5, "seed": 3, "eval_every": 0
    }))
    .unwrap();
    let ctx = Context::cpu();
    let j = job(&policy, &Chars, &data);
    let first = dpo.step(&j, &ctx).unwrap();
    assert!(
        (first["loss"] - std::f64::consts::LN_2).abs() < 1e-5,
        "step-0 loss {}",
        first["loss"]
    );
    assert_eq!(first["reward_margin"], 0.0);
    let last = dpo.fit(&j, &ctx).unwrap();
    assert!(last["loss"] < 0.5 * std::f64::consts::LN_2, "{last:?}");
    assert!(last["val_accuracy"] > 0.9, "{last:?}");
    assert!(last["val_logp_accuracy"] > 0.9, "{last:?}");
    let reference = dpo.reference().unwrap();
    assert_eq!(
        PrefixMean::snapshot(reference),
        start,
        "the reference moved"
    );
    assert_ne!(
        PrefixMean::snapshot(&policy),
        start,
        "the policy did not move"
    );
}

#[test]
fn ipo_and_label_smoothing_train_too() {
    for config in [
        json!({ "loss": "ipo", "beta": 0.5 }),
        json!({ "label_smoothing": 0.1, "beta": 0.5 }),
    ] {
        let policy = PrefixMean::new(8);
        let data = Pairs::separable(40);
        let full = merged(
            json!({ "steps": 30, "batch_size": 8, "lr": 0.02, "warmup": 0, "seed": 3 }),
            config.clone(),
        );
        let mut dpo = new_dpo(&full).unwrap();
        let j = job(&policy, &Chars, &data);
        let first = dpo.step(&j, &Context::cpu()).unwrap();
        let last = dpo.fit(&j, &Context::cpu()).unwrap();
        assert!(
            last["loss"] < first["loss"],
            "{config}: {first:?} → {last:?}"
        );
        assert!(last["val_accuracy"] > 0.9, "{config}: {last:?}");
    }
}

#[test]
fn bad_settings_and_data_name_their_cause() {
    let err = new_dpo(&json!({ "loss": "hinge" }))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("loss") && err.contains("hinge"), "{err}");
    let err = new_dpo(&json!({ "beta": -1 })).err().unwrap().to_string();
    assert!(err.contains("`beta`"), "{err}");
    let err = new_dpo(&json!({ "ctx": 64 }))
        .unwrap()
        .step(
            &job(&PrefixMean::new(4), &Chars, &Pairs::separable(4)),
            &Context::cpu(),
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("`ctx` = 64"), "{err}");
    let one = Pairs(Pairs::separable(1).0);
    let err = new_dpo(&Value::Null)
        .unwrap()
        .step(&job(&PrefixMean::new(4), &Chars, &one), &Context::cpu())
        .unwrap_err()
        .to_string();
    assert!(err.contains("at least 2"), "{err}");
}

#[test]
fn nll_weight_adds_the_chosen_nll_and_keeps_chosen_likelihood_up() {
    let data = Pairs::separable(40);
    let run = |nll_weight: f64, steps: u64| {
        let policy = PrefixMean::new(8);
        let mut dpo = new_dpo(&json!({
            "steps": steps, "batch_size": 8, "lr": 0.02, "warmup": 0, "beta": 0.5, "seed": 3,
            "eval_every": 0, "nll_weight": nll_weight
        }))
        .unwrap();
        let j = job(&policy, &Chars, &data);
        let first = dpo.step(&j, &Context::cpu()).unwrap();
        let last = dpo.fit(&j, &Context::cpu()).unwrap();
        (first, last)
    };
    // Step 0 (policy == reference): ln 2 plus the weighted NLL, linear in the weight.
    let (plain, plain_last) = run(0.0, 30);
    let (one, _) = run(1.0, 1);
    let (two, _) = run(2.0, 1);
    let extra = one["loss"] - std::f64::consts::LN_2;
    assert!(extra > 0.0, "NLL term adds nothing: {}", one["loss"]);
    assert!(
        (two["loss"] - std::f64::consts::LN_2 - 2.0 * extra).abs() < 1e-4,
        "{one:?} {two:?}"
    );
    assert_eq!(plain["chosen_logp"], one["chosen_logp"], "same first batch");
    // Trained with the term, the chosen answers end up more likely than with plain DPO.
    let (_, anchored_last) = run(1.0, 30);
    assert!(
        anchored_last["chosen_logp"] > plain_last["chosen_logp"],
        "chosen log p: plain {} vs nll_weight 1: {}",
        plain_last["chosen_logp"],
        anchored_last["chosen_logp"]
    );
    assert!(anchored_last["val_accuracy"] > 0.9, "{anchored_last:?}");
}

#[test]
fn kto_orpo_and_simpo_train_and_simpo_orpo_take_no_reference() {
    for (name, config) in [
        ("kto", json!({ "beta": 0.5 })),
        ("orpo", json!({ "beta": 0.5 })),
        ("simpo", json!({ "beta": 2.0, "gamma": 0.5 })),
    ] {
        let loss: llmlab_rl::config::DpoLoss = serde_json::from_value(json!(name)).unwrap();
        let policy = PrefixMean::new(8);
        let data = Pairs::separable(40);
        let full = merged(
            json!({ "steps": 30, "batch_size": 8, "lr": 0.02, "warmup": 0, "seed": 3 }),
            config.clone(),
        );
        let mut aligner = new_preset(loss, &full).unwrap();
        assert_eq!(aligner.name(), name);
        let j = job(&policy, &Chars, &data);
        let first = aligner.step(&j, &Context::cpu()).unwrap();
        assert_eq!(
            aligner.reference().is_some(),
            name == "kto",
            "{name}: reference copy"
        );
        let last = aligner.fit(&j, &Context::cpu()).unwrap();
        assert!(last["loss"] < first["loss"], "{name}: {first:?} → {last:?}");
        assert!(last["val_logp_accuracy"] > 0.9, "{name}: {last:?}");
        // The same loss through `dpo`'s own `loss` key.
        let via_dpo = new_dpo(&merged(full, json!({ "loss": name }))).unwrap();
        assert_eq!(via_dpo.name(), name);
    }
}

#[test]
fn a_preset_refuses_another_loss() {
    let err = new_preset(llmlab_rl::config::DpoLoss::Simpo, &json!({ "loss": "ipo" }))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("simpo") && err.contains("ipo"), "{err}");
}
