#!/usr/bin/env bash
# shellcheck disable=SC2317  # the step functions run through `step` and the EXIT trap
# The whole GPU session of issue 27 in one script: first light of the CUDA bundle, the kernel
# check, CPU-vs-CUDA quickstart curves, generation, and the benchmark against PyTorch eager and
# torch.compile, each step in its own `timeout`, in priority order, never stopping at a failure.
# Runs on the GPU machine (no Rust, no network; its python3 holds PyTorch), from the repo root:
#
#   bash scripts/gpu_session.sh [--part 1|2|all] [--only LETTERS] [--budget SECONDS]
#                                [--device cuda|cpu] [BUNDLE]
#
# Steps, in this order: (a) machine, bundle, CUDA libraries (always); (b) `llmlab plugins`;
# (c) `bench kernels` (fused ops vs composed on the device); (d) quickstart, first steps, on the
# device and on the CPU at the same seed, curves compared; (e) `bench generate` and
# scripts/quantize.rhai (q8_0/q4_0 generation); (f) `bench train` vs torch_gpt.py eager vs
# --compile, alternating, REPS each; (h) `LLMLAB_CUDA_KERNELS=0` A/B (before g: fixed cost);
# (g) profiles: torch.profiler of the eager peer, llmlab's kernels under nsys, else ncu;
# (i) the full quickstart's wall time on the device.
# BUNDLE: target-cuda/llmlab-cuda.tar.xz (default; unpacked to $WORK/bundle), or a directory
# holding `llmlab` and its libraries (an unpacked bundle, or target/release for the CPU dry run).
# --part 1: a-e (first light); 2: a, f-i (benchmark); all (default). --only LETTERS: a and these
# (`--only hg`). --budget: the seconds the whole run may take (default 480): a step starts only
# with time left and its timeout is cut to what is left, so the results and the archive exist
# before the device call's limit. --device cpu (or LLMLAB_GPU_SESSION_DEVICE=cpu) is the dry
# mode: every step on the CPU, for checking the script on the build machine with tiny sizes
# (GPU_SESSION_* below).
#
# Writes under $OUT (the device tool returns at most 8 files; everything else is in the archive):
#   session.log    every step: its command, stdout, stderr, exit status, seconds
#   summary.md     the step table and the numbers (benchmark medians, MFU, loss-curve check)
#   results.jsonl  every JSON line the steps printed, with "session_step" and "rep" added
#   logs.tar.gz    the work directory: per-step outputs, nvidia-smi, GPU samples, run dirs
# docs/cuda.md, "The GPU session": how to call it, the time each step takes, reading the MFU line.
set -uo pipefail

PART=all
ONLY=
BUDGET=${GPU_SESSION_BUDGET:-480}
DEVICE=${LLMLAB_GPU_SESSION_DEVICE:-cuda}
BUNDLE=target-cuda/llmlab-cuda.tar.xz
while (($#)); do
    case $1 in
        --part) PART=$2; shift 2 ;;
        --only) ONLY=$2; shift 2 ;;
        --budget) BUDGET=$2; shift 2 ;;
        --device) DEVICE=$2; shift 2 ;;
        -h | --help) sed -n '3,32p' "$0"; exit 0 ;;
        -*) echo "gpu_session: unknown option $1" >&2; exit 2 ;;
        *) BUNDLE=$1; shift ;;
    esac
done
case $PART in
    1) LETTERS=bcde ;;
    2) LETTERS=fhgi ;;
    all) LETTERS=bcdefhgi ;;
    *) echo "gpu_session: --part $PART: expected 1, 2 or all" >&2; exit 2 ;;
esac
if [[ -n $ONLY ]]; then
    [[ $ONLY =~ ^[b-i]+$ ]] || { echo "gpu_session: --only $ONLY: expected letters b to i" >&2; exit 2; }
    LETTERS=$ONLY
    PART=$ONLY
fi
want() { [[ $LETTERS == *$1* ]]; }
case $DEVICE in cpu | cuda) ;; *) echo "gpu_session: --device $DEVICE: expected cuda or cpu" >&2; exit 2 ;; esac
[[ $BUDGET =~ ^[0-9]+$ ]] || { echo "gpu_session: --budget $BUDGET: expected seconds" >&2; exit 2; }

