"""Peer reference: a nanoGPT-shaped decoder trained with PyTorch eager on CPU (or CUDA).

Prints one JSON line per config: training tokens/s (forward+backward+AdamW step)
and forward-only tokens/s, measured after warm-up. Same shapes as bench/configs.
Usage: python torch_gpt.py [--device cpu|cuda] [--config tiny|small|gpt2|tiny_moe] [--steps N]
                           [--precision f32|bf16|f16] [--compile] [--peak-tflops T]

Copy of shared/bench/torch_gpt.py with one addition (issue 17): `tiny_moe`, the `tiny` shape
with every MLP replaced by a Mixture of Experts (8 experts, top-2, each expert half the dense
MLP's width, so the active parameters per token equal the dense model's), written as Hugging
Face's Mixtral sparse block is: softmax router, top-k, renormalised weights, a loop over experts
that gathers each expert's tokens and scatters them back with index_add_, and the Switch
auxiliary load-balancing loss (coefficient 0.01). `llmlab bench train --config tiny:moe` is ours.

Issue 27 (the GPU benchmark): `--precision bf16` runs forward and loss under
torch.autocast(bfloat16) with the weights and AdamW state in f32, as llmlab's `precision: "bf16"`
does (docs/cuda.md "Mixed precision"); `f16` adds torch.amp.GradScaler with llmlab's defaults
(scale 65536, doubled after 1000 good steps). The forward-only figure stays f32 on both peers
(llmlab's inference pass has no autocast). `--compile` wraps the model in torch.compile (default
mode, the second peer; compilation happens in the warm-up steps and is not timed, the no-grad
forward compiles its own graph). On CUDA every timer waits for the device
(torch.cuda.synchronize) and the line adds `step_ms`, `gpu`, `peak_tflops` and `mfu`:
6·N·(train tokens/s) over `--peak-tflops` (default 989, H100/H200 SXM dense bf16), N = `params`,
every parameter counted once (tied embedding once, position table and norms included: the same
count as llmlab's `params`), and `mfu_attn`, which adds PaLM's attention term 12·n_layer·d_model·ctx
per token. A fraction, not %. `--profile-steps N` prints torch.profiler's op table of N more
training steps to stderr. Lines with the defaults on CPU are exactly what they were before.
"""
import argparse, contextlib, json, math, sys, time
import torch
import torch.nn as nn
import torch.nn.functional as F

CONFIGS = {
    "tiny":  dict(n_layer=4, n_head=4, d_model=256, ctx=128, vocab=2048, batch=16),
    "small": dict(n_layer=6, n_head=6, d_model=384, ctx=256, vocab=4096, batch=8),
    "gpt2":  dict(n_layer=12, n_head=12, d_model=768, ctx=1024, vocab=50304, batch=8),
    "tiny_moe": dict(n_layer=4, n_head=4, d_model=256, ctx=128, vocab=2048, batch=16,
                     moe=dict(experts=8, top_k=2, expert_mult=2, aux_coef=0.01)),
}

class MoE(nn.Module):
    """Mixtral-style sparse MoE feed-forward (HF MixtralSparseMoeBlock, GELU experts)."""
    def __init__(s, d, experts, top_k, expert_mult, aux_coef):
        super().__init__()
        s.experts, s.top_k, s.aux_coef = experts, top_k, aux_coef
        s.router = nn.Linear(d, experts, bias=False)
        h = int(expert_mult * d)
        s.fc = nn.ModuleList(nn.Linear(d, h) for _ in range(experts))
        s.out = nn.ModuleList(nn.Linear(h, d) for _ in range(experts))
        s.aux = None
    def forward(s, x):
        B, T, C = x.shape
        flat = x.reshape(-1, C)
        probs = F.softmax(s.router(flat).float(), dim=-1)
        weights, chosen = torch.topk(probs, s.top_k, dim=-1)
        weights = (weights / weights.sum(dim=-1, keepdim=True)).to(flat.dtype)
        out = torch.zeros_like(flat)
        mask = F.one_hot(chosen, s.experts).permute(2, 1, 0)  # (experts, top_k, tokens)
        for e in range(s.experts):
            slot, token = torch.where(mask[e])
            if token.numel() == 0:
                continue
            y = s.out[e](F.gelu(s.fc[e](flat[token])))
            out.index_add_(0, token, y * weights[token, slot, None])
        f = mask.sum(dim=(1, 2)).float() / (flat.shape[0] * s.top_k)
        s.aux = s.aux_coef * s.experts * (f * probs.mean(dim=0)).sum()
        return out.view(B, T, C)

