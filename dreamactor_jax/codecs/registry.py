"""Codecs by name: the one place that knows every codec (the interface and helpers are in ``base``)."""

from __future__ import annotations

from dreamactor_jax.codecs.base import Codec

CODECS = ("space_to_depth", "wan_vae")


def get_codec(name: str, **kwargs) -> Codec:
    """Returns the codec registered under ``name``: 'space_to_depth' or 'wan_vae'.

    'wan_vae' takes ``weights`` (default ``$DREAMACTOR_WAN_VAE``), ``config`` (preset name, diffusers config
    dict), ``dtype``, ``chunk_frames``, ``decode_chunk``, ``tiling``: see ``wan_vae.WanVAECodec``.
    """
    if name == "space_to_depth":
        from dreamactor_jax.codecs.space_to_depth import SpaceToDepthCodec

        return SpaceToDepthCodec(**kwargs)
    if name == "wan_vae":
        from dreamactor_jax.codecs.wan_vae import WanVAECodec

        return WanVAECodec(**kwargs)
    raise ValueError(f"unknown codec {name!r}; available: {list(CODECS)}")
