//! Causal scaled-dot-product attention, `softmax(q kᵀ / √d + causal mask) v`, fused: forward and
//! backward never hold more than one block of scores per head.
//!
//! Work is split over (batch, key/value head) on the rayon pool; inside a task every product is a
//! single-threaded gemm (candle runs one multithreaded gemm per head, and its thread barrier
//! cost 22% of a forward pass). Query rows go in blocks of [`BLOCK`]: a block only meets the keys
//! at or before its last row, which skips most of the masked upper triangle. The backward
//! recomputes each block's probabilities from `q` and `k` (flash-attention style) instead of
//! storing the `t × t` matrix:
//!
//! ```text
//! dV += Pᵀ dO,  dP = dO Vᵀ,  dS = P ⊙ (dP - rowsum(P ⊙ dP)),  dQ = s dS K,  dK += s dSᵀ Q
//! ```
//!
//! Grouped-query attention is native: the `n_head / n_kv_head` query heads of a group run in the
//! same task, so their `dK`/`dV` contributions add up without races. Inputs are read through
//! their strides, so the `q`/`k`/`v` views of one packed projection are never copied
//! ([`causal_attention_packed`] takes that projection whole and returns its gradient whole).

use crate::candle::{self, CpuStorage, CustomOp1, CustomOp3, Device, Layout, Shape, Tensor};
use crate::ops::math::{self, simd_kernel};
use crate::rayon::prelude::*;
use llmlab_plugin_api::gemm;

/// Query rows per block.
const BLOCK: usize = 32;

/// Attention over `q` `(b, h, t, hd)`, `k`/`v` `(b, kv, t, hd)` (`kv` divides `h`), causal,
/// scaled by `1/√hd`; returns `(b, h, t, hd)`. Fused on CPU f32, composed otherwise.
pub fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor) -> candle::Result<Tensor> {
    let (b, h, t, hd) = q.dims4()?;
    let (kb, kv, kt, khd) = k.dims4()?;
    if (kb, kt, khd) != (b, t, hd) || v.dims() != k.dims() || kv == 0 || !h.is_multiple_of(kv) {
        candle::bail!(
            "causal_attention: q {:?}, k {:?}, v {:?} do not fit (b, h, t, hd) / (b, kv, t, hd)",
            q.dims(),
            k.dims(),
            v.dims()
        )
    }
    let dims = Dims { b, t, h, kv, hd };
    if super::kernel_path_all("causal_attention", &[q, k, v]) && Sdpa::takes(q, dims) {
        let op = Sdpa::new(h, kv);
        // The three views travel as one rank-5 stack only when they share storage; in general
        // each keeps its own layout, so `q`, `k` and `v` are concatenated along heads.
        let packed = Tensor::cat(&[q, k, v], 1)?.transpose(1, 2)?.contiguous()?;
        let y = packed.apply_op1(op)?;
        return y.transpose(1, 2);
    }
    causal_attention_reference(q, k, v)
}

/// Attention over the packed projection `qkv` `(b, t, h + 2 kv, hd)` (query heads, then key
/// heads, then value heads, as a fused `c_attn` produces them); returns `(b, t, h, hd)`, the
/// layout the output projection wants. Fused on CPU f32, composed otherwise.
pub fn causal_attention_packed(qkv: &Tensor, h: usize, kv: usize) -> candle::Result<Tensor> {
    let (_, _, heads, _) = qkv.dims4()?;
    if kv == 0 || !h.is_multiple_of(kv) || heads != h + 2 * kv {
        candle::bail!(
            "causal_attention_packed: {heads} heads in qkv {:?} is not n_head {h} + 2 × n_kv_head {kv}",
            qkv.dims()
        )
    }
    let (b, t, _, hd) = qkv.dims4()?;
    if super::kernel_path("causal_attention", qkv) && Sdpa::takes(qkv, Dims { b, t, h, kv, hd }) {
        qkv.apply_op1(Sdpa::new(h, kv))
    } else {
        let q = qkv.narrow(2, 0, h)?.transpose(1, 2)?;
        let k = qkv.narrow(2, h, kv)?.transpose(1, 2)?;
        let v = qkv.narrow(2, h + kv, kv)?.transpose(1, 2)?;
        causal_attention_reference(&q, &k, &v)?.transpose(1, 2)
    }
}

