//! The chat template a tokenizer brings: `chat_template` from the `tokenizer_config.json`
//! loaded beside its `tokenizer.json` (`Tokenizer::chat_template`), with the config's
//! `bos_token`/`eos_token` strings for templates that print them (Llama's `{{ bos_token }}`).

use llmlab_plugin_api::{Result, Tokenizer};

use super::ChatTemplate;

/// The special token's text in an HF tokenizer config (a string or an `AddedToken` object).
fn token_text(config: &llmlab_plugin_api::serde_json::Value, key: &str) -> Option<String> {
    match config.get(key)? {
        llmlab_plugin_api::serde_json::Value::String(s) => Some(s.clone()),
        llmlab_plugin_api::serde_json::Value::Object(o) => {
            o.get("content")?.as_str().map(str::to_string)
        }
        _ => None,
    }
}

/// The tokenizer's own template, compiled; `None` when it has none. A template using a feature
/// the renderer does not support is an error naming the feature.
pub fn from_tokenizer(tokenizer: &dyn Tokenizer) -> Result<Option<ChatTemplate>> {
    let Some(source) = tokenizer.chat_template() else {
        return Ok(None);
    };
    let config = tokenizer.tokenizer_config().unwrap_or_default();
    let eos = token_text(&config, "eos_token")
        .or_else(|| {
            let id = tokenizer.special_token(llmlab_plugin_api::SpecialToken::EndOfText)?;
            tokenizer.id_to_token(id)
        })
        .unwrap_or_default();
    let bos = token_text(&config, "bos_token").unwrap_or_default();
    let template = ChatTemplate::from_source(&source).map_err(|e| {
        llmlab_plugin_api::Error::msg(format!(
            "the tokenizer's chat_template (tokenizer_config.json): {e}"
        ))
    })?;
    Ok(Some(template.with_special_tokens(bos, eos)))
}
