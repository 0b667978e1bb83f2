//! The `classify` trainer: fine-tunes an encoder and a task head on labelled sentences or
//! sentence pairs (GLUE-style). Before the first step it gives the model the head the data
//! needs (`Model::set_head`: n-way `sequence` classification, or `regression` for scores),
//! keeping one that already matches. Each example is `[CLS] a [SEP] (b [SEP])` with segment
//! ids, batches are padded with an attention mask, and the loss is cross-entropy over the
//! classes or mean squared error on the score. Examples are visited in a seeded order per epoch
//! (the cursor records epoch and position, so a resumed run continues exactly).
//!
//! A token-classification task (`LabelledSource::is_tagging`: `glue` `roles`, a JSONL file with
//! `tokens`/`labels`) gets a `token` head instead, its words aligned to sub-tokens by
//! [`crate::token_tagging`] (first piece labelled, the rest, the specials and the padding
//! ignored); the loss is cross-entropy over the labelled positions, `val_accuracy` the token
//! accuracy and `val_f1` the entity-level F1 (the default measure).
//!
//! Evaluation runs on the whole val split: `val_loss`, and `val_accuracy`, `val_f1`, `val_mcc`
//! (classes) or `val_pearson`, `val_spearman` (scores); `val_metric` is the task's own measure
//! (or `metric`) and `val_best` the best so far. With `patience`, training stops after that many
//! evaluations without improvement, and at the end the weights of the best evaluation are put
//! back.

use llmlab_plugin_api::candle::{DType, Device, Tensor};
use llmlab_plugin_api::config::TypedConfig;
use llmlab_plugin_api::prelude::*;
use llmlab_plugin_api::rng::SplitMix64;
use llmlab_plugin_api::serde_json::Map;
use llmlab_plugin_api::{Label, LabelledSource};
use llmlab_train::batches::{Batch, DataCursor};
use llmlab_train::train_loop::{Objective, Setup, TrainLoop};
use llmlab_train::{loss, TrainConfig};

use crate::last_token::{HeadWeights, LastTokenHead};
use crate::pair_encoding::{self, Encoded, Specials};
use crate::task_metrics;
use crate::token_tagging::{self, TaggedEncoding};

/// Measures a task may be judged by.
pub const METRICS: &[&str] = &["accuracy", "f1", "mcc", "pearson", "spearman"];

/// What a sequence head may pool (the `bert` head's `pooling`).
pub const POOLINGS: &[&str] = &["cls", "mean", "max"];

/// A trainer's `pooling` setting, refused naming the key and the allowed values.
pub fn pooling_setting(trainer: &str, v: &Value) -> Result<String> {
    v.as_str()
        .filter(|p| POOLINGS.contains(p))
        .map(str::to_string)
        .ok_or_else(|| {
            Error::invalid_config(
                trainer,
                format!("`pooling` must be one of {}, got {v}", POOLINGS.join(", ")),
            )
        })
}

/// What `classify` adds to the shared training keys.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ClassifyConfig {
    /// Evaluations without improvement before stopping; 0 = never stop early.
    pub patience: u64,
    /// The measure to select on; `None` = the task's own.
    pub metric: Option<String>,
    /// Cut over-long inputs instead of refusing them.
    pub truncate: bool,
    /// The sequence head's pooling; `None` = the model's head's, or `cls` for a new head.
    pub pooling: Option<String>,
}

pub const CLASSIFY_KEYS: &[(&str, &str)] = &[
    (
        "patience",
        "stop after this many evaluations without improvement of the validation metric, keeping the best weights; 0 = never",
    ),
    (
        "metric",
        "validation metric to select on: accuracy, f1, mcc, pearson or spearman; null = the task's own",
    ),
    (
        "truncate",
        "cut inputs longer than ctx (the longer sentence first) instead of refusing them",
    ),
    (
        "pooling",
        "what an encoder's sequence/regression head reads: \"cls\" (the [CLS] state, BERT's), \"mean\" or \"max\" over the real (unpadded) positions, each then the pooler's dense + tanh; null = the model's head's, cls for a new head",
    ),
];