# Sizes: the GPU defaults; the dry run sets small ones.
CONFIG=${GPU_SESSION_CONFIG:-gpt2}             # bench train / generate shape
KERNEL_SIZE=${GPU_SESSION_KERNEL_SIZE:-gpt2}   # bench kernels --size
STEPS=${GPU_SESSION_STEPS:-10}                 # bench train timed steps, both peers
REPS=${GPU_SESSION_REPS:-3}                    # alternating reps of the three peers
PRECISION=${GPU_SESSION_PRECISION:-bf16}
QS_STEPS=${GPU_SESSION_QS_STEPS:-40}           # quickstart steps of the CPU/CUDA curve check
QS_BYTES=${GPU_SESSION_QS_BYTES:-200000}
GEN_BATCH=${GPU_SESSION_GEN_BATCH:-1,8}
COMPILE=${GPU_SESSION_COMPILE:-1}              # 0: no torch.compile peer
FULL_QS=${GPU_SESSION_FULL_QS:-1}              # 0: no full-length quickstart at the end
PY=${GPU_SESSION_PYTHON:-python3}              # the python with torch (the machine's python3)

ROOT=$(pwd)
[[ -f scripts/quickstart.rhai && -f bench/torch_gpt.py ]] || {
    echo "gpu_session: run from the repository root (scripts/quickstart.rhai not found in $ROOT)" >&2
    exit 2
}
OUT=${OUT:-/tmp/gpu-session-out}
WORK=${GPU_SESSION_WORK:-/tmp/gpu-session}/part-$PART
rm -rf "$WORK"
mkdir -p "$OUT" "$WORK/steps" "$WORK/runs"
LOG=$OUT/session.log
: >"$LOG"
START=$(date +%s)
DEADLINE=$((START + BUDGET))
STEP_NO=0
printf 'step\tname\trc\tseconds\tstatus\tcommand\n' >"$WORK/steps.tsv"

note() { printf '%s\n' "$*" | tee -a "$LOG"; }

