//! Forward + backward of one linear layer, fused (`ops::linear`) against candle's composed
//! `Linear`, alternating in one process on the `tiny` bench model's shapes (issue 25). Prints one
//! JSON line per shape with median milliseconds of each path and their ratio.
//!
//! `cargo run --release -p llmlab-nn --example linear_bench [-- REPS]`

use std::time::Instant;

use llmlab_nn::ops;
use llmlab_plugin_api::candle::{Device, Result, Tensor, Var};

fn step(fused: bool, x: &Var, w: &Var, b: Option<&Var>, probe: &Tensor) -> Result<f64> {
    let t0 = Instant::now();
    let bias = b.map(|b| b.as_tensor());
    let y = if fused {
        ops::linear(x.as_tensor(), w.as_tensor(), bias)?
    } else {
        ops::linear::linear_reference(x.as_tensor(), w.as_tensor(), bias)?
    };
    let grads = (y * probe)?.sum_all()?.backward()?;
    // Read every gradient so lazily shared buffers are really written.
    for v in [Some(x), Some(w), b].into_iter().flatten() {
        let g = grads
            .get(v.as_tensor())
            .expect("every input has a gradient");
        g.sum_all()?.to_scalar::<f32>()?;
    }
    Ok(t0.elapsed().as_secs_f64() * 1e3)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let reps: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let dev = Device::Cpu;
    // (name, rows, in, out, bias): tiny = batch 16 × ctx 128, d 256, vocab 2048.
    let shapes = [
        ("c_attn", 2048, 256, 768, true),
        ("c_fc", 2048, 256, 1024, true),
        ("mlp c_proj", 2048, 1024, 256, true),
        ("lm_head", 2048, 256, 2048, false),
    ];
    for (name, rows, din, dout, bias) in shapes {
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (16, rows / 16, din), &dev)?)?;
        let w = Var::from_tensor(&Tensor::randn(0f32, 0.02, (dout, din), &dev)?)?;
        let b = bias
            .then(|| Var::from_tensor(&Tensor::zeros(dout, x.dtype(), &dev)?))
            .transpose()?;
        let probe = Tensor::randn(0f32, 1.0, (16, rows / 16, dout), &dev)?;
        let (mut fused, mut reference) = (Vec::new(), Vec::new());
        for rep in 0..reps + 2 {
            let f = step(true, &x, &w, b.as_ref(), &probe)?;
            let r = step(false, &x, &w, b.as_ref(), &probe)?;
            if rep >= 2 {
                fused.push(f);
                reference.push(r);
            }
        }
        let (f, r) = (median(fused), median(reference));
        println!(
            "{{\"shape\":\"{name}\",\"rows\":{rows},\"in\":{din},\"out\":{dout},\"bias\":{bias},\"threads\":{},\"fused_ms\":{f:.2},\"candle_ms\":{r:.2},\"speedup\":{:.2}}}",
            llmlab_plugin_api::rayon::current_num_threads(),
            r / f
        );
    }
    Ok(())
}
