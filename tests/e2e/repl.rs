//! The REPL and `llmlab run` driven as a user would: statements over several lines, `:` commands,
//! an error followed by more work, settings from `--set`.

use llmlab_e2e::*;

#[test]
fn repl_reads_multi_line_input_and_recovers_from_errors() {
    let input = "let double = |x| {\n  x * 2\n};\nfn add(a,\n       b) { a + b }\nno_such_function(1)\nprint(add(double.call(20), 2));\n:plugins\n:help\n:bogus\n";
    let output = llmlab(&[], input);
    let (out, err) = (stdout(&output), stderr(&output));
    assert!(output.status.success(), "{err}");
    assert!(
        err.contains("Function not found: no_such_function"),
        "{err}"
    );
    assert!(out.contains("42"), "{out}");
    assert!(out.contains(":load FILE"), ":help lists commands:\n{out}");
    assert!(err.contains("unknown command :bogus"), "{err}");
}

#[test]
fn repl_keeps_variables_and_prints_values() {
    let output = llmlab(
        &[],
        "let t = tensor([[1, 2], [3, 4]]);\nt.sum()\nt.shape()\n",
    );
    let out = stdout(&output);
    assert!(out.contains("10.0"), "{out}");
    assert!(out.contains("[2, 2]"), "{out}");
}

#[test]
fn run_reads_settings_and_reports_script_errors_with_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("exp.rhai");
    std::fs::write(
        &script,
        "let steps = setting(\"steps\", 500);\nprint(`steps=${steps}`);\n",
    )
    .unwrap();
    let output = llmlab(&["run", script.to_str().unwrap(), "--set", "steps=20"], "");
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output), "steps=20\n");

    std::fs::write(&script, "let x = 1;\nx.nope();\n").unwrap();
    let output = llmlab(&["run", script.to_str().unwrap()], "");
    assert!(!output.status.success());
    let err = stderr(&output);
    assert!(err.contains("exp.rhai") && err.contains("nope"), "{err}");
}

#[test]
fn version_prints_the_fingerprint() {
    let output = llmlab(&["--version"], "");
    let out = stdout(&output);
    assert!(
        out.contains("candle_features=") && out.contains("rustc="),
        "{out}"
    );
}
