//! `y = x Wᵀ + b` for a few rows (2..=[`FEW_ROWS`]): the forward of [`crate::ops::linear`] in
//! batched decoding, where `gemm`'s blocked kernels cost 10-80x the multiply-adds (issues 23,
//! 25; docs/kernels.md "Few rows").
//!
//! Each task owns a range of output columns: it reads those weight rows once, as stored
//! (`(out, in)`, no packed copy — the weights of an RL rollout change every step), dots each
//! with every input row in register blocks while the rows sit in L1, and writes its columns of
//! `y` directly. Three paths, chosen at run time: AVX-512F (blocks of 4 weight rows × 4 input
//! rows, or 8 × 2 at two rows: 16 zmm accumulators, masked column tail, lanes summed by a
//! shuffle tree in registers),
//! AVX2 + FMA (2 × 4 blocks of 8 lanes) and a portable one.
//!
//! **Determinism.** On a given path every (weight row, input row) pair is summed in one fixed
//! order whatever block it falls in and however many rows share the call: lanes over the
//! column chunks in sequence, then the path's fixed lane reduction, then (AVX2, portable) the
//! column tail. A block smaller than the full shape runs the same arithmetic on fewer
//! accumulators (the AVX-512 reduction pads with zero accumulators, which never mix with a real
//! one's lanes). So a sequence's numbers do not depend on its batch, and no sum is split across
//! threads. The paths differ from each other in rounding only.

use crate::rayon::prelude::*;
use std::ops::Range;

/// Up to this many rows (2 or more: one row is gemm's own fast matrix-vector path) the linear
/// forward is [`forward`].
pub const FEW_ROWS: usize = 16;

/// Multiply-adds per rayon task, at least: below this the hand-off costs more than the split
/// saves (measured with `nn/examples/decode_probe.rs`, docs/kernels.md "Few rows").
pub const TASK_MACS: usize = 1 << 16;

/// A few-rows kernel implementation; [`Path::detect`] is the one [`forward`] takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// AVX-512F: 4 × 4 (8 × 2) register blocks of 16 lanes, reduced in registers.
    Avx512,
    /// AVX2 + FMA: 2 × 4 register blocks of 8 lanes.
    Avx2Fma,
    /// Any CPU: one dot at a time, 8 lanes, separate multiply and add.
    Portable,
}

impl Path {
    /// The fastest path this CPU runs, unless `LLMLAB_FEW_ROWS` names another one it runs
    /// (`avx512`, `avx2` or `portable`: an end-to-end A/B of the kernels in one binary, as
    /// `LLMLAB_STOCK_BACKPROP` is for the backward). Read once per process.
    pub fn detect() -> Path {
        static PATH: std::sync::OnceLock<Path> = std::sync::OnceLock::new();
        *PATH.get_or_init(|| {
            let paths = [
                ("avx512", Path::Avx512),
                ("avx2", Path::Avx2Fma),
                ("portable", Path::Portable),
            ];
            super::path_knob::choose("LLMLAB_FEW_ROWS", &paths, Path::available)
        })
    }

    /// Whether this CPU has the instructions the path needs.
    pub fn available(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Path::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "x86_64")]
            Path::Avx2Fma => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            Path::Portable => true,
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }
}

/// `y = x Wᵀ + b` for `x` `(rows, in)`, `w` `(out, in)`, `bias` `(out,)`, all row-major; `y` is
/// `(rows, out)`. The path [`Path::detect`] picks, tasks of at least [`TASK_MACS`].
pub fn forward(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    rows: usize,
    in_dim: usize,
    out_dim: usize,
) -> Vec<f32> {
    forward_with(Path::detect(), TASK_MACS, x, w, bias, rows, in_dim, out_dim)
}

