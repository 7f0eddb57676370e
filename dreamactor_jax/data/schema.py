"""The training batch schema: the one place that says what a batch holds.

All video tensors are channels-last latents. Shapes for a batch of B clips of T
latent frames, latent halves of H x W with C channels, L text tokens of width E:

==============  ===============  =======  =====================================================
key             shape            dtype    meaning
==============  ===============  =======  =====================================================
target          (B, T, H, W, C)  float32  the clip to generate (left half of the canvas)
reference       (B, 1, H, W, C)  float32  the reference appearance (given at frame 0, left)
motion          (B, T, H, W, C)  float32  motion signal: pose render (stage 1) / driving RGB (2)
motion_valid    (B, T)           float32  1 where the motion frame is shown, 0 where masked
text            (B, L, E)        float32  text embeddings (target-oriented caption)
text_mask       (B, L)           float32  1 on real text tokens, 0 on padding
image           (B, M, E_img)    float32  optional: CLIP tokens of the reference (I2V models only)
==============  ===============  =======  =====================================================
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

REQUIRED = ("target", "reference", "motion", "motion_valid", "text", "text_mask")


def batch_shapes(b: int, t: int, h: int, w: int, c: int, text_len: int, text_dim: int,
                 image_tokens: int = 0, image_dim: int | None = None) -> dict[str, tuple]:
    """Field shapes of a batch; ``image`` only for an I2V model (``image_dim``) with ``image_tokens`` > 0."""
    image = {"image": (b, image_tokens, image_dim)} if image_dim and image_tokens else {}
    return image | {
        "target": (b, t, h, w, c),
        "reference": (b, 1, h, w, c),
        "motion": (b, t, h, w, c),
        "motion_valid": (b, t),
        "text": (b, text_len, text_dim),
        "text_mask": (b, text_len),
    }


def image_tokens_for(data, image_dim: int | None) -> int:
    """How many CLIP image tokens a batch of ``data`` (a ``config.data``) carries: ``data.image_tokens`` for an
    I2V model (``image_dim``) reading records (which store them), else 0 (the image branch is skipped)."""
    return int(data.get("image_tokens", 257)) if image_dim and data.get("source") == "records" else 0


def validate_batch(batch: Mapping[str, np.ndarray], expected: Mapping[str, tuple] | None = None) -> None:
    """Raises ValueError naming the first field that is missing or mis-shaped."""
    missing = [k for k in REQUIRED if k not in batch]
    if missing:
        raise ValueError(f"batch is missing field(s) {missing}; a batch holds {list(REQUIRED)}")
    if expected is not None:
        for k, shape in expected.items():
            if k not in batch:
                raise ValueError(f"batch is missing field {k!r} (expected shape {tuple(shape)})")
            if tuple(np.shape(batch[k])) != tuple(shape):
                raise ValueError(f"batch field {k!r} has shape {tuple(np.shape(batch[k]))}, expected {tuple(shape)}")
    b, t = np.shape(batch["target"])[:2]
    for k in ("reference", "motion", "motion_valid", "text", "text_mask"):
        if np.shape(batch[k])[0] != b:
            raise ValueError(f"batch field {k!r} has batch size {np.shape(batch[k])[0]}, target has {b}")
