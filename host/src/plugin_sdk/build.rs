//! `llmlab plugin build [DIR]`: compiles an out-of-tree plugin crate so that this host loads it,
//! with one command.
//!
//! Rust has no stable ABI, so a plugin must link against exactly the `llmlab-plugin-api` build
//! the host runs. A plain `cargo build` of an out-of-tree crate cannot give that: cargo names a
//! crate's symbols after its `-C metadata`, which hashes (among others) a path dependency's
//! path *relative to the workspace root*, so `llmlab-plugin-api` built from a plugin's own
//! workspace gets another hash than the host's and the library is refused with
//! `undefined symbol: _ZN17llmlab_plugin_api...`. Rebuilding the runtime from a mirror of
//! llmlab's workspace reproduces the hash, but costs a rebuild of plugin-api, llmlab-nn and
//! llmlab-train per host build; building inside llmlab's workspace would modify its tree.
//!
//! So this command drives `rustc` for the plugin crate itself, with `--extern` to the very
//! files the host was built with and runs: `libllmlab_plugin_api.so` (the runtime) and the
//! building-block rlibs `libllmlab_nn.rlib` / `libllmlab_train.rlib` from the host's cargo
//! target directory, `-L dependency=<target>/release/deps` for what those link, the rustc
//! in the host's fingerprint, `-C prefer-dynamic` and the release profile's code generation.
//! Nothing of llmlab is recompiled, so a plugin builds in seconds and always matches.
//! The price: a plugin may depend only on llmlab's crates (and everything the runtime
//! re-exports: candle, serde, serde_json, rayon, tracing, safetensors, ...); another crates.io
//! dependency, a build script or non-default features are refused, naming the fix (build the
//! plugin inside llmlab's workspace, `plugins/NAME`, as the bundled plugins are).
//!
//! The result is then checked as the host checks any plugin (declaration, then loading it), in
//! `DIR/target/llmlab/`. Each refusal says what is missing and how to fix it.

use std::path::{Path, PathBuf};
use std::process::Command;

use llmlab_plugin_api::Fingerprint;

use crate::loader;

/// What `llmlab plugin build` was asked to do.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    /// The plugin crate (its `Cargo.toml`).
    pub dir: PathBuf,
    /// The llmlab source tree; default: `LLMLAB_SOURCE`, else the tree this host was built in.
    /// Only its `rust-toolchain.toml` is read (which rustc to run).
    pub llmlab_source: Option<PathBuf>,
    /// Also compile and run the crate's unit tests with the same settings.
    pub test: bool,
}

/// A built and checked plugin.
#[derive(Debug)]
pub struct Built {
    pub library: PathBuf,
    pub plugin: String,
    pub components: Vec<String>,
}

/// The llmlab crates a plugin may depend on, with the file of the host's build each one is
/// linked from (relative to `<target>/release`); `dev` ones only for `--test`.
const LLMLAB_CRATES: &[(&str, &str, bool)] = &[
    ("llmlab-plugin-api", "deps/libllmlab_plugin_api", false),
    ("llmlab-nn", "libllmlab_nn.rlib", false),
    ("llmlab-train", "libllmlab_train.rlib", false),
    ("llmlab-test-support", "libllmlab_test_support.rlib", true),
];

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

/// `<target>/release`, the cargo output directory this host runs from, checked to hold the
/// runtime it links.
fn host_release_dir() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    let release = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    let runtime = release.join(runtime_file());
    if runtime.is_file() {
        return Ok(release);
    }
    Err(format!(
        "{} does not run from a cargo target directory (no {}): plugin build links the plugin \
         against the host's own compiled runtime. Build llmlab with `cargo build --release \
         --workspace` and run target/release/llmlab plugin build",
        exe.display(),
        runtime.display()
    ))
}

fn runtime_file() -> String {
    format!(
        "deps/libllmlab_plugin_api.{}",
        std::env::consts::DLL_EXTENSION
    )
}