/// [`forward`] on a given path and task size (for tests and `decode_probe`).
///
/// # Panics
/// If the path is not [`available`](Path::available) or a slice is shorter than its shape.
#[allow(clippy::too_many_arguments)]
pub fn forward_with(
    path: Path,
    task_macs: usize,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    rows: usize,
    in_dim: usize,
    out_dim: usize,
) -> Vec<f32> {
    assert!(path.available(), "few_rows: this CPU cannot run {path:?}");
    assert!(
        x.len() >= rows * in_dim && w.len() >= out_dim * in_dim,
        "few_rows: x has {} values for ({rows}, {in_dim}), w {} for ({out_dim}, {in_dim})",
        x.len(),
        w.len()
    );
    if let Some(b) = bias {
        assert_eq!(b.len(), out_dim, "few_rows: bias length vs out_dim");
    }
    let mut y = vec![0f32; rows * out_dim];
    if rows == 0 || out_dim == 0 {
        return y;
    }
    let out = Out {
        ptr: y.as_mut_ptr(),
        rows,
        width: out_dim,
    };
    // Whole blocks of 4 weight rows per task, so only the last task has a partial block.
    let per_task = (task_macs / (rows * in_dim).max(1))
        .clamp(1, out_dim)
        .next_multiple_of(4);
    let tasks = out_dim.div_ceil(per_task);
    let task = |t: usize| {
        let outs = t * per_task..((t + 1) * per_task).min(out_dim);
        // SAFETY: `outs` lies within `out_dim` and tasks own disjoint column ranges of `y`,
        // which outlives every task (the parallel loop returns before `y` is).
        unsafe { dots(path, x, w, bias, out, in_dim, outs) }
    };
    if tasks == 1 {
        // Inline: handing one task to the pool only adds a wake-up and a wait.
        task(0);
    } else {
        (0..tasks).into_par_iter().for_each(task);
    }
    y
}

/// Where the kernels write: `y` `(rows, width)` row-major, shared by tasks that own disjoint
/// columns.
#[derive(Clone, Copy)]
struct Out {
    ptr: *mut f32,
    rows: usize,
    width: usize,
}

// SAFETY: tasks write disjoint elements (their own columns), see `forward_with`.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// # Safety
    /// `r < rows`, `o < width`, and no other thread touches element `(r, o)`.
    #[inline(always)]
    unsafe fn put(self, r: usize, o: usize, v: f32) {
        debug_assert!(r < self.rows && o < self.width);
        // SAFETY: in bounds by the caller's contract.
        unsafe { *self.ptr.add(r * self.width + o) = v }
    }

    /// Pointer to `(r, o)`.
    ///
    /// # Safety
    /// `r < rows` and `o + n <= width` for the `n` elements the caller writes through it.
    #[inline(always)]
    unsafe fn at(self, r: usize, o: usize) -> *mut f32 {
        debug_assert!(r < self.rows && o < self.width);
        // SAFETY: in bounds by the caller's contract.
        unsafe { self.ptr.add(r * self.width + o) }
    }
}

/// `y[r][o] = x_r · w_o (+ b_o)` for every input row and the weight rows `outs`.
///
/// # Safety
/// `path` is available, `outs.end <= out.width`, `out.rows` input rows are in `x`, and no other
/// thread writes columns `outs` of `out`.
#[allow(clippy::too_many_arguments)]
unsafe fn dots(
    path: Path,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    out: Out,
    in_dim: usize,
    outs: Range<usize>,
) {
    // SAFETY (both arms): forwarded; the path's CPU features were checked by `forward_with`.
    match path {
        #[cfg(target_arch = "x86_64")]
        Path::Avx512 => unsafe { avx512::dots(x, w, bias, out, in_dim, outs) },
        #[cfg(target_arch = "x86_64")]
        Path::Avx2Fma => unsafe { fma::dots(x, w, bias, out, in_dim, outs) },
        _ => unsafe { dots_portable(x, w, bias, out, in_dim, outs) },
    }
}

/// Lanes per accumulator of the AVX2 and portable paths: one AVX2 register.
const LANES8: usize = 8;

/// The portable path, one dot at a time: 8 lanes over the `in/8` chunks, the lanes left to
/// right, then the column tail. (Written as plain-array register blocks, LLVM vectorised only
/// some block shapes and left the rest scalar, 5-7x slower; hence the intrinsics below.)
///
/// # Safety
/// As [`dots`].
unsafe fn dots_portable(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    out: Out,
    in_dim: usize,
    outs: Range<usize>,
) {
    crate::ops::math::simd_kernel! {
        fn dot8(x: &[f32], w: &[f32]) -> f32 {
            let (xc, xt) = x.as_chunks::<LANES8>();
            let (wc, wt) = w.as_chunks::<LANES8>();
            let mut acc = [0f32; LANES8];
            for (xv, wv) in xc.iter().zip(wc) {
                for l in 0..LANES8 {
                    acc[l] += xv[l] * wv[l];
                }
            }
            let mut dot = 0f32;
            for a in acc {
                dot += a;
            }
            for (a, b) in xt.iter().zip(wt) {
                dot += a * b;
            }
            dot
        }
    }
    for o in outs {
        let wo = &w[o * in_dim..(o + 1) * in_dim];
        for r in 0..out.rows {
            let dot = dot8(&x[r * in_dim..(r + 1) * in_dim], wo);
            // SAFETY: r < rows, o < outs.end <= width, column o is this task's.
            unsafe { out.put(r, o, bias.map_or(dot, |b| dot + b[o])) };
        }
    }
}

