//! Computes the facts that go into the plugin fingerprint at compile time: the exact rustc,
//! the locked versions of the crates whose types cross the plugin boundary, and a hash of this
//! crate's own source (a trait method added without a version bump must still change it).
//!
//! This crate is the contract alone, so only its own `src/` is hashed: the building blocks
//! (`llmlab-nn`, `llmlab-train`) are rlibs linked into the plugins that use them and are not
//! inputs here. The list of hashed files is published (`LLMLAB_API_HASH_INPUTS`) so a test can
//! show what a change does and does not refuse.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Crates whose types or globals cross between host and plugins.
const CROSSING_CRATES: &[&str] = &[
    "candle-core",
    "candle-nn",
    "serde",
    "serde_json",
    "tracing",
    "tracing-core",
    "inventory",
    "rayon",
    "rayon-core",
    "safetensors",
];

fn main() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let rustc_version = Command::new(&rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=LLMLAB_RUSTC_VERSION={rustc_version}");

    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let mut source_hash = Fnv64::default();
    let mut files = Vec::new();
    collect_rs_files(&manifest_dir.join("src"), &mut files);
    files.sort();
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
        source_hash.write(
            file.strip_prefix(&manifest_dir)
                .unwrap()
                .to_string_lossy()
                .as_bytes(),
        );
        source_hash.write(&std::fs::read(file).unwrap_or_default());
    }
    let inputs: Vec<String> = files
        .iter()
        .map(|f| {
            format!(
                "plugin-api/{}",
                f.strip_prefix(&manifest_dir).unwrap().to_string_lossy()
            )
        })
        .collect();
    println!(
        "cargo:rustc-env=LLMLAB_API_HASH_INPUTS={}",
        inputs.join(",")
    );
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=Cargo.toml");

    let (candle_version, lock_summary) = match find_lock(&manifest_dir) {
        Some(lock) => {
            println!("cargo:rerun-if-changed={}", lock.display());
            let text = std::fs::read_to_string(&lock).unwrap_or_default();
            let entries = locked_versions(&text);
            let candle = entries
                .iter()
                .find(|(name, _)| name == "candle-core")
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| "unknown".into());
            let summary: Vec<String> = entries.iter().map(|(n, v)| format!("{n}@{v}")).collect();
            (candle, summary.join(","))
        }
        None => ("unknown".into(), "no-lock".into()),
    };
    source_hash.write(lock_summary.as_bytes());
    println!("cargo:rustc-env=LLMLAB_CANDLE_VERSION={candle_version}");
    println!("cargo:rustc-env=LLMLAB_CROSSING_LOCK={lock_summary}");
    println!("cargo:rustc-env=LLMLAB_API_HASH={:016x}", source_hash.0);

    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        compile_cuda_kernels(&manifest_dir);
    }
}

/// llmlab's own CUDA kernels (`cuda/ops.cu`: the fused training ops) to one fatbin in the
/// runtime, as candle's are: every plugin loads the same copy (`src/cuda_kernels.rs`). SASS for
/// the build's GPU plus PTX for newer ones, compressed: the attention kernels are unrolled per
/// head width, which makes 8.8 MB of PTX text but 0.25 MB of compressed SASS. Only in the cuda
/// build (scripts/build-cuda.sh puts nvcc on PATH); the CPU test suite runs the same sources
/// through an emulator (nn/tests/cuda_kernels_emulated.rs).
fn compile_cuda_kernels(manifest_dir: &Path) {
    println!(
        "cargo:rerun-if-changed={}",
        manifest_dir.join("cuda").display()
    );
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("llmlab_ops.fatbin");
    let nvcc = std::env::var("NVCC").unwrap_or_else(|_| "nvcc".into());
    // candle's target (CUDA_COMPUTE_CAP, default 90 = H100/H200).
    let cap: String = std::env::var("CUDA_COMPUTE_CAP")
        .unwrap_or_else(|_| "90".into())
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    let status = Command::new(&nvcc)
        .arg("--fatbin")
        .arg(format!(
            "-gencode=arch=compute_{cap},code=[sm_{cap},compute_{cap}]"
        ))
        .args(["--compress-mode=size", "-O3", "-std=c++17"])
        .arg(manifest_dir.join("cuda/ops.cu"))
        .arg("-o")
        .arg(&out)
        .status()
        .unwrap_or_else(|e| {
            panic!("the cuda build needs nvcc (`{nvcc}`: {e}); scripts/build-cuda.sh installs one and puts it on PATH")
        });
    assert!(
        status.success(),
        "nvcc failed to compile plugin-api/cuda/ops.cu (see above)"
    );
}

fn collect_rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_rs_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The Cargo.lock of the build: the workspace's, found by walking up from this crate.
fn find_lock(start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .map(|d| d.join("Cargo.lock"))
        .find(|p| p.is_file())
}

/// `(name, version)` of each crossing crate in a Cargo.lock, sorted.
fn locked_versions(lock: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut name: Option<String> = None;
    for line in lock.lines() {
        let line = line.trim();
        if line == "[[package]]" {
            name = None;
        } else if let Some(rest) = line.strip_prefix("name = ") {
            name = Some(rest.trim_matches('"').to_string());
        } else if let Some(rest) = line.strip_prefix("version = ") {
            if let Some(n) = name.take() {
                if CROSSING_CRATES.contains(&n.as_str()) {
                    out.push((n, rest.trim_matches('"').to_string()));
                }
            }
        }
    }
    out.sort();
    out
}

/// FNV-1a: tiny, dependency-free and stable across platforms.
struct Fnv64(u64);

impl Default for Fnv64 {
    fn default() -> Self {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv64 {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}
