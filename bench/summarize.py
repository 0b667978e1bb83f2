"""Medians of bench/tokenizers.sh results: one markdown row per (corpus, threads).
  python3 bench/summarize.py OUT.jsonl"""
import json, statistics, sys
from collections import defaultdict

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = defaultdict(lambda: defaultdict(list))
loads = defaultdict(list)
same = defaultdict(list)
for r in rows:
    key = (r["corpus"], r["run_threads"])
    if "uptime" in r:
        loads[key].append(r["uptime"].split(",")[0].strip())
    elif "identical_json_and_ids" in r:
        same[key].append(r["identical_json_and_ids"])
    else:
        by[key][r["peer"]].append(r)
med = lambda rs, k: statistics.median(x[k] for x in rs)
print("| corpus | threads | HF train s | ours train s | train × | HF MB/s | tiktoken MB/s | ours MB/s | × HF | × tiktoken | load (1 min) | identical |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
for key in sorted(by):
    p = by[key]
    hf, ours, tt = p["hf-tokenizers-py"], p["llmlab-bpe"], p["tiktoken"]
    ht, ot = med(hf, "train_s"), med(ours, "train_s")
    he, oe, te = med(hf, "encode_mb_s"), med(ours, "encode_mb_s"), med(tt, "encode_mb_s")
    print(f"| {key[0]} | {key[1]} | {ht:.2f} | {ot:.2f} | **{ht / ot:.1f}×** | {he:.2f} | {te:.2f} | {oe:.2f} "
          f"| **{oe / he:.1f}×** | **{oe / te:.1f}×** | {', '.join(loads[key])} | {'yes' if all(same[key]) and same[key] else 'NO'} |")
