//! The Jupyter kernel driven by a real client: Python's `jupyter_client` (in a virtual
//! environment made by tests/kernel/setup-venv.sh, which .ci/run calls first) starts the kernel
//! from the kernelspec `llmlab kernel install` wrote, and runs tests/kernel/client.py: cells that
//! define and reuse variables, train a few steps, stream output, show a PNG and a tensor table;
//! completion of `tok.voc`; an interrupt that stops a running call; a plugin panic as a cell error.
//!
//! Skipped only where `python3` is missing (it says so); a missing venv is created.

use std::path::PathBuf;
use std::process::Command;

use llmlab_e2e::*;

/// The venv's python, creating the venv if needed; `None` where python3 is missing.
fn client_python() -> Option<PathBuf> {
    if let Some(python) = std::env::var_os("LLMLAB_TEST_PYTHON") {
        return Some(PathBuf::from(python));
    }
    let has_python = Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_python {
        return None;
    }
    let venv = target_dir().parent().unwrap().join("kernel-venv");
    let status = Command::new("bash")
        .arg(repo_root().join("tests/kernel/setup-venv.sh"))
        .arg(&venv)
        .status()
        .expect("run setup-venv.sh");
    assert!(
        status.success(),
        "tests/kernel/setup-venv.sh could not make a venv with jupyter_client in {}",
        venv.display()
    );
    Some(venv.join("bin/python"))
}

#[test]
fn jupyter_client_runs_cells_trains_plots_completes_and_interrupts() {
    let Some(python) = client_python() else {
        eprintln!("SKIPPED: python3 is missing, so jupyter_client cannot drive the kernel");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    build_hello_plugin(&plugins);
    let prefix = dir.path().join("prefix");
    let output = llmlab(
        &[
            "--plugin-dir",
            plugins.to_str().unwrap(),
            "kernel",
            "install",
            "--prefix",
            prefix.to_str().unwrap(),
        ],
        "",
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let spec = prefix.join("share/jupyter/kernels/llmlab/kernel.json");
    let text = std::fs::read_to_string(&spec).unwrap();
    assert!(
        text.contains("{connection_file}") && text.contains(plugins.to_str().unwrap()),
        "{text}"
    );

    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let output = Command::new(&python)
        .arg(repo_root().join("tests/kernel/client.py"))
        .current_dir(&work)
        .env("JUPYTER_PATH", prefix.join("share/jupyter"))
        .env("JUPYTER_RUNTIME_DIR", dir.path().join("runtime"))
        .env("JUPYTER_DATA_DIR", dir.path().join("data"))
        .env("JUPYTER_CONFIG_DIR", dir.path().join("config"))
        .env("JUPYTER_PLATFORM_DIRS", "1")
        .env_remove("LLMLAB_PLUGIN_PATH")
        .output()
        .expect("run the jupyter_client test");
    let (out, err) = (stdout(&output), stderr(&output));
    println!("{out}");
    assert!(output.status.success(), "client failed:\n{out}\n{err}");
    assert!(out.contains("ok: shutdown ends the kernel"), "{out}");
    assert!(
        work.join("runs").is_dir(),
        "the kernel's runs land in its working directory"
    );
}
