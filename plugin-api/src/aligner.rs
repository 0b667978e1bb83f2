//! The [`Aligner`] component: preference and RL training (reward models, DPO, PPO, GRPO) of a
//! policy model, with rewards from functions the host provides (Rhai closures) or reward models.

use serde_json::Value;

use crate::{Context, ExampleSource, Model, Result, StepMetrics, Tokenizer};

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
    pub reward_model: Option<&'a dyn Model>,
}

pub trait Aligner: Send {
    fn name(&self) -> &str;
    fn config(&self) -> Value;
    fn step(&mut self, job: &AlignJob<'_>, ctx: &Context) -> Result<StepMetrics>;
    fn fit(&mut self, job: &AlignJob<'_>, ctx: &Context) -> Result<StepMetrics>;
}
