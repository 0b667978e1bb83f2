//! The model's script surface: `model("gpt", #{..})`, `m.forward(ids)` (logits as a Tensor),
//! `m.num_params()`, `m.params()`, `m.param(name)`, `m.param_shapes()`, `m.config()`,
//! `m.save(dir)`, `model_load(dir)`, `m.frozen_copy()`, `m.router_stats(ids)` (MoE), and generation:
//! `m.generate(tok, prompt_or_prompts, #{ max_tokens, temperature, ... })` → text(s) and
//! `m.generate_ids(ids_or_rows, #{..})` → new token ids.
//!
//! Text generation is where the tokenizer meets the model, so it lives host-side: prompts are
//! encoded here, the tokenizer's end-of-text joins `stop_tokens`, each new token is decoded
//! incrementally in the model's `on_token` callback to find `stop` strings (the text is cut
//! before them) and, for one prompt at a terminal, to print text as it comes. `stream: false`
//! or `true` in the options overrides the terminal check.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::Arc;

use llmlab_plugin_api::candle::Tensor;
use llmlab_plugin_api::config::TypedConfig;
use llmlab_plugin_api::serde_json::Value;
use llmlab_plugin_api::{
    Error, ForwardOptions, GenerateOptions, Instance, Kind, Model, SpecialToken, Tokenizer,
};
use rhai::{Array, Dynamic, Engine, Map, INT};

use super::tensor::TensorHandle;
use super::tokenizer::{ids_from_array, ids_to_array, TokenizerHandle};
use super::{dynamic_to_json, json_to_dynamic, plugin_call, script_error, Host, ScriptResult};

/// A model in scripts; clones share weights.
#[derive(Clone)]
pub struct ModelHandle(pub Arc<dyn Model>);

impl ModelHandle {
    pub fn new(model: Box<dyn Model>) -> Self {
        ModelHandle(Arc::from(model))
    }
}

/// `(1, seq)` or `(batch, seq)` u32 ids from a flat or nested script array.
fn ids_tensor(model: &dyn Model, ids: &Array) -> ScriptResult<Tensor> {
    let rows: Vec<Vec<u32>> = if ids.first().is_some_and(|d| d.is_array()) {
        ids.iter()
            .map(|row| ids_from_array(&row.clone().cast::<Array>()))
            .collect::<ScriptResult<_>>()?
    } else {
        vec![ids_from_array(ids)?]
    };
    let seq = rows.first().map_or(0, Vec::len);
    if seq == 0 || rows.iter().any(|r| r.len() != seq) {
        return Err(script_error(
            "forward(): ids must be a non-empty array, or rows of equal length",
        ));
    }
    let flat: Vec<u32> = rows.concat();
    Tensor::from_vec(flat, (rows.len(), seq), model.device()).map_err(script_error)
}

/// Generation options from a script map; `stream` (host-only) is taken out and returned.
fn generate_options(options: Map) -> ScriptResult<(GenerateOptions, Option<bool>)> {
    let mut json = dynamic_to_json(options.into())?;
    let stream = match json.as_object_mut().and_then(|o| o.remove("stream")) {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(b),
        Some(other) => {
            return Err(script_error(format!(
                "generate: `stream` must be true or false, got {other}"
            )))
        }
    };
    let options = GenerateOptions::from_json("generate", &json).map_err(|e| match e {
        // The accepted keys include the host's own.
        Error::UnknownConfigKey {
            component,
            key,
            mut accepted,
        } => {
            accepted.push("stream".into());
            script_error(Error::UnknownConfigKey {
                component,
                key,
                accepted,
            })
        }
        other => script_error(other),
    })?;
    Ok((options, stream))
}

/// One sequence's text as its tokens arrive: decoded incrementally, cut at stop strings,
/// optionally printed.
struct TextStream {
    ids: Vec<u32>,
    text: String,
    /// Bytes of `text` already printed.
    printed: usize,
    /// Where a stop string begins, once one has appeared.
    cut: Option<usize>,
}

