# transformers BertForSequenceClassification on the pair probe (word in set?), the size, optimiser and schedule of probe.rhai.
# Run from this folder after make_probe.py: python hf_probe.py  (torch, transformers)
import json, torch, math, sys
from transformers import BertConfig, BertForSequenceClassification
torch.manual_seed(1); torch.set_num_threads(1)
rows = {s: [json.loads(l) for l in open(f"{s}.jsonl")] for s in ["train", "val"]}
vocab = {"[PAD]": 0, "[CLS]": 1, "[SEP]": 2, ".": 3}
def ids(t):
    out = []
    for w in t.replace(".", " .").split():
        out.append(vocab.setdefault(w, len(vocab)))
    return out
def enc(r):
    a, b = ids(r["text"]), ids(r["text_pair"])
    x = [1] + a + [2] + b + [2]
    tt = [0] * (len(a) + 2) + [1] * (len(b) + 1)
    return x, tt, int(r["label"] == "yes")
data = {s: [enc(r) for r in rows[s]] for s in rows}
L = max(len(x) for s in data for x, _, _ in data[s])
def batch(ex):
    x = torch.tensor([e[0] + [0] * (L - len(e[0])) for e in ex])
    tt = torch.tensor([e[1] + [0] * (L - len(e[1])) for e in ex])
    m = (x != 0).long()
    y = torch.tensor([e[2] for e in ex])
    return x, tt, m, y
norm = sys.argv[1] if len(sys.argv) > 1 else "post"
cfg = BertConfig(vocab_size=64, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
                 max_position_embeddings=128, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=2)
model = BertForSequenceClassification(cfg)
steps, lr, bs = 2000, 1e-3, 32
opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
warm = steps // 10
def lr_at(s):
    if s < warm: return lr * (s + 1) / warm
    p = (s - warm) / max(1, steps - warm)
    return lr / 10 + 0.5 * (lr - lr / 10) * (1 + math.cos(math.pi * p))
g = torch.Generator().manual_seed(1)
train = data["train"]
for s in range(steps):
    for pg in opt.param_groups: pg["lr"] = lr_at(s)
    idx = torch.randint(len(train), (bs,), generator=g)
    x, tt, m, y = batch([train[i] for i in idx])
    loss = model(input_ids=x, token_type_ids=tt, attention_mask=m, labels=y).loss
    opt.zero_grad(); loss.backward(); opt.step()
    if (s + 1) % 250 == 0:
        with torch.no_grad():
            x, tt, m, y = batch(data["val"])
            acc = (model(input_ids=x, token_type_ids=tt, attention_mask=m).logits.argmax(-1) == y).float().mean().item()
        print(f"step {s+1} loss {loss.item():.4f} val_acc {acc:.4f}", flush=True)
