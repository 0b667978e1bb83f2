//! The `grpo` aligner: group relative policy optimisation (Shao et al. 2024, DeepSeekMath) of
//! the policy given to `fit`, in place, with rewards from the job's reward function (a Rhai
//! closure, a task checker or a reward model, all behind `RewardFn`).
//!
//! One step: take `batch_size` prompts, sample `group_size` completions of each with the
//! policy's generator ([`rollout`]), score them, and turn rewards into group-normalised
//! advantages ([`advantage::group_normalized`]): every token of completion `i` gets
//! `A_i = (r_i − mean) / (std + 1e-4)` of its group. Then `epochs` passes over the completions
//! in minibatches minimise the clipped surrogate plus `kl_coef` times the k3 KL to a frozen
//! reference copy taken at the first step ([`policy_loss`]), averaged per completion and then
//! over completions (`loss_aggregation: "sequence"`) or over all tokens (`"token"`). No value
//! function: the group is the baseline.
//!
//! `loss_type` and `importance` choose the variants DAPO, RLOO, REINFORCE++ and GSPO
//! ([`grpo_variant`]).
//!
//! Metrics per step: `reward_mean`, `reward_max`, `reward_std`, `flat_groups` (fraction of
//! groups with one reward for all: no signal), `kept_groups` (groups learned from per
//! `batch_size`: below 1 when dynamic sampling ran out of tries), `rollout_batches`,
//! `completion_len`, `loss`, `kl`, `ratio`,
//! `clip_fraction`, `lr`, `grad_norm`, `rollout_tokens_per_s`, `update_tokens_per_s`,
//! `score_s` (seconds spent in the reward function). At the end of `fit` the policy and
//! optimiser state go to `<run dir>/checkpoint` ([`policy_checkpoint`]).
//!
//! `data_parallel: true` makes the update phase data-parallel (docs/distributed.md): every rank
//! samples and scores the same rollouts (same weights, same RNG), and each learns from its slice
//! of every minibatch, its loss weighted so the ranks' gradients sum to the single-process ones
//! (a share of the rows for `"sequence"`, the minibatch's global token count as divisor for
//! `"token"`); a slice may be empty when dynamic sampling leaves an uneven minibatch.

use std::time::Instant;

use llmlab_plugin_api::candle::{DType, Tensor};
use llmlab_plugin_api::config::TypedConfig;
use llmlab_plugin_api::prelude::*;
use llmlab_train::data_parallel::DataParallel;

use crate::advantage;
use crate::fit::{self, SteppedAligner};
use crate::grpo_variant;
use crate::online::{self, OnlineRun, UpdateStats};
use crate::online_config::{Aggregation, GrpoConfig};
use crate::optimizer::join_world;
use crate::policy_checkpoint::{self, Saved};
use crate::policy_loss;
use crate::rollout::{self, Sample, SequenceBatch};

/// Added to a group's standard deviation before dividing by it.
const STD_EPS: f32 = 1e-4;

/// The completions a step learns from, and what sampling them cost.
#[derive(Default)]
struct Groups {
    /// Whole groups, prompt-major; rewards shaped (overlong penalty).
    samples: Vec<Sample>,
    /// The task's rewards of everything sampled this step (for the metrics).
    task_rewards: Vec<f32>,
    /// Fraction of flat groups in the first rollout batch.
    flat_groups: f64,
    batches: usize,
    sampled_tokens: usize,
    generate_s: f64,
    score_s: f64,
}

pub struct Grpo {
    config: GrpoConfig,
    run: Option<OnlineRun>,
}

pub fn new_grpo(config: &Value) -> Result<Grpo> {
    Ok(Grpo {
        config: GrpoConfig::from_json("grpo", config)?,
        run: None,
    })
}

impl Grpo {
    /// The frozen reference, once the first step has taken it (`None` with `kl_coef` 0).
    pub fn reference(&self) -> Option<&dyn Model> {
        self.run.as_ref().and_then(|r| r.reference.as_deref())
    }

