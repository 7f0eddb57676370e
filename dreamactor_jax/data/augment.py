"""Pose augmentation (bone-length scaling + bounding-box normalisation) and first-second motion masking.

Stage 1 of DreamActor-M2 scales every bone of the driving skeleton by a factor drawn from
U(0.8, 1.2) on 30% of the samples, then rescales the result back into the original pose's bounding
box: the driver keeps its motion and its place on the canvas but no longer carries the target's
exact body proportions, so the model has to take the shape from the reference image.

Keypoint arrays are (T, S, J, 2) pixel (x, y) with an (S, J) parent table (-1 for roots) and an (S, J)
mask of real joints; parents precede children (``parents[s, j] < j``), as in the procedural plans.
"""

from __future__ import annotations

import numpy as np


def sample_bone_factors(rng: np.random.Generator, num_subjects: int, num_joints: int, *, prob: float = 0.3,
                        low: float = 0.8, high: float = 1.2) -> tuple[np.ndarray, bool]:
    """Per-bone length factors (S, J) and whether this sample is augmented at all.

    The decision is per sample (probability ``prob``); factors are independent per subject and bone.
    Unaugmented samples get all-ones factors.
    """
    applied = bool(rng.random() < prob)
    factors = rng.uniform(low, high, (num_subjects, num_joints)).astype(np.float32)
    return (factors if applied else np.ones_like(factors)), applied


def scale_bones(keypoints_tsj2: np.ndarray, parents_sj: np.ndarray, factors_sj: np.ndarray) -> np.ndarray:
    """Rebuilds each skeleton from its root with every bone vector multiplied by its factor.

    The bone of joint j is ``kp[j] - kp[parent[j]]``; the new joint is the new parent plus the scaled
    bone, so a scaled upper arm carries the forearm along. Roots (parent -1) stay put.
    """
    kp = np.asarray(keypoints_tsj2, np.float32)
    parents = np.asarray(parents_sj)
    out = kp.copy()
    for s in range(kp.shape[1]):
        for j in range(kp.shape[2]):
            p = parents[s, j]
            if p >= 0:
                out[:, s, j] = out[:, s, p] + factors_sj[s, j] * (kp[:, s, j] - kp[:, s, p])
    return out


def keypoint_bbox(kp_tsj2: np.ndarray, mask_sj: np.ndarray, per_frame: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) corners of each subject's box over its valid joints.

    Returns:
      Two arrays of (x, y): shape (S, 2) for the union over the clip, or (T, S, 2) when ``per_frame``;
      +inf / -inf for subjects without joints.
    """
    valid = (np.asarray(mask_sj) > 0)[None, :, :, None]
    lo = np.where(valid, kp_tsj2, np.inf).min(2)
    hi = np.where(valid, kp_tsj2, -np.inf).max(2)
    if not per_frame:
        lo, hi = lo.min(0), hi.max(0)
    return lo, hi


def normalize_to_bbox(augmented_tsj2: np.ndarray, original_tsj2: np.ndarray, mask_sj: np.ndarray, *,
                      per_frame: bool = False) -> np.ndarray:
    """Maps each subject's augmented keypoints affinely (x and y separately) onto the original's box.

    By default the box is the union over the clip, so one map per subject keeps the motion temporally
    coherent; ``per_frame=True`` matches every frame's box instead. Padded joints stay zero.
    """
    lo_a, hi_a = keypoint_bbox(augmented_tsj2, mask_sj, per_frame)
    lo_o, hi_o = keypoint_bbox(original_tsj2, mask_sj, per_frame)
    has = np.isfinite(lo_a).all(-1, keepdims=True)
    lo_a, hi_a, lo_o, hi_o = (np.where(has, v, 0.0) for v in (lo_a, hi_a, lo_o, hi_o))
    span_a = hi_a - lo_a
    # A degenerate axis (all joints on one line) keeps its augmented offsets around the original box.
    scale = np.where(span_a > 1e-6, (hi_o - lo_o) / np.maximum(span_a, 1e-6), 1.0)
    if not per_frame:
        lo_a, lo_o, scale = lo_a[None], lo_o[None], scale[None]
    out = lo_o[:, :, None] + (augmented_tsj2 - lo_a[:, :, None]) * scale[:, :, None]
    return np.where((np.asarray(mask_sj) > 0)[None, :, :, None], out, 0.0).astype(np.float32)


def augment_pose(rng: np.random.Generator, keypoints_tsj2: np.ndarray, parents_sj: np.ndarray, mask_sj: np.ndarray,
                 *, prob: float = 0.3, low: float = 0.8, high: float = 1.2, per_frame_bbox: bool = False
                 ) -> tuple[np.ndarray, dict]:
    """Bone-length augmentation followed by bbox normalisation, on a ``prob`` fraction of samples.

    Args:
      rng: the sample's generator.
      keypoints_tsj2: (T, S, J, 2) pixel keypoints.
      parents_sj, mask_sj: skeleton tables (see module docstring).
      prob: probability that this sample is augmented.
      low, high: bone factor range.
      per_frame_bbox: match each frame's box instead of the clip's.

    Returns:
      (keypoints to render as the pose video, info) where info holds ``applied`` (bool),
      ``factors`` (S, J) and ``scaled`` (the keypoints after scaling, before normalisation).
    """
    kp = np.asarray(keypoints_tsj2, np.float32)
    factors, applied = sample_bone_factors(rng, kp.shape[1], kp.shape[2], prob=prob, low=low, high=high)
    if not applied:
        return kp.copy(), dict(applied=False, factors=factors, scaled=kp.copy())
    scaled = scale_bones(kp, parents_sj, factors)
    return normalize_to_bbox(scaled, kp, mask_sj, per_frame=per_frame_bbox), dict(applied=True, factors=factors,
                                                                                  scaled=scaled)


def mask_first_frames(motion: np.ndarray, num_masked: int, *, time_axis: int = 0, fill: float = 0.0
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Hides the first ``num_masked`` frames of a motion signal (training: the first second).

    Args:
      motion: array with a time axis (e.g. (T, H, W, C), or (B, T, ...) with ``time_axis=1``).
      num_masked: frames to blank, clipped to [0, T].
      time_axis: which axis is time.
      fill: value written into masked frames (0: "nothing" for latents and [-1, 1] pixels alike).

    Returns:
      (masked copy of ``motion``, ``motion_valid`` of shape (T,) float32: 0 masked, 1 shown).
    """
    motion = np.asarray(motion)
    t = motion.shape[time_axis]
    n = int(np.clip(num_masked, 0, t))
    out = motion.copy()
    index = [slice(None)] * motion.ndim
    index[time_axis] = slice(0, n)
    out[tuple(index)] = fill
    valid = np.ones(t, np.float32)
    valid[:n] = 0.0
    return out, valid


