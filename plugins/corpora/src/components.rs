//! The corpus factories (`stories`, one per task) with their typed options, and the [`Corpus`]
//! objects they make. Sizes are checked against available memory before anything is generated:
//! a corpus is held in memory whole.

use std::sync::Arc;

use llmlab_plugin_api::config::TypedConfig;
use llmlab_plugin_api::serde::{Deserialize, Serialize};
use llmlab_plugin_api::serde_json::Value;
use llmlab_plugin_api::{
    ConfigKey, Context, Corpus, Error, ExampleSource, Factory, Instance, Kind, Result, TextSource,
};

use crate::chat::ChatConversations;
use crate::stories::Stories;
use crate::tasks::{TaskKind, TaskPreferences, Tasks};

/// Memory per byte of generated stories: the text and each story's `String` and probability.
const STORY_OVERHEAD: f64 = 1.1;
/// At least what one generated task example holds: prompt and answer `String`s and their text.
const TASK_EXAMPLE_BYTES: f64 = 96.0;

/// Refuses generating about `bytes` that cannot fit in memory, naming the call and the key
/// (`corpus("arithmetic")`, `` `n` = 1000000000000 ``).
fn check_fits(name: &str, key: &str, bytes: f64) -> Result<()> {
    llmlab_plugin_api::memory::check_fits(
        &format!("corpus(\"{name}\"): {key}"),
        bytes,
        "ask for less",
    )
    .map_err(Error::Data)
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(crate = "llmlab_plugin_api::serde", default, deny_unknown_fields)]
pub struct StoriesOptions {
    pub bytes: usize,
    pub seed: u64,
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
    fn validate(&self) -> std::result::Result<(), String> {
        if self.bytes == 0 {
            return Err("bytes must be at least 1".into());
        }
        Ok(())
    }
}

/// `corpus("stories", #{ bytes, seed })`.
pub struct StoriesFactory;

impl Factory for StoriesFactory {
    fn name(&self) -> &'static str {
        "stories"
    }
    fn kind(&self) -> Kind {
        Kind::Corpus
    }
    fn about(&self) -> &'static str {
        "short stories from a seeded grammar with known probabilities (entropy_floor())"
    }
    fn config_keys(&self) -> Vec<ConfigKey> {
        StoriesOptions::keys()
    }
    fn create(&self, config: &Value, _: &Context) -> Result<Instance> {
        let o = StoriesOptions::from_json(self.name(), config)?;
        // Stories are generated up front and held in memory (text plus per-story bookkeeping).
        check_fits(
            self.name(),
            &format!("`bytes` = {}", o.bytes),
            o.bytes as f64 * STORY_OVERHEAD,
        )?;
        Ok(Instance::Corpus(Box::new(StoriesCorpus(Arc::new(
            Stories::generate(o.bytes, o.seed),
        )))))
    }
}

pub struct StoriesCorpus(pub Arc<Stories>);

impl Corpus for StoriesCorpus {
    fn name(&self) -> String {
        self.0.name()
    }
    fn documents(&self) -> Arc<dyn TextSource> {
        self.0.clone()
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(crate = "llmlab_plugin_api::serde", default, deny_unknown_fields)]
pub struct TaskOptions {
    pub n: usize,
    pub digits: usize,
    pub seed: u64,
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

/// `corpus("arithmetic" | "sort" | "copy" | "reverse", #{ n, digits, seed })`.
pub struct TaskFactory(pub TaskKind);

impl Factory for TaskFactory {
    fn name(&self) -> &'static str {
        TaskKind::NAMES[self.0 as usize]
    }
    fn kind(&self) -> Kind {
        Kind::Corpus
    }
    fn about(&self) -> &'static str {
        match self.0 {
            TaskKind::Arithmetic => {
                "verifiable task: `12+345=` → `357` (check, reward, preferences)"
            }
            TaskKind::Sort => {
                "verifiable task: `sort 3 1 2 =` → `1 2 3` (check, reward, preferences)"
            }
            TaskKind::Copy => "verifiable task: `copy abc =` → `abc` (check, reward, preferences)",
            TaskKind::Reverse => {
                "verifiable task: `reverse abc =` → `cba` (check, reward, preferences)"
            }
        }
    }
    fn config_keys(&self) -> Vec<ConfigKey> {
        TaskOptions::keys()
    }
    fn create(&self, config: &Value, _: &Context) -> Result<Instance> {
        let o = TaskOptions::from_json(self.name(), config)?;
        check_fits(
            self.name(),
            &format!("`n` = {}", o.n),
            o.n as f64 * TASK_EXAMPLE_BYTES,
        )?;
        let tasks = Tasks::generate(self.0, o.n, o.digits, o.seed)?;
        Ok(Instance::Corpus(Box::new(TaskCorpus(Arc::new(tasks)))))
    }
}

