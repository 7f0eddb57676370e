"""Tensor names of the original Wan2.1 release (``WanModel``) <-> diffusers' ``WanTransformer3DModel``.

Only names differ: every tensor keeps its shape and layout. The table mirrors
diffusers' ``convert_wan_transformer_to_diffusers`` (loaders/single_file_utils.py)
for the Wan2.1 T2V/I2V DiT, written as an explicit bijection so it runs both
ways (the tests check it against diffusers' own converter). The original
blocks' ``norm1``/``norm2`` have no parameters; its ``norm3`` (the optional
cross-attention norm) is diffusers' ``norm2``.
"""

from __future__ import annotations

import re

# Checkpoints saved from a wrapped model (ComfyUI and others) carry this prefix.
PREFIX = "model.diffusion_model."

_TOP_MODULES = {
    "patch_embedding": "patch_embedding",
    "text_embedding.0": "condition_embedder.text_embedder.linear_1",
    "text_embedding.2": "condition_embedder.text_embedder.linear_2",
    "time_embedding.0": "condition_embedder.time_embedder.linear_1",
    "time_embedding.2": "condition_embedder.time_embedder.linear_2",
    "time_projection.1": "condition_embedder.time_proj",
    "head.head": "proj_out",
    "img_emb.proj.0": "condition_embedder.image_embedder.norm1",
    "img_emb.proj.1": "condition_embedder.image_embedder.ff.net.0.proj",
    "img_emb.proj.3": "condition_embedder.image_embedder.ff.net.2",
    "img_emb.proj.4": "condition_embedder.image_embedder.norm2",
}
_TOP_PARAMS = {"head.modulation": "scale_shift_table"}

_BLOCK_MODULES = {
    **{f"self_attn.{a}": f"attn1.{b}" for a, b in
       [("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("o", "to_out.0"), ("norm_q", "norm_q"), ("norm_k", "norm_k")]},
    **{f"cross_attn.{a}": f"attn2.{b}" for a, b in
       [("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("o", "to_out.0"), ("norm_q", "norm_q"), ("norm_k", "norm_k"),
        ("k_img", "add_k_proj"), ("v_img", "add_v_proj"), ("norm_k_img", "norm_added_k")]},
    "norm3": "norm2",
    "ffn.0": "ffn.net.0.proj",
    "ffn.2": "ffn.net.2",
}
_BLOCK_PARAMS = {"modulation": "scale_shift_table"}

_INV = {id(t): {v: k for k, v in t.items()} for t in (_TOP_MODULES, _TOP_PARAMS, _BLOCK_MODULES, _BLOCK_PARAMS)}
_BLOCK = re.compile(r"blocks\.(\d+)\.(.+)")


def _map(key: str, modules: dict, params: dict) -> str | None:
    if key in params:
        return params[key]
    mod, _, leaf = key.rpartition(".")
    if leaf in ("weight", "bias") and mod in modules:
        return f"{modules[mod]}.{leaf}"
    return None


def _convert(key: str, inverse: bool) -> str | None:
    pick = (lambda t: _INV[id(t)]) if inverse else (lambda t: t)
    m = _BLOCK.fullmatch(key)
    if m:
        rest = _map(m.group(2), pick(_BLOCK_MODULES), pick(_BLOCK_PARAMS))
        return None if rest is None else f"blocks.{m.group(1)}.{rest}"
    return _map(key, pick(_TOP_MODULES), pick(_TOP_PARAMS))


def to_diffusers(key: str) -> str | None:
    """The diffusers name of an original Wan2.1 tensor name, or None if it has no counterpart."""
    return _convert(key, inverse=False)


def to_original(key: str) -> str | None:
    """The original Wan2.1 name of a diffusers tensor name, or None if it has no counterpart."""
    return _convert(key, inverse=True)


def detect_layout(keys) -> str:
    """``"diffusers"`` or ``"original"``, told apart by ``scale_shift_table`` vs ``head.modulation``."""
    keys = set(keys)
    has_diffusers, has_original = "scale_shift_table" in keys, "head.modulation" in keys
    if has_diffusers and not has_original:
        return "diffusers"
    if has_original and not has_diffusers:
        return "original"
    raise ValueError("cannot tell the checkpoint layout: expected exactly one of 'scale_shift_table' (diffusers "
                     "WanTransformer3DModel) or 'head.modulation' (original Wan2.1 release); found "
                     f"{'both' if has_diffusers else 'neither'} among {len(keys)} tensors")


# Original release config.json (WanModel) -> WanConfig field. The rest (model_type, text_len,
# window_size, _class_name, ...) are not architecture fields of the DiT weights, or are implied by them.
ORIGINAL_CONFIG_FIELDS = {
    "num_heads": "num_attention_heads", "in_dim": "in_channels", "out_dim": "out_channels", "ffn_dim": "ffn_dim",
    "freq_dim": "freq_dim", "num_layers": "num_layers", "eps": "eps", "text_dim": "text_dim",
    "patch_size": "patch_size", "cross_attn_norm": "cross_attn_norm", "qk_norm": "qk_norm",
}


def is_original_config(config: dict) -> bool:
    return config.get("_class_name") == "WanModel" or ("dim" in config and "num_heads" in config)
