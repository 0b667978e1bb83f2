//! LayerNorm (Ba et al. 2016) over the last dimension, `y = (x - μ) / √(σ² + ε) · w + b`, with
//! its backward in one pass per row (μ and 1/σ recomputed from `x`, cheaper than storing them):
//!
//! ```text
//! x̂ = (x - μ) r,  g = dy ⊙ w,  dx = r (g - mean(g) - x̂ mean(g ⊙ x̂)),  dw = Σ dy ⊙ x̂,  db = Σ dy
//! ```
//!
//! Rows run in parallel; each task sums its own `dw`/`db` and the partial sums are added.

use crate::candle::{self, CpuStorage, CustomOp3, Layout, Shape, Tensor, D};
use crate::ops::layout::{f32_data, rows_and_len, rows_per_task};
use crate::ops::math::{self, simd_kernel};
use crate::rayon::prelude::*;

/// LayerNorm of `x` `(..., d)` with `weight` `(d,)` and optional `bias` `(d,)`; fused on CPU
/// f32, composed otherwise.
pub fn layer_norm(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    eps: f64,
) -> candle::Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    super::check_gain("layer_norm", weight, d)?;
    if let Some(b) = bias {
        super::check_gain("layer_norm bias", b, d)?;
    }
    let fused = match bias {
        Some(b) => super::kernel_path_all("layer_norm", &[x, weight, b]),
        None => super::kernel_path_all("layer_norm", &[x, weight]),
    };
    if !fused {
        return layer_norm_reference(x, weight, bias, eps);
    }
    let op = LayerNorm {
        eps: eps as f32,
        has_bias: bias.is_some(),
    };
    // Without a bias the weight stands in as the third operand; it is not read.
    x.apply_op3(weight, bias.unwrap_or(weight), op)
}

/// The composed path from stock differentiable ops.
pub fn layer_norm_reference(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    eps: f64,
) -> candle::Result<Tensor> {
    let centered = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centered.broadcast_div(&(var + eps)?.sqrt()?)?;
    let scaled = normed.broadcast_mul(weight)?;
    match bias {
        Some(b) => scaled.broadcast_add(b),
        None => Ok(scaled),
    }
}

/// `(μ, 1/√(σ² + ε))` of one row.
#[inline(always)]
fn stats(x: &[f32], eps: f32) -> (f32, f32) {
    let n = x.len() as f32;
    let mean = math::sum(x) / n;
    let var = math::sum_sq_dev(x, mean) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

simd_kernel! {
    /// LayerNorm of the rows of `x` (rows of `w.len()`) into `y`, one thread.
    fn forward_rows(x: &[f32], w: &[f32], b: Option<&[f32]>, y: &mut [f32], eps: f32) {
        let d = w.len();
        for (x, y) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)) {
            let (mean, r) = stats(x, eps);
            match b {
                Some(b) => {
                    for (((y, &x), &w), &b) in y.iter_mut().zip(x).zip(w).zip(b) {
                        *y = (x - mean) * r * w + b;
                    }
                }
                None => {
                    for ((y, &x), &w) in y.iter_mut().zip(x).zip(w) {
                        *y = (x - mean) * r * w;
                    }
                }
            }
        }
    }
}

simd_kernel! {
    /// `dx` of the rows, and their contributions added into `dw`, `db`; one thread.
    fn backward_rows(x: &[f32], w: &[f32], dy: &[f32], dx: &mut [f32], dw: &mut [f32], db: &mut [f32], eps: f32) {
        let d = w.len();
        let n = d as f32;
        for ((x, dy), dx) in x.chunks_exact(d).zip(dy.chunks_exact(d)).zip(dx.chunks_exact_mut(d)) {
            let (mean, r) = stats(x, eps);
            let g_sum = math::dot(dy, w);
            // Σ g x̂ = r (Σ dy w x - μ Σ dy w)
            let gx_sum = r * (math::dot3(dy, w, x) - mean * g_sum);
            let (a, c) = (g_sum / n, gx_sum / n);
            for (((dx, &x), &dy), &w) in dx.iter_mut().zip(x).zip(dy).zip(w) {
                let xh = (x - mean) * r;
                *dx = r * (dy * w - a - xh * c);
            }
            for (((dw, db), &x), &dy) in dw.iter_mut().zip(db.iter_mut()).zip(x).zip(dy) {
                *dw += dy * (x - mean) * r;
                *db += dy;
            }
        }
    }
}

struct LayerNorm {
    eps: f32,
    has_bias: bool,
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "fused-layer-norm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> candle::Result<(CpuStorage, Shape)> {
        let x = f32_data(xs, xl, self.name())?;
        let w = f32_data(ws, wl, self.name())?;
        let b = f32_data(bs, bl, self.name())?;
        let b = self.has_bias.then_some(&b[..]);
        let (rows, d) = rows_and_len(xl);
        let mut y = vec![0f32; x.len()];
        if d > 0 {
            forward(&x, &w, b, &mut y, self.eps, rows, true);
        }
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &candle::CudaStorage,
        xl: &Layout,
        ws: &candle::CudaStorage,
        wl: &Layout,
        bs: &candle::CudaStorage,
        bl: &Layout,
    ) -> candle::Result<(candle::CudaStorage, Shape)> {
        use crate::ops::gpu::{cuda, launches};
        let (rows, d) = rows_and_len(xl);
        let inputs = [(xs, xl), (ws, wl), (bs, bl)];
        let y = cuda::with_output(
            self.name(),
            inputs,
            rows * d,
            None,
            |k, ty, [x, w, b], y| {
                let b = self.has_bias.then_some(b);
                let y = cuda::address_at(y, 0)?;
                launches::norm_forward(k, ty, [x, w, y], b, rows, d, self.eps, false)
            },
        )?;
        Ok((y, xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, d) = (x.elem_count(), w.elem_count());
        let all = x.apply_op3_no_bwd(
            w,
            dy,
            &NormBackward {
                eps: self.eps,
                rms: false,
            },
        )?;
        let dx = all.narrow(0, 0, n)?.reshape(x.shape())?;
        let dw = all.narrow(0, n, d)?.reshape(w.shape())?;
        let db = self
            .has_bias
            .then(|| all.narrow(0, n + d, d)?.reshape(w.shape()))
            .transpose()?;
        Ok((Some(dx), Some(dw), db))
    }
}

