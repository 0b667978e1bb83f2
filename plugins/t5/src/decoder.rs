//! `t5` as a [`Decoder`] of `llmlab_nn`'s generation engine, which does all of its decoding
//! (sampling, beams, batches, stop tokens, streaming). `prefill` runs the encoder once over the
//! prompts (each ending with `</s>`, appended when missing, as T5's tokenizer does), keeps the
//! cross-attention keys and values in a [`T5Cache`] and returns the logits after the decoder
//! start token; `step` runs the decoder alone. The prompt is not part of the decoded sequence
//! (`prompt_in_context` is false): it is checked here against the encoder's length instead.
//! Plus the uncached greedy reference the cached path is tested against.

use llmlab_nn::generate::Decoder;
use llmlab_nn::sampling::argmax;
use llmlab_plugin_api::candle::{Device, Tensor};
use llmlab_plugin_api::{CancelFlag, Error, GenerateOptions, Result};

use crate::cache::T5Cache;
use crate::model::T5;

impl T5 {
    /// The encoder input of a prompt: the prompt with `</s>` appended unless it ends with one.
    pub fn encoder_input(&self, prompt: &[u32]) -> Vec<u32> {
        let eos = self.t5_config().eos_token_id;
        let mut input = prompt.to_vec();
        if input.last() != Some(&eos) {
            input.push(eos);
        }
        input
    }

    fn last_logits(&self, tokens: &Tensor, cache: &mut T5Cache) -> Result<Tensor> {
        let hidden = self.decode_hidden(tokens, cache, false)?;
        let t = hidden.dim(1)?;
        Ok(self.head(&hidden.narrow(1, t - 1, 1)?)?.squeeze(1)?)
    }
}

/// Each prompt as the encoder will read it (with its `</s>`), refused when longer than the
/// encoder's `ctx` — or cut to its last tokens with `truncate_prompt`.
pub fn fit_prompts(
    model: &T5,
    prompts: &[Vec<u32>],
    options: &GenerateOptions,
) -> Result<Vec<Vec<u32>>> {
    let ctx = model.t5_config().ctx;
    prompts
        .iter()
        .enumerate()
        .map(|(i, prompt)| {
            if prompt.is_empty() {
                return Ok(Vec::new()); // the engine refuses it, naming the prompt
            }
            let input = model.encoder_input(prompt);
            if input.len() <= ctx {
                Ok(input)
            } else if options.truncate_prompt {
                let mut kept = input[input.len() - ctx..].to_vec();
                kept[ctx - 1] = model.t5_config().eos_token_id;
                Ok(kept)
            } else {
                Err(Error::msg(format!(
                    "t5: prompt {i} has {} tokens with its </s>, over the encoder length (ctx = {ctx}); \
                     shorten it, or set truncate_prompt: true to keep its last {} tokens",
                    input.len(),
                    ctx - 1
                )))
            }
        })
        .collect()
}

impl Decoder for T5 {
    type Cache = T5Cache;

    fn vocab_size(&self) -> usize {
        self.t5_config().vocab_size
    }

    fn ctx_len(&self) -> usize {
        self.t5_config().ctx
    }

    fn device(&self) -> &Device {
        llmlab_plugin_api::Model::device(self)
    }

    fn cancel_flag(&self) -> Option<&CancelFlag> {
        Some(T5::cancel_flag(self))
    }

    fn prefill(&self, prompts: &[Vec<u32>]) -> Result<(T5Cache, Tensor)> {
        let inputs: Vec<Vec<u32>> = prompts.iter().map(|p| self.encoder_input(p)).collect();
        let mut cache = self.encode(&inputs, false)?;
        let start = vec![self.t5_config().decoder_start_token_id; prompts.len()];
        let start = Tensor::from_vec(start, (prompts.len(), 1), Decoder::device(self))?;
        let logits = self.last_logits(&start, &mut cache)?;
        Ok((cache, logits))
    }

    fn step(&self, tokens: &Tensor, cache: &mut T5Cache) -> Result<Tensor> {
        self.last_logits(tokens, cache)
    }

    fn select_rows(&self, cache: &mut T5Cache, rows: &[u32]) -> Result<()> {
        Ok(cache.select_rows(rows)?)
    }

    fn prompt_in_context(&self) -> bool {
        false
    }
}

/// Greedy generation without the cache: encoder and the whole decoder sequence again for
/// every new token; the reference the cached path is tested against.
pub fn generate_uncached(model: &T5, prompt: &[u32], max_tokens: usize) -> Result<Vec<u32>> {
    let input = model.encoder_input(prompt);
    let mut decoded = vec![model.t5_config().decoder_start_token_id];
    for _ in 0..max_tokens {
        let logits =
            model.seq2seq_logits(std::slice::from_ref(&input), std::slice::from_ref(&decoded))?;
        let t = logits.dim(1)?;
        let row: Vec<f32> = logits.get(0)?.get(t - 1)?.to_vec1()?;
        decoded.push(argmax(&row));
    }
    Ok(decoded[1..].to_vec())
}
