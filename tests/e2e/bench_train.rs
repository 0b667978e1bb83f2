//! `llmlab bench train --precision`: the option reaches the `lm` trainer (a bf16 run trains in
//! bf16: its loss differs from f32's by rounding, not more), the line says which precision it
//! measured, the parameter count is the one the MFU is computed from (and the PyTorch peer's
//! count), and a CPU line carries no GPU fields. No timing is asserted.

use llmlab_e2e::*;
use llmlab_plugin_api::serde_json::{self, Value};

fn bench_train(precision: &str) -> Value {
    let run = llmlab(
        &[
            "bench",
            "train",
            "--config",
            "tiny",
            "--steps",
            "1",
            "--precision",
            precision,
        ],
        "",
    );
    assert!(run.status.success(), "{precision}: {}", stderr(&run));
    let out = stdout(&run);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "one line per config: {out}");
    serde_json::from_str(lines[0]).expect("a JSON line")
}

#[test]
fn bench_train_passes_the_precision_to_the_trainer_and_reports_it() {
    let f32_line = bench_train("f32");
    let bf16_line = bench_train("bf16");
    // The tiny shape (4 layers, d_model 256, ctx 128, vocab 2048, tied): V·d + ctx·d +
    // L·(12d² + 13d) + 2d, as torch_gpt.py's sum(p.numel()) counts it.
    let params = 2048 * 256 + 128 * 256 + 4 * (12 * 256 * 256 + 13 * 256) + 2 * 256;
    for (line, precision) in [(&f32_line, "f32"), (&bf16_line, "bf16")] {
        assert_eq!(line["precision"], precision, "{line}");
        assert_eq!(line["params"], params, "{line}");
        assert!(line["train_tok_s"].as_f64().unwrap() > 0.0, "{line}");
        for field in ["mfu", "mfu_attn", "step_ms", "peak_tflops"] {
            assert!(
                line.get(field).is_none(),
                "a CPU line has no {field}: {line}"
            );
        }
    }
    // Same seed, same data, 4 steps: bf16's passes round, so the loss moves, but only a little.
    let (a, b) = (
        f32_line["final_loss"].as_f64().unwrap(),
        bf16_line["final_loss"].as_f64().unwrap(),
    );
    assert!(a.is_finite() && b.is_finite(), "{a} {b}");
    assert_ne!(
        a, b,
        "bf16 trained exactly as f32 did: the precision did not reach the trainer"
    );
    assert!((a - b).abs() < 0.05, "f32 {a} vs bf16 {b}");

    let bad = llmlab(&["bench", "train", "--precision", "fp8"], "");
    assert!(!bad.status.success());
    assert!(
        stderr(&bad).contains("--precision \"fp8\": expected f32, bf16 or f16"),
        "{}",
        stderr(&bad)
    );
    let bad = llmlab(&["bench", "train", "--peak-tflops", "0"], "");
    assert!(
        !bad.status.success() && stderr(&bad).contains("--peak-tflops"),
        "{}",
        stderr(&bad)
    );
}
