//! Mixed precision for the trainers: the `precision` setting and f16's dynamic loss scale.
//!
//! `bf16` and `f16` run the forward and backward passes in that dtype while the parameters stay
//! f32 **master weights**: the model casts them for each pass (`Model::forward_backward`), the
//! gradients arrive in f32 through the casts, and AdamW updates and keeps its moments in f32.
//! The alternative, bf16 parameters with no f32 copy, halves the weight memory but loses updates
//! smaller than bf16's 8-bit mantissa can represent (an update below ~0.4% of a weight rounds
//! away), which stalls training at small learning rates; at the model sizes llmlab trains the
//! f32 copy is cheap, so we keep it. Logits are cast to f32 before the loss.
//!
//! f16 has bf16's precision problem the other way round: its range ends at 65504 and small
//! gradients flush to zero. The loss is therefore multiplied by a scale before backward and the
//! gradients divided by it after ([`LossScaler`]): the scale doubles after `loss_scale_window`
//! steps without overflow; a step whose gradients overflow (inf/NaN) is skipped, with no update,
//! and the scale halved. Both show up in the metrics (`loss_scale`, `skipped`).

use llmlab_plugin_api::candle::DType;
use llmlab_plugin_api::serde::{Deserialize, Serialize};
use llmlab_plugin_api::{Error, Result};

/// The dtype of the forward and backward passes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(crate = "llmlab_plugin_api::serde", rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    Bf16,
    F16,
}

impl Precision {
    pub fn compute_dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
            Precision::F16 => DType::F16,
        }
    }

    /// Only f16 needs a loss scale: bf16 has f32's exponent range.
    pub fn scales_loss(self) -> bool {
        self == Precision::F16
    }
}

/// Largest scale: beyond it the scaled f32 loss itself could overflow on a bad batch.
pub const MAX_SCALE: f64 = 16_777_216.0; // 2^24

/// What the scaler decided about a step's gradients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Finite: apply the update.
    Apply,
    /// Overflowed: skip the update; the scale was halved.
    Skip,
}

/// f16's dynamic loss scale and the count of overflow-free steps since it last changed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(crate = "llmlab_plugin_api::serde")]
pub struct LossScaler {
    pub scale: f64,
    pub good_steps: u64,
    pub window: u64,
}

impl LossScaler {
    pub fn new(scale: f64, window: u64) -> LossScaler {
        LossScaler {
            scale,
            good_steps: 0,
            window,
        }
    }

    /// Records whether this step's (unscaled) gradients and loss are finite. An overflow at
    /// scale 1 is no longer a range problem but a diverged run: that is an error.
    pub fn update(&mut self, finite: bool) -> Result<Verdict> {
        if finite {
            self.good_steps += 1;
            if self.good_steps >= self.window {
                self.scale = (self.scale * 2.0).min(MAX_SCALE);
                self.good_steps = 0;
            }
            return Ok(Verdict::Apply);
        }
        if self.scale <= 1.0 {
            return Err(Error::Data(format!(
                "f16 training diverged: gradients overflow even with loss scale {}; \
                 lower `lr`, raise `warmup`, or use precision \"bf16\"",
                self.scale
            )));
        }
        self.scale = (self.scale / 2.0).max(1.0);
        self.good_steps = 0;
        Ok(Verdict::Skip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_halves_on_overflow_and_doubles_after_a_window_of_good_steps() {
        let mut s = LossScaler::new(1024.0, 3);
        assert_eq!(s.update(false).unwrap(), Verdict::Skip);
        assert_eq!(s.scale, 512.0);
        for _ in 0..2 {
            assert_eq!(s.update(true).unwrap(), Verdict::Apply);
            assert_eq!(s.scale, 512.0);
        }
        assert_eq!(s.update(true).unwrap(), Verdict::Apply);
        assert_eq!((s.scale, s.good_steps), (1024.0, 0));
        // An overflow resets the count of good steps.
        s.update(true).unwrap();
        s.update(false).unwrap();
        assert_eq!((s.scale, s.good_steps), (512.0, 0));
    }

    #[test]
    fn scale_is_capped_and_overflow_at_scale_one_is_divergence() {
        let mut s = LossScaler::new(MAX_SCALE, 1);
        s.update(true).unwrap();
        assert_eq!(s.scale, MAX_SCALE);
        let mut s = LossScaler::new(1.0, 1);
        let err = s.update(false).unwrap_err().to_string();
        assert!(err.contains("diverged") && err.contains("bf16"), "{err}");
    }
}
