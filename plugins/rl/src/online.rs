//! What the online aligners (`grpo`, `ppo`) share around their losses: the run state (frozen
//! reference, optimiser, seeded RNG, prompt order), the checks before the first rollout, the
//! no-gradient passes for the rollout policy's and the reference's per-token log-probabilities
//! (and values), greedy evaluation with the reward, and the update statistics they log.

use llmlab_plugin_api::prelude::*;
use llmlab_train::data_parallel::DataParallel;
use llmlab_train::SplitMix64;

use crate::online_config::Common;
use crate::optimizer::{Applied, Optimizer};
use crate::resume::{self, AlignerCheckpoint};
use crate::reward::check_vocab;
use crate::rollout::{self, PromptOrder, Sample, Sampling, SequenceBatch};
use crate::value_head::{no_hidden, ValueHead};

pub struct OnlineRun {
    /// `None` when `kl_coef` is 0: nothing to anchor to.
    pub reference: Option<Box<dyn Model>>,
    pub optimizer: Optimizer,
    pub rng: SplitMix64,
    pub order: PromptOrder,
    /// Rollout batches learned from.
    pub steps: u64,
}

/// Checks the job against the settings and takes the reference copy.
pub fn start(who: &str, c: &Common, job: &AlignJob<'_>, ctx: &Context) -> Result<OnlineRun> {
    check_vocab(job)?;
    rollout::reward_of(who, job.reward)?;
    if c.max_tokens >= job.policy.ctx_len() {
        return Err(Error::invalid_config(
            who,
            format!(
                "`max_tokens` ({}) must be smaller than the model's context length ({}) to leave room for a prompt",
                c.max_tokens,
                job.policy.ctx_len()
            ),
        ));
    }
    let mut rng = SplitMix64::new(c.seed.unwrap_or(ctx.seed));
    let order = PromptOrder::new(job.examples, &mut rng)?;
    Ok(OnlineRun {
        reference: if c.kl_coef > 0.0 {
            Some(job.policy.frozen_copy()?)
        } else {
            None
        },
        optimizer: Optimizer::new(c.optim),
        rng,
        order,
        steps: 0,
    })
}

/// Continues `run` from the checkpoint at `path`: the policy, the reference, the optimiser
/// (over `trained`), the RNG, the prompt order and the step count; the metrics log is rewound to
/// the checkpoint's step. The checkpoint is returned for what the aligner keeps besides.
pub fn resume(
    who: &str,
    path: &str,
    run: &mut OnlineRun,
    job: &AlignJob<'_>,
    trained: &[(String, Var)],
    ctx: &Context,
) -> Result<AlignerCheckpoint> {
    let saved = resume::open(who, path)?;
    saved.restore_model(job.policy)?;
    if run.reference.is_some() {
        run.reference = Some(saved.restore_reference(job.policy)?);
    }
    saved.restore_optimizer(&mut run.optimizer, trained)?;
    run.rng = SplitMix64::from_state(saved.rng_state);
    let order: Option<Vec<usize>> = serde_json::from_value(saved.state["order"].clone()).ok();
    let next = saved.state["next"].as_u64();
    match (order, next) {
        (Some(order), Some(next)) if order.len() == job.examples.len() => {
            run.order.order = order;
            run.order.next = next as usize;
        }
        _ => {
            return Err(Error::Data(format!(
                "{}: the saved prompt order does not fit {} ({} prompts); resume with the data the run was trained on",
                saved.dir.display(),
                job.examples.name(),
                job.examples.len()
            )))
        }
    }
    run.steps = saved.step;
    ctx.metrics.rewind(saved.step);
    Ok(saved)
}

/// The run state [`resume`] reads back: the prompt order.
pub fn saved_state(run: &OnlineRun) -> Value {
    json!({ "order": run.order.order, "next": run.order.next })
}

