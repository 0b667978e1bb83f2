//! Pruning (issue 22): `prune(model, #{ method, sparsity, pattern, calibration, skip })` zeroes
//! the lowest-scoring weights of the blocks' linear layers, in place, and keeps a mask on each
//! layer so that further training keeps them at zero.
//!
//! - `method: "magnitude"` scores `|W|`; unstructured, the threshold is per layer (the usual
//!   magnitude baseline).
//! - `method: "wanda"` scores `|W_ij|·‖X_j‖₂`, `‖X_j‖₂` the norm of input feature `j` over the
//!   calibration tokens (Sun et al. 2023), compared within each output row. The statistics come
//!   from one pass of the calibration batches through the model as it is (one-shot, not the
//!   block-by-block sequential variant).
//! - `pattern`: `"unstructured"`, or `"N:M"` (`"2:4"`, `"4:8"`): in every run of `M`
//!   consecutive weights of a row, the `M − N` lowest-scoring are zeroed.
//!
//! The mask multiplies the weight in every forward pass: a pruned weight contributes nothing and
//! gets no gradient, so AdamW (zero gradient, zero moments) leaves it at zero. Pruning again
//! (progressive schedules: a higher `sparsity` between training phases) starts from the masked
//! weights, whose zeros score lowest, so earlier masks are kept.
//!
//! Patterns that change shapes make a new model instead (`Model::pruned`): `"structured"`
//! (whole heads and feed-forward channels, `structured.rs`) and `"experts"` (MoE experts,
//! `experts.rs`).

pub mod experts;
pub mod structured;

use std::sync::Arc;

use llmlab_plugin_api::candle::{DType, Tensor};
use llmlab_plugin_api::serde_json::{json, Value};
use llmlab_plugin_api::{Error, ForwardOptions, Model, Result};

use crate::model::Gpt;
use llmlab_nn::linear::DenseLinear;

pub use llmlab_nn::pruning::{Pruning, Recorder};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Method {
    Magnitude,
    Wanda,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Pattern {
    Unstructured,
    /// Keep `n` of every `m`.
    NofM(usize, usize),
}

struct PruneConfig {
    method: Method,
    sparsity: f64,
    pattern: Pattern,
    skip: Vec<String>,
}

fn parse(config: &Value) -> Result<PruneConfig> {
    let bad = |m: String| Error::invalid_config("prune", m);
    let fields = config
        .as_object()
        .ok_or_else(|| bad(format!("expected a map, got {config}")))?;
    for key in fields.keys() {
        if !["method", "sparsity", "pattern", "skip"].contains(&key.as_str()) {
            return Err(bad(format!(
                "unknown key `{key}` (accepted: method, sparsity, pattern, calibration, calibration_rows, skip)"
            )));
        }
    }
    let method = match fields.get("method").and_then(Value::as_str) {
        None | Some("magnitude") => Method::Magnitude,
        Some("wanda") => Method::Wanda,
        Some(other) => return Err(bad(format!("unknown method `{other}` (magnitude, wanda)"))),
    };
    let pattern = match fields.get("pattern").and_then(Value::as_str) {
        None | Some("unstructured") => Pattern::Unstructured,
        Some(p @ ("structured" | "experts")) => {
            return Err(bad(format!(
                "pattern \"{p}\" removes whole units and changes the tensors' shapes, so it \
                 makes a new model (Model::pruned; in scripts prune(m, ..) replaces the model \
                 in its variable) instead of masking in place"
            )))
        }
        Some(nm) => {
            let parsed = nm
                .split_once(':')
                .and_then(|(n, m)| Some((n.trim().parse().ok()?, m.trim().parse().ok()?)));
            match parsed {
                Some((n, m)) if n > 0 && n < m => Pattern::NofM(n, m),
                _ => {
                    return Err(bad(format!(
                        "pattern `{nm}`: expected \"unstructured\" or N:M with 0 < N < M (\"2:4\")"
                    )))
                }
            }
        }
    };
    let sparsity = match (fields.get("sparsity"), pattern) {
        (None, Pattern::NofM(n, m)) => 1.0 - n as f64 / m as f64,
        (None, Pattern::Unstructured) => {
            return Err(bad(
                "`sparsity` (the fraction to zero, e.g. 0.5) is required".into(),
            ))
        }
        (Some(v), _) => v
            .as_f64()
            .filter(|s| (0.0..1.0).contains(s))
            .ok_or_else(|| bad(format!("`sparsity` must be in [0, 1), got {v}")))?,
    };
    if let Pattern::NofM(n, m) = pattern {
        let implied = 1.0 - n as f64 / m as f64;
        if (sparsity - implied).abs() > 1e-9 {
            return Err(bad(format!(
                "pattern {n}:{m} zeroes {implied} of the weights; `sparsity` {sparsity} contradicts it (leave it out)"
            )));
        }
    }
    let skip = match fields.get("skip") {
        None => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|s| {
                s.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| bad(format!("`skip` entries must be strings, got {s}")))
            })
            .collect::<Result<_>>()?,
        Some(other) => return Err(bad(format!("`skip` must be a list of names, got {other}"))),
    };
    Ok(PruneConfig {
        method,
        sparsity,
        pattern,
        skip,
    })
}

