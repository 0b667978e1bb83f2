//! The tokenizer components as a script would use them, through their factories: training,
//! round trips, special tokens, saving and loading `tokenizer.json` (ours and Python's), and
//! every bad input the issue names.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use llmlab_plugin_api::prelude::*;
use llmlab_plugin_api::{Error, SpecialToken, TextSource};
use llmlab_tokenizers::{bpe::Bpe, unigram::Unigram, wordpiece::WordPiece};
use proptest::prelude::*;

/// Documents held in memory; `fail_after` makes the source fail like a bad file would.
struct Texts {
    documents: Vec<String>,
    fail_after: Option<usize>,
}

impl Texts {
    fn new(documents: Vec<String>) -> Self {
        Texts {
            documents,
            fail_after: None,
        }
    }
}

impl TextSource for Texts {
    fn name(&self) -> String {
        "test texts".into()
    }
    fn documents(&self) -> Box<dyn Iterator<Item = Result<String>> + Send + '_> {
        let fail_after = self.fail_after;
        Box::new(self.documents.iter().enumerate().map(move |(i, d)| {
            if Some(i) == fail_after {
                Err(Error::Data("corrupt.txt: invalid UTF-8 at byte 42".into()))
            } else {
                Ok(d.clone())
            }
        }))
    }
    fn approx_bytes(&self) -> Option<u64> {
        Some(self.documents.iter().map(|d| d.len() as u64).sum())
    }
}

fn english() -> Vec<String> {
    let lines = [
        "The quick brown fox jumps over the lazy dog.",
        "Once upon a time there was a little robot who liked to count tokens.",
        "A tokenizer turns text into ids, and a model turns ids into more text.",
        "She said: \"It's 3.14159, not 2718!\" and walked away.",
        "Researchers train small language models on generated stories.",
    ];
    (0..40)
        .flat_map(|i| lines.iter().map(move |l| format!("{l} ({i})\n")))
        .collect()
}

fn multilingual() -> Vec<String> {
    let mut docs = english();
    docs.extend(
        [
            "日本語のテキストも、絵文字 🎉🦀 も大丈夫です。",
            "中文分词与字节级编码。",
            "Ünïcödé àccents, Ελληνικά, русский текст.",
        ]
        .iter()
        .cycle()
        .take(30)
        .map(|s| s.to_string()),
    );
    docs
}

fn create(factory: &dyn Factory, config: Value) -> Result<Box<dyn Tokenizer>> {
    match factory.create(&config, &Context::cpu())? {
        Instance::Tokenizer(t) => Ok(t),
        _ => panic!("{} did not make a tokenizer", factory.name()),
    }
}

fn load(factory: &dyn Factory, path: &Path) -> Result<Box<dyn Tokenizer>> {
    match factory.load(path, &Context::cpu())? {
        Instance::Tokenizer(t) => Ok(t),
        _ => panic!("{} did not load a tokenizer", factory.name()),
    }
}

fn trained(factory: &dyn Factory, config: Value, docs: Vec<String>) -> Box<dyn Tokenizer> {
    let mut tok = create(factory, config).unwrap();
    tok.train(&Texts::new(docs), &Context::cpu()).unwrap();
    tok
}

fn trained_bpe() -> &'static dyn Tokenizer {
    static TOK: OnceLock<Box<dyn Tokenizer>> = OnceLock::new();
    &**TOK.get_or_init(|| trained(&Bpe, json!({ "vocab_size": 400 }), multilingual()))
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/tokenizer")
        .join(name)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn bpe_round_trips_any_utf8(text in any::<String>()) {
        let tok = trained_bpe();
        let ids = tok.encode(&text).unwrap();
        prop_assert_eq!(tok.decode(&ids).unwrap(), text);
    }

    #[test]
    fn bpe_round_trips_emoji_cjk_and_whitespace(
        text in "([a-z ]{0,6}|[\u{4e00}-\u{9fff}]{1,4}|[\u{1f300}-\u{1faff}]{1,3}|[\t\n\r ]{1,3}|<\\|endoftext\\|>)*"
    ) {
        let tok = trained_bpe();
        let ids = tok.encode(&text).unwrap();
        prop_assert_eq!(tok.decode(&ids).unwrap(), text);
    }
}

#[test]
fn bpe_learns_merges_and_keeps_special_tokens_whole() {
    let tok = trained_bpe();
    assert_eq!(tok.vocab_size(), 400);
    let text = "The quick brown fox";
    let ids = tok.encode(text).unwrap();
    assert!(
        ids.len() < text.len() / 2,
        "merges shorten common text: {ids:?}"
    );
    let eot = tok.special_token(SpecialToken::EndOfText).unwrap();
    assert_eq!(tok.token_to_id("<|endoftext|>"), Some(eot));
    assert_eq!(tok.id_to_token(eot).as_deref(), Some("<|endoftext|>"));
    assert_eq!(tok.encode("a<|endoftext|>b").unwrap()[1], eot);
    assert_eq!(tok.special_token(SpecialToken::Mask), None);
}

