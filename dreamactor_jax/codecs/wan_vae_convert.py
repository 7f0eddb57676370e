"""Wan VAE weights: diffusers ``AutoencoderKLWan`` / original ``Wan2.1_VAE.pth`` <-> our parameters.

Like the transformer's :mod:`dreamactor_jax.convert.names`, the name table is derived from the model's abstract
parameter tree, so it covers exactly the parameters of a config; each entry names our path, the diffusers key and
the per-tensor hook that changes layout:

* ``conv3d``: Conv3d (out, in, kt, kh, kw) <-> (kt, kh, kw, in, out);
* ``conv2d``: Conv2d (out, in, kh, kw) <-> (kh, kw, in, out) (resample convs, attention ``to_qkv``/``proj``);
* ``gamma``: RMS-norm gamma (C, 1, 1, 1), or (C, 1, 1) in attention blocks, <-> (C,);
* ``copy``: biases.

The original release (``wan/modules/vae.py``) names the same tensors differently (flat ``downsamples`` /
``upsamples`` lists, ``residual.{0,2,3,6}``, ``middle.{0,1,2}``, ``head.{0,2}``, top-level ``conv1``/``conv2``);
:func:`original_names` is that bijection, derived from the config (diffusers' own converter hard-codes the Wan2.1
indices; the tests check both agree there).

Weight files are untrusted input. Safetensors are parsed by :mod:`~dreamactor_jax.convert.safetensors_io`;
a ``.pth`` is read only with ``torch.load(weights_only=True)``, which builds tensors and plain containers and
refuses any other object a pickle names (a pickle that would run code raises :class:`UnsafeWeightsError`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pickle
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import ml_dtypes
import numpy as np
from flax import nnx

from dreamactor_jax.codecs import wan_vae_layers as L
from dreamactor_jax.convert.fsutil import atomic_dir
from dreamactor_jax.convert.names import TensorMismatchError
from dreamactor_jax.convert.safetensors_io import SafetensorsFile, Spec, write_file

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"
PTH_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")
EXPORT_DTYPES = {
    "fp32": np.dtype(np.float32),
    "float32": np.dtype(np.float32),
    "bf16": np.dtype(ml_dtypes.bfloat16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
}
_MIN_DIFFUSERS = "0.33.0"  # first diffusers release with AutoencoderKLWan
_PREFIXES = ("first_stage_model.", "vae.", "model.")  # stripped when every tensor name carries one

Path = tuple[str, ...]
# Our module names that differ from diffusers' (a Sequential index became an attribute).
_SEGMENT_TO_DIFFUSERS = {"resample_1": "resample.1"}


class UnsafeWeightsError(ValueError):
    """A weights file whose pickle asks for more than tensors and plain containers (it could run code)."""


@dataclasses.dataclass(frozen=True)
class Entry:
    ours: Path  # path in our nnx.State
    theirs: str  # diffusers state_dict key
    hook: str  # "conv3d", "conv2d", "gamma" or "copy"
    our_shape: tuple[int, ...]
    their_shape: tuple[int, ...]

    def to_theirs(self, a: np.ndarray) -> np.ndarray:
        if self.hook == "conv3d":  # (kt, kh, kw, in, out) -> (out, in, kt, kh, kw)
            return np.ascontiguousarray(a.transpose(4, 3, 0, 1, 2))
        if self.hook == "conv2d":  # (kh, kw, in, out) -> (out, in, kh, kw)
            return np.ascontiguousarray(a.transpose(3, 2, 0, 1))
        return a.reshape(self.their_shape)

    def to_ours(self, a: np.ndarray) -> np.ndarray:
        if self.hook == "conv3d":
            return np.ascontiguousarray(a.transpose(2, 3, 4, 1, 0))
        if self.hook == "conv2d":
            return np.ascontiguousarray(a.transpose(2, 3, 1, 0))
        return a.reshape(self.our_shape)


@functools.lru_cache(maxsize=16)
def abstract_split(cfg: L.WanVAEConfig) -> tuple[nnx.GraphDef, nnx.State]:
    """(graphdef, abstract state) of ``cfg``'s model, traced once per config (tracing takes ~1 s)."""
    return nnx.split(L.abstract_model(cfg))


def abstract_params(cfg: L.WanVAEConfig) -> nnx.State:
    return abstract_split(cfg)[1]


