//! `corpus(examples)`: prompt/answer examples built in a script (an array of
//! `#{ prompt, answer }` maps) as a corpus, for SFT on data a script selected, such as the
//! samples a ReST loop kept (scripts/code_rl.rhai). It has no checker. `corpus_mix` (in
//! [`mixture`]) mixes task corpora with prefixes and rates for multitask training.

mod mixture;

use std::sync::Arc;

use llmlab_plugin_api::{Example, ExampleSource, Result, TextSource};
use rhai::{Array, Engine, Map};

use super::data::CorpusHandle;
use super::{script_error, ScriptResult};

struct ScriptExamples(Vec<Example>);

impl ExampleSource for ScriptExamples {
    fn name(&self) -> String {
        format!("examples(n={})", self.0.len())
    }
    fn len(&self) -> usize {
        self.0.len()
    }
    fn get(&self, index: usize) -> Example {
        self.0[index % self.0.len()].clone()
    }
}

impl TextSource for ScriptExamples {
    fn name(&self) -> String {
        ExampleSource::name(self)
    }
    fn documents(&self) -> Box<dyn Iterator<Item = Result<String>> + Send + '_> {
        Box::new(
            self.0
                .iter()
                .map(|e| Ok(format!("{}{}", e.prompt, e.answer))),
        )
    }
    fn approx_bytes(&self) -> Option<u64> {
        Some(
            self.0
                .iter()
                .map(|e| (e.prompt.len() + e.answer.len()) as u64)
                .sum(),
        )
    }
}

fn field(map: &Map, i: usize, key: &str) -> ScriptResult<String> {
    match map.get(key) {
        Some(v) if v.is_string() => Ok(v.to_string()),
        Some(v) => Err(script_error(format!(
            "corpus(examples): example {i}: `{key}` must be a string, not {}",
            v.type_name()
        ))),
        None => Err(script_error(format!(
            "corpus(examples): example {i} has no `{key}`"
        ))),
    }
}

fn examples_corpus(examples: Array) -> ScriptResult<CorpusHandle> {
    if examples.is_empty() {
        return Err(script_error("corpus(examples): the array is empty"));
    }
    let examples = examples
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            let map = e.try_cast::<Map>().ok_or_else(|| {
                script_error(format!(
                    "corpus(examples): example {i} is not a #{{ prompt, answer }} map"
                ))
            })?;
            if let Some(key) = map.keys().find(|k| !["prompt", "answer"].contains(&k.as_str())) {
                return Err(script_error(format!(
                    "corpus(examples): example {i} has unknown key `{key}`; accepted: prompt, answer"
                )));
            }
            Ok(Example {
                prompt: field(&map, i, "prompt")?,
                answer: field(&map, i, "answer")?,
                rejected: None,
            })
        })
        .collect::<ScriptResult<Vec<_>>>()?;
    let source = Arc::new(ScriptExamples(examples));
    let mut handle = CorpusHandle::documents(source.clone());
    handle.examples = Some(source);
    Ok(handle)
}

pub fn register(engine: &mut Engine) {
    engine.register_fn("corpus", examples_corpus);
    engine.register_fn("corpus_mix", mixture::corpus_mix);
}
