//! Compression and adaptation through the real binary and plugins (issue 22):
//! `scripts/compress.rhai` runs its parts at CI size (distillation with each divergence, half of
//! the batches on-policy; pruning four ways with recovery, structured included; LoRA/QLoRA SFT
//! with a PEFT save and reload); LoRA adapters train under the aligners (`dpo`, `grpo`, `ppo`)
//! with the base frozen; structured and expert pruning replace the model in its variable and
//! the smaller model saves and loads; the script functions' errors name their causes.

use llmlab_e2e::*;

#[test]
fn compress_script_runs_distillation_pruning_and_lora_at_ci_size() {
    let runs = tempfile::tempdir().unwrap();
    let out = run_script(
        "scripts/compress.rhai",
        &[
            ("steps", "4"),
            ("student_steps", "2"),
            ("bytes", "30000"),
            ("vocab", "300"),
            ("d_model", "32"),
            ("ctx", "32"),
            ("windows", "4"),
            ("recover_steps", "2"),
            ("calibration_rows", "4"),
            ("on_policy", "0.5"),
            ("base_n", "200"),
            ("sft_n", "200"),
            ("base_steps", "2"),
            ("sft_steps", "2"),
            ("eval_n", "4"),
            ("name", "compress-ci"),
        ],
        runs.path(),
    );
    for line in [
        "| student from scratch |",
        "| distilled, forward_kl |",
        "| distilled, reverse_kl |",
        "| distilled, jsd |",
        "| magnitude | 0.5",
        "| wanda | 0.5",
        "| wanda 2:4 | 0.5",
        "| structured wanda (heads + FFN channels) |",
        "| full SFT |",
        "| LoRA r=8 |",
        "| QLoRA (q4_0 base) r=8 |",
        "adapters reloaded",
    ] {
        assert!(out.contains(line), "missing `{line}` in:\n{out}");
    }
    let adapters = runs.path().join("compress-ci/adapters");
    assert!(adapters.join("adapter_config.json").is_file());
    assert!(adapters.join("adapter_model.safetensors").is_file());
}

