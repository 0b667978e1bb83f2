//! Grids, blocks, scratch buffers and argument lists of every fused-op kernel (`plugin-api/cuda/*.cu`),
//! one function per operation, over device addresses. Shapes are checked by the callers (the
//! ops in `nn/src/ops/`); these functions only check what the kernels themselves cannot take.

use super::{Arg, ElemType, Launcher, ATTENTION_MAX_HEAD};
use crate::candle;
use crate::ops::attention::Dims;
use crate::ops::rope::RopeLayout;

/// Threads of the elementwise kernels' blocks.
const ELEMENTWISE_BLOCK: u32 = 256;
/// At most this many blocks for a grid-stride loop (each thread then loops).
const MAX_STRIDE_BLOCKS: usize = 16_384;
/// Rows summed per block in the norms' weight-gradient pass.
const NORM_ROWS_PER_CHUNK: usize = 64;
/// CUDA's limit on gridDim.y and gridDim.z.
const MAX_GRID_YZ: usize = 65_535;
/// Rows per block of the attention kernels (`ATT_ROWS` in attention.cu).
const ATTENTION_ROWS: usize = 64;
/// The head widths the attention kernels are compiled for (a head runs in the first that holds it).
const ATTENTION_HEAD_BUCKETS: [usize; 4] = [16, 32, 64, 128];

/// One block per row of `d`: a multiple of the warp size, at most 512 threads (each then loops).
fn row_block(d: usize) -> [u32; 3] {
    [d.div_ceil(32).clamp(1, 16) as u32 * 32, 1, 1]
}

fn row_grid(rows: usize) -> candle::Result<[u32; 3]> {
    let rows = u32::try_from(rows)
        .ok()
        .filter(|&r| r < i32::MAX as u32)
        .ok_or_else(|| candle::Error::Msg(format!("{rows} rows exceed one CUDA grid")))?;
    Ok([rows, 1, 1])
}

fn stride_grid(n: usize) -> [u32; 3] {
    [
        n.div_ceil(ELEMENTWISE_BLOCK as usize)
            .clamp(1, MAX_STRIDE_BLOCKS) as u32,
        1,
        1,
    ]
}

fn int(name: &str, v: usize) -> candle::Result<Arg> {
    i32::try_from(v)
        .map(Arg::I32)
        .map_err(|_| candle::Error::Msg(format!("{name} = {v} does not fit a CUDA kernel's int")))
}

fn ptr(p: Option<u64>) -> Arg {
    Arg::Ptr(p.unwrap_or(0))
}

/// LayerNorm (`rms` false, optional bias) or RMSNorm of `rows` rows of `d` into `y`.
#[allow(clippy::too_many_arguments)]
pub fn norm_forward<L: Launcher>(
    l: &L,
    ty: ElemType,
    [x, w, y]: [u64; 3],
    b: Option<u64>,
    rows: usize,
    d: usize,
    eps: f32,
    rms: bool,
) -> candle::Result<()> {
    if rows == 0 || d == 0 {
        return Ok(());
    }
    let args = [
        Arg::Ptr(x),
        Arg::Ptr(w),
        ptr(b),
        Arg::Ptr(y),
        int("d", d)?,
        Arg::F32(eps),
        Arg::I32(rms as i32),
    ];
    l.launch(
        &ty.kernel("norm_forward"),
        row_grid(rows)?,
        row_block(d),
        &args,
    )
}

