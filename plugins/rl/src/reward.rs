//! The `reward` aligner: a reward model `r(prompt, answer)` learned from preference pairs.
//!
//! The body is an independent copy of the model given to `fit` (`frozen_copy()`: the caller's
//! model is never modified). Two heads (`head`): `"last"`, a scalar linear map `r = w · h + b` of
//! the body's final hidden state `h` at the last real token (the end-of-text after the answer),
//! as in InstructGPT; and `"tokens"`, `r = Σ log p(answer token)` of the body's own
//! language-model head over the answer and its end-of-text. The second exists because a shallow
//! body cannot both work out the right answer and compare it with the given one before its last
//! position (docs/rl.md has the measurements); the language-model head compares every answer
//! token with the body's prediction for it. The loss is the pairwise ranking loss of
//! Bradley–Terry / InstructGPT, `−log σ(r_chosen − r_rejected)`, averaged over a batch.
//! Preference accuracy (`r_chosen > r_rejected`) is measured on a held-out split. `save(dir)`
//! writes `dir/head.safetensors` (`head.weight`, `head.bias`; empty for `"tokens"`),
//! `dir/reward.json` and the body as a model directory `dir/body`; a run's reward model is saved
//! into `<run dir>/reward_model` at the end of `fit`, and the training state (body, head,
//! optimiser, RNG) into `<run dir>/checkpoint`, from which `resume` continues bit-exactly.
//!
//! `data_parallel: true` (docs/distributed.md): as `dpo` does, every rank draws the same global
//! batch of `batch_size` pairs and trains on its own slice; the loss is a mean over pairs, so
//! each rank's is weighted by its share of them and the ranks' gradients sum to the
//! single-process ones. The per-pair margins are gathered, so rank 0 reports the global batch's
//! `accuracy` and `margin`; it alone records metrics and writes the reward model and the
//! checkpoint.

use std::path::Path;

use llmlab_plugin_api::candle::{self, DType, Device, Tensor, Var};
use llmlab_plugin_api::config::TypedConfig;
use llmlab_plugin_api::prelude::*;
use llmlab_train::data_parallel::DataParallel;
use llmlab_train::{loss, SplitMix64};

use crate::config::{RewardConfig, RewardHead};
use crate::fit::{self, SteppedAligner};
use crate::optimizer::{join_world, Optimizer};
use crate::policy_checkpoint::{self, Saved};
use crate::preference_batch::{self, PairBatch, Rows, Split};
use crate::resume;
use crate::value_head::hidden_width;

pub const HEAD_FILE: &str = "head.safetensors";
pub const MANIFEST: &str = "reward.json";
pub const BODY_DIR: &str = "body";
/// The directory inside a run directory.
pub const RUN_SUBDIR: &str = "reward_model";

/// A body with its head: what `score` needs.
struct Scorer {
    body: Box<dyn Model>,
    head: Head,
    tokenizer: Box<dyn Tokenizer>,
    ctx: usize,
}

/// The head and its parameters.
enum Head {
    Last {
        weight: Var,
        bias: Var,
    },
    /// No parameters of its own: it is the body's language-model head.
    Tokens,
}

impl Scorer {
    fn new(
        body: Box<dyn Model>,
        kind: RewardHead,
        tokenizer: Box<dyn Tokenizer>,
        ctx: usize,
    ) -> Result<Scorer> {
        let head = match kind {
            RewardHead::Last => {
                let d_model = hidden_width(body.as_ref(), no_hidden)?;
                Head::Last {
                    weight: Var::zeros(d_model, DType::F32, body.device())?,
                    bias: Var::zeros(1, DType::F32, body.device())?,
                }
            }
            RewardHead::Tokens => Head::Tokens,
        };
        Ok(Scorer {
            body,
            head,
            tokenizer,
            ctx,
        })
    }

    fn kind(&self) -> RewardHead {
        match self.head {
            Head::Last { .. } => RewardHead::Last,
            Head::Tokens => RewardHead::Tokens,
        }
    }

