//! Hyperparameter sweeps through the real binary: a CI-size TPE sweep whose trainer reports to
//! its trial and whose hopeless trial ASHA prunes (the trainer stops with a checkpoint), trials in
//! worker processes, a throwing trial recorded as failed with its message, resume by name, the
//! records, plots, `best.rhai`, `sweep_load` and `llmlab sweep status`.

use std::path::Path;

use llmlab_e2e::*;

/// The tiny data and model every trial here trains: seconds on CPU.
const PREFIX: &str = r#"
let data = corpus("stories", #{ bytes: 20000, seed: 3 });
let tok = tokenizer("bpe", #{ vocab_size: 300 });
tok.train(data);
let ds = tok.encode(data, #{ val_fraction: 0.1 });
let objective = |trial| {
    let p = trial.params;
    let gpt = model("gpt", #{ vocab_size: tok.vocab_size(), n_layer: 1, n_head: 2,
                              d_model: p.width, ctx: 16 });
    trainer("lm", #{ steps: 8, batch_size: 4, lr: p.lr, min_lr: p.lr / 10.0, warmup: 0, eval_every: 2,
                     eval_batches: 2, log_every: 1, trial: trial }).fit(gpt, ds)
};
"#;

fn run_sweep_script(dir: &Path, name: &str, body: &str) -> (bool, String, String) {
    let path = dir.join(format!("{name}.rhai"));
    std::fs::write(&path, format!("{PREFIX}\n{body}")).unwrap();
    let output = run_script_output(path.to_str().unwrap(), &[], dir);
    (output.status.success(), stdout(&output), stderr(&output))
}

fn trial_lines(dir: &Path, sweep: &str) -> Vec<String> {
    std::fs::read_to_string(dir.join(sweep).join("trials.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn trainer_reports_to_its_trial_and_asha_prunes_the_hopeless_one() {
    let dir = tempfile::tempdir().unwrap();
    // Grid order: lr 3e-3 first (it learns), then 1e-6 (it cannot): at the first rung (step 2)
    // the second is worse than the only other value there and ASHA stops it.
    let (ok, out, err) = run_sweep_script(
        dir.path(),
        "prune",
        r#"
let r = sweep(#{ lr: grid([3e-3, 1e-6]), width: grid([16]) }, objective,
              #{ method: "grid", pruner: #{ kind: "asha", reduction_factor: 3 }, name: "prune" });
print(`best trial ${r.best_trial} value ${r.best_value} steps ${r.total_steps}`);
let again = sweep_load("prune");
print(`loaded ${again.trials.len()} trials, states ${again.trials[0].state} ${again.trials[1].state}`);
"#,
    );
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("best trial 0 value"), "{out}");
    assert!(
        out.contains("loaded 2 trials, states complete pruned"),
        "{out}"
    );
    let lines = trial_lines(dir.path(), "prune");
    assert_eq!(lines.len(), 2, "{lines:?}");
    // The complete trial reported every evaluation (2, 4, 6, 8); the pruned one stopped at 2.
    assert!(
        lines[0].contains("\"state\":\"complete\"") && lines[0].contains("[8,"),
        "{}",
        lines[0]
    );
    assert!(lines[1].contains("\"state\":\"pruned\""), "{}", lines[1]);
    assert!(
        !lines[1].contains("[4,"),
        "pruned trial went on: {}",
        lines[1]
    );
    // It stopped at its next step with its checkpoint written, like a Ctrl-C.
    let pruned = dir.path().join("prune/trials/0001");
    assert!(
        pruned.join("checkpoint/trainer.json").exists(),
        "no checkpoint in {}",
        pruned.display()
    );
    let metrics = std::fs::read_to_string(pruned.join("metrics.jsonl")).unwrap();
    let last_step = metrics
        .lines()
        .rev()
        .find_map(|l| l.split("\"step\":").nth(1))
        .unwrap_or("");
    assert!(
        last_step.starts_with('2') || last_step.starts_with('3'),
        "last metrics line step {last_step}"
    );
    for file in [
        "history.png",
        "params.png",
        "intermediate.png",
        "best.rhai",
        "sweep.json",
    ] {
        assert!(dir.path().join("prune").join(file).exists(), "no {file}");
    }
    let best = std::fs::read_to_string(dir.path().join("prune/best.rhai")).unwrap();
    assert!(
        best.contains("lr: 0.003,") && best.contains("width: 16,"),
        "{best}"
    );
    // The status table.
    let status = llmlab(
        &[
            "sweep",
            "status",
            "prune",
            "--runs-dir",
            dir.path().to_str().unwrap(),
        ],
        "",
    );
    let table = stdout(&status);
    assert!(status.status.success(), "{table}\n{}", stderr(&status));
    assert!(
        table.contains("2 trials (1 complete, 1 pruned, 0 failed)"),
        "{table}"
    );
    assert!(table.contains("   0*  complete"), "{table}");
    let missing = llmlab(
        &[
            "sweep",
            "status",
            "nope",
            "--runs-dir",
            dir.path().to_str().unwrap(),
        ],
        "",
    );
    assert!(!missing.status.success() && stderr(&missing).contains("no sweep nope"));
}

#[test]
fn parallel_trials_run_in_worker_processes_each_in_its_run_directory() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out, err) = run_sweep_script(
        dir.path(),
        "par",
        r#"
let r = sweep(#{ lr: log_uniform(1e-3, 1e-2), width: choice([16, 24]) }, objective,
              #{ method: "random", trials: 3, parallel: 2, seed: 5, name: "par" });
print(`done: ${r.trials.len()} trials, best ${r.best_value}`);
"#,
    );
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("done: 3 trials"), "{out}");
    let lines = trial_lines(dir.path(), "par");
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(
        lines.iter().all(|l| l.contains("\"state\":\"complete\"")),
        "{lines:?}"
    );
    for n in 0..3 {
        let trial = dir.path().join(format!("par/trials/{n:04}"));
        // The worker's session ran in the trial's directory; its output went to worker.log.
        assert!(trial.join("metrics.jsonl").exists(), "{}", trial.display());
        assert!(trial.join("worker.log").exists(), "{}", trial.display());
        assert!(
            trial.join("checkpoint/trainer.json").exists(),
            "{}",
            trial.display()
        );
    }
}

#[test]
fn a_throwing_trial_is_failed_with_its_message_and_resume_skips_finished_trials() {
    let dir = tempfile::tempdir().unwrap();
    let body = |trials: usize| {
        format!(
            r#"
let r = sweep(#{{ x: uniform(-1.0, 1.0) }}, |trial| {{
    print(`objective ran trial ${{trial.number}}`);
    if trial.number == 1 {{ throw "the objective broke on purpose"; }}
    let x = trial.params.x;
    x * x
}}, #{{ method: "random", trials: {trials}, seed: 2, name: "resume", metric: "loss" }});
print(`best ${{r.best_trial}}`);
"#
        )
    };
    let (ok, out, err) = run_sweep_script(dir.path(), "first", &body(3));
    assert!(ok, "{out}\n{err}");
    let lines = trial_lines(dir.path(), "resume");
    assert_eq!(lines.len(), 3);
    assert!(
        lines[1].contains("\"state\":\"failed\"")
            && lines[1].contains("the objective broke on purpose"),
        "{}",
        lines[1]
    );
    assert!(out.contains("trial 1 failed"), "{out}");
    let first: Vec<String> = lines.clone();
    // Same name, more trials: 0..2 are not run again, 3 and 4 are.
    let (ok, out, err) = run_sweep_script(dir.path(), "second", &body(5));
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("resuming with 3 finished trials"), "{out}");
    let ran: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("objective ran"))
        .collect();
    assert_eq!(
        ran,
        ["objective ran trial 3", "objective ran trial 4"],
        "{out}"
    );
    let lines = trial_lines(dir.path(), "resume");
    assert_eq!(lines.len(), 5);
    assert_eq!(
        lines[..3],
        first[..],
        "finished trials are kept as they were"
    );
    // A different space under the same name is refused, naming the key.
    let (ok, _out, err) = run_sweep_script(
        dir.path(),
        "third",
        r#"sweep(#{ y: uniform(0.0, 1.0) }, |t| 1.0, #{ method: "random", trials: 2, seed: 2, name: "resume", metric: "loss" });"#,
    );
    assert!(
        !ok && err.contains("space") && err.contains("another name"),
        "{err}"
    );
}