/// The layers pruning touches: the blocks' dense linears not matched by `skip`.
fn targets<'a>(gpt: &'a Gpt, skip: &[String]) -> Vec<&'a (String, DenseLinear)> {
    gpt.dense_layers()
        .iter()
        .filter(|(name, _)| name.starts_with("transformer.h."))
        .filter(|(name, _)| !skip.iter().any(|s| name.contains(s.as_str())))
        .collect()
}

/// Runs the calibration batches with a recorder on every target layer; the input norms.
pub(crate) fn input_norms(
    gpt: &Gpt,
    layers: &[&(String, DenseLinear)],
    calibration: &[Tensor],
) -> Result<Vec<Vec<f32>>> {
    if calibration.is_empty() {
        return Err(Error::invalid_config(
            "prune",
            "method \"wanda\" needs `calibration` data (a dataset): it weighs each weight by \
             its input's activation norm",
        ));
    }
    let recorders: Vec<Arc<Recorder>> = layers.iter().map(|_| Arc::default()).collect();
    for ((_, layer), recorder) in layers.iter().zip(&recorders) {
        layer
            .pruning()
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .recorder = Some(recorder.clone());
    }
    // Not `ForwardOptions::inference()`: the recorders sit in candle's graph pass, which the
    // owned inference pass would bypass.
    let result = calibration
        .iter()
        .try_for_each(|batch| gpt.forward(batch, &ForwardOptions::default()).map(|_| ()));
    for (_, layer) in layers {
        layer
            .pruning()
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .recorder = None;
    }
    result?;
    layers
        .iter()
        .zip(&recorders)
        .map(|((name, _), r)| {
            r.norms()
                .ok_or_else(|| Error::msg(format!("prune: `{name}` saw no calibration tokens")))
        })
        .collect()
}

/// Indices of the `k` lowest scores among `indices` (ties: the earlier index first).
fn lowest(scores: &[f32], indices: &mut [usize], k: usize) -> Vec<usize> {
    indices.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
    indices[..k].to_vec()
}

/// The keep-mask of one `(out, in)` layer from its scores.
fn mask(scores: &[f32], out: usize, inp: usize, config: &PruneConfig) -> Result<Vec<f32>> {
    let mut keep = vec![1f32; out * inp];
    match config.pattern {
        Pattern::Unstructured if config.method == Method::Magnitude => {
            let k = (config.sparsity * (out * inp) as f64).floor() as usize;
            let mut all: Vec<usize> = (0..out * inp).collect();
            for i in lowest(scores, &mut all, k) {
                keep[i] = 0.0;
            }
        }
        Pattern::Unstructured => {
            let k = (config.sparsity * inp as f64).floor() as usize;
            for row in 0..out {
                let mut idx: Vec<usize> = (row * inp..(row + 1) * inp).collect();
                for i in lowest(scores, &mut idx, k) {
                    keep[i] = 0.0;
                }
            }
        }
        Pattern::NofM(n, m) => {
            if !inp.is_multiple_of(m) {
                return Err(Error::invalid_config(
                    "prune",
                    format!(
                        "pattern {n}:{m} needs the input width ({inp}) to be a multiple of {m}"
                    ),
                ));
            }
            for start in (0..out * inp).step_by(m) {
                let mut idx: Vec<usize> = (start..start + m).collect();
                for i in lowest(scores, &mut idx, m - n) {
                    keep[i] = 0.0;
                }
            }
        }
    }
    Ok(keep)
}

/// The options of the shape-changing patterns (`"structured"`, `"experts"`).
pub struct StructuredConfig {
    /// Fraction of the units (heads, channels, experts) to remove in each block.
    pub sparsity: f64,
    /// Importance from calibration activations (`method: "wanda"`) instead of weight norms.
    pub wanda: bool,
    pub skip: Vec<String>,
}

