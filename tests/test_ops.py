"""The hand-written VJPs of models/ops.py equal autodiff of the plain formulas (odd shapes, broadcasts)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamactor_jax.models import ops


def _rand(key, shape, dtype=jnp.float32):
    return jax.random.normal(jax.random.key(key), shape, jnp.float32).astype(dtype)


@pytest.mark.parametrize("w_shape", [(2, 1, 7), (2, 5, 7), (7,), (1, 1, 7), (2, 5, 1)],
                         ids=["per_sample", "per_token", "vector", "shared", "per_row"])
def test_scale_by_matches_autodiff(w_shape):
    x, w, g = _rand(0, (2, 5, 7)), _rand(1, w_shape), _rand(2, (2, 5, 7))
    ref = jax.vjp(lambda a, b: a * b, x, w)[1](g)
    got = jax.vjp(ops.scale_by, x, w)[1](g)
    np.testing.assert_allclose(np.asarray(ops.scale_by(x, w)), np.asarray(x * w), rtol=1e-6)
    for a, b in zip(got, ref):
        assert a.shape == b.shape
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def _layer_ref(x, eps):
    x = x.astype(jnp.float32)
    m = x.mean(-1, keepdims=True)
    return (x - m) * jax.lax.rsqrt(((x - m) ** 2).mean(-1, keepdims=True) + eps)


def _rms_ref(x, eps):
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt((x**2).mean(-1, keepdims=True) + eps)


@pytest.mark.parametrize("fn, ref", [(ops.layer_normalize, _layer_ref), (ops.rms_normalize, _rms_ref)],
                         ids=["layer", "rms"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_normalize_matches_autodiff(fn, ref, dtype):
    x = (3.0 * _rand(3, (2, 11, 17)) + 0.5).astype(dtype)
    g = _rand(4, (2, 11, 17))
    out, vjp = jax.vjp(lambda a: fn(a, 1e-6), x)
    ref_out, ref_vjp = jax.vjp(lambda a: ref(a, 1e-6), x)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref_out), rtol=1e-5, atol=1e-5)
    (dx,), (ref_dx,) = vjp(g), ref_vjp(g)
    assert dx.dtype == dtype
    tol = 1e-5 if dtype == jnp.float32 else 2e-2
    np.testing.assert_allclose(np.asarray(dx, np.float32), np.asarray(ref_dx, np.float32), rtol=tol, atol=tol)


def test_second_use_under_jit_and_remat():
    x, w = _rand(5, (3, 4, 6)), _rand(6, (3, 1, 6))

    def loss(x, w):
        return jnp.sum(jax.checkpoint(lambda a, b: ops.scale_by(ops.layer_normalize(a, 1e-5), b))(x, w) ** 2)

    def ref(x, w):
        return jnp.sum((_layer_ref(x, 1e-5) * w) ** 2)

    got = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, w)
    want = jax.grad(ref, argnums=(0, 1))(x, w)
    for a, b in zip(got, want):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
