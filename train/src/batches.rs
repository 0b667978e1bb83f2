//! Training batches: what one micro-step feeds the model ([`Batch`]), random `(batch, ctx + 1)`
//! windows of a token stream drawn with the trainer's own RNG ([`WindowSampler`]), the fixed,
//! evenly spaced windows evaluation uses ([`eval_windows`]), and the [`DataCursor`] that a
//! checkpoint records so a resumed run reads exactly what an uninterrupted one would.

use llmlab_plugin_api::candle::{Device, Tensor};
use llmlab_plugin_api::serde::{Deserialize, Serialize};
use llmlab_plugin_api::{Error, ForwardInputs, Result, Split, TokenData};

use crate::rng::SplitMix64;

/// One micro-batch: `inputs` and `targets` `(batch, seq)` u32 (targets are inputs shifted by one);
/// for SFT a 0/1 `mask` `(batch, seq)` f32 of the positions that count in the loss. Encoders'
/// batches also carry a padding mask and segment ids, and classification asks for the task
/// head (`forward_inputs`, plain for the decoders' trainers); their `targets` are then labels.
pub struct Batch {
    pub inputs: Tensor,
    pub targets: Tensor,
    pub mask: Option<Tensor>,
    /// Positions that count in the loss (all of them without a mask).
    pub loss_tokens: usize,
    /// Tokens fed to the model, padding included (for tokens/s).
    pub tokens: usize,
    /// What the forward pass takes besides `inputs` ([`ForwardInputs`]).
    pub forward_inputs: ForwardInputs,
}

impl Batch {
    /// Rows `start..start + len` of this batch, and the weight of their loss in the whole
    /// batch's loss: a row-mean loss (no mask) is scaled by the rows' share; a masked loss keeps
    /// the whole batch's count of loss tokens as its divisor, so the parts' losses simply add
    /// up. Data parallel ranks and the row-parallel split of a step both cut batches this way.
    pub fn rows(&self, start: usize, len: usize) -> Result<(Batch, f64)> {
        let (rows, seq) = self.inputs.dims2()?;
        let narrow = |t: &Tensor| t.narrow(0, start, len);
        let narrow_opt = |t: &Option<Tensor>| t.as_ref().map(narrow).transpose();
        let (mask, loss_tokens, share) = match &self.mask {
            Some(mask) => (Some(narrow(mask)?), self.loss_tokens, 1.0),
            None => (None, len * seq, len as f64 / rows as f64),
        };
        let part = Batch {
            inputs: narrow(&self.inputs)?,
            targets: narrow(&self.targets)?,
            mask,
            loss_tokens,
            tokens: len * seq,
            forward_inputs: ForwardInputs {
                attention_mask: narrow_opt(&self.forward_inputs.attention_mask)?,
                token_type_ids: narrow_opt(&self.forward_inputs.token_type_ids)?,
                head: self.forward_inputs.head,
            },
        };
        Ok((part, share))
    }
}

/// Where the trainer is in its data: windows drawn so far (`lm`), or the epoch and the position
/// in that epoch's shuffled example order (`sft`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(crate = "llmlab_plugin_api::serde")]
pub struct DataCursor {
    pub drawn: u64,
    pub epoch: u64,
    pub position: u64,
}

/// Builds a batch from rows of `seq + 1` tokens each (`windows` holds them back to back).
pub fn windows_to_batch(windows: &[u32], seq: usize, device: &Device) -> Result<Batch> {
    let rows = windows.len() / (seq + 1);
    let mut inputs = Vec::with_capacity(rows * seq);
    let mut targets = Vec::with_capacity(rows * seq);
    for row in windows.chunks_exact(seq + 1) {
        inputs.extend_from_slice(&row[..seq]);
        targets.extend_from_slice(&row[1..]);
    }
    Ok(Batch {
        inputs: Tensor::from_vec(inputs, (rows, seq), device)?,
        targets: Tensor::from_vec(targets, (rows, seq), device)?,
        mask: None,
        loss_tokens: rows * seq,
        tokens: rows * seq,
        forward_inputs: ForwardInputs::default(),
    })
}

/// Draws uniformly random windows of the train split.
pub struct WindowSampler {
    pub batch_size: usize,
    pub ctx: usize,
    scratch: Vec<u32>,
}

impl WindowSampler {
    pub fn new(batch_size: usize, ctx: usize) -> Self {
        WindowSampler {
            batch_size,
            ctx,
            scratch: vec![0; batch_size * (ctx + 1)],
        }
    }

