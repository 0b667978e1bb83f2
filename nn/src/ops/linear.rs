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

/// `dst (m×n) = [dst +] lhs (m×k) · rhs (k×n)`, `(row, column)` strides in elements, threaded
/// over the runtime's rayon pool when the product is big enough.
///
/// # Safety
/// Every pointer with its strides must address valid `f32`s for the given sizes.
unsafe fn gemm_into(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    accumulate: bool,
    lhs: &[f32],
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: &[f32],
    (rhs_rs, rhs_cs): (usize, usize),
) {
    if m == 0 || n == 0 {
        return;
    }
    let threads = crate::rayon::current_num_threads();
    let parallelism = if threads > 1 && m * n * k >= PARALLEL_GEMM_MIN {
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

/// Up to this many rows (2 or more: one row is gemm's own fast matrix-vector path) the forward
/// is [`few_rows_forward`]: gemm's blocked kernels cost 10-80x the multiply-adds at 2-16 rows of
/// the decoding shapes (`nn/examples/decode_probe.rs`, docs/kernels.md "Few rows").
const FEW_ROWS: usize = 16;

/// `y = x Wᵀ + b` for a few rows (batched decoding): each weight row is read once and dotted
/// with every input row while it is in L1, output rows in parallel chunks; computed as `yᵀ`
/// and transposed (a few rows × `out` copy).
fn few_rows_forward(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    rows: usize,
    in_dim: usize,
    out_dim: usize,
) -> Vec<f32> {
    let mut yt = vec![0f32; out_dim * rows];
    // ~64k multiply-adds per task: smaller tasks cost rayon more than they save.
    let outputs_per_task = (65_536 / (rows * in_dim).max(1)).max(1);
    yt.par_chunks_mut(outputs_per_task * rows)
        .enumerate()
        .for_each(|(task, yt)| {
            let first = task * outputs_per_task;
            dot_rows(x, &w[first * in_dim..], yt, rows, in_dim);
        });
    let mut y = vec![0f32; rows * out_dim];
    for (r, y) in y.chunks_exact_mut(out_dim).enumerate() {
        for (o, y) in y.iter_mut().enumerate() {
            *y = yt[o * rows + r] + bias.map_or(0.0, |b| b[o]);
        }
    }
    y
}

/// Lanes per accumulator of the few-rows dots: one AVX2 register.
const DOT_LANES: usize = 8;

/// `yt[o·rows + r] = x_r · w_o` for the `yt.len() / rows` weight rows at the start of `w`.
///
/// Every (weight row, input row) pair is summed in the same order — 8 lanes over the
/// `in_dim / 8` chunks in sequence, the lanes left to right, then the tail — whichever path and
/// block computes it, so a row's output does not depend on how many rows share the call. The
/// paths differ only in rounding: the AVX2 one fuses each multiply-add.
fn dot_rows(x: &[f32], w: &[f32], yt: &mut [f32], rows: usize, in_dim: usize) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features `dot_rows_fma` was compiled for.
        return unsafe { fma::dot_rows_fma(x, w, yt, rows, in_dim) };
    }
    dot_rows_portable(x, w, yt, rows, in_dim)
}

crate::ops::math::simd_kernel! {
    /// [`dot_rows`] one pair at a time with a separate multiply and add: the path for CPUs
    /// without FMA. (Written as plain-array register blocks, the compiler vectorised only some
    /// block shapes and left the rest scalar, 5-7x slower than one dot at a time; hence the
    /// intrinsics in [`fma`].)
    fn dot_rows_portable(x: &[f32], w: &[f32], yt: &mut [f32], rows: usize, in_dim: usize) {
        let chunks = in_dim / DOT_LANES;
        for (o, yt) in yt.chunks_exact_mut(rows).enumerate() {
            let w = &w[o * in_dim..(o + 1) * in_dim];
            let wc = &w.as_chunks::<DOT_LANES>().0[..chunks];
            for (r, yt) in yt.iter_mut().enumerate() {
                let x = &x[r * in_dim..(r + 1) * in_dim];
                let xc = &x.as_chunks::<DOT_LANES>().0[..chunks];
                let mut acc = [0f32; DOT_LANES];
                for (xv, wv) in xc.iter().zip(wc) {
                    for l in 0..DOT_LANES {
                        acc[l] += xv[l] * wv[l];
                    }
                }
                let mut dot = 0f32;
                for a in acc {
                    dot += a;
                }
                for c in chunks * DOT_LANES..in_dim {
                    dot += x[c] * w[c];
                }
                *yt = dot;
            }
        }
    }
}

