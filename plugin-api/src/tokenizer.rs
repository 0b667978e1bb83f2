//! The [`Tokenizer`] component: text to token ids and back, trainable, saved as the standard
//! `tokenizer.json`.

use std::path::Path;

use serde_json::Value;

use crate::{Context, Error, Result, TextSource};

/// Roles a tokenizer may give to special tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SpecialToken {
    /// Separates documents; generation stops on it.
    EndOfText,
    Pad,
    Unknown,
    Cls,
    Sep,
    Mask,
}

pub trait Tokenizer: Send + Sync {
    /// The component name (`"bpe"`).
    fn name(&self) -> &str;
    /// The resolved config.
    fn config(&self) -> Value;
    /// Learns the vocabulary from `data`; shows progress and honours cancellation through `ctx`.
    fn train(&mut self, data: &dyn TextSource, ctx: &Context) -> Result<()>;
    fn encode(&self, text: &str) -> Result<Vec<u32>>;
    /// Encodes many texts; implementations parallelise.
    fn encode_batch(&self, texts: &[String]) -> Result<Vec<Vec<u32>>> {
        texts.iter().map(|t| self.encode(t)).collect()
    }
    fn decode(&self, ids: &[u32]) -> Result<String>;
    fn vocab_size(&self) -> usize;
    fn token_to_id(&self, token: &str) -> Option<u32>;
    fn id_to_token(&self, id: u32) -> Option<String>;
    fn special_token(&self, role: SpecialToken) -> Option<u32>;
    /// The `tokenizer.json` text (Hugging Face format).
    fn to_json(&self) -> Result<String>;
    /// Writes `tokenizer.json` atomically.
    fn save(&self, path: &Path) -> Result<()> {
        crate::files::write_atomic(path, self.to_json()?.as_bytes())
    }
    /// The Jinja chat template of a Hugging Face tokenizer (`chat_template` in the
    /// `tokenizer_config.json` loaded beside `tokenizer.json`); `None` when there is none.
    fn chat_template(&self) -> Option<String> {
        None
    }
    /// The `tokenizer_config.json` loaded beside `tokenizer.json` (special token strings,
    /// `chat_template`, ...), or the one to write beside it on export; `None` when unknown.
    fn tokenizer_config(&self) -> Option<Value> {
        None
    }
    /// A new, independent copy (scripts may keep both).
    fn clone_box(&self) -> Box<dyn Tokenizer>;
}

impl<'a> dyn Tokenizer + 'a {
    /// The id of the end-of-text token or a clear error.
    pub fn end_of_text(&self) -> Result<u32> {
        self.special_token(SpecialToken::EndOfText).ok_or_else(|| {
            Error::msg(format!(
                "tokenizer {} has no end-of-text special token",
                self.name()
            ))
        })
    }
}
