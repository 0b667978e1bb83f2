//! What a training step costs in memory beyond the model itself, estimated before the first
//! step and refused over the memory budget (`llmlab_plugin_api::memory`) with the key to lower.
//! `batch_size: 1e9` used to abort the process ("memory allocation of N bytes failed") in the
//! first forward pass.
//!
//! The estimate is deliberately a lower bound (the logits with their gradient, a few tensors of
//! width `d_model` per layer and token, one attention matrix per head, gradients and AdamW's two
//! moments), so it never refuses a run that would fit; it exists to catch settings that are off
//! by orders of magnitude.

use llmlab_plugin_api::memory::{available_bytes, over_budget, Budget};
use llmlab_plugin_api::serde_json::Value;
use llmlab_plugin_api::{Error, Model, Result};

use crate::train_loop::Setup;

/// The shape numbers the estimate needs; read from the model's config where it has them.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub parameters: f64,
    pub vocab_size: f64,
    pub d_model: Option<f64>,
    pub n_layer: Option<f64>,
    pub n_head: Option<f64>,
    pub checkpoint_activations: bool,
}

impl Shape {
    pub fn of(model: &dyn Model) -> Shape {
        let config = model.config();
        let number = |key: &str| config.get(key).and_then(Value::as_f64);
        Shape {
            parameters: model
                .parameters()
                .iter()
                .map(|(_, v)| v.elem_count() as f64)
                .sum(),
            vocab_size: model.vocab_size() as f64,
            d_model: number("d_model"),
            n_layer: number("n_layer"),
            n_head: number("n_head"),
            checkpoint_activations: config
                .get("checkpoint_activations")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        }
    }
}

/// Bytes of one micro-batch's activations (f32).
pub fn activation_bytes(shape: &Shape, batch: f64, ctx: f64) -> f64 {
    let tokens = batch * ctx;
    // Logits and their gradient.
    let logits = 2.0 * tokens * shape.vocab_size;
    let layers = match (shape.d_model, shape.n_layer) {
        (Some(d), Some(l)) => {
            let heads = shape.n_head.unwrap_or(1.0);
            let block = 8.0 * tokens * d + batch * heads * ctx * ctx;
            if shape.checkpoint_activations {
                // Only each block's input is kept, one block is live at a time.
                l * tokens * d + block
            } else {
                l * block
            }
        }
        _ => 0.0,
    };
    (logits + layers) * 4.0
}

/// Refuses a setup whose step would exceed `budget`, naming `batch_size` when activations
/// dominate and the model's size when gradients and optimizer state do.
pub fn ensure_training_fits_in(
    trainer: &str,
    shape: &Shape,
    setup: &Setup,
    budget: Option<&Budget>,
) -> Result<()> {
    let activations = activation_bytes(shape, setup.batch_size as f64, setup.ctx as f64);
    // Gradients and AdamW's two moments, f32; the weights already exist.
    let state = 3.0 * shape.parameters * 4.0;
    let (what, lower) = if activations >= state {
        (
            format!(
                "`batch_size` = {} (× ctx {} = {} tokens per micro-batch, vocabulary {})",
                setup.batch_size,
                setup.ctx,
                setup.batch_size as f64 * setup.ctx as f64,
                shape.vocab_size
            ),
            "lower `batch_size` (raise `grad_accum` to keep the tokens per step) or `ctx`",
        )
    } else {
        (
            format!(
                "training a model of {:.3e} parameters (gradients and AdamW's two moments)",
                shape.parameters
            ),
            "train a smaller model",
        )
    };
    match over_budget(budget, &what, activations + state, lower) {
        Some(message) => Err(Error::invalid_config(trainer, message)),
        None => Ok(()),
    }
}

/// [`ensure_training_fits_in`] against the machine's budget, for training in host memory.
pub fn ensure_training_fits(trainer: &str, model: &dyn Model, setup: &Setup) -> Result<()> {
    if !model.device().is_cpu() {
        return Ok(());
    }
    ensure_training_fits_in(
        trainer,
        &Shape::of(model),
        setup,
        available_bytes().as_ref(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(batch_size: usize, ctx: usize) -> Setup {
        Setup {
            batch_size,
            ctx,
            seed: 0,
            eval_batches: 0,
            eval: false,
            model_vocab_size: 1024,
        }
    }

    const SMALL: Shape = Shape {
        parameters: 3.0e6,
        vocab_size: 1024.0,
        d_model: Some(256.0),
        n_layer: Some(4.0),
        n_head: Some(4.0),
        checkpoint_activations: false,
    };

    #[test]
    fn huge_batches_are_refused_naming_batch_size() {
        let budget = Budget {
            bytes: 16 << 30,
            source: "test".into(),
        };
        ensure_training_fits_in("lm", &SMALL, &setup(64, 256), Some(&budget)).unwrap();
        let error =
            ensure_training_fits_in("lm", &SMALL, &setup(1_000_000_000, 256), Some(&budget))
                .unwrap_err()
                .to_string();
        assert!(
            error.contains("`batch_size` = 1000000000") && error.contains("grad_accum"),
            "{error}"
        );
        let huge = Shape {
            parameters: 1e12,
            ..SMALL
        };
        let error = ensure_training_fits_in("lm", &huge, &setup(1, 16), Some(&budget))
            .unwrap_err()
            .to_string();
        assert!(error.contains("1.000e12 parameters"), "{error}");
        // Checkpointing keeps less.
        let ckpt = Shape {
            checkpoint_activations: true,
            ..SMALL
        };
        assert!(activation_bytes(&ckpt, 64.0, 256.0) < activation_bytes(&SMALL, 64.0, 256.0));
    }
}
