"""Model FLOPs per step: the one counter used by logs, benchmarks and the AOT tool.

Counts matmul FLOPs (2 per multiply-add) of the forward pass, attention's two
batched matmuls included; elementwise work (norms, softmax, RoPE, optimizer) is
left out, as MFU conventions do. Training is 3x the forward pass (the backward
pass costs two forward passes); rematerialisation is *not* counted, so compiled
FLOPs / model FLOPs measures recompute overhead.
"""

from __future__ import annotations

import dataclasses
import math

from dreamactor_jax.models.config import WanConfig


@dataclasses.dataclass(frozen=True)
class FlopCount:
    forward: float  # model FLOPs of one forward pass over the batch
    attention: float  # the part of ``forward`` spent in attention score/value matmuls
    tokens: int  # video tokens per sample

    @property
    def train(self) -> float:
        return 3.0 * self.forward

    @property
    def attention_share(self) -> float:
        return self.attention / self.forward if self.forward else 0.0


def forward_flops(cfg: WanConfig, *, batch: int, frames: int, height: int, width: int, text_len: int,
                  image_len: int = 0, per_token_timesteps: bool = False) -> FlopCount:
    """FLOPs of one forward pass on a (batch, frames, height, width) latent input (``width`` = full canvas)."""
    pt, ph, pw = cfg.patch_size
    n = (frames // pt) * (height // ph) * (width // pw)
    d, f, lt, m = cfg.inner_dim, cfg.ffn_dim, text_len, image_len if cfg.image_dim else 0
    patch = pt * ph * pw
    mm = 0.0
    # Embeddings and the output head.
    mm += 2 * n * patch * cfg.in_channels * d + 2 * n * d * patch * cfg.out_channels
    mm += 2 * lt * (cfg.text_dim * d + d * d)
    tsteps = n if per_token_timesteps else 1
    mm += 2 * tsteps * (cfg.freq_dim * d + d * d + d * 6 * d)
    if m:
        mm += 2 * m * (cfg.image_dim * cfg.image_dim + cfg.image_dim * d)
    # Per block: self-attn q/k/v/o, cross-attn q/o and k/v of the context, image k/v, FFN.
    per_layer = 2 * n * 4 * d * d + 2 * n * 2 * d * d + 2 * lt * 2 * d * d + 2 * n * 2 * d * f
    per_layer += 2 * m * 2 * d * d
    att = 4 * n * n * d + 4 * n * lt * d + 4 * n * m * d
    total = batch * (mm + cfg.num_layers * (per_layer + att))
    return FlopCount(forward=float(total), attention=float(batch * cfg.num_layers * att), tokens=n)


def mfu(train_flops_per_step: float, step_seconds: float, peak_flops_per_device: float, devices: int) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over the devices' peak."""
    if step_seconds <= 0 or peak_flops_per_device <= 0:
        return math.nan
    return train_flops_per_step / step_seconds / (peak_flops_per_device * devices)


# Dense bf16 peak FLOP/s per device (public spec sheets), matched against ``jax.Device.device_kind`` by
# case-insensitive substring, first match wins (so "h100 pcie" precedes "h100", "v5 lite" precedes "v5").
# CPUs have no entry on purpose: a CPU's peak depends on cores, clocks and vector units, so the progress
# line reports achieved FLOP/s there, and MFU only against ``config.train.peak_flops_per_device``.
PEAK_FLOPS_BY_KIND: tuple[tuple[str, float], ...] = (
    ("tpu v6 lite", 918e12),  # Trillium (v6e)
    ("tpu v6e", 918e12),
    ("tpu v5 lite", 197e12),  # v5e
    ("tpu v5e", 197e12),
    ("tpu v5p", 459e12),
    ("tpu v5", 459e12),  # v5p reports "TPU v5"
    ("tpu v4", 275e12),
    ("h100 pcie", 756e12),
    ("h100", 989e12),  # SXM
    ("h200", 989e12),
    ("h800", 989e12),
    ("b200", 2250e12),
    ("a100", 312e12),
)


def peak_flops_per_device(device_kind: str) -> float | None:
    """Dense bf16 peak FLOP/s of one device of ``device_kind`` (``jax.devices()[0].device_kind``); None if unknown."""
    kind = device_kind.lower()
    for pattern, peak in PEAK_FLOPS_BY_KIND:
        if pattern in kind:
            return peak
    return None
