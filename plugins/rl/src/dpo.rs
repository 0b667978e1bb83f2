//! The `dpo` aligner: direct preference optimisation (Rafailov et al. 2023) of the policy given
//! to `fit`, in place, against a frozen reference: an independent copy of the policy
//! (`frozen_copy()`) taken at the first step, never optimised. With `loss` `"kto"`, `"orpo"` or
//! `"simpo"` (or the components of those names) it trains the offline preference losses of
//! [`crate::preference_loss`] instead; ORPO and SimPO take no reference copy.
//!
//! With sequence log-probabilities summed over answer tokens only (the prompt is masked),
//! `h = [log π(c) − log π_ref(c)] − [log π(r) − log π_ref(r)]` per pair, and the loss is
//!
//! ```text
//! sigmoid: −(1 − ε) log σ(β h) − ε log σ(−β h)     (ε = label_smoothing: conservative DPO)
//! ipo:     (h − 1 / (2β))²                          (Azar et al. 2023, on summed log-probs)
//! ```
//!
//! At the first step the policy is its reference, so `h = 0` and the sigmoid loss is `ln 2`.
//!
//! `nll_weight` α adds α · NLL(chosen) per answer token (RPO: Pang et al. 2024, "Iterative
//! Reasoning Preference Optimization"). Plain DPO only pushes the chosen and rejected log-probs
//! *apart*; on near-miss pairs (an answer one digit off) it lowers both, and greedy accuracy
//! falls. The NLL term anchors the chosen answer's likelihood while the margin grows.
//! Metrics: `loss`, `accuracy` (`h > 0`), `reward_margin` (mean `β h`), `chosen_reward`,
//! `rejected_reward` (`β` times each log-ratio), `chosen_logp`, `rejected_logp`; on the held-out
//! pairs the same with `val_`, plus `val_logp_accuracy` (`log π(c) > log π(r)`, needs no
//! reference). At the end (and on Ctrl-C) the policy, reference, optimiser moments and RNG are
//! written to `<run dir>/checkpoint` ([`policy_checkpoint`]); `resume` continues from there.
//!
//! `data_parallel: true` (docs/distributed.md): every rank draws the same global batch of
//! `batch_size` pairs and trains on its own slice of them; its loss is weighted by its share of
//! the pairs, so the ranks' gradients sum to the single-process ones ([`Optimizer`] reduces
//! them). KTO's batch KL estimate is the mean over the whole global batch. The per-pair
//! metrics are gathered, so rank 0 reports the global batch's; it alone records them and
//! writes the checkpoint.

use std::collections::BTreeMap;

use llmlab_plugin_api::candle::{DType, Tensor};
use llmlab_plugin_api::config::TypedConfig;
use llmlab_plugin_api::prelude::*;
use llmlab_train::data_parallel::DataParallel;
use llmlab_train::{loss, SplitMix64};

use crate::config::{DpoConfig, DpoLoss};
use crate::fit::{self, SteppedAligner};
use crate::optimizer::{join_world, Optimizer};
use crate::policy_checkpoint::{self, Saved};
use crate::preference_batch::{self, PairBatch, Split};
use crate::preference_loss::{self, LossSettings, Sequences};
use crate::resume;
use crate::reward::check_vocab;

pub const CHECKPOINT_DIR: &str = policy_checkpoint::DIR;
pub const CHECKPOINT_MANIFEST: &str = policy_checkpoint::MANIFEST;

struct Run {
    /// `None` for the reference-free losses (ORPO, SimPO).
    reference: Option<Box<dyn Model>>,
    optimizer: Optimizer,
    rng: SplitMix64,
    seed: u64,
    ctx: usize,
}

pub struct Dpo {
    config: DpoConfig,
    /// `dpo`, or `kto` / `orpo` / `simpo` when made by that name.
    name: &'static str,
    run: Option<Run>,
}

pub fn new_dpo(config: &Value) -> Result<Dpo> {
    let config = DpoConfig::from_json("dpo", config)?;
    Ok(Dpo {
        name: config.loss.component(),
        config,
        run: None,
    })
}

