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
"""

from __future__ import annotations

import importlib.metadata
import json
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import ml_dtypes
import numpy as np
from flax import nnx

from dreamactor_jax.convert import names, orbax_reader
from dreamactor_jax.convert.fsutil import atomic_dir
from dreamactor_jax.convert.io import CLASS_NAME, CONFIG_NAME, INDEX_NAME, WEIGHTS_NAME
from dreamactor_jax.convert.safetensors_io import Spec, parse_size, plan_shards, write_file
from dreamactor_jax.models.config import WanConfig
from dreamactor_jax.train import checkpoint as ckpt_lib

DTYPES = {"fp32": np.dtype(np.float32), "float32": np.dtype(np.float32),
          "bf16": np.dtype(ml_dtypes.bfloat16), "bfloat16": np.dtype(ml_dtypes.bfloat16)}
WEIGHTS = ("auto", "ema", "params")
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


def _flatten(params: Any) -> dict[names.Path, Any]:
    """Flat {path tuple: array} from an nnx.State, a nested dict (``nnx.to_pure_dict``) or a flat dict."""
    if isinstance(params, nnx.State):
        return names._flat(params)
    if isinstance(params, Mapping) and params and all(isinstance(k, tuple) for k in params):
        return dict(params)
    flat: dict[names.Path, Any] = {}

    def walk(prefix, d):
        for k, v in d.items():
            if isinstance(v, Mapping):
                walk((*prefix, str(k)), v)
            else:
                flat[(*prefix, str(k))] = v
    walk((), params)
    return flat


def _check_source(cfg: WanConfig, flat: Mapping[names.Path, Any], source: str) -> None:
    expected = {tuple(str(p) for p in k): tuple(v.shape) for k, v in names._flat(names.abstract_params(cfg)).items()}
    missing = sorted(".".join(p) for p in set(expected) - set(flat))
    unexpected = sorted(".".join(p) for p in set(flat) - set(expected))
    bad = sorted(f"{'.'.join(p)}: {tuple(flat[p].shape)} != expected {s}"
                 for p, s in expected.items() if p in flat and tuple(flat[p].shape) != s)
    if missing or unexpected or bad:
        raise names.TensorMismatchError(
            f"{source} does not match the model config:\n  missing: {missing}\n  unexpected: {unexpected}\n"
            f"  shape mismatches: {bad}")


def write_diffusers(cfg: WanConfig, flat: Mapping[names.Path, Any], out: str, *, dtype: str = "bf16",
                    max_shard_size: int | str = "5GB",
                    fetch: Callable[[Any], np.ndarray] = _host_fetch) -> dict[str, Any]:
    """Streams ``flat`` (our parameter paths -> arrays or lazy arrays) to a diffusers directory at ``out``.

    Args:
      cfg: the model architecture (written to config.json; defines every tensor).
      flat: our flat parameters; values need ``.shape``, ``[layer]`` for stacked blocks and
        ``fetch`` support (jax/numpy arrays, or :class:`orbax_reader.StoredArray`).
      out: output directory; must not exist or be empty. Nothing is left there on failure.
      dtype: "bf16" or "fp32".
      max_shard_size: bytes per shard, e.g. "5GB", "200MB" or an int; one file if everything fits.
      fetch: turns one array (a layer slice) into a host numpy array.

    Returns:
      Summary: out, files, tensors, total_size (tensor bytes), file_bytes, dtype.
    """
    target = _target_dtype(dtype)
    max_bytes = parse_size(max_shard_size)
    _check_source(cfg, flat, "export source")
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
        file_bytes = sum(os.path.getsize(os.path.join(tmp, n)) for n in os.listdir(tmp))
    return {"out": os.path.abspath(out), "files": files, "tensors": len(specs), "total_size": total,
            "file_bytes": file_bytes, "dtype": target.name}


def export_params(cfg: WanConfig, params: Any, out: str, *, dtype: str = "bf16",
                  max_shard_size: int | str = "5GB") -> dict[str, Any]:
    """Exports in-memory parameters (nnx.State, nested or flat dict; arrays may be sharded over devices)."""
    return write_diffusers(cfg, _flatten(params), out, dtype=dtype, max_shard_size=max_shard_size)


def export_checkpoint(ckpt_dir: str, out: str, *, weights: str = "auto", dtype: str = "bf16",
                      max_shard_size: int | str = "5GB", step: int | None = None,
                      read_budget: int = orbax_reader.DEFAULT_READ_BUDGET) -> dict[str, Any]:
    """Exports ``params`` or ``ema`` of one of our Orbax checkpoints without restoring the tree.

    Args:
      weights: "ema", "params", or "auto" (ema when the checkpoint has it, else params).
      step: checkpoint step; the latest when None.
      read_budget: stacked arrays up to this many bytes are read whole (see :mod:`orbax_reader`).
    """
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")
    path, step = orbax_reader.step_dir(ckpt_dir, step)
    meta = ckpt_lib.read_meta(ckpt_dir, step)
    cfg = ckpt_lib.model_config_from_meta(meta)
    if weights == "auto":
        weights = "ema" if os.path.isdir(os.path.join(path, "ema")) else "params"
    arrays = orbax_reader.open_item(ckpt_dir, weights, cfg, step, read_budget=read_budget)
    summary = write_diffusers(cfg, arrays, out, dtype=dtype, max_shard_size=max_shard_size, fetch=np.asarray)
    return {**summary, "checkpoint": os.path.abspath(ckpt_dir), "step": step, "weights": weights}