impl ClassifyConfig {
    /// Takes `classify`'s own keys out of `fields` (the rest are [`TrainConfig`]'s).
    pub fn take(fields: &mut Map<String, Value>) -> Result<ClassifyConfig> {
        let mut config = ClassifyConfig::default();
        if let Some(v) = fields.remove("patience") {
            config.patience = v.as_u64().ok_or_else(|| {
                Error::invalid_config(
                    "classify",
                    format!("`patience` must be a count >= 0, got {v}"),
                )
            })?;
        }
        if let Some(v) = fields.remove("metric") {
            if !v.is_null() {
                let name = v.as_str().filter(|m| METRICS.contains(m)).ok_or_else(|| {
                    Error::invalid_config(
                        "classify",
                        format!("`metric` must be one of {}, got {v}", METRICS.join(", ")),
                    )
                })?;
                config.metric = Some(name.to_string());
            }
        }
        if let Some(v) = fields.remove("truncate") {
            config.truncate = v.as_bool().ok_or_else(|| {
                Error::invalid_config(
                    "classify",
                    format!("`truncate` must be true or false, got {v}"),
                )
            })?;
        }
        if let Some(v) = fields.remove("pooling") {
            if !v.is_null() {
                config.pooling = Some(pooling_setting("classify", &v)?);
            }
        }
        Ok(config)
    }
}

/// What the data says about the task.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    /// Class names; empty for regression.
    pub labels: Vec<String>,
    pub pair: bool,
    pub metric: String,
    /// Token classification: a tag per word.
    pub tagging: bool,
    /// Sequence heads: the `pooling` asked for (`None`: not asked).
    pub pooling: Option<String>,
}

impl Task {
    fn of(source: &dyn LabelledSource, config: &ClassifyConfig) -> Result<Task> {
        let labels = source.label_names();
        let metric = config.metric.clone().unwrap_or_else(|| source.metric());
        let regression = labels.is_empty();
        let tagging = source.is_tagging();
        if tagging && !matches!(metric.as_str(), "accuracy" | "f1") {
            return Err(Error::invalid_config(
                "classify",
                format!(
                    "`metric` {metric} does not fit {} (a token-classification task: accuracy \
                     (per token) or f1 (entity-level))",
                    source.name()
                ),
            ));
        }
        if regression != matches!(metric.as_str(), "pearson" | "spearman") {
            return Err(Error::invalid_config(
                "classify",
                format!(
                    "`metric` {metric} does not fit {} ({})",
                    source.name(),
                    if regression {
                        "a regression task: pearson or spearman"
                    } else {
                        "a classification task: accuracy, f1 or mcc"
                    }
                ),
            ));
        }
        if !regression && labels.len() < 2 {
            return Err(Error::Data(format!(
                "{}: a classification task needs at least 2 labels, it has {:?}",
                source.name(),
                labels
            )));
        }
        if let (true, Some(pooling)) = (tagging, &config.pooling) {
            if pooling != "cls" {
                return Err(Error::invalid_config(
                    "classify",
                    format!(
                        "`pooling` {pooling} does not fit {} (a token-classification task: its \
                         head classifies every position, nothing is pooled)",
                        source.name()
                    ),
                ));
            }
        }
        Ok(Task {
            labels,
            pair: source.is_pair(),
            metric,
            tagging,
            pooling: config.pooling.clone().filter(|_| !tagging),
        })
    }

    /// The head `Model::set_head` gets for this task. `pooling` appears only when it is not
    /// `cls`, as `bert` reports its heads, so a matching head compares equal.
    pub fn head(&self) -> Value {
        let mut head = if self.tagging {
            json!({ "kind": "token", "num_labels": self.labels.len(),
                    "labels": self.labels, "pair": false })
        } else if self.labels.is_empty() {
            json!({ "kind": "regression", "num_labels": 1, "pair": self.pair })
        } else {
            json!({ "kind": "sequence", "num_labels": self.labels.len(),
                    "labels": self.labels, "pair": self.pair })
        };
        if let Some(pooling) = self.pooling.as_deref().filter(|p| *p != "cls") {
            head["pooling"] = json!(pooling);
        }
        head
    }
}

/// One example ready for batching.
#[derive(Debug, Clone)]
struct Row {
    encoded: Encoded,
    label: Label,
    /// Token classification: the tag at each position (`None`: no target).
    tags: Option<Vec<Option<usize>>>,
}