/// `rl("kto" | "orpo" | "simpo", ..)`: `dpo` with that loss (a `loss` key, if given, must agree).
pub fn new_preset(loss: DpoLoss, config: &Value) -> Result<Dpo> {
    let name = loss.component();
    let mut config = match config {
        Value::Null => json!({}),
        other => other.clone(),
    };
    let wanted = serde_json::to_value(loss)?;
    match config.get("loss") {
        Some(given) if *given != wanted => {
            return Err(Error::invalid_config(
                name,
                format!("`loss` is {wanted} for {name} (got {given}); use rl(\"dpo\", #{{ loss: {given} }})"),
            ))
        }
        _ => config["loss"] = wanted,
    }
    Ok(Dpo {
        config: DpoConfig::from_json(name, &config)?,
        name,
        run: None,
    })
}

/// Per-pair quantities of one batch.
struct PairTerms {
    loss: Tensor,
    /// `(n,)`: `h` of each pair.
    h: Vec<f32>,
    chosen_ratio: Vec<f32>,
    rejected_ratio: Vec<f32>,
    chosen_logp: Vec<f32>,
    rejected_logp: Vec<f32>,
}

fn mean(xs: &[f32]) -> f64 {
    xs.iter().map(|&x| x as f64).sum::<f64>() / xs.len().max(1) as f64
}

fn fraction(xs: impl Iterator<Item = bool>) -> f64 {
    let (mut yes, mut n) = (0usize, 0usize);
    for x in xs {
        yes += x as usize;
        n += 1;
    }
    yes as f64 / n.max(1) as f64
}

/// Summed answer log-probabilities `(2n,)` of every row of `batch` under `model`.
fn log_probs(model: &dyn Model, batch: &PairBatch, train: bool) -> Result<Tensor> {
    Ok(log_probs_with_aux(model, batch, train)?.0)
}

/// [`log_probs`] and the model's aux loss (MoE load balancing), which the policy's loss adds.
fn log_probs_with_aux(
    model: &dyn Model,
    batch: &PairBatch,
    train: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let out = model.forward(
        &batch.rows.tokens,
        &ForwardOptions {
            train,
            // Held-out terms and the reference's log-probabilities are never backpropagated.
            no_grad: !train,
            ..ForwardOptions::default()
        },
    )?;
    let lp = loss::sequence_log_probs(&out.logits, &batch.rows.targets, &batch.rows.mask)?;
    Ok((lp, out.aux_loss))
}

/// Every rank's per-pair terms, in rank order (the global batch's pairs in order); the loss
/// tensor stays this rank's.
fn gather_terms(dp: &mut DataParallel, t: PairTerms) -> Result<PairTerms> {
    let n = t.h.len();
    let parts = [
        &t.h,
        &t.chosen_ratio,
        &t.rejected_ratio,
        &t.chosen_logp,
        &t.rejected_logp,
    ];
    let mine: Vec<f32> = parts.iter().flat_map(|p| p.iter().copied()).collect();
    let all = dp.gather_rows(&mine)?;
    let column = |j: usize| -> Vec<f32> {
        all.chunks(5 * n.max(1))
            .flat_map(|rank| rank[j * n..(j + 1) * n].iter().copied())
            .collect()
    };
    Ok(PairTerms {
        h: column(0),
        chosen_ratio: column(1),
        rejected_ratio: column(2),
        chosen_logp: column(3),
        rejected_logp: column(4),
        loss: t.loss,
    })
}

impl Dpo {
    /// The frozen reference, once the first step has taken it.
    pub fn reference(&self) -> Option<&dyn Model> {
        self.run.as_ref().and_then(|r| r.reference.as_deref())
    }

