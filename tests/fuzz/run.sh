#!/usr/bin/env bash
# Coverage-guided fuzzing of every untrusted-input parser (docs/reliability.md).
#
#   tests/fuzz/run.sh [SECONDS_PER_TARGET] [TARGET ...]      (default 600 s, every target)
#
# Needs the nightly toolchain and cargo-fuzz (`cargo +stable install cargo-fuzz --locked`). Builds
# the targets in tests/fuzz/libfuzzer against this checkout with the workspace's Cargo.lock, seeds
# each corpus (target/fuzz/corpus/<target>) from the real writers, runs two targets at a time at
# the lowest CPU priority, keeps going after a finding (fork mode), and prints one line of totals
# per target. Findings land in target/fuzz/artifacts/<target>/; once fixed, copy them into
# tests/fuzz/regressions/<target>/, which the stable test (tests/fuzz/tests/parsers.rs) replays.
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-600}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(declaration dataset_header checkpoint_manifest tokenizer_json gguf safetensors_config jsonl rhai_config)
fi

fuzz_dir=tests/fuzz/libfuzzer
cp Cargo.lock "$fuzz_dir/Cargo.lock"
# The shared runtime is a Rust dylib (DESIGN.md §8): everything links libstd dynamically.
RUSTFLAGS="-C prefer-dynamic" cargo +nightly fuzz build --fuzz-dir "$fuzz_dir" -s none -O
bin="$PWD/$fuzz_dir/target/x86_64-unknown-linux-gnu/release"
sysroot_lib="$(rustc +nightly --print sysroot)/lib/rustlib/x86_64-unknown-linux-gnu/lib"
export LD_LIBRARY_PATH="$bin/deps:$sysroot_lib"
# A backtrace captured per refused input (candle errors do so under RUST_BACKTRACE) costs far
# more than the parse; it made the GGUF target 100x slower.
unset RUST_BACKTRACE
out=target/fuzz
mkdir -p "$out/logs"
plugin=$(ls target/release/libllmlab_quant.so 2>/dev/null || true)

run_one() {
  local t=$1
  mkdir -p "$out/corpus/$t" "$out/artifacts/$t"
  LLMLAB_FUZZ_SEEDS="$out/corpus/$t" LLMLAB_FUZZ_PLUGIN="$plugin" \
    nice -n 19 "$bin/$t" "$out/corpus/$t" -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=20 \
    -fork=1 -ignore_crashes=1 -ignore_ooms=1 -ignore_timeouts=1 \
    -artifact_prefix="$out/artifacts/$t/" >"$out/logs/$t.log" 2>&1 || true
}

for ((i = 0; i < ${#targets[@]}; i += 2)); do
  run_one "${targets[i]}" &
  if [ $((i + 1)) -lt ${#targets[@]} ]; then run_one "${targets[i + 1]}" & fi
  wait
done

for t in "${targets[@]}"; do
  last=$(grep -E '^#[0-9]+' "$out/logs/$t.log" | tail -1 || true)
  echo "$t: ${last:-no progress line; see $out/logs/$t.log}; artifacts: $(ls "$out/artifacts/$t" | wc -l)"
done