fn labelled<'a>(job: &TrainJob<'a>) -> Result<(&'a dyn LabelledSource, &'a dyn Tokenizer)> {
    match (job.labelled, job.tokenizer) {
        (Some(source), Some(tokenizer)) => Ok((source, tokenizer)),
        (Some(_), None) => Err(Error::Data(
            "the classify trainer needs the tokenizer that encodes its texts; the job has none"
                .into(),
        )),
        (None, _) => Err(Error::Data(format!(
            "the classify trainer learns from labelled texts (glue(..) tasks or labelled(path)) \
             with a tokenizer, the job has {}",
            job.describe()
        ))),
    }
}

/// Encodes every example of `split`, refusing single sentences in a pair task.
fn encode_split(
    source: &dyn LabelledSource,
    tokenizer: &dyn Tokenizer,
    split: Split,
    task: &Task,
    ctx: usize,
    truncate: bool,
) -> Result<Vec<Row>> {
    let specials = Specials::of(tokenizer)?;
    let split_name = match split {
        Split::Train => "train",
        Split::Val => "val",
    };
    (0..source.len(split))
        .map(|i| {
            let example = source.get(split, i);
            let what = || format!("{}: {split_name} example {i}", source.name());
            if task.tagging {
                let tagged = source.tagged(split, i).ok_or_else(|| {
                    Error::Data(format!(
                        "{}: a token-classification task without tags",
                        what()
                    ))
                })?;
                if let Some(&bad) = tagged.tags.iter().find(|&&t| t >= task.labels.len()) {
                    return Err(Error::Data(format!(
                        "{}: tag index {bad} is not one of the task's {} labels {:?}",
                        what(),
                        task.labels.len(),
                        task.labels
                    )));
                }
                let TaggedEncoding { encoded, tags } = token_tagging::encode_words(
                    tokenizer, specials, &tagged, ctx, truncate, &what,
                )?;
                return Ok(Row {
                    encoded,
                    label: example.label,
                    tags: Some(tags),
                });
            }
            if task.pair && example.text_pair.is_none() {
                return Err(Error::Data(format!(
                    "{}: the task is a sentence-pair task, but the example has a single sentence \
                     (no text_pair): {:?}",
                    what(),
                    example.text
                )));
            }
            match (&example.label, task.labels.len()) {
                (Label::Class(c), n) if *c >= n => {
                    return Err(Error::Data(format!(
                        "{}: label index {c} is not one of the task's {n} labels {:?}",
                        what(),
                        task.labels
                    )))
                }
                (Label::Score(_), n) if n > 0 => {
                    return Err(Error::Data(format!(
                        "{}: a score label in a classification task (labels {:?})",
                        what(),
                        task.labels
                    )))
                }
                (Label::Class(_), 0) => {
                    return Err(Error::Data(format!(
                        "{}: a class label in a regression task",
                        what()
                    )))
                }
                _ => {}
            }
            let encoded = pair_encoding::encode(
                tokenizer,
                specials,
                &example.text,
                example.text_pair.as_deref(),
                ctx,
                truncate,
                &what,
            )?;
            Ok(Row {
                encoded,
                label: example.label,
                tags: None,
            })
        })
        .collect()
}

fn rows_to_batch(rows: &[&Row], pad: u32, device: &Device) -> Result<Batch> {
    let encoded: Vec<&Encoded> = rows.iter().map(|r| &r.encoded).collect();
    let (inputs, forward_inputs) = pair_encoding::pad(&encoded, pad, device)?;
    if rows[0].tags.is_some() {
        let tags: Vec<&[Option<usize>]> = rows
            .iter()
            .map(|r| r.tags.as_deref().unwrap_or(&[]))
            .collect();
        let (targets, mask, kept) = token_tagging::targets(&tags, inputs.dim(1)?, device)?;
        return Ok(Batch {
            tokens: inputs.elem_count(),
            inputs,
            targets,
            mask: Some(mask),
            loss_tokens: kept,
            forward_inputs,
        });
    }
    let targets = match rows[0].label {
        Label::Class(_) => {
            let ids: Vec<u32> = rows
                .iter()
                .map(|r| match r.label {
                    Label::Class(c) => c as u32,
                    Label::Score(_) => 0,
                })
                .collect();
            Tensor::from_vec(ids, rows.len(), device)?
        }
        Label::Score(_) => {
            let scores: Vec<f32> = rows
                .iter()
                .map(|r| match r.label {
                    Label::Score(s) => s as f32,
                    Label::Class(c) => c as f32,
                })
                .collect();
            Tensor::from_vec(scores, rows.len(), device)?
        }
    };
    Ok(Batch {
        tokens: inputs.elem_count(),
        inputs,
        targets,
        mask: None,
        loss_tokens: rows.len(),
        forward_inputs,
    })
}