/// The backward of LayerNorm and RMSNorm: one buffer `[dx | dw | db]` (RMSNorm: no `db`).
pub(crate) struct NormBackward {
    pub eps: f32,
    pub rms: bool,
}

impl CustomOp3 for NormBackward {
    fn name(&self) -> &'static str {
        "fused-norm-backward"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> candle::Result<(CpuStorage, Shape)> {
        let x = f32_data(xs, xl, self.name())?;
        let w = f32_data(ws, wl, self.name())?;
        let dy = f32_data(gs, gl, self.name())?;
        let (rows, d) = rows_and_len(xl);
        let n = x.len();
        let mut out = vec![0f32; n + 2 * d];
        let (dx, rest) = out.split_at_mut(n);
        if d > 0 {
            let (dw, db) = rest.split_at_mut(d);
            let db = (!self.rms).then_some(db);
            backward(&x, &w, &dy, dx, dw, db, self.eps, rows, self.rms, true);
        }
        Ok((CpuStorage::F32(out), Shape::from(n + 2 * d)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &candle::CudaStorage,
        xl: &Layout,
        ws: &candle::CudaStorage,
        wl: &Layout,
        gs: &candle::CudaStorage,
        gl: &Layout,
    ) -> candle::Result<(candle::CudaStorage, Shape)> {
        use crate::ops::gpu::{cuda, launches};
        let (rows, d) = rows_and_len(xl);
        let n = rows * d;
        let inputs = [(xs, xl), (ws, wl), (gs, gl)];
        // db is written for RMSNorm too (sums of dy, unused), so no byte of the buffer is left
        // uninitialised.
        let out = cuda::with_output(
            self.name(),
            inputs,
            n + 2 * d,
            None,
            |k, ty, [x, w, dy], out| {
                let [dx, dw, db] = [0, n, n + d].map(|i| cuda::address_at(out, i));
                launches::norm_backward(
                    k,
                    ty,
                    [x, w, dy, dx?, dw?],
                    Some(db?),
                    rows,
                    d,
                    self.eps,
                    self.rms,
                )
            },
        )?;
        Ok((out, Shape::from(n + 2 * d)))
    }
}

/// LayerNorm of `rows` rows of `x` (rows of `w.len()`) into `y`, in parallel tasks of whole rows
/// when `parallel`.
pub fn forward(
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    y: &mut [f32],
    eps: f32,
    rows: usize,
    parallel: bool,
) {
    let d = w.len();
    let (x, y) = (&x[..rows * d], &mut y[..rows * d]);
    if d == 0 || rows == 0 {
        return;
    }
    if !parallel {
        return forward_rows(x, w, b, y, eps);
    }
    let step = rows_per_task(rows, d) * d;
    y.par_chunks_mut(step)
        .zip(x.par_chunks(step))
        .for_each(|(y, x)| forward_rows(x, w, b, y, eps));
}

/// The backward of LayerNorm or (`rms`) RMSNorm over `rows` rows: `dx` written, `dw` and
/// (LayerNorm with a bias) `db` overwritten with the rows' sums. Parallel tasks sum their own
/// rows and the partial sums are added in chunk order, not along rayon's reduction tree, whose
/// shape follows work stealing: the same step gives the same bits whatever the machine's load.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    dw: &mut [f32],
    mut db: Option<&mut [f32]>,
    eps: f32,
    rows: usize,
    rms: bool,
    parallel: bool,
) {
    let d = w.len();
    let (x, dy, dx) = (&x[..rows * d], &dy[..rows * d], &mut dx[..rows * d]);
    dw.fill(0.0);
    if let Some(db) = db.as_deref_mut() {
        db.fill(0.0);
    }
    if d == 0 || rows == 0 {
        return;
    }
    let run = |x: &[f32], dy: &[f32], dx: &mut [f32], dw: &mut [f32], db: &mut [f32]| {
        if rms {
            super::rms_norm::backward_rows(x, w, dy, dx, dw, eps);
        } else {
            backward_rows(x, w, dy, dx, dw, db, eps);
        }
    };
    let scratch = |rms: bool| vec![0f32; if rms { 0 } else { d }];
    if !parallel {
        // Zeroed outputs plus one task's rows: the same bits as one task's partial sum below.
        match db {
            Some(db) => run(x, dy, dx, dw, db),
            None => run(x, dy, dx, dw, &mut scratch(rms)),
        }
        return;
    }
    let step = rows_per_task(rows, d) * d;
    let partial = dx
        .par_chunks_mut(step)
        .zip(x.par_chunks(step).zip(dy.par_chunks(step)))
        .map(|(dx, (x, dy))| {
            let (mut tw, mut tb) = (vec![0f32; d], scratch(rms));
            run(x, dy, dx, &mut tw, &mut tb);
            (tw, tb)
        })
        .collect::<Vec<_>>();
    for (tw, tb) in partial {
        dw.iter_mut().zip(&tw).for_each(|(a, b)| *a += b);
        if let Some(db) = db.as_deref_mut() {
            db.iter_mut().zip(&tb).for_each(|(a, b)| *a += b);
        }
    }
}
