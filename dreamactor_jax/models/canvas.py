"""Spatiotemporal in-context canvas (DreamActor-M2), as pure functions.

Every latent frame becomes a canvas twice as wide, (H, 2W): the left half is
the target region, the right half carries the motion signal. The model input is
the channel concatenation Wan2.1-I2V uses::

    x = noisy latent (C) ⊕ mask (4) ⊕ conditioning latent (C)      # 16 + 4 + 16 = 36

* conditioning, left half: the reference latent at frame 0, zeros after;
* conditioning, right half: the motion latents (pose render in stage 1, driving
  RGB in stage 2), zeroed on frames whose motion is masked (``motion_valid``);
* mask: 1 where content is given, i.e. the reference at frame 0 and the motion
  half on valid frames; Wan's 4 mask channels per latent frame carry the same
  value here because validity is per latent frame.

Tokens are patchified row-major over the full double width, so RoPE's width
index runs over 0..2W'-1 and tells the halves apart with no new parameters. The
generated video is the left half; the loss covers the unknown region (mask 0 in
the left half) only.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

MASK_CHANNELS = 4


def _check_video(name: str, x, ndim: int = 5):
    if x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dims (B, T, H, W, C), got shape {x.shape}")


def join_halves(left_bthwc: jax.Array, right_bthwc: jax.Array) -> jax.Array:
    """(B,T,H,W,C) ⊕ (B,T,H,W,C) along width -> (B,T,H,2W,C)."""
    _check_video("left", left_bthwc)
    _check_video("right", right_bthwc)
    if left_bthwc.shape != right_bthwc.shape:
        raise ValueError(f"canvas halves differ in shape: left {left_bthwc.shape} vs right {right_bthwc.shape}")
    return jnp.concatenate([left_bthwc, right_bthwc], axis=3)


def split_canvas(canvas_bthwc: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(B,T,H,2W,C) -> (left, right), each (B,T,H,W,C)."""
    _check_video("canvas", canvas_bthwc)
    w2 = canvas_bthwc.shape[3]
    if w2 % 2:
        raise ValueError(f"canvas width must be even (two halves), got {w2}")
    return canvas_bthwc[:, :, :, : w2 // 2], canvas_bthwc[:, :, :, w2 // 2 :]


def _valid(motion_valid_bt, b: int, t: int, dtype) -> jax.Array:
    if motion_valid_bt is None:
        return jnp.ones((b, t), dtype)
    if motion_valid_bt.shape != (b, t):
        raise ValueError(f"motion_valid must be (B, T)=({b}, {t}), got {motion_valid_bt.shape}")
    return motion_valid_bt.astype(dtype)


def masked_motion(motion_bthwc: jax.Array, motion_valid_bt: jax.Array | None) -> jax.Array:
    """Motion latents with invalid (masked) frames set to zero."""
    b, t = motion_bthwc.shape[:2]
    return motion_bthwc * _valid(motion_valid_bt, b, t, motion_bthwc.dtype)[:, :, None, None, None]


def condition_canvas(reference_b1hwc: jax.Array, motion_bthwc: jax.Array,
                     motion_valid_bt: jax.Array | None = None) -> jax.Array:
    """Conditioning latent (B,T,H,2W,C): [reference at frame 0, else 0] ⊕ [valid motion]."""
    _check_video("reference", reference_b1hwc)
    _check_video("motion", motion_bthwc)
    b, t, h, w, c = motion_bthwc.shape
    if reference_b1hwc.shape != (b, 1, h, w, c):
        raise ValueError(f"reference must be (B, 1, H, W, C)=({b}, 1, {h}, {w}, {c}) to match motion, "
                         f"got {reference_b1hwc.shape}")
    left = jnp.concatenate([reference_b1hwc, jnp.zeros((b, t - 1, h, w, c), motion_bthwc.dtype)], axis=1)
    return join_halves(left.astype(motion_bthwc.dtype), masked_motion(motion_bthwc, motion_valid_bt))


def mask_canvas(b: int, t: int, h: int, w: int, motion_valid_bt: jax.Array | None = None,
                dtype=jnp.float32) -> jax.Array:
    """Given-content mask (B,T,H,2W,4) for a canvas whose halves are (H, W) latents."""
    left_t = jnp.zeros((b, t), dtype).at[:, 0].set(1)  # the reference frame
    right_t = _valid(motion_valid_bt, b, t, dtype)
    left = jnp.broadcast_to(left_t[:, :, None, None, None], (b, t, h, w, MASK_CHANNELS))
    right = jnp.broadcast_to(right_t[:, :, None, None, None], (b, t, h, w, MASK_CHANNELS))
    return jnp.concatenate([left, right], axis=3)


def assemble_canvas(noisy_bthwc: jax.Array, cond_bthwc: jax.Array, mask_bthwm: jax.Array) -> jax.Array:
    """Channel-concatenates noisy latent ⊕ mask ⊕ conditioning: (B,T,H,2W,2C+4)."""
    _check_video("noisy", noisy_bthwc)
    if cond_bthwc.shape != noisy_bthwc.shape:
        raise ValueError(f"conditioning {cond_bthwc.shape} must match the noisy canvas {noisy_bthwc.shape}")
    if mask_bthwm.shape != (*noisy_bthwc.shape[:4], MASK_CHANNELS):
        raise ValueError(f"mask must be {(*noisy_bthwc.shape[:4], MASK_CHANNELS)}, got {mask_bthwm.shape}")
    dt = noisy_bthwc.dtype
    return jnp.concatenate([noisy_bthwc, mask_bthwm.astype(dt), cond_bthwc.astype(dt)], axis=-1)


def unknown_weights(mask_bthwm: jax.Array) -> jax.Array:
    """Loss weights (B,T,H,2W): 1 where the left half is not given, 0 elsewhere."""
    given = mask_bthwm[..., 0] > 0
    w2 = given.shape[3]
    left = jnp.arange(w2) < w2 // 2
    return jnp.where(left[None, None, None, :] & ~given, 1.0, 0.0).astype(jnp.float32)


def token_given(mask_bthwm: jax.Array, patch_size: tuple[int, int, int]) -> jax.Array:
    """Per-token given flag (B, N), tokens row-major over (T', H', 2W'): a patch is given if all its pixels are."""
    b, t, h, w, _ = mask_bthwm.shape
    pt, ph, pw = patch_size
    g = (mask_bthwm[..., 0] > 0).reshape(b, t // pt, pt, h // ph, ph, w // pw, pw)
    return g.all(axis=(2, 4, 6)).reshape(b, -1)
