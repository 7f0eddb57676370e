"""Frozen architecture description of the Wan2.1 DiT and its named presets.

Field names follow diffusers' ``WanTransformer3DModel`` config so that a
``config.json`` maps onto :class:`WanConfig` field by field. The runtime
options (dtypes, layer scan, remat, attention implementation) ride along in the
same frozen dataclass: the model never sees a config tree, only this.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

# Fields that are part of diffusers' config.json (the architecture).
ARCH_FIELDS = (
    "patch_size",
    "num_attention_heads",
    "attention_head_dim",
    "in_channels",
    "out_channels",
    "text_dim",
    "freq_dim",
    "ffn_dim",
    "num_layers",
    "cross_attn_norm",
    "qk_norm",
    "eps",
    "image_dim",
    "added_kv_proj_dim",
    "rope_max_seq_len",
    "pos_embed_seq_len",
)

REMAT_POLICIES = ("none", "full", "save_dots", "save_attention", "save_qkv_proj", "offload")
ATTENTION_IMPLS = ("auto", "xla", "flash", "blocked", "dot_product", "cudnn", "splash")


@dataclasses.dataclass(frozen=True)
class WanConfig:
    """Architecture of a Wan2.1-compatible video DiT plus its runtime options."""

    # --- architecture (diffusers config.json fields) ---
    patch_size: tuple[int, int, int] = (1, 2, 2)
    num_attention_heads: int = 40
    attention_head_dim: int = 128
    in_channels: int = 16
    out_channels: int = 16
    text_dim: int = 4096
    freq_dim: int = 256
    ffn_dim: int = 13824
    num_layers: int = 40
    cross_attn_norm: bool = True
    qk_norm: str = "rms_norm_across_heads"
    eps: float = 1e-6
    image_dim: int | None = None
    added_kv_proj_dim: int | None = None
    rope_max_seq_len: int = 1024
    pos_embed_seq_len: int | None = None
    # --- runtime ---
    dtype: str = "bfloat16"  # compute dtype of matmuls and the residual stream
    param_dtype: str = "float32"  # storage dtype of parameters
    scan_layers: bool = True  # lax.scan over the stacked blocks, else a Python loop
    remat: str = "none"  # one of REMAT_POLICIES
    # One of ATTENTION_IMPLS; "auto": splash on TPU, cudnn on GPU (16-bit compute), else flash
    # (dreamactor_jax.models.attention.resolve). "xla" is the reference the others are tested against.
    attention: str = "auto"
    attention_block_q: int = 128  # query block of attention="flash" and "blocked"
    attention_splash_block: int = 512  # query and key/value block of attention="splash" (a multiple of 128)
    sequence_parallel: str = "ulysses"  # strategy when the mesh's sequence axis > 1: "ulysses" | "ring"
    # --- LoRA (adapters on Linear layers; the base weights are then frozen in training) ---
    lora_rank: int = 0  # 0: no adapters, full fine-tuning
    lora_alpha: float = 0.0  # LoRA update scale is alpha / rank; 0 means alpha = rank (scale 1)
    # re.search over module paths such as 'blocks.ffn.net_0.proj', 'blocks.attn1.to_q',
    # 'condition_embedder.time_proj'; the default is the paper's FFN-only LoRA
    lora_targets: str = r"ffn\.net_(0\.proj|2)"

    def __post_init__(self):
        object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))
        self.validate()

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def lora_scale(self) -> float:
        """The factor ``alpha / rank`` of the LoRA update (0 without LoRA)."""
        if not self.lora_rank:
            return 0.0
        return (self.lora_alpha or self.lora_rank) / self.lora_rank

    @property
    def rope_dims(self) -> tuple[int, int, int]:
        """Head-dim split (t, h, w) of the 3D RoPE, as Wan computes it."""
        hw = 2 * (self.attention_head_dim // 6)
        return self.attention_head_dim - 2 * hw, hw, hw

    def validate(self) -> None:
        def bad(field, why):
            raise ValueError(f"WanConfig.{field}: {why}")

        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            bad("patch_size", f"must be three positive ints, got {self.patch_size}")
        for f in ("num_attention_heads", "attention_head_dim", "in_channels", "out_channels",
                  "text_dim", "freq_dim", "ffn_dim", "num_layers", "rope_max_seq_len"):
            v = getattr(self, f)
            if not isinstance(v, int) or v < 1:
                bad(f, f"must be a positive int, got {v!r}")
        if self.attention_head_dim % 2:
            bad("attention_head_dim", f"must be even for RoPE, got {self.attention_head_dim}")
        if self.freq_dim % 2:
            bad("freq_dim", f"must be even, got {self.freq_dim}")
        if self.qk_norm != "rms_norm_across_heads":
            bad("qk_norm", f"only 'rms_norm_across_heads' (Wan2.1) is supported, got {self.qk_norm!r}")
        if (self.image_dim is None) != (self.added_kv_proj_dim is None):
            bad("image_dim", "image_dim and added_kv_proj_dim must be set together (Wan2.1-I2V)")
        if self.added_kv_proj_dim is not None and self.added_kv_proj_dim != self.inner_dim:
            bad("added_kv_proj_dim", f"must equal the model width {self.inner_dim}, got {self.added_kv_proj_dim}")
        if self.pos_embed_seq_len is not None:
            bad("pos_embed_seq_len", "the FLF2V image position embedding is not supported")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            bad("dtype", f"must be float32, bfloat16 or float16, got {self.dtype!r}")
        if self.param_dtype not in ("float32", "bfloat16"):
            bad("param_dtype", f"must be float32 or bfloat16, got {self.param_dtype!r}")
        if self.remat not in REMAT_POLICIES:
            bad("remat", f"must be one of {REMAT_POLICIES}, got {self.remat!r}")
        if self.attention not in ATTENTION_IMPLS:
            bad("attention", f"must be one of {ATTENTION_IMPLS}, got {self.attention!r}")
        if self.sequence_parallel not in ("ulysses", "ring"):
            bad("sequence_parallel", f"must be 'ulysses' or 'ring', got {self.sequence_parallel!r}")
        if self.attention_block_q < 1:
            bad("attention_block_q", f"must be positive, got {self.attention_block_q}")
        if self.attention_splash_block < 128 or self.attention_splash_block % 128:
            bad("attention_splash_block", f"must be a positive multiple of 128, got {self.attention_splash_block}")
        if not isinstance(self.lora_rank, int) or isinstance(self.lora_rank, bool) or self.lora_rank < 0:
            bad("lora_rank", f"must be an int >= 0 (0: no LoRA), got {self.lora_rank!r}")
        if not isinstance(self.lora_alpha, (int, float)) or self.lora_alpha < 0:
            bad("lora_alpha", f"must be a number >= 0 (0: alpha = rank), got {self.lora_alpha!r}")
        if not isinstance(self.lora_targets, str) or not self.lora_targets:
            bad("lora_targets", f"must be a non-empty regular expression string, got {self.lora_targets!r}")
        try:
            re.compile(self.lora_targets)
        except re.error as e:
            bad("lora_targets", f"is not a valid regular expression ({e}): {self.lora_targets!r}")

    def replace(self, **overrides: Any) -> WanConfig:
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            names = [f.name for f in dataclasses.fields(self)]
            raise ValueError(f"WanConfig has no field(s) {unknown}; fields are {names}")
        return dataclasses.replace(self, **overrides)

    def arch_dict(self) -> dict[str, Any]:
        """The diffusers ``config.json`` architecture fields."""
        d = {f: getattr(self, f) for f in ARCH_FIELDS}
        d["patch_size"] = list(self.patch_size)
        return d


PRESETS: dict[str, WanConfig] = {
    # Fast CPU tests and the tiny curriculum. head_dim 32 keeps diffusers' RoPE well-behaved. Two layers
    # unrolled compile faster than a scan and run 3-4% faster on CPU (no stacked residual copies). The flash
    # query blocks of tiny and small are the fastest measured for their head counts on 2 CPU cores at 2,560
    # tokens (blocks of 96..256: benchmarks/attention.py --block_q), 8-9% faster per train step than 128.
    "tiny": WanConfig(
        num_attention_heads=2, attention_head_dim=32, in_channels=36, out_channels=16,
        text_dim=32, freq_dim=64, ffn_dim=128, num_layers=2, dtype="float32", scan_layers=False,
        attention_block_q=160,
    ),
    "small": WanConfig(
        num_attention_heads=6, attention_head_dim=48, in_channels=36, out_channels=16,
        text_dim=64, freq_dim=256, ffn_dim=1152, num_layers=6, dtype="float32", attention_block_q=96,
    ),
    "wan2.1-t2v-1.3b": WanConfig(
        num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
        text_dim=4096, ffn_dim=8960, num_layers=30,
    ),
    "wan2.1-t2v-14b": WanConfig(
        num_attention_heads=40, attention_head_dim=128, in_channels=16, out_channels=16,
        text_dim=4096, ffn_dim=13824, num_layers=40,
    ),
    "wan2.1-i2v-14b": WanConfig(
        num_attention_heads=40, attention_head_dim=128, in_channels=36, out_channels=16,
        text_dim=4096, ffn_dim=13824, num_layers=40, image_dim=1280, added_kv_proj_dim=5120,
    ),
}


def get_preset(name: str, **overrides: Any) -> WanConfig:
    """Returns the named preset with ``overrides`` applied."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known presets: {sorted(PRESETS)}")
    cfg = PRESETS[name]
    return cfg.replace(**overrides) if overrides else cfg