# The archive and the summary, refreshed after every step so a run cut short still returns them.
# Model weights and encoded corpora stay out (they are large and say nothing the logs do not).
pack() {
    "$PY_STDLIB" - "$WORK" "$OUT" "$PART" "$DEVICE" <<'PYEOF' >>"$WORK/summary.err" 2>&1
import csv, json, os, re, statistics, sys
work, out, part, device = sys.argv[1:5]
steps = list(csv.DictReader(open(os.path.join(work, "steps.tsv")), delimiter="\t"))

def json_lines(name):
    path = os.path.join(work, "steps", name + ".out")
    rows = []
    if os.path.exists(path):
        for line in open(path, errors="replace"):
            line = line.strip()
            if line.startswith("{"):
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    pass
    return rows

results = []
for s in steps:
    m = re.search(r"-rep(\d+)$", s["name"])
    for row in json_lines(s["name"]):
        row = dict(row, session_step=s["name"], rep=int(m.group(1)) if m else None)
        results.append(row)
with open(os.path.join(out, "results.jsonl"), "w") as f:
    for row in results:
        f.write(json.dumps(row) + "\n")

md = [f"# GPU session, part {part}, device {device}", ""]
info = os.path.join(work, "steps", "gpu.out")
if os.path.exists(info):
    md += ["```", open(info, errors="replace").read().strip()[:2000], "```", ""]
md += ["| # | step | exit | seconds | status |", "|---|---|---:|---:|---|"]
md += [f"| {s['step']} | {s['name']} | {s['rc']} | {s['seconds']} | {s['status']} |" for s in steps]

kernels = [r for r in results if r["session_step"] == "c-kernels" and "op" in r]
if kernels:
    bad = [f"{r['op']}/{r.get('dtype')}" for r in kernels if r.get("ok") is False]
    nok = [f"{r['op']}/{r.get('dtype')}" for r in kernels if r.get("kernel") is False]
    md += ["", f"**Kernel check**: {len(kernels)} lines, {len(bad)} outside tolerance"
           + (f" ({', '.join(bad)})" if bad else "") + (f"; no kernel: {', '.join(nok)}" if nok else "")]

qs = os.path.join(work, "quickstart-compare.json")
if os.path.exists(qs):
    q = json.load(open(qs))
    md += ["", f"**Quickstart curves** (CPU vs {device}, {q['steps']} common steps): max |Δloss| "
           f"{q['max_abs']:.3g} (first 10 steps {q['max_abs_10']:.3g}), max relative {q['max_rel']:.3g}; "
           f"val loss {q['val_a']} vs {q['val_b']}; verdict: **{q['verdict']}**"]

gen = [r for r in results if r["session_step"].startswith("e-generate")]
for r in gen:
    md.append(f"\n**Generation** {r.get('config')} batch {r.get('batch')}: {r.get('gen_tok_s')} tokens/s")
qlog = os.path.join(work, "steps", "e-quantize.out")
if os.path.exists(qlog):
    lines = [l.strip() for l in open(qlog, errors="replace") if "tokens/s" in l]
    if lines:
        md += ["", "**Quantized generation** (scripts/quantize.rhai):", ""] + [f"    {l}" for l in lines]

bench = [r for r in results if r["session_step"].startswith("f-") or r["session_step"].startswith("h-")]
if bench:
    md += ["", "**Benchmark** (medians over reps; mfu = 6·N·tokens/s / peak, mfu_attn adds 12·L·d·T):", "",
           "| step | peer | config | precision | reps | train tok/s | step ms | MFU | MFU+attn | fwd tok/s | fwd/bwd/opt ms |",
           "|---|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    groups = {}
    for r in bench:
        key = (re.sub(r"-(llmlab|eager|compile)-rep\d+$", "", r["session_step"]), r.get("peer"), r.get("config"))
        groups.setdefault(key, []).append(r)
    med = lambda rs, k: statistics.median(r[k] for r in rs) if all(isinstance(r.get(k), (int, float)) for r in rs) else None
    fmt = lambda v, p="{:.1f}": "–" if v is None else p.format(v)
    train = {}
    for (step, peer, config), rs in groups.items():
        t = med(rs, "train_tok_s")
        train[(step, peer)] = t
        phases = "/".join(fmt(med(rs, k)) for k in ("step_forward_ms", "step_backward_ms", "step_optimizer_ms"))
        md.append(f"| {step} | {peer} | {config} | {rs[0].get('precision', 'f32')} | {len(rs)} | {fmt(t)} | "
                  f"{fmt(med(rs, 'step_ms'), '{:.2f}')} | {fmt(med(rs, 'mfu'), '{:.1%}')} | "
                  f"{fmt(med(rs, 'mfu_attn'), '{:.1%}')} | {fmt(med(rs, 'fwd_tok_s'))} | {phases if 'llmlab' == peer else '–'} |")
    ours = train.get(("f-bench", "llmlab"))
    for peer in ("pytorch-eager", "pytorch-compile"):
        theirs = train.get(("f-bench", peer))
        if ours and theirs:
            md.append(f"\nllmlab / {peer}: **{ours / theirs:.2f}×** train tokens/s")
    off = train.get(("h-ab-composed", "llmlab"))
    if ours and off:
        md.append(f"\nLLMLAB_CUDA_KERNELS=0 (composed ops): {off:.1f} tok/s; the kernels give **{ours / off:.2f}×**")

prof = os.path.join(work, "profile-kernels.md")
if os.path.exists(prof):
    md += ["", open(prof).read()]
with open(os.path.join(out, "summary.md"), "w") as f:
    f.write("\n".join(md) + "\n")
PYEOF
    tar -czf "$OUT/logs.tar.gz" -C "$(dirname "$WORK")" --exclude='*.safetensors' --exclude='*.gguf' \
        --exclude='runs/*/data' --exclude='bundle' "$(basename "$WORK")" 2>>"$WORK/summary.err"
}

# step NAME TIMEOUT CMD...: runs CMD with the time that is left (at most TIMEOUT), its stdout and
# stderr in $WORK/steps/NAME.{out,err} and in the session log; records exit status and seconds.
# Exit 124/137 is a timeout; a step that finds under 15 s left is skipped.
step() {
    local name=$1 limit=$2
    shift 2
    STEP_NO=$((STEP_NO + 1))
    local now left status rc t0 t1 secs
    now=$(date +%s)
    left=$((DEADLINE - now - 5))
    local cmd
    cmd=$(printf '%q ' "$@")
    {
        printf '\n==== [%d] %s  (%s, %ds left of the budget)\n' "$STEP_NO" "$name" "$(date -u +%T)" "$((DEADLINE - now))"
        printf '$ %s\n' "$cmd"
    } >>"$LOG"
    if ((left < 15)); then
        printf 'skipped: %ds of the budget left\n' "$left" >>"$LOG"
        printf '%d\t%s\t-\t0\tskipped (budget)\t%s\n' "$STEP_NO" "$name" "$cmd" >>"$WORK/steps.tsv"
        echo "[$STEP_NO] $name: skipped (budget)"
        return 0
    fi
    ((limit > left)) && limit=$left
    t0=$(date +%s.%N)
    if declare -F "$1" >/dev/null; then # a function of this script: through bash (exported below)
        timeout -k 10 "$limit" bash -c '"$@"' "$1" "$@" >"$WORK/steps/$name.out" 2>"$WORK/steps/$name.err"
    else
        timeout -k 10 "$limit" "$@" >"$WORK/steps/$name.out" 2>"$WORK/steps/$name.err"
    fi
    rc=$?
    t1=$(date +%s.%N)
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
    case $rc in
        0) status=ok ;;
        124 | 137) status="TIMEOUT after ${limit}s" ;;
        *) status="FAILED (exit $rc)" ;;
    esac
    {
        echo "--- stdout"
        cat "$WORK/steps/$name.out"
        echo "--- stderr"
        tail -c 200000 "$WORK/steps/$name.err"
        printf -- '--- exit %d, %ss: %s\n' "$rc" "$secs" "$status"
    } >>"$LOG"
    printf '%d\t%s\t%d\t%s\t%s\t%s\n' "$STEP_NO" "$name" "$rc" "$secs" "$status" "$cmd" >>"$WORK/steps.tsv"
    echo "[$STEP_NO] $name: $status, ${secs}s"
    # The device tool shows the last 12,000 characters: the kernel check's lines stay in the files.
    [[ $name == c-* ]] || grep '^{' "$WORK/steps/$name.out" | cut -c1-400
    [[ $rc == 0 ]] || tail -n 5 "$WORK/steps/$name.err" | cut -c1-300
    pack
    return 0
}

