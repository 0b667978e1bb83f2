//! `--device`: on a build without CUDA (what CI builds), asking for `cuda` is a clear error that
//! says the build lacks CUDA and how to get one, not a panic; a malformed device is named.

use llmlab_e2e::*;

#[test]
fn cuda_on_a_cpu_build_says_how_to_build_with_cuda() {
    if llmlab_plugin_api::declaration::CANDLE_FEATURES != "cpu" {
        // A cuda build: the same request is covered by the host's `device` unit tests.
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("noop.rhai");
    std::fs::write(&script, "print(1 + 1);").unwrap();
    for device in ["cuda", "cuda:1"] {
        let run = llmlab(&["--device", device, "run", script.to_str().unwrap()], "");
        let err = stderr(&run);
        assert!(!run.status.success(), "{device}: ran on a CPU build");
        assert!(
            err.contains(&format!("--device {device}")) && err.contains("built without CUDA"),
            "{device}: {err}"
        );
        assert!(err.contains("scripts/build-cuda.sh"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(stdout(&run).is_empty(), "the script must not run");
    }
    let run = llmlab(&["--device", "gpu", "run", script.to_str().unwrap()], "");
    let err = stderr(&run);
    assert!(
        !run.status.success() && err.contains("--device gpu: expected cpu, cuda or cuda:N"),
        "{err}"
    );
    let run = llmlab(&["--device", "cpu", "run", script.to_str().unwrap()], "");
    assert!(run.status.success(), "{}", stderr(&run));
    assert_eq!(stdout(&run), "2\n");
}

/// `llmlab bench kernels` (the check a GPU session runs first, docs/cuda.md) on this build's
/// device: every fused op's output and gradients against the composed reference, one JSON line
/// each; on the CPU the f32 kernels run and pass, bf16 has no CPU kernel and says so.
#[test]
fn bench_kernels_checks_every_fused_op_against_its_reference() {
    let run = llmlab(
        &["bench", "kernels", "--reps", "1", "--dtype", "f32,bf16"],
        "",
    );
    assert!(run.status.success(), "{}", stderr(&run));
    let lines: Vec<llmlab_plugin_api::serde_json::Value> = stdout(&run)
        .lines()
        .map(|l| llmlab_plugin_api::serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let ops: std::collections::BTreeSet<&str> =
        lines.iter().map(|l| l["op"].as_str().unwrap()).collect();
    for op in [
        "layer_norm",
        "rms_norm",
        "softmax",
        "gelu",
        "swiglu",
        "rope",
        "causal_attention",
        "token_nll",
        "adamw",
    ] {
        assert!(ops.contains(op), "{op} missing from {ops:?}");
    }
    for line in &lines {
        assert!(line["fused_ms"].as_f64().unwrap() > 0.0, "{line}");
        if line["dtype"] == "f32" {
            assert_eq!(line["kernel"], true, "{line}");
            assert_eq!(line["ok"], true, "{line}");
        } else {
            assert_eq!(
                line["kernel"], false,
                "a CPU build has no bf16 kernel: {line}"
            );
        }
    }
    let bad = llmlab(&["bench", "kernels", "--dtype", "f64"], "");
    assert!(
        !bad.status.success() && stderr(&bad).contains("--dtype \"f64\""),
        "{}",
        stderr(&bad)
    );
}
