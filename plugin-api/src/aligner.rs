//! The [`Aligner`] component: preference and RL training (reward models, DPO, PPO, GRPO) of a
//! policy model, with rewards from functions the host provides (Rhai closures) or reward models.

use std::path::Path;

use serde_json::Value;

use crate::{Context, Error, ExampleSource, Model, Result, StepMetrics, Tokenizer};

/// Scores a completion. The host wraps Rhai closures in this; errors name the sample.
pub trait RewardFn {
    fn score(&self, prompt: &str, completion: &str) -> Result<f64>;
}

/// Everything one alignment run works on.
pub struct AlignJob<'a> {
    pub policy: &'a dyn Model,
    pub tokenizer: &'a dyn Tokenizer,
    pub examples: &'a dyn ExampleSource,
    pub reward: Option<&'a dyn RewardFn>,
}

pub trait Aligner: Send {
    fn name(&self) -> &str;
    fn config(&self) -> Value;
    fn step(&mut self, job: &AlignJob<'_>, ctx: &Context) -> Result<StepMetrics>;
    fn fit(&mut self, job: &AlignJob<'_>, ctx: &Context) -> Result<StepMetrics>;

    /// Metrics on the held-out examples of `job` without training (preference accuracy before
    /// and after a run).
    fn evaluate(&mut self, job: &AlignJob<'_>, ctx: &Context) -> Result<StepMetrics> {
        let _ = (job, ctx);
        Err(Error::unsupported(self.name(), "evaluate"))
    }

    /// The learned reward of `answer` to `prompt` (reward models, once trained or loaded).
    fn score(&self, prompt: &str, answer: &str) -> Result<f64> {
        let _ = (prompt, answer);
        Err(Error::unsupported(self.name(), "score"))
    }

    /// Writes what the aligner learned into `dir` (a reward model: its head, config and body).
    fn save(&self, dir: &Path) -> Result<()> {
        let _ = dir;
        Err(Error::unsupported(self.name(), "save"))
    }

    /// Restores what [`Aligner::save`] wrote into `dir`; `model` is the saved body, which the
    /// host loads (a plugin cannot build another plugin's model), and `tokenizer` scores text.
    fn load(&mut self, dir: &Path, model: Box<dyn Model>, tokenizer: &dyn Tokenizer) -> Result<()> {
        let _ = (dir, model, tokenizer);
        Err(Error::unsupported(self.name(), "load"))
    }
}
