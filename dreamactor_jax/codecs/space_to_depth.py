"""A pixel space-to-depth codec: exact, instant, for tiny CPU runs.

Each s x s pixel block becomes one latent position (3·s² values), then a fixed,
seeded orthonormal embedding maps those values to ``latent_channels``
(>= 3·s²) so the latent width matches what the model expects (16 for Wan).
Decoding applies the transpose, which inverts encoding exactly (up to float
rounding) because the embedding has orthonormal columns.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from dreamactor_jax.codecs.base import check_pixels


class SpaceToDepthCodec:
    name = "space_to_depth"
    temporal_factor = 1

    def __init__(self, spatial_factor: int = 2, latent_channels: int = 16, scale: float = 1.0, seed: int = 0):
        raw = 3 * spatial_factor**2
        if latent_channels < raw:
            raise ValueError(f"space_to_depth: latent_channels={latent_channels} < 3·s²={raw}; cannot be exact")
        self.spatial_factor = spatial_factor
        self.latent_channels = latent_channels
        self.scale = float(scale)
        q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((latent_channels, raw)))
        self._embed = q.astype(np.float32)  # (C_latent, raw), orthonormal columns

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        return frames, height // self.spatial_factor, width // self.spatial_factor

    def encode(self, pixels_bthwc):
        check_pixels(pixels_bthwc, self.spatial_factor, 1, "space_to_depth.encode")
        xp = jnp if not isinstance(pixels_bthwc, np.ndarray) else np
        s = self.spatial_factor
        b, t, h, w, c = pixels_bthwc.shape
        x = pixels_bthwc.reshape(b, t, h // s, s, w // s, s, c).transpose(0, 1, 2, 4, 3, 5, 6)
        x = x.reshape(b, t, h // s, w // s, s * s * c)
        return (x @ xp.asarray(self._embed.T)) * self.scale

    def decode(self, latents_bthwc):
        xp = jnp if not isinstance(latents_bthwc, np.ndarray) else np
        s = self.spatial_factor
        b, t, h, w, c = latents_bthwc.shape
        if c != self.latent_channels:
            raise ValueError(f"space_to_depth.decode: latents have {c} channels, expected {self.latent_channels}")
        x = (latents_bthwc / self.scale) @ xp.asarray(self._embed)
        x = x.reshape(b, t, h, w, s, s, 3).transpose(0, 1, 2, 4, 3, 5, 6)
        return x.reshape(b, t, h * s, w * s, 3)