/// The composed path: stock matmuls, an additive `-inf` mask and the composed softmax.
pub fn causal_attention_reference(q: &Tensor, k: &Tensor, v: &Tensor) -> candle::Result<Tensor> {
    let (b, h, t, hd) = q.dims4()?;
    let kv = k.dim(1)?;
    let repeat = |x: &Tensor| -> candle::Result<Tensor> {
        if kv == h {
            return x.contiguous();
        }
        x.unsqueeze(2)?
            .broadcast_as((b, kv, h / kv, t, hd))?
            .reshape((b, h, t, hd))
    };
    let (k, v) = (repeat(k)?, repeat(v)?);
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| (0..t).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    let mask = Tensor::from_vec(mask, (t, t), q.device())?.to_dtype(q.dtype())?;
    let scores = (q.contiguous()?.matmul(&k.t()?)? * (1.0 / (hd as f64).sqrt()))?;
    let p = super::softmax::softmax_reference(&scores.broadcast_add(&mask)?)?;
    p.matmul(&v)
}

/// Where one head's `(t, hd)` matrix lives in a buffer: offset of `[b, head, 0, 0]` and strides.
#[derive(Clone, Copy)]
struct HeadView {
    offset: usize,
    batch: usize,
    head: usize,
    row: usize,
    col: usize,
}

impl HeadView {
    fn at(&self, b: usize, head: usize) -> usize {
        self.offset + b * self.batch + head * self.head
    }
}

/// A raw pointer the tasks share; each task touches only its own heads.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: tasks write disjoint heads (see `forward_heads` / `backward_heads`).
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// The pointer; a method, so closures capture the `Send` wrapper and not the bare field.
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// `dst (m×n) = [dst +] scale · lhs (m×k) · rhs (k×n)`, strides in elements, single-threaded.
///
/// # Safety
/// Every pointer with its strides must address valid `f32`s for the given sizes.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    (dst_rs, dst_cs): (usize, usize),
    accumulate: bool,
    lhs: *const f32,
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: *const f32,
    (rhs_rs, rhs_cs): (usize, usize),
    scale: f32,
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            dst_cs as isize,
            dst_rs as isize,
            accumulate,
            lhs,
            lhs_cs as isize,
            lhs_rs as isize,
            rhs,
            rhs_cs as isize,
            rhs_rs as isize,
            if accumulate { 1.0 } else { 0.0 },
            scale,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

simd_kernel! {
    /// Causal softmax of a block of scores `s` (`m` rows of `n` keys, first row = query `i0`),
    /// in place: row `i` keeps keys `0..=i0 + i` and zeroes the rest.
    fn masked_softmax(s: &mut [f32], n: usize, i0: usize) {
        for (r, row) in s.chunks_exact_mut(n).enumerate() {
            let keep = i0 + r + 1;
            let (live, dead) = row.split_at_mut(keep);
            let m = math::max(live);
            for x in live.iter_mut() {
                *x = math::exp(*x - m);
            }
            let inv = 1.0 / math::sum(live);
            for x in live.iter_mut() {
                *x *= inv;
            }
            dead.fill(0.0);
        }
    }
}

simd_kernel! {
    /// `dS = P ⊙ (dP - rowsum(P ⊙ dP)) · scale`, in place in `dp`.
    fn softmax_backward(p: &[f32], dp: &mut [f32], n: usize, scale: f32) {
        for (p, dp) in p.chunks_exact(n).zip(dp.chunks_exact_mut(n)) {
            let d = math::dot(p, dp);
            for (dp, &p) in dp.iter_mut().zip(p) {
                *dp = p * (*dp - d) * scale;
            }
        }
    }
}

/// The shapes of one call: batch, sequence, query heads, key/value heads, head width.
#[derive(Debug, Clone, Copy)]
pub struct Dims {
    pub b: usize,
    pub t: usize,
    pub h: usize,
    pub kv: usize,
    pub hd: usize,
}

impl Dims {
    fn scale(&self) -> f32 {
        1.0 / (self.hd as f32).sqrt()
    }
    /// q, k, v views of a contiguous packed `(b, t, h + 2 kv, hd)` buffer starting at `offset`.
    fn packed(&self, offset: usize) -> [HeadView; 3] {
        let heads = self.h + 2 * self.kv;
        let view = |first_head: usize| HeadView {
            offset: offset + first_head * self.hd,
            batch: self.t * heads * self.hd,
            head: self.hd,
            row: heads * self.hd,
            col: 1,
        };
        [view(0), view(self.h), view(self.h + self.kv)]
    }
    /// The contiguous `(b, t, h, hd)` output.
    fn output(&self) -> HeadView {
        HeadView {
            offset: 0,
            batch: self.t * self.h * self.hd,
            head: self.hd,
            row: self.h * self.hd,
            col: 1,
        }
    }
}

