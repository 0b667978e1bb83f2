//! Batched-decoding shapes (few rows) through the fused linear's forward against gemm called
//! as it was before (one blocked gemm, threaded above 2^18 multiply-adds), alternating in one
//! process: median-free means over 5 × 100 calls per path (issue 25, docs/kernels.md "Few rows").
//!
//! `cargo run --release -p llmlab-nn --example decode_probe`

use std::time::Instant;

use llmlab_nn::ops;
use llmlab_plugin_api::candle::{Device, Tensor};
use llmlab_plugin_api::gemm;

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
    for (k, n) in [(256, 768), (256, 1024), (1024, 256), (256, 2048)] {
        for m in [2, 4, 16] {
            let x: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
            let w: Vec<f32> = (0..n * k).map(|i| (i % 5) as f32 * 0.1).collect();
            let (xt, wt) = (
                Tensor::from_vec(x.clone(), (m, k), &Device::Cpu)?,
                Tensor::from_vec(w.clone(), (n, k), &Device::Cpu)?,
            );
            let mut y = vec![0f32; m * n];
            let mut seconds = [0f64; 2];
            for _ in 0..5 {
                let t0 = Instant::now();
                for _ in 0..100 {
                    gemm_forward(m, n, k, &x, &w, &mut y);
                }
                seconds[0] += t0.elapsed().as_secs_f64();
                let t0 = Instant::now();
                for _ in 0..100 {
                    ops::linear(&xt, &wt, None)?;
                }
                seconds[1] += t0.elapsed().as_secs_f64();
            }
            let fused: Vec<f32> = ops::linear(&xt, &wt, None)?.flatten_all()?.to_vec1()?;
            let diff = y
                .iter()
                .zip(&fused)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            let us = |s: f64| s / 500.0 * 1e6;
            println!(
                "{{\"rows\":{m},\"in\":{k},\"out\":{n},\"gemm_us\":{:.1},\"few_rows_us\":{:.1},\"speedup\":{:.2},\"max_diff\":{diff:e}}}",
                us(seconds[0]), us(seconds[1]), seconds[0] / seconds[1]
            );
        }
    }
    Ok(())
}
