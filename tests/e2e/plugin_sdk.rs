//! What a plugin author runs into, end to end: two plugins whose crates share a name, a plugin
//! refused at start-up that a script then asks for, `llmlab plugin check`'s report, a runtime
//! library next to the host that is not the one it was built against, and the corpora as
//! components (listed by `help()`, unknown names answered with the list).

use std::path::{Path, PathBuf};
use std::process::Command;

use llmlab_e2e::*;

/// The hello example compiled as crate `crate_name` into `dir/lib<file>.so`, its plugin and its
/// tokenizer both renamed `plugin`.
fn hello_as(dir: &Path, file: &str, crate_name: &str, plugin: &str) -> PathBuf {
    let source = std::fs::read_to_string(repo_root().join("docs/examples/hello-plugin/src/lib.rs"))
        .unwrap()
        .replace("\"hello\"", &format!("{plugin:?}"));
    // Each in its own build directory: both are `lib<crate_name>.so` when compiled.
    let build = dir.join(format!("build-{file}"));
    std::fs::create_dir_all(&build).unwrap();
    let source_file = build.join(format!("{file}.rs"));
    std::fs::write(&source_file, source).unwrap();
    let built = compile_library(&build, crate_name, &source_file, true);
    let out = dir.join(format!("lib{file}.{}", std::env::consts::DLL_EXTENSION));
    std::fs::rename(&built, &out).unwrap();
    out
}

#[test]
fn crates_sharing_a_name_register_only_their_own_components() {
    let dir = tempfile::tempdir().unwrap();
    hello_as(dir.path(), "charlstm", "charlstm", "charlstm");
    hello_as(dir.path(), "other", "charlstm", "other");
    let listing = llmlab(
        &["--plugin-dir", dir.path().to_str().unwrap(), "plugins"],
        "",
    );
    let out = stdout(&listing);
    assert!(listing.status.success(), "{}", stderr(&listing));
    assert!(!out.contains("duplicate component"), "{out}");
    assert!(
        out.contains("loaded charlstm 0.1.0") && out.contains("loaded other 0.1.0"),
        "{out}"
    );
    // Each plugin lists exactly its own tokenizer.
    let section = |plugin: &str| -> Vec<String> {
        out.lines()
            .skip_while(|l| !l.starts_with(&format!("loaded {plugin} ")))
            .skip(1)
            .take_while(|l| l.starts_with("  "))
            .map(|l| l.split_whitespace().nth(1).unwrap_or("").to_string())
            .collect()
    };
    assert_eq!(section("charlstm"), ["charlstm"], "{out}");
    assert_eq!(section("other"), ["other"], "{out}");
    // Both work from a script (the renaming made each one's first word its own name).
    let run = llmlab(
        &["--plugin-dir", dir.path().to_str().unwrap()],
        "print(tokenizer(\"charlstm\").encode(\"charlstm world\"));\nprint(tokenizer(\"other\").encode(\"world other\"));\n",
    );
    assert_eq!(stdout(&run), "[1, 2]\n[2, 1]\n", "{}", stderr(&run));
}

#[test]
fn a_refused_plugin_is_named_where_a_script_asks_for_its_component() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("constructor-ran");
    let source = dir.path().join("charlstm.rs");
    let text = fingerprint_with("api_hash", "0123456789abcdef").replace("fixture", "charlstm");
    std::fs::write(&source, declaration_source(&text, &marker)).unwrap();
    let library = compile_library(dir.path(), "charlstm", &source, false);
    let dir_arg = dir.path().to_str().unwrap();

    let output = llmlab(&["--plugin-dir", dir_arg], "model(\"charlstm\", #{})\n");
    let err = stderr(&output);
    assert!(err.contains("unknown model `charlstm`"), "{err}");
    assert!(
        err.contains("libraries refused at start-up")
            && err.contains(&library.display().to_string())
            && err.contains("plugin `charlstm`")
            && err.contains("plugin-api source mismatch"),
        "the refused library and its reason are named:\n{err}"
    );
    // The same for the other lookups: a corpus, a trainer.
    for (call, kind) in [
        ("corpus(\"charlstm\")", "corpus"),
        ("trainer(\"charlstm\")", "trainer"),
    ] {
        let output = llmlab(&["--plugin-dir", dir_arg], &format!("{call}\n"));
        let err = stderr(&output);
        assert!(
            err.contains(&format!("unknown {kind} `charlstm`"))
                && err.contains("plugin-api source mismatch"),
            "{call}: {err}"
        );
    }
    // `llmlab plugins` says "refused:" once per refusal, not "refused: refused".
    let listing = stdout(&llmlab(&["--plugin-dir", dir_arg, "plugins"], ""));
    assert!(listing.contains("refused: "), "{listing}");
    assert!(!listing.contains("refused: refused"), "{listing}");
    assert!(!marker.exists(), "the refused library's constructor ran");
}

