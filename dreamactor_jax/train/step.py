"""The pure train step: microbatched gradients, AdamW, EMA.

With LoRA (``lora_a``/``lora_b`` leaves in the params, i.e. ``WanConfig.lora_rank > 0``)
only the adapters train: :func:`dreamactor_jax.models.lora.split_trainable` splits the
params by path, gradients are taken w.r.t. the trainable part only, the optimizer
state and the EMA cover only it, and the frozen base passes through the step
untouched. Without LoRA the trainable part is the whole params tree, as before.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.experimental.compute_on import compute_on

from dreamactor_jax.diffusion import objective as obj
from dreamactor_jax.models import lora
from dreamactor_jax.train.state import TrainState


def _split_micro(tree, k: int):
    def split(x):
        if x.shape[0] % k:
            raise ValueError(f"batch size {x.shape[0]} is not divisible by optim.microbatches={k}")
        return x.reshape(k, x.shape[0] // k, *x.shape[1:])
    return jax.tree.map(split, tree)


def loss_and_grads(params: dict, batch: dict, rng: jax.Array, *, graphdef: nnx.GraphDef,
                   objective: obj.ObjectiveConfig, microbatches: int = 1):
    """Loss and gradient of the full batch, accumulated over ``microbatches`` equal slices.

    Randomness is drawn for the whole batch and the loss is normalised by the whole
    batch's weight sum, so k microbatches give the same loss and gradient as one batch.

    Returns:
      ``(loss, grads)``; ``grads`` has the structure of the trainable part of ``params``
      (all of it, or only the LoRA leaves when there are any: see :func:`lora.split_trainable`).
    """
    draws = obj.draw(rng, batch, objective)
    norm = obj.loss_weight_total(batch)
    trainable, frozen = lora.split_trainable(params)

    def micro_loss(p, mb, md):
        # The frozen base is closed over, not differentiated: no weight gradients are formed for it.
        return obj.loss_sum(nnx.merge(graphdef, lora.combine(p, frozen)), mb, md, objective, norm)

    if microbatches == 1:
        return jax.value_and_grad(micro_loss)(trainable, batch, draws)

    def body(carry, xs):
        loss, grads = carry
        micro, g = jax.value_and_grad(micro_loss)(trainable, *xs)
        return (loss + micro, jax.tree.map(jnp.add, grads, g)), None

    zero = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, trainable))
    (loss, grads), _ = jax.lax.scan(body, zero, (_split_micro(batch, microbatches),
                                                 _split_micro(draws, microbatches)))
    return loss, grads


def train_step(state: TrainState, batch: dict, rng: jax.Array, *, graphdef: nnx.GraphDef,
               tx: optax.GradientTransformation, objective: obj.ObjectiveConfig, microbatches: int = 1,
               ema_decay: float = 0.0) -> tuple[TrainState, dict]:
    """One optimizer update: forward, backward (microbatched), AdamW, EMA. Pure; jit with ``donate_argnums=0``.

    Only the trainable part of the params is updated (and averaged into the EMA); with LoRA the
    base params come out of the step bit-for-bit as they went in.
    """
    loss, grads = loss_and_grads(state.params, batch, rng, graphdef=graphdef, objective=objective,
                                 microbatches=microbatches)
    trainable, frozen = lora.split_trainable(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, trainable)
    trainable = optax.apply_updates(trainable, updates)
    params = lora.combine(trainable, frozen)
    ema = None if state.ema is None else update_ema(state.ema, trainable, ema_decay)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "update_norm": optax.tree.norm(updates)}
    new = state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema=ema)
    return new, jax.tree.map(lambda x: x.astype(jnp.float32), metrics)


def on_host(tree) -> bool:
    """Whether a (traced) tree lives in host memory: its shardings said ``memory_kind='pinned_host'``."""
    leaves = jax.tree.leaves(tree)
    return bool(leaves) and getattr(jax.typeof(leaves[0]), "memory_space", None) == jax.memory.Space.Host


def host_map(fn, *trees):
    """``jax.tree.map(fn, *trees)`` computed where the first tree lives: on the host CPU when it is in host
    memory (the other trees are copied there first, so the result never occupies HBM), else on the device."""
    if not on_host(trees[0]):
        return jax.tree.map(fn, *trees)
    rest = [t if on_host(t) else jax.device_put(t, jax.memory.Space.Host) for t in trees[1:]]
    with compute_on("device_host"):
        return jax.jit(lambda *ts: jax.tree.map(fn, *ts))(trees[0], *rest)


def update_ema(ema, trainable, decay: float):
    """``decay * ema + (1 - decay) * trainable``; in host memory when the EMA is (``optim.ema_on_host``)."""
    return host_map(lambda e, p: decay * e + (1.0 - decay) * p, ema, trainable)
