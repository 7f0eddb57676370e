"""The codec interface every latent codec implements, and lookup by name."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np


class Codec(Protocol):
    """Pixels (B, T, H, W, 3) in [-1, 1]  <->  latents (B, T', H', W', C)."""

    name: str
    latent_channels: int
    spatial_factor: int
    temporal_factor: int

    def encode(self, pixels_bthwc: Any) -> Any: ...

    def decode(self, latents_bthwc: Any) -> Any: ...

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int]: ...


def check_pixels(pixels_bthwc: Any, spatial_factor: int, temporal_factor: int, who: str) -> None:
    """Clear errors for inputs a codec cannot take (rank, channels, frame count, spatial size)."""
    shape = np.shape(pixels_bthwc)
    if len(shape) != 5:
        raise ValueError(f"{who}: pixels must be (B, T, H, W, 3), got shape {shape}")
    _, t, h, w, c = shape
    if c != 3:
        raise ValueError(f"{who}: pixels must have 3 (RGB) channels, got {c}")
    if temporal_factor > 1 and (t - 1) % temporal_factor:
        raise ValueError(f"{who}: frame count {t} is not of the form {temporal_factor}k+1")
    for name, size in (("height", h), ("width", w)):
        if size % spatial_factor:
            raise ValueError(f"{who}: {name} {size} is not divisible by the spatial factor {spatial_factor}")


def get_codec(name: str, **kwargs) -> Codec:
    """Returns the codec registered under ``name`` ('space_to_depth')."""
    if name == "space_to_depth":
        from dreamactor_jax.codecs.space_to_depth import SpaceToDepthCodec

        return SpaceToDepthCodec(**kwargs)
    raise ValueError(f"unknown codec {name!r}; available: ['space_to_depth']")
