//! The optimisation loop `lm` and `sft` share. A step is `grad_accum` micro-batches (forward,
//! loss, backward, gradients summed), global-norm clipping, one AdamW update at the scheduled
//! learning rate, then evaluation and checkpointing when due. `fit` repeats steps up to `steps`,
//! reporting metrics and progress, polling Ctrl-C, and checkpointing at the end.
//!
//! What differs between the trainers, where batches come from, is an [`Objective`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use llmlab_plugin_api::candle::{Device, Tensor, Var};
use llmlab_plugin_api::config::TypedConfig;
use llmlab_plugin_api::serde_json::Value;
use llmlab_plugin_api::{
    tracing, Context, Error, ForwardOptions, ForwardOutput, Model, Result, StepMetrics, TrainJob,
    Trainer,
};

use crate::adamw::{AdamW, AdamWSettings};
use crate::batches::{Batch, DataCursor};
use crate::clip;
use crate::config::TrainConfig;
use crate::data_identity::DataIdentity;
use crate::data_parallel::{self, DataParallel};
use crate::evaluate::evaluate;
use crate::gradients;
use crate::loss;
use crate::precision::{LossScaler, Verdict};
use crate::rng::SplitMix64;
use crate::row_split;
use crate::schedule::Schedule;
use crate::trainer_checkpoint::{self as checkpoint, Manifest, ModelInfo};

/// What the trainer resolved before its first step.
#[derive(Debug, Clone, Copy)]
pub struct Setup {
    pub batch_size: usize,
    pub ctx: usize,
    pub seed: u64,
    pub eval_batches: usize,
    /// Whether evaluation is on (`eval_every > 0`).
    pub eval: bool,
    pub model_vocab_size: usize,
}

