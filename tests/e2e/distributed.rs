//! Distributed training under a real `mpirun` (docs/distributed.md): 2 ranks × batch B train
//! exactly as 1 process × batch 2B (losses and final weights within float summation noise),
//! with and without ZeRO 1/2 (which hold fewer optimizer moments per rank), and so do the
//! aligners (DPO, KTO, GRPO, PPO, the reward model); a run checkpointed by 2 ranks resumes in 1,
//! and under ZeRO 2 in 2 bit-exactly (its moments gathered to rank 0 alone); a rank that hangs
//! or fails ends the job naming it; ranks with different configs are refused at start.
//!
//! Needs `mpirun` (Open MPI) and a binary built with `--features llmlab/mpi`; `.ci/run`
//! installs the one and builds the other, and sets LLMLAB_REQUIRE_MPI=1 so that CI fails rather
//! than skips. Elsewhere each test says why it skipped.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use llmlab_e2e::{llmlab_binary, repo_root, run_script, run_script_output, stderr, stdout};
use llmlab_plugin_api::safetensors::SafeTensors;

const SCRIPT: &str = "scripts/data_parallel.rhai";
/// CI size: a tiny GPT, a few steps, a global batch of 8 (4 rows per rank).
const SMALL: &[(&str, &str)] = &[
    ("bytes", "40000"),
    ("vocab_size", "300"),
    ("d_model", "32"),
    ("ctx", "16"),
    ("steps", "6"),
    ("batch_size", "8"),
];

/// `mpirun`, when the machine has it and the binary can join a job; else why the test skips.
fn mpi_ready() -> Option<PathBuf> {
    let Some(mpirun) = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("mpirun"))
            .find(|p| p.is_file())
    }) else {
        assert!(
            std::env::var_os("LLMLAB_REQUIRE_MPI").is_none(),
            "LLMLAB_REQUIRE_MPI is set but there is no mpirun on PATH"
        );
        eprintln!("skipped: no `mpirun` on PATH (apt-get install openmpi-bin libopenmpi-dev)");
        return None;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let script = dir.path().join("probe.rhai");
    std::fs::write(&script, "print(`mpi built: ${world().mpi}`);").expect("write probe");
    let probe = Command::new(llmlab_binary())
        .arg("run")
        .arg(&script)
        .current_dir(dir.path())
        .output()
        .expect("run llmlab");
    if !stdout(&probe).contains("mpi built: true") {
        assert!(
            std::env::var_os("LLMLAB_REQUIRE_MPI").is_none(),
            "LLMLAB_REQUIRE_MPI is set but llmlab was built without the mpi feature: {}{}",
            stdout(&probe),
            stderr(&probe)
        );
        eprintln!(
            "skipped: llmlab was built without MPI (cargo build --release --workspace --features llmlab/mpi)"
        );
        return None;
    }
    Some(mpirun)
}

/// `mpirun -np RANKS llmlab run SCRIPT --set ...`, ended after `limit` (a test must never hang).
fn mpirun(
    mpirun: &Path,
    ranks: usize,
    settings: &[(&str, &str)],
    runs: &Path,
    env: &[(&str, &str)],
    limit: Duration,
) -> Output {
    let mut cmd = Command::new(mpirun);
    cmd.args(["-np", &ranks.to_string(), "--oversubscribe"])
        .arg(llmlab_binary())
        .args(["run", SCRIPT]);
    for (k, v) in settings {
        cmd.args(["--set", &format!("{k}={v}")]);
    }
    cmd.args(["--set", &format!("runs_dir={}", runs.display())])
        .current_dir(repo_root())
        // As root (containers, CI) Open MPI wants both; harmless otherwise.
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        // Shared memory without cross-memory attach, which containers often forbid.
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
        .env("RAYON_NUM_THREADS", "1")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn mpirun");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for mpirun") {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let mut out = String::new();
            let _ = child.stdout.take().map(|mut s| s.read_to_string(&mut out));
            panic!("mpirun ran past {limit:?} (a hang, not an error naming a rank):\n{out}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let _ = child.stdout.take().map(|mut s| s.read_to_end(&mut out));
    let _ = child.stderr.take().map(|mut s| s.read_to_end(&mut err));
    Output {
        status,
        stdout: out,
        stderr: err,
    }
}

fn with<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut all = SMALL.to_vec();
    all.extend_from_slice(extra);
    all
}

