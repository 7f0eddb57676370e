"""Building models from configs without ever materialising unsharded parameters."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
from flax import nnx

from dreamactor_jax.models import attention
from dreamactor_jax.models.config import WanConfig, get_preset
from dreamactor_jax.models.transformer import WanTransformer3DModel


def model_config(model_cfg: Mapping[str, Any], platform: str | None = None) -> WanConfig:
    """WanConfig from a config tree's ``model`` section: ``preset`` plus every non-None field as override.

    ``attention="auto"`` is resolved here for ``platform`` (default: the default backend), so a
    step compiled ahead of time for TPU devices from a CPU host gets the TPU kernel.
    """
    d = dict(model_cfg)
    preset = d.pop("preset", None)
    if preset is None:
        raise ValueError("config.model.preset is required (e.g. 'tiny', 'wan2.1-i2v-14b')")
    overrides = {k: (tuple(v) if k == "patch_size" else v) for k, v in d.items() if v is not None}
    try:
        cfg = get_preset(preset, **overrides)
    except ValueError as e:
        raise ValueError(f"config.model: {e}") from None
    if cfg.attention == "auto":
        cfg = cfg.replace(attention=attention.resolve("auto", cfg.dtype, platform))
    return cfg


def abstract_model(cfg: WanConfig) -> WanTransformer3DModel:
    """The model with ShapeDtypeStruct leaves (no allocation)."""
    return nnx.eval_shape(lambda: WanTransformer3DModel(cfg, rngs=nnx.Rngs(0)))


def split_params(model: nnx.Module) -> tuple[nnx.GraphDef, dict]:
    """(graphdef, params as a plain nested dict of arrays)."""
    graphdef, state = nnx.split(model)
    return graphdef, nnx.to_pure_dict(state)


def merge(graphdef: nnx.GraphDef, params: dict) -> nnx.Module:
    return nnx.merge(graphdef, params)


def init_params(cfg: WanConfig, seed: int, shardings: Any = None) -> tuple[nnx.GraphDef, dict]:
    """Initialises parameters inside ``jit``; with ``shardings`` each array is created in place, sharded."""
    graphdef, _ = split_params(abstract_model(cfg))

    def init():
        return split_params(WanTransformer3DModel(cfg, rngs=nnx.Rngs(seed)))[1]

    params = jax.jit(init, out_shardings=shardings)()
    return graphdef, params


def count_params(tree) -> int:
    return int(sum(x.size for x in jax.tree.leaves(tree)))
