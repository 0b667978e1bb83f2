//! The `distill` trainer (issue 22): a student learns from a teacher's next-token
//! distributions on the `lm` trainer's batches, on the shared step loop.
//!
//! ```rhai
//! trainer("distill", #{ teacher: t, loss: "forward_kl", temperature: 2.0, alpha: 0.5,
//!                       on_policy: 0.0, steps: 200 }).fit(student, ds);
//! ```
//!
//! With student logits `s`, teacher logits `t` (both over the shared vocabulary), temperature
//! `T`, `q = softmax(s/T)`, `p = softmax(t/T)`, per position:
//! - `forward_kl`: `T²·KL(p‖q)` (Hinton et al. 2015: `T²` keeps the soft-target gradients on
//!   the hard loss's scale as `T` changes);
//! - `reverse_kl`: `T²·KL(q‖p)` (mode-seeking, MiniLLM);
//! - `jsd`: `T²·(β·KL(p‖m) + (1−β)·KL(q‖m))`, `m = β·p + (1−β)·q` (GKD's generalised JSD, as
//!   TRL computes it), `0 < β < 1` (`beta`, default 0.5).
//!
//! The loss is `alpha·divergence + (1 − alpha)·cross-entropy` on the data's next tokens,
//! averaged over the batch's positions. `on_policy` (GKD's λ) is the fraction of micro-batches
//! whose continuations the student samples itself (temperature 1) from the first half of each
//! window; those positions are scored by the divergence alone (their "labels" are the student's
//! own samples).
//!
//! The teacher comes from the host (the trainer config's `teacher` key holds a model object;
//! `Trainer::set_teacher`). Its logits are computed without gradient, `teacher_chunk` rows at a
//! time, so its activations never exceed one chunk's. Teacher and student may differ in depth
//! and width but must share the tokenizer: their vocabularies must agree (checked).

use std::sync::Arc;

use llmlab_plugin_api::candle::{DType, Device, Tensor, D};
use llmlab_plugin_api::candle_nn::ops::log_softmax;
use llmlab_plugin_api::config::TypedConfig;
use llmlab_plugin_api::prelude::*;
use llmlab_plugin_api::serde_json::Map;

use crate::batches::{Batch, DataCursor};
use crate::config::TrainConfig;
use crate::lm::Pretraining;
use crate::rng::SplitMix64;
use crate::train_loop::{hard_label_loss, Objective, Setup, TrainLoop};

/// The divergence between the student's and the teacher's distributions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Divergence {
    ForwardKl,
    ReverseKl,
    /// Generalised JSD with mixture weight β on the teacher.
    Jsd(f64),
}

/// The distillation keys of the trainer config (the rest is the `lm` trainer's).
#[derive(Debug, Clone, PartialEq)]
pub struct DistillConfig {
    pub divergence: Divergence,
    pub temperature: f64,
    pub alpha: f64,
    pub on_policy: f64,
    pub teacher_chunk: usize,
}

pub const DISTILL_KEYS: [&str; 6] = [
    "loss",
    "temperature",
    "alpha",
    "beta",
    "on_policy",
    "teacher_chunk",
];

