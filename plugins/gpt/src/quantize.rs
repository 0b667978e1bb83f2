//! Rebuilding a model with quantized linear weights (`Model::quantized`): a copy of the model
//! whose linear layers (`c_attn`, `c_proj`, `c_fc`, `c_gate`, `lm_head`) hold the quantizer's
//! block tensors and multiply with candle's `QMatMul`. Embeddings and norms stay dense: they are
//! lookups and elementwise scales, not matrix products. Generation and the KV cache are the same
//! code; only the products change.
//!
//! `skip` holds substrings of parameter names: a layer whose weight name contains one stays
//! dense (`"lm_head"`, `"c_proj"`, `"h.0."`).

use std::collections::BTreeMap;
use std::sync::Arc;

use llmlab_plugin_api::{Quantizer, Result};

use crate::linear::Linear;
use crate::model::Gpt;

/// A copy of `model` with every linear weight not matched by `skip` quantized by `quantizer`.
pub fn quantized(model: &Gpt, quantizer: &dyn Quantizer, skip: &[String]) -> Result<Gpt> {
    let mut copy = model.copy()?;
    let mut weights = BTreeMap::new();
    for (prefix, layer) in copy.linears_mut() {
        let name = format!("{prefix}.weight");
        if skip.iter().any(|s| name.contains(s.as_str())) {
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
