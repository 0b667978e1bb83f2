//! Compiles the fused ops' CUDA kernels (`cuda/ops.cu`) to one PTX module for the cuda build
//! (`--features cuda`, normally through scripts/build-cuda.sh, which puts nvcc on PATH); a CPU
//! build compiles nothing here. The CPU test suite runs the same sources through an emulator
//! (tests/cuda_kernels_emulated.rs).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo::rerun-if-changed=cuda");
    println!("cargo::rerun-if-env-changed=NVCC");
    println!("cargo::rerun-if-env-changed=CUDA_COMPUTE_CAP");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out =
        PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("llmlab_ops.ptx");
    let nvcc = std::env::var("NVCC").unwrap_or_else(|_| "nvcc".into());
    // The same target as candle's kernels (CUDA_COMPUTE_CAP, default 90 = H100/H200): PTX the
    // driver compiles for the GPU at first load.
    let cap: String = std::env::var("CUDA_COMPUTE_CAP")
        .unwrap_or_else(|_| "90".into())
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    let status = Command::new(&nvcc)
        .args(["-ptx", &format!("-arch=compute_{cap}"), "-O3", "-std=c++17", "cuda/ops.cu", "-o"])
        .arg(&out)
        .status()
        .unwrap_or_else(|e| panic!("the cuda build needs nvcc (`{nvcc}`: {e}); scripts/build-cuda.sh installs one and puts it on PATH"));
    assert!(
        status.success(),
        "nvcc failed to compile nn/cuda/ops.cu (see above)"
    );
}
