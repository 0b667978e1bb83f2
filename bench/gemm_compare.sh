#!/bin/bash
# gemm crate vs MKL (torch) vs OpenBLAS (numpy) on the training step's products (issue 25 item 4):
# alternating, REPS rounds, each impl at 1 and 2 threads. Summarize with bench/gemm_summary.py.
#   bash bench/gemm_compare.sh GEMM_BIN PYTHON [ROUNDS] > out.jsonl
set -euo pipefail
bin=$1; py=$2; rounds=${3:-3}
here=$(dirname "$0")
for round in $(seq "$rounds"); do
  for t in 1 2; do
    OMP_NUM_THREADS=$t MKL_NUM_THREADS=$t OPENBLAS_NUM_THREADS=$t "$py" "$here/gemm_peer.py" mkl $t 20
    OMP_NUM_THREADS=$t MKL_NUM_THREADS=$t OPENBLAS_NUM_THREADS=$t "$py" "$here/gemm_peer.py" openblas $t 20
  done
  "$bin" 20
done
