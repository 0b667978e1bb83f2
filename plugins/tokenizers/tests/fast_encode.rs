//! The fast encoder (`llmlab_tokenizers::fast_bpe`) against `tokenizers`' own `encode_fast`:
//! identical ids for GPT-2-style tokenizers trained here (with and without `add_prefix_space`,
//! special and plain added tokens) and for Llama-3 / Qwen2-style pipelines (`ignore_merges`), on
//! varied text and on arbitrary Unicode; and configurations it must not claim are left alone.

use llmlab_tokenizers::fast_bpe::FastEncoder;
use llmlab_tokenizers::pretokenize::{Splitter, LLAMA3_PATTERN, QWEN2_PATTERN};
use proptest::prelude::*;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BpeTrainer, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::normalizers::Lowercase;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

const CORPUS: &str = "The quick brown fox jumps over the lazy dog. It's 3.14159, isn't it?\n\
    Once upon a time there was a little robot who liked to count tokens!!! 12345 678\n\
    Der Bär läuft über die Straße. L'homme qu'il a vu n'était pas là.\r\n\
    Быстрая коричневая лиса. 東京で会議が行われました。 这是一个测试句子，包含中文！\n\
    def encode(self, text):\n    return [self.vocab[t] for t in text.split()]  # comment\n\
    \t\tindented   spaces    and\u{3000}ideographic\u{a0}nbsp 👍🏽 emoji ❤️ YOU'RE WE'LL\n";

fn texts() -> Vec<String> {
    let mut v: Vec<String> = CORPUS.lines().map(String::from).collect();
    v.push(CORPUS.to_string());
    v.extend(
        [
            "",
            " ",
            "   leading",
            "trailing   ",
            "<|endoftext|>",
            "a<|endoftext|>b",
            "<|endoftext|><|endoftext|> x <|endoftext|>",
            "<|endoftext|",
            "hello<pad>world <pad> <|im_start|>user\nhi<|im_end|>",
            "x\n\n\ny",
            "'s 'S 'll 'LL 'ſ",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        ]
        .map(String::from),
    );
    // Long pieces take the heap merge.
    v.push("the".repeat(400));
    v.push(" ".repeat(300) + "x");
    v
}

fn train(tokenizer: &mut Tokenizer, vocab: usize, special: &[&str]) {
    let trainer = BpeTrainer::builder()
        .vocab_size(vocab)
        .min_frequency(0)
        .special_tokens(special.iter().map(|s| AddedToken::from(*s, true)).collect())
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .show_progress(false)
        .build();
    let mut trainer: TrainerWrapper = trainer.into();
    let corpus: Vec<String> = (0..20).map(|i| format!("{CORPUS} {i}")).collect();
    tokenizer
        .train(&mut trainer, corpus.iter())
        .expect("training");
}

fn gpt2(add_prefix_space: bool) -> Tokenizer {
    let mut t = Tokenizer::new(BPE::default());
    t.with_pre_tokenizer(Some(ByteLevel::new(add_prefix_space, true, true)));
    t.with_decoder(Some(ByteLevelDecoder::default()));
    train(&mut t, 600, &["<|endoftext|>", "<pad>"]);
    // A plain (normalized) added token and another special one.
    t.add_tokens([AddedToken::from("<|im_start|>", false)])
        .unwrap();
    t.add_special_tokens([AddedToken::from("<|im_end|>", true)])
        .unwrap();
    t
}

fn llama3(pattern: &str, ignore_merges: bool) -> Tokenizer {
    let mut t = Tokenizer::new(BPE::builder().ignore_merges(ignore_merges).build().unwrap());
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
    t.with_decoder(Some(ByteLevelDecoder::default()));
    train(&mut t, 700, &["<|endoftext|>"]);
    // Training keeps the model's flags.
    let json = t.to_string(false).unwrap();
    assert!(json.contains(&format!("\"ignore_merges\":{ignore_merges}")));
    t
}

fn assert_same(tokenizer: &Tokenizer, fast: &FastEncoder, text: &str) {
    let want = tokenizer
        .encode_fast(text, false)
        .unwrap()
        .get_ids()
        .to_vec();
    let got = fast.encode(text);
    assert_eq!(got, want, "ids differ on {text:?}");
}

