//! The `mlm` trainer: masked-language-model pretraining of an encoder on a token stream (BERT).
//! Each row is `[CLS]` followed by a random window of `ctx - 1` training tokens. Of the
//! non-special tokens, `mask_prob` (15%) are selected — whole words with `whole_word`, a word
//! being a piece and the `##` continuation pieces after it — and of those 80% become `[MASK]`,
//! 10% a random non-special token and 10% stay; the loss is cross-entropy on the selected
//! positions only. Selection draws from the loop's seeded RNG, so runs are reproducible and a
//! resumed run continues exactly. Evaluation: fixed, evenly spaced windows of the val split
//! masked once with a fixed seed; `val_loss` is the MLM loss on them and
//! `val_masked_accuracy` the fraction of selected tokens predicted exactly.
//!
//! With `next_sentence` > 0, that share of the steps trains BERT's next-sentence prediction
//! instead ([`crate::next_sentence`]): the trainer gives the model a 2-way sequence head
//! (`pooling` as the fine-tuning head will have it) and such a step's batch is sentence pairs
//! read by that head. Steps alternate rather than summing both losses in one pass because a
//! model's forward gives either its MLM logits or its head's output.

use std::collections::HashSet;

use llmlab_plugin_api::candle::{DType, Device, Tensor, D};
use llmlab_plugin_api::config::TypedConfig;
use llmlab_plugin_api::prelude::*;
use llmlab_plugin_api::rng::SplitMix64;
use llmlab_plugin_api::serde_json::Map;
use llmlab_train::batches::{eval_windows, Batch, DataCursor};
use llmlab_train::train_loop::{hard_label_loss, Objective, Setup, TrainLoop};
use llmlab_train::{loss, TrainConfig};

use crate::classify::pooling_setting;
use crate::next_sentence;
use crate::pair_encoding::Specials;

/// What `mlm` adds to the shared training keys.
#[derive(Debug, Clone, PartialEq)]
pub struct MlmConfig {
    pub mask_prob: f64,
    pub whole_word: bool,
    /// The share of steps that train next-sentence prediction (0: MLM only, as RoBERTa).
    pub next_sentence: f64,
    /// The next-sentence head's pooling: `cls` (BERT), `mean` or `max`.
    pub pooling: String,
}

impl Default for MlmConfig {
    fn default() -> Self {
        MlmConfig {
            mask_prob: 0.15,
            whole_word: false,
            next_sentence: 0.0,
            pooling: "cls".into(),
        }
    }
}

pub const MLM_KEYS: &[(&str, &str)] = &[
    (
        "mask_prob",
        "fraction of (non-special) tokens selected for prediction; 80% of them become [MASK], 10% a random token, 10% stay",
    ),
    (
        "whole_word",
        "select whole words (a piece and its ## continuations) instead of single pieces",
    ),
    (
        "next_sentence",
        "share of steps (0-1) that train next-sentence prediction on [CLS] A [SEP] B [SEP] pairs (B follows A or is drawn elsewhere) with a 2-way sequence head; 0 = MLM only",
    ),
    (
        "pooling",
        "the next-sentence head's pooling: cls (BERT), mean or max (as the fine-tuning head will pool)",
    ),
];

impl MlmConfig {
    /// Takes `mlm`'s own keys out of `fields` (the rest are [`TrainConfig`]'s).
    pub fn take(fields: &mut Map<String, Value>) -> Result<MlmConfig> {
        let mut config = MlmConfig::default();
        if let Some(v) = fields.remove("mask_prob") {
            config.mask_prob = v.as_f64().filter(|p| *p > 0.0 && *p < 1.0).ok_or_else(|| {
                Error::invalid_config("mlm", format!("`mask_prob` must be in (0, 1), got {v}"))
            })?;
        }
        if let Some(v) = fields.remove("whole_word") {
            config.whole_word = v.as_bool().ok_or_else(|| {
                Error::invalid_config(
                    "mlm",
                    format!("`whole_word` must be true or false, got {v}"),
                )
            })?;
        }
        if let Some(v) = fields.remove("next_sentence") {
            config.next_sentence =
                v.as_f64()
                    .filter(|p| (0.0..=1.0).contains(p))
                    .ok_or_else(|| {
                        Error::invalid_config(
                            "mlm",
                            format!("`next_sentence` must be a share of steps in [0, 1], got {v}"),
                        )
                    })?;
        }
        if let Some(v) = fields.remove("pooling") {
            config.pooling = pooling_setting("mlm", &v)?;
        }
        Ok(config)
    }
}

