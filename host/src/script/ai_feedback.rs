//! The primitives AI-feedback scripts (Constitutional AI / RLAIF, `scripts/constitutional.rhai`)
//! build on: a language model as a judge (`m.log_prob(tok, prompt, continuation)`, the
//! log-probability of a continuation, e.g. " yes" vs " no" after "Does the response follow:
//! <principle>?"), and writing the AI-labelled pairs as a `preferences` JSONL file
//! (`save_preferences(path, pairs)`) that `preferences(path)` reads back for DPO.

use std::io::Write;

use llmlab_plugin_api::candle::{DType, Tensor, D};
use llmlab_plugin_api::candle_nn::ops::log_softmax;
use llmlab_plugin_api::serde_json::{Map as JsonMap, Value};
use llmlab_plugin_api::ForwardOptions;
use rhai::{Array, Engine, Map, FLOAT};

use super::model::ModelHandle;
use super::tokenizer::TokenizerHandle;
use super::{plugin_call, script_error, ScriptResult};

/// `log p(continuation | prompt)` in nats under `model`, summed over the continuation's tokens
/// (the prompt keeps its last tokens when the two exceed the model's context).
fn log_prob(
    model: &ModelHandle,
    tok: &TokenizerHandle,
    prompt: &str,
    continuation: &str,
) -> ScriptResult<FLOAT> {
    let tokenizer = tok.read();
    let mut ids = plugin_call(tokenizer.name(), || tokenizer.encode(prompt))?;
    let answer = plugin_call(tokenizer.name(), || tokenizer.encode(continuation))?;
    if answer.is_empty() {
        return Err(script_error("log_prob: the continuation has no tokens"));
    }
    if ids.is_empty() {
        ids.push(plugin_call(tokenizer.name(), || tokenizer.end_of_text())?);
    }
    let m = model.0.as_ref();
    let room = m.ctx_len().saturating_sub(answer.len());
    if room == 0 {
        return Err(script_error(format!(
            "log_prob: the continuation ({} tokens) does not fit the model's context ({})",
            answer.len(),
            m.ctx_len()
        )));
    }
    if ids.len() > room {
        ids.drain(..ids.len() - room);
    }
    let start = ids.len();
    ids.extend(&answer);
    plugin_call(m.name(), || {
        let input = Tensor::from_vec(
            ids[..ids.len() - 1].to_vec(),
            (1, ids.len() - 1),
            m.device(),
        )?;
        let out = m.forward(&input, &ForwardOptions::inference())?;
        let logp: Vec<Vec<f32>> = log_softmax(&out.logits.to_dtype(DType::F32)?, D::Minus1)?
            .squeeze(0)?
            .to_vec2()?;
        // Position j predicts ids[j + 1].
        Ok((start..ids.len())
            .map(|i| logp[i - 1][ids[i] as usize] as f64)
            .sum::<f64>())
    })
}

/// Writes `pairs` (maps with string `prompt`, `chosen`, `rejected` and any other string or
/// number fields, e.g. the `principle` that decided) as JSONL to `path`; returns `path`.
fn save_preferences(path: &str, pairs: Array) -> ScriptResult<String> {
    let mut text = String::new();
    for (i, pair) in pairs.iter().enumerate() {
        let map = pair.read_lock::<Map>().ok_or_else(|| {
            script_error(format!(
                "save_preferences: pairs[{i}] must be a map #{{ prompt, chosen, rejected }}, found {}",
                pair.type_name()
            ))
        })?;
        let mut record = JsonMap::new();
        for (key, value) in map.iter() {
            let json = if let Ok(s) = value.clone().into_string() {
                Value::String(s)
            } else if let Ok(x) = value.as_float() {
                Value::from(x)
            } else if let Ok(n) = value.as_int() {
                Value::from(n)
            } else if let Ok(b) = value.as_bool() {
                Value::from(b)
            } else {
                return Err(script_error(format!(
                    "save_preferences: pairs[{i}].{key} must be a string, number or bool, found {}",
                    value.type_name()
                )));
            };
            record.insert(key.to_string(), json);
        }
        for key in ["prompt", "chosen", "rejected"] {
            if !record.get(key).is_some_and(Value::is_string) {
                return Err(script_error(format!(
                    "save_preferences: pairs[{i}] needs a string `{key}`"
                )));
            }
        }
        text.push_str(&Value::Object(record).to_string());
        text.push('\n');
    }
    let write = || -> std::io::Result<()> {
        if let Some(dir) = std::path::Path::new(path).parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::File::create(path)?.write_all(text.as_bytes())
    };
    write().map_err(|e| script_error(format!("save_preferences: {path}: {e}")))?;
    Ok(path.to_string())
}

pub fn register(engine: &mut Engine) {
    engine.register_fn(
        "log_prob",
        |m: &mut ModelHandle, tok: TokenizerHandle, prompt: &str, continuation: &str| {
            log_prob(m, &tok, prompt, continuation)
        },
    );
    engine.register_fn("save_preferences", save_preferences);
}
