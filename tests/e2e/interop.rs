//! Interop through the real binary and plugins (docs/interop.md): `scripts/finetune_hf.rhai` at
//! CI size loads the tiny Llama fixture with its tokenizer and chat template, chat-SFTs it and
//! exports a transformers directory and a llama.cpp GGUF file, which load back; Parquet corpora
//! (a pyarrow file and a directory of shards) train a tokenizer and encode a token dataset.

use std::path::Path;

use llmlab_e2e::*;

fn read_json(path: &Path) -> llmlab_plugin_api::serde_json::Value {
    llmlab_plugin_api::serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn finetune_hf_script_fine_tunes_the_llama_fixture_and_exports_hf_and_gguf() {
    let runs = tempfile::tempdir().unwrap();
    let out = run_script(
        "scripts/finetune_hf.rhai",
        &[("steps", "4"), ("name", "ft-ci")],
        runs.path(),
    );
    // The prompt was rendered by the fixture's Llama-3 template.
    assert!(
        out.contains("<|start_header_id|>assistant<|end_header_id|>") && out.contains("<|eot_id|>"),
        "{out}"
    );
    let run = runs.path().join("ft-ci");
    let config = read_json(&run.join("hf/config.json"));
    assert_eq!(config["architectures"][0], "LlamaForCausalLM");
    assert_eq!(config["num_key_value_heads"], 2);
    let tok_config = read_json(&run.join("hf/tokenizer_config.json"));
    assert!(tok_config["chat_template"]
        .as_str()
        .unwrap()
        .contains("start_header_id"));
    assert!(run.join("hf/tokenizer.json").is_file());
    let gguf = std::fs::read(run.join("model.gguf")).unwrap();
    assert_eq!(&gguf[..4], b"GGUF");
    assert!(gguf.windows(17).any(|w| w == b"blk.0.attn_q.weig"));

    // The export loads back (llmlab's HF import) with its tokenizer and template.
    let script = runs.path().join("reload.rhai");
    std::fs::write(
        &script,
        format!(
            r#"let dir = "{}";
let m = model_load(dir);
let tok = tokenizer_load(dir);
print(`params ${{m.num_params()}}`);
print(tok.apply_chat_template([#{{ role: "user", content: "hi" }}], #{{ add_generation_prompt: true }}));
"#,
            run.join("hf").display()
        ),
    )
    .unwrap();
    let output = llmlab(&["run", script.to_str().unwrap()], "");
    let (out, err) = (stdout(&output), stderr(&output));
    assert!(output.status.success(), "reload failed:\n{out}\n{err}");
    assert!(
        out.contains("<|begin_of_text|><|start_header_id|>user"),
        "{out}"
    );
}

#[test]
fn parquet_corpora_train_a_tokenizer_and_encode_a_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("parquet.rhai");
    std::fs::write(
        &script,
        format!(
            r#"let c = corpus("tests/fixtures/parquet/stories.parquet", #{{ field: "text" }});
let shards = corpus("tests/fixtures/parquet/shards/", #{{ field: "text" }});
let tok = tokenizer("bpe", #{{ vocab_size: 300 }});
tok.train(c);
let ds = tok.encode(shards, #{{ val_fraction: 0.1, out: "{}" }});
print(`tokens ${{ds.len()}}`);
let chat = corpus("tests/fixtures/parquet/chat.parquet", #{{ field: "messages" }});
print(chat.name());
"#,
            dir.path().join("ds").display()
        ),
    )
    .unwrap();
    let output = llmlab(&["run", script.to_str().unwrap()], "");
    let (out, err) = (stdout(&output), stderr(&output));
    assert!(
        output.status.success(),
        "parquet script failed:\n{out}\n{err}"
    );
    assert!(out.contains("tokens"), "{out}");
    assert!(dir.path().join("ds/train.bin").is_file());

    // A missing column is an error naming the file and the columns it has.
    std::fs::write(
        &script,
        r#"corpus("tests/fixtures/parquet/stories.parquet", #{ field: "body" });"#,
    )
    .unwrap();
    let output = llmlab(&["run", script.to_str().unwrap()], "");
    let err = stderr(&output);
    assert!(!output.status.success());
    assert!(
        err.contains("stories.parquet") && err.contains("`body`") && err.contains("text"),
        "{err}"
    );
}
