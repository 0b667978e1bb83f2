//! `y = x Wᵀ` for a few rows (1..=[`FEW_ROWS`]) and a q4_0 GGUF weight: the quantized linear's
//! forward in batched decoding (issue 23; docs/kernels.md "Few rows, quantized"), and for the
//! hundreds of rows of a batched prefill, where it is 6-9× candle's `QMatMul` too.
//!
//! candle's `QMatMul` computes each (input row, weight row) dot on its own, so a batch of 16
//! rows unpacks every 4-bit weight block 16 times and batching buys almost nothing (1.2-1.45×
//! over one request at a time, docs/serving.md). Here each task owns a range of weight rows
//! (output columns): it decodes a group of up to 4 weight rows once into a small scratch
//! (signed bytes, the block scale as f32, and for the VNNI path the block's bias correction)
//! and then runs every input row against it in register blocks of 4 weight rows × 4 input rows.
//!
//! **Same numbers as candle.** The inputs are quantized to q8_0 exactly as candle's
//! `BlockQ8_0::from_float` does, and each dot is summed exactly as candle's AVX2
//! `vec_dot_q4_0_q8_0` sums it: per 32-weight block, eight exact integer sums of four products
//! (lane `l` holds weights `4l..4l+4`), converted to f32, multiplied by the f32 product of the
//! two f16 scales and fused-multiply-added into eight f32 lanes, block after block; then the
//! lanes reduced by `hsum_float_8`'s tree. So every path returns the bits candle's `QMatMul`
//! returns on an AVX2 machine, for one row or sixteen, in any batch: a sequence's numbers do
//! not depend on how many others share its step, nor on which of the two kernels ran it.
//!
//! Three paths, chosen at run time: AVX-512 VNNI on 256-bit registers (`vpdpbusd` multiplies
//! the q8 input shifted to unsigned, `x + 128`, by the signed weight; a per-lane initial value
//! of `-128 Σw` removes the shift, exactly, in the integer sum), AVX2 (candle's
//! `maddubs`/`madd` with the sign trick) and a portable one (the same integer sums in scalar
//! code). q8_0 and k-quant weights stay on candle: its x86 q8_0 product already has a
//! repacked VNNI kernel on some shapes, whose numbers these would have to follow.

use crate::rayon::prelude::*;
use std::ops::Range;

pub use crate::ops::few_rows::FEW_ROWS;

/// Weights per q4_0 / q8_0 block.
pub const BLOCK: usize = 32;

/// Bytes of one q4_0 block as GGUF and candle store it: an f16 scale, then 16 bytes whose low
/// nibbles are weights 0..16 and high nibbles weights 16..32, each `q - 8`.
pub const Q4_0_BYTES: usize = 18;

/// Weight blocks × input rows per rayon task, at least (≈ 100 µs of work on the VNNI path):
/// below this the hand-off — waking a sleeping worker, the caller's wait, the idle worker's
/// spin — costs more than the split saves. It was `1 << 12` (≈ 13 µs), and the serving profile
/// put a quarter of the quickstart model's c=16 CPU in rayon workers spinning and waking
/// between such tasks; `nn/examples/quant_rows_task_probe.rs` measures the sizes
/// (docs/kernels.md, "Few rows, quantized").
pub const TASK_BLOCKS: usize = 1 << 15;

/// [`TASK_BLOCKS`], unless `LLMLAB_QUANT_ROWS_TASK_BLOCKS` gives another positive number (an
/// end-to-end A/B knob like `LLMLAB_QUANT_ROWS`; a value that does not parse is reported on
/// stderr and ignored). Read once per process.
pub fn task_blocks() -> usize {
    static BLOCKS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *BLOCKS.get_or_init(|| {
        const VAR: &str = "LLMLAB_QUANT_ROWS_TASK_BLOCKS";
        match std::env::var(VAR) {
            Err(_) => TASK_BLOCKS,
            Ok(v) => match v.trim().parse::<usize>() {
                Ok(n) if n > 0 => n,
                _ => {
                    eprintln!("{VAR}={v:?} is not a positive whole number; using {TASK_BLOCKS}");
                    TASK_BLOCKS
                }
            },
        }
    })
}

/// A quantized few-rows kernel implementation; [`Path::detect`] is the one [`forward_q4_0`]
/// takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// AVX-512 VNNI (with VL, on 256-bit registers), AVX2, FMA and F16C.
    Vnni,
    /// AVX2, FMA and F16C: candle's own instruction sequence, the weight unpacked once.
    Avx2,
    /// Any CPU: scalar integer sums, `f32::mul_add`.
    Portable,
}

impl Path {
    /// The fastest path this CPU runs, unless `LLMLAB_QUANT_ROWS` names another one it runs
    /// (`vnni`, `avx2`, `portable`; an A/B knob like `LLMLAB_FEW_ROWS`). Read once per process.
    pub fn detect() -> Path {
        static PATH: std::sync::OnceLock<Path> = std::sync::OnceLock::new();
        *PATH.get_or_init(|| {
            let paths = [
                ("vnni", Path::Vnni),
                ("avx2", Path::Avx2),
                ("portable", Path::Portable),
            ];
            super::path_knob::choose("LLMLAB_QUANT_ROWS", &paths, Path::available)
        })
    }

