"""Export to a diffusers ``WanTransformer3DModel`` directory, streamed one tensor at a time.

The output is what ``WanTransformer3DModel.from_pretrained(dir)`` reads:
``config.json`` plus either ``diffusion_pytorch_model.safetensors`` or numbered
shards and ``diffusion_pytorch_model.safetensors.index.json``.

Every tensor's name, shape and dtype is known from the model config before any
data is read, so shard boundaries and safetensors headers are planned first and
tensor data is then pulled from the source one tensor (one layer slice) at a
time and written straight to disk. Host memory stays around one tensor plus
whatever the source needs to produce it; it never holds a shard, let alone the
model. The directory is written under a temporary name and renamed at the end.

A model with LoRA adapters exports in one of two ways (``lora=``):

* ``"merge"`` (default): each adapted kernel is written as ``W + (alpha/r) A B``,
  computed in float32 on the host one tensor (one layer) at a time, so the
  directory has exactly the standard diffusers keys;
* ``"separate"``: the base weights as usual plus ``lora.safetensors`` with
  PEFT-style names (``blocks.N.ffn.net.0.proj.lora_A.weight`` (r, in),
  ``...lora_B.weight`` (out, r)) and ``adapter_config.json`` (``r``,
  ``lora_alpha``, ``target_modules``; the update is scaled by lora_alpha / r).
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import ml_dtypes
import numpy as np

from dreamactor_jax import fs
from dreamactor_jax.convert import names, orbax_reader
from dreamactor_jax.convert.fsutil import atomic_dir
from dreamactor_jax.convert.pretrained import CLASS_NAME, CONFIG_NAME, INDEX_NAME, WEIGHTS_NAME
from dreamactor_jax.convert.safetensors_io import Spec, parse_size, plan_shards, write_file
from dreamactor_jax.models import lora as lora_lib
from dreamactor_jax.models.config import WanConfig
from dreamactor_jax.train import checkpoint as ckpt_lib

DTYPES = {"fp32": np.dtype(np.float32), "float32": np.dtype(np.float32),
          "bf16": np.dtype(ml_dtypes.bfloat16), "bfloat16": np.dtype(ml_dtypes.bfloat16)}
WEIGHTS = ("auto", "ema", "params")
LORA_MODES = ("merge", "separate")
LORA_WEIGHTS_NAME = "lora.safetensors"
ADAPTER_CONFIG_NAME = "adapter_config.json"
_MIN_DIFFUSERS = "0.33.0"  # first diffusers release with WanTransformer3DModel


def diffusers_config(cfg: WanConfig) -> dict[str, Any]:
    """The ``config.json`` of ``cfg`` as diffusers writes it."""
    try:
        version = importlib.metadata.version("diffusers")
    except importlib.metadata.PackageNotFoundError:
        version = _MIN_DIFFUSERS
    return {"_class_name": CLASS_NAME, "_diffusers_version": version, **cfg.arch_dict()}


def shard_name(i: int, n: int) -> str:
    return f"diffusion_pytorch_model-{i + 1:05d}-of-{n:05d}.safetensors"


def _target_dtype(dtype: str) -> np.dtype:
    try:
        return DTYPES[dtype.lower()]
    except KeyError:
        raise ValueError(f"unknown export dtype {dtype!r}; use one of {sorted(DTYPES)}") from None


def _host_fetch(a) -> np.ndarray:
    """One (possibly sharded) array to host memory: only the slice asked for is transferred."""
    if isinstance(a, jax.Array) and not a.is_fully_addressable:
        raise ValueError("export from in-memory arrays needs them fully addressable by this process; on several "
                         "hosts, save a checkpoint and export from it (export_checkpoint)")
    return np.asarray(jax.device_get(a))


def _check_source(cfg: WanConfig, flat: Mapping[names.Path, Any], source: str, *, lora: bool = False) -> None:
    if lora:
        expected = {k: tuple(v.shape) for k, v in names._flat(names.abstract_lora_params(cfg)).items()}
    else:
        expected = dict(names.base_shapes(cfg))
    missing = sorted(".".join(p) for p in set(expected) - set(flat))
    unexpected = sorted(".".join(p) for p in set(flat) - set(expected))
    bad = sorted(f"{'.'.join(p)}: {tuple(flat[p].shape)} != expected {s}"
                 for p, s in expected.items() if p in flat and tuple(flat[p].shape) != s)
    if missing or unexpected or bad:
        raise names.TensorMismatchError(
            f"{source} does not match the model config:\n  missing: {missing}\n  unexpected: {unexpected}\n"
            f"  shape mismatches: {bad}")


class _MergedKernel:
    """The lazy kernel ``W + scale·A·B`` of one adapted Linear; ``[i]`` is layer ``i`` of a stacked one."""

    def __init__(self, kernel: Any, a: Any, b: Any, scale: float, layer: int | None = None):
        self.kernel, self.a, self.b, self.scale, self.layer = kernel, a, b, scale, layer

    @property
    def shape(self) -> tuple[int, ...]:
        shape = tuple(self.kernel.shape)
        return shape if self.layer is None else shape[1:]

    def __getitem__(self, i: int) -> _MergedKernel:
        return _MergedKernel(self.kernel, self.a, self.b, self.scale, int(i))

    def materialize(self, fetch: Callable[[Any], np.ndarray]) -> np.ndarray:
        pick = (lambda x: x) if self.layer is None else (lambda x: x[self.layer])
        return lora_lib.merged_kernel(fetch(pick(self.kernel)), fetch(pick(self.a)), fetch(pick(self.b)),
                                      self.scale)


def _fetch_merged(a: Any, *, fetch: Callable[[Any], np.ndarray]) -> np.ndarray:
    return a.materialize(fetch) if isinstance(a, _MergedKernel) else fetch(a)


def _split_lora(flat: Mapping[names.Path, Any]) -> tuple[dict, dict]:
    """(base, adapters) of a flat parameter dict."""
    base = {p: a for p, a in flat.items() if not lora_lib.is_lora_path(p)}
    return base, {p: a for p, a in flat.items() if lora_lib.is_lora_path(p)}


def _merge_lazily(cfg: WanConfig, base: Mapping[names.Path, Any], adapters: Mapping[names.Path, Any]) -> dict:
    out = dict(base)
    for p in adapters:
        if p[-1] == "lora_a":
            kern = (*p[:-1], "kernel")
            out[kern] = _MergedKernel(base[kern], adapters[p], adapters[(*p[:-1], "lora_b")], cfg.lora_scale)
    return out


def adapter_config(cfg: WanConfig) -> dict[str, Any]:
    """PEFT's ``adapter_config.json`` for the adapters of ``cfg``."""
    return {"peft_type": "LORA", "r": cfg.lora_rank, "lora_alpha": float(cfg.lora_alpha or cfg.lora_rank),
            "target_modules": names.lora_target_modules(cfg), "lora_dropout": 0.0, "bias": "none",
            "fan_in_fan_out": False, "use_rslora": False, "use_dora": False, "init_lora_weights": True,
            "task_type": None, "base_model_name_or_path": None}


