//! Atomic, checksummed checkpoint directories: the storage half of a checkpoint, shared by every
//! trainer. The caller decides what goes in (which tensor files, which manifest fields); this
//! module writes them so that a crash at any point leaves the previous good directory loadable,
//! and reads them back refusing truncated or altered files by name.
//!
//! A directory is written whole into a hidden sibling, every file synced, then swapped in with
//! renames (the old one is moved aside first and removed last). The manifest (JSON, written last)
//! records each tensor file's size and FNV-1a checksum as [`FileEntry`]s.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::candle::{safetensors as candle_safetensors, Device, Tensor};
use crate::{Error, Result};

pub use llmlab_nn::weights::{fnv1a64, read_checked, FileEntry};

/// An RNG state as 16 hex digits (JSON numbers lose bits above 2^53).
pub fn format_rng_state(state: u64) -> String {
    format!("{state:016x}")
}

/// Reads [`format_rng_state`]'s text back; `what` names the field in the error.
pub fn parse_rng_state(text: &str, what: &str) -> Result<u64> {
    u64::from_str_radix(text.trim_start_matches("0x"), 16)
        .map_err(|e| Error::Data(format!("{what}: bad rng_state {text:?}: {e}")))
}

/// The safetensors bytes of `tensors` (no metadata); `file` names the file in errors.
pub fn serialize_tensors(tensors: &[(String, Tensor)], file: &str) -> Result<Vec<u8>> {
    llmlab_nn::weights::serialize(tensors, None, file)
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

/// The hidden sibling `.<name>.<suffix>` of `dir` (`.checkpoint.old`, `.checkpoint.tmp-<pid>`).
pub fn sibling(dir: &Path, suffix: &str) -> Result<PathBuf> {
    let name = dir
        .file_name()
        .ok_or_else(|| Error::msg(format!("{}: not a directory path", dir.display())))?;
    Ok(dir.with_file_name(format!(".{}.{suffix}", name.to_string_lossy())))
}

/// Writes `tensor_files` (file name → tensors) and then the manifest `manifest_file`, whose bytes
/// `manifest` makes from the files' entries, into `dir` atomically (see the module docs).
pub fn write_atomically(
    dir: &Path,
    tensor_files: &[(&str, &[(String, Tensor)])],
    manifest_file: &str,
    manifest: impl FnOnce(BTreeMap<String, FileEntry>) -> Result<Vec<u8>>,
) -> Result<()> {
    let tmp = sibling(dir, &format!("tmp-{}", std::process::id()))?;
    let old = sibling(dir, "old")?;
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let written = (|| {
        let mut files = BTreeMap::new();
        for (file, tensors) in tensor_files {
            let bytes = serialize_tensors(tensors, file)?;
            write_synced(&tmp.join(file), &bytes)?;
            files.insert(
                file.to_string(),
                FileEntry {
                    bytes: bytes.len() as u64,
                    fnv1a64: format!("{:016x}", fnv1a64(&bytes)),
                },
            );
        }
        write_synced(&tmp.join(manifest_file), &manifest(files)?)?;
        sync_dir(&tmp)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if dir.exists() {
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
        }
        std::fs::rename(dir, &old).map_err(|e| Error::io(dir, e))?;
    }
    // With no `dir` (a previous write was interrupted between its renames), `old` is the only
    // good checkpoint: it goes only once the new one is in place.
    std::fs::rename(&tmp, dir).map_err(|e| Error::io(dir, e))?;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        sync_dir(parent)?;
    }
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
    }
    Ok(())
}

/// The tensors of `dir/file` on the CPU, checked as [`read_checked`] does.
pub fn load_tensors(
    dir: &Path,
    file: &str,
    files: &BTreeMap<String, FileEntry>,
    manifest_file: &str,
) -> Result<HashMap<String, Tensor>> {
    let bytes = read_checked(dir, file, files, manifest_file)?;
    candle_safetensors::load_buffer(&bytes, &Device::Cpu).map_err(|e| {
        Error::Data(format!(
            "{}: corrupt checkpoint file: {e}",
            dir.join(file).display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_a_flipped_byte() {
        let root = std::env::temp_dir().join(format!("llmlab-ckpt-test-{}", std::process::id()));
        let dir = root.join("checkpoint");
        let t = Tensor::new(&[1f32, 2.0, 3.0], &Device::Cpu).unwrap();
        let tensors = vec![("w".to_string(), t)];
        let mut entries = BTreeMap::new();
        write_atomically(&dir, &[("w.safetensors", &tensors)], "m.json", |files| {
            entries = files;
            Ok(b"{}".to_vec())
        })
        .unwrap();
        let back = load_tensors(&dir, "w.safetensors", &entries, "m.json").unwrap();
        assert_eq!(back["w"].to_vec1::<f32>().unwrap(), vec![1.0, 2.0, 3.0]);
        let path = dir.join("w.safetensors");
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let err = load_tensors(&dir, "w.safetensors", &entries, "m.json")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("w.safetensors") && err.contains("checksum"),
            "{err}"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}
