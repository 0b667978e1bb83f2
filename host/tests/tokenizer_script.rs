//! End to end: the real `llmlab` binary with the real tokenizers plugin (`libllmlab_tokenizers.so`
//! next to it: `cargo build --release -p llmlab-tokenizers` first) runs `scripts/tokenizer.rhai`
//! and scripts with bad input, whose errors must name their cause.

use std::path::{Path, PathBuf};
use std::process::Command;

fn llmlab() -> Command {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_llmlab"));
    let plugin = exe.with_file_name("libllmlab_tokenizers.so");
    assert!(
        plugin.exists(),
        "{} is missing: build it first with `cargo build --release -p llmlab-tokenizers`",
        plugin.display()
    );
    let report = Command::new(&exe).arg("plugins").output().unwrap();
    let report = String::from_utf8_lossy(&report.stdout).into_owned();
    assert!(
        report.contains("loaded tokenizers"),
        "the tokenizers plugin does not load (rebuild it with the host):\n{report}"
    );
    Command::new(exe)
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// Runs `script` (a file's text) and returns (success, stdout + stderr).
fn run_script(dir: &Path, script: &str) -> (bool, String) {
    let path = dir.join("test.rhai");
    std::fs::write(&path, script).unwrap();
    let output = llmlab()
        .arg("run")
        .arg(&path)
        .current_dir(dir)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn tokenizer_example_script_runs() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus.txt");
    let line = "Free software is a matter of liberty, not price. 自由软件 🦀\n";
    std::fs::write(&corpus, line.repeat(400)).unwrap();
    let output = llmlab()
        .arg("run")
        .arg(repo().join("scripts/tokenizer.rhai"))
        .arg("--set")
        .arg(format!("out={}", dir.path().display()))
        .arg("--set")
        .arg(format!("corpus={}", corpus.display()))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("tokenizer bpe (vocab "), "{text}");
    assert!(text.contains("reopened: "), "{text}");
    assert!(dir.path().join("tokenizer.json").exists());
    for file in ["train.bin", "val.bin", "dataset.json"] {
        assert!(dir.path().join("data").join(file).exists(), "{file}");
    }
}

#[test]
fn bad_input_errors_name_their_cause() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.txt"), b"fine\nnot \xff fine\n").unwrap();
    std::fs::write(dir.path().join("good.txt"), "hello world ".repeat(200)).unwrap();
    std::fs::write(dir.path().join("empty.txt"), "").unwrap();
    std::fs::write(dir.path().join("corrupt.json"), "{ not json").unwrap();
    let cases = [
        (
            r#"tokenizer("bpe", #{ vocab_size: 300 }).train("bad.txt")"#,
            "bad.txt: invalid UTF-8 at byte 9 (line 2)",
        ),
        (
            r#"tokenizer("bpe", #{ vocab_size: 300 }).train("missing.txt")"#,
            "missing.txt",
        ),
        (
            r#"tokenizer("bpe", #{ vocab_size: 300 }).train("empty.txt")"#,
            "is empty",
        ),
        (
            r#"tokenizer("bpe", #{ vocab_size: 100 })"#,
            "vocab_size 100 is below the byte alphabet size",
        ),
        (
            r#"tokenizer_load("corrupt.json")"#,
            "not a valid tokenizer.json",
        ),
        (
            r#"corpus("good.txt", #{ feild: "x" })"#,
            "unknown option `feild` for corpus; accepted: field, lossy, format",
        ),
        (
            r#"let t = tokenizer("bpe", #{ vocab_size: 300 }); t.train("good.txt");
               let u = tokenizer("bpe", #{ vocab_size: 300, special_tokens: ["<eot>"] }); u.train("good.txt");
               t.encode("good.txt", #{ out: "ds" }); dataset_load("ds", u)"#,
            "not by this bpe tokenizer",
        ),
    ];
    for (script, expected) in cases {
        let (ok, text) = run_script(dir.path(), script);
        assert!(
            !ok && text.contains(expected),
            "{script}\nexpected {expected:?} in:\n{text}"
        );
        assert!(!text.contains("panicked"), "{text}");
    }
    // The lossy option reads the bad file.
    let (ok, text) = run_script(
        dir.path(),
        r#"let t = tokenizer("bpe", #{ vocab_size: 300 }); t.train(corpus("bad.txt", #{ lossy: true }));
           let ds = t.encode(corpus("bad.txt", #{ lossy: true }), #{ out: "lossy", val_fraction: 0.0 });
           print(t.decode(ds.tokens("train", 0, ds.len())));"#,
    );
    assert!(ok && text.contains("not \u{FFFD} fine"), "{text}");
}
