//! The alignment scripts in CI size through the real binary and plugins: the reward model
//! trains, scores, saves and reloads; DPO runs after SFT and reports accuracies before and after,
//! leaving its checkpoint in the run directory.

use llmlab_e2e::*;

fn run_script(script: &str, name: &str, runs: &std::path::Path) -> String {
    let output = llmlab(
        &[
            "run",
            script,
            "--set",
            "steps=4",
            "--set",
            "sft_steps=4",
            "--set",
            "n=120",
            "--set",
            "sft_n=200",
            "--set",
            &format!("name={name}"),
            "--set",
            &format!("runs_dir={}", runs.display()),
        ],
        "",
    );
    let (out, err) = (stdout(&output), stderr(&output));
    assert!(output.status.success(), "{script} failed:\n{out}\n{err}");
    out
}

#[test]
fn reward_model_script_trains_scores_and_reloads() {
    let runs = tempfile::tempdir().unwrap();
    let out = run_script("scripts/reward_model.rhai", "rm-ci", runs.path());
    assert!(out.contains("held-out preference accuracy"), "{out}");
    let score = |line_start: &str| -> String {
        let line = out
            .lines()
            .find(|l| l.starts_with(line_start))
            .unwrap_or_default();
        line.split(" = ")
            .nth(1)
            .unwrap_or_default()
            .split(',')
            .next()
            .unwrap_or_default()
            .to_string()
    };
    let trained = score("score(\"12+30=\", \"42\")");
    let reloaded = score("reloaded from");
    assert!(
        !trained.is_empty() && trained == reloaded,
        "{trained} vs {reloaded}\n{out}"
    );
    let dir = runs.path().join("rm-ci/reward_model");
    for file in [
        "head.safetensors",
        "reward.json",
        "body/model.safetensors",
        "body/config.json",
    ] {
        assert!(
            dir.join(file).is_file(),
            "{file} missing in {}",
            dir.display()
        );
    }
}

#[test]
fn dpo_script_reports_before_and_after_and_checkpoints() {
    let runs = tempfile::tempdir().unwrap();
    let out = run_script("scripts/dpo_arithmetic.rhai", "dpo-ci", runs.path());
    assert!(out.contains("before DPO: preference accuracy"), "{out}");
    assert!(out.contains("after DPO: preference accuracy"), "{out}");
    let run = runs.path().join("dpo-ci");
    for file in [
        "configs/rl-dpo.json",
        "checkpoint/aligner.json",
        "checkpoint/model.safetensors",
        "checkpoint/optimizer.safetensors",
    ] {
        assert!(
            run.join(file).is_file(),
            "{file} missing in {}",
            run.display()
        );
    }
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert!(
        metrics.contains("reward_margin") && metrics.contains("val_logp_accuracy"),
        "{metrics}"
    );
}
