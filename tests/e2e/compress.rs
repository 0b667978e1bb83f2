//! Compression and adaptation through the real binary and plugins (issue 22):
//! `scripts/compress.rhai` runs its three parts at CI size (distillation with each divergence,
//! half of the batches on-policy; pruning three ways with recovery; LoRA/QLoRA SFT with a PEFT
//! save and reload), and the script functions' errors name their causes.

use llmlab_e2e::*;

#[test]
fn compress_script_runs_distillation_pruning_and_lora_at_ci_size() {
    let runs = tempfile::tempdir().unwrap();
    let sets = [
        "steps=4",
        "student_steps=2",
        "bytes=30000",
        "vocab=300",
        "d_model=32",
        "ctx=32",
        "windows=4",
        "recover_steps=2",
        "calibration_rows=4",
        "on_policy=0.5",
        "base_n=200",
        "sft_n=200",
        "base_steps=2",
        "sft_steps=2",
        "eval_n=4",
        "name=compress-ci",
    ];
    let mut args = vec!["run".to_string(), "scripts/compress.rhai".to_string()];
    for s in sets {
        args.push("--set".into());
        args.push(s.into());
    }
    args.push("--set".into());
    args.push(format!("runs_dir={}", runs.path().display()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = llmlab(&args, "");
    let (out, err) = (stdout(&output), stderr(&output));
    assert!(
        output.status.success(),
        "compress.rhai failed:\n{out}\n{err}"
    );
    for line in [
        "| student from scratch |",
        "| distilled, forward_kl |",
        "| distilled, reverse_kl |",
        "| distilled, jsd |",
        "| magnitude | 0.5",
        "| wanda | 0.5",
        "| wanda 2:4 | 0.5",
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

#[test]
fn compress_functions_report_bad_input_with_its_cause() {
    let script = r#"
        let gpt = model("gpt", #{ vocab_size: 64, n_layer: 1, n_head: 2, d_model: 32, ctx: 16 });
        try { lora(gpt, #{ rank: 4, targets: ["q_proj"] }); } catch (e) { print(`bad target: ${e}`); }
        try { trainer("distill", #{ teacher: 3 }); } catch (e) { print(`bad teacher: ${e}`); }
        try { trainer("lm", #{ teacher: gpt }); } catch (e) { print(`lm teacher: ${e}`); }
        try { prune(gpt, #{ method: "wanda", sparsity: 0.5 }); } catch (e) { print(`no calibration: ${e}`); }
        let s = lora(gpt, #{ rank: 2 });
        print(`trainable ${s.trainable} of ${s.total}`);
        lora(gpt, ());
        print(`removed: ${gpt.num_params()}`);
    "#;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("compress_errors.rhai");
    std::fs::write(&path, script).unwrap();
    let runs = format!("runs_dir={}", dir.path().display());
    let output = llmlab(&["run", path.to_str().unwrap(), "--set", &runs], "");
    let (out, err) = (stdout(&output), stderr(&output));
    assert!(output.status.success(), "{out}\n{err}");
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
    assert!(out.contains("trainable "), "{out}");
}
