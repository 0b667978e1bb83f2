"""The training step's matrix products through PyTorch (MKL) and NumPy (OpenBLAS): the peer of
`nn/examples/gemm_compare.rs` (issue 25, item 4), the same shapes, products and JSON lines.

    OMP_NUM_THREADS=T OPENBLAS_NUM_THREADS=T MKL_NUM_THREADS=T python bench/gemm_peer.py IMPL T [REPS]

IMPL is `mkl` (torch.mm; torch's CPU BLAS is MKL) or `openblas` (numpy's bundled OpenBLAS).
T threads; with T = 1 the rows are one core's half of the batch, with T = 2 the whole batch, as
in the Rust example. Transposed operands are views, so each library gets its transpose flags
and no copy is timed.
"""
import json
import sys
import time

SHAPES = [
    ("tiny", "c_attn", 2048, 256, 768),
    ("tiny", "c_fc", 2048, 256, 1024),
    ("tiny", "mlp c_proj", 2048, 1024, 256),
    ("tiny", "lm_head", 2048, 256, 2048),
    ("small", "c_attn", 2048, 384, 1152),
    ("small", "c_fc", 2048, 384, 1536),
    ("small", "mlp c_proj", 2048, 1536, 384),
    ("small", "lm_head", 2048, 384, 4096),
]


def main():
    impl, threads = sys.argv[1], int(sys.argv[2])
    reps = int(sys.argv[3]) if len(sys.argv) > 3 else 20
    if impl == "mkl":
        import torch

        torch.set_num_threads(threads)
        assert torch.backends.mkl.is_available()
        rand = lambda r, c: torch.rand(r, c, dtype=torch.float32) * 2 - 1
        mm = torch.mm
    elif impl == "openblas":
        import numpy as np

        rng = np.random.default_rng(0)
        rand = lambda r, c: (rng.random((r, c), dtype=np.float32) * 2 - 1)
        mm = np.matmul
    else:
        sys.exit(f"unknown IMPL {impl!r}: mkl or openblas")
    share = 2 if threads == 1 else 1
    for model, linear, batch_rows, din, dout in SHAPES:
        rows = batch_rows // share
        x, w, dy = rand(rows, din), rand(dout, din), rand(rows, dout)
        for product, (a, b) in [("forward", (x, w.T)), ("grad_input", (dy, w)), ("grad_weight", (dy.T, x))]:
            m, k = a.shape
            n = b.shape[1]
            times = []
            for i in range(reps + 2):
                t0 = time.perf_counter()
                mm(a, b)
                if i >= 2:
                    times.append((time.perf_counter() - t0) * 1e3)
            ms = sorted(times)[len(times) // 2]
            print(json.dumps({"impl": impl, "model": model, "linear": linear, "product": product,
                              "m": m, "n": n, "k": k, "threads": threads, "ms": round(ms, 4),
                              "gflops": round(2 * m * n * k / (ms * 1e6), 2)}))


if __name__ == "__main__":
    main()
