//! The `dpo` aligner: direct preference optimisation (Rafailov et al. 2023) of the policy given
//! to `fit`, in place, against a frozen reference: an independent copy of the policy
//! (`frozen_copy()`) taken at the first step, never optimised.
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
//! reference). At the end the policy's weights and optimiser moments are written to
//! `<run dir>/checkpoint` (atomically, checksummed).

use std::collections::BTreeMap;

use llmlab_plugin_api::candle::Tensor;
use llmlab_plugin_api::config::TypedConfig;
use llmlab_plugin_api::prelude::*;
use llmlab_plugin_api::train::{checkpoint, loss, SplitMix64};

use crate::config::{DpoConfig, DpoLoss};
use crate::fit::{self, PairAligner};
use crate::optimizer::Optimizer;
use crate::preference_batch::{self, PairBatch, Split};
use crate::reward::check_vocab;

pub const CHECKPOINT_DIR: &str = "checkpoint";
pub const CHECKPOINT_MANIFEST: &str = "aligner.json";

struct Run {
    reference: Box<dyn Model>,
    optimizer: Optimizer,
    rng: SplitMix64,
    seed: u64,
    ctx: usize,
}

pub struct Dpo {
    config: DpoConfig,
    run: Option<Run>,
}

pub fn new_dpo(config: &Value) -> Result<Dpo> {
    Ok(Dpo {
        config: DpoConfig::from_json("dpo", config)?,
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
    let out = model.forward(
        &batch.rows.tokens,
        &ForwardOptions {
            train,
            hidden_states: false,
        },
    )?;
    loss::sequence_log_probs(&out.logits, &batch.rows.targets, &batch.rows.mask)
}

impl Dpo {
    /// The frozen reference, once the first step has taken it.
    pub fn reference(&self) -> Option<&dyn Model> {
        self.run.as_ref().map(|r| r.reference.as_ref())
    }

    fn ctx_len(&self, policy: &dyn Model) -> Result<usize> {
        let ctx_len = self.config.ctx.unwrap_or(policy.ctx_len());
        if ctx_len > policy.ctx_len() {
            return Err(Error::invalid_config(
                "dpo",
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
        self.run = Some(Run {
            reference: job.policy.frozen_copy()?,
            optimizer: Optimizer::new(self.config.optim()),
            rng: SplitMix64::new(seed),
            seed,
            ctx: ctx_len,
        });
        Ok(())
    }

    /// The DPO terms of `batch`; `reference` `None` means the policy is its own reference.
    fn terms(
        &self,
        policy: &dyn Model,
        reference: Option<&dyn Model>,
        batch: &PairBatch,
        train: bool,
    ) -> Result<PairTerms> {
        let n = batch.pairs;
        let lp = log_probs(policy, batch, train)?;
        let ref_lp = log_probs(reference.unwrap_or(policy), batch, false)?.detach();
        let ratio = (&lp - &ref_lp)?;
        let (chosen, rejected) = (ratio.narrow(0, 0, n)?, ratio.narrow(0, n, n)?);
        let h = (&chosen - &rejected)?;
        let beta = self.config.beta;
        let loss = match self.config.loss {
            DpoLoss::Sigmoid => {
                let eps = self.config.label_smoothing;
                let bh = h.affine(beta, 0.0)?;
                let agree = loss::log_sigmoid(&bh)?.affine(-(1.0 - eps), 0.0)?;
                if eps > 0.0 {
                    (agree + loss::log_sigmoid(&bh.neg()?)?.affine(-eps, 0.0)?)?
                } else {
                    agree
                }
            }
            DpoLoss::Ipo => h.affine(1.0, -1.0 / (2.0 * beta))?.sqr()?,
        }
        .mean_all()?;
        let loss = if self.config.nll_weight > 0.0 {
            // Per-token NLL of the chosen answers, so the weight means the same for short and
            // long answers.
            let chosen_tokens = batch
                .rows
                .mask
                .narrow(0, 0, n)?
                .sum(1)?
                .clamp(1f32, f32::MAX)?;
            let nll = (lp.narrow(0, 0, n)?.neg()? / chosen_tokens)?.mean_all()?;
            (loss + nll.affine(self.config.nll_weight, 0.0)?)?
        } else {
            loss
        };
        let lp_values: Vec<f32> = lp.to_vec1()?;
        Ok(PairTerms {
            loss,
            h: h.to_vec1()?,
            chosen_ratio: chosen.to_vec1()?,
            rejected_ratio: rejected.to_vec1()?,
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

impl PairAligner for Dpo {
    fn label(&self) -> &'static str {
        "dpo"
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
            let batch = preference_batch::batch(
                job.examples,
                &pairs,
                job.tokenizer,
                run.ctx,
                job.policy.device(),
            )?;
            let terms = self.terms(job.policy, Some(run.reference.as_ref()), &batch, true)?;
            let loss = terms.loss.to_scalar::<f32>()? as f64;
            let applied = run
                .optimizer
                .step("dpo", &terms.loss, &job.policy.parameters())?;
            let mut m = self.report(&terms, loss, "");
            m.insert("lr".into(), applied.lr);
            m.insert("grad_norm".into(), applied.grad_norm);
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
        let reference = self.run.as_ref().map(|r| r.reference.as_ref());
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
            let t = self.terms(job.policy, reference, &batch, false)?;
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

    fn finish(&mut self, job: &AlignJob<'_>, ctx: &Context) -> Result<()> {
        let (Some(run_dir), Some(run)) = (&ctx.run_dir, &self.run) else {
            return Ok(());
        };
        let params = job.policy.parameters();
        let weights: Vec<(String, Tensor)> = params
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
            .collect();
        let moments = run.optimizer.moments(&params)?;
        let manifest = |files| {
            Ok(serde_json::to_vec_pretty(&json!({
                "format": "llmlab-aligner-checkpoint",
                "version": 1,
                "aligner": "dpo",
                "step": run.optimizer.step,
                "rng_state": checkpoint::format_rng_state(run.rng.state()),
                "config": self.config.to_json(),
                "model": { "name": job.policy.name(), "config": job.policy.config() },
                "files": files,
            }))?)
        };
        checkpoint::write_atomically(
            &run_dir.join(CHECKPOINT_DIR),
            &[
                ("model.safetensors", &weights),
                ("optimizer.safetensors", &moments),
            ],
            CHECKPOINT_MANIFEST,
            manifest,
        )
    }
}

impl Aligner for Dpo {
    fn name(&self) -> &str {
        "dpo"
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

pub struct DpoFactory;

impl Factory for DpoFactory {
    fn name(&self) -> &'static str {
        "dpo"
    }
    fn kind(&self) -> Kind {
        Kind::Aligner
    }
    fn about(&self) -> &'static str {
        "direct preference optimisation against a frozen reference copy: beta, label smoothing, sigmoid or IPO loss"
    }
    fn config_keys(&self) -> Vec<ConfigKey> {
        DpoConfig::keys()
    }
    fn create(&self, config: &Value, _: &Context) -> Result<Instance> {
        Ok(Instance::Aligner(Box::new(new_dpo(config)?)))
    }
}
