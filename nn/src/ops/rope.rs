//! Rotary position embeddings (RoFormer, Su et al. 2021) in the "rotate half" layout of
//! GPT-NeoX and Llama: the first and second half of each head form the rotated pairs,
//!
//! ```text
//! y₁ = x₁ cos θ - x₂ sin θ,   y₂ = x₂ cos θ + x₁ sin θ
//! ```
//!
//! The backward is the inverse rotation (θ → -θ) of the incoming gradient. Two layouts:
//! `(b, h, t, hd)` ([`rope`], like candle's non-differentiable `rotary_emb::rope`), and a packed
//! `(b, t, heads, hd)` projection where only the first heads (queries and keys) rotate
//! ([`rope_packed`]), so attention can take the projection without splitting it.

use crate::candle::{self, CpuStorage, CustomOp3, Layout, Shape, Tensor, D};
use crate::ops::layout::{f32_data, rows_per_task};
use crate::ops::math::simd_kernel;
use crate::rayon::prelude::*;

/// Rotates `x` `(b, h, t, hd)` by `cos`/`sin` `(t, hd / 2)`; fused on CPU f32, composed otherwise.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle::Result<Tensor> {
    let (_, h, t, hd) = x.dims4()?;
    check_tables(cos, sin, t, hd)?;
    if super::kernel_path_all("rope", &[x, cos, sin]) {
        x.apply_op3(
            cos,
            sin,
            Rope {
                seq_major: false,
                rotated: h,
                inverse: false,
            },
        )
    } else {
        rope_reference(x, cos, sin)
    }
}

/// Rotates the first `rotated` heads of the packed `x` `(b, t, heads, hd)` and passes the others
/// through; `cos`/`sin` `(t, hd / 2)`. Fused on CPU f32, composed otherwise.
pub fn rope_packed(
    x: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    rotated: usize,
) -> candle::Result<Tensor> {
    let (_, t, heads, hd) = x.dims4()?;
    check_tables(cos, sin, t, hd)?;
    if rotated > heads {
        candle::bail!("rope_packed: {rotated} rotated heads of {heads}")
    }
    if super::kernel_path_all("rope", &[x, cos, sin]) {
        return x.apply_op3(
            cos,
            sin,
            Rope {
                seq_major: true,
                rotated,
                inverse: false,
            },
        );
    }
    let r = rope_reference(&x.narrow(2, 0, rotated)?.transpose(1, 2)?, cos, sin)?;
    let rest = x.narrow(2, rotated, heads - rotated)?;
    Tensor::cat(&[&r.transpose(1, 2)?, &rest], 2)
}

