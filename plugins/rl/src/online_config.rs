//! Settings of the aligners that learn from their own samples: [`GrpoConfig`] (`rl("grpo", ..)`)
//! and [`PpoConfig`] (`rl("ppo", ..)`), their defaults, the one-line docs `help("grpo")` prints,
//! and the checks between keys. One *step* is one rollout batch: sample completions, score
//! them, then `epochs` passes of minibatch updates over them; the learning-rate schedule counts
//! the updates.

use llmlab_plugin_api::config::TypedConfig;
use llmlab_plugin_api::serde::{Deserialize, Serialize};

use crate::grpo_variant::{Importance, LossType};
use crate::optimizer::OptimSettings;

/// Declares the doc list of a config: the keys both aligners share, then its own.
macro_rules! docs {
    ($($key:literal => $doc:literal),* $(,)?) => {
        &[
            ("steps", "rollout batches to sample and learn from"),
            ("batch_size", "prompts per rollout batch"),
            ("epochs", "optimisation passes over each rollout batch"),
            ("minibatch_size", "completions per optimiser update; 0 = the whole rollout batch"),
            ("lr", "peak learning rate, reached after warmup (counted in updates)"),
            ("min_lr", "learning rate at the end of the cosine decay"),
            ("warmup", "updates of linear warmup from 0 to lr"),
            ("weight_decay", "decoupled (AdamW) weight decay on matrices (rank >= 2)"),
            ("grad_clip", "clip gradients to this global L2 norm; 0 = off"),
            ("clip_eps", "clip the policy ratio to [1 - clip_eps, 1 + clip_eps]"),
            ("kl_coef", "weight of the KL divergence to the frozen reference; 0 = no reference"),
            ("temperature", "sampling temperature of the rollouts (> 0)"),
            ("top_k", "sample rollouts among the k most likely tokens; 0 = off"),
            ("max_tokens", "longest completion in tokens"),
            ("eval_n", "prompts `evaluate` answers greedily (the first ones of the data)"),
            ("log_every", "report metrics every N steps"),
            ("seed", "seed of prompt order and sampling; null = the session seed"),
            ("resume", "run directory (or its checkpoint/) to continue from, bit-exactly; null = fresh"),
            $(($key, $doc)),*
        ]
    };
}

/// How the per-token GRPO loss becomes one number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(crate = "llmlab_plugin_api::serde", rename_all = "lowercase")]
pub enum Aggregation {
    /// Mean over each completion's tokens, then over completions (the GRPO paper).
    Sequence,
    /// Mean over all completion tokens of the minibatch (DAPO: long answers weigh more).
    Token,
}

/// `rl("grpo", ..)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(crate = "llmlab_plugin_api::serde", default, deny_unknown_fields)]
pub struct GrpoConfig {
    pub steps: u64,
    pub batch_size: usize,
    pub epochs: usize,
    pub minibatch_size: usize,
    pub lr: f64,
    pub min_lr: f64,
    pub warmup: u64,
    pub weight_decay: f64,
    pub grad_clip: f64,
    pub clip_eps: f64,
    pub kl_coef: f64,
    pub temperature: f64,
    pub top_k: usize,
    pub max_tokens: usize,
    pub eval_n: usize,
    pub log_every: u64,
    pub seed: Option<u64>,
    pub group_size: usize,
    pub scale_rewards: bool,
    pub loss_aggregation: Aggregation,
    pub loss_type: LossType,
    pub importance: Importance,
    pub clip_eps_high: Option<f64>,
    pub dynamic_sampling: Option<bool>,
    pub max_resample: usize,
    pub overlong_buffer: Option<usize>,
    pub overlong_penalty: f64,
    pub resume: Option<String>,
    /// Update phase as one rank of the job `mpirun` started (docs/distributed.md).
    pub data_parallel: bool,
    pub zero: u8,
    pub bucket_mb: f64,
}

impl Default for GrpoConfig {
    fn default() -> Self {
        GrpoConfig {
            steps: 100,
            batch_size: 16,
            epochs: 2,
            minibatch_size: 64,
            lr: 1e-4,
            min_lr: 1e-5,
            warmup: 10,
            weight_decay: 0.0,
            grad_clip: 1.0,
            clip_eps: 0.2,
            kl_coef: 0.04,
            temperature: 1.0,
            top_k: 0,
            max_tokens: 16,
            eval_n: 200,
            log_every: 1,
            seed: None,
            group_size: 8,
            scale_rewards: true,
            loss_aggregation: Aggregation::Sequence,
            loss_type: LossType::Grpo,
            importance: Importance::Token,
            clip_eps_high: None,
            dynamic_sampling: None,
            max_resample: 3,
            overlong_buffer: None,
            overlong_penalty: 1.0,
            resume: None,
            data_parallel: false,
            zero: 0,
            bucket_mb: 25.0,
        }
    }
}

