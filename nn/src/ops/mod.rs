//! Fused, differentiable training kernels (issue 11): each op is a candle `CustomOp` whose CPU
//! forward and backward are hand-written loops (chunked so the compiler vectorises them, rayon
//! over rows, gemm for the big products), with a composed reference built from stock candle ops.
//!
//! candle's own fused ops (`candle_nn::ops::softmax_last_dim`, `rms_norm`, `layer_norm`,
//! `rotary_emb::rope`) have no backward and silently train nothing (DESIGN.md §7); these do.
//! On CUDA (cuda build) the same ops run CUDA kernels in f32, bf16 and f16 ([`gpu`], issue 27).
//! Every public function takes the fused path where it has one (f32 on the CPU, [`kernel_path`])
//! and the composed reference path otherwise, so callers never need to branch. Inputs may have
//! any layout: kernels read strided inputs through [`layout`] (a copy only when needed).
//!
//! What this module does not own: the optimizer
//! (`llmlab_train::adamw`); a model chooses between the paths with [`Kernels`] (`gpt`'s
//! `kernels` key).
//! Design and measurements: docs/kernels.md.

pub mod attention;
pub mod cached_attention;
pub mod cross_entropy;
pub mod few_rows;
pub mod gelu;
pub mod gpu;
pub mod layer_norm;
pub mod layout;
pub mod linear;
pub mod math;
pub mod path_knob;
pub mod quant_rows;
pub mod rms_norm;
pub mod rope;
pub mod softmax;
pub mod swiglu;

pub use attention::{causal_attention, causal_attention_packed};
pub use cached_attention::cached_attention;
pub use cross_entropy::{token_nll, token_nll_reference};
pub use gelu::gelu;
pub use layer_norm::layer_norm;
pub use linear::linear;
pub use rms_norm::rms_norm;
pub use rope::{rope, rope_packed};
pub use softmax::softmax_last_dim;
pub use swiglu::swiglu;

use crate::candle::{DType, Device, Tensor};
use llmlab_plugin_api::serde::{Deserialize, Serialize};

/// Which implementation of norms, attention, activations and rope a model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(crate = "llmlab_plugin_api::serde", rename_all = "lowercase")]
pub enum Kernels {
    /// The fused kernels of this module (f32 on the CPU; f32/bf16/f16 on CUDA; elsewhere they
    /// fall back).
    #[default]
    Fused,
    /// Composed from stock candle ops: slower, for debugging and comparison.
    Reference,
}

/// Whether `t` takes the fused kernels: f32 on the CPU. Everything else (bf16, CUDA) goes
/// through the composed reference, which is differentiable on every backend.
pub fn fused_path(t: &Tensor) -> bool {
    matches!(t.device(), Device::Cpu) && t.dtype() == DType::F32
}

/// Whether `t` takes the fused training kernel of `op` (one of [`gpu::OPS`]): [`fused_path`]
/// on the CPU, and on CUDA the kernels of [`gpu`] (f32, bf16, f16; cuda build) unless
/// `LLMLAB_CUDA_KERNELS` leaves `op` out. The inference-only CPU kernels (linear, cached
/// attention, few rows) ask [`fused_path`] alone.
pub fn kernel_path(op: &str, t: &Tensor) -> bool {
    fused_path(t) || gpu::takes(op, t)
}

/// [`kernel_path`] for every operand, all of one dtype (the kernels read them as one type).
pub fn kernel_path_all(op: &str, ts: &[&Tensor]) -> bool {
    ts.iter().all(|t| kernel_path(op, t)) && ts.windows(2).all(|w| w[0].dtype() == w[1].dtype())
}

/// A norm's gain or bias must be a vector of the normalised width.
fn check_gain(op: &str, t: &Tensor, d: usize) -> crate::candle::Result<()> {
    if t.dims() != [d] {
        crate::candle::bail!("{op}: expected a ({d},) vector, got {:?}", t.dims())
    }
    Ok(())
}
