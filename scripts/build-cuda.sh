#!/usr/bin/env bash
# Builds llmlab (host + every plugin) with candle's `cuda` feature on a machine that has only Rust
# and Python (no GPU, no CUDA toolkit), and stages a stripped bundle to copy to a GPU machine.
#
#   scripts/build-cuda.sh            # nice -n 19 scripts/build-cuda.sh on a shared machine
#
# Steps (docs/cuda.md says why each one is needed):
#   1. nvcc + headers of CUDA 13.0 from PyPI wheels into $CUDA_PREFIX (default /opt/cuda13), once;
#   2. a copy of cudarc under target-cuda/vendor/ switched from link-time to dlopen loading of the
#      CUDA libraries, applied only to this build through a cargo `paths` override (the repository's
#      Cargo.toml and Cargo.lock are never edited; `--locked` fails the build if the lock would change);
#   3. `cargo build --release --workspace --features cuda` into target-cuda/ (the CPU target/ is
#      never touched, so switching between the two builds recompiles nothing);
#   4. host + runtime + plugins + libstd stripped into $CUDA_BUNDLE (default target-cuda/bundle),
#      their sizes printed, and packed into target-cuda/llmlab-cuda.tar.xz; the unpacked bundle and
#      the archive must each fit the 64 MiB budget (the CUDA kernels are compressed SASS, vendored
#      candle-kernels: docs/cuda.md "Size").
#
# Environment: CUDA_PREFIX, CUDA_TARGET_DIR (default <repo>/target-cuda), CUDA_BUNDLE,
# CUDA_COMPUTE_CAP (default 90 = H100/H200, built as sm_90a), CUDAFORGE_THREADS (default: all cores).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PREFIX=${CUDA_PREFIX:-/opt/cuda13}
CU=$PREFIX/nvidia/cu13
TARGET_DIR=${CUDA_TARGET_DIR:-$ROOT/target-cuda}
BUNDLE=${CUDA_BUNDLE:-$TARGET_DIR/bundle}
COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
THREADS=${CUDAFORGE_THREADS:-$(nproc)}
BUDGET=$((64 * 1024 * 1024))
# CUDA 13.0 exactly: the GPU machines' driver 580 is CUDA 13.0 and cannot JIT PTX from a newer nvcc.
WHEELS=(nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85)

step() { printf '\n== %s (%s)\n' "$*" "$(date +%T)"; }
die() { printf 'build-cuda: %s\n' "$*" >&2; exit 1; }
START=$(date +%s)
cd "$ROOT"

step "1/4 nvcc in $PREFIX"
if [[ -x $CU/bin/nvcc && -e $CU/include/nv/target && -e $CU/lib/libcudart_static.a ]]; then
    echo "already installed: $("$CU/bin/nvcc" --version | tail -1)"
else
    [[ -e $PREFIX ]] && die "$PREFIX exists but lacks nvcc, cccl or libcudart_static.a; remove it and rerun"
    # One pip call into a fresh directory: a second `pip install --target` into the same directory
    # silently skips the shared nvidia/ folder.
    staging=$PREFIX.partial.$$
    python3 -m pip install --quiet --no-deps --disable-pip-version-check --target "$staging" "${WHEELS[@]}"
    mv "$staging" "$PREFIX"
    echo "installed: $("$CU/bin/nvcc" --version | tail -1)"
fi
# candle-kernels links -lcudart; resolve it to the static runtime so no libcudart.so is needed.
mkdir -p "$PREFIX/cudart-static"
echo "INPUT($CU/lib/libcudart_static.a -ldl -lpthread -lrt)" >"$PREFIX/cudart-static/libcudart.so"

step "2/4 cudarc switched to dlopen"
cargo fetch --locked --quiet
CUDARC_VERSION=$(awk '/^name = "cudarc"$/ { getline; gsub(/"/, "", $3); print $3; exit }' Cargo.lock)
[[ -n $CUDARC_VERSION ]] || die "cudarc is not in Cargo.lock; has candle's cuda dependency changed?"
REGISTRY_COPY=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-"$CUDARC_VERSION" | head -1)
VENDOR=$TARGET_DIR/vendor/cudarc-$CUDARC_VERSION
if [[ ! -e $VENDOR/.llmlab-dlopen ]]; then
    rm -rf "$VENDOR"
    mkdir -p "$(dirname "$VENDOR")"
    cp -r "$REGISTRY_COPY" "$VENDOR"
    # candle-core turns on cudarc's `dynamic-linking` (libcuda.so.1 etc. become NEEDED: the binary
    # would not even start without a driver). Features cannot be switched off, and enabling
    # `dynamic-loading` next to it panics in cudarc's build script, so map one onto the other.
    sed -i 's/^dynamic-linking = \[\]/dynamic-linking = ["dynamic-loading"]/' "$VENDOR/Cargo.toml"
    sed -i 's/feature = "dynamic-linking"/feature = "dynamic-linking-off"/g' "$VENDOR/build.rs"
    grep -q '^dynamic-linking = \["dynamic-loading"\]' "$VENDOR/Cargo.toml" ||
        die "cudarc $CUDARC_VERSION: Cargo.toml has no plain dynamic-linking feature to patch"
    touch "$VENDOR/.llmlab-dlopen"
