//! The trainers' settings: one [`TrainConfig`] shared by `lm` and `sft` (SFT is the same loop on
//! prompt/answer batches), its defaults, the one-line docs `help("lm")` prints, and the checks
//! between keys.

use llmlab_plugin_api::config::TypedConfig;
use llmlab_plugin_api::serde::{Deserialize, Serialize};

use crate::precision::Precision;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(crate = "llmlab_plugin_api::serde", default, deny_unknown_fields)]
pub struct TrainConfig {
    pub steps: u64,
    pub batch_size: usize,
    /// `None`: the model's context length.
    pub ctx: Option<usize>,
    pub lr: f64,
    pub min_lr: f64,
    pub warmup: u64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// 0 turns clipping off.
    pub grad_clip: f64,
    pub grad_accum: usize,
    /// 0 turns evaluation off.
    pub eval_every: u64,
    pub eval_batches: usize,
    /// 0: only at the end (and on Ctrl-C).
    pub checkpoint_every: u64,
    /// `None`: the session seed.
    pub seed: Option<u64>,
    /// A run directory or a checkpoint directory to continue from.
    pub resume: Option<String>,
    pub log_every: u64,
    /// Dtype of forward/backward; parameters and optimiser stay f32 (`precision.rs`).
    pub precision: Precision,
    /// f16 only: the initial loss scale.
    pub loss_scale: f64,
    /// f16 only: overflow-free steps before the loss scale doubles.
    pub loss_scale_window: u64,
    /// Train on this rank's share of each global batch, gradients summed over the ranks
    /// (`data_parallel.rs`, docs/distributed.md).
    pub data_parallel: bool,
    /// ZeRO stage with `data_parallel`: 0 off, 1 sharded moments, 2 also sharded gradients.
    pub zero: u8,
    /// Gradient megabytes per all-reduce.
    pub bucket_mb: f64,
    /// Split each micro-batch's rows over the CPU cores, one pass per core (`row_split.rs`).
    pub row_parallel: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            steps: 1000,
            batch_size: 16,
            ctx: None,
            lr: 1e-3,
            min_lr: 1e-4,
            warmup: 100,
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            grad_clip: 1.0,
            grad_accum: 1,
            eval_every: 100,
            eval_batches: 8,
            checkpoint_every: 250,
            seed: None,
            resume: None,
            log_every: 10,
            precision: Precision::F32,
            loss_scale: 65536.0,
            loss_scale_window: 1000,
            data_parallel: false,
            zero: 0,
            bucket_mb: 25.0,
            row_parallel: true,
        }
    }
}

