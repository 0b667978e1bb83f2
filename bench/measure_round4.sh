#!/bin/bash
# Issue 25, round 4: llmlab vs PyTorch eager (train, forward) and vs transformers (generation) on
# the bench shapes, 3 alternating repetitions, medians (≈ 6 min on an idle 2-core machine).
# Run after `cargo build --release --workspace` (MAIN=repo root, PY=python with torch+transformers).
#   torch         = shared/bench/torch_gpt.py, 2 threads
#   llmlab        = llmlab bench train (defaults: row-parallel step, one pool, fused kernels)
#   llmlab-whole  = the same binary, row_parallel off (`:whole`): one whole-batch pass per step
#   hf / llmlab-gen = bench/hf_generate.py vs llmlab bench generate, greedy, batch 1 and 16
set -u
MAIN=${MAIN:-$(cd "$(dirname "$0")/.." && pwd)}
PY=${PY:-python3}
BIN=${BIN:-$MAIN/target/release/llmlab}
OUT=$(mktemp -d /tmp/measure25.XXXX)
STEPS=${STEPS:-5}
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)  ($(nproc) cores)"
for rep in 1 2 3; do
  echo "rep $rep  load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
  $PY $MAIN/bench/torch_gpt.py --config tiny,small --steps $STEPS --threads 2 | sed "s/^/torch $rep /" >> $OUT/all
  $BIN bench train --config tiny,small --steps $STEPS 2>/dev/null | sed "s/^/llmlab $rep /" >> $OUT/all
  $BIN bench train --config tiny:whole,small:whole --steps $STEPS 2>/dev/null | sed "s/^/llmlab-whole $rep /" >> $OUT/all
  $PY $MAIN/bench/hf_generate.py --config tiny,small --batch 1,16 --threads 2 2>/dev/null | sed "s/^/hf $rep /" >> $OUT/all
  $BIN bench generate --config tiny,small --batch 1,16 2>/dev/null | sed "s/^/llmlab-gen $rep /" >> $OUT/all
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$OUT/all" <<'PY'
import json, sys, statistics as st
rows = {}
for line in open(sys.argv[1]):
    who, rep, js = line.split(" ", 2)
    try: d = json.loads(js)
    except ValueError: continue
    key = (who, d["config"].split(":")[0], d.get("batch"))
    rows.setdefault(key, []).append(d)
def med(who, cfg, k, batch=None):
    v = [d[k] for d in rows.get((who, cfg, batch), []) if k in d]
    return st.median(v) if v else float("nan")
print("| config | PyTorch train tok/s | llmlab (row-parallel) | llmlab whole-batch | **llmlab / PyTorch** | whole / PyTorch | PyTorch fwd | llmlab fwd | **fwd ratio** |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for cfg in ["tiny", "small"]:
    tt, lt, wt = med("torch", cfg, "train_tok_s"), med("llmlab", cfg, "train_tok_s"), med("llmlab-whole", cfg, "train_tok_s")
    tf, lf = med("torch", cfg, "fwd_tok_s"), med("llmlab", cfg, "fwd_tok_s")
    print(f"| {cfg} | {tt:,.0f} | {lt:,.0f} | {wt:,.0f} | **{lt/tt:.2f}×** | {wt/tt:.2f}× | {tf:,.0f} | {lf:,.0f} | **{lf/tf:.2f}×** |")
print()
print("| config | batch | transformers gen tok/s | llmlab gen tok/s | **llmlab / transformers** | ms per step (hf / llmlab) |")
print("| --- | --- | --- | --- | --- | --- |")
for cfg in ["tiny", "small"]:
    for b in [1, 16]:
        h, l = med("hf", cfg, "gen_tok_s", b), med("llmlab-gen", cfg, "gen_tok_s", b)
        print(f"| {cfg} | {b} | {h:,.0f} | {l:,.0f} | **{l/h:.2f}×** | {med('hf', cfg, 'ms_per_step', b):.2f} / {med('llmlab-gen', cfg, 'ms_per_step', b):.2f} |")
print("per-rep lines:", sys.argv[1])
PY