/// The AVX2 + FMA path, register-blocked: 2 weight rows × 4 input rows at a time, so each
/// loaded weight vector feeds four accumulators and each input vector two; each accumulator's
/// 8 lanes summed left to right, then the column tail.
#[cfg(target_arch = "x86_64")]
mod fma {
    use super::{Out, LANES8};
    use std::arch::x86_64::*;
    use std::ops::Range;

    /// # Safety
    /// As [`super::dots`]; the CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dots(
        x: &[f32],
        w: &[f32],
        bias: Option<&[f32]>,
        out: Out,
        in_dim: usize,
        outs: Range<usize>,
    ) {
        let rows = out.rows;
        let mut o = outs.start;
        while o < outs.end {
            let wo = (outs.end - o).min(2);
            let mut r = 0;
            while r < rows {
                let xr = (rows - r).min(4);
                let at = (o, r);
                // SAFETY (all arms): this function's features and contract; `block` checks
                // its slices, `at` stays within `outs` and the rows.
                unsafe {
                    match (wo, xr) {
                        (2, 4) => block::<2, 4>(x, w, bias, out, in_dim, at),
                        (2, 3) => block::<2, 3>(x, w, bias, out, in_dim, at),
                        (2, 2) => block::<2, 2>(x, w, bias, out, in_dim, at),
                        (2, _) => block::<2, 1>(x, w, bias, out, in_dim, at),
                        (_, 4) => block::<1, 4>(x, w, bias, out, in_dim, at),
                        (_, 3) => block::<1, 3>(x, w, bias, out, in_dim, at),
                        (_, 2) => block::<1, 2>(x, w, bias, out, in_dim, at),
                        _ => block::<1, 1>(x, w, bias, out, in_dim, at),
                    }
                }
                r += xr;
            }
            o += wo;
        }
    }

    /// The `WO × XR` dots of weight rows `o..o + WO` with input rows `r..r + XR`.
    ///
    /// # Safety
    /// As [`dots`], for columns `o..o + WO` and rows `r..r + XR`.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn block<const WO: usize, const XR: usize>(
        x: &[f32],
        w: &[f32],
        bias: Option<&[f32]>,
        out: Out,
        in_dim: usize,
        (o, r): (usize, usize),
    ) {
        let chunks = in_dim / LANES8;
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
                wv[j] = unsafe { _mm256_loadu_ps(ws[j].as_ptr().add(k * LANES8)) };
            }
            for i in 0..XR {
                // SAFETY: as above, for xs[i].
                let xv = unsafe { _mm256_loadu_ps(xs[i].as_ptr().add(k * LANES8)) };
                for j in 0..WO {
                    acc[j][i] = _mm256_fmadd_ps(xv, wv[j], acc[j][i]);
                }
            }
        }
        for j in 0..WO {
            for i in 0..XR {
                let mut lanes = [0f32; LANES8];
                // SAFETY: `lanes` holds 8 f32s.
                unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc[j][i]) };
                let mut dot = 0f32;
                for a in lanes {
                    dot += a;
                }
                for c in chunks * LANES8..in_dim {
                    dot = xs[i][c].mul_add(ws[j][c], dot);
                }
                let y = bias.map_or(dot, |b| dot + b[o + j]);
                // SAFETY: (r + i, o + j) is in this task's columns and the rows.
                unsafe { out.put(r + i, o + j, y) };
            }
        }
    }
}