class Block(nn.Module):
    def __init__(s, d, h, moe=None):
        super().__init__()
        s.h = h
        s.ln1 = nn.LayerNorm(d); s.qkv = nn.Linear(d, 3 * d); s.proj = nn.Linear(d, d)
        s.ln2 = nn.LayerNorm(d)
        s.moe = MoE(d, **moe) if moe else None
        if not moe:
            s.fc = nn.Linear(d, 4 * d); s.out = nn.Linear(4 * d, d)
    def forward(s, x):
        B, T, C = x.shape
        q, k, v = s.qkv(s.ln1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, s.h, C // s.h).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + s.proj(y.transpose(1, 2).contiguous().view(B, T, C))
        if s.moe is not None:
            return x + s.moe(s.ln2(x))
        return x + s.out(F.gelu(s.fc(s.ln2(x))))

class GPT(nn.Module):
    def __init__(s, c):
        super().__init__()
        s.tok = nn.Embedding(c["vocab"], c["d_model"]); s.pos = nn.Embedding(c["ctx"], c["d_model"])
        s.blocks = nn.ModuleList(Block(c["d_model"], c["n_head"], c.get("moe")) for _ in range(c["n_layer"]))
        s.ln = nn.LayerNorm(c["d_model"]); s.head = nn.Linear(c["d_model"], c["vocab"], bias=False)
        s.head.weight = s.tok.weight
        for mod in s.modules():
            if isinstance(mod, (nn.Linear, nn.Embedding)):
                nn.init.normal_(mod.weight, std=0.02)
            if isinstance(mod, nn.Linear) and mod.bias is not None:
                nn.init.zeros_(mod.bias)
    def forward(s, idx):
        x = s.tok(idx) + s.pos(torch.arange(idx.shape[1], device=idx.device))
        for b in s.blocks: x = b(x)
        return s.head(s.ln(x))

H100_BF16_PEAK_TFLOPS = 989.0

def autocast(device, precision):
    """The context of a forward pass: autocast to bf16/f16, or nothing for f32."""
    if precision == "f32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)

def profile(train_step, sync, steps, cuda):
    """torch.profiler over `steps` more training steps; the op table (device time on a GPU, CPU
    time otherwise), largest first, goes to stderr so the JSON line stays alone on stdout."""
    from torch.profiler import profile as torch_profile, ProfilerActivity
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with torch_profile(activities=activities) as p:
        for _ in range(steps): train_step()
        sync()
    # torch >= 2.4 names device time "device"; older versions "cuda".
    for key in (["self_device_time_total", "self_cuda_time_total"] if cuda else ["self_cpu_time_total"]):
        try:
            table = p.key_averages().table(sort_by=key, row_limit=40)
            break
        except (AttributeError, KeyError, ValueError):
            continue
    print(f"== torch.profiler: {steps} training steps, sorted by {key}", file=sys.stderr)
    print(table, file=sys.stderr, flush=True)

def run(name, device, steps, threads, precision="f32", compiled=False, peak_tflops=H100_BF16_PEAK_TFLOPS,
        profile_steps=0):
    c = CONFIGS[name]
    torch.manual_seed(0)
    m = GPT(c).to(device)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-4)
    # The compiled module shares the parameters; `m` keeps the MoE blocks' aux losses readable.
    f = torch.compile(m) if compiled else m
    scaler = torch.amp.GradScaler(torch.device(device).type, init_scale=65536.0, growth_interval=1000,
                                  enabled=precision == "f16")
    B, T = c["batch"], c["ctx"]
    x = torch.randint(0, c["vocab"], (B, T + 1), device=device)
    inp, tgt = x[:, :-1], x[:, 1:]
    cuda = torch.device(device).type == "cuda"
    sync = (lambda: torch.cuda.synchronize()) if cuda else (lambda: None)
    def train_step():
        with autocast(device, precision):
            loss = F.cross_entropy(f(inp).view(-1, c["vocab"]).float(), tgt.reshape(-1))
            loss = loss + sum(b.moe.aux for b in m.blocks if b.moe is not None)
        opt.zero_grad(set_to_none=True); scaler.scale(loss).backward(); scaler.step(opt); scaler.update()
        return loss
    for _ in range(3): train_step()
    sync(); t0 = time.perf_counter()
    for _ in range(steps): loss = train_step()
    sync(); train_s = (time.perf_counter() - t0) / steps
    if profile_steps:
        profile(train_step, sync, profile_steps, cuda)
    with torch.no_grad():
        for _ in range(2): f(inp)
        sync(); t0 = time.perf_counter()
        for _ in range(steps): f(inp)
        sync(); fwd_s = (time.perf_counter() - t0) / steps
    params = sum(p.numel() for p in m.parameters())
    peer = "pytorch-compile" if compiled else "pytorch-eager"
    line = dict(peer=peer, torch=torch.__version__, device=device, threads=threads,
                config=name, params=params, train_tok_s=round(B * T / train_s, 1),
                fwd_tok_s=round(B * T / fwd_s, 1), final_loss=round(float(loss.detach()), 4))
    if precision != "f32" or cuda:
        line["precision"] = precision
    if cuda:
        flops = 6 * params
        attention = 12 * c["n_layer"] * c["d_model"] * T
        tok_s = B * T / train_s
        line.update(gpu=torch.cuda.get_device_name(), step_ms=round(train_s * 1e3, 2),
                    peak_tflops=peak_tflops, mfu=round(flops * tok_s / (peak_tflops * 1e12), 4),
                    mfu_attn=round((flops + attention) * tok_s / (peak_tflops * 1e12), 4))
    print(json.dumps(line), flush=True)

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu"); ap.add_argument("--config", default="tiny")
    ap.add_argument("--steps", type=int, default=10); ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", choices=["f32", "bf16", "f16"], default="f32",
                    help="autocast dtype of forward + loss; weights and AdamW stay f32")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (the second peer)")
    ap.add_argument("--peak-tflops", type=float, default=H100_BF16_PEAK_TFLOPS,
                    help="the GPU's dense bf16 peak, the MFU's denominator (CUDA only)")
    ap.add_argument("--profile-steps", type=int, default=0,
                    help="after the timed steps, profile this many more with torch.profiler (table on stderr)")
    a = ap.parse_args()
    if a.peak_tflops <= 0:
        ap.error("--peak-tflops must be positive")
    torch.set_num_threads(a.threads)
    for name in a.config.split(","):
        run(name, a.device, a.steps, a.threads, a.precision, a.compile, a.peak_tflops, a.profile_steps)