/// The AVX2 + FMA few-rows kernel, register-blocked: 2 weight rows × 4 input rows at a time, so
/// each loaded weight vector feeds four accumulators and each input vector two (one dot at a
/// time loads two vectors per multiply-add and is bound by the loads, not the arithmetic).
#[cfg(target_arch = "x86_64")]
mod fma {
    use super::DOT_LANES;
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU must have AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_rows_fma(
        x: &[f32],
        w: &[f32],
        yt: &mut [f32],
        rows: usize,
        in_dim: usize,
    ) {
        let outs = yt.len() / rows;
        let mut o = 0;
        while o < outs {
            let wo = (outs - o).min(2);
            let mut r = 0;
            while r < rows {
                let xr = (rows - r).min(4);
                let at = (o, r);
                // SAFETY (all arms): this function's features; `block` checks its slices.
                unsafe {
                    match (wo, xr) {
                        (2, 4) => block::<2, 4>(x, w, yt, rows, in_dim, at),
                        (2, 3) => block::<2, 3>(x, w, yt, rows, in_dim, at),
                        (2, 2) => block::<2, 2>(x, w, yt, rows, in_dim, at),
                        (2, _) => block::<2, 1>(x, w, yt, rows, in_dim, at),
                        (_, 4) => block::<1, 4>(x, w, yt, rows, in_dim, at),
                        (_, 3) => block::<1, 3>(x, w, yt, rows, in_dim, at),
                        (_, 2) => block::<1, 2>(x, w, yt, rows, in_dim, at),
                        _ => block::<1, 1>(x, w, yt, rows, in_dim, at),
                    }
                }
                r += xr;
            }
            o += wo;
        }
    }

