//! Expert pruning (issue 22): `prune(m, #{ pattern: "experts", sparsity, calibration })` drops
//! the least-used routed experts of every mixture-of-experts block, by the router's own
//! statistics over the calibration tokens (`Gpt::run_routed`'s per-block loads: the fraction of
//! the router's choices each expert got, evaluation routing). The result is a new [`Gpt`] with
//! `moe.experts` lowered: the dropped experts' weights are gone, the router loses their rows
//! (and the selection-bias state its entries), and the kept experts are renumbered in order.
//!
//! Every MoE block keeps the same number of experts (the config has one `moe.experts`), each
//! block its own most-used ones; at least `top_k` are kept. Shared experts are never dropped.

use std::collections::HashMap;

use llmlab_plugin_api::candle::Tensor;
use llmlab_plugin_api::serde_json::{json, Value};
use llmlab_plugin_api::{Error, ForwardOptions, Model, Result};

use super::StructuredConfig;
use crate::config::GptConfig;
use crate::model::Gpt;
use crate::moe::MoeConfig;
use llmlab_nn::params::Source;

/// Each MoE block's mean load per expert over the calibration batches, weighted by their tokens.
fn mean_loads(gpt: &Gpt, calibration: &[Tensor]) -> Result<HashMap<usize, Vec<f64>>> {
    if calibration.is_empty() {
        return Err(Error::invalid_config(
            "prune",
            "pattern \"experts\" needs `calibration` data (a dataset): experts are ranked by how \
             often the router picks them",
        ));
    }
    let mut sums: HashMap<usize, Vec<f64>> = HashMap::new();
    for batch in calibration {
        let tokens = batch.elem_count() as f64;
        let (_, stats) = gpt.run_routed(batch, None, &ForwardOptions::default())?;
        for (block, s) in stats {
            let sum = sums.entry(block).or_insert_with(|| vec![0.0; s.load.len()]);
            for (acc, l) in sum.iter_mut().zip(&s.load) {
                *acc += l * tokens;
            }
        }
    }
    let total: f64 = calibration.iter().map(|b| b.elem_count() as f64).sum();
    for loads in sums.values_mut() {
        loads.iter_mut().for_each(|l| *l /= total);
    }
    Ok(sums)
}

/// The experts to keep: the `keep` most used, in index order (ties: the earlier kept).
fn most_used(loads: &[f64], keep: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..loads.len()).collect();
    order.sort_by(|&a, &b| loads[b].total_cmp(&loads[a]).then(a.cmp(&b)));
    let mut kept = order[..keep].to_vec();
    kept.sort_unstable();
    kept
}

/// `Model::pruned` with `pattern: "experts"`.
pub fn pruned(
    gpt: &Gpt,
    config: &StructuredConfig,
    calibration: &[Tensor],
) -> Result<(Gpt, Value)> {
    let old = gpt.gpt_config().clone();
    let Some(moe) = old.moe.clone() else {
        return Err(Error::invalid_config(
            "prune",
            "pattern \"experts\" prunes mixture-of-experts layers, and this model has no `moe` \
             config (use pattern \"structured\" for heads and feed-forward channels)",
        ));
    };
    let n = moe.experts;
    let dropped = ((config.sparsity * n as f64).floor() as usize).min(n - moe.top_k);
    let keep = n - dropped;
    let loads = mean_loads(gpt, calibration)?;
    let mut tensors: HashMap<String, Tensor> = gpt.tensors().into_iter().collect();
    let device = Model::device(gpt).clone();
    let mut layers = Vec::new();
    let mut blocks: Vec<&usize> = loads.keys().collect();
    blocks.sort();
    for &block in blocks {
        let kept = most_used(&loads[&block], keep);
        let prefix = format!("transformer.h.{block}.mlp.");
        let ids: Vec<u32> = kept.iter().map(|&e| e as u32).collect();
        let ids = Tensor::from_vec(ids, kept.len(), &device)?;
        for name in [
            "router.weight",
            "router.selection_bias",
            "router.pending_load",
        ] {
            let key = format!("{prefix}{name}");
            if let Some(t) = tensors.get(&key) {
                let shrunk = t.index_select(&ids, 0)?;
                tensors.insert(key, shrunk);
            }
        }
        // Expert `old` becomes expert `new`; the others' tensors leave.
        let experts = format!("{prefix}experts.");
        let mut moved = HashMap::new();
        tensors.retain(|name, t| {
            let Some(rest) = name.strip_prefix(&experts) else {
                return true;
            };
            let (index, suffix) = rest.split_once('.').unwrap_or((rest, ""));
            if let Some(new) = index
                .parse::<usize>()
                .ok()
                .and_then(|e| kept.iter().position(|&k| k == e))
            {
                moved.insert(format!("{experts}{new}.{suffix}"), t.clone());
            }
            false
        });
        tensors.extend(moved);
        let removed: Vec<usize> = (0..n).filter(|e| !kept.contains(e)).collect();
        layers.push(json!({
            "block": block,
            "load": loads[&block],
            "experts_removed": removed,
        }));
    }
    let new_config = GptConfig {
        moe: Some(MoeConfig {
            experts: keep,
            ..moe
        }),
        ..old
    };
    let tensors = tensors
        .into_iter()
        .map(|(n, t)| Ok((n, t.copy()?)))
        .collect::<Result<HashMap<_, _>>>()?;
    let small = Gpt::new(
        new_config,
        Source::Tensors(tensors),
        &device,
        gpt.dtype(),
        gpt.cancel_flag().clone(),
    )?;
    let report = json!({
        "pattern": "experts",
        "importance": "router load over the calibration tokens (fraction of the router's choices)",
        "experts": { "before": n, "after": keep },
        "params": { "before": gpt.base_params_count(), "after": small.base_params_count() },
        "layers": layers,
    });
    Ok((small, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_most_used_in_index_order() {
        assert_eq!(most_used(&[0.1, 0.4, 0.2, 0.3], 2), [1, 3]);
        assert_eq!(most_used(&[0.25, 0.25, 0.25, 0.25], 3), [0, 1, 2]);
    }
}