/// The tokenizer's ids the masking needs.
#[derive(Debug, Clone)]
struct Vocabulary {
    mask: u32,
    cls: Option<u32>,
    /// Special tokens: never selected, never a random replacement.
    special: HashSet<u32>,
    /// Per id: whether it continues the previous piece's word (`##ing`).
    continuation: Vec<bool>,
}

impl Vocabulary {
    fn of(tokenizer: &dyn Tokenizer) -> Result<Vocabulary> {
        let mask = tokenizer.special_token(SpecialToken::Mask).ok_or_else(|| {
            Error::Data(format!(
                "mlm: the tokenizer ({}) has no [MASK] token; train a wordpiece tokenizer (its \
                 special tokens include [MASK]) or add one to special_tokens",
                tokenizer.name()
            ))
        })?;
        let special = [
            SpecialToken::EndOfText,
            SpecialToken::Pad,
            SpecialToken::Unknown,
            SpecialToken::Cls,
            SpecialToken::Sep,
            SpecialToken::Mask,
        ]
        .into_iter()
        .filter_map(|role| tokenizer.special_token(role))
        .collect();
        let continuation = (0..tokenizer.vocab_size() as u32)
            .map(|id| {
                tokenizer
                    .id_to_token(id)
                    .is_some_and(|t| t.starts_with("##"))
            })
            .collect();
        Ok(Vocabulary {
            mask,
            cls: tokenizer.special_token(SpecialToken::Cls),
            special,
            continuation,
        })
    }
}

/// One masked row: the model's input, the original tokens, and which positions count.
struct MaskedRow {
    inputs: Vec<u32>,
    targets: Vec<u32>,
    selected: Vec<bool>,
}

/// Selects and corrupts positions of `row` (BERT's 80/10/10 rule).
fn mask_row(
    row: &[u32],
    vocab: &Vocabulary,
    config: &MlmConfig,
    rng: &mut SplitMix64,
) -> MaskedRow {
    let eligible = |id: u32| !vocab.special.contains(&id);
    let mut selected = vec![false; row.len()];
    let mut j = 0;
    while j < row.len() {
        // A unit: one piece, or with `whole_word` a piece and the continuations after it.
        let mut end = j + 1;
        if config.whole_word {
            while end < row.len()
                && eligible(row[end])
                && vocab
                    .continuation
                    .get(row[end] as usize)
                    .copied()
                    .unwrap_or(false)
            {
                end += 1;
            }
        }
        if eligible(row[j]) && rng.next_unit() < config.mask_prob {
            selected[j..end].iter_mut().for_each(|s| *s = true);
        }
        j = end;
    }
    let mut inputs = row.to_vec();
    let vocab_size = vocab.continuation.len();
    for (j, chosen) in selected.iter().enumerate() {
        if !chosen {
            continue;
        }
        let u = rng.next_unit();
        if u < 0.8 {
            inputs[j] = vocab.mask;
        } else if u < 0.9 {
            inputs[j] = loop {
                let id = rng.below(vocab_size) as u32;
                if eligible(id) {
                    break id;
                }
            };
        }
    }
    MaskedRow {
        inputs,
        targets: row.to_vec(),
        selected,
    }
}