impl DistillConfig {
    /// Takes the distillation keys out of `fields`.
    pub fn take(fields: &mut Map<String, Value>) -> Result<DistillConfig> {
        let bad = |m: String| Error::invalid_config("distill", m);
        let number = |fields: &mut Map<String, Value>, key: &str, default: f64| -> Result<f64> {
            match fields.remove(key) {
                None | Some(Value::Null) => Ok(default),
                Some(v) => v
                    .as_f64()
                    .filter(|x| x.is_finite())
                    .ok_or_else(|| bad(format!("`{key}` must be a number, got {v}"))),
            }
        };
        let temperature = number(fields, "temperature", 1.0)?;
        if temperature <= 0.0 {
            return Err(bad(format!("`temperature` must be > 0, got {temperature}")));
        }
        let alpha = number(fields, "alpha", 0.5)?;
        if !(0.0..=1.0).contains(&alpha) {
            return Err(bad(format!("`alpha` must be in [0, 1], got {alpha}")));
        }
        let on_policy = number(fields, "on_policy", 0.0)?;
        if !(0.0..=1.0).contains(&on_policy) {
            return Err(bad(format!(
                "`on_policy` must be in [0, 1], got {on_policy}"
            )));
        }
        let beta = number(fields, "beta", 0.5)?;
        let divergence = match fields.remove("loss") {
            None => Divergence::ForwardKl,
            Some(Value::String(name)) => match name.as_str() {
                "forward_kl" => Divergence::ForwardKl,
                "reverse_kl" => Divergence::ReverseKl,
                "jsd" => {
                    if !(beta > 0.0 && beta < 1.0) {
                        return Err(bad(format!(
                            "`beta` must be in (0, 1) for jsd (0 and 1 are the KLs: use forward_kl / reverse_kl), got {beta}"
                        )));
                    }
                    Divergence::Jsd(beta)
                }
                other => {
                    return Err(bad(format!(
                        "unknown loss `{other}` (forward_kl, reverse_kl, jsd)"
                    )))
                }
            },
            Some(v) => return Err(bad(format!("`loss` must be a name, got {v}"))),
        };
        let teacher_chunk = match fields.remove("teacher_chunk") {
            None => 4,
            Some(v) => v.as_u64().filter(|&n| n > 0).ok_or_else(|| {
                bad(format!(
                    "`teacher_chunk` must be a positive integer, got {v}"
                ))
            })? as usize,
        };
        Ok(DistillConfig {
            divergence,
            temperature,
            alpha,
            on_policy,
            teacher_chunk,
        })
    }
}

/// Per-position divergence `(rows,)` between `student` and `teacher` logits `(rows, vocab)`.
pub fn divergence(
    student: &Tensor,
    teacher: &Tensor,
    kind: Divergence,
    temperature: f64,
) -> Result<Tensor> {
    let inv_t = 1.0 / temperature;
    let log_q = log_softmax(&student.affine(inv_t, 0.0)?, D::Minus1)?;
    let log_p = log_softmax(&teacher.affine(inv_t, 0.0)?.detach(), D::Minus1)?;
    let kl = |log_a: &Tensor, log_b: &Tensor| -> Result<Tensor> {
        Ok((log_a.exp()? * (log_a - log_b)?)?.sum(D::Minus1)?)
    };
    let per_position = match kind {
        Divergence::ForwardKl => kl(&log_p, &log_q)?,
        Divergence::ReverseKl => kl(&log_q, &log_p)?,
        Divergence::Jsd(beta) => {
            // log m = logsumexp(log p + ln β, log q + ln(1 − β)), stably.
            let a = log_p.affine(1.0, beta.ln())?;
            let b = log_q.affine(1.0, (1.0 - beta).ln())?;
            let max = a.maximum(&b)?.detach();
            let log_m = ((a - &max)?.exp()? + (b - &max)?.exp()?)?.log()? + &max;
            let log_m = log_m?;
            (kl(&log_p, &log_m)?.affine(beta, 0.0)?
                + kl(&log_q, &log_m)?.affine(1.0 - beta, 0.0)?)?
        }
    };
    Ok(per_position.affine(temperature * temperature, 0.0)?)
}

/// The mean of `per_position` `(rows,)` over the positions `mask` keeps (all without one).
fn masked_mean(per_position: &Tensor, batch: &Batch) -> Result<Tensor> {
    Ok(match &batch.mask {
        None => per_position.mean_all()?,
        Some(mask) => (per_position * mask.flatten_all()?.to_dtype(DType::F32)?)?
            .sum_all()?
            .affine(1.0 / batch.loss_tokens.max(1) as f64, 0.0)?,
    })
}

/// Batches of the `lm` trainer, a teacher to match, and the on-policy switch.
pub struct Distillation {
    config: DistillConfig,
    windows: Pretraining,
    teacher: Option<Arc<dyn Model>>,
    /// Draws which micro-batches are on-policy, and their samples' seeds.
    rng: SplitMix64,
    /// Whether the current micro-batch's continuations are the student's.
    on_policy_batch: bool,
}

