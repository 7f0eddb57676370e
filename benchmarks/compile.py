"""Compile time of the train step with scanned vs unrolled layers, at growing depth.

  python benchmarks/compile.py                      # small-width model, 4 / 16 / 40 layers
  python benchmarks/compile.py --preset=wan2.1-t2v-1.3b --layers=4,16 --frames=3 --height=16 --canvas_width=32

Lowers and compiles the real ``train_step`` (forward, backward, AdamW) from abstract
shapes, so nothing is allocated and any preset can be measured. Scanning compiles one
block body whatever the depth; unrolling compiles every layer, so its compile time grows
with depth. Prints one JSON line per (layers, scan) with lowering and compile seconds.
"""

from __future__ import annotations

import argparse
import functools
import json
import time

import common
import jax
import jax.numpy as jnp

from dreamactor_jax.data import schema
from dreamactor_jax.diffusion.objective import ObjectiveConfig
from dreamactor_jax.models import get_preset
from dreamactor_jax.models.build import abstract_model, split_params
from dreamactor_jax.train import optim
from dreamactor_jax.train import state as state_lib
from dreamactor_jax.train.step import train_step


def compile_seconds(cfg, a) -> tuple[float, float]:
    graphdef, params = split_params(abstract_model(cfg))
    tx, _ = optim.make_optimizer(common.OPTIM, 1000)
    state = jax.eval_shape(functools.partial(state_lib.create, tx=tx), params)
    shapes = schema.batch_shapes(a.batch, a.frames, a.height, a.canvas_width // 2, cfg.out_channels, a.text_len,
                                 cfg.text_dim)
    batch = {k: jax.ShapeDtypeStruct(s, jnp.float32) for k, s in shapes.items()}
    key = jax.eval_shape(lambda: jax.random.key(0))
    step = jax.jit(functools.partial(train_step, graphdef=graphdef, tx=tx, objective=ObjectiveConfig()),
                   donate_argnums=0)
    t0 = time.perf_counter()
    lowered = step.lower(state, batch, key)
    t1 = time.perf_counter()
    lowered.compile()
    return t1 - t0, time.perf_counter() - t1


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small")
    p.add_argument("--layers", default="4,16,40", help="comma-separated depths")
    p.add_argument("--remat", default="none")
    p.add_argument("--attention", default=None, help="default: the preset's ('auto')")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--frames", type=int, default=5)
    p.add_argument("--height", type=int, default=32)
    p.add_argument("--canvas_width", type=int, default=64)
    p.add_argument("--text_len", type=int, default=16)
    a = p.parse_args()
    for layers in (int(x) for x in a.layers.split(",")):
        for scan in (True, False):
            extra = {"attention": a.attention} if a.attention else {}
            cfg = get_preset(a.preset, num_layers=layers, scan_layers=scan, remat=a.remat, **extra)
            lower_s, compile_s = compile_seconds(cfg, a)
            print(json.dumps({"benchmark": "compile", "preset": a.preset, "layers": layers, "scan_layers": scan,
                              "remat": a.remat, "attention": common.attention_name(cfg),
                              "backend": jax.default_backend(),
                              "lower_s": round(lower_s, 3), "compile_s": round(compile_s, 3),
                              "total_s": round(lower_s + compile_s, 3)}), flush=True)


if __name__ == "__main__":
    main()
