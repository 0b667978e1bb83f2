//! Interop at the script edge (docs/interop.md): `m.save_hf(dir)` / `m.save_hf(dir, tok)` (a
//! transformers directory), `m.export_gguf(path)` / `m.export_gguf(path, tok)` (a GGUF file
//! llama.cpp loads), `tok.chat_template()` (the template from `tokenizer_config.json`, or `()`),
//! and `tok.apply_chat_template(messages)` / `tok.apply_chat_template(messages, #{
//! add_generation_prompt })`: a conversation (`[#{role, content}, ..]`) rendered by the
//! tokenizer's template, or ChatML when it has none (`host/src/chat`).

use std::path::Path;

use llmlab_plugin_api::Tokenizer;
use rhai::{Array, Dynamic, Engine, Map};

use super::model::ModelHandle;
use super::tokenizer::TokenizerHandle;
use super::{plugin_call, script_error, ScriptResult};
use crate::chat::{ChatTemplate, Message};

/// `[#{role, content}, ..]` → messages; errors name the turn and the key.
fn messages(turns: &Array) -> ScriptResult<Vec<Message>> {
    turns
        .iter()
        .enumerate()
        .map(|(i, turn)| {
            let map = turn.read_lock::<Map>().ok_or_else(|| {
                script_error(format!(
                    "apply_chat_template: turn {i} must be a map #{{role, content}}, not {}",
                    turn.type_name()
                ))
            })?;
            let field = |key: &str| -> ScriptResult<String> {
                map.get(key)
                    .and_then(|v| v.clone().into_string().ok())
                    .ok_or_else(|| {
                        script_error(format!(
                            "apply_chat_template: turn {i} needs a string `{key}`"
                        ))
                    })
            };
            Ok(Message::new(field("role")?, field("content")?))
        })
        .collect()
}

fn template_of(tokenizer: &dyn Tokenizer) -> ScriptResult<ChatTemplate> {
    Ok(crate::chat::from_tokenizer(tokenizer)
        .map_err(script_error)?
        .unwrap_or_else(ChatTemplate::chatml))
}

fn render(tok: &TokenizerHandle, turns: &Array, options: &Map) -> ScriptResult<String> {
    if let Some(key) = options
        .keys()
        .find(|k| k.as_str() != "add_generation_prompt")
    {
        return Err(script_error(format!(
            "apply_chat_template: unknown option `{key}`; accepted: add_generation_prompt"
        )));
    }
    let add_generation_prompt = match options.get("add_generation_prompt") {
        None => false,
        Some(v) => v.as_bool().map_err(|t| {
            script_error(format!(
                "apply_chat_template: add_generation_prompt must be true or false, not {t}"
            ))
        })?,
    };
    let template = template_of(tok.read().as_ref())?;
    template
        .render(&messages(turns)?, add_generation_prompt)
        .map_err(script_error)
}

pub fn register(engine: &mut Engine) {
    engine.register_fn("save_hf", |m: &mut ModelHandle, dir: &str| {
        plugin_call(m.0.name(), || m.0.save_hf(Path::new(dir), None))
    });
    engine.register_fn(
        "save_hf",
        |m: &mut ModelHandle, dir: &str, tok: TokenizerHandle| {
            let tok = tok.read();
            plugin_call(m.0.name(), || {
                m.0.save_hf(Path::new(dir), Some(tok.as_ref()))
            })
        },
    );
    engine.register_fn("export_gguf", |m: &mut ModelHandle, path: &str| {
        plugin_call(m.0.name(), || {
            m.0.save_llama_cpp_gguf(Path::new(path), None)
        })
    });
    engine.register_fn(
        "export_gguf",
        |m: &mut ModelHandle, path: &str, tok: TokenizerHandle| {
            let tok = tok.read();
            plugin_call(m.0.name(), || {
                m.0.save_llama_cpp_gguf(Path::new(path), Some(tok.as_ref()))
            })
        },
    );
    engine.register_fn("chat_template", |tok: &mut TokenizerHandle| {
        tok.read()
            .chat_template()
            .map_or(Dynamic::UNIT, Dynamic::from)
    });
    engine.register_fn(
        "apply_chat_template",
        |tok: &mut TokenizerHandle, turns: Array| render(tok, &turns, &Map::new()),
    );
    engine.register_fn(
        "apply_chat_template",
        |tok: &mut TokenizerHandle, turns: Array, options: Map| render(tok, &turns, &options),
    );
}
