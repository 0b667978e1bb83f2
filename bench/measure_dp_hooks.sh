#!/usr/bin/env bash
# Issue 28: single-process speed with (head) and without (nohooks) the data-parallel hooks.
# Alternates the two builds rep by rep, swapping which goes first every rep (ABBA), so drift in
# the shared machine's load falls on both alike. Writes one JSON line per run to results.jsonl.
# Usage: bash measure.sh [REPS] [TINY_STEPS] [SMALL_STEPS] [LM_STEPS]
set -euo pipefail
REPS=${1:-5}; TINY_STEPS=${2:-5}; SMALL_STEPS=${3:-3}; LM_STEPS=${4:-60}
M=${M:-/work/meas/h28b}   # holds head/ and nohooks/ (llmlab + plugins of each build)
OUT=${OUT:-$M/results.jsonl}
SCRIPT=${SCRIPT:-$(cd "$(dirname "$0")/.." && pwd)/scripts/data_parallel.rhai}
mkdir -p $M/work && cd $M/work
unset LLMLAB_PLUGIN_PATH RAYON_NUM_THREADS
load() { cut -d' ' -f1-3 /proc/loadavg | tr ' ' ,; }
record() { # variant rep kind load json
  printf '{"variant":"%s","rep":%s,"kind":"%s","load":[%s],"at":"%s","result":%s}\n' \
    "$1" "$2" "$3" "$4" "$(date -u +%H:%M:%S)" "$5" >> $OUT
}
bench() { # variant rep config steps
  local l; l=$(load)
  local j; j=$(nice -n 10 $M/$1/llmlab bench train --config $3 --steps $4 | tail -1)
  record $1 $2 $3 "$l" "$j"
}
lm() { # variant rep
  local name=lm-$1-$2-$$ l; l=$(load)
  nice -n 10 $M/$1/llmlab run $SCRIPT --set name=$name --set data_parallel=false \
    --set d_model=128 --set ctx=64 --set batch_size=16 --set steps=$LM_STEPS --set bytes=100000 >/dev/null
  # tokens/s of every step after the first 5 (warm-up), and the final loss (same in both builds).
  local j; j=$(python3 -c '
import json,sys,statistics as s
r=[json.loads(l) for l in open(sys.argv[1])]
t=[x["tokens_per_s"] for x in r if x["step"]>5]
print(json.dumps({"median_tok_s":s.median(t),"steps":len(r),"final_loss":r[-1]["loss"]}))' runs/$name/metrics.jsonl)
  record $1 $2 lm "$l" "$j"
  rm -rf runs/$name
}
for rep in $(seq 1 $REPS); do
  if (( rep % 2 )); then order="head nohooks"; else order="nohooks head"; fi
  for v in $order; do bench $v $rep tiny $TINY_STEPS; done
  for v in $order; do bench $v $rep small $SMALL_STEPS; done
  for v in $order; do lm $v $rep; done
  echo "rep $rep done $(date -u +%H:%M:%S) load $(load)"
done
