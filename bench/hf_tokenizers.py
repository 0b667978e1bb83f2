"""Peer: Hugging Face tokenizers (Python binding over the Rust crate), byte-level BPE.

Trains a byte-level BPE of VOCAB on the lines of CORPUS (min_frequency 0, no special tokens),
then encodes every line in batches of 4096. Lines are split on "\\n" only, newline kept, exactly
as examples/bench_bpe.rs splits them. Threads: RAYON_NUM_THREADS (the crate's pool).
Prints one JSON line: train_s, encode_mb_s, tokens.

  python hf_tokenizers.py CORPUS [--vocab 8192] [--save tokenizer.json] [--ids-out ids.u32]
"""
import argparse, array, json, os, sys, time
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers

ap = argparse.ArgumentParser()
ap.add_argument("corpus")
ap.add_argument("--vocab", type=int, default=8192)
ap.add_argument("--save")
ap.add_argument("--ids-out")
a = ap.parse_args()

text = open(a.corpus, encoding="utf-8", errors="replace").read()
parts = text.split("\n")
lines = [p + "\n" for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])
mb = len(text.encode()) / 1e6

tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
tr = trainers.BpeTrainer(vocab_size=a.vocab, min_frequency=0, show_progress=False,
                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
t0 = time.perf_counter()
tok.train_from_iterator(lines, trainer=tr)
train_s = time.perf_counter() - t0

t0 = time.perf_counter()
encoded = []
for i in range(0, len(lines), 4096):
    encoded.extend(tok.encode_batch_fast(lines[i:i + 4096], add_special_tokens=False))
enc_s = time.perf_counter() - t0
n = sum(len(e.ids) for e in encoded)
if a.save:
    tok.save(a.save)
if a.ids_out:
    ids = array.array("I")
    for e in encoded:
        ids.extend(e.ids)
    open(a.ids_out, "wb").write(ids.tobytes())
print(json.dumps(dict(peer="hf-tokenizers-py", vocab=a.vocab, mb=round(mb, 2),
                      train_s=round(train_s, 3), encode_mb_s=round(mb / enc_s, 2), tokens=n,
                      threads=os.environ.get("RAYON_NUM_THREADS", "all"))))
