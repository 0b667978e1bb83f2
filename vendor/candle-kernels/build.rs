// llmlab: candle-kernels 0.11.1's build script, changed to keep the CUDA bundle small
// (vendor/README.md, docs/cuda.md "Size"):
//   * the 11 module kernels are still compiled to PTX (cudaforge, cached), then each PTX file is
//     assembled for the build's GPU architecture into a compressed fatbin (`images.rs`), which the
//     driver loads as it is: no PTX text in the binary, no JIT at first use;
//   * the statically linked GGUF/MoE kernels (libmoe.a) are compressed as well
//     (`--compress-mode=size`: nvcc 13.0 compresses only PTX by default, not SASS).
use cudaforge::{CudaToolkit, GpuArch, KernelBuilder, Result};
use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const CUTILE_FEATURE: &str = "CARGO_FEATURE_CUTILE";
// The same driver that runs the SASS decompresses it: CUDA 13 needs driver 580 or newer, the
// driver CUDA 13.0 itself needs.
const COMPRESS: &str = "--compress-mode=size";

fn main() -> Result<()> {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=src");
    println!("cargo::rerun-if-changed=src/compatibility.cuh");
    println!("cargo::rerun-if-changed=src/cuda_utils.cuh");
    println!("cargo::rerun-if-changed=src/binary_op_macros.cuh");

    // Build for PTX
    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap());
    let ptx_path = out_dir.join("ptx.rs");
    let bindings = KernelBuilder::new()
        .source_dir("src") // Scan src/ for .cu files
        .exclude(&["moe_*.cu", "mmvq_gguf.cu", "mmq_*.cu"]) // Exclude statically compiled kernels from ptx build
        .arg("--expt-relaxed-constexpr")
        .arg("-std=c++17")
        .arg("-O3")
        .build_ptx()?;

    bindings.write(&ptx_path)?;
    let arch = cudaforge::detect_compute_cap()?;
    write_images(
        &out_dir,
        &ptx_path,
        &arch,
        &CudaToolkit::detect()?.nvcc_path,
    );

    let mut moe_sources = vec![
        "src/moe/moe_gguf.cu",
        "src/moe/moe_wmma.cu",
        "src/moe/moe_wmma_gguf.cu",
        "src/mmvq_gguf.cu",
        "src/mmq_gguf/mmq_quantize.cu",
        "src/mmq_gguf/mmq_instance_q4_0.cu",
        "src/mmq_gguf/mmq_instance_q4_1.cu",
        "src/mmq_gguf/mmq_instance_q5_0.cu",
        "src/mmq_gguf/mmq_instance_q5_1.cu",
        "src/mmq_gguf/mmq_instance_q8_0.cu",
        "src/mmq_gguf/mmq_instance_q2_k.cu",
        "src/mmq_gguf/mmq_instance_q3_k.cu",
        "src/mmq_gguf/mmq_instance_q4_k.cu",
        "src/mmq_gguf/mmq_instance_q5_k.cu",
        "src/mmq_gguf/mmq_instance_q6_k.cu",
    ];
    if env::var_os(CUTILE_FEATURE).is_some() {
        moe_sources.push("src/moe/moe_align.cu");
    }

    let mut moe_builder = KernelBuilder::default()
        .source_files(moe_sources)
        .arg("--expt-relaxed-constexpr")
        .arg("-std=c++17")
        .arg("-O3")
        .arg(COMPRESS);

    // Disable bf16 WMMA kernels on GPUs older than sm_80 (Ampere).
    // bf16 WMMA fragments require compute capability >= 8.0.
    let compute_cap = arch.base();
    if compute_cap < 80 {
        moe_builder = moe_builder.arg("-DNO_BF16_KERNEL");
    }

    let mut is_target_msvc = false;
    if let Ok(target) = std::env::var("TARGET") {
        if target.contains("msvc") {
            is_target_msvc = true;
            moe_builder = moe_builder.arg("-D_USE_MATH_DEFINES");
        }
    }

    if !is_target_msvc {
        moe_builder = moe_builder.arg("-Xcompiler").arg("-fPIC");
    }

    moe_builder.build_lib(out_dir.join("libmoe.a"))?;
    println!("cargo:rustc-link-search={}", out_dir.display());
    println!("cargo:rustc-link-lib=moe");
    println!("cargo:rustc-link-lib=dylib=cudart");
    if !is_target_msvc {
        println!("cargo:rustc-link-lib=stdc++");
    }
    Ok(())
}

