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

use llmlab_plugin_api::candle::Tensor;
use llmlab_plugin_api::Result;

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
    let ratio = (logp - old_logp)?.exp()?;
    let unclipped = (&ratio * advantages)?;
    let clipped = (ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps)? * advantages)?;
    let per_token = unclipped.minimum(&clipped)?.neg()?;

    let r: Vec<f32> = ratio.flatten_all()?.to_vec1()?;
    let a: Vec<f32> = advantages.flatten_all()?.to_vec1()?;
    let m: Vec<f32> = mask.flatten_all()?.to_vec1()?;
    let (eps, mut kept, mut sum, mut clipped_n) = (clip_eps as f32, 0usize, 0f64, 0usize);
    for ((&r, &a), &m) in r.iter().zip(&a).zip(&m) {
        if m == 0.0 {
            continue;
        }
        kept += 1;
        sum += r as f64;
        if (r > 1.0 + eps && a > 0.0) || (r < 1.0 - eps && a < 0.0) {
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
