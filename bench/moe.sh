#!/usr/bin/env bash
# MoE training throughput (issue 17): llmlab `tiny` dense vs `tiny:moe` (8 experts, top-2, equal
# active parameters), and PyTorch eager's `tiny` vs `tiny_moe` (bench/torch_gpt.py), alternating,
# REPS repetitions each; one JSON line per run, with the 1-minute load average. Summarise with
# medians (docs/moe.md). Usage: bench/moe.sh [REPS] [STEPS] [THREADS] > results.jsonl
set -euo pipefail
cd "$(dirname "$0")/.."
reps=${1:-3}; steps=${2:-5}; threads=${3:-2}
py=${PYTHON:-/work/venv-torch/bin/python}
for rep in $(seq 1 "$reps"); do
  for config in tiny tiny:moe; do
    load=$(cut -d' ' -f1 /proc/loadavg)
    line=$(RAYON_NUM_THREADS=$threads ./target/release/llmlab bench train --config "$config" --steps "$steps" | tail -1)
    echo "{\"rep\": $rep, \"load1\": $load, \"result\": $line}"
  done
  for config in tiny tiny_moe; do
    load=$(cut -d' ' -f1 /proc/loadavg)
    line=$("$py" bench/torch_gpt.py --config "$config" --steps "$steps" --threads "$threads" | tail -1)
    echo "{\"rep\": $rep, \"load1\": $load, \"result\": $line}"
  done
done