/// The composed path: `narrow`/`mul`/`cat`, differentiable on every backend.
pub fn rope_reference(x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle::Result<Tensor> {
    let (_, _, t, hd) = x.dims4()?;
    let half = hd / 2;
    let cos = cos.reshape((1, 1, t, half))?;
    let sin = sin.reshape((1, 1, t, half))?;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    let r1 = (x1.broadcast_mul(&cos)? - x2.broadcast_mul(&sin)?)?;
    let r2 = (x2.broadcast_mul(&cos)? + x1.broadcast_mul(&sin)?)?;
    Tensor::cat(&[r1, r2], D::Minus1)
}

fn check_tables(cos: &Tensor, sin: &Tensor, t: usize, hd: usize) -> candle::Result<()> {
    if !hd.is_multiple_of(2) || cos.dims() != [t, hd / 2] || sin.dims() != [t, hd / 2] {
        candle::bail!(
            "rope: head size {hd} must be even and cos/sin ({t}, {}), got {:?} / {:?}",
            hd / 2,
            cos.dims(),
            sin.dims()
        )
    }
    Ok(())
}

simd_kernel! {
    /// One head row: rotate by (`cos`, `sign · sin`).
    pub fn rotate(x: &[f32], y: &mut [f32], cos: &[f32], sin: &[f32], sign: f32) {
        let half = cos.len();
        let (x1, x2) = x.split_at(half);
        let (y1, y2) = y.split_at_mut(half);
        for i in 0..half {
            let (c, s) = (cos[i], sign * sin[i]);
            y1[i] = x1[i] * c - x2[i] * s;
            y2[i] = x2[i] * c + x1[i] * s;
        }
    }
}

struct Rope {
    /// `(b, t, heads, hd)` rather than `(b, h, t, hd)`.
    seq_major: bool,
    /// Heads that rotate (the first ones); the rest are copied.
    rotated: usize,
    /// Rotate by -θ (the backward).
    inverse: bool,
}

impl Rope {
    /// Where the head rows of an input of this layout sit.
    fn layout(&self, xl: &Layout) -> candle::Result<RopeLayout> {
        let (_, d1, d2, hd) = xl.shape().dims4()?;
        let (t, heads) = if self.seq_major { (d1, d2) } else { (d2, d1) };
        Ok(RopeLayout {
            t,
            heads,
            hd,
            seq_major: self.seq_major,
            rotated: self.rotated,
        })
    }
}

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        "fused-rope"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        cs: &CpuStorage,
        cl: &Layout,
        ss: &CpuStorage,
        sl: &Layout,
    ) -> candle::Result<(CpuStorage, Shape)> {
        let x = f32_data(xs, xl, self.name())?;
        let cos = f32_data(cs, cl, self.name())?;
        let sin = f32_data(ss, sl, self.name())?;
        let layout = self.layout(xl)?;
        let mut y = vec![0f32; x.len()];
        rotate_all(&x, &mut y, &cos, &sin, layout, self.inverse, true);
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &candle::CudaStorage,
        xl: &Layout,
        cs: &candle::CudaStorage,
        cl: &Layout,
        ss: &candle::CudaStorage,
        sl: &Layout,
    ) -> candle::Result<(candle::CudaStorage, Shape)> {
        use crate::ops::gpu::{cuda, launches};
        let layout = self.layout(xl)?;
        let n = xl.shape().elem_count();
        let rows = n / layout.hd.max(1);
        let inputs = [(xs, xl), (cs, cl), (ss, sl)];
        let y = cuda::with_output(self.name(), inputs, n, None, |k, ty, [x, cos, sin], y| {
            let y = cuda::address_at(y, 0)?;
            launches::rope_rotate(k, ty, [x, y, cos, sin], rows, layout, self.inverse)
        })?;
        Ok((y, xl.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let inverse = Rope {
            seq_major: self.seq_major,
            rotated: self.rotated,
            inverse: !self.inverse,
        };
        Ok((Some(dy.apply_op3_no_bwd(cos, sin, &inverse)?), None, None))
    }
}

/// Where the head rows of a rope input sit: `(b, t, heads, hd)` when `seq_major`, else
/// `(b, heads, t, hd)`; the first `rotated` heads rotate, the rest are copied.
#[derive(Debug, Clone, Copy)]
pub struct RopeLayout {
    pub t: usize,
    pub heads: usize,
    pub hd: usize,
    pub seq_major: bool,
    pub rotated: usize,
}

/// Rotates every head row of `x` into `y` (same length) by the angles of its position (`cos`,
/// `sin` `(t, hd / 2)` row-major), or by minus them when `inverse` (the backward), in parallel
/// tasks when `parallel`.
pub fn rotate_all(
    x: &[f32],
    y: &mut [f32],
    cos: &[f32],
    sin: &[f32],
    layout: RopeLayout,
    inverse: bool,
    parallel: bool,
) {
    let RopeLayout {
        t,
        heads,
        hd,
        seq_major,
        rotated,
    } = layout;
    let half = hd / 2;
    let rows = x.len() / hd.max(1);
    if rows == 0 || hd == 0 {
        return;
    }
    let sign = if inverse { -1.0 } else { 1.0 };
    let task = |first: usize, y: &mut [f32], x: &[f32]| {
        for (r, (y, x)) in y.chunks_exact_mut(hd).zip(x.chunks_exact(hd)).enumerate() {
            let row = first + r;
            let (ti, head) = if seq_major {
                ((row / heads) % t, row % heads)
            } else {
                (row % t, (row / t) % heads)
            };
            if head < rotated {
                let tab = ti * half..(ti + 1) * half;
                rotate(x, y, &cos[tab.clone()], &sin[tab], sign);
            } else {
                y.copy_from_slice(x);
            }
        }
    };
    if !parallel {
        return task(0, &mut y[..rows * hd], &x[..rows * hd]);
    }
    let per = rows_per_task(rows, hd);
    y[..rows * hd]
        .par_chunks_mut(per * hd)
        .zip(x[..rows * hd].par_chunks(per * hd))
        .enumerate()
        .for_each(|(i, (y, x))| task(i * per, y, x));
}
