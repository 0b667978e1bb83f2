//! Structured pruning (issue 22): `prune(m, #{ pattern: "structured", method, sparsity, skip,
//! calibration })` removes whole attention heads and feed-forward channels, and the tensors
//! shrink with them: the result is a new, smaller [`Gpt`] (`Model::pruned`), saved and loaded
//! like any other.
//!
//! The unit of attention is a key/value group (one head with plain multi-head attention; a
//! key/value head and the query heads sharing it with grouped-query attention): removing it
//! removes its query, key and value rows of `c_attn` and its columns of `attn.c_proj`. A
//! feed-forward channel is a row of `c_fc` (and `c_gate`) and a column of `mlp.c_proj`.
//!
//! Importance, by `method`:
//! - `"magnitude"`: the L2 norm of all the unit's weights (rows in, columns out);
//! - `"wanda"`: Wanda's `|W|·‖X‖₂` made structural: `Σ_c ‖X_c‖₂ · ‖W_proj[:, c]‖₂` over the
//!   unit's input channels `c` of the output projection, `‖X_c‖₂` from the calibration tokens
//!   (the unit's expected contribution to the residual stream; FLAP/Wanda-sp).
//!
//! The config keeps one `n_head` and one `ffn_hidden` for every block, so every block loses the
//! same number of units (`sparsity` of them, rounded down, at least one kept), each block its own
//! least important ones. Per-block widths would let a global ranking take more from the layers
//! that matter less; the config has no per-layer sizes, so that is left out. `head_dim` is
//! written into the config (it is no longer `d_model / n_head`); MoE feed-forwards are left
//! (their experts are pruned by `pattern: "experts"`, `experts.rs`).

use std::collections::HashMap;

use llmlab_plugin_api::candle::{DType, Device, Tensor};
use llmlab_plugin_api::serde_json::{json, Value};
use llmlab_plugin_api::{Error, Model, Result};

use super::{input_norms, StructuredConfig};
use crate::config::GptConfig;
use crate::model::Gpt;
use llmlab_nn::params::Source;

/// One block's weights as flat f32 rows, and its input norms when calibrated.
struct Matrix {
    rows: usize,
    cols: usize,
    data: Vec<f32>,
}

impl Matrix {
    fn of(tensor: &Tensor) -> Result<Matrix> {
        let (rows, cols) = tensor.dims2()?;
        let data = tensor.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        Ok(Matrix { rows, cols, data })
    }

    /// `Σ_j W[i, j]²` of each row.
    fn row_squares(&self) -> Vec<f32> {
        self.data
            .chunks(self.cols)
            .map(|r| r.iter().map(|v| v * v).sum())
            .collect()
    }

    /// `Σ_i W[i, j]²` of each column.
    fn col_squares(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.cols];
        for row in self.data.chunks(self.cols) {
            for (o, v) in out.iter_mut().zip(row) {
                *o += v * v;
            }
        }
        debug_assert_eq!(self.data.len(), self.rows * self.cols);
        out
    }
}

/// The indices of the `keep` highest scores, in ascending index order (ties: the earlier kept).
fn keep_best(scores: &[f32], keep: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let mut kept = order[..keep].to_vec();
    kept.sort_unstable();
    kept
}

/// How many of `n` units stay after removing `sparsity` of them (rounded down, at least one).
fn kept_count(n: usize, sparsity: f64) -> usize {
    n - ((sparsity * n as f64).floor() as usize).min(n - 1)
}

fn index(ids: &[usize], device: &Device) -> Result<Tensor> {
    let ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
    Ok(Tensor::from_vec(ids.clone(), ids.len(), device)?)
}

fn take(tensors: &HashMap<String, Tensor>, name: &str) -> Result<Tensor> {
    tensors
        .get(name)
        .cloned()
        .ok_or_else(|| Error::msg(format!("prune: the model has no tensor `{name}`")))
}

