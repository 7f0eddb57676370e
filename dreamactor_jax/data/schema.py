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
==============  ===============  =======  =====================================================
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

REQUIRED = ("target", "reference", "motion", "motion_valid", "text", "text_mask")


def batch_shapes(b: int, t: int, h: int, w: int, c: int, text_len: int, text_dim: int) -> dict[str, tuple]:
    return {
        "target": (b, t, h, w, c),
        "reference": (b, 1, h, w, c),
        "motion": (b, t, h, w, c),
        "motion_valid": (b, t),
        "text": (b, text_len, text_dim),
        "text_mask": (b, text_len),
    }


def validate_batch(batch: Mapping[str, np.ndarray], expected: Mapping[str, tuple] | None = None) -> None:
    """Raises ValueError naming the first field that is missing or mis-shaped."""
    missing = [k for k in REQUIRED if k not in batch]
    if missing:
        raise ValueError(f"batch is missing field(s) {missing}; a batch holds {list(REQUIRED)}")
    if expected is not None:
        for k, shape in expected.items():
            if tuple(np.shape(batch[k])) != tuple(shape):
                raise ValueError(f"batch field {k!r} has shape {tuple(np.shape(batch[k]))}, expected {tuple(shape)}")
    b, t = np.shape(batch["target"])[:2]
    for k in ("reference", "motion", "motion_valid", "text", "text_mask"):
        if np.shape(batch[k])[0] != b:
            raise ValueError(f"batch field {k!r} has batch size {np.shape(batch[k])[0]}, target has {b}")