def _flat(state: nnx.State) -> dict[Path, Any]:
    out = {}
    for path, leaf in nnx.to_flat_state(state):
        out[tuple(str(p) for p in path)] = leaf.get_value() if isinstance(leaf, nnx.Variable) else leaf
    return out


@functools.lru_cache(maxsize=16)
def name_table(cfg: L.WanVAEConfig) -> tuple[Entry, ...]:
    """All (ours, diffusers) pairs of ``cfg``'s parameters (cached per config)."""
    entries = []
    for path, leaf in _flat(abstract_params(cfg)).items():
        *mods, leafname = path
        shape = tuple(leaf.shape)
        theirs = ".".join(
            [*(_SEGMENT_TO_DIFFUSERS.get(m, m) for m in mods), "weight" if leafname == "kernel" else leafname]
        )
        if leafname == "kernel":
            hook = "conv3d" if len(shape) == 5 else "conv2d"
            their_shape = (shape[-1], shape[-2], *shape[:-2])
        elif leafname == "gamma":  # the attention block's norm is diffusers' images=True: (C, 1, 1)
            hook = "gamma"
            their_shape = (shape[0], 1, 1) if "attentions" in mods else (shape[0], 1, 1, 1)
        else:
            hook, their_shape = "copy", shape
        entries.append(Entry(path, theirs, hook, shape, their_shape))
    return tuple(entries)


# ---------------------------------------------------------------------------------------------------------
# The original release's names.

_RESNET_TO_ORIGINAL = {
    "norm1": "residual.0",
    "conv1": "residual.2",
    "norm2": "residual.3",
    "conv2": "residual.6",
    "conv_shortcut": "shortcut",
}
_MID_TO_ORIGINAL = {"resnets.0": "middle.0", "attentions.0": "middle.1", "resnets.1": "middle.2"}
_TOP_TO_ORIGINAL = {
    "quant_conv": "conv1",
    "post_quant_conv": "conv2",
    "encoder.conv_in": "encoder.conv1",
    "decoder.conv_in": "decoder.conv1",
    "encoder.norm_out": "encoder.head.0",
    "encoder.conv_out": "encoder.head.2",
    "decoder.norm_out": "decoder.head.0",
    "decoder.conv_out": "decoder.head.2",
}


def _resnet_rest(rest: str) -> str:
    mod, _, leaf = rest.partition(".")
    return f"{_RESNET_TO_ORIGINAL[mod]}.{leaf}" if mod in _RESNET_TO_ORIGINAL else rest


def to_original(cfg: L.WanVAEConfig, key: str) -> str:
    """The original Wan2.1 name of a diffusers ``AutoencoderKLWan`` tensor name."""
    mod, _, leaf = key.rpartition(".")
    if mod in _TOP_TO_ORIGINAL:
        return f"{_TOP_TO_ORIGINAL[mod]}.{leaf}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.(resnets\.\d+|attentions\.\d+)\.(.+)", key):
        side, block, rest = m.groups()
        return f"{side}.{_MID_TO_ORIGINAL[block]}.{_resnet_rest(rest) if 'resnets' in block else rest}"
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.(.+)", key):  # both sides keep one flat list
        return f"encoder.downsamples.{m.group(1)}.{_resnet_rest(m.group(2))}"
    # The decoder's up_blocks.i (num_res_blocks + 1 resnets, then one upsampler) are flattened in order.
    per_block = cfg.num_res_blocks + 2
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        i, j, rest = int(m.group(1)), int(m.group(2)), m.group(3)
        return f"decoder.upsamples.{i * per_block + j}.{_resnet_rest(rest)}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.+)", key):
        return f"decoder.upsamples.{int(m.group(1)) * per_block + cfg.num_res_blocks + 1}.{m.group(2)}"
    raise KeyError(f"no original Wan2.1 name for {key!r}")


def original_names(cfg: L.WanVAEConfig) -> dict[str, str]:
    """{diffusers key: original Wan2.1 key} for every tensor of ``cfg`` (a bijection)."""
    out = {e.theirs: to_original(cfg, e.theirs) for e in name_table(cfg)}
    if len(set(out.values())) != len(out):
        raise AssertionError("internal error: original names are not unique")
    return out


def detect_layout(keys: Iterable[str]) -> str:
    """``"diffusers"`` (``quant_conv.weight``) or ``"original"`` (top-level ``conv1.weight``)."""
    keys = set(keys)
    d, o = "quant_conv.weight" in keys, "conv1.weight" in keys
    if d != o:
        return "diffusers" if d else "original"
    raise ValueError(
        "cannot tell the VAE checkpoint layout: expected exactly one of 'quant_conv.weight' "
        f"(diffusers AutoencoderKLWan) or 'conv1.weight' (original Wan2.1 VAE); found "
        f"{'both' if d else 'neither'} among {len(keys)} tensors"
    )


