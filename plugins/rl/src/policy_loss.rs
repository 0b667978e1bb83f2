//! The per-token terms of the clipped policy objective (Schulman et al. 2017) both online
//! aligners minimise, built from differentiable ops:
//!
//! ```text
//! ratio_t = exp(log π(a_t) − log π_old(a_t))
//! pg_t    = −min(ratio_t A_t, clip(ratio_t, 1 − ε, 1 + ε) A_t)
//! kl_t    = exp(log π_ref − log π) − (log π_ref − log π) − 1      (Schulman's k3: ≥ 0, unbiased)
//! ```
//!
//! `π_old` is the policy that sampled the rollouts (its log-probabilities are constants), `π_ref`
//! the frozen reference. Also the statistics the aligners log: mean ratio and the fraction of
//! tokens whose clipped branch was taken (no gradient flows through them).

use llmlab_plugin_api::candle::{DType, Tensor};
use llmlab_plugin_api::Result;

pub use crate::grpo_variant::Importance;

/// What one evaluation of the surrogate gives.
pub struct Surrogate {
    /// `(rows, seq)`: `pg_t` at every position (mask it before reducing).
    pub per_token: Tensor,
    /// Mean ratio over masked positions.
    pub ratio_mean: f64,
    /// Fraction of masked positions where clipping removed the gradient.
    pub clip_fraction: f64,
}

/// The clipped surrogate of `logp` (differentiable) against `old_logp`, with per-position
/// `advantages`, all `(rows, seq)`; statistics over the positions `mask` keeps.
pub fn clipped_surrogate(
    logp: &Tensor,
    old_logp: &Tensor,
    advantages: &Tensor,
    mask: &Tensor,
    clip_eps: f64,
) -> Result<Surrogate> {
    clipped_surrogate_with(
        logp,
        old_logp,
        advantages,
        mask,
        (clip_eps, clip_eps),
        Importance::Token,
    )
}

/// [`clipped_surrogate`] with the ratio clipped to `[1 − clip.0, 1 + clip.1]` (DAPO's
/// clip-higher when `clip.1 > clip.0`) and, for [`Importance::Sequence`] (GSPO), one ratio per
/// row, `exp` of the mean log-ratio over the row's masked positions, at every position of it:
/// averaged per row, the loss is then GSPO's per-sequence objective.
pub fn clipped_surrogate_with(
    logp: &Tensor,
    old_logp: &Tensor,
    advantages: &Tensor,
    mask: &Tensor,
    clip: (f64, f64),
    importance: Importance,
) -> Result<Surrogate> {
    let log_ratio = (logp - old_logp)?;
    let log_ratio = match importance {
        Importance::Token => log_ratio,
        Importance::Sequence => {
            let lens = mask.sum_keepdim(1)?.clamp(1.0, f64::INFINITY)?;
            ((&log_ratio * mask)?.sum_keepdim(1)? / lens)?.broadcast_as(log_ratio.shape())?
        }
    };
    let ratio = log_ratio.exp()?;
    let unclipped = (&ratio * advantages)?;
    let clipped = (ratio.clamp(1.0 - clip.0, 1.0 + clip.1)? * advantages)?;
    let per_token = unclipped.minimum(&clipped)?.neg()?;

    let r: Vec<f32> = ratio.flatten_all()?.to_vec1()?;
    let a: Vec<f32> = advantages.flatten_all()?.to_vec1()?;
    let m: Vec<f32> = mask.flatten_all()?.to_vec1()?;
    let (low, high) = (clip.0 as f32, clip.1 as f32);
    let (mut kept, mut sum, mut clipped_n) = (0usize, 0f64, 0usize);
    for ((&r, &a), &m) in r.iter().zip(&a).zip(&m) {
        if m == 0.0 {
            continue;
        }
        kept += 1;
        sum += r as f64;
        if (r > 1.0 + high && a > 0.0) || (r < 1.0 - low && a < 0.0) {
            clipped_n += 1;
        }
    }
    Ok(Surrogate {
        per_token,
        ratio_mean: sum / kept.max(1) as f64,
        clip_fraction: clipped_n as f64 / kept.max(1) as f64,
    })
}