/// `step -> loss` from a run's metrics.jsonl.
fn losses(run: &Path) -> HashMap<u64, f64> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).expect("metrics.jsonl");
    text.lines()
        .filter_map(|line| {
            let v: llmlab_plugin_api::serde_json::Value =
                llmlab_plugin_api::serde_json::from_str(line).ok()?;
            Some((v["step"].as_u64()?, v["loss"].as_f64()?))
        })
        .collect()
}

fn metric(run: &Path, step: u64, key: &str) -> f64 {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).expect("metrics.jsonl");
    text.lines()
        .filter_map(|l| {
            llmlab_plugin_api::serde_json::from_str::<llmlab_plugin_api::serde_json::Value>(l).ok()
        })
        .find(|v| v["step"].as_u64() == Some(step))
        .and_then(|v| v[key].as_f64())
        .unwrap_or_else(|| panic!("no `{key}` at step {step} in {}", run.display()))
}

/// The final checkpoint's weights.
fn weights(run: &Path) -> HashMap<String, Vec<f32>> {
    tensors(run, "model.safetensors")
}

/// The f32 tensors of one file of the final checkpoint.
fn tensors(run: &Path, file: &str) -> HashMap<String, Vec<f32>> {
    let bytes = std::fs::read(run.join("checkpoint").join(file))
        .unwrap_or_else(|e| panic!("the final checkpoint's {file} in {}: {e}", run.display()));
    let st = SafeTensors::deserialize(&bytes).expect("safetensors");
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            let values = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (name, values)
        })
        .collect()
}

/// Same losses at every step and same final weights, up to float summation noise (the ranks
/// sum gradients in another order than one process does).
fn assert_same_training(a: &Path, b: &Path, steps: u64) {
    assert_training_within(a, b, steps, 1e-4);
}

/// Losses at every step within `tolerance` (relative) and final weights within it (absolute);
/// 0 asks for the same bits.
fn assert_training_within(a: &Path, b: &Path, steps: u64, tolerance: f64) {
    let (la, lb) = (losses(a), losses(b));
    for step in 1..=steps {
        let (x, y) = (la[&step], lb[&step]);
        assert!(
            (x - y).abs() <= tolerance * x.abs().max(1.0),
            "step {step}: loss {x} in {} but {y} in {}",
            a.display(),
            b.display()
        );
    }
    let (wa, wb) = (weights(a), weights(b));
    assert_eq!(wa.len(), wb.len(), "same parameters");
    let mut worst = 0f32;
    for (name, va) in &wa {
        let vb = &wb[name];
        for (x, y) in va.iter().zip(vb) {
            worst = worst.max((x - y).abs());
        }
    }
    assert!(
        worst as f64 <= tolerance,
        "final weights differ by up to {worst} between {} and {}",
        a.display(),
        b.display()
    );
}

/// The same checkpoint `file` in two runs, tensor by tensor (but those named in `except`), up
/// to float summation noise.
fn assert_same_tensors(a: &Path, b: &Path, file: &str, except: &[&str]) {
    let (ta, tb) = (tensors(a, file), tensors(b, file));
    assert_eq!(ta.len(), tb.len(), "same tensors in {file}");
    for (name, va) in ta.iter().filter(|(n, _)| !except.contains(&n.as_str())) {
        for (x, y) in va.iter().zip(&tb[name]) {
            assert!((x - y).abs() < 1e-4, "{file}: {name}: {x} vs {y}");
        }
    }
}

