//! BERT end to end (issue 18): `scripts/bert_glue.rhai` at CI size (wordpiece, MLM
//! pretraining with its validation metrics in `metrics.jsonl`, fine-tuning from scratch and
//! pretrained, the table saved in the run directory); `help("bert")`; the wordpiece tokenizer
//! reading a Hugging Face BERT tokenizer.json with the same ids; bad labelled input named.

use std::path::{Path, PathBuf};

use llmlab_e2e::{
    llmlab, repo_root, run_inline_script, run_script, run_script_output, stderr, stdout,
};
use llmlab_plugin_api::serde_json::{self, Value};

fn files_named(dir: &Path, name: &str, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files_named(&path, name, found);
        } else if path.file_name().is_some_and(|n| n == name) {
            found.push(path);
        }
    }
}

#[test]
fn bert_glue_script_pretrains_fine_tunes_and_saves_the_table() {
    let runs = tempfile::tempdir().unwrap();
    let script = repo_root().join("scripts/bert_glue.rhai");
    let out = run_script(
        script.to_str().unwrap(),
        &[
            ("bytes", "20000"),
            ("vocab_size", "200"),
            ("d_model", "16"),
            ("n_head", "2"),
            ("n_layer", "1"),
            ("ctx", "128"),
            ("batch_size", "4"),
            ("mlm_steps", "4"),
            ("ft_steps", "4"),
            ("n", "24"),
            ("tasks", "entailment,similarity"),
            ("next_sentence", "0.5"),
        ],
        runs.path(),
    );
    assert!(
        out.contains("| task | metric | majority baseline | from scratch | pretrained (MLM) |"),
        "{out}"
    );
    assert!(
        out.contains("| entailment | accuracy |") && out.contains("| similarity | pearson |"),
        "{out}"
    );
    let mut tables = Vec::new();
    files_named(runs.path(), "glue_table.md", &mut tables);
    assert_eq!(tables.len(), 1, "{tables:?}");
    assert!(std::fs::read_to_string(&tables[0])
        .unwrap()
        .contains("| entailment |"));
    // The MLM run's validation metrics are in metrics.jsonl.
    let mut metrics = Vec::new();
    files_named(runs.path(), "metrics.jsonl", &mut metrics);
    let records: Vec<Value> = metrics
        .iter()
        .flat_map(|p| {
            std::fs::read_to_string(p)
                .unwrap()
                .lines()
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .filter_map(|l| serde_json::from_str(&l).ok())
        .collect();
    let mlm = records
        .iter()
        .find(|r| r.to_string().contains("val_masked_accuracy"))
        .unwrap_or_else(|| panic!("no val_masked_accuracy in {metrics:?}"));
    assert!(mlm.to_string().contains("val_loss"), "{mlm}");
    assert!(
        mlm.to_string().contains("val_next_sentence_accuracy"),
        "{mlm}"
    );
    assert!(
        records
            .iter()
            .any(|r| r.to_string().contains("val_pearson")),
        "classify metrics"
    );
}

#[test]
fn bert_glue_script_fine_tunes_a_saved_encoder_given_as_pretrained() {
    let first = tempfile::tempdir().unwrap();
    let script = repo_root().join("scripts/bert_glue.rhai");
    let script = script.to_str().unwrap();
    let size = [
        ("bytes", "20000"),
        ("vocab_size", "200"),
        ("d_model", "16"),
        ("n_head", "2"),
        ("n_layer", "1"),
        ("batch_size", "4"),
        ("mlm_steps", "4"),
        ("ft_steps", "4"),
        ("n", "24"),
        ("tasks", "similarity"),
    ];
    run_script(script, &size, first.path());
    let mut saved = Vec::new();
    files_named(first.path(), "config.json", &mut saved);
    let encoder = saved
        .iter()
        .map(|p| p.parent().unwrap().to_path_buf())
        .find(|d| d.ends_with("bert-mlm"))
        .unwrap_or_else(|| panic!("no bert-mlm directory among {saved:?}"));
    let encoder = encoder.to_str().unwrap();

    // Pretraining is skipped: no MLM metrics in the second run, and both columns are filled.
    let second = tempfile::tempdir().unwrap();
    let mut with_encoder = size.to_vec();
    with_encoder.push(("pretrained", encoder));
    let out = run_script(script, &with_encoder, second.path());
    assert!(
        out.contains(&format!("pretrained encoder: {encoder}")),
        "{out}"
    );
    let row = out
        .lines()
        .find(|l| l.starts_with("| similarity | pearson |"))
        .unwrap_or_else(|| panic!("no similarity row in\n{out}"));
    assert_eq!(
        row.split('|').filter(|c| !c.trim().is_empty()).count(),
        5,
        "{row}"
    );
    let mut metrics = Vec::new();
    files_named(second.path(), "metrics.jsonl", &mut metrics);
    assert!(!metrics.is_empty());
    for path in &metrics {
        let text = std::fs::read_to_string(path).unwrap();
        assert!(
            !text.contains("val_masked_accuracy"),
            "{path:?} has an MLM run"
        );
    }

    // A tokenizer that does not give the encoder's ids is refused, naming both sizes.
    let mut mismatched = with_encoder.clone();
    mismatched[1] = ("vocab_size", "300");
    mismatched[0] = ("bytes", "30000");
    let output = run_script_output(script, &mismatched, second.path());
    assert!(!output.status.success(), "a vocab_size mismatch must fail");
    let err = stderr(&output);
    assert!(
        err.contains("vocab_size 200") && err.contains("has 300") && err.contains(encoder),
        "{err}"
    );
}

#[test]
fn help_lists_every_bert_key_and_the_encoder_trainers() {
    let out = stdout(&llmlab(
        &[],
        "help(\"bert\")\nhelp(\"mlm\")\nhelp(\"classify\")\nhelp(\"glue\")\n",
    ));
    for key in [
        "vocab_size",
        "n_layer",
        "n_head",
        "d_model",
        "d_ff",
        "ctx",
        "type_vocab_size",
        "dropout",
        "norm_eps",
        "norm_position",
        "activation",
        "head",
        "seed",
        "mask_prob",
        "whole_word",
        "patience",
        "metric",
        "truncate",
        "pooling",
        "task",
        "val",
    ] {
        assert!(out.contains(key), "help lists `{key}`:\n{out}");
    }
}

#[test]
fn wordpiece_reads_a_hugging_face_bert_tokenizer_with_the_same_ids() {
    let fixtures = repo_root().join("plugins/bert/tests/fixtures");
    let expected: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures.join("tiny-bert-expected.json")).unwrap(),
    )
    .unwrap();
    let texts = expected["texts"].as_array().unwrap();
    let mut script = format!(
        "let tok = tokenizer_load(\"{}\");\n",
        fixtures.join("tiny-bert-mlm/tokenizer.json").display()
    );
    for text in texts {
        script.push_str(&format!("print(tok.encode({}));\n", text));
    }
    let output = llmlab(&[], &script);
    let out = stdout(&output);
    for ids in expected["text_ids"].as_array().unwrap() {
        let ids: Vec<String> = ids
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.to_string())
            .collect();
        assert!(
            out.contains(&format!("[{}]", ids.join(", "))),
            "{ids:?} in\n{out}\n{}",
            stderr(&output)
        );
    }
}

