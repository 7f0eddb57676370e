"""A synthetic 'copy the motion' source: latents with a learnable structure, no files.

The target clip is a smooth random latent video; the motion signal is the same
video (as a perfect pose render would determine it), the reference its first
frame. A model that reads the motion half of the canvas can denoise the target
exactly, so the loss must fall well below its starting value: a smoke task for
the loop and the overfit test before the procedural character data exists.
"""

from __future__ import annotations

import numpy as np


def smooth_video(rng: np.random.Generator, t: int, h: int, w: int, c: int) -> np.ndarray:
    """A (T, H, W, C) latent video, smooth in space and time, unit-ish variance."""
    coarse = rng.standard_normal((t + 2, h // 2 + 2, w // 2 + 2, c)).astype(np.float32)
    up = coarse.repeat(2, axis=1).repeat(2, axis=2)
    k = np.array([0.25, 0.5, 0.25], np.float32)
    for axis in (0, 1, 2):
        up = sum(k[i] * np.take(up, np.arange(i, up.shape[axis] - 2 + i), axis=axis) for i in range(3))
    return (up[:t, :h, :w] * 1.6).astype(np.float32)


def process_slice(batch: int, process_index: int, process_count: int) -> tuple[int, int]:
    """``[lo, hi)``: the contiguous examples of a global batch that process ``process_index`` builds."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} is not in [0, process_count={process_count})")
    if batch < 1 or batch % process_count:
        raise ValueError(f"global batch_size={batch} must be a positive multiple of process_count={process_count}")
    per = batch // process_count
    return process_index * per, (process_index + 1) * per


def synthetic_batch(seed: int, index: int, *, batch: int, frames: int, height: int, width: int, channels: int,
                    text_len: int, text_dim: int, masked_frames: int = 0, process_index: int = 0,
                    process_count: int = 1) -> dict[str, np.ndarray]:
    """This process's slice of batch number ``index`` of the synthetic source.

    ``batch`` is the global batch. Example ``e`` of batch ``index`` is drawn from its own
    generator seeded by ``(seed, index, e)``, so each process builds only its
    :func:`process_slice` and the processes' slices, concatenated in process order, are
    exactly the single-process batch.
    """
    lo, hi = process_slice(batch, process_index, process_count)
    targets, texts = [], []
    for e in range(lo, hi):
        rng = np.random.default_rng([seed, index, e])
        targets.append(smooth_video(rng, frames, height, width, channels))
        texts.append(rng.standard_normal((text_len, text_dim)).astype(np.float32))
    target = np.stack(targets)
    valid = np.ones((hi - lo, frames), np.float32)
    valid[:, :masked_frames] = 0.0
    return {
        "target": target,
        "reference": target[:, :1].copy(),
        "motion": target.copy(),
        "motion_valid": valid,
        "text": np.stack(texts),
        "text_mask": np.ones((hi - lo, text_len), np.float32),
    }
