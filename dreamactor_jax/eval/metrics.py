"""Video metrics in numpy, on frames in [-1, 1] of shape (..., T, H, W, 3).

* ``psnr``: on the [0, 1] range, averaged over frames.
* ``ssim``: Wang et al. 2004 with an 7x7 uniform window (small frames), K1 = 0.01,
  K2 = 0.03, per channel, averaged over pixels, channels and frames.
* ``keypoint_consistency``: is the generated body where the motion puts it, and
  nowhere else: (fraction of ground-truth keypoints that land on generated
  foreground) x (fraction of pixels far from every keypoint that are background).
  Foreground is a pixel differing from the background colour, estimated from the
  reference's border, by more than ``threshold`` (mean abs, [-1, 1] range). It
  is independent of appearance; 1.0 is perfect, noise scores near 0.
* ``appearance_consistency``: 1 - the L1 distance of the foreground colour
  histograms (8 bins per channel) of generated frames and the reference.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import uniform_filter


def psnr(pred: np.ndarray, target: np.ndarray) -> float:
    p = (np.clip(pred, -1, 1) + 1) / 2
    t = (np.clip(target, -1, 1) + 1) / 2
    mse = np.mean(np.square(p - t), axis=(-3, -2, -1))
    return float(np.mean(10.0 * np.log10(1.0 / np.maximum(mse, 1e-10))))


def ssim(pred: np.ndarray, target: np.ndarray, window: int = 7) -> float:
    x = ((np.clip(pred, -1, 1) + 1) / 2).astype(np.float64).reshape(-1, *pred.shape[-3:])
    y = ((np.clip(target, -1, 1) + 1) / 2).astype(np.float64).reshape(-1, *target.shape[-3:])
    c1, c2 = 0.01**2, 0.03**2
    size = (1, window, window, 1)
    mx, my = uniform_filter(x, size), uniform_filter(y, size)
    vx = uniform_filter(x * x, size) - mx * mx
    vy = uniform_filter(y * y, size) - my * my
    cxy = uniform_filter(x * y, size) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(np.mean(s))


def background_colour(reference_hw3: np.ndarray) -> np.ndarray:
    """Median colour of the reference's top border row and side columns (the character stands inside)."""
    border = np.concatenate([reference_hw3[0], reference_hw3[:, 0], reference_hw3[:, -1]])
    return np.median(border, axis=0)


def foreground(frames_thw3: np.ndarray, bg_3: np.ndarray, threshold: float = 0.15) -> np.ndarray:
    return np.mean(np.abs(frames_thw3 - bg_3), axis=-1) > threshold


def keypoint_consistency(pred_thw3: np.ndarray, keypoints_tsj2: np.ndarray, mask_sj: np.ndarray,
                         reference_hw3: np.ndarray, threshold: float = 0.15, radius: float = 0.2) -> float:
    """Body where the keypoints are, and nowhere else: hit rate x clean rate (both in [0, 1]).

    hit rate: fraction of valid keypoints (x, y pixel coords) whose generated pixel is foreground.
    clean rate: fraction of pixels farther than ``radius`` x frame height from every keypoint that are
    background. The product penalises both a missing body and foreground everywhere (e.g. noise).
    """
    t, h, w, _ = pred_thw3.shape
    fg = foreground(pred_thw3, background_colour(reference_hw3), threshold)
    kx, ky = keypoints_tsj2[..., 0], keypoints_tsj2[..., 1]
    valid = np.broadcast_to(mask_sj.astype(bool), kx.shape) & (kx >= 0) & (kx < w) & (ky >= 0) & (ky < h)
    if not valid.any():
        return 0.0
    xs = np.clip(np.round(kx).astype(int), 0, w - 1)
    ys = np.clip(np.round(ky).astype(int), 0, h - 1)
    ti = np.broadcast_to(np.arange(t)[:, None, None], xs.shape)
    hit = fg[ti, ys, xs][valid].mean()
    yy, xx = np.mgrid[0:h, 0:w]
    far = np.ones((t, h, w), bool)
    r2 = (radius * h) ** 2
    for ti_, s_, j_ in zip(*np.nonzero(valid)):
        far[ti_] &= (xx - kx[ti_, s_, j_]) ** 2 + (yy - ky[ti_, s_, j_]) ** 2 > r2
    clean = 1.0 - fg[far].mean() if far.any() else 1.0
    return float(hit * clean)


def _hist(pixels_n3: np.ndarray, bins: int = 8) -> np.ndarray:
    if len(pixels_n3) == 0:
        return np.zeros(3 * bins)
    q = np.clip(((pixels_n3 + 1) / 2 * bins).astype(int), 0, bins - 1)
    h = np.concatenate([np.bincount(q[:, c], minlength=bins) for c in range(3)]).astype(np.float64)
    return h / h.sum()


def appearance_consistency(pred_thw3: np.ndarray, reference_hw3: np.ndarray, threshold: float = 0.15) -> float:
    bg = background_colour(reference_hw3)
    ref_fg = reference_hw3[foreground(reference_hw3[None], bg, threshold)[0]]
    gen_fg = pred_thw3[foreground(pred_thw3, bg, threshold)]
    return float(1.0 - 0.5 * np.abs(_hist(ref_fg) - _hist(gen_fg)).sum())


def histogram_similarity(pred_thw3: np.ndarray, reference_hw3: np.ndarray) -> float:
    """Colour-histogram intersection of whole frames with the whole reference, in [0, 1] (no background model:
    for real footage, where the background is neither flat nor known)."""
    ref = _hist(np.asarray(reference_hw3).reshape(-1, 3))
    gen = _hist(np.asarray(pred_thw3).reshape(-1, 3))
    return float(1.0 - 0.5 * np.abs(ref - gen).sum())


def pose_pck(estimated: list[np.ndarray], driving_tsj3: np.ndarray, min_confidence: float = 0.3,
             alpha: float = 0.2) -> float:
    """Pose consistency of a video with its driving keypoints, in [0, 1]: PCK@``alpha``.

    ``estimated[t]``: (P, J, 3) keypoints a pose estimator found in frame t; ``driving_tsj3``: (T, S, J, 3) the
    driving pose (same joint order and pixel frame). A driving joint at or above ``min_confidence`` counts as
    correct when the best-matching estimated person has that joint, confident, within ``alpha`` times the
    larger side of the driving subject's box (at least 2 pixels). Frames without driving joints are skipped;
    none at all scores 0.
    """
    hits = total = 0
    for t, drv in enumerate(np.asarray(driving_tsj3, np.float32)):
        est = np.asarray(estimated[t], np.float32) if t < len(estimated) else np.zeros((0,) + drv.shape[1:])
        for subject in drv:
            vis = subject[:, 2] >= min_confidence
            if not vis.any():
                continue
            pts = subject[vis, :2]
            tol = max(alpha * float(np.max(pts.max(0) - pts.min(0))), 2.0)
            best = 0
            for person in est:
                ok = (person[vis, 2] >= min_confidence) & (np.linalg.norm(person[vis, :2] - pts, axis=1) <= tol)
                best = max(best, int(ok.sum()))
            hits += best
            total += int(vis.sum())
    return hits / total if total else 0.0
