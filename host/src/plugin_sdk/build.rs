//! `llmlab plugin build [DIR]`: compiles an out-of-tree plugin crate so that this host loads it,
//! with one command.
//!
//! Rust has no stable ABI, so a plugin must link against exactly the `llmlab-plugin-api` build
//! the host runs: same rustc, same sources, same locked dependency versions and features, same
//! flags (`-C prefer-dynamic`). Cargo names a crate's symbols after its `-C metadata`, a hash of
//! all of these; a stand-alone `cargo build` with its own lock file or flags builds a different
//! plugin-api and the plugin is refused with `undefined symbol: _ZN17llmlab_plugin_api...`.
//! This command reproduces the host's build:
//!
//! - the llmlab source tree the host was built from (plugin-api, llmlab-nn, llmlab-train are
//!   path dependencies into it) and its `Cargo.lock`, copied into the plugin crate;
//! - the toolchain pinned in that tree's `rust-toolchain.toml`, checked against the rustc in
//!   the host's fingerprint;
//! - `-C prefer-dynamic` as the only rustflags (`CARGO_ENCODED_RUSTFLAGS`, so a `RUSTFLAGS` in
//!   the environment cannot change the hash), the release profile;
//! - a target directory of its own (`<host target>/out-of-tree`), seeded once from the host's
//!   `target/release`: the compiled dependencies (candle, serde, ...) are reused, and the
//!   runtime `libllmlab_plugin_api.so` of the host is never overwritten (its file name has no
//!   hash; building into the host's own target directory could replace it).
//!
//! The result is then checked as the host checks any plugin (declaration, then loading it), and
//! copied to `DIR/target/llmlab/`. Each refusal says what is missing and how to fix it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use llmlab_plugin_api::Fingerprint;

use crate::loader;

/// What `llmlab plugin build` was asked to do.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    /// The plugin crate (its `Cargo.toml`).
    pub dir: PathBuf,
    /// The llmlab source tree; default: `LLMLAB_SOURCE`, else the tree this host was built in.
    pub llmlab_source: Option<PathBuf>,
    /// Also run the crate's tests (`cargo test`) with the same settings.
    pub test: bool,
}

/// A built and checked plugin.
#[derive(Debug)]
pub struct Built {
    pub library: PathBuf,
    pub plugin: String,
    pub components: Vec<String>,
}

/// The llmlab checkout this binary was compiled from (`host/..`).
fn compiled_source_tree() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// The llmlab source tree to build against, checked to have what the build needs.
pub fn source_tree(explicit: Option<&Path>) -> Result<PathBuf, String> {
    let (tree, from) = match explicit {
        Some(dir) => (dir.to_path_buf(), "--llmlab-source"),
        None => match std::env::var_os("LLMLAB_SOURCE") {
            Some(dir) => (PathBuf::from(dir), "LLMLAB_SOURCE"),
            None => (compiled_source_tree(), "the tree this llmlab was built in"),
        },
    };
    for needed in ["plugin-api/Cargo.toml", "Cargo.lock", "Cargo.toml"] {
        if !tree.join(needed).is_file() {
            return Err(format!(
                "no llmlab source tree at {} ({from}): {needed} is missing. A plugin must be \
                 compiled against the sources this host was built from; pass \
                 --llmlab-source DIR (or set LLMLAB_SOURCE) to a checkout of the same commit",
                tree.display()
            ));
        }
    }
    tree.canonicalize()
        .map_err(|e| format!("{}: {e}", tree.display()))
}

/// The cargo target directory this host runs from: `<target>/release/llmlab`.
fn host_target_dir() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    let release = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    let runtime = release.join("deps").join(format!(
        "libllmlab_plugin_api.{}",
        std::env::consts::DLL_EXTENSION
    ));
    match release.parent() {
        Some(target) if release.ends_with("release") && runtime.is_file() => Ok(target.into()),
        _ => Err(format!(
            "{} does not run from a cargo release target directory (no {}): plugin build reuses \
             the host's compiled dependencies. Build llmlab with `cargo build --release` and run \
             target/release/llmlab plugin build",
            exe.display(),
            runtime.display()
        )),
    }
}

