//! The checkpoint every aligner leaves in `<run dir>/checkpoint` at the end of `fit` and on
//! Ctrl-C: the trained model's weights (the policy; a reward model's body), the frozen
//! reference's (`reference.safetensors`), the optimiser's moments, any extra trained tensors
//! (PPO's value head, a reward head) and a manifest `aligner.json` with the step, optimiser
//! steps, RNG state, the aligner's own run state (prompt order, reward statistics) and configs,
//! written atomically and checksummed by
//! `llmlab_train::checkpoint`. [`crate::resume`] reads it back.

use std::path::Path;

use llmlab_plugin_api::candle::Tensor;
use llmlab_plugin_api::prelude::*;
use llmlab_train::checkpoint;

use crate::optimizer::Optimizer;

pub const DIR: &str = "checkpoint";
pub const MANIFEST: &str = "aligner.json";

pub const MODEL_FILE: &str = "model.safetensors";
pub const REFERENCE_FILE: &str = "reference.safetensors";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";

pub struct Saved<'a> {
    pub aligner: &'a str,
    pub config: Value,
    pub step: u64,
    pub rng_state: u64,
    /// Trained tensors besides the policy's (file name, tensors).
    pub extra: Option<(&'a str, Vec<(String, Tensor)>)>,
    /// The frozen reference, when the aligner has one.
    pub reference: Option<&'a dyn Model>,
    /// The aligner's own run state (prompt order, running reward statistics), for resume.
    pub state: Value,
}

fn weights_of(model: &dyn Model) -> Vec<(String, Tensor)> {
    model
        .parameters()
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .chain(model.state())
        .collect()
}

/// Writes the checkpoint. Data parallel: every rank calls this (ZeRO gathers the moments), and
/// rank 0 alone writes.
pub fn write(
    run_dir: &Path,
    policy: &dyn Model,
    optimizer: &mut Optimizer,
    trained: &[(String, Var)],
    saved: Saved<'_>,
) -> Result<()> {
    let moments = optimizer.moments(trained)?;
    if !optimizer.writes() {
        return Ok(());
    }
    let weights = weights_of(policy);
    let reference = saved.reference.map(weights_of);
    let mut files: Vec<(&str, &[(String, Tensor)])> =
        vec![(MODEL_FILE, &weights), (OPTIMIZER_FILE, &moments)];
    if let Some(reference) = &reference {
        files.push((REFERENCE_FILE, reference));
    }
    if let Some((file, tensors)) = &saved.extra {
        files.push((file, tensors));
    }
    let manifest = |entries| {
        Ok(serde_json::to_vec_pretty(&json!({
            "format": "llmlab-aligner-checkpoint",
            "version": 1,
            "aligner": saved.aligner,
            "step": saved.step,
            "optimizer_steps": optimizer.step,
            "rng_state": checkpoint::format_rng_state(saved.rng_state),
            "state": saved.state,
            "config": saved.config,
            "model": { "name": policy.name(), "config": policy.config() },
            "files": entries,
        }))?)
    };
    checkpoint::write_atomically(&run_dir.join(DIR), &files, MANIFEST, manifest)
}
