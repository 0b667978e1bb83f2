//! The [`Trainer`] component: optimises a model's parameters on token data or examples, step by
//! step or to completion, with checkpoints it can resume from.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::{Context, ExampleSource, Model, Result, TokenData, Tokenizer};

/// Named values of one step (`loss`, `lr`, `grad_norm`, `tokens_per_s`, ...).
pub type StepMetrics = BTreeMap<String, f64>;

/// What a trainer learns from.
#[derive(Clone, Copy)]
pub enum TrainData<'a> {
    /// A token stream: pretraining.
    Tokens(&'a dyn TokenData),
    /// Prompt/answer pairs, tokenized by the trainer: SFT.
    Examples {
        examples: &'a dyn ExampleSource,
        tokenizer: &'a dyn Tokenizer,
    },
}

pub trait Trainer: Send {
    fn name(&self) -> &str;
    fn config(&self) -> Value;
    /// One optimiser step (with its accumulation micro-steps); returns that step's metrics.
    fn step(
        &mut self,
        model: &dyn Model,
        data: TrainData<'_>,
        ctx: &Context,
    ) -> Result<StepMetrics>;
    /// Runs to the configured number of steps, reporting to `ctx`'s sinks and checkpointing;
    /// returns the final metrics. Stops cleanly with `Error::Cancelled` on Ctrl-C.
    fn fit(&mut self, model: &dyn Model, data: TrainData<'_>, ctx: &Context)
        -> Result<StepMetrics>;
    /// Steps taken so far.
    fn steps_done(&self) -> u64;
    /// The teacher of a distillation trainer (issue 22), handed over by the host from the
    /// trainer's `teacher` key before `fit`/`step`. Other trainers refuse one.
    fn set_teacher(&mut self, teacher: std::sync::Arc<dyn Model>) -> Result<()> {
        let _ = teacher;
        Err(crate::Error::unsupported(
            self.name(),
            "a `teacher` (only the `distill` trainer takes one)",
        ))
    }
}
