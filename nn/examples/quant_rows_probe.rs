//! The q4_0 few-rows kernel (`ops::quant_rows`) against candle's `QMatMul` at batched-decoding
//! shapes: the 11 M serve model's layers (d 384: `c_attn`, `c_proj`, `c_fc`, the MLP's
//! projection, the 721-token head), rows 1, 2, 4, 8, 16; the two alternating in one process,
//! medians of 9 × 50 calls, µs per call and the speed-up (issue 23; docs/kernels.md "Few rows,
//! quantized"). Also checks that both return the same bits.
//!
//! `cargo run --release -p llmlab-nn --example quant_rows_probe`

use std::sync::Arc;
use std::time::Instant;

use llmlab_nn::ops::quant_rows::{self, Path};
use llmlab_plugin_api::candle::quantized::{GgmlDType, QMatMul, QTensor};
use llmlab_plugin_api::candle::{Device, Module, Tensor};
use llmlab_plugin_api::rng::SplitMix64;

const SHAPES: [(usize, usize); 5] = [
    (384, 1152),
    (384, 384),
    (384, 1536),
    (1536, 384),
    (384, 721),
];

/// Values in [-1, 1) from the project's seeded generator.
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed);
    (0..n).map(|_| rng.next_unit() as f32 * 2.0 - 1.0).collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> llmlab_plugin_api::candle::Result<()> {
    println!("path {:?}", Path::detect());
    println!("shape         rows  QMatMul µs  quant_rows µs  speed-up");
    let mut total = [[0f64; 2]; 5];
    for (in_dim, out_dim) in SHAPES {
        let w = Tensor::from_vec(values(out_dim * in_dim, 1), (out_dim, in_dim), &Device::Cpu)?;
        let q = Arc::new(QTensor::quantize(&w, GgmlDType::Q4_0)?);
        let mm = QMatMul::from_arc(q.clone())?;
        let data = q.data()?;
        for (ri, rows) in [1usize, 2, 4, 8, 16].into_iter().enumerate() {
            let xv = values(rows * in_dim, 2 + rows as u64);
            let x = Tensor::from_vec(xv.clone(), (rows, in_dim), &Device::Cpu)?;
            let old = mm.forward(&x)?.flatten_all()?.to_vec1::<f32>()?;
            let new = quant_rows::forward_q4_0(&xv, &data, rows, in_dim, out_dim);
            assert_eq!(
                old, new,
                "{in_dim} -> {out_dim}, rows {rows}: results differ"
            );
            let (mut a, mut b) = (Vec::new(), Vec::new());
            for _ in 0..9 {
                let t = Instant::now();
                for _ in 0..50 {
                    std::hint::black_box(mm.forward(&x)?);
                }
                a.push(t.elapsed().as_secs_f64() / 50.0 * 1e6);
                let t = Instant::now();
                for _ in 0..50 {
                    std::hint::black_box(quant_rows::forward_q4_0(
                        &xv, &data, rows, in_dim, out_dim,
                    ));
                }
                b.push(t.elapsed().as_secs_f64() / 50.0 * 1e6);
            }
            let (a, b) = (median(a), median(b));
            if in_dim != 384 || out_dim != 721 {
                // One decoder layer's four products, summed per row count.
                total[ri][0] += a;
                total[ri][1] += b;
            }
            println!(
                "{in_dim:>4} -> {out_dim:<5} {rows:>4}  {a:>10.1}  {b:>13.1}  {:>7.2}x",
                a / b
            );
        }
    }
    println!("one layer (4 products):");
    for (ri, rows) in [1usize, 2, 4, 8, 16].into_iter().enumerate() {
        let [a, b] = total[ri];
        println!(
            "rows {rows:>2}: QMatMul {a:>8.1} µs ({:>6.1} per row), quant_rows {b:>8.1} µs ({:>6.1} per row), {:.2}x",
            a / rows as f64,
            b / rows as f64,
            a / b
        );
    }
    Ok(())
}
