//! Hostile input through the real binary (issue 29, items 6 part, 8–10, 12–14, 16): library files
//! that are not libraries, the same plugin twice, the plugin allow-list and its audit record,
//! script limits, `--set` overrides that reach nothing, NaN configs, training a quantized model,
//! dropout under a seed, corrupted or mis-configured saved models, BPE `max_token_length`, and
//! resuming on other data. Each test asserts the message names the file, key or cause.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use llmlab_e2e::*;

/// `llmlab` with `args`, killed after `limit` (a hang is a failure, not a stuck test run).
fn llmlab_within(args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new(llmlab_binary())
        .args(args)
        .current_dir(repo_root())
        .env_remove("LLMLAB_PLUGIN_PATH")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn llmlab");
    let started = Instant::now();
    while child.try_wait().expect("poll llmlab").is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!(
                "llmlab {args:?} still running after {limit:?} (blocked?)\n{}",
                stderr(&output)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().expect("mkfifo");
    assert!(status.success());
}

/// Runs `script` (text) with `args` after `run FILE`; the runs go into `dir/runs`.
fn run_script(dir: &Path, script: &str, args: &[&str]) -> Output {
    let path = dir.join("script.rhai");
    std::fs::write(&path, script).unwrap();
    let runs = format!("runs_dir={}", dir.join("runs").display());
    let mut all = vec!["run", path.to_str().unwrap(), "--set", &runs];
    all.extend_from_slice(args);
    llmlab(&all, "")
}

fn plugin_library(name: &str) -> PathBuf {
    target_dir().join(format!(
        "libllmlab_{name}.{}",
        std::env::consts::DLL_EXTENSION
    ))
}

fn sha256sum(path: &Path) -> String {
    let output = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn plugin_check_refuses_a_fifo_and_a_device_without_reading_them() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("x.so");
    mkfifo(&fifo);
    for (file, what) in [
        (fifo.to_str().unwrap(), "FIFO"),
        ("/dev/zero", "character device"),
    ] {
        let output = llmlab_within(&["plugin", "check", file], Duration::from_secs(20));
        let err = stderr(&output);
        assert!(!output.status.success(), "{file}: {err}");
        assert!(
            err.contains("not a regular file") && err.contains(what) && err.contains(file),
            "{file}: {err}"
        );
    }
}

#[test]
fn broken_entries_in_a_plugin_directory_are_listed_as_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("dir.so")).unwrap();
    std::os::unix::fs::symlink(d.join("nowhere.so"), d.join("dangling.so")).unwrap();
    std::os::unix::fs::symlink(d.join("loop.so"), d.join("loop.so")).unwrap();
    mkfifo(&d.join("fifo.so"));
    let output = llmlab_within(
        &["--plugin-dir", d.to_str().unwrap(), "plugins"],
        Duration::from_secs(30),
    );
    let out = stdout(&output);
    assert!(output.status.success(), "{}", stderr(&output));
    for (file, reason) in [
        ("dir.so", "a directory"),
        ("dangling.so", "a dangling symlink"),
        ("loop.so", "a symlink loop"),
        ("fifo.so", "a FIFO"),
    ] {
        let line = out
            .lines()
            .find(|l| l.starts_with("refused:") && l.contains(file))
            .unwrap_or_else(|| panic!("no refusal for {file} in:\n{out}"));
        assert!(line.contains(reason), "{line}");
    }
    // The real plugins next to the binary still load.
    assert!(out.contains("loaded gpt"), "{out}");
}

#[test]
fn the_same_plugin_in_two_files_is_loaded_once_and_the_second_refused_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("libllmlab_gpt_copy.so");
    std::fs::copy(plugin_library("gpt"), &copy).unwrap();
    let output = llmlab(
        &["--plugin-dir", dir.path().to_str().unwrap(), "plugins"],
        "",
    );
    let out = stdout(&output);
    assert_eq!(out.matches("loaded gpt ").count(), 1, "{out}");
    assert_eq!(out.matches("  model      gpt ").count(), 1, "{out}");
    let refusal = out
        .lines()
        .find(|l| l.contains("already loaded"))
        .unwrap_or_else(|| panic!("no duplicate refusal in:\n{out}"));
    assert!(
        refusal.contains("libllmlab_gpt_copy.so") && refusal.contains("libllmlab_gpt.so"),
        "{refusal}"
    );
    assert!(!out.contains("duplicate component"), "{out}");
}

