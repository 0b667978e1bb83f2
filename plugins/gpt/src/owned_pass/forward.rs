//! The owned forward pass, ids to logits, keeping in the arena what the backward reads:
//!
//! ```text
//! res₀ = wte[ids] + wpe[pos]
//! per block:  xn1 = norm₁(res)          qkv = rope(qk_norm(xn1 W_attnᵀ + b))
//!             att = causal_attention(qkv)        res_mid = res + att W_projᵀ + b
//!             xn2 = norm₂(res_mid)      fc = xn2 W_fcᵀ + b   (SwiGLU: gate = xn2 W_gateᵀ + b)
//!             act = gelu(fc)  |  silu(gate) · fc         res' = res_mid + act W_outᵀ + b
//! xf = norm_f(res_L)                    logits = xf W_headᵀ
//! ```

use llmlab_nn::ops::linear::{fill_rows, forward_product, LinearDims};
use llmlab_nn::ops::{attention, gelu, layer_norm, rms_norm, rope, swiglu};

use super::arena::Arena;
use super::weights::Layout;
use crate::config::{GptConfig, MlpKind, NormKind};

/// The sizes of one pass.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub b: usize,
    pub t: usize,
    /// Tokens: `b · t`.
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub kv: usize,
    pub hd: usize,
    /// Query heads' width `h · hd`, the packed q/k/v width `(h + 2 kv) · hd`.
    pub q: usize,
    pub k: usize,
    pub f: usize,
    pub v: usize,
    pub eps: f32,
}

impl Shape {
    pub fn new(cfg: &GptConfig, b: usize, t: usize) -> Shape {
        let (h, kv, hd) = (cfg.n_head, cfg.kv_heads(), cfg.head_dim());
        Shape {
            b,
            t,
            n: b * t,
            c: cfg.d_model,
            h,
            kv,
            hd,
            q: h * hd,
            k: (h + 2 * kv) * hd,
            f: cfg.ffn_hidden(),
            v: cfg.vocab_size,
            eps: cfg.norm_eps as f32,
        }
    }

    pub fn linear(&self, in_dim: usize, out_dim: usize) -> LinearDims {
        LinearDims {
            rows: self.n,
            in_dim,
            out_dim,
        }
    }

    pub fn attention(&self) -> attention::Dims {
        attention::Dims {
            b: self.b,
            t: self.t,
            h: self.h,
            kv: self.kv,
            hd: self.hd,
        }
    }

    pub fn rope(&self) -> rope::RopeLayout {
        rope::RopeLayout {
            t: self.t,
            heads: self.h + 2 * self.kv,
            hd: self.hd,
            seq_major: true,
            rotated: self.h + self.kv,
        }
    }
}

/// The block's or the final norm of `x` into `y` (`n` rows).
pub fn norm(
    kind: NormKind,
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    y: &mut [f32],
    s: &Shape,
    parallel: bool,
) {
    match kind {
        NormKind::Layer => layer_norm::forward(x, w, b, y, s.eps, s.n, parallel),
        NormKind::Rms => rms_norm::forward(x, w, y, s.eps, s.n, parallel),
    }
}

/// qk-norm: each head's query and key rows of the packed projection `pre` RMS-normed (weights
/// `q_w`, `k_w`) into `out`, the values copied.
pub(super) fn qk_norm(s: &Shape, (q_w, k_w): (&[f32], &[f32]), pre: &[f32], out: &mut [f32]) {
    let (q, kw) = (s.q, s.kv * s.hd);
    for (x, y) in pre.chunks_exact(s.k).zip(out.chunks_exact_mut(s.k)) {
        rms_norm::forward_rows(&x[..q], q_w, &mut y[..q], s.eps);
        rms_norm::forward_rows(&x[q..q + kw], k_w, &mut y[q..q + kw], s.eps);
        y[q + kw..].copy_from_slice(&x[q + kw..]);
    }
}

/// `y = x Wᵀ + b`.
pub(super) fn linear(
    s: &Shape,
    (in_dim, out_dim): (usize, usize),
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    y: &mut [f32],
    parallel: bool,
) {
    let y = &mut y[..s.n * out_dim];
    if let Some(b) = b {
        fill_rows(y, b, parallel);
    }
    forward_product(s.linear(in_dim, out_dim), x, w, y, b.is_some(), parallel);
}

/// `y = res + x Wᵀ + b`: a residual branch's output projection added onto the stream.
#[allow(clippy::too_many_arguments)]
fn residual(
    s: &Shape,
    (in_dim, out_dim): (usize, usize),
    res: &[f32],
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    y: &mut [f32],
    parallel: bool,
) {
    y.copy_from_slice(res);
    accumulate(s, (in_dim, out_dim), x, w, b, y, parallel);
}