impl TypedConfig for TrainConfig {
    const DOCS: &'static [(&'static str, &'static str)] = &[
        (
            "steps",
            "optimiser steps to train for (a resumed run continues up to this)",
        ),
        ("batch_size", "sequences per micro-batch"),
        (
            "ctx",
            "tokens per training sequence; null = the model's context length",
        ),
        ("lr", "peak learning rate, reached after warmup"),
        ("min_lr", "learning rate at the end of the cosine decay"),
        ("warmup", "steps of linear warmup from 0 to lr"),
        (
            "weight_decay",
            "decoupled (AdamW) weight decay, applied to matrices only (rank >= 2)",
        ),
        ("beta1", "AdamW first-moment decay"),
        ("beta2", "AdamW second-moment decay"),
        ("eps", "AdamW denominator epsilon"),
        (
            "grad_clip",
            "clip gradients to this global L2 norm; 0 = off",
        ),
        ("grad_accum", "micro-batches accumulated per optimiser step"),
        (
            "eval_every",
            "evaluate val loss/perplexity every N steps and at the end; 0 = off",
        ),
        ("eval_batches", "batches in the fixed evaluation set"),
        (
            "checkpoint_every",
            "write a checkpoint every N steps (always at the end); 0 = end only",
        ),
        ("seed", "seed of batch sampling; null = the session seed"),
        (
            "resume",
            "run directory or checkpoint directory to resume from, bit-exactly; null = fresh",
        ),
        (
            "log_every",
            "report metrics every N steps (eval steps and the last step always)",
        ),
        (
            "precision",
            "\"f32\", \"bf16\" or \"f16\" forward/backward; weights and AdamW stay f32 (master weights)",
        ),
        (
            "loss_scale",
            "f16: initial loss scale; halved (step skipped) on overflow, doubled after loss_scale_window good steps",
        ),
        (
            "loss_scale_window",
            "f16: overflow-free steps before the loss scale doubles",
        ),
        (
            "data_parallel",
            "train as one of the ranks `mpirun` started: each draws its share of the global batch_size, gradients are summed over ranks, rank 0 writes metrics and checkpoints",
        ),
        (
            "zero",
            "with data_parallel: ZeRO stage 0 (off), 1 (AdamW moments sharded over ranks) or 2 (gradients too)",
        ),
        (
            "bucket_mb",
            "with data_parallel: megabytes of gradients per all-reduce",
        ),
        (
            "row_parallel",
            "on CPU, split each micro-batch's rows over the cores: one forward+backward per core, gradients summed (where the model and objective allow: no dropout, no MoE, the plain token loss); false = one pass over the whole micro-batch",
        ),
    ];

    fn validate(&self) -> Result<(), String> {
        let positive = [
            ("batch_size", self.batch_size),
            ("grad_accum", self.grad_accum),
            ("eval_batches", self.eval_batches),
            ("log_every", self.log_every as usize),
            ("loss_scale_window", self.loss_scale_window as usize),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(format!("`{key}` must be at least 1"));
            }
        }
        if self.ctx == Some(0) {
            return Err("`ctx` must be at least 1 (or null for the model's context)".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(format!("`lr` must be a positive number, got {}", self.lr));
        }
        if !(self.min_lr >= 0.0 && self.min_lr <= self.lr) {
            return Err(format!(
                "`min_lr` must be between 0 and `lr` ({}), got {}",
                self.lr, self.min_lr
            ));
        }
        for (key, beta) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&beta) {
                return Err(format!("`{key}` must be in [0, 1), got {beta}"));
            }
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return Err(format!("`eps` must be a positive number, got {}", self.eps));
        }
        for (key, value) in [
            ("weight_decay", self.weight_decay),
            ("grad_clip", self.grad_clip),
        ] {
            if !(value.is_finite() && value >= 0.0) {
                return Err(format!("`{key}` must be a number >= 0, got {value}"));
            }
        }
        crate::data_parallel::check_keys(self.data_parallel, self.zero, self.bucket_mb)?;
        if !(self.loss_scale.is_finite() && self.loss_scale >= 1.0) {
            return Err(format!(
                "`loss_scale` must be a number >= 1, got {}",
                self.loss_scale
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmlab_plugin_api::serde_json::json;

    #[test]
    fn every_field_is_documented_with_its_default() {
        let keys = TrainConfig::keys();
        let fields = llmlab_plugin_api::serde_json::to_value(TrainConfig::default()).unwrap();
        assert_eq!(keys.len(), fields.as_object().unwrap().len());
        let steps = keys.iter().find(|k| k.name == "steps").unwrap();
        assert_eq!(steps.default, json!(1000));
        assert!(keys.iter().all(|k| !k.doc.is_empty()));
    }

    #[test]
    fn unknown_key_names_key_and_accepted_keys() {
        let err = TrainConfig::from_json("lm", &json!({ "learning_rate": 0.1 }))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`learning_rate`"), "{err}");
        assert!(err.contains("lm"), "{err}");
        assert!(err.contains("steps, batch_size, ctx, lr, min_lr"), "{err}");
    }

    #[test]
    fn bad_values_name_the_key() {
        for (config, key) in [
            (json!({ "lr": -1.0 }), "lr"),
            (json!({ "lr": 1e-3, "min_lr": 1.0 }), "min_lr"),
            (json!({ "beta2": 1.0 }), "beta2"),
            (json!({ "batch_size": 0 }), "batch_size"),
            (json!({ "steps": "many" }), "steps"),
            (json!({ "precision": "fp8" }), "precision"),
            (json!({ "loss_scale": 0.5 }), "loss_scale"),
        ] {
            let err = TrainConfig::from_json("lm", &config)
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{config}: {err}");
        }
    }
}
