"""Latent codecs behind one interface: ``encode(pixels_bthwc) -> latents``, ``decode(latents) -> pixels``."""

from dreamactor_jax.codecs.base import Codec
from dreamactor_jax.codecs.registry import CODECS, get_codec
from dreamactor_jax.codecs.space_to_depth import SpaceToDepthCodec

__all__ = ["CODECS", "Codec", "SpaceToDepthCodec", "get_codec"]
