//! The `sft` trainer: supervised fine-tuning on prompt/answer examples. Each example becomes
//! `prompt + answer + <end-of-text>` tokens; the loss counts only the predictions of answer and
//! end-of-text tokens (prompt and padding positions are masked out). Examples are visited in a
//! seeded shuffled order, epoch after epoch; the data cursor (epoch, position) makes resume exact.
//! Chat data (examples with rendered segments) trains on the assistant turns only
//! ([`crate::chat_encoding`]). When evaluation is on, the last examples (up to `eval_batches × batch_size`, at most a tenth)
//! are held out and never trained on.

use llmlab_plugin_api::candle::{Device, Tensor};
use llmlab_plugin_api::config::TypedConfig;
use llmlab_plugin_api::prelude::*;

use crate::batches::{Batch, DataCursor};
use crate::chat_encoding::encode_example;
use crate::config::TrainConfig;
use crate::rng::SplitMix64;
use crate::train_loop::{Objective, Setup, TrainLoop};

/// One tokenized example: `ids` = prompt + answer + eot (cut to `ctx + 1` from the left), and the
/// index in `ids` of the first answer token; for chat examples, which ids are targets
/// ([`crate::chat_encoding`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub answer_start: usize,
    pub trainable: Option<Vec<bool>>,
}

/// Padding id: the tokenizer's pad token, else end-of-text (padding is masked either way).
fn pad_id(tokenizer: &dyn Tokenizer) -> Result<u32> {
    tokenizer
        .special_token(SpecialToken::Pad)
        .map_or_else(|| tokenizer.end_of_text(), Ok)
}

/// Tokenizes `example` for a context of `ctx` tokens. Over-long examples lose prompt tokens first.
pub fn encode(example: &Example, tokenizer: &dyn Tokenizer, ctx: usize) -> Result<Encoded> {
    let mut ids = tokenizer.encode(&example.prompt)?;
    let mut answer_start = ids.len();
    ids.extend(tokenizer.encode(&example.answer)?);
    ids.push(tokenizer.end_of_text()?);
    if ids.len() > ctx + 1 {
        let cut = ids.len() - (ctx + 1);
        ids.drain(..cut);
        answer_start = answer_start.saturating_sub(cut);
    }
    Ok(Encoded {
        ids,
        answer_start,
        trainable: None,
    })
}

/// A padded batch: row `r` predicts `ids[j + 1]` from `ids[..=j]`; the mask is 1 where `ids[j + 1]`
/// is an answer or end-of-text token, 0 on prompt and padding positions.
pub fn batch(rows: &[Encoded], pad: u32, device: &Device) -> Result<Batch> {
    let seq = rows
        .iter()
        .map(|r| r.ids.len().saturating_sub(1))
        .max()
        .unwrap_or(0)
        .max(1);
    let n = rows.len() * seq;
    let (mut inputs, mut targets, mut mask) = (vec![pad; n], vec![pad; n], vec![0f32; n]);
    let mut kept = 0;
    for (r, row) in rows.iter().enumerate() {
        let base = r * seq;
        for j in 0..row.ids.len().saturating_sub(1) {
            inputs[base + j] = row.ids[j];
            targets[base + j] = row.ids[j + 1];
            if row.is_target(j + 1) {
                mask[base + j] = 1.0;
                kept += 1;
            }
        }
    }
    Ok(Batch {
        inputs: Tensor::from_vec(inputs, (rows.len(), seq), device)?,
        targets: Tensor::from_vec(targets, (rows.len(), seq), device)?,
        mask: Some(Tensor::from_vec(mask, (rows.len(), seq), device)?),
        loss_tokens: kept,
        tokens: n,
        forward_inputs: Default::default(),
    })
}

/// Batches of examples in a shuffled order per epoch.
#[derive(Default)]
pub struct Sft {
    setup: Option<Setup>,
    /// Examples trained on: indices `0..train_len`; the rest are held out for evaluation.
    train_len: usize,
    held_out: usize,
    /// The shuffled order of the current epoch.
    order: Option<(u64, Vec<usize>)>,
}

fn examples<'a>(job: &TrainJob<'a>) -> Result<(&'a dyn ExampleSource, &'a dyn Tokenizer)> {
    match (job.examples, job.tokenizer) {
        (Some(examples), Some(tokenizer)) => Ok((examples, tokenizer)),
        (Some(_), None) => Err(Error::Data(
            "the sft trainer needs the tokenizer that encodes its examples; the job has none".into(),
        )),
        (None, _) => Err(Error::Data(format!(
            "the sft trainer learns from prompt/answer examples (a task corpus with a tokenizer), the job has {}; for a token dataset use trainer(\"lm\", ..)",
            job.describe()
        ))),
    }
}

impl Sft {
    fn epoch_order(&mut self, seed: u64, epoch: u64) -> &[usize] {
        if self.order.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let mut rng = SplitMix64::new(
                seed ^ 0x5346_545f_4550_4f43 ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            );
            self.order = Some((epoch, rng.permutation(self.train_len)));
        }
        self.order.as_ref().map_or(&[], |(_, order)| order)
    }
}

