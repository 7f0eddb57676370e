"""Evaluation metrics behave as documented on cases with known answers."""

import numpy as np
import pytest

from dreamactor_jax.eval import metrics


def _scene(seed=0, t=3, h=24, w=20):
    rng = np.random.default_rng(seed)
    frames = np.full((t, h, w, 3), -0.6, np.float32)  # background
    kp = np.zeros((t, 1, 2, 2), np.float32)
    for i in range(t):
        y, x = 6 + i, 5 + 2 * i
        frames[i, y : y + 8, x : x + 5] = 0.7 + 0.05 * rng.standard_normal((8, 5, 3))
        kp[i, 0] = [[x + 2, y + 1], [x + 2, y + 6]]
    return frames, kp


def test_psnr_ssim_identity_and_ordering():
    a, _ = _scene()
    assert metrics.psnr(a, a) > 90 and abs(metrics.ssim(a, a) - 1.0) < 1e-9
    noisy = a + 0.05 * np.random.default_rng(1).standard_normal(a.shape).astype(np.float32)
    noisier = a + 0.3 * np.random.default_rng(2).standard_normal(a.shape).astype(np.float32)
    assert metrics.psnr(noisy, a) > metrics.psnr(noisier, a)
    assert metrics.ssim(noisy, a) > metrics.ssim(noisier, a)
    # PSNR of a constant offset of 0.2 in [-1,1] = 0.1 in [0,1] -> 20 dB.
    assert abs(metrics.psnr(np.clip(a + 0.2, -1, 1), a) - 20.0) < 0.6


def test_keypoint_consistency():
    frames, kp = _scene()
    mask = np.ones((1, 2), bool)
    assert metrics.keypoint_consistency(frames, kp, mask, frames[0]) == 1.0
    empty = np.full_like(frames, -0.6)
    assert metrics.keypoint_consistency(empty, kp, mask, frames[0]) == 0.0
    shifted = np.roll(frames, 10, axis=2)
    assert metrics.keypoint_consistency(shifted, kp, mask, frames[0]) < 0.5


def test_appearance_consistency():
    frames, _ = _scene()
    assert metrics.appearance_consistency(frames, frames[0]) > 0.8
    recoloured = frames.copy()
    recoloured[recoloured > 0] = -0.1
    assert metrics.appearance_consistency(recoloured, frames[0]) < metrics.appearance_consistency(frames, frames[0])


def test_keypoint_consistency_penalises_noise():
    frames, kp = _scene()
    noise = np.random.default_rng(3).uniform(-1, 1, frames.shape).astype(np.float32)
    assert metrics.keypoint_consistency(noise, kp, np.ones((1, 2), bool), frames[0]) < 0.3


def test_pose_pck_counts_joints_within_the_subject_scaled_radius():
    drv = np.zeros((2, 1, 18, 3), np.float32)
    drv[:, 0, :, 0] = np.linspace(10, 30, 18)  # a subject 20 px wide: radius 0.2 * 20 = 4 px
    drv[:, 0, :, 1] = 20
    drv[:, 0, :, 2] = 1.0
    drv[1, 0, :9, 2] = 0.0  # frame 1: half the joints undetected in the driver (not counted)
    exact = [drv[0, :1].copy(), drv[1, :1].copy()]
    assert metrics.pose_pck(exact, drv) == 1.0
    off = [p.copy() for p in exact]
    off[0][0, :6, 0] += 5.0  # 6 of the 18 frame-0 joints beyond the radius
    assert metrics.pose_pck(off, drv) == pytest.approx((12 + 9) / (18 + 9))
    # A second, wrong person does not lower the score (best match); no person at all scores 0.
    two = [np.concatenate([e, e + 50]) for e in exact]
    assert metrics.pose_pck(two, drv) == 1.0
    assert metrics.pose_pck([np.zeros((0, 18, 3))] * 2, drv) == 0.0
    low = [e.copy() for e in exact]
    low[0][0, :, 2] = low[1][0, :, 2] = 0.1  # estimated joints below confidence do not count
    assert metrics.pose_pck(low, drv) == 0.0


def test_histogram_similarity_is_one_for_the_same_colours_and_falls_with_others():
    rng = np.random.default_rng(0)
    ref = rng.uniform(-1, 1, (16, 16, 3)).astype(np.float32)
    assert metrics.histogram_similarity(ref[None].repeat(3, 0), ref) == pytest.approx(1.0)
    shuffled = rng.permutation(ref.reshape(-1, 3)).reshape(1, 16, 16, 3)  # same colours, other places
    assert metrics.histogram_similarity(shuffled, ref) == pytest.approx(1.0)
    assert metrics.histogram_similarity(np.full((1, 16, 16, 3), 0.9, np.float32), ref) < 0.3
