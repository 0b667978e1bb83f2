//! The model-level MoE surface: training metrics gathered from every MoE block
//! (`Model::take_train_metrics`), router statistics of one pass (`Model::router_stats`, the
//! script's `m.router_stats(ids)`), and setting state tensors from a checkpoint.

use llmlab_plugin_api::candle::{Tensor, Var};
use llmlab_plugin_api::serde_json::{json, Value};
use llmlab_plugin_api::{Error, ForwardOptions, Result};

use super::stats::{summary, LayerStats};
use crate::block::Block;
use crate::model::Gpt;

/// Every MoE block's mean statistics over the training passes since the last call.
pub fn take_train_metrics(blocks: &[Block]) -> Vec<(String, f64)> {
    let layers: Vec<(usize, LayerStats)> = blocks
        .iter()
        .enumerate()
        .filter_map(|(i, b)| Some((i, b.feed_forward().moe()?.take_stats()?)))
        .collect();
    let mut out = Vec::new();
    for (i, stats) in &layers {
        stats.metrics(*i, &mut out);
    }
    summary(&layers, &mut out);
    out
}

/// One evaluation pass over `ids`: per MoE block its loads, dropped fraction, entropy and loss
/// terms, and the summary over blocks.
pub fn router_stats(model: &Gpt, ids: &Tensor) -> Result<Value> {
    if model.gpt_config().moe.is_none() {
        return Err(Error::unsupported(
            "gpt",
            "router statistics: this model has no `moe` config (dense feed-forward)",
        ));
    }
    let (_, layers) = model.run_routed(ids, None, &ForwardOptions::default())?;
    let mut summary_metrics = Vec::new();
    summary(&layers, &mut summary_metrics);
    let mut out = json!({
        "layers": layers.iter().map(|(i, s)| s.to_json(*i)).collect::<Vec<_>>(),
    });
    for (key, value) in summary_metrics {
        out[key.trim_start_matches("moe.")] = json!(value);
    }
    Ok(out)
}

/// Sets state tensor `name` of `state`, checking its shape.
pub fn set_state(state: &[(String, Var)], name: &str, value: &Tensor) -> Result<()> {
    let Some((_, var)) = state.iter().find(|(n, _)| n == name) else {
        return Err(Error::msg(format!(
            "gpt: no state tensor `{name}` (this model's: {})",
            state
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    };
    if value.shape() != var.shape() {
        return Err(Error::msg(format!(
            "gpt: state tensor `{name}` has shape {:?}, the model's has {:?}",
            value.dims(),
            var.dims()
        )));
    }
    var.set(&value.to_device(var.device())?.to_dtype(var.dtype())?)?;
    Ok(())
}
