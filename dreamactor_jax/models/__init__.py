"""The Wan2.1-compatible DiT, its presets and the in-context canvas."""

from dreamactor_jax.models.config import PRESETS, WanConfig, get_preset
from dreamactor_jax.models.transformer import WanTransformer3DModel

__all__ = ["PRESETS", "WanConfig", "WanTransformer3DModel", "get_preset"]
