//! The loader against real libraries: a third-party plugin built outside the workspace loads and
//! runs from a script; each kind of bad library is refused with its own message, before any of
//! its code runs; a panicking plugin leaves the session usable.

use std::path::Path;

use llmlab_e2e::*;

struct Refusal {
    name: &'static str,
    expected: &'static str,
}

fn check(file: &Path) -> (bool, String) {
    let output = llmlab(&["plugin", "check", file.to_str().unwrap()], "");
    (output.status.success(), stderr(&output))
}

#[test]
fn hello_plugin_loads_and_runs_from_a_script() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = build_hello_plugin(dir.path());
    let (ok, err) = check(&plugin);
    assert!(ok, "plugin check failed: {err}");

    let plugins = llmlab(
        &["--plugin-dir", dir.path().to_str().unwrap(), "plugins"],
        "",
    );
    let listing = stdout(&plugins);
    assert!(listing.contains("loaded hello 0.1.0"), "{listing}");
    assert!(listing.contains("tokenizer  hello"), "{listing}");

    let script = dir.path().join("hello.rhai");
    std::fs::write(&script, r#"let t = tokenizer("hello", #{ words: ["hi", "there"] }); print(t.encode("hi you there")); print(t.decode([2, 1]));"#).unwrap();
    let run = llmlab(
        &[
            "--plugin-dir",
            dir.path().to_str().unwrap(),
            "run",
            script.to_str().unwrap(),
        ],
        "",
    );
    assert!(run.status.success(), "{}", stderr(&run));
    assert_eq!(stdout(&run), "[1, 0, 2]\nthere hi\n");
}

#[test]
fn refuses_each_kind_of_bad_library_with_its_own_message_before_running_it() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("constructor-ran");
    let cases = [
        (
            Refusal {
                name: "api_major",
                expected: "plugin API major version mismatch",
            },
            fingerprint_with("api", "99.0.0"),
        ),
        (
            Refusal {
                name: "cuda_build",
                expected: "candle feature mismatch",
            },
            {
                let other = if llmlab_plugin_api::declaration::CANDLE_FEATURES == "cpu" {
                    "cuda"
                } else {
                    "cpu"
                };
                fingerprint_with("candle_features", other)
            },
        ),
        (
            Refusal {
                name: "old_rustc",
                expected: "compiler mismatch",
            },
            fingerprint_with("rustc", "rustc 1.70.0 (90c541806 2023-05-31)"),
        ),
        (
            Refusal {
                name: "api_source",
                expected: "plugin-api source mismatch",
            },
            fingerprint_with("api_hash", "0123456789abcdef"),
        ),
    ];
    for (case, text) in &cases {
        let source = dir.path().join(format!("{}.rs", case.name));
        std::fs::write(&source, declaration_source(text, &marker)).unwrap();
        let library = compile_library(dir.path(), case.name, &source, false);
        let (ok, err) = check(&library);
        assert!(!ok, "{} was accepted", case.name);
        assert!(
            err.contains(case.expected),
            "{}: expected {:?} in:\n{err}",
            case.name,
            case.expected
        );
        assert!(
            err.contains("rebuild"),
            "{}: the message says how to fix it:\n{err}",
            case.name
        );
        assert!(
            !marker.exists(),
            "{}: the refused library's constructor ran",
            case.name
        );
    }
    // The cpu/cuda refusal names the plugin's build and the host's, and how to build either.
    let (_, err) = check(&dir.path().join("libcuda_build.so"));
    let host = llmlab_plugin_api::declaration::CANDLE_FEATURES;
    let plugin = if host == "cpu" { "cuda" } else { "cpu" };
    assert!(
        err.contains(&format!(
            "plugin built with candle features [{plugin}], host with [{host}]"
        )),
        "{err}"
    );
    assert!(err.contains("scripts/build-cuda.sh"), "{err}");
    // The API mismatch names both versions.
    let (_, err) = check(&dir.path().join("libapi_major.so"));
    assert!(
        err.contains("99.0.0") && err.contains(llmlab_plugin_api::declaration::API_VERSION),
        "{err}"
    );

    // A shared library without a declaration.
    let source = dir.path().join("plain.rs");
    std::fs::write(
        &source,
        "#[no_mangle] pub extern \"C\" fn unrelated() -> i32 { 7 }",
    )
    .unwrap();
    let plain = compile_library(dir.path(), "plain", &source, false);
    let (ok, err) = check(&plain);
    assert!(!ok && err.contains("not an llmlab plugin"), "{err}");
    assert!(err.contains("declare_plugin!"), "{err}");

    // A file that is not a shared library at all.
    let fake = dir.path().join("libnotes.so");
    std::fs::write(&fake, "these are my notes, not a library\n").unwrap();
    let (ok, err) = check(&fake);
    assert!(!ok && err.contains("not a shared library"), "{err}");

    // Scanning the directory lists every refusal and still works.
    let listing = llmlab(
        &["--plugin-dir", dir.path().to_str().unwrap(), "plugins"],
        "",
    );
    assert!(listing.status.success());
    let out = stdout(&listing);
    assert_eq!(out.matches("refused:").count(), cases.len() + 2, "{out}");
    assert!(
        !marker.exists(),
        "scanning ran a refused library's constructor"
    );
}

