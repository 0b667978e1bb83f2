//! T5 through the real binary and plugins (docs/t5.md): `scripts/t5_multitask.rhai` at CI size
//! (span pretraining, multitask and single-task seq2seq, a gpt baseline, the accuracy table,
//! generation, q8_0 and save/load); the HF fixture's unigram `tokenizer.json` with its sentinels
//! and `model_load` of the HF directory; errors that name their cause.

use llmlab_e2e::*;

fn expected_tokenizer() -> llmlab_plugin_api::serde_json::Value {
    let path = repo_root().join("plugins/t5/tests/fixtures/tiny-t5-expected.json");
    let all: llmlab_plugin_api::serde_json::Value =
        llmlab_plugin_api::serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    all["tokenizer"].clone()
}

#[test]
fn t5_multitask_script_prints_the_per_task_table_at_ci_size() {
    let runs = tempfile::tempdir().unwrap();
    let out = run_script(
        "scripts/t5_multitask.rhai",
        &[
            ("span_steps", "3"),
            ("ft_steps", "3"),
            ("n_train", "120"),
            ("eval_n", "4"),
            ("bytes", "30000"),
            ("d_model", "32"),
            ("batch_size", "8"),
            ("name", "t5-ci"),
        ],
        runs.path(),
    );
    for line in [
        "| task | t5 multitask | t5 single-task | gpt multitask",
        "| add |",
        "| reverse |",
        "| compare |",
        "q8_0 multitask add accuracy:",
        "reloaded: true",
    ] {
        assert!(out.contains(line), "missing `{line}` in:\n{out}");
    }
    let configs = runs.path().join("t5-ci/configs");
    for trainer in ["trainer-span.json", "trainer-seq2seq.json"] {
        assert!(
            configs.join(trainer).exists(),
            "no {trainer} in {configs:?}"
        );
    }
}

