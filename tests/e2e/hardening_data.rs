//! Issue 29, "no data loss": the real binary, killed and interrupted the ways a hostile user or a
//! scheduler does it. A failed re-encode keeps the old dataset; a second process on the same run
//! is refused naming the first's pid; SIGTERM stops training with a checkpoint; a resume after
//! `kill -9` rewinds `metrics.jsonl` to the checkpoint and removes the dead process's temp files;
//! a checkpoint over `ulimit -f` fails with EFBIG (not a silent SIGXFSZ death) and keeps the
//! previous checkpoint.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use llmlab_e2e::*;

/// `llmlab run script --set name=<name> --set runs_dir=<root>`, waiting for it to end.
fn run(root: &Path, name: &str, script: &str) -> Output {
    spawn(root, name, script).wait_with_output().unwrap()
}

fn spawn(root: &Path, name: &str, script: &str) -> Child {
    spawn_with(Command::new(llmlab_binary()), root, name, script)
}

fn spawn_with(mut command: Command, root: &Path, name: &str, script: &str) -> Child {
    let file = root.join(format!("{name}-{}.rhai", unique()));
    std::fs::write(&file, script).unwrap();
    command
        .args([
            "run",
            file.to_str().unwrap(),
            "--set",
            &format!("name={name}"),
        ])
        .args(["--set", &format!("runs_dir={}", root.display())])
        .current_dir(repo_root())
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn unique() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// Waits until `metrics.jsonl` in `dir` holds at least `lines` records.
fn wait_for_metrics(dir: &Path, lines: usize, child: &mut Child) {
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap_or_default();
        if text.lines().count() >= lines {
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            panic!("training ended ({status}) before {lines} metrics lines: {err}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "training never logged {lines} steps"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn finish(mut child: Child) -> (std::process::ExitStatus, String, String) {
    let status = child.wait().unwrap();
    let (mut out, mut err) = (String::new(), String::new());
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status, out, err)
}

/// The steps recorded in a run's `metrics.jsonl`, in order.
fn metric_steps(dir: &Path) -> Vec<u64> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|line| {
            let value: llmlab_plugin_api::serde_json::Value =
                llmlab_plugin_api::serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("bad metrics line {line:?}: {e}"));
            value["step"].as_u64().unwrap()
        })
        .collect()
}

/// The step of the checkpoint a resume would use: `checkpoint/`, or `.checkpoint.old/` when a
/// kill landed between the two renames of a checkpoint write.
fn checkpoint_step(dir: &Path) -> u64 {
    let text = std::fs::read_to_string(dir.join("checkpoint/trainer.json"))
        .or_else(|_| std::fs::read_to_string(dir.join(".checkpoint.old/trainer.json")))
        .unwrap();
    let value: llmlab_plugin_api::serde_json::Value =
        llmlab_plugin_api::serde_json::from_str(&text).unwrap();
    value["step"].as_u64().unwrap()
}

/// A pid that no longer runs.
fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

