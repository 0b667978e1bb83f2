//! The README's first command, in CI size: the quickstart runs end to end with the real plugins
//! and leaves a complete run directory behind.

use llmlab_e2e::*;

#[test]
fn quickstart_runs_and_writes_a_complete_run_directory() {
    let runs = tempfile::tempdir().unwrap();
    let out = run_script(
        "scripts/quickstart.rhai",
        &[
            ("steps", "12"),
            ("bytes", "150000"),
            ("name", "quickstart-ci"),
        ],
        runs.path(),
    );
    assert!(out.contains("entropy floor"), "{out}");
    assert!(out.contains("above the floor"), "{out}");

    let run = runs.path().join("quickstart-ci");
    for file in [
        "script.rhai",
        "plugins.json",
        "metrics.jsonl",
        "loss.png",
        "lr.png",
        "tokenizer.json",
        "configs/trainer-lm.json",
        "configs/model-gpt.json",
        "checkpoint/model.safetensors",
        "checkpoint/optimizer.safetensors",
        "checkpoint/trainer.json",
        "model/model.safetensors",
        "model/config.json",
        "data/train.bin",
        "data/val.bin",
        "data/dataset.json",
    ] {
        let path = run.join(file);
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        assert!(size > 0, "{} is missing or empty", path.display());
    }
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let last = metrics.lines().last().unwrap();
    assert!(
        last.contains("\"step\":12") && last.contains("val_loss"),
        "{last}"
    );
    let plugins = std::fs::read_to_string(run.join("plugins.json")).unwrap();
    assert!(
        plugins.contains("gpt") && plugins.contains("tokenizers") && plugins.contains("lm-trainer"),
        "{plugins}"
    );
}
