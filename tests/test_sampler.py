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


def test_renoise_feeds_the_model_its_own_estimate_noised_afresh():
    """Whatever noise the model fails to predict is discarded: step i+1 sees (1-σ')·x̂0_i + σ'·z, z ~ N(0, 1)."""
    target, motion, text = _problem(b=4, h=8, w=8)
    x0 = canvas.join_halves(target, motion)
    seen = []

    class HalfNoise:
        """The oracle's x0, but only half of the noise predicted: x̂0 = x - σv keeps half of it."""

        cfg = _Cfg()

        def __call__(self, x_in, t, text, text_mask=None):
            x, s = x_in[..., : x0.shape[-1]], (t if t.ndim == 1 else t.max(axis=1)).reshape(-1, 1, 1, 1, 1) / 1000.0
            v = 0.5 * (x - (1 - s) * x0) / jnp.maximum(s, 1e-6) - x0
            jax.debug.callback(lambda *a: seen.append([np.asarray(y) for y in a]), x, s, v)
            return v

    for method in ("renoise",):
        seen.clear()
        sampler.sample(HalfNoise(), target[:, :1], motion, text, None, jax.random.key(1),
                       sampler.SamplerConfig(method=method, steps=6, shift=1.0, given_region="clean"))
        z = []
        for (x, s, v), (x_next, s_next, _) in zip(seen, seen[1:]):
            s, s_next = float(s.ravel()[0]), float(s_next.ravel()[0])
            x0_hat = x - s * v
            z.append(np.asarray(canvas.split_canvas(jnp.asarray((x_next - (1 - s_next) * x0_hat) / s_next))[0])[:, 1:])
        z = np.concatenate([a.ravel() for a in z])
        assert abs(z.mean()) < 0.05 and abs(z.std() - 1.0) < 0.05, (z.mean(), z.std())
        assert abs(np.corrcoef(z[: len(z) // 2], z[len(z) // 2 :])[0, 1]) < 0.05  # fresh noise each step


class _LinearField:
    """dx/dσ = cos(3σ)·x + σ², elementwise: not constant along trajectories, so a solver's order shows."""

    cfg = _Cfg()

    def __call__(self, x_in, t, text, text_mask=None):
        x = x_in[..., :5]
        s = (t if t.ndim == 1 else t.max(axis=1)).reshape(-1, 1, 1, 1, 1) / 1000.0
        return jnp.cos(3 * s) * x + s**2


def _rk4_reference(x1: np.ndarray, n: int = 4000) -> np.ndarray:
    """The field's solution at σ = 0 from x1 at σ = 1, by fine-step RK4 in float64."""
    f = lambda s, x: np.cos(3 * s) * x + s**2  # noqa: E731
    x, s, h = x1.astype(np.float64), 1.0, -1.0 / n
    for _ in range(n):
        k1 = f(s, x)
        k2 = f(s + h / 2, x + h / 2 * k1)
        k3 = f(s + h / 2, x + h / 2 * k2)
        k4 = f(s + h, x + h * k3)
        x, s = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4), s + h
    return x


@pytest.mark.parametrize("method,lo,hi", [("euler", 1.8, 2.3), ("unipc", 3.5, 40.0)])
def test_order_of_accuracy_under_step_halving(method, lo, hi):
    """Halving the step divides the error by about 2 (Euler, first order) or at least 4 (AB2 predictor with the
    trapezoid corrector, second order)."""
    target, motion, text = _problem(b=1, t=2, h=4, w=4)
    noise = jnp.asarray(np.random.default_rng(3).standard_normal((1, 2, 4, 8, 5)), jnp.float32)
    exact = np.asarray(canvas.split_canvas(jnp.asarray(_rk4_reference(np.asarray(noise)), jnp.float32))[0])[:, 1:]
    errs = []
    for steps in (4, 8, 16):
        out = sampler.sample(_LinearField(), target[:, :1], motion, text, None, jax.random.key(0),
                             sampler.SamplerConfig(method=method, steps=steps, shift=1.0, given_region="clean"),
                             noise_bthwc=noise)
        errs.append(float(np.abs(np.asarray(out)[:, 1:] - exact).max()))
    ratios = [errs[i] / errs[i + 1] for i in range(len(errs) - 1)]
    assert all(lo < r < hi for r in ratios), (errs, ratios)


def _ab2_trapezoid_reference(x1: np.ndarray, steps: int) -> np.ndarray:
    """The ``unipc`` scheme written out in float64 (PEC): at each σ_i evaluate v_i at the predicted x_i, correct
    x_i by the trapezoid from x_{i-1}, then predict x_{i+1} with variable-step AB2,
    x_i + h_i·(v_i + h_i / (2·h_{i-1})·(v_i - v_{i-1}))."""
    f = lambda s, x: np.cos(3 * s) * x + s**2  # noqa: E731
    sig = np.linspace(1.0, 0.0, steps + 1)
    x, x_prev, v_prev, h_prev = x1.astype(np.float64), None, None, None
    for i in range(steps):
        h = sig[i + 1] - sig[i]
        v = f(sig[i], x)
        if i:
            x = x_prev + 0.5 * h_prev * (v_prev + v)
            v_eff = v + 0.5 * (h / h_prev) * (v - v_prev)
        else:
            v_eff = v
        x_prev, v_prev, h_prev = x, v, h
        x = x + h * v_eff
    return x


@pytest.mark.parametrize("steps", [3, 8])
def test_unipc_is_ab2_with_the_trapezoid_corrector(steps):
    """The sampler's coefficients, not only its order: a wrong AB2 or corrector weight keeps second order (the
    corrector repairs the predictor) but moves the result far beyond float32 noise."""
    target, motion, text = _problem(b=1, t=2, h=4, w=4)
    noise = jnp.asarray(np.random.default_rng(4).standard_normal((1, 2, 4, 8, 5)), jnp.float32)
    want = np.asarray(canvas.split_canvas(jnp.asarray(_ab2_trapezoid_reference(np.asarray(noise), steps),
                                                      jnp.float32))[0])[:, 1:]
    out = sampler.sample(_LinearField(), target[:, :1], motion, text, None, jax.random.key(0),
                         sampler.SamplerConfig(method="unipc", steps=steps, shift=1.0, given_region="clean"),
                         noise_bthwc=noise)
    np.testing.assert_allclose(np.asarray(out)[:, 1:], want, atol=2e-5, rtol=0)
