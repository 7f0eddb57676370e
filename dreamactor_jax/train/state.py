"""The train state: one pytree holding everything a run must resume from."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer updates applied so far
    params: dict  # nested dict of f32 master parameters
    opt_state: optax.OptState
    ema: Any = None  # EMA of params, or None when disabled


def create(params: dict, tx: optax.GradientTransformation, ema: bool = False) -> TrainState:
    """A fresh state at step 0; the EMA, when on, starts at the initial params."""
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      ema=jax.tree.map(jnp.copy, params) if ema else None)