/// The channel pinned in the tree's `rust-toolchain.toml`, if any.
fn pinned_toolchain(tree: Option<&Path>) -> Option<String> {
    let text = std::fs::read_to_string(tree?.join("rust-toolchain.toml")).ok()?;
    text.lines().find_map(|line| {
        let (key, value) = line.split_once('=')?;
        (key.trim() == "channel").then(|| value.trim().trim_matches('"').to_string())
    })
}

/// `rustc` of the toolchain pinned in llmlab's tree (rustup picks it), `RUSTC` if set.
fn rustc(toolchain: Option<&str>) -> Command {
    let mut rustc = Command::new(std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into()));
    if let Some(channel) = toolchain {
        rustc.env("RUSTUP_TOOLCHAIN", channel);
    }
    rustc
}

/// Refuses a rustc other than the one that built the host.
fn check_rustc(toolchain: Option<&str>) -> Result<(), String> {
    let host = Fingerprint::current().rustc;
    let found = rustc(toolchain)
        .arg("--version")
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

/// What `plugin build` needs from a plugin's `Cargo.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub package: String,
    pub version: String,
    pub edition: String,
    pub dylib: bool,
    /// `[lib] path`, default `src/lib.rs`.
    pub lib_path: String,
    /// `(section, dependency)` for every dependency declared.
    pub dependencies: Vec<(String, String)>,
    /// `[features] default`.
    pub default_features: Vec<String>,
    /// `[package] build`, when set.
    pub build_script: Option<String>,
}

fn unquote(value: &str) -> String {
    value.trim().trim_matches('"').to_string()
}

/// `"a", "b"` from `["a", "b"]`.
fn string_list(value: &str) -> Vec<String> {
    value
        .trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .split(',')
        .map(unquote)
        .filter(|s| !s.is_empty())
        .collect()
}

/// Whether a table header names a dependency table: `dependencies`, `dev-dependencies`,
/// `build-dependencies`, optionally under `target.<cfg>`.
fn dependency_section(header: &str) -> Option<(String, Option<String>)> {
    let inner = header.trim().trim_start_matches('[').trim_end_matches(']');
    let inner = match inner.strip_prefix("target.") {
        // `target.'cfg(unix)'.dependencies`: the part after the quoted cfg.
        Some(rest) => rest.rsplit_once('.').map_or(rest, |(_, last)| last),
        None => inner,
    };
    let (table, name) = match inner.split_once('.') {
        Some((table, name)) => (table, Some(unquote(name))),
        None => (inner, None),
    };
    matches!(
        table,
        "dependencies" | "dev-dependencies" | "build-dependencies"
    )
    .then(|| (table.to_string(), name))
}

/// Reads the keys `plugin build` needs from a Cargo.toml (a line-based reader: the plain
/// layout `cargo new` and `llmlab plugin new` write).
pub fn read_manifest(manifest: &Path) -> Result<Manifest, String> {
    let text = std::fs::read_to_string(manifest).map_err(|e| {
        format!(
            "{}: {e} (llmlab plugin new NAME writes a plugin crate)",
            manifest.display()
        )
    })?;
    let mut section = String::new();
    let mut out = Manifest {
        package: String::new(),
        version: "0.0.0".into(),
        edition: "2015".into(),
        dylib: false,
        lib_path: "src/lib.rs".into(),
        dependencies: Vec::new(),
        default_features: Vec::new(),
        build_script: None,
    };
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if line.starts_with('[') {
            section = line.to_string();
            if let Some((table, Some(name))) = dependency_section(&section) {
                out.dependencies.push((table, name));
            }
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim();
        match section.as_str() {
            "[package]" => match key {
                "name" => out.package = unquote(value),
                "version" => out.version = unquote(value),
                "edition" => out.edition = unquote(value),
                "build" => out.build_script = Some(unquote(value)),
                _ => {}
            },
            "[lib]" => match key {
                "crate-type" => out.dylib = string_list(value).iter().any(|t| t == "dylib"),
                "path" => out.lib_path = unquote(value),
                _ => {}
            },
            "[features]" if key == "default" => out.default_features = string_list(value),
            header => {
                if let Some((table, None)) = dependency_section(header) {
                    let name = key.split('.').next().unwrap_or(key);
                    out.dependencies.push((table, unquote(name)));
                }
            }
        }
    }
    if out.package.is_empty() {
        return Err(format!("{}: no [package] name", manifest.display()));
    }
    Ok(out)
}