/// The channel pinned in the tree's `rust-toolchain.toml`, if any.
fn pinned_toolchain(tree: &Path) -> Option<String> {
    let text = std::fs::read_to_string(tree.join("rust-toolchain.toml")).ok()?;
    text.lines().find_map(|line| {
        let (key, value) = line.split_once('=')?;
        (key.trim() == "channel").then(|| value.trim().trim_matches('"').to_string())
    })
}

/// `cargo` with the toolchain pinned and every environment setting that would change the build
/// of plugin-api taken out.
fn cargo(tree: &Path) -> Command {
    let mut cargo = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    if let Some(channel) = pinned_toolchain(tree) {
        cargo.env("RUSTUP_TOOLCHAIN", channel);
    }
    for var in [
        "RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_TARGET_DIR",
        "RUSTC",
        "RUSTC_WRAPPER",
        "CARGO_PROFILE_RELEASE_DEBUG",
        "CARGO_PROFILE_RELEASE_OPT_LEVEL",
        "CARGO_PROFILE_RELEASE_LTO",
        "CARGO_PROFILE_RELEASE_CODEGEN_UNITS",
        "CARGO_PROFILE_RELEASE_PANIC",
    ] {
        cargo.env_remove(var);
    }
    // The one flag the host and all plugins are built with (.cargo/config.toml).
    cargo.env("CARGO_ENCODED_RUSTFLAGS", "-C\u{1f}prefer-dynamic");
    cargo
}

/// Refuses a rustc other than the one that built the host.
fn check_rustc(tree: &Path) -> Result<(), String> {
    let host = Fingerprint::current().rustc;
    let mut rustc = Command::new("rustc");
    rustc.arg("--version").current_dir(tree);
    if let Some(channel) = pinned_toolchain(tree) {
        rustc.env("RUSTUP_TOOLCHAIN", channel);
    }
    let found = rustc
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .ok_or_else(|| "cannot run `rustc --version`: is Rust installed (rustup)?".to_string())?;
    if found != host {
        return Err(format!(
            "wrong rustc: `rustc --version` gives `{found}`, this host was built with `{host}` \
             (Rust has no stable ABI). Install that toolchain (rustup toolchain install {}) or \
             rebuild llmlab with this one",
            host.split_whitespace().nth(1).unwrap_or("?")
        ));
    }
    Ok(())
}

/// `[package] name` and whether `[lib] crate-type` is a Rust dylib, from a Cargo.toml.
fn read_manifest(manifest: &Path) -> Result<(String, bool), String> {
    let text = std::fs::read_to_string(manifest).map_err(|e| {
        format!(
            "{}: {e} (llmlab plugin new NAME writes a plugin crate)",
            manifest.display()
        )
    })?;
    let mut section = String::new();
    let (mut name, mut dylib) = (None, false);
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line.to_string();
        } else if let Some((key, value)) = line.split_once('=') {
            match (section.as_str(), key.trim()) {
                ("[package]", "name") => name = Some(value.trim().trim_matches('"').to_string()),
                ("[lib]", "crate-type") => dylib = value.contains("\"dylib\""),
                _ => {}
            }
        }
    }
    let name = name.ok_or_else(|| format!("{}: no [package] name", manifest.display()))?;
    Ok((name, dylib))
}