    /// Whether this CPU has the instructions the path needs.
    pub fn available(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        let avx2 = std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c");
        match self {
            #[cfg(target_arch = "x86_64")]
            Path::Vnni => {
                avx2 && std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                    && std::arch::is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(target_arch = "x86_64")]
            Path::Avx2 => avx2,
            Path::Portable => true,
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }
}

/// `y = x Wᵀ` for `x` `(rows, in_dim)` f32 and `w` `(out_dim, in_dim)` as q4_0 blocks (the
/// bytes of candle's `QTensor::data`), `in_dim` a multiple of [`BLOCK`]; `y` is `(rows, out_dim)`.
/// The path [`Path::detect`] picks, tasks of at least [`task_blocks`]. Any number of rows:
/// decoding's 1..=16 and a batched prefill's hundreds alike (each weight group is decoded once
/// per call, so more rows only amortise it further).
///
/// At up to [`VNNI_MIN_ROWS`]` - 1` rows the VNNI path's extra decoding work (each block's bias
/// correction) outweighs its faster dots, so those calls take the AVX2 path: the same bits.
pub fn forward_q4_0(x: &[f32], w: &[u8], rows: usize, in_dim: usize, out_dim: usize) -> Vec<f32> {
    let path = match Path::detect() {
        Path::Vnni if rows < VNNI_MIN_ROWS => Path::Avx2,
        path => path,
    };
    forward_q4_0_with(path, task_blocks(), x, w, rows, in_dim, out_dim)
}

/// The fewest rows [`forward_q4_0`] runs on the VNNI path (measured single-threaded with
/// `quant_rows_probe`, one 11 M-model layer: AVX2 faster at 1, 2 and 4 rows, VNNI at 8 and 16).
pub const VNNI_MIN_ROWS: usize = 5;

/// [`forward_q4_0`] on a given path and task size (for tests and the probe).
///
/// # Panics
/// If the path is not [`available`](Path::available), `in_dim` is not a multiple of
/// [`BLOCK`], or a slice is shorter than its shape.
pub fn forward_q4_0_with(
    path: Path,
    task_blocks: usize,
    x: &[f32],
    w: &[u8],
    rows: usize,
    in_dim: usize,
    out_dim: usize,
) -> Vec<f32> {
    assert!(path.available(), "quant_rows: this CPU cannot run {path:?}");
    assert!(
        in_dim.is_multiple_of(BLOCK),
        "quant_rows: the input width {in_dim} is not a multiple of the q4_0 block ({BLOCK})"
    );
    let nb = in_dim / BLOCK;
    assert!(
        x.len() >= rows * in_dim && w.len() >= out_dim * nb * Q4_0_BYTES,
        "quant_rows: x has {} values for ({rows}, {in_dim}), w {} bytes for ({out_dim}, {in_dim}) \
         in q4_0",
        x.len(),
        w.len()
    );
    let mut y = vec![0f32; rows * out_dim];
    if rows == 0 || out_dim == 0 || nb == 0 {
        return y;
    }
    let xq = quantize_rows(path, &x[..rows * in_dim], rows, in_dim);
    let out = Out {
        ptr: y.as_mut_ptr(),
        rows,
        width: out_dim,
    };
    // Whole groups of 4 weight rows per task, so only the last task has a partial group.
    let per_task = (task_blocks / (rows * nb))
        .clamp(1, out_dim)
        .next_multiple_of(4);
    let tasks = out_dim.div_ceil(per_task);
    let task = |t: usize| {
        let outs = t * per_task..((t + 1) * per_task).min(out_dim);
        // SAFETY: `outs` lies within `out_dim`, tasks own disjoint column ranges of `y`, which
        // outlives every task; `w` holds `out_dim · nb` blocks (checked above).
        unsafe { dots(path, &xq, w, nb, out, outs) }
    };
    if tasks == 1 {
        task(0);
    } else {
        (0..tasks).into_par_iter().for_each(task);
    }
    y
}

/// The input rows as q8_0: `q[r·in + c]` the quantized value (for [`Path::Vnni`] stored as the
/// unsigned `q + 128`, i.e. `q ^ 0x80`), `d[r·nb + b]` the block scale after its round trip
/// through f16, as candle's dot reads it.
struct Q8Rows {
    q: Vec<u8>,
    d: Vec<f32>,
    in_dim: usize,
    nb: usize,
}

/// candle's `BlockQ8_0::from_float`, row by row: `d = max|x| / 127` stored as f16,
/// `q = round(x / d)` (half away from zero) with the reciprocal of the unrounded `d`.
fn quantize_rows(path: Path, x: &[f32], rows: usize, in_dim: usize) -> Q8Rows {
    let nb = in_dim / BLOCK;
    let mut q = vec![0u8; rows * in_dim];
    let mut d = vec![0f32; rows * nb];
    let flip = if path == Path::Vnni { 0x80 } else { 0 };
    for ((xb, qb), db) in x
        .chunks_exact(BLOCK)
        .zip(q.chunks_exact_mut(BLOCK))
        .zip(d.iter_mut())
    {
        let xb: &[f32; BLOCK] = xb.try_into().expect("chunks_exact");
        let qb: &mut [u8; BLOCK] = qb.try_into().expect("chunks_exact");
        let scale = quantize_block(path, xb, qb);
        *db = f16_to_f32(f32_to_f16(scale));
        if flip != 0 {
            for v in qb.iter_mut() {
                *v ^= flip;
            }
        }
    }
    Q8Rows { q, d, in_dim, nb }
}

/// One block of [`quantize_rows`]: writes the signed values' bits to `q`, returns the f32 `d`.
fn quantize_block(path: Path, x: &[f32; BLOCK], q: &mut [u8; BLOCK]) -> f32 {
    let mut amax = 0f32;
    for &v in x {
        amax = amax.max(v.abs());
    }
    let d = amax / ((1 << 7) - 1) as f32;
    let id = if d != 0f32 { 1. / d } else { 0. };
    match path {
        // SAFETY: these paths' CPUs have AVX2.
        #[cfg(target_arch = "x86_64")]
        Path::Vnni | Path::Avx2 => unsafe { x86::round_block(x, id, q) },
        _ => {
            for (q, &v) in q.iter_mut().zip(x) {
                *q = f32::round(v * id) as i8 as u8;
            }
        }
    }
    d
}

/// A weight block decoded for the kernels: the 32 signed weights `q - 8` in order, the f32
/// scale, and ([`Path::Vnni`] only) `-128 ×` the sum of each lane's four weights.
#[derive(Clone, Copy)]
#[repr(C, align(32))]
struct Dec {
    w: [i8; BLOCK],
    init: [i32; 8],
    d: f32,
}

const DEC_ZERO: Dec = Dec {
    w: [0; BLOCK],
    init: [0; 8],
    d: 0.0,
};

/// The scalar decoding of one q4_0 block (the portable path's, and the reference the SIMD
/// decoders are tested against).
fn decode_block(b: &[u8]) -> Dec {
    let mut dec = DEC_ZERO;
    dec.d = f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
    for j in 0..16 {
        dec.w[j] = (b[2 + j] & 0xF) as i8 - 8;
        dec.w[j + 16] = (b[2 + j] >> 4) as i8 - 8;
    }
    for (l, init) in dec.init.iter_mut().enumerate() {
        *init = -128
            * dec.w[4 * l..4 * l + 4]
                .iter()
                .map(|&v| v as i32)
                .sum::<i32>();
    }
    dec
}

/// candle's `hsum_float_8`: `((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7))`.
#[inline(always)]
fn hsum8(a: [f32; 8]) -> f32 {
    let r = [a[4] + a[0], a[5] + a[1], a[6] + a[2], a[7] + a[3]];
    let s0 = r[0] + r[2];
    let s1 = r[1] + r[3];
    s0 + s1
}

/// IEEE binary16 bits to f32 (exact).
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h & 0x8000) as u32) << 16;
    let exp = ((h >> 10) & 0x1f) as u32;
    let man = (h & 0x3ff) as u32;
    let bits = match exp {
        0 if man == 0 => sign,
        0 => {
            // Subnormal: man × 2⁻²⁴, exact in f32.
            let v = man as f32 * f32::from_bits(0x3380_0000);
            return if sign != 0 { -v } else { v };
        }
        0x1f => sign | 0x7f80_0000 | (man << 13),
        _ => sign | ((exp + 112) << 23) | (man << 13),
    };
    f32::from_bits(bits)
}