    fn ctx_len(&self, policy: &dyn Model) -> Result<usize> {
        let ctx_len = self.config.ctx.unwrap_or(policy.ctx_len());
        if ctx_len > policy.ctx_len() {
            return Err(Error::invalid_config(
                self.name,
                format!(
                    "`ctx` = {ctx_len} exceeds the model's context length {}",
                    policy.ctx_len()
                ),
            ));
        }
        Ok(ctx_len)
    }

    fn start(&mut self, job: &AlignJob<'_>, ctx: &Context) -> Result<()> {
        if self.run.is_some() {
            return Ok(());
        }
        check_vocab(job)?;
        let ctx_len = self.ctx_len(job.policy)?;
        let seed = self.config.seed.unwrap_or(ctx.seed);
        Split::new(job.examples, self.config.val_fraction, seed)?;
        let mut run = Run {
            reference: None,
            optimizer: Optimizer::new(self.config.optim()),
            rng: SplitMix64::new(seed),
            seed,
            ctx: ctx_len,
        };
        if self.config.data_parallel {
            let keys = (self.config.zero, self.config.bucket_mb);
            let dp = join_world(self.name, &self.config.to_json(), keys, job, "pairs")?;
            dp.check_split(self.name, "batch_size", self.config.batch_size)?;
            run.optimizer.join(dp);
        }
        let needs_reference = self.config.loss.needs_reference();
        if let Some(path) = &self.config.resume {
            let saved = resume::open(self.name, path)?;
            saved.restore_model(job.policy)?;
            if needs_reference {
                run.reference = Some(saved.restore_reference(job.policy)?);
            }
            saved.restore_optimizer(&mut run.optimizer, &job.policy.parameters())?;
            run.rng = SplitMix64::from_state(saved.rng_state);
            ctx.metrics.rewind(saved.step);
        }
        // Data parallel: every rank starts from rank 0's policy, and copies its reference
        // from that.
        if let Some(dp) = run.optimizer.data_parallel() {
            dp.sync_params(&job.policy.parameters())?;
        }
        if self.config.resume.is_none() && needs_reference {
            run.reference = Some(job.policy.frozen_copy()?);
        }
        self.run = Some(run);
        Ok(())
    }

    fn loss_settings(&self) -> LossSettings {
        let c = &self.config;
        LossSettings {
            loss: c.loss,
            beta: c.beta,
            label_smoothing: c.label_smoothing,
            gamma: c.gamma,
            desirable_weight: c.desirable_weight,
            undesirable_weight: c.undesirable_weight,
        }
    }

