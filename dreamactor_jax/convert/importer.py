"""Import a diffusers or original Wan2.1 transformer directory as our Orbax checkpoint (step 0)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import ml_dtypes
import numpy as np

from dreamactor_jax.convert import names, pretrained
from dreamactor_jax.convert.fsutil import atomic_dir
from dreamactor_jax.train import checkpoint as ckpt_lib


def import_to_checkpoint(src: str, out: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Reads ``src`` (either layout), converts it and writes ``out/0`` with ``kind='import'``.

    The tensors are checked against the architecture (config.json, shapes and
    ``overrides`` must agree, and every missing, unexpected or mis-shaped tensor is
    reported at once) before anything is written; the checkpoint is written under a
    temporary name and renamed, so ``out`` is untouched when the import fails.

    Args:
      src: transformer directory (config.json + safetensors, sharded or not) or one safetensors file.
      out: new checkpoint directory; must not exist or be empty.
      overrides: WanConfig fields, e.g. ``num_attention_heads`` for an original checkpoint
        without config.json, or runtime fields (``dtype``, ``scan_layers``) stored in the meta.

    Returns:
      Summary: out, layout, params (count), config (architecture fields).
    """
    source = pretrained.open_weights(src)
    cfg = pretrained.resolve_config(source, overrides)
    # Stored in the model's param dtype, which is what training restores into.
    dtype = ml_dtypes.bfloat16 if cfg.param_dtype == "bfloat16" else np.float32
    flat = pretrained.load_params(source, cfg, dtype=dtype)
    params = names.unflatten(flat)
    with atomic_dir(out) as tmp:
        mngr = ckpt_lib.manager(tmp, async_save=False)
        ckpt_lib.save(mngr, 0, params=params, model_cfg=cfg, kind="import")
        mngr.wait_until_finished()
        mngr.close()
    return {"out": os.path.abspath(out), "src": os.path.abspath(src), "layout": source.layout,
            "params": int(sum(a.size for a in flat.values())), "config": cfg.arch_dict()}
