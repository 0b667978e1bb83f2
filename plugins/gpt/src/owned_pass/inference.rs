//! The owned inference pass (issue 25 item 5): `Model::forward` without gradients, over the
//! owned pass's kernels but with only the buffers the next layer needs.
//!
//! Per `(rows, seq)` an [`InferenceArena`] holds one residual stream `x` that every block
//! updates in place (the projections' gemm accumulates onto it, bias included: no residual
//! copy, no separate add), one norm output, the q/k/v projection (and its pre-transform copy
//! with qk-norm or rope), the attention output and the MLP's hidden buffers. Nothing is kept
//! for a backward. The logits are written by the head's gemm straight into the `Vec` the
//! returned candle tensor takes over (no copy); `hidden_states` are one copy of the final norm.
//!
//! Threading ([`Threading`]): called from outside the rayon pool, the whole batch runs as one
//! part with every kernel spread over the pool; called from a pool thread (a part of someone
//! else's parallel job), it runs single-threaded on that thread. The alternative, the row split
//! of the training step (one part per pool thread, each running the whole model on its rows
//! with single-threaded kernels), measured the same CPU time per pass and 1-3% fewer tokens/s
//! in 7 of 8 alternating medians on 2 cores (docs/kernels.md, "The owned inference pass"); it
//! stays selectable (`LLMLAB_INFERENCE_THREADING=split`) for machines with more cores. Each
//! row's numbers are the same bits on every threading (every kernel's result for a row depends
//! on that row alone, in a fixed order; `tests/owned_inference.rs` checks it), and they are
//! candle's graph's bits too (the same kernels in the same order).

use llmlab_nn::ops::linear::forward_product;
use llmlab_nn::ops::{attention, gelu, rope, swiglu};
use llmlab_plugin_api::candle::{DType, Device, Tensor};
use llmlab_plugin_api::rayon::prelude::*;
use llmlab_plugin_api::{Error, ForwardOptions, ForwardOutput, Result};

use super::forward::{accumulate, linear, norm, qk_norm, Shape};
use super::weights::{BlockIx, Layout};
use crate::config::{GptConfig, MlpKind};
use crate::model::Gpt;

/// How an inference pass spreads over the rayon pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threading {
    /// One part per pool thread (at most one row each), single-threaded kernels in each part.
    RowSplit,
    /// The whole batch in one part, every kernel spread over the pool.
    WholeBatch,
    /// The whole batch on the calling thread.
    Inline,
}

impl Threading {
    /// The default for a call from the current thread: inline on a pool thread (the caller is
    /// already one part of a parallel job), the whole batch on the pool from outside it
    /// (`LLMLAB_INFERENCE_THREADING=split`: the row split, for A/B).
    pub fn for_caller() -> Threading {
        use llmlab_plugin_api::rayon::{current_num_threads, current_thread_index};
        if current_thread_index().is_some() || current_num_threads() < 2 {
            Threading::Inline
        } else {
            match std::env::var("LLMLAB_INFERENCE_THREADING").as_deref() {
                Ok("split") => Threading::RowSplit,
                _ => Threading::WholeBatch,
            }
        }
    }
}

/// The buffers of one inference part: `n` = rows · seq tokens, widths as in [`Shape`].
pub struct InferenceArena {
    rows: usize,
    seq: usize,
    /// The residual stream `(n, c)`, updated in place block by block.
    x: Vec<f32>,
    /// Norm output `(n, c)` (each block's two norms, then the final norm).
    xn: Vec<f32>,
    /// `c_attn`'s output before qk-norm/rope `(n, k)` (empty without either), and the qk-norm
    /// output rope reads (empty unless both).
    qkv_pre: Vec<f32>,
    qkv_normed: Vec<f32>,
    /// The projection attention reads `(n, k)` and its output `(n, q)`.
    qkv: Vec<f32>,
    att: Vec<f32>,
    /// `c_fc` output (SwiGLU: the up half), the gate (SwiGLU only), the activation `(n, f)`.
    fc: Vec<f32>,
    gate: Vec<f32>,
    act: Vec<f32>,
    /// Rope tables for positions `0..seq` (empty without rope).
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl InferenceArena {
    fn new(gpt: &Gpt, rows: usize, seq: usize) -> Result<InferenceArena> {
        let cfg = gpt.gpt_config();
        let s = Shape::new(cfg, rows, seq);
        let buf = |width: usize| vec![0f32; s.n * width];
        let rope = gpt.stages().rope;
        let transformed = cfg.qk_norm || rope.is_some();
        let swiglu = cfg.mlp == MlpKind::Swiglu;
        let (cos, sin) = match rope {
            Some(rope) => super::arena::rope_tables(rope, seq, s.hd)?,
            None => (Vec::new(), Vec::new()),
        };
        Ok(InferenceArena {
            rows,
            seq,
            x: buf(s.c),
            xn: buf(s.c),
            qkv_pre: buf(if transformed { s.k } else { 0 }),
            qkv_normed: buf(if cfg.qk_norm && rope.is_some() {
                s.k
            } else {
                0
            }),
            qkv: buf(s.k),
            att: buf(s.q),
            fc: buf(s.f),
            gate: buf(if swiglu { s.f } else { 0 }),
            act: buf(s.f),
            cos,
            sin,
        })
    }
}

/// Inference arenas by shape, shared by the passes of one model (each concurrent part takes
/// its own).
pub type InferencePool = super::arena::ShapePool<InferenceArena>;

/// Whether a `no_grad` forward may take this pass: yes unless `LLMLAB_OWNED_INFERENCE=0`
/// (read once; the switch the A/B benchmarks use to time candle's graph instead).
pub fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("LLMLAB_OWNED_INFERENCE").is_none_or(|v| v != "0"))
}

