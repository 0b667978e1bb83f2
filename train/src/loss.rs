//! Next-token cross-entropy from logits. The per-position NLL is the fused log-softmax + NLL
//! kernel of [`crate::ops::cross_entropy`] on CPU f32 (one read pass for the log-sum-exp, the
//! gradient written in one pass), and the composed version elsewhere; both compute
//!
//! ```text
//! nll_i = log Σ_v exp(x_iv - max_i) - (x_i,target_i - max_i)
//! ```
//!
//! (never candle's `softmax_last_dim` and friends: they have no backward, DESIGN.md §7). The mean
//! runs over all positions, or over the positions a 0/1 mask keeps (SFT: answer tokens only).
//! [`sequence_log_probs`] sums log-probabilities per row over masked positions (DPO's
//! `log π(answer | prompt)`), and [`log_sigmoid`] is the stable `log σ(x)` of pairwise losses.

use crate::candle::{DType, Tensor};
use crate::Result;

/// Per-position negative log-likelihood `(batch * seq,)` of `targets` `(batch, seq)` u32 under
/// `logits` `(batch, seq, vocab)`.
pub fn token_nll(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let (batch, seq, vocab) = logits.dims3()?;
    let n = batch * seq;
    let logits = logits.reshape((n, vocab))?;
    let logits = if logits.dtype() == DType::F32 {
        logits
    } else {
        logits.to_dtype(DType::F32)?
    };
    Ok(crate::ops::token_nll(&logits, &targets.reshape(n)?)?)
}

/// Mean cross-entropy over every position: the pretraining loss.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    Ok(token_nll(logits, targets)?.mean_all()?)
}

/// Mean cross-entropy over the positions where `mask` `(batch, seq)` is 1; `kept` is the number
/// of such positions (known when the batch is built, so no device round trip).
pub fn masked_cross_entropy(
    logits: &Tensor,
    targets: &Tensor,
    mask: &Tensor,
    kept: usize,
) -> Result<Tensor> {
    let nll = token_nll(logits, targets)?;
    let mask = mask.reshape(nll.elem_count())?.to_dtype(DType::F32)?;
    Ok((nll * mask)?
        .sum_all()?
        .affine(1.0 / kept.max(1) as f64, 0.0)?)
}

/// `log p(row)` `(batch,)`: the sum of each row's target log-probabilities over the positions
/// where `mask` `(batch, seq)` is 1 (answer tokens), differentiable in `logits`.
pub fn sequence_log_probs(logits: &Tensor, targets: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let (batch, seq, _) = logits.dims3()?;
    let nll = token_nll(logits, targets)?.reshape((batch, seq))?;
    let mask = mask.to_dtype(DType::F32)?;
    Ok((nll * mask)?.sum(1)?.neg()?)
}

/// `log σ(x) = min(x, 0) - log(1 + e^-|x|)` elementwise: no overflow for large `|x|`.
pub fn log_sigmoid(x: &Tensor) -> Result<Tensor> {
    let min0 = x.neg()?.relu()?.neg()?;
    let softplus_tail = (x.abs()?.neg()?.exp()? + 1.0)?.log()?;
    Ok((min0 - softplus_tail)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::candle::{Device, Var};

    fn by_hand(row: &[f32], target: usize) -> f32 {
        let lse = row.iter().map(|x| x.exp()).sum::<f32>().ln();
        lse - row[target]
    }

    #[test]
    fn matches_the_definition_and_is_stable_for_large_logits() {
        let rows = [
            [1.0f32, 2.0, 3.0],
            [0.5, -1.0, 0.0],
            [1000.0, 999.0, 0.0],
            [-5.0, 0.0, 5.0],
        ];
        let logits = Tensor::new(&rows, &Device::Cpu)
            .unwrap()
            .reshape((2, 2, 3))
            .unwrap();
        let targets = Tensor::new(&[[2u32, 0], [1, 1]], &Device::Cpu).unwrap();
        let loss: f32 = cross_entropy(&logits, &targets)
            .unwrap()
            .to_scalar()
            .unwrap();
        let expected = (by_hand(&rows[0], 2)
            + by_hand(&rows[1], 0)
            + 1.0
            + (1f32 + (-1f32).exp()).ln()
            + by_hand(&rows[3], 1))
            / 4.0;
        assert!((loss - expected).abs() < 1e-5, "{loss} vs {expected}");
    }

    #[test]
    fn mask_keeps_only_marked_positions() {
        let rows = [[1.0f32, 2.0, 3.0], [0.5, -1.0, 0.0]];
        let logits = Tensor::new(&rows, &Device::Cpu)
            .unwrap()
            .reshape((1, 2, 3))
            .unwrap();
        let targets = Tensor::new(&[[2u32, 0]], &Device::Cpu).unwrap();
        let mask = Tensor::new(&[[0f32, 1.0]], &Device::Cpu).unwrap();
        let loss: f32 = masked_cross_entropy(&logits, &targets, &mask, 1)
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!((loss - by_hand(&rows[1], 0)).abs() < 1e-6);
    }

    #[test]
    fn sequence_log_probs_sum_masked_positions_per_row() {
        let rows = [
            [1.0f32, 2.0, 3.0],
            [0.5, -1.0, 0.0],
            [0.0, 0.0, 0.0],
            [2.0, 0.0, 1.0],
        ];
        let logits = Tensor::new(&rows, &Device::Cpu)
            .unwrap()
            .reshape((2, 2, 3))
            .unwrap();
        let targets = Tensor::new(&[[2u32, 0], [1, 2]], &Device::Cpu).unwrap();
        let mask = Tensor::new(&[[1f32, 1.0], [0.0, 1.0]], &Device::Cpu).unwrap();
        let lp: Vec<f32> = sequence_log_probs(&logits, &targets, &mask)
            .unwrap()
            .to_vec1()
            .unwrap();
        let expected = [
            -(by_hand(&rows[0], 2) + by_hand(&rows[1], 0)),
            -by_hand(&rows[3], 2),
        ];
        for (a, b) in lp.iter().zip(expected) {
            assert!((a - b).abs() < 1e-5, "{lp:?} vs {expected:?}");
        }
    }

    #[test]
    fn log_sigmoid_is_stable_and_exact() {
        let xs = [-800f32, -3.0, 0.0, 2.5, 800.0];
        let t = Tensor::new(&xs, &Device::Cpu).unwrap();
        let got: Vec<f32> = log_sigmoid(&t).unwrap().to_vec1().unwrap();
        for (x, y) in xs.iter().zip(&got) {
            let expected = if *x < -50.0 {
                *x
            } else {
                -((-x).exp() + 1.0).ln()
            };
            assert!((y - expected).abs() < 1e-5, "{x}: {y} vs {expected}");
        }
    }

    #[test]
    fn gradient_is_softmax_minus_one_hot() {
        let row = [0.3f32, -1.2, 2.0, 0.1];
        let var = Var::new(&[[row]], &Device::Cpu).unwrap();
        let targets = Tensor::new(&[[1u32]], &Device::Cpu).unwrap();
        let loss = cross_entropy(var.as_tensor(), &targets).unwrap();
        let grad: Vec<f32> = loss
            .backward()
            .unwrap()
            .get(&var)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let z: f32 = row.iter().map(|x| x.exp()).sum();
        for (i, g) in grad.iter().enumerate() {
            let expected = row[i].exp() / z - if i == 1 { 1.0 } else { 0.0 };
            assert!((g - expected).abs() < 1e-6, "{grad:?}");
        }
    }
}
