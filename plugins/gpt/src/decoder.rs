//! `gpt` as a [`Decoder`] of `llmlab_nn`'s generation engine, which does all of its decoding
//! (sampling, beams, batches, stop tokens, streaming): prompts are left-padded into one batch
//! and run through the model once into a [`DecoderCache`] preallocated for prompt + new tokens
//! ([`DecoderCache::with_room`]), then one token per step, written in place. Plus
//! continuous batching (serving): `Model::decode_batch` over a persistent [`BatchCache`],
//! `Model::decode_step` over per-sequence caches, batched prefill; and the uncached greedy
//! reference the cached path is tested and benchmarked against.

use llmlab_nn::cache::{BatchCache, DecoderCache};
use llmlab_nn::generate::{left_pad, Decoder};
use llmlab_nn::sampling::argmax;
use llmlab_plugin_api::candle::{Device, Tensor};
use llmlab_plugin_api::model::BatchKvCache;
use llmlab_plugin_api::{CancelFlag, Error, ForwardOptions, KvCache, Result};

use crate::model::Gpt;

impl Decoder for Gpt {
    type Cache = DecoderCache;

    fn vocab_size(&self) -> usize {
        self.gpt_config().vocab_size
    }

    fn ctx_len(&self) -> usize {
        self.gpt_config().ctx
    }

    fn device(&self) -> &Device {
        llmlab_plugin_api::Model::device(self)
    }

    fn cancel_flag(&self) -> Option<&CancelFlag> {
        Some(Gpt::cancel_flag(self))
    }

    fn prefill(&self, prompts: &[Vec<u32>]) -> Result<(DecoderCache, Tensor)> {
        self.prefill_with_room(prompts, 0)
    }

    /// The cache preallocated for the longest prompt and `new_tokens` more (no further than the
    /// context, past which the forward pass refuses anyway): each step writes its keys and
    /// values in place instead of concatenating, which copied the whole cache every step.
    fn prefill_with_room(
        &self,
        prompts: &[Vec<u32>],
        new_tokens: usize,
    ) -> Result<(DecoderCache, Tensor)> {
        let (ids, padding) = left_pad(prompts, Decoder::device(self))?;
        let columns = (ids.dim(1)? + new_tokens).min(self.gpt_config().ctx);
        let mut cache = DecoderCache::with_room(self.gpt_config().n_layer, prompts.len(), columns);
        cache.set_padding(padding)?;
        let logits = self.last_logits(&ids, &mut cache)?;
        Ok((cache, logits))
    }

    fn step(&self, tokens: &Tensor, cache: &mut DecoderCache) -> Result<Tensor> {
        self.last_logits(tokens, cache)
    }

    fn select_rows(&self, cache: &mut DecoderCache, rows: &[u32]) -> Result<()> {
        Ok(cache.select_rows(rows)?)
    }

    fn check_beams(&self, beams: usize) -> Result<()> {
        crate::memory::ensure_beams_fit(
            self.gpt_config(),
            beams,
            self.dtype(),
            Decoder::device(self),
        )
    }
}

/// `Model::prefill_sequences`: the prompts admitted together into a continuous batch, as ONE
/// left-padded forward pass (the padding masked out, each row's positions from its own first
/// token, as in [`Decoder::prefill`]), then split into one-row caches without their padding
/// ([`DecoderCache::split_rows`]): each as prefilling that prompt alone leaves it. Returns the
/// caches and `(n, vocab)` f32 logits of each prompt's next token.
pub fn prefill_sequences(
    model: &Gpt,
    prompts: &[Vec<u32>],
) -> Result<(Vec<Box<dyn KvCache>>, Tensor)> {
    if prompts.is_empty() || prompts.iter().any(Vec::is_empty) {
        return Err(Error::msg(
            "prefill_sequences: at least one prompt, none of them empty",
        ));
    }
    let (ids, padding) = left_pad(prompts, Decoder::device(model))?;
    let mut batch = model.cache(prompts.len());
    batch.set_padding(padding)?;
    let out = match model.lora() {
        Some(lora) => lora.forward_cached(&ids, &mut batch)?,
        None => model.run(&ids, Some(&mut batch), &ForwardOptions::default())?,
    };
    let last = out.logits.dim(1)? - 1;
    let logits = out
        .logits
        .narrow(1, last, 1)?
        .squeeze(1)?
        .to_dtype(llmlab_plugin_api::candle::DType::F32)?;
    let caches = batch
        .split_rows()?
        .into_iter()
        .map(|row| Box::new(row) as Box<dyn KvCache>)
        .collect();
    Ok((caches, logits))
}

