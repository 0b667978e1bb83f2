//! The `ppo` aligner: proximal policy optimisation for language models (Ziegler et al. 2019,
//! InstructGPT) of the policy given to `fit`, in place, with a value head on its hidden states
//! ([`ValueHead`]), a frozen reference copy, and a scalar score per completion from the job's
//! reward function (a reward model from `rl("reward")`, a task checker or a Rhai closure).
//!
//! One step: `batch_size` prompts, one sampled completion each ([`rollout`]), scored. The
//! rollout policy's per-token log-probabilities and values and the reference's log-probabilities
//! come from no-gradient passes. Per-token rewards are the KL penalty
//! `−kl_coef (log π_old − log π_ref)` on every completion token plus the (normalised, clipped)
//! score on the last; GAE ([`gae`], `gamma`, `lam`) gives advantages and value targets. Then
//! `epochs` passes in minibatches minimise, averaged over completion tokens,
//!
//! ```text
//! clipped surrogate (policy_loss)  +  vf_coef · ½ max((V − R)², (V_old + clip(V − V_old, ±value_clip) − R)²)
//! ```
//!
//! The "PPO-max" tricks (Zheng et al. 2023, "Secrets of RLHF"), each a switch: `reward_norm`
//! (scores standardised by the running mean and std of all scores so far), `reward_clip`
//! (clip the standardised score), `whiten_advantages` (batch-normalise advantages),
//! `clip_value_loss` (the value clipping above). `kl_coef: 0` drops the reference.
//!
//! Metrics per step: `reward_mean`, `reward_max`, `reward_std` (raw scores), `score_mean`
//! (after normalisation and clipping), `completion_len`, `loss`, `kl`, `ratio`,
//! `clip_fraction`, `value_loss`, `lr`, `grad_norm`, `rollout_tokens_per_s`,
//! `update_tokens_per_s`, `score_s`. At the end of `fit` the policy, value head and optimiser
//! state go to `<run dir>/checkpoint` (`value_head.safetensors` beside the model), and
//! `resume` continues from there bit-exactly (running score statistics included).
//!
//! `data_parallel: true` makes the update phase data-parallel as `grpo` does
//! (docs/distributed.md): every rank samples and scores the same rollouts (same weights, same
//! RNG) and computes the same values, KL-shaped rewards, GAE and whitening over whole rollouts;
//! each then learns from its slice of every minibatch (uneven when the minibatch does not
//! split, possibly empty). Both losses are means over the minibatch's completion tokens, so a
//! rank's loss is weighted by its share of those tokens and the ranks' gradients (policy and
//! value head) sum to the single-process ones. KL, ratio, clip fraction and value loss are
//! gathered and token-weighted, so rank 0 reports the minibatch's.

use std::time::Instant;

use llmlab_plugin_api::candle::{DType, Tensor};
use llmlab_plugin_api::config::TypedConfig;
use llmlab_plugin_api::prelude::*;
use llmlab_train::data_parallel::DataParallel;

use crate::advantage;
use crate::fit::{self, SteppedAligner};
use crate::gae::gae;
use crate::online::{self, OnlineRun, UpdateStats};
use crate::online_config::PpoConfig;
use crate::optimizer::join_world;
use crate::policy_checkpoint::{self, Saved};
use crate::policy_loss;
use crate::rollout::{self, Sample, SequenceBatch};
use crate::value_head::{no_hidden, ValueHead};

/// Running mean and variance of every score seen (Welford), for `reward_norm`.
#[derive(Debug, Clone, Default)]
pub struct RunningStats {
    count: f64,
    mean: f64,
    m2: f64,
}

impl RunningStats {
    pub fn add(&mut self, x: f64) {
        self.count += 1.0;
        let d = x - self.mean;
        self.mean += d / self.count;
        self.m2 += d * (x - self.mean);
    }
    pub fn mean(&self) -> f64 {
        self.mean
    }
    pub fn std(&self) -> f64 {
        if self.count < 2.0 {
            1.0
        } else {
            (self.m2 / self.count).sqrt()
        }
    }
    /// For checkpoints (JSON numbers round-trip f64 exactly).
    pub fn to_json(&self) -> Value {
        json!({ "count": self.count, "mean": self.mean, "m2": self.m2 })
    }
    pub fn from_json(v: &Value) -> Option<RunningStats> {
        Some(RunningStats {
            count: v["count"].as_f64()?,
            mean: v["mean"].as_f64()?,
            m2: v["m2"].as_f64()?,
        })
    }
}

/// The value head's file in the checkpoint.
pub const VALUE_HEAD_FILE: &str = "value_head.safetensors";

struct PpoRun {
    online: OnlineRun,
    head: ValueHead,
    scores: RunningStats,
}