pub fn sampling(c: &Common) -> Sampling {
    Sampling {
        temperature: c.temperature,
        top_k: c.top_k,
        max_tokens: c.max_tokens,
    }
}

/// The prompts of the next rollout batch.
pub fn next_prompts(run: &mut OnlineRun, job: &AlignJob<'_>, k: usize) -> Vec<String> {
    run.order
        .take(k, &mut run.rng)
        .into_iter()
        .map(|i| job.examples.get(i).prompt)
        .collect()
}

/// Per completion token of each sample: log-probabilities, and values when a head was given.
pub struct TokenScores {
    pub logp: Vec<Vec<f32>>,
    pub values: Vec<Vec<f32>>,
}

/// Per-token log-probabilities under `model` of each sample's completion (and the value
/// head's values when given), from no-gradient passes over chunks of `chunk` rows.
pub fn score_tokens(
    model: &dyn Model,
    samples: &[Sample],
    tokenizer: &dyn Tokenizer,
    chunk: usize,
    value_head: Option<&ValueHead>,
) -> Result<TokenScores> {
    let (mut logps, mut values) = (Vec::new(), Vec::new());
    for rows in samples.chunks(chunk.max(1)) {
        let refs: Vec<&Sample> = rows.iter().collect();
        let batch = SequenceBatch::new(&refs, tokenizer, model.device())?;
        let (logp, hidden) = rollout::token_log_probs(model, &batch, value_head.is_some())?;
        logps.extend(batch.per_row(&logp.detach())?);
        if let Some(head) = value_head {
            let hidden = hidden.ok_or_else(|| no_hidden(model))?.detach();
            values.extend(batch.per_row(&head.values(&hidden)?)?);
        }
    }
    Ok(TokenScores {
        logp: logps,
        values,
    })
}

/// Greedy completions of the first `eval_n` prompts, scored: `val_reward` (mean),
/// `val_reward_max`, `val_completion_len`.
pub fn evaluate(who: &str, c: &Common, job: &AlignJob<'_>) -> Result<StepMetrics> {
    let reward = rollout::reward_of(who, job.reward)?;
    let n = c.eval_n.min(job.examples.len());
    let prompts: Vec<String> = (0..n).map(|i| job.examples.get(i).prompt).collect();
    let greedy = Sampling {
        temperature: 0.0,
        ..sampling(c)
    };
    let mut rewards = Vec::with_capacity(n);
    let mut lens = 0usize;
    for chunk in prompts.chunks(64) {
        let mut r = rollout::generate(
            job.policy,
            job.tokenizer,
            chunk,
            1,
            greedy,
            &mut SplitMix64::new(0),
        )?;
        rollout::score(&mut r.samples, reward)?;
        lens += r.completion_tokens();
        rewards.extend(r.samples.iter().map(|s| s.reward));
    }
    let mut m = StepMetrics::new();
    m.insert("val_reward".into(), mean(&rewards));
    m.insert("val_reward_max".into(), max(&rewards));
    m.insert("val_completion_len".into(), lens as f64 / n.max(1) as f64);
    Ok(m)
}

pub fn mean(xs: &[f32]) -> f64 {
    xs.iter().map(|&x| x as f64).sum::<f64>() / xs.len().max(1) as f64
}

pub fn max(xs: &[f32]) -> f64 {
    xs.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64
}

pub fn std(xs: &[f32]) -> f64 {
    let m = mean(xs);
    (xs.iter().map(|&x| (x as f64 - m).powi(2)).sum::<f64>() / xs.len().max(1) as f64).sqrt()
}

/// Sums over a step's optimiser updates, reported as means.
#[derive(Debug, Default)]
pub struct UpdateStats {
    pub updates: usize,
    pub loss: f64,
    pub kl: f64,
    pub ratio: f64,
    pub clip_fraction: f64,
    pub value_loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    /// Sequence tokens through forward + backward.
    pub tokens: usize,
}

