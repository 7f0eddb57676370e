"""Samplers: exact on a known linear flow, order of accuracy, given regions, CFG wiring."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamactor_jax.diffusion import sampler
from dreamactor_jax.models import canvas


@dataclasses.dataclass(frozen=True)
class _Cfg:
    patch_size: tuple = (1, 2, 2)


class OracleModel:
    """The exact velocity field of a flow whose data distribution is a single point x0 (the canvas)."""

    cfg = _Cfg()

    def __init__(self, x0_canvas):
        self.x0 = x0_canvas
        self.calls = 0

    def __call__(self, x_in, t, text, text_mask=None):
        self.calls += 1
        c = self.x0.shape[-1]
        x = x_in[..., :c]
        # Per-token timesteps mark given tokens 0; the noise level of the rest is the largest.
        sigma = (t if t.ndim == 1 else t.max(axis=1)).reshape(-1, 1, 1, 1, 1) / 1000.0
        x0 = jnp.concatenate([self.x0] * (x.shape[0] // self.x0.shape[0]))
        # x = (1-σ) x0 + σ ε  =>  v = ε - x0 = (x - x0) / σ
        return (x - x0) / jnp.maximum(sigma, 1e-6)


def _problem(seed=0, b=2, t=3, h=4, w=6, c=5):
    rng = np.random.default_rng(seed)
    target = jnp.asarray(rng.standard_normal((b, t, h, w, c)), jnp.float32)
    motion = jnp.asarray(rng.standard_normal((b, t, h, w, c)), jnp.float32)
    return target, motion, jnp.asarray(rng.standard_normal((b, 2, 7)), jnp.float32)


@pytest.mark.parametrize("method", sampler.SAMPLERS)
@pytest.mark.parametrize("given", ["noised", "clean"])
def test_oracle_flow_is_recovered(method, given):
    target, motion, text = _problem()
    model = OracleModel(canvas.join_halves(target, motion))
    out = sampler.sample(model, target[:, :1], motion, text, None, jax.random.key(0),
                         sampler.SamplerConfig(method=method, steps=8, shift=3.0, given_region=given))
    np.testing.assert_allclose(np.asarray(out), np.asarray(target), atol=1e-4)


def test_cfg_batches_both_branches_in_one_call():
    target, motion, text = _problem()
    model = OracleModel(canvas.join_halves(target, motion))
    out = sampler.sample(model, target[:, :1], motion, text, None, jax.random.key(0),
                         sampler.SamplerConfig(steps=4, guidance=5.0))
    assert model.calls == 1  # traced once inside scan; the batch held both branches
    np.testing.assert_allclose(np.asarray(out), np.asarray(target), atol=1e-4)


def test_schedule_and_bad_config():
    s = np.asarray(sampler.schedule(10, 3.0))
    assert s[0] == 1.0 and s[-1] == 0.0 and np.all(np.diff(s) < 0)
    with pytest.raises(ValueError, match="sampler.method"):
        sampler.SamplerConfig(method="ddim")
