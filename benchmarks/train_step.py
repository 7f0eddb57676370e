"""Median seconds per training step (forward + backward + AdamW) and tokens/s on the current backend.

  python benchmarks/train_step.py --preset=tiny
Input: B=1, latent T=5, H=32 and a double-width canvas W=64 (two 32-wide halves), C=16
(36-channel model input). Prints one JSON line per case.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics

import common
import jax
import jax.numpy as jnp

from dreamactor_jax.data import synthetic
from dreamactor_jax.models import get_preset
from dreamactor_jax.models.build import init_params


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--frames", type=int, default=5)
    p.add_argument("--height", type=int, default=32)
    p.add_argument("--canvas_width", type=int, default=64, help="double-width canvas (two halves)")
    p.add_argument("--attention", default=None, help="override the preset's attention implementation")
    p.add_argument("--remat", default=None)
    p.add_argument("--scan_layers", default=None, choices=[None, "true", "false"])
    p.add_argument("--dtype", default=None)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    a = p.parse_args()
    overrides = {k: v for k, v in dict(attention=a.attention, remat=a.remat, dtype=a.dtype).items() if v}
    if a.scan_layers:
        overrides["scan_layers"] = a.scan_layers == "true"
    cfg = get_preset(a.preset, **overrides)
    c = cfg.out_channels
    graphdef, params = init_params(cfg, seed=0)
    state, step = common.train_setup(graphdef, params)
    batch = jax.tree.map(jnp.asarray, synthetic.synthetic_batch(
        0, 0, batch=a.batch, frames=a.frames, height=a.height, width=a.canvas_width // 2, channels=c,
        text_len=16, text_dim=cfg.text_dim))
    state, first_s, times, m = common.time_steps(step, state, batch, warmup=a.warmup, repeats=a.repeats)
    med = statistics.median(times)
    compile_s = max(first_s - med, 0.0)  # the first call compiles and runs one step
    tokens = a.batch * a.frames * a.height * a.canvas_width // math.prod(cfg.patch_size)
    print(json.dumps({
        "benchmark": "train_step", "preset": a.preset, "backend": jax.default_backend(),
        "devices": jax.device_count(), "cpu": platform.processor() or platform.machine(),
        "shape": {"batch": a.batch, "frames": a.frames, "height": a.height, "canvas_width": a.canvas_width,
                  "in_channels": cfg.in_channels},
        "attention": common.attention_name(cfg), "scan_layers": cfg.scan_layers, "remat": cfg.remat, "dtype": cfg.dtype,
        "tokens": tokens, "median_s": round(med, 5), "min_s": round(min(times), 5),
        "tokens_per_s": round(tokens / med, 1), "compile_s": round(compile_s, 2),
        "first_call_s": round(first_s, 2), "repeats": a.repeats,
        "loss": float(m["loss"]),
    }))


if __name__ == "__main__":
    main()