#[test]
fn hf_t5_directory_and_its_unigram_tokenizer_with_sentinels_load() {
    let e = expected_tokenizer();
    let script = format!(
        r#"
        let tok = tokenizer_load("{root}/plugins/t5/tests/fixtures/tiny-t5-v1_1/tokenizer.json");
        print(`ids: ${{tok.encode({text:?})}}`);
        print(`extra_id_0: ${{tok.token_to_id("<extra_id_0>")}}`);
        let m = model_load("{root}/plugins/t5/tests/fixtures/tiny-t5-v1_1");
        print(`name: ${{m.config().feed_forward}} ${{m.num_params()}}`);
        print(`text: ${{m.generate(tok, "the cat sat", #{{ max_tokens: 4, temperature: 0.0 }})}}`);
        "#,
        root = repo_root().display(),
        text = e["text"].as_str().unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let out = run_inline_script("hf_t5", &script, &[], dir.path());
    // llmlab's `encode` leaves out the post-processor's `</s>` (HF's add_special_tokens=False);
    // t5 appends it to every prompt itself.
    let mut ids: Vec<String> = e["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.to_string())
        .collect();
    assert_eq!(
        ids.pop().as_deref(),
        Some("1"),
        "the fixture's ids end with </s>"
    );
    assert!(out.contains(&format!("ids: [{}]", ids.join(", "))), "{out}");
    assert!(
        out.contains(&format!("extra_id_0: {}", e["extra_id_0"])),
        "{out}"
    );
    assert!(out.contains("name: gated-gelu"), "{out}");
    assert!(out.contains("text: "), "{out}");
}

#[test]
fn a_prompt_over_the_encoder_length_and_a_missing_sentinel_are_named() {
    let script = r#"
        let tok = tokenizer("bpe", #{ vocab_size: 270, special_tokens: ["<|endoftext|>", "<pad>"] });
        tok.train(corpus("stories", #{ bytes: 20000, seed: 1 }));
        let eos = tok.token_to_id("<|endoftext|>");
        let t5 = model("t5", #{ vocab_size: 270, d_model: 16, d_kv: 4, d_ff: 32, ctx: 8,
                                 relative_attention_num_buckets: 8, relative_attention_max_distance: 8,
                                 eos_token_id: eos, pad_token_id: 1, decoder_start_token_id: 1 });
        try {
            t5.generate(tok, "once upon a time there was a very long prompt", #{ max_tokens: 2 });
        } catch (e) { print(`long prompt: ${e}`); }
        let ds = tok.encode(corpus("stories", #{ bytes: 20000, seed: 1 }), #{ val_fraction: 0.1 });
        try {
            trainer("span", #{ steps: 1, batch_size: 2, ctx: 8 }).fit(t5, ds, tok);
        } catch (e) { print(`no sentinel: ${e}`); }
        try {
            trainer("span", #{ steps: 1, batch_size: 2, ctx: 8 }).fit(t5, ds);
        } catch (e) { print(`no tokenizer: ${e}`); }
    "#;
    let dir = tempfile::tempdir().unwrap();
    let out = run_inline_script("t5_errors", script, &[], dir.path());
    assert!(
        out.contains("long prompt:") && out.contains("over the encoder length (ctx = 8)"),
        "{out}"
    );
    assert!(
        out.contains("no sentinel:") && out.contains("has no sentinel token `<extra_id_0>`"),
        "{out}"
    );
    assert!(
        out.contains("no tokenizer:")
            && out.contains("needs the tokenizer for its sentinel tokens"),
        "{out}"
    );
}

#[test]
fn corpus_mix_with_a_glue_task_trains_seq2seq_and_is_evaluated() {
    // The GLUE-style sentiment task enters the mixture as label words ("positive" /
    // "negative") beside arithmetic; seq2seq trains a tiny T5 on it, and accuracy() scores
    // held-out sentiment examples (another seed) by exact match of the label word.
    let script = r#"
        let specials = ["<|endoftext|>", "<pad>", "<extra_id_0>"];
        let sentiment = corpus("glue", #{ task: "sentiment", n: 200, seed: 1 });
        let tok = tokenizer("bpe", #{ vocab_size: 300, special_tokens: specials });
        tok.train(sentiment);
        let mix = corpus_mix([
            #{ corpus: sentiment, prefix: "sentiment: ", rate: 3.0 },
            #{ corpus: corpus("arithmetic", #{ n: 200, digits: 1, seed: 1 }), prefix: "add: ", rate: 1.0 },
        ]);
        print(`mixture: ${mix}`);
        let pad = tok.token_to_id("<pad>");
        let t5 = model("t5", #{ vocab_size: tok.vocab_size(), d_model: 32, d_kv: 8, d_ff: 64,
                                n_head: 4, n_layer: 1, ctx: 160, feed_forward: "gated-gelu",
                                eos_token_id: tok.token_to_id("<|endoftext|>"), pad_token_id: pad,
                                decoder_start_token_id: pad, seed: 1 });
        let r = trainer("seq2seq", #{ steps: 60, batch_size: 16, lr: 3e-3, warmup: 5, ctx: 160,
                                      log_every: 1, eval_every: 0 }).fit(t5, mix, tok);
        let test = corpus_mix([#{ corpus: corpus("glue", #{ task: "sentiment", n: 20, seed: 9 }),
                                  prefix: "sentiment: " }]);
        let opts = #{ n: 20, max_tokens: 8 };
        print(`sentiment accuracy= ${accuracy(t5, tok, test, opts)}`);
        let answer = t5.generate(tok, test.examples(1)[0].prompt,
                                 #{ max_tokens: 8, temperature: 0.0 });
        print(`answer=[${answer}]`);
        "#;
    let dir = tempfile::tempdir().unwrap();
    let out = run_inline_script("glue_mix", script, &[], dir.path());
    assert!(out.contains("mixture:"), "{out}");
    let at = out.find("sentiment accuracy=").expect("accuracy printed") + 19;
    let accuracy: f64 = out[at..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!((0.0..=1.0).contains(&accuracy), "{out}");
    // 60 steps teach the answer's form: a label word of the task.
    let answer = out
        .split("answer=[")
        .nth(1)
        .unwrap()
        .split(']')
        .next()
        .unwrap();
    assert!(
        ["positive", "negative"].contains(&answer.trim()),
        "the sentiment answer is a label word: {answer:?}\n{out}"
    );
    // Training on the mixture lowered the loss (metrics.jsonl of the seq2seq run).
    let mut losses = Vec::new();
    for entry in walk(dir.path()) {
        if entry.ends_with("metrics.jsonl") {
            for line in std::fs::read_to_string(&entry).unwrap().lines() {
                let v: llmlab_plugin_api::serde_json::Value =
                    llmlab_plugin_api::serde_json::from_str(line).unwrap();
                if let Some(l) = v.get("loss").and_then(|l| l.as_f64()) {
                    losses.push(l);
                }
            }
        }
    }
    assert!(losses.len() >= 10, "{losses:?}");
    let head: f64 = losses[..5].iter().sum::<f64>() / 5.0;
    let tail: f64 = losses[losses.len() - 5..].iter().sum::<f64>() / 5.0;
    assert!(tail < 0.7 * head, "loss {head} → {tail}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}
