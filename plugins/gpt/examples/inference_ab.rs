//! A/B of the inference forward (`Model::forward`, no gradients) on the bench shapes: the owned
//! inference pass with its rows split over the pool's threads (the default), the owned pass
//! with every kernel spread over the pool (whole batch), and candle's graph (`pass:
//! "autograd"`), alternating pass by pass. Prints median and best tokens/s of each.
//!
//!     cargo run --release -p llmlab-gpt --example inference_ab -- [tiny,small] [passes] [only]
//!
//! `only` (`split`, `whole` or `candle`) runs one variant alone, for a profile.

use std::time::Instant;

use llmlab_gpt::owned_pass::inference::{self, Threading};
use llmlab_plugin_api::candle::{Device, Tensor};
use llmlab_plugin_api::serde_json::json;
use llmlab_plugin_api::{Context, ForwardOptions, Model};
use llmlab_train::benchmark::reference_shape;

/// CPU seconds this process has used (user + system, all threads), from /proc/self/stat.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at state = field 3.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // utime and stime are fields 14 and 15 (indices 11, 12 after the state), in clock ticks.
    (f.get(11).unwrap_or(&0.0) + f.get(12).unwrap_or(&0.0)) / 100.0
}

fn main() -> llmlab_plugin_api::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let configs = args.get(1).map_or("tiny,small", String::as_str).to_string();
    let passes: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(20);
    let only = args.get(3).cloned();
    let names = ["split", "whole", "candle"];
    for name in configs.split(',') {
        let shape = reference_shape(name)
            .ok_or_else(|| llmlab_plugin_api::Error::msg(format!("unknown config {name}")))?;
        let make = |pass: &str| {
            let config = json!({ "n_layer": shape.n_layer, "n_head": shape.n_head,
                "d_model": shape.d_model, "ctx": shape.ctx, "vocab_size": shape.vocab,
                "seed": 0, "pass": pass });
            llmlab_gpt::new_gpt(&config, &Context::cpu())
        };
        let (owned, candle) = (make("auto")?, make("autograd")?);
        let ids: Vec<u32> = (0..shape.batch * shape.ctx)
            .map(|i| (i * 7919 % shape.vocab) as u32)
            .collect();
        let ids = Tensor::from_vec(ids, (shape.batch, shape.ctx), &Device::Cpu)?;
        let options = ForwardOptions::default();
        let mut times: [Vec<f64>; 3] = Default::default();
        let mut cpu = [0f64; 3];
        for pass in 0..passes + 2 {
            for (v, variant) in names.iter().enumerate() {
                if only.as_deref().is_some_and(|o| o != *variant) {
                    continue;
                }
                let (start, c0) = (Instant::now(), cpu_seconds());
                let out = match v {
                    0 => inference::forward(&owned, &ids, false, Threading::RowSplit)?,
                    1 => inference::forward(&owned, &ids, false, Threading::WholeBatch)?,
                    _ => candle.forward(&ids, &options)?,
                };
                drop(out);
                if pass >= 2 {
                    times[v].push(start.elapsed().as_secs_f64());
                    cpu[v] += cpu_seconds() - c0;
                }
            }
        }
        let tokens = (shape.batch * shape.ctx) as f64;
        let mut report = json!({ "config": name, "passes": passes,
            "threads": llmlab_plugin_api::rayon::current_num_threads() });
        for (v, t) in times.iter_mut().enumerate() {
            if t.is_empty() {
                continue;
            }
            t.sort_by(f64::total_cmp);
            report[names[v]] = json!({ "median_tok_s": (tokens / t[t.len() / 2]).round(),
                "best_tok_s": (tokens / t[0]).round(),
                "cpu_ms_per_pass": (cpu[v] * 1e3 / t.len() as f64).round() });
        }
        println!("{report}");
    }
    Ok(())
}