impl StructuredConfig {
    /// Whether `skip` names `part` (`"attn"`, `"mlp"`).
    pub fn skips(&self, part: &str) -> bool {
        self.skip.iter().any(|s| s == part)
    }
}

/// `Model::pruned`: the shape-changing patterns.
pub fn pruned(gpt: &Gpt, config: &Value, calibration: &[Tensor]) -> Result<(Gpt, Value)> {
    let bad = |m: String| Error::invalid_config("prune", m);
    let fields = config
        .as_object()
        .ok_or_else(|| bad(format!("expected a map, got {config}")))?;
    let pattern = fields.get("pattern").and_then(Value::as_str).unwrap_or("");
    for key in fields.keys() {
        if !["method", "sparsity", "pattern", "skip"].contains(&key.as_str()) {
            return Err(bad(format!(
                "unknown key `{key}` for pattern \"{pattern}\" (accepted: method, sparsity, \
                 pattern, calibration, calibration_rows, skip)"
            )));
        }
    }
    let wanda = match fields.get("method").and_then(Value::as_str) {
        None | Some("magnitude") => false,
        Some("wanda") if pattern == "structured" => true,
        Some(other) if pattern == "experts" => {
            return Err(bad(format!(
                "pattern \"experts\" ranks experts by router load; `method` \"{other}\" does not apply (leave it out)"
            )))
        }
        Some(other) => return Err(bad(format!("unknown method `{other}` (magnitude, wanda)"))),
    };
    let sparsity = match fields.get("sparsity") {
        None => {
            return Err(bad(format!(
                "pattern \"{pattern}\" needs `sparsity`: the fraction of heads/channels/experts to remove (e.g. 0.25)"
            )))
        }
        Some(v) => v
            .as_f64()
            .filter(|s| *s > 0.0 && *s < 1.0)
            .ok_or_else(|| bad(format!("`sparsity` must be in (0, 1), got {v}")))?,
    };
    let skip = match fields.get("skip") {
        None => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|s| match s.as_str() {
                Some(p @ ("attn" | "mlp")) => Ok(p.to_string()),
                _ => Err(bad(format!(
                    "`skip` for structured pruning names parts of every block: \"attn\" or \"mlp\", got {s}"
                ))),
            })
            .collect::<Result<_>>()?,
        Some(other) => return Err(bad(format!("`skip` must be a list of names, got {other}"))),
    };
    if gpt.lora().is_some() {
        return Err(Error::msg(
            "prune: the model has LoRA adapters; merge and remove them (or prune the base first)",
        ));
    }
    if let Some(scheme) = gpt.scheme() {
        return Err(Error::msg(format!(
            "prune: the model is {scheme}-quantized; prune the dense model, then quantize"
        )));
    }
    let config = StructuredConfig {
        sparsity,
        wanda,
        skip,
    };
    match pattern {
        "structured" => structured::pruned(gpt, &config, calibration),
        "experts" => experts::pruned(gpt, &config, calibration),
        other => Err(bad(format!(
            "pattern \"{other}\" prunes in place (masks); only \"structured\" and \"experts\" make a new model"
        ))),
    }
}