    /// Checks the train split can hold one window.
    pub fn check(&self, data: &dyn TokenData) -> Result<()> {
        let len = data.len(Split::Train);
        if len < self.ctx + 1 {
            return Err(Error::Data(format!(
                "the train split has {len} tokens but a training window needs ctx + 1 = {}; lower `ctx` or use more data",
                self.ctx + 1
            )));
        }
        Ok(())
    }

    pub fn next(
        &mut self,
        data: &dyn TokenData,
        rng: &mut SplitMix64,
        cursor: &mut DataCursor,
        device: &Device,
    ) -> Result<Batch> {
        let window = self.ctx + 1;
        let starts = data.len(Split::Train) - window + 1;
        for row in self.scratch.chunks_exact_mut(window) {
            data.read(Split::Train, rng.below(starts), row)?;
            cursor.drawn += 1;
        }
        windows_to_batch(&self.scratch, self.ctx, device)
    }
}

/// `count` evenly spaced starts of `window`-token windows in a stream of `len` tokens.
pub fn eval_windows(len: usize, window: usize, count: usize) -> Vec<usize> {
    if len < window || count == 0 {
        return Vec::new();
    }
    let last = len - window;
    if count == 1 {
        return vec![0];
    }
    (0..count).map(|i| i * last / (count - 1)).collect()
}

/// The fixed evaluation set of the val split: `batches` batches of `batch_size` evenly spaced
/// windows (shorter windows when the split is smaller than `ctx + 1`; none when it has < 2 tokens).
pub fn eval_batches(
    data: &dyn TokenData,
    batch_size: usize,
    ctx: usize,
    batches: usize,
    device: &Device,
) -> Result<Vec<Batch>> {
    let len = data.len(Split::Val);
    if len < 2 {
        return Ok(Vec::new());
    }
    let seq = ctx.min(len - 1);
    let starts = eval_windows(len, seq + 1, batch_size * batches);
    let mut out = Vec::with_capacity(batches);
    let mut rows = vec![0u32; batch_size * (seq + 1)];
    for chunk in starts.chunks(batch_size) {
        let rows = &mut rows[..chunk.len() * (seq + 1)];
        for (start, row) in chunk.iter().zip(rows.chunks_exact_mut(seq + 1)) {
            data.read(Split::Val, *start, row)?;
        }
        out.push(windows_to_batch(rows, seq, device)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Counting(usize);

    impl TokenData for Counting {
        fn len(&self, _: Split) -> usize {
            self.0
        }
        fn read(&self, _: Split, start: usize, out: &mut [u32]) -> Result<()> {
            for (i, o) in out.iter_mut().enumerate() {
                *o = (start + i) as u32;
            }
            Ok(())
        }
        fn vocab_size(&self) -> usize {
            self.0
        }
    }

    #[test]
    fn windows_are_contiguous_and_targets_are_shifted_inputs() {
        let mut sampler = WindowSampler::new(3, 4);
        let mut rng = SplitMix64::new(1);
        let mut cursor = DataCursor::default();
        let batch = sampler
            .next(&Counting(20), &mut rng, &mut cursor, &Device::Cpu)
            .unwrap();
        assert_eq!(cursor.drawn, 3);
        let inputs: Vec<Vec<u32>> = batch.inputs.to_vec2().unwrap();
        let targets: Vec<Vec<u32>> = batch.targets.to_vec2().unwrap();
        for (x, y) in inputs.iter().zip(&targets) {
            assert!(x[0] + 4 < 20);
            for j in 0..4 {
                assert_eq!(x[j], x[0] + j as u32);
                assert_eq!(y[j], x[j] + 1);
            }
        }
    }

    #[test]
    fn eval_windows_span_the_split_and_short_splits_shrink_the_window() {
        assert_eq!(eval_windows(100, 11, 3), vec![0, 44, 89]);
        assert_eq!(eval_windows(5, 11, 3), Vec::<usize>::new());
        let batches = eval_batches(&Counting(6), 2, 10, 2, &Device::Cpu).unwrap();
        assert_eq!(batches.len(), 2);
        assert_eq!(batches[0].inputs.dims(), &[2, 5]);
        assert!(WindowSampler::new(1, 10)
            .check(&Counting(6))
            .unwrap_err()
            .to_string()
            .contains("ctx"));
    }
}
