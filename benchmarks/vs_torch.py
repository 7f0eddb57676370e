"""Our JAX train step against diffusers' PyTorch ``WanTransformer3DModel`` train step, side by side.

  python benchmarks/vs_torch.py                       # cases tiny and small, train and forward
  python benchmarks/vs_torch.py --cases=small --modes=train --repeats=10

Same architecture, same weights (ours exported through the converter's name table),
same input: batch 1, a double-width canvas latent of T=5, H=32, W=64 (36-channel model
input), 16 text tokens; fp32 on both sides, both on the same number of CPU threads.

* ``train``: forward + backward + global-norm clipping + AdamW. Ours is the real
  ``train_step`` (noise draw, canvas assembly, masked flow-matching loss); the PyTorch
  step does the same work in torch (the same objective written with torch ops).
* ``forward``: one model forward without gradients (a sampler step's cost).

The two sides run alternately, one repeat each at a time, so drift in machine load
affects both alike. Prints one JSON line per case and mode with the median seconds per
step of each side and ``ratio`` = JAX / PyTorch (below 1: JAX is faster).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time

import common
import jax
import jax.numpy as jnp
import numpy as np

from dreamactor_jax.convert import names
from dreamactor_jax.data import synthetic
from dreamactor_jax.models import get_preset
from dreamactor_jax.models.build import init_params, merge

OPTIM = common.OPTIM
CASES = {
    # 2 layers, 2 heads x 32 (the tiny preset); 6 layers, 6 heads x 48, ffn 4·D (the small preset).
    "tiny": dict(preset="tiny"),
    "small": dict(preset="small"),
}


def _batch(cfg, a):
    b = synthetic.synthetic_batch(0, 0, batch=a.batch, frames=a.frames, height=a.height, width=a.canvas_width // 2,
                                  channels=cfg.out_channels, text_len=a.text_len, text_dim=cfg.text_dim)
    return b


class JaxSide:
    def __init__(self, cfg, batch):
        self.graphdef, params = init_params(cfg, seed=0)
        self.params_np = jax.tree.map(np.asarray, params)
        self.state, self.step = common.train_setup(self.graphdef, params)
        self.batch = jax.tree.map(jnp.asarray, batch)
        self.i = 0

        def fwd(params, x, t, text):
            return merge(self.graphdef, params)(x, t, text)

        self.fwd = jax.jit(fwd)

    def train(self):
        self.i += 1
        self.state, m = self.step(self.state, self.batch, jax.random.key(self.i))
        jax.block_until_ready(m)

    def forward(self, x, t, text):
        jax.block_until_ready(self.fwd(self.state.params, x, t, text))


class TorchSide:
    def __init__(self, cfg, params_np, batch):
        import diffusers
        import torch

        self.torch = torch
        torch.manual_seed(0)
        self.model = diffusers.WanTransformer3DModel(**cfg.arch_dict())
        sd = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in names.export_tensors(cfg, params_np)}
        self.model.load_state_dict(sd, strict=True)
        self.model.train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=OPTIM["lr"], betas=(OPTIM["b1"], OPTIM["b2"]),
                                     eps=OPTIM["eps"], weight_decay=OPTIM["weight_decay"])
        self.b = {k: torch.from_numpy(v) for k, v in batch.items()}
        self.gen = torch.Generator().manual_seed(0)

    def _canvas(self):
        """The training objective's input and target, as ``objective.canvas_inputs`` builds them (torch ops)."""
        torch, b = self.torch, self.b
        target, reference, motion, valid = b["target"], b["reference"], b["motion"], b["motion_valid"]
        bs, t, h, w, c = target.shape
        motion = motion * valid[:, :, None, None, None]
        x0 = torch.cat([target, motion], dim=3)
        left = torch.cat([reference, torch.zeros(bs, t - 1, h, w, c)], dim=1)
        cond = torch.cat([left, motion], dim=3)
        lt = torch.zeros(bs, t)
        lt[:, 0] = 1
        mask = torch.cat([lt[:, :, None, None, None].expand(bs, t, h, w, 4),
                          valid[:, :, None, None, None].expand(bs, t, h, w, 4)], dim=3)
        sigma = torch.rand(bs, generator=self.gen)
        noise = torch.randn(x0.shape, generator=self.gen)
        s = sigma[:, None, None, None, None]
        x_t = (1 - s) * x0 + s * noise
        x_in = torch.cat([x_t, mask, cond], dim=-1)
        keep = (torch.rand(bs, generator=self.gen) >= 0.1).float()[:, None, None]
        given = mask[..., 0] > 0
        leftw = (torch.arange(2 * w) < w)[None, None, None, :]
        weights = (leftw & ~given).float()
        return x_in, sigma * 1000.0, noise - x0, b["text"] * keep, weights

    def train(self):
        torch = self.torch
        x_in, t, v_target, text, weights = self._canvas()
        self.opt.zero_grad(set_to_none=True)
        v = self.model(x_in.permute(0, 4, 1, 2, 3), t, text, return_dict=False)[0].permute(0, 2, 3, 4, 1)
        se = (v - v_target).square().mean(dim=-1)
        loss = (se * weights).sum() / weights.sum().clamp_min(1.0)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), OPTIM["grad_clip_norm"])
        self.opt.step()

    def forward(self, x, t, text):
        torch = self.torch
        with torch.no_grad():
            self.model(torch.from_numpy(x).permute(0, 4, 1, 2, 3), torch.from_numpy(t), torch.from_numpy(text),
                       return_dict=False)


