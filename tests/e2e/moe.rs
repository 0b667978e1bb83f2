//! Mixture of Experts through the real binary and plugins: `scripts/moe_stories.rhai` at CI size
//! prints its tables, writes the router metrics into `metrics.jsonl` and draws `experts.png`;
//! `m.router_stats(ids)` answers from Rhai; a run with the aux-free bias resumes bit-exactly
//! (the bias and its pending load are state saved in the checkpoint).

use llmlab_e2e::*;

#[test]
fn moe_stories_script_prints_both_tables_and_draws_expert_load() {
    let runs = tempfile::tempdir().unwrap();
    let out = run_script(
        "scripts/moe_stories.rhai",
        &[
            ("steps", "4"),
            ("bytes", "50000"),
            ("d_model", "32"),
            ("ctx", "32"),
            ("batch_size", "4"),
            ("experts", "4"),
            ("vocab_size", "300"),
            ("name", "moe-ci"),
        ],
        runs.path(),
    );
    for line in [
        "| dense (= active) |",
        "| dense (= total) |",
        "| MoE 4x top-2 |",
        "| block | e0 | e1 | e2 | e3 |",
        "| topk, aux-free bias |",
        "| topk, none |",
        "| switch (top-1, cf 1.25), aux loss |",
        "| expert choice (cf 1.25) |",
    ] {
        assert!(out.contains(line), "missing `{line}` in:\n{out}");
    }
    let run = runs.path().join("moe-ci");
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    for key in [
        "moe.h0.load.0",
        "moe.h1.entropy",
        "moe.max_load",
        "aux_loss",
    ] {
        assert!(metrics.contains(key), "metrics.jsonl has no {key}");
    }
    let png = std::fs::read(run.join("experts.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");
}

/// Trains `steps` (8) steps with the aux-free bias; with `stop_after` it stops there, step by
/// step, under the same 8-step schedule (a run of fewer `steps` would decay the learning rate
/// sooner, and could never match); with `from` it resumes that run's checkpoint.
const RESUME_SCRIPT: &str = r#"
let data = corpus("stories", #{ bytes: 30000, seed: 7 });
let tok = tokenizer("bpe", #{ vocab_size: 300 });
tok.train(data);
let ds = tok.encode(data, #{ val_fraction: 0.1, out: run_dir() + "/data" });
let m = model("gpt", #{ vocab_size: tok.vocab_size(), n_layer: 2, n_head: 2, d_model: 32,
    ctx: 16, seed: 1, moe: #{ experts: 4, top_k: 2, balance: "aux_free", bias_update_rate: 0.05 } });
let cfg = #{ steps: 8, batch_size: 4, lr: 1e-2, warmup: 0, eval_every: 0,
    checkpoint_every: 4, log_every: 1, seed: 3 };
let from = setting("from", "");
if from != "" { cfg.resume = from; }
let tr = trainer("lm", cfg);
let stop_after = setting("stop_after", 0);
if stop_after > 0 {
    for i in 0..stop_after { tr.step(m, ds); }
    print(`stopped at ${tr.steps_done()}`);
} else {
    let r = tr.fit(m, ds);
    print(`final loss ${r.loss}`);
    let s = m.router_stats([[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]]);
    print(`loads ${s.layers[0].load} ${s.layers[1].load}`);
}
try { model("gpt", #{ vocab_size: 16, moe: #{ router: "switch" } }); }
catch (e) { print(`refused: ${e}`); }
"#;

#[test]
fn aux_free_moe_run_resumes_bit_exactly_and_router_stats_answer_from_rhai() {
    let dir = tempfile::tempdir().unwrap();
    let run = |settings: &[(&str, &str)]| {
        run_inline_script("moe_resume", RESUME_SCRIPT, settings, dir.path())
    };
    let straight = run(&[("name", "straight")]);
    let half = run(&[("name", "half"), ("stop_after", "4")]);
    assert!(half.contains("stopped at 4"), "{half}");
    let from = dir.path().join("half").display().to_string();
    let resumed = run(&[("name", "resumed"), ("from", &from)]);
    let tail = |out: &str| -> Vec<String> {
        out.lines()
            .filter(|l| l.starts_with("final loss ") || l.starts_with("loads "))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(tail(&straight).len(), 2, "{straight}");
    assert_eq!(tail(&straight), tail(&resumed), "resumed run differs");
    assert!(
        straight.contains("refused:") && straight.contains("moe.top_k"),
        "{straight}"
    );
}
