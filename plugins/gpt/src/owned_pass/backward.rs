//! The owned backward pass, from the logits' gradient to every parameter's, reading the
//! activations the forward left in the arena. Per linear layer `y = x Wᵀ + b`:
//! `dx = dy W`, `dW = dyᵀ x` (written `(out, in)` as stored), `db = Σ_rows dy`, each one gemm
//! with transposes as strides. The residual stream's gradient `dres` runs from the head down;
//! each branch adds its input gradient into it. A tied head's gradient and the embedding's
//! scatter land in the same buffer.

use llmlab_nn::ops::linear::{bias_grad, input_grad, weight_grad};
use llmlab_nn::ops::{attention, gelu, layer_norm, rms_norm, rope, swiglu};

use super::arena::Arena;
use super::forward::Shape;
use super::weights::{BlockIx, Layout};
use crate::config::{GptConfig, NormKind};

/// Norm backward: `dx` from `x` and `dy`; the weight's (and bias's) gradient written.
#[allow(clippy::too_many_arguments)]
fn norm(
    kind: NormKind,
    s: &Shape,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    grads: &mut [Vec<f32>],
    (w_ix, b_ix): (usize, Option<usize>),
    parallel: bool,
) {
    let rms = kind == NormKind::Rms;
    let (dw, db) = match b_ix {
        // Two different parameters: split the borrow.
        Some(b) => {
            let (dw, db) = two(grads, w_ix, b);
            (dw, Some(db))
        }
        None => (&mut grads[w_ix][..], None),
    };
    layer_norm::backward(x, w, dy, dx, dw, db, s.eps, s.n, rms, parallel);
}

/// Mutable views of two different gradients.
fn two(grads: &mut [Vec<f32>], i: usize, j: usize) -> (&mut [f32], &mut [f32]) {
    assert_ne!(i, j, "two gradients of one parameter");
    if i < j {
        let (a, b) = grads.split_at_mut(j);
        (&mut a[i], &mut b[0])
    } else {
        let (a, b) = grads.split_at_mut(i);
        (&mut b[0], &mut a[j])
    }
}

/// The backward of `y = x Wᵀ + b` from `dy`: the input gradient into `dx` (added to it when
/// `accumulate`), the weight's and bias's gradients written.
#[allow(clippy::too_many_arguments)]
fn linear_backward(
    s: &Shape,
    (in_dim, out_dim): (usize, usize),
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    (dx, accumulate): (&mut [f32], bool),
    grads: &mut [Vec<f32>],
    (w_ix, b_ix): (usize, Option<usize>),
    parallel: bool,
) {
    let dims = s.linear(in_dim, out_dim);
    input_grad(dims, dy, w, dx, accumulate, parallel);
    weight_grad(dims, dy, x, &mut grads[w_ix], false, parallel);
    if let Some(b) = b_ix {
        bias_grad(&dy[..s.n * out_dim], &mut grads[b], parallel);
    }
}

fn add_into(dst: &mut [f32], src: &[f32]) {
    dst.iter_mut().zip(src).for_each(|(d, s)| *d += s);
}

/// The backward pass: the gradients of the logits `(n, v)` and (when the loss read them) of the
/// final norm's output `(n, c)` in, `arena.grads` out (every parameter's gradient).
#[allow(clippy::too_many_arguments)]
pub fn backward(
    s: &Shape,
    cfg: &GptConfig,
    l: &Layout,
    w: &[&[f32]],
    a: &mut Arena,
    ids: &[u32],
    (dlogits, dhidden): (&[f32], Option<&[f32]>),
    parallel: bool,
) {
    let (c, n) = (s.c, s.n);
    // Head and final norm.
    linear_backward(
        s,
        (c, s.v),
        &a.xf,
        w[l.head],
        dlogits,
        (&mut a.dc1, false),
        &mut a.grads,
        (l.head, None),
        parallel,
    );
    if let Some(dh) = dhidden {
        add_into(&mut a.dc1, dh);
    }
    let last = l.blocks.len();
    norm(
        cfg.norm,
        s,
        &a.res[last],
        w[l.lnf_w],
        &a.dc1,
        &mut a.dres,
        &mut a.grads,
        (l.lnf_w, l.lnf_b),
        parallel,
    );
    for (i, bl) in l.blocks.iter().enumerate().rev() {
        mlp(s, cfg, bl, w, a, i, parallel);
        attention_branch(s, cfg, bl, w, a, i, parallel);
    }
    // Embeddings: a tied head's gradient is already in wte's buffer.
    if l.head != l.wte {
        a.grads[l.wte].fill(0.0);
    }
    let dwte = &mut a.grads[l.wte];
    for (row, &id) in a.dres[..n * c].chunks_exact(c).zip(ids) {
        let id = id as usize;
        add_into(&mut dwte[id * c..(id + 1) * c], row);
    }
    if let Some(wpe) = l.wpe {
        let dwpe = &mut a.grads[wpe];
        dwpe.fill(0.0);
        for (tok, row) in a.dres[..n * c].chunks_exact(c).enumerate() {
            let pos = tok % s.t;
            add_into(&mut dwpe[pos * c..(pos + 1) * c], row);
        }
    }
}

