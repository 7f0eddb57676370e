"""Rectified flow as Wan2.1 trains and samples it.

``x_t = (1 - σ)·x0 + σ·ε``, velocity target ``ε - x0``, model timestep ``σ·1000``,
timestep shift ``σ' = s·σ / (1 + (s - 1)·σ)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

SIGMA_SAMPLERS = ("uniform", "logit_normal")


def shift_sigma(sigma: jax.Array, shift: float) -> jax.Array:
    """Wan's timestep shift; ``shift=1`` is the identity."""
    return shift * sigma / (1.0 + (shift - 1.0) * sigma)


def sample_sigma(rng: jax.Array, batch: int, *, sampler: str = "uniform", shift: float = 1.0,
                 logit_mean: float = 0.0, logit_std: float = 1.0) -> jax.Array:
    """Training noise levels σ ∈ (0, 1), shape (batch,), f32."""
    if sampler == "uniform":
        u = jax.random.uniform(rng, (batch,), jnp.float32)
    elif sampler == "logit_normal":
        u = jax.nn.sigmoid(logit_mean + logit_std * jax.random.normal(rng, (batch,), jnp.float32))
    else:
        raise ValueError(f"unknown sigma sampler {sampler!r}; choose one of {SIGMA_SAMPLERS}")
    return shift_sigma(u, shift)


def add_noise(x0: jax.Array, noise: jax.Array, sigma_b: jax.Array) -> jax.Array:
    s = sigma_b.reshape((-1,) + (1,) * (x0.ndim - 1)).astype(x0.dtype)
    return (1.0 - s) * x0 + s * noise


def velocity_target(x0: jax.Array, noise: jax.Array) -> jax.Array:
    return noise - x0


def model_timestep(sigma: jax.Array) -> jax.Array:
    return sigma.astype(jnp.float32) * 1000.0
