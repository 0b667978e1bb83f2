//! `unigram`: SentencePiece's unigram language model. Text is NFKC-normalised (optionally),
//! spaces become `▁` and start each word, and the vocabulary is pruned from a large seed set to
//! the pieces that best explain the corpus; characters never seen become `<unk>`.

use std::path::Path;

use llmlab_plugin_api::prelude::*;
use llmlab_plugin_api::TypedConfig;
use tokenizers::models::unigram::{Unigram as UnigramModel, UnigramTrainer};
use tokenizers::models::TrainerWrapper;
use tokenizers::normalizers::NFKC;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};

use crate::special;
use crate::tokenizer::{HfTokenizer, Recipe};

pub const NAME: &str = "unigram";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(crate = "llmlab_plugin_api::serde", default, deny_unknown_fields)]
pub struct UnigramConfig {
    pub vocab_size: usize,
    pub special_tokens: Vec<String>,
    pub unk_token: String,
    pub nfkc: bool,
    pub max_piece_length: usize,
    pub shrinking_factor: f64,
    pub n_sub_iterations: u32,
}

impl Default for UnigramConfig {
    fn default() -> Self {
        UnigramConfig {
            vocab_size: 8000,
            special_tokens: ["<unk>", "<|endoftext|>", "<pad>"]
                .map(String::from)
                .to_vec(),
            unk_token: "<unk>".into(),
            nfkc: true,
            max_piece_length: 16,
            shrinking_factor: 0.75,
            n_sub_iterations: 2,
        }
    }
}

impl TypedConfig for UnigramConfig {
    const DOCS: &'static [(&'static str, &'static str)] = &[
        (
            "vocab_size",
            "pieces in the vocabulary, including every character seen and special tokens",
        ),
        ("special_tokens", "tokens never split, given the first ids"),
        (
            "unk_token",
            "what an unseen character becomes (must be a special token)",
        ),
        (
            "nfkc",
            "NFKC-normalise text first, as SentencePiece does (decode then differs from the input)",
        ),
        ("max_piece_length", "longest piece in characters"),
        (
            "shrinking_factor",
            "fraction of pieces kept per pruning round",
        ),
        ("n_sub_iterations", "EM iterations per pruning round"),
    ];

    fn validate(&self) -> std::result::Result<(), String> {
        special::check(&self.special_tokens)?;
        if !self.special_tokens.contains(&self.unk_token) {
            return Err(format!(
                "unk_token {:?} must be one of special_tokens {:?}",
                self.unk_token, self.special_tokens
            ));
        }
        if self.vocab_size <= self.special_tokens.len() || self.vocab_size > u32::MAX as usize {
            return Err(format!(
                "vocab_size {} must exceed the {} special tokens",
                self.vocab_size,
                self.special_tokens.len()
            ));
        }
        if !(self.shrinking_factor > 0.0 && self.shrinking_factor < 1.0) {
            return Err(format!(
                "shrinking_factor {} must lie strictly between 0 and 1",
                self.shrinking_factor
            ));
        }
        if self.max_piece_length == 0 {
            return Err("max_piece_length must be at least 1".into());
        }
        Ok(())
    }
}

/// SentencePiece's pipeline around an empty unigram model.
pub fn pipeline(config: &UnigramConfig) -> Result<tokenizers::Tokenizer> {
    let mut tokenizer = tokenizers::Tokenizer::new(UnigramModel::default());
    if config.nfkc {
        tokenizer
            .with_normalizer(Some(NFKC))
            .map_err(|e| Error::invalid_config(NAME, e.to_string()))?;
    }
    let metaspace = Metaspace::new('▁', PrependScheme::Always, true);
    tokenizer.with_pre_tokenizer(Some(metaspace.clone()));
    tokenizer.with_decoder(Some(metaspace));
    Ok(tokenizer)
}

pub fn trainer(config: &UnigramConfig) -> TrainerWrapper {
    UnigramTrainer::builder()
        .vocab_size(config.vocab_size as u32)
        .special_tokens(special::added_tokens(&config.special_tokens))
        .unk_token(Some(config.unk_token.clone()))
        .max_piece_length(config.max_piece_length)
        .shrinking_factor(config.shrinking_factor)
        .n_sub_iterations(config.n_sub_iterations)
        .show_progress(false)
        .build()
        .expect("every UnigramTrainer field is set or has a default")
        .into()
}

pub struct Unigram;

impl Factory for Unigram {
    fn name(&self) -> &'static str {
        NAME
    }
    fn kind(&self) -> Kind {
        Kind::Tokenizer
    }
    fn about(&self) -> &'static str {
        "SentencePiece-style unigram LM tokenizer (Metaspace ▁, NFKC)"
    }
    fn config_keys(&self) -> Vec<ConfigKey> {
        UnigramConfig::keys()
    }
    fn create(&self, config: &Value, _: &Context) -> Result<Instance> {
        let config = UnigramConfig::from_json(NAME, config)?;
        Ok(Instance::Tokenizer(Box::new(HfTokenizer::new(
            Recipe::Unigram(config),
        )?)))
    }
    fn load(&self, path: &Path, _: &Context) -> Result<Instance> {
        Ok(Instance::Tokenizer(Box::new(HfTokenizer::load(
            path, NAME,
        )?)))
    }
}
