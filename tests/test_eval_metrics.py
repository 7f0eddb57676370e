"""Evaluation metrics behave as documented on cases with known answers."""

import numpy as np

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