fi
echo "cudarc $CUDARC_VERSION from $VENDOR"

step "3/4 cargo build --features cuda into $TARGET_DIR (sm_$COMPUTE_CAP, $THREADS nvcc jobs)"
BUILD_START=$(date +%s)
# --locked: cargo refuses to write Cargo.lock; the `paths` override leaves it as the CPU build has it.
# RUSTFLAGS is pinned to .cargo/config.toml's: the CPU build's `--cfg llmlab_mpi`, inherited from
# the shell, would make the bundle's llmlab need libmpi.so.40 on the GPU machine, and alternating
# flags rebuild every crate in target-cuda/.
RUSTFLAGS="-C prefer-dynamic" \
    PATH=$CU/bin:$PATH \
    CUDA_COMPUTE_CAP=$COMPUTE_CAP \
    CUDAFORGE_THREADS=$THREADS \
    LIBRARY_PATH=$PREFIX/cudart-static${LIBRARY_PATH:+:$LIBRARY_PATH} \
    CARGO_TARGET_DIR=$TARGET_DIR \
    cargo build --release --locked --workspace --exclude llmlab-e2e --features cuda \
    --config "paths=[\"$VENDOR\"]"
BUILD_SECS=$(($(date +%s) - BUILD_START))

step "4/4 bundle in $BUNDLE"
RELEASE=$TARGET_DIR/release
SYSROOT=$(rustc --print sysroot)
HOST_TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
rm -rf "$BUNDLE"
mkdir -p "$BUNDLE"
files=("$RELEASE/llmlab" "$RELEASE/libllmlab_plugin_api.so")
for manifest in plugins/*/Cargo.toml; do
    name=$(sed -n 's/^name = "\(.*\)"$/\1/p' "$manifest" | head -1)
    files+=("$RELEASE/lib${name//-/_}.so")
done
files+=("$SYSROOT"/lib/rustlib/"$HOST_TRIPLE"/lib/libstd-*.so)
for f in "${files[@]}"; do
    [[ -f $f ]] || die "missing build output $f"
    cp "$f" "$BUNDLE/"
done
# --strip-unneeded keeps .dynsym: plugins link the runtime's exported symbols and the loader reads
# LLMLAB_PLUGIN_DECLARATION from it. `.rustc` is the crate metadata rustc reads to compile against a
# Rust dylib (5 MB over the bundle); nothing reads it at run time, and `llmlab plugin build` takes
# its inputs from a cargo target directory, never from a bundle.
strip --strip-unneeded --remove-section=.rustc "$BUNDLE"/*
total=0
for f in "$BUNDLE"/*; do
    size=$(stat -c %s "$f")
    total=$((total + size))
    printf '%12d  %s\n' "$size" "$(basename "$f")"
done
mib() { awk -v t="$1" 'BEGIN { printf "%.1f", t / 1048576 }'; }
printf '%12d  total unpacked (%s MiB; budget 64 MiB)\n' "$total" "$(mib "$total")"
# Where the runtime's bytes go: the kernels are .nv_fatbin (GGUF matmuls, linked) and .rodata
# (candle's modules as fatbins, llmlab's as PTX).
size -A "$BUNDLE/libllmlab_plugin_api.so" | awk '$1 ~ /^\.(text|rodata|nv_fatbin|eh_frame)$/ {
    printf "%12d  libllmlab_plugin_api.so %s\n", $2, $1 }'
# The bundle must start and load every plugin on this GPU-less machine (cudarc dlopens lazily).
"$BUNDLE/llmlab" plugins
# The copy to a GPU machine travels as one xz archive (a fifth of the unpacked size).
ARCHIVE=$TARGET_DIR/llmlab-cuda.tar.xz
tar -cf - -C "$BUNDLE" . | xz -T0 -6 >"$ARCHIVE.partial"
mv "$ARCHIVE.partial" "$ARCHIVE"
archive=$(stat -c %s "$ARCHIVE")
printf '\n%12d  %s (%s MiB; budget 64 MiB)\n' "$archive" "$ARCHIVE" "$(mib "$archive")"
printf 'build-cuda: cargo build %d s, whole script %d s\n' "$BUILD_SECS" "$(($(date +%s) - START))"
((total < BUDGET)) || die "the unpacked bundle is $total bytes, over the 64 MiB budget (docs/cuda.md \"Size\")"
((archive < BUDGET)) || die "the archive is $archive bytes, over the 64 MiB budget"
echo "build-cuda: copy $ARCHIVE to the GPU machine and unpack it: tar -xJf llmlab-cuda.tar.xz (docs/cuda.md)"
