//! Issue 29, "no abort, no unbounded memory": settings off by orders of magnitude become errors
//! that name the key and the size before anything is allocated, through the real binary. Before,
//! each of these ended in "memory allocation of N bytes failed" (exit 134) or grew until the
//! machine gave out; `tokenizer_load("/dev/zero")` read forever.

use std::process::{Command, Stdio};

use llmlab_e2e::*;

/// Runs `script` (statements that each print one line) with the memory budget set to 8 GiB,
/// so the outcome does not depend on this machine; returns stdout, asserting a clean exit.
fn run_with_budget(script: &str, budget: Option<&str>) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hostile.rhai");
    std::fs::write(&file, script).unwrap();
    let mut command = Command::new(llmlab_binary());
    command
        .args(["run", file.to_str().unwrap(), "--set", "name=hostile"])
        .args(["--set", &format!("runs_dir={}", dir.path().display())])
        .current_dir(repo_root())
        .env_remove("RUST_LOG")
        .env_remove("LLMLAB_MEMORY_BYTES")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(budget) = budget {
        command.env("LLMLAB_MEMORY_BYTES", budget);
    }
    let output = command.output().unwrap();
    let (out, err) = (stdout(&output), stderr(&output));
    assert!(
        output.status.success(),
        "exit {:?} (134 is an allocation abort)\n{out}\n{err}",
        output.status
    );
    out
}

/// `try { <expr>; print("ok <label>") } catch (e) { print("<label>: " + e) }` for each case.
fn attempts(cases: &[(&str, &str)]) -> String {
    cases
        .iter()
        .map(|(label, expr)| {
            format!(
                "try {{ let x = {expr}; print(\"{label} succeeded\"); }} catch (e) {{ print(\"{label}: \" + e); }}\n"
            )
        })
        .collect()
}

fn line<'a>(out: &'a str, label: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(&format!("{label}:")) || l.starts_with(&format!("{label} ")))
        .unwrap_or_else(|| panic!("no line for {label} in\n{out}"))
}

const GIB8: &str = "8589934592";

