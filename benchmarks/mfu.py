"""Train-step time, tokens/s and MFU on whatever accelerator is present; FLOP scaling with --sweep.

  python benchmarks/mfu.py                                   # GPU/TPU: wan2.1-t2v-1.3b, 81 frames 480p, bf16
  python benchmarks/mfu.py --preset=tiny                     # CPU: reports achieved FLOP/s (no CPU peak)
  python benchmarks/mfu.py --preset=wan2.1-t2v-1.3b --frames=21 --height=90 --width=160 --attention=cudnn
  python benchmarks/mfu.py --sweep --preset=wan2.1-t2v-14b --plot=flops_sweep.png

Shapes are latent sizes per canvas half (81 frames at 480p = 21 x 60 x 104); the model sees the
double-width canvas, so tokens = frames x height/2 x width (patch 1x2x2). MFU = model FLOPs per
step (``dreamactor_jax/train/flops.py``: matmuls, train = 3 x forward, recompute not counted)
/ step time / the device's dense bf16 peak (``flops.peak_flops_per_device``, or ``--peak_flops``).
The step is the real ``train_step`` (forward, backward, AdamW) on one device. ``--sweep`` prints
model FLOPs per step and the attention share over frame counts and resolutions (no device
work) and writes a PNG plot. One JSON line per case.
"""

from __future__ import annotations

import argparse
import json
import statistics

import common
import jax
import jax.numpy as jnp
import numpy as np

from dreamactor_jax.data import schema
from dreamactor_jax.models import get_preset
from dreamactor_jax.models.build import init_params
from dreamactor_jax.train import flops

RESOLUTIONS = {"360p": (45, 80), "480p": (60, 104), "720p": (90, 160)}  # latent (H, W) per canvas half
SWEEP_FRAMES = (17, 33, 49, 65, 81, 121)  # pixel frames, 4k + 1


def latent_frames(pixel_frames: int) -> int:
    return (pixel_frames - 1) // 4 + 1


def measure(a) -> dict:
    backend = jax.default_backend()
    dtype = a.dtype or ("float32" if backend == "cpu" else "bfloat16")
    overrides = dict(dtype=dtype, remat=a.remat, in_channels=36)
    if a.attention:
        overrides["attention"] = a.attention
    cfg = get_preset(a.preset, **overrides)
    graphdef, params = init_params(cfg, seed=0)
    state, step = common.train_setup(graphdef, params)
    shapes = schema.batch_shapes(a.batch, a.frames, a.height, a.width, cfg.out_channels, a.text_len, cfg.text_dim)
    rng = np.random.default_rng(0)
    batch = {k: jnp.asarray(rng.standard_normal(s, np.float32)) for k, s in shapes.items()}
    batch["motion_valid"] = jnp.ones(shapes["motion_valid"], jnp.float32)
    batch["text_mask"] = jnp.ones(shapes["text_mask"], jnp.float32)
    state, first, times, m = common.time_steps(step, state, batch, warmup=a.warmup, repeats=a.repeats)
    med = statistics.median(times)
    count = flops.forward_flops(cfg, batch=a.batch, frames=a.frames, height=a.height, width=2 * a.width,
                                text_len=a.text_len)
    dev = jax.devices()[0]
    peak = a.peak_flops or flops.peak_flops_per_device(dev.device_kind)
    out = {
        "benchmark": "mfu", "preset": a.preset, "backend": backend, "device": dev.device_kind,
        "attention": common.attention_name(cfg), "remat": cfg.remat, "dtype": dtype,
        "shape": {"batch": a.batch, "frames": a.frames, "height": a.height, "width": a.width,
                  "canvas_width": 2 * a.width},
        "tokens": a.batch * count.tokens, "median_s": round(med, 5), "min_s": round(min(times), 5),
        "first_step_s": round(first, 2), "tokens_per_s": round(a.batch * count.tokens / med, 1),
        "model_tflops_per_step": round(count.train / 1e12, 4), "attention_share": round(count.attention_share, 4),
        "achieved_tflops": round(count.train / med / 1e12, 4), "peak_tflops": peak and round(peak / 1e12, 1),
        "mfu": round(count.train / med / peak, 4) if peak else None, "loss": float(m["loss"]),
    }
    if backend == "gpu":
        stats = dev.memory_stats() or {}
        out["peak_memory_gib"] = round(stats.get("peak_bytes_in_use", 0) / 2**30, 2)
    return out


def sweep(a) -> list[dict]:
    cfg = get_preset(a.preset)
    rows = []
    for res, (h, w) in RESOLUTIONS.items():
        for f in SWEEP_FRAMES:
            c = flops.forward_flops(cfg, batch=1, frames=latent_frames(f), height=h, width=2 * w,
                                    text_len=a.text_len)
            rows.append({"benchmark": "mfu_sweep", "preset": a.preset, "resolution": res, "pixel_frames": f,
                         "latent": [latent_frames(f), h, 2 * w], "tokens": c.tokens,
                         "train_tflops_per_step": round(c.train / 1e12, 3),
                         "attention_share": round(c.attention_share, 4)})
            print(json.dumps(rows[-1]), flush=True)
    if a.plot:
        plot(rows, a.plot, a.preset)
    return rows


def plot(rows: list[dict], path: str, preset: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise SystemExit(f"--plot needs matplotlib ({e}); pip install matplotlib") from None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for res in RESOLUTIONS:
        sel = [r for r in rows if r["resolution"] == res]
        x = [r["pixel_frames"] for r in sel]
        ax1.plot(x, [r["train_tflops_per_step"] for r in sel], marker="o", label=res)
        ax2.plot(x, [100 * r["attention_share"] for r in sel], marker="o", label=res)
    ax1.set(xlabel="frames (pixels)", ylabel="model TFLOPs per train step (batch 1)", yscale="log",
            title=f"{preset}: FLOPs per step")
    ax2.set(xlabel="frames (pixels)", ylabel="attention share of FLOPs (%)", ylim=(0, 100),
            title="share spent in attention")
    for ax in (ax1, ax2):
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(json.dumps({"benchmark": "mfu_sweep", "plot": path}), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default=None, help="default: tiny on CPU, wan2.1-t2v-1.3b on an accelerator")
    p.add_argument("--frames", type=int, default=None, help="latent frames (default 21 = 81 pixel frames; 5 on CPU)")
    p.add_argument("--height", type=int, default=None, help="latent height (default 60 = 480p; 32 on CPU)")
    p.add_argument("--width", type=int, default=None, help="latent width per canvas half (default 104; 32 on CPU)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--text_len", type=int, default=512)
    p.add_argument("--attention", default=None, help="default: the preset's ('auto')")
    p.add_argument("--remat", default="none")
    p.add_argument("--dtype", default=None, help="default: bfloat16 on accelerators, float32 on CPU")
    p.add_argument("--peak_flops", type=float, default=None, help="per-device peak FLOP/s for MFU")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--sweep", action="store_true", help="FLOPs per step over frames x resolutions (no device work)")
    p.add_argument("--plot", default="mfu_sweep.png", help="PNG for --sweep ('' for none)")
    a = p.parse_args()
    cpu = jax.default_backend() == "cpu"
    a.preset = a.preset or ("tiny" if cpu else "wan2.1-t2v-1.3b")
    if a.sweep:
        sweep(a)
        return
    small = a.preset in ("tiny", "small")
    a.frames = a.frames or (5 if small else 21)
    a.height = a.height or (32 if small else 60)
    a.width = a.width or (32 if small else 104)
    if small and a.text_len == 512:
        a.text_len = 16
    print(json.dumps(measure(a)), flush=True)


if __name__ == "__main__":
    main()