def write_diffusers(cfg: WanConfig, flat: Mapping[names.Path, Any], out: str, *, dtype: str = "bf16",
                    max_shard_size: int | str = "5GB", fetch: Callable[[Any], np.ndarray] = _host_fetch,
                    lora: str = "merge") -> dict[str, Any]:
    """Streams ``flat`` (our parameter paths -> arrays or lazy arrays) to a diffusers directory at ``out``.

    Args:
      cfg: the model architecture (written to config.json; defines every tensor).
      flat: our flat parameters; values need ``.shape``, ``[layer]`` for stacked blocks and
        ``fetch`` support (jax/numpy arrays, or :class:`orbax_reader.StoredArray`). With
        ``cfg.lora_rank > 0`` it also holds the adapters (``.../lora_a``, ``.../lora_b``).
      out: output directory; must not exist or be empty. Nothing is left there on failure.
      dtype: "bf16" or "fp32".
      max_shard_size: bytes per shard, e.g. "5GB", "200MB" or an int; one file if everything fits.
      fetch: turns one array (a layer slice) into a host numpy array.
      lora: "merge" (adapters folded into the kernels, in float32 before the cast to ``dtype``) or
        "separate" (base weights plus ``lora.safetensors`` and ``adapter_config.json``); no effect
        without adapters.

    Returns:
      Summary: out, files, tensors, total_size (tensor bytes), file_bytes, dtype, lora (the mode, or
      None without adapters) and for "separate" lora_tensors.
    """
    target = _target_dtype(dtype)
    max_bytes = parse_size(max_shard_size)
    if lora not in LORA_MODES:
        raise ValueError(f"lora must be one of {LORA_MODES}, got {lora!r}")
    flat, adapters = _split_lora(flat)
    _check_source(cfg, flat, "export source")
    _check_source(cfg, adapters, "export source (LoRA adapters)", lora=True)
    mode = lora if adapters else None
    if mode == "merge":
        flat = _merge_lazily(cfg, flat, adapters)
        fetch = functools.partial(_fetch_merged, fetch=fetch)
    specs = [Spec(e.theirs, e.their_shape, target) for e in names.name_table(cfg)]
    shards = plan_shards(specs, max_bytes)
    tensors: Iterator[tuple[str, np.ndarray]] = (
        (k, a.astype(target, copy=False)) for k, a in names.export_tensors(cfg, flat, fetch))
    weight_map: dict[str, str] = {}
    total = 0
    with atomic_dir(out) as tmp:
        with open(os.path.join(tmp, CONFIG_NAME), "w") as f:
            json.dump(diffusers_config(cfg), f, indent=2, sort_keys=True)
        files = [WEIGHTS_NAME] if len(shards) == 1 else [shard_name(i, len(shards)) for i in range(len(shards))]
        for fname, shard in zip(files, shards, strict=True):
            total += write_file(os.path.join(tmp, fname), shard, tensors, {"format": "pt"})
            weight_map.update({s.name: fname for s in shard})
        if next(tensors, None) is not None:
            raise RuntimeError("internal error: export produced more tensors than the name table lists")
        if len(files) > 1:
            with open(os.path.join(tmp, INDEX_NAME), "w") as f:
                json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2, sort_keys=True)
        extra = {}
        if mode == "separate":
            extra["lora_tensors"] = _write_lora(cfg, adapters, tmp, target, fetch)
        file_bytes = sum(os.path.getsize(os.path.join(tmp, n)) for n in os.listdir(tmp))
    return {"out": fs.absolute(out), "files": files, "tensors": len(specs), "total_size": total,
            "file_bytes": file_bytes, "dtype": target.name, "lora": mode, **extra}