# ---------------------------------------------------------------------------------------------------------
# Reading weight files.


@dataclasses.dataclass
class WeightSource:
    """Tensors of a VAE checkpoint under diffusers names, read on demand."""

    path: str
    layout: str  # "diffusers" or "original" (as stored; names below are diffusers')
    config: dict | None  # config.json, when there is one
    shapes: dict[str, tuple[int, ...]]
    get: Callable[[str], np.ndarray]


def _torch_to_numpy(t) -> np.ndarray:
    import torch

    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        return t.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def _load_pth(path: str) -> dict[str, np.ndarray]:
    """A ``.pth`` state dict through ``torch.load(weights_only=True)`` only; nothing else is unpickled."""
    try:
        import torch
    except ImportError:
        raise ImportError(
            f"{path}: reading a .pth needs torch (pip install torch); or convert it to safetensors elsewhere"
        ) from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnsafeWeightsError(
            f"{path}: refused to load: its pickle asks for objects other than tensors and plain containers, "
            f"which could run code (torch.load(weights_only=True) said: {first}). Only plain state dicts of "
            "tensors are accepted; convert the file to safetensors from a trusted environment."
        ) from None
    except (RuntimeError, EOFError, OSError) as e:
        raise ValueError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: {e})") from None
    if isinstance(obj, dict) and len(obj) == 1 and next(iter(obj)) in ("state_dict", "model"):
        obj = next(iter(obj.values()))
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: expected a state dict of tensors, got {type(obj).__name__}")
    return {str(k): _torch_to_numpy(v) for k, v in obj.items()}


def _safetensors_files(directory: str) -> list[str]:
    index = os.path.join(directory, INDEX_NAME)
    if os.path.isfile(index):
        with open(index) as f:
            return [os.path.join(directory, n) for n in sorted(set(json.load(f)["weight_map"].values()))]
    single = os.path.join(directory, WEIGHTS_NAME)
    if os.path.isfile(single):
        return [single]
    found = sorted(os.path.join(directory, n) for n in os.listdir(directory) if n.endswith(".safetensors"))
    if len(found) == 1:
        return found
    return []


def open_weights(path: str, config: Any = None) -> WeightSource:
    """A diffusers VAE directory (``config.json`` + safetensors, sharded or not), one ``.safetensors`` file,
    or an original ``Wan2.1_VAE.pth`` (or a directory holding just one ``.pth``).

    ``config`` (see :func:`read_weights`) only matters for an original-layout file, whose names it decides.
    """
    path = os.fspath(path)
    config_json = None
    if os.path.isdir(path):
        cfg_path = os.path.join(path, CONFIG_NAME)
        if os.path.isfile(cfg_path):
            with open(cfg_path) as f:
                config_json = json.load(f)
        files = _safetensors_files(path)
        if not files:
            pths = sorted(n for n in os.listdir(path) if n.endswith(PTH_SUFFIXES))
            if len(pths) != 1:
                raise FileNotFoundError(f"{path}: no {WEIGHTS_NAME}, index, single .safetensors or single .pth")
            files = [os.path.join(path, pths[0])]
    elif os.path.isfile(path):
        files = [path]
    else:
        raise FileNotFoundError(f"VAE weights not found: {path}")
    if files[0].endswith(PTH_SUFFIXES):
        tensors = _load_pth(files[0])
        stored = {k: (lambda a=a: a) for k, a in tensors.items()}
        shapes = {k: tuple(a.shape) for k, a in tensors.items()}
    else:
        stored, shapes = {}, {}
        for fn in files:
            st = SafetensorsFile(fn)
            for k, info in st.tensors.items():
                stored[k] = lambda st=st, k=k: st.get(k)
                shapes[k] = info.shape
    for prefix in _PREFIXES:  # checkpoints saved from a wrapping model (ComfyUI and others)
        if shapes and all(k.startswith(prefix) for k in shapes):
            stored = {k[len(prefix) :]: v for k, v in stored.items()}
            shapes = {k[len(prefix) :]: v for k, v in shapes.items()}
            break
    layout = detect_layout(shapes)
    if layout == "original":
        cfg = _config_for(config_json, config)
        rename = {o: d for d, o in original_names(cfg).items()}
        stored = {rename.get(k, k): v for k, v in stored.items()}  # unknown names stay, to be reported
        shapes = {rename.get(k, k): v for k, v in shapes.items()}
    return WeightSource(path, layout, config_json, shapes, lambda k: stored[k]())


