//! [`HfTokenizer`]: one llmlab [`Tokenizer`] over a Hugging Face `tokenizers::Tokenizer`, whatever
//! its model. What differs between `bpe`, `wordpiece` and `unigram` (config, pipeline, trainer)
//! lives in their own files and reaches this one through [`Recipe`].
//!
//! Ids are never remapped: the ids here are the ids in `tokenizer.json`, so a file saved here
//! encodes identically in Python's `tokenizers`.

use std::path::Path;
use std::sync::Arc;

use llmlab_plugin_api::prelude::*;
use llmlab_plugin_api::{Error, SpecialToken, TextSource};
use tokenizers::models::ModelWrapper;
use tokenizers::models::TrainerWrapper;
use tokenizers::AddedVocabulary;

use crate::fast_bpe::FastEncoder;
use crate::special::role_candidates;
use crate::{bpe, training, unigram, wordpiece};

/// What makes a component what it is: its typed config, from which its untrained pipeline and
/// its trainer follow.
#[derive(Debug, Clone)]
pub enum Recipe {
    Bpe(bpe::BpeConfig),
    WordPiece(wordpiece::WordPieceConfig),
    Unigram(unigram::UnigramConfig),
}

impl Recipe {
    /// The component name scripts use.
    pub fn component(&self) -> &'static str {
        match self {
            Recipe::Bpe(_) => bpe::NAME,
            Recipe::WordPiece(_) => wordpiece::NAME,
            Recipe::Unigram(_) => unigram::NAME,
        }
    }

    fn config_json(&self) -> Value {
        use llmlab_plugin_api::TypedConfig;
        match self {
            Recipe::Bpe(c) => c.to_json(),
            Recipe::WordPiece(c) => c.to_json(),
            Recipe::Unigram(c) => c.to_json(),
        }
    }

    /// The full pipeline (normalizer, pre-tokenizer, decoder) around an empty model.
    pub fn pipeline(&self) -> Result<tokenizers::Tokenizer> {
        match self {
            Recipe::Bpe(c) => bpe::pipeline(c),
            Recipe::WordPiece(c) => wordpiece::pipeline(c),
            Recipe::Unigram(c) => unigram::pipeline(c),
        }
    }

    /// An empty model of this recipe's type, for retraining a loaded pipeline.
    fn empty_model(&self) -> Result<ModelWrapper> {
        Ok(self.pipeline()?.get_model().clone())
    }

    fn trainer(&self) -> TrainerWrapper {
        match self {
            Recipe::Bpe(c) => bpe::trainer(c),
            Recipe::WordPiece(c) => wordpiece::trainer(c),
            Recipe::Unigram(c) => unigram::trainer(c),
        }
    }

    fn requested_vocab_size(&self) -> usize {
        match self {
            Recipe::Bpe(c) => c.vocab_size,
            Recipe::WordPiece(c) => c.vocab_size,
            Recipe::Unigram(c) => c.vocab_size,
        }
    }

    /// The recipe matching a loaded model: defaults with the file's vocabulary size, so that
    /// `config()` and retraining describe what was loaded.
    fn for_loaded(model: &ModelWrapper, vocab_size: usize) -> Option<Recipe> {
        match model {
            ModelWrapper::BPE(_) => Some(Recipe::Bpe(bpe::BpeConfig {
                vocab_size,
                ..Default::default()
            })),
            ModelWrapper::WordPiece(_) => Some(Recipe::WordPiece(wordpiece::WordPieceConfig {
                vocab_size,
                ..Default::default()
            })),
            ModelWrapper::Unigram(_) => Some(Recipe::Unigram(unigram::UnigramConfig {
                vocab_size,
                ..Default::default()
            })),
            ModelWrapper::WordLevel(_) => None,
        }
    }
}

/// The name of a model's type as `tokenizer.json` spells it.
pub fn model_type(model: &ModelWrapper) -> &'static str {
    match model {
        ModelWrapper::BPE(_) => "BPE",
        ModelWrapper::WordPiece(_) => "WordPiece",
        ModelWrapper::WordLevel(_) => "WordLevel",
        ModelWrapper::Unigram(_) => "Unigram",
    }
}

