//! `gpt` as a [`Decoder`] of `llmlab_nn`'s generation engine, which does all of its decoding
//! (sampling, beams, batches, stop tokens, streaming): prompts are left-padded into one batch
//! and run through the model once into a [`DecoderCache`], then one token per step. Plus the
//! uncached greedy reference the cached path is tested and benchmarked against.

use llmlab_nn::cache::DecoderCache;
use llmlab_nn::generate::{left_pad, Decoder};
use llmlab_nn::sampling::argmax;
use llmlab_plugin_api::candle::{Device, Tensor};
use llmlab_plugin_api::{CancelFlag, Result};

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
        let (ids, padding) = left_pad(prompts, Decoder::device(self))?;
        let mut cache = self.cache(prompts.len());
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