impl TextStream {
    fn new() -> Self {
        TextStream {
            ids: Vec::new(),
            text: String::new(),
            printed: 0,
            cut: None,
        }
    }

    /// Adds `token`; false once a stop string has appeared.
    fn push(&mut self, tok: &dyn Tokenizer, token: u32, stop: &[String]) -> bool {
        self.ids.push(token);
        if let Ok(text) = tok.decode(&self.ids) {
            self.text = text;
        }
        self.cut = stop
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| self.text.find(s.as_str()))
            .min();
        self.cut.is_none()
    }

    /// The final text: everything before the first stop string.
    fn finished(&self) -> &str {
        &self.text[..self.cut.unwrap_or(self.text.len())]
    }

    /// How much of the text is certain: not a partial UTF-8 character (decoded as U+FFFD) and
    /// not a tail that might still become a stop string. `done`: everything before the cut.
    fn printable_end(&self, stop: &[String], done: bool) -> usize {
        if done {
            return self.finished().len();
        }
        if let Some(cut) = self.cut {
            return cut;
        }
        let end = self.text.trim_end_matches('\u{FFFD}').len();
        let held = stop
            .iter()
            .flat_map(|s| {
                (1..s.len())
                    .rev()
                    .filter(|&n| s.is_char_boundary(n))
                    .find(|&n| self.text[..end].ends_with(&s[..n]))
            })
            .max()
            .unwrap_or(0);
        end - held
    }

    /// Prints the text that became certain since the last call.
    fn print(&mut self, stop: &[String], done: bool) {
        let end = self.printable_end(stop, done);
        if end > self.printed && self.text.is_char_boundary(end) {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(&self.text.as_bytes()[self.printed..end]);
            let _ = out.flush();
            self.printed = end;
        }
    }
}

/// `m.generate(tok, prompts, options)`: one string per prompt.
pub(super) fn generate_text(
    model: &dyn Model,
    tokenizer: &TokenizerHandle,
    prompts: &[String],
    options: Map,
) -> ScriptResult<Vec<String>> {
    let (mut options, stream) = generate_options(options)?;
    let tok = tokenizer.read();
    let tok: &dyn Tokenizer = tok.as_ref();
    let end_of_text = tok.special_token(SpecialToken::EndOfText);
    if let Some(eot) = end_of_text {
        if !options.stop_tokens.contains(&eot) {
            options.stop_tokens.push(eot);
        }
    }
    let encoded = prompts
        .iter()
        .map(|p| {
            let ids = plugin_call(tok.name(), || tok.encode(p))?;
            // An empty prompt starts from end-of-text, as GPT-2 does.
            Ok(match (ids.is_empty(), end_of_text) {
                (true, Some(eot)) => vec![eot],
                _ => ids,
            })
        })
        .collect::<ScriptResult<Vec<_>>>()?;
    let stream = stream.unwrap_or_else(|| std::io::stdout().is_terminal())
        && prompts.len() == 1
        && options.num_beams == 1;
    let stop = options.stop.clone();
    let mut texts: Vec<TextStream> = prompts.iter().map(|_| TextStream::new()).collect();
    let mut on_token = |row: usize, token: u32| -> bool {
        let Some(text) = texts.get_mut(row) else {
            return false;
        };
        let go_on = text.push(tok, token, &stop);
        if stream {
            text.print(&stop, false);
        }
        go_on
    };
    plugin_call(model.name(), || {
        model.generate(&encoded, &options, &mut on_token)
    })?;
    if stream {
        texts[0].print(&stop, true);
        println!();
        // The REPL and the notebook do not show this text a second time as the call's value.
        crate::repl::note_streamed(texts[0].finished());
    }
    Ok(texts.iter().map(|t| t.finished().to_string()).collect())
}

