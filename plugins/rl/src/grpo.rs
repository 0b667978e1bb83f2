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
//! Metrics per step: `reward_mean`, `reward_max`, `reward_std`, `flat_groups` (fraction of
//! groups with one reward for all: no signal), `completion_len`, `loss`, `kl`, `ratio`,
//! `clip_fraction`, `lr`, `grad_norm`, `rollout_tokens_per_s`, `update_tokens_per_s`,
//! `score_s` (seconds spent in the reward function). At the end of `fit` the policy and
//! optimiser state go to `<run dir>/checkpoint` ([`policy_checkpoint`]).

use std::time::Instant;

use llmlab_plugin_api::config::TypedConfig;
use llmlab_plugin_api::prelude::*;

use crate::advantage;
use crate::fit::{self, PairAligner};
use crate::online::{self, OnlineRun, UpdateStats};
use crate::online_config::{Aggregation, GrpoConfig};
use crate::policy_checkpoint::{self, Saved};
use crate::policy_loss;
use crate::rollout::{self, Sample, SequenceBatch};

/// Added to a group's standard deviation before dividing by it.
const STD_EPS: f32 = 1e-4;

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

    fn step_once(&self, run: &mut OnlineRun, job: &AlignJob<'_>) -> Result<StepMetrics> {
        let c = self.config.common();
        let reward = rollout::reward_of("grpo", job.reward)?;
        let prompts = online::next_prompts(run, job, self.config.batch_size);
        let mut rollouts = rollout::generate(
            job.policy,
            job.tokenizer,
            &prompts,
            self.config.group_size,
            online::sampling(&c),
            &mut run.rng,
        )?;
        let scoring = Instant::now();
        rollout::score(&mut rollouts.samples, reward)?;
        let score_s = scoring.elapsed().as_secs_f64();
        let rewards: Vec<f32> = rollouts.samples.iter().map(|s| s.reward).collect();
        let advantages = advantage::group_normalized(
            &rewards,
            self.config.group_size,
            self.config.scale_rewards,
            STD_EPS,
        );

        let updating = Instant::now();
        let samples = &rollouts.samples;
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
        for _ in 0..self.config.epochs {
            let order = run.rng.permutation(rows);
            for mb in order.chunks(chunk) {
                let picked: Vec<&Sample> = mb.iter().map(|&i| &samples[i]).collect();
                let batch = SequenceBatch::new(&picked, job.tokenizer, device)?;
                let kept = batch.completion_tokens();
                let (logp, _) = rollout::token_log_probs(job.policy, &batch, false)?;
                let surrogate = policy_loss::clipped_surrogate(
                    &logp,
                    &batch.grid(&old, mb, device)?,
                    &batch.grid(&token_advantages, mb, device)?,
                    &batch.mask,
                    self.config.clip_eps,
                )?;
                let mut per_token = surrogate.per_token;
                let mut kl_value = 0.0;
                if let Some(reference) = &reference {
                    let kl = policy_loss::k3_kl(&logp, &batch.grid(reference, mb, device)?)?;
                    kl_value = policy_loss::masked_mean(&kl, &batch.mask, kept)?
                        .to_scalar::<f32>()? as f64;
                    per_token = (per_token + kl.affine(self.config.kl_coef, 0.0)?)?;
                }
                let loss = match self.config.loss_aggregation {
                    Aggregation::Sequence => policy_loss::sequence_mean(&per_token, &batch.mask)?,
                    Aggregation::Token => policy_loss::masked_mean(&per_token, &batch.mask, kept)?,
                };
                let applied = run.optimizer.step("grpo", &loss, &params)?;
                stats.updates += 1;
                stats.loss += loss.to_scalar::<f32>()? as f64;
                stats.kl += kl_value;
                stats.ratio += surrogate.ratio_mean;
                stats.clip_fraction += surrogate.clip_fraction;
                stats.lr = applied.lr;
                stats.grad_norm = applied.grad_norm;
                stats.tokens += batch.real_tokens;
            }
        }
        passes_tokens += stats.tokens;
        let update_s = updating.elapsed().as_secs_f64();
        run.steps += 1;

        let mut m = StepMetrics::new();
        m.insert("reward_mean".into(), online::mean(&rewards));
        m.insert("reward_max".into(), online::max(&rewards));
        m.insert("reward_std".into(), online::std(&rewards));
        m.insert(
            "flat_groups".into(),
            advantage::flat_group_fraction(&rewards, self.config.group_size),
        );
        m.insert(
            "completion_len".into(),
            rollouts.completion_tokens() as f64 / rows.max(1) as f64,
        );
        m.insert("score_s".into(), score_s);
        stats.report(&mut m, false);
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

impl PairAligner for Grpo {
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
            None => online::start("grpo", &self.config.common(), job, ctx)?,
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

    fn finish(&mut self, job: &AlignJob<'_>, ctx: &Context) -> Result<()> {
        let (Some(run_dir), Some(run)) = (&ctx.run_dir, &self.run) else {
            return Ok(());
        };
        policy_checkpoint::write(
            run_dir,
            job.policy,
            &run.optimizer,
            &job.policy.parameters(),
            Saved {
                aligner: "grpo",
                config: self.config.to_json(),
                step: run.steps,
                rng_state: run.rng.state(),
                extra: None,
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
