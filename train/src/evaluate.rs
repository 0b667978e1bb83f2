//! Evaluation: the mean loss (and perplexity) of the model on a fixed set of batches, without
//! dropout. The same batches every time, so successive evaluations are comparable.

use llmlab_plugin_api::{ForwardOptions, Model, Result};

use crate::batches::Batch;
use crate::loss;

/// Validation loss in nats per (unmasked) token, and perplexity `exp(loss)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evaluation {
    pub loss: f64,
    pub ppl: f64,
}

/// Token-weighted mean loss over `batches`; `None` when there is nothing to evaluate.
pub fn evaluate(model: &dyn Model, batches: &[Batch]) -> Result<Option<Evaluation>> {
    let options = ForwardOptions::inference();
    let (mut total, mut tokens) = (0f64, 0usize);
    for batch in batches {
        let logits = model
            .forward_with(&batch.inputs, &batch.forward_inputs, &options)?
            .logits;
        let mean = match &batch.mask {
            None => loss::cross_entropy(&logits, &batch.targets)?,
            Some(mask) => {
                loss::masked_cross_entropy(&logits, &batch.targets, mask, batch.loss_tokens)?
            }
        };
        total += mean.to_scalar::<f32>()? as f64 * batch.loss_tokens as f64;
        tokens += batch.loss_tokens;
    }
    if tokens == 0 {
        return Ok(None);
    }
    let loss = total / tokens as f64;
    Ok(Some(Evaluation {
        loss,
        ppl: loss.exp(),
    }))
}