/// The out-of-tree target directory, seeded from the host's `target/release` when it is new or
/// the host's runtime changed since: dependencies are hard links (never written in place: rustc
/// replaces outputs), llmlab's own crates and the build-script and fingerprint records copies.
fn seeded_target(host_target: &Path) -> Result<PathBuf, String> {
    let out = host_target.join("out-of-tree");
    let release = host_target.join("release");
    let runtime = release.join("deps").join(format!(
        "libllmlab_plugin_api.{}",
        std::env::consts::DLL_EXTENSION
    ));
    let meta = std::fs::metadata(&runtime).map_err(|e| format!("{}: {e}", runtime.display()))?;
    let stamp = format!(
        "{} {} {:?}",
        runtime.display(),
        meta.len(),
        meta.modified().ok()
    );
    let stamp_file = out.join("seeded-from");
    if std::fs::read_to_string(&stamp_file).ok().as_deref() == Some(stamp.as_str()) {
        return Ok(out);
    }
    let _ = std::fs::remove_dir_all(out.join("release"));
    std::fs::create_dir_all(out.join("release")).map_err(|e| format!("{}: {e}", out.display()))?;
    let run = |args: &[&str]| -> Result<(), String> {
        let status = Command::new("cp")
            .args(args)
            .status()
            .map_err(|e| format!("cp: {e}"))?;
        status
            .success()
            .then_some(())
            .ok_or_else(|| format!("cp {} failed", args.join(" ")))
    };
    let from = |p: &str| release.join(p).display().to_string();
    let to = out.join("release").display().to_string();
    run(&["-al", &from("deps"), &to])?;
    run(&["-a", &from("build"), &from(".fingerprint"), &to])?;
    // llmlab's own outputs are replaced by copies: if cargo rebuilds one here, the host's file
    // must stay as it is.
    let deps = out.join("release").join("deps");
    for entry in std::fs::read_dir(&deps).map_err(|e| format!("{}: {e}", deps.display()))? {
        let path = entry.map_err(|e| e.to_string())?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with("libllmlab") || name.starts_with("llmlab") {
            let copy = path.with_extension("copying");
            std::fs::copy(&path, &copy).map_err(|e| format!("{}: {e}", path.display()))?;
            let modified = std::fs::metadata(&path).and_then(|m| m.modified());
            if let Ok(time) = modified {
                let _ = std::fs::File::options()
                    .write(true)
                    .open(&copy)
                    .and_then(|f| f.set_modified(time));
            }
            std::fs::rename(&copy, &path).map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    std::fs::write(&stamp_file, stamp).map_err(|e| format!("{}: {e}", stamp_file.display()))?;
    Ok(out)
}

/// Builds (and with `test`, tests) the plugin crate in `request.dir` against this host, checks
/// the library as the loader would and copies it to `DIR/target/llmlab/`.
pub fn build(request: &BuildRequest) -> Result<Built, String> {
    let dir = request
        .dir
        .canonicalize()
        .map_err(|e| format!("{}: {e}", request.dir.display()))?;
    let manifest = dir.join("Cargo.toml");
    let (package, dylib) = read_manifest(&manifest)?;
    if !dylib {
        return Err(format!(
            "{}: [lib] crate-type must be [\"dylib\"] (a Rust dylib linking llmlab's shared runtime)",
            manifest.display()
        ));
    }
    let tree = source_tree(request.llmlab_source.as_deref())?;
    if dir.starts_with(&tree) && dir != tree {
        let inside = tree.join("plugins");
        if dir.starts_with(&inside) {
            return Err(format!(
                "{} is inside llmlab's workspace (plugins/): build it with `cargo build --release` \
                 in {}",
                dir.display(),
                tree.display()
            ));
        }
    }
    check_rustc(&tree)?;
    let host_target = host_target_dir()?;
    let target = seeded_target(&host_target)?;
    // The host's lock file: the same versions of everything plugin-api links.
    std::fs::copy(tree.join("Cargo.lock"), dir.join("Cargo.lock"))
        .map_err(|e| format!("copying Cargo.lock into {}: {e}", dir.display()))?;

    let crate_name = package.replace('-', "_");
    let mut command = cargo(&tree);
    command
        .args([
            "build",
            "--release",
            "--message-format",
            "json-render-diagnostics",
        ])
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let output = command
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "cargo build of {} failed (errors above)",
            dir.display()
        ));
    }
    let built =
        artifact(&String::from_utf8_lossy(&output.stdout), &crate_name).ok_or_else(|| {
            format!("cargo built no dylib for {crate_name} (is [lib] crate-type = [\"dylib\"]?)")
        })?;
    if request.test {
        let status = cargo(&tree)
            .args(["test", "--release"])
            .arg("--manifest-path")
            .arg(&manifest)
            .arg("--target-dir")
            .arg(&target)
            .status()
            .map_err(|e| format!("cannot run cargo: {e}"))?;
        if !status.success() {
            return Err(format!(
                "the tests of {} failed (output above)",
                dir.display()
            ));
        }
    }

    let out_dir = dir.join("target").join("llmlab");
    std::fs::create_dir_all(&out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;
    let library = out_dir.join(built.file_name().unwrap_or_default());
    std::fs::copy(&built, &library).map_err(|e| format!("{}: {e}", library.display()))?;

    let fingerprint = loader::check(&library).map_err(|e| {
        format!(
            "built {}, but this host refuses it: {e}\n  (is {} the llmlab source tree this host \
             was built from?)",
            library.display(),
            tree.display()
        )
    })?;
    let plugin = loader::load(&library).map_err(|e| e.to_string())?;
    Ok(Built {
        library,
        plugin: fingerprint.plugin.unwrap_or_default(),
        components: plugin
            .registrations
            .iter()
            .map(|r| format!("{} {}", r.factory.kind(), r.factory.name()))
            .collect(),
    })
}