/// Runs `task(i)` for `i` in `0..n`, on the rayon pool when `parallel`.
fn for_each_task(n: usize, parallel: bool, task: impl Fn(usize) + Sync + Send) {
    if parallel {
        (0..n).into_par_iter().for_each(task);
    } else {
        (0..n).for_each(task);
    }
}

/// Causal attention over a contiguous packed projection `qkv` `(b, t, h + 2 kv, hd)` (query,
/// key, value heads as `c_attn` gives them) into `out` `(b, t, h, hd)`; one task per (batch,
/// kv head), on the rayon pool when `parallel`.
pub fn packed_forward(dims: Dims, qkv: &[f32], out: &mut [f32], parallel: bool) {
    let Dims { b, t, h, kv, hd } = dims;
    assert!(
        kv > 0
            && h.is_multiple_of(kv)
            && qkv.len() >= b * t * (h + 2 * kv) * hd
            && out.len() >= b * t * h * hd,
        "packed attention forward: buffers ({}, {}) too small for {dims:?}",
        qkv.len(),
        out.len()
    );
    if b * t * hd > 0 {
        forward_heads(dims, qkv, dims.packed(0), out, parallel);
    }
}

/// The backward of [`packed_forward`]: `grad` `(b, t, h, hd)` in, the gradient of `qkv` out
/// (`dqkv`, same layout as `qkv`, overwritten).
pub fn packed_backward(dims: Dims, qkv: &[f32], grad: &[f32], dqkv: &mut [f32], parallel: bool) {
    let Dims { b, t, h, kv, hd } = dims;
    let n = b * t * (h + 2 * kv) * hd;
    assert!(
        kv > 0
            && h.is_multiple_of(kv)
            && qkv.len() >= n
            && dqkv.len() >= n
            && grad.len() >= b * t * h * hd,
        "packed attention backward: buffers too small for {dims:?}"
    );
    dqkv[..n].fill(0.0);
    if n > 0 {
        let views = dims.packed(0);
        backward_heads(dims, qkv, views, grad, dqkv, views, parallel);
    }
}

/// Forward over all heads: `out` receives `(b, t, h, hd)`.
fn forward_heads(
    dims: Dims,
    data: &[f32],
    [qv, kv_, vv]: [HeadView; 3],
    out: &mut [f32],
    parallel: bool,
) {
    let Dims { b, t, h, kv, hd } = dims;
    let ov = dims.output();
    let n_rep = h / kv;
    let scale = dims.scale();
    let out_ptr = SharedMut(out.as_mut_ptr());
    for_each_task(b * kv, parallel, |task| {
        let (bi, g) = (task / kv, task % kv);
        let mut s = vec![0f32; BLOCK * t];
        let (k, v) = (kv_.at(bi, g), vv.at(bi, g));
        for head in g * n_rep..(g + 1) * n_rep {
            let (q, o) = (qv.at(bi, head), ov.at(bi, head));
            for i0 in (0..t).step_by(BLOCK) {
                let m = BLOCK.min(t - i0);
                let n = i0 + m;
                let s = &mut s[..m * n];
                // SAFETY: all views address `data`/`out` within the shapes checked by the op;
                // this task alone writes the output rows of `head`.
                unsafe {
                    gemm(
                        (m, n, hd),
                        s.as_mut_ptr(),
                        (n, 1),
                        false,
                        data.as_ptr().add(q + i0 * qv.row),
                        (qv.row, qv.col),
                        data.as_ptr().add(k),
                        (kv_.col, kv_.row),
                        scale,
                    );
                    masked_softmax(s, n, i0);
                    gemm(
                        (m, hd, n),
                        out_ptr.get().add(o + i0 * ov.row),
                        (ov.row, ov.col),
                        false,
                        s.as_ptr(),
                        (n, 1),
                        data.as_ptr().add(v),
                        (vv.row, vv.col),
                        1.0,
                    );
                }
            }
        }
    });
}

