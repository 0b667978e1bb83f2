//! SwiGLU's gated product (Shazeer 2020, Llama's MLP): `y = silu(gate) · up` with
//! `silu(g) = g σ(g)`, in one pass; the backward gives both gradients in one pass:
//!
//! ```text
//! d_up   = dy · silu(g)
//! d_gate = dy · up · σ(g) (1 + g (1 - σ(g)))
//! ```

use crate::candle::{self, CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use crate::ops::layout::f32_data;
use crate::ops::math::{self, simd_kernel};
use crate::rayon::prelude::*;

const CHUNK: usize = 1 << 14;

/// `silu(gate) * up` (same shapes); fused on CPU f32, composed otherwise.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> candle::Result<Tensor> {
    if gate.shape() != up.shape() {
        candle::bail!(
            "swiglu: gate {:?} and up {:?} must have the same shape",
            gate.dims(),
            up.dims()
        )
    }
    if super::kernel_path_all("swiglu", &[gate, up]) {
        gate.apply_op2(up, SwiGlu)
    } else {
        swiglu_reference(gate, up)
    }
}

/// The composed path from stock differentiable ops.
pub fn swiglu_reference(gate: &Tensor, up: &Tensor) -> candle::Result<Tensor> {
    gate.silu()? * up
}

simd_kernel! {
    /// `y = silu(g) · u` elementwise, one thread.
    fn forward_chunk(g: &[f32], u: &[f32], y: &mut [f32]) {
        for ((y, &g), &u) in y.iter_mut().zip(g).zip(u) {
            *y = g * math::sigmoid(g) * u;
        }
    }
}

simd_kernel! {
    /// Both gradients of `silu(g) · u` from `dy`, elementwise, one thread.
    fn backward_chunk(g: &[f32], u: &[f32], dy: &[f32], dg: &mut [f32], du: &mut [f32]) {
        for ((((dg, du), &g), &u), &dy) in dg.iter_mut().zip(du.iter_mut()).zip(g).zip(u).zip(dy) {
            let s = math::sigmoid(g);
            *du = dy * g * s;
            *dg = dy * u * s * (1.0 + g * (1.0 - s));
        }
    }
}

struct SwiGlu;

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "fused-swiglu"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        us: &CpuStorage,
        ul: &Layout,
    ) -> candle::Result<(CpuStorage, Shape)> {
        let g = f32_data(gs, gl, self.name())?;
        let u = f32_data(us, ul, self.name())?;
        let mut y = vec![0f32; g.len()];
        forward(&g, &u, &mut y, true);
        Ok((CpuStorage::F32(y), gl.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        gs: &candle::CudaStorage,
        gl: &Layout,
        us: &candle::CudaStorage,
        ul: &Layout,
    ) -> candle::Result<(candle::CudaStorage, Shape)> {
        use crate::ops::gpu::{cuda, launches};
        let n = gl.shape().elem_count();
        let y = cuda::with_output(
            self.name(),
            [(gs, gl), (us, ul)],
            n,
            None,
            |k, ty, [g, u], y| launches::swiglu_forward(k, ty, [g, u, cuda::address_at(y, 0)?], n),
        )?;
        Ok((y, gl.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle::Result<(Option<Tensor>, Option<Tensor>)> {
        let n = gate.elem_count();
        // One buffer [d_gate | d_up], split by views.
        let both = gate.apply_op3_no_bwd(up, dy, &SwiGluBackward)?;
        let d_gate = both.narrow(0, 0, n)?.reshape(gate.shape())?;
        let d_up = both.narrow(0, n, n)?.reshape(up.shape())?;
        Ok((Some(d_gate), Some(d_up)))
    }
}

struct SwiGluBackward;

impl CustomOp3 for SwiGluBackward {
    fn name(&self) -> &'static str {
        "fused-swiglu-backward"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        us: &CpuStorage,
        ul: &Layout,
        ds: &CpuStorage,
        dl: &Layout,
    ) -> candle::Result<(CpuStorage, Shape)> {
        let g = f32_data(gs, gl, self.name())?;
        let u = f32_data(us, ul, self.name())?;
        let dy = f32_data(ds, dl, self.name())?;
        let n = g.len();
        let mut out = vec![0f32; 2 * n];
        let (dg, du) = out.split_at_mut(n);
        backward(&g, &u, &dy, dg, du, true);
        Ok((CpuStorage::F32(out), Shape::from(2 * n)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        gs: &candle::CudaStorage,
        gl: &Layout,
        us: &candle::CudaStorage,
        ul: &Layout,
        ds: &candle::CudaStorage,
        dl: &Layout,
    ) -> candle::Result<(candle::CudaStorage, Shape)> {
        use crate::ops::gpu::{cuda, launches};
        let n = gl.shape().elem_count();
        let inputs = [(gs, gl), (us, ul), (ds, dl)];
        let out = cuda::with_output(
            self.name(),
            inputs,
            2 * n,
            None,
            |k, ty, [g, u, dy], out| {
                let (dg, du) = (cuda::address_at(out, 0)?, cuda::address_at(out, n)?);
                launches::swiglu_backward(k, ty, [g, u, dy, dg, du], n)
            },
        )?;
        Ok((out, Shape::from(2 * n)))
    }
}

/// `y = silu(g) · u` over equal-length slices, in parallel chunks when `parallel`.
pub fn forward(g: &[f32], u: &[f32], y: &mut [f32], parallel: bool) {
    if !parallel {
        return forward_chunk(g, u, y);
    }
    y.par_chunks_mut(CHUNK)
        .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)))
        .for_each(|(y, (g, u))| forward_chunk(g, u, y));
}

/// `dg`, `du` of `silu(g) · u` from `dy`, in parallel chunks when `parallel`.
pub fn backward(g: &[f32], u: &[f32], dy: &[f32], dg: &mut [f32], du: &mut [f32], parallel: bool) {
    if !parallel {
        return backward_chunk(g, u, dy, dg, du);
    }
    dg.par_chunks_mut(CHUNK)
        .zip(du.par_chunks_mut(CHUNK))
        .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)))
        .zip(dy.par_chunks(CHUNK))
        .for_each(|(((dg, du), (g, u)), dy)| backward_chunk(g, u, dy, dg, du));
}