/// `Model::decode_step`: one token for each of several sequences, each with its own one-row
/// cache of any length, in ONE forward pass. The caches are stacked into a left-padded batch
/// ([`DecoderCache::stack`]: the padding is masked out and each row keeps its own positions, as
/// in batched generation), the batch runs once, and each row's new keys and values go back to
/// its own cache. Returns `(n, vocab)` f32 logits.
pub fn decode_step(model: &Gpt, tokens: &[u32], caches: &mut [&mut dyn KvCache]) -> Result<Tensor> {
    if tokens.len() != caches.len() || tokens.is_empty() {
        return Err(Error::msg(format!(
            "decode_step: {} tokens for {} caches (one token per cache, at least one)",
            tokens.len(),
            caches.len()
        )));
    }
    let mut rows: Vec<&mut DecoderCache> = Vec::with_capacity(caches.len());
    for cache in caches.iter_mut() {
        rows.push(
            cache
                .as_any_mut()
                .downcast_mut::<DecoderCache>()
                .ok_or_else(|| {
                    Error::msg("gpt: decode_step needs caches made by this model's new_cache")
                })?,
        );
    }
    let ids = Tensor::new(tokens, Decoder::device(model))?.unsqueeze(1)?;
    let run = |ids: &Tensor, cache: &mut DecoderCache| -> Result<Tensor> {
        let out = match model.lora() {
            Some(lora) => lora.forward_cached(ids, cache)?,
            None => model.run(ids, Some(cache), &ForwardOptions::default())?,
        };
        Ok(out
            .logits
            .squeeze(1)?
            .to_dtype(llmlab_plugin_api::candle::DType::F32)?)
    };
    if let [only] = rows.as_mut_slice() {
        return run(&ids, only);
    }
    let mut stacked = DecoderCache::stack(&rows.iter().map(|r| &**r).collect::<Vec<_>>())?;
    let logits = run(&ids, &mut stacked)?;
    DecoderCache::unstack_new(&stacked, &mut rows, 1)?;
    Ok(logits)
}

/// `Model::decode_batch`: one token for every row of a persistent [`BatchCache`], in ONE forward
/// pass that writes only the new keys and values (each row's at its own length) and attends
/// over the batch's storage in place: no cache is stacked or copied. Returns `(rows, vocab)` f32
/// logits.
pub fn decode_batch(model: &Gpt, tokens: &[u32], batch: &mut dyn BatchKvCache) -> Result<Tensor> {
    let batch = batch
        .as_any_mut()
        .downcast_mut::<BatchCache>()
        .ok_or_else(|| Error::msg("gpt: decode_batch needs the batch cache of new_batch_cache"))?;
    if tokens.len() != batch.rows() || tokens.is_empty() {
        return Err(Error::msg(format!(
            "decode_batch: {} tokens for a batch of {} sequences (one token per sequence, at \
             least one)",
            tokens.len(),
            batch.rows()
        )));
    }
    let cache = batch.cache_mut();
    // Past the context the forward pass refuses, naming it; no storage is grown for that.
    if cache.seq_len() < model.gpt_config().ctx {
        cache.reserve(1)?;
    }
    let ids = Tensor::new(tokens, Decoder::device(model))?.unsqueeze(1)?;
    let out = match model.lora() {
        Some(lora) => lora.forward_cached(&ids, cache)?,
        None => model.run(&ids, Some(cache), &ForwardOptions::default())?,
    };
    Ok(out
        .logits
        .squeeze(1)?
        .to_dtype(llmlab_plugin_api::candle::DType::F32)?)
}

/// Generation without the cache: the whole sequence through the model for every new token.
/// Greedy only; the reference the cached path is measured and tested against.
pub fn generate_uncached(model: &Gpt, prompt: &[u32], max_tokens: usize) -> Result<Vec<u32>> {
    let mut seq = prompt.to_vec();
    for _ in 0..max_tokens {
        let ids = Tensor::new(seq.as_slice(), Decoder::device(model))?.unsqueeze(0)?;
        let logits = model.run(&ids, None, &Default::default())?.logits;
        let t = logits.dim(1)?;
        let row: Vec<f32> = logits.get(0)?.get(t - 1)?.to_vec1()?;
        seq.push(argmax(&row));
    }
    Ok(seq[prompt.len()..].to_vec())
}