    /// Samples and scores the step's groups: one rollout batch, or with dynamic sampling, up to
    /// `1 + max_resample` of them, keeping only groups whose rewards differ.
    fn sample_groups(&self, run: &mut OnlineRun, job: &AlignJob<'_>) -> Result<Groups> {
        let c = self.config.common();
        let reward = rollout::reward_of("grpo", job.reward)?;
        let g = self.config.group_size;
        let wanted = self.config.batch_size * g;
        let (buffer, penalty) = (self.config.overlong_buffer(), self.config.overlong_penalty);
        let mut out = Groups::default();
        for attempt in 0..=self.config.max_resample {
            let prompts = online::next_prompts(run, job, self.config.batch_size);
            let mut rollouts = rollout::generate(
                job.policy,
                job.tokenizer,
                &prompts,
                g,
                online::sampling(&c),
                &mut run.rng,
            )?;
            let scoring = Instant::now();
            rollout::score(&mut rollouts.samples, reward)?;
            out.score_s += scoring.elapsed().as_secs_f64();
            out.generate_s += rollouts.generate_s;
            out.sampled_tokens += rollouts.completion_tokens();
            out.batches += 1;
            let task: Vec<f32> = rollouts.samples.iter().map(|s| s.reward).collect();
            if attempt == 0 {
                out.flat_groups = advantage::flat_group_fraction(&task, g);
            }
            out.task_rewards.extend(&task);
            for s in rollouts.samples.iter_mut() {
                s.reward += grpo_variant::overlong_penalty(
                    s.completion_len(),
                    c.max_tokens,
                    buffer,
                    penalty,
                );
            }
            if !self.config.dynamic_sampling() {
                out.samples = rollouts.samples;
                break;
            }
            let shaped: Vec<f32> = rollouts.samples.iter().map(|s| s.reward).collect();
            for group in grpo_variant::informative_groups(&shaped, g) {
                if out.samples.len() < wanted {
                    out.samples
                        .extend_from_slice(&rollouts.samples[group * g..(group + 1) * g]);
                }
            }
            if out.samples.len() >= wanted {
                break;
            }
        }
        Ok(out)
    }

    /// With `data_parallel`: the job's world, checked to run the same aligner, config, model and
    /// data on every rank, with rank 0's weights.
    fn join(&self, job: &AlignJob<'_>) -> Result<Option<DataParallel>> {
        if !self.config.data_parallel {
            return Ok(None);
        }
        let keys = (self.config.zero, self.config.bucket_mb);
        let mut dp = join_world("grpo", &self.config.to_json(), keys, job, "prompts")?;
        dp.sync_params(&job.policy.parameters())?;
        Ok(Some(dp))
    }

    fn step_once(&self, run: &mut OnlineRun, job: &AlignJob<'_>) -> Result<StepMetrics> {
        let c = self.config.common();
        let groups = self.sample_groups(run, job)?;
        let rewards: Vec<f32> = groups.samples.iter().map(|s| s.reward).collect();
        let advantages = grpo_variant::advantages(
            self.config.loss_type,
            &rewards,
            self.config.group_size,
            self.config.scale_rewards,
            STD_EPS,
        );

        let updating = Instant::now();
        let samples = &groups.samples;
        let rows = samples.len();
        let chunk = c.minibatch(rows);
        let device = job.policy.device();
        // Every token of a completion gets the completion's advantage.
        let token_advantages: Vec<Vec<f32>> = samples
            .iter()
            .zip(&advantages)
            .map(|(s, &a)| vec![a; s.completion_len()])
            .collect();
        let old = online::score_tokens(job.policy, samples, job.tokenizer, chunk, None)?.logp;
        let reference = match &run.reference {
            Some(r) => {
                Some(online::score_tokens(r.as_ref(), samples, job.tokenizer, chunk, None)?.logp)
            }
            None => None,
        };
        let passes = 1 + reference.is_some() as usize;
        let mut passes_tokens = passes * samples.iter().map(|s| s.ids.len()).sum::<usize>();
        let mut stats = UpdateStats::default();
        let params = job.policy.parameters();
        // Dynamic sampling can leave no group with a signal: then the step makes no update.
        let epochs = if rows == 0 { 0 } else { self.config.epochs };
        for _ in 0..epochs {
            let order = run.rng.permutation(rows);
            for whole in order.chunks(chunk) {
                // Data parallel: this rank's slice of the minibatch, weighted by its share.
                let (mb, weight) = match run.optimizer.data_parallel() {
                    Some(dp) => {
                        let mine = &whole[dp.slice(whole.len())];
                        let weight = match self.config.aggregation() {
                            Aggregation::Sequence => mine.len() as f64 / whole.len() as f64,
                            // The divisor is the whole minibatch's completion tokens.
                            Aggregation::Token => {
                                let of = |rows: &[usize]| -> usize {
                                    rows.iter().map(|&i| samples[i].completion_len()).sum()
                                };
                                of(mine) as f64 / of(whole).max(1) as f64
                            }
                        };
                        (mine, weight)
                    }
                    None => (whole, 1.0),
                };
                if mb.is_empty() {
                    // Nothing of this minibatch here: a zero share, same collectives.
                    let nothing = Tensor::zeros((), DType::F32, device)?;
                    let applied = run.optimizer.step("grpo", &nothing, &params)?;
                    stats.add_update(&applied, [0.0; 3], 0, run.optimizer.data_parallel())?;
                    stats.tokens += whole.iter().map(|&i| samples[i].ids.len()).sum::<usize>();
                    continue;
                }
                let picked: Vec<&Sample> = mb.iter().map(|&i| &samples[i]).collect();
                let batch = SequenceBatch::new(&picked, job.tokenizer, device)?;
                let kept = batch.completion_tokens();
                let (logp, _, aux) = rollout::policy_log_probs(job.policy, &batch, false)?;
                let surrogate = policy_loss::clipped_surrogate_with(
                    &logp,
                    &batch.grid(&old, mb, device)?,
                    &batch.grid(&token_advantages, mb, device)?,
                    &batch.mask,
                    self.config.clip_range(),
                    self.config.importance,
                )?;
                let mut per_token = surrogate.per_token;
                let mut kl_value = 0.0;
                if let Some(reference) = &reference {
                    let kl = policy_loss::k3_kl(&logp, &batch.grid(reference, mb, device)?)?;
                    kl_value = policy_loss::masked_mean(&kl, &batch.mask, kept)?
                        .to_scalar::<f32>()? as f64;
                    per_token = (per_token + kl.affine(self.config.kl_coef, 0.0)?)?;
                }
                let loss = match self.config.aggregation() {
                    Aggregation::Sequence => policy_loss::sequence_mean(&per_token, &batch.mask)?,
                    Aggregation::Token => policy_loss::masked_mean(&per_token, &batch.mask, kept)?,
                };
                let loss = policy_loss::with_aux(loss, aux)?;
                let loss = if weight != 1.0 {
                    loss.affine(weight, 0.0)?
                } else {
                    loss
                };
                let applied = run.optimizer.step("grpo", &loss, &params)?;
                stats.add_update(
                    &applied,
                    [kl_value, surrogate.ratio_mean, surrogate.clip_fraction],
                    kept,
                    run.optimizer.data_parallel(),
                )?;
                stats.tokens += whole.iter().map(|&i| samples[i].ids.len()).sum::<usize>();
            }
        }
        passes_tokens += stats.tokens;
        let update_s = updating.elapsed().as_secs_f64();
        run.steps += 1;

        let task = &groups.task_rewards;
        let mut m = StepMetrics::new();
        m.insert("reward_mean".into(), online::mean(task));
        m.insert("reward_max".into(), online::max(task));
        m.insert("reward_std".into(), online::std(task));
        m.insert("flat_groups".into(), groups.flat_groups);
        m.insert(
            "kept_groups".into(),
            (rows / self.config.group_size) as f64 / self.config.batch_size as f64,
        );
        m.insert("rollout_batches".into(), groups.batches as f64);
        m.insert(
            "completion_len".into(),
            groups.sampled_tokens as f64 / task.len().max(1) as f64,
        );
        m.insert("score_s".into(), groups.score_s);
        stats.report(&mut m, false);
        online::throughput(
            &mut m,
            groups.sampled_tokens,
            groups.generate_s,
            passes_tokens,
            update_s,
        );
        Ok(m)
    }
}

