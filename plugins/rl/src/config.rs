//! The aligners' settings: [`RewardConfig`] (`rl("reward", ..)`) and [`DpoConfig`]
//! (`rl("dpo", ..)`), their defaults, the one-line docs `help("dpo")` prints, and the checks
//! between keys. The optimisation keys mean what they mean for `trainer("lm")`.

use llmlab_plugin_api::config::TypedConfig;
use llmlab_plugin_api::serde::{Deserialize, Serialize};

use crate::optimizer::OptimSettings;

/// Declares the doc list of a config: the keys both aligners share, then its own.
macro_rules! docs {
    ($($key:literal => $doc:literal),* $(,)?) => {
        &[
            ("steps", "optimiser steps to train for"),
            ("batch_size", "preference pairs per step"),
            ("lr", "peak learning rate, reached after warmup"),
            ("min_lr", "learning rate at the end of the cosine decay"),
            ("warmup", "steps of linear warmup from 0 to lr"),
            ("weight_decay", "decoupled (AdamW) weight decay on matrices (rank >= 2)"),
            ("grad_clip", "clip gradients to this global L2 norm; 0 = off"),
            ("val_fraction", "fraction of the pairs held out for preference accuracy (at least one pair)"),
            ("eval_every", "evaluate on the held-out pairs every N steps and at the end; 0 = end only"),
            ("log_every", "report metrics every N steps"),
            ("seed", "seed of the split and batch sampling; null = the session seed"),
            ("ctx", "longest prompt + answer in tokens (prompts are cut from the left); null = the model's"),
            $(($key, $doc)),*
        ]
    };
}

/// `rl("reward", ..)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(crate = "llmlab_plugin_api::serde", default, deny_unknown_fields)]
pub struct RewardConfig {
    pub steps: u64,
    pub batch_size: usize,
    pub lr: f64,
    pub min_lr: f64,
    pub warmup: u64,
    pub weight_decay: f64,
    pub grad_clip: f64,
    pub val_fraction: f64,
    pub eval_every: u64,
    pub log_every: u64,
    pub seed: Option<u64>,
    pub ctx: Option<usize>,
    /// Fine-tune the body too; `false` trains the head only.
    pub train_body: bool,
    pub head: RewardHead,
    pub resume: Option<String>,
    /// Train as one rank of the job `mpirun` started (docs/distributed.md).
    pub data_parallel: bool,
    pub zero: u8,
    pub bucket_mb: f64,
}

/// What the reward reads from the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(crate = "llmlab_plugin_api::serde", rename_all = "lowercase")]
pub enum RewardHead {
    /// `r = w · h + b` on the final hidden state of the last token (the end-of-text).
    Last,
    /// `r = Σ log p(answer token)` of the body's own language-model head over the answer and
    /// its end-of-text: every answer token is compared with the body's prediction for it.
    Tokens,
}

impl Default for RewardConfig {
    fn default() -> Self {
        RewardConfig {
            steps: 200,
            batch_size: 16,
            lr: 1e-3,
            min_lr: 1e-4,
            warmup: 10,
            weight_decay: 0.0,
            grad_clip: 1.0,
            val_fraction: 0.1,
            eval_every: 50,
            log_every: 10,
            seed: None,
            ctx: None,
            train_body: true,
            head: RewardHead::Last,
            resume: None,
            data_parallel: false,
            zero: 0,
            bucket_mb: 25.0,
        }
    }
}

/// The preference loss (`"sigmoid"`, `"ipo"`, `"kto"`, `"orpo"`, `"simpo"`).
pub use crate::preference_loss::PreferenceLoss as DpoLoss;

/// `rl("dpo", ..)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(crate = "llmlab_plugin_api::serde", default, deny_unknown_fields)]
pub struct DpoConfig {
    pub steps: u64,
    pub batch_size: usize,
    pub lr: f64,
    pub min_lr: f64,
    pub warmup: u64,
    pub weight_decay: f64,
    pub grad_clip: f64,
    pub val_fraction: f64,
    pub eval_every: u64,
    pub log_every: u64,
    pub seed: Option<u64>,
    pub ctx: Option<usize>,
    pub beta: f64,
    pub label_smoothing: f64,
    pub loss: DpoLoss,
    pub nll_weight: f64,
    pub gamma: f64,
    pub desirable_weight: f64,
    pub undesirable_weight: f64,
    pub resume: Option<String>,
    /// Train as one rank of the job `mpirun` started (docs/distributed.md).
    pub data_parallel: bool,
    pub zero: u8,
    pub bucket_mb: f64,
}

