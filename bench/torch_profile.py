"""torch.profiler over the training step of torch_gpt.py's model: the PyTorch half of the
side-by-side profile in docs/benchmarks.md ("Round 3 profile", issue 25). With --forward, over
the no-grad forward pass instead (the forward's op-by-op table; nn/examples/forward_ops.rs is
llmlab's half).

Usage: python torch_profile.py [tiny|small] [--threads 2] [--steps 5] [--forward]
Prints the per-op table (self CPU time), largest first.
"""
import argparse, importlib.util, os
import torch
import torch.nn.functional as F
from torch.profiler import profile, ProfilerActivity

here = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("torch_gpt", os.path.join(here, "torch_gpt.py"))
tg = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tg)

ap = argparse.ArgumentParser()
ap.add_argument("config", nargs="?", default="tiny")
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--steps", type=int, default=5)
ap.add_argument("--forward", action="store_true", help="profile the no-grad forward pass")
a = ap.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)
c = tg.CONFIGS[a.config]
m = tg.GPT(c)
opt = torch.optim.AdamW(m.parameters(), lr=3e-4)
x = torch.randint(0, c["vocab"], (c["batch"], c["ctx"] + 1))
inp, tgt = x[:, :-1], x[:, 1:]


def step():
    loss = F.cross_entropy(m(inp).view(-1, c["vocab"]), tgt.reshape(-1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


if a.forward:
    def step():
        with torch.no_grad():
            m(inp)


for _ in range(3):
    step()
with profile(activities=[ProfilerActivity.CPU]) as p:
    for _ in range(a.steps):
        step()
print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))