/// A trainable tokenizer backed by Hugging Face `tokenizers`.
#[derive(Clone)]
pub struct HfTokenizer {
    recipe: Recipe,
    inner: tokenizers::Tokenizer,
    trained: bool,
    /// The hand-written encoder when `inner`'s configuration is one it reproduces exactly
    /// (byte-level BPE with GPT-2 or Llama-3 splitting); `None` uses `inner` itself.
    fast: Option<Arc<FastEncoder>>,
    /// The `tokenizer_config.json` loaded beside the file (`hf_config.rs`): special token roles
    /// and the chat template.
    hf_config: Option<Arc<Value>>,
}

impl HfTokenizer {
    /// An untrained tokenizer: `train` must run before `encode`.
    pub fn new(recipe: Recipe) -> Result<HfTokenizer> {
        let inner = recipe.pipeline()?;
        Ok(HfTokenizer {
            recipe,
            inner,
            trained: false,
            fast: None,
            hf_config: None,
        })
    }

    /// Loads `tokenizer.json` (or `dir/tokenizer.json`) for component `component`, with the
    /// `tokenizer_config.json` beside it when there is one; refuses a file whose model is
    /// another component's (the host then tries the next tokenizer component).
    pub fn load(path: &Path, component: &str) -> Result<HfTokenizer> {
        let path = &crate::hf_config::tokenizer_file(path);
        // Only a regular file, and no more than any real tokenizer.json (the largest published
        // ones are tens of MB): `/dev/zero` or a FIFO must not hang or fill memory.
        let bytes = llmlab_plugin_api::files::read_regular_file(path, 1 << 30, "tokenizer.json")?;
        let invalid = |e: &dyn std::fmt::Display| {
            Error::Data(format!(
                "{}: not a valid tokenizer.json: {e}",
                path.display()
            ))
        };
        // The JSON syntax first: the `tokenizers` crate's decoder section `expect`s that its
        // buffered content parses and panics on a syntax error there (found by fuzzing,
        // docs/reliability.md). Behind that check, a panic left in that crate is still an error.
        serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).map_err(|e| invalid(&e))?;
        let inner = std::panic::catch_unwind(|| tokenizers::Tokenizer::from_bytes(&bytes))
            .map_err(|_| invalid(&"the tokenizers crate panicked while reading it"))?
            .map_err(|e| invalid(&e))?;
        let vocab_size = inner.get_vocab_size(true);
        let recipe = Recipe::for_loaded(inner.get_model(), vocab_size)
            .filter(|r| r.component() == component)
            .ok_or_else(|| {
                Error::Data(format!(
                    "{} holds a {} model, which component `{component}` does not load",
                    path.display(),
                    model_type(inner.get_model())
                ))
            })?;
        let fast = FastEncoder::from_tokenizer(&inner).map(Arc::new);
        let hf_config = crate::hf_config::read_beside(path)?.map(Arc::new);
        Ok(HfTokenizer {
            recipe,
            inner,
            trained: true,
            fast,
            hf_config,
        })
    }

    /// The wrapped Hugging Face tokenizer (tests and benchmarks compare against it).
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Whether encoding takes the hand-written fast path ([`FastEncoder`]).
    pub fn is_fast(&self) -> bool {
        self.fast.is_some()
    }

    fn ensure_trained(&self) -> Result<()> {
        if self.trained {
            Ok(())
        } else {
            Err(Error::msg(format!(
                "tokenizer {} is not trained yet: call tok.train(corpus) or load a tokenizer.json first",
                self.recipe.component()
            )))
        }
    }

    fn hf_error(&self, what: &str, error: tokenizers::Error) -> Error {
        Error::msg(format!("{} {what}: {error}", self.recipe.component()))
    }
}

impl Tokenizer for HfTokenizer {
    fn name(&self) -> &str {
        self.recipe.component()
    }

    fn config(&self) -> Value {
        self.recipe.config_json()
    }

