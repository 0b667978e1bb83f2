//! [`Chars`]: a tokenizer of the digits and `+` (ids 0..=10) with end-of-text 11, enough for
//! arithmetic prompts and answers in trainer and aligner tests.

use llmlab_plugin_api::prelude::*;
use llmlab_plugin_api::TextSource;

/// The vocabulary of [`Chars`] and of the test models: 10 digits, `+`, end-of-text.
pub const VOCAB: usize = 12;
/// End-of-text.
pub const EOT: u32 = 11;

/// Characters `0-9`, `+`: ids 0..=10; end-of-text is 11.
#[derive(Clone)]
pub struct Chars;

impl Tokenizer for Chars {
    fn name(&self) -> &str {
        "chars"
    }
    fn config(&self) -> Value {
        Value::Null
    }
    fn train(&mut self, _: &dyn TextSource, _: &Context) -> Result<()> {
        Ok(())
    }
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        text.chars()
            .map(|c| match c {
                '0'..='9' => Ok(c as u32 - '0' as u32),
                '+' => Ok(10),
                other => Err(Error::Data(format!("chars: no token for {other:?}"))),
            })
            .collect()
    }
    fn decode(&self, ids: &[u32]) -> Result<String> {
        Ok(ids
            .iter()
            .map(|&i| {
                if i < 10 {
                    char::from(b'0' + i as u8)
                } else {
                    '+'
                }
            })
            .collect())
    }
    fn vocab_size(&self) -> usize {
        VOCAB
    }
    fn token_to_id(&self, _: &str) -> Option<u32> {
        None
    }
    fn id_to_token(&self, _: u32) -> Option<String> {
        None
    }
    fn special_token(&self, role: SpecialToken) -> Option<u32> {
        (role == SpecialToken::EndOfText).then_some(EOT)
    }
    fn to_json(&self) -> Result<String> {
        Err(Error::unsupported("chars", "saving"))
    }
    fn clone_box(&self) -> Box<dyn Tokenizer> {
        Box::new(self.clone())
    }
}