#[test]
fn workspace_plugins_load_without_refusals() {
    let listing = llmlab(&["plugins"], "");
    let out = stdout(&listing);
    assert!(listing.status.success(), "{}", stderr(&listing));
    assert!(
        !out.contains("refused"),
        "a plugin next to the binary was refused (stale or mismatched build?):\n{out}"
    );
}

#[test]
fn plugin_panic_is_a_script_error_and_the_session_survives() {
    let dir = tempfile::tempdir().unwrap();
    build_hello_plugin(dir.path());
    let input = r#"let t = tokenizer("hello", #{ panic_on: "boom" });
t.encode("hello boom")
print("still here: " + t.encode("world hello"));
"#;
    let output = llmlab(&["--plugin-dir", dir.path().to_str().unwrap()], input);
    let (out, err) = (stdout(&output), stderr(&output));
    assert!(output.status.success(), "{err}");
    assert!(
        err.contains("panic in hello") && err.contains("told to panic on \"boom\""),
        "{err}"
    );
    assert!(out.contains("still here: [2, 1]"), "{out}");
}

#[test]
fn unknown_config_key_names_the_key_and_the_accepted_keys() {
    let dir = tempfile::tempdir().unwrap();
    build_hello_plugin(dir.path());
    let output = llmlab(
        &["--plugin-dir", dir.path().to_str().unwrap()],
        "tokenizer(\"hello\", #{ wrods: [] })\n",
    );
    let err = stderr(&output);
    assert!(
        err.contains("unknown config key `wrods` for hello; accepted keys: words, panic_on"),
        "{err}"
    );
}

/// `llmlab-nn` and `llmlab-train` are rlibs linked into each plugin that uses them, so every such
/// plugin carries its own copy. That is safe only because none of the process-wide state lives in
/// them: the rayon pool, candle's tensor-id counter (autograd), the tracing dispatcher and the
/// component registry are the runtime's, defined once in `libllmlab_plugin_api.so`. A plugin
/// library that defined one of these itself would hold a second copy.
#[test]
fn building_blocks_carry_no_process_global_of_their_own() {
    let globals = [
        "rayon_core::registry::THE_REGISTRY",
        "candle_core::tensor::TensorId::new::COUNTER",
        "tracing_core::dispatcher::GLOBAL_DISPATCH",
    ];
    let defined = |library: &str| -> String {
        let path = target_dir().join(library);
        assert!(
            path.is_file(),
            "{} is missing: build the workspace first",
            path.display()
        );
        let nm = std::process::Command::new("nm")
            .args(["--defined-only", "--demangle"])
            .arg(&path)
            .output()
            .expect("nm (binutils) runs");
        assert!(
            nm.status.success(),
            "nm {}: {}",
            path.display(),
            stderr(&nm)
        );
        stdout(&nm)
    };
    let runtime = defined("libllmlab_plugin_api.so");
    for global in globals {
        assert!(
            runtime.contains(global),
            "the runtime should define {global}"
        );
    }
    for plugin in [
        "libllmlab_gpt.so",
        "libllmlab_lm_trainer.so",
        "libllmlab_rl.so",
    ] {
        let symbols = defined(plugin);
        assert!(
            symbols.contains("llmlab_nn::"),
            "{plugin} should hold llmlab-nn statically"
        );
        for global in globals {
            assert!(
                !symbols.contains(global),
                "{plugin} defines its own {global}: a second copy of a process-wide global"
            );
        }
    }
}

