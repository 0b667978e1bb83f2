//! Sets the binary's RUNPATH so `./target/release/llmlab` finds the shared runtime
//! (`libllmlab_plugin_api.so`, next to it or in `deps/`) and the toolchain's `libstd-*.so`
//! without LD_LIBRARY_PATH. A release layout copies both next to the binary (`$ORIGIN`). Also
//! says whether the MPI backend is built (`cfg(mpi_backend)`).

fn main() {
    let rpath = llmlab_rpath();
    println!("cargo:rustc-link-arg-bins=-Wl,-rpath,{rpath}");
    println!("cargo:rustc-link-arg-benches=-Wl,-rpath,{rpath}");
    println!("cargo:rerun-if-changed=build.rs");
    mpi_backend();
}

/// `cfg(mpi_backend)` when the MPI backend is built: by the `mpi` feature, or by
/// `--cfg llmlab_mpi` in RUSTFLAGS (the route .ci/run takes; host/Cargo.toml).
fn mpi_backend() {
    println!("cargo::rustc-check-cfg=cfg(mpi_backend)");
    println!("cargo::rustc-check-cfg=cfg(llmlab_mpi)");
    let feature = std::env::var_os("CARGO_FEATURE_MPI").is_some();
    let flag = std::env::var_os("CARGO_CFG_LLMLAB_MPI").is_some();
    if feature || flag {
        println!("cargo::rustc-cfg=mpi_backend");
    }
}

fn llmlab_rpath() -> String {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sysroot = std::process::Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let target = std::env::var("TARGET").unwrap_or_default();
    format!("$ORIGIN:$ORIGIN/deps:{sysroot}/lib/rustlib/{target}/lib")
}
