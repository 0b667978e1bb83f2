//! `llmlab kernel install [--user] [--prefix DIR]`: writes the kernelspec Jupyter finds the kernel
//! by — `kernel.json` naming this executable (and the `--plugin-dir`, `--device` and `--seed`
//! given to `install`), in `<data dir>/kernels/llmlab/`.

use std::path::{Path, PathBuf};

use llmlab_plugin_api::serde_json::{self, json};

/// Where the kernelspec goes: `PREFIX/share/jupyter/kernels/llmlab` with `--prefix`, the user's
/// Jupyter data directory with `--user` (`$JUPYTER_DATA_DIR`, else `~/.local/share/jupyter`),
/// else the system-wide `/usr/local/share/jupyter`.
pub fn spec_dir(user: bool, prefix: Option<&Path>) -> Result<PathBuf, String> {
    let data = if let Some(prefix) = prefix {
        prefix.join("share/jupyter")
    } else if user {
        match std::env::var_os("JUPYTER_DATA_DIR") {
            Some(dir) => PathBuf::from(dir),
            None => std::env::var_os("XDG_DATA_HOME")
                .filter(|d| !d.is_empty())
                .map(|d| PathBuf::from(d).join("jupyter"))
                .or_else(|| {
                    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share/jupyter"))
                })
                .ok_or("neither JUPYTER_DATA_DIR nor HOME is set: use --prefix DIR")?,
        }
    } else {
        PathBuf::from("/usr/local/share/jupyter")
    };
    Ok(data.join("kernels/llmlab"))
}

/// Writes `kernel.json` into `dir`; `global_args` go before `kernel` on the kernel's command line.
pub fn write_spec(
    dir: &Path,
    executable: &Path,
    global_args: &[String],
) -> Result<PathBuf, String> {
    let mut argv = vec![executable.display().to_string()];
    argv.extend(global_args.iter().cloned());
    argv.extend(
        ["kernel", "--connection-file", "{connection_file}"]
            .iter()
            .map(|s| s.to_string()),
    );
    let spec = json!({
        "argv": argv,
        "display_name": "llmlab (Rhai)",
        "language": "rhai",
        // Interrupts come as messages on the control channel (SIGINT works too).
        "interrupt_mode": "message",
        "metadata": { "debugger": false },
    });
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let file = dir.join("kernel.json");
    let text = serde_json::to_string_pretty(&spec).map_err(|e| e.to_string())?;
    std::fs::write(&file, text + "\n")
        .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_kernelspec_with_the_executable_and_flags() {
        let root = tempfile::tempdir().unwrap();
        let dir = spec_dir(false, Some(root.path())).unwrap();
        assert!(dir.ends_with("share/jupyter/kernels/llmlab"));
        let file = write_spec(
            &dir,
            Path::new("/opt/llmlab/llmlab"),
            &["--plugin-dir".into(), "/p".into()],
        )
        .unwrap();
        let spec: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
        assert_eq!(
            spec["argv"],
            json!([
                "/opt/llmlab/llmlab",
                "--plugin-dir",
                "/p",
                "kernel",
                "--connection-file",
                "{connection_file}"
            ])
        );
        assert_eq!(spec["language"], "rhai");
    }
}
