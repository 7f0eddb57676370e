"""The pure train step: microbatched gradients, AdamW, EMA."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from dreamactor_jax.diffusion import objective as obj
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
    """
    draws = obj.draw(rng, batch, objective)
    norm = obj.loss_weight_total(batch)

    def micro_loss(p, mb, md):
        return obj.loss_sum(nnx.merge(graphdef, p), mb, md, objective, norm)

    if microbatches == 1:
        return jax.value_and_grad(micro_loss)(params, batch, draws)

    def body(carry, xs):
        loss, grads = carry
        micro, g = jax.value_and_grad(micro_loss)(params, *xs)
        return (loss + micro, jax.tree.map(jnp.add, grads, g)), None

    zero = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
    (loss, grads), _ = jax.lax.scan(body, zero, (_split_micro(batch, microbatches),
                                                 _split_micro(draws, microbatches)))
    return loss, grads


def train_step(state: TrainState, batch: dict, rng: jax.Array, *, graphdef: nnx.GraphDef,
               tx: optax.GradientTransformation, objective: obj.ObjectiveConfig, microbatches: int = 1,
               ema_decay: float = 0.0) -> tuple[TrainState, dict]:
    """One optimizer update: forward, backward (microbatched), AdamW, EMA. Pure; jit with ``donate_argnums=0``."""
    loss, grads = loss_and_grads(state.params, batch, rng, graphdef=graphdef, objective=objective,
                                 microbatches=microbatches)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = state.ema
    if ema is not None:
        ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, ema, params)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "update_norm": optax.tree.norm(updates)}
    new = state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema=ema)
    return new, jax.tree.map(lambda x: x.astype(jnp.float32), metrics)