/// f32 to IEEE binary16 bits, rounded to nearest even (as `half::f16::from_f32` and F16C do).
pub fn f32_to_f16(x: f32) -> u16 {
    let b = x.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let exp = ((b >> 23) & 0xff) as i32;
    let man = b & 0x7f_ffff;
    if exp == 0xff {
        let nan = if man != 0 {
            0x200 | (man >> 13) as u16
        } else {
            0
        };
        return sign | 0x7c00 | nan;
    }
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    if e <= 0 {
        if e < -10 {
            return sign;
        }
        let m = man | 0x80_0000;
        let shift = (14 - e) as u32;
        let mut r = m >> shift;
        let rem = m & ((1 << shift) - 1);
        let halfway = 1 << (shift - 1);
        if rem > halfway || (rem == halfway && r & 1 == 1) {
            r += 1;
        }
        return sign | r as u16;
    }
    let mut r = ((e as u32) << 10) | (man >> 13);
    let rem = man & 0x1fff;
    if rem > 0x1000 || (rem == 0x1000 && r & 1 == 1) {
        // A carry into the exponent is the correct rounding (up to infinity).
        r += 1;
    }
    sign | r as u16
}

/// Where the kernels write: `y` `(rows, width)` row-major, shared by tasks that own disjoint
/// columns.
#[derive(Clone, Copy)]
struct Out {
    ptr: *mut f32,
    rows: usize,
    width: usize,
}

// SAFETY: tasks write disjoint elements (their own columns), see `forward_q4_0_with`.
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
}

thread_local! {
    /// A task's decoded weight rows (up to 4 × the blocks of a row), reused across calls.
    static SCRATCH: std::cell::RefCell<Vec<Dec>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `y[r][o] = x_r · w_o` for every input row and the weight rows `outs`, 4 weight rows at a
/// time: decoded once, then dotted with the input rows 4 at a time.
///
/// # Safety
/// `path` is available, `outs.end <= out.width`, `w` holds `outs.end · nb` q4_0 blocks, `xq`
/// holds `out.rows` rows, and no other thread writes columns `outs` of `out`.
unsafe fn dots(path: Path, xq: &Q8Rows, w: &[u8], nb: usize, out: Out, outs: Range<usize>) {
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        if scratch.len() < 4 * nb {
            scratch.resize(4 * nb, DEC_ZERO);
        }
        let mut o = outs.start;
        while o < outs.end {
            let wo = (outs.end - o).min(4);
            let dec = &mut scratch[..wo * nb];
            let src = &w[o * nb * Q4_0_BYTES..(o + wo) * nb * Q4_0_BYTES];
            match path {
                // SAFETY: the path's features are available (the caller's contract).
                #[cfg(target_arch = "x86_64")]
                Path::Vnni => unsafe { x86::decode_vnni(src, dec) },
                #[cfg(target_arch = "x86_64")]
                Path::Avx2 => unsafe { x86::decode_avx2(src, dec) },
                _ => {
                    for (d, b) in dec.iter_mut().zip(src.chunks_exact(Q4_0_BYTES)) {
                        *d = decode_block(b);
                    }
                }
            }
            let dec = &scratch[..wo * nb];
            // The VNNI kernel holds two weight rows per 512-bit register, so 8 input rows fit.
            let rows_per_block = if path == Path::Vnni { 8 } else { 4 };
            let mut r = 0;
            while r < out.rows {
                let xr = (out.rows - r).min(rows_per_block);
                // SAFETY (every arm): forwarded; rows r..r + xr and columns o..o + wo are in
                // range and this task's.
                unsafe {
                    match path {
                        #[cfg(target_arch = "x86_64")]
                        Path::Vnni => x86::vnni_dots(dec, xq, out, wo, (o, r, xr)),
                        #[cfg(target_arch = "x86_64")]
                        Path::Avx2 => x86::avx2_dots(dec, xq, out, wo, (o, r, xr)),
                        _ => portable_dots(dec, xq, out, wo, (o, r, xr)),
                    }
                }
                r += xr;
            }
            o += wo;
        }
    })
}

