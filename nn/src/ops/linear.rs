//! The linear layer `y = x Wᵀ + b` as one op with its own backward (issue 25):
//!
//! ```text
//! forward:  y  = b (row-broadcast) + x Wᵀ          one gemm, the bias is the accumulator
//! backward: dx = dy W,   dW = dyᵀ x,   db = Σ_rows dy
//! ```
//!
//! Composed from stock candle ops the same layer costs a broadcast bias add on candle's own
//! elementwise thread pool, a single-threaded strided reduction for the bias gradient, and a
//! transposed `(in, out)` weight gradient that candle's backprop then copies into place. Here
//! the transposes are gemm strides, the weight gradient is written `(out, in)` as the weight
//! is stored, and the bias gradient is a parallel row sum. All three gradients come out of one
//! buffer `[dx | dW | db]` (as the norms' backward does).
//!
//! `x` may have any leading dims and any layout (gathered once when strided); `W` is
//! `(out, in)` like `torch.nn.Linear`.

use crate::candle::{self, CpuStorage, CustomOp3, Layout, Shape, Tensor, D};
use crate::ops::few_rows::{self, FEW_ROWS};
use crate::ops::layout::{f32_data, rows_per_task};
use crate::rayon::prelude::*;
use llmlab_plugin_api::gemm;

/// Products below this many multiply-adds run single-threaded (rayon's hand-off costs more).
const PARALLEL_GEMM_MIN: usize = 1 << 18;

/// `x Wᵀ + b` for `x` `(..., in)`, `weight` `(out, in)`, `bias` `(out,)`; fused on CPU f32,
/// composed from candle ops otherwise.
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> candle::Result<Tensor> {
    let (out_dim, in_dim) = weight.dims2()?;
    if x.dim(D::Minus1)? != in_dim {
        candle::bail!(
            "linear: input width {} does not match the weight's {in_dim} (weight {:?})",
            x.dim(D::Minus1)?,
            weight.dims()
        )
    }
    if let Some(b) = bias {
        if b.dims() != [out_dim] {
            candle::bail!("linear: bias must be ({out_dim},), got {:?}", b.dims())
        }
    }
    let fused =
        super::fused_path(x) && super::fused_path(weight) && bias.is_none_or(super::fused_path);
    if !fused {
        return linear_reference(x, weight, bias);
    }
    // Without a bias the weight stands in as the third argument (never read, no gradient).
    x.apply_op3(
        weight,
        bias.unwrap_or(weight),
        FusedLinear {
            has_bias: bias.is_some(),
        },
    )
}

/// The composed path: candle's own `Linear` (matmul with `Wᵀ`, broadcast bias add).
pub fn linear_reference(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
) -> candle::Result<Tensor> {
    use crate::candle::Module;
    llmlab_plugin_api::candle_nn::Linear::new(weight.clone(), bias.cloned()).forward(x)
}

