//! Rollouts of the online aligners (`grpo`, `ppo`): which prompts come next, sampling
//! completions with the model's own generator (KV cache, temperature, top-k), scoring them with
//! the job's reward function, and laying sequences out as a batch for the updates.
//!
//! All completions of a rollout batch come from one call of `Model::generate`, the `group`
//! copies of each prompt side by side, every row with its own seed (`row_seeds`): with one seed
//! for all rows, copies of a prompt would repeat one completion and different prompts would
//! share their random draws. A completion ends at end-of-text (kept as its last token, so the
//! policy learns to stop) or at `max_tokens`.
//!
//! In a [`SequenceBatch`] position `j` of a row predicts token `j + 1`: a completion of `n`
//! tokens after a prompt of `p` occupies positions `p − 1 .. p − 1 + n` (its span). Per-token
//! quantities (log-probabilities, values, advantages) live on those positions.

use std::time::Instant;

use llmlab_plugin_api::candle::{DType, Device, Tensor};
use llmlab_plugin_api::{
    Error, ExampleSource, ForwardOptions, GenerateOptions, Model, Result, RewardFn, SpecialToken,
    Tokenizer,
};
use llmlab_train::{loss, SplitMix64};

/// Prompts in a shuffled order, reshuffled after each pass over the data.
#[derive(Debug, Clone)]
pub struct PromptOrder {
    /// The current pass's order of example indices (saved in checkpoints).
    pub order: Vec<usize>,
    /// How many of `order` were taken.
    pub next: usize,
}

impl PromptOrder {
    pub fn new(data: &dyn ExampleSource, rng: &mut SplitMix64) -> Result<PromptOrder> {
        if data.is_empty() {
            return Err(Error::Data(format!("{}: no prompts", data.name())));
        }
        Ok(PromptOrder {
            order: rng.permutation(data.len()),
            next: 0,
        })
    }

    /// The next `k` example indices (distinct while `k` ≤ the number of prompts).
    pub fn take(&mut self, k: usize, rng: &mut SplitMix64) -> Vec<usize> {
        (0..k)
            .map(|_| {
                if self.next == self.order.len() {
                    self.order = rng.permutation(self.order.len());
                    self.next = 0;
                }
                self.next += 1;
                self.order[self.next - 1]
            })
            .collect()
    }
}

/// How rollouts are sampled.
#[derive(Debug, Clone, Copy)]
pub struct Sampling {
    pub temperature: f64,
    pub top_k: usize,
    pub max_tokens: usize,
}

/// One completion of one prompt.
#[derive(Debug, Clone)]
pub struct Sample {
    pub prompt: String,
    pub completion: String,
    /// Prompt tokens, then completion tokens (with end-of-text when it stopped there).
    pub ids: Vec<u32>,
    pub prompt_len: usize,
    pub reward: f32,
}

impl Sample {
    pub fn completion_len(&self) -> usize {
        self.ids.len() - self.prompt_len
    }
}

pub struct Rollouts {
    /// Prompt-major: the `group` completions of prompt 0, then of prompt 1, ...
    pub samples: Vec<Sample>,
    /// Wall time of generation and decoding.
    pub generate_s: f64,
}

impl Rollouts {
    pub fn completion_tokens(&self) -> usize {
        self.samples.iter().map(Sample::completion_len).sum()
    }
}

/// The prompt's tokens, keeping the last `room` when it is longer.
fn encode_prompt(tokenizer: &dyn Tokenizer, prompt: &str, room: usize) -> Result<Vec<u32>> {
    let mut ids = tokenizer.encode(prompt)?;
    if ids.is_empty() {
        ids.push(tokenizer.end_of_text()?);
    }
    if ids.len() > room {
        ids.drain(..ids.len() - room);
    }
    Ok(ids)
}

