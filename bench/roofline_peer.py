"""PyTorch's (MKL's) rate on the square product of `nn/examples/roofline.rs`, 1 and 2 threads,
the same JSON lines: the best a tuned BLAS does on this machine (issue 25, forward ceiling).

    python bench/roofline_peer.py [REPS]
"""
import json
import statistics
import sys
import time

import torch

N = 1536


def rate(threads):
    torch.set_num_threads(threads)
    a = torch.rand(N, N) * 2 - 1
    b = torch.rand(N, N) * 2 - 1
    torch.mm(a, b)
    reps = 5
    t0 = time.perf_counter()
    for _ in range(reps):
        torch.mm(a, b)
    return 2 * N**3 / ((time.perf_counter() - t0) / reps) / 1e9


def main():
    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    for threads in (1, 2):
        samples = [rate(threads) for _ in range(reps)]
        print(json.dumps({"what": f"mkl_{N}_square", "threads": threads,
                          "gflops": round(statistics.median(samples), 1),
                          "samples": [round(s, 1) for s in samples]}), flush=True)


if __name__ == "__main__":
    main()
