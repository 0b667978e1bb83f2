//! Quantization-aware training through the real binary and plugins: `scripts/qat.rhai` runs in
//! CI size and records the host's `qat` key in the run's trainer config; a bad `qat` value is a
//! script error naming the schemes, and a model is dense again after a QAT run.

use llmlab_e2e::*;

#[test]
fn qat_script_compares_post_training_and_quantization_aware_q4_0() {
    let runs = tempfile::tempdir().unwrap();
    let out = run_script(
        "scripts/qat.rhai",
        &[
            ("steps", "6"),
            ("qat_steps", "4"),
            ("bytes", "60000"),
            ("windows", "8"),
            ("name", "qat-ci"),
        ],
        runs.path(),
    );
    for line in ["post-training q4_0: ppl", "QAT q4_0: ppl", "closer to f32"] {
        assert!(out.contains(line), "missing `{line}` in:\n{out}");
    }
    // The last fit was the QAT branch: its recorded config carries the host's key.
    let config =
        std::fs::read_to_string(runs.path().join("qat-ci/configs/trainer-lm.json")).unwrap();
    assert!(config.contains("\"qat\": \"q4_0\""), "{config}");
}

#[test]
fn qat_key_errors_name_the_schemes_and_runs_leave_the_model_dense() {
    let script = r#"
        let gpt = model("gpt", #{ vocab_size: 64, n_layer: 1, n_head: 2, d_model: 32, ctx: 16 });
        try { trainer("lm", #{ qat: "q5_9" }); } catch (e) { print(`bad scheme: ${e}`); }
        try { trainer("lm", #{ qat: 4 }); } catch (e) { print(`bad value: ${e}`); }
        try { trainer("lm", #{ qat: #{ skip: ["lm_head"] } }); } catch (e) { print(`no scheme: ${e}`); }
        let tr = trainer("lm", #{ steps: 1, qat: #{ scheme: "q8_0", skip: ["lm_head"] } });
        print(`config qat: ${tr.config().qat}`);
        fake_quant(gpt, "q4_0");
        print(`switched: ${fake_quant(gpt)}`);
        fake_quant(gpt, ());
        print(`off: ${fake_quant(gpt) == ()}`);
    "#;
    let dir = tempfile::tempdir().unwrap();
    let out = run_inline_script("qat_errors", script, &[], dir.path());
    assert!(
        out.contains("bad scheme: ")
            && out.contains("unknown scheme `q5_9`")
            && out.contains("q4_0, q4_1"),
        "{out}"
    );
    assert!(
        out.contains("bad value: ") && out.contains("expected a scheme name"),
        "{out}"
    );
    assert!(
        out.contains("no scheme: ") && out.contains("needs `scheme`"),
        "{out}"
    );
    assert!(out.contains("config qat: #{\"scheme\": \"q8_0\""), "{out}");
    assert!(out.contains("switched: q4_0"), "{out}");
    assert!(out.contains("off: true"), "{out}");
}
