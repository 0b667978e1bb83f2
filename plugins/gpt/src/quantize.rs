//! Rebuilding a model with quantized linear weights (`Model::quantized`): a copy of the model
//! whose linear layers (`c_attn`, `c_proj`, `c_fc`, `c_gate`, `lm_head`) hold the quantizer's
//! block tensors and multiply with candle's `QMatMul`. Embeddings and norms stay dense: they are
//! lookups and elementwise scales, not matrix products. Generation and the KV cache are the same
//! code; only the products change.
//!
//! `skip` holds substrings of parameter names: a layer whose weight name contains one stays
//! dense (`"lm_head"`, `"c_proj"`, `"h.0."`).
//!
//! Quantization-aware training (`Model::set_fake_quant`) switches the same layers, chosen by the
//! same `skip`, to fake-quantized weights, so a QAT run trains exactly what `quantized` rounds.

use std::collections::BTreeMap;
use std::sync::Arc;

use llmlab_plugin_api::{Error, Quantizer, Result};

use crate::model::Gpt;
use llmlab_nn::linear::Linear;

/// Whether weight `name` stays dense: it contains one of the `skip` substrings. One rule for
/// `quantized` and `set_fake_quant`, so QAT trains exactly the layers quantization rounds.
fn skipped(name: &str, skip: &[String]) -> bool {
    skip.iter().any(|s| name.contains(s.as_str()))
}

/// A copy of `model` with every linear weight not matched by `skip` quantized by `quantizer`.
pub fn quantized(model: &Gpt, quantizer: &dyn Quantizer, skip: &[String]) -> Result<Gpt> {
    let mut copy = model.copy()?;
    let mut weights = BTreeMap::new();
    for (prefix, layer) in copy.linears_mut() {
        let name = format!("{prefix}.weight");
        if skipped(&name, skip) {
            continue;
        }
        // Layers quantized before keep their weights.
        if let Linear::Dense(dense) = layer {
            weights.insert(
                name.clone(),
                Arc::new(quantizer.quantize(&name, dense.weight())?),
            );
        }
    }
    copy.install_quantized(weights, quantizer.name())?;
    Ok(copy)
}

/// Fake-quantizes every dense linear layer of `model` not matched by `skip` with `quantizer`
/// (`None`: turns it off everywhere).
pub fn set_fake_quant(
    model: &Gpt,
    quantizer: Option<Arc<dyn Quantizer>>,
    skip: &[String],
) -> Result<()> {
    if let (Some(q), Some(scheme)) = (&quantizer, model.scheme()) {
        return Err(Error::msg(format!(
            "gpt: cannot fake-quantize ({}) a model whose weights are already {scheme}-quantized; \
             train the dense model and quantize it afterwards",
            q.name()
        )));
    }
    for (prefix, layer) in model.dense_layers() {
        let name = format!("{prefix}.weight");
        layer.set_fake_quant(if skipped(&name, skip) {
            None
        } else {
            quantizer.clone()
        });
    }
    Ok(())
}