/// `dst (m×n) = [dst +] lhs (m×k) · rhs (k×n)`, `(row, column)` strides in elements; threaded
/// over the runtime's rayon pool when `parallel` and the product is big enough.
///
/// # Safety
/// Every pointer with its strides must address valid `f32`s for the given sizes.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_into(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    accumulate: bool,
    lhs: &[f32],
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: &[f32],
    (rhs_rs, rhs_cs): (usize, usize),
    parallel: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    let threads = crate::rayon::current_num_threads();
    let parallelism = if parallel && threads > 1 && m * n * k >= PARALLEL_GEMM_MIN {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: forwarded from the caller; dst is contiguous row-major (m, n).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// The sizes of one linear layer's products: `rows` inputs of width `in_dim`, `out_dim` outputs.
#[derive(Debug, Clone, Copy)]
pub struct LinearDims {
    pub rows: usize,
    pub in_dim: usize,
    pub out_dim: usize,
}

impl LinearDims {
    fn check(&self, x: usize, w: usize, y: usize, what: &str) {
        let LinearDims {
            rows,
            in_dim,
            out_dim,
        } = *self;
        assert!(
            x >= rows * in_dim && w >= out_dim * in_dim && y >= rows * out_dim,
            "linear {what}: buffers ({x}, {w}, {y}) too small for {self:?}"
        );
    }
}

/// Forward product `y (rows, out) = [y +] x (rows, in) · Wᵀ`, `W` `(out, in)` read transposed by
/// strides. `parallel`: gemm may thread over the rayon pool (false inside a task that already
/// runs beside others, e.g. a row-parallel part).
pub fn forward_product(
    dims: LinearDims,
    x: &[f32],
    w: &[f32],
    y: &mut [f32],
    accumulate: bool,
    parallel: bool,
) {
    dims.check(x.len(), w.len(), y.len(), "forward");
    let LinearDims {
        rows,
        in_dim,
        out_dim,
    } = dims;
    // SAFETY: sizes checked above; W (out, in) read as Wᵀ (in, out) by swapped strides.
    unsafe {
        gemm_into(
            (rows, out_dim, in_dim),
            &mut y[..rows * out_dim],
            accumulate,
            x,
            (in_dim, 1),
            w,
            (1, in_dim),
            parallel,
        )
    }
}

/// Input gradient `dx (rows, in) = [dx +] dy (rows, out) · W (out, in)`.
pub fn input_grad(
    dims: LinearDims,
    dy: &[f32],
    w: &[f32],
    dx: &mut [f32],
    accumulate: bool,
    parallel: bool,
) {
    dims.check(dx.len(), w.len(), dy.len(), "input gradient");
    let LinearDims {
        rows,
        in_dim,
        out_dim,
    } = dims;
    // SAFETY: sizes checked above; all row-major.
    unsafe {
        gemm_into(
            (rows, in_dim, out_dim),
            &mut dx[..rows * in_dim],
            accumulate,
            dy,
            (out_dim, 1),
            w,
            (in_dim, 1),
            parallel,
        )
    }
}

/// Weight gradient `dW (out, in) = [dW +] dyᵀ · x`, stored `(out, in)` as the weight is; `dyᵀ`
/// by strides.
pub fn weight_grad(
    dims: LinearDims,
    dy: &[f32],
    x: &[f32],
    dw: &mut [f32],
    accumulate: bool,
    parallel: bool,
) {
    dims.check(x.len(), dw.len(), dy.len(), "weight gradient");
    let LinearDims {
        rows,
        in_dim,
        out_dim,
    } = dims;
    // SAFETY: sizes checked above; dy (rows, out) read as dyᵀ (out, rows) by swapped strides.
    unsafe {
        gemm_into(
            (out_dim, in_dim, rows),
            &mut dw[..out_dim * in_dim],
            accumulate,
            dy,
            (1, out_dim),
            x,
            (in_dim, 1),
            parallel,
        )
    }
}

/// Writes `b` into every row of `y` (rows of `b.len()`): the bias as the forward gemm's
/// accumulator.
pub fn fill_rows(y: &mut [f32], b: &[f32], parallel: bool) {
    let out_dim = b.len();
    if out_dim == 0 || y.is_empty() {
        return;
    }
    let fill = |y: &mut [f32]| {
        y.chunks_exact_mut(out_dim)
            .for_each(|r| r.copy_from_slice(b))
    };
    if parallel {
        let rows = y.len() / out_dim;
        y.par_chunks_mut(rows_per_task(rows, out_dim) * out_dim)
            .for_each(fill);
    } else {
        fill(y);
    }
}

/// Bias gradient: the column sums of `dy` (rows of `db.len()`) written into `db`. Parallel
/// tasks sum their own rows and the partial sums are added in chunk order, so the bits do not
/// depend on work stealing.
pub fn bias_grad(dy: &[f32], db: &mut [f32], parallel: bool) {
    let out_dim = db.len();
    db.fill(0.0);
    if out_dim == 0 || dy.is_empty() {
        return;
    }
    if !parallel {
        add_rows(dy, db);
        return;
    }
    let rows = dy.len() / out_dim;
    let step = rows_per_task(rows, out_dim) * out_dim;
    let sums = dy
        .par_chunks(step)
        .map(|dy| {
            let mut s = vec![0f32; out_dim];
            add_rows(dy, &mut s);
            s
        })
        .collect::<Vec<_>>();
    // In chunk order, not along rayon's reduction tree (see layer_norm's backward).
    for s in sums {
        db.iter_mut().zip(&s).for_each(|(a, b)| *a += b);
    }
}

fn rows_of(layout: &Layout, width: usize) -> usize {
    layout.shape().elem_count().checked_div(width).unwrap_or(0)
}

struct FusedLinear {
    has_bias: bool,
}

impl CustomOp3 for FusedLinear {
    fn name(&self) -> &'static str {
        "fused-linear"
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
        let (out_dim, in_dim) = wl.shape().dims2()?;
        let rows = rows_of(xl, in_dim);
        if (2..=FEW_ROWS).contains(&rows) {
            let b = self
                .has_bias
                .then(|| f32_data(bs, bl, self.name()))
                .transpose()?;
            let y = few_rows::forward(&x, &w, b.as_deref(), rows, in_dim, out_dim);
            let mut dims = xl.dims().to_vec();
            *dims.last_mut().expect("linear input has a last dim") = out_dim;
            return Ok((CpuStorage::F32(y), Shape::from(dims)));
        }
        let mut y = vec![0f32; rows * out_dim];
        if self.has_bias {
            fill_rows(&mut y, &f32_data(bs, bl, self.name())?, true);
        }
        let dims = LinearDims {
            rows,
            in_dim,
            out_dim,
        };
        forward_product(dims, &x, &w, &mut y, self.has_bias, true);
        let mut dims = xl.dims().to_vec();
        *dims.last_mut().expect("linear input has a last dim") = out_dim;
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, nw) = (x.elem_count(), w.elem_count());
        let out_dim = w.dim(0)?;
        let all = x.apply_op3_no_bwd(
            w,
            dy,
            &LinearBackward {
                has_bias: self.has_bias,
            },
        )?;
        let dx = all.narrow(0, 0, n)?.reshape(x.shape())?;
        let dw = all.narrow(0, n, nw)?.reshape(w.shape())?;
        let db = self
            .has_bias
            .then(|| all.narrow(0, n + nw, out_dim))
            .transpose()?;
        Ok((Some(dx), Some(dw), db))
    }
}