    /// The head's own parameters.
    fn head(&self) -> Vec<(String, Var)> {
        match &self.head {
            Head::Last { weight, bias } => vec![
                ("head.bias".into(), bias.clone()),
                ("head.weight".into(), weight.clone()),
            ],
            Head::Tokens => Vec::new(),
        }
    }

    /// Rewards `(rows,)` of every row.
    fn rewards(&self, rows: &Rows, train: bool) -> Result<Tensor> {
        let out = self.body.forward(
            &rows.tokens,
            &ForwardOptions {
                train,
                hidden_states: matches!(self.head, Head::Last { .. }),
                // Held-out margins and `score` are never backpropagated.
                no_grad: !train,
            },
        )?;
        let Head::Last { weight, bias } = &self.head else {
            return loss::sequence_log_probs(&out.logits, &rows.targets, &rows.mask);
        };
        let hidden = out.hidden.ok_or_else(|| no_hidden(self.body.as_ref()))?;
        let (b, s, d) = hidden.dims3()?;
        let h = hidden
            .reshape((b * s, d))?
            .index_select(&rows.last, 0)?
            .to_dtype(DType::F32)?;
        let r = h.matmul(&weight.as_tensor().reshape((d, 1))?)?.reshape(b)?;
        Ok(r.broadcast_add(bias.as_tensor())?)
    }

    /// Loss (scalar), per-pair margins `r_c − r_r` `(n,)` of a batch.
    fn pairwise(&self, batch: &PairBatch, train: bool) -> Result<(Tensor, Tensor)> {
        let r = self.rewards(&batch.rows, train)?;
        let n = batch.pairs;
        let margin = (r.narrow(0, 0, n)? - r.narrow(0, n, n)?)?;
        let loss = loss::log_sigmoid(&margin)?.mean_all()?.neg()?;
        Ok((loss, margin))
    }
}

fn no_hidden(model: &dyn Model) -> Error {
    Error::Data(format!(
        "the `{}` model returns no hidden states; a reward head needs them (ForwardOptions::hidden_states)",
        model.name()
    ))
}

/// Training state once `fit` has seen the model and data.
struct Run {
    optimizer: Optimizer,
    rng: SplitMix64,
    seed: u64,
}

pub struct RewardModel {
    config: RewardConfig,
    scorer: Option<Scorer>,
    run: Option<Run>,
}

pub fn new_reward_model(config: &Value) -> Result<RewardModel> {
    Ok(RewardModel {
        config: RewardConfig::from_json("reward", config)?,
        scorer: None,
        run: None,
    })
}

fn mean(xs: &[f32]) -> f64 {
    xs.iter().map(|&x| x as f64).sum::<f64>() / xs.len().max(1) as f64
}

impl RewardModel {
    fn start(&mut self, job: &AlignJob<'_>, ctx: &Context) -> Result<()> {
        if self.scorer.is_none() {
            let ctx_len = self.config.ctx.unwrap_or(job.policy.ctx_len());
            if ctx_len > job.policy.ctx_len() {
                return Err(Error::invalid_config(
                    "reward",
                    format!(
                        "`ctx` = {ctx_len} exceeds the model's context length {}",
                        job.policy.ctx_len()
                    ),
                ));
            }
            check_vocab(job)?;
            let body = job.policy.frozen_copy()?;
            self.scorer = Some(Scorer::new(
                body,
                self.config.head,
                job.tokenizer.clone_box(),
                ctx_len,
            )?);
        }
        if self.run.is_none() {
            let seed = self.config.seed.unwrap_or(ctx.seed);
            let mut run = Run {
                optimizer: Optimizer::new(self.config.optim()),
                rng: SplitMix64::new(seed),
                seed,
            };
            if let Some(dp) = self.join(job)? {
                run.optimizer.join(dp);
            }
            if let (Some(path), Some(scorer)) = (&self.config.resume, &self.scorer) {
                let saved = resume::open("reward", path)?;
                saved.restore_model(scorer.body.as_ref())?;
                if !scorer.head().is_empty() {
                    saved.restore_vars(HEAD_FILE, &scorer.head())?;
                }
                saved.restore_optimizer(&mut run.optimizer, &self.trained())?;
                run.rng = SplitMix64::from_state(saved.rng_state);
                ctx.metrics.rewind(saved.step);
            }
            // Data parallel: every rank starts from rank 0's body and head (the head-only
            // case included: the body must agree too).
            if let (Some(dp), Some(scorer)) = (run.optimizer.data_parallel(), &self.scorer) {
                let mut all = scorer.head();
                all.extend(scorer.body.parameters());
                dp.sync_params(&all)?;
            }
            self.run = Some(run);
        }
        Ok(())
    }

