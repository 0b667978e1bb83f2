//! Task accuracy from scripts: `accuracy(model, tok, tasks, #{ n, max_tokens, batch })` generates
//! a greedy answer to each of the first `n` prompts of a task corpus and checks it with the
//! task's own checker (exact match).

use std::sync::Arc;

use llmlab_plugin_api::{ExampleSource, GenerateOptions, Tokenizer};
use rhai::{Engine, Map, FLOAT};

use super::data::CorpusHandle;
use super::model::ModelHandle;
use super::tokenizer::TokenizerHandle;
use super::{plugin_call, positive_int_option, script_error, ScriptResult};

/// Fraction of the first `n` examples answered exactly right with greedy decoding.
pub fn accuracy(
    model: &ModelHandle,
    tokenizer: &dyn Tokenizer,
    examples: &dyn ExampleSource,
    n: usize,
    max_tokens: usize,
    batch: usize,
) -> ScriptResult<f64> {
    let n = n.min(examples.len());
    if n == 0 {
        return Err(script_error("accuracy: the task corpus is empty"));
    }
    let eot = tokenizer.end_of_text().map_err(script_error)?;
    let options = GenerateOptions {
        max_tokens,
        temperature: 0.0,
        stop_tokens: vec![eot],
        ..GenerateOptions::default()
    };
    let mut correct = 0;
    for start in (0..n).step_by(batch) {
        let chunk: Vec<_> = (start..(start + batch).min(n))
            .map(|i| examples.get(i))
            .collect();
        let prompts = chunk
            .iter()
            .map(|e| plugin_call(tokenizer.name(), || tokenizer.encode(&e.prompt)))
            .collect::<ScriptResult<Vec<_>>>()?;
        let outputs = plugin_call(model.0.name(), || {
            model.0.generate(&prompts, &options, &mut |_, _| true)
        })?;
        for (example, ids) in chunk.iter().zip(outputs) {
            let answer = plugin_call(tokenizer.name(), || tokenizer.decode(&ids))?;
            if examples.check(&example.prompt, &answer) == Some(true) {
                correct += 1;
            }
        }
    }
    Ok(correct as f64 / n as f64)
}

pub fn register(engine: &mut Engine) {
    engine.register_fn(
        "accuracy",
        |model: ModelHandle,
         tok: TokenizerHandle,
         tasks: CorpusHandle,
         options: Map|
         -> ScriptResult<FLOAT> {
            let examples: Arc<dyn ExampleSource> = tasks.examples.clone().ok_or_else(|| {
                script_error(format!(
                    "{} has no prompt/answer examples",
                    tasks.source.name()
                ))
            })?;
            let n = positive_int_option("accuracy", &options, "n", 200)?;
            let max_tokens = positive_int_option("accuracy", &options, "max_tokens", 16)?;
            let batch = positive_int_option("accuracy", &options, "batch", 32)?;
            if let Some(key) = options
                .keys()
                .find(|k| !["n", "max_tokens", "batch"].contains(&k.as_str()))
            {
                return Err(script_error(format!(
                    "unknown accuracy option `{key}`; accepted: n, max_tokens, batch"
                )));
            }
            let tokenizer = tok.read();
            accuracy(
                &model,
                tokenizer.as_ref(),
                examples.as_ref(),
                n,
                max_tokens,
                batch,
            )
        },
    );
}
