//! A plugin author's first hour, end to end: `llmlab plugin new` for each kind (model,
//! tokenizer, trainer, corpus) → `llmlab plugin build --test` → the host loads all four → one
//! script uses them together: the scaffolded tokenizer round-trips text, the scaffolded model
//! trains under `lm`, generates with the decoding options and beams, saves and comes back
//! through `model_load`; the scaffolded trainer trains gpt on the scaffolded corpus.

use std::path::{Path, PathBuf};

use llmlab_e2e::*;

const KINDS: [&str; 4] = ["model", "tokenizer", "trainer", "corpus"];

/// `llmlab plugin new x<kind> --kind <kind>` in `root`; the crate's directory.
fn scaffold(root: &Path, kind: &str) -> PathBuf {
    let dir = root.join(format!("x{kind}"));
    let output = llmlab(
        &[
            "plugin",
            "new",
            &format!("x{kind}"),
            "--kind",
            kind,
            "--dir",
            dir.to_str().unwrap(),
        ],
        "",
    );
    assert!(output.status.success(), "plugin new: {}", stderr(&output));
    assert!(
        stdout(&output).contains("llmlab plugin build"),
        "{}",
        stdout(&output)
    );
    dir
}

#[test]
fn scaffolded_plugins_of_every_kind_build_load_and_work_together() {
    let root = tempfile::tempdir().unwrap();
    let crates: Vec<PathBuf> = KINDS.iter().map(|k| scaffold(root.path(), k)).collect();

    // The four builds at once (each is one rustc run for the library and one for its tests).
    let builds: Vec<_> = crates
        .iter()
        .map(|dir| {
            let dir = dir.clone();
            std::thread::spawn(move || {
                (
                    dir.clone(),
                    llmlab(&["plugin", "build", dir.to_str().unwrap(), "--test"], ""),
                )
            })
        })
        .collect();
    let plugins = root.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    for build in builds {
        let (dir, output) = build.join().unwrap();
        let (out, err) = (stdout(&output), stderr(&output));
        assert!(
            output.status.success(),
            "plugin build {}:\n{out}\n{err}",
            dir.display()
        );
        assert!(out.contains("it loads into this host"), "{out}");
        assert!(
            out.contains("test result: ok") || err.contains("test result: ok"),
            "its tests ran:\n{out}\n{err}"
        );
        let name = dir.file_name().unwrap().to_str().unwrap().to_string();
        let library = dir
            .join("target/llmlab")
            .join(format!("lib{name}.{}", std::env::consts::DLL_EXTENSION));
        std::fs::copy(&library, plugins.join(library.file_name().unwrap())).unwrap();
    }

    let plugin_dir = plugins.to_str().unwrap();
    let listing = stdout(&llmlab(&["--plugin-dir", plugin_dir, "plugins"], ""));
    for kind in KINDS {
        assert!(
            listing.contains(&format!("loaded x{kind} 0.1.0")),
            "x{kind} is listed as loaded:\n{listing}"
        );
    }

    let script = r#"
let tok = tokenizer("xtokenizer");
print(`round trip: ${tok.decode(tok.encode("héllo, wörld ✓")) == "héllo, wörld ✓"}`);
let data = tok.encode(corpus("stories.txt"));
let m = model("xmodel", #{ vocab_size: tok.vocab_size(), ctx: 32 });
let r = trainer("lm", #{ steps: 40, warmup: 5, batch_size: 8, ctx: 32, lr: 0.01, eval_every: 0, checkpoint_every: 0 }).fit(m, data);
print(`model loss: ${r.loss}`);
let sampled = m.generate(tok, "Once upon a time", #{ max_tokens: 12, temperature: 0.8, top_k: 20, top_p: 0.9, repetition_penalty: 1.2, seed: 3 });
let again = m.generate(tok, "Once upon a time", #{ max_tokens: 12, temperature: 0.8, top_k: 20, top_p: 0.9, repetition_penalty: 1.2, seed: 3 });
print(`sampled: ${sampled.len() > 0} reproducible: ${sampled == again}`);
let beams = m.generate(tok, "Once upon a time", #{ max_tokens: 8, num_beams: 3 });
print(`beams: ${beams.len() > 0}`);
let greedy = m.generate(tok, "Once upon a time", #{ max_tokens: 12, temperature: 0.0 });
m.save("saved-model");
let back = model_load("saved-model");
print(`reloaded greedy equal: ${back.generate(tok, "Once upon a time", #{ max_tokens: 12, temperature: 0.0 }) == greedy}`);
let tasks = corpus("xcorpus", #{ n: 400, seed: 2 });
print(`check: ${tasks.check("double 21 =", "42")} ${tasks.check("double 21 =", "41")}`);
let g = model("gpt", #{ vocab_size: tok.vocab_size(), d_model: 32, n_head: 2, n_layer: 1, ctx: 32 });
let t = trainer("xtrainer", #{ steps: 30, warmup: 5, batch_size: 8, ctx: 32, lr: 0.01, eval_every: 0, checkpoint_every: 0 }).fit(g, tok.encode(tasks));
print(`gpt loss: ${t.loss}`);
"#;
    std::fs::write(root.path().join("use.rhai"), script).unwrap();
    // A text corpus of its own (the host reads text files; no corpus plugin needed).
    let sentences = [
        "Once upon a time a little fox found a red ball.",
        "The fox gave the ball to a bird, and the bird sang.",
        "Every day the two friends played in the green wood.",
        "One night it rained, so the fox and the bird stayed home.",
    ];
    let text: String = (0..400)
        .map(|i| sentences[(i * 7 + i / 3) % 4])
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(root.path().join("stories.txt"), text).unwrap();
    let output = llmlab_in(
        root.path(),
        &["--plugin-dir", plugin_dir, "run", "use.rhai"],
        b"",
    );
    let (out, err) = (stdout(&output), stderr(&output));
    assert!(output.status.success(), "{out}\n{err}");
    for line in [
        "round trip: true",
        "sampled: true reproducible: true",
        "beams: true",
        "reloaded greedy equal: true",
        "check: true false",
    ] {
        assert!(out.contains(line), "`{line}` missing:\n{out}\n{err}");
    }
    // Both trainings learnt: below a uniform guess over the 257 byte tokens (ln 257 = 5.55).
    let loss = |key: &str| -> f64 {
        out.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no `{key}` in:\n{out}\n{err}"))
    };
    assert!(loss("model loss:") < 4.5, "{out}");
    assert!(loss("gpt loss:") < 4.5, "{out}");
}

#[test]
fn plugin_build_refuses_what_it_cannot_link_naming_the_fix() {
    let root = tempfile::tempdir().unwrap();
    let dir = scaffold(root.path(), "tokenizer");
    let manifest = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, format!("{text}rand = \"0.8\"\n")).unwrap();
    let output = llmlab(&["plugin", "build", dir.to_str().unwrap()], "");
    let err = stderr(&output);
    assert!(!output.status.success());
    assert!(
        err.contains("`rand`") && err.contains("plugins/xtokenizer") && err.contains("re-exports"),
        "{err}"
    );
    assert!(!dir.join("target/llmlab").exists(), "nothing was built");
}