/// Block `i`'s MLP branch: its parameters' gradients, its input gradient added into `dres`.
fn mlp(
    s: &Shape,
    cfg: &GptConfig,
    bl: &BlockIx,
    w: &[&[f32]],
    a: &mut Arena,
    i: usize,
    parallel: bool,
) {
    let (c, f) = (s.c, s.f);
    linear_backward(
        s,
        (f, c),
        &a.act[i],
        w[bl.out_w],
        &a.dres,
        (&mut a.df1, false),
        &mut a.grads,
        (bl.out_w, bl.out_b),
        parallel,
    );
    // df2: the gradient of `fc` (SwiGLU's up); df3: of the gate.
    match bl.gate_w {
        None => gelu::backward_from_tanh(&a.fc[i], &a.gelu_tanh[i], &a.df1, &mut a.df2, parallel),
        Some(_) => swiglu::backward(
            &a.gate[i], &a.fc[i], &a.df1, &mut a.df3, &mut a.df2, parallel,
        ),
    }
    linear_backward(
        s,
        (c, f),
        &a.xn2[i],
        w[bl.fc_w],
        &a.df2,
        (&mut a.dc1, false),
        &mut a.grads,
        (bl.fc_w, bl.fc_b),
        parallel,
    );
    if let Some(gate_w) = bl.gate_w {
        linear_backward(
            s,
            (c, f),
            &a.xn2[i],
            w[gate_w],
            &a.df3,
            (&mut a.dc1, true),
            &mut a.grads,
            (gate_w, bl.gate_b),
            parallel,
        );
    }
    norm(
        cfg.norm,
        s,
        &a.res_mid[i],
        w[bl.ln2_w],
        &a.dc1,
        &mut a.dc2,
        &mut a.grads,
        (bl.ln2_w, bl.ln2_b),
        parallel,
    );
    add_into(&mut a.dres, &a.dc2);
}

/// Block `i`'s attention branch: its parameters' gradients, its input gradient added into
/// `dres`.
fn attention_branch(
    s: &Shape,
    cfg: &GptConfig,
    bl: &BlockIx,
    w: &[&[f32]],
    a: &mut Arena,
    i: usize,
    parallel: bool,
) {
    let c = s.c;
    linear_backward(
        s,
        (s.q, c),
        &a.att[i],
        w[bl.proj_w],
        &a.dres,
        (&mut a.datt, false),
        &mut a.grads,
        (bl.proj_w, bl.proj_b),
        parallel,
    );
    attention::packed_backward(s.attention(), &a.qkv[i], &a.datt, &mut a.dk1, parallel);
    // The gradient of `qkv_pre` (the c_attn output): in dk1, or dk2 after an odd number of
    // transforms.
    let mut in_dk2 = false;
    if !a.cos.is_empty() {
        rope::rotate_all(&a.dk1, &mut a.dk2, &a.cos, &a.sin, s.rope(), true, parallel);
        in_dk2 = true;
    }
    if let (Some(qn), Some(kn)) = (bl.q_norm, bl.k_norm) {
        let (dy, dx) = if in_dk2 {
            (&a.dk2, &mut a.dk1)
        } else {
            (&a.dk1, &mut a.dk2)
        };
        let (q, kw) = (s.q, s.kv * s.hd);
        let (dq, dk) = two(&mut a.grads, qn, kn);
        dq.fill(0.0);
        dk.fill(0.0);
        for ((x, dy), dx) in a.qkv_pre[i]
            .chunks_exact(s.k)
            .zip(dy.chunks_exact(s.k))
            .zip(dx.chunks_exact_mut(s.k))
        {
            rms_norm::backward_rows(&x[..q], w[qn], &dy[..q], &mut dx[..q], dq, s.eps);
            rms_norm::backward_rows(
                &x[q..q + kw],
                w[kn],
                &dy[q..q + kw],
                &mut dx[q..q + kw],
                dk,
                s.eps,
            );
            dx[q + kw..].copy_from_slice(&dy[q + kw..]);
        }
        in_dk2 = !in_dk2;
    }
    let dpre = if in_dk2 { &a.dk2 } else { &a.dk1 };
    linear_backward(
        s,
        (c, s.k),
        &a.xn1[i],
        w[bl.attn_w],
        dpre,
        (&mut a.dc1, false),
        &mut a.grads,
        (bl.attn_w, bl.attn_b),
        parallel,
    );
    norm(
        cfg.norm,
        s,
        &a.res[i],
        w[bl.ln1_w],
        &a.dc1,
        &mut a.dc2,
        &mut a.grads,
        (bl.ln1_w, bl.ln1_b),
        parallel,
    );
    add_into(&mut a.dres, &a.dc2);
}