/// The loss of head outputs `logits` on the batch's labels (per-token ones over the mask's
/// positions only).
fn head_loss(logits: &Tensor, batch: &Batch) -> Result<Tensor> {
    let targets = &batch.targets;
    if let Some(mask) = &batch.mask {
        return loss::masked_cross_entropy(logits, targets, mask, batch.loss_tokens);
    }
    if targets.dtype() == DType::F32 {
        let predicted = logits.flatten_all()?;
        return Ok((predicted - targets)?.sqr()?.mean_all()?);
    }
    let (b, n) = logits.dims2()?;
    loss::cross_entropy(&logits.reshape((b, 1, n))?, &targets.reshape((b, 1))?)
}

/// Labelled examples in a shuffled order per epoch, with early stopping on the val metric.
#[derive(Default)]
pub struct Classification {
    config: ClassifyConfig,
    task: Option<Task>,
    seed: u64,
    batch_size: usize,
    pad: u32,
    train: Vec<Row>,
    val: Vec<Row>,
    order: Option<(u64, Vec<usize>)>,
    best: Option<(f64, Vec<(String, Tensor)>)>,
    evaluations_without_improvement: u64,
    stop: bool,
}

impl Classification {
    pub fn new(config: ClassifyConfig) -> Classification {
        Classification {
            config,
            ..Classification::default()
        }
    }

    fn epoch_order(&mut self, epoch: u64) -> &[usize] {
        if self.order.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let mut rng = SplitMix64::new(
                self.seed ^ 0x434c_4153_5349_4659 ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            );
            self.order = Some((epoch, rng.permutation(self.train.len())));
        }
        self.order.as_ref().map_or(&[], |(_, order)| order)
    }

    fn measures(&self, logits: &[Vec<f32>], gold: &[Label]) -> StepMetrics {
        let mut m = StepMetrics::new();
        let task = self.task.as_ref().expect("prepared");
        if task.labels.is_empty() {
            let predicted: Vec<f64> = logits.iter().map(|l| l[0] as f64).collect();
            let gold: Vec<f64> = gold
                .iter()
                .map(|l| match l {
                    Label::Score(s) => *s,
                    Label::Class(c) => *c as f64,
                })
                .collect();
            m.insert(
                "val_pearson".into(),
                task_metrics::pearson(&predicted, &gold),
            );
            m.insert(
                "val_spearman".into(),
                task_metrics::spearman(&predicted, &gold),
            );
        } else {
            let predicted: Vec<usize> = logits
                .iter()
                .map(|l| {
                    l.iter()
                        .enumerate()
                        .max_by(|a, b| a.1.total_cmp(b.1))
                        .map_or(0, |(i, _)| i)
                })
                .collect();
            let gold: Vec<usize> = gold
                .iter()
                .map(|l| match l {
                    Label::Class(c) => *c,
                    Label::Score(s) => *s as usize,
                })
                .collect();
            let n = task.labels.len();
            m.insert(
                "val_accuracy".into(),
                task_metrics::accuracy(&predicted, &gold),
            );
            m.insert("val_f1".into(), task_metrics::f1(&predicted, &gold, n));
            m.insert("val_mcc".into(), task_metrics::mcc(&predicted, &gold, n));
        }
        m
    }
}

impl Objective for Classification {
    fn prepare(&mut self, data: &TrainJob<'_>, setup: &Setup) -> Result<()> {
        let (source, tokenizer) = labelled(data)?;
        if tokenizer.vocab_size() > setup.model_vocab_size {
            return Err(Error::Data(format!(
                "the tokenizer's vocabulary ({} tokens) is larger than the model's vocab_size ({})",
                tokenizer.vocab_size(),
                setup.model_vocab_size
            )));
        }
        let task = Task::of(source, &self.config)?;
        self.train = encode_split(
            source,
            tokenizer,
            Split::Train,
            &task,
            setup.ctx,
            self.config.truncate,
        )?;
        if self.train.is_empty() {
            return Err(Error::Data(format!(
                "{}: the train split is empty",
                source.name()
            )));
        }
        self.val = if setup.eval {
            encode_split(
                source,
                tokenizer,
                Split::Val,
                &task,
                setup.ctx,
                self.config.truncate,
            )?
        } else {
            Vec::new()
        };
        self.pad = Specials::of(tokenizer)?.pad;
        self.seed = setup.seed;
        self.batch_size = setup.batch_size;
        self.task = Some(task);
        Ok(())
    }

