//! Resume: every aligner (`reward`, `dpo`, `grpo`, `ppo`, and the offline variants through
//! `dpo`) stopped by Ctrl-C halfway leaves a checkpoint from which a fresh aligner and a model
//! with other weights continue to exactly the weights and metrics of an uninterrupted run
//! (policy, reference, value head, optimiser, RNG and data cursor all restored). A checkpoint of
//! another aligner is refused naming both.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use common::{job, job_with_reward, Chars, LowFirstDigit, Pairs, PrefixMean};
use llmlab_plugin_api::candle::Tensor;
use llmlab_plugin_api::prelude::*;
use llmlab_plugin_api::{CancelFlag, MetricsSink};
use llmlab_rl::{new_dpo, new_grpo, new_ppo, new_preset, new_reward_model};

const STEPS: u64 = 6;
const STOP_AT: u64 = 3;

/// Records metrics; presses Ctrl-C after step `cancel_at`.
#[derive(Default)]
struct Recorder {
    lines: Mutex<Vec<(u64, BTreeMap<String, f64>)>>,
    cancel_at: Option<(u64, CancelFlag)>,
}

impl MetricsSink for Recorder {
    fn record(&self, step: u64, values: &BTreeMap<String, f64>) {
        // Timings differ from run to run; everything else must not.
        let kept = values
            .iter()
            .filter(|(k, _)| !k.ends_with("_s"))
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        self.lines.lock().unwrap().push((step, kept));
        if let Some((at, flag)) = &self.cancel_at {
            if step == *at {
                flag.cancel();
            }
        }
    }
    fn rewind(&self, step: u64) {
        self.lines.lock().unwrap().retain(|(s, _)| *s <= step);
    }
}

fn context(recorder: Arc<Recorder>, dir: &Path, cancel: CancelFlag) -> Context {
    Context {
        metrics: recorder,
        run_dir: Some(dir.to_path_buf()),
        cancel,
        ..Context::cpu()
    }
}

fn make(name: &str, config: &Value) -> Box<dyn Aligner> {
    match name {
        "reward" => Box::new(new_reward_model(config).unwrap()),
        "dpo" => Box::new(new_dpo(config).unwrap()),
        "simpo" => Box::new(new_preset(llmlab_rl::config::DpoLoss::Simpo, config).unwrap()),
        "grpo" => Box::new(new_grpo(config).unwrap()),
        "ppo" => Box::new(new_ppo(config).unwrap()),
        other => panic!("{other}"),
    }
}

struct Outcome {
    lines: Vec<(u64, BTreeMap<String, f64>)>,
    weights: BTreeMap<String, Vec<f32>>,
    scores: Vec<f64>,
}

fn scores(aligner: &dyn Aligner) -> Vec<f64> {
    ["1+2", "3+4", "5+6"]
        .iter()
        .filter_map(|p| aligner.score(p, "12").ok())
        .collect()
}

/// Runs `name` for `STEPS` steps straight, and again stopped by Ctrl-C after `STOP_AT` steps and
/// resumed on a zeroed model; returns both outcomes.
fn straight_and_resumed(name: &str, config: Value) -> (Outcome, Outcome) {
    let data = Pairs::separable(24);
    let reward = LowFirstDigit;
    let run = |model: &PrefixMean, aligner: &mut dyn Aligner, ctx: &Context| {
        let j = if matches!(name, "grpo" | "ppo") {
            job_with_reward(model, &Chars, &data, &reward)
        } else {
            job(model, &Chars, &data)
        };
        aligner.fit(&j, ctx)
    };

    let straight_dir = tempfile::tempdir().unwrap();
    let model = PrefixMean::new(8);
    let recorder = Arc::new(Recorder::default());
    let mut aligner = make(name, &config);
    run(
        &model,
        aligner.as_mut(),
        &context(recorder.clone(), straight_dir.path(), CancelFlag::default()),
    )
    .unwrap();
    let straight = Outcome {
        lines: recorder.lines.lock().unwrap().clone(),
        weights: PrefixMean::snapshot(&model),
        scores: scores(aligner.as_ref()),
    };

    let dir = tempfile::tempdir().unwrap();
    let model = PrefixMean::new(8);
    let flag = CancelFlag::default();
    let recorder = Arc::new(Recorder {
        cancel_at: Some((STOP_AT, flag.clone())),
        ..Recorder::default()
    });
    let mut first = make(name, &config);
    let err = run(
        &model,
        first.as_mut(),
        &context(recorder.clone(), dir.path(), flag),
    )
    .unwrap_err();
    assert!(matches!(err, Error::Cancelled), "{name}: {err}");
    assert!(
        dir.path().join("checkpoint/aligner.json").is_file(),
        "{name}: Ctrl-C left no checkpoint"
    );

    // Other weights: the resume must overwrite every parameter.
    let resumed_model = PrefixMean::new(8);
    for (_, var) in resumed_model.parameters() {
        var.set(&Tensor::zeros_like(var.as_tensor()).unwrap())
            .unwrap();
    }
    let mut resumed_config = config.clone();
    resumed_config["resume"] = json!(dir.path().to_str().unwrap());
    let mut second = make(name, &resumed_config);
    run(
        &resumed_model,
        second.as_mut(),
        &context(recorder.clone(), dir.path(), CancelFlag::default()),
    )
    .unwrap();
    let resumed = Outcome {
        lines: recorder.lines.lock().unwrap().clone(),
        weights: PrefixMean::snapshot(&resumed_model),
        scores: scores(second.as_ref()),
    };
    (straight, resumed)
}

