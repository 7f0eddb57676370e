"""The one name table between our parameters and diffusers' ``WanTransformer3DModel``.

The table is derived from the model's (abstract) parameter tree, so it always
covers exactly the parameters a given config has. Each entry names our path,
the diffusers key, the layer index (blocks are stacked on a leading axis on our
side) and the per-tensor hook that changes layout. The same entries are used
for import and export.

LoRA adapters (:class:`~dreamactor_jax.models.layers.LoRAParam`, not ``nnx.Param``)
are not part of the diffusers model and so not of :func:`name_table`; a LoRA
model's base weights convert exactly like a plain model's. :func:`lora_table`
names the adapters PEFT-style for a separate LoRA file.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx

from dreamactor_jax.models.config import WanConfig
from dreamactor_jax.models.layers import LoRAParam
from dreamactor_jax.models.transformer import WanTransformer3DModel

# Our module names that differ from diffusers' (a ModuleList index became an attribute).
_SEGMENT_TO_DIFFUSERS = {"net_0": "net.0", "net_2": "net.2", "to_out": "to_out.0"}
# Our LoRA leaves -> PEFT's names (both stored like a Linear weight: transposed).
_LORA_TO_PEFT = {"lora_a": "lora_A.weight", "lora_b": "lora_B.weight"}

Path = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Entry:
    ours: Path  # path in our nnx.State (blocks: the stacked array)
    theirs: str  # diffusers state_dict key
    layer: int | None  # index on the stacked axis, None for unstacked params
    hook: str  # "linear" (transpose), "conv" (Conv3d permute) or "copy"
    our_shape: tuple[int, ...]  # shape of one tensor on our side (per layer)

    def to_theirs(self, a: np.ndarray) -> np.ndarray:
        if self.hook == "linear":
            return np.ascontiguousarray(a.T)
        if self.hook == "conv":  # (pt, ph, pw, C, D) -> (D, C, pt, ph, pw)
            return np.ascontiguousarray(a.transpose(4, 3, 0, 1, 2))
        return a

    def to_ours(self, a: np.ndarray) -> np.ndarray:
        if self.hook == "linear":
            return np.ascontiguousarray(a.T)
        if self.hook == "conv":  # (D, C, pt, ph, pw) -> (pt, ph, pw, C, D)
            return np.ascontiguousarray(a.transpose(2, 3, 4, 1, 0))
        return a

    @property
    def their_shape(self) -> tuple[int, ...]:
        s = self.our_shape
        if self.hook == "linear":
            return (s[1], s[0])
        if self.hook == "conv":
            return (s[4], s[3], s[0], s[1], s[2])
        return s


def abstract_params(cfg: WanConfig) -> nnx.State:
    """Shapes/dtypes of the model's base parameters (``nnx.Param``; no LoRA adapters), allocating nothing."""
    model = nnx.eval_shape(lambda: WanTransformer3DModel(cfg, rngs=nnx.Rngs(0)))
    return nnx.state(model, nnx.Param)


@functools.lru_cache(maxsize=16)
def base_shapes(cfg: WanConfig) -> tuple[tuple[Path, tuple[int, ...]], ...]:
    """(path, shape) of every base parameter, in the model's order: one trace of the model per config, shared by
    the name table, the checks and the import (a 14B trace takes seconds)."""
    return tuple((path, tuple(leaf.shape)) for path, leaf in _flat(abstract_params(cfg)).items())


def abstract_lora_params(cfg: WanConfig) -> nnx.State:
    """Shapes/dtypes of the model's LoRA adapters (empty without LoRA), allocating nothing."""
    model = nnx.eval_shape(lambda: WanTransformer3DModel(cfg, rngs=nnx.Rngs(0)))
    return nnx.state(model, LoRAParam)


def _flat(state: nnx.State) -> dict[Path, jax.ShapeDtypeStruct | jax.Array]:
    out = {}
    for path, leaf in nnx.to_flat_state(state):
        out[tuple(str(p) for p in path)] = leaf.get_value() if isinstance(leaf, nnx.Variable) else leaf
    return out


def flatten(params: Any) -> dict[Path, Any]:
    """Flat {path tuple: array} from an nnx.State, a nested dict (``nnx.to_pure_dict``) or a flat dict."""
    if isinstance(params, nnx.State):
        return _flat(params)
    if isinstance(params, Mapping) and params and all(isinstance(k, tuple) for k in params):
        return dict(params)
    flat: dict[Path, Any] = {}

    def walk(prefix, d):
        for k, v in d.items():
            if isinstance(v, Mapping):
                walk((*prefix, str(k)), v)
            else:
                flat[(*prefix, str(k))] = v

    walk((), params)
    return flat


def _expand(cfg: WanConfig, path: Path, theirs_leaf: str, hook: str, shape: tuple[int, ...]) -> list[Entry]:
    """Entries of one of our arrays: one per layer for the stacked blocks, else one."""
    mods = path[:-1]
    theirs_mods = [_SEGMENT_TO_DIFFUSERS.get(m, m) for m in mods]
    if mods and mods[0] == "blocks":
        return [Entry(path, ".".join(["blocks", str(i), *theirs_mods[1:], theirs_leaf]), i, hook, shape[1:])
                for i in range(cfg.num_layers)]
    return [Entry(path, ".".join([*theirs_mods, theirs_leaf]), None, hook, shape)]