def prepend_zero_frames(motion: np.ndarray, num_frames: int, *, time_axis: int = 0, fill: float = 0.0
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Inference counterpart of the mask: ``num_frames`` blank frames in front of the driving signal.

    Returns:
      (extended motion with T + num_frames frames, ``motion_valid`` (T + num_frames,) float32).
    """
    motion = np.asarray(motion)
    n = max(int(num_frames), 0)
    pad_shape = list(motion.shape)
    pad_shape[time_axis] = n
    out = np.concatenate([np.full(pad_shape, fill, motion.dtype), motion], axis=time_axis)
    valid = np.concatenate([np.zeros(n, np.float32), np.ones(motion.shape[time_axis], np.float32)])
    return out, valid


def frames_per_second(fps: float, seconds: float = 1.0) -> int:
    """How many frames cover ``seconds`` at ``fps`` (rounded): the N of "mask the first second"."""
    return int(round(fps * seconds))


def augment_track(rng: np.random.Generator, keypoints_tsj3: np.ndarray, parents_j: np.ndarray, *, prob: float = 0.3,
                  low: float = 0.8, high: float = 1.2) -> tuple[np.ndarray, bool]:
    """:func:`augment_pose` for estimated keypoints, whose joints come and go per frame.

    One set of bone factors per sample (subject and bone); in each frame only the visible joints
    (confidence > 0) take part: a visible joint whose parent is not visible is a root there (it stays
    put and carries its subtree), and the result is mapped onto that frame's box of visible joints.
    Invisible joints stay zero.

    Args:
      keypoints_tsj3: (T, S, J, 3) x, y, confidence.
      parents_j: (J,) parent table of the skeleton, parents first (``parents_j[j] < j``).

    Returns:
      (augmented (T, S, J, 3) with the confidences unchanged, whether this sample was augmented).
    """
    kp = np.asarray(keypoints_tsj3, np.float32)
    t, s, j, _ = kp.shape
    factors, applied = sample_bone_factors(rng, s, j, prob=prob, low=low, high=high)
    if not applied:
        return kp.copy(), False
    parents = np.asarray(parents_j)
    if np.any(parents >= np.arange(j)):
        raise ValueError("augment_track needs a parents-first skeleton (parents_j[j] < j for every joint)")
    out = kp.copy()
    for f in range(t):
        vis = kp[f, :, :, 2] > 0  # (S, J)
        par = np.where((parents >= 0)[None] & np.take_along_axis(vis, np.maximum(parents, 0)[None].repeat(s, 0), 1),
                       parents[None], -1)
        scaled = scale_bones(kp[f : f + 1, :, :, :2], par, factors)
        out[f, :, :, :2] = normalize_to_bbox(scaled, kp[f : f + 1, :, :, :2], vis.astype(np.float32),
                                             per_frame=True)[0]
    out[..., :2] *= (kp[..., 2:] > 0)
    return out, True
