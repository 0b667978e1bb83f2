//! `llmlab bench generate`: KV-cached greedy generation tokens/s of `gpt` on the reference
//! shapes (`tiny`, `small`, `gpt2` of `llmlab_train::benchmark`, GPT-2 layout), one JSON line per
//! config and batch size, so it compares line by line with `bench/hf_generate.py`, which runs
//! Hugging Face transformers' `GPT2LMHeadModel.generate` on the same shapes (issue 25, item 5).
//!
//! Both sides: random weights, a prompt of `prompt` random tokens per row, exactly `new_tokens`
//! new tokens per row (no end-of-text stop), greedy, the median of `reps` timed calls after one
//! warm-up call. Tokens/s counts new tokens of all rows; the prompt's prefill is in the time.

use std::time::Instant;

use llmlab_plugin_api::rng::SplitMix64;
use llmlab_plugin_api::serde_json::{json, Value};
use llmlab_plugin_api::{Context, Error, GenerateOptions, Instance, Kind, Result};

use crate::bench::{create, median, reference_gpt_config};
use crate::registry::Registry;

/// What one `bench generate` line measures.
#[derive(Debug, Clone, Copy)]
pub struct GenerateBench {
    pub batch: usize,
    pub prompt: usize,
    pub new_tokens: usize,
    pub reps: usize,
}

/// Times greedy generation on the `config` shape; returns the JSON line.
pub fn generate(
    registry: &Registry,
    config: &str,
    bench: GenerateBench,
    ctx: &Context,
) -> Result<Value> {
    let (model_config, [_, _, _, ctx_len, vocab, _]) = reference_gpt_config(config)?;
    if bench.prompt == 0 || bench.new_tokens == 0 || bench.batch == 0 || bench.reps == 0 {
        return Err(Error::msg(
            "bench generate: --batch, --prompt, --new-tokens and --reps must be at least 1",
        ));
    }
    if bench.prompt + bench.new_tokens > ctx_len {
        return Err(Error::msg(format!(
            "bench generate: --prompt {} + --new-tokens {} is over the {config} context of {ctx_len}",
            bench.prompt, bench.new_tokens
        )));
    }
    let Instance::Model(model) = create(registry, Kind::Model, "gpt", model_config, ctx)? else {
        return Err(Error::msg("gpt did not make a model"));
    };
    let mut rng = SplitMix64::new(0);
    let prompts: Vec<Vec<u32>> = (0..bench.batch)
        .map(|_| (0..bench.prompt).map(|_| rng.below(vocab) as u32).collect())
        .collect();
    let options = GenerateOptions {
        max_tokens: bench.new_tokens,
        temperature: 0.0,
        ..GenerateOptions::default()
    };
    let mut seconds = Vec::with_capacity(bench.reps);
    let mut generated = 0;
    for rep in 0..=bench.reps {
        let start = Instant::now();
        let out = model.generate(&prompts, &options, &mut |_, _| true)?;
        let elapsed = start.elapsed().as_secs_f64();
        generated = out.iter().map(Vec::len).sum::<usize>();
        if rep > 0 {
            seconds.push(elapsed);
        }
    }
    let median = median(seconds);
    Ok(json!({
        "peer": "llmlab",
        "config": config,
        "threads": llmlab_plugin_api::rayon::current_num_threads(),
        "params": model.num_params(),
        "batch": bench.batch,
        "prompt": bench.prompt,
        "new_tokens": bench.new_tokens,
        "generated": generated,
        "gen_tok_s": (generated as f64 / median * 10.0).round() / 10.0,
        "ms_per_step": (median / bench.new_tokens as f64 * 1e5).round() / 100.0,
    }))
}
