//! The alignment scripts in CI size through the real binary and plugins: the reward model
//! trains, scores, saves and reloads; DPO runs after SFT and reports accuracies before and after,
//! leaving its checkpoint in the run directory; GRPO with a Rhai closure reward and PPO with a
//! reward model do the same; a reward closure that throws stops GRPO with its message; the
//! comparison scripts (offline preference losses, GRPO variants) print and save their tables.

use llmlab_e2e::*;

fn run_ci_size(script: &str, name: &str, runs: &std::path::Path) -> String {
    run_with(
        script,
        name,
        runs,
        &["steps=4", "sft_steps=4", "n=120", "sft_n=200"],
    )
}

/// Runs `script` with `settings` (`key=value`) in the run directory `runs/name`; its stdout.
fn run_with(script: &str, name: &str, runs: &std::path::Path, settings: &[&str]) -> String {
    let mut pairs: Vec<(&str, &str)> = settings
        .iter()
        .map(|s| s.split_once('=').expect("settings are key=value"))
        .collect();
    pairs.push(("name", name));
    run_script(script, &pairs, runs)
}

#[test]
fn reward_model_script_trains_scores_and_reloads() {
    let runs = tempfile::tempdir().unwrap();
    let out = run_ci_size("scripts/reward_model.rhai", "rm-ci", runs.path());
    for head in ["last", "tokens"] {
        assert!(
            out.contains(&format!("head \"{head}\": held-out preference accuracy")),
            "{out}"
        );
    }
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
    let manifest = std::fs::read_to_string(dir.join("reward.json")).unwrap();
    assert!(manifest.contains("\"head\": \"tokens\""), "{manifest}");
}