impl UpdateStats {
    /// Counts one optimiser update: its global loss, and the minibatch's KL, ratio and clip
    /// fraction (`local`, over this process's `tokens` completion tokens). Data parallel: those
    /// three are gathered and weighted by each rank's tokens, so rank 0 reports the
    /// minibatch's.
    pub fn add_update(
        &mut self,
        applied: &Applied,
        local: [f64; 3],
        tokens: usize,
        dp: Option<&mut DataParallel>,
    ) -> Result<()> {
        let [kl, ratio, clip] = token_weighted(local, tokens, dp)?;
        self.count(applied, kl, ratio, clip);
        Ok(())
    }

    /// [`UpdateStats::add_update`] for PPO: the (token-mean) value loss is the fourth of
    /// `local`, gathered the same way.
    pub fn add_update_with_value(
        &mut self,
        applied: &Applied,
        local: [f64; 4],
        tokens: usize,
        dp: Option<&mut DataParallel>,
    ) -> Result<()> {
        let [kl, ratio, clip, value_loss] = token_weighted(local, tokens, dp)?;
        self.value_loss += value_loss;
        self.count(applied, kl, ratio, clip);
        Ok(())
    }

    fn count(&mut self, applied: &Applied, kl: f64, ratio: f64, clip: f64) {
        self.updates += 1;
        self.loss += applied.loss;
        self.kl += kl;
        self.ratio += ratio;
        self.clip_fraction += clip;
        self.lr = applied.lr;
        self.grad_norm = applied.grad_norm;
    }

    /// The means, plus `lr` and `grad_norm` of the last update.
    pub fn report(&self, m: &mut StepMetrics, with_value: bool) {
        let n = self.updates.max(1) as f64;
        m.insert("loss".into(), self.loss / n);
        m.insert("kl".into(), self.kl / n);
        m.insert("ratio".into(), self.ratio / n);
        m.insert("clip_fraction".into(), self.clip_fraction / n);
        if with_value {
            m.insert("value_loss".into(), self.value_loss / n);
        }
        m.insert("lr".into(), self.lr);
        m.insert("grad_norm".into(), self.grad_norm);
    }
}

/// Throughput metrics: completion tokens sampled per second of generation, sequence tokens
/// learned from per second of the update phase (its no-gradient passes included).
pub fn throughput(
    m: &mut StepMetrics,
    rollout_tokens: usize,
    generate_s: f64,
    update_tokens: usize,
    update_s: f64,
) {
    m.insert(
        "rollout_tokens_per_s".into(),
        rollout_tokens as f64 / generate_s.max(1e-9),
    );
    m.insert(
        "update_tokens_per_s".into(),
        update_tokens as f64 / update_s.max(1e-9),
    );
}

/// Token means over this process's `tokens` completion tokens as they are alone; data parallel,
/// the minibatch's: every rank's gathered and weighted by its tokens.
fn token_weighted<const N: usize>(
    local: [f64; N],
    tokens: usize,
    dp: Option<&mut DataParallel>,
) -> Result<[f64; N]> {
    let Some(dp) = dp else {
        return Ok(local);
    };
    let t = tokens as f32;
    let mut mine: Vec<f32> = local.iter().map(|v| *v as f32 * t).collect();
    mine.push(t);
    let all = dp.gather_rows(&mine)?;
    let mut sums = [0f64; N];
    let mut total = 0f64;
    for rank in all.chunks(N + 1) {
        sums.iter_mut().zip(rank).for_each(|(s, v)| *s += *v as f64);
        total += rank[N] as f64;
    }
    let n = total.max(1.0);
    Ok(sums.map(|s| s / n))
}

/// `grpo`/`ppo` progress message.
pub fn message(m: &StepMetrics) -> String {
    let get = |k: &str| m.get(k).copied().unwrap_or(f64::NAN);
    format!(
        "reward {:.3} | kl {:.4} | len {:.1}",
        get("reward_mean"),
        get("kl"),
        get("completion_len")
    )
}
