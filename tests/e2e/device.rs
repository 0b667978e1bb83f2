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
