//! Trainer checkpoints: everything a run needs to continue bit-exactly, in one directory.
//!
//! ```text
//! checkpoint/
//!   model.safetensors      every model parameter, by its name
//!   optimizer.safetensors  AdamW moments: exp_avg.<param>, exp_avg_sq.<param>
//!   trainer.json           format, version, trainer, step, optimizer_steps, rng_state, cursor,
//!                          config, model {name, config}, files {name: {bytes, fnv1a64}}
//! ```
//!
//! A checkpoint is written whole into a hidden sibling directory, every file synced, then swapped
//! in with renames (the old one is moved aside first and removed last), so a crash at any point
//! leaves the previous good checkpoint loadable. `trainer.json` records each file's size and
//! checksum; a truncated or altered file is refused with its name.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use llmlab_plugin_api::candle::{safetensors as candle_safetensors, Device, Tensor};
use llmlab_plugin_api::serde::{Deserialize, Serialize};
use llmlab_plugin_api::serde_json::{self, Value};
use llmlab_plugin_api::{safetensors, Error, Result};

use crate::batches::DataCursor;

pub const FORMAT: &str = "llmlab-trainer-checkpoint";
pub const VERSION: u32 = 1;
pub const MANIFEST: &str = "trainer.json";
pub const MODEL_FILE: &str = "model.safetensors";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// The directory name inside a run directory.
pub const DIR_NAME: &str = "checkpoint";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(crate = "llmlab_plugin_api::serde")]
pub struct FileEntry {
    pub bytes: u64,
    pub fnv1a64: String,
}

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
        u64::from_str_radix(self.rng_state.trim_start_matches("0x"), 16).map_err(|e| {
            Error::Data(format!(
                "{MANIFEST}: bad rng_state {:?}: {e}",
                self.rng_state
            ))
        })
    }
}

pub fn format_rng_state(state: u64) -> String {
    format!("{state:016x}")
}

/// FNV-1a, 64 bits: catches truncation and flipped bytes; not a cryptographic hash.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

fn serialize_tensors(tensors: &[(String, Tensor)], file: &str) -> Result<Vec<u8>> {
    safetensors::serialize(tensors.iter().map(|(n, t)| (n.as_str(), t)), None)
        .map_err(|e| Error::msg(format!("serializing {file}: {e}")))
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = File::create(path).map_err(|e| Error::io(path, e))?;
    file.write_all(bytes).map_err(|e| Error::io(path, e))?;
    file.sync_all().map_err(|e| Error::io(path, e))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

fn sibling(dir: &Path, suffix: &str) -> Result<PathBuf> {
    let name = dir
        .file_name()
        .ok_or_else(|| Error::msg(format!("{}: not a directory path", dir.display())))?;
    Ok(dir.with_file_name(format!(".{}.{suffix}", name.to_string_lossy())))
}

/// Writes a checkpoint into `dir` atomically (see the module docs). `manifest.files` is filled in.
pub fn save(
    dir: &Path,
    mut manifest: Manifest,
    weights: &[(String, Tensor)],
    moments: &[(String, Tensor)],
) -> Result<()> {
    let tmp = sibling(dir, &format!("tmp-{}", std::process::id()))?;
    let old = sibling(dir, "old")?;
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let written = (|| {
        manifest.files.clear();
        for (file, tensors) in [(MODEL_FILE, weights), (OPTIMIZER_FILE, moments)] {
            let bytes = serialize_tensors(tensors, file)?;
            write_synced(&tmp.join(file), &bytes)?;
            manifest.files.insert(
                file.to_string(),
                FileEntry {
                    bytes: bytes.len() as u64,
                    fnv1a64: format!("{:016x}", fnv1a64(&bytes)),
                },
            );
        }
        let json = serde_json::to_vec_pretty(&manifest)?;
        write_synced(&tmp.join(MANIFEST), &json)?;
        sync_dir(&tmp)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
    }
    if dir.exists() {
        std::fs::rename(dir, &old).map_err(|e| Error::io(dir, e))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| Error::io(dir, e))?;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        sync_dir(parent)?;
    }
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
    }
    Ok(())
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

fn read_checked(dir: &Path, file: &str, manifest: &Manifest) -> Result<Vec<u8>> {
    let path = dir.join(file);
    let entry = manifest.files.get(file).ok_or_else(|| {
        Error::Data(format!(
            "{}: not listed in {MANIFEST}; the checkpoint is incomplete",
            path.display()
        ))
    })?;
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    if bytes.len() as u64 != entry.bytes {
        return Err(Error::Data(format!(
            "{}: truncated or corrupt checkpoint file: {} bytes, {MANIFEST} says {}",
            path.display(),
            bytes.len(),
            entry.bytes
        )));
    }
    let sum = format!("{:016x}", fnv1a64(&bytes));
    if sum != entry.fnv1a64 {
        return Err(Error::Data(format!(
            "{}: corrupt checkpoint file: checksum {sum}, {MANIFEST} says {}",
            path.display(),
            entry.fnv1a64
        )));
    }
    Ok(bytes)
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
    let mut tensors = Vec::new();
    for file in [MODEL_FILE, OPTIMIZER_FILE] {
        let bytes = read_checked(dir, file, &manifest)?;
        let loaded = candle_safetensors::load_buffer(&bytes, &Device::Cpu).map_err(|e| {
            Error::Data(format!(
                "{}: corrupt checkpoint file: {e}",
                dir.join(file).display()
            ))
        })?;
        tensors.push(loaded);
    }
    let moments = tensors.pop().unwrap_or_default();
    let weights = tensors.pop().unwrap_or_default();
    Ok(Checkpoint {
        dir: dir.to_path_buf(),
        manifest,
        weights,
        moments,
    })
}
