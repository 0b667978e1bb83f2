//! The `lm` training loop over a fixed token stream, for tests that train a tiny model through
//! the real trainer (checkpoints, resume, the row-parallel split).

use llmlab_plugin_api::candle::Device;
use llmlab_plugin_api::serde_json::{json, Value};
use llmlab_plugin_api::{Context, Model, Split, TokenData, TrainJob, Trainer, TypedConfig};
use llmlab_train::batches::{Batch, DataCursor, WindowSampler};
use llmlab_train::{Objective, Setup, TrainConfig, TrainLoop};

/// A token stream the trainer draws windows from: a fixed pseudo-random walk over the tiny
/// model's 48 ids, all of it train split.
pub struct Stream(Vec<u32>);

impl Stream {
    pub fn new() -> Stream {
        let mut rng = llmlab_plugin_api::rng::SplitMix64::new(5);
        let mut id = 0u32;
        Stream(
            (0..4000)
                .map(|_| {
                    id = (id + 1 + rng.below(3) as u32) % 48;
                    id
                })
                .collect(),
        )
    }
}

impl TokenData for Stream {
    fn len(&self, split: Split) -> usize {
        match split {
            Split::Train => self.0.len(),
            Split::Val => 0,
        }
    }
    fn read(&self, _: Split, start: usize, out: &mut [u32]) -> llmlab_plugin_api::Result<()> {
        out.copy_from_slice(&self.0[start..start + out.len()]);
        Ok(())
    }
    fn vocab_size(&self) -> usize {
        48
    }
}

/// Random windows of a [`Stream`], as the `lm` trainer draws them, with its plain token loss
/// (so the trainer may split rows over threads).
#[derive(Default)]
pub struct Windows(Option<WindowSampler>);

impl Objective for Windows {
    fn prepare(&mut self, _: &TrainJob<'_>, setup: &Setup) -> llmlab_plugin_api::Result<()> {
        self.0 = Some(WindowSampler::new(setup.batch_size, setup.ctx));
        Ok(())
    }
    fn next_batch(
        &mut self,
        data: &TrainJob<'_>,
        rng: &mut llmlab_plugin_api::rng::SplitMix64,
        cursor: &mut DataCursor,
        device: &Device,
    ) -> llmlab_plugin_api::Result<Batch> {
        let sampler = self.0.as_mut().expect("prepared");
        sampler.next(data.tokens.expect("tokens"), rng, cursor, device)
    }
    fn eval_batches(
        &mut self,
        _: &TrainJob<'_>,
        _: &Device,
    ) -> llmlab_plugin_api::Result<Vec<Batch>> {
        Ok(Vec::new())
    }
    fn row_parallel(&self) -> bool {
        true
    }
}

/// 8 steps of batch 4 × 16 tokens, a checkpoint every 4; `extra` overrides keys.
pub fn trainer(resume: Option<&std::path::Path>, extra: Value) -> TrainLoop<Windows> {
    let mut config = json!({ "steps": 8, "batch_size": 4, "ctx": 16, "lr": 1e-2, "warmup": 2,
        "eval_every": 0, "checkpoint_every": 4, "log_every": 1, "seed": 3 });
    if let Some(dir) = resume {
        config["resume"] = json!(dir.to_str().unwrap());
    }
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        config[k] = v;
    }
    TrainLoop::new(
        "lm",
        TrainConfig::from_json("lm", &config).unwrap(),
        Windows::default(),
    )
}

/// Steps `trainer` `steps` times, returning each step's loss.
pub fn train_steps(
    trainer: &mut TrainLoop<Windows>,
    model: &dyn Model,
    run_dir: &std::path::Path,
    steps: usize,
) -> Vec<f64> {
    let data = Stream::new();
    let ctx = Context {
        run_dir: Some(run_dir.to_path_buf()),
        ..Context::cpu()
    };
    (0..steps)
        .map(|_| trainer.step(model, &TrainJob::tokens(&data), &ctx).unwrap()["loss"])
        .collect()
}