/// Trains a tiny model on stories for `steps`, saving the tokenizer and dataset in the run dir
/// so that [`RESUME`] can continue it.
fn train_script(steps: u64, checkpoint_every: u64) -> String {
    format!(
        r#"let data = corpus("stories", #{{ bytes: 40000, seed: 3 }});
let tok = tokenizer("bpe", #{{ vocab_size: 300 }});
tok.train(data);
tok.save(run_dir() + "/tok.json");
let ds = tok.encode(data, #{{ val_fraction: 0.1, out: run_dir() + "/data" }});
let m = model("gpt", #{{ vocab_size: tok.vocab_size(), n_layer: 1, d_model: 32, n_head: 2, ctx: 32 }});
trainer("lm", #{{ steps: {steps}, batch_size: 4, eval_every: 0, log_every: 1, checkpoint_every: {checkpoint_every} }}).fit(m, ds);
print("trained");
"#
    )
}

/// Resumes the run of [`train_script`] up to `steps`.
fn resume_script(steps: u64) -> String {
    format!(
        r#"let tok = tokenizer_load(run_dir() + "/tok.json");
let ds = dataset_load(run_dir() + "/data", tok);
let m = model("gpt", #{{ vocab_size: tok.vocab_size(), n_layer: 1, d_model: 32, n_head: 2, ctx: 32 }});
trainer("lm", #{{ steps: {steps}, batch_size: 4, eval_every: 0, log_every: 1, checkpoint_every: 0, resume: run_dir() }}).fit(m, ds);
print("resumed");
"#
    )
}

#[test]
fn a_failed_encode_keeps_the_previous_dataset() {
    let root = tempfile::tempdir().unwrap();
    let broken = root.path().join("broken.txt");
    // Valid text, then a byte that is not UTF-8 well into the file.
    let mut bytes = b"once upon a time there was a cat. ".repeat(2000);
    bytes.extend_from_slice(&[b'x', 0xff, 0xfe, b'y']);
    std::fs::write(&broken, bytes).unwrap();
    let script = format!(
        r#"let good = corpus("stories", #{{ bytes: 20000, seed: 1 }});
let tok = tokenizer("bpe", #{{ vocab_size: 300 }});
tok.train(good);
let out = run_dir() + "/data";
let ds = tok.encode(good, #{{ out: out }});
print("before " + ds.len());
try {{
    tok.encode(corpus("{}"), #{{ out: out }});
    print("the broken encode succeeded");
}} catch (e) {{
    print("encode failed: " + e);
}}
let again = dataset_load(out, tok);
print("after " + again.len());
"#,
        broken.display()
    );
    let output = run(root.path(), "encode", &script);
    let out = stdout(&output);
    assert!(output.status.success(), "{out}\n{}", stderr(&output));
    assert!(
        out.contains("encode failed") && out.contains("UTF-8"),
        "{out}"
    );
    let before = out.lines().find_map(|l| l.strip_prefix("before ")).unwrap();
    let after = out.lines().find_map(|l| l.strip_prefix("after ")).unwrap();
    assert_eq!(before, after, "the dataset that opens is the first one");
    let data = root.path().join("encode/data");
    let leftovers: Vec<_> = std::fs::read_dir(root.path().join("encode"))
        .unwrap()
        .chain(std::fs::read_dir(&data).unwrap())
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_second_process_is_refused_and_sigterm_stops_with_a_checkpoint() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("shared");
    let mut first = spawn(root.path(), "shared", &train_script(1_000_000, 0));
    wait_for_metrics(&dir, 3, &mut first);

    // Item 2: the same run name from a second process.
    let second = run(root.path(), "shared", &train_script(10, 0));
    let err = stderr(&second);
    assert!(!second.status.success());
    assert!(
        err.contains(&format!("in use by process {}", first.id()))
            && err.contains(&dir.display().to_string()),
        "{err}"
    );
    let lines = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    assert!(
        lines
            .lines()
            .all(|l| l.starts_with('{') && l.ends_with('}')),
        "metrics.jsonl was not interleaved"
    );

    // Item 3: SIGTERM, as `kill` and schedulers send it.
    let sent = Instant::now();
    signal(&first, "TERM");
    let (status, out, err) = finish(first);
    assert!(
        sent.elapsed() < Duration::from_secs(20),
        "took {:?}",
        sent.elapsed()
    );
    assert_eq!(
        status.code(),
        Some(1),
        "an error exit, not death by signal: {err}"
    );
    assert!(err.contains("cancelled by Ctrl-C or SIGTERM"), "{err}");
    assert!(!out.contains("trained"), "{out}");
    let steps = metric_steps(&dir);
    assert_eq!(checkpoint_step(&dir), *steps.last().unwrap());
}

#[test]
fn resume_after_kill_9_rewinds_metrics_and_cleans_temps_and_ulimit_keeps_the_checkpoint() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("crash");
    let mut child = spawn(root.path(), "crash", &train_script(1_000_000, 5));
    wait_for_metrics(&dir, 13, &mut child);
    signal(&child, "KILL");
    let (status, _, _) = finish(child);
    assert!(!status.success());
    let saved = checkpoint_step(&dir);
    let logged = *metric_steps(&dir).last().unwrap();
    assert!(
        saved >= 10 && logged >= saved,
        "checkpoint {saved}, logged {logged}"
    );
    // Metrics are recorded before the checkpoint of the same step, so the log is never behind
    // it. The kill can land right after a checkpoint; then add what a later kill leaves: records
    // past the checkpoint and a torn last line.
    let mut metrics = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join("metrics.jsonl"))
        .unwrap();
    if logged == saved {
        writeln!(metrics, "{{\"step\": {}, \"loss\": 1.0}}", saved + 1).unwrap();
    }
    write!(metrics, "{{\"step\": {}, \"lo", logged + 1).unwrap();
    drop(metrics);
    // What a kill -9 in the middle of writing leaves behind.
    let dead = dead_pid();
    let stale: Vec<PathBuf> = vec![
        dir.join(format!(".checkpoint.tmp-{dead}")),
        dir.join(format!(".metrics.jsonl.tmp-{dead}")),
    ];
    std::fs::create_dir(&stale[0]).unwrap();
    std::fs::write(stale[0].join("model.safetensors"), vec![0u8; 4096]).unwrap();
    std::fs::write(&stale[1], b"{}").unwrap();

    // Item 4: the resumed run writes every step once.
    let target = saved + 3;
    let output = run(root.path(), "crash", &resume_script(target));
    assert!(
        output.status.success(),
        "{}\n{}",
        stdout(&output),
        stderr(&output)
    );
    let steps = metric_steps(&dir);
    assert_eq!(
        steps,
        (1..=target).collect::<Vec<_>>(),
        "each step once, in order"
    );
    for path in &stale {
        assert!(!path.exists(), "{} was not removed", path.display());
    }
    assert_eq!(checkpoint_step(&dir), target);

    // Item 7: a checkpoint larger than `ulimit -f` allows (64 KiB; the model alone is ~100 KB).
    let mut limited = Command::new("bash");
    limited.args([
        "-c",
        r#"ulimit -f 64 && exec "$0" "$@""#,
        llmlab_binary().to_str().unwrap(),
    ]);
    let child = spawn_with(limited, root.path(), "crash", &resume_script(target + 2));
    let (status, _, err) = finish(child);
    assert_eq!(
        status.code(),
        Some(1),
        "an error exit, not death by SIGXFSZ: {status} {err}"
    );
    assert!(err.contains("File too large"), "{err}");
    assert_eq!(
        checkpoint_step(&dir),
        target,
        "the previous checkpoint stays"
    );
    let temps: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(temps.is_empty(), "{temps:?}");
    // And it still resumes.
    let output = run(root.path(), "crash", &resume_script(target + 2));
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(checkpoint_step(&dir), target + 2);
}
