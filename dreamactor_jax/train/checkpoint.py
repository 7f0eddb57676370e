"""Orbax checkpoints: one directory per saved step, one item per component.

Layout of ``<dir>/<step>/``:

=========  ========================================================================
item       content
=========  ========================================================================
params     the model parameters (nested dict, f32 masters)
opt_state  optimizer state (absent in imported/pretrained checkpoints)
ema        EMA of params (absent when EMA is off)
meta       JSON: step, kind ("train" | "import"), the model architecture (WanConfig)
config     JSON: the run's resolved config (absent for imports)
=========  ========================================================================

Components are separate items so a reader takes only what it needs: export
restores ``params`` (or ``ema``) and nothing else.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import jax
import orbax.checkpoint as ocp

from dreamactor_jax.models.config import WanConfig

ARRAY_ITEMS = ("params", "opt_state", "ema")
JSON_ITEMS = ("meta", "config")


def _handlers():
    h: dict[str, Any] = {k: ocp.StandardCheckpointHandler() for k in ARRAY_ITEMS}
    h.update({k: ocp.JsonCheckpointHandler() for k in JSON_ITEMS})
    return h


def manager(directory: str, *, max_to_keep: int | None = None, keep_period: int | None = None,
            async_save: bool = True, read_only: bool = False) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, keep_period=keep_period,
                                           enable_async_checkpointing=async_save, read_only=read_only,
                                           create=not read_only)
    return ocp.CheckpointManager(os.path.abspath(directory), options=options, item_names=tuple(_handlers()),
                                 item_handlers=_handlers())


def model_meta(cfg: WanConfig) -> dict:
    d = dataclasses.asdict(cfg)
    d["patch_size"] = list(cfg.patch_size)
    return d


def model_config_from_meta(meta: Mapping[str, Any]) -> WanConfig:
    d = dict(meta["model"])
    d["patch_size"] = tuple(d["patch_size"])
    return WanConfig(**d)


def save(mngr: ocp.CheckpointManager, step: int, *, params, model_cfg: WanConfig, opt_state=None, ema=None,
         config: Mapping[str, Any] | None = None, kind: str = "train", force: bool = False) -> bool:
    """Saves the given components at ``step`` (asynchronously if the manager is async)."""
    items: dict[str, Any] = {"params": ocp.args.StandardSave(params),
                             "meta": ocp.args.JsonSave({"step": int(step), "kind": kind,
                                                        "model": model_meta(model_cfg)})}
    if opt_state is not None:
        items["opt_state"] = ocp.args.StandardSave(opt_state)
    if ema is not None:
        items["ema"] = ocp.args.StandardSave(ema)
    if config is not None:
        items["config"] = ocp.args.JsonSave(dict(config))
    return mngr.save(step, args=ocp.args.Composite(**items), force=force)


def read_meta(directory: str, step: int | None = None) -> dict:
    mngr = manager(directory, read_only=True)
    step = mngr.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint found in {directory}")
    return mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]


def restore_item(directory: str, item: str, target: Any = None, step: int | None = None) -> Any:
    """Restores one array item. ``target``: a pytree of ShapeDtypeStructs (with shardings) to reshard onto;
    None restores as saved (host-local arrays)."""
    if item not in ARRAY_ITEMS:
        raise ValueError(f"unknown checkpoint item {item!r}; array items are {ARRAY_ITEMS}")
    mngr = manager(directory, read_only=True)
    step = mngr.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint found in {directory}")
    available = mngr.item_metadata(step)
    if available.get(item) is None:
        raise FileNotFoundError(f"checkpoint {directory} step {step} has no item {item!r}")
    args = ocp.args.StandardRestore(target) if target is not None else ocp.args.StandardRestore()
    return mngr.restore(step, args=ocp.args.Composite(**{item: args}))[item]


def abstract_like(tree: Any, shardings: Any = None) -> Any:
    """ShapeDtypeStructs of ``tree`` (optionally with shardings) for a resharding restore."""
    if shardings is None:
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def restore_state(mngr: ocp.CheckpointManager, step: int, abstract_state: Any, shardings: Any) -> Any:
    """Restores a TrainState saved by :func:`save` onto ``shardings`` (any mesh: Orbax reshards)."""
    items = {"params": ocp.args.StandardRestore(abstract_like(abstract_state.params, shardings.params)),
             "opt_state": ocp.args.StandardRestore(abstract_like(abstract_state.opt_state, shardings.opt_state))}
    if abstract_state.ema is not None:
        items["ema"] = ocp.args.StandardRestore(abstract_like(abstract_state.ema, shardings.ema))
    got = mngr.restore(step, args=ocp.args.Composite(**items))
    step_arr = jax.device_put(jax.numpy.asarray(step, jax.numpy.int32), shardings.step)
    return abstract_state.replace(step=step_arr, params=got["params"], opt_state=got["opt_state"],
                                  ema=got.get("ema") if abstract_state.ema is not None else None)