/// One aligner over a LoRA-adapted GPT: the adapters are the only parameters and they move, the
/// base's weights are bit-identical afterwards, and the adapted model's outputs changed. The
/// online aligners' reward is the completion's length: it differs within a group (GRPO's
/// advantages are not all zero) from the first step.
const LORA_ALIGNERS: &str = r#"
let tasks = corpus("arithmetic", #{ n: 48, digits: 1, seed: 1 });
let prefs = tasks.preferences(#{ seed: 2 });
let tok = tokenizer("bpe", #{ vocab_size: 260 });
tok.train(tasks);
let probe = [1, 2, 3, 4, 5, 6];
for kind in ["dpo", "grpo", "ppo"] {
    let m = model("gpt", #{ vocab_size: tok.vocab_size(), n_layer: 1, n_head: 2, d_model: 32, ctx: 24, seed: 5 });
    let base_norms = #{};
    for p in m.params().keys() { base_norms[p] = m.params()[p].norm(); }
    let base_logits = m.forward(probe).sum();
    let s = lora(m, #{ rank: 4, alpha: 8, targets: ["c_attn", "c_proj", "c_fc"] });
    let names = m.params().keys();
    let only_adapters = names.len() > 0;
    for p in names { if !p.contains("lora_") { only_adapters = false; } }
    let before = #{};
    for p in names { before[p] = m.params()[p].norm(); }
    let metrics = if kind == "dpo" {
        rl("dpo", #{ steps: 4, batch_size: 8, lr: 0.05, warmup: 0, beta: 0.5, eval_every: 0, seed: 3 })
            .fit(m, prefs, tok)
    } else {
        let cfg = #{ steps: 3, batch_size: 4, max_tokens: 3, lr: 0.05, warmup: 0, seed: 3, log_every: 1 };
        if kind == "grpo" { cfg.group_size = 4; } else { cfg.minibatch_size = 8; }
        rl(kind, cfg).fit(m, tasks, tok, |prompt, completion| completion.len().to_float())
    };
    let moved = 0;
    for p in names { if m.params()[p].norm() != before[p] { moved += 1; } }
    let adapted_logits = m.forward(probe).sum();
    lora(m, ());
    let base_same = true;
    for p in base_norms.keys() { if m.params()[p].norm() != base_norms[p] { base_same = false; } }
    let base_again = m.forward(probe).sum();
    print(`${kind}: adapters only ${only_adapters} (${names.len()} tensors, ${s.trainable} of ${s.total}); moved ${moved}; base unchanged ${base_same && base_again == base_logits}; outputs changed ${adapted_logits != base_logits}; loss ${metrics.loss}`);
}
"#;

#[test]
fn lora_adapters_train_under_dpo_grpo_and_ppo_with_the_base_frozen() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_inline_script("lora_aligners", LORA_ALIGNERS, &[], dir.path());
    for kind in ["dpo", "grpo", "ppo"] {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("{kind}: ")))
            .unwrap_or_else(|| panic!("no {kind} line in:\n{out}"));
        assert!(line.contains("adapters only true"), "{line}");
        assert!(line.contains("base unchanged true"), "{line}");
        assert!(line.contains("outputs changed true"), "{line}");
        let moved: usize = line
            .split("moved ")
            .nth(1)
            .and_then(|r| r.split(';').next())
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no moved count in {line}"));
        assert!(moved > 0, "no adapter moved: {line}");
    }
}

#[test]
fn structured_and_expert_pruning_replace_the_model_and_it_saves_smaller() {
    let dir = tempfile::tempdir().unwrap();
    let script = r#"
        let data = corpus("stories", #{ bytes: 20000, seed: 3 });
        let tok = tokenizer("bpe", #{ vocab_size: 280 });
        tok.train(data);
        let ds = tok.encode(data, #{ val_fraction: 0.1, out: run_dir() + "/data" });
        let m = model("gpt", #{ vocab_size: tok.vocab_size(), n_layer: 2, n_head: 4, d_model: 32, ctx: 16 });
        let kept = m;
        let before = m.num_params();
        let report = prune(m, #{ pattern: "structured", method: "wanda", sparsity: 0.5, calibration: ds, calibration_rows: 4 });
        print(`structured: ${before} -> ${m.num_params()} (report ${report.params.after}); heads ${m.config().n_head}, ffn ${m.config().ffn_hidden}; the other variable keeps ${kept.num_params()}`);
        m.save(run_dir() + "/small");
        let back = model_load(run_dir() + "/small");
        print(`reloaded: ${back.num_params()} params, same logits ${back.forward([1, 2, 3]).sum() == m.forward([1, 2, 3]).sum()}`);
        let copy = pruned(kept, #{ pattern: "structured", sparsity: 0.25, skip: ["mlp"] });
        print(`pruned copy: heads ${copy.config().n_head}, original heads ${kept.config().n_head}`);
        let moe = model("gpt", #{ vocab_size: tok.vocab_size(), n_layer: 2, n_head: 2, d_model: 32, ctx: 16,
                                  moe: #{ experts: 4, top_k: 1, router: "switch" } });
        let r = prune(moe, #{ pattern: "experts", sparsity: 0.5, calibration: ds, calibration_rows: 4 });
        print(`experts: ${r.experts.before} -> ${moe.config().moe.experts}, removed ${r.layers[0].experts_removed}`);
        try { prune(m, #{ pattern: "experts", sparsity: 0.5, calibration: ds }); } catch (e) { print(`dense experts: ${e}`); }
    "#;
    let out = run_inline_script("structured", script, &[], dir.path());
    let line = |prefix: &str| {
        out.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no `{prefix}` line in:\n{out}"))
            .to_string()
    };
    let structured = line("structured: ");
    let numbers: Vec<usize> = structured
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    // before, after, report after, heads, ffn, the other variable's count.
    assert_eq!(numbers.len(), 6, "{structured}");
    assert!(numbers[1] < numbers[0], "{structured}");
    assert_eq!(numbers[1], numbers[2], "{structured}");
    assert_eq!((numbers[3], numbers[4]), (2, 64), "{structured}");
    assert_eq!(numbers[5], numbers[0], "{structured}");
    assert!(
        line("reloaded: ").contains(&format!("{} params, same logits true", numbers[1])),
        "{out}"
    );
    assert_eq!(
        line("pruned copy: "),
        "pruned copy: heads 3, original heads 4"
    );
    assert!(
        line("experts: ").starts_with("experts: 4 -> 2, removed"),
        "{out}"
    );
    assert!(line("dense experts: ").contains("no `moe`"), "{out}");
}

#[test]
fn compress_functions_report_bad_input_with_its_cause() {
    let script = r#"
        let gpt = model("gpt", #{ vocab_size: 64, n_layer: 1, n_head: 2, d_model: 32, ctx: 16 });
        try { lora(gpt, #{ rank: 4, targets: ["q_proj"] }); } catch (e) { print(`bad target: ${e}`); }
        try { trainer("distill", #{ teacher: 3 }); } catch (e) { print(`bad teacher: ${e}`); }
        try { trainer("lm", #{ teacher: gpt }); } catch (e) { print(`lm teacher: ${e}`); }
        try { prune(gpt, #{ method: "wanda", sparsity: 0.5 }); } catch (e) { print(`no calibration: ${e}`); }
        try { pruned(gpt, #{ method: "magnitude", sparsity: 0.5 }); } catch (e) { print(`pruned masks: ${e}`); }
        let s = lora(gpt, #{ rank: 2 });
        print(`trainable ${s.trainable} of ${s.total}`);
        try { prune(gpt, #{ pattern: "structured", sparsity: 0.5 }); } catch (e) { print(`lora structured: ${e}`); }
        lora(gpt, ());
        print(`removed: ${gpt.num_params()}`);
    "#;
    let dir = tempfile::tempdir().unwrap();
    let out = run_inline_script("compress_errors", script, &[], dir.path());
    assert!(
        out.contains("bad target: ") && out.contains("q_proj") && out.contains("c_attn"),
        "{out}"
    );
    assert!(
        out.contains("bad teacher: ") && out.contains("must be a model"),
        "{out}"
    );
    assert!(
        out.contains("lm teacher: ") && out.contains("teacher"),
        "{out}"
    );
    assert!(
        out.contains("no calibration: ") && out.contains("calibration"),
        "{out}"
    );
    assert!(
        out.contains("pruned masks: ") && out.contains("in place"),
        "{out}"
    );
    assert!(
        out.contains("lora structured: ") && out.contains("LoRA adapters"),
        "{out}"
    );
    assert!(out.contains("trainable "), "{out}");
}