def _write_lora(cfg: WanConfig, adapters: Mapping[names.Path, Any], tmp: str, target: np.dtype,
                fetch: Callable[[Any], np.ndarray]) -> int:
    """Writes ``lora.safetensors`` and ``adapter_config.json`` into ``tmp``; returns the tensor count."""
    table = names.lora_table(cfg)
    tensors = ((e.theirs, e.to_theirs(fetch(adapters[e.ours][e.layer] if e.layer is not None else adapters[e.ours]))
                .astype(target, copy=False)) for e in table)
    write_file(os.path.join(tmp, LORA_WEIGHTS_NAME), [Spec(e.theirs, e.their_shape, target) for e in table], tensors,
               {"format": "pt"})
    with open(os.path.join(tmp, ADAPTER_CONFIG_NAME), "w") as f:
        json.dump(adapter_config(cfg), f, indent=2, sort_keys=True)
    return len(table)


def export_params(cfg: WanConfig, params: Any, out: str, *, dtype: str = "bf16",
                  max_shard_size: int | str = "5GB", lora: str = "merge") -> dict[str, Any]:
    """Exports in-memory parameters (nnx.State, nested or flat dict; arrays may be sharded over devices).

    With LoRA, ``params`` holds base and adapters (``TrainState.params``; for the EMA adapters,
    ``models.lora.combine(state.ema, models.lora.split_trainable(state.params)[1])``).
    """
    return write_diffusers(cfg, names.flatten(params), out, dtype=dtype, max_shard_size=max_shard_size, lora=lora)