/// The AVX-512F path: blocks of 4 weight rows × 4 input rows (8 × 2 at two rows), 16
/// accumulators of 16 lanes (21 of the 32 zmm registers with the loaded vectors), 8 loads per
/// 16 FMAs. The column tail is one more masked chunk of the same accumulators; the accumulators
/// of 4 adjacent weight rows and one input row are then summed together by [`reduce4`] into 4
/// adjacent outputs of that `y` row.
///
/// On Zen 4 (this project's machine) a zmm FMA runs at half the rate of a ymm one — the same
/// FLOP/s — so the gain over the AVX2 path is fewer instructions per FMA (loads, loop, no
/// scalar tail or store-and-add lane sums), not wider arithmetic.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::Out;
    use std::arch::x86_64::*;
    use std::ops::Range;

    const LANES: usize = 16;

    /// # Safety
    /// As [`super::dots`]; the CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn dots(
        x: &[f32],
        w: &[f32],
        bias: Option<&[f32]>,
        out: Out,
        in_dim: usize,
        outs: Range<usize>,
    ) {
        let rows = out.rows;
        // Two input rows leave room for 8 weight rows a block (16 accumulators again): 10
        // loads per 16 FMAs instead of 6 per 8.
        let wide = rows == 2;
        let mut o = outs.start;
        while o < outs.end {
            let wo = if wide && outs.end - o >= 8 {
                8
            } else {
                (outs.end - o).min(4)
            };
            let mut r = 0;
            while r < rows {
                let xr = (rows - r).min(4);
                let at = (o, r);
                // SAFETY (all arms): this function's features and contract; `block` checks
                // its slices, `at` stays within `outs` and the rows.
                unsafe {
                    match (wo, xr) {
                        (8, _) => block::<8, 2>(x, w, bias, out, in_dim, at),
                        (4, 4) => block::<4, 4>(x, w, bias, out, in_dim, at),
                        (4, 3) => block::<4, 3>(x, w, bias, out, in_dim, at),
                        (4, 2) => block::<4, 2>(x, w, bias, out, in_dim, at),
                        (4, _) => block::<4, 1>(x, w, bias, out, in_dim, at),
                        (3, 4) => block::<3, 4>(x, w, bias, out, in_dim, at),
                        (3, 3) => block::<3, 3>(x, w, bias, out, in_dim, at),
                        (3, 2) => block::<3, 2>(x, w, bias, out, in_dim, at),
                        (3, _) => block::<3, 1>(x, w, bias, out, in_dim, at),
                        (2, 4) => block::<2, 4>(x, w, bias, out, in_dim, at),
                        (2, 3) => block::<2, 3>(x, w, bias, out, in_dim, at),
                        (2, 2) => block::<2, 2>(x, w, bias, out, in_dim, at),
                        (2, _) => block::<2, 1>(x, w, bias, out, in_dim, at),
                        (_, 4) => block::<1, 4>(x, w, bias, out, in_dim, at),
                        (_, 3) => block::<1, 3>(x, w, bias, out, in_dim, at),
                        (_, 2) => block::<1, 2>(x, w, bias, out, in_dim, at),
                        _ => block::<1, 1>(x, w, bias, out, in_dim, at),
                    }
                }
                r += xr;
            }
            o += wo;
        }
    }

    /// The `WO × XR` dots of weight rows `o..o + WO` with input rows `r..r + XR`.
    ///
    /// # Safety
    /// As [`dots`], for columns `o..o + WO` and rows `r..r + XR`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn block<const WO: usize, const XR: usize>(
        x: &[f32],
        w: &[f32],
        bias: Option<&[f32]>,
        out: Out,
        in_dim: usize,
        (o, r): (usize, usize),
    ) {
        let chunks = in_dim / LANES;
        let tail = in_dim % LANES;
        // Slicing checks every row's bounds once; the loop then reads through raw pointers.
        let mut ws = [std::ptr::null::<f32>(); WO];
        for (j, p) in ws.iter_mut().enumerate() {
            *p = w[(o + j) * in_dim..(o + j + 1) * in_dim].as_ptr();
        }
        let mut xs = [std::ptr::null::<f32>(); XR];
        for (i, p) in xs.iter_mut().enumerate() {
            *p = x[(r + i) * in_dim..(r + i + 1) * in_dim].as_ptr();
        }
        let mut acc = [[_mm512_setzero_ps(); XR]; WO];
        for k in 0..chunks {
            let mut wv = [_mm512_setzero_ps(); WO];
            for j in 0..WO {
                // SAFETY: k·16 + 16 <= chunks·16 <= in_dim, the length of row ws[j].
                wv[j] = unsafe { _mm512_loadu_ps(ws[j].add(k * LANES)) };
            }
            for i in 0..XR {
                // SAFETY: as above, for xs[i].
                let xv = unsafe { _mm512_loadu_ps(xs[i].add(k * LANES)) };
                for j in 0..WO {
                    acc[j][i] = _mm512_fmadd_ps(xv, wv[j], acc[j][i]);
                }
            }
        }
        if tail > 0 {
            // The last `tail` columns as one more chunk, zeros past the row's end (masked
            // loads read nothing there): every pair gets this step, in every block shape.
            let mask: __mmask16 = (1u16 << tail) - 1;
            let at = chunks * LANES;
            let mut wv = [_mm512_setzero_ps(); WO];
            for j in 0..WO {
                // SAFETY: the mask reads only columns at..in_dim of row ws[j].
                wv[j] = unsafe { _mm512_maskz_loadu_ps(mask, ws[j].add(at)) };
            }
            for i in 0..XR {
                // SAFETY: as above, for xs[i].
                let xv = unsafe { _mm512_maskz_loadu_ps(mask, xs[i].add(at)) };
                for j in 0..WO {
                    acc[j][i] = _mm512_fmadd_ps(xv, wv[j], acc[j][i]);
                }
            }
        }
        // Weight rows in groups of 4 (the last one padded with zero accumulators).
        for g in (0..WO).step_by(4) {
            let n = (WO - g).min(4);
            let o = o + g;
            let mut b = [0f32; 4];
            if let Some(bias) = bias {
                b[..n].copy_from_slice(&bias[o..o + n]);
            }
            // SAFETY: `b` holds 4 f32s.
            let b = unsafe { _mm_loadu_ps(b.as_ptr()) };
            for i in 0..XR {
                let mut four = [_mm512_setzero_ps(); 4];
                for (f, a) in four.iter_mut().zip(&acc[g..g + n]) {
                    *f = a[i];
                }
                let mut y = reduce4(four);
                if bias.is_some() {
                    y = _mm_add_ps(y, b);
                }
                if n == 4 {
                    // SAFETY: columns o..o + 4 of row r + i are this task's.
                    unsafe { _mm_storeu_ps(out.at(r + i, o), y) };
                } else {
                    let mut lanes = [0f32; 4];
                    // SAFETY: `lanes` holds 4 f32s.
                    unsafe { _mm_storeu_ps(lanes.as_mut_ptr(), y) };
                    for (j, &v) in lanes[..n].iter().enumerate() {
                        // SAFETY: (r + i, o + j) is in this task's columns and the rows.
                        unsafe { out.put(r + i, o + j, v) };
                    }
                }
            }
        }
    }

    /// The lane sums of 4 accumulators, `[Σa₀, Σa₁, Σa₂, Σa₃]`, by one fixed tree for each:
    /// with `c₀..c₃` its four 128-bit quarters, `q = (c₀ + c₂) + (c₁ + c₃)` lane-wise, then
    /// `(q₀ + q₂) + (q₁ + q₃)`. The shuffles only move lanes, so an accumulator's sum is the
    /// same bits whichever slot it is in and whatever the other three hold.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn reduce4(a: [__m512; 4]) -> __m128 {
        // [a.c0 + a.c2, a.c1 + a.c3, b.c0 + b.c2, b.c1 + b.c3] for the pairs (a0, a1), (a2, a3).
        let halve = |a: __m512, b: __m512| {
            _mm512_add_ps(
                _mm512_shuffle_f32x4::<0b01_00_01_00>(a, b),
                _mm512_shuffle_f32x4::<0b11_10_11_10>(a, b),
            )
        };
        let (p01, p23) = (halve(a[0], a[1]), halve(a[2], a[3]));
        // Quarter j holds accumulator j's (c0 + c2) + (c1 + c3).
        let q = _mm512_add_ps(
            _mm512_shuffle_f32x4::<0b10_00_10_00>(p01, p23),
            _mm512_shuffle_f32x4::<0b11_01_11_01>(p01, p23),
        );
        // Within each quarter: lane 0 = q0 + q2, lane 1 = q1 + q3, then lane 0 = their sum.
        let s = _mm512_add_ps(q, _mm512_permute_ps::<0b01_00_11_10>(q));
        let s = _mm512_add_ps(s, _mm512_permute_ps::<0b10_11_00_01>(s));
        let firsts = _mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
        _mm512_castps512_ps128(_mm512_permutexvar_ps(firsts, s))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Deterministic values in [-1, 1) that differ from row to row and column to column.
    pub(crate) fn values(n: usize, seed: u64) -> Vec<f32> {
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

    /// Every path this CPU runs (the portable one always): the detected one and the others
    /// it can also take, so the AVX2 path stays tested on an AVX-512 machine.
    fn paths() -> Vec<Path> {
        let paths: Vec<Path> = [Path::Avx512, Path::Avx2Fma, Path::Portable]
            .into_iter()
            .filter(|p| p.available())
            .collect();
        assert!(paths.contains(&Path::detect()));
        paths
    }

    /// Every row count (2..=16: full blocks of 4 and every tail), odd and even widths (column
    /// tails of every length for 8 and 16 lanes, an odd number of weight rows, weight-row tails
    /// of 1-3), sizes that split the outputs over several tasks, with and without a bias,
    /// on every path, against a plain f64 dot.
    #[test]
    fn few_rows_match_a_plain_dot_at_every_row_count_on_every_path() {
        let shapes = [
            (1, 3),
            (7, 5),
            (15, 6),
            (16, 7),
            (37, 19),
            (64, 33),
            (131, 75),
            (389, 301),
        ];
        for path in paths() {
            for (in_dim, out_dim) in shapes {
                let w = values(out_dim * in_dim, 1);
                let b = values(out_dim, 2);
                let zero = vec![0f32; out_dim];
                for rows in 2..=FEW_ROWS {
                    let x = values(rows * in_dim, 3 + rows as u64);
                    for (bias, bv) in [(Some(&b[..]), &b), (None, &zero)] {
                        // Small tasks: several per call even at the small shapes.
                        let got = forward_with(path, 512, &x, &w, bias, rows, in_dim, out_dim);
                        let want = plain(&x, &w, bv, rows, in_dim);
                        for (k, (g, e)) in got.iter().zip(&want).enumerate() {
                            // f32 rounding of a sum of in_dim products of magnitude below 1.
                            let tol = 4e-6 * (in_dim as f64).sqrt() + 1e-6;
                            assert!(
                                (*g as f64 - e).abs() <= tol,
                                "{path:?}, rows {rows}, {in_dim} -> {out_dim}, bias {}: \
                                 y[{}][{}] = {g}, plain dot {e}",
                                bias.is_some(),
                                k / out_dim,
                                k % out_dim
                            );
                        }
                    }
                }
            }
        }
    }

    /// On every path a row's outputs are the same bits whichever block it falls in, however
    /// many rows share the call and however the columns are split into tasks (batched decoding
    /// must not change a sequence's numbers by its batch), and repeated calls agree bit for
    /// bit (no load-dependent summation order).
    #[test]
    fn few_rows_give_each_row_the_same_bits_in_any_batch() {
        for (in_dim, out_dim) in [(389, 301), (256, 70)] {
            let w = values(out_dim * in_dim, 4);
            let b = values(out_dim, 6);
            let x = values(FEW_ROWS * in_dim, 5);
            for path in paths() {
                let run = |x: &[f32], rows: usize, task_macs: usize| {
                    forward_with(path, task_macs, x, &w, Some(&b), rows, in_dim, out_dim)
                };
                let all = run(&x, FEW_ROWS, TASK_MACS);
                assert_eq!(all, run(&x, FEW_ROWS, TASK_MACS), "{path:?}: repeated call");
                assert_eq!(all, run(&x, FEW_ROWS, 1), "{path:?}: one block per task");
                assert_eq!(all, run(&x, FEW_ROWS, 1 << 30), "{path:?}: one task");
                for rows in 2..FEW_ROWS {
                    let some = run(&x[..rows * in_dim], rows, TASK_MACS);
                    assert_eq!(
                        some[..],
                        all[..rows * out_dim],
                        "{path:?}: first {rows} rows alone"
                    );
                }
                // Each row moved to the front of a pair lands in another block position.
                for r in 1..FEW_ROWS {
                    let row = &x[r * in_dim..(r + 1) * in_dim];
                    let pair = [row, &x[..in_dim]].concat();
                    let moved = run(&pair, 2, TASK_MACS);
                    assert_eq!(
                        moved[..out_dim],
                        all[r * out_dim..(r + 1) * out_dim],
                        "{path:?}: row {r} moved to the front of a pair"
                    );
                }
            }
        }
    }
}
