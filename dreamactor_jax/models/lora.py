"""LoRA: which layers get adapters, the trainable/frozen split of the params, merging adapters into weights.

A targeted :class:`~dreamactor_jax.models.layers.Linear` holds ``lora_a`` (in, r)
and ``lora_b`` (r, out) as :class:`~dreamactor_jax.models.layers.LoRAParam`
variables. In the params pure dict (``build.split_params``) they are the leaves
named ``lora_a``/``lora_b`` next to the layer's ``kernel``; stacked blocks carry
the leading ``layers`` axis like every other block parameter. Everything here
works on nested dicts by path, so it applies equally to arrays, abstract shapes
and shardings.

Module paths, which ``WanConfig.lora_targets`` is matched against with
``re.search``, are our attribute paths joined by dots: ``blocks.ffn.net_0.proj``,
``blocks.attn1.to_q``, ``condition_embedder.time_proj``, ``proj_out``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import nnx

from dreamactor_jax.models.config import WanConfig
from dreamactor_jax.models.layers import Linear, LoRAParam  # noqa: F401 (LoRAParam re-exported)

LORA_LEAVES = ("lora_a", "lora_b")


def _key(k: Any) -> str:
    return str(getattr(k, "key", getattr(k, "name", k)))


def attach(module: nnx.Module, cfg: WanConfig, rngs: nnx.Rngs, prefix: str = "",
           skip: tuple[str, ...] = ()) -> list[str]:
    """Adds adapters to every Linear under ``module`` whose path matches ``cfg.lora_targets``.

    Args:
      module: the module to walk (called at the end of its ``__init__``, after its own parameters,
        so the base weights draw the same random numbers with and without LoRA).
      cfg: gives rank, scale and the target pattern; nothing happens when ``lora_rank`` is 0.
      rngs: draws the A matrices.
      prefix: the module's own path in the model (``"blocks"`` for a transformer block).
      skip: attribute names not to descend into (submodules that attach their own adapters).

    Returns:
      The paths that got an adapter.
    """
    if not cfg.lora_rank:
        return []
    pattern = re.compile(cfg.lora_targets)
    done = []
    for path, sub in nnx.iter_modules(module):
        if not isinstance(sub, Linear) or (path and _key(path[0]) in skip):
            continue
        name = ".".join([prefix] * bool(prefix) + [_key(p) for p in path])
        if pattern.search(name):
            sub.add_lora(cfg.lora_rank, cfg.lora_scale, rngs)
            done.append(name)
    return done


def linear_paths(module: nnx.Module, prefix: str = "") -> list[str]:
    """Module paths of every Linear under ``module`` (what ``lora_targets`` can match)."""
    return [".".join([prefix] * bool(prefix) + [_key(p) for p in path])
            for path, sub in nnx.iter_modules(module) if isinstance(sub, Linear)]


def is_lora_path(path: tuple) -> bool:
    """True for the path of a LoRA leaf (``.../lora_a`` or ``.../lora_b``); keys may be jax path entries."""
    return bool(path) and _key(path[-1]) in LORA_LEAVES


def _partition(tree: Mapping, prefix: tuple = ()) -> tuple[dict, dict]:
    lora, rest = {}, {}
    for k, v in tree.items():
        p = (*prefix, k)
        if isinstance(v, Mapping):
            a, b = _partition(v, p)
            if a:
                lora[k] = a
            if b:
                rest[k] = b
        elif is_lora_path(p):
            lora[k] = v
        else:
            rest[k] = v
    return lora, rest


def split_trainable(params: Mapping) -> tuple[Any, Any]:
    """(trainable, frozen) parts of a params nested dict (or a tree of shapes or shardings like it).

    With LoRA leaves present, trainable is the sub-dict of LoRA leaves and frozen everything else
    (the base is frozen); without, trainable is ``params`` itself and frozen is None, so full
    fine-tuning sees exactly the tree it always did. :func:`combine` inverts this.
    """
    lora, rest = _partition(params)
    if not lora:
        return params, None
    return lora, rest


def combine(trainable: Any, frozen: Any) -> Any:
    """The full params nested dict from :func:`split_trainable`'s two parts."""
    if frozen is None:
        return trainable
    out = dict(frozen)
    for k, v in trainable.items():
        out[k] = combine(v, out[k]) if isinstance(v, Mapping) and k in out else v
    return out


def merged_kernel(kernel: Any, lora_a: Any, lora_b: Any, scale: float) -> np.ndarray:
    """``W + scale · A B`` in float32 on the host (one layer, or stacked: batched over the leading axis)."""
    w = np.asarray(kernel, np.float32)
    ab = np.matmul(np.asarray(lora_a, np.float32), np.asarray(lora_b, np.float32))
    return w + np.float32(scale) * ab


def merge_params(params: Mapping, cfg: WanConfig) -> dict:
    """Params of the base model (``lora_rank=0``) with every adapter merged into its kernel (host, float32).

    For small models and tests; the exporter merges one layer at a time instead.
    """
    trainable, frozen = split_trainable(params)
    if frozen is None:
        return dict(params)

    def walk(base: Mapping, lora: Mapping) -> dict:
        out = {}
        for k, v in base.items():
            sub = lora.get(k, {})
            if isinstance(v, Mapping):
                out[k] = walk(v, sub)
            elif k == "kernel" and "lora_a" in lora:
                out[k] = merged_kernel(v, lora["lora_a"], lora["lora_b"], cfg.lora_scale)
            else:
                out[k] = v
        return out

    return walk(frozen, trainable)