    /// The loss terms of `batch`. For the reference-based losses, `reference` `None` means the
    /// policy is its own reference (before the first step). `dp`: `batch` is this rank's shard
    /// of the global batch (KTO's KL estimate is then gathered over the ranks).
    fn terms(
        &self,
        policy: &dyn Model,
        reference: Option<&dyn Model>,
        batch: &PairBatch,
        train: bool,
        dp: Option<&mut DataParallel>,
    ) -> Result<PairTerms> {
        let n = batch.pairs;
        let (lp, aux) = log_probs_with_aux(policy, batch, train)?;
        let tokens = batch
            .rows
            .mask
            .to_dtype(DType::F32)?
            .sum(1)?
            .clamp(1f32, f32::MAX)?;
        let ref_lp = if self.config.loss.needs_reference() {
            Some(log_probs(reference.unwrap_or(policy), batch, false)?.detach())
        } else {
            None
        };
        let (chosen, rejected) = (lp.narrow(0, 0, n)?, lp.narrow(0, n, n)?);
        let ref_sides = match &ref_lp {
            Some(r) => Some((r.narrow(0, 0, n)?, r.narrow(0, n, n)?)),
            None => None,
        };
        let (chosen_tokens, rejected_tokens) = (tokens.narrow(0, 0, n)?, tokens.narrow(0, n, n)?);
        let kl_mean = match (&ref_sides, dp) {
            (Some((rc, rr)), Some(dp)) if self.config.loss == DpoLoss::Kto => {
                let ratios = Tensor::cat(&[(&chosen - rc)?, (&rejected - rr)?], 0)?;
                let all = dp.gather_rows(&ratios.to_vec1::<f32>()?)?;
                Some(all.iter().map(|&x| x as f64).sum::<f64>() / all.len().max(1) as f64)
            }
            _ => None,
        };
        let out = preference_loss::pair_loss(
            &self.loss_settings(),
            &Sequences {
                chosen: &chosen,
                rejected: &rejected,
                reference: ref_sides.as_ref().map(|(c, r)| (c, r)),
                chosen_tokens: &chosen_tokens,
                rejected_tokens: &rejected_tokens,
                kl_mean,
            },
        )?;
        let loss = if self.config.nll_weight > 0.0 {
            // Per-token NLL of the chosen answers, so the weight means the same for short and
            // long answers.
            let nll = (chosen.neg()? / &chosen_tokens)?.mean_all()?;
            (out.loss + nll.affine(self.config.nll_weight, 0.0)?)?
        } else {
            out.loss
        };
        let loss = crate::policy_loss::with_aux(loss, aux)?;
        // The implicit rewards: β × log-ratio with a reference, β × mean token log-prob without.
        let (chosen_reward, rejected_reward) = match &ref_sides {
            Some((rc, rr)) => ((&chosen - rc)?, (&rejected - rr)?),
            None => ((&chosen / &chosen_tokens)?, (&rejected / &rejected_tokens)?),
        };
        let lp_values: Vec<f32> = lp.to_vec1()?;
        Ok(PairTerms {
            loss,
            h: out.margin.to_vec1()?,
            chosen_ratio: chosen_reward.to_vec1()?,
            rejected_ratio: rejected_reward.to_vec1()?,
            chosen_logp: lp_values[..n].to_vec(),
            rejected_logp: lp_values[n..].to_vec(),
        })
    }

    fn report(&self, t: &PairTerms, loss: f64, prefix: &str) -> StepMetrics {
        let beta = self.config.beta;
        let mut m = BTreeMap::new();
        let mut put = |k: &str, v: f64| {
            m.insert(format!("{prefix}{k}"), v);
        };
        put("loss", loss);
        put("accuracy", fraction(t.h.iter().map(|&h| h > 0.0)));
        put("reward_margin", beta * mean(&t.h));
        put("chosen_reward", beta * mean(&t.chosen_ratio));
        put("rejected_reward", beta * mean(&t.rejected_ratio));
        put("chosen_logp", mean(&t.chosen_logp));
        put("rejected_logp", mean(&t.rejected_logp));
        m
    }
}