/// Refuses what this route cannot build, naming the fix.
fn check_buildable(dir: &Path, manifest: &Manifest) -> Result<(), String> {
    let file = dir.join("Cargo.toml");
    if !manifest.dylib {
        return Err(format!(
            "{}: [lib] crate-type must be [\"dylib\"] (a Rust dylib linking llmlab's shared runtime)",
            file.display()
        ));
    }
    let script = manifest.build_script.as_deref().unwrap_or("build.rs");
    if manifest.build_script.as_deref() != Some("false") && dir.join(script).is_file() {
        return Err(format!(
            "{}: plugin build compiles the crate with rustc against the host's own compiled \
             crates and does not run build scripts ({script}); move what it generates into the \
             sources, or build the plugin inside llmlab's workspace (plugins/{})",
            file.display(),
            manifest.package
        ));
    }
    for (table, name) in &manifest.dependencies {
        // No build script runs, so nothing may be a build-dependency.
        let known = table != "build-dependencies"
            && LLMLAB_CRATES.iter().any(|(crate_name, _, dev)| {
                crate_name == name && (!dev || table == "dev-dependencies")
            });
        if !known {
            let allowed: Vec<&str> = LLMLAB_CRATES
                .iter()
                .filter(|(_, _, dev)| !dev)
                .map(|(n, _, _)| *n)
                .collect();
            return Err(format!(
                "{}: [{table}] `{name}`: plugin build links a plugin against the host's own \
                 compiled crates only ({}; llmlab-test-support for tests). Use what the runtime \
                 re-exports (llmlab_plugin_api::{{candle, candle_nn, serde, serde_json, rayon, \
                 tracing, safetensors}}), or build the plugin inside llmlab's workspace \
                 (plugins/{}) to add other crates",
                file.display(),
                allowed.join(", "),
                manifest.package
            ));
        }
    }
    Ok(())
}

/// `rustc` for the crate in `dir` against the host's compiled crates in `release`: the lib, or
/// with `test` the unit-test binary. The arguments mirror cargo's release profile.
fn rustc_command(
    dir: &Path,
    manifest: &Manifest,
    release: &Path,
    toolchain: Option<&str>,
    test: bool,
    output: &Path,
) -> Result<Command, String> {
    let crate_name = manifest.package.replace('-', "_");
    let mut command = rustc(toolchain);
    command
        .current_dir(dir)
        .env("CARGO_PKG_NAME", &manifest.package)
        .env("CARGO_PKG_VERSION", &manifest.version)
        .env("CARGO_CRATE_NAME", &crate_name)
        .env("CARGO_MANIFEST_DIR", dir)
        .args(["--edition", &manifest.edition, "--crate-name", &crate_name])
        .arg(&manifest.lib_path)
        .args([
            "-C",
            "prefer-dynamic",
            "-C",
            "opt-level=3",
            "-C",
            "strip=debuginfo",
        ])
        // Distinct from any other crate of the same name (two plugins may share one).
        .arg("-C")
        .arg(format!("metadata=llmlab-plugin-{}", short_hash(dir)))
        .arg("-L")
        .arg(format!("dependency={}", release.join("deps").display()))
        .arg("-o")
        .arg(output);
    if test {
        command.arg("--test");
    } else {
        command.args(["--crate-type", "dylib"]);
    }
    for feature in &manifest.default_features {
        command.arg("--cfg").arg(format!("feature=\"{feature}\""));
    }
    for (table, name) in &manifest.dependencies {
        if table == "dev-dependencies" && !test {
            continue;
        }
        let (_, file, _) = LLMLAB_CRATES
            .iter()
            .find(|(crate_name, _, _)| crate_name == name)
            .ok_or_else(|| format!("unknown dependency {name}"))?;
        let path = if file.starts_with("deps/") {
            release.join(format!("{file}.{}", std::env::consts::DLL_EXTENSION))
        } else {
            newest_rlib(release, file.trim_end_matches(".rlib")).ok_or_else(|| {
                format!(
                    "{name} is not built next to this host (no {file} in {}): build llmlab with \
                     `cargo build --release --workspace`",
                    release.display()
                )
            })?
        };
        if !path.is_file() {
            return Err(format!(
                "{name} is not built next to this host (no {}): build llmlab with `cargo build \
                 --release --workspace`",
                path.display()
            ));
        }
        command
            .arg("--extern")
            .arg(format!("{}={}", name.replace('-', "_"), path.display()));
    }
    Ok(command)
}