    /// The `WO × XR` dots of weight rows `o..o + WO` with input rows `r..r + XR` into
    /// `yt[o·rows + r]`.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn block<const WO: usize, const XR: usize>(
        x: &[f32],
        w: &[f32],
        yt: &mut [f32],
        rows: usize,
        in_dim: usize,
        (o, r): (usize, usize),
    ) {
        let chunks = in_dim / DOT_LANES;
        // Slicing checks every row's bounds once; the loop then reads through raw pointers.
        let mut ws = [&[][..]; WO];
        for (j, s) in ws.iter_mut().enumerate() {
            *s = &w[(o + j) * in_dim..(o + j + 1) * in_dim];
        }
        let mut xs = [&[][..]; XR];
        for (i, s) in xs.iter_mut().enumerate() {
            *s = &x[(r + i) * in_dim..(r + i + 1) * in_dim];
        }
        let mut acc = [[_mm256_setzero_ps(); XR]; WO];
        for k in 0..chunks {
            let mut wv = [_mm256_setzero_ps(); WO];
            for j in 0..WO {
                // SAFETY: k·8 + 8 <= chunks·8 <= in_dim, the length of ws[j].
                wv[j] = unsafe { _mm256_loadu_ps(ws[j].as_ptr().add(k * DOT_LANES)) };
            }
            for i in 0..XR {
                // SAFETY: as above, for xs[i].
                let xv = unsafe { _mm256_loadu_ps(xs[i].as_ptr().add(k * DOT_LANES)) };
                for j in 0..WO {
                    acc[j][i] = _mm256_fmadd_ps(xv, wv[j], acc[j][i]);
                }
            }
        }
        for j in 0..WO {
            for i in 0..XR {
                let mut lanes = [0f32; DOT_LANES];
                // SAFETY: `lanes` holds 8 f32s.
                unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc[j][i]) };
                let mut dot = 0f32;
                for a in lanes {
                    dot += a;
                }
                for c in chunks * DOT_LANES..in_dim {
                    dot = xs[i][c].mul_add(ws[j][c], dot);
                }
                yt[(o + j) * rows + r + i] = dot;
            }
        }
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
            let y = few_rows_forward(&x, &w, b.as_deref(), rows, in_dim, out_dim);
            let mut dims = xl.dims().to_vec();
            *dims.last_mut().expect("linear input has a last dim") = out_dim;
            return Ok((CpuStorage::F32(y), Shape::from(dims)));
        }
        let mut y = vec![0f32; rows * out_dim];
        if self.has_bias && out_dim > 0 {
            let b = f32_data(bs, bl, self.name())?;
            y.par_chunks_mut(rows_per_task(rows, out_dim) * out_dim)
                .for_each(|y| {
                    y.chunks_exact_mut(out_dim)
                        .for_each(|r| r.copy_from_slice(&b))
                });
        }
        // SAFETY: x is (rows, in) row-major, w (out, in) read as Wᵀ (in, out) by swapped strides.
        unsafe {
            gemm_into(
                (rows, out_dim, in_dim),
                &mut y,
                self.has_bias,
                &x,
                (in_dim, 1),
                &w,
                (1, in_dim),
            )
        };
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
        // SAFETY: dy (rows, out), W (out, in), x (rows, in), all row-major; dyᵀ by strides.
        unsafe {
            gemm_into(
                (rows, in_dim, out_dim),
                dx,
                false,
                &dy,
                (out_dim, 1),
                &w,
                (in_dim, 1),
            );
            gemm_into(
                (out_dim, in_dim, rows),
                dw,
                false,
                &dy,
                (1, out_dim),
                &x,
                (in_dim, 1),
            );
        }
        if self.has_bias && rows > 0 && out_dim > 0 {
            let step = rows_per_task(rows, out_dim) * out_dim;
            let sums = dy
                .par_chunks(step)
                .map(|dy| {
                    let mut s = vec![0f32; out_dim];
                    add_rows(dy, &mut s);
                    s
                })
                .collect::<Vec<_>>()
                // In chunk order, not along rayon's reduction tree (see layer_norm's backward).
                .into_iter()
                .fold(vec![0f32; out_dim], |mut a, b| {
                    a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                    a
                });
            db.copy_from_slice(&sums);
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

    /// Deterministic values in [-1, 1) that differ from row to row and column to column.
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// `x Wᵀ + b` in f64, one dot at a time.
    fn plain(x: &[f32], w: &[f32], b: &[f32], rows: usize, in_dim: usize) -> Vec<f64> {
        let out_dim = b.len();
        let mut y = Vec::with_capacity(rows * out_dim);
        for r in 0..rows {
            for o in 0..out_dim {
                let dot: f64 = (0..in_dim)
                    .map(|c| x[r * in_dim + c] as f64 * w[o * in_dim + c] as f64)
                    .sum();
                y.push(dot + b[o] as f64);
            }
        }
        y
    }

    /// Every row count of the register-blocked path (2..=16: full blocks of 4 and every tail),
    /// odd and even widths (a chunk tail of 1..7 columns, an odd count of weight rows), and
    /// sizes that split the outputs over several rayon tasks, against a plain f64 dot.
    #[test]
    fn few_rows_match_a_plain_dot_at_every_row_count() {
        for (in_dim, out_dim) in [(1, 3), (7, 5), (37, 19), (64, 33), (131, 75), (389, 301)] {
            let w = values(out_dim * in_dim, 1);
            let b = values(out_dim, 2);
            for rows in 2..=FEW_ROWS {
                let x = values(rows * in_dim, 3 + rows as u64);
                let got = few_rows_forward(&x, &w, Some(&b), rows, in_dim, out_dim);
                let want = plain(&x, &w, &b, rows, in_dim);
                for (k, (g, e)) in got.iter().zip(&want).enumerate() {
                    // f32 rounding of a sum of in_dim products of magnitude below 1.
                    let tol = 1e-6 * (in_dim as f64).sqrt() * 4.0 + 1e-6;
                    assert!(
                        (*g as f64 - e).abs() <= tol,
                        "rows {rows}, {in_dim} -> {out_dim}: y[{}][{}] = {g}, plain dot {e}",
                        k / out_dim,
                        k % out_dim
                    );
                }
            }
        }
    }

    /// The path for CPUs without FMA (not the one this machine takes if it has AVX2 + FMA)
    /// against the same plain dot.
    #[test]
    fn few_rows_portable_path_matches_a_plain_dot() {
        for (in_dim, out_dim) in [(1, 3), (7, 5), (37, 19), (389, 31)] {
            let w = values(out_dim * in_dim, 9);
            let b = vec![0f32; out_dim];
            for rows in 2..=FEW_ROWS {
                let x = values(rows * in_dim, 10 + rows as u64);
                let mut yt = vec![0f32; out_dim * rows];
                dot_rows_portable(&x, &w, &mut yt, rows, in_dim);
                let want = plain(&x, &w, &b, rows, in_dim);
                for o in 0..out_dim {
                    for r in 0..rows {
                        let (g, e) = (yt[o * rows + r] as f64, want[r * out_dim + o]);
                        let tol = 4e-6 * (in_dim as f64).sqrt() + 1e-6;
                        assert!((g - e).abs() <= tol, "rows {rows}, {in_dim}: {g} vs {e}");
                    }
                }
            }
        }
    }

    /// A row's outputs are the same bits whichever block it falls in and however many rows
    /// share the call (batched decoding must not change a sequence's numbers by its batch),
    /// and repeated calls agree bit for bit (no load-dependent summation order).
    #[test]
    fn few_rows_give_each_row_the_same_bits_in_any_batch() {
        let (in_dim, out_dim) = (389, 301);
        let w = values(out_dim * in_dim, 4);
        let x = values(FEW_ROWS * in_dim, 5);
        let all = few_rows_forward(&x, &w, None, FEW_ROWS, in_dim, out_dim);
        assert_eq!(
            all,
            few_rows_forward(&x, &w, None, FEW_ROWS, in_dim, out_dim)
        );
        for rows in 2..FEW_ROWS {
            let some = few_rows_forward(&x[..rows * in_dim], &w, None, rows, in_dim, out_dim);
            assert_eq!(some[..], all[..rows * out_dim], "first {rows} rows alone");
        }
        // The last row, moved to the front of a pair, lands in another block position.
        let last = &x[(FEW_ROWS - 1) * in_dim..];
        let pair = [last, &x[..in_dim]].concat();
        let moved = few_rows_forward(&pair, &w, None, 2, in_dim, out_dim);
        assert_eq!(moved[..out_dim], all[(FEW_ROWS - 1) * out_dim..]);
    }

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
