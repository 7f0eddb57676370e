"""Small NNX layers named after their diffusers counterparts.

Parameters carry logical axis names (``out_sharding`` metadata) and are created
without eager sharding: placement is decided once, by ``jit(init,
out_shardings=...)`` in :mod:`dreamactor_jax.models.build`, so a model can also
be built plainly on one device (tests, notebooks).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

Axes = Sequence[str | None]

xavier_uniform = nnx.initializers.xavier_uniform()
zeros = nnx.initializers.zeros_init()
ones = nnx.initializers.ones_init()


def param(rngs: nnx.Rngs | None, init, shape, dtype, axes: Axes) -> nnx.Param:
    """Creates a parameter annotated with logical axes (no eager placement)."""
    if len(axes) != len(shape):
        raise ValueError(f"axes {tuple(axes)} do not match shape {tuple(shape)}")
    key = rngs.params() if rngs is not None else jax.random.key(0)
    return nnx.Param(init(key, tuple(shape), dtype), out_sharding=tuple(axes), eager_sharding=False)


class Linear(nnx.Module):
    """``torch.nn.Linear`` equivalent: ``kernel`` is (in, out), the transpose of torch's weight."""

    def __init__(self, in_features: int, out_features: int, *, axes: Axes, dtype, param_dtype,
                 rngs: nnx.Rngs, use_bias: bool = True, kernel_init=xavier_uniform, bias_init=zeros):
        self.kernel = param(rngs, kernel_init, (in_features, out_features), param_dtype, axes)
        self.bias = param(rngs, bias_init, (out_features,), param_dtype, axes[-1:]) if use_bias else None
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jnp.einsum("...i,io->...o", x.astype(self.dtype), self.kernel[...].astype(self.dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


class RMSNorm(nnx.Module):
    """``torch.nn.RMSNorm`` with an elementwise weight; statistics in f32."""

    def __init__(self, dim: int, *, eps: float, axes: Axes, param_dtype, rngs: nnx.Rngs | None = None):
        self.weight = param(None, ones, (dim,), param_dtype, axes)
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
        return (y * self.weight[...].astype(jnp.float32)).astype(x.dtype)


class LayerNorm(nnx.Module):
    """diffusers ``FP32LayerNorm``: computed in f32, returns f32 (callers cast)."""

    def __init__(self, dim: int, *, eps: float, affine: bool, axes: Axes = ("embed",), param_dtype=jnp.float32):
        self.eps = eps
        if affine:
            self.weight = param(None, ones, (dim,), param_dtype, axes)
            self.bias = param(None, zeros, (dim,), param_dtype, axes)
        else:
            self.weight = None
            self.bias = None

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        if self.weight is not None:
            y = y * self.weight[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
        return y


class GELUProj(nnx.Module):
    """diffusers ``GELU`` activation module: a projection followed by GELU."""

    def __init__(self, din: int, dout: int, *, approximate: bool, axes: Axes, dtype, param_dtype, rngs):
        self.proj = Linear(din, dout, axes=axes, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.approximate = approximate

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.gelu(self.proj(x), approximate=self.approximate)


class FeedForward(nnx.Module):
    """diffusers ``FeedForward``: ``net.0`` (GELU projection) then ``net.2`` (output Linear)."""

    def __init__(self, dim: int, inner: int, dim_out: int | None = None, *, approximate: bool,
                 in_axes: Axes = ("embed", "mlp"), out_axes: Axes = ("mlp", "embed"), dtype, param_dtype, rngs):
        self.net_0 = GELUProj(dim, inner, approximate=approximate, axes=in_axes, dtype=dtype,
                              param_dtype=param_dtype, rngs=rngs)
        self.net_2 = Linear(inner, dim_out or dim, axes=out_axes, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.net_2(self.net_0(x))