impl Distillation {
    pub fn new(config: DistillConfig) -> Distillation {
        Distillation {
            config,
            windows: Pretraining::default(),
            teacher: None,
            rng: SplitMix64::new(0),
            on_policy_batch: false,
        }
    }

    fn teacher(&self) -> Result<&Arc<dyn Model>> {
        self.teacher.as_ref().ok_or_else(|| {
            Error::invalid_config(
                "distill",
                "no teacher: give the trainer one, trainer(\"distill\", #{ teacher: t, .. })",
            )
        })
    }

    /// The teacher's f32 logits for `inputs`, `teacher_chunk` rows at a time, detached.
    fn teacher_logits(&self, inputs: &Tensor) -> Result<Tensor> {
        let teacher = self.teacher()?;
        let rows = inputs.dim(0)?;
        let mut chunks = Vec::new();
        for start in (0..rows).step_by(self.config.teacher_chunk) {
            let n = self.config.teacher_chunk.min(rows - start);
            let logits = teacher
                .forward(&inputs.narrow(0, start, n)?, &ForwardOptions::inference())?
                .logits
                .to_dtype(DType::F32)?
                .detach();
            chunks.push(logits);
        }
        Ok(Tensor::cat(&chunks, 0)?)
    }

    /// Replaces each row's second half by the student's own continuation of its first half.
    fn sample_continuations(&mut self, model: &dyn Model, batch: Batch) -> Result<Batch> {
        let (rows, ctx) = batch.inputs.dims2()?;
        let prompt_len = (ctx / 2).max(1);
        let inputs: Vec<Vec<u32>> = batch.inputs.to_vec2()?;
        let prompts: Vec<Vec<u32>> = inputs.iter().map(|r| r[..prompt_len].to_vec()).collect();
        // The model's context may equal the window: the last position then has no target.
        let new_tokens = ctx - prompt_len;
        let mut options = GenerateOptions::from_json(
            "distill",
            &llmlab_plugin_api::serde_json::json!({
                "max_tokens": new_tokens, "temperature": 1.0, "seed": self.rng.next_u64()
            }),
        )?;
        options.stop_tokens.clear();
        let continuations = model.generate(&prompts, &options, &mut |_, _| true)?;
        let (mut x, mut y, mut mask) = (Vec::new(), Vec::new(), Vec::new());
        let mut kept = 0;
        for (prompt, more) in prompts.iter().zip(&continuations) {
            let mut seq = prompt.clone();
            seq.extend(more.iter().take(new_tokens));
            let real = seq.len();
            seq.resize(ctx + 1, 0);
            for i in 0..ctx {
                x.push(seq[i]);
                y.push(seq[i + 1]);
                // Positions predicting a sampled token; the prompt's are scored by the data.
                let scored = i + 1 >= prompt_len && i + 1 < real;
                mask.push(if scored { 1f32 } else { 0f32 });
                kept += scored as usize;
            }
        }
        let device = batch.inputs.device();
        Ok(Batch {
            inputs: Tensor::from_vec(x, (rows, ctx), device)?,
            targets: Tensor::from_vec(y, (rows, ctx), device)?,
            mask: Some(Tensor::from_vec(mask, (rows, ctx), device)?),
            loss_tokens: kept,
            tokens: batch.tokens,
            forward_inputs: Default::default(),
        })
    }
}

impl Objective for Distillation {
    fn prepare(&mut self, data: &TrainJob<'_>, setup: &Setup) -> Result<()> {
        let teacher = self.teacher()?;
        if teacher.vocab_size() != setup.model_vocab_size {
            return Err(Error::invalid_config(
                "distill",
                format!(
                    "the teacher's vocabulary has {} tokens, the student's {}: distillation needs \
                     teacher and student to share the tokenizer",
                    teacher.vocab_size(),
                    setup.model_vocab_size
                ),
            ));
        }
        if teacher.ctx_len() < setup.ctx {
            return Err(Error::invalid_config(
                "distill",
                format!(
                    "the teacher's context ({}) is shorter than the training windows (ctx = {})",
                    teacher.ctx_len(),
                    setup.ctx
                ),
            ));
        }
        self.rng = SplitMix64::new(setup.seed ^ 0x0D15_7111);
        self.windows.prepare(data, setup)
    }