/// `Model::pruned` with `pattern: "structured"`.
pub fn pruned(
    gpt: &Gpt,
    config: &StructuredConfig,
    calibration: &[Tensor],
) -> Result<(Gpt, Value)> {
    let old = gpt.gpt_config().clone();
    let (h, kv, hd) = (old.n_head, old.kv_heads(), old.head_dim());
    let per_group = h / kv;
    let prune_heads = !config.skips("attn");
    let prune_ffn = !config.skips("mlp") && old.moe.is_none();
    if !prune_heads && !prune_ffn {
        return Err(Error::invalid_config(
            "prune",
            "structured pruning has nothing to remove: `skip` names both \"attn\" and \"mlp\" \
             (a mixture-of-experts model's feed-forward is pruned with pattern \"experts\")",
        ));
    }
    let hidden = old.ffn_hidden();
    let kept_groups = if prune_heads {
        kept_count(kv, config.sparsity)
    } else {
        kv
    };
    let kept_hidden = if prune_ffn {
        kept_count(hidden, config.sparsity)
    } else {
        hidden
    };
    let mut tensors: HashMap<String, Tensor> = gpt.tensors().into_iter().collect();
    let device = Model::device(gpt).clone();

    // Input norms of each block's output projections (Wanda's ‖X‖₂ per channel).
    let norms: Option<HashMap<String, Vec<f32>>> = if config.wanda {
        let wanted: Vec<String> = (0..old.n_layer)
            .flat_map(|i| {
                let attn = prune_heads.then(|| format!("transformer.h.{i}.attn.c_proj"));
                let mlp = prune_ffn.then(|| format!("transformer.h.{i}.mlp.c_proj"));
                attn.into_iter().chain(mlp)
            })
            .collect();
        let layers: Vec<_> = gpt
            .dense_layers()
            .iter()
            .filter(|(name, _)| wanted.contains(name))
            .collect();
        let norms = input_norms(gpt, &layers, calibration)?;
        Some(
            layers
                .iter()
                .map(|(name, _)| name.clone())
                .zip(norms)
                .collect(),
        )
    } else {
        None
    };

    let mut layers_report = Vec::new();
    for i in 0..old.n_layer {
        let p = |s: &str| format!("transformer.h.{i}.{s}");
        let mut entry = json!({ "block": i });
        if prune_heads {
            let c_attn = Matrix::of(&take(&tensors, &p("attn.c_attn.weight"))?)?;
            let c_proj = Matrix::of(&take(&tensors, &p("attn.c_proj.weight"))?)?;
            let q_dim = h * hd;
            let query_channels = |g: usize| (g * per_group * hd)..((g + 1) * per_group * hd);
            let scores: Vec<f32> = match &norms {
                Some(norms) => {
                    let x = &norms[&p("attn.c_proj")];
                    let out = c_proj.col_squares();
                    (0..kv)
                        .map(|g| query_channels(g).map(|c| x[c] * out[c].sqrt()).sum())
                        .collect()
                }
                None => {
                    let rows = c_attn.row_squares();
                    let cols = c_proj.col_squares();
                    (0..kv)
                        .map(|g| {
                            let q: f32 = query_channels(g).map(|c| rows[c] + cols[c]).sum();
                            let k: f32 = rows[q_dim + g * hd..q_dim + (g + 1) * hd].iter().sum();
                            let v0 = q_dim + kv * hd + g * hd;
                            let v: f32 = rows[v0..v0 + hd].iter().sum();
                            (q + k + v).sqrt()
                        })
                        .collect()
                }
            };
            let groups = keep_best(&scores, kept_groups);
            let q_channels: Vec<usize> = groups.iter().flat_map(|&g| query_channels(g)).collect();
            let kv_rows = |base: usize| {
                groups
                    .iter()
                    .flat_map(move |&g| base + g * hd..base + (g + 1) * hd)
                    .collect::<Vec<_>>()
            };
            let mut rows = q_channels.clone();
            rows.extend(kv_rows(q_dim));
            rows.extend(kv_rows(q_dim + kv * hd));
            let rows = index(&rows, &device)?;
            let cols = index(&q_channels, &device)?;
            for (name, dim, ids) in [
                ("attn.c_attn.weight", 0, &rows),
                ("attn.c_attn.bias", 0, &rows),
                ("attn.c_proj.weight", 1, &cols),
            ] {
                if let Some(t) = tensors.get(&p(name)) {
                    let shrunk = t.index_select(ids, dim)?;
                    tensors.insert(p(name), shrunk);
                }
            }
            let removed: Vec<usize> = (0..kv).filter(|g| !groups.contains(g)).collect();
            entry["heads_removed"] = json!(removed);
            entry["head_scores"] = json!(scores);
        }
        if prune_ffn {
            let c_proj = Matrix::of(&take(&tensors, &p("mlp.c_proj.weight"))?)?;
            let scores: Vec<f32> = match &norms {
                Some(norms) => {
                    let x = &norms[&p("mlp.c_proj")];
                    c_proj
                        .col_squares()
                        .iter()
                        .zip(x)
                        .map(|(w, x)| w.sqrt() * x)
                        .collect()
                }
                None => {
                    let mut sq = c_proj.col_squares();
                    for name in ["mlp.c_fc.weight", "mlp.c_gate.weight"] {
                        if let Some(t) = tensors.get(&p(name)) {
                            for (s, r) in sq.iter_mut().zip(Matrix::of(t)?.row_squares()) {
                                *s += r;
                            }
                        }
                    }
                    sq.iter().map(|s| s.sqrt()).collect()
                }
            };
            let kept = keep_best(&scores, kept_hidden);
            let ids = index(&kept, &device)?;
            for (name, dim) in [
                ("mlp.c_fc.weight", 0),
                ("mlp.c_fc.bias", 0),
                ("mlp.c_gate.weight", 0),
                ("mlp.c_gate.bias", 0),
                ("mlp.c_proj.weight", 1),
            ] {
                if let Some(t) = tensors.get(&p(name)) {
                    let shrunk = t.index_select(&ids, dim)?;
                    tensors.insert(p(name), shrunk);
                }
            }
            entry["channels_removed"] = json!(hidden - kept_hidden);
        }
        layers_report.push(entry);
    }

    let new_config = GptConfig {
        n_head: kept_groups * per_group,
        n_kv_head: old.n_kv_head.map(|_| kept_groups),
        head_dim: Some(hd),
        ffn_hidden: Some(kept_hidden),
        ..old.clone()
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
        "pattern": "structured",
        "method": if config.wanda { "wanda" } else { "magnitude" },
        "importance": if config.wanda {
            "sum over the unit's channels of ||X_c||_2 * ||W_proj[:, c]||_2"
        } else {
            "L2 norm of the unit's weights"
        },
        "heads": { "before": h, "after": kept_groups * per_group },
        "kv_heads": { "before": kv, "after": kept_groups },
        "ffn_hidden": { "before": hidden, "after": kept_hidden },
        "params": { "before": gpt.base_params_count(), "after": small.base_params_count() },
        "layers": layers_report,
    });
    Ok((small, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_best_in_index_order_and_at_least_one() {
        assert_eq!(keep_best(&[0.5, 3.0, 1.0, 2.0], 2), [1, 3]);
        assert_eq!(kept_count(4, 0.5), 2);
        assert_eq!(kept_count(4, 0.99), 1);
        assert_eq!(kept_count(1, 0.5), 1);
        assert_eq!(kept_count(10, 0.25), 8);
    }
}