impl Objective for Sft {
    /// The plain token loss (masked for SFT) of the batch alone: rows may run in parallel.
    fn row_parallel(&self) -> bool {
        true
    }

    fn prepare(&mut self, data: &TrainJob<'_>, setup: &Setup) -> Result<()> {
        let (examples, tokenizer) = examples(data)?;
        tokenizer.end_of_text()?;
        if tokenizer.vocab_size() > setup.model_vocab_size {
            return Err(Error::Data(format!(
                "the tokenizer's vocabulary ({} tokens) is larger than the model's vocab_size ({})",
                tokenizer.vocab_size(),
                setup.model_vocab_size
            )));
        }
        let n = examples.len();
        self.held_out = if setup.eval {
            (setup.eval_batches * setup.batch_size).min(n / 10)
        } else {
            0
        };
        self.train_len = n - self.held_out;
        if self.train_len == 0 {
            return Err(Error::Data(format!(
                "sft: {} has no examples",
                examples.name()
            )));
        }
        self.setup = Some(*setup);
        self.order = None;
        Ok(())
    }

    fn next_batch(
        &mut self,
        data: &TrainJob<'_>,
        _rng: &mut SplitMix64,
        cursor: &mut DataCursor,
        device: &Device,
    ) -> Result<Batch> {
        let (examples, tokenizer) = examples(data)?;
        let setup = self.setup.ok_or_else(|| Error::msg("sft: not prepared"))?;
        let pad = pad_id(tokenizer)?;
        let mut rows = Vec::with_capacity(setup.batch_size);
        for _ in 0..setup.batch_size {
            if cursor.position as usize >= self.train_len {
                cursor.epoch += 1;
                cursor.position = 0;
            }
            let index = self.epoch_order(setup.seed, cursor.epoch)[cursor.position as usize];
            cursor.position += 1;
            cursor.drawn += 1;
            rows.push(encode_example(examples, index, tokenizer, setup.ctx)?);
        }
        batch(&rows, pad, device)
    }

    fn eval_batches(&mut self, data: &TrainJob<'_>, device: &Device) -> Result<Vec<Batch>> {
        let (examples, tokenizer) = examples(data)?;
        let setup = self.setup.ok_or_else(|| Error::msg("sft: not prepared"))?;
        if self.held_out == 0 {
            tracing::warn!("sft: too few examples to hold any out; no evaluation");
        }
        let pad = pad_id(tokenizer)?;
        let held: Vec<usize> = (self.train_len..self.train_len + self.held_out).collect();
        held.chunks(setup.batch_size)
            .map(|chunk| {
                let rows = chunk
                    .iter()
                    .map(|&i| encode_example(examples, i, tokenizer, setup.ctx))
                    .collect::<Result<Vec<_>>>()?;
                batch(&rows, pad, device)
            })
            .collect()
    }
}

pub type SftTrainer = TrainLoop<Sft>;

/// The `sft` trainer from a JSON config.
pub fn new_sft_trainer(config: &Value) -> Result<SftTrainer> {
    let config = TrainConfig::from_json("sft", config)?;
    Ok(TrainLoop::new("sft", config, Sft::default()))
}

pub struct SftFactory;

impl Factory for SftFactory {
    fn name(&self) -> &'static str {
        "sft"
    }
    fn kind(&self) -> Kind {
        Kind::Trainer
    }
    fn about(&self) -> &'static str {
        "supervised fine-tuning on prompt/answer pairs, loss on answer tokens only (same loop and keys as lm)"
    }
    fn config_keys(&self) -> Vec<ConfigKey> {
        TrainConfig::keys()
    }
    fn create(&self, config: &Value, _: &Context) -> Result<Instance> {
        Ok(Instance::Trainer(Box::new(new_sft_trainer(config)?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_marks_answer_and_eot_targets_only_and_padding_is_masked() {
        let rows = [
            Encoded {
                ids: vec![10, 11, 12, 20, 21, 0],
                answer_start: 3,
                trainable: None,
            },
            Encoded {
                ids: vec![13, 22, 0],
                answer_start: 1,
                trainable: None,
            },
        ];
        let b = batch(&rows, 99, &Device::Cpu).unwrap();
        let inputs: Vec<Vec<u32>> = b.inputs.to_vec2().unwrap();
        let targets: Vec<Vec<u32>> = b.targets.to_vec2().unwrap();
        let mask: Vec<Vec<f32>> = b.mask.unwrap().to_vec2().unwrap();
        assert_eq!(
            inputs,
            vec![vec![10, 11, 12, 20, 21], vec![13, 22, 99, 99, 99]]
        );
        assert_eq!(
            targets,
            vec![vec![11, 12, 20, 21, 0], vec![22, 0, 99, 99, 99]]
        );
        assert_eq!(
            mask,
            vec![vec![0., 0., 1., 1., 1.], vec![1., 1., 0., 0., 0.]]
        );
        assert_eq!(b.loss_tokens, 5);
    }
}