/// The backward of [`FusedLinear`] on `(x, W, dy)`: one buffer `[dx | dW | db]` (no `db`
/// without a bias).
struct LinearBackward {
    has_bias: bool,
}

impl CustomOp3 for LinearBackward {
    fn name(&self) -> &'static str {
        "fused-linear-backward"
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
        let (out_dim, in_dim) = wl.shape().dims2()?;
        let rows = rows_of(xl, in_dim);
        let (n, nw) = (rows * in_dim, out_dim * in_dim);
        let nb = if self.has_bias { out_dim } else { 0 };
        let mut out = vec![0f32; n + nw + nb];
        let (dx, rest) = out.split_at_mut(n);
        let (dw, db) = rest.split_at_mut(nw);
        let dims = LinearDims {
            rows,
            in_dim,
            out_dim,
        };
        input_grad(dims, &dy, &w, dx, false, true);
        weight_grad(dims, &dy, &x, dw, false, true);
        if self.has_bias {
            bias_grad(&dy, db, true);
        }
        Ok((CpuStorage::F32(out), Shape::from(n + nw + nb)))
    }
}

crate::ops::math::simd_kernel! {
    /// Adds every row of `rows` (row length `sum.len()`) into `sum`.
    fn add_rows(rows: &[f32], sum: &mut [f32]) {
        for row in rows.chunks_exact(sum.len()) {
            for (s, &v) in sum.iter_mut().zip(row) {
                *s += v;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::candle::Device;
    use crate::ops::few_rows::tests::values;

    /// The public op at few rows (bias, a leading batch dim) agrees with candle's matmul path to
    /// the same tolerance as the op's other checks (2e-5 of the largest output).
    #[test]
    fn few_rows_agree_with_candle_through_the_op() -> candle::Result<()> {
        let (in_dim, out_dim) = (97, 45);
        let w = Tensor::from_vec(values(out_dim * in_dim, 6), (out_dim, in_dim), &Device::Cpu)?;
        let b = Tensor::from_vec(values(out_dim, 7), out_dim, &Device::Cpu)?;
        for rows in [2, 3, 5, 8, 13, 16] {
            let x = Tensor::from_vec(values(rows * in_dim, 8), (1, rows, in_dim), &Device::Cpu)?;
            let ours = linear(&x, &w, Some(&b))?;
            let theirs = linear_reference(&x, &w, Some(&b))?;
            assert_eq!(ours.dims(), [1, rows, out_dim]);
            let scale = theirs.abs()?.max_all()?.to_scalar::<f32>()?;
            let diff = (ours - theirs)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(
                diff <= 2e-5 * scale,
                "rows {rows}: max diff {diff}, scale {scale}"
            );
        }
        Ok(())
    }
}