/// `res += x Wᵀ + b` in place, the bias first: a residual branch's output projection added onto
/// the stream (the inference pass updates its stream so; [`residual`] onto a copy).
pub(super) fn accumulate(
    s: &Shape,
    (in_dim, out_dim): (usize, usize),
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    res: &mut [f32],
    parallel: bool,
) {
    if let Some(b) = b {
        for row in res.chunks_exact_mut(out_dim) {
            row.iter_mut().zip(b).for_each(|(y, b)| *y += b);
        }
    }
    forward_product(s.linear(in_dim, out_dim), x, w, res, true, parallel);
}

/// The forward pass of `ids` (`b · t` tokens) into `arena`, logits included.
pub fn forward(
    s: &Shape,
    cfg: &GptConfig,
    l: &Layout,
    w: &[&[f32]],
    a: &mut Arena,
    ids: &[u32],
    parallel: bool,
) {
    let (c, t) = (s.c, s.t);
    let opt = |i: Option<usize>| i.map(|i| w[i]);
    // Embeddings.
    let x0 = &mut a.res[0];
    for (n, (row, &id)) in x0.chunks_exact_mut(c).zip(ids).enumerate() {
        let id = id as usize;
        row.copy_from_slice(&w[l.wte][id * c..(id + 1) * c]);
        if let Some(wpe) = opt(l.wpe) {
            let pos = n % t;
            row.iter_mut()
                .zip(&wpe[pos * c..(pos + 1) * c])
                .for_each(|(x, p)| *x += p);
        }
    }
    let transformed = !a.qkv_pre[0].is_empty();
    for (i, bl) in l.blocks.iter().enumerate() {
        // Attention.
        norm(
            cfg.norm,
            &a.res[i],
            w[bl.ln1_w],
            opt(bl.ln1_b),
            &mut a.xn1[i],
            s,
            parallel,
        );
        let proj_out = if transformed {
            &mut a.qkv_pre[i]
        } else {
            &mut a.qkv[i]
        };
        linear(
            s,
            (c, s.k),
            &a.xn1[i],
            w[bl.attn_w],
            opt(bl.attn_b),
            proj_out,
            parallel,
        );
        if transformed {
            transform_qkv(s, bl, w, a, i, parallel);
        }
        attention::packed_forward(s.attention(), &a.qkv[i], &mut a.att[i], parallel);
        let (res_in, res_mid) = (&a.res[i], &mut a.res_mid[i]);
        residual(
            s,
            (s.q, c),
            res_in,
            &a.att[i],
            w[bl.proj_w],
            opt(bl.proj_b),
            res_mid,
            parallel,
        );
        // MLP.
        norm(
            cfg.norm,
            &a.res_mid[i],
            w[bl.ln2_w],
            opt(bl.ln2_b),
            &mut a.xn2[i],
            s,
            parallel,
        );
        linear(
            s,
            (c, s.f),
            &a.xn2[i],
            w[bl.fc_w],
            opt(bl.fc_b),
            &mut a.fc[i],
            parallel,
        );
        match (cfg.mlp, bl.gate_w) {
            (MlpKind::Swiglu, Some(gate_w)) => {
                linear(
                    s,
                    (c, s.f),
                    &a.xn2[i],
                    w[gate_w],
                    opt(bl.gate_b),
                    &mut a.gate[i],
                    parallel,
                );
                swiglu::forward(&a.gate[i], &a.fc[i], &mut a.act[i], parallel);
            }
            _ => gelu::forward_keep(&a.fc[i], &mut a.act[i], &mut a.gelu_tanh[i], parallel),
        }
        let (_, after) = a.res.split_at_mut(i + 1);
        residual(
            s,
            (s.f, c),
            &a.res_mid[i],
            &a.act[i],
            w[bl.out_w],
            opt(bl.out_b),
            &mut after[0],
            parallel,
        );
    }
    let last = &a.res[l.blocks.len()];
    norm(
        cfg.norm,
        last,
        w[l.lnf_w],
        opt(l.lnf_b),
        &mut a.xf,
        s,
        parallel,
    );
    linear(s, (c, s.v), &a.xf, w[l.head], None, &mut a.logits, parallel);
}

/// qk-norm (RMSNorm of each query and key head) and rope on block `i`'s `qkv_pre` into `qkv`.
fn transform_qkv(
    s: &Shape,
    bl: &super::weights::BlockIx,
    w: &[&[f32]],
    a: &mut Arena,
    i: usize,
    parallel: bool,
) {
    let rotate = !a.cos.is_empty();
    if let (Some(qn), Some(kn)) = (bl.q_norm, bl.k_norm) {
        // Into where rope reads from (the scratch `dk2`) when rope follows.
        let normed: &mut Vec<f32> = if rotate { &mut a.dk2 } else { &mut a.qkv[i] };
        qk_norm(s, (w[qn], w[kn]), &a.qkv_pre[i], normed);
    }
    if rotate {
        let source = if bl.q_norm.is_some() {
            &a.dk2
        } else {
            &a.qkv_pre[i]
        };
        rope::rotate_all(
            source,
            &mut a.qkv[i],
            &a.cos,
            &a.sin,
            s.rope(),
            false,
            parallel,
        );
    }
}