/// The most recently built `<stem>.rlib`: cargo copies it to `<target>/release/` only when the
/// crate was selected (`--workspace`), and always leaves it in `deps/` as `<stem>-<hash>.rlib`;
/// the newest is the one the last build linked against the current runtime.
fn newest_rlib(release: &Path, stem: &str) -> Option<PathBuf> {
    let hashed = format!("{stem}-");
    let in_deps = std::fs::read_dir(release.join("deps"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&hashed) && n.ends_with(".rlib"))
        });
    std::iter::once(release.join(format!("{stem}.rlib")))
        .chain(in_deps)
        .filter_map(|path| Some((std::fs::metadata(&path).ok()?.modified().ok()?, path)))
        .max_by_key(|(modified, _)| *modified)
        .map(|(_, path)| path)
}

fn short_hash(path: &Path) -> String {
    // FNV-1a: stable across runs and rustc versions, unlike std's hasher.
    let hash = path
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        });
    format!("{hash:016x}")
}

fn run(mut command: Command, what: &str) -> Result<(), String> {
    let status = command
        .status()
        .map_err(|e| format!("cannot run rustc: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{what} failed (rustc's errors above)"))
    }
}

/// Where the toolchain's shared libstd lives (test binaries link it dynamically).
fn target_libdir(toolchain: Option<&str>) -> Option<String> {
    let output = rustc(toolchain)
        .args(["--print", "target-libdir"])
        .output()
        .ok()?;
    Some(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// Builds (and with `test`, tests) the plugin crate in `request.dir` against this host, checks
/// the library as the loader would, in `DIR/target/llmlab/`.
pub fn build(request: &BuildRequest) -> Result<Built, String> {
    let dir = request
        .dir
        .canonicalize()
        .map_err(|e| format!("{}: {e}", request.dir.display()))?;
    let manifest = read_manifest(&dir.join("Cargo.toml"))?;
    check_buildable(&dir, &manifest)?;
    let tree = source_tree(request.llmlab_source.as_deref()).ok();
    let toolchain = pinned_toolchain(tree.as_deref());
    check_rustc(toolchain.as_deref())?;
    let release = host_release_dir()?;

    let out_dir = dir.join("target").join("llmlab");
    std::fs::create_dir_all(&out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;
    let crate_name = manifest.package.replace('-', "_");
    let library = out_dir.join(format!(
        "lib{crate_name}.{}",
        std::env::consts::DLL_EXTENSION
    ));
    let command = rustc_command(
        &dir,
        &manifest,
        &release,
        toolchain.as_deref(),
        false,
        &library,
    )?;
    run(command, &format!("compiling {}", dir.display()))?;
    if request.test {
        let tests = dir.join("target").join(format!("{crate_name}-tests"));
        let command = rustc_command(
            &dir,
            &manifest,
            &release,
            toolchain.as_deref(),
            true,
            &tests,
        )?;
        run(
            command,
            &format!("compiling the tests of {}", dir.display()),
        )?;
        let mut path = release.join("deps").display().to_string();
        if let Some(libdir) = target_libdir(toolchain.as_deref()) {
            path = format!("{path}:{libdir}");
        }
        let status = Command::new(&tests)
            .current_dir(&dir)
            .env("LD_LIBRARY_PATH", path)
            .status()
            .map_err(|e| format!("{}: {e}", tests.display()))?;
        if !status.success() {
            return Err(format!(
                "the tests of {} failed (output above)",
                dir.display()
            ));
        }
    }

    let fingerprint = loader::check(&library).map_err(|e| {
        format!(
            "built {}, but this host refuses it: {e}\n  (was llmlab rebuilt since this host \
             started? run `cargo build --release --workspace` and try again)",
            library.display()
        )
    })?;
    let plugin = loader::load(&library).map_err(|e| {
        format!(
            "{e}\n  (the host's compiled llmlab crates in {} may come from different builds: \
             run `cargo build --release --workspace` and try again)",
            release.display()
        )
    })?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_keys_and_dependencies_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = dir.path().join("Cargo.toml");
        std::fs::write(
            &manifest,
            "[package]\nname = \"char-lstm\"\nversion = \"0.2.0\"\nedition = \"2021\"\n\n\
             [workspace]\n\n[lib]\ncrate-type = [\"dylib\"]\n\n[features]\ndefault = [\"a\"]\n\n\
             [dependencies]\nllmlab-plugin-api = { path = \"/x/plugin-api\" }\n\
             llmlab-nn.path = \"/x/nn\"\n\n[dependencies.llmlab-train]\npath = \"/x/train\"\n\n\
             [target.'cfg(unix)'.dev-dependencies]\nllmlab-test-support = { path = \"/x/t\" }\n",
        )
        .unwrap();
        let read = read_manifest(&manifest).unwrap();
        assert_eq!(
            (
                read.package.as_str(),
                read.version.as_str(),
                read.edition.as_str()
            ),
            ("char-lstm", "0.2.0", "2021")
        );
        assert!(read.dylib);
        assert_eq!(read.default_features, ["a"]);
        assert_eq!(
            read.dependencies,
            [
                ("dependencies".to_string(), "llmlab-plugin-api".to_string()),
                ("dependencies".into(), "llmlab-nn".into()),
                ("dependencies".into(), "llmlab-train".into()),
                ("dev-dependencies".into(), "llmlab-test-support".into()),
            ]
        );
        assert!(check_buildable(dir.path(), &read).is_ok());
        let missing = read_manifest(&dir.path().join("nope/Cargo.toml")).unwrap_err();
        assert!(missing.contains("llmlab plugin new"), "{missing}");
    }

    #[test]
    fn what_the_route_cannot_build_is_refused_naming_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = dir.path().join("Cargo.toml");
        let write = |extra: &str| {
            std::fs::write(
                &manifest,
                format!("[package]\nname = \"x\"\n\n[lib]\ncrate-type = [\"dylib\"]\n\n{extra}"),
            )
            .unwrap();
            check_buildable(dir.path(), &read_manifest(&manifest).unwrap())
        };
        let error = write("[dependencies]\nrand = \"0.8\"\n").unwrap_err();
        assert!(
            error.contains("`rand`") && error.contains("plugins/x") && error.contains("candle"),
            "{error}"
        );
        let error = write("[build-dependencies]\nllmlab-nn = \"1\"\n").unwrap_err();
        assert!(
            error.contains("[build-dependencies] `llmlab-nn`"),
            "{error}"
        );
        let error = write("[dependencies]\nllmlab-test-support = \"1\"\n").unwrap_err();
        assert!(
            error.contains("`llmlab-test-support`"),
            "a dev-only crate: {error}"
        );
        std::fs::write(dir.path().join("build.rs"), "fn main() {}").unwrap();
        let error = write("").unwrap_err();
        assert!(error.contains("build scripts"), "{error}");
        std::fs::write(
            &manifest,
            "[package]\nname = \"x\"\n[lib]\ncrate-type = [\"cdylib\"]\n",
        )
        .unwrap();
        let error = check_buildable(dir.path(), &read_manifest(&manifest).unwrap()).unwrap_err();
        assert!(error.contains("crate-type must be"), "{error}");
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
}