pub struct Ppo {
    config: PpoConfig,
    run: Option<PpoRun>,
}

pub fn new_ppo(config: &Value) -> Result<Ppo> {
    Ok(Ppo {
        config: PpoConfig::from_json("ppo", config)?,
        run: None,
    })
}

/// A rollout turned into learning targets.
struct Targets {
    old_logp: Vec<Vec<f32>>,
    ref_logp: Option<Vec<Vec<f32>>>,
    old_values: Vec<Vec<f32>>,
    advantages: Vec<Vec<f32>>,
    returns: Vec<Vec<f32>>,
    scores: Vec<f32>,
}

impl Ppo {
    /// The frozen reference, once the first step has taken it (`None` with `kl_coef` 0).
    pub fn reference(&self) -> Option<&dyn Model> {
        self.run
            .as_ref()
            .and_then(|r| r.online.reference.as_deref())
    }

    /// The score a completion's last token gets: normalised and clipped as configured.
    fn shaped_score(&self, stats: &RunningStats, raw: f32) -> f32 {
        let mut s = raw as f64;
        if self.config.reward_norm {
            s = (s - stats.mean()) / (stats.std() + 1e-8);
        }
        if self.config.reward_clip > 0.0 {
            s = s.clamp(-self.config.reward_clip, self.config.reward_clip);
        }
        s as f32
    }

    fn targets(&self, run: &mut PpoRun, job: &AlignJob<'_>, samples: &[Sample]) -> Result<Targets> {
        let chunk = self.config.common().minibatch(samples.len());
        let old = online::score_tokens(job.policy, samples, job.tokenizer, chunk, Some(&run.head))?;
        let (old_logp, old_values) = (old.logp, old.values);
        let ref_logp = match &run.online.reference {
            Some(r) => {
                Some(online::score_tokens(r.as_ref(), samples, job.tokenizer, chunk, None)?.logp)
            }
            None => None,
        };
        for s in samples {
            run.scores.add(s.reward as f64);
        }
        let scores: Vec<f32> = samples
            .iter()
            .map(|s| self.shaped_score(&run.scores, s.reward))
            .collect();
        let (gamma, lam) = (self.config.gamma as f32, self.config.lam as f32);
        let (mut advantages, mut returns) = (Vec::new(), Vec::new());
        for (i, old) in old_logp.iter().enumerate() {
            let mut rewards: Vec<f32> = match &ref_logp {
                Some(r) => old
                    .iter()
                    .zip(&r[i])
                    .map(|(o, r)| -(self.config.kl_coef as f32) * (o - r))
                    .collect(),
                None => vec![0.0; old.len()],
            };
            if let Some(last) = rewards.last_mut() {
                *last += scores[i];
            }
            let (a, r) = gae(&rewards, &old_values[i], gamma, lam);
            advantages.push(a);
            returns.push(r);
        }
        if self.config.whiten_advantages {
            let mut flat: Vec<f32> = advantages.iter().flatten().copied().collect();
            advantage::whiten(&mut flat, 1e-8);
            let mut it = flat.into_iter();
            for row in advantages.iter_mut() {
                row.iter_mut().for_each(|a| *a = it.next().unwrap_or(0.0));
            }
        }
        Ok(Targets {
            old_logp,
            ref_logp,
            old_values,
            advantages,
            returns,
            scores,
        })
    }

    /// With `data_parallel`: the job's world, checked to run the same aligner, config, model and
    /// data on every rank, with rank 0's policy and value head.
    fn join(&self, job: &AlignJob<'_>, head: &ValueHead) -> Result<Option<DataParallel>> {
        if !self.config.data_parallel {
            return Ok(None);
        }
        let keys = (self.config.zero, self.config.bucket_mb);
        let mut dp = join_world("ppo", &self.config.to_json(), keys, job, "prompts")?;
        let mut params = job.policy.parameters();
        params.extend(head.parameters());
        dp.sync_params(&params)?;
        Ok(Some(dp))
    }