pub fn register(engine: &mut Engine, host: &Arc<Host>) {
    engine.register_type_with_name::<ModelHandle>("Model");
    engine.register_fn("to_string", |m: &mut ModelHandle| {
        format!("model {} ({} parameters)", m.0.name(), m.0.num_params())
    });
    engine.register_fn("num_params", |m: &mut ModelHandle| m.0.num_params() as INT);
    engine.register_fn("config", |m: &mut ModelHandle| {
        json_to_dynamic(&m.0.config())
    });
    engine.register_fn("params", |m: &mut ModelHandle| -> Map {
        m.0.parameters()
            .into_iter()
            .map(|(name, var)| {
                (
                    name.into(),
                    Dynamic::from(TensorHandle(var.as_tensor().clone())),
                )
            })
            .collect()
    });
    engine.register_fn(
        "forward",
        |m: &mut ModelHandle, ids: Array| -> ScriptResult<TensorHandle> {
            let input = ids_tensor(m.0.as_ref(), &ids)?;
            plugin_call(m.0.name(), || {
                m.0.forward(&input, &ForwardOptions::inference())
            })
            .map(|out| TensorHandle(out.logits))
        },
    );
    engine.register_fn(
        "param",
        |m: &mut ModelHandle, name: &str| -> ScriptResult<TensorHandle> {
            let params = m.0.parameters();
            match params.iter().find(|(n, _)| n == name) {
                Some((_, var)) => Ok(TensorHandle(var.as_tensor().clone())),
                None => {
                    let close: Vec<&str> = params
                        .iter()
                        .map(|(n, _)| n.as_str())
                        .filter(|n| n.ends_with(name) || n.contains(name))
                        .take(8)
                        .collect();
                    Err(script_error(format!(
                        "{} has no parameter `{name}`{}; m.param_shapes() lists them",
                        m.0.name(),
                        if close.is_empty() {
                            String::new()
                        } else {
                            format!(" (did you mean {}?)", close.join(", "))
                        }
                    )))
                }
            }
        },
    );
    engine.register_fn("param_shapes", |m: &mut ModelHandle| -> Map {
        m.0.parameters()
            .into_iter()
            .map(|(name, var)| {
                let shape: Array = var
                    .dims()
                    .iter()
                    .map(|&d| Dynamic::from(d as INT))
                    .collect();
                (name.into(), Dynamic::from(shape))
            })
            .collect()
    });
    engine.register_fn(
        "generate",
        |m: &mut ModelHandle, tok: TokenizerHandle, prompt: &str, options: Map| {
            generate_text(m.0.as_ref(), &tok, &[prompt.to_string()], options)
                .map(|mut texts| texts.remove(0))
        },
    );
    engine.register_fn(
        "generate",
        |m: &mut ModelHandle, tok: TokenizerHandle, prompt: &str| {
            generate_text(m.0.as_ref(), &tok, &[prompt.to_string()], Map::new())
                .map(|mut texts| texts.remove(0))
        },
    );
    engine.register_fn(
        "generate",
        |m: &mut ModelHandle, tok: TokenizerHandle, prompts: Array, options: Map| {
            let prompts = prompts
                .into_iter()
                .map(|p| {
                    p.into_string().map_err(|t| {
                        script_error(format!("generate: prompts must be strings, found {t}"))
                    })
                })
                .collect::<ScriptResult<Vec<String>>>()?;
            generate_text(m.0.as_ref(), &tok, &prompts, options)
                .map(|texts| texts.into_iter().map(Dynamic::from).collect::<Array>())
        },
    );
    engine.register_fn(
        "generate_ids",
        |m: &mut ModelHandle, ids: Array, options: Map| -> ScriptResult<Array> {
            let (options, _) = generate_options(options)?;
            let nested = ids.first().is_some_and(|d| d.is_array());
            let prompts: Vec<Vec<u32>> = if nested {
                ids.iter()
                    .map(|row| match row.read_lock::<Array>() {
                        Some(row) => ids_from_array(&row),
                        None => Err(script_error(
                            "generate_ids: rows must all be arrays of token ids",
                        )),
                    })
                    .collect::<ScriptResult<_>>()?
            } else {
                vec![ids_from_array(&ids)?]
            };
            let out = plugin_call(m.0.name(), || {
                m.0.generate(&prompts, &options, &mut |_, _| true)
            })?;
            if nested {
                Ok(out.iter().map(|r| Dynamic::from(ids_to_array(r))).collect())
            } else {
                Ok(out.first().map(|r| ids_to_array(r)).unwrap_or_default())
            }
        },
    );
    // MoE models: per MoE block the expert loads, dropped fraction, router entropy and the aux
    // and z losses of one evaluation pass over `ids` (docs/moe.md).
    engine.register_fn(
        "router_stats",
        |m: &mut ModelHandle, ids: Array| -> ScriptResult<Dynamic> {
            let input = ids_tensor(m.0.as_ref(), &ids)?;
            plugin_call(m.0.name(), || m.0.router_stats(&input)).map(|v| json_to_dynamic(&v))
        },
    );
    engine.register_fn("save", |m: &mut ModelHandle, dir: &str| {
        plugin_call(m.0.name(), || m.0.save(Path::new(dir)))
    });
    engine.register_fn("frozen_copy", |m: &mut ModelHandle| {
        plugin_call(m.0.name(), || m.0.frozen_copy()).map(ModelHandle::new)
    });
    let h = host.clone();
    engine.register_fn(
        "model_load",
        move |dir: &str| -> ScriptResult<ModelHandle> {
            match h.load(Kind::Model, dir)? {
                Instance::Model(m) => Ok(ModelHandle::new(m)),
                other => Err(script_error(format!(
                    "{dir} loaded as a {}, not a model",
                    other.kind()
                ))),
            }
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmlab_plugin_api::{Context, Result, TextSource};

    /// One character per token id: id = the char's code.
    #[derive(Clone)]
    struct Chars;

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
            Ok(text.chars().map(|c| c as u32).collect())
        }
        fn decode(&self, ids: &[u32]) -> Result<String> {
            Ok(ids.iter().filter_map(|&i| char::from_u32(i)).collect())
        }
        fn vocab_size(&self) -> usize {
            128
        }
        fn token_to_id(&self, _: &str) -> Option<u32> {
            None
        }
        fn id_to_token(&self, _: u32) -> Option<String> {
            None
        }
        fn special_token(&self, _: SpecialToken) -> Option<u32> {
            None
        }
        fn to_json(&self) -> Result<String> {
            Ok(String::new())
        }
        fn clone_box(&self) -> Box<dyn Tokenizer> {
            Box::new(self.clone())
        }
    }

    #[test]
    fn stop_strings_cut_the_text_and_hold_back_possible_starts() {
        let stop = vec!["\n\n".to_string(), "END".to_string()];
        let mut s = TextStream::new();
        for c in "Hi E".chars() {
            assert!(s.push(&Chars, c as u32, &stop));
        }
        // "E" could begin "END": not printable yet.
        assert_eq!(s.printable_end(&stop, false), 3);
        assert!(s.push(&Chars, 'x' as u32, &stop));
        assert_eq!(s.printable_end(&stop, false), 5);
        for c in "yEN".chars() {
            assert!(s.push(&Chars, c as u32, &stop));
        }
        assert_eq!(s.printable_end(&stop, false), 6);
        assert!(
            !s.push(&Chars, 'D' as u32, &stop),
            "stop string seen: stop generating"
        );
        assert_eq!(s.finished(), "Hi Exy");
        assert_eq!(s.printable_end(&stop, true), 6);
    }

    #[test]
    fn generate_options_take_stream_and_refuse_unknown_keys() {
        let mut map = Map::new();
        map.insert("max_tokens".into(), Dynamic::from(5 as INT));
        map.insert("stream".into(), Dynamic::from(false));
        let (options, stream) = generate_options(map).unwrap();
        assert_eq!(options.max_tokens, 5);
        assert_eq!(stream, Some(false));
        let mut map = Map::new();
        map.insert("max_len".into(), Dynamic::from(5 as INT));
        let err = generate_options(map).err().unwrap().to_string();
        assert!(
            err.contains("max_len") && err.contains("max_tokens") && err.contains("stream"),
            "{err}"
        );
    }
}
