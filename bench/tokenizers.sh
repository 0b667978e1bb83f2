#!/bin/bash
# Tokenizer benchmark: HF tokenizers (Python), tiktoken (Python) and llmlab's `bpe`, alternating.
#   bench/tokenizers.sh CORPUS THREADS REPS OUT.jsonl [VOCAB]
# THREADS 1 pins every process to one core (taskset -c 0) with RAYON_NUM_THREADS=1 and tiktoken
# num_threads=1; THREADS 2 uses cores 0-1. Each repetition records `uptime` first and flips the
# order (odd: HF, ours, tiktoken; even: ours, HF, tiktoken). tiktoken encodes with the
# tokenizer.json HF trained in the same repetition; all three write their ids, which must match.
# Needs: PY (a python with `tokenizers` and `tiktoken`), the bench_bpe example built, and
# LD_LIBRARY_PATH set as docs/benchmarks.md shows.
set -euo pipefail
corpus=$1 threads=$2 reps=$3 out=$4 vocab=${5:-8192}
root=$(cd "$(dirname "$0")/.." && pwd)
py=${PY:-python3}
cores=$([ "$threads" = 1 ] && echo 0 || echo 0-$((threads - 1)))
tmp=$(mktemp -d)
run() { # label, command...
  local label=$1; shift
  RAYON_NUM_THREADS=$threads taskset -c "$cores" "$@" \
    | python3 -c "import json,sys; d=json.loads(sys.stdin.read()); d.update(rep=$rep, corpus='$(basename "$corpus")', run_threads=$threads); print(json.dumps(d))" >> "$out"
}
for rep in $(seq 1 "$reps"); do
  echo "{\"rep\": $rep, \"corpus\": \"$(basename "$corpus")\", \"run_threads\": $threads, \"uptime\": \"$(uptime | sed 's/.*load average: //')\"}" >> "$out"
  hf() { run hf "$py" "$root/bench/hf_tokenizers.py" "$corpus" --vocab "$vocab" --save "$tmp/hf.json" --ids-out "$tmp/hf.ids"; }
  ours() { run ours "$root/target/release/examples/bench_bpe" "$corpus" --vocab "$vocab" --save "$tmp/ours.json" --ids-out "$tmp/ours.ids"; }
  if [ $((rep % 2)) = 1 ]; then hf; ours; else ours; hf; fi
  check=$([ "$rep" = 1 ] && echo --check || true)
  run tiktoken "$py" "$root/bench/tiktoken_bpe.py" "$corpus" "$tmp/hf.json" --threads "$threads" $check --ids-out "$tmp/tt.ids"
  same=$(python3 -c "import filecmp,sys; print(int(filecmp.cmp('$tmp/hf.json','$tmp/ours.json',shallow=False) and filecmp.cmp('$tmp/hf.ids','$tmp/ours.ids',shallow=False) and filecmp.cmp('$tmp/hf.ids','$tmp/tt.ids',shallow=False)))")
  echo "{\"rep\": $rep, \"corpus\": \"$(basename "$corpus")\", \"run_threads\": $threads, \"identical_json_and_ids\": $same}" >> "$out"
done
rm -rf "$tmp"
