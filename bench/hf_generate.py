"""Peer reference for `llmlab bench generate` (issue 25, item 5): greedy KV-cached generation
with Hugging Face transformers' `GPT2LMHeadModel.generate` on the reference shapes of
shared/bench/torch_gpt.py (GPT-2 layout: LayerNorm, GELU, learned positions, tied embeddings).

Both sides: random weights, `--prompt` random tokens per row, exactly `--new-tokens` new tokens
per row (min_new_tokens = max_new_tokens, no end-of-text stop), greedy, the median of `--reps`
timed calls after one warm-up call; tokens/s counts the new tokens of all rows.
Prints one JSON line per config and batch size.

Usage: python bench/hf_generate.py [--config tiny,small] [--batch 1,16] [--new-tokens 100] [--threads 2]
"""
import argparse, json, statistics, time

import torch
from transformers import GPT2Config, GPT2LMHeadModel

SHAPES = {  # n_layer, n_head, d_model, ctx, vocab (llmlab_train::benchmark::reference_shape)
    "tiny": (4, 4, 256, 128, 2048),
    "small": (6, 6, 384, 256, 4096),
    "gpt2": (12, 12, 768, 1024, 50304),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="tiny")
    ap.add_argument("--batch", default="1")
    ap.add_argument("--prompt", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=100)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    for name in a.config.split(","):
        n_layer, n_head, d, ctx, vocab = SHAPES[name]
        cfg = GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=d, n_positions=ctx, vocab_size=vocab,
                         resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                         bos_token_id=None, eos_token_id=None, pad_token_id=0)
        model = GPT2LMHeadModel(cfg).eval()
        params = sum(p.numel() for p in model.parameters())
        for rows in (int(b) for b in a.batch.split(",")):
            ids = torch.randint(0, vocab, (rows, a.prompt))
            mask = torch.ones_like(ids)
            times, generated = [], 0
            for rep in range(a.reps + 1):
                t0 = time.perf_counter()
                with torch.inference_mode():
                    out = model.generate(ids, attention_mask=mask, max_new_tokens=a.new_tokens,
                                         min_new_tokens=a.new_tokens, do_sample=False, use_cache=True)
                elapsed = time.perf_counter() - t0
                generated = (out.shape[1] - a.prompt) * rows
                if rep > 0:
                    times.append(elapsed)
            med = statistics.median(times)
            print(json.dumps({
                "peer": "transformers", "version": __import__("transformers").__version__,
                "torch": torch.__version__, "config": name, "threads": a.threads, "params": params,
                "batch": rows, "prompt": a.prompt, "new_tokens": a.new_tokens, "generated": generated,
                "gen_tok_s": round(generated / med, 1),
                "ms_per_step": round(med / a.new_tokens * 1e3, 2),
            }), flush=True)


if __name__ == "__main__":
    main()
