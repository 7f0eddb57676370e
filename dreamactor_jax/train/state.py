"""The train state: one pytree holding everything a run must resume from."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from dreamactor_jax.models import build, lora
from dreamactor_jax.models.config import WanConfig
from dreamactor_jax.models.transformer import WanTransformer3DModel
from dreamactor_jax.parallel import rules


@flax.struct.dataclass
class TrainState:
    """``params`` is always the full model; ``opt_state`` and ``ema`` cover only its trainable part.

    The trainable part (:func:`dreamactor_jax.models.lora.split_trainable`) is all of
    ``params`` for full fine-tuning and the LoRA leaves (``.../lora_a``, ``.../lora_b``)
    when the model has adapters: then the EMA is an EMA of the adapters only (the base
    is frozen, so its average is itself) and the optimizer moments are adapter-sized.
    """

    step: jax.Array  # int32 scalar: optimizer updates applied so far
    params: dict  # nested dict of f32 master parameters (base and, with LoRA, adapters)
    opt_state: optax.OptState  # over trainable(params)
    ema: Any = None  # EMA of trainable(params), or None when disabled


def trainable(params: dict) -> dict:
    """The part of ``params`` that trains (all of it, or only the LoRA leaves)."""
    return lora.split_trainable(params)[0]


def create(params: dict, tx: optax.GradientTransformation, ema: bool = False) -> TrainState:
    """A fresh state at step 0; the EMA, when on, starts at the initial (trainable) params."""
    t = trainable(params)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(t),
                      ema=jax.tree.map(jnp.copy, t) if ema else None)


def shardings(state: TrainState, param_shardings: dict, mesh: jax.sharding.Mesh) -> TrainState:
    """Shardings of a whole (abstract) TrainState: params, and moments and EMA over the trainable part,
    shard like the params (with LoRA: each adapter like its base kernel); counters are replicated.

    ``rules.tree_shardings(state, state.params, ...)`` alone gives the same for full fine-tuning,
    but it recognises only params-shaped subtrees, so adapter-shaped moments would be replicated.
    """
    out = rules.tree_shardings(state, state.params, param_shardings, mesh)
    t, _ = lora.split_trainable(state.params)
    if t is state.params:
        return out
    ts, _ = lora.split_trainable(param_shardings)
    return out.replace(opt_state=rules.tree_shardings(state.opt_state, t, ts, mesh),
                       ema=None if state.ema is None else ts)


def add_adapters(base: dict, cfg: WanConfig, seed: int, shardings: Any = None) -> dict:
    """Full LoRA params from base-only params (an import, a full fine-tune) and fresh adapters.

    The adapters are those ``build.init_params(cfg, seed)`` draws; only they are
    computed (the base's initialisers are dead code in the jit and are dropped).

    Args:
      base: params of the model without adapters (nested dict).
      cfg: a config with ``lora_rank > 0``.
      seed: init seed of the adapters.
      shardings: ``rules.param_shardings(abstract_model(cfg), mesh)`` (the full tree) or None.
    """
    if not cfg.lora_rank:
        raise ValueError("add_adapters needs a config with lora_rank > 0")

    def init():
        return lora.split_trainable(build.split_params(WanTransformer3DModel(cfg, rngs=nnx.Rngs(seed)))[1])[0]

    out = None if shardings is None else lora.split_trainable(shardings)[0]
    return lora.combine(jax.jit(init, out_shardings=out)(), base)
