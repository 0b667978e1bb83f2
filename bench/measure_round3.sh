#!/bin/bash
# Issue 25: llmlab vs PyTorch eager on the bench shapes, 3 alternating reps, medians (≤ 6 min idle).
# Run from anywhere after `cargo build --release --workspace` (MAIN=repo root, PY=python with torch).
#   rows: torch          = shared/bench/torch_gpt.py, 2 threads
#         llmlab         = llmlab bench train (host defaults: CANDLE_NUM_THREADS=1, patched backprop, fused linear)
#         llmlab-before  = the same binary with this issue's run-time levers off
#                          (CANDLE_NUM_THREADS=2: candle's barrier pool; LLMLAB_STOCK_BACKPROP=1: zeros+add);
#                          the fused linear stays on (its own A/B: nn/examples/linear_bench.rs)
#         llmlab-split   = tiny:split: whole-batch step vs one micro-batch per core, same process
set -u
MAIN=${MAIN:-$(cd "$(dirname "$0")/.." && pwd)}
PY=${PY:-python3}
BIN=$MAIN/target/release/llmlab
OUT=$(mktemp -d /tmp/measure25.XXXX)
STEPS=${STEPS:-5}
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)  ($(nproc) cores)"
for rep in 1 2 3; do
  echo "rep $rep  load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
  $PY $MAIN/bench/torch_gpt.py --config tiny,small --steps $STEPS --threads 2 | sed "s/^/torch $rep /" >> $OUT/all
  $BIN bench train --config tiny,small --steps $STEPS 2>/dev/null | sed "s/^/llmlab $rep /" >> $OUT/all
  CANDLE_NUM_THREADS=2 LLMLAB_STOCK_BACKPROP=1 $BIN bench train --config tiny,small --steps $STEPS 2>/dev/null \
    | sed "s/^/llmlab-before $rep /" >> $OUT/all
  RAYON_NUM_THREADS=2 $BIN bench train --config tiny:split --steps $STEPS 2>/dev/null | sed "s/^/llmlab-split $rep /" >> $OUT/all
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$OUT/all" <<'PY'
import json, sys, statistics as st
rows = {}
for line in open(sys.argv[1]):
    who, rep, js = line.split(" ", 2)
    try: d = json.loads(js)
    except ValueError: continue
    cfg = d["config"].split(":")[0]
    rows.setdefault((who, cfg), []).append(d)
def med(who, cfg, key):
    v = [d[key] for d in rows.get((who, cfg), []) if key in d]
    return st.median(v) if v else float("nan")
print("| config | PyTorch train tok/s | llmlab | before (CANDLE=2, stock backprop) | **llmlab / PyTorch** | before / PyTorch | PyTorch fwd | llmlab fwd | **fwd ratio** | llmlab fwd / bwd / AdamW ms | before fwd / bwd ms |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for cfg in ["tiny", "small"]:
    tt, lt, bt = med("torch", cfg, "train_tok_s"), med("llmlab", cfg, "train_tok_s"), med("llmlab-before", cfg, "train_tok_s")
    tf, lf = med("torch", cfg, "fwd_tok_s"), med("llmlab", cfg, "fwd_tok_s")
    print(f"| {cfg} | {tt:,.0f} | {lt:,.0f} | {bt:,.0f} | **{lt/tt:.2f}×** | {bt/tt:.2f}× | {tf:,.0f} | {lf:,.0f} | **{lf/tf:.2f}×** | "
          f"{med('llmlab',cfg,'step_forward_ms'):.0f} / {med('llmlab',cfg,'step_backward_ms'):.0f} / {med('llmlab',cfg,'step_optimizer_ms'):.0f} | "
          f"{med('llmlab-before',cfg,'step_forward_ms'):.0f} / {med('llmlab-before',cfg,'step_backward_ms'):.0f} |")
w, s = med("llmlab-split", "tiny", "step_whole_ms"), med("llmlab-split", "tiny", "step_split_ms")
print(f"\ntiny, same process, alternating: whole-batch step {w:.0f} ms vs micro-batch per core {s:.0f} ms ({w/s:.2f}×)")
print("per-rep lines:", sys.argv[1])
PY