def name_table(cfg: WanConfig) -> list[Entry]:
    """All (ours, diffusers) pairs for ``cfg``'s base parameters, in diffusers' module order."""
    entries = []
    for path, shape in base_shapes(cfg):
        *mods, leafname = path
        if leafname == "kernel":
            hook = "conv" if mods == ["patch_embedding"] else "linear"
            theirs_leaf = "weight"
        else:
            hook, theirs_leaf = "copy", leafname
        entries += _expand(cfg, path, theirs_leaf, hook, shape)
    return entries


def lora_table(cfg: WanConfig) -> list[Entry]:
    """(ours, PEFT-style) pairs of the LoRA adapters: ``blocks.N.ffn.net.0.proj.lora_A.weight`` (r, in) and
    ``...lora_B.weight`` (out, r), the layout of ``torch.nn.Linear(in, r)`` / ``Linear(r, out)``."""
    entries = []
    for path, leaf in _flat(abstract_lora_params(cfg)).items():
        entries += _expand(cfg, path, _LORA_TO_PEFT[path[-1]], "linear", tuple(leaf.shape))
    return entries


def lora_target_modules(cfg: WanConfig) -> list[str]:
    """diffusers module names that carry adapters, per block without the ``blocks.N.`` prefix (PEFT's
    ``target_modules``, matched as a suffix of the module name), e.g. ``["ffn.net.0.proj", "ffn.net.2"]``."""
    out = []
    for e in lora_table(cfg):
        mod = e.theirs.rsplit(".", 2)[0]  # drop lora_A.weight
        if e.layer is not None:
            mod = mod.split(".", 2)[2]  # drop blocks.N
        if mod not in out:
            out.append(mod)
    return out


def export_tensors(cfg: WanConfig, params: nnx.State | Mapping[Any, Any],
                   fetch: Callable[[jax.Array], np.ndarray] = np.asarray) -> Iterator[tuple[str, np.ndarray]]:
    """Yields (diffusers key, torch-layout array) one tensor at a time.

    ``params`` is an nnx.State, a nested dict (``nnx.to_pure_dict``) or a flat
    {path tuple: array} dict. ``fetch`` turns one (possibly sharded) array into
    host memory; only one layer's slice of a stacked array is fetched at a time.
    """
    flat = flatten(params)
    for e in name_table(cfg):
        a = flat[e.ours]
        a = a[e.layer] if e.layer is not None else a
        yield e.theirs, e.to_theirs(fetch(a))


class TensorMismatchError(ValueError):
    """Raised when a checkpoint's tensors do not match the model; lists every offending name."""


def check_keys_and_shapes(cfg: WanConfig, shapes: Mapping[str, tuple[int, ...]], source: str = "checkpoint") -> None:
    """Raises one error naming all missing, unexpected and mis-shaped tensors."""
    table = {e.theirs: e for e in name_table(cfg)}
    missing = sorted(set(table) - set(shapes))
    unexpected = sorted(set(shapes) - set(table))
    bad = sorted(f"{k}: {tuple(shapes[k])} != expected {e.their_shape}"
                 for k, e in table.items() if k in shapes and tuple(shapes[k]) != e.their_shape)
    if missing or unexpected or bad:
        lines = [f"{source} does not match the model config:"]
        if missing:
            lines.append(f"  missing tensors ({len(missing)}): {', '.join(missing)}")
        if unexpected:
            lines.append(f"  unexpected tensors ({len(unexpected)}): {', '.join(unexpected)}")
        if bad:
            lines.append(f"  shape mismatches ({len(bad)}): {'; '.join(bad)}")
        raise TensorMismatchError("\n".join(lines))


def import_tensors(cfg: WanConfig, get: Callable[[str], np.ndarray], names: Iterable[str],
                   shapes: Mapping[str, tuple[int, ...]] | None = None, dtype=np.float32) -> dict[Path, np.ndarray]:
    """Builds our flat parameter dict from diffusers-named tensors.

    Args:
      get: returns the torch-layout array for a diffusers key.
      names: all keys present in the source (checked for missing/unexpected).
      shapes: their shapes, if known without loading (else loaded to check).
    """
    names = list(names)
    if shapes is None:
        shapes = {n: tuple(np.shape(get(n))) for n in names}
    check_keys_and_shapes(cfg, shapes)
    table = name_table(cfg)
    out: dict[Path, np.ndarray] = {}
    stacked_shapes = dict(base_shapes(cfg))
    for e in table:
        a = e.to_ours(np.asarray(get(e.theirs))).astype(dtype)
        if e.layer is None:
            out[e.ours] = a
        else:
            if e.ours not in out:
                out[e.ours] = np.empty(stacked_shapes[e.ours], dtype)
            out[e.ours][e.layer] = a
    return out


def unflatten(flat: Mapping[Path, np.ndarray | jax.Array]) -> dict:
    """Nested dict (what ``nnx.update``/``nnx.replace_by_pure_dict`` take) from a flat path dict."""
    nested: dict = {}
    for path, a in flat.items():
        d = nested
        for p in path[:-1]:
            d = d.setdefault(p, {})
        d[path[-1]] = a
    return nested
