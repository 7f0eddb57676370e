"""Abstract (shape-only) construction of a run: params, state, batch and the step, allocating nothing.

Used by the config tests, ``launch/info.py`` and AOT compilation.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections

from dreamactor_jax import config_lib
from dreamactor_jax.data import schema
from dreamactor_jax.diffusion.objective import ObjectiveConfig
from dreamactor_jax.models.build import abstract_model, model_config, split_params
from dreamactor_jax.train import optim
from dreamactor_jax.train import state as state_lib
from dreamactor_jax.train.step import train_step


def abstract_batch(config: ml_collections.ConfigDict, text_dim: int,
                   image_dim: int | None = None) -> dict[str, jax.ShapeDtypeStruct]:
    d = config.data
    shapes = schema.batch_shapes(d.batch_size, d.frames, d.height, d.width, d.channels, d.text_len, text_dim,
                                 schema.image_tokens_for(d, image_dim), image_dim)
    return {k: jax.ShapeDtypeStruct(s, jnp.float32) for k, s in shapes.items()}


def step_fn(config: ml_collections.ConfigDict, graphdef, tx):
    """The train step with everything static bound from ``config`` (ready for jit)."""
    return functools.partial(train_step, graphdef=graphdef, tx=tx, objective=ObjectiveConfig(**config.objective),
                             microbatches=config.optim.microbatches, ema_decay=config.optim.ema_decay)


def abstract_run(config: ml_collections.ConfigDict, platform: str | None = None):
    """Returns (model config, graphdef, abstract TrainState, abstract batch, the step partial).

    ``platform`` is where the step will run ('tpu', 'gpu', 'cpu'; default the default backend):
    it decides what ``attention="auto"`` becomes.
    """
    config_lib.validate(config)
    mcfg = model_config(config.model, platform)
    graphdef, params = split_params(abstract_model(mcfg))
    tx, _ = optim.make_optimizer(config.optim, config.train.steps)
    state = jax.eval_shape(functools.partial(state_lib.create, tx=tx, ema=config.optim.ema_decay > 0), params)
    step = step_fn(config, graphdef, tx)
    return mcfg, graphdef, state, abstract_batch(config, mcfg.text_dim, mcfg.image_dim), step


def eval_shape_step(config: ml_collections.ConfigDict):
    """Traces one train step abstractly; returns (new abstract state, metrics)."""
    _, _, state, batch, step = abstract_run(config)
    return jax.eval_shape(step, state, batch, jax.random.key(0))



