//! GELU with the tanh approximation (GPT-2's `gelu_new`, candle's `Tensor::gelu`):
//!
//! ```text
//! y  = ½ x (1 + tanh u),   u = √(2/π) (x + 0.044715 x³)
//! y' = ½ (1 + tanh u) + ½ x (1 - tanh² u) √(2/π) (1 + 3·0.044715 x²)
//! ```
//!
//! One pass forward, one pass backward (from `x` and `dy`), elementwise in parallel chunks.

use crate::candle::{self, CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
use crate::ops::layout::f32_data;
use crate::ops::math::{self, simd_kernel};
use crate::rayon::prelude::*;

const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const COEF: f32 = 0.044_715;
/// Elements per parallel task.
const CHUNK: usize = 1 << 14;

/// GELU (tanh approximation) of every element; fused on CPU f32, `Tensor::gelu` otherwise.
pub fn gelu(x: &Tensor) -> candle::Result<Tensor> {
    if super::fused_path(x) {
        x.apply_op1(Gelu)
    } else {
        gelu_reference(x)
    }
}

/// The composed path: candle's differentiable `gelu` (tanh approximation).
pub fn gelu_reference(x: &Tensor) -> candle::Result<Tensor> {
    x.gelu()
}

simd_kernel! {
    fn forward_chunk(x: &[f32], y: &mut [f32]) {
        for (y, &x) in y.iter_mut().zip(x) {
            let u = SQRT_2_OVER_PI * (x + COEF * x * x * x);
            *y = 0.5 * x * (1.0 + math::tanh(u));
        }
    }
}

simd_kernel! {
    fn backward_chunk(x: &[f32], dy: &[f32], dx: &mut [f32]) {
        for ((dx, &x), &dy) in dx.iter_mut().zip(x).zip(dy) {
            let x2 = x * x;
            let t = math::tanh(SQRT_2_OVER_PI * (x + COEF * x2 * x));
            let du = SQRT_2_OVER_PI * (1.0 + 3.0 * COEF * x2);
            *dx = dy * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du);
        }
    }
}

struct Gelu;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "fused-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle::Result<(CpuStorage, Shape)> {
        let x = f32_data(s, l, self.name())?;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(y, x)| forward_chunk(x, y));
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> candle::Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(dy, &GeluBackward)?))
    }
}

struct GeluBackward;

impl CustomOp2 for GeluBackward {
    fn name(&self) -> &'static str {
        "fused-gelu-backward"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> candle::Result<(CpuStorage, Shape)> {
        let x = f32_data(xs, xl, self.name())?;
        let dy = f32_data(gs, gl, self.name())?;
        let mut dx = vec![0f32; x.len()];
        dx.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK).zip(dy.par_chunks(CHUNK)))
            .for_each(|(dx, (x, dy))| backward_chunk(x, dy, dx));
        Ok((CpuStorage::F32(dx), xl.shape().clone()))
    }
}