fn to_batch(rows: Vec<MaskedRow>, device: &Device) -> Result<Batch> {
    let (b, t) = (rows.len(), rows[0].inputs.len());
    let kept = rows
        .iter()
        .flat_map(|r| &r.selected)
        .filter(|s| **s)
        .count();
    let mask: Vec<f32> = rows
        .iter()
        .flat_map(|r| r.selected.iter().map(|s| f32::from(u8::from(*s))))
        .collect();
    let inputs: Vec<u32> = rows.iter().flat_map(|r| r.inputs.iter().copied()).collect();
    let targets: Vec<u32> = rows
        .iter()
        .flat_map(|r| r.targets.iter().copied())
        .collect();
    Ok(Batch {
        inputs: Tensor::from_vec(inputs, (b, t), device)?,
        targets: Tensor::from_vec(targets, (b, t), device)?,
        mask: Some(Tensor::from_vec(mask, (b, t), device)?),
        loss_tokens: kept,
        tokens: b * t,
        forward_inputs: ForwardInputs::default(),
    })
}

/// Masked windows of a token stream.
#[derive(Default)]
pub struct MaskedLm {
    config: MlmConfig,
    setup: Option<Setup>,
    vocab: Option<Vocabulary>,
    /// Next-sentence rows' `[CLS]`/`[SEP]`/`[PAD]` (only with `next_sentence`).
    specials: Option<Specials>,
}

impl MaskedLm {
    pub fn new(config: MlmConfig) -> MaskedLm {
        MaskedLm {
            config,
            ..MaskedLm::default()
        }
    }

    /// Stream tokens per row (the row starts with [CLS] when the tokenizer has one).
    fn window(&self) -> usize {
        let ctx = self.setup.map_or(0, |s| s.ctx);
        match self.vocab.as_ref().and_then(|v| v.cls) {
            Some(_) => ctx - 1,
            None => ctx,
        }
    }

    fn row(&self, window: Vec<u32>) -> Vec<u32> {
        match self.vocab.as_ref().and_then(|v| v.cls) {
            Some(cls) => std::iter::once(cls).chain(window).collect(),
            None => window,
        }
    }

    fn masked_batch(
        &self,
        windows: Vec<Vec<u32>>,
        rng: &mut SplitMix64,
        device: &Device,
    ) -> Result<Batch> {
        let vocab = self
            .vocab
            .as_ref()
            .ok_or_else(|| Error::msg("mlm: not prepared"))?;
        let mut rows: Vec<MaskedRow> = windows
            .into_iter()
            .map(|w| mask_row(&self.row(w), vocab, &self.config, rng))
            .collect();
        // A batch with nothing selected has no loss: select one eligible position.
        if rows.iter().all(|r| !r.selected.iter().any(|s| *s)) {
            let row = &mut rows[0];
            if let Some(j) =
                (0..row.targets.len()).find(|&j| !vocab.special.contains(&row.targets[j]))
            {
                row.selected[j] = true;
                row.inputs[j] = vocab.mask;
            }
        }
        to_batch(rows, device)
    }

    /// Stream tokens per next-sentence row (`[CLS] A [SEP] B [SEP]`).
    fn pair_content(&self) -> usize {
        self.setup.map_or(0, |s| s.ctx).saturating_sub(3)
    }

