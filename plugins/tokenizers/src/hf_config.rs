//! The Hugging Face `tokenizer_config.json` beside a `tokenizer.json`: which added tokens play
//! which role (`eos_token`, `pad_token`, `unk_token`, `bos_token`) and the Jinja
//! `chat_template` (also read from a `chat_template.jinja` file, where transformers 4.43+
//! writes it). Without the file, roles fall back to the names in `special.rs`.

use std::path::{Path, PathBuf};

use llmlab_plugin_api::prelude::*;
use llmlab_plugin_api::{Error, SpecialToken};

pub const CONFIG_FILE: &str = "tokenizer_config.json";
pub const TEMPLATE_FILE: &str = "chat_template.jinja";
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// `path` itself, or `path/tokenizer.json` when it names a directory (an HF model directory).
pub fn tokenizer_file(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join(TOKENIZER_FILE)
    } else {
        path.to_path_buf()
    }
}

/// The `tokenizer_config.json` beside `tokenizer_json`, with `chat_template` filled in from
/// `chat_template.jinja` when the config has none; `None` when neither file exists.
pub fn read_beside(tokenizer_json: &Path) -> Result<Option<Value>> {
    let dir = tokenizer_json.parent().unwrap_or(Path::new("."));
    let config_path = dir.join(CONFIG_FILE);
    let mut config = if config_path.is_file() {
        let bytes =
            llmlab_plugin_api::files::read_regular_file(&config_path, 64 << 20, CONFIG_FILE)?;
        let value: Value = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Data(format!("{}: not valid JSON: {e}", config_path.display())))?;
        if !value.is_object() {
            return Err(Error::Data(format!(
                "{}: must be a JSON object",
                config_path.display()
            )));
        }
        Some(value)
    } else {
        None
    };
    let template_path = dir.join(TEMPLATE_FILE);
    let has_template = config
        .as_ref()
        .is_some_and(|c| c.get("chat_template").is_some_and(|t| !t.is_null()));
    if !has_template && template_path.is_file() {
        let text =
            std::fs::read_to_string(&template_path).map_err(|e| Error::io(&template_path, e))?;
        config.get_or_insert_with(|| Value::Object(Default::default()))["chat_template"] =
            Value::String(text);
    }
    if let Some(config) = &config {
        chat_template(config)
            .map_err(|m| Error::Data(format!("{}: {m}", config_path.display())))?;
    }
    Ok(config)
}

/// A special token's text: a string, or transformers' serialised `AddedToken` (`{"content":..}`).
pub fn token_text(config: &Value, key: &str) -> Option<String> {
    match config.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

/// The config key naming the token of `role`.
pub fn role_key(role: SpecialToken) -> Option<&'static str> {
    match role {
        SpecialToken::EndOfText => Some("eos_token"),
        SpecialToken::Pad => Some("pad_token"),
        SpecialToken::Unknown => Some("unk_token"),
        SpecialToken::Cls => Some("cls_token"),
        SpecialToken::Sep => Some("sep_token"),
        SpecialToken::Mask => Some("mask_token"),
    }
}

/// The default chat template: a string, or the list of named templates some repositories
/// carry (`[{"name": "default", "template": ..}, {"name": "tool_use", ..}]`).
pub fn chat_template(config: &Value) -> std::result::Result<Option<String>, String> {
    match config.get("chat_template") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Array(named)) => {
            let pick = named
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .or_else(|| named.first());
            match pick.and_then(|t| t.get("template")).and_then(Value::as_str) {
                Some(t) => Ok(Some(t.to_string())),
                None => Err(
                    "chat_template: a list of templates needs {\"name\", \"template\"} entries"
                        .into(),
                ),
            }
        }
        Some(other) => Err(format!(
            "chat_template must be a string or a list of named templates, got {other}"
        )),
    }
}