impl SteppedAligner for Grpo {
    fn label(&self) -> &'static str {
        "grpo"
    }
    fn total_steps(&self) -> u64 {
        self.config.steps
    }
    fn steps_done(&self) -> u64 {
        self.run.as_ref().map_or(0, |r| r.steps)
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
                // Data parallel: every rank starts from rank 0's policy, before the reference
                // copy is taken from it.
                let dp = self.join(job)?;
                let mut run = online::start("grpo", &self.config.common(), job, ctx)?;
                if let Some(dp) = dp {
                    run.optimizer.join(dp);
                }
                if let Some(path) = &self.config.resume {
                    online::resume("grpo", path, &mut run, job, &job.policy.parameters(), ctx)?;
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
        self.run.as_ref().is_none_or(|r| r.optimizer.writes())
    }

    fn finish(&mut self, job: &AlignJob<'_>, ctx: &Context) -> Result<()> {
        let (Some(run_dir), Some(run)) = (&ctx.run_dir, self.run.as_mut()) else {
            return Ok(());
        };
        let state = online::saved_state(run);
        policy_checkpoint::write(
            run_dir,
            job.policy,
            &mut run.optimizer,
            &job.policy.parameters(),
            Saved {
                aligner: "grpo",
                config: self.config.to_json(),
                step: run.steps,
                rng_state: run.rng.state(),
                extra: None,
                reference: run.reference.as_deref(),
                state,
            },
        )
    }

    fn message(&self, m: &StepMetrics) -> String {
        online::message(m)
    }
}

impl Aligner for Grpo {
    fn name(&self) -> &str {
        "grpo"
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
        online::evaluate("grpo", &self.config.common(), job)
    }
}

pub struct GrpoFactory;

impl Factory for GrpoFactory {
    fn name(&self) -> &'static str {
        "grpo"
    }
    fn kind(&self) -> Kind {
        Kind::Aligner
    }
    fn about(&self) -> &'static str {
        "group relative policy optimisation: sampled groups per prompt, group-normalised rewards, clipped ratio, KL to a frozen reference"
    }
    fn config_keys(&self) -> Vec<ConfigKey> {
        GrpoConfig::keys()
    }
    fn create(&self, config: &Value, _: &Context) -> Result<Instance> {
        Ok(Instance::Aligner(Box::new(new_grpo(config)?)))
    }
}