#[test]
fn absurd_model_tokenizer_tensor_and_corpus_sizes_are_refused_naming_the_key() {
    let script = attempts(&[
        (
            "d_model",
            r#"model("gpt", #{ d_model: 1000000000, n_head: 8 })"#,
        ),
        (
            "n_layer",
            r#"model("gpt", #{ n_layer: 1000000000, d_model: 64 })"#,
        ),
        (
            "vocab_size",
            r#"model("gpt", #{ vocab_size: 100000000000, d_model: 64 })"#,
        ),
        (
            "ctx",
            r#"model("gpt", #{ ctx: 100000000000, d_model: 64 })"#,
        ),
        ("bpe", r#"tokenizer("bpe", #{ vocab_size: 1000000000000 })"#),
        (
            "bpe_memory",
            r#"tokenizer("bpe", #{ vocab_size: 1000000000 })"#,
        ),
        ("zeros", "zeros([100000, 100000, 100000])"),
        ("arange", "arange(100000000000)"),
        (
            "arithmetic",
            r#"corpus("arithmetic", #{ n: 1000000000000 })"#,
        ),
        ("stories", r#"corpus("stories", #{ bytes: 100000000000 })"#),
        ("tokenizer_load", r#"tokenizer_load("/dev/zero")"#),
        (
            "small",
            r#"model("gpt", #{ vocab_size: 300, d_model: 32, n_head: 2, n_layer: 1, ctx: 32 })"#,
        ),
    ]);
    let out = run_with_budget(&script, Some(GIB8));
    for (label, key) in [
        ("d_model", "`d_model` = 1000000000"),
        ("n_layer", "`n_layer` = 1000000000"),
        ("vocab_size", "`vocab_size` = 100000000000"),
        ("ctx", "`ctx` = 100000000000"),
        ("bpe_memory", "`vocab_size` = 1000000000"),
        ("zeros", "zeros([100000, 100000, 100000])"),
        ("arange", "arange(100000000000)"),
        ("arithmetic", "`n` = 1000000000000"),
        ("stories", "`bytes` = 100000000000"),
    ] {
        let line = line(&out, label);
        assert!(
            line.contains(key) && line.contains("8.0 GiB available (LLMLAB_MEMORY_BYTES)"),
            "{label}: {line}"
        );
    }
    let bpe = line(&out, "bpe");
    assert!(
        bpe.contains("vocab_size 1000000000000 is more than token ids (u32)"),
        "{bpe}"
    );
    // One line per tokenizer component tried, each refusing without reading.
    assert!(
        line(&out, "tokenizer_load").contains("cannot load tokenizer from /dev/zero")
            && out.contains("bpe: /dev/zero: not a regular file (a device)"),
        "{out}"
    );
    assert!(out.contains("small succeeded"), "{out}");

    // Without the override the machine's own budget applies, and it is named.
    let out = run_with_budget(
        &attempts(&[(
            "d_model",
            r#"model("gpt", #{ d_model: 1000000000, n_head: 8 })"#,
        )]),
        None,
    );
    let line = line(&out, "d_model");
    assert!(
        line.contains("`d_model` = 1000000000") && line.contains("available"),
        "{line}"
    );
}

#[test]
fn absurd_batches_beams_and_copies_are_refused_naming_the_key() {
    let script = format!(
        r#"let data = corpus("stories", #{{ bytes: 20000, seed: 2 }});
let tok = tokenizer("bpe", #{{ vocab_size: 300 }});
tok.train(data);
let ds = tok.encode(data, #{{ out: run_dir() + "/data" }});
let m = model("gpt", #{{ vocab_size: tok.vocab_size(), n_layer: 1, d_model: 32, n_head: 2, ctx: 32 }});
let tasks = corpus("arithmetic", #{{ n: 10 }});
{}"#,
        attempts(&[
            (
                "batch_size",
                r#"trainer("lm", #{ steps: 1, batch_size: 1000000000 }).fit(m, ds)"#
            ),
            (
                "num_beams",
                r#"m.generate(tok, "once", #{ num_beams: 100000000, max_tokens: 4 })"#
            ),
            ("examples", "tasks.examples(1000000000000).len()"),
            (
                "beams_ok",
                r#"m.generate(tok, "once", #{ num_beams: 3, max_tokens: 4 })"#
            ),
        ])
    );
    let out = run_with_budget(&script, Some(GIB8));
    let batch = line(&out, "batch_size");
    assert!(
        batch.contains("`batch_size` = 1000000000") && batch.contains("available"),
        "{batch}"
    );
    let beams = line(&out, "num_beams");
    assert!(
        beams.contains("`num_beams` = 100000000") && beams.contains("available"),
        "{beams}"
    );
    // Ten examples exist: asking for a trillion gives the ten.
    assert!(out.contains("examples succeeded"), "{out}");
    assert!(out.contains("beams_ok succeeded"), "{out}");
}

#[test]
fn copying_out_documents_stops_at_half_the_memory_budget() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("docs.jsonl");
    let record = format!("{{\"text\": \"{}\"}}\n", "a".repeat(1000));
    std::fs::write(&file, record.repeat(400)).unwrap();
    let corpus = format!(r#"corpus("{}", #{{ field: "text" }})"#, file.display());
    let script = attempts(&[
        ("all", &format!("{corpus}.documents(1000000)")),
        ("few", &format!("{corpus}.documents(10).len()")),
    ]);
    // 400 KB of documents against a 200 KB budget: refused once past 100 KB.
    let out = run_with_budget(&script, Some("200000"));
    let all = line(&out, "all");
    assert!(
        all.contains(".documents(1000000): the first") && all.contains("ask for fewer"),
        "{all}"
    );
    assert!(out.contains("few succeeded"), "{out}");
}