fn all_tokenizers() -> Vec<(&'static str, Tokenizer, Splitter)> {
    vec![
        ("gpt2", gpt2(false), Splitter::GPT2),
        (
            "gpt2 prefix space",
            gpt2(true),
            Splitter::Gpt2 {
                add_prefix_space: true,
            },
        ),
        ("llama3", llama3(LLAMA3_PATTERN, true), Splitter::LLAMA3),
        (
            "llama3 merges",
            llama3(LLAMA3_PATTERN, false),
            Splitter::LLAMA3,
        ),
        ("qwen2", llama3(QWEN2_PATTERN, false), Splitter::QWEN2),
    ]
}

#[test]
fn fast_encoder_equals_tokenizers_on_varied_text() {
    for (name, tokenizer, splitter) in all_tokenizers() {
        let fast = FastEncoder::from_tokenizer(&tokenizer)
            .unwrap_or_else(|| panic!("{name}: the fast path should claim this tokenizer"));
        assert_eq!(fast.splitter(), splitter, "{name}");
        for text in texts() {
            assert_same(&tokenizer, &fast, &text);
        }
        // Batches: same ids in the same order.
        let batch = texts();
        let want: Vec<Vec<u32>> = tokenizer
            .encode_batch_fast(batch.iter().map(String::as_str).collect::<Vec<_>>(), false)
            .unwrap()
            .iter()
            .map(|e| e.get_ids().to_vec())
            .collect();
        assert_eq!(fast.encode_batch(&batch), want, "{name}: batch");
    }
}

#[test]
fn ignore_merges_is_read_from_the_file() {
    let with = llama3(LLAMA3_PATTERN, true);
    assert!(with
        .to_string(false)
        .unwrap()
        .contains("\"ignore_merges\":true"));
    let fast = FastEncoder::from_tokenizer(&with).unwrap();
    for text in texts() {
        assert_same(&with, &fast, &text);
    }
}

#[test]
fn other_pipelines_are_not_claimed() {
    let mut lower = gpt2(false);
    lower.with_normalizer(Some(Lowercase)).unwrap();
    assert!(FastEncoder::from_tokenizer(&lower).is_none(), "normalizer");
    let mut other_split = gpt2(false);
    other_split.with_pre_tokenizer(Some(Sequence::new(vec![
        PreTokenizerWrapper::Split(
            Split::new(
                SplitPattern::Regex(r"\w+|\W".into()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .unwrap(),
        ),
        PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, false)),
    ])));
    assert!(
        FastEncoder::from_tokenizer(&other_split).is_none(),
        "other regex"
    );
    let mut stripped = gpt2(false);
    stripped
        .add_special_tokens([AddedToken::from("<mask>", true).lstrip(true)])
        .unwrap();
    assert!(
        FastEncoder::from_tokenizer(&stripped).is_none(),
        "lstrip added token"
    );
}

fn tricky_char() -> impl Strategy<Value = char> {
    let specials: Vec<char> =
        " \t\n\r'sStTlLdD0123456789aeiouxyz.,!?<>|_ \u{a0}\u{3000}\u{85}\u{2028}éß中文😀\u{301}½"
            .chars()
            .collect();
    prop_oneof![4 => proptest::sample::select(specials), 1 => any::<char>()]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn fast_encoder_equals_tokenizers_on_any_text(
        chars in proptest::collection::vec(tricky_char(), 0..80),
        special_at in proptest::option::of(0usize..80),
    ) {
        let mut text: String = chars.into_iter().collect();
        if let Some(at) = special_at {
            let at = (0..=at.min(text.len())).rev().find(|&i| text.is_char_boundary(i)).unwrap();
            text.insert_str(at, "<|endoftext|>");
        }
        thread_local! {
            static TOKENIZERS: Vec<(Tokenizer, FastEncoder)> = all_tokenizers()
                .into_iter()
                .map(|(_, t, _)| { let f = FastEncoder::from_tokenizer(&t).unwrap(); (t, f) })
                .collect();
        }
        TOKENIZERS.with(|all| {
            for (tokenizer, fast) in all {
                assert_same(tokenizer, fast, &text);
            }
        });
    }
}