/// `rl("ppo", ..)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(crate = "llmlab_plugin_api::serde", default, deny_unknown_fields)]
pub struct PpoConfig {
    pub steps: u64,
    pub batch_size: usize,
    pub epochs: usize,
    pub minibatch_size: usize,
    pub lr: f64,
    pub min_lr: f64,
    pub warmup: u64,
    pub weight_decay: f64,
    pub grad_clip: f64,
    pub clip_eps: f64,
    pub kl_coef: f64,
    pub temperature: f64,
    pub top_k: usize,
    pub max_tokens: usize,
    pub eval_n: usize,
    pub log_every: u64,
    pub seed: Option<u64>,
    pub gamma: f64,
    pub lam: f64,
    pub vf_coef: f64,
    pub clip_value_loss: bool,
    pub value_clip: f64,
    pub whiten_advantages: bool,
    pub reward_norm: bool,
    pub reward_clip: f64,
    pub resume: Option<String>,
    /// Update phase as one rank of the job `mpirun` started (docs/distributed.md).
    pub data_parallel: bool,
    pub zero: u8,
    pub bucket_mb: f64,
}

impl Default for PpoConfig {
    fn default() -> Self {
        PpoConfig {
            steps: 100,
            batch_size: 64,
            epochs: 2,
            minibatch_size: 64,
            lr: 1e-4,
            min_lr: 1e-5,
            warmup: 10,
            weight_decay: 0.0,
            grad_clip: 1.0,
            clip_eps: 0.2,
            kl_coef: 0.05,
            temperature: 1.0,
            top_k: 0,
            max_tokens: 16,
            eval_n: 200,
            log_every: 1,
            seed: None,
            gamma: 1.0,
            lam: 0.95,
            vf_coef: 0.1,
            clip_value_loss: true,
            value_clip: 0.2,
            whiten_advantages: true,
            reward_norm: true,
            reward_clip: 5.0,
            resume: None,
            data_parallel: false,
            zero: 0,
            bucket_mb: 25.0,
        }
    }
}

/// The keys both aligners have, for the shared checks and the run loop.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Common {
    pub steps: u64,
    pub batch_size: usize,
    pub epochs: usize,
    pub minibatch_size: usize,
    pub clip_eps: f64,
    pub kl_coef: f64,
    pub temperature: f64,
    pub top_k: usize,
    pub max_tokens: usize,
    pub eval_n: usize,
    pub log_every: u64,
    pub seed: Option<u64>,
    pub optim: OptimSettings,
}

impl Common {
    /// Optimiser updates per step for `rows` completions per rollout batch.
    pub fn updates_per_step(&self, rows: usize) -> u64 {
        let mb = if self.minibatch_size == 0 {
            rows
        } else {
            self.minibatch_size.min(rows)
        };
        (self.epochs * rows.div_ceil(mb.max(1))) as u64
    }

    /// The minibatch size for `rows` completions.
    pub fn minibatch(&self, rows: usize) -> usize {
        if self.minibatch_size == 0 {
            rows
        } else {
            self.minibatch_size.min(rows)
        }
    }

    fn validate(&self) -> Result<(), String> {
        let o = &self.optim;
        for (key, value) in [
            ("batch_size", self.batch_size),
            ("epochs", self.epochs),
            ("max_tokens", self.max_tokens),
            ("eval_n", self.eval_n),
            ("log_every", self.log_every as usize),
        ] {
            if value == 0 {
                return Err(format!("`{key}` must be at least 1"));
            }
        }
        if !(o.lr.is_finite() && o.lr > 0.0) {
            return Err(format!("`lr` must be a positive number, got {}", o.lr));
        }
        if !(o.min_lr >= 0.0 && o.min_lr <= o.lr) {
            return Err(format!(
                "`min_lr` must be between 0 and `lr` ({}), got {}",
                o.lr, o.min_lr
            ));
        }
        for (key, value) in [
            ("weight_decay", o.weight_decay),
            ("grad_clip", o.grad_clip),
            ("kl_coef", self.kl_coef),
        ] {
            if !(value.is_finite() && value >= 0.0) {
                return Err(format!("`{key}` must be a number >= 0, got {value}"));
            }
        }
        if !(self.clip_eps > 0.0 && self.clip_eps < 1.0) {
            return Err(format!(
                "`clip_eps` must be in (0, 1), got {}",
                self.clip_eps
            ));
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(format!(
                "`temperature` must be a positive number (rollouts are sampled), got {}",
                self.temperature
            ));
        }
        Ok(())
    }
}