/// A generated task set: documents, examples with their checker, rewards' well-formedness.
pub struct TaskCorpus(pub Arc<Tasks>);

impl Corpus for TaskCorpus {
    fn name(&self) -> String {
        ExampleSource::name(&*self.0)
    }
    fn documents(&self) -> Arc<dyn TextSource> {
        self.0.clone()
    }
    fn examples(&self) -> Option<Arc<dyn ExampleSource>> {
        Some(self.0.clone())
    }
    fn well_formed(&self, _prompt: &str, answer: &str) -> Option<bool> {
        Some(self.0.kind.well_formed(answer))
    }
    fn preferences(&self, n: Option<usize>, seed: u64) -> Result<Box<dyn Corpus>> {
        let n = n.unwrap_or(self.0.len());
        Ok(Box::new(PreferenceCorpus(Arc::new(
            self.0.preferences(n, seed)?,
        ))))
    }
}

/// Preference pairs made from a task set: still checkable, still rewardable.
pub struct PreferenceCorpus(pub Arc<TaskPreferences>);

impl Corpus for PreferenceCorpus {
    fn name(&self) -> String {
        ExampleSource::name(&*self.0)
    }
    fn documents(&self) -> Arc<dyn TextSource> {
        self.0.clone()
    }
    fn examples(&self) -> Option<Arc<dyn ExampleSource>> {
        Some(self.0.clone())
    }
    fn well_formed(&self, prompt: &str, answer: &str) -> Option<bool> {
        TaskKind::of_prompt(prompt).map(|kind| kind.well_formed(answer))
    }
    fn preferences(&self, n: Option<usize>, seed: u64) -> Result<Box<dyn Corpus>> {
        let n = n.unwrap_or(self.0.len());
        let pairs = TaskPreferences::from_examples(&*self.0, n, seed)?;
        Ok(Box::new(PreferenceCorpus(Arc::new(pairs))))
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(crate = "llmlab_plugin_api::serde", default, deny_unknown_fields)]
pub struct ChatOptions {
    pub n: usize,
    pub turns: usize,
    pub digits: usize,
    pub seed: u64,
}

impl Default for ChatOptions {
    fn default() -> Self {
        ChatOptions {
            n: 5_000,
            turns: 3,
            digits: 2,
            seed: 0,
        }
    }
}

impl TypedConfig for ChatOptions {
    const DOCS: &'static [(&'static str, &'static str)] = &[
        ("n", "number of conversations"),
        (
            "turns",
            "at most this many user/assistant exchanges per conversation",
        ),
        (
            "digits",
            "operand size of the tasks asked (as for the task corpora)",
        ),
        ("seed", "same seed, same conversations"),
    ];
}

/// `corpus("chat", #{ n, turns, digits, seed })`: multi-turn task conversations as `messages`.
pub struct ChatFactory;

impl Factory for ChatFactory {
    fn name(&self) -> &'static str {
        "chat"
    }
    fn kind(&self) -> Kind {
        Kind::Corpus
    }
    fn about(&self) -> &'static str {
        "multi-turn conversations of task questions and exact answers, as `messages` JSON (chat_data(corpus(\"chat\")))"
    }
    fn config_keys(&self) -> Vec<ConfigKey> {
        ChatOptions::keys()
    }
    fn create(&self, config: &Value, _: &Context) -> Result<Instance> {
        let o = ChatOptions::from_json(self.name(), config)?;
        check_fits(
            self.name(),
            &format!("`n` = {}, `turns` = {}", o.n, o.turns),
            (o.n * o.turns) as f64 * TASK_EXAMPLE_BYTES * 6.0,
        )?;
        let chat = ChatConversations::generate(o.n, o.turns, o.digits, o.seed)?;
        Ok(Instance::Corpus(Box::new(ChatCorpus(Arc::new(chat)))))
    }
}

/// The chat conversations: documents only (rendered by a chat template on the host).
pub struct ChatCorpus(pub Arc<ChatConversations>);

impl Corpus for ChatCorpus {
    fn name(&self) -> String {
        self.0.name()
    }
    fn documents(&self) -> Arc<dyn TextSource> {
        self.0.clone()
    }
}