def _config_for(config_json: dict | None, config: Any, **runtime) -> L.WanVAEConfig:
    """The architecture: ``config`` (WanVAEConfig, dict or preset name) > config.json > Wan2.1 defaults."""
    if isinstance(config, L.WanVAEConfig):
        return config.replace(**runtime) if runtime else config
    if isinstance(config, str):
        return L.get_preset(config, **runtime)
    if isinstance(config, Mapping):
        return L.WanVAEConfig.from_diffusers_config(dict(config), **runtime)
    if config is not None:
        raise TypeError(f"config must be a WanVAEConfig, a dict or a preset name, got {type(config).__name__}")
    if config_json is not None:
        return L.WanVAEConfig.from_diffusers_config(config_json, **runtime)
    return L.WanVAEConfig(**runtime)


def check_keys_and_shapes(cfg: L.WanVAEConfig, shapes: Mapping[str, tuple[int, ...]], source: str) -> None:
    """Raises one :class:`TensorMismatchError` naming every missing, unexpected and mis-shaped tensor."""
    table = {e.theirs: e for e in name_table(cfg)}
    missing = sorted(set(table) - set(shapes))
    unexpected = sorted(set(shapes) - set(table))
    bad = sorted(
        f"{k}: {tuple(shapes[k])} != expected {e.their_shape}"
        for k, e in table.items()
        if k in shapes and tuple(shapes[k]) != e.their_shape
    )
    if missing or unexpected or bad:
        lines = [
            f"{source} does not match the VAE config (base_dim={cfg.base_dim}, z_dim={cfg.z_dim}, "
            f"dim_mult={list(cfg.dim_mult)}, num_res_blocks={cfg.num_res_blocks}):"
        ]
        for what, items, sep in (
            ("missing tensors", missing, ", "),
            ("unexpected tensors", unexpected, ", "),
            ("shape mismatches", bad, "; "),
        ):
            if items:
                lines.append(f"  {what} ({len(items)}): {sep.join(items[:20])}{' ...' if len(items) > 20 else ''}")
        raise TensorMismatchError("\n".join(lines))


def read_weights(
    path: str, config: Any = None, dtype=np.float32, **runtime
) -> tuple[L.WanVAEConfig, dict[Path, np.ndarray]]:
    """(config, our flat parameters) of a VAE checkpoint of either layout.

    Args:
      path: see :func:`open_weights`.
      config: the architecture, when not the checkpoint's config.json (or, without one, Wan2.1's).
      dtype: host dtype of the returned arrays.
      runtime: WanVAEConfig runtime fields (``dtype``, ``param_dtype``).
    """
    return load_source(open_weights(path, config), config, dtype, **runtime)


def load_source(
    src: WeightSource, config: Any = None, dtype=np.float32, **runtime
) -> tuple[L.WanVAEConfig, dict[Path, np.ndarray]]:
    """(config, our flat parameters) of an opened checkpoint; all mismatches are reported at once."""
    cfg = _config_for(src.config, config, **runtime)
    check_keys_and_shapes(cfg, src.shapes, f"{src.path} ({src.layout} layout)")
    flat = {e.ours: e.to_ours(np.asarray(src.get(e.theirs))).astype(dtype) for e in name_table(cfg)}
    return cfg, flat


def random_params(cfg: L.WanVAEConfig, seed: int = 0) -> dict[Path, np.ndarray]:
    """Random parameters drawn on the host: kernels U(±1/sqrt(fan_in)) (torch's default conv init), zero biases,
    unit gammas; the modules' own initializers, without compiling a program per parameter shape."""
    rng = np.random.default_rng(seed)
    out = {}
    for e in name_table(cfg):
        if e.ours[-1] == "kernel":
            bound = 1.0 / np.sqrt(np.prod(e.our_shape[:-1]))
            out[e.ours] = rng.uniform(-bound, bound, e.our_shape).astype(np.float32)
        else:
            out[e.ours] = (np.ones if e.ours[-1] == "gamma" else np.zeros)(e.our_shape, np.float32)
    return out