/// Where a trainer's batches come from.
pub trait Objective: Send {
    /// Checks that `data` is the kind this trainer learns from and fits the setup.
    fn prepare(&mut self, data: &TrainJob<'_>, setup: &Setup) -> Result<()>;
    /// The next training micro-batch, advancing `rng` and `cursor`.
    fn next_batch(
        &mut self,
        data: &TrainJob<'_>,
        rng: &mut SplitMix64,
        cursor: &mut DataCursor,
        device: &Device,
    ) -> Result<Batch>;
    /// The fixed evaluation set (may be empty: no val data).
    fn eval_batches(&mut self, data: &TrainJob<'_>, device: &Device) -> Result<Vec<Batch>>;
    /// A training micro-batch's loss from the model's f32 logits. Default: cross-entropy on
    /// the batch's targets (masked when it has a mask).
    fn loss(&mut self, logits: &Tensor, batch: &Batch) -> Result<Tensor> {
        hard_label_loss(logits, batch)
    }
    /// Before a micro-batch's pass, with the model being trained: may replace the batch
    /// (distillation's on-policy batches are continuations the student samples itself).
    fn prepare_batch(&mut self, model: &dyn Model, batch: Batch) -> Result<Batch> {
        let _ = model;
        Ok(batch)
    }
    /// The evaluation on the fixed set: `val_loss` and `val_ppl` by default; objectives add
    /// their own measures (MLM: masked-token accuracy; classification: accuracy, F1, MCC,
    /// Pearson/Spearman) or replace the loss (a task head's).
    fn evaluate(&mut self, model: &dyn Model, batches: &[Batch]) -> Result<StepMetrics> {
        let mut metrics = StepMetrics::new();
        if let Some(eval) = evaluate(model, batches)? {
            metrics.insert("val_loss".into(), eval.loss);
            metrics.insert("val_ppl".into(), eval.ppl);
        }
        Ok(metrics)
    }
    /// Whether training should stop before `steps` (early stopping on a validation metric);
    /// asked after each step. Default: never.
    fn should_stop(&self) -> bool {
        false
    }
    /// At the end of `fit` (steps done or stopped early), before the final checkpoint: e.g.
    /// put back the weights of the best evaluation. Default: nothing.
    fn finish(&mut self, model: &dyn Model) -> Result<()> {
        let _ = model;
        Ok(())
    }
    /// Whether the loss is [`hard_label_loss`] of the batch alone, so the rows of a micro-batch
    /// may be split over threads (`row_parallel`) and their losses weighted back together.
    /// Default: `false` (objectives with their own loss keep one pass per micro-batch).
    fn row_parallel(&self) -> bool {
        false
    }
    /// A distillation teacher; only the `distill` objective takes one.
    fn set_teacher(&mut self, teacher: std::sync::Arc<dyn Model>) -> Result<()> {
        let _ = teacher;
        Err(Error::msg(
            "this trainer takes no `teacher` (distillation is trainer(\"distill\", #{ teacher: t, .. }))",
        ))
    }
}

/// Cross-entropy of `logits` on the batch's targets, over the mask's positions when it has one.
pub fn hard_label_loss(logits: &Tensor, batch: &Batch) -> Result<Tensor> {
    match &batch.mask {
        None => loss::cross_entropy(logits, &batch.targets),
        Some(mask) => loss::masked_cross_entropy(logits, &batch.targets, mask, batch.loss_tokens),
    }
}

/// A trainer's state once it has seen its model: everything a checkpoint holds besides weights.
struct Run {
    schedule: Schedule,
    optimizer: AdamW,
    rng: SplitMix64,
    cursor: DataCursor,
    step: u64,
    eval_set: Option<Vec<Batch>>,
    last_checkpoint: Option<u64>,
    /// f16 only: the dynamic loss scale.
    scaler: Option<LossScaler>,
    /// What the run trains on, recorded in checkpoints and checked on resume.
    data: DataIdentity,
    /// With `data_parallel`: this rank's share of the job (`data_parallel.rs`).
    dp: Option<DataParallel>,
}

pub struct TrainLoop<O: Objective> {
    name: &'static str,
    config: TrainConfig,
    objective: O,
    run: Option<Run>,
}

impl<O: Objective> TrainLoop<O> {
    pub fn new(name: &'static str, config: TrainConfig, objective: O) -> Self {
        TrainLoop {
            name,
            config,
            objective,
            run: None,
        }
    }

    pub fn train_config(&self) -> &TrainConfig {
        &self.config
    }

    /// Turns the fused CPU AdamW update on or off (tests compare the two paths).
    pub fn set_fused_adamw(&mut self, fused: bool) -> Result<()> {
        let run = self
            .run
            .as_mut()
            .ok_or_else(|| Error::msg("the trainer has not started yet"))?;
        run.optimizer.set_fused(fused);
        Ok(())
    }

    fn start(&mut self, model: &dyn Model, data: &TrainJob<'_>, ctx: &Context) -> Result<()> {
        if self.run.is_some() {
            return Ok(());
        }
        let c = &self.config;
        let ctx_len = c.ctx.unwrap_or(model.ctx_len());
        if ctx_len > model.ctx_len() {
            return Err(Error::invalid_config(
                self.name,
                format!(
                    "`ctx` = {ctx_len} exceeds the model's context length {}",
                    model.ctx_len()
                ),
            ));
        }
        let setup = Setup {
            batch_size: c.batch_size,
            ctx: ctx_len,
            seed: c.seed.unwrap_or(ctx.seed),
            eval_batches: c.eval_batches,
            eval: c.eval_every > 0,
            model_vocab_size: model.vocab_size(),
        };
        crate::memory::ensure_training_fits(self.name, model, &setup)?;
        self.objective.prepare(data, &setup)?;
        let mut run = Run {
            schedule: Schedule {
                lr: c.lr,
                min_lr: c.min_lr,
                warmup: c.warmup,
                total_steps: c.steps,
            },
            optimizer: AdamW::new(AdamWSettings {
                beta1: c.beta1,
                beta2: c.beta2,
                eps: c.eps,
                weight_decay: c.weight_decay,
            }),
            rng: SplitMix64::new(setup.seed),
            cursor: DataCursor::default(),
            step: 0,
            eval_set: None,
            last_checkpoint: None,
            scaler: c
                .precision
                .scales_loss()
                .then(|| LossScaler::new(c.loss_scale, c.loss_scale_window)),
            data: DataIdentity::of(data)?,
            dp: DataParallel::new(self.name, c)?,
        };
        if let Some(dp) = &run.dp {
            dp.check_same_start(&data_parallel::start_summary(
                self.name,
                &self.config.to_json(),
                model,
                &run.data,
            )?)?;
        }
        if let Some(path) = &c.resume {
            self.resume(&mut run, model, PathBuf::from(path))?;
            // Records a killed process wrote after this checkpoint are written again from here.
            ctx.metrics.rewind(run.step);
        }
        if let Some(dp) = run.dp.as_mut() {
            dp.sync_params(&model.parameters())?;
        }
        self.run = Some(run);
        Ok(())
    }

    /// Loads weights, moments, step, RNG and cursor from the checkpoint at `path`.
    fn resume(&self, run: &mut Run, model: &dyn Model, path: PathBuf) -> Result<()> {
        let dir = checkpoint::resolve(&path)?;
        let ckpt = checkpoint::load(&dir)?;
        let m = &ckpt.manifest;
        if m.trainer != self.name {
            return Err(Error::Data(format!(
                "{}: a checkpoint of the {} trainer cannot resume the {} trainer",
                dir.display(),
                m.trainer,
                self.name
            )));
        }
        // The cursor and RNG position the run in *its* data; on other data they mean nothing.
        if let Some(why) = m
            .data
            .as_ref()
            .and_then(|saved| saved.difference(&run.data))
        {
            return Err(Error::Data(format!(
                "{}: this checkpoint was trained on different data ({why}); resume with the \
                 dataset it was trained on, or start a fresh run (resume: null) to train on this one",
                dir.join(checkpoint::MANIFEST).display()
            )));
        }
        let params = model.parameters();
        let weights_file = dir.join(checkpoint::MODEL_FILE);
        for (name, var) in &params {
            let saved = ckpt.weights.get(name).ok_or_else(|| {
                Error::Data(format!(
                    "{}: no parameter `{name}`; the checkpoint is of a different model ({})",
                    weights_file.display(),
                    m.model.name
                ))
            })?;
            if saved.shape() != var.shape() {
                return Err(Error::Data(format!(
                    "{}: parameter `{name}` has shape {:?}, the model's has {:?}",
                    weights_file.display(),
                    saved.dims(),
                    var.dims()
                )));
            }
            var.set(&saved.to_device(var.device())?.to_dtype(var.dtype())?)?;
        }
        let state = model.state();
        for (name, _) in &state {
            let saved = ckpt.weights.get(name).ok_or_else(|| {
                Error::Data(format!(
                    "{}: no state tensor `{name}` (the model's routing state); the checkpoint is of a different model",
                    weights_file.display()
                ))
            })?;
            model.set_state(name, saved)?;
        }
        if let Some(extra) = ckpt
            .weights
            .keys()
            .find(|k| !params.iter().any(|(n, _)| n == *k) && !state.iter().any(|(n, _)| n == *k))
        {
            return Err(Error::Data(format!(
                "{}: parameter `{extra}` is not in the model; the checkpoint is of a different model",
                weights_file.display()
            )));
        }
        // ZeRO: this rank keeps the moments of the parameters it owns.
        let owned = match run.dp.as_mut() {
            Some(dp) => dp.owned(&params),
            None => params.clone(),
        };
        run.optimizer
            .load(m.optimizer_steps, &ckpt.moments, &owned)?;
        run.step = m.step;
        run.rng = SplitMix64::from_state(m.rng_state()?);
        run.cursor = m.cursor;
        run.last_checkpoint = Some(m.step);
        if let (Some(scaler), Some(saved)) = (run.scaler.as_mut(), m.loss_scale) {
            *scaler = saved;
        }
        let ignored = [
            "steps",
            "resume",
            "checkpoint_every",
            "log_every",
            "eval_every",
            "eval_batches",
            "data_parallel",
            "zero",
            "bucket_mb",
        ];
        if let (Value::Object(saved), Value::Object(now)) = (&m.config, self.config.to_json()) {
            for (key, value) in &now {
                if !ignored.contains(&key.as_str()) && saved.get(key) != Some(value) {
                    let before = saved
                        .get(key)
                        .map_or_else(|| "absent".to_string(), |v| v.to_string());
                    tracing::warn!(
                        "resume: `{key}` was {before} in the checkpoint and is {value} now; the run will not match an uninterrupted one"
                    );
                }
            }
        }
        tracing::info!(
            "resumed {} from {} at step {}",
            self.name,
            dir.display(),
            m.step
        );
        Ok(())
    }

    fn save_checkpoint(&mut self, model: &dyn Model, ctx: &Context) -> Result<()> {
        let (Some(run_dir), Some(run)) = (&ctx.run_dir, self.run.as_mut()) else {
            return Ok(());
        };
        let params = model.parameters();
        // The model's non-trainable state (MoE selection biases) rides along with the weights.
        let weights: Vec<(String, Tensor)> = params
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
            .chain(model.state())
            .collect();
        // ZeRO: every rank takes part in gathering the moments; rank 0 alone writes.
        let moments = match run.dp.as_mut() {
            Some(dp) => dp.moments(&run.optimizer, &params)?,
            None => run.optimizer.moments_to_tensors(&params)?,
        };
        if !data_parallel::writes(run.dp.as_ref()) {
            run.last_checkpoint = Some(run.step);
            return Ok(());
        }
        let manifest = Manifest {
            format: checkpoint::FORMAT.into(),
            version: checkpoint::VERSION,
            trainer: self.name.into(),
            step: run.step,
            optimizer_steps: run.optimizer.steps(),
            rng_state: checkpoint::format_rng_state(run.rng.state()),
            cursor: run.cursor,
            config: self.config.to_json(),
            model: ModelInfo {
                name: model.name().into(),
                config: model.config(),
            },
            files: BTreeMap::new(),
            loss_scale: run.scaler,
            data: Some(run.data.clone()),
        };
        checkpoint::save(
            &run_dir.join(checkpoint::DIR_NAME),
            manifest,
            &weights,
            &moments,
        )?;
        run.last_checkpoint = Some(run.step);
        Ok(())
    }

    /// One optimiser step; evaluation and checkpoint when due.
    fn one_step(
        &mut self,
        model: &dyn Model,
        data: &TrainJob<'_>,
        ctx: &Context,
    ) -> Result<StepMetrics> {
        self.start(model, data, ctx)?;
        let name = self.name;
        let config = self.config.clone();
        let Some(run) = self.run.as_mut() else {
            unreachable!("started above")
        };
        let started = Instant::now();
        let device = model.device().clone();
        let lr = run.schedule.lr_at(run.step);
        let params: Vec<(String, Var)> = model.parameters();
        let mut grads: Vec<Option<Tensor>> = vec![None; params.len()];
        let options = ForwardOptions {
            train: true,
            ..ForwardOptions::default()
        };
        let (mut loss_sum, mut aux_sum, mut tokens) = (0f64, 0f64, 0usize);
        let mut has_aux = false;
        let compute = config.precision.compute_dtype();
        let scale = run.scaler.map_or(1.0, |s| s.scale);
        for _ in 0..config.grad_accum {
            let batch = self
                .objective
                .next_batch(data, &mut run.rng, &mut run.cursor, &device)?;
            let batch = self.objective.prepare_batch(model, batch)?;
            // Data parallel: this rank's rows, and its loss's weight in the global loss.
            let (batch, share) = match run.dp.as_ref() {
                Some(dp) => dp.shard(batch)?,
                None => (batch, 1.0),
            };
            // The model runs forward and backward (in `compute`, maybe checkpointed) on the
            // whole micro-batch, or on a part of its rows per core (`row_split.rs`); the loss is
            // averaged over micro-batches and multiplied by the f16 loss scale.
            let factor = scale * share / config.grad_accum as f64;
            let allowed = config.row_parallel && self.objective.row_parallel();
            let parts = row_split::parts(allowed, model, &params, &batch, compute)?;
            let (micro_loss, micro_aux) = if parts > 1 {
                let passes = row_split::passes(
                    model,
                    &batch,
                    parts,
                    &options,
                    compute,
                    factor,
                    &hard_label_loss,
                )?;
                let (mut loss, mut aux) = (0f64, None);
                for mut pass in passes {
                    gradients::accumulate(&mut grads, &mut pass.grads, &params)?;
                    loss += pass.loss;
                    if let Some(a) = pass.aux {
                        aux = Some(aux.unwrap_or(0.0) + a);
                    }
                }
                (loss, aux)
            } else {
                let mut values = (0f64, None);
                let objective = &mut self.objective;
                let mut pass_objective = |out: &ForwardOutput| -> Result<Tensor> {
                    let (total, loss, aux) =
                        row_split::pass_loss(out, |logits| objective.loss(logits, &batch), factor)?;
                    values = (loss, aux);
                    Ok(total)
                };
                let mut store = model.forward_backward_with(
                    &batch.inputs,
                    &batch.forward_inputs,
                    &options,
                    compute,
                    &mut pass_objective,
                )?;
                gradients::accumulate(&mut grads, &mut store, &params)?;
                values
            };
            loss_sum += micro_loss * share;
            if let Some(aux) = micro_aux {
                aux_sum += aux * share;
                has_aux = true;
            }
            tokens += batch.tokens;
        }
        if let Some(dp) = run.dp.as_mut() {
            let mut sums = [loss_sum, aux_sum, tokens as f64];
            dp.reduce(&params, &mut grads, &mut sums)?;
            (loss_sum, aux_sum, tokens) = (sums[0], sums[1], sums[2].round() as usize);
        }
        if scale != 1.0 {
            for grad in grads.iter_mut().flatten() {
                *grad = grad.affine(1.0 / scale, 0.0)?;
            }
        }
        let loss = loss_sum / config.grad_accum as f64;
        let grad_norm = match run.dp.as_mut() {
            Some(dp) => dp.global_norm(&grads)?,
            None => clip::global_norm(grads.iter().flatten())?,
        };
        let step_number = run.step + 1;
        let finite = loss.is_finite() && grad_norm.is_finite();
        let verdict = match run.scaler.as_mut() {
            Some(scaler) => scaler.update(finite)?,
            None if finite => Verdict::Apply,
            None => {
                return Err(Error::Data(format!(
                    "{name}: training diverged at step {step_number}: loss {loss}, gradient norm {grad_norm} (lr {lr:.3e}); \
                     stopped before the update, the last checkpoint is kept. Lower `lr` or raise `warmup`"
                )))
            }
        };
        if verdict == Verdict::Apply {
            let clip_scale = clip::clip_scale(grad_norm, config.grad_clip);
            match run.dp.as_mut() {
                Some(dp) => dp.step(&mut run.optimizer, &params, &grads, lr, clip_scale)?,
                None => run.optimizer.step(&params, &grads, lr, clip_scale)?,
            }
        } else {
            tracing::info!(
                "{name}: step {step_number} skipped: f16 gradients overflowed (loss {loss}, gradient norm {grad_norm}); loss scale halved to {}",
                run.scaler.map_or(1.0, |s| s.scale)
            );
        }
        let dp_metrics = match run.dp.as_mut() {
            Some(dp) => dp.take_metrics(&params, &grads),
            None => StepMetrics::new(),
        };
        drop(grads);
        run.step = step_number;
        let elapsed_s = started.elapsed().as_secs_f64();

        let mut metrics = StepMetrics::new();
        metrics.insert("loss".into(), loss);
        metrics.insert("lr".into(), lr);
        metrics.insert("grad_norm".into(), grad_norm);
        metrics.insert("tokens_per_s".into(), tokens as f64 / elapsed_s.max(1e-9));
        if has_aux {
            metrics.insert("aux_loss".into(), aux_sum / config.grad_accum as f64);
        }
        // What the model gathered in this step's passes (MoE: expert load, router entropy).
        metrics.extend(model.take_train_metrics());
        metrics.extend(dp_metrics);
        if let Some(scaler) = &run.scaler {
            metrics.insert("loss_scale".into(), scaler.scale);
            metrics.insert(
                "skipped".into(),
                f64::from(u8::from(verdict == Verdict::Skip)),
            );
        }
        let eval_due = config.eval_every > 0
            && (run.step.is_multiple_of(config.eval_every) || run.step == config.steps);
        if eval_due {
            if run.eval_set.is_none() {
                run.eval_set = Some(self.objective.eval_batches(data, &device)?);
            }
            let eval = self
                .objective
                .evaluate(model, run.eval_set.as_deref().unwrap_or_default())?;
            metrics.extend(eval);
        }
        Ok(metrics)
    }

    /// Whether this process writes metrics and checkpoints (rank 0 under data parallel).
    fn writes(&self) -> bool {
        data_parallel::writes(self.run.as_ref().and_then(|r| r.dp.as_ref()))
    }

    /// The periodic checkpoint, taken after the step's metrics are recorded: a process killed
    /// between the two then never leaves a checkpoint ahead of `metrics.jsonl` (the resumed run
    /// would never write the records in between), only records ahead of the checkpoint, which
    /// the resume drops.
    fn checkpoint_if_due(&mut self, model: &dyn Model, ctx: &Context) -> Result<()> {
        let (every, step) = (self.config.checkpoint_every, self.steps_done());
        if every > 0 && step > 0 && step.is_multiple_of(every) {
            self.save_checkpoint(model, ctx)?;
        }
        Ok(())
    }
}

fn progress_message(metrics: &StepMetrics) -> String {
    let loss = metrics.get("loss").copied().unwrap_or(f64::NAN);
    let tok_s = metrics.get("tokens_per_s").copied().unwrap_or(0.0);
    let rate = if tok_s >= 1000.0 {
        format!("{:.1}k", tok_s / 1000.0)
    } else {
        format!("{tok_s:.0}")
    };
    match metrics.get("val_loss") {
        Some(val) => format!("loss {loss:.3} | val {val:.3} | {rate} tok/s"),
        None => format!("loss {loss:.3} | {rate} tok/s"),
    }
}

impl<O: Objective> Trainer for TrainLoop<O> {
    fn name(&self) -> &str {
        self.name
    }

    fn config(&self) -> Value {
        self.config.to_json()
    }

    fn step(
        &mut self,
        model: &dyn Model,
        data: &TrainJob<'_>,
        ctx: &Context,
    ) -> Result<StepMetrics> {
        let metrics = self.one_step(model, data, ctx)?;
        self.checkpoint_if_due(model, ctx)?;
        Ok(metrics)
    }

    fn fit(
        &mut self,
        model: &dyn Model,
        data: &TrainJob<'_>,
        ctx: &Context,
    ) -> Result<StepMetrics> {
        self.start(model, data, ctx)?;
        let total = self.config.steps;
        let mut last = StepMetrics::new();
        while self.steps_done() < total {
            if ctx.check_cancelled().is_err() {
                self.save_checkpoint(model, ctx)?;
                ctx.progress.finish("train");
                tracing::info!("{}: cancelled at step {}", self.name, self.steps_done());
                return Err(Error::Cancelled);
            }
            let metrics = match self.one_step(model, data, ctx) {
                Ok(m) => m,
                Err(e) => {
                    ctx.progress.finish("train");
                    return Err(e);
                }
            };
            let step = self.steps_done();
            if step.is_multiple_of(self.config.log_every)
                || step == total
                || metrics.contains_key("val_loss")
            {
                if self.writes() {
                    ctx.metrics.record(step, &metrics);
                }
                tracing::debug!("{} step {step}: {}", self.name, progress_message(&metrics));
            }
            if self.writes() {
                ctx.progress("train", step, Some(total), progress_message(&metrics));
            }
            last = metrics;
            if let Err(e) = self.checkpoint_if_due(model, ctx) {
                ctx.progress.finish("train");
                return Err(e);
            }
            if self.objective.should_stop() {
                tracing::info!("{}: stopped early at step {step}", self.name);
                last.insert("stopped_early".into(), 1.0);
                break;
            }
        }
        self.objective.finish(model)?;
        let run_step = self.steps_done();
        if self
            .run
            .as_ref()
            .is_some_and(|r| r.last_checkpoint != Some(run_step))
        {
            self.save_checkpoint(model, ctx)?;
        }
        ctx.progress.finish("train");
        Ok(last)
    }

    fn steps_done(&self) -> u64 {
        self.run.as_ref().map_or(0, |r| r.step)
    }

    fn set_teacher(&mut self, teacher: std::sync::Arc<dyn Model>) -> Result<()> {
        self.objective.set_teacher(teacher)
    }
}
