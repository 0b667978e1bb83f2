"""Peer check for docs/bert.md: Hugging Face BertForMaskedLM trained on the same wordpiece token
stream, with the same masking rule (15%, 80/10/10), optimiser (AdamW 0.9/0.95, wd 0.1, clip 1,
warmup + cosine to lr/10) and model size as llmlab's `mlm` trainer in scripts/bert_glue.rhai:
is the MLM loss plateau near the unigram entropy the architecture's, or llmlab's?"""
import sys, numpy as np, torch, random
from transformers import BertConfig, BertForMaskedLM
# Usage: python bench/hf_bert_mlm.py RUN/data STEPS LR  (RUN/data: the dataset an `mlm` run of
# scripts/bert_glue.rhai wrote: 600 kB stories, wordpiece 468 ids, [PAD]..[MASK] = 0..4)
data, steps, lr = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
torch.manual_seed(0); torch.set_num_threads(1)
train = np.fromfile(f"{data}/train.bin", dtype=np.uint16).astype(np.int64)
val = np.fromfile(f"{data}/val.bin", dtype=np.uint16).astype(np.int64)
V, PAD, CLS, SEP, MASK, EOT = 468, 0, 2, 3, 4, 3
special = {0, 1, 2, 3, 4}
cfg = BertConfig(vocab_size=V, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=256, max_position_embeddings=128)
m = BertForMaskedLM(cfg)
opt = torch.optim.AdamW(m.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
warm = steps // 10
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1, (s + 1) / warm) if s < warm else
    0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * (s - warm) / max(1, steps - warm))))
rng = random.Random(1)
def masked(rows):
    ids, labels = [], []
    for row in rows:
        row = [CLS] + list(row)
        inp, lab = list(row), [-100] * len(row)
        for j, t in enumerate(row):
            if t in special or rng.random() >= 0.15: continue
            lab[j] = t; u = rng.random()
            if u < 0.8: inp[j] = MASK
            elif u < 0.9: inp[j] = rng.choice([i for i in range(V) if i not in special])
        ids.append(inp); labels.append(lab)
    return torch.tensor(ids), torch.tensor(labels)
W = 127
vrows = [val[s:s + W] for s in range(0, len(val) - W, W)][:128]
vids, vlab = masked(vrows)
for step in range(1, steps + 1):
    m.train()
    ids, lab = masked([train[s:s + W] for s in (rng.randrange(len(train) - W) for _ in range(32))])
    loss = m(input_ids=ids, labels=lab).loss
    opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0); opt.step(); sched.step()
    if step % (steps // 4) == 0:
        m.eval()
        with torch.no_grad():
            logits = m(input_ids=vids).logits
            keep = vlab != -100
            vl = torch.nn.functional.cross_entropy(logits[keep], vlab[keep]).item()
            acc = (logits[keep].argmax(-1) == vlab[keep]).float().mean().item()
        print(f"step {step} val_loss {vl:.3f} masked_acc {acc:.3f}", flush=True)