macro_rules! common {
    ($c:expr, $updates:expr) => {
        Common {
            steps: $c.steps,
            batch_size: $c.batch_size,
            epochs: $c.epochs,
            minibatch_size: $c.minibatch_size,
            clip_eps: $c.clip_eps,
            kl_coef: $c.kl_coef,
            temperature: $c.temperature,
            top_k: $c.top_k,
            max_tokens: $c.max_tokens,
            eval_n: $c.eval_n,
            log_every: $c.log_every,
            seed: $c.seed,
            optim: OptimSettings {
                steps: $c.steps * $updates,
                lr: $c.lr,
                min_lr: $c.min_lr,
                warmup: $c.warmup,
                weight_decay: $c.weight_decay,
                grad_clip: $c.grad_clip,
            },
        }
    };
}

impl GrpoConfig {
    fn is_dapo(&self) -> bool {
        self.loss_type == LossType::Dapo
    }

    /// The ratio's clip range `(low, high)`: DAPO raises the upper end to 0.28 unless set.
    pub fn clip_range(&self) -> (f64, f64) {
        let high = self
            .clip_eps_high
            .unwrap_or(if self.is_dapo() { 0.28 } else { self.clip_eps });
        (self.clip_eps, high)
    }

    /// Learn only from groups whose rewards differ (on for DAPO unless set).
    pub fn dynamic_sampling(&self) -> bool {
        self.dynamic_sampling.unwrap_or(self.is_dapo())
    }

    /// The overlong-penalty buffer in tokens: DAPO's default is a quarter of `max_tokens`.
    pub fn overlong_buffer(&self) -> usize {
        self.overlong_buffer.unwrap_or(if self.is_dapo() {
            self.max_tokens / 4
        } else {
            0
        })
    }

    /// DAPO averages over all tokens; the others as `loss_aggregation` says.
    pub fn aggregation(&self) -> Aggregation {
        if self.is_dapo() {
            Aggregation::Token
        } else {
            self.loss_aggregation
        }
    }

    /// Completions per rollout batch.
    pub fn rows(&self) -> usize {
        self.batch_size * self.group_size
    }

    pub fn common(&self) -> Common {
        let first = common!(self, 1);
        let updates = first.updates_per_step(self.rows());
        common!(self, updates)
    }
}

impl PpoConfig {
    pub fn common(&self) -> Common {
        let first = common!(self, 1);
        let updates = first.updates_per_step(self.batch_size);
        common!(self, updates)
    }
}

impl TypedConfig for GrpoConfig {
    const DOCS: &'static [(&'static str, &'static str)] = docs! {
        "group_size" => "completions sampled per prompt; advantages compare a completion with its group (>= 2)",
        "scale_rewards" => "divide group-centred rewards by the group's std; false = centre only (Dr. GRPO)",
        "loss_aggregation" => "\"sequence\" (mean per completion, then over completions) or \"token\" (mean over all tokens); dapo always uses token",
        "loss_type" => "\"grpo\", \"dapo\" (token-level, clip-higher, dynamic sampling, overlong penalty), \"rloo\" (leave-one-out baseline) or \"reinforce_pp\" (REINFORCE++: batch-normalised rewards)",
        "importance" => "\"token\" (per-token ratio) or \"sequence\" (GSPO: one length-normalised ratio per completion)",
        "clip_eps_high" => "upper clip of the ratio, 1 + clip_eps_high; null = clip_eps (dapo: 0.28)",
        "dynamic_sampling" => "learn only from groups whose rewards differ, sampling more prompts to fill the batch; null = on for dapo only",
        "max_resample" => "dynamic sampling: extra rollout batches at most per step to fill it",
        "overlong_buffer" => "soft overlong penalty over the last N tokens before max_tokens; null = off (dapo: max_tokens / 4)",
        "overlong_penalty" => "the overlong penalty at max_tokens (reward − overlong_penalty)",
        "data_parallel" => "update phase as one of the ranks `mpirun` started: every rank samples the same rollouts, each learns from its share of every minibatch, gradients are summed over ranks, rank 0 writes metrics and the checkpoint",
        "zero" => "with data_parallel: ZeRO stage 0 (off), 1 (AdamW moments sharded over ranks) or 2 (gradients too)",
        "bucket_mb" => "with data_parallel: megabytes of gradients per all-reduce",
    };

    fn validate(&self) -> Result<(), String> {
        self.common().validate()?;
        llmlab_train::data_parallel::check_keys(self.data_parallel, self.zero, self.bucket_mb)?;
        let (low, high) = self.clip_range();
        if !(high > 0.0 && high.is_finite()) || low <= 0.0 {
            return Err(format!(
                "`clip_eps_high` must be a positive number, got {high}"
            ));
        }
        if self.overlong_buffer() > self.max_tokens {
            return Err(format!(
                "`overlong_buffer` ({}) must be at most `max_tokens` ({})",
                self.overlong_buffer(),
                self.max_tokens
            ));
        }
        if !(self.overlong_penalty.is_finite() && self.overlong_penalty >= 0.0) {
            return Err(format!(
                "`overlong_penalty` must be a number >= 0, got {}",
                self.overlong_penalty
            ));
        }
        if self.group_size < 2 {
            return Err(format!(
                "`group_size` must be at least 2 (advantages compare completions of one prompt), got {}",
                self.group_size
            ));
        }
        Ok(())
    }
}

