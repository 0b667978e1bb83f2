//! Load balancing: Switch's auxiliary loss, the router z-loss, and DeepSeek-V3's
//! auxiliary-loss-free selection bias.
//!
//! The bias is state, not a parameter: it has no gradient, the trainer's optimizer never sees
//! it, and it travels in checkpoints through `Model::state` so a resumed run continues
//! bit-exactly. It is updated from the load of the *previous* training pass, at the start of the
//! next one: recomputing a block (activation checkpointing) then routes with the same bias as
//! its first forward, and the update needs no hook after the optimizer step. With gradient
//! accumulation the bias moves once per micro-batch.

use llmlab_plugin_api::candle::{DType, Result, Tensor, Var, D};

/// Switch Transformer's balance term `N · Σ_i f_i · P_i`: `f_i` the fraction of assignments the
/// router gave expert `i` (a constant), `P_i` its mean router probability over the tokens
/// (differentiable). 1 when both are uniform; the caller scales it by `aux_loss_coef`.
pub fn switch_balance(probs: &Tensor, chosen: &[usize]) -> Result<Tensor> {
    let experts = chosen.len();
    let total = chosen.iter().sum::<usize>().max(1) as f32;
    let fractions: Vec<f32> = chosen.iter().map(|&c| c as f32 / total).collect();
    let f = Tensor::from_vec(fractions, experts, probs.device())?.to_dtype(probs.dtype())?;
    let p = probs.mean(0)?;
    (p * f)?.sum_all()?.affine(experts as f64, 0.0)
}

/// ST-MoE's router z-loss `mean_t (log Σ_i exp(logits_ti))²`: keeps the logits small.
pub fn z_loss(logits: &Tensor) -> Result<Tensor> {
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let lse = (logits
        .broadcast_sub(&max)?
        .exp()?
        .sum_keepdim(D::Minus1)?
        .log()?
        + max)?;
    lse.sqr()?.mean_all()
}

/// The auxiliary-loss-free selection bias of one MoE layer, with the load it has seen since its
/// last update. Clones share the values (the tensors are variables updated in place).
#[derive(Debug, Clone)]
pub struct SelectionBias {
    /// `(experts,)` f32, added to the router probabilities for selection only.
    bias: Var,
    /// `(experts,)` f32: tokens chosen per expert by training passes since the last update.
    pending: Var,
    rate: f64,
}

impl SelectionBias {
    /// From the two state tensors of the layer (`*.router.selection_bias`, `*.router.pending_load`).
    pub fn new(bias: &Tensor, pending: &Tensor, rate: f64) -> Result<SelectionBias> {
        Ok(SelectionBias {
            bias: Var::from_tensor(bias)?,
            pending: Var::from_tensor(pending)?,
            rate,
        })
    }

    pub fn values(&self) -> Result<Vec<f32>> {
        self.bias.as_tensor().to_dtype(DType::F32)?.to_vec1()
    }

    /// `b_i += rate · sign(mean load − load_i)` from the pending load, which is then cleared.
    pub fn apply_pending(&self) -> Result<()> {
        let load: Vec<f32> = self.pending.as_tensor().to_vec1()?;
        let total: f32 = load.iter().sum();
        if total == 0.0 {
            return Ok(());
        }
        let mean = total / load.len() as f32;
        let rate = self.rate as f32;
        let bias: Vec<f32> = self
            .values()?
            .iter()
            .zip(&load)
            .map(|(b, l)| {
                let step = if *l < mean {
                    rate
                } else if *l > mean {
                    -rate
                } else {
                    0.0
                };
                b + step
            })
            .collect();
        let device = self.bias.device().clone();
        self.bias
            .set(&Tensor::from_vec(bias, load.len(), &device)?)?;
        self.pending.set(&self.pending.as_tensor().zeros_like()?)
    }

    /// Adds one training pass's chosen-token counts to the pending load.
    pub fn record(&self, chosen: &[usize]) -> Result<()> {
        let counts: Vec<f32> = chosen.iter().map(|&c| c as f32).collect();
        let counts = Tensor::from_vec(counts, chosen.len(), self.pending.device())?;
        self.pending
            .set(&(self.pending.as_tensor().detach() + counts)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmlab_plugin_api::candle::Device;

    #[test]
    fn balance_term_is_one_when_uniform_and_grows_with_collapse() {
        let uniform = Tensor::from_vec(vec![0.25f32; 8], (2, 4), &Device::Cpu).unwrap();
        let b = switch_balance(&uniform, &[1, 1, 1, 1]).unwrap();
        assert!((b.to_scalar::<f32>().unwrap() - 1.0).abs() < 1e-6);
        let collapsed =
            Tensor::from_vec(vec![1f32, 0., 0., 0., 1., 0., 0., 0.], (2, 4), &Device::Cpu).unwrap();
        let b = switch_balance(&collapsed, &[2, 0, 0, 0]).unwrap();
        assert!((b.to_scalar::<f32>().unwrap() - 4.0).abs() < 1e-6);
    }

    #[test]
    fn bias_moves_against_the_load_and_clones_share_it() {
        let zeros = Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap();
        let bias = SelectionBias::new(
            &Var::from_tensor(&zeros).unwrap().as_tensor().clone(),
            &Var::from_tensor(&zeros).unwrap().as_tensor().clone(),
            0.1,
        )
        .unwrap();
        let clone = bias.clone();
        bias.record(&[6, 2, 1]).unwrap();
        bias.record(&[0, 1, 2]).unwrap();
        // Load [6, 3, 3], mean 4.
        clone.apply_pending().unwrap();
        let v = bias.values().unwrap();
        assert!(
            (v[0] + 0.1).abs() < 1e-7 && (v[1] - 0.1).abs() < 1e-7 && (v[2] - 0.1).abs() < 1e-7
        );
        // Cleared: a second update without new load changes nothing.
        bias.apply_pending().unwrap();
        assert_eq!(bias.values().unwrap(), v);
    }
}
