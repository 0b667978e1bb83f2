//! Where the REPL keeps its history: one file per project directory, so the statements of one
//! experiment are not mixed with another's when searching with Ctrl-R.
//!
//! The project directory is the nearest ancestor of the working directory holding `.git`, or the
//! working directory itself. Its history lives under `$XDG_STATE_HOME/llmlab/history/` (default
//! `~/.local/state/...`), named after the directory's path. `LLMLAB_HISTORY=FILE` overrides this.

use std::path::{Path, PathBuf};

/// The history file for the current directory, if a home for it can be found.
pub fn path() -> Option<PathBuf> {
    if let Some(file) = std::env::var_os("LLMLAB_HISTORY") {
        return Some(PathBuf::from(file));
    }
    let state = std::env::var_os("XDG_STATE_HOME")
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))?;
    let cwd = std::env::current_dir().ok()?;
    Some(
        state
            .join("llmlab/history")
            .join(file_name(&project_dir(&cwd))),
    )
}

/// The nearest ancestor of `dir` with a `.git`, else `dir`.
fn project_dir(dir: &Path) -> PathBuf {
    dir.ancestors()
        .find(|d| d.join(".git").exists())
        .unwrap_or(dir)
        .to_path_buf()
}

/// A directory path as one file name: `/home/a/exp` → `%home%a%exp`.
fn file_name(dir: &Path) -> String {
    dir.to_string_lossy().replace(['/', '\\'], "%")
}

/// Creates the history file's directory.
pub fn prepare(file: &Path) -> std::io::Result<()> {
    match file.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => std::fs::create_dir_all(parent),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_project_is_the_nearest_git_ancestor() {
        let root = tempfile::tempdir().unwrap();
        let project = root.path().join("exp");
        let nested = project.join("a/b");
        std::fs::create_dir_all(&nested).unwrap();
        assert_eq!(project_dir(&nested), nested);
        std::fs::create_dir(project.join(".git")).unwrap();
        assert_eq!(project_dir(&nested), project);
        assert_eq!(file_name(Path::new("/home/a/exp")), "%home%a%exp");
    }
}