def build_model(cfg: L.WanVAEConfig, flat: Mapping[Path, Any] | None = None, seed: int = 0) -> L.AutoencoderKLWan:
    """The model with ``flat`` parameters (cast to ``cfg.param_dtype``), or :func:`random_params` of ``seed``.

    The structure comes from ``nnx.eval_shape``: nothing is initialised on the device and then overwritten.
    """
    graphdef, abstract = abstract_split(cfg)
    flat = random_params(cfg, seed) if flat is None else flat
    expected = {p: tuple(a.shape) for p, a in _flat(abstract).items()}
    got = {tuple(p): tuple(np.shape(a)) for p, a in flat.items()}
    if expected != got:
        raise TensorMismatchError(
            f"parameters do not match the VAE config: missing "
            f"{sorted('.'.join(p) for p in set(expected) - set(got))}, unexpected "
            f"{sorted('.'.join(p) for p in set(got) - set(expected))}, mis-shaped "
            f"{sorted('.'.join(p) for p in expected if p in got and expected[p] != got[p])}"
        )
    pdt = np.dtype(ml_dtypes.bfloat16) if cfg.param_dtype == "bfloat16" else np.dtype(cfg.param_dtype)
    # Our paths hold list indices as ints, the table's as strings.
    leaves = [
        (path, var.replace(value=jax.numpy.asarray(np.asarray(flat[tuple(str(p) for p in path)], pdt))))
        for path, var in nnx.to_flat_state(abstract)
    ]
    return nnx.merge(graphdef, nnx.from_flat_state(leaves))


# ---------------------------------------------------------------------------------------------------------
# Export.


def export_tensors(cfg: L.WanVAEConfig, params: nnx.State | Mapping[Path, Any]):
    """Yields (diffusers key, torch-layout numpy array), one tensor at a time."""
    flat = _flat(params) if isinstance(params, nnx.State) else params
    for e in name_table(cfg):
        yield e.theirs, e.to_theirs(np.asarray(jax.device_get(flat[e.ours])))


def diffusers_config(cfg: L.WanVAEConfig) -> dict[str, Any]:
    import importlib.metadata

    try:
        version = importlib.metadata.version("diffusers")
    except importlib.metadata.PackageNotFoundError:
        version = _MIN_DIFFUSERS
    return {"_class_name": L.CLASS_NAME, "_diffusers_version": version, **cfg.arch_dict()}


def export_weights(
    cfg: L.WanVAEConfig, params: nnx.State | Mapping[Path, Any], out: str, *, dtype: str = "fp32"
) -> dict[str, Any]:
    """Writes a directory ``AutoencoderKLWan.from_pretrained(out)`` loads: config.json + one safetensors file.

    Tensors stream to disk one at a time; ``out`` must not exist (or be empty) and is left absent on failure.
    """
    try:
        target = EXPORT_DTYPES[dtype.lower()]
    except KeyError:
        raise ValueError(f"unknown export dtype {dtype!r}; use one of {sorted(EXPORT_DTYPES)}") from None
    table = name_table(cfg)
    flat = _flat(params) if isinstance(params, nnx.State) else dict(params)
    missing = sorted(".".join(e.ours) for e in table if e.ours not in flat)
    if missing or len(flat) != len(table):
        raise TensorMismatchError(
            f"export source does not match the VAE config: missing {missing}, "
            f"{len(flat)} arrays for {len(table)} tensors"
        )
    specs = [Spec(e.theirs, e.their_shape, target) for e in table]
    tensors = ((k, a.astype(target, copy=False)) for k, a in export_tensors(cfg, flat))
    with atomic_dir(out) as tmp:
        with open(os.path.join(tmp, CONFIG_NAME), "w") as f:
            json.dump(diffusers_config(cfg), f, indent=2, sort_keys=True)
        total = write_file(os.path.join(tmp, WEIGHTS_NAME), specs, tensors, {"format": "pt"})
    return {
        "out": os.path.abspath(out),
        "tensors": len(specs),
        "total_size": total,
        "dtype": target.name,
        "params": int(sum(np.prod(s.shape) for s in specs)),
    }


def convert(src: str, out: str, *, config: Any = None, dtype: str = "fp32") -> dict[str, Any]:
    """Any supported VAE checkpoint (e.g. the original ``Wan2.1_VAE.pth``) -> a diffusers directory at ``out``."""
    source = open_weights(src, config)
    cfg, flat = load_source(source, config)
    return {**export_weights(cfg, flat, out, dtype=dtype), "src": os.path.abspath(src), "layout": source.layout}