impl Default for DpoConfig {
    fn default() -> Self {
        DpoConfig {
            steps: 100,
            batch_size: 16,
            lr: 1e-4,
            min_lr: 1e-5,
            warmup: 10,
            weight_decay: 0.0,
            grad_clip: 1.0,
            val_fraction: 0.1,
            eval_every: 50,
            log_every: 10,
            seed: None,
            ctx: None,
            beta: 0.1,
            label_smoothing: 0.0,
            loss: DpoLoss::Sigmoid,
            nll_weight: 0.0,
            gamma: 0.5,
            desirable_weight: 1.0,
            undesirable_weight: 1.0,
            resume: None,
            data_parallel: false,
            zero: 0,
            bucket_mb: 25.0,
        }
    }
}

/// Checks of the keys both aligners have.
fn validate_common(
    o: &OptimSettings,
    batch_size: usize,
    val_fraction: f64,
    log_every: u64,
    ctx: Option<usize>,
) -> Result<(), String> {
    if batch_size == 0 {
        return Err("`batch_size` must be at least 1".into());
    }
    if log_every == 0 {
        return Err("`log_every` must be at least 1".into());
    }
    if ctx == Some(0) {
        return Err("`ctx` must be at least 1 (or null for the model's context)".into());
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
    for (key, value) in [("weight_decay", o.weight_decay), ("grad_clip", o.grad_clip)] {
        if !(value.is_finite() && value >= 0.0) {
            return Err(format!("`{key}` must be a number >= 0, got {value}"));
        }
    }
    if !(val_fraction > 0.0 && val_fraction < 1.0) {
        return Err(format!(
            "`val_fraction` must be in (0, 1), got {val_fraction}"
        ));
    }
    Ok(())
}

impl RewardConfig {
    pub fn optim(&self) -> OptimSettings {
        OptimSettings {
            steps: self.steps,
            lr: self.lr,
            min_lr: self.min_lr,
            warmup: self.warmup,
            weight_decay: self.weight_decay,
            grad_clip: self.grad_clip,
        }
    }
}

impl DpoConfig {
    pub fn optim(&self) -> OptimSettings {
        OptimSettings {
            steps: self.steps,
            lr: self.lr,
            min_lr: self.min_lr,
            warmup: self.warmup,
            weight_decay: self.weight_decay,
            grad_clip: self.grad_clip,
        }
    }
}

impl TypedConfig for RewardConfig {
    const DOCS: &'static [(&'static str, &'static str)] = docs! {
        "train_body" => "fine-tune the body as well as the scalar head; false = head only",
        "head" => "\"last\": w.h + b on the last token's hidden state; \"tokens\": the body's log-likelihood of the answer (see docs/rl.md)",
        "resume" => "run directory (or its checkpoint/) to continue from, bit-exactly; null = fresh",
        "data_parallel" => "train as one of the ranks `mpirun` started: each takes its share of the global batch_size of pairs, gradients are summed over ranks, rank 0 writes metrics, the reward model and the checkpoint",
        "zero" => "with data_parallel: ZeRO stage 0 (off), 1 (AdamW moments sharded over ranks) or 2 (gradients too)",
        "bucket_mb" => "with data_parallel: megabytes of gradients per all-reduce",
    };

    fn validate(&self) -> Result<(), String> {
        validate_common(
            &self.optim(),
            self.batch_size,
            self.val_fraction,
            self.log_every,
            self.ctx,
        )?;
        llmlab_train::data_parallel::check_keys(self.data_parallel, self.zero, self.bucket_mb)?;
        if self.head == RewardHead::Tokens && !self.train_body {
            return Err(
                "`head` \"tokens\" has no parameters of its own: it needs `train_body: true`"
                    .into(),
            );
        }
        Ok(())
    }
}

