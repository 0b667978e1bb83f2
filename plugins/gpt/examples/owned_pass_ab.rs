//! A/B of the training pass (`pass: "owned"` vs `"autograd"`) on one row-parallel part of the
//! bench shapes: `forward_backward` with the `lm` loss on half a batch, on a one-thread rayon
//! pool (as a part runs on 2 cores), alternating the passes. Prints the median wall and
//! on-CPU milliseconds per step (the CPU time of the one thread that does all the work, from
//! /proc/thread-self/schedstat: robust to other load on the machine), split into forward (up
//! to the loss) and backward.
//!
//!     cargo run --release -p llmlab-gpt --example owned_pass_ab -- [tiny,small] [steps] [rows] [only]
//!
//! `only` (`owned` or `autograd`) runs one pass alone, for a profile.

use std::time::Instant;

use llmlab_plugin_api::candle::{DType, Device, Tensor};
use llmlab_plugin_api::serde_json::json;
use llmlab_plugin_api::{Context, ForwardOptions, Model};
use llmlab_train::benchmark::reference_shape;

/// Nanoseconds this thread has run on a CPU.
fn cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> llmlab_plugin_api::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let configs = args.get(1).map_or("tiny,small", String::as_str).to_string();
    let steps: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(5);
    let pool = llmlab_plugin_api::rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .map_err(|e| llmlab_plugin_api::Error::msg(e.to_string()))?;
    for name in configs.split(',') {
        let shape = reference_shape(name)
            .ok_or_else(|| llmlab_plugin_api::Error::msg(format!("unknown config {name}")))?;
        let rows: usize = args
            .get(3)
            .and_then(|s| s.parse().ok())
            .unwrap_or(shape.batch / 2);
        let (ctx, vocab) = (shape.ctx, shape.vocab);
        let models = ["owned", "autograd"].map(|pass| {
            let config = json!({ "n_layer": shape.n_layer, "n_head": shape.n_head,
                "d_model": shape.d_model, "ctx": ctx, "vocab_size": vocab, "seed": 0,
                "pass": pass });
            llmlab_gpt::new_gpt(&config, &Context::cpu())
        });
        let tokens: Vec<u32> = (0..rows * (ctx + 1))
            .map(|i| (i * 7919 % vocab) as u32)
            .collect();
        let windows: Vec<&[u32]> = tokens.chunks(ctx + 1).collect();
        let x: Vec<u32> = windows.iter().flat_map(|w| w[..ctx].to_vec()).collect();
        let y: Vec<u32> = windows.iter().flat_map(|w| w[1..].to_vec()).collect();
        let x = Tensor::from_vec(x, (rows, ctx), &Device::Cpu)?;
        let y = Tensor::from_vec(y, (rows, ctx), &Device::Cpu)?;
        let options = ForwardOptions {
            train: true,
            hidden_states: false,
            no_grad: false,
        };
        // [pass][wall fwd, wall bwd, cpu fwd, cpu bwd]
        let mut times: [[Vec<f64>; 4]; 2] = Default::default();
        for step in 0..=steps {
            for (p, model) in models.iter().enumerate() {
                if args
                    .get(4)
                    .is_some_and(|only| only != ["owned", "autograd"][p])
                {
                    continue;
                }
                let model = model
                    .as_ref()
                    .map_err(|e| llmlab_plugin_api::Error::msg(e.to_string()))?;
                let (w, c) = pool.install(|| -> llmlab_plugin_api::Result<_> {
                    let (t0, c0) = (Instant::now(), cpu_ns());
                    let mut mid = (t0, c0);
                    model.forward_backward(&x, &options, DType::F32, &mut |out| {
                        let l = llmlab_train::loss::cross_entropy(&out.logits, &y)?;
                        mid = (Instant::now(), cpu_ns());
                        Ok(l)
                    })?;
                    let (t2, c2) = (Instant::now(), cpu_ns());
                    Ok((
                        [(mid.0 - t0).as_secs_f64(), (t2 - mid.0).as_secs_f64()],
                        [(mid.1 - c0) as f64 * 1e-9, (c2 - mid.1) as f64 * 1e-9],
                    ))
                })?;
                if step > 0 {
                    for (i, v) in [w[0], w[1], c[0], c[1]].into_iter().enumerate() {
                        times[p][i].push(v * 1e3);
                    }
                }
            }
        }
        for (p, pass) in ["owned", "autograd"].iter().enumerate() {
            if times[p][0].is_empty() {
                continue;
            }
            let [wf, wb, cf, cb] = times[p].clone().map(median);
            println!(
                "{}",
                json!({ "config": name, "pass": pass, "rows": rows, "steps": steps,
                    "wall_fwd_ms": wf, "wall_bwd_ms": wb, "cpu_fwd_ms": cf, "cpu_bwd_ms": cb,
                    "cpu_step_ms": cf + cb })
            );
        }
    }
    Ok(())
}
