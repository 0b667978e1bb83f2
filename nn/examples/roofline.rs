//! The machine's f32 ceiling, for reading the forward-pass ratios against (issue 25): the peak
//! rate of fused multiply-adds a core issues (many independent accumulators, no memory
//! traffic), on 1 and on 2 threads, with ymm and zmm registers; and the `gemm` crate on one
//! large square product, the best any matrix kernel here does. `bench/roofline_peer.py` times
//! the same square product through PyTorch's MKL.
//!
//! Two threads reaching twice one thread's peak says the two vCPUs are two physical cores (not
//! hyperthreads of one). Prints one JSON line per measurement, GFLOP/s = 10⁹ × (2 per FMA lane).
//!
//! `cargo run --release --example roofline [-- REPS]`

use std::time::Instant;

use llmlab_plugin_api::gemm;

/// FMAs per accumulator per loop trip; 12 independent accumulators hide the 4-cycle latency on
/// two FMA pipes (8 in flight needed).
const TRIPS: usize = 20_000_000;

/// One FMA kernel: `trips` trips of 12 FMAs on independent accumulators; returns their sum.
type FmaKernel = unsafe fn(usize) -> f32;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_ymm(trips: usize) -> f32 {
    use std::arch::x86_64::*;
    let mut acc = [_mm256_set1_ps(0.0); 12];
    let a = _mm256_set1_ps(0.999_999);
    let b = _mm256_set1_ps(1e-7);
    for _ in 0..trips {
        for r in acc.iter_mut() {
            *r = _mm256_fmadd_ps(*r, a, b);
        }
    }
    let mut sum = _mm256_setzero_ps();
    for r in acc {
        sum = _mm256_add_ps(sum, r);
    }
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), sum);
    lanes.iter().sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_zmm(trips: usize) -> f32 {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_set1_ps(0.0); 12];
    let a = _mm512_set1_ps(0.999_999);
    let b = _mm512_set1_ps(1e-7);
    for _ in 0..trips {
        for r in acc.iter_mut() {
            *r = _mm512_fmadd_ps(*r, a, b);
        }
    }
    let mut sum = _mm512_setzero_ps();
    for r in acc {
        sum = _mm512_add_ps(sum, r);
    }
    _mm512_reduce_add_ps(sum)
}

/// GFLOP/s of `threads` threads each running `kernel` for `TRIPS` trips of 12 FMAs of `lanes`.
fn fma_peak(kernel: FmaKernel, lanes: usize, threads: usize) -> f64 {
    let start = Instant::now();
    let sums: Vec<f32> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            // SAFETY: called only after the CPU feature check in `main`.
            .map(|_| s.spawn(move || unsafe { kernel(TRIPS) }))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let secs = start.elapsed().as_secs_f64();
    assert!(sums.iter().all(|s| s.is_finite()));
    (threads * TRIPS * 12 * lanes * 2) as f64 / secs / 1e9
}

/// GFLOP/s of the `gemm` crate on one `n × n × n` product, contiguous row-major operands.
fn gemm_square(n: usize, threads: usize) -> f64 {
    let lhs: Vec<f32> = (0..n * n)
        .map(|i| ((i % 97) as f32 - 48.0) / 97.0)
        .collect();
    let rhs: Vec<f32> = (0..n * n)
        .map(|i| ((i % 89) as f32 - 44.0) / 89.0)
        .collect();
    let mut dst = vec![0f32; n * n];
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    let run = |dst: &mut [f32]| {
        // SAFETY: all three are n × n, row-major, non-overlapping.
        unsafe {
            gemm::gemm(
                n,
                n,
                n,
                dst.as_mut_ptr(),
                1,
                n as isize,
                false,
                lhs.as_ptr(),
                1,
                n as isize,
                rhs.as_ptr(),
                1,
                n as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                parallelism,
            )
        }
    };
    run(&mut dst);
    let reps = 5;
    let start = Instant::now();
    for _ in 0..reps {
        run(&mut dst);
    }
    let secs = start.elapsed().as_secs_f64() / reps as f64;
    (2 * n * n * n) as f64 / secs / 1e9
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let reps: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().expect("REPS: a number"))
        .unwrap_or(3);
    let print = |what: &str, threads: usize, samples: Vec<f64>| {
        let med = median(samples.clone());
        println!(
            "{{\"what\":\"{what}\",\"threads\":{threads},\"gflops\":{med:.1},\"samples\":{samples:.1?}}}"
        );
    };
    #[cfg(target_arch = "x86_64")]
    {
        let kernels: [(&str, FmaKernel, usize, bool); 2] = [
            (
                "fma_ymm",
                fma_ymm,
                8,
                is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            ),
            ("fma_zmm", fma_zmm, 16, is_x86_feature_detected!("avx512f")),
        ];
        for (name, kernel, lanes, available) in kernels {
            if !available {
                continue;
            }
            for threads in [1, 2] {
                print(
                    name,
                    threads,
                    (0..reps)
                        .map(|_| fma_peak(kernel, lanes, threads))
                        .collect(),
                );
            }
        }
    }
    for threads in [1, 2] {
        print(
            "gemm_1536_square",
            threads,
            (0..reps).map(|_| gemm_square(1536, threads)).collect(),
        );
    }
}