/// Backward over all heads: `grad` `(b, t, h, hd)` in, `dqkv` (zeroed, laid out as the packed
/// input) out.
fn backward_heads(
    dims: Dims,
    data: &[f32],
    views: [HeadView; 3],
    grad: &[f32],
    dqkv: &mut [f32],
    dviews: [HeadView; 3],
    parallel: bool,
) {
    let Dims { b, t, h, kv, hd } = dims;
    let [qv, kv_, vv] = views;
    let [dqv, dkv, dvv] = dviews;
    let gv = dims.output();
    let n_rep = h / kv;
    let scale = dims.scale();
    let dptr = SharedMut(dqkv.as_mut_ptr());
    for_each_task(b * kv, parallel, |task| {
        let (bi, g) = (task / kv, task % kv);
        let mut p = vec![0f32; BLOCK * t];
        let mut dp = vec![0f32; BLOCK * t];
        let (k, v) = (kv_.at(bi, g), vv.at(bi, g));
        let (dk, dv) = (dkv.at(bi, g), dvv.at(bi, g));
        for head in g * n_rep..(g + 1) * n_rep {
            let (q, go, dq) = (qv.at(bi, head), gv.at(bi, head), dqv.at(bi, head));
            for i0 in (0..t).step_by(BLOCK) {
                let m = BLOCK.min(t - i0);
                let n = i0 + m;
                let (p, dp) = (&mut p[..m * n], &mut dp[..m * n]);
                // SAFETY: as in `forward_heads`; this task alone writes dq of `head` and dk/dv
                // of group `g` (zeroed by the caller, so accumulating starts from 0).
                unsafe {
                    let q_blk = data.as_ptr().add(q + i0 * qv.row);
                    let go_blk = grad.as_ptr().add(go + i0 * gv.row);
                    gemm(
                        (m, n, hd),
                        p.as_mut_ptr(),
                        (n, 1),
                        false,
                        q_blk,
                        (qv.row, qv.col),
                        data.as_ptr().add(k),
                        (kv_.col, kv_.row),
                        scale,
                    );
                    masked_softmax(p, n, i0);
                    // dV[0..n] += Pᵀ dO
                    gemm(
                        (n, hd, m),
                        dptr.get().add(dv),
                        (dvv.row, dvv.col),
                        true,
                        p.as_ptr(),
                        (1, n),
                        go_blk,
                        (gv.row, gv.col),
                        1.0,
                    );
                    // dP = dO Vᵀ
                    gemm(
                        (m, n, hd),
                        dp.as_mut_ptr(),
                        (n, 1),
                        false,
                        go_blk,
                        (gv.row, gv.col),
                        data.as_ptr().add(v),
                        (vv.col, vv.row),
                        1.0,
                    );
                    softmax_backward(p, dp, n, scale);
                    // dQ = dS K
                    gemm(
                        (m, hd, n),
                        dptr.get().add(dq + i0 * dqv.row),
                        (dqv.row, dqv.col),
                        false,
                        dp.as_ptr(),
                        (n, 1),
                        data.as_ptr().add(k),
                        (kv_.row, kv_.col),
                        1.0,
                    );
                    // dK[0..n] += dSᵀ Q
                    gemm(
                        (n, hd, m),
                        dptr.get().add(dk),
                        (dkv.row, dkv.col),
                        true,
                        dp.as_ptr(),
                        (1, n),
                        q_blk,
                        (qv.row, qv.col),
                        1.0,
                    );
                }
            }
        }
    });
}

/// The fused op on a packed `(b, t, h + 2 kv, hd)` projection.
struct Sdpa {
    h: usize,
    kv: usize,
    /// The CUDA forward's log-sum-exp per query row, for the backward.
    #[cfg(feature = "cuda")]
    lse: std::sync::Mutex<Option<std::sync::Arc<candle::CudaStorage>>>,
}

impl Sdpa {
    fn new(h: usize, kv: usize) -> Self {
        Sdpa {
            h,
            kv,
            #[cfg(feature = "cuda")]
            lse: Default::default(),
        }
    }

    /// Whether the fused op takes a tensor of these shapes on its device (the CPU takes all;
    /// the CUDA kernels have a widest head).
    fn takes(x: &Tensor, dims: Dims) -> bool {
        matches!(x.device(), Device::Cpu) || super::gpu::launches::attention_fits(dims)
    }