#[test]
fn encode_batch_matches_encode() {
    let tok = trained_bpe();
    let texts: Vec<String> = multilingual().into_iter().step_by(7).collect();
    let batch = tok.encode_batch(&texts).unwrap();
    for (text, ids) in texts.iter().zip(batch) {
        assert_eq!(ids, tok.encode(text).unwrap());
    }
}

/// `value` with floats to 12 significant digits: serde_json (without `float_roundtrip`) may read
/// a unigram score back one ulp off.
fn rounded(value: Value) -> Value {
    match value {
        Value::Number(n) if n.is_f64() => json!(format!("{:.11e}", n.as_f64().unwrap())),
        Value::Array(items) => Value::Array(items.into_iter().map(rounded).collect()),
        Value::Object(map) => {
            Value::Object(map.into_iter().map(|(k, v)| (k, rounded(v))).collect())
        }
        other => other,
    }
}

#[test]
fn saved_tokenizer_reloads_identically() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    for (factory, config) in [
        (&Bpe as &dyn Factory, json!({ "vocab_size": 400 })),
        (&WordPiece, json!({ "vocab_size": 300 })),
        (&Unigram, json!({ "vocab_size": 300 })),
    ] {
        let tok = trained(factory, config, multilingual());
        tok.save(&path).unwrap();
        let back = load(factory, &path).unwrap();
        assert_eq!(back.name(), factory.name());
        assert_eq!(back.vocab_size(), tok.vocab_size());
        assert_eq!(
            rounded(serde_json::from_str(&back.to_json().unwrap()).unwrap()),
            rounded(serde_json::from_str(&tok.to_json().unwrap()).unwrap())
        );
        for text in multilingual().iter().step_by(5) {
            assert_eq!(back.encode(text).unwrap(), tok.encode(text).unwrap());
        }
        for role in [
            SpecialToken::EndOfText,
            SpecialToken::Unknown,
            SpecialToken::Pad,
        ] {
            assert_eq!(back.special_token(role), tok.special_token(role));
        }
    }
}

#[test]
fn tokenizer_json_made_by_python_loads_and_encodes_alike() {
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("expected.json")).unwrap()).unwrap();
    for (factory, file) in [
        (&Bpe as &dyn Factory, "bpe.json"),
        (&WordPiece, "wordpiece.json"),
    ] {
        let tok = load(factory, &fixture(file)).unwrap();
        for case in expected[factory.name()].as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            let ids: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
            assert_eq!(tok.encode(text).unwrap(), ids, "{file}: {text:?}");
            assert_eq!(tok.decode(&ids).unwrap(), case["decoded"].as_str().unwrap());
        }
    }
}

#[test]
fn a_file_of_another_model_is_refused_by_name() {
    let error = load(&Bpe, &fixture("wordpiece.json"))
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.contains("WordPiece model") && error.contains("`bpe`"),
        "{error}"
    );
}

#[test]
fn wordpiece_maps_unknown_words_to_unk() {
    let tok = trained(&WordPiece, json!({ "vocab_size": 300 }), english());
    let unk = tok.special_token(SpecialToken::Unknown).unwrap();
    assert_eq!(tok.id_to_token(unk).as_deref(), Some("[UNK]"));
    for (role, token) in [
        (SpecialToken::Pad, "[PAD]"),
        (SpecialToken::Cls, "[CLS]"),
        (SpecialToken::Sep, "[SEP]"),
        (SpecialToken::Mask, "[MASK]"),
    ] {
        assert_eq!(tok.special_token(role), tok.token_to_id(token), "{token}");
    }
    // Lowercased by default; 🦀 and 語 never occur in the corpus.
    let ids = tok.encode("THE quick 🦀 fox 語").unwrap();
    assert_eq!(ids.iter().filter(|&&id| id == unk).count(), 2, "{ids:?}");
    assert_eq!(tok.decode(&ids).unwrap(), "the quick [UNK] fox [UNK]");
}

#[test]
fn unigram_trains_and_marks_unseen_characters_unknown() {
    let tok = trained(&Unigram, json!({ "vocab_size": 200 }), english());
    assert!(tok.vocab_size() <= 200);
    let text = "the quick brown fox";
    assert_eq!(tok.decode(&tok.encode(text).unwrap()).unwrap(), text);
    let unk = tok.special_token(SpecialToken::Unknown).unwrap();
    assert!(tok.encode("fox 🦀").unwrap().contains(&unk));
    assert!(tok.special_token(SpecialToken::EndOfText).is_some());
}

#[test]
fn help_publishes_every_key_with_its_default() {
    let keys = Bpe.config_keys();
    let names: Vec<&str> = keys.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "vocab_size",
            "min_frequency",
            "special_tokens",
            "add_prefix_space",
            "max_token_length"
        ]
    );
    assert_eq!(keys[0].default, json!(8192));
    assert!(WordPiece
        .config_keys()
        .iter()
        .any(|k| k.name == "lowercase" && k.default == json!(true)));
    assert!(Unigram.config_keys().iter().all(|k| !k.doc.is_empty()));
}