/// The owned inference pass when it covers this call — a `no_grad` pass, not training, `pass`
/// not `"autograd"`, the config covered ([`super::eligibility`]) — `None` for candle's graph.
///
/// `no_grad` and not merely `train: false`: this pass returns detached logits, while candle's
/// `forward` with `train` off is still differentiable — it means "no dropout" — and trainers
/// build losses on it (GRPO's and PPO's policy terms). Routing those here once silently
/// stopped their learning (the two-rank GRPO test caught it: rank 1 ended with no optimizer
/// moments).
pub fn try_forward(
    gpt: &Gpt,
    ids: &Tensor,
    options: &ForwardOptions,
) -> Result<Option<ForwardOutput>> {
    if !options.no_grad
        || options.train
        || !enabled()
        || gpt.gpt_config().pass == super::PassKind::Autograd
        || super::eligibility(gpt, ids, options, gpt.dtype()).is_some()
    {
        return Ok(None);
    }
    forward(gpt, ids, options.hidden_states, Threading::for_caller()).map(Some)
}

/// Logits (and with `hidden` the final norm's output) of `ids` `(b, t)` by the owned inference
/// pass; the caller checked [`super::eligibility`].
pub fn forward(
    gpt: &Gpt,
    ids: &Tensor,
    hidden: bool,
    threading: Threading,
) -> Result<ForwardOutput> {
    let (b, t) = ids.dims2()?;
    let ids: Vec<u32> = ids.flatten_all()?.to_dtype(DType::U32)?.to_vec1()?;
    let cfg = gpt.gpt_config();
    let vocab = cfg.vocab_size;
    if let Some(bad) = ids.iter().find(|&&i| i as usize >= vocab) {
        return Err(Error::msg(format!(
            "gpt: token id {bad} is outside the vocabulary of {vocab}"
        )));
    }
    let layout = Layout::of(gpt, gpt.parameters_owned())?;
    let (c, row_logits, row_hidden) = (cfg.d_model, t * vocab, t * cfg.d_model);
    let mut logits = vec![0f32; b * row_logits];
    let mut hidden_out = vec![0f32; if hidden { b * row_hidden } else { 0 }];
    let parts = match threading {
        Threading::RowSplit => llmlab_plugin_api::rayon::current_num_threads().clamp(1, b.max(1)),
        _ => 1,
    };
    // Row ranges and the output slices each part writes.
    let bounds: Vec<(usize, usize)> = (0..parts)
        .map(|p| (p * b / parts, (p + 1) * b / parts))
        .collect();
    let mut outs = Vec::with_capacity(parts);
    let (mut rest_l, mut rest_h) = (&mut logits[..], &mut hidden_out[..]);
    for &(start, end) in &bounds {
        let (l, tail_l) = rest_l.split_at_mut((end - start) * row_logits);
        let (h, tail_h) = rest_h.split_at_mut(if hidden {
            (end - start) * row_hidden
        } else {
            0
        });
        outs.push((start, end, l, h));
        (rest_l, rest_h) = (tail_l, tail_h);
    }
    super::with_weights(gpt, |w| {
        let part = |(start, end, l, h): (usize, usize, &mut [f32], &mut [f32])| {
            let rows = end - start;
            let pool = gpt.inference_arenas();
            let mut arena = pool.take(
                |a: &InferenceArena| a.rows == rows && a.seq == t,
                || InferenceArena::new(gpt, rows, t),
            )?;
            let s = Shape::new(cfg, rows, t);
            let parallel = threading == Threading::WholeBatch;
            run(
                &s,
                cfg,
                &layout,
                w,
                &mut arena,
                &ids[start * t..end * t],
                l,
                parallel,
            );
            if hidden {
                h.copy_from_slice(&arena.xn[..rows * t * c]);
            }
            pool.give(arena);
            Ok(())
        };
        if parts > 1 {
            outs.into_par_iter()
                .map(part)
                .collect::<Result<Vec<()>>>()?;
        } else {
            outs.into_iter().try_for_each(part)?;
        }
        Ok(())
    })?;
    let logits = Tensor::from_vec(logits, (b, t, vocab), &Device::Cpu)?;
    let hidden = hidden
        .then(|| Tensor::from_vec(hidden_out, (b, t, c), &Device::Cpu))
        .transpose()?;
    Ok(ForwardOutput {
        logits,
        aux_loss: None,
        hidden,
    })
}