#[test]
fn bad_labelled_input_names_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let train = write("train.jsonl", "{\"text\": \"tom went home\", \"label\": \"yes\"}\n{\"text\": \"sue sat\", \"label\": \"no\"}\n");
    let val = write(
        "val.jsonl",
        "{\"text\": \"tom sat\", \"label\": \"perhaps\"}\n",
    );
    let pairs = write("pairs.jsonl", "{\"text\": \"a\", \"text_pair\": \"b\", \"label\": \"yes\"}\n{\"text\": \"tom sat\", \"label\": \"no\"}\n");
    let long = write(
        "long.jsonl",
        &format!(
            "{{\"text\": \"{}\", \"label\": \"yes\"}}\n{{\"text\": \"sue\", \"label\": \"no\"}}\n",
            "tom went home ".repeat(20)
        ),
    );
    let run = |body: &str| {
        let script = dir.path().join("bad.rhai");
        std::fs::write(&script, format!(
            "let tok = tokenizer(\"wordpiece\", #{{ vocab_size: 120 }});\n\
             tok.train(corpus(\"stories\", #{{ bytes: 3000, seed: 1 }}));\n\
             let m = model(\"bert\", #{{ vocab_size: tok.vocab_size(), n_layer: 1, n_head: 2, d_model: 8, ctx: 16 }});\n\
             let tr = trainer(\"classify\", #{{ steps: 1, batch_size: 2, eval_every: 0 }});\n{body}\n"
        )).unwrap();
        let output = run_script_output(script.to_str().unwrap(), &[], dir.path());
        assert!(!output.status.success(), "{body} should fail");
        stderr(&output)
    };
    let err = run(&format!(
        "labelled(#{{ train: \"{train}\", val: \"{val}\" }})"
    ));
    assert!(
        err.contains("val.jsonl:1")
            && err.contains("unknown label \"perhaps\"")
            && err.contains("no, yes"),
        "{err}"
    );
    let err = run(&format!("labelled(\"{pairs}\")"));
    assert!(
        err.contains("pairs.jsonl:2") && err.contains("single sentence"),
        "{err}"
    );
    let err = run(&format!(
        "tr.fit(m, labelled(#{{ train: \"{long}\", val_fraction: 0.0 }}), tok)"
    ));
    assert!(
        err.contains("train example 0") && err.contains("over the model's ctx = 16"),
        "{err}"
    );
    // Entailment's training mix: only for entailment, only a share.
    let err = run("glue(#{ tasks: [\"sentiment\"], n: 10, hard_negatives: 1.0 })");
    assert!(
        err.contains("hard_negatives") && err.contains("does not include entailment"),
        "{err}"
    );
    let err = run("glue(#{ tasks: [\"entailment\"], n: 10, hard_negatives: 1.5 })");
    assert!(
        err.contains("hard_negatives must be within 0..=1, not 1.5"),
        "{err}"
    );
}

