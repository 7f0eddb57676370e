"""The Wan2.1 VAE as a codec: streamed, jitted encode/decode with optional spatial tiling.

:class:`WanVAE` runs :class:`~dreamactor_jax.codecs.wan_vae_layers.AutoencoderKLWan` the way diffusers'
``AutoencoderKLWan`` does: encoding sends frame 0 alone, then chunks of ``chunk_frames`` (4, diffusers') frames,
each with the feature cache of the chunk before; decoding sends one latent frame at a time (``decode_chunk``).
Both chunk kinds are one jitted function each, called with the same shapes every time, so XLA compiles once for
the first chunk and once for the steady state whatever the clip length (a last, shorter chunk is padded by
repeating its last frame, which causality makes harmless, and its outputs trimmed). Memory is the model's
activations for one chunk plus the carried caches, independent of the clip length; :meth:`WanVAE.encode_iter`
and :meth:`WanVAE.decode_iter` stream, so a video file never has to be in memory whole.

Spatial tiling (:class:`Tiling`, off by default) follows diffusers' ``tiled_encode``/``tiled_decode``: frames larger
than a tile are cut into overlapping tiles, each tile streams through time with its own cache, and tiles are
linearly blended over the overlap (above and left neighbours, in raster order, as diffusers blends in place) and
cropped to the stride. Tiled output is not equal to untiled output (each tile sees zero padding at its border).

:class:`WanVAECodec` is the codec interface (:mod:`~dreamactor_jax.codecs.base`): ``encode`` returns Wan's
normalised latents ``(mu - latents_mean) * (1 / latents_std)`` (what diffusers' Wan pipelines feed the DiT),
``decode`` undoes that, decodes and clips to [-1, 1].
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from collections.abc import Iterable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dreamactor_jax.codecs import wan_vae_convert as convert
from dreamactor_jax.codecs import wan_vae_layers as L
from dreamactor_jax.codecs.base import check_latents, check_pixels

log = logging.getLogger(__name__)

# Default weights for get_codec("wan_vae") when none are passed (a diffusers VAE directory or Wan2.1_VAE.pth).
WEIGHTS_ENV = "DREAMACTOR_WAN_VAE"


@dataclasses.dataclass(frozen=True)
class Tiling:
    """diffusers' ``enable_tiling`` settings, in pixels: tiles of ``height x width`` every ``stride`` pixels."""

    height: int = 256  # tile_sample_min_height
    width: int = 256  # tile_sample_min_width
    stride_height: int = 192  # tile_sample_stride_height
    stride_width: int = 192  # tile_sample_stride_width

    def check(self, spatial_factor: int) -> None:
        for name in ("height", "width", "stride_height", "stride_width"):
            v = getattr(self, name)
            if v <= 0 or v % spatial_factor:
                raise ValueError(
                    f"Tiling.{name}={v} must be a positive multiple of the spatial factor {spatial_factor}"
                )
        if self.stride_height > self.height or self.stride_width > self.width:
            raise ValueError(
                f"Tiling strides ({self.stride_height}, {self.stride_width}) exceed the tile size "
                f"({self.height}, {self.width}): tiles would leave gaps"
            )


def _encode_step(graphdef, state, x_bthwc, past):
    return nnx.merge(graphdef, state).encode_chunk(x_bthwc, past)


def _decode_step(graphdef, state, z_bthwc, past):
    return nnx.merge(graphdef, state).decode_chunk(z_bthwc, past)


def _xp(a):
    """numpy for host arrays, jax.numpy otherwise: host data is regrouped and sliced without compiling anything."""
    return np if isinstance(a, np.ndarray) else jnp


def _rechunk(blocks: Iterable[Any], first: int, size: int) -> Iterator[tuple[Any, int]]:
    """Regroups (B, t, ...) blocks along time into one chunk of ``first`` frames, then chunks of ``size``.

    Yields (chunk, valid frames); the last chunk is padded to ``size`` by repeating its last frame.
    """
    buf, have, sent_first = [], 0, False

    def cat():
        return buf[0] if len(buf) == 1 else _xp(buf[0]).concatenate(buf, axis=1)

    for block in blocks:
        if block.shape[1] == 0:
            continue
        if buf and _xp(block) is not _xp(buf[0]):
            block = np.asarray(block) if _xp(buf[0]) is np else jnp.asarray(block)
        buf.append(block)
        have += block.shape[1]
        while have >= (size if sent_first else first):
            n = size if sent_first else first
            whole = cat()
            yield whole[:, :n], n
            rest = whole[:, n:]
            buf, have, sent_first = ([rest] if rest.shape[1] else []), have - n, True
    if have:
        whole = cat()
        n = size if sent_first else first
        xp = _xp(whole)
        yield xp.concatenate([whole, xp.repeat(whole[:, -1:], n - have, axis=1)], axis=1), have


