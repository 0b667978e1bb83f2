//! Trainer checkpoints: everything a run needs to continue bit-exactly, in one directory.
//!
//! ```text
//! checkpoint/
//!   model.safetensors      every model parameter, by its name
//!   optimizer.safetensors  AdamW moments: exp_avg.<param>, exp_avg_sq.<param>
//!   trainer.json           format, version, trainer, step, optimizer_steps, rng_state, cursor,
//!                          config, model {name, config}, files {name: {bytes, fnv1a64}},
//!                          loss_scale (f16 only), data (what it trained on)
//! ```
//!
//! This module owns what a trainer checkpoint holds; the files are written and verified by the
//! shared `crate::checkpoint`: whole into a hidden sibling directory, every
//! file synced, then swapped in with renames (the old one is moved aside first and removed last), so a crash at any point
//! leaves the previous good checkpoint loadable. `trainer.json` records each file's size and
//! checksum; a truncated or altered file is refused with its name.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use crate::checkpoint::{load_tensors, parse_rng_state, sibling, write_atomically};
use llmlab_plugin_api::candle::Tensor;
use llmlab_plugin_api::serde::{Deserialize, Serialize};
use llmlab_plugin_api::serde_json::{self, Value};
use llmlab_plugin_api::{Error, Result};

use crate::batches::DataCursor;
use crate::data_identity::DataIdentity;
use crate::precision::LossScaler;

pub use crate::checkpoint::{fnv1a64, format_rng_state, FileEntry};

pub const FORMAT: &str = "llmlab-trainer-checkpoint";
pub const VERSION: u32 = 1;
pub const MANIFEST: &str = "trainer.json";
pub const MODEL_FILE: &str = "model.safetensors";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// The directory name inside a run directory.
pub const DIR_NAME: &str = "checkpoint";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(crate = "llmlab_plugin_api::serde")]
pub struct ModelInfo {
    pub name: String,
    pub config: Value,
}

/// `trainer.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(crate = "llmlab_plugin_api::serde")]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    /// `"lm"` or `"sft"`.
    pub trainer: String,
    /// Optimiser steps completed.
    pub step: u64,
    pub optimizer_steps: u64,
    /// The batch RNG's state, as 16 hex digits.
    pub rng_state: String,
    pub cursor: DataCursor,
    /// The trainer's resolved config.
    pub config: Value,
    pub model: ModelInfo,
    #[serde(default)]
    pub files: BTreeMap<String, FileEntry>,
    /// f16 training's loss scale, so a resumed run continues with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<LossScaler>,
    /// The data trained on (`data_identity.rs`): resuming on other data is refused. Absent in
    /// checkpoints written before it was recorded (those resume unchecked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<DataIdentity>,
}

/// A loaded checkpoint; tensors are on the CPU.
pub struct Checkpoint {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub weights: HashMap<String, Tensor>,
    pub moments: HashMap<String, Tensor>,
}

impl Manifest {
    pub fn rng_state(&self) -> Result<u64> {
        parse_rng_state(&self.rng_state, MANIFEST)
    }
}

/// Writes a checkpoint into `dir` atomically (see the module docs). `manifest.files` is filled in.
pub fn save(
    dir: &Path,
    mut manifest: Manifest,
    weights: &[(String, Tensor)],
    moments: &[(String, Tensor)],
) -> Result<()> {
    write_atomically(
        dir,
        &[(MODEL_FILE, weights), (OPTIMIZER_FILE, moments)],
        MANIFEST,
        |files| {
            manifest.files = files;
            Ok(serde_json::to_vec_pretty(&manifest)?)
        },
    )
}

/// The checkpoint directory for `path`: a checkpoint directory itself, or a run directory holding
/// `checkpoint/` (or, after a crash between the two renames of [`save`], `.checkpoint.old/`).
pub fn resolve(path: &Path) -> Result<PathBuf> {
    if path.join(MANIFEST).is_file() {
        return Ok(path.to_path_buf());
    }
    let inside = path.join(DIR_NAME);
    if inside.join(MANIFEST).is_file() {
        return Ok(inside);
    }
    let moved_aside = sibling(&inside, "old")?;
    if !inside.exists() && moved_aside.join(MANIFEST).is_file() {
        llmlab_plugin_api::tracing::warn!(
            "{}: resuming from the previous checkpoint (the last write was interrupted)",
            moved_aside.display()
        );
        return Ok(moved_aside);
    }
    if !path.exists() {
        return Err(Error::Data(format!(
            "resume: {} does not exist",
            path.display()
        )));
    }
    Err(Error::Data(format!(
        "resume: no checkpoint in {} (looked for {} and {})",
        path.display(),
        path.join(MANIFEST).display(),
        inside.join(MANIFEST).display()
    )))
}

/// Loads and verifies the checkpoint in `dir` (see [`resolve`] for run directories).
pub fn load(dir: &Path) -> Result<Checkpoint> {
    let manifest_path = dir.join(MANIFEST);
    let text = std::fs::read(&manifest_path).map_err(|e| Error::io(&manifest_path, e))?;
    let manifest: Manifest = serde_json::from_slice(&text).map_err(|e| {
        Error::Data(format!(
            "{}: corrupt checkpoint manifest: {e}",
            manifest_path.display()
        ))
    })?;
    if manifest.format != FORMAT || manifest.version > VERSION {
        return Err(Error::Data(format!(
            "{}: not a trainer checkpoint this version reads (format {:?} version {}; expected {FORMAT:?} <= {VERSION})",
            manifest_path.display(),
            manifest.format,
            manifest.version
        )));
    }
    let weights = load_tensors(dir, MODEL_FILE, &manifest.files, MANIFEST)?;
    let moments = load_tensors(dir, OPTIMIZER_FILE, &manifest.files, MANIFEST)?;
    Ok(Checkpoint {
        dir: dir.to_path_buf(),
        manifest,
        weights,
        moments,
    })
}
