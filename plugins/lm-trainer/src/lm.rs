//! The `lm` trainer: pretraining on a token stream. Each micro-batch is `batch_size` random
//! windows of `ctx + 1` tokens from the train split; evaluation uses fixed, evenly spaced windows
//! of the val split.

use llmlab_plugin_api::candle::Device;
use llmlab_plugin_api::config::TypedConfig;
use llmlab_plugin_api::prelude::*;

use crate::batches::{self, Batch, DataCursor, WindowSampler};
use crate::config::TrainConfig;
use crate::rng::SplitMix64;
use crate::train_loop::{Objective, Setup, TrainLoop};

/// Batches of random windows of a [`TokenData`].
#[derive(Default)]
pub struct Pretraining {
    sampler: Option<WindowSampler>,
    setup: Option<Setup>,
}

fn token_data<'a>(job: &TrainJob<'a>) -> Result<&'a dyn TokenData> {
    job.tokens.ok_or_else(|| {
        Error::Data(format!(
            "the lm trainer learns from a token dataset (tok.encode(corpus)), the job has {}; for prompt/answer examples use trainer(\"sft\", ..)",
            job.describe()
        ))
    })
}

impl Objective for Pretraining {
    /// The plain token loss (masked for SFT) of the batch alone: rows may run in parallel.
    fn row_parallel(&self) -> bool {
        true
    }

    fn prepare(&mut self, data: &TrainJob<'_>, setup: &Setup) -> Result<()> {
        let tokens = token_data(data)?;
        if tokens.vocab_size() > setup.model_vocab_size {
            return Err(Error::Data(format!(
                "the dataset's vocabulary ({} tokens) is larger than the model's vocab_size ({})",
                tokens.vocab_size(),
                setup.model_vocab_size
            )));
        }
        let sampler = WindowSampler::new(setup.batch_size, setup.ctx);
        sampler.check(tokens)?;
        self.sampler = Some(sampler);
        self.setup = Some(*setup);
        Ok(())
    }

    fn next_batch(
        &mut self,
        data: &TrainJob<'_>,
        rng: &mut SplitMix64,
        cursor: &mut DataCursor,
        device: &Device,
    ) -> Result<Batch> {
        let sampler = self
            .sampler
            .as_mut()
            .ok_or_else(|| Error::msg("lm: not prepared"))?;
        sampler.next(token_data(data)?, rng, cursor, device)
    }

    fn eval_batches(&mut self, data: &TrainJob<'_>, device: &Device) -> Result<Vec<Batch>> {
        let setup = self.setup.ok_or_else(|| Error::msg("lm: not prepared"))?;
        let tokens = token_data(data)?;
        if tokens.len(Split::Val) < 2 {
            tracing::warn!("lm: the val split is empty; no evaluation");
        }
        batches::eval_batches(
            tokens,
            setup.batch_size,
            setup.ctx,
            setup.eval_batches,
            device,
        )
    }
}

pub type LmTrainer = TrainLoop<Pretraining>;

/// The `lm` trainer from a JSON config.
pub fn new_lm_trainer(config: &Value) -> Result<LmTrainer> {
    let config = TrainConfig::from_json("lm", config)?;
    Ok(TrainLoop::new("lm", config, Pretraining::default()))
}

pub struct LmFactory;

impl Factory for LmFactory {
    fn name(&self) -> &'static str {
        "lm"
    }
    fn kind(&self) -> Kind {
        Kind::Trainer
    }
    fn about(&self) -> &'static str {
        "language-model pretraining: AdamW, warmup + cosine, clipping, accumulation, eval, bit-exact checkpoints"
    }
    fn config_keys(&self) -> Vec<ConfigKey> {
        TrainConfig::keys()
    }
    fn create(&self, config: &Value, _: &Context) -> Result<Instance> {
        Ok(Instance::Trainer(Box::new(new_lm_trainer(config)?)))
    }
}
