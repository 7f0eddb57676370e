"""The Wan2.1 video VAE (diffusers ``AutoencoderKLWan``) as Flax NNX modules, channels-last (B, T, H, W, C).

Module and parameter names follow diffusers' (``encoder.down_blocks.3.conv1``, ``decoder.up_blocks.1.upsamplers.0``,
``quant_conv``...), so conversion is a name table plus layout hooks (:mod:`~dreamactor_jax.codecs.wan_vae_convert`).
Only diffusers' ``Sequential`` index ``resample.1`` becomes the attribute ``resample_1``.

Time is causal everywhere, which is what makes streaming exact. Every temporal convolution sees only the
current and earlier frames, so a clip can be processed in chunks if each convolution carries the last frames
of its input from one chunk to the next: diffusers' feature cache (``feat_cache``, ``CACHE_T = 2``). Here that
cache is a :class:`Tape`, a list of arrays in call order that a chunk reads and rewrites. The reference's
special cases come out as:

* a 3-tap causal convolution pads with two zero frames; so an empty cache is two zero frames, and the
  cache after a chunk is the last two frames of ``concat(cache, input)``, however short the chunk;
* ``downsample3d`` passes the clip's frame 0 through, then applies its stride-2 time convolution over
  ``concat(previous frame, chunk)``; its cache is one frame;
* ``upsample3d`` passes frame 0 through undoubled (diffusers' ``"Rep"`` marker), then doubles every later
  frame with a causal time convolution over frames 1, 2, ... that never sees frame 0.

The first chunk (``Tape(None)``) may hold any number of frames, so the whole clip in one call is the same code
as its first chunk; the streaming driver (:mod:`~dreamactor_jax.codecs.wan_vae`) sends 1 frame first and then
fixed-size chunks, as diffusers does. Attention (mid block only) and all other ops work frame by frame.

Parameters are stored in ``param_dtype``; convolutions run in ``dtype``; norms and softmax in float32.
The weights are replicated on a mesh (127M parameters, 0.5 GB in float32): their logical axes are all None.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from dreamactor_jax.models.layers import param

log = logging.getLogger(__name__)
CACHE_T = 2  # frames a 3-tap causal convolution carries between chunks (diffusers' CACHE_T)

WAN21_LATENTS_MEAN = (
    -0.7571,
    -0.7089,
    -0.9113,
    0.1075,
    -0.1745,
    0.9653,
    -0.1517,
    1.5508,
    0.4134,
    -0.0715,
    0.5517,
    -0.3632,
    -0.1922,
    -0.9497,
    0.2503,
    -0.2921,
)
WAN21_LATENTS_STD = (
    2.8184,
    1.4541,
    2.3275,
    2.6558,
    1.2196,
    1.7708,
    2.6052,
    2.0743,
    3.2687,
    2.1526,
    2.8652,
    1.5579,
    1.6382,
    1.1253,
    2.8251,
    1.9160,
)

# diffusers' AutoencoderKLWan config.json fields (the architecture), in its order.
ARCH_FIELDS = (
    "base_dim",
    "decoder_base_dim",
    "z_dim",
    "dim_mult",
    "num_res_blocks",
    "attn_scales",
    "temperal_downsample",
    "dropout",
    "latents_mean",
    "latents_std",
    "is_residual",
    "in_channels",
    "out_channels",
    "patch_size",
    "scale_factor_temporal",
    "scale_factor_spatial",
)
CLASS_NAME = "AutoencoderKLWan"
RUNTIME_FIELDS = ("dtype", "param_dtype", "precision", "clip_output")
DTYPES = ("float32", "bfloat16", "float16")
PRECISIONS = (None, "default", "high", "highest")

# torch's default Conv init, kaiming_uniform(a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
_conv_init = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
_zeros = nnx.initializers.zeros_init()
_ones = nnx.initializers.ones_init()


@dataclasses.dataclass(frozen=True)
class WanVAEConfig:
    """Architecture of an ``AutoencoderKLWan`` (diffusers' config.json fields) plus runtime options.

    The defaults are the Wan2.1 VAE. Wan2.2's residual VAE (``is_residual``, ``patch_size``) and
    ``attn_scales`` (which diffusers' decoder ignores, unlike the original release) are refused. The runtime
    fields (``RUNTIME_FIELDS``) are not part of diffusers' config and never change the weights.
    """

    # --- architecture (diffusers config.json) ---
    base_dim: int = 96
    decoder_base_dim: int | None = None
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attn_scales: tuple[float, ...] = ()
    temperal_downsample: tuple[bool, ...] = (False, True, True)  # diffusers' spelling
    dropout: float = 0.0  # inference only: no effect
    latents_mean: tuple[float, ...] = WAN21_LATENTS_MEAN
    latents_std: tuple[float, ...] = WAN21_LATENTS_STD
    is_residual: bool = False
    in_channels: int = 3
    out_channels: int = 3
    patch_size: int | None = None
    scale_factor_temporal: int | None = 4
    scale_factor_spatial: int | None = 8
    # --- runtime ---
    dtype: str = "float32"  # compute dtype of the convolutions
    param_dtype: str = "float32"  # storage dtype of the parameters
    # lax precision of convolutions and matmuls: None (the backend's default; GPUs and TPUs then compute
    # float32 with reduced-precision passes) or "highest" (full float32 there; no effect on CPU).
    precision: str | None = None
    clip_output: bool = True  # decode clamps to [-1, 1] (diffusers' _decode); a runtime option here

    def __post_init__(self):
        for f in ("dim_mult", "attn_scales", "temperal_downsample", "latents_mean", "latents_std"):
            object.__setattr__(self, f, tuple(getattr(self, f)))
        object.__setattr__(self, "temperal_downsample", tuple(bool(t) for t in self.temperal_downsample))
        self.validate()

    def validate(self) -> None:
        def bad(msg):
            raise ValueError(f"WanVAEConfig: {msg}")

        if self.is_residual or self.patch_size is not None:
            bad("is_residual / patch_size (the Wan2.2 VAE) are not supported; this is the Wan2.1 VAE")
        if self.attn_scales:
            bad(
                f"attn_scales={list(self.attn_scales)} is not supported: diffusers' decoder ignores it while the "
                "original release does not, so no checkpoint could match both (Wan2.1 uses [])"
            )
        if len(self.dim_mult) < 1 or len(self.temperal_downsample) != len(self.dim_mult) - 1:
            bad(
                f"temperal_downsample needs len(dim_mult) - 1 = {len(self.dim_mult) - 1} entries, "
                f"got {list(self.temperal_downsample)}"
            )
        if (self.in_channels, self.out_channels) != (3, 3):
            bad(
                f"in_channels/out_channels must be 3 (RGB, as the codec interface), got "
                f"{self.in_channels}/{self.out_channels}"
            )
        if self.num_res_blocks < 1:
            bad(f"num_res_blocks must be >= 1, got {self.num_res_blocks}")
        for name in ("latents_mean", "latents_std"):
            if len(getattr(self, name)) != self.z_dim:
                bad(f"{name} has {len(getattr(self, name))} entries, z_dim is {self.z_dim}")
        if any(s <= 0 for s in self.latents_std):
            bad("latents_std must be positive")
        for name, value in (
            ("scale_factor_spatial", self.spatial_factor),
            ("scale_factor_temporal", self.temporal_factor),
        ):
            given = getattr(self, name)
            if given is not None and given != value:
                bad(f"{name}={given}, but dim_mult/temperal_downsample give {value}")
        for d in self.decoder_dims[1 : len(self.dim_mult)]:
            if d % 2:
                bad(f"decoder width {d} is odd; the upsamplers halve it (decoder dims {self.decoder_dims})")
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in DTYPES:
                bad(f"{name} must be one of {DTYPES}, got {getattr(self, name)!r}")
        if self.precision not in PRECISIONS:
            bad(f"precision must be one of {PRECISIONS}, got {self.precision!r}")

    @property
    def encoder_dims(self) -> tuple[int, ...]:
        return tuple(self.base_dim * u for u in (1, *self.dim_mult))

    @property
    def decoder_dims(self) -> tuple[int, ...]:
        d = self.decoder_base_dim or self.base_dim
        return tuple(d * u for u in (self.dim_mult[-1], *self.dim_mult[::-1]))

    @property
    def spatial_factor(self) -> int:
        return 2 ** (len(self.dim_mult) - 1)

    @property
    def temporal_factor(self) -> int:
        return 2 ** sum(self.temperal_downsample)

    def latent_frames(self, frames: int) -> int:
        return 1 + (frames - 1) // self.temporal_factor

    def replace(self, **kw) -> WanVAEConfig:
        return dataclasses.replace(self, **kw)

    def arch_dict(self) -> dict[str, Any]:
        """The diffusers config fields (``AutoencoderKLWan(**cfg.arch_dict())`` builds the same model)."""
        out = {f: getattr(self, f) for f in ARCH_FIELDS}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def from_diffusers_config(cls, config: dict[str, Any], **runtime) -> WanVAEConfig:
        """From a diffusers ``config.json`` dict (or one with runtime fields too); ``_``-prefixed keys ignored.

        Fields this Wan2.1 model does not know are logged and ignored (the tensors are still checked).
        """
        cls_name = config.get("_class_name")
        if cls_name is not None and cls_name != CLASS_NAME:
            raise ValueError(f"config.json is for {cls_name!r}, not {CLASS_NAME!r}")
        known = (*ARCH_FIELDS, *RUNTIME_FIELDS)
        unknown = sorted(k for k in config if not k.startswith("_") and k not in known)
        if unknown:
            log.warning("%s config fields not used by the Wan2.1 VAE: %s", CLASS_NAME, unknown)
        return cls(**{**{k: v for k, v in config.items() if k in known}, **runtime})


PRESETS = {
    "wan2.1": WanVAEConfig(),
    # 8x/4x compression and 16 latent channels like Wan2.1, ~1/150 of the compute: tiny CPU runs, benchmarks.
    "tiny": WanVAEConfig(base_dim=8, dim_mult=(1, 2, 2, 2)),
}


def get_preset(name: str, **overrides) -> WanVAEConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown Wan VAE preset {name!r}; available: {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides)


class Tape:
    """The feature cache of one chunk: the previous chunk's tails in call order (``past``), and this chunk's.

    ``Tape(None)`` is the first chunk of a clip: every cache reads as empty (zero frames).
    """

    def __init__(self, past: Sequence[jax.Array] | None):
        self.past = None if past is None else list(past)
        self.new: list[jax.Array] = []

    @property
    def first(self) -> bool:
        return self.past is None

    def read(self) -> jax.Array | None:
        """The previous chunk's entry for the next cached op (None in the first chunk); follow with :meth:`write`."""
        if self.past is None:
            return None
        if len(self.new) >= len(self.past):
            raise ValueError(f"feature cache holds {len(self.past)} entries; this chunk asked for more")
        return self.past[len(self.new)]

    def write(self, tail: jax.Array) -> None:
        self.new.append(tail)


def _dt(name: str):
    return jnp.dtype(name)


def _precision(name: str | None):
    return None if name is None else jax.lax.Precision[name.upper()]


def _kernel(rngs, shape, cfg: WanVAEConfig):
    return param(rngs, _conv_init, shape, _dt(cfg.param_dtype), (None,) * len(shape))


def _bias(rngs, n, cfg: WanVAEConfig):
    return param(rngs, _zeros, (n,), _dt(cfg.param_dtype), (None,))


class CausalConv3d(nnx.Module):
    """diffusers ``WanCausalConv3d``: ``kernel`` (kt, kh, kw, in, out); time padded ``2·pad_t`` frames in front."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: Sequence[int],
        *,
        pad: Sequence[int] = (0, 0, 0),
        stride_t: int = 1,
        cfg: WanVAEConfig,
        rngs: nnx.Rngs,
    ):
        kt, kh, kw = kernel
        self.kernel = _kernel(rngs, (kt, kh, kw, cin, cout), cfg)
        self.bias = _bias(rngs, cout, cfg)
        self.cache_t = 2 * pad[0]  # frames of causal context: 2 for the 3-tap convolutions, 0 for 1x1x1
        self.pad_hw = (pad[1], pad[2])
        self.stride_t = stride_t
        self.dtype = cfg.dtype
        self.precision = cfg.precision

    def conv(self, x_bthwc: jax.Array) -> jax.Array:
        """The convolution on frames as given (no temporal padding)."""
        dt = _dt(self.dtype)
        k = self.kernel[...].astype(dt)
        if k.shape[:3] == (1, 1, 1):
            y = jnp.einsum("bthwc,cd->bthwd", x_bthwc.astype(dt), k[0, 0, 0], precision=_precision(self.precision))
        else:
            (ph, pw) = self.pad_hw
            y = jax.lax.conv_general_dilated(
                x_bthwc.astype(dt),
                k,
                window_strides=(self.stride_t, 1, 1),
                padding=((0, 0), (ph, ph), (pw, pw)),
                dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
                precision=_precision(self.precision),
            )
        return y + self.bias[...].astype(dt)

    def __call__(self, x_bthwc: jax.Array, tape: Tape | None = None) -> jax.Array:
        if not self.cache_t:
            return self.conv(x_bthwc)
        past = tape.read()
        if past is None:
            b, _, h, w, c = x_bthwc.shape
            past = jnp.zeros((b, self.cache_t, h, w, c), x_bthwc.dtype)
        x = jnp.concatenate([past.astype(x_bthwc.dtype), x_bthwc], axis=1)
        tape.write(x[:, -self.cache_t :])
        return self.conv(x)


class Conv2d(nnx.Module):
    """``torch.nn.Conv2d`` on every frame: ``kernel`` (kh, kw, in, out); padding ((top, bottom), (left, right))."""

    def __init__(
        self,
        cin: int,
        cout: int,
        k: int,
        *,
        stride: int = 1,
        padding=((0, 0), (0, 0)),
        cfg: WanVAEConfig,
        rngs: nnx.Rngs,
    ):
        self.kernel = _kernel(rngs, (k, k, cin, cout), cfg)
        self.bias = _bias(rngs, cout, cfg)
        self.stride = stride
        self.padding = tuple(tuple(p) for p in padding)
        self.dtype = cfg.dtype
        self.precision = cfg.precision

    def __call__(self, x_bthwc: jax.Array) -> jax.Array:
        dt = _dt(self.dtype)
        b, t, h, w, c = x_bthwc.shape
        k = self.kernel[...].astype(dt)
        x = x_bthwc.reshape(b * t, h, w, c).astype(dt)
        if k.shape[:2] == (1, 1) and self.stride == 1:
            y = jnp.einsum("nhwc,cd->nhwd", x, k[0, 0], precision=_precision(self.precision))
        else:
            y = jax.lax.conv_general_dilated(
                x,
                k,
                (self.stride, self.stride),
                self.padding,
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
                precision=_precision(self.precision),
            )
        y = y + self.bias[...].astype(dt)
        return y.reshape(b, t, *y.shape[1:])


class RMSNorm(nnx.Module):
    """diffusers ``WanRMS_norm``: ``x / max(|x|, 1e-12) · sqrt(C) · gamma`` over channels, in float32.

    ``gamma`` is (C,) here; diffusers stores (C, 1, 1, 1), or (C, 1, 1) in the attention block (``images``).
    """

    def __init__(self, dim: int, *, cfg: WanVAEConfig):
        self.gamma = param(None, _ones, (dim,), _dt(cfg.param_dtype), (None,))
        self.scale = dim**0.5

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        norm = jnp.sqrt(jnp.sum(jnp.square(x32), axis=-1, keepdims=True))
        y = x32 / jnp.maximum(norm, 1e-12) * self.scale * self.gamma[...].astype(jnp.float32)
        return y.astype(x.dtype)


class ResidualBlock(nnx.Module):
    """diffusers ``WanResidualBlock``: norm1, SiLU, conv1, norm2, SiLU, conv2, plus a (1x1x1) shortcut."""

    def __init__(self, cin: int, cout: int, *, cfg: WanVAEConfig, rngs: nnx.Rngs):
        self.norm1 = RMSNorm(cin, cfg=cfg)
        self.conv1 = CausalConv3d(cin, cout, (3, 3, 3), pad=(1, 1, 1), cfg=cfg, rngs=rngs)
        self.norm2 = RMSNorm(cout, cfg=cfg)
        self.conv2 = CausalConv3d(cout, cout, (3, 3, 3), pad=(1, 1, 1), cfg=cfg, rngs=rngs)
        self.conv_shortcut = CausalConv3d(cin, cout, (1, 1, 1), cfg=cfg, rngs=rngs) if cin != cout else None

    def __call__(self, x: jax.Array, tape: Tape) -> jax.Array:
        h = x if self.conv_shortcut is None else self.conv_shortcut(x)
        x = self.conv1(jax.nn.silu(self.norm1(x)), tape)
        x = self.conv2(jax.nn.silu(self.norm2(x)), tape)  # dropout: identity at inference
        return x + h


class AttentionBlock(nnx.Module):
    """diffusers ``WanAttentionBlock``: single-head self-attention over the H·W positions of each frame."""

    def __init__(self, dim: int, *, cfg: WanVAEConfig, rngs: nnx.Rngs):
        self.norm = RMSNorm(dim, cfg=cfg)
        self.to_qkv = Conv2d(dim, 3 * dim, 1, cfg=cfg, rngs=rngs)
        self.proj = Conv2d(dim, dim, 1, cfg=cfg, rngs=rngs)
        self.dim = dim
        self.precision = cfg.precision

    def __call__(self, x_bthwc: jax.Array) -> jax.Array:
        b, t, h, w, c = x_bthwc.shape
        qkv = self.to_qkv(self.norm(x_bthwc)).reshape(b * t, h * w, 3 * c)

        prec = _precision(self.precision)

        def attend(qkv_lc):  # one frame at a time: one (HW, HW) score matrix in memory, not T of them
            q, k, v = (qkv_lc[:, i * c : (i + 1) * c].astype(jnp.float32) for i in range(3))
            s = jnp.einsum("qc,kc->qk", q, k, precision=prec) / math.sqrt(c)
            return jnp.einsum("qk,kc->qc", jax.nn.softmax(s, axis=-1), v, precision=prec)

        y = jax.lax.map(attend, qkv).astype(x_bthwc.dtype).reshape(b, t, h, w, c)
        return self.proj(y) + x_bthwc


class Resample(nnx.Module):
    """diffusers ``WanResample``: 2x spatial up/down-sampling, with a causal time convolution in the 3d modes."""

    def __init__(self, dim: int, mode: str, *, cfg: WanVAEConfig, rngs: nnx.Rngs):
        if mode not in ("upsample2d", "upsample3d", "downsample2d", "downsample3d"):
            raise ValueError(f"unknown resample mode {mode!r}")
        self.mode = mode
        if mode.startswith("up"):
            self.resample_1 = Conv2d(dim, dim // 2, 3, padding=((1, 1), (1, 1)), cfg=cfg, rngs=rngs)
        else:  # torch ZeroPad2d((0, 1, 0, 1)): one zero row/column at the bottom/right only
            self.resample_1 = Conv2d(dim, dim, 3, stride=2, padding=((0, 1), (0, 1)), cfg=cfg, rngs=rngs)
        if mode == "upsample3d":
            self.time_conv = CausalConv3d(dim, 2 * dim, (3, 1, 1), pad=(1, 0, 0), cfg=cfg, rngs=rngs)
        elif mode == "downsample3d":
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride_t=2, cfg=cfg, rngs=rngs)
        else:
            self.time_conv = None

    def _double_frames(self, x: jax.Array, tape: Tape) -> jax.Array:
        """upsample3d in time: frame 0 of the clip passes through, every later frame becomes two."""
        first = tape.first
        rest = x[:, 1:] if first else x
        if rest.shape[1] == 0:  # a first chunk of one frame: the cache stays empty (zeros)
            b, _, h, w, c = x.shape
            tape.read()
            tape.write(jnp.zeros((b, CACHE_T, h, w, c), x.dtype))
            return x
        y = self.time_conv(rest, tape)  # (B, T, H, W, 2C): channel s·C + c is sub-frame s
        b, t, h, w, c2 = y.shape
        y = y.reshape(b, t, h, w, 2, c2 // 2).transpose(0, 1, 4, 2, 3, 5).reshape(b, 2 * t, h, w, c2 // 2)
        return jnp.concatenate([x[:, :1].astype(y.dtype), y], axis=1) if first else y

    def _halve_frames(self, x: jax.Array, tape: Tape) -> jax.Array:
        """downsample3d in time: frame 0 passes through; then stride-2 windows over (previous frame, chunk)."""
        past = tape.read()
        tape.write(x[:, -1:])
        if past is None:
            if x.shape[1] % 2 != 1:
                raise ValueError(f"downsample3d: the first chunk needs an odd frame count, got {x.shape[1]}")
            return x[:, :1] if x.shape[1] == 1 else jnp.concatenate([x[:, :1], self.time_conv.conv(x)], axis=1)
        if x.shape[1] % 2:
            raise ValueError(f"downsample3d: later chunks need an even frame count, got {x.shape[1]}")
        return self.time_conv.conv(jnp.concatenate([past.astype(x.dtype), x], axis=1))

    def __call__(self, x_bthwc: jax.Array, tape: Tape) -> jax.Array:
        x = x_bthwc
        if self.mode == "upsample3d":
            x = self._double_frames(x, tape)
        if self.mode.startswith("up"):  # nearest-exact at an integer factor 2 is a plain repeat
            x = jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)
        x = self.resample_1(x)
        if self.mode == "downsample3d":
            x = self._halve_frames(x, tape)
        return x


class MidBlock(nnx.Module):
    """diffusers ``WanMidBlock``: resnets.0, attentions.0, resnets.1."""

    def __init__(self, dim: int, *, cfg: WanVAEConfig, rngs: nnx.Rngs):
        self.resnets = nnx.List([ResidualBlock(dim, dim, cfg=cfg, rngs=rngs) for _ in range(2)])
        self.attentions = nnx.List([AttentionBlock(dim, cfg=cfg, rngs=rngs)])

    def __call__(self, x: jax.Array, tape: Tape) -> jax.Array:
        x = self.resnets[0](x, tape)
        return self.resnets[1](self.attentions[0](x), tape)


class UpBlock(nnx.Module):
    """diffusers ``WanUpBlock``: ``num_res_blocks + 1`` residual blocks, then ``upsamplers.0`` (if any)."""

    def __init__(self, cin: int, cout: int, mode: str | None, *, cfg: WanVAEConfig, rngs: nnx.Rngs):
        dims = [cin] + [cout] * (cfg.num_res_blocks + 1)
        self.resnets = nnx.List([ResidualBlock(a, b, cfg=cfg, rngs=rngs) for a, b in zip(dims[:-1], dims[1:])])
        self.upsamplers = nnx.List([Resample(cout, mode, cfg=cfg, rngs=rngs)]) if mode else None

    def __call__(self, x: jax.Array, tape: Tape) -> jax.Array:
        for r in self.resnets:
            x = r(x, tape)
        return x if self.upsamplers is None else self.upsamplers[0](x, tape)


class Encoder3d(nnx.Module):
    """diffusers ``WanEncoder3d`` (Wan2.1: not residual): frames -> 2·z_dim channels (mean, log-variance)."""

    def __init__(self, cfg: WanVAEConfig, *, rngs: nnx.Rngs):
        dims = cfg.encoder_dims
        self.conv_in = CausalConv3d(cfg.in_channels, dims[0], (3, 3, 3), pad=(1, 1, 1), cfg=cfg, rngs=rngs)
        blocks: list[nnx.Module] = []
        last = len(cfg.dim_mult) - 1
        for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResidualBlock(cin, cout, cfg=cfg, rngs=rngs))
                cin = cout
            if i != last:
                mode = "downsample3d" if cfg.temperal_downsample[i] else "downsample2d"
                blocks.append(Resample(cout, mode, cfg=cfg, rngs=rngs))
        self.down_blocks = nnx.List(blocks)
        self.mid_block = MidBlock(dims[-1], cfg=cfg, rngs=rngs)
        self.norm_out = RMSNorm(dims[-1], cfg=cfg)
        self.conv_out = CausalConv3d(dims[-1], 2 * cfg.z_dim, (3, 3, 3), pad=(1, 1, 1), cfg=cfg, rngs=rngs)

    def __call__(self, x: jax.Array, tape: Tape) -> jax.Array:
        x = self.conv_in(x, tape)
        for block in self.down_blocks:
            x = block(x, tape)
        x = self.mid_block(x, tape)
        return self.conv_out(jax.nn.silu(self.norm_out(x)), tape)


class Decoder3d(nnx.Module):
    """diffusers ``WanDecoder3d`` (Wan2.1): z_dim channels -> frames (unclamped)."""

    def __init__(self, cfg: WanVAEConfig, *, rngs: nnx.Rngs):
        dims = cfg.decoder_dims
        upsample = cfg.temperal_downsample[::-1]
        self.conv_in = CausalConv3d(cfg.z_dim, dims[0], (3, 3, 3), pad=(1, 1, 1), cfg=cfg, rngs=rngs)
        self.mid_block = MidBlock(dims[0], cfg=cfg, rngs=rngs)
        blocks = []
        last = len(cfg.dim_mult) - 1
        for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
            if i > 0:  # the previous upsampler halved the width (Wan2.1)
                cin //= 2
            mode = None if i == last else ("upsample3d" if upsample[i] else "upsample2d")
            blocks.append(UpBlock(cin, cout, mode, cfg=cfg, rngs=rngs))
        self.up_blocks = nnx.List(blocks)
        self.norm_out = RMSNorm(dims[-1], cfg=cfg)
        self.conv_out = CausalConv3d(dims[-1], cfg.out_channels, (3, 3, 3), pad=(1, 1, 1), cfg=cfg, rngs=rngs)

    def __call__(self, x: jax.Array, tape: Tape) -> jax.Array:
        x = self.mid_block(self.conv_in(x, tape), tape)
        for block in self.up_blocks:
            x = block(x, tape)
        return self.conv_out(jax.nn.silu(self.norm_out(x)), tape)


class AutoencoderKLWan(nnx.Module):
    """diffusers ``AutoencoderKLWan``: ``encoder`` + ``quant_conv`` and ``post_quant_conv`` + ``decoder``.

    :meth:`encode_chunk` / :meth:`decode_chunk` process one chunk with its feature cache; the driver in
    :mod:`~dreamactor_jax.codecs.wan_vae` jits them and streams a clip through them.
    """

    def __init__(self, cfg: WanVAEConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.encoder = Encoder3d(cfg, rngs=rngs)
        self.quant_conv = CausalConv3d(2 * cfg.z_dim, 2 * cfg.z_dim, (1, 1, 1), cfg=cfg, rngs=rngs)
        self.post_quant_conv = CausalConv3d(cfg.z_dim, cfg.z_dim, (1, 1, 1), cfg=cfg, rngs=rngs)
        self.decoder = Decoder3d(cfg, rngs=rngs)

    def encode_chunk(
        self, x_bthwc: jax.Array, past: list[jax.Array] | None = None
    ) -> tuple[jax.Array, list[jax.Array]]:
        """(B, t, H, W, 3) frames -> ((B, t', H/8, W/8, 2·z_dim) float32 mean ‖ log-variance, cache).

        ``past=None`` starts a clip (any odd t works, the whole clip included); later chunks need t a
        multiple of the temporal factor and the cache of the chunk before.
        """
        tape = Tape(past)
        h = self.encoder(x_bthwc, tape)
        return self.quant_conv(h).astype(jnp.float32), tape.new

    def decode_chunk(
        self, z_bthwc: jax.Array, past: list[jax.Array] | None = None
    ) -> tuple[jax.Array, list[jax.Array]]:
        """(B, t', h, w, z_dim) raw latents -> ((B, t, 8h, 8w, 3) float32 unclamped frames, cache)."""
        tape = Tape(past)
        x = self.decoder(self.post_quant_conv(z_bthwc), tape)
        return x.astype(jnp.float32), tape.new


def abstract_model(cfg: WanVAEConfig) -> AutoencoderKLWan:
    """The model with abstract (ShapeDtypeStruct) parameters; allocates nothing."""
    return nnx.eval_shape(lambda: AutoencoderKLWan(cfg, rngs=nnx.Rngs(0)))


def count_params(cfg: WanVAEConfig) -> int:
    state = nnx.state(abstract_model(cfg), nnx.Param)
    return sum(math.prod(v.shape) for v in jax.tree.leaves(state))
