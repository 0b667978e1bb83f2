//! Chat in scripts: chat templates (`chat_template()`), chat data for `trainer("sft")`
//! (`chat_data(..)`), and `m.chat(tok, messages, opts)`, which generates the assistant's next
//! reply with the same template the model was trained with (rendered with the generation
//! prompt, cut at the template's end-of-turn marker).
//!
//! ```rhai
//! let t = chat_template();                          // ChatML; or a Jinja string, a .jinja file, or tok
//! let data = chat_data("chat.jsonl", #{ template: t });   // {"messages": [..]} per line
//! let data = chat_data(corpus("chat", #{ n: 2000 }));     // the built-in multi-turn chat corpus
//! trainer("sft", #{ steps: 500 }).fit(m, data, tok);      // loss on the assistant turns only
//! m.chat(tok, [#{ role: "user", content: "12+30=" }], #{ max_tokens: 8, template: t });
//! ```

use std::path::Path;
use std::sync::Arc;

use rhai::{Array, Dynamic, Engine, Map};

use super::data::CorpusHandle;
use super::model::{generate_text, ModelHandle};
use super::tokenizer::TokenizerHandle;
use super::{plugin_call, script_error, ScriptResult};
use crate::chat::{self, ChatExamples, ChatTemplate, Message};

/// `messages` as a script gives them: an array of `#{ role, content }` maps.
fn messages_of(messages: &Array) -> ScriptResult<Vec<Message>> {
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let map = m.read_lock::<Map>().ok_or_else(|| {
                script_error(format!(
                    "messages[{i}]: expected a map #{{ role, content }}, found {}",
                    m.type_name()
                ))
            })?;
            let field = |key: &str| -> ScriptResult<String> {
                map.get(key)
                    .and_then(|v| v.clone().into_string().ok())
                    .ok_or_else(|| {
                        script_error(format!("messages[{i}]: `{key}` missing or not a string"))
                    })
            };
            Ok(Message::new(field("role")?, field("content")?))
        })
        .collect()
}

/// A template from a script value: a `ChatTemplate`, a `.jinja` file path, or Jinja source.
fn template_of(value: &Dynamic) -> ScriptResult<ChatTemplate> {
    if let Some(t) = value.clone().try_cast::<ChatTemplate>() {
        return Ok(t);
    }
    let text = value.clone().into_string().map_err(|t| {
        script_error(format!(
            "`template` must be a chat_template(..), a .jinja file or a Jinja string, found {t}"
        ))
    })?;
    template_from_text(&text)
}

fn template_from_text(text: &str) -> ScriptResult<ChatTemplate> {
    let path = Path::new(text);
    if !text.contains("{%") && !text.contains("{{") && path.is_file() {
        plugin_call("chat_template", || ChatTemplate::from_file(path))
    } else {
        plugin_call("chat_template", || ChatTemplate::from_source(text))
    }
}

/// The tokenizer's own template when it brings one (HF `tokenizer_config.json`), else ChatML.
fn template_of_tokenizer(tok: &TokenizerHandle) -> ScriptResult<ChatTemplate> {
    let tokenizer = tok.read();
    Ok(
        plugin_call("chat_template", || chat::from_tokenizer(tokenizer.as_ref()))?
            .unwrap_or_else(ChatTemplate::chatml),
    )
}

fn chat_data(data: Dynamic, options: Map) -> ScriptResult<CorpusHandle> {
    let mut template = ChatTemplate::chatml();
    for (key, value) in options {
        match key.as_str() {
            "template" => template = template_of(&value)?,
            other => {
                return Err(script_error(format!(
                    "chat_data: unknown option `{other}`; accepted: template"
                )))
            }
        }
    }
    let examples = if let Some(corpus) = data.clone().try_cast::<CorpusHandle>() {
        plugin_call("chat_data", || {
            ChatExamples::from_documents(corpus.source.as_ref(), &template)
        })?
    } else {
        let path = data.into_string().map_err(|t| {
            script_error(format!(
                "chat_data: expected a messages JSONL path or a corpus, found {t}"
            ))
        })?;
        plugin_call("chat_data", || {
            ChatExamples::open(Path::new(&path), &template)
        })?
    };
    let examples = Arc::new(examples);
    let mut handle = CorpusHandle::documents(examples.clone());
    handle.examples = Some(examples);
    Ok(handle)
}

/// `m.chat(tok, messages, opts)`: the assistant's next reply.
fn chat_reply(
    model: &ModelHandle,
    tok: &TokenizerHandle,
    messages: &Array,
    mut options: Map,
) -> ScriptResult<String> {
    let template = match options.remove("template") {
        Some(t) => template_of(&t)?,
        None => template_of_tokenizer(tok)?,
    };
    let messages = messages_of(messages)?;
    let prompt = plugin_call("chat", || template.render(&messages, true))?;
    if let Some(end) = plugin_call("chat", || template.end_of_turn())? {
        let mut stop: Array = match options.remove("stop") {
            Some(s) if s.is_array() => s.cast::<Array>(),
            Some(s) => vec![s],
            None => Array::new(),
        };
        stop.push(end.into());
        options.insert("stop".into(), stop.into());
    }
    let mut texts = generate_text(model.0.as_ref(), tok, &[prompt], options)?;
    Ok(texts.remove(0).trim().to_string())
}

pub fn register(engine: &mut Engine) {
    engine.register_type_with_name::<ChatTemplate>("ChatTemplate");
    engine.register_fn("chat_template", ChatTemplate::chatml);
    engine.register_fn("chat_template", |text: &str| template_from_text(text));
    engine.register_fn("chat_template", |tok: TokenizerHandle| {
        template_of_tokenizer(&tok)
    });
    engine.register_fn(
        "render",
        |t: &mut ChatTemplate, messages: Array, add_generation_prompt: bool| {
            let messages = messages_of(&messages)?;
            plugin_call("chat_template", || {
                t.render(&messages, add_generation_prompt)
            })
        },
    );
    engine.register_fn("segments", |t: &mut ChatTemplate, messages: Array| {
        let messages = messages_of(&messages)?;
        let segments = plugin_call("chat_template", || t.render_segments(&messages))?;
        Ok::<_, Box<rhai::EvalAltResult>>(
            segments
                .into_iter()
                .map(|s| {
                    let mut m = Map::new();
                    m.insert("text".into(), s.text.into());
                    m.insert("trainable".into(), s.trainable.into());
                    Dynamic::from_map(m)
                })
                .collect::<Array>(),
        )
    });
    engine.register_fn("to_string", |t: &mut ChatTemplate| {
        format!("ChatTemplate({})", t.origin())
    });
    engine.register_fn("chat_data", |data: Dynamic| chat_data(data, Map::new()));
    engine.register_fn("chat_data", chat_data);
    engine.register_fn(
        "chat",
        |m: &mut ModelHandle, tok: TokenizerHandle, messages: Array, options: Map| {
            chat_reply(m, &tok, &messages, options)
        },
    );
    engine.register_fn(
        "chat",
        |m: &mut ModelHandle, tok: TokenizerHandle, messages: Array| {
            chat_reply(m, &tok, &messages, Map::new())
        },
    );
}