/// Samples `group` completions of each prompt with the policy's generator; `rng` draws the seeds.
pub fn generate(
    policy: &dyn Model,
    tokenizer: &dyn Tokenizer,
    prompts: &[String],
    group: usize,
    sampling: Sampling,
    rng: &mut SplitMix64,
) -> Result<Rollouts> {
    let start = Instant::now();
    let eot = tokenizer.end_of_text()?;
    let room = policy.ctx_len().saturating_sub(sampling.max_tokens);
    if room == 0 {
        return Err(Error::Data(format!(
            "max_tokens ({}) leaves no room for a prompt in the model's context ({})",
            sampling.max_tokens,
            policy.ctx_len()
        )));
    }
    let encoded = prompts
        .iter()
        .map(|p| encode_prompt(tokenizer, p, room))
        .collect::<Result<Vec<_>>>()?;
    let rows: Vec<Vec<u32>> = encoded
        .iter()
        .flat_map(|ids| std::iter::repeat_n(ids.clone(), group))
        .collect();
    let options = GenerateOptions {
        max_tokens: sampling.max_tokens,
        temperature: sampling.temperature,
        top_k: sampling.top_k,
        stop_tokens: vec![eot],
        row_seeds: (0..rows.len()).map(|_| rng.next_u64()).collect(),
        ..GenerateOptions::default()
    };
    let outputs = policy.generate(&rows, &options, &mut |_, _| true)?;
    let mut samples = Vec::with_capacity(rows.len());
    for (r, new) in outputs.iter().enumerate() {
        let p = r / group;
        let completion = tokenizer.decode(new)?;
        let mut ids = encoded[p].clone();
        ids.extend_from_slice(new);
        // Fewer than max_tokens new tokens: generation stopped at end-of-text.
        if new.len() < sampling.max_tokens {
            ids.push(eot);
        }
        samples.push(Sample {
            prompt: prompts[p].clone(),
            completion,
            ids,
            prompt_len: encoded[p].len(),
            reward: 0.0,
        });
    }
    Ok(Rollouts {
        samples,
        generate_s: start.elapsed().as_secs_f64(),
    })
}

/// Scores every sample with `reward`; an error or a non-finite reward names the sample.
pub fn score(samples: &mut [Sample], reward: &dyn RewardFn) -> Result<()> {
    for s in samples.iter_mut() {
        let r = reward.score(&s.prompt, &s.completion)?;
        if !r.is_finite() {
            return Err(Error::Data(format!(
                "the reward function returned {r} on prompt {:?}, completion {:?}; rewards must be finite",
                s.prompt, s.completion
            )));
        }
        s.reward = r as f32;
    }
    Ok(())
}

/// The job's reward function, or an error saying how to give one.
pub fn reward_of<'a>(who: &str, reward: Option<&'a dyn RewardFn>) -> Result<&'a dyn RewardFn> {
    reward.ok_or_else(|| {
        Error::msg(format!(
            "{who} needs a reward: {who}.fit(model, prompts, tok, reward) with a closure \
             |prompt, completion| -> float, a task checker (corpus(..).reward()) or a reward model (rl(\"reward\"))"
        ))
    })
}

/// Rows of samples as one right-padded batch.
pub struct SequenceBatch {
    /// `(rows, seq)` u32.
    pub tokens: Tensor,
    /// `(rows, seq)` u32: `tokens` shifted left by one.
    pub targets: Tensor,
    /// `(rows, seq)` f32: 1 on completion positions.
    pub mask: Tensor,
    /// Per row: first position and length of its completion.
    pub spans: Vec<(usize, usize)>,
    pub seq: usize,
    /// Real (unpadded) tokens in the batch.
    pub real_tokens: usize,
}