impl SteppedAligner for Dpo {
    fn label(&self) -> &'static str {
        self.name
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
        let Some(mut run) = self.run.take() else {
            unreachable!("started above")
        };
        let result = (|| {
            let split = Split::new(job.examples, self.config.val_fraction, run.seed)?;
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
                job.tokenizer,
                run.ctx,
                job.policy.device(),
            )?;
            let terms = self.terms(
                job.policy,
                run.reference.as_deref(),
                &batch,
                true,
                run.optimizer.data_parallel(),
            )?;
            let weighted = if share != 1.0 {
                terms.loss.affine(share, 0.0)?
            } else {
                terms.loss.clone()
            };
            let applied = run
                .optimizer
                .step(self.name, &weighted, &job.policy.parameters())?;
            let terms = match run.optimizer.data_parallel() {
                Some(dp) => gather_terms(dp, terms)?,
                None => terms,
            };
            let mut m = self.report(&terms, applied.loss, "");
            m.insert("lr".into(), applied.lr);
            m.insert("grad_norm".into(), applied.grad_norm);
            m.extend(applied.dp_metrics);
            Ok(m)
        })();
        self.run = Some(run);
        result
    }

    fn held_out(&mut self, job: &AlignJob<'_>, ctx: &Context) -> Result<StepMetrics> {
        let seed = self
            .run
            .as_ref()
            .map_or(self.config.seed.unwrap_or(ctx.seed), |r| r.seed);
        let split = Split::new(job.examples, self.config.val_fraction, seed)?;
        let ctx_len = match &self.run {
            Some(r) => r.ctx,
            None => self.ctx_len(job.policy)?,
        };
        let reference = self.run.as_ref().and_then(|r| r.reference.as_deref());
        let mut all = PairTerms {
            loss: Tensor::zeros(
                (),
                llmlab_plugin_api::candle::DType::F32,
                job.policy.device(),
            )?,
            h: Vec::new(),
            chosen_ratio: Vec::new(),
            rejected_ratio: Vec::new(),
            chosen_logp: Vec::new(),
            rejected_logp: Vec::new(),
        };
        let mut loss_sum = 0f64;
        for chunk in split.held_out.chunks(self.config.batch_size) {
            let batch = preference_batch::batch(
                job.examples,
                chunk,
                job.tokenizer,
                ctx_len,
                job.policy.device(),
            )?;
            let t = self.terms(job.policy, reference, &batch, false, None)?;
            loss_sum += t.loss.to_scalar::<f32>()? as f64 * chunk.len() as f64;
            all.h.extend(t.h);
            all.chosen_ratio.extend(t.chosen_ratio);
            all.rejected_ratio.extend(t.rejected_ratio);
            all.chosen_logp.extend(t.chosen_logp);
            all.rejected_logp.extend(t.rejected_logp);
        }
        let loss = loss_sum / all.h.len().max(1) as f64;
        let mut m = self.report(&all, loss, "val_");
        m.insert(
            "val_logp_accuracy".into(),
            fraction(
                all.chosen_logp
                    .iter()
                    .zip(&all.rejected_logp)
                    .map(|(c, r)| c > r),
            ),
        );
        Ok(m)
    }

    fn writes(&self) -> bool {
        self.run.as_ref().is_none_or(|r| r.optimizer.writes())
    }

    fn finish(&mut self, job: &AlignJob<'_>, ctx: &Context) -> Result<()> {
        let (Some(run_dir), Some(run)) = (&ctx.run_dir, self.run.as_mut()) else {
            return Ok(());
        };
        let step = run.optimizer.step;
        policy_checkpoint::write(
            run_dir,
            job.policy,
            &mut run.optimizer,
            &job.policy.parameters(),
            Saved {
                aligner: self.name,
                config: self.config.to_json(),
                step,
                rng_state: run.rng.state(),
                extra: None,
                reference: run.reference.as_deref(),
                state: Value::Null,
            },
        )
    }
}

impl Aligner for Dpo {
    fn name(&self) -> &str {
        self.name
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
}

/// `rl("dpo")`, and with `loss` preset, `rl("kto")`, `rl("orpo")`, `rl("simpo")`.
pub struct DpoFactory {
    pub loss: DpoLoss,
}

impl Factory for DpoFactory {
    fn name(&self) -> &'static str {
        self.loss.component()
    }
    fn kind(&self) -> Kind {
        Kind::Aligner
    }
    fn about(&self) -> &'static str {
        match self.loss {
            DpoLoss::Sigmoid | DpoLoss::Ipo => "direct preference optimisation against a frozen reference copy: beta, label smoothing; loss sigmoid, ipo, kto, orpo or simpo",
            DpoLoss::Kto => "KTO: desirable/undesirable answers against a frozen reference (dpo with loss \"kto\")",
            DpoLoss::Orpo => "ORPO: SFT plus an odds-ratio preference term, no reference model (dpo with loss \"orpo\")",
            DpoLoss::Simpo => "SimPO: length-normalised log-probability margin gamma, no reference model (dpo with loss \"simpo\")",
        }
    }
    fn config_keys(&self) -> Vec<ConfigKey> {
        DpoConfig::keys()
    }
    fn create(&self, config: &Value, _: &Context) -> Result<Instance> {
        let dpo = match self.loss {
            DpoLoss::Sigmoid | DpoLoss::Ipo => new_dpo(config)?,
            preset => new_preset(preset, config)?,
        };
        Ok(Instance::Aligner(Box::new(dpo)))
    }
}
