# The pair probe's data (docs/bert.md, "Training on the hard negatives"): is segment B's word
# one of segment A's six? A bag-of-words pair task, the lexical floor under entailment.
# Run: python3 make_probe.py  (writes train.jsonl, 10,000 examples, and val.jsonl, 1,000)
import random, json
random.seed(1)
words = "park garden beach forest school river ball kite book cake apple hat dog cat box tree house shop lake hill boat car doll drum".split()
def ex():
    a = random.sample(words, 6)
    pos = random.random() < 0.5
    b = random.choice(a) if pos else random.choice([w for w in words if w not in a])
    return {"text": " ".join(a) + ".", "text_pair": b + ".", "label": "yes" if pos else "no"}
for name, n in [("train", 10000), ("val", 1000)]:
    with open(name + ".jsonl", "w") as f:
        for _ in range(n):
            f.write(json.dumps(ex()) + "\n")
