//! The pruning state a linear layer carries ([`crate::linear::DenseLinear::pruning`]): the
//! weight's keep-mask, multiplied into the weight in every forward pass (a pruned weight
//! contributes nothing and gets no gradient, so training keeps it at zero), and while
//! calibrating a [`Recorder`] of the input features' sums of squares (Wanda's `‖X_j‖₂`). Which
//! weights to prune is the model's choice (`gpt`'s `prune.rs`).

use std::sync::{Arc, Mutex};

use llmlab_plugin_api::candle::{DType, Result, Tensor, D};

/// A dense layer's pruning state.
#[derive(Default)]
pub struct Pruning {
    /// `(out, in)` of 1 (kept) and 0 (pruned).
    pub mask: Option<Tensor>,
    /// While calibrating: the sum of squares of each input feature.
    pub recorder: Option<Arc<Recorder>>,
}

/// Accumulates `Σ x_j²` over every token a layer sees.
#[derive(Default)]
pub struct Recorder(Mutex<Option<Tensor>>);

impl Recorder {
    pub fn add(&self, x: &Tensor) -> Result<()> {
        let width = x.dim(D::Minus1)?;
        let squares = x
            .detach()
            .to_dtype(DType::F32)?
            .reshape(((), width))?
            .sqr()?
            .sum(0)?;
        let mut sum = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *sum = Some(match sum.take() {
            Some(s) => (s + squares)?,
            None => squares,
        });
        Ok(())
    }

    /// `‖X_j‖₂` of each input feature so far; `None` before any input.
    pub fn norms(&self) -> Option<Vec<f32>> {
        let sum = self.0.lock().unwrap_or_else(|p| p.into_inner());
        sum.as_ref()
            .and_then(|s| s.sqrt().ok()?.to_vec1::<f32>().ok())
    }
}