/// The dylib cargo reported building for `crate_name`, from its JSON messages.
fn artifact(messages: &str, crate_name: &str) -> Option<PathBuf> {
    let suffix = format!(".{}", std::env::consts::DLL_EXTENSION);
    messages.lines().rev().find_map(|line| {
        let json: llmlab_plugin_api::serde_json::Value =
            llmlab_plugin_api::serde_json::from_str(line).ok()?;
        if json.get("reason")?.as_str()? != "compiler-artifact"
            || json.get("target")?.get("name")?.as_str()?.replace('-', "_") != crate_name
        {
            return None;
        }
        json.get("filenames")?
            .as_array()?
            .iter()
            .filter_map(|f| f.as_str())
            .find(|f| f.ends_with(&suffix))
            .map(PathBuf::from)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_name_and_crate_type_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = dir.path().join("Cargo.toml");
        std::fs::write(
            &manifest,
            "[package]\nname = \"char-lstm\"\nversion = \"0.1.0\"\n\n[lib]\ncrate-type = [\"dylib\"]\n",
        )
        .unwrap();
        assert_eq!(
            read_manifest(&manifest).unwrap(),
            ("char-lstm".into(), true)
        );
        std::fs::write(
            &manifest,
            "[package]\nname = \"x\"\n[lib]\ncrate-type = [\"cdylib\"]\n",
        )
        .unwrap();
        assert_eq!(read_manifest(&manifest).unwrap(), ("x".into(), false));
        let missing = read_manifest(&dir.path().join("nope/Cargo.toml")).unwrap_err();
        assert!(missing.contains("llmlab plugin new"), "{missing}");
    }

    #[test]
    fn a_missing_source_tree_is_refused_naming_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let error = source_tree(Some(dir.path())).unwrap_err();
        assert!(
            error.contains("no llmlab source tree") && error.contains("--llmlab-source"),
            "{error}"
        );
        assert!(
            source_tree(None).is_ok(),
            "the tree this host was built in is found"
        );
    }

    #[test]
    fn the_plugin_artifact_is_found_in_cargos_messages() {
        let messages = r#"{"reason":"compiler-artifact","target":{"name":"llmlab-plugin-api"},"filenames":["/t/libllmlab_plugin_api.so"]}
{"reason":"compiler-artifact","target":{"name":"char-lstm"},"filenames":["/t/libchar_lstm.so","/t/libchar_lstm.rlib"]}
{"reason":"build-finished","success":true}"#;
        assert_eq!(
            artifact(messages, "char_lstm"),
            Some(PathBuf::from("/t/libchar_lstm.so"))
        );
        assert_eq!(artifact(messages, "other"), None);
    }
}