#[test]
fn sweep_lr_script_runs_at_ci_size() {
    let runs = tempfile::tempdir().unwrap();
    let out = run_script(
        "scripts/sweep_lr.rhai",
        &[
            ("trials", "3"),
            ("steps", "8"),
            ("bytes", "30000"),
            ("name", "ci"),
        ],
        runs.path(),
    );
    for line in [
        "random, no pruning: best val_loss",
        "TPE + ASHA:         best val_loss",
    ] {
        assert!(out.contains(line), "missing `{line}` in:\n{out}");
    }
    for sweep in ["ci-random", "ci-tpe"] {
        let lines = trial_lines(runs.path(), sweep);
        assert_eq!(lines.len(), 3, "{sweep}: {lines:?}");
    }
}

#[test]
fn a_worker_that_dies_is_a_failed_trial_and_the_sweep_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    // Trial 1's worker process ends with an error before it reaches the sweep (as a crash
    // would: no result message, a failing exit status); its neighbours are unaffected.
    let (ok, out, err) = run_sweep_script(
        dir.path(),
        "dies",
        r#"
if run_dir().contains("trials/0001") { throw "worker 1 dies before its trial"; }
let r = sweep(#{ x: uniform(-1.0, 1.0) }, |trial| trial.params.x * trial.params.x,
              #{ method: "random", trials: 3, parallel: 2, seed: 4, name: "dies", metric: "loss" });
print(`done: ${r.trials.len()} trials`);
"#,
    );
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("done: 3 trials"), "{out}");
    let lines = trial_lines(dir.path(), "dies");
    let by_number = |n: usize| {
        lines
            .iter()
            .find(|l| l.contains(&format!("\"number\":{n},")))
            .unwrap_or_else(|| panic!("no trial {n} in {lines:?}"))
            .clone()
    };
    assert!(by_number(0).contains("\"state\":\"complete\""), "{lines:?}");
    assert!(by_number(2).contains("\"state\":\"complete\""), "{lines:?}");
    let failed = by_number(1);
    assert!(
        failed.contains("\"state\":\"failed\"")
            && failed.contains("worker process ended")
            && failed.contains("worker 1 dies before its trial"),
        "{failed}"
    );
}