def run_case(name: str, a) -> list[dict]:
    import torch

    cfg = get_preset(CASES[name]["preset"], **({"attention": a.attention} if a.attention else {}))
    batch = _batch(cfg, a)
    js = JaxSide(cfg, batch)
    ts = TorchSide(cfg, js.params_np, batch)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((a.batch, a.frames, a.height, a.canvas_width, cfg.in_channels)).astype(np.float32)
    t = np.full((a.batch,), 500.0, np.float32)
    text = batch["text"]
    xj, tj, textj = jnp.asarray(x), jnp.asarray(t), jnp.asarray(text)
    tokens = a.batch * a.frames * a.height * a.canvas_width // math.prod(cfg.patch_size)
    out = []
    for mode in a.modes.split(","):
        if mode == "train":
            fj, ft = js.train, ts.train
        elif mode == "forward":
            fj, ft = (lambda: js.forward(xj, tj, textj)), (lambda: ts.forward(x, t, text))
        else:
            raise ValueError(f"--modes: unknown mode {mode!r} (train, forward)")
        t0 = time.perf_counter()
        fj()
        first_jax = time.perf_counter() - t0  # includes compilation
        for _ in range(a.warmup):
            fj()
            ft()
        tj_s, tt_s = [], []
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            fj()
            tj_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            ft()
            tt_s.append(time.perf_counter() - t0)
        mj, mt = statistics.median(tj_s), statistics.median(tt_s)
        out.append({
            "benchmark": "vs_torch", "case": name, "mode": mode, "preset": CASES[name]["preset"],
            "layers": cfg.num_layers, "heads": cfg.num_attention_heads, "head_dim": cfg.attention_head_dim,
            "ffn_dim": cfg.ffn_dim, "attention": common.attention_name(cfg), "tokens": tokens,
            "shape": {"batch": a.batch, "frames": a.frames, "height": a.height, "canvas_width": a.canvas_width},
            "dtype": "float32", "threads": torch.get_num_threads(), "backend": jax.default_backend(),
            "cpu": platform.processor() or platform.machine(),
            "jax_median_s": round(mj, 5), "torch_median_s": round(mt, 5), "ratio": round(mj / mt, 3),
            "jax_min_s": round(min(tj_s), 5), "torch_min_s": round(min(tt_s), 5),
            "jax_first_call_s": round(first_jax, 2), "repeats": a.repeats,
            "torch": torch.__version__, "jax": jax.__version__,
        })
        print(json.dumps(out[-1]), flush=True)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default="tiny,small", help=f"comma-separated, from {sorted(CASES)}")
    p.add_argument("--modes", default="train,forward", help="comma-separated: train, forward")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--frames", type=int, default=5)
    p.add_argument("--height", type=int, default=32)
    p.add_argument("--canvas_width", type=int, default=64, help="double-width canvas (two halves)")
    p.add_argument("--text_len", type=int, default=16)
    p.add_argument("--attention", default=None, help="override the presets' attention implementation")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads (JAX uses all cores)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    a = p.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    for name in a.cases.split(","):
        if name not in CASES:
            raise SystemExit(f"--cases: unknown case {name!r}; choose from {sorted(CASES)}")
        run_case(name, a)


if __name__ == "__main__":
    main()