fn assert_bit_exact(name: &str, config: Value) {
    let (straight, resumed) = straight_and_resumed(name, config);
    assert_eq!(
        straight.lines.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        (1..=STEPS).collect::<Vec<_>>(),
        "{name}: every step logged once"
    );
    assert_eq!(
        resumed.lines, straight.lines,
        "{name}: metrics differ after the resume"
    );
    if name != "reward" {
        // (The reward model trains its own copy of the body; the policy is not touched.)
        assert_eq!(
            resumed.weights, straight.weights,
            "{name}: final weights differ"
        );
    }
    assert_eq!(
        resumed.scores, straight.scores,
        "{name}: reward model scores differ"
    );
}

fn preference_config() -> Value {
    json!({ "steps": STEPS, "batch_size": 4, "lr": 0.05, "warmup": 2, "seed": 3,
            "log_every": 1, "eval_every": 2 })
}

fn online_config() -> Value {
    json!({ "steps": STEPS, "batch_size": 3, "max_tokens": 3, "lr": 0.05, "warmup": 2,
            "seed": 5, "kl_coef": 0.05, "epochs": 2, "minibatch_size": 4, "eval_n": 4 })
}

#[test]
fn dpo_resume_is_bit_exact() {
    assert_bit_exact("dpo", preference_config());
}

#[test]
fn simpo_resume_is_bit_exact_without_a_reference() {
    assert_bit_exact("simpo", preference_config());
}

#[test]
fn reward_resume_is_bit_exact() {
    let mut c = preference_config();
    c["lr"] = json!(0.01);
    assert_bit_exact("reward", c);
}

#[test]
fn grpo_resume_is_bit_exact() {
    let mut c = online_config();
    c["group_size"] = json!(4);
    assert_bit_exact("grpo", c);
}

#[test]
fn ppo_resume_is_bit_exact() {
    assert_bit_exact("ppo", online_config());
}

#[test]
fn resume_refuses_another_aligners_checkpoint() {
    let data = Pairs::separable(24);
    let dir = tempfile::tempdir().unwrap();
    let model = PrefixMean::new(8);
    let mut c = preference_config();
    c["steps"] = json!(2);
    new_dpo(&c)
        .unwrap()
        .fit(
            &job(&model, &Chars, &data),
            &context(
                Arc::new(Recorder::default()),
                dir.path(),
                CancelFlag::default(),
            ),
        )
        .unwrap();
    c["resume"] = json!(dir.path().to_str().unwrap());
    let err = new_reward_model(&c)
        .unwrap()
        .fit(&job(&model, &Chars, &data), &Context::cpu())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("dpo") && err.contains("reward") && err.contains("aligner.json"),
        "{err}"
    );
    c["resume"] = json!(dir.path().join("nowhere").to_str().unwrap());
    let err = new_dpo(&c)
        .unwrap()
        .fit(&job(&model, &Chars, &data), &Context::cpu())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("nowhere") && err.contains("does not exist"),
        "{err}"
    );
}