def _collect(pieces: Iterable[Any], like: Any):
    """Concatenates chunk outputs along time: on the host (numpy) for a host input, else on the device."""
    pieces = list(pieces)
    if isinstance(like, np.ndarray):
        return np.concatenate([np.asarray(p) for p in pieces], axis=1)
    return pieces[0] if len(pieces) == 1 else jnp.concatenate(pieces, axis=1)


def _starts(size: int, tile: int, stride: int) -> list[tuple[int, int]]:
    """diffusers' tile origins: every ``stride`` from 0 while inside the frame; (start, stop) clipped to it."""
    return [(i, min(i + tile, size)) for i in range(0, size, stride)]


def _blend(a: jax.Array, b: jax.Array, extent: int, axis: int) -> jax.Array:
    """diffusers' ``blend_v``/``blend_h``: the first ``extent`` rows of ``b`` fade in over the last of ``a``."""
    extent = min(a.shape[axis], b.shape[axis], extent)
    if extent <= 0:
        return b
    y = np.arange(extent, dtype=np.float64)
    shape = [1] * b.ndim
    shape[axis] = extent
    # torch multiplies by the Python floats 1 - y/e and y/e, each rounded to float32.
    wa = jnp.asarray((1 - y / extent).astype(np.float32).reshape(shape))
    wb = jnp.asarray((y / extent).astype(np.float32).reshape(shape))
    tail = jax.lax.slice_in_dim(a, a.shape[axis] - extent, a.shape[axis], axis=axis)
    head = jax.lax.slice_in_dim(b, 0, extent, axis=axis)
    rest = jax.lax.slice_in_dim(b, extent, b.shape[axis], axis=axis)
    return jnp.concatenate([tail * wa + head * wb, rest], axis=axis)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _assemble(
    grid: list[list[jax.Array]], blend: tuple[int, int], stride: tuple[int, int], size: tuple[int, int]
) -> jax.Array:
    """Blends a grid of (B, T, h, w, C) tiles (each with its blended above/left neighbours) and crops."""
    rows = [list(r) for r in grid]
    out_rows = []
    for i, row in enumerate(rows):
        for j in range(len(row)):
            tile = row[j]
            if i > 0:
                tile = _blend(rows[i - 1][j], tile, blend[0], axis=2)
            if j > 0:
                tile = _blend(row[j - 1], tile, blend[1], axis=3)
            row[j] = tile  # later tiles blend with this blended tile, as in diffusers' in-place version
        out_rows.append(jnp.concatenate([t[:, :, : stride[0], : stride[1]] for t in row], axis=3))
    return jnp.concatenate(out_rows, axis=2)[:, :, : size[0], : size[1]]


