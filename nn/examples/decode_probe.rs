//! Batched-decoding shapes (few rows) through the few-rows forward (`ops::few_rows`): the
//! previous kernel (AVX2 + FMA blocks of 2 weight rows × 4 input rows, lanes summed by storing
//! and adding scalars, computed as `yᵀ` and transposed; kept here as `previous`) against the
//! current paths, alternating in one process; medians of 9 × 50 calls per path and shape, with
//! GFLOP/s (issues 23, 25; docs/kernels.md "Few rows").
//!
//! `cargo run --release -p llmlab-nn --example decode_probe [tasks]`: with `tasks`, the AVX-512
//! path at several task sizes instead (the rayon split).

use std::time::Instant;

use llmlab_nn::ops::few_rows::{self, Path};
use llmlab_plugin_api::rayon::prelude::*;

/// The shapes of one decoding step: tiny (d 256, vocab 2048) and small / the 11 M serve model
/// (d 384, vocab 4096): `c_attn`, `c_proj`, `c_fc`, the MLP's projection, the head.
const SHAPES: [(usize, usize); 10] = [
    (256, 768),
    (256, 256),
    (256, 1024),
    (1024, 256),
    (256, 2048),
    (384, 1152),
    (384, 384),
    (384, 1536),
    (1536, 384),
    (384, 4096),
];

/// The few-rows forward before issue 25's second round (bias-free), for the A/B.
fn previous(x: &[f32], w: &[f32], rows: usize, in_dim: usize, out_dim: usize) -> Vec<f32> {
    let mut yt = vec![0f32; out_dim * rows];
    let outputs_per_task = (65_536 / (rows * in_dim).max(1)).max(1);
    yt.par_chunks_mut(outputs_per_task * rows)
        .enumerate()
        .for_each(|(task, yt)| {
            let first = task * outputs_per_task;
            // SAFETY: main checked AVX2 + FMA.
            unsafe { old::dot_rows_fma(x, &w[first * in_dim..], yt, rows, in_dim) };
        });
    let mut y = vec![0f32; rows * out_dim];
    for (r, y) in y.chunks_exact_mut(out_dim).enumerate() {
        for (o, y) in y.iter_mut().enumerate() {
            *y = yt[o * rows + r];
        }
    }
    y
}

mod old {
    use std::arch::x86_64::*;
    const DOT_LANES: usize = 8;

    /// # Safety
    /// The CPU must have AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_rows_fma(x: &[f32], w: &[f32], yt: &mut [f32], rows: usize, in_dim: usize) {
        let outs = yt.len() / rows;
        let mut o = 0;
        while o < outs {
            let wo = (outs - o).min(2);
            let mut r = 0;
            while r < rows {
                let xr = (rows - r).min(4);
                let at = (o, r);
                // SAFETY (all arms): this function's features.
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
                // SAFETY: k·8 + 8 <= in_dim, the length of ws[j].
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

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let sweep = std::env::args().nth(1).as_deref() == Some("tasks");
    assert!(
        Path::Avx2Fma.available(),
        "decode_probe compares AVX2 + FMA kernels"
    );
    let paths: Vec<Path> = [Path::Avx512, Path::Avx2Fma]
        .into_iter()
        .filter(|p| p.available())
        .collect();
    // (label, run) per variant; the first is the baseline of the speed-up column.
    type Run = Box<dyn Fn(&[f32], &[f32], usize, usize, usize) -> Vec<f32>>;
    let mut variants: Vec<(String, Run)> = Vec::new();
    if sweep {
        for task_macs in [1 << 15, 1 << 16, 1 << 17, 1 << 18, usize::MAX] {
            let path = Path::detect();
            let label = if task_macs == usize::MAX {
                "one_task".to_string()
            } else {
                format!("task_{}k", task_macs >> 10)
            };
            variants.push((
                label,
                Box::new(move |x: &[f32], w: &[f32], m, k, n| {
                    few_rows::forward_with(path, task_macs, x, w, None, m, k, n)
                }),
            ));
        }
    } else {
        variants.push(("previous".into(), Box::new(previous)));
        for path in paths {
            variants.push((
                format!("{path:?}"),
                Box::new(move |x: &[f32], w: &[f32], m, k, n| {
                    few_rows::forward_with(path, few_rows::TASK_MACS, x, w, None, m, k, n)
                }),
            ));
        }
    }
    let threads = llmlab_plugin_api::rayon::current_num_threads();
    println!(
        "{{\"threads\":{threads},\"detected\":\"{:?}\"}}",
        Path::detect()
    );
    for (k, n) in SHAPES {
        for m in [2, 4, 8, 16] {
            let x: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1 - 0.3).collect();
            let w: Vec<f32> = (0..n * k).map(|i| (i % 5) as f32 * 0.1 - 0.2).collect();
            let mut seconds = vec![Vec::new(); variants.len()];
            for _ in 0..9 {
                for (v, (_, run)) in variants.iter().enumerate() {
                    let t0 = Instant::now();
                    for _ in 0..50 {
                        std::hint::black_box(run(&x, &w, m, k, n));
                    }
                    seconds[v].push(t0.elapsed().as_secs_f64() / 50.0);
                }
            }
            let base = variants[0].1(&x, &w, m, k, n);
            let mut fields = format!("\"rows\":{m},\"in\":{k},\"out\":{n}");
            let base_s = median(seconds[0].clone());
            for (v, (label, run)) in variants.iter().enumerate() {
                let s = median(seconds[v].clone());
                let diff = run(&x, &w, m, k, n)
                    .iter()
                    .zip(&base)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                let gflops = 2.0 * (m * k * n) as f64 / s / 1e9;
                fields += &format!(
                    ",\"{label}_us\":{:.2},\"{label}_gflops\":{gflops:.1},\"{label}_speedup\":{:.2},\"{label}_maxdiff\":{diff:e}",
                    s * 1e6,
                    base_s / s
                );
            }
            println!("{{{fields}}}");
        }
    }
}