    fn step_once(&self, run: &mut PpoRun, job: &AlignJob<'_>) -> Result<StepMetrics> {
        let c = self.config.common();
        let reward = rollout::reward_of("ppo", job.reward)?;
        let prompts = online::next_prompts(&mut run.online, job, self.config.batch_size);
        let mut rollouts = rollout::generate(
            job.policy,
            job.tokenizer,
            &prompts,
            1,
            online::sampling(&c),
            &mut run.online.rng,
        )?;
        let scoring = Instant::now();
        rollout::score(&mut rollouts.samples, reward)?;
        let score_s = scoring.elapsed().as_secs_f64();
        let raw: Vec<f32> = rollouts.samples.iter().map(|s| s.reward).collect();

        let updating = Instant::now();
        let samples = &rollouts.samples;
        let t = self.targets(run, job, samples)?;
        let passes = 1 + t.ref_logp.is_some() as usize;
        let mut passes_tokens = passes * samples.iter().map(|s| s.ids.len()).sum::<usize>();
        let mut params = job.policy.parameters();
        params.extend(run.head.parameters());
        let device = job.policy.device().clone();
        let mut stats = UpdateStats::default();
        let chunk = c.minibatch(samples.len());
        for _ in 0..self.config.epochs {
            let order = run.online.rng.permutation(samples.len());
            for whole in order.chunks(chunk) {
                let whole_tokens: usize = whole.iter().map(|&i| samples[i].ids.len()).sum();
                // Data parallel: this rank's slice of the minibatch; both losses are token
                // means, so its weight is its share of the minibatch's completion tokens.
                let (mb, weight) = match run.online.optimizer.data_parallel() {
                    Some(dp) => {
                        let mine = &whole[dp.slice(whole.len())];
                        let of = |rows: &[usize]| -> usize {
                            rows.iter().map(|&i| samples[i].completion_len()).sum()
                        };
                        (mine, of(mine) as f64 / of(whole).max(1) as f64)
                    }
                    None => (whole, 1.0),
                };
                if mb.is_empty() {
                    // Nothing of this minibatch here: a zero share, same collectives.
                    let nothing = Tensor::zeros((), DType::F32, &device)?;
                    let applied = run.online.optimizer.step("ppo", &nothing, &params)?;
                    stats.add_update_with_value(
                        &applied,
                        [0.0; 4],
                        0,
                        run.online.optimizer.data_parallel(),
                    )?;
                    stats.tokens += whole_tokens;
                    continue;
                }
                let picked: Vec<&Sample> = mb.iter().map(|&i| &samples[i]).collect();
                let batch = SequenceBatch::new(&picked, job.tokenizer, &device)?;
                let kept = batch.completion_tokens();
                let (logp, hidden, aux) = rollout::policy_log_probs(job.policy, &batch, true)?;
                let hidden = hidden.ok_or_else(|| no_hidden(job.policy))?;
                let values = run.head.values(&hidden)?;
                let surrogate = policy_loss::clipped_surrogate(
                    &logp,
                    &batch.grid(&t.old_logp, mb, &device)?,
                    &batch.grid(&t.advantages, mb, &device)?,
                    &batch.mask,
                    self.config.clip_eps,
                )?;
                let returns = batch.grid(&t.returns, mb, &device)?;
                let unclipped = (&values - &returns)?.sqr()?;
                let value_err = if self.config.clip_value_loss {
                    let old_v = batch.grid(&t.old_values, mb, &device)?;
                    let vc = self.config.value_clip;
                    let clipped = ((&values - &old_v)?.clamp(-vc, vc)? + &old_v)?;
                    unclipped.maximum(&(clipped - &returns)?.sqr()?)?
                } else {
                    unclipped
                };
                let value_loss =
                    policy_loss::masked_mean(&value_err, &batch.mask, kept)?.affine(0.5, 0.0)?;
                let policy_loss =
                    policy_loss::masked_mean(&surrogate.per_token, &batch.mask, kept)?;
                let loss = (policy_loss + value_loss.affine(self.config.vf_coef, 0.0)?)?;
                let loss = crate::policy_loss::with_aux(loss, aux)?;
                let loss = if weight != 1.0 {
                    loss.affine(weight, 0.0)?
                } else {
                    loss
                };
                let kl_value = match &t.ref_logp {
                    Some(r) => {
                        let ref_grid = batch.grid(r, mb, &device)?;
                        let kl = policy_loss::k3_kl(&logp.detach(), &ref_grid)?;
                        policy_loss::masked_mean(&kl, &batch.mask, kept)?.to_scalar::<f32>()? as f64
                    }
                    None => 0.0,
                };
                let applied = run.online.optimizer.step("ppo", &loss, &params)?;
                stats.add_update_with_value(
                    &applied,
                    [
                        kl_value,
                        surrogate.ratio_mean,
                        surrogate.clip_fraction,
                        value_loss.to_scalar::<f32>()? as f64,
                    ],
                    kept,
                    run.online.optimizer.data_parallel(),
                )?;
                stats.tokens += whole_tokens;
            }
        }
        passes_tokens += stats.tokens;
        let update_s = updating.elapsed().as_secs_f64();
        run.online.steps += 1;

        let mut m = StepMetrics::new();
        m.insert("reward_mean".into(), online::mean(&raw));
        m.insert("reward_max".into(), online::max(&raw));
        m.insert("reward_std".into(), online::std(&raw));
        m.insert("score_mean".into(), online::mean(&t.scores));
        m.insert(
            "completion_len".into(),
            rollouts.completion_tokens() as f64 / samples.len().max(1) as f64,
        );
        m.insert("score_s".into(), score_s);
        stats.report(&mut m, true);
        online::throughput(
            &mut m,
            rollouts.completion_tokens(),
            rollouts.generate_s,
            passes_tokens,
            update_s,
        );
        Ok(m)
    }
}

