//! The buffers of one owned pass: every activation the backward reads, the backward's scratch,
//! and every parameter's gradient, allocated once for a `(rows, seq)` shape and reused by each
//! later pass of that shape ([`ArenaPool`]).

use std::sync::Mutex;

use llmlab_plugin_api::candle::{DType, Device, Tensor};
use llmlab_plugin_api::Result;

use super::forward::Shape;
use super::weights::Layout;
use crate::config::MlpKind;
use crate::model::Gpt;

/// Arenas kept for reuse: enough for a row-parallel step's parts on a few cores plus an
/// evaluation shape; an arena of another shape beyond that is dropped after its pass.
const POOLED: usize = 4;

/// One pass's buffers. `n` = rows · seq tokens; widths: `c` = d_model, `k` = the packed
/// q/k/v width, `q` = all query heads, `f` = the MLP's hidden width, `v` = vocab.
pub struct Arena {
    pub rows: usize,
    pub seq: usize,
    /// Residual stream entering each block and leaving the last: `n_layer + 1` of `(n, c)`.
    pub res: Vec<Vec<f32>>,
    /// After each block's attention: `(n, c)`.
    pub res_mid: Vec<Vec<f32>>,
    /// Norm outputs before attention and MLP: `(n, c)`.
    pub xn1: Vec<Vec<f32>>,
    pub xn2: Vec<Vec<f32>>,
    /// The `c_attn` output before qk-norm and rope (empty without either): `(n, k)`.
    pub qkv_pre: Vec<Vec<f32>>,
    /// The projection attention reads (normed and rotated): `(n, k)`.
    pub qkv: Vec<Vec<f32>>,
    /// Attention output (before `c_proj`): `(n, q)`.
    pub att: Vec<Vec<f32>>,
    /// `c_fc` output (SwiGLU: the "up" half), the gate (SwiGLU only) and the activation: `(n, f)`.
    pub fc: Vec<Vec<f32>>,
    pub gate: Vec<Vec<f32>>,
    pub act: Vec<Vec<f32>>,
    /// GELU's `tanh` term per element, kept for the backward (GELU only): `(n, f)`.
    pub gelu_tanh: Vec<Vec<f32>>,
    /// Final norm output `(n, c)` and logits `(n, v)`.
    pub xf: Vec<f32>,
    pub logits: Vec<f32>,
    /// Rope tables for positions `0..seq`: `(seq, head_dim / 2)` each; empty without rope.
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
    /// Backward scratch: residual gradient, two `(n, c)`, `(n, q)`, two `(n, k)`, three `(n, f)`.
    pub dres: Vec<f32>,
    pub dc1: Vec<f32>,
    pub dc2: Vec<f32>,
    pub datt: Vec<f32>,
    pub dk1: Vec<f32>,
    pub dk2: Vec<f32>,
    pub df1: Vec<f32>,
    pub df2: Vec<f32>,
    pub df3: Vec<f32>,
    /// Each parameter's gradient, in parameter order.
    pub grads: Vec<Vec<f32>>,
}

impl Arena {
    fn new(gpt: &Gpt, layout: &Layout, rows: usize, seq: usize) -> Result<Arena> {
        let cfg = gpt.gpt_config();
        let s = Shape::new(cfg, rows, seq);
        let n = s.n;
        let layers = cfg.n_layer;
        let buf = |width: usize| vec![0f32; n * width];
        let per_layer = |width: usize| (0..layers).map(|_| buf(width)).collect::<Vec<_>>();
        let transformed = cfg.qk_norm || rope_of(gpt).is_some();
        let swiglu = cfg.mlp == MlpKind::Swiglu;
        let (cos, sin) = match rope_of(gpt) {
            Some(rope) => rope_tables(rope, seq, s.hd)?,
            None => (Vec::new(), Vec::new()),
        };
        Ok(Arena {
            rows,
            seq,
            res: (0..=layers).map(|_| buf(s.c)).collect(),
            res_mid: per_layer(s.c),
            xn1: per_layer(s.c),
            xn2: per_layer(s.c),
            qkv_pre: per_layer(if transformed { s.k } else { 0 }),
            qkv: per_layer(s.k),
            att: per_layer(s.q),
            fc: per_layer(s.f),
            gate: per_layer(if swiglu { s.f } else { 0 }),
            act: per_layer(s.f),
            gelu_tanh: per_layer(if swiglu { 0 } else { s.f }),
            xf: buf(s.c),
            logits: buf(s.v),
            cos,
            sin,
            dres: buf(s.c),
            dc1: buf(s.c),
            dc2: buf(s.c),
            datt: buf(s.q),
            dk1: buf(s.k),
            dk2: buf(if transformed { s.k } else { 0 }),
            df1: buf(s.f),
            df2: buf(s.f),
            df3: buf(if swiglu { s.f } else { 0 }),
            grads: layout.sizes.iter().map(|&len| vec![0f32; len]).collect(),
        })
    }

