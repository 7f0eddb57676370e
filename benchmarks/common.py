"""Pieces the benchmark scripts share: the optimizer settings, the jitted train step and its timing loop.

Scripts run as ``python benchmarks/NAME.py``, so this directory is on ``sys.path`` and ``import common`` works.
"""

from __future__ import annotations

import functools
import time

import jax

from dreamactor_jax.diffusion.objective import ObjectiveConfig
from dreamactor_jax.models import attention
from dreamactor_jax.train import optim
from dreamactor_jax.train import state as state_lib
from dreamactor_jax.train.step import train_step

OPTIM = dict(lr=1e-4, warmup_steps=0, schedule="constant", b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01,
             grad_clip_norm=1.0)


def train_setup(graphdef, params):
    """(state, jitted step with donated state): the real ``train_step`` with AdamW and clipping."""
    tx, _ = optim.make_optimizer(OPTIM, 1000)
    step = jax.jit(functools.partial(train_step, graphdef=graphdef, tx=tx, objective=ObjectiveConfig()),
                   donate_argnums=0)
    return state_lib.create(params, tx), step


def time_steps(step, state, batch, *, warmup: int, repeats: int):
    """Runs ``step`` once (compiling), ``warmup`` more times, then ``repeats`` timed times.

    Returns:
      (state, first-call seconds, per-step seconds of the timed repeats, last metrics).
    """
    t0 = time.perf_counter()
    state, m = step(state, batch, jax.random.key(0))
    jax.block_until_ready(m)
    first = time.perf_counter() - t0
    for i in range(warmup):
        state, m = step(state, batch, jax.random.key(i + 1))
    jax.block_until_ready(m)
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        state, m = step(state, batch, jax.random.key(100 + i))
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
    return state, first, times, m


def attention_name(cfg) -> str:
    """The attention implementation a model config runs here ('auto' resolved for this backend)."""
    return attention.resolve(cfg.attention, cfg.dtype)