    fn next_batch(
        &mut self,
        _data: &TrainJob<'_>,
        _rng: &mut SplitMix64,
        cursor: &mut DataCursor,
        device: &Device,
    ) -> Result<Batch> {
        let n = self.train.len();
        let mut picked = Vec::with_capacity(self.batch_size);
        while picked.len() < self.batch_size {
            if cursor.position as usize >= n {
                cursor.epoch += 1;
                cursor.position = 0;
            }
            let index = self.epoch_order(cursor.epoch)[cursor.position as usize];
            picked.push(index);
            cursor.position += 1;
        }
        let rows: Vec<&Row> = picked.iter().map(|&i| &self.train[i]).collect();
        rows_to_batch(&rows, self.pad, device)
    }

    fn eval_batches(&mut self, _data: &TrainJob<'_>, device: &Device) -> Result<Vec<Batch>> {
        if self.val.is_empty() {
            tracing::warn!("classify: the val split is empty; no evaluation, no early stopping");
        }
        self.val
            .chunks(self.batch_size.max(1))
            .map(|chunk| {
                let rows: Vec<&Row> = chunk.iter().collect();
                rows_to_batch(&rows, self.pad, device)
            })
            .collect()
    }

    fn loss(&mut self, logits: &Tensor, batch: &Batch) -> Result<Tensor> {
        head_loss(logits, batch)
    }

    fn evaluate(&mut self, model: &dyn Model, batches: &[Batch]) -> Result<StepMetrics> {
        let (mut total, mut count) = (0f64, 0usize);
        let mut outputs: Vec<Vec<f32>> = Vec::new();
        // Token classification: per val sentence, the predicted and gold tags of its words.
        let (mut predicted_tags, mut gold_tags) = (Vec::new(), Vec::new());
        let rows_per_batch = self.batch_size.max(1);
        for (b, batch) in batches.iter().enumerate() {
            let logits = model
                .forward_with(
                    &batch.inputs,
                    &batch.forward_inputs,
                    &ForwardOptions::inference(),
                )?
                .logits
                .to_dtype(DType::F32)?;
            total +=
                head_loss(&logits, batch)?.to_scalar::<f32>()? as f64 * batch.loss_tokens as f64;
            count += batch.loss_tokens;
            if logits.rank() == 3 {
                let rows = &self.val[b * rows_per_batch..];
                for (row_logits, row) in logits.to_vec3::<f32>()?.iter().zip(rows) {
                    let tags = row.tags.as_deref().unwrap_or(&[]);
                    let (p, g) = token_tagging::labelled_predictions(row_logits, tags);
                    predicted_tags.push(p);
                    gold_tags.push(g);
                }
            } else {
                outputs.extend(logits.to_vec2::<f32>()?);
            }
        }
        let mut metrics = StepMetrics::new();
        if count == 0 {
            return Ok(metrics);
        }
        metrics.insert("val_loss".into(), total / count as f64);
        let task = self.task.as_ref().expect("prepared");
        if task.tagging {
            let flat = |t: &[Vec<usize>]| t.concat();
            metrics.insert(
                "val_accuracy".into(),
                task_metrics::accuracy(&flat(&predicted_tags), &flat(&gold_tags)),
            );
            metrics.insert(
                "val_f1".into(),
                task_metrics::entity_f1(&predicted_tags, &gold_tags, &task.labels),
            );
        } else {
            let gold: Vec<Label> = self.val.iter().map(|r| r.label).collect();
            metrics.extend(self.measures(&outputs, &gold));
        }
        let value = metrics
            .get(&format!("val_{}", task.metric))
            .copied()
            .unwrap_or(f64::NAN);
        metrics.insert("val_metric".into(), value);
        if self.best.as_ref().is_none_or(|(best, _)| value > *best) {
            let weights = model
                .parameters()
                .into_iter()
                .map(|(n, v)| Ok((n, v.as_tensor().copy()?)))
                .collect::<Result<Vec<_>>>()?;
            self.best = Some((value, weights));
            self.evaluations_without_improvement = 0;
        } else {
            self.evaluations_without_improvement += 1;
            if self.config.patience > 0
                && self.evaluations_without_improvement >= self.config.patience
            {
                self.stop = true;
            }
        }
        if let Some((best, _)) = &self.best {
            metrics.insert("val_best".into(), *best);
        }
        Ok(metrics)
    }

