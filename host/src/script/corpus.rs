//! The methods of corpora at the script edge: `entropy_floor()`, `check(prompt, answer)`,
//! `examples(n)`, `len()`. The corpora themselves are `corpus` components (the corpora plugin's
//! `stories` and tasks, or a third party's), opened by `corpus(name, #{..})` in `data.rs`.
//! Preference data: `task_corpus.preferences(#{ n, seed })` (the component's pairs, each example
//! with a plausible wrong answer as `rejected`) and `preferences(path)` (a JSONL file with
//! `prompt`, `chosen`, `rejected`). Rewards: `task_corpus.reward(#{ correct, well_formed })`, the
//! task's checker as a reward function for `grpo`/`ppo` ([`TaskReward`]).

use std::sync::Arc;

use llmlab_plugin_api::config::TypedConfig;
use llmlab_plugin_api::serde::{Deserialize, Serialize};
use llmlab_plugin_api::{Corpus, Error, Example, ExampleSource, RewardFn};
use rhai::{Array, Dynamic, Engine, Map, FLOAT, INT};

use super::data::{CorpusHandle, DatasetHandle};
use super::{dynamic_to_json, plugin_call, script_error, ScriptResult};
use crate::data::preferences::PreferenceFile;

/// `corpus(..).reward(#{ correct, well_formed })`: a task's checker as a reward function:
/// `correct` (1.0) for the right answer, `well_formed` (0.1) for a wrong answer of the right form
/// (the corpus decides: digits for arithmetic, numbers for sort, letters for copy/reverse),
/// 0 otherwise.
#[derive(Clone)]
pub struct TaskReward {
    examples: Arc<dyn ExampleSource>,
    corpus: Option<Arc<dyn Corpus>>,
    options: RewardOptions,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(crate = "llmlab_plugin_api::serde", default, deny_unknown_fields)]
struct RewardOptions {
    correct: f64,
    well_formed: f64,
}

impl Default for RewardOptions {
    fn default() -> Self {
        RewardOptions {
            correct: 1.0,
            well_formed: 0.1,
        }
    }
}

impl TypedConfig for RewardOptions {
    const DOCS: &'static [(&'static str, &'static str)] = &[
        ("correct", "reward of a correct answer"),
        (
            "well_formed",
            "reward of a wrong answer of the right form (e.g. a number for arithmetic)",
        ),
    ];
}

impl RewardFn for TaskReward {
    fn score(&self, prompt: &str, completion: &str) -> llmlab_plugin_api::Result<f64> {
        let o = &self.options;
        match self.examples.check(prompt, completion) {
            Some(true) => Ok(o.correct),
            Some(false) => {
                let well_formed = self
                    .corpus
                    .as_ref()
                    .and_then(|c| c.well_formed(prompt, completion));
                Ok(if well_formed == Some(true) {
                    o.well_formed
                } else {
                    0.0
                })
            }
            None => Err(Error::Data(format!(
                "{}.reward(): cannot check the prompt {prompt:?} (not one of its task's prompts)",
                self.examples.name()
            ))),
        }
    }
}

fn task_reward(c: &CorpusHandle, options: Map) -> ScriptResult<TaskReward> {
    let examples = examples_of(c)?.clone();
    let json = dynamic_to_json(Dynamic::from(options))?;
    let options = RewardOptions::from_json("reward", &json).map_err(script_error)?;
    Ok(TaskReward {
        examples,
        corpus: c.corpus.clone(),
        options,
    })
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(crate = "llmlab_plugin_api::serde", default, deny_unknown_fields)]
struct PreferenceOptions {
    /// `None`: one pair per example of the corpus.
    n: Option<usize>,
    seed: u64,
}

impl TypedConfig for PreferenceOptions {
    const DOCS: &'static [(&'static str, &'static str)] = &[
        (
            "n",
            "number of pairs (the corpus's examples, cycled); null = one per example",
        ),
        ("seed", "seed of the rejected answers"),
    ];
}

/// `corpus.preferences(#{ n, seed })`: the corpus's examples with rejected answers.
fn task_preferences(c: &CorpusHandle, options: Map) -> ScriptResult<CorpusHandle> {
    let json = dynamic_to_json(Dynamic::from(options))?;
    let o = PreferenceOptions::from_json("preferences", &json).map_err(script_error)?;
    let corpus = c.corpus.as_ref().ok_or_else(|| {
        script_error(format!(
            "{} cannot make preference pairs (only task corpora can; for other data write a \
             JSONL file and use preferences(path))",
            c.source.name()
        ))
    })?;
    let pairs = plugin_call(&corpus.name(), || corpus.preferences(o.n, o.seed))?;
    Ok(CorpusHandle::of_component(Arc::from(pairs)))
}