    /// With `data_parallel`: the job's world, refused unless the global batch splits evenly and
    /// every rank runs the same aligner, config, body and data.
    fn join(&self, job: &AlignJob<'_>) -> Result<Option<DataParallel>> {
        if !self.config.data_parallel {
            return Ok(None);
        }
        let keys = (self.config.zero, self.config.bucket_mb);
        let dp = join_world("reward", &self.config.to_json(), keys, job, "pairs")?;
        dp.check_split("reward", "batch_size", self.config.batch_size)?;
        Ok(Some(dp))
    }

    fn scorer(&self) -> Result<&Scorer> {
        self.scorer.as_ref().ok_or_else(|| {
            Error::msg("reward: the reward model is not trained yet: call fit(model, prefs, tok) or load(dir, tok)")
        })
    }

    fn trained(&self) -> Vec<(String, Var)> {
        let Some(s) = &self.scorer else {
            return Vec::new();
        };
        let mut params = s.head();
        if self.config.train_body {
            params.extend(s.body.parameters());
        }
        params
    }

    fn split(&self, job: &AlignJob<'_>, seed: u64) -> Result<Split> {
        Split::new(job.examples, self.config.val_fraction, seed)
    }
}

pub fn check_vocab(job: &AlignJob<'_>) -> Result<()> {
    if job.tokenizer.vocab_size() > job.policy.vocab_size() {
        return Err(Error::Data(format!(
            "the tokenizer's vocabulary ({} tokens) is larger than the model's vocab_size ({})",
            job.tokenizer.vocab_size(),
            job.policy.vocab_size()
        )));
    }
    Ok(())
}

