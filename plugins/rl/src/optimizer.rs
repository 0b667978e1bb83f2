//! One optimiser step of an aligner, composed from the shared runtime's pieces
//! (`llmlab_train`): backward, gradients of the trained parameters, global-norm
//! clipping, AdamW at the scheduled learning rate. A non-finite loss or gradient stops before
//! the update with an error that says what to change.

use llmlab_plugin_api::candle::{Tensor, Var};
use llmlab_plugin_api::{Error, Result};
use llmlab_train::{clip, gradients, AdamW, AdamWSettings, Schedule};

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
}

/// What one step did.
pub struct Applied {
    pub lr: f64,
    pub grad_norm: f64,
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
        }
    }

    /// Back-propagates `loss` (a scalar) into `params` and updates them; `who` names the aligner
    /// in errors.
    pub fn step(&mut self, who: &str, loss: &Tensor, params: &[(String, Var)]) -> Result<Applied> {
        let lr = self.schedule.lr_at(self.step);
        let loss_value = loss.to_scalar::<f32>()? as f64;
        let mut store = loss.backward()?;
        let mut grads = vec![None; params.len()];
        gradients::accumulate(&mut grads, &mut store, params)?;
        let grad_norm = clip::global_norm(grads.iter().flatten())?;
        if !loss_value.is_finite() || !grad_norm.is_finite() {
            return Err(Error::Data(format!(
                "{who}: training diverged at step {}: loss {loss_value}, gradient norm {grad_norm} \
                 (lr {lr:.3e}); stopped before the update. Lower `lr` or raise `warmup`",
                self.step + 1
            )));
        }
        self.adamw.step(
            params,
            &grads,
            lr,
            clip::clip_scale(grad_norm, self.grad_clip),
        )?;
        self.step += 1;
        Ok(Applied { lr, grad_norm })
    }

    /// Restores a checkpoint's moments after `steps` updates (the schedule continues from there).
    pub fn load(
        &mut self,
        steps: u64,
        moments: &std::collections::HashMap<String, Tensor>,
        params: &[(String, Var)],
    ) -> Result<()> {
        self.adamw.load(steps, moments, params)?;
        self.step = steps;
        Ok(())
    }

    /// The optimiser's moments as named tensors (for a checkpoint).
    pub fn moments(&self, params: &[(String, Var)]) -> Result<Vec<(String, Tensor)>> {
        self.adamw.moments_to_tensors(params)
    }
}