    fn fits(&self, layout: &Layout, rows: usize, seq: usize) -> bool {
        self.rows == rows
            && self.seq == seq
            && self.grads.len() == layout.sizes.len()
            && self
                .grads
                .iter()
                .zip(&layout.sizes)
                .all(|(g, &n)| g.len() == n)
    }
}

fn rope_of(gpt: &Gpt) -> Option<&llmlab_nn::rope::Rope> {
    gpt.stages().rope
}

/// `cos` and `sin` of positions `0..seq` from the model's own rope: rotating the unit vector
/// `(1, 0)` of every pair gives `(cos θ, sin θ)` exactly (`1·c - 0·s`, `0·c + 1·s`), so the
/// tables (any `rope_scaling` included) are the ones the autograd path uses.
pub(super) fn rope_tables(
    rope: &llmlab_nn::rope::Rope,
    seq: usize,
    hd: usize,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let half = hd / 2;
    let unit: Vec<f32> = (0..seq)
        .flat_map(|_| (0..hd).map(|j| if j < half { 1.0 } else { 0.0 }))
        .collect();
    let unit = Tensor::from_vec(unit, (1, seq, 1, hd), &Device::Cpu)?;
    let rotated: Vec<f32> = rope
        .apply_packed(&unit, 1)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1()?;
    let (mut cos, mut sin) = (
        Vec::with_capacity(seq * half),
        Vec::with_capacity(seq * half),
    );
    for row in rotated.chunks_exact(hd) {
        cos.extend_from_slice(&row[..half]);
        sin.extend_from_slice(&row[half..]);
    }
    Ok((cos, sin))
}

/// Buffers by shape, shared by the passes of one model: a pass takes buffers that fit its
/// shape (or makes them) and gives them back after, so concurrent passes never share buffers.
/// The training arenas ([`ArenaPool`]) and the inference arenas (`inference.rs`) both live in one.
pub struct ShapePool<A>(Mutex<Vec<A>>);

impl<A> Default for ShapePool<A> {
    fn default() -> Self {
        ShapePool(Mutex::new(Vec::new()))
    }
}

impl<A> ShapePool<A> {
    /// A kept arena for which `fits` holds, or a new one from `make`.
    pub fn take(&self, fits: impl Fn(&A) -> bool, make: impl FnOnce() -> Result<A>) -> Result<A> {
        let reused = {
            let mut pool = self.0.lock().unwrap_or_else(|p| p.into_inner());
            pool.iter().position(fits).map(|i| pool.swap_remove(i))
        };
        match reused {
            Some(arena) => Ok(arena),
            None => make(),
        }
    }

    /// Returns `arena` for reuse; beyond [`POOLED`] arenas the oldest is dropped.
    pub fn give(&self, arena: A) {
        let mut pool = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() >= POOLED {
            pool.remove(0);
        }
        pool.push(arena);
    }

    /// How many arenas are kept (for tests).
    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The training pass's arenas.
pub type ArenaPool = ShapePool<Arena>;

impl ArenaPool {
    /// An arena for `rows` × `seq` tokens, reused when one is free.
    pub fn take_for(&self, gpt: &Gpt, layout: &Layout, rows: usize, seq: usize) -> Result<Arena> {
        self.take(
            |a| a.fits(layout, rows, seq),
            || Arena::new(gpt, layout, rows, seq),
        )
    }
}