impl TypedConfig for PpoConfig {
    const DOCS: &'static [(&'static str, &'static str)] = docs! {
        "gamma" => "discount of future per-token rewards in GAE",
        "lam" => "GAE lambda: 1 = Monte-Carlo returns, 0 = one-step TD",
        "vf_coef" => "weight of the value loss next to the policy loss",
        "clip_value_loss" => "clip the value prediction to value_clip around its rollout value (PPO2)",
        "value_clip" => "range of the value clipping",
        "whiten_advantages" => "normalise advantages to mean 0, std 1 over the rollout batch",
        "reward_norm" => "scale scores by running mean/std of all scores seen so far",
        "reward_clip" => "clip (normalised) scores to [-reward_clip, reward_clip]; 0 = off",
        "data_parallel" => "update phase as one of the ranks `mpirun` started: every rank samples the same rollouts and computes the same values and GAE, each learns from its share of every minibatch, gradients are summed over ranks, rank 0 writes metrics and the checkpoint",
        "zero" => "with data_parallel: ZeRO stage 0 (off), 1 (AdamW moments sharded over ranks) or 2 (gradients too)",
        "bucket_mb" => "with data_parallel: megabytes of gradients per all-reduce",
    };

    fn validate(&self) -> Result<(), String> {
        self.common().validate()?;
        llmlab_train::data_parallel::check_keys(self.data_parallel, self.zero, self.bucket_mb)?;
        for (key, value) in [("gamma", self.gamma), ("lam", self.lam)] {
            if !(0.0..=1.0).contains(&value) {
                return Err(format!("`{key}` must be in [0, 1], got {value}"));
            }
        }
        for (key, value) in [
            ("vf_coef", self.vf_coef),
            ("value_clip", self.value_clip),
            ("reward_clip", self.reward_clip),
        ] {
            if !(value.is_finite() && value >= 0.0) {
                return Err(format!("`{key}` must be a number >= 0, got {value}"));
            }
        }
        if self.clip_value_loss && self.value_clip == 0.0 {
            return Err("`value_clip` must be > 0 when `clip_value_loss` is true".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmlab_plugin_api::serde_json::{self, json};

    #[test]
    fn every_field_is_documented() {
        for (keys, fields) in [
            (
                GrpoConfig::keys(),
                serde_json::to_value(GrpoConfig::default()).unwrap(),
            ),
            (
                PpoConfig::keys(),
                serde_json::to_value(PpoConfig::default()).unwrap(),
            ),
        ] {
            let fields = fields.as_object().unwrap();
            assert_eq!(keys.len(), fields.len());
            assert!(keys
                .iter()
                .all(|k| fields.contains_key(&k.name) && !k.doc.is_empty()));
        }
    }

    #[test]
    fn bad_values_name_the_key() {
        for (config, key) in [
            (json!({ "group_size": 1 }), "group_size"),
            (json!({ "temperature": 0.0 }), "temperature"),
            (json!({ "clip_eps": 1.5 }), "clip_eps"),
            (json!({ "kl_coef": -0.1 }), "kl_coef"),
            (json!({ "loss_aggregation": "median" }), "loss_aggregation"),
            (json!({ "groupsize": 4 }), "groupsize"),
        ] {
            let err = GrpoConfig::from_json("grpo", &config)
                .unwrap_err()
                .to_string();
            assert!(err.contains(key) && err.contains("grpo"), "{config}: {err}");
        }
        for (config, key) in [
            (json!({ "lam": 1.5 }), "lam"),
            (json!({ "value_clip": 0.0 }), "value_clip"),
            (json!({ "epochs": 0 }), "epochs"),
            (json!({ "zero": 1 }), "data_parallel"),
            (
                json!({ "data_parallel": true, "bucket_mb": -1.0 }),
                "bucket_mb",
            ),
        ] {
            let err = PpoConfig::from_json("ppo", &config)
                .unwrap_err()
                .to_string();
            assert!(err.contains(key) && err.contains("ppo"), "{config}: {err}");
        }
    }

    #[test]
    fn schedule_counts_updates() {
        let c = GrpoConfig {
            steps: 10,
            batch_size: 4,
            group_size: 4,
            epochs: 2,
            minibatch_size: 8,
            ..GrpoConfig::default()
        };
        // 16 completions in minibatches of 8, twice: 4 updates per step.
        assert_eq!(c.common().optim.steps, 40);
    }
}
