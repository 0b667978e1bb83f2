//! The `gemm` crate on the training step's matrix products, for the comparison with MKL and
//! OpenBLAS (issue 25, item 4; `bench/gemm_peer.py` runs the same products through PyTorch's MKL
//! and NumPy's OpenBLAS, `bench/gemm_compare.sh` alternates the three).
//!
//! For each linear of the `tiny` and `small` bench models it times the three products a training
//! step makes — forward `x Wᵀ`, input gradient `dy W`, weight gradient `dyᵀ x` — with the strides
//! `ops::linear` passes (no transposed copies), single-threaded on one core's micro-batch (how the
//! trainer splits a batch over cores) and with 2 threads on the whole batch. Prints one JSON line
//! per product with the median milliseconds and GFLOP/s.
//!
//! `cargo run --release -p llmlab-nn --example gemm_compare [-- REPS]`

use std::time::Instant;

use llmlab_plugin_api::gemm;

/// (model, linear, rows of the whole batch, in, out): tiny = batch 16 × ctx 128, d 256, vocab
/// 2048; small = batch 8 × ctx 256, d 384, vocab 4096 (`bench/torch_gpt.py`).
const SHAPES: [(&str, &str, usize, usize, usize); 8] = [
    ("tiny", "c_attn", 2048, 256, 768),
    ("tiny", "c_fc", 2048, 256, 1024),
    ("tiny", "mlp c_proj", 2048, 1024, 256),
    ("tiny", "lm_head", 2048, 256, 2048),
    ("small", "c_attn", 2048, 384, 1152),
    ("small", "c_fc", 2048, 384, 1536),
    ("small", "mlp c_proj", 2048, 1536, 384),
    ("small", "lm_head", 2048, 384, 4096),
];

/// A product `dst (m×n) = lhs (m×k) · rhs (k×n)` with `(row, column)` strides of each operand.
struct Product {
    m: usize,
    n: usize,
    k: usize,
    lhs_strides: (isize, isize),
    rhs_strides: (isize, isize),
}

impl Product {
    /// The three products of a linear with `rows` inputs of width `din` and `dout` outputs;
    /// `x` `(rows, din)`, `W` `(dout, din)`, `dy` `(rows, dout)`, all row-major.
    fn of_linear(rows: usize, din: usize, dout: usize) -> [(&'static str, Product); 3] {
        let (i, o) = (din as isize, dout as isize);
        [
            // y = x Wᵀ: Wᵀ read from W (dout, din) with swapped strides.
            ("forward", Product::new((rows, dout, din), (i, 1), (1, i))),
            // dx = dy W.
            (
                "grad_input",
                Product::new((rows, din, dout), (o, 1), (i, 1)),
            ),
            // dW = dyᵀ x: dyᵀ read from dy (rows, dout) with swapped strides.
            (
                "grad_weight",
                Product::new((dout, din, rows), (1, o), (i, 1)),
            ),
        ]
    }

    fn new(
        (m, n, k): (usize, usize, usize),
        lhs_strides: (isize, isize),
        rhs_strides: (isize, isize),
    ) -> Product {
        Product {
            m,
            n,
            k,
            lhs_strides,
            rhs_strides,
        }
    }

    fn run(&self, dst: &mut [f32], lhs: &[f32], rhs: &[f32], threads: usize) {
        let parallelism = if threads > 1 {
            gemm::Parallelism::Rayon(threads)
        } else {
            gemm::Parallelism::None
        };
        assert!(dst.len() >= self.m * self.n && lhs.len() >= self.m * self.k);
        assert!(rhs.len() >= self.k * self.n);
        // SAFETY: the buffers hold m·k, k·n and m·n elements (checked above), and every
        // stride pair addresses a row-major matrix of those sizes, transposed or not.
        unsafe {
            gemm::gemm(
                self.m,
                self.n,
                self.k,
                dst.as_mut_ptr(),
                1,
                self.n as isize,
                false,
                lhs.as_ptr(),
                self.lhs_strides.1,
                self.lhs_strides.0,
                rhs.as_ptr(),
                self.rhs_strides.1,
                self.rhs_strides.0,
                0.0,
                1.0,
                false,
                false,
                false,
                parallelism,
            )
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn filled(len: usize, salt: usize) -> Vec<f32> {
    (0..len)
        .map(|i| (((i * 7919 + salt) % 1000) as f32 / 500.0) - 1.0)
        .collect()
}

fn main() {
    let reps: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let pool = |threads| {
        llmlab_plugin_api::rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("a rayon pool")
    };
    // (threads, rows): one core's half of the batch alone, or the whole batch on both cores.
    for (threads, share) in [(1, 2), (2, 1)] {
        let pool = pool(threads);
        for (model, linear, batch_rows, din, dout) in SHAPES {
            let rows = batch_rows / share;
            for (product, p) in Product::of_linear(rows, din, dout) {
                let lhs = filled(p.m * p.k, 1);
                let rhs = filled(p.k * p.n, 2);
                let mut dst = vec![0f32; p.m * p.n];
                let times: Vec<f64> = pool.install(|| {
                    (0..reps + 2)
                        .map(|_| {
                            let t0 = Instant::now();
                            p.run(&mut dst, &lhs, &rhs, threads);
                            t0.elapsed().as_secs_f64() * 1e3
                        })
                        .skip(2)
                        .collect()
                });
                let ms = median(times);
                let gflops = 2.0 * (p.m * p.n * p.k) as f64 / (ms * 1e6);
                println!(
                    "{{\"impl\":\"gemm\",\"model\":\"{model}\",\"linear\":\"{linear}\",\"product\":\"{product}\",\
                     \"m\":{},\"n\":{},\"k\":{},\"threads\":{threads},\"ms\":{ms:.4},\"gflops\":{gflops:.2}}}",
                    p.m, p.n, p.k
                );
            }
        }
    }
}