#[test]
fn plugin_check_prints_the_declaration_readably() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = build_hello_plugin(dir.path());
    let output = llmlab(&["plugin", "check", plugin.to_str().unwrap()], "");
    let out = stdout(&output);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        !out.contains("Fingerprint {") && !out.contains("Some("),
        "{out}"
    );
    assert!(out.contains("plugin API") && out.contains("rustc"), "{out}");
    assert!(out.contains("plugin              hello 0.1.0"), "{out}");
    assert!(!out.contains("differs"), "{out}");

    // A mismatched one shows which line differs and what the host has.
    let marker = dir.path().join("constructor-ran");
    let source = dir.path().join("old.rs");
    let text = fingerprint_with("rustc", "rustc 1.70.0 (90c541806 2023-05-31)");
    std::fs::write(&source, declaration_source(&text, &marker)).unwrap();
    let library = compile_library(dir.path(), "old", &source, false);
    let output = llmlab(&["plugin", "check", library.to_str().unwrap()], "");
    let out = stdout(&output);
    assert!(!output.status.success());
    assert!(
        out.lines()
            .any(|l| l.contains("rustc 1.70.0") && l.contains("differs: this host has rustc")),
        "{out}"
    );
    assert!(!out.contains("Fingerprint {"), "{out}");
}

#[test]
fn a_stale_runtime_next_to_the_host_is_reported() {
    // A copy of the host beside a runtime built from other sources: the runtime's own
    // fingerprint text (compiled into it) has another api_hash than the host's.
    let dir = tempfile::tempdir().unwrap();
    let host = dir.path().join("llmlab");
    std::fs::copy(llmlab_binary(), &host).unwrap();
    let runtime_name = format!("libllmlab_plugin_api.{}", std::env::consts::DLL_EXTENSION);
    let mut runtime = std::fs::read(target_dir().join("deps").join(&runtime_name)).unwrap();
    let key = b"api_hash=";
    let mut patched = 0;
    let mut at = 0;
    while let Some(pos) = runtime[at..].windows(key.len()).position(|w| w == key) {
        let start = at + pos + key.len();
        for (i, b) in b"f00df00df00df00d".iter().enumerate() {
            runtime[start + i] = *b;
        }
        patched += 1;
        at = start;
    }
    assert!(patched > 0, "the runtime carries its fingerprint text");
    let stale = dir.path().join(&runtime_name);
    std::fs::write(&stale, &runtime).unwrap();

    // Without LD_LIBRARY_PATH (cargo's test runner sets it to the real runtime's directory):
    // the copy finds the runtime beside it through its RUNPATH ($ORIGIN), as an installed host.
    let output = Command::new(&host)
        .arg("plugins")
        .env_remove("LLMLAB_PLUGIN_PATH")
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(out.contains("stale or foreign runtime"), "{out}");
    assert!(
        out.contains(&stale.display().to_string()),
        "names the file:\n{out}"
    );
    assert!(
        out.contains("f00df00df00df00d"),
        "names the runtime's hash:\n{out}"
    );
    assert!(out.contains("cargo build --release --workspace"), "{out}");

    // The real runtime is not reported.
    let listing = stdout(&llmlab(&["plugins"], ""));
    assert!(!listing.contains("stale or foreign runtime"), "{listing}");
}

#[test]
fn corpora_are_components_listed_by_help_and_named_when_unknown() {
    let output = llmlab(
        &[],
        "help()\nlet s = corpus(\"stories\", #{ bytes: 2000, seed: 1 });\nprint(s.len() > 0);\nprint(corpus(\"arithmetic\", #{ n: 3 }).check(\"1+2=\", \"3\"));\ncorpus(\"storys\")\n",
    );
    let (out, err) = (stdout(&output), stderr(&output));
    for name in ["stories", "arithmetic", "sort", "copy", "reverse"] {
        assert!(
            out.contains(&format!("corpus(\"{name}\")")),
            "help() lists {name}:\n{out}"
        );
    }
    assert!(out.contains("[plugin corpora"), "{out}");
    assert!(out.contains("true\ntrue\n"), "{out}\n{err}");
    assert!(
        err.contains("unknown corpus `storys`; available: ") && err.contains("stories"),
        "{err}"
    );
}
