"""Medians over the rounds of bench/gemm_compare.sh: one row per product and thread count, the
three implementations' milliseconds and gemm's ratio to each (>1: gemm faster)."""
import collections, json, statistics, sys

ms = collections.defaultdict(list)
for line in open(sys.argv[1]):
    if line.startswith("{"):
        r = json.loads(line)
        ms[(r["threads"], r["model"], r["linear"], r["product"], r["m"], r["n"], r["k"], r["impl"])].append(r["ms"])
keys = sorted({k[:-1] for k in ms})
print("| threads | model | linear | product | m×n×k | gemm ms | MKL ms | OpenBLAS ms | MKL/gemm | OpenBLAS/gemm |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
tot = collections.defaultdict(float)
for k in keys:
    g, m, o = (statistics.median(ms[k + (i,)]) for i in ("gemm", "mkl", "openblas"))
    for i, v in (("gemm", g), ("mkl", m), ("openblas", o)):
        tot[(k[0], k[1], i)] += v
    print(f"| {k[0]} | {k[1]} | {k[2]} | {k[3]} | {k[4]}×{k[5]}×{k[6]} | {g:.3f} | {m:.3f} | {o:.3f} | {m/g:.2f} | {o/g:.2f} |")
print()
for t in (1, 2):
    for model in ("tiny", "small"):
        g, m, o = (tot[(t, model, i)] for i in ("gemm", "mkl", "openblas"))
        print(f"sum {model} threads {t}: gemm {g:.2f} ms, MKL {m:.2f} ({m/g:.2f}), OpenBLAS {o:.2f} ({o/g:.2f})")