#[test]
fn dpo_script_reports_before_and_after_and_checkpoints() {
    let runs = tempfile::tempdir().unwrap();
    let out = run_ci_size("scripts/dpo_arithmetic.rhai", "dpo-ci", runs.path());
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

/// The online aligners' CI size: a few SFT steps, two rollout batches, 16 evaluation prompts.
/// (An override a script does not read is an error, so PPO's reward-model sizes are its own.)
const ONLINE_CI: [&str; 6] = [
    "batch_size=8",
    "sft_steps=4",
    "steps=2",
    "sft_n=200",
    "n=64",
    "eval_n=16",
];
const PPO_REWARD_MODEL_CI: [&str; 2] = ["rm_steps=4", "rm_sft_steps=4"];

fn assert_online_run(run: &std::path::Path, aligner: &str, extra_file: Option<&str>) {
    let mut files = vec![
        format!("configs/rl-{aligner}.json"),
        "checkpoint/aligner.json".into(),
        "checkpoint/model.safetensors".into(),
        "checkpoint/optimizer.safetensors".into(),
    ];
    files.extend(extra_file.map(|f| format!("checkpoint/{f}")));
    for file in files {
        assert!(
            run.join(&file).is_file(),
            "{file} missing in {}",
            run.display()
        );
    }
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    for key in [
        "reward_mean",
        "kl",
        "clip_fraction",
        "completion_len",
        "rollout_tokens_per_s",
        "update_tokens_per_s",
    ] {
        assert!(metrics.contains(key), "{key} not in {metrics}");
    }
}

#[test]
fn grpo_script_with_a_rhai_reward_reports_before_and_after() {
    let runs = tempfile::tempdir().unwrap();
    let out = run_with(
        "scripts/grpo_arithmetic.rhai",
        "grpo-ci",
        runs.path(),
        &ONLINE_CI[..],
    );
    assert!(
        out.contains("reward(\"12+34=\", \"46\") = 1.0, reward(\"12+34=\", \"47\") = 0.1"),
        "{out}"
    );
    assert!(out.contains("before GRPO: exact match"), "{out}");
    assert!(out.contains("after GRPO: exact match"), "{out}");
    assert_online_run(&runs.path().join("grpo-ci"), "grpo", None);
}

#[test]
fn ppo_script_with_a_reward_model_reports_before_and_after() {
    let runs = tempfile::tempdir().unwrap();
    let out = run_with(
        "scripts/ppo_arithmetic.rhai",
        "ppo-ci",
        runs.path(),
        &[&ONLINE_CI[..], &PPO_REWARD_MODEL_CI[..]].concat(),
    );
    assert!(
        out.contains("reward model: held-out preference accuracy"),
        "{out}"
    );
    assert!(out.contains("before PPO: exact match"), "{out}");
    assert!(out.contains("after PPO: exact match"), "{out}");
    assert_online_run(
        &runs.path().join("ppo-ci"),
        "ppo",
        Some("value_head.safetensors"),
    );
}

#[test]
fn reward_closure_that_throws_stops_grpo_naming_the_sample() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("throws.rhai");
    std::fs::write(
        &script,
        r#"
let tasks = corpus("arithmetic", #{ n: 32, digits: 1, seed: 1 });
let tok = tokenizer("bpe", #{ vocab_size: 260 });
tok.train(tasks);
let gpt = model("gpt", #{ vocab_size: tok.vocab_size(), n_layer: 1, n_head: 2, d_model: 16, ctx: 16 });
let grpo = rl("grpo", #{ steps: 3, batch_size: 2, group_size: 2, max_tokens: 3 });
grpo.fit(gpt, tasks, tok, |prompt, completion| {
    if prompt.len() > 0 { throw `no reward for ${prompt}`; }
    1.0
});
print("after fit");
"#,
    )
    .unwrap();
    let output = llmlab(
        &[
            "run",
            script.to_str().unwrap(),
            "--set",
            &format!("runs_dir={}", dir.path().join("runs").display()),
        ],
        "",
    );
    let (out, err) = (stdout(&output), stderr(&output));
    assert!(!output.status.success(), "{out}\n{err}");
    assert!(!out.contains("after fit"), "the script went on: {out}");
    for needle in [
        "grpo",
        "step 1",
        "reward function failed on prompt",
        "no reward for",
    ] {
        assert!(err.contains(needle), "{needle:?} not in:\n{err}");
    }
}

#[test]
fn constitutional_script_labels_pairs_with_its_judge_and_prints_the_table() {
    let runs = tempfile::tempdir().unwrap();
    for (judge, name) in [("closure", "cai-closure"), ("lm", "cai-lm")] {
        let out = run_with(
            "scripts/constitutional.rhai",
            name,
            runs.path(),
            &[
                "lm_steps=4",
                "bytes=100000",
                "n_prompts=6",
                "eval_n=6",
                "dpo_steps=2",
                "samples=3",
                "revise=true",
                &format!("judge={judge}"),
            ],
        );
        assert!(out.contains(&format!("judge: {judge}")), "{out}");
        assert!(out.contains("before: ") && out.contains("after: "), "{out}");
        assert!(
            out.contains(
                "| judge | samples per prompt | pairs | held-out follow rate before | after |"
            ) && out.contains(&format!("| {judge} | ")),
            "{out}"
        );
    }
}

/// The comparison scripts of docs/rl.md at CI size: every requested row is printed and the
/// same Markdown table is written into the run directory.
fn assert_table(out: &str, run: &std::path::Path, file: &str, rows: &[&str]) {
    let table = std::fs::read_to_string(run.join(file))
        .unwrap_or_else(|e| panic!("{file} in {}: {e}\n{out}", run.display()));
    assert!(
        out.contains(&table),
        "the printed table differs from {file}:\n{out}"
    );
    assert_eq!(table.lines().count(), 2 + rows.len(), "{table}");
    for row in rows {
        assert!(
            table.contains(&format!("| {row} |")),
            "no row {row}:\n{table}"
        );
    }
}

#[test]
fn preference_losses_script_trains_each_loss_from_one_sft_stage_and_saves_the_table() {
    let runs = tempfile::tempdir().unwrap();
    let out = run_with(
        "scripts/preference_losses.rhai",
        "prefs-ci",
        runs.path(),
        &[
            "sft_steps=4",
            "steps=2",
            "sft_n=200",
            "n=64",
            "eval_n=8",
            "losses=sigmoid,kto,orpo",
        ],
    );
    let run = runs.path().join("prefs-ci");
    assert_table(
        &out,
        &run,
        "preference_losses.md",
        &["SFT only (start)", "sigmoid", "kto", "orpo"],
    );
    assert!(
        run.join("sft/model").is_dir(),
        "the shared SFT stage is saved"
    );
}

#[test]
fn grpo_variants_script_runs_each_variant_and_seed_and_saves_the_table() {
    let runs = tempfile::tempdir().unwrap();
    let out = run_with(
        "scripts/grpo_variants.rhai",
        "variants-ci",
        runs.path(),
        &[
            "sft_steps=4",
            "steps=2",
            "sft_n=200",
            "n=64",
            "eval_n=8",
            "batch_size=4",
            "variants=dapo,gspo",
            "seeds=2",
        ],
    );
    assert!(
        out.contains("dapo seed 3") && out.contains("gspo seed 4"),
        "{out}"
    );
    let run = runs.path().join("variants-ci");
    assert_table(&out, &run, "grpo_variants.md", &["dapo", "gspo"]);
}
