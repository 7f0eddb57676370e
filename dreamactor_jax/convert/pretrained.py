"""Reading a Wan2.1 transformer directory: diffusers or original-release layout, one tensor at a time.

A directory holds ``config.json`` and either ``diffusion_pytorch_model.safetensors``
or shards listed by ``diffusion_pytorch_model.safetensors.index.json`` (both the
diffusers and the original Wan2.1 release use these file names). Every tensor is
exposed under its diffusers name whatever the layout, so the one name table in
:mod:`dreamactor_jax.convert.names` applies. Nothing is read until asked for.

The architecture comes from ``config.json`` where there is one (diffusers' or the
original ``WanModel`` form) and is otherwise inferred from tensor shapes; either
way it is checked against the shapes field by field, so a wrong config names
the wrong field instead of surfacing as a shape error deep in the model.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import math
import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from dreamactor_jax.convert import names, wan_original
from dreamactor_jax.convert.safetensors_io import DTYPES, SafetensorsFile, SafetensorsFormatError
from dreamactor_jax.models.config import ARCH_FIELDS, WanConfig

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
INDEX_NAME = WEIGHTS_NAME + ".index.json"
CONFIG_NAME = "config.json"
CLASS_NAME = "WanTransformer3DModel"
WAN_HEAD_DIM = 128  # every released Wan2.1 model; used only when nothing says otherwise

log = logging.getLogger(__name__)


class ConfigMismatchError(ValueError):
    """config.json (or an override) disagrees with the tensors; the message names the field."""


@dataclasses.dataclass
class WeightSource:
    """Tensors of one transformer directory, exposed under diffusers names."""

    path: str
    layout: str  # "diffusers" or "original"
    config: dict | None  # config.json as found, if any
    files: list[str]
    where: dict[str, tuple[SafetensorsFile, str]]  # diffusers name -> (file, name stored in it)

    @property
    def names(self) -> list[str]:
        return list(self.where)

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: f.tensors[s].shape for k, (f, s) in self.where.items()}

    def stored_dtype(self, name: str) -> np.dtype:
        f, s = self.where[name]
        return DTYPES[f.tensors[s].dtype]

    def get(self, name: str, dtype=np.float32) -> np.ndarray:
        """One tensor, read now; floating tensors are cast to ``dtype`` (bf16 -> f32 is exact)."""
        f, s = self.where[name]
        a = f.get(s)
        return a.astype(dtype, copy=False) if dtype is not None and a.dtype.kind in "fV" else a


def _weight_files(path: str) -> tuple[str, list[str], dict[str, str] | None]:
    """(directory, safetensors files, weight_map or None) for a directory or a single .safetensors file."""
    if os.path.isfile(path):
        return os.path.dirname(os.path.abspath(path)), [path], None
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no such transformer directory or safetensors file: {path}")
    index = os.path.join(path, INDEX_NAME)
    if os.path.isfile(index):
        try:
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise SafetensorsFormatError(f"{index} is corrupt: no readable weight_map ({e})") from None
        files = sorted(set(weight_map.values()))
        absent = [f for f in files if not os.path.isfile(os.path.join(path, f))]
        if absent:
            raise FileNotFoundError(f"{index} lists shard(s) that do not exist in {path}: {', '.join(absent)}")
        return path, [os.path.join(path, f) for f in files], weight_map
    single = os.path.join(path, WEIGHTS_NAME)
    if os.path.isfile(single):
        return path, [single], None
    found = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    if len(found) == 1:
        return path, found, None
    extra = f"; ambiguous safetensors files: {[os.path.basename(f) for f in found]}" if found else ""
    raise FileNotFoundError(f"{path} has neither {WEIGHTS_NAME} nor {INDEX_NAME}{extra}")


def open_weights(path: str) -> WeightSource:
    """Opens a transformer directory (or one safetensors file) of either layout; reads headers only."""
    directory, files, weight_map = _weight_files(os.fspath(path))
    stored: dict[str, tuple[SafetensorsFile, str]] = {}
    for fp in files:
        sf = SafetensorsFile(fp)
        for k in sf.keys():
            if k in stored:
                raise SafetensorsFormatError(f"tensor {k!r} is stored twice: {stored[k][0].path} and {fp}")
            stored[k] = (sf, k)
    if weight_map is not None:
        wrong = sorted(k for k, f in weight_map.items()
                       if k not in stored or os.path.basename(stored[k][0].path) != os.path.basename(f))
        if wrong:
            raise SafetensorsFormatError(f"{os.path.join(directory, INDEX_NAME)} is corrupt: {len(wrong)} tensor(s) "
                                         f"are not in the shard it names: {', '.join(wrong[:8])}")
    if stored and all(k.startswith(wan_original.PREFIX) for k in stored):
        stored = {k[len(wan_original.PREFIX):]: v for k, v in stored.items()}
    layout = wan_original.detect_layout(stored)
    if layout == "original":
        # Unknown original names keep their own name so a mismatch report can show them.
        stored = {wan_original.to_diffusers(k) or k: v for k, v in stored.items()}
    config = None
    cfg_path = os.path.join(directory, CONFIG_NAME)
    if os.path.isfile(cfg_path):
        with open(cfg_path) as f:
            config = json.load(f)
    return WeightSource(os.fspath(path), layout, config, files, stored)


# ----------------------------------------------------------------------------------------------------------
# Architecture: config.json, tensor shapes and overrides, checked against each other.


def infer_arch(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[Any, str]]:
    """Architecture fields implied by tensor shapes (diffusers names): field -> (value, evidence)."""
    out: dict[str, tuple[Any, str]] = {}

    def shape(name):
        return tuple(shapes[name]) if name in shapes else None

    pe = shape("patch_embedding.weight")
    if pe and len(pe) == 5:
        ev = f"patch_embedding.weight {pe}"
        out["inner_dim"], out["in_channels"], out["patch_size"] = (pe[0], ev), (pe[1], ev), (pe[2:], ev)
        po = shape("proj_out.weight")
        if po and len(po) == 2 and po[0] % math.prod(pe[2:]) == 0:
            out["out_channels"] = (po[0] // math.prod(pe[2:]), f"proj_out.weight {po} with patch {pe[2:]}")
    for field, name in (("text_dim", "condition_embedder.text_embedder.linear_1.weight"),
                        ("freq_dim", "condition_embedder.time_embedder.linear_1.weight")):
        s = shape(name)
        if s and len(s) == 2:
            out[field] = (s[1], f"{name} {s}")
    s = shape("blocks.0.ffn.net.0.proj.weight")
    if s and len(s) == 2:
        out["ffn_dim"] = (s[0], f"blocks.0.ffn.net.0.proj.weight {s}")
    layers = {int(m.group(1)) for k in shapes if (m := re.match(r"blocks\.(\d+)\.", k))}
    if layers:
        out["num_layers"] = (max(layers) + 1, f"tensors blocks.0 ... blocks.{max(layers)}")
        out["cross_attn_norm"] = ("blocks.0.norm2.weight" in shapes, "presence of blocks.0.norm2.weight")
        out["qk_norm"] = ("rms_norm_across_heads" if "blocks.0.attn1.norm_q.weight" in shapes else None,
                          "presence of blocks.0.attn1.norm_q.weight")
    s = shape("condition_embedder.image_embedder.norm1.weight")
    if s:
        out["image_dim"] = (s[0], f"condition_embedder.image_embedder.norm1.weight {s}")
        k = shape("blocks.0.attn2.add_k_proj.weight")
        if k and len(k) == 2:
            out["added_kv_proj_dim"] = (k[1], f"blocks.0.attn2.add_k_proj.weight {k}")
    elif layers:
        out["image_dim"] = (None, "absence of condition_embedder.image_embedder.*")
        out["added_kv_proj_dim"] = (None, "absence of condition_embedder.image_embedder.*")
    return out


def _config_fields(config: dict) -> tuple[dict[str, Any], int | None]:
    """(WanConfig architecture fields, declared model width or None) from either config.json form."""
    if wan_original.is_original_config(config):
        fields = {ours: config[theirs] for theirs, ours in wan_original.ORIGINAL_CONFIG_FIELDS.items()
                  if theirs in config}
        if isinstance(fields.get("qk_norm"), bool):
            fields["qk_norm"] = "rms_norm_across_heads" if fields["qk_norm"] else None
        dim = config.get("dim")
        if dim is not None and "num_attention_heads" in fields and dim % fields["num_attention_heads"] == 0:
            fields["attention_head_dim"] = dim // fields["num_attention_heads"]
        return fields, dim
    cls = config.get("_class_name")
    if cls is not None and cls != CLASS_NAME:
        raise ConfigMismatchError(f"config.json is for {cls!r}, not {CLASS_NAME!r}")
    unknown = sorted(k for k in config if not k.startswith("_") and k not in ARCH_FIELDS)
    if unknown:
        log.warning("config.json fields not used by %s (Wan2.1): %s", CLASS_NAME, unknown)
    fields = {k: config[k] for k in ARCH_FIELDS if k in config}
    return fields, None


def resolve_config(src: WeightSource, overrides: Mapping[str, Any] | None = None) -> WanConfig:
    """WanConfig for ``src``: overrides > config.json > tensor shapes, all checked against the shapes.

    Raises:
      ConfigMismatchError: naming every field whose value disagrees with the tensors.
    """
    overrides = dict(overrides or {})
    inferred = infer_arch(src.shapes)
    declared, dim = _config_fields(src.config) if src.config is not None else ({}, None)
    arch: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for source, values in (("tensor shapes", {k: v for k, (v, _) in inferred.items()}), ("config.json", declared),
                           ("override", {k: v for k, v in overrides.items() if k in ARCH_FIELDS})):
        for k, v in values.items():
            if k in ARCH_FIELDS:
                arch[k], origin[k] = (tuple(v) if k == "patch_size" and v is not None else v), source
    bad = [f"{origin[k]} field '{k}' = {arch[k]!r}, but {ev} implies {v!r}"
           for k, (v, ev) in inferred.items() if k in arch and origin[k] != "tensor shapes" and arch[k] != v]
    width, width_ev = inferred.get("inner_dim", (None, ""))
    if dim is not None and width is not None and dim != width:
        bad.append(f"config.json field 'dim' = {dim}, but {width_ev} implies {width}")
    if width is not None:
        heads, head_dim = arch.get("num_attention_heads"), arch.get("attention_head_dim")
        if heads is None and head_dim is None:
            if width % WAN_HEAD_DIM:
                raise ConfigMismatchError(f"cannot infer num_attention_heads for width {width} ({width_ev}): not a "
                                          f"multiple of Wan's head dim {WAN_HEAD_DIM}; pass num_attention_heads")
            arch["num_attention_heads"], arch["attention_head_dim"] = width // WAN_HEAD_DIM, WAN_HEAD_DIM
        elif head_dim is None or heads is None:
            given, name = (heads, "num_attention_heads") if head_dim is None else (head_dim, "attention_head_dim")
            if width % given:
                bad.append(f"{origin[name]} field '{name}' = {given} does not divide the width {width} ({width_ev})")
            else:
                other = "attention_head_dim" if head_dim is None else "num_attention_heads"
                arch[other] = width // given
        elif heads * head_dim != width:
            which = "num_attention_heads" if origin["num_attention_heads"] != "tensor shapes" else "attention_head_dim"
            bad.append(f"{origin[which]} fields 'num_attention_heads' x 'attention_head_dim' = {heads} x {head_dim} "
                       f"= {heads * head_dim}, but {width_ev} implies width {width}")
    if bad:
        raise ConfigMismatchError(f"{src.path}: the config disagrees with the tensors:\n  " + "\n  ".join(bad))
    runtime = {k: v for k, v in overrides.items() if k not in ARCH_FIELDS}
    try:
        return WanConfig(**arch, **runtime)
    except (TypeError, ValueError) as e:
        raise ConfigMismatchError(f"{src.path}: {e}") from None


def load_params(src: WeightSource, cfg: WanConfig, dtype=np.float32) -> dict[names.Path, np.ndarray]:
    """Our flat parameter dict from ``src``; raises one error listing every missing/unexpected/mis-shaped name."""
    names.check_keys_and_shapes(cfg, src.shapes, source=f"{src.path} ({src.layout} layout, diffusers names)")
    return names.import_tensors(cfg, src.get, src.names, src.shapes, dtype=dtype)


def read_pretrained(path: str, overrides: Mapping[str, Any] | None = None,
                    dtype=np.float32) -> tuple[WanConfig, dict[names.Path, np.ndarray]]:
    """(config, flat params) of a transformer directory of either layout."""
    src = open_weights(path)
    cfg = resolve_config(src, overrides)
    return cfg, load_params(src, cfg, dtype)
