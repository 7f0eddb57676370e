"""Each attention implementation at growing token counts: time and memory of forward and forward+backward.

  python benchmarks/attention.py                                   # 6 heads x 48, 1k..8k tokens
  python benchmarks/attention.py --tokens=2560,10240 --heads=12 --head_dim=128 --impls=flash,xla

Runs every implementation the backend has (cpu: xla, flash, blocked, dot_product; gpu adds
cudnn with 16-bit inputs; tpu adds splash) on (B, N, H, D) inputs, jitted, median of
``--repeats``. Memory is XLA's own account of the compiled program: ``temp_bytes`` (scratch
beyond inputs and outputs) from ``memory_analysis()``; it is what grows as N² for the
whole-matrix implementations and as N · block for the blocked ones. ``--torch`` adds
PyTorch's ``scaled_dot_product_attention`` on the same inputs (CPU, same threads).
Prints one JSON line per implementation and token count.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from dreamactor_jax.models import attention as attn_lib

BACKEND_IMPLS = {
    "cpu": ("xla", "flash", "blocked", "dot_product"),
    "gpu": ("xla", "flash", "blocked", "dot_product", "cudnn"),
    "tpu": ("xla", "flash", "blocked", "dot_product", "splash"),
}


def _time(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _temp_bytes(fn, *args) -> int:
    mem = fn.lower(*args).compile().memory_analysis()
    return int(mem.temp_size_in_bytes) if mem is not None else -1


def bench_jax(impl: str, q, k, v, w, *, block_q: int, repeats: int) -> dict:
    attend = lambda q, k, v: attn_lib.attend(impl, q, k, v, block_q=block_q)  # noqa: E731
    fwd = jax.jit(attend)
    grad = jax.jit(jax.grad(lambda q, k, v: jnp.sum(attend(q, k, v).astype(jnp.float32) * w), argnums=(0, 1, 2)))
    return {"forward_s": _time(fwd, q, k, v, repeats=repeats), "train_s": _time(grad, q, k, v, repeats=repeats),
            "forward_temp_bytes": _temp_bytes(fwd, q, k, v), "train_temp_bytes": _temp_bytes(grad, q, k, v)}


def bench_torch(q, k, v, w, *, repeats: int) -> dict:
    import torch

    tq, tk, tv = (torch.from_numpy(np.asarray(x, np.float32)).transpose(1, 2).contiguous() for x in (q, k, v))
    tw = torch.from_numpy(np.asarray(w)).transpose(1, 2).contiguous()
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def fwd():
        with torch.no_grad():
            sdpa(tq, tk, tv)

    def train():
        a, b, c = (x.detach().requires_grad_(True) for x in (tq, tk, tv))
        (sdpa(a, b, c) * tw).sum().backward()

    out = {}
    for name, f in (("forward_s", fwd), ("train_s", train)):
        f()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            f()
            times.append(time.perf_counter() - t0)
        out[name] = statistics.median(times)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", default="1024,2048,4096,8192", help="comma-separated token counts N")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--head_dim", type=int, default=48)
    p.add_argument("--dtype", default=None, help="default: float32 on CPU, bfloat16 elsewhere")
    p.add_argument("--impls", default=None, help="comma-separated; default: all the backend has")
    p.add_argument("--block_q", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--torch", action="store_true", help="also time torch scaled_dot_product_attention (CPU)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
    a = p.parse_args()
    backend = jax.default_backend()
    impls = a.impls.split(",") if a.impls else list(BACKEND_IMPLS.get(backend, BACKEND_IMPLS["cpu"]))
    dtype = jnp.dtype(a.dtype or ("float32" if backend == "cpu" else "bfloat16"))
    if a.torch:
        import torch

        torch.set_num_threads(a.threads)
    rng = np.random.default_rng(0)
    for n in (int(t) for t in a.tokens.split(",")):
        shape = (a.batch, n, a.heads, a.head_dim)
        q, k, v, w = (jnp.asarray(rng.standard_normal(shape, np.float32)) for _ in range(4))
        q, k, v = (x.astype(dtype) for x in (q, k, v))
        flops_fwd = 4 * a.batch * a.heads * n * n * a.head_dim
        names = impls + (["torch_sdpa"] if a.torch else [])
        for impl in names:
            try:
                if impl == "torch_sdpa":
                    r = bench_torch(q, k, v, w, repeats=a.repeats)
                else:
                    r = bench_jax(impl, q, k, v, w, block_q=a.block_q, repeats=a.repeats)
            except Exception as e:  # noqa: BLE001 - e.g. out of memory at large N: report, keep going
                r = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
            line = {"benchmark": "attention", "impl": impl, "backend": backend, "tokens": n, "batch": a.batch,
                    "heads": a.heads, "head_dim": a.head_dim, "dtype": str(dtype), **r}
            if "train_s" in r:
                line.update(forward_s=round(r["forward_s"], 5), train_s=round(r["train_s"], 5),
                            forward_tflops=round(flops_fwd / r["forward_s"] / 1e12, 4),
                            train_tflops=round(3 * flops_fwd / r["train_s"] / 1e12, 4))
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