/// Schulman's k3 estimate of KL(π ‖ π_ref) per position, `(rows, seq)`.
pub fn k3_kl(logp: &Tensor, ref_logp: &Tensor) -> Result<Tensor> {
    let d = (ref_logp - logp)?;
    Ok(((d.exp()? - &d)? - 1.0)?)
}

/// Mean of `t` over the positions where `mask` is 1 (`kept` of them).
pub fn masked_mean(t: &Tensor, mask: &Tensor, kept: usize) -> Result<Tensor> {
    Ok((t * mask)?
        .sum_all()?
        .affine(1.0 / kept.max(1) as f64, 0.0)?)
}

/// Per row, the mean of `t` over its masked positions, then the mean over rows.
pub fn sequence_mean(t: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let per_row = (t * mask)?.sum(1)?;
    let lens = mask.sum(1)?.clamp(1.0, f64::INFINITY)?;
    Ok((per_row / lens)?.mean_all()?)
}

/// `loss` plus the policy's aux loss (MoE load balancing), when it has one.
pub fn with_aux(loss: Tensor, aux: Option<Tensor>) -> Result<Tensor> {
    Ok(match aux {
        Some(aux) => (loss + aux.to_dtype(DType::F32)?)?,
        None => loss,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmlab_plugin_api::candle::Device;

    #[test]
    fn sequence_importance_uses_one_clipped_ratio_per_completion() {
        // Row 0: log-ratios 0.2 and 0.0 on its two tokens → s = exp(0.1); row 1: one token at
        // −0.5 → s = exp(−0.5), clipped up to 1 − 0.2 = 0.8 with a negative advantage.
        let d = Device::Cpu;
        let logp = Tensor::new(&[[0.2f32, 0.0], [-0.5, 0.0]], &d).unwrap();
        let old = Tensor::zeros((2, 2), DType::F32, &d).unwrap();
        let adv = Tensor::new(&[[1.0f32, 1.0], [-2.0, -2.0]], &d).unwrap();
        let mask = Tensor::new(&[[1.0f32, 1.0], [1.0, 0.0]], &d).unwrap();
        let s = clipped_surrogate_with(&logp, &old, &adv, &mask, (0.2, 0.2), Importance::Sequence)
            .unwrap();
        let per_token: Vec<Vec<f32>> = s.per_token.to_vec2().unwrap();
        let s0 = 0.1f32.exp();
        // Row 0: −min(s0·1, clip(s0)·1) = −s0 (inside the range); row 1: −min(e^−0.5·−2, 0.8·−2) = 1.6.
        assert!((per_token[0][0] + s0).abs() < 1e-6 && (per_token[0][1] + s0).abs() < 1e-6);
        assert!((per_token[1][0] - 1.6).abs() < 1e-6, "{per_token:?}");
        // One of three kept positions was clipped.
        assert!((s.clip_fraction - 1.0 / 3.0).abs() < 1e-9);
    }

    #[test]
    fn clip_higher_lets_positive_advantages_rise_further() {
        // ratio e^0.25 ≈ 1.284: clipped at 1.2 by (0.2, 0.2), not by (0.2, 0.28).
        let d = Device::Cpu;
        let logp = Tensor::new(&[[0.25f32]], &d).unwrap();
        let old = Tensor::zeros((1, 1), DType::F32, &d).unwrap();
        let adv = Tensor::new(&[[1.0f32]], &d).unwrap();
        let mask = Tensor::new(&[[1.0f32]], &d).unwrap();
        let value = |clip| {
            clipped_surrogate_with(&logp, &old, &adv, &mask, clip, Importance::Token)
                .unwrap()
                .per_token
                .to_vec2::<f32>()
                .unwrap()[0][0]
        };
        assert!((value((0.2, 0.2)) + 1.2).abs() < 1e-6);
        assert!((value((0.2, 0.28)) + 1.28).abs() < 1e-6);
    }
}
