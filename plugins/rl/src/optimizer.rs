//! One optimiser step of an aligner, composed from the shared runtime's pieces
//! (`llmlab_train`): backward, gradients of the trained parameters, global-norm
//! clipping, AdamW at the scheduled learning rate. A non-finite loss or gradient stops before
//! the update with an error that says what to change.
//!
//! Data parallel (`data_parallel: true`, docs/distributed.md): the update phase runs through
//! the same [`DataParallel`] as the `TrainLoop` trainers: the rank's weighted loss is
//! back-propagated, gradients are summed over the ranks in buckets (reduce-scattered under
//! ZeRO 2), clipped by the global norm and applied identically everywhere (ZeRO 1/2: each rank
//! updates its own tensors and the new values are all-gathered).

use llmlab_plugin_api::candle::{Tensor, Var};
use llmlab_plugin_api::collective::world;
use llmlab_plugin_api::serde_json::{json, Value};
use llmlab_plugin_api::{AlignJob, Error, Result, StepMetrics};
use llmlab_train::data_parallel::{self, DataParallel};
use llmlab_train::{clip, gradients, AdamW, AdamWSettings, Schedule};

/// The data-parallel world of an aligner's job (`data_parallel: true`), once every rank is
/// checked to start the same aligner, config, policy and data; `unit` names what the job's
/// examples are (`"pairs"`, `"prompts"`).
pub fn join_world(
    aligner: &str,
    config: &Value,
    (zero, bucket_mb): (u8, f64),
    job: &AlignJob<'_>,
    unit: &str,
) -> Result<DataParallel> {
    let dp = DataParallel::with_keys(zero, bucket_mb, world());
    let mut data = json!({
        "examples": job.examples.name(),
        "tokenizer_vocab": job.tokenizer.vocab_size(),
    });
    data[unit] = json!(job.examples.len());
    dp.check_same_start(&data_parallel::start_summary(
        aligner, config, job.policy, &data,
    )?)?;
    Ok(dp)
}

/// The optimisation keys of an aligner's config.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OptimSettings {
    pub steps: u64,
    pub lr: f64,
    pub min_lr: f64,
    pub warmup: u64,
    pub weight_decay: f64,
    pub grad_clip: f64,
}

pub struct Optimizer {
    schedule: Schedule,
    adamw: AdamW,
    grad_clip: f64,
    /// Steps taken.
    pub step: u64,
    /// With `data_parallel`: this rank's share of the job.
    dp: Option<DataParallel>,
}

/// What one step did.
pub struct Applied {
    pub lr: f64,
    pub grad_norm: f64,
    /// The loss of the whole (global) batch: the ranks' weighted losses summed; alone, the loss.
    pub loss: f64,
    /// Data parallel: `dp_comm_s`, `dp_moment_bytes`, `dp_grad_bytes`; empty alone.
    pub dp_metrics: StepMetrics,
}

impl Optimizer {
    pub fn new(s: OptimSettings) -> Self {
        Optimizer {
            schedule: Schedule {
                lr: s.lr,
                min_lr: s.min_lr,
                warmup: s.warmup,
                total_steps: s.steps,
            },
            adamw: AdamW::new(AdamWSettings {
                beta1: 0.9,
                beta2: 0.95,
                eps: 1e-8,
                weight_decay: s.weight_decay,
            }),
            grad_clip: s.grad_clip,
            step: 0,
            dp: None,
        }
    }

    /// Makes the updates data-parallel: from now on [`Optimizer::step`] takes this rank's
    /// weighted share of the loss and every rank applies the same update.
    pub fn join(&mut self, dp: DataParallel) {
        self.dp = Some(dp);
    }

    pub fn data_parallel(&mut self) -> Option<&mut DataParallel> {
        self.dp.as_mut()
    }

    /// Whether this process writes metrics and checkpoints (rank 0 under data parallel).
    pub fn writes(&self) -> bool {
        data_parallel::writes(self.dp.as_ref())
    }

    /// Back-propagates `loss` (a scalar) into `params` and updates them; `who` names the aligner
    /// in errors. Data parallel: `loss` is this rank's share, weighted so that the ranks' losses
    /// add up to the global batch's (a mean over rows times the rank's fraction of the rows).
    pub fn step(&mut self, who: &str, loss: &Tensor, params: &[(String, Var)]) -> Result<Applied> {
        let lr = self.schedule.lr_at(self.step);
        let mut loss_value = loss.to_scalar::<f32>()? as f64;
        let mut store = loss.backward()?;
        let mut grads = vec![None; params.len()];
        gradients::accumulate(&mut grads, &mut store, params)?;
        drop(store);
        let grad_norm = match self.dp.as_mut() {
            Some(dp) => {
                let mut sums = [loss_value];
                dp.reduce(params, &mut grads, &mut sums)?;
                loss_value = sums[0];
                dp.global_norm(&grads)?
            }
            None => clip::global_norm(grads.iter().flatten())?,
        };
        // Under data parallel the loss and norm are global, so every rank stops alike.
        if !loss_value.is_finite() || !grad_norm.is_finite() {
            return Err(Error::Data(format!(
                "{who}: training diverged at step {}: loss {loss_value}, gradient norm {grad_norm} \
                 (lr {lr:.3e}); stopped before the update. Lower `lr` or raise `warmup`",
                self.step + 1
            )));
        }
        let scale = clip::clip_scale(grad_norm, self.grad_clip);
        let dp_metrics = match self.dp.as_mut() {
            Some(dp) => {
                dp.step(&mut self.adamw, params, &grads, lr, scale)?;
                dp.take_metrics(params, &grads)
            }
            None => {
                self.adamw.step(params, &grads, lr, scale)?;
                StepMetrics::new()
            }
        };
        self.step += 1;
        Ok(Applied {
            lr,
            grad_norm,
            loss: loss_value,
            dp_metrics,
        })
    }

    /// Restores a checkpoint's moments after `steps` updates (the schedule continues from there).
    /// Under ZeRO this rank keeps only its own tensors' moments.
    pub fn load(
        &mut self,
        steps: u64,
        moments: &std::collections::HashMap<String, Tensor>,
        params: &[(String, Var)],
    ) -> Result<()> {
        let owned = match self.dp.as_mut() {
            Some(dp) => dp.owned(params),
            None => params.to_vec(),
        };
        self.adamw.load(steps, moments, &owned)?;
        self.step = steps;
        Ok(())
    }

    /// The optimiser's moments as named tensors (for a checkpoint); under ZeRO gathered to rank
    /// 0 (the one that writes), so every rank must call this and the others get none.
    pub fn moments(&mut self, params: &[(String, Var)]) -> Result<Vec<(String, Tensor)>> {
        match self.dp.as_mut() {
            Some(dp) => dp.moments(&self.adamw, params),
            None => self.adamw.moments_to_tensors(params),
        }
    }
}
