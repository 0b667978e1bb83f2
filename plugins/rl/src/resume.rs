//! `resume: "runs/x"`: reading back the checkpoint [`crate::policy_checkpoint`] wrote, so an
//! aligner continues exactly where its run stopped (end of `fit`, or Ctrl-C): trained weights,
//! reference, extra tensors (value head, reward head), optimiser moments and step, RNG state
//! and the aligner's own run state. Every mismatch (another aligner's checkpoint, a parameter
//! missing or of another shape, a damaged file) is an error naming the file and the cause.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use llmlab_plugin_api::candle::{Tensor, Var};
use llmlab_plugin_api::prelude::*;
use llmlab_train::checkpoint::{self, FileEntry};

use crate::optimizer::Optimizer;
use crate::policy_checkpoint::{DIR, MANIFEST, MODEL_FILE, OPTIMIZER_FILE, REFERENCE_FILE};

/// A checkpoint found and its manifest checked; tensor files are read on demand (checked).
pub struct AlignerCheckpoint {
    pub dir: PathBuf,
    pub step: u64,
    pub optimizer_steps: u64,
    pub rng_state: u64,
    /// The aligner's own run state, as it saved it.
    pub state: Value,
    files: BTreeMap<String, FileEntry>,
}

/// The checkpoint directory for `path`: a checkpoint directory itself, or a run directory holding
/// `checkpoint/` (or `.checkpoint.old/` after a write interrupted between its renames).
fn resolve(path: &Path) -> Result<PathBuf> {
    if path.join(MANIFEST).is_file() {
        return Ok(path.to_path_buf());
    }
    let inside = path.join(DIR);
    if inside.join(MANIFEST).is_file() {
        return Ok(inside);
    }
    let moved_aside = checkpoint::sibling(&inside, "old")?;
    if !inside.exists() && moved_aside.join(MANIFEST).is_file() {
        return Ok(moved_aside);
    }
    if !path.exists() {
        return Err(Error::Data(format!(
            "resume: {} does not exist",
            path.display()
        )));
    }
    Err(Error::Data(format!(
        "resume: no aligner checkpoint in {} (looked for {} and {})",
        path.display(),
        path.join(MANIFEST).display(),
        inside.join(MANIFEST).display()
    )))
}

/// Opens the checkpoint at `path` for aligner `who`.
pub fn open(who: &str, path: &str) -> Result<AlignerCheckpoint> {
    let dir = resolve(Path::new(path))?;
    let manifest_path = dir.join(MANIFEST);
    let text = std::fs::read(&manifest_path).map_err(|e| Error::io(&manifest_path, e))?;
    let bad = |why: String| Error::Data(format!("{}: {why}", manifest_path.display()));
    let m: Value = serde_json::from_slice(&text)
        .map_err(|e| bad(format!("corrupt checkpoint manifest: {e}")))?;
    if m["format"] != "llmlab-aligner-checkpoint" {
        return Err(bad("not an aligner checkpoint".into()));
    }
    let saved_by = m["aligner"].as_str().unwrap_or("?");
    if saved_by != who {
        return Err(bad(format!(
            "a checkpoint of the {saved_by} aligner cannot resume the {who} aligner"
        )));
    }
    let step = m["step"].as_u64().ok_or_else(|| bad("no `step`".into()))?;
    let optimizer_steps = m["optimizer_steps"].as_u64().ok_or_else(|| {
        bad("no `optimizer_steps` (written before aligners could resume); start a fresh run".into())
    })?;
    let rng_state = checkpoint::parse_rng_state(
        m["rng_state"].as_str().unwrap_or(""),
        &manifest_path.display().to_string(),
    )?;
    let files: BTreeMap<String, FileEntry> =
        serde_json::from_value(m["files"].clone()).map_err(|e| bad(format!("bad `files`: {e}")))?;
    Ok(AlignerCheckpoint {
        dir,
        step,
        optimizer_steps,
        rng_state,
        state: m["state"].clone(),
        files,
    })
}

impl AlignerCheckpoint {
    pub fn has(&self, file: &str) -> bool {
        self.files.contains_key(file)
    }

    /// The tensors of `file`, checked against the manifest.
    pub fn tensors(&self, file: &str) -> Result<HashMap<String, Tensor>> {
        checkpoint::load_tensors(&self.dir, file, &self.files, MANIFEST)
    }

    /// Sets `vars` from `file`: every one must be there with its shape.
    pub fn restore_vars(&self, file: &str, vars: &[(String, Var)]) -> Result<()> {
        let saved = self.tensors(file)?;
        set_vars(&saved, vars, &self.dir.join(file))
    }

    /// The policy (or reward body) from `model.safetensors`.
    pub fn restore_model(&self, model: &dyn Model) -> Result<()> {
        self.restore_into(MODEL_FILE, model)
    }

    /// The frozen reference from `reference.safetensors`, into a copy of the policy.
    pub fn restore_reference(&self, policy: &dyn Model) -> Result<Box<dyn Model>> {
        let reference = policy.frozen_copy()?;
        self.restore_into(REFERENCE_FILE, reference.as_ref())?;
        Ok(reference)
    }

    fn restore_into(&self, file: &str, model: &dyn Model) -> Result<()> {
        let saved = self.tensors(file)?;
        let path = self.dir.join(file);
        set_vars(&saved, &model.parameters(), &path)?;
        for (name, _) in model.state() {
            let value = saved.get(&name).ok_or_else(|| {
                Error::Data(format!(
                    "{}: no state tensor `{name}`; the checkpoint is of a different model",
                    path.display()
                ))
            })?;
            model.set_state(&name, value)?;
        }
        Ok(())
    }

    /// The optimiser's moments and step count for the trained `params`.
    pub fn restore_optimizer(
        &self,
        optimizer: &mut Optimizer,
        params: &[(String, Var)],
    ) -> Result<()> {
        optimizer.load(self.optimizer_steps, &self.tensors(OPTIMIZER_FILE)?, params)
    }
}

fn set_vars(saved: &HashMap<String, Tensor>, vars: &[(String, Var)], path: &Path) -> Result<()> {
    for (name, var) in vars {
        let value = saved.get(name).ok_or_else(|| {
            Error::Data(format!(
                "{}: no parameter `{name}`; the checkpoint is of a different model",
                path.display()
            ))
        })?;
        if value.shape() != var.shape() {
            return Err(Error::Data(format!(
                "{}: parameter `{name}` has shape {:?}, the model's has {:?}",
                path.display(),
                value.dims(),
                var.dims()
            )));
        }
        var.set(&value.to_device(var.device())?.to_dtype(var.dtype())?)?;
    }
    Ok(())
}