/// The same value of metric `key` at `step` in two runs, up to float summation noise.
fn assert_same_metric(a: &Path, b: &Path, step: u64, key: &str) {
    let (x, y) = (metric(a, step, key), metric(b, step, key));
    assert!(
        (x - y).abs() <= 1e-4 * x.abs().max(1.0),
        "{key} at step {step}: {x} in {} but {y} in {}",
        a.display(),
        b.display()
    );
}

/// `mpirun -np ranks` of the script with `settings` (which name the run), which must succeed
/// within 300 s; returns the run's directory.
fn mpirun_ok(mpi: &Path, ranks: usize, settings: &[(&str, &str)], runs: &Path) -> PathBuf {
    let name = settings
        .iter()
        .rev()
        .find(|(k, _)| *k == "name")
        .map(|(_, v)| *v)
        .expect("settings name the run");
    let out = mpirun(mpi, ranks, settings, runs, &[], Duration::from_secs(300));
    assert!(
        out.status.success(),
        "mpirun -np {ranks} {name} failed:\n{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    runs.join(name)
}

/// The update phase of an online aligner (`base` settings) alone and on two ranks under ZeRO
/// `zero`, both under mpirun so both sample with one thread per process: `(one, two)` runs.
fn online_alone_and_on_two_ranks(
    mpi: &Path,
    runs: &Path,
    base: &[(&str, &str)],
    prefix: &str,
    zero: &str,
) -> (PathBuf, PathBuf) {
    let run = |ranks: usize, name: &str, data_parallel: &str, zero: &str| {
        let mut settings = with(base);
        settings.extend([
            ("name", name),
            ("data_parallel", data_parallel),
            ("zero", zero),
        ]);
        mpirun_ok(mpi, ranks, &settings, runs)
    };
    (
        run(1, &format!("{prefix}-one"), "false", "0"),
        run(2, &format!("{prefix}-two"), "true", zero),
    )
}

#[test]
fn two_ranks_with_batch_b_train_as_one_process_with_batch_2b_also_under_zero() {
    let Some(mpi) = mpi_ready() else { return };
    let runs = tempfile::tempdir().expect("temp dir");
    let limit = Duration::from_secs(300);
    // The reference: one process, no data parallelism, the whole global batch of 8.
    run_script(
        SCRIPT,
        &with(&[("name", "one"), ("data_parallel", "false")]),
        runs.path(),
    );
    let mut moments = Vec::new();
    for (name, zero) in [("two", "0"), ("zero1", "1"), ("zero2", "2")] {
        let out = mpirun(
            &mpi,
            2,
            &with(&[("name", name), ("zero", zero)]),
            runs.path(),
            &[],
            limit,
        );
        assert!(
            out.status.success(),
            "mpirun -np 2 (zero {zero}) failed:\n{}\n{}",
            stdout(&out),
            stderr(&out)
        );
        let text = stdout(&out);
        assert!(text.contains("rank 1 of 2 (mpi)"), "{text}");
        assert_same_training(&runs.path().join("one"), &runs.path().join(name), 6);
        // Rank 0 alone writes metrics and checkpoints; rank 1 keeps its own apart.
        assert!(runs.path().join(name).join("ranks").join("1").is_dir());
        assert!(!runs.path().join(name).join("ranks/1/checkpoint").exists());
        moments.push(metric(&runs.path().join(name), 6, "dp_moment_bytes"));
    }
    // ZeRO shards AdamW's moments: rank 0 holds about half of them (whole tensors, balanced).
    let (plain, zero1, zero2) = (moments[0], moments[1], moments[2]);
    assert!(zero1 < 0.6 * plain && zero1 > 0.4 * plain, "{moments:?}");
    assert!(zero2 < 0.6 * plain, "{moments:?}");
}

/// The aligners' update phase: DPO on 2 ranks × 4 pairs aligns exactly as one process with
/// the global batch of 8 (loss per step, final policy), plain and under ZeRO 2; so does KTO,
/// whose loss couples the batch through its KL estimate (gathered over the ranks), under ZeRO 1.
#[test]
fn dpo_on_two_ranks_with_batch_b_aligns_as_one_process_with_batch_2b() {
    let Some(mpi) = mpi_ready() else { return };
    let runs = tempfile::tempdir().expect("temp dir");
    for (loss, zeros) in [("sigmoid", &["0", "2"][..]), ("kto", &["1"][..])] {
        let one = format!("{loss}-one");
        let dpo = [("stage", "dpo"), ("pairs", "200"), ("loss", loss)];
        let mut settings = with(&dpo);
        settings.extend([("name", one.as_str()), ("data_parallel", "false")]);
        run_script(SCRIPT, &settings, runs.path());
        for zero in zeros {
            let name = format!("{loss}-zero{zero}");
            let mut settings = with(&dpo);
            settings.extend([("name", name.as_str()), ("zero", zero)]);
            let two = mpirun_ok(&mpi, 2, &settings, runs.path());
            assert_same_training(&runs.path().join(&one), &two, 6);
            // The step's gathered per-pair metrics are the global batch's, as alone.
            assert_same_metric(&runs.path().join(&one), &two, 6, "reward_margin");
            assert!(metric(&two, 6, "dp_comm_s") > 0.0);
            assert!(
                !two.join("ranks/1/checkpoint").exists(),
                "rank 0 alone writes"
            );
        }
    }
}

/// GRPO's update phase: one process and 2 ranks sample the same rollouts and take the same
/// updates; minibatches of 11 of the 32 completions split unevenly (5 + 6) and the loss is
/// averaged over tokens, so the ranks' weights must come from the minibatch's token count.
#[test]
fn grpo_updates_on_two_ranks_equal_one_process_also_on_uneven_minibatches() {
    let Some(mpi) = mpi_ready() else { return };
    let runs = tempfile::tempdir().expect("temp dir");
    let grpo = [
        ("stage", "grpo"),
        ("pairs", "200"),
        ("minibatch_size", "11"),
        ("aggregation", "token"),
    ];
    let (one, two) = online_alone_and_on_two_ranks(&mpi, runs.path(), &grpo, "grpo", "1");
    assert_same_training(&one, &two, 6);
    for key in ["reward_mean", "kl", "clip_fraction"] {
        assert_same_metric(&one, &two, 6, key);
    }
}

/// PPO's update phase, as GRPO's: the same rollouts, values and GAE on every rank; minibatches
/// of 3 of the 8 completions split unevenly (1 + 2, 1 + 1), both losses are token means, and the
/// value head is trained with the policy, under ZeRO 2.
#[test]
fn ppo_updates_on_two_ranks_equal_one_process_also_on_uneven_minibatches() {
    let Some(mpi) = mpi_ready() else { return };
    let runs = tempfile::tempdir().expect("temp dir");
    let ppo = [("stage", "ppo"), ("pairs", "200"), ("minibatch_size", "3")];
    let (one, two) = online_alone_and_on_two_ranks(&mpi, runs.path(), &ppo, "ppo", "2");
    assert_same_training(&one, &two, 6);
    assert_same_tensors(&one, &two, "value_head.safetensors", &[]);
    for key in ["reward_mean", "kl", "clip_fraction", "value_loss"] {
        assert_same_metric(&one, &two, 6, key);
    }
    assert!(
        !two.join("ranks/1/checkpoint").exists(),
        "rank 0 alone writes"
    );
}

/// The reward model: 2 ranks × 4 pairs train body and head as one process with the global batch
/// of 8, plain and under ZeRO 1, the gathered margins reporting the global batch; a global batch
/// that does not split over the ranks is refused naming both numbers.
#[test]
fn reward_model_on_two_ranks_with_batch_b_trains_as_one_process_with_batch_2b() {
    let Some(mpi) = mpi_ready() else { return };
    let runs = tempfile::tempdir().expect("temp dir");
    let reward = [("stage", "reward"), ("pairs", "200")];
    let mut settings = with(&reward);
    settings.extend([("name", "reward-one"), ("data_parallel", "false")]);
    run_script(SCRIPT, &settings, runs.path());
    let one = runs.path().join("reward-one");
    for zero in ["0", "1"] {
        let name = format!("reward-zero{zero}");
        let mut settings = with(&reward);
        settings.extend([("name", name.as_str()), ("zero", zero)]);
        let two = mpirun_ok(&mpi, 2, &settings, runs.path());
        assert_same_training(&one, &two, 6);
        // Not the bias: the ranking loss depends on r_c − r_r only, so its gradient is zero
        // but for rounding, which AdamW's normalisation turns into ±lr steps of either sign.
        assert_same_tensors(&one, &two, "head.safetensors", &["head.bias"]);
        for key in ["margin", "accuracy"] {
            assert_same_metric(&one, &two, 6, key);
        }
        assert!(two.join("reward_model").is_dir());
        assert!(
            !two.join("ranks/1/reward_model").exists() && !two.join("ranks/1/checkpoint").exists(),
            "rank 0 alone writes"
        );
    }
    let mut settings = with(&reward);
    settings.extend([("name", "reward-odd"), ("batch_size", "7")]);
    let out = mpirun(
        &mpi,
        2,
        &settings,
        runs.path(),
        &[],
        Duration::from_secs(120),
    );
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert!(!out.status.success(), "{all}");
    assert!(
        all.contains("`batch_size` = 7 (the global batch) does not split evenly over 2 ranks"),
        "{all}"
    );
}

#[test]
fn a_run_checkpointed_by_two_ranks_resumes_in_one() {
    let Some(mpi) = mpi_ready() else { return };
    let runs = tempfile::tempdir().expect("temp dir");
    run_script(
        SCRIPT,
        &with(&[("name", "straight"), ("data_parallel", "false")]),
        runs.path(),
    );
    let out = mpirun(
        &mpi,
        2,
        &with(&[("name", "split"), ("steps", "3"), ("zero", "1")]),
        runs.path(),
        &[],
        Duration::from_secs(300),
    );
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let split = runs.path().join("split");
    let resume = split.to_str().expect("UTF-8 path").to_string();
    run_script(
        SCRIPT,
        &with(&[
            ("name", "split"),
            ("resume", &resume),
            ("data_parallel", "false"),
        ]),
        runs.path(),
    );
    assert_same_training(&runs.path().join("straight"), &split, 6);

    // Under ZeRO 2 the moments reach the checkpoint through a gather to rank 0 alone; resumed
    // on 2 ranks, the run continues as if never interrupted, to the bit.
    let zero2 = [("zero", "2")];
    for (name, steps, resume) in [
        ("z2-straight", "6", None),
        ("z2-split", "3", None),
        ("z2-split", "6", Some(runs.path().join("z2-split"))),
    ] {
        let mut settings = with(&zero2);
        let resume = resume.map(|p| p.to_str().expect("UTF-8 path").to_string());
        settings.extend([("name", name), ("steps", steps)]);
        if let Some(resume) = &resume {
            settings.push(("resume", resume));
        }
        let out = mpirun(
            &mpi,
            2,
            &settings,
            runs.path(),
            &[],
            Duration::from_secs(300),
        );
        assert!(
            out.status.success(),
            "{name} ({steps} steps): {}\n{}",
            stdout(&out),
            stderr(&out)
        );
    }
    let (straight, split) = (
        runs.path().join("z2-straight"),
        runs.path().join("z2-split"),
    );
    assert_training_within(&straight, &split, 6, 0.0);
    assert_eq!(
        tensors(&straight, "optimizer.safetensors"),
        tensors(&split, "optimizer.safetensors"),
        "the gathered moments"
    );
}

#[test]
fn a_rank_that_hangs_or_fails_ends_the_job_naming_it() {
    let Some(mpi) = mpi_ready() else { return };
    let runs = tempfile::tempdir().expect("temp dir");
    let timeout = [("LLMLAB_COLLECTIVE_TIMEOUT_S", "3")];
    let out = mpirun(
        &mpi,
        2,
        &with(&[("name", "hang"), ("hang_rank", "1")]),
        runs.path(),
        &timeout,
        Duration::from_secs(120),
    );
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert!(!out.status.success(), "{all}");
    assert!(
        all.contains("rank 1 did not reach collective"),
        "the error names the hung rank:\n{all}"
    );
    let out = mpirun(
        &mpi,
        2,
        &with(&[("name", "fail"), ("fail_rank", "1")]),
        runs.path(),
        &timeout,
        Duration::from_secs(120),
    );
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert!(!out.status.success(), "{all}");
    assert!(all.contains("rank 1 fails on purpose"), "{all}");
    assert!(all.contains("rank 1 failed; ending the job"), "{all}");
}

#[test]
fn ranks_with_different_configs_are_refused_at_start() {
    let Some(mpi) = mpi_ready() else { return };
    let runs = tempfile::tempdir().expect("temp dir");
    let out = mpirun(
        &mpi,
        2,
        &with(&[("name", "odd"), ("odd_rank", "1")]),
        runs.path(),
        &[],
        Duration::from_secs(120),
    );
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert!(!out.status.success(), "{all}");
    assert!(all.contains("rank 1's run differs from rank 0's"), "{all}");
    assert!(
        all.contains("\"lr\":0.006"),
        "the differing value is shown: {all}"
    );
    assert!(!runs.path().join("odd").join("checkpoint").exists());
}

#[test]
fn alone_the_world_is_rank_0_of_1() {
    let out = run_script_output(
        SCRIPT,
        &with(&[("steps", "1"), ("name", "alone")]),
        tempfile::tempdir().expect("temp dir").path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("rank 0 of 1 (single)"),
        "{}",
        stdout(&out)
    );
}

/// `LLMLAB_COLLECTIVE` on a CPU build: `nccl` is refused at start, alone and on every rank of a
/// job (an error naming what is missing, not a hang and not a silent fall-back to MPI), and
/// `mpi` trains as the default does (docs/distributed.md, "NCCL").
#[test]
fn nccl_asked_for_on_a_cpu_build_is_refused_and_mpi_forced_still_trains() {
    let dir = tempfile::tempdir().expect("temp dir");
    let script = dir.path().join("probe.rhai");
    std::fs::write(&script, "print(`backend ${world().backend}`);").expect("write probe");
    let alone = Command::new(llmlab_binary())
        .arg("run")
        .arg(&script)
        .current_dir(dir.path())
        .env("LLMLAB_COLLECTIVE", "nccl")
        .output()
        .expect("run llmlab");
    assert!(!alone.status.success(), "{}", stdout(&alone));
    let err = stderr(&alone);
    assert!(
        err.contains("LLMLAB_COLLECTIVE=nccl: this is a CPU build") && err.contains("llmlab/nccl"),
        "{err}"
    );
    assert!(
        !stdout(&alone).contains("backend"),
        "nothing ran: {}",
        stdout(&alone)
    );
    let Some(mpi) = mpi_ready() else { return };
    let runs = tempfile::tempdir().expect("temp dir");
    let out = mpirun(
        &mpi,
        2,
        &with(&[("name", "nccl"), ("steps", "1")]),
        runs.path(),
        &[("LLMLAB_COLLECTIVE", "nccl")],
        Duration::from_secs(120),
    );
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert!(!out.status.success(), "{all}");
    assert!(
        all.contains("LLMLAB_COLLECTIVE=nccl: this is a CPU build"),
        "{all}"
    );
    assert!(!runs.path().join("nccl").exists(), "no rank started: {all}");
    let out = mpirun(
        &mpi,
        2,
        &with(&[("name", "forced"), ("steps", "1")]),
        runs.path(),
        &[("LLMLAB_COLLECTIVE", "mpi")],
        Duration::from_secs(120),
    );
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert!(out.status.success(), "{all}");
    assert!(all.contains("rank 1 of 2 (mpi)"), "{all}");
}
