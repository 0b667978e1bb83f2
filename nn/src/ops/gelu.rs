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
    if super::kernel_path("gelu", x) {
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
    /// `y = gelu(x)` elementwise, one thread.
    fn forward_chunk(x: &[f32], y: &mut [f32]) {
        for (y, &x) in y.iter_mut().zip(x) {
            let u = SQRT_2_OVER_PI * (x + COEF * x * x * x);
            *y = 0.5 * x * (1.0 + math::tanh(u));
        }
    }
}

simd_kernel! {
    /// `dx = gelu'(x) · dy` elementwise, one thread.
    fn backward_chunk(x: &[f32], dy: &[f32], dx: &mut [f32]) {
        for ((dx, &x), &dy) in dx.iter_mut().zip(x).zip(dy) {
            let x2 = x * x;
            let t = math::tanh(SQRT_2_OVER_PI * (x + COEF * x2 * x));
            let du = SQRT_2_OVER_PI * (1.0 + 3.0 * COEF * x2);
            *dx = dy * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du);
        }
    }
}

simd_kernel! {
    /// `y = gelu(x)` and its `tanh u` term `t` (for [`backward_from_tanh_chunk`]), one thread.
    fn forward_keep_chunk(x: &[f32], y: &mut [f32], t: &mut [f32]) {
        for ((y, t), &x) in y.iter_mut().zip(t.iter_mut()).zip(x) {
            let u = SQRT_2_OVER_PI * (x + COEF * x * x * x);
            *t = math::tanh(u);
            *y = 0.5 * x * (1.0 + *t);
        }
    }
}

simd_kernel! {
    /// [`backward_chunk`] with `tanh u` from the forward pass instead of recomputed (no `exp`;
    /// equal to rounding: the forward forms `x³` in another order).
    fn backward_from_tanh_chunk(x: &[f32], t: &[f32], dy: &[f32], dx: &mut [f32]) {
        for (((dx, &x), &t), &dy) in dx.iter_mut().zip(x).zip(t).zip(dy) {
            let x2 = x * x;
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
        forward(&x, &mut y, true);
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle::CudaStorage,
        l: &Layout,
    ) -> candle::Result<(candle::CudaStorage, Shape)> {
        use crate::ops::gpu::{cuda, launches};
        let n = l.shape().elem_count();
        let y = cuda::with_output(self.name(), [(s, l)], n, None, |k, ty, [x], y| {
            launches::gelu_forward(k, ty, [x, cuda::address_at(y, 0)?], n)
        })?;
        Ok((y, l.shape().clone()))
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
        backward(&x, &dy, &mut dx, true);
        Ok((CpuStorage::F32(dx), xl.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &candle::CudaStorage,
        xl: &Layout,
        gs: &candle::CudaStorage,
        gl: &Layout,
    ) -> candle::Result<(candle::CudaStorage, Shape)> {
        use crate::ops::gpu::{cuda, launches};
        let n = xl.shape().elem_count();
        let dx = cuda::with_output(
            self.name(),
            [(xs, xl), (gs, gl)],
            n,
            None,
            |k, ty, [x, dy], dx| {
                launches::gelu_backward(k, ty, [x, dy, cuda::address_at(dx, 0)?], n)
            },
        )?;
        Ok((dx, xl.shape().clone()))
    }
}

/// `y = gelu(x)` over equal-length slices, in parallel chunks when `parallel`.
pub fn forward(x: &[f32], y: &mut [f32], parallel: bool) {
    if !parallel {
        return forward_chunk(x, y);
    }
    y.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(y, x)| forward_chunk(x, y));
}

/// `dx = gelu'(x) · dy` over equal-length slices, in parallel chunks when `parallel`.
pub fn backward(x: &[f32], dy: &[f32], dx: &mut [f32], parallel: bool) {
    if !parallel {
        return backward_chunk(x, dy, dx);
    }
    dx.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK).zip(dy.par_chunks(CHUNK)))
        .for_each(|(dx, (x, dy))| backward_chunk(x, dy, dx));
}

/// [`forward`] also keeping `tanh u` in `t`, for [`backward_from_tanh`] (a pass that owns its
/// buffers trades the memory for the backward's `exp`).
pub fn forward_keep(x: &[f32], y: &mut [f32], t: &mut [f32], parallel: bool) {
    if !parallel {
        return forward_keep_chunk(x, y, t);
    }
    y.par_chunks_mut(CHUNK)
        .zip(t.par_chunks_mut(CHUNK))
        .zip(x.par_chunks(CHUNK))
        .for_each(|((y, t), x)| forward_keep_chunk(x, y, t));
}

/// [`backward`] from the `tanh u` that [`forward_keep`] kept.
pub fn backward_from_tanh(x: &[f32], t: &[f32], dy: &[f32], dx: &mut [f32], parallel: bool) {
    if !parallel {
        return backward_from_tanh_chunk(x, t, dy, dx);
    }
    dx.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK).zip(t.par_chunks(CHUNK)))
        .zip(dy.par_chunks(CHUNK))
        .for_each(|((dx, (x, t)), dy)| backward_from_tanh_chunk(x, t, dy, dx));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keeping `tanh u` changes no bit of the forward, and the backward only by rounding: the
    /// recomputing backward forms `x³` in another order (`(c x²) x` vs `((c x) x) x`).
    #[test]
    fn kept_tanh_gives_the_same_values() {
        let x: Vec<f32> = (0..40_000).map(|i| (i as f32 - 20_000.0) * 4e-4).collect();
        let dy: Vec<f32> = (0..40_000)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.01)
            .collect();
        for parallel in [false, true] {
            let (mut y, mut y_kept, mut t) = (
                vec![0f32; x.len()],
                vec![0f32; x.len()],
                vec![0f32; x.len()],
            );
            forward(&x, &mut y, parallel);
            forward_keep(&x, &mut y_kept, &mut t, parallel);
            assert_eq!(y, y_kept);
            let (mut dx, mut dx_kept) = (vec![0f32; x.len()], vec![0f32; x.len()]);
            backward(&x, &dy, &mut dx, parallel);
            backward_from_tanh(&x, &t, &dy, &mut dx_kept, parallel);
            // Relative to dy: where tanh saturates, 1 - t² cancels and amplifies t's last bit.
            for (((a, b), x), g) in dx.iter().zip(&dx_kept).zip(&x).zip(&dy) {
                assert!(
                    (a - b).abs() <= 1e-5 * g.abs().max(1e-3),
                    "x {x}: {a} vs {b}"
                );
            }
        }
    }
}
