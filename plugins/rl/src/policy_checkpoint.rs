//! The checkpoint an online aligner (`grpo`, `ppo`) leaves in `<run dir>/checkpoint`: the
//! policy's weights, the optimiser's moments, any extra trained tensors (PPO's value head) and a
//! manifest `aligner.json` with the step, RNG state and configs, written atomically and
//! checksummed by the shared runtime (`llmlab_plugin_api::train::checkpoint`).

use std::path::Path;

use llmlab_plugin_api::candle::Tensor;
use llmlab_plugin_api::prelude::*;
use llmlab_plugin_api::train::checkpoint;

use crate::optimizer::Optimizer;

pub const DIR: &str = "checkpoint";
pub const MANIFEST: &str = "aligner.json";

pub struct Saved<'a> {
    pub aligner: &'a str,
    pub config: Value,
    pub step: u64,
    pub rng_state: u64,
    /// Trained tensors besides the policy's (file name, tensors).
    pub extra: Option<(&'a str, Vec<(String, Tensor)>)>,
}

pub fn write(
    run_dir: &Path,
    policy: &dyn Model,
    optimizer: &Optimizer,
    trained: &[(String, Var)],
    saved: Saved<'_>,
) -> Result<()> {
    let weights: Vec<(String, Tensor)> = policy
        .parameters()
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .collect();
    let moments = optimizer.moments(trained)?;
    let mut files: Vec<(&str, &[(String, Tensor)])> = vec![
        ("model.safetensors", &weights),
        ("optimizer.safetensors", &moments),
    ];
    if let Some((file, tensors)) = &saved.extra {
        files.push((file, tensors));
    }
    let manifest = |entries| {
        Ok(serde_json::to_vec_pretty(&json!({
            "format": "llmlab-aligner-checkpoint",
            "version": 1,
            "aligner": saved.aligner,
            "step": saved.step,
            "rng_state": checkpoint::format_rng_state(saved.rng_state),
            "config": saved.config,
            "model": { "name": policy.name(), "config": policy.config() },
            "files": entries,
        }))?)
    };
    checkpoint::write_atomically(&run_dir.join(DIR), &files, MANIFEST, manifest)
}
