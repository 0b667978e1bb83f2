//! Special tokens: checking the configured list, handing it to `tokenizers`, and knowing which
//! token plays which role ([`SpecialToken`]) whatever convention a file follows.

use llmlab_plugin_api::SpecialToken;
use tokenizers::AddedToken;

/// Special tokens as `tokenizers` wants them: matched verbatim, never normalised or split.
pub fn added_tokens(tokens: &[String]) -> Vec<AddedToken> {
    tokens
        .iter()
        .map(|t| AddedToken::from(t.clone(), true))
        .collect()
}

/// Refuses empty and repeated special tokens (the message names the key).
pub fn check(tokens: &[String]) -> Result<(), String> {
    for (i, token) in tokens.iter().enumerate() {
        if token.is_empty() {
            return Err("special_tokens: a special token may not be empty".into());
        }
        if tokens[..i].contains(token) {
            return Err(format!("special_tokens: {token:?} is listed twice"));
        }
    }
    Ok(())
}

/// Token strings that play `role`, in order of preference (GPT-2, SentencePiece, BERT names).
pub fn role_candidates(role: SpecialToken) -> &'static [&'static str] {
    match role {
        SpecialToken::EndOfText => &["<|endoftext|>", "</s>", "<eos>", "[SEP]"],
        SpecialToken::Pad => &["<pad>", "[PAD]", "<|pad|>"],
        SpecialToken::Unknown => &["<unk>", "[UNK]", "<|unk|>"],
        SpecialToken::Cls => &["[CLS]", "<s>", "<cls>"],
        SpecialToken::Sep => &["[SEP]", "</s>", "<sep>"],
        SpecialToken::Mask => &["[MASK]", "<mask>"],
    }
}