impl SteppedAligner for RewardModel {
    fn label(&self) -> &'static str {
        "reward"
    }
    fn total_steps(&self) -> u64 {
        self.config.steps
    }
    fn steps_done(&self) -> u64 {
        self.run.as_ref().map_or(0, |r| r.optimizer.step)
    }
    fn log_every(&self) -> u64 {
        self.config.log_every
    }
    fn eval_every(&self) -> u64 {
        self.config.eval_every
    }

    fn one_step(&mut self, job: &AlignJob<'_>, ctx: &Context) -> Result<StepMetrics> {
        self.start(job, ctx)?;
        let params = self.trained();
        let seed = self.run.as_ref().map_or(0, |r| r.seed);
        let split = self.split(job, seed)?;
        let (Some(scorer), Some(run)) = (&self.scorer, self.run.as_mut()) else {
            unreachable!("started above")
        };
        let pairs = preference_batch::sample(&split, self.config.batch_size, &mut run.rng);
        // Data parallel: this rank's slice of the global batch, and its share of the loss.
        let (mine, share) = match run.optimizer.data_parallel() {
            Some(dp) => {
                let (rows, share) = dp.share(pairs.len())?;
                (&pairs[rows], share)
            }
            None => (&pairs[..], 1.0),
        };
        let batch = preference_batch::batch(
            job.examples,
            mine,
            scorer.tokenizer.as_ref(),
            scorer.ctx,
            scorer.body.device(),
        )?;
        let (loss, margin) = scorer.pairwise(&batch, true)?;
        let weighted = if share != 1.0 {
            loss.affine(share, 0.0)?
        } else {
            loss
        };
        let applied = run.optimizer.step("reward", &weighted, &params)?;
        let margins: Vec<f32> = margin.to_vec1()?;
        let margins = match run.optimizer.data_parallel() {
            Some(dp) => dp.gather_rows(&margins)?,
            None => margins,
        };
        let mut m = StepMetrics::new();
        // The global batch's loss: the ranks' weighted losses summed (alone, the loss).
        m.insert("loss".into(), applied.loss);
        m.insert(
            "accuracy".into(),
            margins.iter().filter(|&&x| x > 0.0).count() as f64 / margins.len() as f64,
        );
        m.insert("margin".into(), mean(&margins));
        m.insert("lr".into(), applied.lr);
        m.insert("grad_norm".into(), applied.grad_norm);
        m.extend(applied.dp_metrics);
        Ok(m)
    }

    fn held_out(&mut self, job: &AlignJob<'_>, ctx: &Context) -> Result<StepMetrics> {
        self.start(job, ctx)?;
        let seed = self.run.as_ref().map_or(0, |r| r.seed);
        let split = self.split(job, seed)?;
        let scorer = self.scorer()?;
        let (mut loss_sum, mut margins) = (0f64, Vec::new());
        for chunk in split.held_out.chunks(self.config.batch_size) {
            let batch = preference_batch::batch(
                job.examples,
                chunk,
                scorer.tokenizer.as_ref(),
                scorer.ctx,
                scorer.body.device(),
            )?;
            let (loss, margin) = scorer.pairwise(&batch, false)?;
            loss_sum += loss.to_scalar::<f32>()? as f64 * chunk.len() as f64;
            margins.extend(margin.to_vec1::<f32>()?);
        }
        let n = margins.len().max(1) as f64;
        let mut m = StepMetrics::new();
        m.insert("val_loss".into(), loss_sum / n);
        m.insert(
            "val_accuracy".into(),
            margins.iter().filter(|&&x| x > 0.0).count() as f64 / n,
        );
        m.insert("val_margin".into(), mean(&margins));
        Ok(m)
    }

    fn writes(&self) -> bool {
        self.run.as_ref().is_none_or(|r| r.optimizer.writes())
    }

    fn finish(&mut self, _: &AlignJob<'_>, ctx: &Context) -> Result<()> {
        let (Some(dir), true, true) = (&ctx.run_dir, self.scorer.is_some(), self.run.is_some())
        else {
            return Ok(());
        };
        // Data parallel: every rank holds the same model; rank 0 alone saves it (the checkpoint
        // below is written by every rank, which ZeRO's gather of the moments needs).
        if self.writes() {
            self.save(&dir.join(RUN_SUBDIR))?;
        }
        let trained = self.trained();
        let (Some(scorer), Some(run)) = (&self.scorer, self.run.as_mut()) else {
            unreachable!("checked above")
        };
        // The training state besides the model, for `resume`.
        let head = scorer
            .head()
            .into_iter()
            .map(|(n, v)| (n, v.as_tensor().clone()))
            .collect();
        let step = run.optimizer.step;
        policy_checkpoint::write(
            dir,
            scorer.body.as_ref(),
            &mut run.optimizer,
            &trained,
            Saved {
                aligner: "reward",
                config: self.config.to_json(),
                step,
                rng_state: run.rng.state(),
                extra: Some((HEAD_FILE, head)),
                reference: None,
                state: Value::Null,
            },
        )
    }
}

impl Aligner for RewardModel {
    fn name(&self) -> &str {
        "reward"
    }
    fn config(&self) -> Value {
        self.config.to_json()
    }
    fn step(&mut self, job: &AlignJob<'_>, ctx: &Context) -> Result<StepMetrics> {
        self.one_step(job, ctx)
    }
    fn fit(&mut self, job: &AlignJob<'_>, ctx: &Context) -> Result<StepMetrics> {
        fit::fit(self, job, ctx)
    }
    fn evaluate(&mut self, job: &AlignJob<'_>, ctx: &Context) -> Result<StepMetrics> {
        self.held_out(job, ctx)
    }

