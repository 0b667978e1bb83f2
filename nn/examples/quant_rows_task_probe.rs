//! Two questions about the q4_0 few-rows kernel (`ops::quant_rows`) that the serving profiles
//! raised (issue 23, docs/serving.md "Profile of the q4_0 serving step"):
//!
//! 1. **Prefill shapes.** A batched prefill of 16 prompts is 16 × prompt-length rows, which
//!    went to candle's `QMatMul` (single-threaded under the host's `CANDLE_NUM_THREADS=1`): is
//!    the kernel faster there too? Rows 32, 80, 160 on the 11 M serve model's layers.
//! 2. **Task size.** On the 0.5 M quickstart model a 16-row product is tens of µs, split into
//!    rayon tasks of [`quant_rows::TASK_BLOCKS`] weight blocks × rows: µs per call at several
//!    task sizes, for the quickstart and 11 M shapes, at 1 and 16 rows.
//!
//! Both alternate in one process, medians of 9 × 50 calls; the kernel's bits are checked
//! against `QMatMul`'s at every shape.
//!
//! `RAYON_NUM_THREADS=2 cargo run --release -p llmlab-nn --example quant_rows_task_probe`

use std::sync::Arc;
use std::time::Instant;

use llmlab_nn::ops::quant_rows::{self, Path};
use llmlab_plugin_api::candle::quantized::{GgmlDType, QMatMul, QTensor};
use llmlab_plugin_api::candle::{Device, Module, Tensor};
use llmlab_plugin_api::rng::SplitMix64;

/// The 11 M serve model's decoder products (d 384).
const BIG: [(usize, usize); 4] = [(384, 1152), (384, 384), (384, 1536), (1536, 384)];
/// The quickstart model's (d 128; SwiGLU's up and gate 344 wide, its projection's input padded
/// to 352 by the q4_0 block; the 721-token head).
const SMALL: [(usize, usize); 6] = [
    (128, 384),
    (128, 128),
    (128, 344),
    (128, 344),
    (352, 128),
    (128, 721),
];

fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed);
    (0..n).map(|_| rng.next_unit() as f32 * 2.0 - 1.0).collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median µs per call of each closure, alternating them.
fn time(calls: &mut [&mut dyn FnMut()]) -> Vec<f64> {
    let mut t: Vec<Vec<f64>> = vec![Vec::new(); calls.len()];
    for _ in 0..9 {
        for (i, f) in calls.iter_mut().enumerate() {
            let start = Instant::now();
            for _ in 0..50 {
                f();
            }
            t[i].push(start.elapsed().as_secs_f64() / 50.0 * 1e6);
        }
    }
    t.into_iter().map(median).collect()
}

struct Layer {
    mm: QMatMul,
    data: Vec<u8>,
    in_dim: usize,
    out_dim: usize,
}

fn layer(in_dim: usize, out_dim: usize) -> llmlab_plugin_api::candle::Result<Layer> {
    let w = Tensor::from_vec(values(out_dim * in_dim, 1), (out_dim, in_dim), &Device::Cpu)?;
    let q = Arc::new(QTensor::quantize(&w, GgmlDType::Q4_0)?);
    Ok(Layer {
        mm: QMatMul::from_arc(q.clone())?,
        data: q.data()?.to_vec(),
        in_dim,
        out_dim,
    })
}

fn main() -> llmlab_plugin_api::candle::Result<()> {
    let path = Path::detect();
    println!(
        "path {path:?}, rayon threads {}, TASK_BLOCKS {}",
        llmlab_plugin_api::rayon::current_num_threads(),
        quant_rows::TASK_BLOCKS
    );
    println!("\n1. prefill rows, 11 M layers: QMatMul vs quant_rows (µs per call)");
    for (in_dim, out_dim) in BIG {
        let l = layer(in_dim, out_dim)?;
        for rows in [32usize, 80, 160] {
            let xv = values(rows * in_dim, 2 + rows as u64);
            let x = Tensor::from_vec(xv.clone(), (rows, in_dim), &Device::Cpu)?;
            let old = l.mm.forward(&x)?.flatten_all()?.to_vec1::<f32>()?;
            let new = quant_rows::forward_q4_0(&xv, &l.data, rows, in_dim, out_dim);
            assert_eq!(old, new, "{in_dim} -> {out_dim}, rows {rows}: bits differ");
            let t = time(&mut [
                &mut || {
                    std::hint::black_box(l.mm.forward(&x).unwrap());
                },
                &mut || {
                    std::hint::black_box(quant_rows::forward_q4_0(
                        &xv, &l.data, rows, l.in_dim, l.out_dim,
                    ));
                },
            ]);
            println!(
                "{in_dim:>5} -> {out_dim:<5} rows {rows:>3}: QMatMul {:>8.1}  quant_rows {:>8.1}  {:>5.2}x",
                t[0],
                t[1],
                t[0] / t[1]
            );
        }
    }
    let sizes = [1usize << 12, 1 << 13, 1 << 14, 1 << 15, 1 << 30];
    println!("\n2. task size (weight blocks × rows per task; 1<<30 = one task): µs per call");
    for (name, shapes) in [("quickstart", &SMALL[..]), ("11 M", &BIG[..])] {
        for rows in [1usize, 16] {
            let mut sum = vec![0f64; sizes.len()];
            for &(in_dim, out_dim) in shapes {
                let l = layer(in_dim, out_dim)?;
                let xv = values(rows * in_dim, 3 + rows as u64);
                let p = match path {
                    Path::Vnni if rows < quant_rows::VNNI_MIN_ROWS => Path::Avx2,
                    p => p,
                };
                let mut calls: Vec<Box<dyn FnMut()>> = sizes
                    .iter()
                    .map(|&tb| {
                        let (xv, l) = (&xv, &l);
                        Box::new(move || {
                            std::hint::black_box(quant_rows::forward_q4_0_with(
                                p, tb, xv, &l.data, rows, l.in_dim, l.out_dim,
                            ));
                        }) as Box<dyn FnMut()>
                    })
                    .collect();
                let mut refs: Vec<&mut dyn FnMut()> = calls
                    .iter_mut()
                    .map(|c| &mut **c as &mut dyn FnMut())
                    .collect();
                let t = time(&mut refs);
                for (s, v) in sum.iter_mut().zip(&t) {
                    *s += v;
                }
                let cells: Vec<String> = t.iter().map(|v| format!("{v:>8.1}")).collect();
                println!(
                    "{name:>10} {in_dim:>5} -> {out_dim:<5} rows {rows:>2}: {}",
                    cells.join(" ")
                );
            }
            let cells: Vec<String> = sum.iter().map(|v| format!("{v:>8.1}")).collect();
            println!(
                "{name:>10} sum of its products, rows {rows:>2}:   {}",
                cells.join(" ")
            );
        }
    }
    println!("task sizes: {sizes:?}");
    Ok(())
}