/// One part's pass over `ids` (`s.b · s.t` tokens) into `logits` `(n, v)`; the final norm's
/// output stays in `a.xn`.
#[allow(clippy::too_many_arguments)]
fn run(
    s: &Shape,
    cfg: &GptConfig,
    l: &Layout,
    w: &[&[f32]],
    a: &mut InferenceArena,
    ids: &[u32],
    logits: &mut [f32],
    parallel: bool,
) {
    let (c, t) = (s.c, s.t);
    let opt = |i: Option<usize>| i.map(|i| w[i]);
    for (n, (row, &id)) in a.x.chunks_exact_mut(c).zip(ids).enumerate() {
        let id = id as usize;
        row.copy_from_slice(&w[l.wte][id * c..(id + 1) * c]);
        if let Some(wpe) = opt(l.wpe) {
            let pos = n % t;
            row.iter_mut()
                .zip(&wpe[pos * c..(pos + 1) * c])
                .for_each(|(x, p)| *x += p);
        }
    }
    let transformed = !a.qkv_pre.is_empty();
    for bl in &l.blocks {
        norm(
            cfg.norm,
            &a.x,
            w[bl.ln1_w],
            opt(bl.ln1_b),
            &mut a.xn,
            s,
            parallel,
        );
        let proj_out = if transformed {
            &mut a.qkv_pre
        } else {
            &mut a.qkv
        };
        linear(
            s,
            (c, s.k),
            &a.xn,
            w[bl.attn_w],
            opt(bl.attn_b),
            proj_out,
            parallel,
        );
        if transformed {
            transform_qkv(s, bl, w, a, parallel);
        }
        attention::packed_forward(s.attention(), &a.qkv, &mut a.att, parallel);
        accumulate(
            s,
            (s.q, c),
            &a.att,
            w[bl.proj_w],
            opt(bl.proj_b),
            &mut a.x,
            parallel,
        );
        norm(
            cfg.norm,
            &a.x,
            w[bl.ln2_w],
            opt(bl.ln2_b),
            &mut a.xn,
            s,
            parallel,
        );
        linear(
            s,
            (c, s.f),
            &a.xn,
            w[bl.fc_w],
            opt(bl.fc_b),
            &mut a.fc,
            parallel,
        );
        match (cfg.mlp, bl.gate_w) {
            (MlpKind::Swiglu, Some(gate_w)) => {
                linear(
                    s,
                    (c, s.f),
                    &a.xn,
                    w[gate_w],
                    opt(bl.gate_b),
                    &mut a.gate,
                    parallel,
                );
                swiglu::forward(&a.gate, &a.fc, &mut a.act, parallel);
            }
            _ => gelu::forward(&a.fc, &mut a.act, parallel),
        }
        accumulate(
            s,
            (s.f, c),
            &a.act,
            w[bl.out_w],
            opt(bl.out_b),
            &mut a.x,
            parallel,
        );
    }
    norm(
        cfg.norm,
        &a.x,
        w[l.lnf_w],
        opt(l.lnf_b),
        &mut a.xn,
        s,
        parallel,
    );
    forward_product(s.linear(c, s.v), &a.xn, w[l.head], logits, false, parallel);
}

/// qk-norm (RMSNorm of each query and key head) and rope of `qkv_pre` into `qkv`.
fn transform_qkv(s: &Shape, bl: &BlockIx, w: &[&[f32]], a: &mut InferenceArena, parallel: bool) {
    let rotate = !a.cos.is_empty();
    if let (Some(qn), Some(kn)) = (bl.q_norm, bl.k_norm) {
        let normed: &mut Vec<f32> = if rotate {
            &mut a.qkv_normed
        } else {
            &mut a.qkv
        };
        qk_norm(s, (w[qn], w[kn]), &a.qkv_pre, normed);
    }
    if rotate {
        let source = if bl.q_norm.is_some() {
            &a.qkv_normed
        } else {
            &a.qkv_pre
        };
        rope::rotate_all(
            source,
            &mut a.qkv,
            &a.cos,
            &a.sin,
            s.rope(),
            false,
            parallel,
        );
    }
}