    fn score(&self, prompt: &str, answer: &str) -> Result<f64> {
        let s = self.scorer()?;
        let e = preference_batch::encode(prompt, answer, s.tokenizer.as_ref(), s.ctx)?;
        let rows = preference_batch::rows(&[&e], s.tokenizer.as_ref(), s.body.device())?;
        let r = s.rewards(&rows, false)?;
        Ok(r.to_vec1::<f32>()?[0] as f64)
    }

    fn save(&self, dir: &Path) -> Result<()> {
        let s = self.scorer()?;
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        s.body.save(&dir.join(BODY_DIR))?;
        let head: Vec<(String, Tensor)> = s
            .head()
            .into_iter()
            .map(|(n, v)| Ok((n, v.as_tensor().to_device(&Device::Cpu)?)))
            .collect::<Result<_>>()?;
        let path = dir.join(HEAD_FILE);
        candle::safetensors::save(&head.into_iter().collect(), &path)
            .map_err(|e| Error::msg(format!("{}: {e}", path.display())))?;
        let manifest = json!({
            "format": "llmlab-reward-model",
            "version": 1,
            "config": self.config.to_json(),
            "ctx": s.ctx,
            "head": s.kind(),
            "body": { "name": s.body.name(), "dir": BODY_DIR },
        });
        let path = dir.join(MANIFEST);
        std::fs::write(&path, serde_json::to_vec_pretty(&manifest)?)
            .map_err(|e| Error::io(&path, e))
    }

    fn load(&mut self, dir: &Path, model: Box<dyn Model>, tokenizer: &dyn Tokenizer) -> Result<()> {
        let path = dir.join(MANIFEST);
        let text = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let manifest: Value = serde_json::from_slice(&text).map_err(|e| {
            Error::Data(format!(
                "{}: not a reward model manifest: {e}",
                path.display()
            ))
        })?;
        if manifest["format"] != "llmlab-reward-model" {
            return Err(Error::Data(format!(
                "{}: not a reward model (format {})",
                path.display(),
                manifest["format"]
            )));
        }
        let ctx_len = manifest["ctx"]
            .as_u64()
            .map_or(model.ctx_len(), |c| c as usize);
        // Manifests written before `head` existed are `last`-head models.
        let head = match manifest.get("head") {
            None => RewardHead::Last,
            Some(h) => serde_json::from_value(h.clone())
                .map_err(|e| Error::Data(format!("{}: `head`: {e}", path.display())))?,
        };
        let scorer = Scorer::new(model, head, tokenizer.clone_box(), ctx_len)?;
        let path = dir.join(HEAD_FILE);
        let tensors = candle::safetensors::load(&path, scorer.body.device())
            .map_err(|e| Error::Data(format!("{}: {e}", path.display())))?;
        for (name, var) in scorer.head() {
            let t = tensors
                .get(&name)
                .ok_or_else(|| Error::Data(format!("{}: no tensor `{name}`", path.display())))?;
            if t.shape() != var.shape() {
                return Err(Error::Data(format!(
                    "{}: `{name}` has shape {:?}, the body's hidden size needs {:?}",
                    path.display(),
                    t.dims(),
                    var.dims()
                )));
            }
            var.set(&t.to_dtype(DType::F32)?)?;
        }
        self.config.head = head;
        self.scorer = Some(scorer);
        self.run = None;
        Ok(())
    }
}

pub struct RewardFactory;

impl Factory for RewardFactory {
    fn name(&self) -> &'static str {
        "reward"
    }
    fn kind(&self) -> Kind {
        Kind::Aligner
    }
    fn about(&self) -> &'static str {
        "reward model: the model's body (a copy) + scalar head, pairwise loss -log sigmoid(r_c - r_r), held-out preference accuracy"
    }
    fn config_keys(&self) -> Vec<ConfigKey> {
        RewardConfig::keys()
    }
    fn create(&self, config: &Value, _: &Context) -> Result<Instance> {
        Ok(Instance::Aligner(Box::new(new_reward_model(config)?)))
    }
}