/// The norms' backward: `dx` (rows × d), `dw` (d) and, when given, `db` (d).
#[allow(clippy::too_many_arguments)]
pub fn norm_backward<L: Launcher>(
    l: &L,
    ty: ElemType,
    [x, w, dy, dx, dw]: [u64; 5],
    db: Option<u64>,
    rows: usize,
    d: usize,
    eps: f32,
    rms: bool,
) -> candle::Result<()> {
    if d == 0 {
        return Ok(());
    }
    let (_stats_buf, stats) = l.scratch(rows.max(1) * 2 * 4)?;
    if rows > 0 {
        let args = [
            Arg::Ptr(x),
            Arg::Ptr(w),
            Arg::Ptr(dy),
            Arg::Ptr(dx),
            Arg::Ptr(stats),
            int("d", d)?,
            Arg::F32(eps),
            Arg::I32(rms as i32),
        ];
        l.launch(
            &ty.kernel("norm_backward_dx"),
            row_grid(rows)?,
            row_block(d),
            &args,
        )?;
    }
    let per_chunk = NORM_ROWS_PER_CHUNK.max(rows.div_ceil(MAX_GRID_YZ));
    let chunks = rows.div_ceil(per_chunk);
    let (_partial_buf, partial) = l.scratch(chunks.max(1) * 2 * d * 4)?;
    let col_blocks = d.div_ceil(ELEMENTWISE_BLOCK as usize) as u32;
    if chunks > 0 {
        let args = [
            Arg::Ptr(x),
            Arg::Ptr(dy),
            Arg::Ptr(stats),
            Arg::Ptr(partial),
            int("rows", rows)?,
            int("d", d)?,
            int("rows per chunk", per_chunk)?,
        ];
        let grid = [col_blocks, chunks as u32, 1];
        l.launch(
            &ty.kernel("norm_backward_columns"),
            grid,
            [ELEMENTWISE_BLOCK, 1, 1],
            &args,
        )?;
    }
    let args = [
        Arg::Ptr(partial),
        Arg::Ptr(dw),
        ptr(db),
        int("chunks", chunks)?,
        int("d", d)?,
    ];
    l.launch(
        &ty.kernel("norm_backward_finish"),
        [col_blocks, 1, 1],
        [ELEMENTWISE_BLOCK, 1, 1],
        &args,
    )
}

/// Softmax over rows of `d`.
pub fn softmax_forward<L: Launcher>(
    l: &L,
    ty: ElemType,
    [x, y]: [u64; 2],
    rows: usize,
    d: usize,
) -> candle::Result<()> {
    if rows == 0 || d == 0 {
        return Ok(());
    }
    let args = [Arg::Ptr(x), Arg::Ptr(y), int("d", d)?];
    l.launch(
        &ty.kernel("softmax_forward"),
        row_grid(rows)?,
        row_block(d),
        &args,
    )
}

/// `dx = y (dy - Σ y dy)` over rows of `d`.
pub fn softmax_backward<L: Launcher>(
    l: &L,
    ty: ElemType,
    [y, dy, dx]: [u64; 3],
    rows: usize,
    d: usize,
) -> candle::Result<()> {
    if rows == 0 || d == 0 {
        return Ok(());
    }
    let args = [Arg::Ptr(y), Arg::Ptr(dy), Arg::Ptr(dx), int("d", d)?];
    l.launch(
        &ty.kernel("softmax_backward"),
        row_grid(rows)?,
        row_block(d),
        &args,
    )
}

/// An elementwise kernel over `n` elements and the given buffers.
fn elementwise<L: Launcher>(
    l: &L,
    ty: ElemType,
    kernel: &str,
    buffers: &[u64],
    n: usize,
) -> candle::Result<()> {
    if n == 0 {
        return Ok(());
    }
    let mut args: Vec<Arg> = buffers.iter().map(|&p| Arg::Ptr(p)).collect();
    args.push(Arg::I64(n as i64));
    l.launch(
        &ty.kernel(kernel),
        stride_grid(n),
        [ELEMENTWISE_BLOCK, 1, 1],
        &args,
    )
}

pub fn gelu_forward<L: Launcher>(
    l: &L,
    ty: ElemType,
    [x, y]: [u64; 2],
    n: usize,
) -> candle::Result<()> {
    elementwise(l, ty, "gelu_forward", &[x, y], n)
}

pub fn gelu_backward<L: Launcher>(
    l: &L,
    ty: ElemType,
    [x, dy, dx]: [u64; 3],
    n: usize,
) -> candle::Result<()> {
    elementwise(l, ty, "gelu_backward", &[x, dy, dx], n)
}

pub fn swiglu_forward<L: Launcher>(
    l: &L,
    ty: ElemType,
    [g, u, y]: [u64; 3],
    n: usize,
) -> candle::Result<()> {
    elementwise(l, ty, "swiglu_forward", &[g, u, y], n)
}

