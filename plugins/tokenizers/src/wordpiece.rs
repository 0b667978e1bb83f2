//! `wordpiece`: BERT's tokenizer. Text is cleaned, optionally lowercased (accents stripped with
//! it), split on whitespace and punctuation, and each word is cut into the longest known pieces;
//! a word with no decomposition becomes `[UNK]`.

use std::path::Path;

use llmlab_plugin_api::prelude::*;
use llmlab_plugin_api::TypedConfig;
use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::models::wordpiece::{WordPiece as WordPieceModel, WordPieceTrainer};
use tokenizers::models::TrainerWrapper;
use tokenizers::normalizers::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;

use crate::special;
use crate::tokenizer::{HfTokenizer, Recipe};

pub const NAME: &str = "wordpiece";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(crate = "llmlab_plugin_api::serde", default, deny_unknown_fields)]
pub struct WordPieceConfig {
    pub vocab_size: usize,
    pub min_frequency: u64,
    pub special_tokens: Vec<String>,
    pub unk_token: String,
    pub lowercase: bool,
    pub limit_alphabet: Option<usize>,
    pub continuing_subword_prefix: String,
    pub max_input_chars_per_word: usize,
}

impl Default for WordPieceConfig {
    fn default() -> Self {
        WordPieceConfig {
            vocab_size: 8192,
            min_frequency: 2,
            special_tokens: ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
                .map(String::from)
                .to_vec(),
            unk_token: "[UNK]".into(),
            lowercase: true,
            limit_alphabet: Some(1000),
            continuing_subword_prefix: "##".into(),
            max_input_chars_per_word: 100,
        }
    }
}

impl TypedConfig for WordPieceConfig {
    const DOCS: &'static [(&'static str, &'static str)] = &[
        (
            "vocab_size",
            "tokens in the vocabulary, including the alphabet and special tokens",
        ),
        ("min_frequency", "a pair must occur this often to be merged"),
        ("special_tokens", "tokens never split, given the first ids"),
        (
            "unk_token",
            "what a word with no known pieces becomes (must be a special token)",
        ),
        (
            "lowercase",
            "lowercase and strip accents before splitting (BERT uncased)",
        ),
        (
            "limit_alphabet",
            "keep only this many most frequent characters (null: all)",
        ),
        (
            "continuing_subword_prefix",
            "marks a piece that continues a word",
        ),
        ("max_input_chars_per_word", "longer words become unk_token"),
    ];

    fn validate(&self) -> std::result::Result<(), String> {
        special::check(&self.special_tokens)?;
        if !self.special_tokens.contains(&self.unk_token) {
            return Err(format!(
                "unk_token {:?} must be one of special_tokens {:?}",
                self.unk_token, self.special_tokens
            ));
        }
        if self.vocab_size <= self.special_tokens.len() {
            return Err(format!(
                "vocab_size {} leaves no room beside {} special tokens",
                self.vocab_size,
                self.special_tokens.len()
            ));
        }
        crate::training::check_vocab_size(self.vocab_size)
    }
}

/// BERT's pipeline around an empty WordPiece model.
pub fn pipeline(config: &WordPieceConfig) -> Result<tokenizers::Tokenizer> {
    let model = WordPieceModel::builder()
        .unk_token(config.unk_token.clone())
        .continuing_subword_prefix(config.continuing_subword_prefix.clone())
        .max_input_chars_per_word(config.max_input_chars_per_word)
        .build()
        .map_err(|e| Error::invalid_config(NAME, e.to_string()))?;
    let mut tokenizer = tokenizers::Tokenizer::new(model);
    tokenizer
        .with_normalizer(Some(BertNormalizer::new(
            true,
            true,
            None,
            config.lowercase,
        )))
        .map_err(|e| Error::invalid_config(NAME, e.to_string()))?;
    tokenizer.with_pre_tokenizer(Some(BertPreTokenizer));
    tokenizer.with_decoder(Some(WordPieceDecoder::new(
        config.continuing_subword_prefix.clone(),
        true,
    )));
    Ok(tokenizer)
}

pub fn trainer(config: &WordPieceConfig) -> TrainerWrapper {
    let mut builder = WordPieceTrainer::builder()
        .vocab_size(config.vocab_size)
        .min_frequency(config.min_frequency)
        .special_tokens(special::added_tokens(&config.special_tokens))
        .continuing_subword_prefix(config.continuing_subword_prefix.clone())
        .show_progress(false);
    if let Some(limit) = config.limit_alphabet {
        builder = builder.limit_alphabet(limit);
    }
    builder.build().into()
}

pub struct WordPiece;

impl Factory for WordPiece {
    fn name(&self) -> &'static str {
        NAME
    }
    fn kind(&self) -> Kind {
        Kind::Tokenizer
    }
    fn about(&self) -> &'static str {
        "BERT WordPiece with [CLS] [SEP] [MASK] [PAD] [UNK]; unknown words become [UNK]"
    }
    fn config_keys(&self) -> Vec<ConfigKey> {
        WordPieceConfig::keys()
    }
    fn create(&self, config: &Value, _: &Context) -> Result<Instance> {
        let config = WordPieceConfig::from_json(NAME, config)?;
        Ok(Instance::Tokenizer(Box::new(HfTokenizer::new(
            Recipe::WordPiece(config),
        )?)))
    }
    fn load(&self, path: &Path, _: &Context) -> Result<Instance> {
        Ok(Instance::Tokenizer(Box::new(HfTokenizer::load(
            path, NAME,
        )?)))
    }
}