# --- (a) the machine, the bundle, the CUDA libraries (every part: part 2 may land on a fresh machine)
PY_STDLIB=python3
command -v python3 >/dev/null || PY_STDLIB=$PY
note "gpu_session: part $PART, device $DEVICE, budget ${BUDGET}s, bundle $BUNDLE, started $(date -u +%FT%TZ) on $(hostname)"
note "settings: config=$CONFIG kernel_size=$KERNEL_SIZE steps=$STEPS reps=$REPS precision=$PRECISION quickstart=$QS_STEPS steps/$QS_BYTES bytes python=$PY"

unpack() { # unpack ARCHIVE DIR: tar's xz filter needs the xz program; Python's tarfile does not
    mkdir -p "$2"
    if command -v xz >/dev/null; then
        tar -xJf "$1" -C "$2"
    else
        "$PY_STDLIB" -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' "$1" "$2"
    fi
}
export -f unpack
export PY_STDLIB
if [[ -f $BUNDLE ]]; then
    step a-unpack 120 unpack "$BUNDLE" "$WORK/bundle"
    BIN_DIR=$WORK/bundle
elif [[ -d $BUNDLE && -f $BUNDLE/llmlab-cuda.tar.xz && ! -x $BUNDLE/llmlab ]]; then
    step a-unpack 120 unpack "$BUNDLE/llmlab-cuda.tar.xz" "$WORK/bundle"
    BIN_DIR=$WORK/bundle
