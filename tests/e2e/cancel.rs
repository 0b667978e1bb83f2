//! Ctrl-C during training, as a user presses it: SIGINT to `llmlab run` stops the trainer after
//! its current step, a checkpoint is written, and the process ends promptly with the reason.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use llmlab_e2e::*;

#[test]
fn sigint_stops_training_with_a_checkpoint() {
    let runs = tempfile::tempdir().unwrap();
    let script = runs.path().join("long.rhai");
    std::fs::write(
        &script,
        r#"let data = corpus("stories", #{ bytes: 60000, seed: 3 });
let tok = tokenizer("bpe", #{ vocab_size: 300 });
tok.train(data);
let ds = tok.encode(data, #{ val_fraction: 0.1, out: run_dir() + "/data" });
let m = model("gpt", #{ vocab_size: tok.vocab_size(), n_layer: 1, d_model: 32, n_head: 2, ctx: 32 });
print("training");
trainer("lm", #{ steps: 1000000, batch_size: 4, eval_every: 0, checkpoint_every: 0 }).fit(m, ds);
print("not reached");
"#,
    )
    .unwrap();
    let mut child = Command::new(llmlab_binary())
        .args(["run", script.to_str().unwrap(), "--set", "name=cancel"])
        .args(["--set", &format!("runs_dir={}", runs.path().display())])
        .current_dir(repo_root())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until training has started and made some steps.
    let metrics = runs.path().join("cancel/metrics.jsonl");
    let started = Instant::now();
    while std::fs::metadata(&metrics).map(|m| m.len()).unwrap_or(0) == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "training never logged a step"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let pressed = Instant::now();
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let code = child.wait().unwrap();
    let stopped_in = pressed.elapsed();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();

    assert!(!code.success(), "a cancelled run reports failure");
    let run_dir = runs.path().join("cancel");
    assert!(
        err.contains("cancelled by Ctrl-C") && err.contains(&run_dir.display().to_string()),
        "{err}"
    );
    assert!(!out.contains("not reached"), "{out}");
    assert!(
        stopped_in < Duration::from_secs(10),
        "took {stopped_in:?} to stop"
    );
    let checkpoint = runs.path().join("cancel/checkpoint");
    for file in ["model.safetensors", "optimizer.safetensors", "trainer.json"] {
        assert!(
            checkpoint.join(file).is_file(),
            "no {file} in the checkpoint written on Ctrl-C"
        );
    }
}
