//! Softmax over the last dimension with its own backward, `dx = y ⊙ (dy - Σ dy ⊙ y)`, computed
//! from the saved output (candle's fused `softmax_last_dim` has none). Rows run in parallel.

use crate::candle::{self, CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor, D};
use crate::ops::layout::{f32_data, rows_and_len, rows_per_task};
use crate::ops::math::{self, simd_kernel};
use crate::rayon::prelude::*;

/// Softmax over the last dimension; fused on CPU f32, composed otherwise.
pub fn softmax_last_dim(x: &Tensor) -> candle::Result<Tensor> {
    if super::kernel_path("softmax", x) {
        x.apply_op1(Softmax)
    } else {
        softmax_reference(x)
    }
}

/// The composed path: `exp(x - max) / Σ`, the max detached (a constant shift).
pub fn softmax_reference(x: &Tensor) -> candle::Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

simd_kernel! {
    /// Softmax of each `len`-row of `x` into `y`.
    pub(crate) fn forward_rows(x: &[f32], y: &mut [f32], len: usize) {
        for (x, y) in x.chunks_exact(len).zip(y.chunks_exact_mut(len)) {
            let m = math::max(x);
            for (y, &x) in y.iter_mut().zip(x) {
                *y = math::exp(x - m);
            }
            let inv = 1.0 / math::sum(y);
            for y in y.iter_mut() {
                *y *= inv;
            }
        }
    }
}

simd_kernel! {
    fn backward_rows(y: &[f32], dy: &[f32], dx: &mut [f32], len: usize) {
        for ((y, dy), dx) in y.chunks_exact(len).zip(dy.chunks_exact(len)).zip(dx.chunks_exact_mut(len)) {
            let s = math::dot(y, dy);
            for ((dx, &y), &dy) in dx.iter_mut().zip(y).zip(dy) {
                *dx = y * (dy - s);
            }
        }
    }
}

struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "fused-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle::Result<(CpuStorage, Shape)> {
        let x = f32_data(s, l, self.name())?;
        let (rows, len) = rows_and_len(l);
        let mut y = vec![0f32; x.len()];
        if len > 0 {
            let step = rows_per_task(rows, len) * len;
            y.par_chunks_mut(step)
                .zip(x.par_chunks(step))
                .for_each(|(y, x)| forward_rows(x, y, len));
        }
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle::CudaStorage,
        l: &Layout,
    ) -> candle::Result<(candle::CudaStorage, Shape)> {
        use crate::ops::gpu::{cuda, launches};
        let (rows, len) = rows_and_len(l);
        let y = cuda::with_output(self.name(), [(s, l)], rows * len, None, |k, ty, [x], y| {
            launches::softmax_forward(k, ty, [x, cuda::address_at(y, 0)?], rows, len)
        })?;
        Ok((y, l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, dy: &Tensor) -> candle::Result<Option<Tensor>> {
        Ok(Some(y.apply_op2_no_bwd(dy, &SoftmaxBackward)?))
    }
}

struct SoftmaxBackward;

impl CustomOp2 for SoftmaxBackward {
    fn name(&self) -> &'static str {
        "fused-softmax-backward"
    }

    fn cpu_fwd(
        &self,
        ys: &CpuStorage,
        yl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> candle::Result<(CpuStorage, Shape)> {
        let y = f32_data(ys, yl, self.name())?;
        let dy = f32_data(gs, gl, self.name())?;
        let (rows, len) = rows_and_len(yl);
        let mut dx = vec![0f32; y.len()];
        if len > 0 {
            let step = rows_per_task(rows, len) * len;
            dx.par_chunks_mut(step)
                .zip(y.par_chunks(step).zip(dy.par_chunks(step)))
                .for_each(|(dx, (y, dy))| backward_rows(y, dy, dx, len));
        }
        Ok((CpuStorage::F32(dx), yl.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        ys: &candle::CudaStorage,
        yl: &Layout,
        gs: &candle::CudaStorage,
        gl: &Layout,
    ) -> candle::Result<(candle::CudaStorage, Shape)> {
        use crate::ops::gpu::{cuda, launches};
        let (rows, len) = rows_and_len(yl);
        let inputs = [(ys, yl), (gs, gl)];
        let dx = cuda::with_output(
            self.name(),
            inputs,
            rows * len,
            None,
            |k, ty, [y, dy], dx| {
                launches::softmax_backward(k, ty, [y, dy, cuda::address_at(dx, 0)?], rows, len)
            },
        )?;
        Ok((dx, yl.shape().clone()))
    }
}