/// `Model::prune` for the GPT.
pub fn prune(gpt: &Gpt, config: &Value, calibration: &[Tensor]) -> Result<Value> {
    let config = parse(config)?;
    if gpt.lora().is_some() {
        return Err(Error::msg(
            "prune: the model has LoRA adapters; merge and remove them (or prune the base first)",
        ));
    }
    let layers = targets(gpt, &config.skip);
    if layers.is_empty() {
        return Err(Error::msg(
            "prune: no dense linear layer to prune (all skipped, or the model is quantized)",
        ));
    }
    let norms = match config.method {
        Method::Wanda => Some(input_norms(gpt, &layers, calibration)?),
        Method::Magnitude => None,
    };
    let weights = gpt.parameters_by_name();
    let mut report = Vec::new();
    let (mut zeros_all, mut total_all) = (0usize, 0usize);
    for (i, (name, layer)) in layers.iter().enumerate() {
        let key = format!("{name}.weight");
        let var = weights
            .get(&key)
            .ok_or_else(|| Error::msg(format!("prune: no weight `{key}`")))?;
        let (out, inp) = var.dims2()?;
        let old_mask = layer
            .pruning()
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .mask
            .clone();
        let mut w = var.as_tensor().to_dtype(DType::F32)?;
        if let Some(m) = &old_mask {
            w = w.mul(m)?;
        }
        let w: Vec<f32> = w.flatten_all()?.to_vec1()?;
        let scores: Vec<f32> = match &norms {
            None => w.iter().map(|v| v.abs()).collect(),
            Some(norms) => w
                .iter()
                .enumerate()
                .map(|(k, v)| v.abs() * norms[i][k % inp])
                .collect(),
        };
        let keep = mask(&scores, out, inp, &config)?;
        let zeros = keep.iter().filter(|&&k| k == 0.0).count();
        let keep = Tensor::from_vec(keep, (out, inp), var.device())?;
        let pruned = Tensor::from_vec(w, (out, inp), var.device())?
            .mul(&keep)?
            .to_dtype(var.dtype())?;
        var.set(&pruned)?;
        layer
            .pruning()
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .mask = Some(keep);
        zeros_all += zeros;
        total_all += out * inp;
        report.push(json!({
            "layer": name,
            "zeros": zeros,
            "total": out * inp,
            "sparsity": zeros as f64 / (out * inp) as f64,
        }));
    }
    let method = match config.method {
        Method::Magnitude => "magnitude",
        Method::Wanda => "wanda",
    };
    let pattern = match config.pattern {
        Pattern::Unstructured => "unstructured".to_string(),
        Pattern::NofM(n, m) => format!("{n}:{m}"),
    };
    Ok(json!({
        "method": method,
        "pattern": pattern,
        "sparsity": zeros_all as f64 / total_all.max(1) as f64,
        "zeros": zeros_all,
        "total": total_all,
        "layers": report,
    }))
}

/// `Model::sparsity_report`: zeros of every dense linear weight (as the forward pass sees it).
pub fn sparsity_report(gpt: &Gpt) -> Result<Value> {
    let weights = gpt.parameters_by_name();
    let mut layers = Vec::new();
    let (mut zeros_all, mut total_all) = (0usize, 0usize);
    for (name, layer) in gpt.dense_layers() {
        let key = format!("{name}.weight");
        let Some(var) = weights.get(&key) else {
            continue;
        };
        let mut w = var.as_tensor().to_dtype(DType::F32)?;
        if let Some(m) = &layer
            .pruning()
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .mask
        {
            w = w.mul(m)?;
        }
        let total = w.elem_count();
        let zeros = w
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .filter(|v| **v == 0.0)
            .count();
        zeros_all += zeros;
        total_all += total;
        layers.push(json!({
            "layer": name,
            "zeros": zeros,
            "total": total,
            "sparsity": zeros as f64 / total.max(1) as f64,
        }));
    }
    Ok(json!({
        "zeros": zeros_all,
        "total": total_all,
        "sparsity": zeros_all as f64 / total_all.max(1) as f64,
        "layers": layers,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(method: Method, pattern: Pattern, sparsity: f64) -> PruneConfig {
        PruneConfig {
            method,
            sparsity,
            pattern,
            skip: Vec::new(),
        }
    }

    #[test]
    fn magnitude_thresholds_per_layer_and_wanda_per_row() {
        let scores = [4.0, 3.0, 2.0, 1.0, 0.4, 0.3, 0.2, 0.1];
        let layer = mask(
            &scores,
            2,
            4,
            &config(Method::Magnitude, Pattern::Unstructured, 0.5),
        )
        .unwrap();
        assert_eq!(layer, [1., 1., 1., 1., 0., 0., 0., 0.]);
        let rows = mask(
            &scores,
            2,
            4,
            &config(Method::Wanda, Pattern::Unstructured, 0.5),
        )
        .unwrap();
        assert_eq!(rows, [1., 1., 0., 0., 1., 1., 0., 0.]);
    }

    #[test]
    fn two_of_four_keeps_the_two_best_of_each_group() {
        let scores = [1.0, 8.0, 2.0, 7.0, 3.0, 4.0, 6.0, 5.0];
        let keep = mask(
            &scores,
            1,
            8,
            &config(Method::Wanda, Pattern::NofM(2, 4), 0.5),
        )
        .unwrap();
        assert_eq!(keep, [0., 1., 0., 1., 0., 0., 1., 1.]);
        let err = mask(
            &scores[..6],
            1,
            6,
            &config(Method::Wanda, Pattern::NofM(2, 4), 0.5),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("multiple of 4"), "{err}");
    }
}
