//! The built-in corpora at the script edge: `corpus("stories", #{ bytes, seed })` and
//! `corpus("arithmetic" | "sort" | "copy" | "reverse", #{ n, digits, seed })`, their options
//! (typed, unknown keys refused), and the methods only they have: `entropy_floor()`,
//! `check(prompt, answer)`, `examples(n)`. Preference data: `task_corpus.preferences(#{ n, seed })`
//! (each example with a plausible wrong answer as `rejected`) and `preferences(path)` (a JSONL file
//! with `prompt`, `chosen`, `rejected`). Rewards: `task_corpus.reward(#{ correct, well_formed })`,
//! the task's checker as a reward function for `grpo`/`ppo` ([`TaskReward`]).

use std::sync::Arc;

use llmlab_plugin_api::config::TypedConfig;
use llmlab_plugin_api::serde::{Deserialize, Serialize};
use llmlab_plugin_api::{Error, Example, ExampleSource, RewardFn};
use rhai::{Array, Dynamic, Engine, Map, FLOAT, INT};

use super::data::{CorpusHandle, DatasetHandle};
use super::{dynamic_to_json, script_error, ScriptResult};
use crate::data::preferences::PreferenceFile;
use crate::data::stories::Stories;
use crate::data::tasks::{TaskKind, TaskPreferences, Tasks};

/// `corpus(..).reward(#{ correct, well_formed })`: a task's checker as a reward function:
/// `correct` (1.0) for the right answer, `well_formed` (0.1) for a wrong answer of the right form
/// (digits for arithmetic, numbers for sort, letters for copy/reverse), 0 otherwise.
#[derive(Clone)]
pub struct TaskReward {
    examples: Arc<dyn ExampleSource>,
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

/// Whether `answer` has the form of an answer to a `kind` task.
fn well_formed(kind: TaskKind, answer: &str) -> bool {
    let a = answer.trim();
    !a.is_empty()
        && match kind {
            TaskKind::Arithmetic => a.bytes().all(|b| b.is_ascii_digit()),
            TaskKind::Sort => a.split(' ').all(|n| n.parse::<u64>().is_ok()),
            TaskKind::Copy | TaskKind::Reverse => a.bytes().all(|b| b.is_ascii_lowercase()),
        }
}

impl RewardFn for TaskReward {
    fn score(&self, prompt: &str, completion: &str) -> llmlab_plugin_api::Result<f64> {
        let o = &self.options;
        match self.examples.check(prompt, completion) {
            Some(true) => Ok(o.correct),
            Some(false) => Ok(match TaskKind::of_prompt(prompt) {
                Some(kind) if well_formed(kind, completion) => o.well_formed,
                _ => 0.0,
            }),
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
    Ok(TaskReward { examples, options })
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(crate = "llmlab_plugin_api::serde", default, deny_unknown_fields)]
struct StoriesOptions {
    bytes: usize,
    seed: u64,
}

impl Default for StoriesOptions {
    fn default() -> Self {
        StoriesOptions {
            bytes: 2_000_000,
            seed: 0,
        }
    }
}

impl TypedConfig for StoriesOptions {
    const DOCS: &'static [(&'static str, &'static str)] = &[
        ("bytes", "generate stories until this many bytes of text"),
        ("seed", "same seed, same stories"),
    ];
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(crate = "llmlab_plugin_api::serde", default, deny_unknown_fields)]
struct TaskOptions {
    n: usize,
    digits: usize,
    seed: u64,
}

impl Default for TaskOptions {
    fn default() -> Self {
        TaskOptions {
            n: 10_000,
            digits: 2,
            seed: 0,
        }
    }
}

impl TypedConfig for TaskOptions {
    const DOCS: &'static [(&'static str, &'static str)] = &[
        ("n", "number of examples"),
        (
            "digits",
            "digits per addend (arithmetic) or sequence length (sort, copy, reverse)",
        ),
        ("seed", "same seed, same examples"),
    ];
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
    let examples = examples_of(c)?;
    let json = dynamic_to_json(Dynamic::from(options))?;
    let o = PreferenceOptions::from_json("preferences", &json).map_err(script_error)?;
    let prefs = Arc::new(
        TaskPreferences::from_examples(examples.as_ref(), o.n.unwrap_or(examples.len()), o.seed)
            .map_err(script_error)?,
    );
    let mut handle = CorpusHandle::documents(prefs.clone());
    handle.examples = Some(prefs);
    Ok(handle)
}

/// `preferences(path)`: pairs from a JSONL file, checked line by line.
fn file_preferences(path: &str) -> ScriptResult<CorpusHandle> {
    let prefs = Arc::new(PreferenceFile::open(path).map_err(script_error)?);
    let mut handle = CorpusHandle::documents(prefs.clone());
    handle.examples = Some(prefs);
    Ok(handle)
}

/// The built-in corpus `name`, or `None` when `name` is not one (then it is a file path).
pub fn builtin(name: &str, options: &Map) -> Option<ScriptResult<CorpusHandle>> {
    let json = match dynamic_to_json(Dynamic::from(options.clone())) {
        Ok(json) => json,
        Err(e) => return Some(Err(e)),
    };
    let what = format!("corpus(\"{name}\")");
    if name == "stories" {
        return Some((|| {
            let o = StoriesOptions::from_json(&what, &json).map_err(script_error)?;
            if o.bytes == 0 {
                return Err(script_error(format!("{what}: bytes must be at least 1")));
            }
            // Stories are generated up front and held in memory (text plus per-story bookkeeping).
            check_fits(
                &what,
                &format!("`bytes` = {}", o.bytes),
                o.bytes as f64 * STORY_OVERHEAD,
            )?;
            Ok(CorpusHandle::documents(Arc::new(Stories::generate(
                o.bytes, o.seed,
            ))))
        })());
    }
    let kind = TaskKind::from_name(name)?;
    Some((|| {
        let o = TaskOptions::from_json(&what, &json).map_err(script_error)?;
        check_fits(
            &what,
            &format!("`n` = {}", o.n),
            o.n as f64 * TASK_EXAMPLE_BYTES,
        )?;
        let tasks = Arc::new(Tasks::generate(kind, o.n, o.digits, o.seed).map_err(script_error)?);
        let mut handle = CorpusHandle::documents(tasks.clone());
        handle.examples = Some(tasks);
        Ok(handle)
    })())
}

/// Memory per byte of generated stories: the text and each story's `String` and probability.
const STORY_OVERHEAD: f64 = 1.1;
/// At least what one generated task example holds: prompt and answer `String`s and their text.
const TASK_EXAMPLE_BYTES: f64 = 96.0;
/// At least what one example costs as a script map (`#{ prompt, answer }`).
const EXAMPLE_MAP_BYTES: f64 = 256.0;

/// Refuses generating or copying out about `bytes` that cannot fit in memory, naming the call and
/// the key (`corpus("arithmetic")`, `` `n` = 1000000000000 ``): these used to abort the process
/// or grow until the machine gave out.
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
