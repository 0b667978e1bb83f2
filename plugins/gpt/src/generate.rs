//! Autoregressive generation with the KV cache: the prompt goes through the model once, then
//! one token per step. Several prompts decode together as one batch, **left-padded**: shorter
//! prompts get padding in front that attention masks out and that position ids skip, so every
//! row's last prompt token sits in the same column and all rows step together. Each row draws
//! from its own generator seeded with `seed` (or its entry of `row_seeds`), so a prompt gives the
//! same text alone or in a batch.
//!
//! `num_beams > 1` hands over to beam search (`beam.rs`). Stop *strings* need the tokenizer and
//! are the caller's job (the host decodes in `on_token` and returns `false`); stop *tokens* end a
//! row here and are not included in its output.

use llmlab_plugin_api::candle::Tensor;
use llmlab_plugin_api::config::TypedConfig;
use llmlab_plugin_api::{Error, GenerateOptions, Model, Result};

use crate::model::Gpt;
use crate::rng::Rng;
use crate::sampling::{apply_repetition_penalty, sample};

/// Checks `options` and fits each prompt into the context: a prompt may use at most
/// `ctx - max_tokens` tokens; longer ones are an error, or keep their last tokens with
/// `truncate_prompt`.
pub fn prepare_prompts(
    model: &Gpt,
    prompts: &[Vec<u32>],
    options: &GenerateOptions,
) -> Result<Vec<Vec<u32>>> {
    options
        .validate()
        .map_err(|m| Error::invalid_config("generate", m))?;
    let ctx = model.gpt_config().ctx;
    let vocab = model.gpt_config().vocab_size;
    if options.max_tokens >= ctx {
        return Err(Error::invalid_config(
            "generate",
            format!(
                "max_tokens ({}) must be smaller than the model's ctx ({ctx}) to leave room for a prompt",
                options.max_tokens
            ),
        ));
    }
    // A wrong-length list is a caller's mistake (seeds meant for another batch), not a request
    // for the shared seed: refuse it rather than silently reuse `seed` for some rows.
    if !options.row_seeds.is_empty() && options.row_seeds.len() != prompts.len() {
        return Err(Error::invalid_config(
            "generate",
            format!(
                "row_seeds has {} seeds for {} prompts: give one per prompt, or none (every row uses seed)",
                options.row_seeds.len(),
                prompts.len()
            ),
        ));
    }
    let room = ctx - options.max_tokens;
    prompts
        .iter()
        .enumerate()
        .map(|(i, prompt)| {
            if prompt.is_empty() {
                return Err(Error::msg(format!(
                    "generate: prompt {i} is empty (start it with at least one token, e.g. end-of-text)"
                )));
            }
            if let Some(bad) = prompt.iter().find(|&&t| t as usize >= vocab) {
                return Err(Error::msg(format!(
                    "generate: prompt {i} has token id {bad}, but vocab_size is {vocab}"
                )));
            }
            if prompt.len() <= room {
                Ok(prompt.clone())
            } else if options.truncate_prompt {
                Ok(prompt[prompt.len() - room..].to_vec())
            } else {
                Err(Error::msg(format!(
                    "generate: prompt {i} has {} tokens, but ctx ({ctx}) - max_tokens ({}) leaves room for {room}; \
                     shorten it, lower max_tokens, or set truncate_prompt: true to keep its last {room} tokens",
                    prompt.len(),
                    options.max_tokens
                )))
            }
        })
        .collect()
}

pub fn generate(
    model: &Gpt,
    prompts: &[Vec<u32>],
    options: &GenerateOptions,
    on_token: &mut dyn FnMut(usize, u32) -> bool,
) -> Result<Vec<Vec<u32>>> {
    let prompts = prepare_prompts(model, prompts, options)?;
    if prompts.is_empty() || options.max_tokens == 0 {
        return Ok(vec![Vec::new(); prompts.len()]);
    }
    if options.num_beams > 1 {
        return prompts
            .iter()
            .enumerate()
            .map(|(i, p)| crate::beam::beam_search(model, i, p, options, on_token))
            .collect();
    }
    let batch = prompts.len();
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let pad: Vec<usize> = prompts.iter().map(|p| longest - p.len()).collect();
    let padded: Vec<u32> = prompts
        .iter()
        .flat_map(|p| std::iter::repeat_n(0u32, longest - p.len()).chain(p.iter().copied()))
        .collect();
    let device = model.device();
    let mut cache = model.cache(batch);
    cache.set_padding(pad)?;
    let ids = Tensor::from_vec(padded, (batch, longest), device)?;
    let mut logits = model.last_logits(&ids, &mut cache)?;

    let mut rngs: Vec<Rng> = (0..batch)
        .map(|r| Rng::new(options.row_seeds.get(r).copied().unwrap_or(options.seed)))
        .collect();
    let mut seen: Vec<Vec<u32>> = prompts.clone();
    let mut outputs: Vec<Vec<u32>> = vec![Vec::new(); batch];
    let mut done = vec![false; batch];
    for step in 0..options.max_tokens {
        if model.cancel_flag().is_cancelled() {
            return Err(Error::Cancelled);
        }
        let rows: Vec<Vec<f32>> = logits.to_vec2()?;
        let mut next = vec![0u32; batch];
        for (r, mut row) in rows.into_iter().enumerate() {
            if done[r] {
                continue;
            }
            apply_repetition_penalty(&mut row, &seen[r], options.repetition_penalty);
            let token = sample(&row, options, &mut rngs[r]);
            next[r] = token;
            if options.stop_tokens.contains(&token) {
                done[r] = true;
                continue;
            }
            outputs[r].push(token);
            seen[r].push(token);
            if !on_token(r, token) || outputs[r].len() == options.max_tokens {
                done[r] = true;
            }
        }
        if done.iter().all(|&d| d) || step + 1 == options.max_tokens {
            break;
        }
        let ids = Tensor::from_vec(next, (batch, 1), device)?;
        logits = model.last_logits(&ids, &mut cache)?;
    }
    Ok(outputs)
}

/// Generation without the cache: the whole sequence through the model for every new token.
/// Greedy only; the reference the cached path is measured and tested against.
pub fn generate_uncached(model: &Gpt, prompt: &[u32], max_tokens: usize) -> Result<Vec<u32>> {
    let mut seq = prompt.to_vec();
    for _ in 0..max_tokens {
        let ids = Tensor::new(seq.as_slice(), model.device())?.unsqueeze(0)?;
        let logits = model.run(&ids, None, &Default::default())?.logits;
        let t = logits.dim(1)?;
        let row: Vec<f32> = logits.get(0)?.get(t - 1)?.to_vec1()?;
        seq.push(crate::sampling::argmax(&row));
    }
    Ok(seq[prompt.len()..].to_vec())
}