impl TypedConfig for DpoConfig {
    const DOCS: &'static [(&'static str, &'static str)] = docs! {
        "beta" => "strength of the anchor to the reference: the implicit reward is beta * log-ratio",
        "label_smoothing" => "probability that a pair's preference label is flipped (conservative DPO); 0 = off",
        "loss" => "\"sigmoid\" (DPO), \"ipo\" (squared loss towards 1 / (2 beta)), \"kto\" (unpaired desirable/undesirable), \"orpo\" (SFT + beta * odds-ratio term, no reference), \"simpo\" (length-normalised, margin gamma, no reference)",
        "nll_weight" => "weight of the chosen answers' per-token NLL added to the loss (RPO); keeps their likelihood up; 0 = off",
        "gamma" => "simpo: the target margin between length-normalised log-probabilities",
        "desirable_weight" => "kto: weight of the desirable (chosen) answers' loss",
        "undesirable_weight" => "kto: weight of the undesirable (rejected) answers' loss",
        "resume" => "run directory (or its checkpoint/) to continue from, bit-exactly; null = fresh",
        "data_parallel" => "align as one of the ranks `mpirun` started: each takes its share of the global batch_size of pairs, gradients are summed over ranks, rank 0 writes metrics and the checkpoint",
        "zero" => "with data_parallel: ZeRO stage 0 (off), 1 (AdamW moments sharded over ranks) or 2 (gradients too)",
        "bucket_mb" => "with data_parallel: megabytes of gradients per all-reduce",
    };

    fn validate(&self) -> Result<(), String> {
        validate_common(
            &self.optim(),
            self.batch_size,
            self.val_fraction,
            self.log_every,
            self.ctx,
        )?;
        if !(self.beta.is_finite() && self.beta > 0.0) {
            return Err(format!(
                "`beta` must be a positive number, got {}",
                self.beta
            ));
        }
        if !(0.0..0.5).contains(&self.label_smoothing) {
            return Err(format!(
                "`label_smoothing` must be in [0, 0.5), got {}",
                self.label_smoothing
            ));
        }
        llmlab_train::data_parallel::check_keys(self.data_parallel, self.zero, self.bucket_mb)?;
        for (key, value) in [
            ("nll_weight", self.nll_weight),
            ("gamma", self.gamma),
            ("desirable_weight", self.desirable_weight),
            ("undesirable_weight", self.undesirable_weight),
        ] {
            if !(value.is_finite() && value >= 0.0) {
                return Err(format!("`{key}` must be a number >= 0, got {value}"));
            }
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
                RewardConfig::keys(),
                serde_json::to_value(RewardConfig::default()).unwrap(),
            ),
            (
                DpoConfig::keys(),
                serde_json::to_value(DpoConfig::default()).unwrap(),
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
            (json!({ "beta": 0.0 }), "beta"),
            (json!({ "label_smoothing": 0.7 }), "label_smoothing"),
            (json!({ "nll_weight": -1.0 }), "nll_weight"),
            (json!({ "loss": "hinge" }), "loss"),
            (json!({ "val_fraction": 1.0 }), "val_fraction"),
            (json!({ "lr": -1.0 }), "lr"),
            (json!({ "betta": 0.1 }), "betta"),
            (json!({ "zero": 1 }), "data_parallel"),
            (json!({ "data_parallel": true, "zero": 3 }), "zero"),
            (
                json!({ "data_parallel": true, "bucket_mb": 0.0 }),
                "bucket_mb",
            ),
        ] {
            let err = DpoConfig::from_json("dpo", &config)
                .unwrap_err()
                .to_string();
            assert!(err.contains(key) && err.contains("dpo"), "{config}: {err}");
        }
        for (config, key) in [
            (json!({ "head": "mean" }), "head"),
            (
                json!({ "head": "tokens", "train_body": false }),
                "train_body",
            ),
            (json!({ "zero": 2 }), "data_parallel"),
            (json!({ "data_parallel": true, "zero": 3 }), "zero"),
        ] {
            let err = RewardConfig::from_json("reward", &config)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(key) && err.contains("reward"),
                "{config}: {err}"
            );
        }
    }
}