    fn should_stop(&self) -> bool {
        self.stop
    }

    /// Puts back the weights of the best evaluation (with `patience`).
    fn finish(&mut self, model: &dyn Model) -> Result<()> {
        if self.config.patience == 0 {
            return Ok(());
        }
        if let Some((_, weights)) = &self.best {
            let params = model.parameters();
            for (name, saved) in weights {
                if let Some((_, var)) = params.iter().find(|(n, _)| n == name) {
                    var.set(saved)?;
                }
            }
        }
        Ok(())
    }
}

/// `classify` = the step loop on [`Classification`], after giving the model the task's head
/// (its own, or for a decoder without heads a last-token head the trainer keeps,
/// [`crate::last_token`]).
pub struct ClassifyTrainer {
    inner: TrainLoop<Classification>,
    config: ClassifyConfig,
    /// The head of a model that has none of its own (decoders).
    own_head: Option<HeadWeights>,
}

impl ClassifyTrainer {
    /// Puts the head the data needs on `model` unless it has that head already; a model that
    /// does not take heads gets (once) a trainer-owned last-token head.
    fn ensure_head(&mut self, model: &dyn Model, job: &TrainJob<'_>) -> Result<()> {
        let (source, _) = labelled(job)?;
        let task = Task::of(source, &self.config)?;
        let mut wanted = task.head();
        let current = model.head();
        // Unset `pooling` keeps the pooling of a head the model already has (a saved classifier
        // trained further), so only the task decides whether the head is replaced.
        if let (None, Some(pooling)) = (
            &task.pooling,
            current.as_ref().and_then(|h| h.get("pooling")),
        ) {
            if !task.tagging {
                wanted["pooling"] = pooling.clone();
            }
        }
        if self.own_head.is_some() || current.as_ref() == Some(&wanted) {
            return Ok(());
        }
        match model.set_head(Some(&wanted)) {
            Ok(_) => Ok(()),
            Err(Error::Unsupported { .. }) if task.tagging => Err(Error::unsupported(
                model.name(),
                format!(
                    "token classification ({}): it needs a model with a token head, e.g. \
                     `bert` (decoders get a last-token head for sentence tasks only)",
                    source.name()
                ),
            )),
            Err(Error::Unsupported { .. })
                if task.pooling.as_deref().is_some_and(|p| p != "cls") =>
            {
                Err(Error::invalid_config(
                    "classify",
                    format!(
                        "`pooling` {} is for encoder heads; {} takes no head of its own and \
                         gets a last-token head (leave pooling unset)",
                        task.pooling.as_deref().unwrap_or_default(),
                        model.name()
                    ),
                ))
            }
            Err(Error::Unsupported { .. }) => {
                let labels = task.labels.len().max(1);
                let seed = self.inner.train_config().seed.unwrap_or(0);
                self.own_head = Some(HeadWeights::new(model, wanted, labels, seed)?);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

impl Trainer for ClassifyTrainer {
    fn name(&self) -> &str {
        "classify"
    }
    fn config(&self) -> Value {
        let mut config = self.inner.config();
        if let Value::Object(map) = &mut config {
            map.insert("patience".into(), json!(self.config.patience));
            map.insert("metric".into(), json!(self.config.metric));
            map.insert("truncate".into(), json!(self.config.truncate));
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
        self.ensure_head(model, job)?;
        match self.own_head.clone() {
            Some(head) => self
                .inner
                .step(&LastTokenHead { base: model, head }, job, ctx),
            None => self.inner.step(model, job, ctx),
        }
    }
    fn fit(&mut self, model: &dyn Model, job: &TrainJob<'_>, ctx: &Context) -> Result<StepMetrics> {
        self.ensure_head(model, job)?;
        match self.own_head.clone() {
            Some(head) => self
                .inner
                .fit(&LastTokenHead { base: model, head }, job, ctx),
            None => self.inner.fit(model, job, ctx),
        }
    }
    fn steps_done(&self) -> u64 {
        self.inner.steps_done()
    }
}

/// The `classify` trainer from a JSON config (the shared training keys plus [`CLASSIFY_KEYS`]).
pub fn new_classify_trainer(config: &Value) -> Result<ClassifyTrainer> {
    let mut fields = match config {
        Value::Null => Map::new(),
        Value::Object(map) => map.clone(),
        other => {
            return Err(Error::invalid_config(
                "classify",
                format!("expected a map of settings, got {other}"),
            ))
        }
    };
    let classify = ClassifyConfig::take(&mut fields)?;
    let train = TrainConfig::from_json("classify", &Value::Object(fields))?;
    Ok(ClassifyTrainer {
        inner: TrainLoop::new("classify", train, Classification::new(classify.clone())),
        config: classify,
        own_head: None,
    })
}

pub struct ClassifyFactory;

impl Factory for ClassifyFactory {
    fn name(&self) -> &'static str {
        "classify"
    }
    fn kind(&self) -> Kind {
        Kind::Trainer
    }
    fn about(&self) -> &'static str {
        "fine-tunes an encoder + task head on labelled sentences/pairs: accuracy/F1/MCC or Pearson/Spearman, early stopping"
    }
    fn config_keys(&self) -> Vec<ConfigKey> {
        crate::mlm::keys_with(
            CLASSIFY_KEYS,
            json!({ "patience": 0, "metric": null, "truncate": false, "pooling": null }),
        )
    }
    fn create(&self, config: &Value, _: &Context) -> Result<Instance> {
        Ok(Instance::Trainer(Box::new(new_classify_trainer(config)?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn losses_are_cross_entropy_and_squared_error() {
        let dev = Device::Cpu;
        let logits = Tensor::new(&[[0f32, 0.0], [2.0, 0.0]], &dev).unwrap();
        let classes = Tensor::new(&[0u32, 0], &dev).unwrap();
        let batch = |targets: Tensor| Batch {
            tokens: 2,
            inputs: Tensor::zeros((2, 1), DType::U32, &dev).unwrap(),
            targets,
            mask: None,
            loss_tokens: 2,
            forward_inputs: ForwardInputs::default(),
        };
        let ce = head_loss(&logits, &batch(classes))
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let expected = (2f32.ln() + (1.0 + (-2f32).exp()).ln()) / 2.0;
        assert!((ce - expected).abs() < 1e-5, "{ce} vs {expected}");
        let scores = Tensor::new(&[[1f32], [3.0]], &dev).unwrap();
        let gold = Tensor::new(&[2f32, 3.0], &dev).unwrap();
        let mse = head_loss(&scores, &batch(gold))
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((mse - 0.5).abs() < 1e-6);
    }

    #[test]
    fn token_loss_ignores_padding_and_unlabelled_pieces() {
        let dev = Device::Cpu;
        let row = |ids: Vec<u32>, tags: Vec<Option<usize>>| Row {
            encoded: Encoded {
                types: vec![0; ids.len()],
                ids,
            },
            label: Label::Class(0),
            tags: Some(tags),
        };
        let long = row(vec![1, 5, 6, 2], vec![None, Some(1), None, None]);
        let short = row(vec![1, 7, 2], vec![None, Some(2), None]);
        let batch = rows_to_batch(&[&long, &short], 0, &dev).unwrap();
        assert_eq!(batch.loss_tokens, 2);
        // Logits favour class 0 everywhere, hugely so where nothing is labelled (specials,
        // the continuation piece, the padding): those positions must not move the loss.
        let mut values = vec![0f32; 2 * 4 * 3];
        for (i, v) in values.iter_mut().enumerate() {
            let (position, class) = (i / 3, i % 3);
            if class == 0 && !matches!(position, 1 | 5) {
                *v = 100.0;
            }
        }
        let logits = Tensor::from_vec(values, (2, 4, 3), &dev).unwrap();
        let loss = head_loss(&logits, &batch)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        // Each labelled position has uniform logits over 3 classes.
        assert!((loss - 3f32.ln()).abs() < 1e-5, "{loss}");
    }

    #[test]
    fn bad_keys_are_named() {
        let err = new_classify_trainer(&json!({ "metric": "auc" }))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("`metric`") && err.contains("mcc"), "{err}");
        let err = new_classify_trainer(&json!({ "patience": -1 }))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("patience"), "{err}");
        let err = new_classify_trainer(&json!({ "pooling": "avg" }))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("`pooling`") && err.contains("cls, mean, max") && err.contains("avg"),
            "{err}"
        );
    }
}