impl SequenceBatch {
    pub fn new(rows: &[&Sample], tokenizer: &dyn Tokenizer, device: &Device) -> Result<Self> {
        let pad = tokenizer
            .special_token(SpecialToken::Pad)
            .map_or_else(|| tokenizer.end_of_text(), Ok)?;
        let seq = rows.iter().map(|s| s.ids.len()).max().unwrap_or(1).max(1);
        let n = rows.len() * seq;
        let (mut tokens, mut targets, mut mask) = (vec![pad; n], vec![pad; n], vec![0f32; n]);
        let mut spans = Vec::with_capacity(rows.len());
        for (r, s) in rows.iter().enumerate() {
            let base = r * seq;
            tokens[base..base + s.ids.len()].copy_from_slice(&s.ids);
            targets[base..base + s.ids.len() - 1].copy_from_slice(&s.ids[1..]);
            let span = (s.prompt_len - 1, s.completion_len());
            mask[base + span.0..base + span.0 + span.1].fill(1.0);
            spans.push(span);
        }
        let r = rows.len();
        Ok(SequenceBatch {
            tokens: Tensor::from_vec(tokens, (r, seq), device)?,
            targets: Tensor::from_vec(targets, (r, seq), device)?,
            mask: Tensor::from_vec(mask, (r, seq), device)?,
            spans,
            seq,
            real_tokens: rows.iter().map(|s| s.ids.len()).sum(),
        })
    }

    pub fn rows(&self) -> usize {
        self.spans.len()
    }

    /// Completion tokens in the batch.
    pub fn completion_tokens(&self) -> usize {
        self.spans.iter().map(|s| s.1).sum()
    }

    /// Per-token values of the batch's rows as a `(rows, seq)` grid, 0 off the completions:
    /// row `r` takes `per_sample[picked[r]]` (one value per completion token), where `picked`
    /// are the indices the batch was built from.
    pub fn grid(
        &self,
        per_sample: &[Vec<f32>],
        picked: &[usize],
        device: &Device,
    ) -> Result<Tensor> {
        let mut out = vec![0f32; self.rows() * self.seq];
        for (r, (&(start, n), &i)) in self.spans.iter().zip(picked).enumerate() {
            out[r * self.seq + start..r * self.seq + start + n]
                .copy_from_slice(&per_sample[i][..n]);
        }
        Ok(Tensor::from_vec(out, (self.rows(), self.seq), device)?)
    }

    /// Each row's completion-position values of a `(rows, seq)` tensor.
    pub fn per_row(&self, t: &Tensor) -> Result<Vec<Vec<f32>>> {
        let grid: Vec<Vec<f32>> = t.to_dtype(DType::F32)?.to_vec2()?;
        Ok(grid
            .into_iter()
            .zip(&self.spans)
            .map(|(row, &(start, n))| row[start..start + n].to_vec())
            .collect())
    }
}

/// Log-probabilities `(rows, seq)` of each target token under `model` (dropout off: ratios
/// between two passes must be exact), and the hidden states when asked, from a pass nothing
/// backpropagates through (old-policy and reference scores).
pub fn token_log_probs(
    model: &dyn Model,
    batch: &SequenceBatch,
    hidden_states: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let options = ForwardOptions {
        hidden_states,
        ..ForwardOptions::inference()
    };
    let (logp, hidden, _) = log_probs_under(model, batch, &options)?;
    Ok((logp, hidden))
}

/// [`token_log_probs`] plus the model's aux loss (MoE load balancing), which a policy update
/// adds to its loss as every trainer does; differentiable (the policy's loss terms).
pub fn policy_log_probs(
    model: &dyn Model,
    batch: &SequenceBatch,
    hidden_states: bool,
) -> Result<(Tensor, Option<Tensor>, Option<Tensor>)> {
    let options = ForwardOptions {
        hidden_states,
        ..ForwardOptions::default()
    };
    log_probs_under(model, batch, &options)
}

fn log_probs_under(
    model: &dyn Model,
    batch: &SequenceBatch,
    options: &ForwardOptions,
) -> Result<(Tensor, Option<Tensor>, Option<Tensor>)> {
    let out = model.forward(&batch.tokens, options)?;
    let logp = loss::token_nll(&out.logits, &batch.targets)?
        .neg()?
        .reshape((batch.rows(), batch.seq))?;
    Ok((logp, out.hidden, out.aux_loss))
}
