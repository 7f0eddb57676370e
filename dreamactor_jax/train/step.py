"""The pure train step."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from dreamactor_jax.diffusion.objective import ObjectiveConfig, loss_and_metrics
from dreamactor_jax.train.state import TrainState


def train_step(state: TrainState, batch: dict, rng: jax.Array, *, graphdef: nnx.GraphDef,
               tx: optax.GradientTransformation, objective: ObjectiveConfig) -> tuple[TrainState, dict]:
    """One optimizer update: forward, backward, AdamW. Pure; jit it with ``donate_argnums=0``."""

    def loss_fn(params):
        model = nnx.merge(graphdef, params)
        return loss_and_metrics(model, batch, rng, objective)

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics, grad_norm=optax.tree.norm(grads))
    new = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    return new, jax.tree.map(lambda x: x.astype(jnp.float32), metrics)
