//! Grouped dispatch and combine: compute that scales with the *active* parameters.
//!
//! The tokens' rows are gathered once in expert order (`index_select`), each expert multiplies
//! only its own contiguous group (one product chain per expert), the outputs are scaled by their
//! router weights and scattered back with `index_add`. All three are differentiable candle ops,
//! so the backward pass is grouped the same way. [`dense_reference`] evaluates every expert on
//! every token and zeroes the weights off the chosen ones: the same function, at total-parameter
//! cost, for the gradient checks.

use llmlab_plugin_api::candle::{Result, Tensor, D};

use super::router::Routing;
use crate::mlp::Mlp;

/// `Σ_e w_te · expert_e(x_t)` over the assignments of `routing`; `x` `(tokens, d)`, `weights`
/// `(tokens, experts)` (zero off the assignments).
pub fn grouped(
    experts: &[Mlp],
    x: &Tensor,
    weights: &Tensor,
    routing: &Routing,
    train: bool,
) -> Result<Tensor> {
    let assignments = routing.tokens.len();
    if assignments == 0 {
        return x.zeros_like();
    }
    let device = x.device();
    let tokens = Tensor::from_vec(routing.tokens.clone(), assignments, device)?;
    let picks = Tensor::from_vec(routing.weight_index.clone(), assignments, device)?;
    let gathered = x.index_select(&tokens, 0)?;
    let gate = weights
        .flatten_all()?
        .index_select(&picks, 0)?
        .to_dtype(x.dtype())?
        .unsqueeze(1)?;
    let mut outputs = Vec::with_capacity(experts.len());
    let mut start = 0;
    for (expert, &count) in experts.iter().zip(&routing.counts) {
        if count > 0 {
            outputs.push(expert.forward(&gathered.narrow(0, start, count)?, train)?);
            start += count;
        }
    }
    let combined = Tensor::cat(&outputs, 0)?.broadcast_mul(&gate)?;
    x.zeros_like()?.index_add(&tokens, &combined, 0)
}

/// Every expert on every token, weighted by `weights` `(tokens, experts)`: the dense
/// reference of [`grouped`] (same value and gradients, every expert's cost).
pub fn dense_reference(
    experts: &[Mlp],
    x: &Tensor,
    weights: &Tensor,
    train: bool,
) -> Result<Tensor> {
    let weights = weights.to_dtype(x.dtype())?;
    let mut sum = x.zeros_like()?;
    for (e, expert) in experts.iter().enumerate() {
        let w = weights.narrow(D::Minus1, e, 1)?;
        sum = (sum + expert.forward(x, train)?.broadcast_mul(&w)?)?;
    }
    Ok(sum)
}
