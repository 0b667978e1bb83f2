//! Where each weight of the GPT sits in its parameter list: the owned pass reads weights and
//! writes gradients by these indices (`w[ix]`, `grads[ix]`), in the order of
//! `Gpt::parameters`.

use std::collections::HashMap;

use llmlab_plugin_api::candle::Var;
use llmlab_plugin_api::{Error, Result};

use crate::model::Gpt;

/// One block's weights (indices into the parameter list).
#[derive(Debug, Clone)]
pub struct BlockIx {
    pub ln1_w: usize,
    pub ln1_b: Option<usize>,
    pub attn_w: usize,
    pub attn_b: Option<usize>,
    pub q_norm: Option<usize>,
    pub k_norm: Option<usize>,
    pub proj_w: usize,
    pub proj_b: Option<usize>,
    pub ln2_w: usize,
    pub ln2_b: Option<usize>,
    pub fc_w: usize,
    pub fc_b: Option<usize>,
    pub gate_w: Option<usize>,
    pub gate_b: Option<usize>,
    pub out_w: usize,
    pub out_b: Option<usize>,
}

/// The whole model's weights (indices into the parameter list).
#[derive(Debug, Clone)]
pub struct Layout {
    pub wte: usize,
    pub wpe: Option<usize>,
    pub blocks: Vec<BlockIx>,
    pub lnf_w: usize,
    pub lnf_b: Option<usize>,
    /// The output head: `wte` itself when tied.
    pub head: usize,
    /// Each parameter's element count, in order.
    pub sizes: Vec<usize>,
}

impl Layout {
    /// The indices of `params` (`gpt`'s parameter list) by GPT-2 name. Every parameter must be
    /// one the pass knows: an unknown one would silently get no gradient.
    pub fn of(gpt: &Gpt, params: &[(String, Var)]) -> Result<Layout> {
        let by_name: HashMap<&str, usize> = params
            .iter()
            .enumerate()
            .map(|(i, (n, _))| (n.as_str(), i))
            .collect();
        let mut used = vec![false; params.len()];
        let mut opt = |name: String| -> Option<usize> {
            let i = by_name.get(name.as_str()).copied()?;
            used[i] = true;
            Some(i)
        };
        let mut missing = Vec::new();
        let mut req = |i: Option<usize>, name: &str| -> usize {
            i.unwrap_or_else(|| {
                missing.push(name.to_string());
                0
            })
        };
        let c = gpt.gpt_config();
        let t = "transformer";
        let wte = opt(format!("{t}.wte.weight"));
        let wte = req(wte, "transformer.wte.weight");
        let wpe = opt(format!("{t}.wpe.weight"));
        let mut blocks = Vec::with_capacity(c.n_layer);
        for i in 0..c.n_layer {
            let p = format!("{t}.h.{i}");
            let ln1_w = opt(format!("{p}.ln_1.weight"));
            let attn_w = opt(format!("{p}.attn.c_attn.weight"));
            let proj_w = opt(format!("{p}.attn.c_proj.weight"));
            let ln2_w = opt(format!("{p}.ln_2.weight"));
            let fc_w = opt(format!("{p}.mlp.c_fc.weight"));
            let out_w = opt(format!("{p}.mlp.c_proj.weight"));
            let block = BlockIx {
                ln1_b: opt(format!("{p}.ln_1.bias")),
                attn_b: opt(format!("{p}.attn.c_attn.bias")),
                q_norm: opt(format!("{p}.attn.q_norm.weight")),
                k_norm: opt(format!("{p}.attn.k_norm.weight")),
                proj_b: opt(format!("{p}.attn.c_proj.bias")),
                ln2_b: opt(format!("{p}.ln_2.bias")),
                fc_b: opt(format!("{p}.mlp.c_fc.bias")),
                gate_w: opt(format!("{p}.mlp.c_gate.weight")),
                gate_b: opt(format!("{p}.mlp.c_gate.bias")),
                out_b: opt(format!("{p}.mlp.c_proj.bias")),
                ln1_w: req(ln1_w, &format!("{p}.ln_1.weight")),
                attn_w: req(attn_w, &format!("{p}.attn.c_attn.weight")),
                proj_w: req(proj_w, &format!("{p}.attn.c_proj.weight")),
                ln2_w: req(ln2_w, &format!("{p}.ln_2.weight")),
                fc_w: req(fc_w, &format!("{p}.mlp.c_fc.weight")),
                out_w: req(out_w, &format!("{p}.mlp.c_proj.weight")),
            };
            blocks.push(block);
        }
        let lnf_w = opt(format!("{t}.ln_f.weight"));
        let lnf_w = req(lnf_w, "transformer.ln_f.weight");
        let lnf_b = opt(format!("{t}.ln_f.bias"));
        let head = if c.tie_embeddings {
            wte
        } else {
            let head = opt("lm_head.weight".to_string());
            req(head, "lm_head.weight")
        };
        if !missing.is_empty() {
            return Err(Error::msg(format!(
                "gpt owned pass: parameters missing: {missing:?}"
            )));
        }
        let unknown: Vec<&str> = params
            .iter()
            .zip(&used)
            .filter(|(_, u)| !**u)
            .map(|((n, _), _)| n.as_str())
            .collect();
        if !unknown.is_empty() {
            return Err(Error::msg(format!(
                "gpt owned pass: parameters it does not cover: {unknown:?}"
            )));
        }
        Ok(Layout {
            wte,
            wpe,
            blocks,
            lnf_w,
            lnf_b,
            head,
            sizes: params.iter().map(|(_, v)| v.elem_count()).collect(),
        })
    }
}

/// Why a linear layer of `gpt` computes something other than `x Wᵀ + b` with its stored
/// weight (fake quantization, a pruning mask or its calibration, an adapter), or `None`.
pub fn layer_changes(gpt: &Gpt) -> Option<String> {
    for (name, layer) in gpt.dense_layers() {
        if let Some(q) = layer.fake_quantizer() {
            return Some(format!("{name} is fake-quantized ({}) for QAT", q.name()));
        }
        let pruning = layer.pruning().read().unwrap_or_else(|p| p.into_inner());
        if pruning.mask.is_some() || pruning.recorder.is_some() {
            return Some(format!("{name} has a pruning mask or is calibrating"));
        }
    }
    None
}