class WanVAE:
    """A Wan VAE with its weights, run chunk by chunk under jit (see the module docstring)."""

    def __init__(
        self,
        model: L.AutoencoderKLWan,
        *,
        chunk_frames: int | None = None,
        decode_chunk: int = 1,
        tiling: Tiling | None = None,
    ):
        self.cfg = model.cfg
        tf = self.cfg.temporal_factor
        self.chunk_frames = tf if chunk_frames is None else int(chunk_frames)
        if self.chunk_frames <= 0 or self.chunk_frames % tf:
            raise ValueError(f"chunk_frames={chunk_frames} must be a positive multiple of the temporal factor {tf}")
        if decode_chunk <= 0:
            raise ValueError(f"decode_chunk={decode_chunk} must be positive")
        self.decode_chunk = int(decode_chunk)
        if tiling is not None:
            tiling.check(self.cfg.spatial_factor)
        self.tiling = tiling
        self.graphdef, self.state = nnx.split(model)
        # One jitted function per direction; jax retraces per input shape and per cache structure (None for
        # the first chunk), so a clip of any length compiles exactly two programs per tile shape.
        self._encode_step = jax.jit(functools.partial(_encode_step, self.graphdef), donate_argnums=(2,))
        self._decode_step = jax.jit(functools.partial(_decode_step, self.graphdef), donate_argnums=(2,))

    @classmethod
    def from_pretrained(
        cls,
        path: str,
        config: Any = None,
        *,
        dtype: str | None = None,
        param_dtype: str | None = None,
        precision: str | None = None,
        **kw,
    ) -> WanVAE:
        """Loads a diffusers VAE directory / safetensors file or an original ``Wan2.1_VAE.pth``."""
        runtime = _runtime(dtype=dtype, param_dtype=param_dtype, precision=precision)
        cfg, flat = convert.read_weights(path, config, **runtime)
        return cls(convert.build_model(cfg, flat), **kw)

    @classmethod
    def random(cls, cfg: L.WanVAEConfig, seed: int = 0, **kw) -> WanVAE:
        """Randomly initialised weights (tests, benchmarks, tiny CPU runs)."""
        return cls(convert.build_model(cfg, None, seed), **kw)

    def compiled_programs(self) -> dict[str, int]:
        """How many programs jit has compiled per direction (first chunk + steady state, per tile shape)."""
        return {"encode": self._encode_step._cache_size(), "decode": self._decode_step._cache_size()}

    # --- the stream over (tiles x chunks) --------------------------------------------------------------

    def _tiles(self, h: int, w: int, factor_in: int, up: bool):
        """(tile regions, blend, stride, output size) in input/output pixels of one direction, or None."""
        t, sf = self.tiling, self.cfg.spatial_factor
        if t is None:
            return None
        # diffusers compares the input against the tile size in the input's units.
        th, tw, sh, sw = (
            t.height // factor_in,
            t.width // factor_in,
            t.stride_height // factor_in,
            t.stride_width // factor_in,
        )
        if h <= th and w <= tw:
            return None
        regions = [[(r, c) for c in _starts(w, tw, sw)] for r in _starts(h, th, sh)]
        if up:  # decode: latent tiles -> pixel tiles, blended and cropped in pixels
            blend = (t.height - t.stride_height, t.width - t.stride_width)
            stride, size = (t.stride_height, t.stride_width), (h * sf, w * sf)
        else:  # encode: pixel tiles -> latent tiles, blended and cropped in latents
            blend = (t.height // sf - t.stride_height // sf, t.width // sf - t.stride_width // sf)
            stride, size = (t.stride_height // sf, t.stride_width // sf), (h // sf, w // sf)
        return regions, blend, stride, size

    def _stream(
        self, step, chunks: Iterator[tuple[Any, int]], h: int, w: int, *, up: bool, out_frames
    ) -> Iterator[jax.Array]:
        tiles = self._tiles(h, w, 1 if not up else self.cfg.spatial_factor, up) if self.tiling else None
        if tiles is None:
            regions, blend, stride, size = [[((0, h), (0, w))]], None, None, None
        else:
            regions, blend, stride, size = tiles
        caches: dict[tuple[int, int], Any] = {}
        previous = None
        for k, (chunk, valid) in enumerate(chunks):
            grid = []
            for i, row in enumerate(regions):
                out_row = []
                for j, ((r0, r1), (c0, c1)) in enumerate(row):
                    tile = chunk if tiles is None else chunk[:, :, r0:r1, c0:c1]
                    out, caches[i, j] = step(self.state, jnp.asarray(tile), caches.get((i, j)))
                    out_row.append(out)
                grid.append(out_row)
            out = grid[0][0] if tiles is None else _assemble(grid, blend, stride, size)
            # Dispatch is asynchronous: without a bound, a long clip's chunk inputs would all be copied to the
            # device up front. Waiting for the chunk before this one keeps at most two chunks in flight.
            if previous is not None:
                jax.block_until_ready(previous)
            previous = out
            n = out_frames(k, valid)
            yield out if n == out.shape[1] else out[:, :n]

    # --- encode -----------------------------------------------------------------------------------------

    def encode_iter(self, blocks: Iterable[Any], *, trim: bool = False) -> Iterator[jax.Array]:
        """Streams (B, t, H, W, 3) pixel blocks (any t) -> (B, t', h, w, 2·z_dim) moments, chunk by chunk.

        The blocks must add up to 4k+1 frames; with ``trim``, trailing frames beyond the last 4k+1 are
        dropped instead (causality: the kept frames' latents do not depend on them).
        """
        cfg = self.cfg
        tf = cfg.temporal_factor

        def checked(blocks):
            for b in blocks:
                check_pixels(b, cfg.spatial_factor, 1, "wan_vae.encode")
                yield b

        def frames(k, valid):
            if k and valid % tf and not trim:
                raise ValueError(
                    f"wan_vae.encode: frame count is not of the form {tf}k+1 (its last chunk has {valid} frames)"
                )
            return 1 if k == 0 else valid // tf

        chunks = _rechunk(checked(blocks), 1, self.chunk_frames)
        first = next(chunks, None)
        if first is None:
            return
        h, w = first[0].shape[2:4]
        for out in self._stream(self._encode_step, _prepend(first, chunks), h, w, up=False, out_frames=frames):
            if out.shape[1]:
                yield out

    def encode_moments(self, pixels_bthwc: Any, *, whole_clip: bool = False) -> jax.Array:
        """(B, T, H, W, 3) in [-1, 1] -> (B, T', H/8, W/8, 2·z_dim) float32: mean ‖ log-variance (quant_conv out).

        ``whole_clip`` runs the clip as one chunk (one program per clip length; memory grows with T).
        """
        check_pixels(pixels_bthwc, self.cfg.spatial_factor, self.cfg.temporal_factor, "wan_vae.encode")
        if whole_clip:
            b, t, h, w, _ = np.shape(pixels_bthwc)
            chunks = iter([(pixels_bthwc, t)])
            out = self._stream(
                self._encode_step, chunks, h, w, up=False, out_frames=lambda k, v: self.cfg.latent_frames(v)
            )
            return _collect(out, pixels_bthwc)
        return _collect(self.encode_iter([pixels_bthwc]), pixels_bthwc)

    # --- decode -----------------------------------------------------------------------------------------

    def decode_iter(self, z_blocks: Iterable[Any]) -> Iterator[jax.Array]:
        """Streams (B, t', h, w, z_dim) raw latent blocks -> (B, t, 8h, 8w, 3) float32 frames, unclamped."""
        tf = self.cfg.temporal_factor
        chunks = _rechunk(z_blocks, 1, self.decode_chunk)
        first = next(chunks, None)
        if first is None:
            return
        h, w = first[0].shape[2:4]
        yield from self._stream(
            self._decode_step,
            _prepend(first, chunks),
            h,
            w,
            up=True,
            out_frames=lambda k, valid: 1 if k == 0 else valid * tf,
        )

    def decode_raw(self, z_bthwc: Any, *, whole_clip: bool = False) -> jax.Array:
        """(B, T', h, w, z_dim) raw (un-normalised) latents -> (B, 4(T'-1)+1, 8h, 8w, 3) float32, unclamped."""
        check_latents(z_bthwc, self.cfg.z_dim, "wan_vae.decode")
        if whole_clip:
            b, t, h, w, _ = np.shape(z_bthwc)
            chunks = iter([(z_bthwc, t)])
            tf = self.cfg.temporal_factor
            out = self._stream(self._decode_step, chunks, h, w, up=True, out_frames=lambda k, v: 1 + tf * (v - 1))
            return _collect(out, z_bthwc)
        return _collect(self.decode_iter([z_bthwc]), z_bthwc)


def _runtime(**kw) -> dict[str, Any]:
    return {k: v for k, v in kw.items() if v is not None}


def _prepend(first, rest: Iterator) -> Iterator:
    yield first
    yield from rest


def _tiling(tiling: Any) -> Tiling | None:
    if tiling is None or tiling is False:
        return None
    if tiling is True:
        return Tiling()
    if isinstance(tiling, Tiling):
        return tiling
    return Tiling(**dict(tiling))


class WanVAECodec:
    """The Wan2.1 VAE behind the codec interface: pixels (B, T, H, W, 3) in [-1, 1] <-> normalised latents.

    Args:
      weights: a diffusers ``AutoencoderKLWan`` directory, a safetensors file or an original ``Wan2.1_VAE.pth``;
        default ``$DREAMACTOR_WAN_VAE``. Without weights, ``config`` must be given and the VAE is randomly
        initialised from ``seed`` (tiny runs and tests only: its latents mean nothing).
      config: architecture: a preset name (``"wan2.1"``, ``"tiny"``), a diffusers config dict or a
        :class:`~dreamactor_jax.codecs.wan_vae_layers.WanVAEConfig`; by default the checkpoint's config.json.
      dtype / param_dtype: compute / storage dtype ("float32", "bfloat16").
      precision: "highest" for full float32 convolutions on GPU/TPU (default: the backend's).
      clip_output: clamp decoded pixels to [-1, 1] (default True, as diffusers).
      chunk_frames: frames per encoder chunk after frame 0 (a multiple of 4; diffusers: 4).
      decode_chunk: latent frames per decoder chunk (diffusers: 1).
      tiling: None/False (off), True (diffusers' defaults: 256-pixel tiles every 192) or a :class:`Tiling`/dict.
      spatial_factor, temporal_factor, latent_channels: optional expectations (as generic callers pass them);
        a mismatch with the model raises.
    """

    name = "wan_vae"

    def __init__(
        self,
        weights: str | None = None,
        *,
        config: Any = None,
        seed: int = 0,
        dtype: str | None = None,
        param_dtype: str | None = None,
        precision: str | None = None,
        clip_output: bool | None = None,
        chunk_frames: int | None = None,
        decode_chunk: int = 1,
        tiling: Any = None,
        spatial_factor: int | None = None,
        temporal_factor: int | None = None,
        latent_channels: int | None = None,
    ):
        weights = weights or os.environ.get(WEIGHTS_ENV) or None
        runtime = _runtime(dtype=dtype, param_dtype=param_dtype, precision=precision, clip_output=clip_output)
        if weights is not None:
            cfg, flat = convert.read_weights(weights, config, **runtime)
        elif config is not None:
            cfg, flat = convert._config_for(None, config, **runtime), None
        else:
            raise ValueError(
                f"wan_vae needs weights= (a diffusers AutoencoderKLWan directory or Wan2.1_VAE.pth; "
                f"or set ${WEIGHTS_ENV}), or config= (e.g. 'tiny') for a randomly initialised VAE"
            )
        for name, want, have in (
            ("spatial_factor", spatial_factor, cfg.spatial_factor),
            ("temporal_factor", temporal_factor, cfg.temporal_factor),
            ("latent_channels", latent_channels, cfg.z_dim),
        ):
            if want is not None and want != have:
                raise ValueError(f"wan_vae: {name}={want} was asked for, but the VAE has {have}")
        if flat is None:
            log.warning("wan_vae: no weights given; using a randomly initialised VAE (seed %d)", seed)
        self.vae = WanVAE(
            convert.build_model(cfg, flat, seed),
            chunk_frames=chunk_frames,
            decode_chunk=decode_chunk,
            tiling=_tiling(tiling),
        )
        self.cfg = cfg
        self.latent_channels = cfg.z_dim
        self.spatial_factor = cfg.spatial_factor
        self.temporal_factor = cfg.temporal_factor
        self._mean = np.asarray(self.cfg.latents_mean, np.float32)
        # diffusers' pipelines: latents_std = 1.0 / tensor(std) in float32, then (mu - mean) * latents_std.
        self._inv_std = (np.float32(1.0) / np.asarray(self.cfg.latents_std, np.float32)).astype(np.float32)

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        return self.cfg.latent_frames(frames), height // self.spatial_factor, width // self.spatial_factor

    def normalize(self, mu: Any) -> Any:
        """Raw encoder means -> Wan's normalised latents (numpy in, numpy out; else jax)."""
        mu = mu if isinstance(mu, np.ndarray) else jnp.asarray(mu)
        return (mu - self._mean) * self._inv_std

    def denormalize(self, latents: Any) -> Any:
        if isinstance(latents, np.ndarray):
            return latents.astype(np.float32) / self._inv_std + self._mean
        return jnp.asarray(latents, jnp.float32) / self._inv_std + self._mean

    def encode(self, pixels_bthwc: Any) -> Any:
        """(B, T, H, W, 3) in [-1, 1], T = 4k+1 -> (B, k+1, H/8, W/8, z_dim) normalised latents (the mean).

        A numpy input gives a numpy output (chunks gathered on the host); a jax array gives a jax array.
        """
        mom = self.vae.encode_moments(pixels_bthwc)
        return self.normalize(mom[..., : self.latent_channels])

    def encode_iter(self, blocks: Iterable[Any], *, trim: bool = False) -> Iterator[jax.Array]:
        """Streaming :meth:`encode` over (B, t, H, W, 3) pixel blocks (4k+1 frames in all, or ``trim``)."""
        for mom in self.vae.encode_iter(blocks, trim=trim):
            yield self.normalize(mom[..., : self.latent_channels])

    def decode(self, latents_bthwc: Any) -> Any:
        """Normalised latents (B, T', h, w, z_dim) -> (B, 4(T'-1)+1, 8h, 8w, 3) pixels clipped to [-1, 1]."""
        check_latents(latents_bthwc, self.latent_channels, "wan_vae.decode")
        x = self.vae.decode_raw(self.denormalize(latents_bthwc))
        if not self.cfg.clip_output:
            return x
        return np.clip(x, -1.0, 1.0) if isinstance(x, np.ndarray) else jnp.clip(x, -1.0, 1.0)

    def decode_iter(self, latents_bthwc: Any) -> Iterator[jax.Array]:
        """Streaming :meth:`decode`: yields pixel chunks (frame 0, then 4 frames per latent frame)."""
        check_latents(latents_bthwc, self.latent_channels, "wan_vae.decode")
        n = self.vae.decode_chunk
        blocks = (self.denormalize(latents_bthwc[:, i : i + n]) for i in range(0, np.shape(latents_bthwc)[1], n))
        for x in self.vae.decode_iter(blocks):
            yield jnp.clip(x, -1.0, 1.0) if self.cfg.clip_output else x
