//! Preference pairs as model input. Each side of a pair is tokenized as `prompt + answer +
//! <end-of-text>` (cut from the left to `ctx` tokens, so prompts lose tokens first); a batch of
//! `n` pairs is `2n` right-padded rows, the chosen answers first, then the rejected ones in the
//! same order. Per row it carries what both aligners need: the targets and a 0/1 mask of the
//! answer and end-of-text predictions (DPO's sequence log-probabilities) and the position of the
//! last real token (the reward head reads the hidden state there).
//!
//! [`Split`] holds out the same pairs every time for one (data, seed): a shuffled order whose
//! tail is the held-out set.

use llmlab_plugin_api::candle::{Device, Tensor};
use llmlab_plugin_api::{Error, Example, ExampleSource, Result, SpecialToken, Tokenizer};
use llmlab_train::SplitMix64;

/// One side of a pair: token ids and the index in `ids` of the first answer token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub answer_start: usize,
}

/// Tokenizes `prompt + answer + eot` into at most `ctx` tokens.
pub fn encode(
    prompt: &str,
    answer: &str,
    tokenizer: &dyn Tokenizer,
    ctx: usize,
) -> Result<Encoded> {
    let mut ids = tokenizer.encode(prompt)?;
    let mut answer_start = ids.len();
    ids.extend(tokenizer.encode(answer)?);
    ids.push(tokenizer.end_of_text()?);
    if ids.len() > ctx {
        let cut = ids.len() - ctx;
        ids.drain(..cut);
        answer_start = answer_start.saturating_sub(cut).max(1);
    }
    Ok(Encoded { ids, answer_start })
}

/// The rejected answer of `example`, or an error naming the example and the data.
pub fn rejected<'a>(
    example: &'a Example,
    index: usize,
    data: &dyn ExampleSource,
) -> Result<&'a str> {
    example.rejected.as_deref().ok_or_else(|| {
        Error::Data(format!(
            "{}: example {index} (prompt {:?}) has no rejected answer; preference training needs pairs \
             (corpus(..).preferences(#{{..}}) or preferences(\"file.jsonl\"))",
            data.name(),
            example.prompt
        ))
    })
}

/// Right-padded rows of encoded sequences and what the aligners read from them.
pub struct Rows {
    /// `(rows, seq)` u32: the full sequences, padded.
    pub tokens: Tensor,
    /// `(rows, seq)` u32: `tokens` shifted left by one (padding where there is no next token).
    pub targets: Tensor,
    /// `(rows, seq)` f32: 1 where the target is an answer or end-of-text token.
    pub mask: Tensor,
    /// `(rows,)` u32: flat index `row * seq + last` of each row's last real token.
    pub last: Tensor,
}

/// `2n` rows: chosen `0..n`, rejected `n..2n`.
pub struct PairBatch {
    pub rows: Rows,
    pub pairs: usize,
}

fn pad_id(tokenizer: &dyn Tokenizer) -> Result<u32> {
    tokenizer
        .special_token(SpecialToken::Pad)
        .map_or_else(|| tokenizer.end_of_text(), Ok)
}

/// Pads `encoded` into one batch on `device`.
pub fn rows(encoded: &[&Encoded], tokenizer: &dyn Tokenizer, device: &Device) -> Result<Rows> {
    let pad = pad_id(tokenizer)?;
    let seq = encoded
        .iter()
        .map(|r| r.ids.len())
        .max()
        .unwrap_or(1)
        .max(1);
    let n = encoded.len() * seq;
    let (mut tokens, mut targets, mut mask) = (vec![pad; n], vec![pad; n], vec![0f32; n]);
    let mut last = Vec::with_capacity(encoded.len());
    for (r, row) in encoded.iter().enumerate() {
        let base = r * seq;
        tokens[base..base + row.ids.len()].copy_from_slice(&row.ids);
        for j in 0..row.ids.len().saturating_sub(1) {
            targets[base + j] = row.ids[j + 1];
            if j + 1 >= row.answer_start {
                mask[base + j] = 1.0;
            }
        }
        last.push((base + row.ids.len().saturating_sub(1)) as u32);
    }
    let rows_n = encoded.len();
    Ok(Rows {
        tokens: Tensor::from_vec(tokens, (rows_n, seq), device)?,
        targets: Tensor::from_vec(targets, (rows_n, seq), device)?,
        mask: Tensor::from_vec(mask, (rows_n, seq), device)?,
        last: Tensor::from_vec(last, rows_n, device)?,
    })
}

/// Builds the batch of `pairs` (index into `data`) for a model with context `ctx`.
pub fn batch(
    data: &dyn ExampleSource,
    pairs: &[usize],
    tokenizer: &dyn Tokenizer,
    ctx: usize,
    device: &Device,
) -> Result<PairBatch> {
    let mut chosen = Vec::with_capacity(pairs.len());
    let mut rejected_rows = Vec::with_capacity(pairs.len());
    for &i in pairs {
        let e = data.get(i);
        let r = rejected(&e, i, data)?;
        chosen.push(encode(&e.prompt, &e.answer, tokenizer, ctx)?);
        rejected_rows.push(encode(&e.prompt, r, tokenizer, ctx)?);
    }
    let all: Vec<&Encoded> = chosen.iter().chain(&rejected_rows).collect();
    Ok(PairBatch {
        rows: rows(&all, tokenizer, device)?,
        pairs: pairs.len(),
    })
}

/// Train and held-out pair indices for one data set and seed.
#[derive(Debug, Clone)]
pub struct Split {
    pub train: Vec<usize>,
    pub held_out: Vec<usize>,
}

impl Split {
    /// Holds out `val_fraction` of the pairs (at least one; all but one at most). Every example
    /// must have a rejected answer: checked here, before any training.
    pub fn new(data: &dyn ExampleSource, val_fraction: f64, seed: u64) -> Result<Split> {
        let n = data.len();
        if n < 2 {
            return Err(Error::Data(format!(
                "{}: {n} preference pair(s); at least 2 are needed (one to train on, one held out)",
                data.name()
            )));
        }
        for i in 0..n {
            rejected(&data.get(i), i, data)?;
        }
        let held = ((n as f64 * val_fraction).round() as usize).clamp(1, n - 1);
        let mut order = SplitMix64::new(seed ^ 0x484f_4c44_4f55_5421).permutation(n);
        let held_out = order.split_off(n - held);
        Ok(Split {
            train: order,
            held_out,
        })
    }
}

/// The next `size` training pairs, drawn uniformly with replacement.
pub fn sample(split: &Split, size: usize, rng: &mut SplitMix64) -> Vec<usize> {
    (0..size)
        .map(|_| split.train[rng.below(split.train.len())])
        .collect()
}
