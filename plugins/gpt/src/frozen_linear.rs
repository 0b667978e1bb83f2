//! The product `x·Wᵀ` with a frozen weight, as one custom op whose backward returns only the
//! input's gradient: LoRA's base layers (issue 22).
//!
//! With candle's own `matmul`, backward computes the gradient of *both* operands, so a frozen
//! dense weight would still get a full `(out, in)` gradient allocated on every step. Here the
//! weight is captured by the op, not an operand, so no gradient of it is ever made.
//!
//! A quantized weight (QLoRA) is used as it is stored: the forward pass runs candle's quantized
//! matmul, and the backward pass dequantizes the weight on the fly for `∂x = ∂y·W` and drops the
//! dense copy right after, so the dense weights never stay in memory.

use std::sync::Arc;

use llmlab_plugin_api::candle::quantized::{QMatMul, QTensor};
use llmlab_plugin_api::candle::{
    CpuStorage, CustomOp1, DType, Device, Layout, Module, Result, Shape, Tensor, D,
};

/// The frozen weight of a layer.
#[derive(Clone)]
pub enum FrozenWeight {
    /// `(out, in)`, not tracked by autograd.
    Dense(Tensor),
    /// `(out, in_padded)` GGML blocks for a layer of input width `in_dim`.
    Quantized {
        weight: Arc<QTensor>,
        matmul: QMatMul,
        in_dim: usize,
    },
}

impl FrozenWeight {
    pub fn quantized(weight: Arc<QTensor>, in_dim: usize) -> Result<FrozenWeight> {
        Ok(FrozenWeight::Quantized {
            matmul: QMatMul::from_arc(weight.clone())?,
            weight,
            in_dim,
        })
    }

    /// The weight as a dense f32 `(out, in)` tensor, made now (quantized: dequantized).
    pub fn dense(&self, device: &Device) -> Result<Tensor> {
        match self {
            FrozenWeight::Dense(w) => w.to_dtype(DType::F32),
            FrozenWeight::Quantized { weight, in_dim, .. } => {
                weight.dequantize(device)?.narrow(1, 0, *in_dim)
            }
        }
    }
}

/// `y = x·Wᵀ` over the last dimension of `x`, differentiable in `x` only.
struct FrozenMatmul(FrozenWeight);

impl CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let data = match storage {
            CpuStorage::F32(v) => v,
            _ => llmlab_plugin_api::candle::bail!("frozen-matmul: input must be f32"),
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            llmlab_plugin_api::candle::bail!("frozen-matmul: input must be contiguous")
        };
        let x = Tensor::from_slice(&data[start..end], layout.shape().clone(), &Device::Cpu)?;
        let y = match &self.0 {
            FrozenWeight::Dense(w) => x.broadcast_matmul(&w.to_dtype(DType::F32)?.t()?)?,
            FrozenWeight::Quantized {
                weight,
                matmul,
                in_dim,
            } => {
                let padded = weight.shape().dims2()?.1;
                let x = if padded > *in_dim {
                    x.pad_with_zeros(D::Minus1, 0, padded - in_dim)?
                } else {
                    x
                };
                matmul.forward(&x.contiguous()?)?
            }
        };
        let shape = y.shape().clone();
        Ok((CpuStorage::F32(y.flatten_all()?.to_vec1::<f32>()?), shape))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let w = self.0.dense(arg.device())?;
        let grad = grad_res.to_dtype(DType::F32)?.broadcast_matmul(&w)?;
        Ok(Some(grad.to_dtype(arg.dtype())?))
    }
}

/// `x·Wᵀ (+ b)` with `weight` frozen: gradients reach `x` (and a tracked bias) only.
pub fn forward(weight: &FrozenWeight, bias: Option<&Tensor>, x: &Tensor) -> Result<Tensor> {
    let dtype = x.dtype();
    let x32 = x.to_dtype(DType::F32)?.contiguous()?;
    let y = x32.apply_op1(FrozenMatmul(weight.clone()))?;
    let y = match bias {
        Some(b) => y.broadcast_add(&b.to_dtype(DType::F32)?)?,
        None => y,
    };
    y.to_dtype(dtype)
}