    fn next_batch(
        &mut self,
        data: &TrainJob<'_>,
        rng: &mut SplitMix64,
        cursor: &mut DataCursor,
        device: &Device,
    ) -> Result<Batch> {
        self.windows.next_batch(data, rng, cursor, device)
    }

    fn eval_batches(&mut self, data: &TrainJob<'_>, device: &Device) -> Result<Vec<Batch>> {
        self.windows.eval_batches(data, device)
    }

    fn prepare_batch(&mut self, model: &dyn Model, batch: Batch) -> Result<Batch> {
        self.on_policy_batch =
            self.config.on_policy > 0.0 && self.rng.next_unit() < self.config.on_policy;
        if self.on_policy_batch {
            self.sample_continuations(model, batch)
        } else {
            Ok(batch)
        }
    }

    fn loss(&mut self, logits: &Tensor, batch: &Batch) -> Result<Tensor> {
        let (b, t, v) = logits.dims3()?;
        let teacher = self.teacher_logits(&batch.inputs)?;
        if teacher.dim(2)? != v {
            return Err(Error::msg(format!(
                "distill: the teacher's logits have {} entries, the student's {v}",
                teacher.dim(2)?
            )));
        }
        let per_position = divergence(
            &logits.reshape((b * t, v))?,
            &teacher.reshape((b * t, v))?,
            self.config.divergence,
            self.config.temperature,
        )?;
        let soft = masked_mean(&per_position, batch)?;
        let alpha = if self.on_policy_batch {
            1.0
        } else {
            self.config.alpha
        };
        if alpha >= 1.0 {
            return Ok(soft);
        }
        let hard = hard_label_loss(logits, batch)?;
        Ok((soft.affine(alpha, 0.0)? + hard.affine(1.0 - alpha, 0.0)?)?)
    }

    fn set_teacher(&mut self, teacher: Arc<dyn Model>) -> Result<()> {
        self.teacher = Some(teacher);
        Ok(())
    }
}

pub type DistillTrainer = TrainLoop<Distillation>;

/// The `distill` trainer from a JSON config (the `lm` keys plus the distillation keys).
pub fn new_distill_trainer(config: &Value) -> Result<DistillTrainer> {
    let mut fields = match config {
        Value::Object(fields) => fields.clone(),
        Value::Null => Map::new(),
        other => {
            return Err(Error::invalid_config(
                "distill",
                format!("expected a map, got {other}"),
            ))
        }
    };
    if fields.contains_key("teacher") {
        return Err(Error::invalid_config(
            "distill",
            "`teacher` must be a model object (the host hands it over), not data",
        ));
    }
    let distill = DistillConfig::take(&mut fields)?;
    let config = TrainConfig::from_json("distill", &Value::Object(fields))?;
    Ok(TrainLoop::new(
        "distill",
        config,
        Distillation::new(distill),
    ))
}

pub struct DistillFactory;

impl Factory for DistillFactory {
    fn name(&self) -> &'static str {
        "distill"
    }
    fn kind(&self) -> Kind {
        Kind::Trainer
    }
    fn about(&self) -> &'static str {
        "knowledge distillation from a `teacher` model: forward/reverse KL or GKD's JSD with temperature, mixed with the hard-label loss by alpha, on-policy fraction"
    }
    fn config_keys(&self) -> Vec<ConfigKey> {
        TrainConfig::keys()
    }
    fn create(&self, config: &Value, _: &Context) -> Result<Instance> {
        Ok(Instance::Trainer(Box::new(new_distill_trainer(config)?)))
    }
}