    fn train(&mut self, data: &dyn TextSource, ctx: &Context) -> Result<()> {
        let mut fresh = self.inner.clone();
        fresh.with_added_vocabulary(AddedVocabulary::new());
        fresh.with_model(self.recipe.empty_model()?);
        let splitter = crate::fast_bpe::train::splitter_for(&fresh);
        match (&self.recipe, splitter) {
            // Byte-level BPE with a hand-written splitter: the fast trainer, same result.
            (Recipe::Bpe(config), Some(splitter)) => crate::fast_bpe::train::train(
                &mut fresh,
                splitter,
                &bpe::fast_settings(config),
                data,
                ctx,
                self.recipe.component(),
            )?,
            _ => {
                let mut trainer = self.recipe.trainer();
                training::train(&mut fresh, &mut trainer, data, ctx, self.recipe.component())?;
            }
        }
        let requested = self.recipe.requested_vocab_size();
        let got = fresh.get_vocab_size(true);
        if got > requested {
            return Err(Error::invalid_config(
                self.recipe.component(),
                format!(
                    "vocab_size {requested} is below what {} needs: its alphabet and special tokens \
                     alone take {got} tokens; raise vocab_size to at least {got}",
                    data.name()
                ),
            ));
        }
        self.fast = FastEncoder::from_tokenizer(&fresh).map(Arc::new);
        self.inner = fresh;
        self.trained = true;
        // A loaded config's token roles and template were for the old vocabulary.
        self.hf_config = None;
        Ok(())
    }

    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.ensure_trained()?;
        if let Some(fast) = &self.fast {
            return Ok(fast.encode(text));
        }
        let encoding = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| self.hf_error("encode", e))?;
        Ok(encoding.get_ids().to_vec())
    }

    fn encode_batch(&self, texts: &[String]) -> Result<Vec<Vec<u32>>> {
        self.ensure_trained()?;
        if let Some(fast) = &self.fast {
            return Ok(fast.encode_batch(texts));
        }
        let inputs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let encodings = self
            .inner
            .encode_batch_fast(inputs, false)
            .map_err(|e| self.hf_error("encode", e))?;
        Ok(encodings
            .into_iter()
            .map(|e| e.get_ids().to_vec())
            .collect())
    }

    fn decode(&self, ids: &[u32]) -> Result<String> {
        self.ensure_trained()?;
        let vocab_size = self.vocab_size();
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab_size) {
            return Err(Error::Data(format!(
                "token id {bad} is out of range for {} with vocab size {vocab_size}",
                self.recipe.component()
            )));
        }
        self.inner
            .decode(ids, false)
            .map_err(|e| self.hf_error("decode", e))
    }

    fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    fn special_token(&self, role: SpecialToken) -> Option<u32> {
        // The model's own config says which token ends a turn or pads (Llama 3: `<|eot_id|>`).
        let configured = self.hf_config.as_deref().and_then(|config| {
            let key = crate::hf_config::role_key(role)?;
            self.inner
                .token_to_id(&crate::hf_config::token_text(config, key)?)
        });
        if configured.is_some() {
            return configured;
        }
        if role == SpecialToken::Unknown {
            let unk = match self.inner.get_model() {
                ModelWrapper::WordPiece(wp) => self.inner.token_to_id(&wp.unk_token),
                _ => None,
            };
            if unk.is_some() {
                return unk;
            }
        }
        let added = self.inner.get_added_vocabulary();
        role_candidates(role)
            .iter()
            .filter(|t| added.is_special_token(t))
            .find_map(|t| self.inner.token_to_id(t))
    }

    fn to_json(&self) -> Result<String> {
        self.ensure_trained()?;
        self.inner
            .to_string(true)
            .map_err(|e| self.hf_error("serialise", e))
    }

    fn chat_template(&self) -> Option<String> {
        crate::hf_config::chat_template(self.hf_config.as_deref()?)
            .ok()
            .flatten()
    }

    fn tokenizer_config(&self) -> Option<Value> {
        self.hf_config.as_deref().cloned()
    }

    fn clone_box(&self) -> Box<dyn Tokenizer> {
        Box::new(self.clone())
    }
}