impl SteppedAligner for Ppo {
    fn label(&self) -> &'static str {
        "ppo"
    }
    fn total_steps(&self) -> u64 {
        self.config.steps
    }
    fn steps_done(&self) -> u64 {
        self.run.as_ref().map_or(0, |r| r.online.steps)
    }
    fn log_every(&self) -> u64 {
        self.config.log_every
    }
    fn eval_every(&self) -> u64 {
        0
    }

    fn one_step(&mut self, job: &AlignJob<'_>, ctx: &Context) -> Result<StepMetrics> {
        let mut run = match self.run.take() {
            Some(run) => run,
            None => {
                // Data parallel: every rank starts from rank 0's policy (and value head),
                // before the reference copy is taken from it.
                let head = ValueHead::new(job.policy)?;
                let dp = self.join(job, &head)?;
                let mut run = PpoRun {
                    online: online::start("ppo", &self.config.common(), job, ctx)?,
                    head,
                    scores: RunningStats::default(),
                };
                if let Some(dp) = dp {
                    run.online.optimizer.join(dp);
                }
                if let Some(path) = &self.config.resume {
                    let mut trained = job.policy.parameters();
                    trained.extend(run.head.parameters());
                    let saved = online::resume("ppo", path, &mut run.online, job, &trained, ctx)?;
                    saved.restore_vars(VALUE_HEAD_FILE, &run.head.parameters())?;
                    run.scores =
                        RunningStats::from_json(&saved.state["scores"]).ok_or_else(|| {
                            Error::Data(format!(
                                "{}: no running score statistics in the checkpoint",
                                saved.dir.display()
                            ))
                        })?;
                }
                run
            }
        };
        let result = self.step_once(&mut run, job);
        self.run = Some(run);
        result.map_err(|e| match e {
            Error::Cancelled => Error::Cancelled,
            e => Error::msg(format!("step {}: {e}", self.steps_done() + 1)),
        })
    }

    /// Nothing held out inside `fit`: `evaluate` on held-out prompts measures.
    fn held_out(&mut self, _: &AlignJob<'_>, _: &Context) -> Result<StepMetrics> {
        Ok(StepMetrics::new())
    }

    fn writes(&self) -> bool {
        self.run
            .as_ref()
            .is_none_or(|r| r.online.optimizer.writes())
    }

    fn finish(&mut self, job: &AlignJob<'_>, ctx: &Context) -> Result<()> {
        let (Some(run_dir), Some(run)) = (&ctx.run_dir, self.run.as_mut()) else {
            return Ok(());
        };
        let mut trained = job.policy.parameters();
        trained.extend(run.head.parameters());
        let mut state = online::saved_state(&run.online);
        state["scores"] = run.scores.to_json();
        let head = run.head.tensors();
        policy_checkpoint::write(
            run_dir,
            job.policy,
            &mut run.online.optimizer,
            &trained,
            Saved {
                aligner: "ppo",
                config: self.config.to_json(),
                step: run.online.steps,
                rng_state: run.online.rng.state(),
                extra: Some((VALUE_HEAD_FILE, head)),
                reference: run.online.reference.as_deref(),
                state,
            },
        )
    }

    fn message(&self, m: &StepMetrics) -> String {
        online::message(m)
    }
}

impl Aligner for Ppo {
    fn name(&self) -> &str {
        "ppo"
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
    fn evaluate(&mut self, job: &AlignJob<'_>, _: &Context) -> Result<StepMetrics> {
        online::evaluate("ppo", &self.config.common(), job)
    }
}

pub struct PpoFactory;

impl Factory for PpoFactory {
    fn name(&self) -> &'static str {
        "ppo"
    }
    fn kind(&self) -> Kind {
        Kind::Aligner
    }
    fn about(&self) -> &'static str {
        "PPO with a value head: per-token KL penalty to a frozen reference, GAE, clipped policy and value losses, PPO-max switches"
    }
    fn config_keys(&self) -> Vec<ConfigKey> {
        PpoConfig::keys()
    }
    fn create(&self, config: &Value, _: &Context) -> Result<Instance> {
        Ok(Instance::Aligner(Box::new(new_ppo(config)?)))
    }
}