/// Both gradients of `silu(g) · u`, into `dg` and `du`.
pub fn swiglu_backward<L: Launcher>(
    l: &L,
    ty: ElemType,
    [g, u, dy, dg, du]: [u64; 5],
    n: usize,
) -> candle::Result<()> {
    elementwise(l, ty, "swiglu_backward", &[g, u, dy, dg, du], n)
}

/// Rotates every head row of `x` into `y` (`rows` rows of `layout.hd`) by `cos`/`sin`
/// `(t, hd / 2)`; `inverse` rotates by minus the angles (the backward).
pub fn rope_rotate<L: Launcher>(
    l: &L,
    ty: ElemType,
    [x, y, cos, sin]: [u64; 4],
    rows: usize,
    layout: RopeLayout,
    inverse: bool,
) -> candle::Result<()> {
    let pairs = rows * (layout.hd / 2);
    if pairs == 0 {
        return Ok(());
    }
    let args = [
        Arg::Ptr(x),
        Arg::Ptr(y),
        Arg::Ptr(cos),
        Arg::Ptr(sin),
        Arg::I64(rows as i64),
        int("t", layout.t)?,
        int("heads", layout.heads)?,
        int("hd", layout.hd)?,
        Arg::I32(layout.seq_major as i32),
        int("rotated", layout.rotated)?,
        Arg::F32(if inverse { -1.0 } else { 1.0 }),
    ];
    l.launch(
        &ty.kernel("rope_rotate"),
        stride_grid(pairs),
        [ELEMENTWISE_BLOCK, 1, 1],
        &args,
    )
}

/// Per-row NLL of `targets` (u32) under logits `(n, v)` into `nll` (f32, n), keeping each row's
/// log-sum-exp in `lse` (f32, n) for [`nll_backward`].
pub fn nll_forward<L: Launcher>(
    l: &L,
    ty: ElemType,
    [x, targets, lse, nll]: [u64; 4],
    n: usize,
    v: usize,
) -> candle::Result<()> {
    if n == 0 {
        return Ok(());
    }
    let args = [
        Arg::Ptr(x),
        Arg::Ptr(targets),
        Arg::Ptr(lse),
        Arg::Ptr(nll),
        int("vocab", v)?,
    ];
    l.launch(&ty.kernel("nll_forward"), row_grid(n)?, row_block(v), &args)
}

/// `dx = dnll (softmax(x) - onehot(target))`, `dnll` f32 (n).
pub fn nll_backward<L: Launcher>(
    l: &L,
    ty: ElemType,
    [x, targets, lse, dnll, dx]: [u64; 5],
    n: usize,
    v: usize,
) -> candle::Result<()> {
    if n == 0 || v == 0 {
        return Ok(());
    }
    let args = [
        Arg::Ptr(x),
        Arg::Ptr(targets),
        Arg::Ptr(lse),
        Arg::Ptr(dnll),
        Arg::Ptr(dx),
        int("vocab", v)?,
    ];
    l.launch(
        &ty.kernel("nll_backward"),
        row_grid(n)?,
        row_block(v),
        &args,
    )
}

/// Whether the attention kernels take these shapes (else the composed path runs).
pub fn attention_fits(dims: Dims) -> bool {
    dims.hd <= ATTENTION_MAX_HEAD
        && dims.h <= MAX_GRID_YZ
        && dims.b <= MAX_GRID_YZ
        && dims.kv > 0
        && dims.h.is_multiple_of(dims.kv)
        && i32::try_from(dims.t * (dims.h + 2 * dims.kv) * dims.hd).is_ok()
}

fn attention_args(dims: Dims) -> [Arg; 5] {
    [
        Arg::I32(dims.t as i32),
        Arg::I32(dims.h as i32),
        Arg::I32(dims.kv as i32),
        Arg::I32(dims.hd as i32),
        Arg::F32(1.0 / (dims.hd as f32).sqrt()),
    ]
}

/// `name_<dtype>_hd<bucket>`: the attention kernel compiled for this head width.
fn attention_kernel(ty: ElemType, name: &str, dims: Dims) -> String {
    let bucket = ATTENTION_HEAD_BUCKETS
        .into_iter()
        .find(|&b| dims.hd <= b)
        .unwrap_or(ATTENTION_MAX_HEAD);
    format!("{}_hd{bucket}", ty.kernel(name))
}

