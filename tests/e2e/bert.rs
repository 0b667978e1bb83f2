//! BERT end to end (issue 18): `scripts/bert_glue.rhai` at CI size (wordpiece, MLM
//! pretraining with its validation metrics in `metrics.jsonl`, fine-tuning from scratch and
//! pretrained, the table saved in the run directory); `help("bert")`; the wordpiece tokenizer
//! reading a Hugging Face BERT tokenizer.json with the same ids; bad labelled input named.

use std::path::{Path, PathBuf};

use llmlab_e2e::{llmlab, repo_root, run_script, run_script_output, stderr, stdout};
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
        records
            .iter()
            .any(|r| r.to_string().contains("val_pearson")),
        "classify metrics"
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
}
