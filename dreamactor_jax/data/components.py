"""A train config resolved once into the objects a run needs: model config, codec, text encoder, pixel sizes.

Previews, the curriculum's synthesis and evaluation, ``animate_files``, ``examples/serve_torch.py`` and the
training sources of ``data.sources`` (which the loop builds its batches from) take these objects from
:func:`components` instead of rebuilding them from ConfigDicts, so they cannot drift apart (the codec's weights
and tiling, the text encoder's seed, the procedural generator's pixel sizes). ``config_lib.validate`` runs the
same size checks (:func:`check_sizes`) without building anything. The benchmarks time single components at
fixed shapes and build them directly. Resolution is cached on the
config's contents: the Wan VAE's weights load once per process, however many callers ask.
"""

from __future__ import annotations

import dataclasses
import json
import os

import ml_collections

from dreamactor_jax.codecs import get_codec
from dreamactor_jax.data.procedural import dataset as proc
from dreamactor_jax.data.text import TextEncoder
from dreamactor_jax.models.build import model_config
from dreamactor_jax.models.config import WanConfig

wan_vae_env = "DREAMACTOR_WAN_VAE"  # codecs.wan_vae.WEIGHTS_ENV (not imported: that module loads the VAE stack)
_CACHE_SIZE = 8  # configs (and codec settings) kept resolved per process


@dataclasses.dataclass(frozen=True)
class Components:
    """What a train config resolves to.

    Attributes:
      config: the train config (a copy; not to be mutated).
      model: the model architecture.
      codec: pixels <-> latents, with its weights loaded (``config.data.codec``).
      text: the caption encoder the procedural data and the samplers use (seeded by ``config.seed``).
      frames, height, width: pixel sizes of one clip: the latent sizes of ``config.data`` times the codec's factors.
    """

    config: ml_collections.ConfigDict
    model: WanConfig
    codec: object
    text: TextEncoder
    frames: int
    height: int
    width: int

    def procedural(self, split: str | None = None) -> proc.ProceduralConfig:
        """Pixel-space generator settings for ``split`` (default ``config.data.split``); pose augmentation on
        the train split only."""
        c, d = self.config, self.config.data
        p = d.procedural
        return proc.ProceduralConfig(
            frames=self.frames, height=self.height, width=self.width, seed=c.seed, body_plans=tuple(p.body_plans),
            max_subjects=p.max_subjects, two_subject_prob=p.two_subject_prob, cross_mode=p.cross_mode,
            fps=float(p.get("fps", 8.0)), travel=tuple(p.get("travel", (0.0, 0.0))),
            pose_augment_prob=p.pose_augment_prob if (split or d.split) == "train" else 0.0)

    def text_for(self, dim: int | None = None) -> TextEncoder:
        """The run's caption encoder at embedding width ``dim`` (default the model's ``text_dim``): ``text``
        itself, or the same seed and length at another width (a data test's narrow embeddings)."""
        if dim is None or dim == self.text.dim:
            return self.text
        return dataclasses.replace(self.text, dim=int(dim))

    @property
    def fps(self) -> float:
        """Frame rate of the clips (the procedural generator's; what previews and outputs play at)."""
        return float(self.config.data.procedural.get("fps", 8.0))


_CODECS: dict[str, object] = {}


def _cached(cache: dict, key: str, build):
    """``cache[key]``, built by ``build()`` on a miss; the oldest entry goes once ``_CACHE_SIZE`` are held."""
    if key not in cache:
        if len(cache) >= _CACHE_SIZE:
            cache.pop(next(iter(cache)))
        cache[key] = build()
    return cache[key]


def build_codec(config: ml_collections.ConfigDict):
    """The codec ``config.data.codec`` names, with the run's latent channels (``config.data.channels``); the Wan
    VAE also takes its weights and tiling. Built once per distinct codec setting in a process (weights load once).
    """
    c = config.data.codec
    kwargs = dict(spatial_factor=c.spatial_factor, latent_channels=config.data.channels)
    if c.name == "wan_vae":
        # weights '' falls back to $DREAMACTOR_WAN_VAE (read here, so the cache follows it); neither: an error
        kwargs.update(weights=c.get("weights") or os.environ.get(wan_vae_env) or None,
                      tiling=bool(c.get("tiling", False)))
    key = json.dumps([c.name, kwargs], sort_keys=True, default=repr)
    return _cached(_CODECS, key, lambda: get_codec(c.name, **kwargs))


def check_sizes(config: ml_collections.ConfigDict, mcfg: WanConfig, latent_channels: int | None = None) -> None:
    """The size checks between data, codec and model; ``config_lib.validate`` runs them without a codec (nothing
    loaded), :func:`components` again with the built codec's latent channels. Errors name the field."""
    d = config.data
    if latent_channels is not None and latent_channels != d.channels:
        raise ValueError(f"config.data.codec={d.codec.name!r} gives {latent_channels}-channel latents but "
                         f"config.data.channels is {d.channels}")
    if mcfg.out_channels != d.channels or mcfg.in_channels != 2 * d.channels + 4:
        raise ValueError(f"config.data.channels={d.channels} ({d.codec.name!r} latents): config.model needs "
                         f"in_channels={2 * d.channels + 4} (the 2·C + 4 canvas), out_channels={d.channels} "
                         f"(has {mcfg.in_channels}, {mcfg.out_channels})")
    pt, ph, pw = mcfg.patch_size
    for f, p in (("frames", pt), ("height", ph), ("width", pw)):
        if d[f] % p:
            raise ValueError(f"config.data.{f}={d[f]} (latent) is not divisible by the model patch size {p}")


_CACHE: dict[str, Components] = {}


def _resolve(config: ml_collections.ConfigDict) -> Components:
    config = ml_collections.ConfigDict(config.to_dict())  # a private copy
    mcfg = model_config(config.model)
    codec = build_codec(config)
    check_sizes(config, mcfg, int(getattr(codec, "latent_channels", config.data.channels)))
    d = config.data
    return Components(
        config=config, model=mcfg, codec=codec,
        text=TextEncoder(length=d.text_len, dim=mcfg.text_dim, seed=config.seed),
        frames=(d.frames - 1) * codec.temporal_factor + 1, height=d.height * codec.spatial_factor,
        width=d.width * codec.spatial_factor)


def components(config: ml_collections.ConfigDict) -> Components:
    """Resolves a train config (``model``, ``data``, ``seed``; a curriculum stage via ``config_lib.stage_config``).

    Raises:
      ValueError: naming the field, when the codec's latent channels do not match ``config.data.channels`` or
        the model's input/output channels, or a latent size is not divisible by the model's patch.
    """
    return _cached(_CACHE, json.dumps(config.to_dict(), sort_keys=True, default=repr), lambda: _resolve(config))
