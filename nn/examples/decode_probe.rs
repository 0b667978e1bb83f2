//! Batched-decoding shapes (few rows) through the fused linear's forward against gemm called
//! as it was before (one blocked gemm, threaded above 2^18 multiply-adds) and against the
//! previous few-rows kernel (one dot per weight row and input row, issue 25; kept here as
//! `unblocked`), alternating in one process: means over 5 × 100 calls per path (issue 23,
//! docs/kernels.md "Few rows").
//!
//! `cargo run --release -p llmlab-nn --example decode_probe`

use std::time::Instant;

use llmlab_nn::ops;
use llmlab_plugin_api::candle::{Device, Tensor};
use llmlab_plugin_api::gemm;
use llmlab_plugin_api::rayon::prelude::*;

/// The few-rows forward before its register blocking (bias-free): each weight row dotted with
/// every input row, one dot at a time.
fn unblocked(x: &[f32], w: &[f32], rows: usize, in_dim: usize, out_dim: usize) -> Vec<f32> {
    let mut yt = vec![0f32; out_dim * rows];
    let outputs_per_task = (65_536 / (rows * in_dim).max(1)).max(1);
    yt.par_chunks_mut(outputs_per_task * rows)
        .enumerate()
        .for_each(|(task, yt)| {
            let first = task * outputs_per_task;
            dot_rows(x, &w[first * in_dim..], yt, rows, in_dim);
        });
    let mut y = vec![0f32; rows * out_dim];
    for (r, y) in y.chunks_exact_mut(out_dim).enumerate() {
        for (o, y) in y.iter_mut().enumerate() {
            *y = yt[o * rows + r];
        }
    }
    y
}

llmlab_nn::simd_kernel! {
    fn dot_rows(x: &[f32], w: &[f32], yt: &mut [f32], rows: usize, in_dim: usize) {
        for (o, yt) in yt.chunks_exact_mut(rows).enumerate() {
            let w = &w[o * in_dim..(o + 1) * in_dim];
            for (r, yt) in yt.iter_mut().enumerate() {
                *yt = ops::math::dot(&x[r * in_dim..(r + 1) * in_dim], w);
            }
        }
    }
}

fn gemm_forward(m: usize, n: usize, k: usize, x: &[f32], w: &[f32], y: &mut [f32]) {
    let par = if m * n * k >= 1 << 18 {
        gemm::Parallelism::Rayon(llmlab_plugin_api::rayon::current_num_threads())
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: x (m, k), w (n, k) read as Wᵀ, y (m, n), all row-major and of those sizes.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            y.as_mut_ptr(),
            1,
            n as isize,
            false,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

fn main() -> llmlab_plugin_api::candle::Result<()> {
    for (k, n) in [
        (256, 768),
        (256, 1024),
        (1024, 256),
        (256, 2048),
        (384, 1152),
        (1536, 384),
    ] {
        for m in [2, 4, 8, 16] {
            let x: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
            let w: Vec<f32> = (0..n * k).map(|i| (i % 5) as f32 * 0.1).collect();
            let (xt, wt) = (
                Tensor::from_vec(x.clone(), (m, k), &Device::Cpu)?,
                Tensor::from_vec(w.clone(), (n, k), &Device::Cpu)?,
            );
            let mut y = vec![0f32; m * n];
            let mut seconds = [0f64; 3];
            for _ in 0..5 {
                let t0 = Instant::now();
                for _ in 0..100 {
                    gemm_forward(m, n, k, &x, &w, &mut y);
                }
                seconds[0] += t0.elapsed().as_secs_f64();
                let t0 = Instant::now();
                for _ in 0..100 {
                    std::hint::black_box(unblocked(&x, &w, m, k, n));
                }
                seconds[1] += t0.elapsed().as_secs_f64();
                let t0 = Instant::now();
                for _ in 0..100 {
                    ops::linear(&xt, &wt, None)?;
                }
                seconds[2] += t0.elapsed().as_secs_f64();
            }
            let fused: Vec<f32> = ops::linear(&xt, &wt, None)?.flatten_all()?.to_vec1()?;
            let diff = y
                .iter()
                .zip(&fused)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            let us = |s: f64| s / 500.0 * 1e6;
            println!(
                "{{\"rows\":{m},\"in\":{k},\"out\":{n},\"gemm_us\":{:.1},\"unblocked_us\":{:.1},\"few_rows_us\":{:.1},\"vs_gemm\":{:.2},\"vs_unblocked\":{:.2},\"max_diff\":{diff:e}}}",
                us(seconds[0]), us(seconds[1]), us(seconds[2]), seconds[0] / seconds[2], seconds[1] / seconds[2]
            );
        }
    }
    Ok(())
}