#[test]
fn ctrl_c_stops_the_running_trial_with_its_checkpoint_and_keeps_finished_ones() {
    let dir = tempfile::tempdir().unwrap();
    // Trial 0 finishes at once; trial 1 trains "forever" until the SIGINT.
    let script = dir.path().join("interrupt.rhai");
    std::fs::write(
        &script,
        format!(
            "{PREFIX}\n{}",
            r#"
let r = sweep(#{ lr: grid([3e-3, 2e-3]) }, |trial| {
    if trial.number == 0 { return 1.0; }
    let gpt = model("gpt", #{ vocab_size: tok.vocab_size(), n_layer: 1, n_head: 2, d_model: 16, ctx: 16 });
    trainer("lm", #{ steps: 1000000, batch_size: 4, lr: trial.params.lr, eval_every: 0,
                     checkpoint_every: 0, trial: trial }).fit(gpt, ds)
}, #{ method: "grid", name: "int", metric: "loss" });
print("not reached");
"#
        ),
    )
    .unwrap();
    let child = std::process::Command::new(llmlab_binary())
        .args(["run", script.to_str().unwrap()])
        .args(["--set", &format!("runs_dir={}", dir.path().display())])
        .current_dir(repo_root())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until trial 1's trainer has logged steps.
    let metrics = dir.path().join("int/trials/0001/metrics.jsonl");
    let started = std::time::Instant::now();
    while std::fs::metadata(&metrics).map(|m| m.len()).unwrap_or(0) == 0 {
        assert!(started.elapsed().as_secs() < 120, "trial 1 never trained");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = child.wait_with_output().unwrap();
    let (out, err) = (stdout(&output), stderr(&output));
    assert!(!output.status.success(), "{out}\n{err}");
    assert!(!out.contains("not reached"), "{out}");
    assert!(
        err.contains("sweep int interrupted: 1 finished trials kept"),
        "{err}"
    );
    let lines = trial_lines(dir.path(), "int");
    assert_eq!(
        lines.len(),
        1,
        "only the finished trial is recorded: {lines:?}"
    );
    assert!(lines[0].contains("\"number\":0,") || lines[0].contains("\"number\":0}"));
    let checkpoint = dir.path().join("int/trials/0001/checkpoint/trainer.json");
    assert!(
        checkpoint.exists(),
        "no checkpoint for the interrupted trial"
    );
}
