//! `bpe`: byte-level BPE as in GPT-2. Text is split with GPT-2's pre-tokenization regex, every
//! byte maps to one of 256 visible characters, and merges are learned on top, so any UTF-8 input
//! encodes without an unknown token and decodes back to itself.

use std::path::Path;

use llmlab_plugin_api::prelude::*;
use llmlab_plugin_api::TypedConfig;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BpeTrainer, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;

use crate::special;
use crate::tokenizer::{HfTokenizer, Recipe};

pub const NAME: &str = "bpe";
/// Byte-level BPE starts from every byte value.
pub const ALPHABET_SIZE: usize = 256;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(crate = "llmlab_plugin_api::serde", default, deny_unknown_fields)]
pub struct BpeConfig {
    pub vocab_size: usize,
    pub min_frequency: u64,
    pub special_tokens: Vec<String>,
    pub add_prefix_space: bool,
    pub max_token_length: Option<usize>,
}

impl Default for BpeConfig {
    fn default() -> Self {
        BpeConfig {
            vocab_size: 8192,
            min_frequency: 2,
            special_tokens: vec!["<|endoftext|>".into()],
            add_prefix_space: false,
            max_token_length: None,
        }
    }
}

impl TypedConfig for BpeConfig {
    const DOCS: &'static [(&'static str, &'static str)] = &[
        (
            "vocab_size",
            "tokens in the vocabulary, including the 256 bytes and special tokens",
        ),
        ("min_frequency", "a pair must occur this often to be merged"),
        (
            "special_tokens",
            "tokens never split; the first (<|endoftext|>) separates documents",
        ),
        (
            "add_prefix_space",
            "prepend a space so a text's first word encodes like any other",
        ),
        (
            "max_token_length",
            "longest merged token in bytes, at least 2 (null: no limit)",
        ),
    ];

    fn validate(&self) -> std::result::Result<(), String> {
        let minimum = ALPHABET_SIZE + self.special_tokens.len();
        if self.vocab_size < minimum {
            return Err(format!(
                "vocab_size {} is below the byte alphabet size: {ALPHABET_SIZE} bytes + {} special \
                 tokens need at least {minimum}",
                self.vocab_size,
                self.special_tokens.len()
            ));
        }
        crate::training::check_vocab_size(self.vocab_size)?;
        if let Some(n) = self.max_token_length.filter(|n| *n < 2) {
            return Err(format!(
                "max_token_length {n} allows no merges (a merge makes a token of at least 2 \
                 bytes): use 2 or more, or null for no limit"
            ));
        }
        special::check(&self.special_tokens)
    }
}

/// GPT-2's pipeline around an empty BPE model.
pub fn pipeline(config: &BpeConfig) -> Result<tokenizers::Tokenizer> {
    let mut tokenizer = tokenizers::Tokenizer::new(BPE::default());
    tokenizer.with_pre_tokenizer(Some(ByteLevel::new(config.add_prefix_space, true, true)));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    Ok(tokenizer)
}

pub fn trainer(config: &BpeConfig) -> TrainerWrapper {
    BpeTrainer::builder()
        .vocab_size(config.vocab_size)
        .min_frequency(config.min_frequency)
        .special_tokens(special::added_tokens(&config.special_tokens))
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        // `tokenizers` only forms a pair whose merged length is strictly below its limit, so it
        // would cap tokens one short of what the key says (3 gave the same vocabulary as 2).
        .max_token_length(config.max_token_length.map(|n| n + 1))
        .show_progress(false)
        .build()
        .into()
}

/// The same settings for the fast trainer (`fast_bpe::train`), which reproduces `trainer`'s.
pub fn fast_settings(config: &BpeConfig) -> crate::fast_bpe::train::Settings {
    crate::fast_bpe::train::Settings {
        vocab_size: config.vocab_size,
        min_frequency: config.min_frequency,
        special_tokens: config.special_tokens.clone(),
        // As in `trainer`: `tokenizers`' limit is exclusive.
        max_token_length: config.max_token_length.map(|n| n + 1),
    }
}

pub struct Bpe;

impl Factory for Bpe {
    fn name(&self) -> &'static str {
        NAME
    }
    fn kind(&self) -> Kind {
        Kind::Tokenizer
    }
    fn about(&self) -> &'static str {
        "byte-level BPE (GPT-2 pre-tokenization): any UTF-8 round-trips"
    }
    fn config_keys(&self) -> Vec<ConfigKey> {
        BpeConfig::keys()
    }
    fn create(&self, config: &Value, _: &Context) -> Result<Instance> {
        let config = BpeConfig::from_json(NAME, config)?;
        Ok(Instance::Tokenizer(Box::new(HfTokenizer::new(
            Recipe::Bpe(config),
        )?)))
    }
    fn load(&self, path: &Path, _: &Context) -> Result<Instance> {
        Ok(Instance::Tokenizer(Box::new(HfTokenizer::load(
            path, NAME,
        )?)))
    }
}