/// The value after `key=` in `out` (a number the script printed).
fn printed(out: &str, key: &str) -> f64 {
    let at = out
        .find(&format!("{key}="))
        .unwrap_or_else(|| panic!("no {key}= in\n{out}"));
    out[at + key.len() + 1..]
        .trim_start()
        .split(|c: char| c.is_whitespace())
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|e| panic!("{key}: {e} in\n{out}"))
}

#[test]
fn token_classification_learns_the_roles_task_and_reads_tagged_jsonl() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    // Words the wordpiece vocabulary splits into several pieces (first piece tagged).
    let train = write(
        "train.jsonl",
        "{\"tokens\": [\"Tom\", \"wandered\", \"to\", \"Zanzibar\", \".\"], \"labels\": [\"B-WHO\", \"O\", \"O\", \"B-WHERE\", \"O\"]}\n\
         {\"tokens\": [\"Lily\", \"found\", \"a\", \"teapot\"], \"labels\": [\"B-WHO\", \"O\", \"O\", \"B-WHAT\"]}\n\
         {\"tokens\": [\"Mia\", \"slept\"], \"labels\": [\"B-WHO\", \"O\"]}\n",
    );
    let val = write(
        "val.jsonl",
        "{\"tokens\": [\"Ben\", \"went\", \"to\", \"Timbuktu\"], \"labels\": [\"B-WHO\", \"O\", \"O\", \"B-WHERE\"]}\n",
    );
    let script = format!(
        r#"
        let roles = glue(#{{ tasks: ["roles"], n: 400, val: 80, seed: 3 }}).roles;
        print(`tagging=${{roles.is_tagging()}} labels=${{roles.labels()}} metric=${{roles.metric()}}`);
        print(`example=${{roles.example(0)}}`);
        let tok = tokenizer("wordpiece", #{{ vocab_size: 160 }});
        tok.train(corpus("glue", #{{ task: "roles", n: 400, seed: 3 }}));
        let config = #{{ vocab_size: tok.vocab_size(), n_layer: 1, n_head: 2, d_model: 32,
                         ctx: 48, dropout: 0.0, seed: 1 }};
        let m = model("bert", config);
        let r = trainer("classify", #{{ steps: 600, batch_size: 16, lr: 3e-3, warmup: 20,
                                        eval_every: 200, seed: 1 }}).fit(m, roles, tok);
        print(`roles: accuracy= ${{r.val_accuracy}} f1= ${{r.val_f1}} loss= ${{r.val_loss}}`);
        let files = labelled(#{{ train: "{train}", val: "{val}" }});
        print(`file labels=${{files.labels()}} tagging=${{files.is_tagging()}}`);
        let f = trainer("classify", #{{ steps: 2, batch_size: 2, eval_every: 2 }})
            .fit(model("bert", config), files, tok);
        print(`file: accuracy= ${{f.val_accuracy}} f1= ${{f.val_f1}}`);
        "#
    );
    let out = run_inline_script("roles", &script, &[], dir.path());
    assert!(
        out.contains("tagging=true")
            && out.contains("B-WHO")
            && out.contains("I-WHAT")
            && out.contains("metric=f1"),
        "{out}"
    );
    assert!(out.contains("tokens") && out.contains("tags"), "{out}");
    // 600 steps of a 1-layer, width-32 BERT: the roles are learnt (untrained: accuracy ~1/7,
    // F1 ~0; tagging every word O gives accuracy ~0.6 and F1 0).
    let accuracy = printed(&out, "accuracy");
    let f1 = printed(&out, "f1");
    assert!(accuracy > 0.85, "token accuracy {accuracy}\n{out}");
    assert!(f1 > 0.7, "entity F1 {f1}\n{out}");
    assert!(
        out.contains("file labels=[\"B-WHAT\", \"B-WHERE\", \"B-WHO\", \"O\"] tagging=true"),
        "{out}"
    );
    let file_accuracy = printed(out.split("file:").nth(1).unwrap(), "accuracy");
    assert!((0.0..=1.0).contains(&file_accuracy), "{out}");

    // A decoder has no token head: refused naming the cause.
    let refused = dir.path().join("gpt_roles.rhai");
    std::fs::write(
        &refused,
        "let roles = glue(#{ tasks: [\"roles\"], n: 20, seed: 3 }).roles;\n\
         let tok = tokenizer(\"wordpiece\", #{ vocab_size: 120 });\n\
         tok.train(corpus(\"glue\", #{ task: \"roles\", n: 20, seed: 3 }));\n\
         let m = model(\"gpt\", #{ vocab_size: tok.vocab_size(), n_layer: 1, n_head: 2, d_model: 16, ctx: 48 });\n\
         trainer(\"classify\", #{ steps: 1, batch_size: 2 }).fit(m, roles, tok);\n",
    )
    .unwrap();
    let output = run_script_output(refused.to_str().unwrap(), &[], dir.path());
    assert!(!output.status.success());
    let err = stderr(&output);
    assert!(
        err.contains("token classification") && err.contains("token head"),
        "{err}"
    );
}

#[test]
fn gpt_last_token_fine_tuning_fills_the_gpt_column_and_learns() {
    let runs = tempfile::tempdir().unwrap();
    let script = repo_root().join("scripts/bert_glue.rhai");
    let out = run_script(
        script.to_str().unwrap(),
        &[
            ("gpt", "true"),
            ("bytes", "20000"),
            ("vocab_size", "200"),
            ("d_model", "32"),
            ("n_head", "2"),
            ("n_layer", "1"),
            ("ctx", "96"),
            ("batch_size", "16"),
            ("mlm_steps", "4"),
            ("ft_steps", "60"),
            ("ft_lr", "0.003"),
            ("patience", "0"),
            ("n", "300"),
            ("tasks", "sentiment"),
        ],
        runs.path(),
    );
    assert!(
        out.contains("| task | metric | majority baseline | from scratch | pretrained (MLM) | gpt (LM, last token) |"),
        "{out}"
    );
    let row = out
        .lines()
        .find(|l| l.starts_with("| sentiment | accuracy |"))
        .unwrap_or_else(|| panic!("no sentiment row in\n{out}"));
    let cells: Vec<f64> = row
        .split('|')
        .map(str::trim)
        .filter_map(|c| c.parse().ok())
        .collect();
    assert_eq!(cells.len(), 4, "baseline, scratch, pretrained, gpt: {row}");
    let (baseline, gpt) = (cells[0], cells[3]);
    // Sentiment (how the story ended) is easy: the decoder's last-token head must beat the
    // majority class clearly.
    assert!(
        gpt > baseline + 0.2,
        "gpt {gpt} vs baseline {baseline}: {row}"
    );
}

#[test]
fn classify_pooling_reaches_the_head_is_saved_and_bad_values_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("clf");
    let script = format!(
        r#"
        let tok = tokenizer("wordpiece", #{{ vocab_size: 160 }});
        tok.train(corpus("stories", #{{ bytes: 20000, seed: 1 }}));
        let data = glue(#{{ tasks: ["sentiment"], n: 300, val: 60, seed: 3 }}).sentiment;
        let m = model("bert", #{{ vocab_size: tok.vocab_size(), n_layer: 1, n_head: 2, d_model: 32,
                                  ctx: 128, dropout: 0.0, seed: 1 }});
        let r = trainer("classify", #{{ steps: 80, batch_size: 16, lr: 3e-3, warmup: 8,
                                        eval_every: 40, seed: 1, pooling: "mean" }}).fit(m, data, tok);
        print(`mean: accuracy= ${{r.val_accuracy}} baseline= ${{data.baseline().value}}`);
        print(`trained head=${{m.config().head}}`);
        m.save("{saved}");
        let back = model_load("{saved}");
        print(`loaded head=${{back.config().head}}`);
        // Unset pooling keeps the head the model has.
        trainer("classify", #{{ steps: 2, batch_size: 4, eval_every: 0 }}).fit(back, data, tok);
        print(`kept head=${{back.config().head}}`);
        "#,
        saved = saved.display()
    );
    let out = run_inline_script("pooling", &script, &[], dir.path());
    for line in ["trained head=", "loaded head=", "kept head="] {
        let head = out
            .lines()
            .find(|l| l.starts_with(line))
            .unwrap_or_else(|| panic!("no {line} in\n{out}"));
        assert!(
            head.contains("pooling: \"mean\"") || head.contains("\"pooling\": \"mean\""),
            "{head}"
        );
    }
    let config = std::fs::read_to_string(saved.join("config.json")).unwrap();
    assert!(config.contains("\"pooling\": \"mean\""), "{config}");
    // Sentiment (how the story ended) with a mean-pooled head: learnt, not the majority guess.
    let accuracy = printed(&out, "accuracy");
    let baseline = printed(&out, "baseline");
    assert!(
        accuracy > baseline + 0.2,
        "mean pooling: accuracy {accuracy} vs baseline {baseline}\n{out}"
    );

    let run = |body: &str| {
        let script = dir.path().join("bad_pooling.rhai");
        std::fs::write(
            &script,
            format!(
                "let tok = tokenizer(\"wordpiece\", #{{ vocab_size: 120 }});\n\
                 tok.train(corpus(\"glue\", #{{ task: \"roles\", n: 20, seed: 3 }}));\n{body}\n"
            ),
        )
        .unwrap();
        let output = run_script_output(script.to_str().unwrap(), &[], dir.path());
        assert!(!output.status.success(), "{body} should fail");
        stderr(&output)
    };
    let err = run("trainer(\"classify\", #{ steps: 1, pooling: \"avg\" });");
    assert!(
        err.contains("`pooling`") && err.contains("cls, mean, max") && err.contains("avg"),
        "{err}"
    );
    let err = run(
        "let m = model(\"gpt\", #{ vocab_size: tok.vocab_size(), n_layer: 1, n_head: 2, d_model: 16, ctx: 64 });\n\
         trainer(\"classify\", #{ steps: 1, batch_size: 2, pooling: \"max\" })\n\
             .fit(m, glue(#{ tasks: [\"sentiment\"], n: 20, seed: 3 }).sentiment, tok);",
    );
    assert!(
        err.contains("`pooling`") && err.contains("last-token head"),
        "{err}"
    );
    let err = run(
        "let m = model(\"bert\", #{ vocab_size: tok.vocab_size(), n_layer: 1, n_head: 2, d_model: 16, ctx: 64 });\n\
         trainer(\"classify\", #{ steps: 1, batch_size: 2, pooling: \"mean\" })\n\
             .fit(m, glue(#{ tasks: [\"roles\"], n: 20, seed: 3 }).roles, tok);",
    );
    assert!(
        err.contains("`pooling`") && err.contains("token-classification"),
        "{err}"
    );
    let err = run(
        "model(\"bert\", #{ vocab_size: 120, n_layer: 1, n_head: 2, d_model: 16, ctx: 64,\n\
                            head: #{ kind: \"sequence\", num_labels: 2, pooling: \"first\" } });",
    );
    assert!(
        err.contains("pooling") && err.contains("\"first\"") && err.contains("\"max\""),
        "{err}"
    );
}

#[test]
fn mlm_next_sentence_gives_the_pair_head_its_metrics_and_a_fine_tunable_encoder() {
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("nsp");
    let script = format!(
        r#"
        let stories = corpus("stories", #{{ bytes: 20000, seed: 1 }});
        let tok = tokenizer("wordpiece", #{{ vocab_size: 160 }});
        tok.train(stories);
        let ds = tok.encode(stories, #{{ val_fraction: 0.1 }});
        let m = model("bert", #{{ vocab_size: tok.vocab_size(), n_layer: 1, n_head: 2, d_model: 32,
                                  ctx: 64, dropout: 0.0, seed: 1 }});
        let r = trainer("mlm", #{{ steps: 6, batch_size: 8, eval_every: 6, eval_batches: 2, seed: 1,
                                   next_sentence: 0.5, pooling: "max" }}).fit(m, ds, tok);
        print(`nsp accuracy= ${{r.val_next_sentence_accuracy}} masked= ${{r.val_masked_accuracy}}`);
        print(`pretrained head=${{m.config().head}}`);
        m.save("{saved}");
        let back = model_load("{saved}");
        let data = glue(#{{ tasks: ["sentiment"], n: 20, seed: 3 }}).sentiment;
        trainer("classify", #{{ steps: 2, batch_size: 4, eval_every: 0, truncate: true }}).fit(back, data, tok);
        print(`fine-tuned head=${{back.config().head}}`);
        "#,
        saved = saved.display()
    );
    let out = run_inline_script("next_sentence", &script, &[], dir.path());
    let accuracy = printed(&out, "nsp accuracy");
    assert!((0.0..=1.0).contains(&accuracy), "{out}");
    let head = |prefix: &str| {
        out.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in\n{out}"))
            .to_string()
    };
    let pretrained = head("pretrained head=");
    assert!(
        pretrained.contains("is_next") && pretrained.contains("\"max\""),
        "{pretrained}"
    );
    // Fine-tuning replaces the 2-way pair classifier with the task's (its labels), keeping the
    // pooling the pooler was pretrained with.
    let fine_tuned = head("fine-tuned head=");
    assert!(
        fine_tuned.contains("positive")
            && !fine_tuned.contains("is_next")
            && fine_tuned.contains("\"max\""),
        "{fine_tuned}"
    );
    let config = std::fs::read_to_string(saved.join("config.json")).unwrap();
    assert!(config.contains("is_next"), "{config}");
    let mut metrics = Vec::new();
    files_named(dir.path(), "metrics.jsonl", &mut metrics);
    assert!(
        metrics.iter().any(|p| std::fs::read_to_string(p)
            .unwrap()
            .contains("val_next_sentence_accuracy")),
        "{metrics:?}"
    );

    let script = dir.path().join("bad_next_sentence.rhai");
    std::fs::write(
        &script,
        "let stories = corpus(\"stories\", #{ bytes: 8000, seed: 1 });\n\
         let tok = tokenizer(\"wordpiece\", #{ vocab_size: 120 });\n\
         tok.train(stories);\n\
         let m = model(\"gpt\", #{ vocab_size: tok.vocab_size(), n_layer: 1, n_head: 2, d_model: 16, ctx: 32 });\n\
         trainer(\"mlm\", #{ steps: 1, batch_size: 2, next_sentence: 0.5 }).fit(m, tok.encode(stories), tok);\n",
    )
    .unwrap();
    let output = run_script_output(script.to_str().unwrap(), &[], dir.path());
    assert!(!output.status.success());
    let err = stderr(&output);
    assert!(
        err.contains("next_sentence") && err.contains("task head"),
        "{err}"
    );
}