def _open_adapters(ckpt_dir: str, item: str, cfg: WanConfig, step: int,
                   read_budget: int) -> dict[names.Path, orbax_reader.StoredArray]:
    """Lazy LoRA arrays of checkpoint ``item`` (like ``orbax_reader.open_item`` for the adapter paths).

    Each gets its own layer-group cache: a merged kernel reads W, A and B of one layer together,
    and a shared cache would re-read every stacked array's group for every layer.
    """
    item_dir = fs.join(orbax_reader.step_dir(ckpt_dir, step)[0], item)
    out, bad = {}, []
    for p, leaf in names._flat(names.abstract_lora_params(cfg)).items():
        name = ".".join(p)
        kv = orbax_reader._kvstore(item_dir, name)
        try:
            spec = {"driver": orbax_reader._driver(kv), "kvstore": kv}
        except FileNotFoundError:
            bad.append(f"{name}: missing")
            continue
        arr = orbax_reader.StoredArray(spec, name, orbax_reader._GroupCache(), read_budget)
        if arr.shape != tuple(leaf.shape):
            bad.append(f"{name}: stored {arr.shape} != expected {tuple(leaf.shape)}")
        out[p] = arr
    if bad:
        raise names.TensorMismatchError(f"checkpoint {item_dir} does not match its model config (LoRA rank "
                                        f"{cfg.lora_rank}, targets {cfg.lora_targets!r}):\n  " + "\n  ".join(bad))
    return out


def export_checkpoint(ckpt_dir: str, out: str, *, weights: str = "auto", dtype: str = "bf16",
                      max_shard_size: int | str = "5GB", step: int | None = None,
                      read_budget: int = orbax_reader.DEFAULT_READ_BUDGET, lora: str = "merge") -> dict[str, Any]:
    """Exports ``params`` or ``ema`` of one of our Orbax checkpoints without restoring the tree.

    Args:
      weights: "ema", "params", or "auto" (ema when the checkpoint has it, else params). A LoRA
        run's EMA holds only the adapters: "ema" then means the base from ``params`` with the
        EMA adapters.
      step: checkpoint step; the latest when None.
      read_budget: stacked arrays up to this many bytes are read whole (see :mod:`orbax_reader`).
      lora: "merge" or "separate", see :func:`write_diffusers`.
    """
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")
    path, step = orbax_reader.step_dir(ckpt_dir, step)
    meta = ckpt_lib.read_meta(ckpt_dir, step)
    cfg = ckpt_lib.model_config_from_meta(meta)
    if weights == "auto":
        weights = "ema" if fs.isdir(fs.join(path, "ema")) else "params"
    if cfg.lora_rank:
        arrays = dict(orbax_reader.open_item(ckpt_dir, "params", cfg, step, read_budget=read_budget))
        if not fs.isdir(fs.join(path, weights)):
            raise FileNotFoundError(f"checkpoint {ckpt_dir} step {step} has no item {weights!r}")
        arrays.update(_open_adapters(ckpt_dir, weights, cfg, step, read_budget))
    else:
        arrays = orbax_reader.open_item(ckpt_dir, weights, cfg, step, read_budget=read_budget)
    summary = write_diffusers(cfg, arrays, out, dtype=dtype, max_shard_size=max_shard_size, fetch=np.asarray,
                              lora=lora)
    return {**summary, "checkpoint": fs.absolute(ckpt_dir), "step": step, "weights": weights}
