//! The generation engine every model shares: greedy, temperature, top-k, top-p, repetition
//! penalty, stop tokens, per-row seeds, left-padded batches, beam search (`beam.rs`) and a
//! streaming callback, driven by the small [`Decoder`] trait a model implements ("logits for the
//! next position of each row, given a cache"). A model's `Model::generate` is one call to
//! [`generate`].
//!
//! The prompt goes through the model once ([`Decoder::prefill_with_room`], which lets the
//! model size its cache once for prompt + new tokens), then one token per step
//! ([`Decoder::step`]). Several prompts decode together as one batch; a decoder-only model
//! **left-pads** them ([`left_pad`]): shorter prompts get padding in front that attention masks
//! out and that position ids skip, so every row's last prompt token sits in the same column and
//! all rows step together. Each row draws from its own generator seeded with `seed` (or its
//! entry of `row_seeds`), so a prompt gives the same text alone or in a batch.
//!
//! An encoder–decoder model (T5) drives the same engine: its `prefill` runs the encoder once
//! over the prompts and keeps the encoder output (and the cross-attention keys/values) in its
//! cache next to the decoder's self-attention cache, starts each row from its decoder start
//! token and returns that position's logits; `step` runs the decoder only; `select_rows`
//! reorders both caches for beams. It answers `false` to [`Decoder::prompt_in_context`], so the
//! prompt is neither counted against its decoder context nor penalised as already generated.
//!
//! Stop *strings* need the tokenizer and are the caller's job (the host decodes in `on_token`
//! and returns `false`); stop *tokens* end a row here and are not included in its output.

use llmlab_plugin_api::candle::{Device, Tensor};
use llmlab_plugin_api::config::TypedConfig;
use llmlab_plugin_api::{CancelFlag, Error, GenerateOptions, Result};

use crate::rng::Rng;
use crate::sampling::{apply_repetition_penalty, sample};

/// What a model implements to be driven by [`generate`].
pub trait Decoder {
    /// The decoding state of a batch: per-layer keys and values (a decoder-only model's
    /// [`crate::cache::DecoderCache`]; an encoder–decoder's self and cross caches with the
    /// encoder output).
    type Cache;

    fn vocab_size(&self) -> usize;
    /// Longest sequence the decoder accepts; for a decoder-only model, prompt + new tokens.
    fn ctx_len(&self) -> usize;
    fn device(&self) -> &Device;
    /// Polled once per new token; `None`: generation cannot be interrupted.
    fn cancel_flag(&self) -> Option<&CancelFlag> {
        None
    }
    /// Runs the (checked) `prompts` as one batch and returns the cache and the logits
    /// `(batch, vocab)` of each row's first new token.
    fn prefill(&self, prompts: &[Vec<u32>]) -> Result<(Self::Cache, Tensor)>;
    /// [`Decoder::prefill`] for a decoding that will append at most `new_tokens` tokens to each
    /// row: a model whose cache can preallocate them does so here, so that no step grows or
    /// copies it ([`crate::cache::DecoderCache::with_room`]). Default: `prefill`.
    fn prefill_with_room(
        &self,
        prompts: &[Vec<u32>],
        new_tokens: usize,
    ) -> Result<(Self::Cache, Tensor)> {
        let _ = new_tokens;
        self.prefill(prompts)
    }
    /// Appends `tokens` `(rows, 1)` to `cache`; the logits `(rows, vocab)` of the next token.
    fn step(&self, tokens: &Tensor, cache: &mut Self::Cache) -> Result<Tensor>;
    /// Keeps rows `rows` of `cache`, in that order, repeats allowed (beam search reordering).
    fn select_rows(&self, cache: &mut Self::Cache, rows: &[u32]) -> Result<()>;
    /// Refuses `beams` beams whose caches would not fit in memory. Default: accepts.
    fn check_beams(&self, beams: usize) -> Result<()> {
        let _ = beams;
        Ok(())
    }
    /// Whether the prompt is the start of the decoded sequence: it then shares the context with
    /// the new tokens and counts for the repetition penalty. `true` for decoder-only models;
    /// an encoder–decoder answers `false` (its prompt goes to the encoder).
    fn prompt_in_context(&self) -> bool {
        true
    }
}

/// Left-pads `prompts` into one `(batch, longest)` u32 tensor (padding id 0) and returns it with
/// each row's padding, which the model's cache masks out (`DecoderCache::set_padding`).
pub fn left_pad(prompts: &[Vec<u32>], device: &Device) -> Result<(Tensor, Vec<usize>)> {
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let pad: Vec<usize> = prompts.iter().map(|p| longest - p.len()).collect();
    let padded: Vec<u32> = prompts
        .iter()
        .flat_map(|p| std::iter::repeat_n(0u32, longest - p.len()).chain(p.iter().copied()))
        .collect();
    Ok((
        Tensor::from_vec(padded, (prompts.len(), longest), device)?,
        pad,
    ))
}

/// Returns `Error::Cancelled` once the model's cancel flag is set.
pub(crate) fn check_cancelled<D: Decoder + ?Sized>(model: &D) -> Result<()> {
    match model.cancel_flag() {
        Some(flag) if flag.is_cancelled() => Err(Error::Cancelled),
        _ => Ok(()),
    }
}

/// Checks `options` and fits each prompt into the context: a prompt may use at most
/// `ctx - max_tokens` tokens; longer ones are an error, or keep their last tokens with
/// `truncate_prompt`.
pub fn prepare_prompts<D: Decoder + ?Sized>(
    model: &D,
    prompts: &[Vec<u32>],
    options: &GenerateOptions,
) -> Result<Vec<Vec<u32>>> {
    options
        .validate()
        .map_err(|m| Error::invalid_config("generate", m))?;
    let ctx = model.ctx_len();
    let vocab = model.vocab_size();
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
    let room = if model.prompt_in_context() {
        ctx - options.max_tokens
    } else {
        ctx
    };
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

/// Continues each prompt under `options`; `on_token(row, token)` sees tokens as they come
/// (streaming) and returns `false` to stop that row. Returns each row's new tokens, stop token
/// excluded.
pub fn generate<D: Decoder + ?Sized>(
    model: &D,
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
    let device = model.device();
    // The last token is sampled from the last step's logits and never fed back.
    let (mut cache, mut logits) = model.prefill_with_room(&prompts, options.max_tokens - 1)?;

    let mut rngs: Vec<Rng> = (0..batch)
        .map(|r| Rng::new(options.row_seeds.get(r).copied().unwrap_or(options.seed)))
        .collect();
    let mut seen: Vec<Vec<u32>> = if model.prompt_in_context() {
        prompts.clone()
    } else {
        vec![Vec::new(); batch]
    };
    let mut outputs: Vec<Vec<u32>> = vec![Vec::new(); batch];
    let mut done = vec![false; batch];
    for step in 0..options.max_tokens {
        check_cancelled(model)?;
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
        logits = model.step(&ids, &mut cache)?;
    }
    Ok(outputs)
}
