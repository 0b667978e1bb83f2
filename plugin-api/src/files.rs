//! Writing files so that a crash or Ctrl-C never leaves a half-written one: write a sibling temp
//! file, sync it, rename it over the target.

use std::io::Write;
use std::path::Path;

use crate::{Error, Result};

/// Replaces `path` with `bytes` atomically (same-directory temp file + rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let file_name = path
        .file_name()
        .ok_or_else(|| Error::msg(format!("{}: not a file path", path.display())))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// The bytes of `path`, which must be a regular file of at most `max_bytes`: a FIFO, a device
/// (`/dev/zero`) or a directory named where a file is expected is refused without reading, and
/// nothing past the bound is read, so a wrong path can neither hang nor exhaust memory. `what`
/// names the format in the errors (`tokenizer.json`).
pub fn read_regular_file(path: &Path, max_bytes: u64, what: &str) -> Result<Vec<u8>> {
    use std::io::Read;
    // Refuse before opening: opening a FIFO for reading blocks until a writer appears.
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(Error::Data(format!(
            "{}: not a regular file (a {}); a {what} must be a file",
            path.display(),
            file_kind(&meta)
        )));
    }
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut bytes = Vec::new();
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > max_bytes {
        return Err(Error::Data(format!(
            "{}: larger than {max_bytes} bytes, more than any {what} this reads",
            path.display()
        )));
    }
    Ok(bytes)
}

fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let kind = meta.file_type();
    if kind.is_dir() {
        "directory"
    } else if kind.is_fifo() {
        "FIFO"
    } else if kind.is_char_device() || kind.is_block_device() {
        "device"
    } else if kind.is_socket() {
        "socket"
    } else {
        "special file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_replaces_and_leaves_no_temp() {
        let dir = std::env::temp_dir().join(format!("llmlab-atomic-{}", std::process::id()));
        let path = dir.join("a.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let leftovers = std::fs::read_dir(&dir).unwrap().count();
        assert_eq!(leftovers, 1);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn only_bounded_regular_files_are_read() {
        let error = read_regular_file(Path::new("/dev/zero"), 1 << 20, "tokenizer.json")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("/dev/zero: not a regular file (a device)"),
            "{error}"
        );
        let dir = std::env::temp_dir().join(format!("llmlab-regular-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("x.json");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if made.is_ok_and(|s| s.success()) {
            // Opening it would block forever; it is refused first.
            let error = read_regular_file(&fifo, 10, "x").unwrap_err().to_string();
            assert!(error.contains("not a regular file (a FIFO)"), "{error}");
        }
        let error = read_regular_file(&dir, 10, "x").unwrap_err().to_string();
        assert!(error.contains("(a directory)"), "{error}");
        let big = dir.join("big");
        std::fs::write(&big, [7u8; 11]).unwrap();
        let error = read_regular_file(&big, 10, "x").unwrap_err().to_string();
        assert!(error.contains("larger than 10 bytes"), "{error}");
        assert_eq!(read_regular_file(&big, 11, "x").unwrap(), [7u8; 11]);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