/// `preferences(path)`: pairs from a JSONL file, checked line by line.
fn file_preferences(path: &str) -> ScriptResult<CorpusHandle> {
    let prefs = Arc::new(PreferenceFile::open(path).map_err(script_error)?);
    let mut handle = CorpusHandle::documents(prefs.clone());
    handle.examples = Some(prefs);
    Ok(handle)
}

/// At least what one example costs as a script map (`#{ prompt, answer }`).
const EXAMPLE_MAP_BYTES: f64 = 256.0;

/// Refuses copying out about `bytes` that cannot fit in memory, naming the call and the key:
/// these used to abort the process or grow until the machine gave out.
fn check_fits(call: &str, key: &str, bytes: f64) -> ScriptResult<()> {
    llmlab_plugin_api::memory::check_fits(&format!("{call}: {key}"), bytes, "ask for less")
        .map_err(script_error)
}

fn task_reward_with_options(c: &mut CorpusHandle, options: Map) -> ScriptResult<TaskReward> {
    task_reward(c, options)
}

fn examples_of(c: &CorpusHandle) -> ScriptResult<&Arc<dyn ExampleSource>> {
    c.examples
        .as_ref()
        .ok_or_else(|| script_error(format!("{} has no prompt/answer examples", c.source.name())))
}

fn example_map(e: &Example) -> Map {
    let mut m = Map::new();
    m.insert("prompt".into(), e.prompt.clone().into());
    m.insert("answer".into(), e.answer.clone().into());
    if let Some(r) = &e.rejected {
        m.insert("rejected".into(), r.clone().into());
    }
    m
}

pub fn register(engine: &mut Engine) {
    engine.register_fn(
        "entropy_floor",
        |d: &mut DatasetHandle| -> ScriptResult<FLOAT> {
            d.data().entropy_floor_nats_per_token().ok_or_else(|| {
                script_error("this dataset's corpus has no known distribution (no entropy floor)")
            })
        },
    );
    // The floor in nats per byte of text; token datasets report it per token.
    engine.register_fn(
        "entropy_floor",
        |c: &mut CorpusHandle| -> ScriptResult<FLOAT> {
            let (mut nats, mut bytes, mut known) = (0.0, 0usize, true);
            for (i, doc) in c.source.documents().enumerate() {
                let doc = doc.map_err(script_error)?;
                match c.source.document_nats(i) {
                    Some(n) => nats += n,
                    None => known = false,
                }
                bytes += doc.len();
            }
            if !known {
                return Err(script_error(format!(
                    "{} has no known distribution",
                    c.source.name()
                )));
            }
            Ok(nats / bytes.max(1) as f64)
        },
    );
    engine.register_fn(
        "check",
        |c: &mut CorpusHandle, prompt: &str, answer: &str| -> ScriptResult<bool> {
            let examples = examples_of(c)?;
            examples.check(prompt, answer).ok_or_else(|| {
                script_error(format!(
                    "{}: cannot check the prompt {prompt:?}",
                    examples.name()
                ))
            })
        },
    );
    engine.register_fn(
        "examples",
        |c: &mut CorpusHandle, n: INT| -> ScriptResult<Array> {
            let examples = examples_of(c)?;
            let n = (n.max(0) as usize).min(examples.len());
            check_fits(
                &format!("{}.examples({n})", examples.name()),
                &format!("{n} examples as script maps"),
                n as f64 * EXAMPLE_MAP_BYTES,
            )?;
            Ok((0..n)
                .map(|i| Dynamic::from(example_map(&examples.get(i))))
                .collect())
        },
    );
    engine.register_fn("preferences", |c: &mut CorpusHandle| {
        task_preferences(c, Map::new())
    });
    engine.register_fn("preferences", |c: &mut CorpusHandle, options: Map| {
        task_preferences(c, options)
    });
    engine.register_fn("preferences", file_preferences);
    engine.register_type_with_name::<TaskReward>("Reward");
    engine.register_fn("reward", |c: &mut CorpusHandle| task_reward(c, Map::new()));
    engine.register_fn("reward", task_reward_with_options);
    engine.register_fn(
        "score",
        |r: &mut TaskReward, prompt: &str, completion: &str| -> ScriptResult<FLOAT> {
            r.score(prompt, completion).map_err(script_error)
        },
    );
    engine.register_fn("to_string", |r: &mut TaskReward| {
        format!(
            "reward of {} (correct {}, well-formed {})",
            r.examples.name(),
            r.options.correct,
            r.options.well_formed
        )
    });
    engine.register_fn("len", |c: &mut CorpusHandle| -> INT {
        c.examples
            .as_ref()
            .map_or_else(|| c.source.documents().count(), |e| e.len()) as INT
    });
}
