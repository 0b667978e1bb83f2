//! Throughput of the `gpt` plugin, one JSON line per measurement, for the shapes of
//! `../shared/bench/torch_gpt.py` (`tiny`, `small`; `llmlab_train::benchmark`, as `llmlab bench
//! train` uses them): forward tokens/s over a full `(batch, ctx)`
//! batch, and generation tokens/s for one prompt with and without the KV cache.
//!
//!     cargo run --release -p llmlab-gpt --example bench -- [tiny,small] [steps]

use std::time::Instant;

use llmlab_gpt::decoder::generate_uncached;
use llmlab_plugin_api::candle::{Device, Tensor};
use llmlab_plugin_api::serde_json::json;
use llmlab_plugin_api::{Context, GenerateOptions, Model};
use llmlab_train::benchmark::{forward_seconds, reference_shape};

fn main() -> llmlab_plugin_api::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let configs = args.get(1).map_or("tiny,small", String::as_str).to_string();
    let steps: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(5);
    for name in configs.split(',') {
        let shape = reference_shape(name).ok_or_else(|| {
            llmlab_plugin_api::Error::msg(format!(
                "unknown config {name}; known: tiny, small, gpt2"
            ))
        })?;
        let (ctx, vocab, batch) = (shape.ctx, shape.vocab, shape.batch);
        let config = json!({ "n_layer": shape.n_layer, "n_head": shape.n_head,
                             "d_model": shape.d_model, "ctx": ctx, "vocab_size": vocab, "seed": 0 });
        let model = llmlab_gpt::new_gpt(&config, &Context::cpu())?;
        let ids: Vec<u32> = (0..batch * ctx)
            .map(|i| (i * 7919 % vocab) as u32)
            .collect();
        let ids = Tensor::from_vec(ids, (batch, ctx), &Device::Cpu)?;
        let fwd_s = forward_seconds(&model, &ids, 2, steps)?;

        let prompt: Vec<u32> = (0..16).map(|i| (i * 31 % vocab) as u32).collect();
        let new_tokens = ctx / 2;
        let options = GenerateOptions {
            max_tokens: new_tokens,
            temperature: 0.0,
            ..GenerateOptions::default()
        };
        model.generate(std::slice::from_ref(&prompt), &options, &mut |_, _| true)?;
        let t0 = Instant::now();
        let cached = model.generate(std::slice::from_ref(&prompt), &options, &mut |_, _| true)?;
        let cached_s = t0.elapsed().as_secs_f64();
        let t0 = Instant::now();
        let uncached = generate_uncached(&model, &prompt, new_tokens)?;
        let uncached_s = t0.elapsed().as_secs_f64();
        assert_eq!(cached[0], uncached, "cache changes nothing but speed");
        println!(
            "{}",
            json!({
                "impl": "llmlab-gpt (candle)", "config": name, "params": model.num_params(),
                "threads": llmlab_plugin_api::rayon::current_num_threads(),
                "fwd_tok_s": (batch * ctx) as f64 / fwd_s,
                "gen_tok_s_cached": new_tokens as f64 / cached_s,
                "gen_tok_s_uncached": new_tokens as f64 / uncached_s,
                "gen_prompt_tokens": prompt.len(), "gen_new_tokens": new_tokens,
            })
        );
    }
    Ok(())
}
