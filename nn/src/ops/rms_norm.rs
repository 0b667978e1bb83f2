//! RMSNorm (Zhang & Sennrich 2019, Llama) over the last dimension, `y = x / √(mean x² + ε) · w`,
//! with its backward in one pass per row (`r` recomputed from `x`):
//!
//! ```text
//! x̂ = x r,  g = dy ⊙ w,  dx = r (g - x̂ mean(g ⊙ x̂)),  dw = Σ dy ⊙ x̂
//! ```
//!
//! The backward kernel shares LayerNorm's parallel driver ([`super::layer_norm`]).

use crate::candle::{self, CpuStorage, CustomOp2, Layout, Shape, Tensor, D};
use crate::ops::layer_norm::NormBackward;
use crate::ops::layout::{f32_data, rows_and_len, rows_per_task};
use crate::ops::math::{self, simd_kernel};
use crate::rayon::prelude::*;

/// RMSNorm of `x` `(..., d)` with `weight` `(d,)`; fused on CPU f32, composed otherwise.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> candle::Result<Tensor> {
    super::check_gain("rms_norm", weight, x.dim(D::Minus1)?)?;
    if super::kernel_path_all("rms_norm", &[x, weight]) {
        x.apply_op2(weight, RmsNorm { eps: eps as f32 })
    } else {
        rms_norm_reference(x, weight, eps)
    }
}

/// The composed path from stock differentiable ops.
pub fn rms_norm_reference(x: &Tensor, weight: &Tensor, eps: f64) -> candle::Result<Tensor> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    x.broadcast_div(&(ms + eps)?.sqrt()?)?.broadcast_mul(weight)
}

simd_kernel! {
    /// RMSNorm of the rows of `x` (rows of `w.len()`) into `y`, one thread.
    pub fn forward_rows(x: &[f32], w: &[f32], y: &mut [f32], eps: f32) {
        let d = w.len();
        for (x, y) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)) {
            let r = 1.0 / (math::dot(x, x) / d as f32 + eps).sqrt();
            for ((y, &x), &w) in y.iter_mut().zip(x).zip(w) {
                *y = x * r * w;
            }
        }
    }
}

simd_kernel! {
    /// `dx` of the rows, and their contributions added into `dw`; one thread.
    pub fn backward_rows(x: &[f32], w: &[f32], dy: &[f32], dx: &mut [f32], dw: &mut [f32], eps: f32) {
        let d = w.len();
        let n = d as f32;
        for ((x, dy), dx) in x.chunks_exact(d).zip(dy.chunks_exact(d)).zip(dx.chunks_exact_mut(d)) {
            let r = 1.0 / (math::dot(x, x) / n + eps).sqrt();
            // mean(g x̂) = r Σ dy w x / d
            let c = r * math::dot3(dy, w, x) / n;
            for (((dx, &x), &dy), &w) in dx.iter_mut().zip(x).zip(dy).zip(w) {
                *dx = r * (dy * w - x * r * c);
            }
            for ((dw, &x), &dy) in dw.iter_mut().zip(x).zip(dy) {
                *dw += dy * x * r;
            }
        }
    }
}

struct RmsNorm {
    eps: f32,
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "fused-rms-norm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> candle::Result<(CpuStorage, Shape)> {
        let x = f32_data(xs, xl, self.name())?;
        let w = f32_data(ws, wl, self.name())?;
        let (rows, _) = rows_and_len(xl);
        let mut y = vec![0f32; x.len()];
        forward(&x, &w, &mut y, self.eps, rows, true);
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &candle::CudaStorage,
        xl: &Layout,
        ws: &candle::CudaStorage,
        wl: &Layout,
    ) -> candle::Result<(candle::CudaStorage, Shape)> {
        use crate::ops::gpu::{cuda, launches};
        let (rows, d) = rows_and_len(xl);
        let y = cuda::with_output(
            self.name(),
            [(xs, xl), (ws, wl)],
            rows * d,
            None,
            |k, ty, [x, w], y| {
                let y = cuda::address_at(y, 0)?;
                launches::norm_forward(k, ty, [x, w, y], None, rows, d, self.eps, true)
            },
        )?;
        Ok((y, xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle::Result<(Option<Tensor>, Option<Tensor>)> {
        let (n, d) = (x.elem_count(), w.elem_count());
        let all = x.apply_op3_no_bwd(
            w,
            dy,
            &NormBackward {
                eps: self.eps,
                rms: true,
            },
        )?;
        let dx = all.narrow(0, 0, n)?.reshape(x.shape())?;
        let dw = all.narrow(0, n, d)?.reshape(w.shape())?;
        Ok((Some(dx), Some(dw)))
    }
}

/// RMSNorm of `rows` rows of `x` (rows of `w.len()`) into `y`, in parallel tasks of whole rows
/// when `parallel`. The backward is [`super::layer_norm::backward`] without `db`.
pub fn forward(x: &[f32], w: &[f32], y: &mut [f32], eps: f32, rows: usize, parallel: bool) {
    let d = w.len();
    let (x, y) = (&x[..rows * d], &mut y[..rows * d]);
    if d == 0 || rows == 0 {
        return;
    }
    if !parallel {
        return forward_rows(x, w, y, eps);
    }
    let step = rows_per_task(rows, d) * d;
    y.par_chunks_mut(step)
        .zip(x.par_chunks(step))
        .for_each(|(y, x)| forward_rows(x, w, y, eps));
}