    fn dims(&self, layout: &Layout) -> candle::Result<Dims> {
        let (b, t, heads, hd) = layout.shape().dims4()?;
        if heads != self.h + 2 * self.kv {
            candle::bail!(
                "fused attention: {heads} heads, expected {}",
                self.h + 2 * self.kv
            )
        }
        Ok(Dims {
            b,
            t,
            h: self.h,
            kv: self.kv,
            hd,
        })
    }
}

/// The f32 buffer and contiguous start of `layout`, copying when it is not contiguous.
fn packed_data<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    op: &'static str,
) -> candle::Result<std::borrow::Cow<'a, [f32]>> {
    super::layout::f32_data(s, l, op)
}

impl CustomOp1 for Sdpa {
    fn name(&self) -> &'static str {
        "fused-causal-attention"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle::Result<(CpuStorage, Shape)> {
        let dims = self.dims(l)?;
        let data = packed_data(s, l, self.name())?;
        let Dims { b, t, h, hd, .. } = dims;
        let mut out = vec![0f32; b * t * h * hd];
        if out.is_empty() {
            return Ok((CpuStorage::F32(out), Shape::from((b, t, h, hd))));
        }
        forward_heads(dims, &data, dims.packed(0), &mut out, true);
        Ok((CpuStorage::F32(out), Shape::from((b, t, h, hd))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle::CudaStorage,
        l: &Layout,
    ) -> candle::Result<(candle::CudaStorage, Shape)> {
        use crate::ops::gpu::{cuda, launches};
        let dims = self.dims(l)?;
        let Dims { b, t, h, hd, .. } = dims;
        let lse = cuda::output(&s.device, candle::DType::F32, b * h * t)?;
        let lse_addr = cuda::address_at(&lse, 0)?;
        let out = cuda::with_output(
            self.name(),
            [(s, l)],
            b * t * h * hd,
            None,
            |k, ty, [qkv], out| {
                let out = cuda::address_at(out, 0)?;
                launches::attention_forward(k, ty, [qkv, out, lse_addr], dims)
            },
        )?;
        if let Ok(mut saved) = self.lse.lock() {
            *saved = Some(std::sync::Arc::new(lse));
        }
        Ok((out, Shape::from((b, t, h, hd))))
    }

    fn bwd(&self, qkv: &Tensor, y: &Tensor, dy: &Tensor) -> candle::Result<Option<Tensor>> {
        let backward = SdpaBackward {
            dims: self.dims(qkv.layout())?,
            #[cfg(feature = "cuda")]
            lse: self.lse.lock().ok().and_then(|l| l.clone()),
        };
        Ok(Some(qkv.apply_op3_no_bwd(y, dy, &backward)?))
    }
}

/// The gradient of the packed projection from the forward's input, output and output gradient.
struct SdpaBackward {
    dims: Dims,
    #[cfg(feature = "cuda")]
    lse: Option<std::sync::Arc<candle::CudaStorage>>,
}

impl CustomOp3 for SdpaBackward {
    fn name(&self) -> &'static str {
        "fused-causal-attention-backward"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        _ys: &CpuStorage,
        _yl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> candle::Result<(CpuStorage, Shape)> {
        let data = packed_data(qs, ql, self.name())?;
        let grad = packed_data(gs, gl, self.name())?;
        let mut dqkv = vec![0f32; data.len()];
        if !dqkv.is_empty() {
            let views = self.dims.packed(0);
            backward_heads(self.dims, &data, views, &grad, &mut dqkv, views, true);
        }
        Ok((CpuStorage::F32(dqkv), ql.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        qs: &candle::CudaStorage,
        ql: &Layout,
        ys: &candle::CudaStorage,
        yl: &Layout,
        gs: &candle::CudaStorage,
        gl: &Layout,
    ) -> candle::Result<(candle::CudaStorage, Shape)> {
        use crate::ops::gpu::{cuda, launches};
        let Some(lse) = &self.lse else {
            candle::bail!("fused attention backward: the forward did not run on CUDA")
        };
        let lse = cuda::address_at(lse, 0)?;
        let inputs = [(qs, ql), (ys, yl), (gs, gl)];
        let n = ql.shape().elem_count();
        let dqkv = cuda::with_output(self.name(), inputs, n, None, |k, ty, [qkv, y, dy], dqkv| {
            let dqkv = cuda::address_at(dqkv, 0)?;
            launches::attention_backward(k, ty, [qkv, y, dy, lse, dqkv], self.dims)
        })?;
        Ok((dqkv, ql.shape().clone()))
    }
}
