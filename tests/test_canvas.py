"""In-context canvas: assembly/split round trip and the mask layout, element by element."""

import jax.numpy as jnp
import numpy as np
import pytest

from dreamactor_jax.diffusion.objective import canvas_inputs
from dreamactor_jax.models import canvas

B, T, H, W, C = 2, 3, 4, 6, 5  # odd and distinct


def _arr(*shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def test_join_split_round_trip():
    left, right = _arr(B, T, H, W, C), _arr(B, T, H, W, C, seed=1)
    cv = canvas.join_halves(left, right)
    assert cv.shape == (B, T, H, 2 * W, C)
    l2, r2 = canvas.split_canvas(cv)
    np.testing.assert_array_equal(l2, left)
    np.testing.assert_array_equal(r2, right)
    np.testing.assert_array_equal(cv[:, :, :, W + 2], right[:, :, :, 2])


def test_mask_layout_element_by_element():
    valid = jnp.array([[0, 1, 1], [1, 0, 1]], jnp.float32)
    m = np.asarray(canvas.mask_canvas(B, T, H, W, valid))
    assert m.shape == (B, T, H, 2 * W, canvas.MASK_CHANNELS)
    for b in range(B):
        for t in range(T):
            for x in range(2 * W):
                expect = (1.0 if t == 0 else 0.0) if x < W else float(valid[b, t])
                assert np.all(m[b, t, :, x, :] == expect), (b, t, x)


def test_condition_canvas_and_assembly():
    ref, motion = _arr(B, 1, H, W, C, seed=2), _arr(B, T, H, W, C, seed=3)
    valid = jnp.array([[0, 1, 1], [1, 1, 1]], jnp.float32)
    cond = np.asarray(canvas.condition_canvas(ref, motion, valid))
    np.testing.assert_array_equal(cond[:, 0, :, :W], ref[:, 0])
    assert np.all(cond[:, 1:, :, :W] == 0)
    assert np.all(cond[0, 0, :, W:] == 0)  # masked motion frame
    np.testing.assert_array_equal(cond[1, 0, :, W:], motion[1, 0])
    np.testing.assert_array_equal(cond[:, 1:, :, W:], motion[:, 1:])
    noisy = _arr(B, T, H, 2 * W, C, seed=4)
    mask = canvas.mask_canvas(B, T, H, W, valid)
    x = canvas.assemble_canvas(noisy, jnp.asarray(cond), mask)
    assert x.shape == (B, T, H, 2 * W, 2 * C + 4)
    np.testing.assert_array_equal(x[..., :C], noisy)
    np.testing.assert_array_equal(x[..., C : C + 4], mask)
    np.testing.assert_array_equal(x[..., C + 4 :], cond)


def test_unknown_weights_and_token_flags():
    mask = canvas.mask_canvas(1, T, H, W)
    wts = np.asarray(canvas.unknown_weights(mask))
    assert wts[0, 0].sum() == 0  # reference frame is given
    assert np.all(wts[0, 1:, :, :W] == 1) and np.all(wts[0, :, :, W:] == 0)
    tok = np.asarray(canvas.token_given(mask, (1, 2, 2))).reshape(T, H // 2, W)
    assert tok[0].all() and not tok[1:, :, : W // 2].any() and tok[1:, :, W // 2 :].all()


def test_canvas_inputs_clean_given_region():
    batch = {"target": _arr(B, T, H, W, C), "reference": _arr(B, 1, H, W, C, seed=1),
             "motion": _arr(B, T, H, W, C, seed=2), "motion_valid": jnp.ones((B, T))}
    noise = _arr(B, T, H, 2 * W, C, seed=5)
    sigma = jnp.array([0.3, 0.9])
    x, t, v, wts = canvas_inputs(batch, sigma, noise, patch_size=(1, 2, 2), given_region="clean")
    assert t.shape == (B, T * (H // 2) * W)
    np.testing.assert_array_equal(x[:, :, :, W:, :C], batch["motion"])  # given motion fed clean
    assert set(np.unique(np.asarray(t)).tolist()) == {0.0, 300.0, 900.0}
    x2, t2, _, _ = canvas_inputs(batch, sigma, noise, patch_size=(1, 2, 2))
    assert t2.shape == (B,)
    x0 = jnp.concatenate([batch["target"], batch["motion"]], axis=3)
    expect = (1 - sigma[:, None, None, None, None]) * x0 + sigma[:, None, None, None, None] * noise
    np.testing.assert_allclose(np.asarray(x2[..., :C]), np.asarray(expect), atol=1e-6)
    np.testing.assert_allclose(np.asarray(v), np.asarray(noise - x0), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(wts), np.asarray(canvas.unknown_weights(canvas.mask_canvas(B, T, H, W))))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: canvas.join_halves(_arr(B, T, H, W, C), _arr(B, T, H, W + 1, C)), "halves differ"),
        (lambda: canvas.split_canvas(_arr(B, T, H, 7, C)), "width must be even"),
        (lambda: canvas.condition_canvas(_arr(B, 2, H, W, C), _arr(B, T, H, W, C)), "reference must be"),
        (lambda: canvas.mask_canvas(B, T, H, W, jnp.ones((B, T + 1))), "motion_valid must be"),
        (lambda: canvas.assemble_canvas(_arr(B, T, H, 2 * W, C), _arr(B, T, H, 2 * W, C + 1),
                                        canvas.mask_canvas(B, T, H, W)), "conditioning"),
    ],
)
def test_canvas_shape_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()
