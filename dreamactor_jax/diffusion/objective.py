"""The in-context flow-matching training objective on the double-width canvas.

The diffusion variable is the whole canvas ``x0 = target ⊕ masked motion``. It
is noised at one σ per sample; the model sees ``noisy ⊕ mask ⊕ conditioning``
and predicts the velocity ``ε - x0`` of the whole canvas; the loss covers the
left-half region that is not given (frames after the reference). With
``given_region="clean"`` the given regions (reference frame, valid motion) are
fed clean with per-token timestep 0 instead of noised.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from dreamactor_jax.diffusion import flow
from dreamactor_jax.models import canvas

GIVEN_REGION_MODES = ("noised", "clean")


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    sigma_sampler: str = "uniform"  # "uniform" | "logit_normal"
    shift: float = 1.0  # Wan timestep shift applied to sampled σ
    logit_mean: float = 0.0
    logit_std: float = 1.0
    text_dropout: float = 0.1  # probability of the null (zero) text condition, for CFG
    given_region: str = "noised"  # how the given regions enter the noisy channels

    def __post_init__(self):
        if self.sigma_sampler not in flow.SIGMA_SAMPLERS:
            raise ValueError(f"objective.sigma_sampler must be one of {flow.SIGMA_SAMPLERS}, "
                             f"got {self.sigma_sampler!r}")
        if self.given_region not in GIVEN_REGION_MODES:
            raise ValueError(f"objective.given_region must be one of {GIVEN_REGION_MODES}, got {self.given_region!r}")
        if not 0.0 <= self.text_dropout <= 1.0:
            raise ValueError(f"objective.text_dropout must be in [0, 1], got {self.text_dropout}")
        if self.shift <= 0:
            raise ValueError(f"objective.shift must be positive, got {self.shift}")


def canvas_inputs(batch: dict, sigma_b: jax.Array, noise: jax.Array, *, patch_size, given_region: str = "noised"):
    """Builds the model input for one noise level per sample.

    Returns:
      x_in: (B,T,H,2W,2C+4) model input; t: (B,) or per-token (B,N) model timesteps;
      v_target: (B,T,H,2W,C); weights: (B,T,H,2W) loss weights.
    """
    target, reference, motion = batch["target"], batch["reference"], batch["motion"]
    valid = batch.get("motion_valid")
    b, t, h, w, _ = target.shape
    x0 = canvas.join_halves(target, canvas.masked_motion(motion, valid))
    cond = canvas.condition_canvas(reference, motion, valid)
    mask = canvas.mask_canvas(b, t, h, w, valid, dtype=x0.dtype)
    if noise.shape != x0.shape:
        raise ValueError(f"noise {noise.shape} must match the canvas {x0.shape}")
    x_t = flow.add_noise(x0, noise, sigma_b)
    t_model = flow.model_timestep(sigma_b)
    if given_region == "clean":
        given = mask[..., :1] > 0
        x_t = jnp.where(given, x0, x_t)
        tok = canvas.token_given(mask, patch_size)
        t_model = jnp.where(tok, 0.0, t_model[:, None])
    x_in = canvas.assemble_canvas(x_t, cond, mask)
    return x_in, t_model, flow.velocity_target(x0, noise), canvas.unknown_weights(mask)


def draw(rng: jax.Array, batch: dict, ocfg: ObjectiveConfig) -> dict:
    """All randomness of one step for the whole batch: σ (B,), noise (B,T,H,2W,C), text keep flags (B,).

    Drawn once for the full batch so that splitting it into microbatches sees the same draws.
    """
    k_sigma, k_noise, k_text = jax.random.split(rng, 3)
    tgt = batch["target"]
    b = tgt.shape[0]
    sigma = flow.sample_sigma(k_sigma, b, sampler=ocfg.sigma_sampler, shift=ocfg.shift,
                              logit_mean=ocfg.logit_mean, logit_std=ocfg.logit_std)
    noise = jax.random.normal(k_noise, (*tgt.shape[:3], 2 * tgt.shape[3], tgt.shape[4]), jnp.float32)
    keep = jax.random.uniform(k_text, (b,)) >= ocfg.text_dropout
    return {"sigma": sigma, "noise": noise.astype(tgt.dtype), "text_keep": keep}


def loss_weight_total(batch: dict) -> jax.Array:
    """Σ of the loss weights over the batch (depends on masks only): the loss normaliser."""
    b, t, h, w, _ = batch["target"].shape
    mask = canvas.mask_canvas(b, t, h, w, batch.get("motion_valid"))
    return jnp.maximum(jnp.sum(canvas.unknown_weights(mask)), 1.0)


def loss_sum(model, batch: dict, draws: dict, ocfg: ObjectiveConfig, normaliser: jax.Array):
    """Σ over this (micro)batch of weighted squared error, divided by ``normaliser`` (the full batch's Σw)."""
    x_in, t, v_target, weights = canvas_inputs(batch, draws["sigma"], draws["noise"],
                                               patch_size=model.cfg.patch_size, given_region=ocfg.given_region)
    text = jnp.where(draws["text_keep"][:, None, None], batch["text"], jnp.zeros_like(batch["text"]))
    image = (batch["image"],) if "image" in batch else ()  # CLIP tokens of the reference: I2V models only
    v = model(x_in, t, text, batch.get("text_mask"), *image)
    se = jnp.square(v.astype(jnp.float32) - v_target.astype(jnp.float32)).mean(axis=-1)
    return jnp.sum(se * weights) / normaliser


def loss_and_metrics(model, batch: dict, rng: jax.Array, ocfg: ObjectiveConfig):
    """Flow-matching loss of ``model`` on ``batch``; returns (loss, metrics)."""
    d = draw(rng, batch, ocfg)
    loss = loss_sum(model, batch, d, ocfg, loss_weight_total(batch))
    return loss, {"loss": loss, "sigma_mean": jnp.mean(d["sigma"])}
