//! The fast BPE trainer (`llmlab_tokenizers::fast_bpe::train`) against `tokenizers`' `BpeTrainer`
//! on the same documents and settings: the saved `tokenizer.json` (vocabulary, merges in order,
//! added tokens) must be byte-identical, on prose, code, multilingual text and random corpora
//! full of ties, with special tokens, `min_frequency`, `max_token_length`, `add_prefix_space`
//! and the Llama-3 / Qwen2 splitters.

use llmlab_plugin_api::prelude::*;
use llmlab_plugin_api::TextSource;
use llmlab_tokenizers::fast_bpe::train::{train, Settings};
use llmlab_tokenizers::pretokenize::{Splitter, LLAMA3_PATTERN, QWEN2_PATTERN};
use proptest::prelude::*;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BpeTrainer, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

struct Docs(Vec<String>);

impl TextSource for Docs {
    fn name(&self) -> String {
        "test docs".into()
    }
    fn documents(&self) -> Box<dyn Iterator<Item = Result<String>> + Send + '_> {
        Box::new(self.0.iter().cloned().map(Ok))
    }
    fn approx_bytes(&self) -> Option<u64> {
        Some(self.0.iter().map(|d| d.len() as u64).sum())
    }
}

fn pipeline(splitter: Splitter) -> Tokenizer {
    let mut t = Tokenizer::new(BPE::default());
    match splitter {
        Splitter::Gpt2 { add_prefix_space } => {
            t.with_pre_tokenizer(Some(ByteLevel::new(add_prefix_space, true, true)));
        }
        Splitter::Llama3 { max_digits, .. } => {
            let pattern = if max_digits == 3 {
                LLAMA3_PATTERN
            } else {
                QWEN2_PATTERN
            };
            let split = Split::new(
                SplitPattern::Regex(pattern.into()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .unwrap();
            t.with_pre_tokenizer(Some(Sequence::new(vec![
                PreTokenizerWrapper::Split(split),
                PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, false)),
            ])));
        }
    }
    t.with_decoder(Some(ByteLevelDecoder::default()));
    t
}

/// Both trainers on `docs`; returns (tokenizers' JSON, ours).
fn both(docs: &[String], splitter: Splitter, settings: &Settings) -> (String, String) {
    let mut theirs = pipeline(splitter);
    let mut trainer: TrainerWrapper = BpeTrainer::builder()
        .vocab_size(settings.vocab_size)
        .min_frequency(settings.min_frequency)
        .special_tokens(
            settings
                .special_tokens
                .iter()
                .map(|s| AddedToken::from(s.clone(), true))
                .collect(),
        )
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .max_token_length(settings.max_token_length)
        .show_progress(false)
        .build()
        .into();
    theirs.train(&mut trainer, docs.iter()).unwrap();
    let mut ours = pipeline(splitter);
    let ctx = Context::cpu();
    train(
        &mut ours,
        splitter,
        settings,
        &Docs(docs.to_vec()),
        &ctx,
        "bpe",
    )
    .unwrap();
    (
        theirs.to_string(true).unwrap(),
        ours.to_string(true).unwrap(),
    )
}

fn assert_same(docs: &[String], splitter: Splitter, settings: &Settings) {
    let (theirs, ours) = both(docs, splitter, settings);
    if theirs != ours {
        let diff = theirs
            .lines()
            .zip(ours.lines())
            .enumerate()
            .find(|(_, (a, b))| a != b)
            .map(|(i, (a, b))| format!("line {i}: tokenizers {a:?} vs ours {b:?}"));
        panic!("tokenizer.json differs for {splitter:?} {settings:?}: {diff:?}");
    }
}

fn corpus() -> Vec<String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut docs: Vec<String> = Vec::new();
    for file in [
        "src/tokenizer.rs",
        "src/fast_bpe/train.rs",
        "tests/pretokenize.rs",
        "../../docs/benchmarks.md",
        "../../README.md",
    ] {
        if let Ok(text) = std::fs::read_to_string(root.join(file)) {
            docs.extend(text.split_inclusive('\n').map(String::from));
        }
    }
    docs.extend(
        "Der Bär läuft über die Straße. L'homme qu'il a vu n'était pas là.\n\
         Быстрая коричневая лиса перепрыгивает через ленивую собаку.\n\
         2024年3月15日、東京で会議が行われました。这是一个测试句子，包含中文标点符号！\n\
         한국어 문장도 포함합니다: 안녕하세요 12,345원. مرحبا بالعالم ١٢٣ שלום עולם.\n\
         I'M YOU'RE we've they'LL 👍🏽 ❤️ e\u{301}\u{302}\u{3000}x\u{a0}y\r\n"
            .split_inclusive('\n')
            .map(String::from),
    );
    assert!(
        docs.len() > 200,
        "corpus too small: {} documents",
        docs.len()
    );
    docs
}

fn settings(vocab_size: usize) -> Settings {
    Settings {
        vocab_size,
        min_frequency: 0,
        special_tokens: vec![],
        max_token_length: None,
    }
}

#[test]
fn same_tokenizer_json_as_tokenizers_gpt2() {
    let docs = corpus();
    assert_same(&docs, Splitter::GPT2, &settings(1000));
    assert_same(&docs, Splitter::GPT2, &settings(3000));
}

#[test]
fn same_tokenizer_json_with_options() {
    let docs = corpus();
    let special = Settings {
        special_tokens: vec!["<|endoftext|>".into(), "<pad>".into(), "a".into()],
        min_frequency: 2,
        ..settings(1200)
    };
    assert_same(&docs, Splitter::GPT2, &special);
    let capped = Settings {
        max_token_length: Some(5),
        ..settings(1200)
    };
    assert_same(&docs, Splitter::GPT2, &capped);
    assert_same(
        &docs,
        Splitter::Gpt2 {
            add_prefix_space: true,
        },
        &settings(1200),
    );
    // Training stops early when no pair is frequent enough.
    let frequent = Settings {
        min_frequency: 50,
        ..settings(5000)
    };
    assert_same(&docs, Splitter::GPT2, &frequent);
}

#[test]
fn same_tokenizer_json_llama3_and_qwen2() {
    let docs = corpus();
    assert_same(&docs, Splitter::LLAMA3, &settings(1500));
    assert_same(&docs, Splitter::QWEN2, &settings(1500));
}

fn small_doc() -> impl Strategy<Value = String> {
    let chars: Vec<char> = "aab ab ba  abc\n'sxy1234 é中!".chars().collect();
    proptest::collection::vec(proptest::sample::select(chars), 1..40)
        .prop_map(|v| v.into_iter().collect())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Small alphabets make many pairs tie on count: the tie-break must be tokenizers'.
    #[test]
    fn same_tokenizer_json_on_random_corpora(
        docs in proptest::collection::vec(small_doc(), 1..30),
        vocab in 257usize..330,
        min_frequency in 0u64..3,
        cap in proptest::option::of(3usize..6),
    ) {
        let s = Settings { min_frequency, max_token_length: cap, ..settings(vocab) };
        let (theirs, ours) = both(&docs, Splitter::GPT2, &s);
        prop_assert_eq!(theirs, ours);
    }
}