/// Assembles each PTX module that cudaforge listed in `ptx.rs` into `<name>.fatbin` and writes
/// `images.rs`, one `pub static <NAME>: &[u8]` per module. An arch-specific target (`sm_90a`)
/// gets its SASS only: its PTX could not be compiled for any other GPU either. A portable one
/// (`sm_80`) also keeps its PTX, compressed, so newer GPUs can still JIT it.
fn write_images(out_dir: &Path, ptx_rs: &Path, arch: &GpuArch, nvcc: &Path) {
    let listing = std::fs::read_to_string(ptx_rs).expect("cudaforge wrote ptx.rs");
    let names: Vec<String> = listing
        .lines()
        .filter_map(|line| {
            let name = line.strip_prefix("pub const ")?.split(':').next()?;
            Some(name.trim().to_string())
        })
        .collect();
    assert!(!names.is_empty(), "no PTX module in {}", ptx_rs.display());
    let mut gencode = vec![arch.to_gencode_arg()];
    if arch.suffix.is_none() {
        gencode.push(format!(
            "-gencode=arch=compute_{0},code=compute_{0}",
            arch.base()
        ));
    }
    let jobs = env::var("CUDAFORGE_THREADS")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(1)
        .max(1);
    let stale: Vec<(PathBuf, PathBuf)> = names
        .iter()
        .map(|name| {
            let stem = name.to_lowercase();
            (
                out_dir.join(format!("{stem}.ptx")),
                out_dir.join(format!("{stem}.fatbin")),
            )
        })
        .filter(|(ptx, fatbin)| !up_to_date(ptx, fatbin, &gencode))
        .collect();
    for batch in stale.chunks(jobs) {
        let children: Vec<_> = batch
            .iter()
            .map(|(ptx, fatbin)| {
                let child = Command::new(nvcc)
                    .arg("--fatbin")
                    .args(&gencode)
                    .arg(COMPRESS)
                    .arg("-o")
                    .arg(fatbin)
                    .arg(ptx)
                    .spawn()
                    .unwrap_or_else(|e| panic!("cannot run {}: {e}", nvcc.display()));
                (ptx, fatbin, child)
            })
            .collect();
        for (ptx, fatbin, mut child) in children {
            let status = child.wait().expect("nvcc ran");
            assert!(
                status.success(),
                "nvcc --fatbin {} failed ({status})",
                ptx.display()
            );
            std::fs::write(stamp(fatbin), gencode.join(" ")).expect("OUT_DIR is writable");
        }
    }
    let mut images = String::new();
    for name in &names {
        let stem = name.to_lowercase();
        images.push_str(&format!(
            "pub static {name}: &[u8] = include_bytes!(concat!(env!(\"OUT_DIR\"), \"/{stem}.fatbin\"));\n"
        ));
    }
    std::fs::write(out_dir.join("images.rs"), images).expect("OUT_DIR is writable");
}

/// A fatbin is current when it is newer than its PTX and was built for the same targets.
fn up_to_date(ptx: &Path, fatbin: &Path, gencode: &[String]) -> bool {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    match (modified(ptx), modified(fatbin)) {
        (Some(p), Some(f)) if f >= p => {
            std::fs::read_to_string(stamp(fatbin)).ok().as_deref() == Some(&gencode.join(" "))
        }
        _ => false,
    }
}

fn stamp(fatbin: &Path) -> PathBuf {
    fatbin.with_extension("fatbin.targets")
}
