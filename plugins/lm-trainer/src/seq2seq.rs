//! The `seq2seq` trainer: supervised text-to-text on prompt/answer examples, so every task
//! corpus (arithmetic, sort, reverse, labelled tasks written as label words) trains an
//! encoder–decoder. Each example becomes the packed row `prompt </s> answer </s>` that `t5`
//! splits at its first `</s>` (the encoder reads the prompt, the decoder predicts the answer);
//! the loss counts the answer and its `</s>` only. A tokenizer that appends `</s>` itself (T5's
//! does) is not given a second one. Prompts longer than `ctx - 1` lose their first tokens;
//! answers are cut to `ctx - 1`.
//!
//! Several tasks train in one run from a mixture corpus (`corpus_mix([#{ corpus, prefix,
//! rate }, ..])`, docs/t5.md): each task's prompts carry its prefix (`"add: "`), and its share of
//! the examples is its mixing rate; accuracy per task goes through the same prefixes.
//! Examples are visited in a seeded shuffled order, epoch after epoch; the data cursor makes
//! resume exact. With evaluation on, the last examples are held out (as in `sft`).

use llmlab_plugin_api::candle::Device;
use llmlab_plugin_api::config::TypedConfig;
use llmlab_plugin_api::prelude::*;

use crate::batches::{Batch, DataCursor};
use crate::config::TrainConfig;
use crate::rng::SplitMix64;
use crate::sft::{batch, Encoded};
use crate::train_loop::{Objective, Setup, TrainLoop};

/// `text`'s ids without a trailing `eos` (the tokenizer's own, if it adds one).
fn ids_without_eos(tokenizer: &dyn Tokenizer, text: &str, eos: u32) -> Result<Vec<u32>> {
    let mut ids = tokenizer.encode(text)?;
    if ids.last() == Some(&eos) {
        ids.pop();
    }
    Ok(ids)
}

/// Tokenizes `example` as `prompt </s> answer </s>` for inputs and answers of at most `ctx`.
pub fn encode(
    example: &Example,
    tokenizer: &dyn Tokenizer,
    eos: u32,
    ctx: usize,
) -> Result<Encoded> {
    let mut prompt = ids_without_eos(tokenizer, &example.prompt, eos)?;
    let mut answer = ids_without_eos(tokenizer, &example.answer, eos)?;
    let room = ctx.saturating_sub(1).max(1);
    if prompt.len() > room {
        prompt.drain(..prompt.len() - room);
    }
    answer.truncate(room);
    let answer_start = prompt.len() + 1;
    let ids = prompt
        .into_iter()
        .chain(std::iter::once(eos))
        .chain(answer)
        .chain(std::iter::once(eos))
        .collect();
    Ok(Encoded {
        ids,
        answer_start,
        trainable: None,
    })
}

fn examples<'a>(job: &TrainJob<'a>) -> Result<(&'a dyn ExampleSource, &'a dyn Tokenizer)> {
    match (job.examples, job.tokenizer) {
        (Some(examples), Some(tokenizer)) => Ok((examples, tokenizer)),
        (Some(_), None) => Err(Error::Data(
            "the seq2seq trainer needs the tokenizer that encodes its examples; the job has none".into(),
        )),
        (None, _) => Err(Error::Data(format!(
            "the seq2seq trainer learns from prompt/answer examples (a task corpus, or corpus_mix of several, with a tokenizer), the job has {}; for span-corruption pretraining use trainer(\"span\", ..)",
            job.describe()
        ))),
    }
}

/// Batches of packed text-to-text rows in a shuffled order per epoch.
#[derive(Default)]
pub struct TextToText {
    setup: Option<Setup>,
    train_len: usize,
    held_out: usize,
    order: Option<(u64, Vec<usize>)>,
    eos: u32,
    pad: u32,
    /// Whether the model's own `eos_token_id` was checked against the tokenizer's.
    model_checked: bool,
}

impl TextToText {
    fn epoch_order(&mut self, seed: u64, epoch: u64) -> &[usize] {
        if self.order.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let mut rng = SplitMix64::new(
                seed ^ 0x5345_5132_5345_5121 ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            );
            self.order = Some((epoch, rng.permutation(self.train_len)));
        }
        self.order.as_ref().map_or(&[], |(_, order)| order)
    }
}