/// The portable block: each dot as candle's AVX2 kernel sums it, in scalar code.
///
/// # Safety
/// As [`dots`], for columns `o..o + wo` and rows `r..r + xr`.
unsafe fn portable_dots(dec: &[Dec], xq: &Q8Rows, out: Out, wo: usize, (o, r, xr): Block) {
    let nb = xq.nb;
    for j in 0..wo {
        for i in r..r + xr {
            let xs = &xq.q[i * xq.in_dim..(i + 1) * xq.in_dim];
            let mut acc = [0f32; 8];
            for b in 0..nb {
                let wb = &dec[j * nb + b];
                let xb = &xs[b * BLOCK..(b + 1) * BLOCK];
                let d = wb.d * xq.d[i * nb + b];
                for (l, a) in acc.iter_mut().enumerate() {
                    let s: i32 = (4 * l..4 * l + 4)
                        .map(|k| wb.w[k] as i32 * xb[k] as i8 as i32)
                        .sum();
                    *a = d.mul_add(s as f32, *a);
                }
            }
            // SAFETY: the caller's contract.
            unsafe { out.put(i, o + j, hsum8(acc)) };
        }
    }
}

/// `(first weight row, first input row, input rows)` of a register block.
type Block = (usize, usize, usize);

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{hsum8, Block, Dec, Out, Q8Rows, BLOCK, Q4_0_BYTES};
    use std::arch::x86_64::*;

    /// `q = round(x · id)` half away from zero, saturated to i8 (as Rust's `as i8`), 32 values.
    ///
    /// # Safety
    /// The CPU has AVX2.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn round_block(x: &[f32; BLOCK], id: f32, q: &mut [u8; BLOCK]) {
        let idv = _mm256_set1_ps(id);
        let half = _mm256_set1_ps(0.5);
        let one = _mm256_set1_ps(1.0);
        let sign = _mm256_set1_ps(-0.0);
        let mut ints = [_mm256_setzero_si256(); 4];
        for (k, v) in ints.iter_mut().enumerate() {
            // SAFETY: k·8 + 8 <= 32.
            let p = _mm256_mul_ps(unsafe { _mm256_loadu_ps(x.as_ptr().add(8 * k)) }, idv);
            let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(p);
            // |p - t| < 1 is exact; at 0.5 or more the magnitude rounds up.
            let frac = _mm256_andnot_ps(sign, _mm256_sub_ps(p, t));
            let up = _mm256_and_ps(_mm256_cmp_ps::<_CMP_GE_OQ>(frac, half), one);
            let r = _mm256_add_ps(t, _mm256_or_ps(up, _mm256_and_ps(p, sign)));
            *v = _mm256_cvtps_epi32(r);
        }
        // Saturating packs interleave 128-bit lanes; the permutation restores the order.
        let ab = _mm256_packs_epi32(ints[0], ints[1]);
        let cd = _mm256_packs_epi32(ints[2], ints[3]);
        let bytes = _mm256_packs_epi16(ab, cd);
        let bytes = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        // SAFETY: `q` holds 32 bytes.
        unsafe { _mm256_storeu_si256(q.as_mut_ptr() as *mut __m256i, bytes) };
    }

    /// candle's `bytes_from_nibbles_32` minus 8: the 32 signed weights in order.
    ///
    /// # Safety
    /// `b` holds a q4_0 block; the CPU has AVX2.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn unpack(b: &[u8]) -> (__m256i, f32) {
        debug_assert!(b.len() >= Q4_0_BYTES);
        // SAFETY: bytes 2..18 of the block.
        let tmp = unsafe { _mm_loadu_si128(b.as_ptr().add(2) as *const __m128i) };
        let bytes =
            _mm256_insertf128_si256::<1>(_mm256_castsi128_si256(tmp), _mm_srli_epi16(tmp, 4));
        let w = _mm256_sub_epi8(
            _mm256_and_si256(bytes, _mm256_set1_epi8(0xF)),
            _mm256_set1_epi8(8),
        );
        let h = u16::from_le_bytes([b[0], b[1]]);
        let d = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h as i32)));
        (w, d)
    }

    /// Decodes blocks for [`avx2_dots`].
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn decode_avx2(src: &[u8], dec: &mut [Dec]) {
        for (d, b) in dec.iter_mut().zip(src.chunks_exact(Q4_0_BYTES)) {
            // SAFETY: a whole block; features as this function's.
            let (w, scale) = unsafe { unpack(b) };
            // SAFETY: `d.w` holds 32 bytes.
            unsafe { _mm256_storeu_si256(d.w.as_mut_ptr() as *mut __m256i, w) };
            d.d = scale;
        }
    }

    /// Decodes blocks for [`vnni_dots`], with each lane's `-128 Σw`.
    ///
    /// # Safety
    /// The CPU has the [`super::Path::Vnni`] features.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
    pub(super) unsafe fn decode_vnni(src: &[u8], dec: &mut [Dec]) {
        let shift = _mm256_set1_epi8(-128);
        for (d, b) in dec.iter_mut().zip(src.chunks_exact(Q4_0_BYTES)) {
            // SAFETY: a whole block; features as this function's.
            let (w, scale) = unsafe { unpack(b) };
            let sum = _mm256_dpbusd_epi32(_mm256_setzero_si256(), shift, w);
            // SAFETY: `d.w` and `d.init` hold 32 bytes each.
            unsafe {
                _mm256_storeu_si256(d.w.as_mut_ptr() as *mut __m256i, w);
                _mm256_storeu_si256(
                    d.init.as_mut_ptr() as *mut __m256i,
                    _mm256_sub_epi32(_mm256_setzero_si256(), sum),
                );
            }
            d.d = scale;
        }
    }

    /// The lanes of `a` summed as [`hsum8`] (candle's `hsum_float_8`).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn hsum(a: __m256) -> f32 {
        let mut lanes = [0f32; 8];
        // SAFETY: `lanes` holds 8 f32s.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), a) };
        hsum8(lanes)
    }

    /// The `wo × xr` dots through `vpdpbusd`, two weight rows per 512-bit register: lanes
    /// 0..8 hold one weight row's eight lane sums for an input row, lanes 8..16 the next weight
    /// row's, each half doing exactly what a 256-bit accumulator would.
    ///
    /// # Safety
    /// As [`super::dots`]; the CPU has the [`super::Path::Vnni`] features.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
    pub(super) unsafe fn vnni_dots(dec: &[Dec], xq: &Q8Rows, out: Out, wo: usize, at: Block) {
        // SAFETY (all arms): forwarded.
        unsafe {
            match (wo.div_ceil(2), at.2) {
                (2, 8) => vnni_block::<2, 8>(dec, xq, out, wo, at),
                (2, 7) => vnni_block::<2, 7>(dec, xq, out, wo, at),
                (2, 6) => vnni_block::<2, 6>(dec, xq, out, wo, at),
                (2, 5) => vnni_block::<2, 5>(dec, xq, out, wo, at),
                (2, 4) => vnni_block::<2, 4>(dec, xq, out, wo, at),
                (2, 3) => vnni_block::<2, 3>(dec, xq, out, wo, at),
                (2, 2) => vnni_block::<2, 2>(dec, xq, out, wo, at),
                (2, _) => vnni_block::<2, 1>(dec, xq, out, wo, at),
                (_, 8) => vnni_block::<1, 8>(dec, xq, out, wo, at),
                (_, 7) => vnni_block::<1, 7>(dec, xq, out, wo, at),
                (_, 6) => vnni_block::<1, 6>(dec, xq, out, wo, at),
                (_, 5) => vnni_block::<1, 5>(dec, xq, out, wo, at),
                (_, 4) => vnni_block::<1, 4>(dec, xq, out, wo, at),
                (_, 3) => vnni_block::<1, 3>(dec, xq, out, wo, at),
                (_, 2) => vnni_block::<1, 2>(dec, xq, out, wo, at),
                _ => vnni_block::<1, 1>(dec, xq, out, wo, at),
            }
        }
    }

    /// `P` pairs of weight rows (the last pair's second row a copy of its first when `wo` is
    /// odd, computed and not written) × `XR` input rows.
    ///
    /// # Safety
    /// As [`vnni_dots`] with `wo` weight rows decoded in `dec`, `P = ⌈wo / 2⌉`, `XR = at.2`.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
    #[inline]
    unsafe fn vnni_block<const P: usize, const XR: usize>(
        dec: &[Dec],
        xq: &Q8Rows,
        out: Out,
        wo: usize,
        (o, r, _): Block,
    ) {
        let nb = xq.nb;
        assert!(wo.div_ceil(2) == P && dec.len() >= wo * nb);
        assert!(xq.q.len() >= (r + XR) * xq.in_dim && xq.d.len() >= (r + XR) * nb);
        let mut acc = [[_mm512_setzero_ps(); XR]; P];
        let xp = xq.q.as_ptr();
        let dp = xq.d.as_ptr();
        for b in 0..nb {
            for (p, acc) in acc.iter_mut().enumerate() {
                let (j0, j1) = (2 * p, (2 * p + 1).min(wo - 1));
                // SAFETY: j0, j1 < wo, so both blocks lie within dec (asserted).
                let (w0, w1) = unsafe {
                    (
                        dec.get_unchecked(j0 * nb + b),
                        dec.get_unchecked(j1 * nb + b),
                    )
                };
                // SAFETY: `Dec` is 32-byte aligned and its `w` and `init` are 32 bytes.
                let (w, init) = unsafe {
                    let lo = _mm256_load_si256(w0.w.as_ptr() as *const __m256i);
                    let hi = _mm256_load_si256(w1.w.as_ptr() as *const __m256i);
                    let w = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
                    let lo = _mm256_load_si256(w0.init.as_ptr() as *const __m256i);
                    let hi = _mm256_load_si256(w1.init.as_ptr() as *const __m256i);
                    (w, _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi))
                };
                let dw = _mm512_castpd_ps(_mm512_insertf64x4::<1>(
                    _mm512_castpd256_pd512(_mm256_castps_pd(_mm256_set1_ps(w0.d))),
                    _mm256_castps_pd(_mm256_set1_ps(w1.d)),
                ));
                for (i, acc) in acc.iter_mut().enumerate() {
                    // SAFETY: row r + i < r + XR, block b < nb (asserted lengths).
                    let (xv, dx) = unsafe {
                        (
                            _mm512_broadcast_i64x4(_mm256_loadu_si256(
                                xp.add((r + i) * xq.in_dim + b * BLOCK) as *const __m256i,
                            )),
                            *dp.add((r + i) * nb + b),
                        )
                    };
                    let q = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(init, xv, w));
                    let d = _mm512_mul_ps(dw, _mm512_set1_ps(dx));
                    *acc = _mm512_fmadd_ps(d, q, *acc);
                }
            }
        }
        for (p, acc) in acc.iter().enumerate() {
            for (i, &a) in acc.iter().enumerate() {
                let halves = [
                    _mm512_castps512_ps256(a),
                    _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(a))),
                ];
                for (h, &half) in halves.iter().enumerate() {
                    let j = 2 * p + h;
                    if j < wo {
                        // SAFETY: (r + i, o + j) is in this task's columns and the rows.
                        unsafe { out.put(r + i, o + j, hsum(half)) };
                    }
                }
            }
        }
    }

    /// The `wo × xr` dots with candle's `maddubs` sequence.
    ///
    /// # Safety
    /// As [`super::dots`]; the CPU has AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn avx2_dots(dec: &[Dec], xq: &Q8Rows, out: Out, wo: usize, at: Block) {
        // SAFETY (all arms): forwarded.
        unsafe {
            match (wo, at.2) {
                (4, 4) => avx2_block::<4, 4>(dec, xq, out, at),
                (4, 3) => avx2_block::<4, 3>(dec, xq, out, at),
                (4, 2) => avx2_block::<4, 2>(dec, xq, out, at),
                (4, _) => avx2_block::<4, 1>(dec, xq, out, at),
                (3, 4) => avx2_block::<3, 4>(dec, xq, out, at),
                (3, 3) => avx2_block::<3, 3>(dec, xq, out, at),
                (3, 2) => avx2_block::<3, 2>(dec, xq, out, at),
                (3, _) => avx2_block::<3, 1>(dec, xq, out, at),
                (2, 4) => avx2_block::<2, 4>(dec, xq, out, at),
                (2, 3) => avx2_block::<2, 3>(dec, xq, out, at),
                (2, 2) => avx2_block::<2, 2>(dec, xq, out, at),
                (2, _) => avx2_block::<2, 1>(dec, xq, out, at),
                (_, 4) => avx2_block::<1, 4>(dec, xq, out, at),
                (_, 3) => avx2_block::<1, 3>(dec, xq, out, at),
                (_, 2) => avx2_block::<1, 2>(dec, xq, out, at),
                _ => avx2_block::<1, 1>(dec, xq, out, at),
            }
        }
    }

    /// # Safety
    /// As [`avx2_dots`] with `WO` weight rows decoded in `dec` and `XR = at.2`.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn avx2_block<const WO: usize, const XR: usize>(
        dec: &[Dec],
        xq: &Q8Rows,
        out: Out,
        (o, r, _): Block,
    ) {
        let nb = xq.nb;
        assert!(dec.len() >= WO * nb && xq.q.len() >= (r + XR) * xq.in_dim);
        assert!(xq.d.len() >= (r + XR) * nb);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_ps(); XR]; WO];
        let xp = xq.q.as_ptr();
        let dp = xq.d.as_ptr();
        for b in 0..nb {
            for (j, acc) in acc.iter_mut().enumerate() {
                // SAFETY: j·nb + b < WO·nb <= dec.len() (asserted).
                let wb = unsafe { dec.get_unchecked(j * nb + b) };
                // SAFETY: `Dec` is 32-byte aligned and `w` is its first 32 bytes.
                let w = unsafe { _mm256_load_si256(wb.w.as_ptr() as *const __m256i) };
                let aw = _mm256_sign_epi8(w, w);
                let dw = _mm256_set1_ps(wb.d);
                for (i, acc) in acc.iter_mut().enumerate() {
                    // SAFETY: row r + i < r + XR, block b < nb (asserted lengths).
                    let (xv, dx) = unsafe {
                        (
                            _mm256_loadu_si256(
                                xp.add((r + i) * xq.in_dim + b * BLOCK) as *const __m256i
                            ),
                            *dp.add((r + i) * nb + b),
                        )
                    };
                    let sx = _mm256_sign_epi8(xv, w);
                    let s = _mm256_madd_epi16(ones, _mm256_maddubs_epi16(aw, sx));
                    let q = _mm256_cvtepi32_ps(s);
                    let d = _mm256_mul_ps(dw, _mm256_set1_ps(dx));
                    *acc = _mm256_fmadd_ps(d, q, *acc);
                }
            }
        }
        for (j, acc) in acc.iter().enumerate() {
            for (i, &a) in acc.iter().enumerate() {
                // SAFETY: (r + i, o + j) is in this task's columns and the rows.
                unsafe { out.put(r + i, o + j, hsum(a)) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::candle::quantized::{GgmlDType, QMatMul, QTensor};
    use crate::candle::{Device, Module, Tensor};
    use crate::ops::few_rows::tests::values;
    use std::sync::Arc;

    fn paths() -> Vec<Path> {
        let paths: Vec<Path> = [Path::Vnni, Path::Avx2, Path::Portable]
            .into_iter()
            .filter(|p| p.available())
            .collect();
        assert!(paths.contains(&Path::detect()));
        paths
    }

    /// A q4_0 weight `(out, in)` from values in [-1, 1) with a few exact zeros and a large row.
    fn weight(out_dim: usize, in_dim: usize, seed: u64) -> Arc<QTensor> {
        let mut v = values(out_dim * in_dim, seed);
        for (k, x) in v.iter_mut().enumerate() {
            if k % 97 == 0 {
                *x = 0.0;
            }
            if k / in_dim == 1 {
                *x *= 300.0;
            }
        }
        let t = Tensor::from_vec(v, (out_dim, in_dim), &Device::Cpu).unwrap();
        Arc::new(QTensor::quantize(&t, GgmlDType::Q4_0).unwrap())
    }

    /// Inputs with an all-zero block, values at exactly half a quantization step, and a large
    /// row (the scale's f16 rounding and the half-away-from-zero rounding both matter).
    fn inputs(rows: usize, in_dim: usize, seed: u64) -> Vec<f32> {
        let mut x = values(rows * in_dim, seed);
        for v in x.iter_mut().take(BLOCK.min(in_dim)) {
            *v = 0.0;
        }
        if rows > 1 && in_dim >= 2 * BLOCK {
            // Block 1 of row 1: max 127, so the step is 1 and k + 0.5 is a tie.
            for c in 0..BLOCK {
                x[in_dim + BLOCK + c] = if c == 0 {
                    127.0
                } else {
                    (c as f32 - 16.0) + 0.5
                };
            }
        }
        if rows > 2 {
            for v in &mut x[2 * in_dim..3 * in_dim] {
                *v *= 1e3;
            }
        }
        x
    }

    fn candle(w: &Arc<QTensor>, x: &[f32], rows: usize, in_dim: usize) -> Vec<f32> {
        let mm = QMatMul::from_arc(w.clone()).unwrap();
        let xt = Tensor::from_vec(x.to_vec(), (rows, in_dim), &Device::Cpu).unwrap();
        mm.forward(&xt)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    /// Dequantize, then f64 dots with the inputs as candle's q8_0 sees them.
    fn dequantized(w: &QTensor, x: &[f32], rows: usize, in_dim: usize) -> Vec<f64> {
        let (out_dim, _) = w.shape().dims2().unwrap();
        let wf: Vec<f32> = w
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let xq = quantize_rows(Path::Portable, x, rows, in_dim);
        let mut y = Vec::new();
        for r in 0..rows {
            for o in 0..out_dim {
                let dot: f64 = (0..in_dim)
                    .map(|c| {
                        let q = xq.q[r * in_dim + c] as i8 as f64;
                        q * xq.d[r * (in_dim / BLOCK) + c / BLOCK] as f64
                            * wf[o * in_dim + c] as f64
                    })
                    .sum();
                y.push(dot);
            }
        }
        y
    }

    /// Every path, rows 1..=16, widths of 1 to 48 blocks, odd output sizes (partial groups of
    /// weight rows), several tasks per call: the same bits as candle's `QMatMul` (on an AVX2
    /// machine; elsewhere candle sums differently and the dequantized reference still holds),
    /// and within f32 rounding of a dequantize-then-dot reference in f64.
    #[test]
    fn q4_0_rows_equal_candles_qmatmul_bit_for_bit_on_every_path() {
        let candle_avx2 = std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma");
        for (in_dim, out_dim) in [(32, 3), (64, 7), (128, 33), (384, 70), (1536, 13)] {
            let w = weight(out_dim, in_dim, in_dim as u64);
            let data = w.data().unwrap();
            for rows in 1..=FEW_ROWS {
                let x = inputs(rows, in_dim, 7 + rows as u64);
                let want = candle(&w, &x, rows, in_dim);
                let reference = dequantized(&w, &x, rows, in_dim);
                for path in paths() {
                    let got = forward_q4_0_with(path, 64, &x, &data, rows, in_dim, out_dim);
                    if candle_avx2 {
                        assert_eq!(
                            got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                            want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                            "{path:?}, rows {rows}, {in_dim} -> {out_dim}"
                        );
                    }
                    for (k, (g, e)) in got.iter().zip(&reference).enumerate() {
                        let scale: f64 = reference.iter().map(|v| v.abs()).fold(1.0, f64::max);
                        assert!(
                            (*g as f64 - e).abs() <= 1e-5 * scale,
                            "{path:?}, rows {rows}, {in_dim} -> {out_dim}: y[{k}] = {g}, \
                             dequantized reference {e}"
                        );
                    }
                }
            }
        }
    }

    /// A batched prefill's row counts (past [`FEW_ROWS`]: 16 prompts of several tokens, odd
    /// counts leaving partial register blocks): the same bits as candle's `QMatMul`, which ran
    /// these products before, on every path and task size; and each row the bits it gets alone,
    /// so a prompt's cache does not depend on the prompts prefilled beside it.
    #[test]
    fn q4_0_prefill_rows_equal_candles_qmatmul_and_each_row_alone() {
        let candle_avx2 = std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma");
        for (in_dim, out_dim) in [(128, 33), (384, 70)] {
            let w = weight(out_dim, in_dim, 5 + in_dim as u64);
            let data = w.data().unwrap();
            for rows in [17, 40, 101] {
                let x = inputs(rows, in_dim, 13 + rows as u64);
                let want = candle(&w, &x, rows, in_dim);
                for path in paths() {
                    for task in [64, TASK_BLOCKS, 1 << 30] {
                        let got = forward_q4_0_with(path, task, &x, &data, rows, in_dim, out_dim);
                        if candle_avx2 {
                            assert_eq!(
                                got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                                want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                                "{path:?}, rows {rows}, task {task}, {in_dim} -> {out_dim}"
                            );
                        }
                        for r in [0, rows / 2, rows - 1] {
                            let row = &x[r * in_dim..(r + 1) * in_dim];
                            let alone =
                                forward_q4_0_with(path, task, row, &data, 1, in_dim, out_dim);
                            assert_eq!(
                                alone[..],
                                got[r * out_dim..(r + 1) * out_dim],
                                "{path:?}, rows {rows}, task {task}: row {r} differs from alone"
                            );
                        }
                    }
                }
            }
        }
    }

    /// A row's outputs are the same bits alone, at any position in a batch of 16, and however
    /// the columns are split into tasks; repeated calls agree.
    #[test]
    fn q4_0_rows_give_each_row_the_same_bits_in_any_batch() {
        let (in_dim, out_dim) = (384, 45);
        let w = weight(out_dim, in_dim, 3);
        let data = w.data().unwrap();
        let x = inputs(FEW_ROWS, in_dim, 11);
        for path in paths() {
            let run = |x: &[f32], rows: usize, task: usize| {
                forward_q4_0_with(path, task, x, &data, rows, in_dim, out_dim)
            };
            let all = run(&x, FEW_ROWS, TASK_BLOCKS);
            assert_eq!(all, run(&x, FEW_ROWS, TASK_BLOCKS), "{path:?}: repeated");
            assert_eq!(all, run(&x, FEW_ROWS, 1), "{path:?}: one group per task");
            assert_eq!(all, run(&x, FEW_ROWS, 1 << 30), "{path:?}: one task");
            for r in 0..FEW_ROWS {
                let row = &x[r * in_dim..(r + 1) * in_dim];
                let alone = run(row, 1, TASK_BLOCKS);
                assert_eq!(
                    alone[..],
                    all[r * out_dim..(r + 1) * out_dim],
                    "{path:?}: row {r}"
                );
                let pair = [row, &x[..in_dim]].concat();
                let moved = run(&pair, 2, TASK_BLOCKS);
                assert_eq!(
                    moved[..out_dim],
                    alone[..],
                    "{path:?}: row {r} first of a pair"
                );
            }
        }
    }

    /// The q8_0 input quantization equals candle's `BlockQ8_0::from_float` byte for byte
    /// (scale bits and values), on every path, including ties, zeros, tiny and huge blocks.
    #[test]
    fn q8_0_inputs_equal_candles_quantization() {
        let n = 64 * BLOCK;
        let mut x = values(n, 21);
        for (b, block) in x.chunks_exact_mut(BLOCK).enumerate() {
            let scale = match b % 8 {
                0 => 0.0,
                1 => 1e-7,
                2 => 1e-3,
                3 => 6e4,
                4 => 1e9,
                _ => 1.0 + b as f32,
            };
            for v in block.iter_mut() {
                *v *= scale;
            }
            if b % 8 == 5 {
                // Ties at every half step.
                for (c, v) in block.iter_mut().enumerate() {
                    *v = if c == 0 { 127.0 } else { c as f32 - 16.5 };
                }
            }
        }
        let t = Tensor::from_vec(x.clone(), (1, n), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&t, GgmlDType::Q8_0).unwrap();
        let bytes = q.data().unwrap();
        for path in paths() {
            let xq = quantize_rows(path, &x, 1, n);
            for b in 0..n / BLOCK {
                let want = &bytes[b * 34..(b + 1) * 34];
                let d = f16_to_f32(u16::from_le_bytes([want[0], want[1]]));
                assert_eq!(
                    d.to_bits(),
                    xq.d[b].to_bits(),
                    "{path:?}: block {b}'s scale"
                );
                let flip = if path == Path::Vnni { 0x80 } else { 0 };
                let got: Vec<u8> = xq.q[b * BLOCK..(b + 1) * BLOCK]
                    .iter()
                    .map(|v| v ^ flip)
                    .collect();
                assert_eq!(got[..], want[2..], "{path:?}: block {b}'s values");
            }
        }
    }

    /// The f16 conversions round-trip every half and round f32s to nearest even.
    #[test]
    fn f16_conversions_are_exact_and_round_to_nearest_even() {
        for h in 0..=u16::MAX {
            let f = f16_to_f32(h);
            if f.is_nan() {
                assert!(f16_to_f32(f32_to_f16(f)).is_nan());
            } else {
                assert_eq!(f32_to_f16(f), h, "{h:#x} -> {f}");
            }
        }
        // Halfway between 1 and the next half (1 + 2⁻¹⁰) goes to even (1); just above, up.
        assert_eq!(f32_to_f16(1.0 + 2f32.powi(-11)), 0x3c00);
        assert_eq!(f32_to_f16(1.0 + 3.0 * 2f32.powi(-11)), 0x3c02);
        assert_eq!(f32_to_f16(1.0 + 2f32.powi(-11) + 2f32.powi(-20)), 0x3c01);
        assert_eq!(f32_to_f16(65520.0), 0x7c00, "overflow rounds to infinity");
        assert_eq!(
            f32_to_f16(2f32.powi(-25)),
            0,
            "the smallest tie goes to zero"
        );
        assert_eq!(f32_to_f16(2f32.powi(-25) * 1.5), 1);
        // Against F16C where the CPU has it.
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("f16c") {
            #[target_feature(enable = "f16c")]
            fn hw(x: f32) -> u16 {
                use std::arch::x86_64::*;
                _mm_extract_epi16::<0>(_mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm_set_ss(x)))
                    as u16
            }
            for (k, v) in values(100_000, 9).iter().enumerate() {
                let x = v * 2f32.powi((k % 60) as i32 - 30);
                // SAFETY: F16C detected.
                assert_eq!(f32_to_f16(x), unsafe { hw(x) }, "{x:e}");
            }
        }
    }

    /// The SIMD decoders write what the scalar one does.
    #[test]
    fn simd_decoding_equals_the_scalar_decoding() {
        let w = weight(9, 256, 5);
        let data = w.data().unwrap();
        let want: Vec<Dec> = data.chunks_exact(Q4_0_BYTES).map(decode_block).collect();
        for path in paths() {
            let mut got = vec![DEC_ZERO; want.len()];
            match path {
                // SAFETY: available paths.
                #[cfg(target_arch = "x86_64")]
                Path::Vnni => unsafe { x86::decode_vnni(&data, &mut got) },
                #[cfg(target_arch = "x86_64")]
                Path::Avx2 => unsafe { x86::decode_avx2(&data, &mut got) },
                _ => continue,
            }
            for (k, (g, e)) in got.iter().zip(&want).enumerate() {
                assert_eq!(
                    (g.w, g.d.to_bits()),
                    (e.w, e.d.to_bits()),
                    "{path:?} block {k}"
                );
                if path == Path::Vnni {
                    assert_eq!(g.init, e.init, "{path:?} block {k}");
                }
            }
        }
    }
}