#[test]
fn load_plugin_of_a_loaded_library_returns_the_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let gpt = plugin_library("gpt");
    let script = format!(
        r#"
        try {{ load_plugin({gpt:?}); print("loaded again"); }} catch (e) {{ print(`refused: ${{e}}`); }}
        print(plugins().filter(|p| p.name == "gpt").len());
        "#,
        gpt = gpt.display().to_string()
    );
    let output = run_script(dir.path(), &script, &[]);
    let (out, err) = (stdout(&output), stderr(&output));
    assert!(output.status.success(), "{out}\n{err}");
    assert!(
        out.contains("refused:") && out.contains("already loaded"),
        "{out}"
    );
    assert!(!out.contains("loaded again"), "{out}");
    assert!(out.trim_end().ends_with('1'), "{out}");
}

#[test]
fn trusted_plugins_loads_only_listed_libraries_and_runs_record_every_hash() {
    let dir = tempfile::tempdir().unwrap();
    let gpt = plugin_library("gpt");
    let gpt_sum = sha256sum(&gpt);
    let list = dir.path().join("trusted.txt");
    std::fs::write(
        &list,
        format!("# the model only\n{gpt_sum}  libllmlab_gpt.so\n"),
    )
    .unwrap();
    let trusted = ["--trusted-plugins", list.to_str().unwrap()];
    let output = llmlab(&[&trusted[..], &["plugins"]].concat(), "");
    let out = stdout(&output);
    assert!(out.contains("loaded gpt"), "{out}");
    assert!(!out.contains("loaded tokenizers"), "{out}");
    let refusal = out
        .lines()
        .find(|l| l.contains("libllmlab_tokenizers"))
        .unwrap_or_else(|| panic!("tokenizers not refused:\n{out}"));
    assert!(
        refusal.contains("not in the allow-list") && refusal.contains("trusted.txt"),
        "{refusal}"
    );
    // load_plugin is held to the same list; the run records the sha256 of what it loaded.
    let tokenizers = plugin_library("tokenizers");
    let script = format!(
        r#"
        try {{ load_plugin({path:?}); }} catch (e) {{ print(`refused: ${{e}}`); }}
        print(run_dir());
        "#,
        path = tokenizers.display().to_string()
    );
    let path = dir.path().join("trust.rhai");
    std::fs::write(&path, script).unwrap();
    let runs = format!("runs_dir={}", dir.path().join("runs").display());
    let args = [
        &trusted[..],
        &[
            "run",
            path.to_str().unwrap(),
            "--set",
            &runs,
            "--set",
            "name=audit",
        ],
    ]
    .concat();
    let output = llmlab(&args, "");
    let out = stdout(&output);
    assert!(output.status.success(), "{out}\n{}", stderr(&output));
    assert!(
        out.contains("refused:") && out.contains("not in the allow-list"),
        "{out}"
    );
    let record = std::fs::read_to_string(dir.path().join("runs/audit/plugins.json")).unwrap();
    assert!(record.contains(&gpt_sum), "{record}");
    assert!(record.contains("\"sha256\""), "{record}");
    // Without a list, every loaded library's hash is recorded too.
    let output = run_script(dir.path(), "print(run_dir());", &["--set", "name=all"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let record = std::fs::read_to_string(dir.path().join("runs/all/plugins.json")).unwrap();
    assert!(
        record.contains(&gpt_sum) && record.contains(&sha256sum(&tokenizers)),
        "{record}"
    );
    // A malformed list is refused naming its line.
    std::fs::write(&list, "not-a-hash  libx.so\n").unwrap();
    let output = llmlab(&[&trusted[..], &["plugins"]].concat(), "");
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("trusted.txt line 1"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn script_limits_from_the_command_line_stop_runaway_scripts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("loop.rhai");
    std::fs::write(&path, "let x = 0; loop { x += 1; }").unwrap();
    let output = llmlab_within(
        &["--max-operations", "100000", "run", path.to_str().unwrap()],
        Duration::from_secs(30),
    );
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("operations"),
        "{}",
        stderr(&output)
    );
    std::fs::write(
        &path,
        "let a = []; for i in 0..1000 { a.push(i); } print(a.len());",
    )
    .unwrap();
    let output = llmlab(
        &["--max-array-size", "100", "run", path.to_str().unwrap()],
        "",
    );
    assert!(!output.status.success());
    assert!(stderr(&output).contains("array"), "{}", stderr(&output));
    let output = llmlab(
        &["--max-array-size", "5000", "run", path.to_str().unwrap()],
        "",
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output), "1000\n");
}

#[test]
fn set_overrides_that_reach_nothing_are_errors_naming_the_closest_name() {
    let dir = tempfile::tempdir().unwrap();
    let script = r#"
        let steps = setting("steps", 1);
        let tr = trainer("lm", #{ steps: steps });
        print(`steps ${tr.config().steps}`);
    "#;
    let ok = run_script(
        dir.path(),
        script,
        &["--set", "steps=3", "--set", "lm.batch_size=2"],
    );
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert_eq!(stdout(&ok), "steps 3\n");
    for (set, expected) in [
        ("lmm.steps=1000000", "closest: `lm`"),
        (".steps=5", "no component before the dot"),
        ("=5", "empty key"),
        ("stesp=5", "closest: `steps`"),
        ("sft.steps=5", "made no `sft`"),
    ] {
        let output = run_script(dir.path(), script, &["--set", set]);
        let err = stderr(&output);
        assert!(!output.status.success(), "--set {set} was accepted");
        assert!(err.contains(expected), "--set {set}: {err}");
        let key = set.split('=').next().unwrap();
        assert!(err.contains(key), "--set {set}: {err}");
    }
    // Refused before anything runs: the script's print never happened.
    let output = run_script(dir.path(), script, &["--set", "lmm.steps=5"]);
    assert_eq!(stdout(&output), "");
}

#[test]
fn nan_in_a_config_is_reported_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let output = run_script(
        dir.path(),
        r#"trainer("lm", #{ lr: parse_float("NaN") });"#,
        &[],
    );
    let err = stderr(&output);
    assert!(!output.status.success());
    assert!(err.contains("`lr`") && err.contains("NaN"), "{err}");
    assert!(!err.contains("invalid type: null"), "{err}");
}

/// A tiny stories dataset, BPE and GPT for the training tests (`dropout` for the model).
fn tiny_setup(dropout: f64, bytes: usize) -> String {
    format!(
        r#"
        let data = corpus("stories", #{{ bytes: {bytes}, seed: 7 }});
        let tok = tokenizer("bpe", #{{ vocab_size: 300 }});
        tok.train(data);
        let ds = tok.encode(data, #{{ val_fraction: 0.1 }});
        let gpt = model("gpt", #{{ vocab_size: tok.vocab_size(), n_layer: 1, n_head: 2,
                                   d_model: 32, ctx: 16, dropout: {dropout} }});
        "#
    )
}

#[test]
fn training_a_quantized_model_is_refused_pointing_to_qat() {
    let dir = tempfile::tempdir().unwrap();
    let script = tiny_setup(0.0, 20_000)
        + r#"
        let q = quantize(gpt, "q8_0");
        trainer("lm", #{ steps: 2, batch_size: 2, eval_every: 0 }).fit(q, ds);
        print("trained");
        "#;
    let output = run_script(dir.path(), &script, &[]);
    let err = stderr(&output);
    assert!(!output.status.success(), "{}", stdout(&output));
    assert!(!stdout(&output).contains("trained"));
    assert!(
        err.contains("cannot train a q8_0-quantized model") && err.contains("qat"),
        "{err}"
    );
}

#[test]
fn dropout_runs_are_reproducible_under_the_same_seed() {
    let dir = tempfile::tempdir().unwrap();
    let script = tiny_setup(0.3, 20_000)
        + r#"
        let r = trainer("lm", #{ steps: 4, batch_size: 4, eval_every: 0, lr: 1e-2 }).fit(gpt, ds);
        print(`final loss ${r.loss}`);
        print(`logits ${gpt.forward(tok.encode("Once upon")).sum()}`);
        "#;
    let run = |seed: &str, name: &str| {
        let name = format!("name={name}");
        let output = run_script(dir.path(), &script, &["--seed", seed, "--set", &name]);
        assert!(output.status.success(), "{}", stderr(&output));
        stdout(&output)
            .lines()
            .filter(|l| l.starts_with("final loss ") || l.starts_with("logits "))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let (a, b) = (run("5", "a"), run("5", "b"));
    assert!(a.contains("final loss") && a.contains("logits"), "{a}");
    assert_eq!(a, b, "same seed, different runs");
}

#[test]
fn a_corrupted_or_misconfigured_saved_model_is_refused_naming_file_and_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("model");
    let save = format!(
        r#"model("gpt", #{{ vocab_size: 64, n_layer: 1, n_head: 4, d_model: 32, ctx: 16 }}).save({:?});"#,
        saved.display().to_string()
    );
    let output = run_script(dir.path(), &save, &[]);
    assert!(output.status.success(), "{}", stderr(&output));
    let load = format!(r#"model_load({:?});"#, saved.display().to_string());
    let output = run_script(dir.path(), &load, &[]);
    assert!(output.status.success(), "{}", stderr(&output));

    // n_head changed: every tensor keeps its shape, so only the recorded layout catches it.
    let config_path = saved.join("config.json");
    let config = std::fs::read_to_string(&config_path).unwrap();
    assert!(config.contains("\"n_head\": 4"), "{config}");
    std::fs::write(
        &config_path,
        config.replace("\"n_head\": 4", "\"n_head\": 8"),
    )
    .unwrap();
    let output = run_script(dir.path(), &load, &[]);
    let err = stderr(&output);
    assert!(!output.status.success());
    assert!(
        err.contains("n_head") && err.contains("c_attn.weight") && err.contains("config.json"),
        "{err}"
    );
    std::fs::write(&config_path, &config).unwrap();

    // 400 bytes of the weights overwritten.
    let weights = saved.join("model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle..middle + 400].fill(0xff);
    std::fs::write(&weights, &bytes).unwrap();
    let output = run_script(dir.path(), &load, &[]);
    let err = stderr(&output);
    assert!(!output.status.success());
    assert!(
        err.contains("model.safetensors") && err.contains("checksum"),
        "{err}"
    );
}

#[test]
fn bpe_max_token_length_caps_tokens_and_refuses_what_allows_no_merge() {
    let dir = tempfile::tempdir().unwrap();
    let script = r#"
        let data = corpus("stories", #{ bytes: 40000, seed: 3 });
        for n in [2, 3] {
            let tok = tokenizer("bpe", #{ vocab_size: 400, max_token_length: n });
            tok.train(data);
            let longest = 0;
            for id in 0..tok.vocab_size() {
                let t = tok.id_to_token(id);
                if !t.starts_with("<|") && t.len() > longest { longest = t.len(); }
            }
            print(`max ${n}: longest ${longest}, ${tok.encode("Once upon a time there was a little girl").len()} tokens`);
        }
        for n in [0, 1] {
            try { tokenizer("bpe", #{ max_token_length: n }); print(`accepted ${n}`); }
            catch (e) { print(`refused ${n}: ${e}`); }
        }
    "#;
    let output = run_script(dir.path(), script, &[]);
    let (out, err) = (stdout(&output), stderr(&output));
    assert!(output.status.success(), "{out}\n{err}");
    assert!(out.contains("max 2: longest 2,"), "{out}");
    assert!(out.contains("max 3: longest 3,"), "{out}");
    for n in ["0", "1"] {
        assert!(
            out.contains(&format!("refused {n}:")) && out.contains("max_token_length"),
            "{out}"
        );
    }
}

#[test]
fn resuming_on_different_data_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let script = r#"
        let data = corpus("stories", #{ bytes: 20000, seed: setting("data_seed", 7) });
        let tok = tokenizer("bpe", #{ vocab_size: 300 });
        tok.train(corpus("stories", #{ bytes: 20000, seed: 7 }));
        let ds = tok.encode(data, #{ val_fraction: 0.1 });
        let gpt = model("gpt", #{ vocab_size: tok.vocab_size(), n_layer: 1, n_head: 2, d_model: 32, ctx: 16 });
        let resume = setting("resume", ());
        trainer("lm", #{ steps: setting("steps", 2), batch_size: 2, eval_every: 0, resume: resume }).fit(gpt, ds);
        print("done");
    "#;
    let first = run_script(dir.path(), script, &["--set", "name=a"]);
    assert!(first.status.success(), "{}", stderr(&first));
    let checkpoint = dir.path().join("runs/a");
    let resume = format!("resume={}", checkpoint.display());
    // Same data: resumes.
    let same = run_script(
        dir.path(),
        script,
        &["--set", "name=b", "--set", &resume, "--set", "steps=3"],
    );
    assert!(same.status.success(), "{}", stderr(&same));
    // Other data: refused, naming the checkpoint.
    let other = run_script(
        dir.path(),
        script,
        &[
            "--set",
            "name=c",
            "--set",
            &resume,
            "--set",
            "steps=3",
            "--set",
            "data_seed=8",
        ],
    );
    let err = stderr(&other);
    assert!(!other.status.success(), "{}", stdout(&other));
    assert!(
        err.contains("different data") && err.contains("trainer.json"),
        "{err}"
    );
}

/// Item 11. The split of a running text was decided per piece, so a file of one line got no
/// validation tokens and `lossy` (U+FFFD is 3 bytes for 1 bad byte) moved the split forward; a
/// JSONL line over 1 MiB was cut and refused as "EOF ... column 1048576". Now the validation
/// tail is counted in tokens and JSONL lines are read whole.
#[test]
fn val_fraction_is_honoured_for_text_files_and_long_jsonl_lines_load() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // One line under 1 MiB.
    let line: String = (0..20_000).map(|i| format!("word{} ", i % 50)).collect();
    std::fs::write(d.join("one_line.txt"), &line).unwrap();
    // Many lines with invalid UTF-8 bytes (read lossily).
    let mut bytes = Vec::new();
    for i in 0..4000 {
        bytes.extend_from_slice(format!("line {i} with a bad byte ").as_bytes());
        bytes.extend_from_slice(&[0xff, 0xfe, b'\n']);
    }
    std::fs::write(d.join("lossy.txt"), &bytes).unwrap();
    // A JSONL document of 1.5 MiB.
    let long = "abc ".repeat(400_000);
    std::fs::write(
        d.join("long.jsonl"),
        format!("{{\"text\": \"{long}\"}}\n{{\"text\": \"short one\"}}\n"),
    )
    .unwrap();
    let script = format!(
        r#"
        let tok = tokenizer("bpe", #{{ vocab_size: 300 }});
        tok.train(corpus({one:?}));
        for spec in [[{one:?}, #{{}}], [{lossy:?}, #{{ lossy: true }}]] {{
            let ds = tok.encode(corpus(spec[0], spec[1]), #{{ val_fraction: 0.1 }});
            let share = ds.len("val") * 100 / (ds.len("train") + ds.len("val"));
            print(`${{spec[0]}}: val ${{share}}%`);
        }}
        let ds = tok.encode(corpus({long:?}), #{{ val_fraction: 0.0 }});
        print(`long jsonl: ${{ds.len("train")}} tokens`);
        "#,
        one = d.join("one_line.txt").display().to_string(),
        lossy = d.join("lossy.txt").display().to_string(),
        long = d.join("long.jsonl").display().to_string(),
    );
    let output = run_script(d, &script, &[]);
    let (out, err) = (stdout(&output), stderr(&output));
    assert!(output.status.success(), "{out}\n{err}");
    for line in out.lines().filter(|l| l.contains(": val ")) {
        let share: i64 = line
            .rsplit("val ")
            .next()
            .unwrap()
            .trim_end_matches('%')
            .parse()
            .unwrap();
        assert!((8..=12).contains(&share), "{line}");
    }
    assert!(out.contains("long jsonl:"), "{out}");
}