impl Objective for TextToText {
    fn prepare(&mut self, data: &TrainJob<'_>, setup: &Setup) -> Result<()> {
        let (examples, tokenizer) = examples(data)?;
        self.eos = tokenizer.end_of_text()?;
        self.pad = tokenizer
            .special_token(SpecialToken::Pad)
            .unwrap_or(self.eos);
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
                "seq2seq: {} has no examples",
                examples.name()
            )));
        }
        self.setup = Some(*setup);
        self.order = None;
        Ok(())
    }

    /// An encoder–decoder splits rows at its `eos_token_id`: it must be the tokenizer's.
    fn prepare_batch(&mut self, model: &dyn Model, batch: Batch) -> Result<Batch> {
        if !self.model_checked {
            if let Some(eos) = model.config().get("eos_token_id").and_then(Value::as_u64) {
                if eos != self.eos as u64 {
                    return Err(Error::Data(format!(
                        "seq2seq: the model's eos_token_id is {eos} but the tokenizer's end-of-text is {}; \
                         the model would split prompt from answer at the wrong token (set eos_token_id: {} in the model config)",
                        self.eos, self.eos
                    )));
                }
            }
            self.model_checked = true;
        }
        Ok(batch)
    }

    fn next_batch(
        &mut self,
        data: &TrainJob<'_>,
        _rng: &mut SplitMix64,
        cursor: &mut DataCursor,
        device: &Device,
    ) -> Result<Batch> {
        let (examples, tokenizer) = examples(data)?;
        let setup = self
            .setup
            .ok_or_else(|| Error::msg("seq2seq: not prepared"))?;
        let mut rows = Vec::with_capacity(setup.batch_size);
        for _ in 0..setup.batch_size {
            if cursor.position as usize >= self.train_len {
                cursor.epoch += 1;
                cursor.position = 0;
            }
            let index = self.epoch_order(setup.seed, cursor.epoch)[cursor.position as usize];
            cursor.position += 1;
            cursor.drawn += 1;
            rows.push(encode(
                &examples.get(index),
                tokenizer,
                self.eos,
                setup.ctx,
            )?);
        }
        batch(&rows, self.pad, device)
    }

    fn eval_batches(&mut self, data: &TrainJob<'_>, device: &Device) -> Result<Vec<Batch>> {
        let (examples, tokenizer) = examples(data)?;
        let setup = self
            .setup
            .ok_or_else(|| Error::msg("seq2seq: not prepared"))?;
        let held: Vec<usize> = (self.train_len..self.train_len + self.held_out).collect();
        held.chunks(setup.batch_size)
            .map(|chunk| {
                let rows = chunk
                    .iter()
                    .map(|&i| encode(&examples.get(i), tokenizer, self.eos, setup.ctx))
                    .collect::<Result<Vec<_>>>()?;
                batch(&rows, self.pad, device)
            })
            .collect()
    }
}

pub type Seq2SeqTrainer = TrainLoop<TextToText>;

/// The `seq2seq` trainer from a JSON config (the `lm` trainer's keys).
pub fn new_seq2seq_trainer(config: &Value) -> Result<Seq2SeqTrainer> {
    let config = TrainConfig::from_json("seq2seq", config)?;
    Ok(TrainLoop::new("seq2seq", config, TextToText::default()))
}

pub struct Seq2SeqFactory;

impl Factory for Seq2SeqFactory {
    fn name(&self) -> &'static str {
        "seq2seq"
    }
    fn kind(&self) -> Kind {
        Kind::Trainer
    }
    fn about(&self) -> &'static str {
        "text-to-text fine-tuning: prompt </s> answer </s> rows for encoder-decoders (t5), loss on the answer; mixtures via corpus_mix"
    }
    fn config_keys(&self) -> Vec<ConfigKey> {
        TrainConfig::keys()
    }
    fn create(&self, config: &Value, _: &Context) -> Result<Instance> {
        Ok(Instance::Trainer(Box::new(new_seq2seq_trainer(config)?)))
    }
}
