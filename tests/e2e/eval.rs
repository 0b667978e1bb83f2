//! The evaluation harness end to end (docs/eval.md): `llmlab eval` over a CI-sized quickstart run
//! prints the table and writes results.json/report.md; `llmlab eval compare` prints one table and
//! draws the chart; HumanEval-format tasks are refused clearly without Python; `evaluate(...)` in
//! Rhai names an unknown task field; scripts/code_rl.rhai runs at CI size and prints its table.

use std::path::Path;
use std::process::Command;

use llmlab_e2e::*;

fn quickstart(runs: &Path) -> std::path::PathBuf {
    run_script(
        "scripts/quickstart.rhai",
        &[
            ("steps", "12"),
            ("bytes", "150000"),
            ("name", "quickstart-eval"),
        ],
        runs,
    );
    runs.join("quickstart-eval")
}

#[test]
fn eval_over_the_quickstart_run_prints_the_table_and_compare_draws_the_chart() {
    let runs = tempfile::tempdir().unwrap();
    let run = quickstart(runs.path());
    let run_arg = run.display().to_string();
    let out = run.join("eval");
    let output = llmlab(
        &[
            "eval",
            "--model",
            &run_arg,
            "--tasks",
            "stories_cloze,stories_perplexity",
            "--limit",
            "12",
            "--out",
            &out.display().to_string(),
        ],
        "",
    );
    let text = stdout(&output);
    assert!(output.status.success(), "{text}\n{}", stderr(&output));
    assert!(
        text.contains("| task | version | metric | value | ± stderr | n |"),
        "{text}"
    );
    assert!(text.contains("| stories_cloze | 1 | acc |"), "{text}");
    assert!(
        text.contains("| stories_perplexity | 1 | bits_per_byte |"),
        "{text}"
    );
    assert!(text.contains("floor_bits_per_byte"), "{text}");

    let results: llmlab_plugin_api::serde_json::Value = llmlab_plugin_api::serde_json::from_str(
        &std::fs::read_to_string(out.join("results.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(results["model"]["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(results["tasks"]["stories_cloze"]["version"], 1);
    assert_eq!(results["tasks"]["stories_cloze"]["documents"], 12);
    assert!(results["config"]["tasks"][0]["digest"].is_string());
    let acc = results["tasks"]["stories_cloze"]["metrics"]["acc"]["value"]
        .as_f64()
        .unwrap();
    assert!((0.0..=1.0).contains(&acc));
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        report.contains("| stories_cloze | 1 | acc_norm |"),
        "{report}"
    );
    assert!(out.join("stories_cloze.samples.jsonl").is_file());

    // The same run twice: one table, two columns, and a PNG.
    let png = runs.path().join("compare.png");
    let output = llmlab(
        &[
            "eval",
            "compare",
            &run_arg,
            &out.display().to_string(),
            "--png",
            &png.display().to_string(),
        ],
        "",
    );
    let text = stdout(&output);
    assert!(output.status.success(), "{text}\n{}", stderr(&output));
    assert!(text.contains("| stories_cloze | acc |"), "{text}");
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[1..4], b"PNG");

    // A HumanEval-format task with no Python on PATH: refused, naming the cause.
    let task = repo_root().join("tests/fixtures/eval/humaneval_tiny.json");
    let empty = tempfile::tempdir().unwrap();
    let output = Command::new(llmlab_binary())
        .args(["eval", "--model", &run_arg, "--tasks"])
        .arg(&task)
        .args(["--limit", "1"])
        .env("PATH", empty.path())
        .output()
        .unwrap();
    let err = stderr(&output);
    assert!(!output.status.success());
    assert!(err.contains("no python3 (or python) is on PATH"), "{err}");

    // With Python: the run goes through (the stories model's pass@1 is whatever it is).
    if Command::new("python3").arg("--version").output().is_ok() {
        let output = llmlab(
            &[
                "eval",
                "--model",
                &run_arg,
                "--tasks",
                &task.display().to_string(),
                "--out",
                &runs.path().join("humaneval").display().to_string(),
            ],
            "",
        );
        let text = stdout(&output);
        assert!(output.status.success(), "{text}\n{}", stderr(&output));
        assert!(text.contains("| humaneval_tiny | 1 | pass@2 |"), "{text}");
    }
}

#[test]
fn evaluate_in_rhai_names_unknown_task_fields_and_runs_code_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("eval.rhai");
    std::fs::write(
        &script,
        r#"
let code = corpus("code", #{ level: "easy", n: 50, seed: 1 });
let tok = tokenizer("bpe", #{ vocab_size: 300 });
tok.train(code);
let gpt = model("gpt", #{ vocab_size: tok.vocab_size(), n_layer: 1, n_head: 2, d_model: 32, ctx: 64 });
let task = #{
    name: "code_tiny", source: #{ corpus: "code", options: #{ level: "easy", n: 3, seed: 9 } },
    output_type: "generate_until", prompt: "{{prompt}}", target: "{{answer}}", max_tokens: 8,
    repeats: 2, temperature: 1.0, checker: "code", metrics: ["pass@1", "pass@2"],
};
let r = evaluate(gpt, tok, [task, "arithmetic"], #{ limit: 3, batch: 4, seed: 1 });
print(`pass@1 ${r.code_tiny["pass@1"]} n ${r.code_tiny.n} arithmetic ${r.arithmetic.exact_match}`);
task.promt = "typo";
evaluate(gpt, tok, [task]);
"#,
    )
    .unwrap();
    let output = llmlab_in(dir.path(), &["run", &script.display().to_string()], b"");
    let (out, err) = (stdout(&output), stderr(&output));
    assert!(out.contains("| code_tiny | 0 | pass@2 |"), "{out}\n{err}");
    assert!(out.contains("n 3 arithmetic"), "{out}\n{err}");
    assert!(!output.status.success());
    assert!(err.contains("unknown field `promt`"), "{err}");
    let saved = dir.path().join("runs");
    let eval_dir = std::fs::read_dir(&saved)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
        .join("eval");
    assert!(
        eval_dir.join("results.json").is_file(),
        "{}",
        eval_dir.display()
    );
}

#[test]
fn code_rl_runs_at_ci_size_and_prints_its_table() {
    let runs = tempfile::tempdir().unwrap();
    let out = run_script(
        "scripts/code_rl.rhai",
        &[
            ("sft_steps", "3"),
            ("grpo_steps", "1"),
            ("grpo_batch", "2"),
            ("eval_n", "3"),
            ("samples", "2"),
            ("rest_prompts", "3"),
            ("rest_k", "2"),
            ("rest_steps", "1"),
            ("sft_n", "200"),
            ("n_layer", "1"),
            ("d_model", "32"),
        ],
        runs.path(),
    );
    assert!(out.contains("| model (medium) | pass@1 |"), "{out}");
    for row in [
        "| SFT |",
        "| SFT + GRPO |",
        "| SFT + ReST 1 |",
        "| SFT + ReST 3 |",
    ] {
        assert!(out.contains(row), "{row} missing:\n{out}");
    }
    assert!(out.contains("ReST iteration 3: pass@1"), "{out}");
}
