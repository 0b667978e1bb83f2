//! Weights files: safetensors written atomically with a size and FNV-1a checksum record
//! ([`FileEntry`]), and read back refusing a truncated or altered file by name. A model's
//! `save`/`load` (and a trainer's checkpoint, `llmlab_train::checkpoint`) are built on these;
//! what goes next to the weights (the config, a marker naming the loader) is the model's.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use llmlab_plugin_api::candle::{safetensors as candle_safetensors, Device, Tensor};
use llmlab_plugin_api::files::write_atomic;
use llmlab_plugin_api::serde::{Deserialize, Serialize};
use llmlab_plugin_api::serde_json::{self, Value};
use llmlab_plugin_api::{safetensors, Error, Result};

/// Size and checksum of one file, as a manifest (or a model's `config.json`) records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(crate = "llmlab_plugin_api::serde")]
pub struct FileEntry {
    pub bytes: u64,
    pub fnv1a64: String,
}

impl FileEntry {
    /// The entry of `bytes`.
    pub fn of(bytes: &[u8]) -> FileEntry {
        FileEntry {
            bytes: bytes.len() as u64,
            fnv1a64: format!("{:016x}", fnv1a64(bytes)),
        }
    }
}

/// FNV-1a, 64 bits: catches truncation and flipped bytes; not a cryptographic hash.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The safetensors bytes of `tensors` with `metadata`; `file` names the file in errors.
pub fn serialize(
    tensors: &[(String, Tensor)],
    metadata: Option<HashMap<String, String>>,
    file: &str,
) -> Result<Vec<u8>> {
    let tensors = tensors
        .iter()
        .map(|(n, t)| Ok((n.as_str(), t.contiguous()?)))
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize(tensors.iter().map(|(n, t)| (*n, t)), metadata)
        .map_err(|e| Error::msg(format!("serializing {file}: {e}")))
}

/// Writes `tensors` to `path` atomically; the entry to record for it.
pub fn save_safetensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: Option<HashMap<String, String>>,
) -> Result<FileEntry> {
    let bytes = serialize(tensors, metadata, &path.display().to_string())?;
    write_atomic(path, &bytes)?;
    Ok(FileEntry::of(&bytes))
}

/// The tensors of the safetensors file `path` on `device` (no checksum to check against).
pub fn read_weights(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    if !path.exists() {
        return Err(Error::msg(format!("{}: no such file", path.display())));
    }
    candle_safetensors::load(path, device)
        .map_err(|e| Error::msg(format!("{}: {e}", path.display())))
}

/// The bytes of `dir/file`, checked against its entry in `files` (from `manifest_file`).
pub fn read_checked(
    dir: &Path,
    file: &str,
    files: &BTreeMap<String, FileEntry>,
    manifest_file: &str,
) -> Result<Vec<u8>> {
    let path = dir.join(file);
    let entry = files.get(file).ok_or_else(|| {
        Error::Data(format!(
            "{}: not listed in {manifest_file}; the checkpoint is incomplete",
            path.display()
        ))
    })?;
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    if bytes.len() as u64 != entry.bytes {
        return Err(Error::Data(format!(
            "{}: truncated or corrupt checkpoint file: {} bytes, {manifest_file} says {}",
            path.display(),
            bytes.len(),
            entry.bytes
        )));
    }
    let sum = format!("{:016x}", fnv1a64(&bytes));
    if sum != entry.fnv1a64 {
        return Err(Error::Data(format!(
            "{}: corrupt checkpoint file: checksum {sum}, {manifest_file} says {}",
            path.display(),
            entry.fnv1a64
        )));
    }
    Ok(bytes)
}

/// A JSON file (a model's `config.json`), errors naming it.
pub fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::msg(format!("{}: {e}", path.display())))
}

/// The model directory `path` names: the directory itself, or the one holding a file named.
pub fn model_dir(path: &Path) -> PathBuf {
    if path.is_file() {
        path.parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
    } else {
        path.to_path_buf()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_weights_round_trip_and_a_flipped_byte_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tensor::new(&[[1f32, 2.0], [3.0, 4.0]], &Device::Cpu).unwrap();
        let path = dir.path().join("w.safetensors");
        let entry = save_safetensors(&path, &[("w".into(), t.t().unwrap())], None).unwrap();
        let files = BTreeMap::from([("w.safetensors".to_string(), entry)]);
        let bytes = read_checked(dir.path(), "w.safetensors", &files, "m.json").unwrap();
        let back = candle_safetensors::load_buffer(&bytes, &Device::Cpu).unwrap();
        assert_eq!(
            back["w"].to_vec2::<f32>().unwrap(),
            vec![vec![1.0, 3.0], vec![2.0, 4.0]]
        );
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let err = read_checked(dir.path(), "w.safetensors", &files, "m.json")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("w.safetensors") && err.contains("checksum"),
            "{err}"
        );
    }
}