else
    BIN_DIR=$BUNDLE
fi
BIN_DIR=$(cd "$BIN_DIR" 2>/dev/null && pwd || echo "$BIN_DIR")
LLMLAB=$BIN_DIR/llmlab
[[ -x $LLMLAB ]] || note "gpu_session: no executable llmlab in $BIN_DIR (the steps that need it will fail)"

# cudarc dlopens libcuda.so.1 (the driver), libcublas.so.13, libcublasLt.so.13 and libcurand.so.10
# (docs/cuda.md "Running on a GPU machine"): take the last three from the installed PyTorch's pip
# wheels (nvidia/cu13/lib), else wherever they are; the driver's folder only if ldconfig lacks it.
CUDA_LIBS=$("$PY" -c 'import nvidia, os
for p in nvidia.__path__:
    d = os.path.join(p, "cu13", "lib")
    if os.path.exists(os.path.join(d, "libcublasLt.so.13")): print(d); break' 2>/dev/null)
if [[ -z $CUDA_LIBS ]]; then
    found=$(find / -xdev \( -path /proc -o -path /sys \) -prune -o -name libcublasLt.so.13 -print -quit 2>/dev/null)
    [[ -n $found ]] && CUDA_LIBS=$(dirname "$found")
fi
EXTRA=$CUDA_LIBS
if ! ldconfig -p 2>/dev/null | grep -q 'libcuda\.so\.1'; then
    for d in /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/lib/x86_64-linux-gnu /usr/lib64; do
        [[ -e $d/libcuda.so.1 ]] && EXTRA=${EXTRA:+$EXTRA:}$d && break
    done
fi
export LD_LIBRARY_PATH=${EXTRA}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
note "cuBLAS/cuRAND from: ${CUDA_LIBS:-NOT FOUND}; LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
export PYTHONUNBUFFERED=1

{
    echo "date: $(date -u +%FT%TZ)  host: $(hostname)  cores: $(nproc)  $(free -g 2>/dev/null | awk '/Mem:/ { print "memory: " $2 " GiB" }')"
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,power.limit --format=csv,noheader
    else
        echo "nvidia-smi: not present"
    fi
    "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())' 2>&1 | tail -1
    echo "llmlab: $("$LLMLAB" --version 2>&1 | head -1)"
} >"$WORK/steps/gpu.out" 2>&1
step a-nvidia-smi 30 bash -c 'command -v nvidia-smi >/dev/null && { nvidia-smi; nvidia-smi -q; } || echo "nvidia-smi: not present"'
step a-ldd 30 bash -c "ldd '$LLMLAB' '$BIN_DIR/libllmlab_plugin_api.so'; ls -la '$BIN_DIR'; cat '$WORK/steps/gpu.out'"
# GPU samples every second for the whole session (clocks, power, utilisation during each step).
SAMPLER=
if [[ $DEVICE == cuda ]] && command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=timestamp,utilization.gpu,utilization.memory,memory.used,clocks.sm,clocks.mem,power.draw,temperature.gpu \
        --format=csv -l 1 >"$WORK/gpu-samples.csv" 2>&1 &
    SAMPLER=$!
fi
finish() {
    [[ -n $SAMPLER ]] && kill "$SAMPLER" 2>/dev/null
    note "gpu_session: done at $(date -u +%FT%TZ), $(($(date +%s) - START))s"
    pack
    sed -n '/^| # | step/,$p' "$OUT/summary.md"
}
trap finish EXIT

# A bundle built before `bench train --precision` existed cannot take it: then both peers run f32
# (a like-for-like line, flagged in the log) rather than no benchmark at all.
if ! "$LLMLAB" bench train --help 2>/dev/null | grep -q -- '--precision'; then
    note "WARNING: this bundle's bench train has no --precision (rebuild it: scripts/build-cuda.sh); both peers run f32"
    PRECISION=f32
    PRECISION_FLAG=
else
    PRECISION_FLAG=--precision=$PRECISION
fi
run_llmlab() { "$LLMLAB" --device "$DEVICE" "$@"; }
llmlab_train() { "$LLMLAB" --device "$DEVICE" bench train --config "$CONFIG" --steps "$STEPS" ${PRECISION_FLAG:+"$PRECISION_FLAG"} "$@"; }
torch_peer() { "$PY" bench/torch_gpt.py --device "$DEVICE" --config "$CONFIG" --steps "$STEPS" --precision "$PRECISION" "$@"; }

# Compares two quickstart runs' training losses step by step (same seed, same data).
compare_curves() {
    "$PY_STDLIB" - "$1" "$2" "$WORK/quickstart-compare.json" <<'PYEOF'
import json, sys
def read(path):
    loss, val = {}, None
    for line in open(path):
        r = json.loads(line)
        if r.get("loss") is not None:
            loss[r["step"]] = r["loss"]
        if r.get("val_loss") is not None:
            val = r["val_loss"]
    return loss, val
(a, va), (b, vb) = read(sys.argv[1]), read(sys.argv[2])
common = sorted(set(a) & set(b))
if not common:
    sys.exit(f"no common steps: {len(a)} and {len(b)} loss values")
diff = [abs(a[s] - b[s]) for s in common]
rel = [abs(a[s] - b[s]) / max(abs(a[s]), 1e-12) for s in common]
first = diff[:10]
# Float noise: different summation orders start ~1e-6 apart and, on a chaotic 40-step run, may
# drift to ~1e-2; a wrong kernel is off from step 1.
verdict = "match" if rel[0] < 1e-4 and max(rel[:10]) < 1e-2 else "DIFFERENT"
out = dict(steps=len(common), max_abs=max(diff), max_abs_10=max(first), max_rel=max(rel),
           first_step_rel=rel[0], val_a=va, val_b=vb, verdict=verdict,
           table=[[s, a[s], b[s], a[s] - b[s]] for s in common])
json.dump(out, open(sys.argv[3], "w"), indent=1)
print(f"steps {len(common)}  step-1 relative {rel[0]:.3g}  max |diff| first 10 {max(first):.3g}  overall {max(diff):.3g}  val {va} vs {vb}: {verdict}")
for s, x, y, d in out["table"]:
    print(f"{s:5d} {x:.6f} {y:.6f} {d:+.3g}")
sys.exit(0 if verdict == "match" else 1)
PYEOF
}

qs_run() { # qs_run DEVICE NAME STEPS BYTES: the quickstart into $WORK/runs/NAME
    "$LLMLAB" --device "$1" run scripts/quickstart.rhai --set steps="$3" --set bytes="$4" \
        --set runs_dir="$WORK/runs" --set name="$2"
}
export -f run_llmlab llmlab_train torch_peer compare_curves qs_run
export LLMLAB DEVICE WORK CONFIG STEPS PRECISION PRECISION_FLAG PY PY_STDLIB

# Each step's timeout is several times its expected time on an H200 (gpu-session-doc.md).
if want b; then
    # --- (b) plugins load; (c) every fused op against its composed reference on the device
    step b-plugins 60 "$LLMLAB" plugins
fi
if want c; then
    step c-kernels 120 run_llmlab bench kernels --size "$KERNEL_SIZE" --dtype f32,bf16 --reps 5
fi
if want d; then
    # --- (d) quickstart, first steps, same seed on both devices; then the curves side by side
    step d-quickstart-device 120 qs_run "$DEVICE" qs-device "$QS_STEPS" "$QS_BYTES"
    step d-quickstart-cpu 120 qs_run cpu qs-cpu "$QS_STEPS" "$QS_BYTES"
    step d-compare-curves 30 compare_curves "$WORK/runs/qs-cpu/metrics.jsonl" "$WORK/runs/qs-device/metrics.jsonl"
fi
if want e; then
    # --- (e) KV-cached generation, then quantization (q8_0, q4_0) with quantized generation
    step e-generate 90 run_llmlab bench generate --config "$CONFIG" --batch "$GEN_BATCH"
    step e-quantize 150 run_llmlab run scripts/quantize.rhai --set steps=20 --set bytes="$QS_BYTES" \
        --set windows=8 --set runs_dir="$WORK/runs" --set name=quantize
fi

if want f; then
    # --- (f) the benchmark: llmlab, PyTorch eager, torch.compile, alternating, REPS each
    for rep in $(seq 1 "$REPS"); do
        step "f-bench-llmlab-rep$rep" 180 llmlab_train
        step "f-bench-eager-rep$rep" 120 torch_peer
        if [[ $COMPILE == 1 ]]; then
            # The first compiles from nothing; later reps hit inductor's cache in /tmp.
            step "f-bench-compile-rep$rep" $((rep == 1 ? 240 : 150)) torch_peer --compile
        fi
    done
fi
if want h; then
    # --- (h) before (g): one fixed-cost run; the composed ops instead of the CUDA kernels
    step h-ab-composed 180 env LLMLAB_CUDA_KERNELS=0 bash -c '"$@"' llmlab_train llmlab_train
fi
if want g; then
    # --- (g) where the time goes: PyTorch's op table, then llmlab's kernels (nsys, else ncu)
    step g-profile-torch 120 torch_peer --profile-steps 3
    NCU=$(command -v ncu)
    for candidate in /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu; do
        [[ -z $NCU && -x $candidate ]] && NCU=$candidate
    done
    if command -v nsys >/dev/null; then
        step g-profile-nsys 240 nsys profile --force-overwrite true --stats=true -o "$WORK/llmlab-train" \
            "$LLMLAB" --device "$DEVICE" bench train --config "$CONFIG" --steps 2 ${PRECISION_FLAG:+"$PRECISION_FLAG"}
    elif [[ $DEVICE == cuda && -n $NCU ]]; then
        # One metric (a single pass, no replay), clocks as they are; a window of launches after the
        # model's setup and most of the warm-up (~2000 launches a step is an estimate).
        step g-profile-ncu 240 "$NCU" --clock-control none --cache-control none --metrics gpu__time_duration.sum \
            --csv --print-units base --launch-skip "${GPU_SESSION_NCU_SKIP:-4000}" \
            --launch-count "${GPU_SESSION_NCU_COUNT:-3000}" --log-file "$WORK/ncu.csv" \
            "$LLMLAB" --device "$DEVICE" bench train --config "$CONFIG" --steps 1 ${PRECISION_FLAG:+"$PRECISION_FLAG"}
        step g-profile-ncu-table 30 "$PY_STDLIB" - "$WORK/ncu.csv" "$WORK/profile-kernels.md" <<'PYEOF'
import csv, sys
rows = [r for r in csv.DictReader(l for l in open(sys.argv[1]) if l.startswith('"'))
        if r.get("Metric Name") == "gpu__time_duration.sum"]
scale = {"nsecond": 1e-6, "ns": 1e-6, "usecond": 1e-3, "us": 1e-3, "msecond": 1.0, "ms": 1.0, "second": 1e3, "s": 1e3}
by = {}
for r in rows:
    ms = float(r["Metric Value"].replace(",", "")) * scale.get(r.get("Metric Unit", "nsecond"), 1e-6)
    name = r["Kernel Name"].split("(")[0][:80]
    t, n = by.get(name, (0.0, 0))
    by[name] = (t + ms, n + 1)
total = sum(t for t, _ in by.values())
lines = [f"**llmlab kernels** (ncu, {len(rows)} launches, {total:.1f} ms of GPU time):", "",
         "| kernel | launches | ms | share |", "|---|---:|---:|---:|"]
for name, (t, n) in sorted(by.items(), key=lambda kv: -kv[1][0])[:25]:
    lines.append(f"| `{name}` | {n} | {t:.2f} | {t / total:.1%} |")
open(sys.argv[2], "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PYEOF
    else
        note "g: no nsys and no ncu: the per-phase timings of the bench train lines are the profile"
    fi
fi
if want i && [[ $FULL_QS == 1 ]]; then
    # --- (i) the quickstart at full length on the device: its wall time
    step i-quickstart-full 300 qs_run "$DEVICE" qs-full 1100 3000000
fi
exit 0