#[test]
fn config_errors_name_the_key_and_the_limit() {
    let error = create(&Bpe, json!({ "vocab_size": 100 }))
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.contains("vocab_size 100") && error.contains("257"),
        "{error}"
    );
    let error = create(&Bpe, json!({ "vocab": 100 }))
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.contains("`vocab`") && error.contains("vocab_size, min_frequency"),
        "{error}"
    );
    let error = create(&WordPiece, json!({ "unk_token": "<unk>" }))
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("unk_token \"<unk>\""), "{error}");
    let error = create(&Bpe, json!({ "special_tokens": ["<a>", "<a>"] }))
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("\"<a>\" is listed twice"), "{error}");
}

#[test]
fn vocab_size_below_the_corpus_alphabet_is_refused() {
    // Every CJK character is its own letter of the WordPiece alphabet.
    let docs: Vec<String> = (0x4e00u32..0x4e00 + 200)
        .map(|c| format!("{} word", char::from_u32(c).unwrap()))
        .collect();
    let mut tok = create(&WordPiece, json!({ "vocab_size": 50 })).unwrap();
    let error = tok
        .train(&Texts::new(docs.clone()), &Context::cpu())
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("vocab_size 50 is below") && error.contains("alphabet"),
        "{error}"
    );
    assert!(
        tok.encode("word").is_err(),
        "a failed training leaves it untrained"
    );
    let mut tok = create(&Unigram, json!({ "vocab_size": 50 })).unwrap();
    let error = tok
        .train(&Texts::new(docs), &Context::cpu())
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("unigram") && error.contains("not large enough"),
        "{error}"
    );
}

#[test]
fn empty_corpus_is_refused() {
    for factory in [&Bpe as &dyn Factory, &WordPiece, &Unigram] {
        let mut tok = create(factory, Value::Null).unwrap();
        for docs in [vec![], vec![String::new(), String::new()]] {
            let error = tok
                .train(&Texts::new(docs), &Context::cpu())
                .unwrap_err()
                .to_string();
            assert!(
                error.contains("corpus test texts is empty"),
                "{}: {error}",
                factory.name()
            );
        }
    }
}

#[test]
fn source_errors_surface_unchanged_and_leave_the_tokenizer_untrained() {
    let mut tok = create(&Bpe, json!({ "vocab_size": 300 })).unwrap();
    let source = Texts {
        documents: english(),
        fail_after: Some(17),
    };
    let error = tok.train(&source, &Context::cpu()).unwrap_err().to_string();
    assert_eq!(error, "corrupt.txt: invalid UTF-8 at byte 42");
    let error = tok.encode("hello").unwrap_err().to_string();
    assert!(error.contains("not trained yet"), "{error}");
}

#[test]
fn cancellation_stops_training() {
    let mut tok = create(&Bpe, json!({ "vocab_size": 300 })).unwrap();
    let ctx = Context::cpu();
    ctx.cancel.cancel();
    let error = tok.train(&Texts::new(english()), &ctx).unwrap_err();
    assert!(matches!(error, Error::Cancelled), "{error}");
    assert!(tok.encode("hello").is_err());
}

#[test]
fn corrupt_or_missing_tokenizer_json_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    std::fs::write(&path, "{ \"model\": ").unwrap();
    let error = load(&Bpe, &path).err().unwrap().to_string();
    assert!(
        error.contains("tokenizer.json: not a valid tokenizer.json"),
        "{error}"
    );
    let error = load(&Bpe, &dir.path().join("missing.json"))
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("missing.json"), "{error}");
}

#[test]
fn out_of_range_ids_and_untrained_use_are_errors() {
    let tok = trained_bpe();
    let error = tok.decode(&[1, 400]).unwrap_err().to_string();
    assert!(
        error.contains("token id 400 is out of range") && error.contains("400"),
        "{error}"
    );
    let fresh = create(&Bpe, Value::Null).unwrap();
    assert!(fresh
        .decode(&[1])
        .unwrap_err()
        .to_string()
        .contains("not trained"));
    assert!(fresh
        .to_json()
        .unwrap_err()
        .to_string()
        .contains("not trained"));
}

#[test]
fn retraining_replaces_the_vocabulary() {
    let mut tok = trained(&Bpe, json!({ "vocab_size": 300 }), english());
    let before = tok.to_json().unwrap();
    tok.train(
        &Texts::new(vec!["zzz yyy zzz yyy\n".into(); 50]),
        &Context::cpu(),
    )
    .unwrap();
    assert_ne!(tok.to_json().unwrap(), before);
    let eot = tok.special_token(SpecialToken::EndOfText).unwrap();
    assert_eq!(
        eot, 0,
        "special tokens take the first ids after retraining too"
    );
}
