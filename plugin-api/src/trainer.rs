//! The [`Trainer`] component: optimises a model's parameters on what a [`TrainJob`] holds (token
//! data or examples), step by step or to completion, with checkpoints it can resume from.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::{Context, ExampleSource, LabelledSource, Model, Result, TokenData, Tokenizer};

/// Named values of one step (`loss`, `lr`, `grad_norm`, `tokens_per_s`, ...).
pub type StepMetrics = BTreeMap<String, f64>;

/// Everything one training run works on, as [`crate::AlignJob`] is for aligners: a token
/// stream (pretraining), or prompt/answer examples with the tokenizer that encodes them (SFT).
/// A trainer reads the parts it needs and refuses, naming them, when they are missing.
///
/// New inputs (a teacher model for distillation, a second dataset) are added as new optional
/// parts: the struct is `#[non_exhaustive]`, so plugins build it with the constructors and
/// `with_*` methods below and keep compiling when a part is added.
#[derive(Clone, Copy, Default)]
#[non_exhaustive]
pub struct TrainJob<'a> {
    /// A token stream: pretraining.
    pub tokens: Option<&'a dyn TokenData>,
    /// Prompt/answer pairs, tokenized by the trainer with `tokenizer`: SFT.
    pub examples: Option<&'a dyn ExampleSource>,
    /// Encodes `examples` (and decodes, for trainers that look at text).
    pub tokenizer: Option<&'a dyn Tokenizer>,
    /// Labelled sentences or pairs, tokenized by the trainer with `tokenizer`: classification
    /// and regression fine-tuning (`trainer("classify")`).
    pub labelled: Option<&'a dyn LabelledSource>,
}

impl<'a> TrainJob<'a> {
    /// A job on a token stream (`trainer("lm")`).
    pub fn tokens(tokens: &'a dyn TokenData) -> TrainJob<'a> {
        TrainJob {
            tokens: Some(tokens),
            ..TrainJob::default()
        }
    }

    /// A job on prompt/answer examples, encoded with `tokenizer` (`trainer("sft")`).
    pub fn examples(examples: &'a dyn ExampleSource, tokenizer: &'a dyn Tokenizer) -> TrainJob<'a> {
        TrainJob {
            examples: Some(examples),
            tokenizer: Some(tokenizer),
            ..TrainJob::default()
        }
    }

    /// A job on labelled texts, encoded with `tokenizer` (`trainer("classify")`).
    pub fn labelled(
        labelled: &'a dyn LabelledSource,
        tokenizer: &'a dyn Tokenizer,
    ) -> TrainJob<'a> {
        TrainJob {
            labelled: Some(labelled),
            tokenizer: Some(tokenizer),
            ..TrainJob::default()
        }
    }

    /// The same job with `tokenizer` too (e.g. a token job whose trainer decodes samples).
    pub fn with_tokenizer(self, tokenizer: &'a dyn Tokenizer) -> TrainJob<'a> {
        TrainJob {
            tokenizer: Some(tokenizer),
            ..self
        }
    }

    /// What the job holds, for messages: `"tokens"`, `"examples"`, `"labelled texts"`, or
    /// `"nothing"`.
    pub fn describe(&self) -> &'static str {
        if self.labelled.is_some() {
            return "labelled texts";
        }
        match (self.tokens.is_some(), self.examples.is_some()) {
            (true, true) => "tokens and examples",
            (true, false) => "tokens",
            (false, true) => "examples",
            (false, false) => "nothing",
        }
    }
}

pub trait Trainer: Send {
    fn name(&self) -> &str;
    fn config(&self) -> Value;
    /// One optimiser step (with its accumulation micro-steps); returns that step's metrics.
    fn step(&mut self, model: &dyn Model, job: &TrainJob<'_>, ctx: &Context)
        -> Result<StepMetrics>;
    /// Runs to the configured number of steps, reporting to `ctx`'s sinks and checkpointing;
    /// returns the final metrics. Stops cleanly with `Error::Cancelled` on Ctrl-C.
    fn fit(&mut self, model: &dyn Model, job: &TrainJob<'_>, ctx: &Context) -> Result<StepMetrics>;
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