    fn pair_batch(
        &self,
        tokens: &dyn TokenData,
        split: Split,
        rows: usize,
        rng: &mut SplitMix64,
        device: &Device,
    ) -> Result<Batch> {
        let specials = self
            .specials
            .ok_or_else(|| Error::msg("mlm: next_sentence not prepared"))?;
        let (len, content) = (tokens.len(split), self.pair_content());
        let rows = (0..rows)
            .map(|_| {
                let spans = next_sentence::draw(len, content, rng);
                Ok((
                    next_sentence::encode(tokens, split, spans, specials)?,
                    spans.is_next,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        next_sentence::batch(&rows, specials, device)
    }
}

fn job_parts<'a>(job: &TrainJob<'a>) -> Result<(&'a dyn TokenData, &'a dyn Tokenizer)> {
    match (job.tokens, job.tokenizer) {
        (Some(tokens), Some(tokenizer)) => Ok((tokens, tokenizer)),
        (Some(_), None) => Err(Error::Data(
            "the mlm trainer needs the tokenizer of its dataset (for [MASK], [CLS] and word \
             boundaries): tr.fit(model, dataset, tokenizer)"
                .into(),
        )),
        (None, _) => Err(Error::Data(format!(
            "the mlm trainer learns from a token dataset (tok.encode(corpus)) and its tokenizer, \
             the job has {}",
            job.describe()
        ))),
    }
}

impl Objective for MaskedLm {
    fn prepare(&mut self, data: &TrainJob<'_>, setup: &Setup) -> Result<()> {
        let (tokens, tokenizer) = job_parts(data)?;
        if tokenizer.vocab_size() > setup.model_vocab_size {
            return Err(Error::Data(format!(
                "the tokenizer's vocabulary ({} tokens) is larger than the model's vocab_size ({})",
                tokenizer.vocab_size(),
                setup.model_vocab_size
            )));
        }
        self.vocab = Some(Vocabulary::of(tokenizer)?);
        self.setup = Some(*setup);
        let window = self.window();
        if window == 0 {
            return Err(Error::invalid_config(
                "mlm",
                "`ctx` must be at least 2 ([CLS] and one token)",
            ));
        }
        let len = tokens.len(Split::Train);
        if len < window {
            return Err(Error::Data(format!(
                "the train split has {len} tokens but a row needs {window}; lower `ctx` or use more data"
            )));
        }
        self.specials = None;
        if self.config.next_sentence > 0.0 {
            self.specials = Some(Specials::of(tokenizer)?);
            if setup.ctx < 5 {
                return Err(Error::invalid_config(
                    "mlm",
                    format!(
                        "`next_sentence` needs ctx of at least 5 ([CLS] A [SEP] B [SEP]), the model has {}",
                        setup.ctx
                    ),
                ));
            }
        }
        Ok(())
    }

    fn next_batch(
        &mut self,
        data: &TrainJob<'_>,
        rng: &mut SplitMix64,
        cursor: &mut DataCursor,
        device: &Device,
    ) -> Result<Batch> {
        let (tokens, _) = job_parts(data)?;
        let setup = self.setup.ok_or_else(|| Error::msg("mlm: not prepared"))?;
        // Drawn only when next-sentence steps are on, so MLM-only runs keep their streams.
        if self.config.next_sentence > 0.0 && rng.next_unit() < self.config.next_sentence {
            cursor.drawn += setup.batch_size as u64;
            return self.pair_batch(tokens, Split::Train, setup.batch_size, rng, device);
        }
        let window = self.window();
        let starts = tokens.len(Split::Train) - window + 1;
        let mut windows = Vec::with_capacity(setup.batch_size);
        for _ in 0..setup.batch_size {
            let mut w = vec![0u32; window];
            tokens.read(Split::Train, rng.below(starts), &mut w)?;
            cursor.drawn += 1;
            windows.push(w);
        }
        self.masked_batch(windows, rng, device)
    }

    fn eval_batches(&mut self, data: &TrainJob<'_>, device: &Device) -> Result<Vec<Batch>> {
        let (tokens, _) = job_parts(data)?;
        let setup = self.setup.ok_or_else(|| Error::msg("mlm: not prepared"))?;
        let window = self.window();
        let starts = eval_windows(
            tokens.len(Split::Val),
            window,
            setup.batch_size * setup.eval_batches,
        );
        if starts.is_empty() {
            tracing::warn!("mlm: the val split is shorter than a row; no evaluation");
        }
        // The same masks at every evaluation, whatever the training seed.
        let mut rng = SplitMix64::new(0x4d4c_4d5f_4556_414c);
        let mut batches = Vec::new();
        for chunk in starts.chunks(setup.batch_size) {
            let mut windows = Vec::with_capacity(chunk.len());
            for &start in chunk {
                let mut w = vec![0u32; window];
                tokens.read(Split::Val, start, &mut w)?;
                windows.push(w);
            }
            batches.push(self.masked_batch(windows, &mut rng, device)?);
        }
        // As many next-sentence rows, drawn with their own fixed seed.
        let len = tokens.len(Split::Val);
        if self.config.next_sentence > 0.0 && len >= self.pair_content() {
            let mut rng = SplitMix64::new(0x4e53_505f_4556_414c);
            for _ in 0..setup.eval_batches {
                batches.push(self.pair_batch(
                    tokens,
                    Split::Val,
                    setup.batch_size,
                    &mut rng,
                    device,
                )?);
            }
        }
        Ok(batches)
    }

    fn loss(&mut self, logits: &Tensor, batch: &Batch) -> Result<Tensor> {
        if next_sentence::is_pair_batch(batch) {
            return Ok(next_sentence::row_nll(logits, &batch.targets)?.mean_all()?);
        }
        hard_label_loss(logits, batch)
    }

    /// MLM loss and masked-token accuracy on the selected positions of the fixed set.
    fn evaluate(&mut self, model: &dyn Model, batches: &[Batch]) -> Result<StepMetrics> {
        let (mut nll, mut right, mut total) = (0f64, 0f64, 0usize);
        let (mut pair_nll, mut pair_right, mut pairs) = (0f64, 0usize, 0usize);
        for batch in batches {
            if next_sentence::is_pair_batch(batch) {
                let logits = model
                    .forward_with(
                        &batch.inputs,
                        &batch.forward_inputs,
                        &ForwardOptions::inference(),
                    )?
                    .logits
                    .to_dtype(DType::F32)?;
                pair_nll += next_sentence::row_nll(&logits, &batch.targets)?
                    .sum_all()?
                    .to_scalar::<f32>()? as f64;
                let predicted = logits.argmax(D::Minus1)?;
                pair_right += predicted
                    .eq(&batch.targets)?
                    .to_dtype(DType::F32)?
                    .sum_all()?
                    .to_scalar::<f32>()? as usize;
                pairs += batch.loss_tokens;
                continue;
            }
            let mask = batch
                .mask
                .as_ref()
                .ok_or_else(|| Error::msg("mlm: unmasked batch"))?;
            let logits = model
                .forward(&batch.inputs, &ForwardOptions::inference())?
                .logits
                .to_dtype(DType::F32)?;
            let mask = mask.flatten_all()?;
            let per_token = loss::token_nll(&logits, &batch.targets)?;
            nll += (per_token * &mask)?.sum_all()?.to_scalar::<f32>()? as f64;
            let predicted = logits.argmax(D::Minus1)?.flatten_all()?;
            let hit = predicted
                .eq(&batch.targets.flatten_all()?)?
                .to_dtype(DType::F32)?;
            right += (hit * &mask)?.sum_all()?.to_scalar::<f32>()? as f64;
            total += batch.loss_tokens;
        }
        let mut metrics = StepMetrics::new();
        if total > 0 {
            let loss = nll / total as f64;
            metrics.insert("val_loss".into(), loss);
            metrics.insert("val_ppl".into(), loss.exp());
            metrics.insert("val_masked_accuracy".into(), right / total as f64);
        }
        if pairs > 0 {
            metrics.insert("val_next_sentence_loss".into(), pair_nll / pairs as f64);
            metrics.insert(
                "val_next_sentence_accuracy".into(),
                pair_right as f64 / pairs as f64,
            );
        }
        Ok(metrics)
    }
}

/// The `mlm` trainer: the step loop over [`MaskedLm`], which first gives the model the
/// next-sentence head when `next_sentence` is on (the head's parameters must exist before the
/// loop collects what it trains and what a checkpoint holds).
pub struct MlmTrainer {
    inner: TrainLoop<MaskedLm>,
    config: MlmConfig,
}

impl MlmTrainer {
    fn ensure_head(&self, model: &dyn Model) -> Result<()> {
        if self.config.next_sentence == 0.0 {
            return Ok(());
        }
        let wanted = next_sentence::head(&self.config.pooling);
        if model.head().as_ref() == Some(&wanted) {
            return Ok(());
        }
        match model.set_head(Some(&wanted)) {
            Ok(_) => Ok(()),
            Err(Error::Unsupported { .. }) => Err(Error::invalid_config(
                "mlm",
                format!(
                    "`next_sentence` trains a sequence head on sentence pairs, and {} takes no \
                     task head (an encoder such as `bert` does); set next_sentence: 0",
                    model.name()
                ),
            )),
            Err(e) => Err(e),
        }
    }
}

impl Trainer for MlmTrainer {
    fn name(&self) -> &str {
        "mlm"
    }
    fn config(&self) -> Value {
        let mut config = self.inner.config();
        if let Value::Object(map) = &mut config {
            map.insert("mask_prob".into(), json!(self.config.mask_prob));
            map.insert("whole_word".into(), json!(self.config.whole_word));
            map.insert("next_sentence".into(), json!(self.config.next_sentence));
            map.insert("pooling".into(), json!(self.config.pooling));
        }
        config
    }
    fn step(
        &mut self,
        model: &dyn Model,
        job: &TrainJob<'_>,
        ctx: &Context,
    ) -> Result<StepMetrics> {
        self.ensure_head(model)?;
        self.inner.step(model, job, ctx)
    }
    fn fit(&mut self, model: &dyn Model, job: &TrainJob<'_>, ctx: &Context) -> Result<StepMetrics> {
        self.ensure_head(model)?;
        self.inner.fit(model, job, ctx)
    }
    fn steps_done(&self) -> u64 {
        self.inner.steps_done()
    }
}

/// The `mlm` trainer from a JSON config (the shared training keys plus [`MLM_KEYS`]).
pub fn new_mlm_trainer(config: &Value) -> Result<MlmTrainer> {
    let mut fields = match config {
        Value::Null => Map::new(),
        Value::Object(map) => map.clone(),
        other => {
            return Err(Error::invalid_config(
                "mlm",
                format!("expected a map of settings, got {other}"),
            ))
        }
    };
    let mlm = MlmConfig::take(&mut fields)?;
    let train = TrainConfig::from_json("mlm", &Value::Object(fields))?;
    Ok(MlmTrainer {
        inner: TrainLoop::new("mlm", train, MaskedLm::new(mlm.clone())),
        config: mlm,
    })
}

/// The shared training keys followed by `extra`, for `help`.
pub fn keys_with(extra: &[(&str, &str)], defaults: Value) -> Vec<ConfigKey> {
    let mut keys = TrainConfig::keys();
    keys.extend(extra.iter().map(|(name, doc)| ConfigKey {
        name: name.to_string(),
        default: defaults.get(*name).cloned().unwrap_or(Value::Null),
        doc: doc.to_string(),
    }));
    keys
}

pub struct MlmFactory;

impl Factory for MlmFactory {
    fn name(&self) -> &'static str {
        "mlm"
    }
    fn kind(&self) -> Kind {
        Kind::Trainer
    }
    fn about(&self) -> &'static str {
        "masked-LM pretraining of encoders (BERT): 15% selected, 80/10/10, whole-word option, next-sentence prediction option; val MLM loss and masked accuracy"
    }
    fn config_keys(&self) -> Vec<ConfigKey> {
        keys_with(
            MLM_KEYS,
            json!({ "mask_prob": 0.15, "whole_word": false, "next_sentence": 0.0, "pooling": "cls" }),
        )
    }
    fn create(&self, config: &Value, _: &Context) -> Result<Instance> {
        Ok(Instance::Trainer(Box::new(new_mlm_trainer(config)?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab() -> Vocabulary {
        // 0 [PAD], 1 [CLS], 2 [MASK], 3.. words; ids 50.. are ## continuations.
        Vocabulary {
            mask: 2,
            cls: Some(1),
            special: [0, 1, 2].into_iter().collect(),
            continuation: (0..100).map(|id| id >= 50).collect(),
        }
    }

    #[test]
    fn selection_follows_15_percent_and_80_10_10() {
        let vocab = vocab();
        let config = MlmConfig::default();
        let mut rng = SplitMix64::new(7);
        let row: Vec<u32> = std::iter::once(1)
            .chain((0..2000).map(|i| 3 + i % 40))
            .collect();
        let (mut selected, mut masked, mut random, mut kept) = (0, 0, 0, 0);
        for _ in 0..20 {
            let m = mask_row(&row, &vocab, &config, &mut rng);
            assert!(!m.selected[0], "[CLS] is never selected");
            assert_eq!(m.targets, row);
            for (j, &token) in row.iter().enumerate() {
                if !m.selected[j] {
                    assert_eq!(m.inputs[j], token);
                    continue;
                }
                selected += 1;
                if m.inputs[j] == 2 {
                    masked += 1;
                } else if m.inputs[j] == token {
                    kept += 1;
                } else {
                    assert!(!vocab.special.contains(&m.inputs[j]));
                    random += 1;
                }
            }
        }
        let total = 20.0 * 2000.0;
        let rate = selected as f64 / total;
        assert!((rate - 0.15).abs() < 0.01, "selected {rate}");
        let s = selected as f64;
        assert!(
            (masked as f64 / s - 0.8).abs() < 0.02,
            "{masked}/{selected}"
        );
        // A random replacement may draw the original token (1 in 97 here): counted as kept.
        assert!(
            (random as f64 / s - 0.1).abs() < 0.02,
            "{random}/{selected}"
        );
        assert!((kept as f64 / s - 0.1).abs() < 0.02, "{kept}/{selected}");
    }

    #[test]
    fn whole_word_selects_a_word_with_all_its_pieces() {
        let vocab = vocab();
        let config = MlmConfig {
            mask_prob: 0.3,
            whole_word: true,
            ..MlmConfig::default()
        };
        let mut rng = SplitMix64::new(3);
        // Words: 3 ##50 ##51 | 4 | 5 ##52 | ...
        let row: Vec<u32> = (0..300)
            .flat_map(|i| match i % 3 {
                0 => vec![3, 50, 51],
                1 => vec![4],
                _ => vec![5, 52],
            })
            .collect();
        let m = mask_row(&row, &vocab, &config, &mut rng);
        let mut j = 0;
        let mut words = 0;
        while j < row.len() {
            let mut end = j + 1;
            while end < row.len() && row[end] >= 50 {
                end += 1;
            }
            let first = m.selected[j];
            assert!(
                m.selected[j..end].iter().all(|s| *s == first),
                "word at {j} split"
            );
            words += usize::from(first);
            j = end;
        }
        assert!(words > 50, "{words}");
    }

    #[test]
    fn same_seed_same_masks() {
        let vocab = vocab();
        let row: Vec<u32> = (3..40).collect();
        let a = mask_row(&row, &vocab, &MlmConfig::default(), &mut SplitMix64::new(5));
        let b = mask_row(&row, &vocab, &MlmConfig::default(), &mut SplitMix64::new(5));
        assert_eq!((a.inputs, a.selected), (b.inputs, b.selected));
    }

    #[test]
    fn bad_keys_are_named() {
        let err = new_mlm_trainer(&json!({ "mask_prob": 1.5 }))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("mask_prob"), "{err}");
        let err = new_mlm_trainer(&json!({ "mask": 0.1 }))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("`mask`"), "{err}");
    }
}
