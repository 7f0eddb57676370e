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

from dreamactor_jax.models import ops

Axes = Sequence[str | None]

xavier_uniform = nnx.initializers.xavier_uniform()
zeros = nnx.initializers.zeros_init()
ones = nnx.initializers.ones_init()
# PEFT's default LoRA A init, kaiming_uniform(a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
lora_a_init = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


class LoRAParam(nnx.Variable):
    """A LoRA adapter matrix. Deliberately not an ``nnx.Param``: the base weights are the ``Param`` s, so
    ``nnx.state(model, nnx.Param)`` is the base model (what converts to diffusers) and "what trains" is a
    filter on the variable type (in the params pure dict: the leaves named ``lora_a``/``lora_b``)."""


def param(rngs: nnx.Rngs | None, init, shape, dtype, axes: Axes, kind: type[nnx.Variable] = nnx.Param):
    """Creates a parameter (``kind``, default ``nnx.Param``) annotated with logical axes (no eager placement)."""
    if len(axes) != len(shape):
        raise ValueError(f"axes {tuple(axes)} do not match shape {tuple(shape)}")
    key = rngs.params() if rngs is not None else jax.random.key(0)
    return kind(init(key, tuple(shape), dtype), out_sharding=tuple(axes), eager_sharding=False)


class Linear(nnx.Module):
    """``torch.nn.Linear`` equivalent: ``kernel`` is (in, out), the transpose of torch's weight.

    With :meth:`add_lora` it also holds a LoRA adapter, ``lora_a`` (in, r) and
    ``lora_b`` (r, out), and computes ``y = x W + b + (alpha / r) (x A) B``.
    """

    def __init__(self, in_features: int, out_features: int, *, axes: Axes, dtype, param_dtype,
                 rngs: nnx.Rngs, use_bias: bool = True, kernel_init=xavier_uniform, bias_init=zeros):
        self.kernel = param(rngs, kernel_init, (in_features, out_features), param_dtype, axes)
        self.bias = param(rngs, bias_init, (out_features,), param_dtype, axes[-1:]) if use_bias else None
        self.dtype = dtype
        self.axes = tuple(axes)
        self.lora_rank = 0  # no lora_a/lora_b attributes until add_lora: the state of a plain Linear is unchanged
        self.lora_scale = 0.0

    def add_lora(self, rank: int, scale: float, rngs: nnx.Rngs) -> None:
        """Adds a rank-``rank`` adapter: A kaiming-uniform, B zero (the layer's output is unchanged at init).

        A's input axis and B's output axis carry the kernel's logical names, so the adapter
        shards like its base weight; the rank axis is replicated.
        """
        (din, dout), pdt = self.kernel.shape, self.kernel.dtype
        self.lora_a = param(rngs, lora_a_init, (din, rank), pdt, (self.axes[0], None), kind=LoRAParam)
        self.lora_b = param(rngs, zeros, (rank, dout), pdt, (None, self.axes[1]), kind=LoRAParam)
        self.lora_rank = int(rank)
        self.lora_scale = float(scale)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(self.dtype)
        y = jnp.einsum("...i,io->...o", x, self.kernel[...].astype(self.dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        if self.lora_rank:
            xa = jnp.einsum("...i,ir->...r", x, self.lora_a[...].astype(self.dtype))
            y = y + self.lora_scale * jnp.einsum("...r,ro->...o", xa, self.lora_b[...].astype(self.dtype))
        return y


class RMSNorm(nnx.Module):
    """``torch.nn.RMSNorm`` with an elementwise weight; statistics in f32."""

    def __init__(self, dim: int, *, eps: float, axes: Axes, param_dtype, rngs: nnx.Rngs | None = None):
        self.weight = param(None, ones, (dim,), param_dtype, axes)
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        y = ops.scale_by(ops.rms_normalize(x, self.eps), self.weight[...].astype(jnp.float32))
        return y.astype(x.dtype)


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
        y = ops.layer_normalize(x, self.eps)
        if self.weight is not None:
            y = ops.scale_by(y, self.weight[...].astype(jnp.float32)) + self.bias[...].astype(jnp.float32)
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