fn check_attention(dims: Dims) -> candle::Result<()> {
    if !attention_fits(dims) {
        candle::bail!("fused attention on CUDA: shapes {dims:?} are beyond the kernels (head width ≤ {ATTENTION_MAX_HEAD})")
    }
    Ok(())
}

/// Causal attention over the packed `qkv` `(b, t, h + 2 kv, hd)` into `out` `(b, t, h, hd)`,
/// each row's log-sum-exp into `lse` (f32, `(b, h, t)`).
pub fn attention_forward<L: Launcher>(
    l: &L,
    ty: ElemType,
    [qkv, out, lse]: [u64; 3],
    dims: Dims,
) -> candle::Result<()> {
    check_attention(dims)?;
    if dims.b * dims.t * dims.h * dims.hd == 0 {
        return Ok(());
    }
    let grid = [
        dims.t.div_ceil(ATTENTION_ROWS) as u32,
        dims.h as u32,
        dims.b as u32,
    ];
    let mut args = vec![Arg::Ptr(qkv), Arg::Ptr(out), Arg::Ptr(lse)];
    args.extend(attention_args(dims));
    l.launch(
        &attention_kernel(ty, "attention_forward", dims),
        grid,
        [ATTENTION_ROWS as u32, 1, 1],
        &args,
    )
}

/// The gradient of the packed projection, `dqkv` (same layout as `qkv`, every element written),
/// from `out`, its gradient `dout` and the forward's `lse`.
pub fn attention_backward<L: Launcher>(
    l: &L,
    ty: ElemType,
    [qkv, out, dout, lse, dqkv]: [u64; 5],
    dims: Dims,
) -> candle::Result<()> {
    check_attention(dims)?;
    if dims.b * dims.t * dims.h * dims.hd == 0 {
        return Ok(());
    }
    let (_delta_buf, delta) = l.scratch(dims.b * dims.h * dims.t * 4)?;
    let blocks = dims.t.div_ceil(ATTENTION_ROWS) as u32;
    let block = [ATTENTION_ROWS as u32, 1, 1];
    let mut args = vec![
        Arg::Ptr(qkv),
        Arg::Ptr(out),
        Arg::Ptr(dout),
        Arg::Ptr(lse),
        Arg::Ptr(delta),
        Arg::Ptr(dqkv),
    ];
    args.extend(attention_args(dims));
    let grid = [blocks, dims.h as u32, dims.b as u32];
    l.launch(
        &attention_kernel(ty, "attention_backward_dq", dims),
        grid,
        block,
        &args,
    )?;
    let mut args = vec![
        Arg::Ptr(qkv),
        Arg::Ptr(dout),
        Arg::Ptr(lse),
        Arg::Ptr(delta),
        Arg::Ptr(dqkv),
    ];
    args.extend(attention_args(dims));
    let grid = [blocks, dims.kv as u32, dims.b as u32];
    l.launch(
        &attention_kernel(ty, "attention_backward_dkv", dims),
        grid,
        block,
        &args,
    )
}

/// The scalars of one AdamW update (train/src/adamw.rs computes them per step).
#[derive(Debug, Clone, Copy)]
pub struct AdamWStep {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub decay: f32,
    pub step_size: f32,
    pub inv_sqrt_bc2: f32,
    pub grad_scale: f32,
}

/// AdamW on `n` f32 parameters in place, with their gradient and moments (updated in place).
pub fn adamw_step<L: Launcher>(
    l: &L,
    [p, g, m, v]: [u64; 4],
    n: usize,
    s: AdamWStep,
) -> candle::Result<()> {
    if n == 0 {
        return Ok(());
    }
    let args = [
        Arg::Ptr(p),
        Arg::Ptr(g),
        Arg::Ptr(m),
        Arg::Ptr(v),
        Arg::I64(n as i64),
        Arg::F32(s.beta1),
        Arg::F32(s.beta2),
        Arg::F32(s.eps),
        Arg::F32(s.decay),
        Arg::F32(s.step_size),
        Arg::F32(s.inv_sqrt_bc2),
        Arg::F32(s.grad_scale),
    ];
    l.launch(
        "adamw_step_f32",
        stride_grid(n),
        [ELEMENTWISE_BLOCK, 1, 1],
        &args,
    )
}