/// Autograd across plugins with the building blocks linked into each: gpt's forward runs its
/// copy of the fused kernels, lm-trainer's loss and AdamW run its own copy, and backward walks
/// through both (tensor ids from the one runtime). Gradients arrive and the loss falls.
#[test]
fn a_model_from_one_plugin_trains_under_a_trainer_from_another() {
    let runs = tempfile::tempdir().unwrap();
    let script = runs.path().join("cross.rhai");
    std::fs::write(
        &script,
        r#"let data = corpus("stories", #{ bytes: 30000, seed: 3 });
let tok = tokenizer("bpe", #{ vocab_size: 300 });
tok.train(data);
let ds = tok.encode(data, #{ val_fraction: 0.1 });
let gpt = model("gpt", #{ vocab_size: tok.vocab_size(), n_layer: 1, n_head: 2, d_model: 32,
    ctx: 32, norm: "rms", pos: "rope", mlp: "swiglu" });
let lm = trainer("lm", #{ steps: 40, batch_size: 8, lr: 1e-2, warmup: 2, eval_every: 0 });
let first = lm.step(gpt, ds);
let last = lm.fit(gpt, ds);
print(`first ${first.loss} ${first.grad_norm} last ${last.loss}`);
"#,
    )
    .unwrap();
    let output = llmlab(
        &[
            "run",
            script.to_str().unwrap(),
            "--set",
            &format!("runs_dir={}", runs.path().display()),
        ],
        "",
    );
    let (out, err) = (stdout(&output), stderr(&output));
    assert!(output.status.success(), "{out}\n{err}");
    let line = out.lines().find(|l| l.starts_with("first ")).expect(&out);
    let numbers: Vec<f64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let [first, grad_norm, last] = numbers[..] else {
        panic!("{line}")
    };
    assert!(
        grad_norm > 0.0,
        "no gradient reached gpt's parameters: {line}"
    );
    assert!(last < first - 0.5, "the loss did not fall: {line}");
}

/// The fingerprint hashes the contract alone: plugin-api's own source. The building blocks are
/// not inputs, and the tokenizers plugin does not link them, so changing a kernel or AdamW
/// rebuilds gpt, lm-trainer and rl but neither changes the fingerprint nor touches a built
/// tokenizers library, which stays loadable.
#[test]
fn changing_a_kernel_leaves_the_tokenizers_plugin_loadable() {
    let inputs: Vec<&str> = llmlab_plugin_api::declaration::API_HASH_INPUTS
        .split(',')
        .collect();
    assert!(
        inputs.contains(&"plugin-api/src/declaration.rs")
            && inputs.contains(&"plugin-api/src/model.rs"),
        "{inputs:?}"
    );
    for input in &inputs {
        assert!(input.starts_with("plugin-api/src/"), "hashed: {input}");
    }
    let root = repo_root();
    assert!(root.join("nn/src/ops/gelu.rs").is_file() && root.join("train/src/adamw.rs").is_file());

    let tree = |package: &str| -> String {
        let output = std::process::Command::new(env!("CARGO"))
            .args([
                "tree",
                "--offline",
                "--edges",
                "normal",
                "--prefix",
                "none",
                "-p",
                package,
            ])
            .current_dir(&root)
            .output()
            .expect("cargo tree runs");
        assert!(
            output.status.success(),
            "cargo tree -p {package}: {}",
            stderr(&output)
        );
        stdout(&output)
    };
    let tokenizers = tree("llmlab-tokenizers");
    assert!(tokenizers.contains("llmlab-plugin-api"), "{tokenizers}");
    assert!(
        !tokenizers.contains("llmlab-nn") && !tokenizers.contains("llmlab-train"),
        "tokenizers links a building block, so a kernel change would rebuild it:\n{tokenizers}"
    );
    assert!(tree("llmlab-plugin-api")
        .lines()
        .all(|l| !l.starts_with("llmlab-nn") && !l.starts_with("llmlab-train")));
    assert!(tree("llmlab-gpt").contains("llmlab-nn"));

    let listing = llmlab(&["plugins"], "");
    let out = stdout(&listing);
    assert!(
        out.lines().any(|l| l.contains("tokenizers")) && !out.contains("refused"),
        "{out}"
    );
}
