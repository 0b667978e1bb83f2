//! Tokenizers of Hugging Face model directories: the gpt plugin's Llama/Mistral/Qwen fixtures
//! (`plugins/gpt/tests/fixtures/hf/make_tiny_hf.py`, byte-level BPE with each family's
//! pre-tokenizer) load from the directory, encode as transformers does, and carry the special
//! tokens and chat template of their `tokenizer_config.json`.

use std::path::PathBuf;

use llmlab_plugin_api::serde_json::{self, Value};
use llmlab_plugin_api::{SpecialToken, Tokenizer};
use llmlab_tokenizers::tokenizer::HfTokenizer;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../gpt/tests/fixtures/hf")
}

fn expected(name: &str) -> Value {
    let text = std::fs::read_to_string(fixtures().join(format!("{name}-expected.json"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn each_family_encodes_as_transformers_and_knows_its_special_tokens() {
    for (name, eos, pad) in [
        ("tiny-llama", "<|eot_id|>", Some("<|end_of_text|>")),
        ("tiny-mistral", "</s>", None),
        ("tiny-qwen2", "<|im_end|>", Some("<|endoftext|>")),
        ("tiny-qwen3", "<|im_end|>", Some("<|endoftext|>")),
    ] {
        let tok = HfTokenizer::load(&fixtures().join(name), "bpe").unwrap();
        let want = &expected(name)["tokenizer"];
        let ids: Vec<u32> = want["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let text = want["text"].as_str().unwrap();
        assert_eq!(tok.encode(text).unwrap(), ids, "{name}");
        assert_eq!(tok.decode(&ids).unwrap(), text, "{name}");
        assert_eq!(
            tok.special_token(SpecialToken::EndOfText),
            tok.token_to_id(eos),
            "{name}"
        );
        assert!(tok.special_token(SpecialToken::EndOfText).is_some());
        assert_eq!(
            tok.special_token(SpecialToken::Pad),
            pad.and_then(|p| tok.token_to_id(p)),
            "{name}"
        );
        let template = tok.chat_template().expect("a chat template");
        let config: Value = serde_json::from_str(
            &std::fs::read_to_string(fixtures().join(name).join("tokenizer_config.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(template, config["chat_template"].as_str().unwrap());
        assert_eq!(tok.tokenizer_config().unwrap(), config);
    }
}

#[test]
fn chat_template_jinja_file_and_bad_configs() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixtures().join("tiny-qwen2");
    std::fs::copy(
        src.join("tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .unwrap();
    // transformers 4.43+ writes the template to its own file.
    std::fs::write(dir.path().join("chat_template.jinja"), "{{ messages }}").unwrap();
    let tok = HfTokenizer::load(&dir.path().join("tokenizer.json"), "bpe").unwrap();
    assert_eq!(tok.chat_template().as_deref(), Some("{{ messages }}"));
    // No config: roles come from the token names (`<|endoftext|>`).
    assert_eq!(
        tok.special_token(SpecialToken::EndOfText),
        tok.token_to_id("<|endoftext|>")
    );
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"chat_template": 7}"#,
    )
    .unwrap();
    let err = HfTokenizer::load(dir.path(), "bpe")
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("tokenizer_config.json") && err.contains("chat_template"),
        "{err}"
    );
}
