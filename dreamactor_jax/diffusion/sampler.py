"""Flow-matching samplers on the in-context canvas: Euler and a UniPC-style predictor-corrector.

The ODE ``dx/dσ = v(x, σ)`` is integrated from σ = 1 (noise) to σ = 0 on a
shifted schedule (``σ' = sσ / (1 + (s-1)σ)``). The given regions of the canvas
(the reference at frame 0 and the motion half) are not generated: at every
step they are reset to their noised ground truth ``(1-σ)·x0 + σ·ε`` with the
sample's fixed noise (``given_region="noised"``, as training sees them), or fed
clean with per-token timestep 0 (``"clean"``). Classifier-free guidance on text
runs the conditional and null (zero-text) branches in one batched call.

``ab2`` (alias ``unipc``, the name configs use): each step predicts with a variable-step second-order
Adams–Bashforth extrapolation of the velocity and, once the model has been evaluated at the predicted point
(the next step's evaluation, so no extra model calls), corrects the step with the trapezoidal rule. That is
the predictor–corrector structure of UniPC (bh2), not diffusers' ``UniPCMultistepScheduler`` itself: it is
AB2 plus a trapezoid corrector, second order (tests/test_sampler.py checks the order and the coefficients).
``euler`` is first order.

``renoise`` (ancestral): each step takes the model's estimate ``x̂0 = x - σv`` and
noises it afresh to the next level, ``(1-σ')·x̂0 + σ'·z`` with new Gaussian ``z``
(drawn from ``rng``). The ODE samplers carry whatever noise a model fails to
predict into the next input, which is then off the training distribution; a
small, briefly trained model's samples turn to block noise that way, while
``renoise`` keeps every input on it (tests/test_sampler.py). Its fresh noise comes
from JAX's ``rng``, so ``examples/serve_torch.py`` ports only the ODE samplers.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from dreamactor_jax.diffusion import flow
from dreamactor_jax.models import canvas

SAMPLERS = ("euler", "ab2", "unipc", "renoise")  # "unipc" is "ab2" under the name older configs use


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    method: str = "unipc"  # one of SAMPLERS ("unipc" = "ab2")
    steps: int = 20
    shift: float = 3.0  # Wan uses 3 (I2V 480p) to 5
    guidance: float = 1.0  # text CFG scale; 1 disables the null branch
    given_region: str = "noised"  # must match training's objective.given_region

    def __post_init__(self):
        if self.method not in SAMPLERS:
            raise ValueError(f"sampler.method must be one of {SAMPLERS}, got {self.method!r}")
        if self.steps < 1:
            raise ValueError(f"sampler.steps must be >= 1, got {self.steps}")
        if self.given_region not in ("noised", "clean"):
            raise ValueError(f"sampler.given_region must be 'noised' or 'clean', got {self.given_region!r}")


def schedule(steps: int, shift: float) -> jax.Array:
    """σ_0 = 1 > σ_1 > ... > σ_steps = 0, shifted."""
    return flow.shift_sigma(jnp.linspace(1.0, 0.0, steps + 1, dtype=jnp.float32), shift)


def sample(model, reference_b1hwc, motion_bthwc, text_ble, text_mask_bl, rng, scfg: SamplerConfig,
           motion_valid_bt=None, noise_bthwc=None, image_bme=None):
    """Generates the target (left half) for a batch of conditions; returns latents (B,T,H,W,C) in f32.

    ``image_bme``: CLIP tokens of the reference for an I2V model's image branch (None: the branch is skipped);
    classifier-free guidance keeps them in both branches (only the text is dropped).

    The initial noise over the whole canvas (B,T,H,2W,C) is drawn from ``rng``, or is ``noise_bthwc`` when
    given (so another implementation, e.g. ``examples/serve_torch.py``, can start from the same noise).
    """
    b, t, h, w, c = motion_bthwc.shape
    motion = canvas.masked_motion(motion_bthwc, motion_valid_bt)
    cond = canvas.condition_canvas(reference_b1hwc, motion_bthwc, motion_valid_bt)
    mask = canvas.mask_canvas(b, t, h, w, motion_valid_bt)
    given = mask[..., :1] > 0
    # Ground truth of the given regions: reference at frame 0 (left), motion (right); zeros elsewhere.
    x0_given = canvas.join_halves(jnp.zeros_like(motion).at[:, :1].set(reference_b1hwc), motion)
    if noise_bthwc is None:
        noise = jax.random.normal(rng, (b, t, h, 2 * w, c), jnp.float32)
    elif noise_bthwc.shape != (b, t, h, 2 * w, c):
        raise ValueError(f"noise must cover the canvas {(b, t, h, 2 * w, c)}, got {noise_bthwc.shape}")
    else:
        noise = jnp.asarray(noise_bthwc, jnp.float32)
    tok_given = canvas.token_given(mask, model.cfg.patch_size)
    sigmas = schedule(scfg.steps, scfg.shift)
    use_cfg = scfg.guidance != 1.0
    null_text = jnp.zeros_like(text_ble)

    def velocity(x, sigma):
        if scfg.given_region == "clean":
            x = jnp.where(given, x0_given, x)
            ts = jnp.where(tok_given, 0.0, flow.model_timestep(sigma))
            ts = jnp.broadcast_to(ts, tok_given.shape)
        else:
            x = jnp.where(given, (1.0 - sigma) * x0_given + sigma * noise, x)
            ts = jnp.full((b,), flow.model_timestep(sigma))
        x_in = canvas.assemble_canvas(x, cond, mask)
        image = () if image_bme is None else (image_bme,)  # only an I2V model takes the image tokens
        if not use_cfg:
            return model(x_in, ts, text_ble, text_mask_bl, *image)
        v = model(jnp.concatenate([x_in, x_in]), jnp.concatenate([ts, ts]), jnp.concatenate([text_ble, null_text]),
                  None if text_mask_bl is None else jnp.concatenate([text_mask_bl, text_mask_bl]),
                  *(jnp.concatenate([i, i]) for i in image))
        v_c, v_u = v[:b], v[b:]
        return v_u + scfg.guidance * (v_c - v_u)

    def step(carry, i):
        x, v_prev, x_prev, h_prev = carry
        s, s_next = sigmas[i], sigmas[i + 1]
        hstep = s_next - s
        v = velocity(x, s)
        if scfg.method == "renoise":
            # x̂0 = x - σv, then noise it afresh to the next level: what the model sees stays on the training
            # distribution ((1-σ)·x0 + σ·ε with Gaussian ε), whatever part of the noise it failed to predict.
            x0_hat = x - s * v
            z = jax.random.normal(jax.random.fold_in(rng, i + 1), x.shape, jnp.float32)
            return ((1.0 - s_next) * x0_hat + s_next * z, v, x, hstep), None
        if scfg.method in ("ab2", "unipc"):
            # Corrector for the previous step now that v at its predicted endpoint is known (trapezoid).
            x = jnp.where(i > 0, x_prev + 0.5 * h_prev * (v_prev + v), x)
            ratio = jnp.where(i > 0, hstep / jnp.where(h_prev == 0, 1.0, h_prev), 0.0)
            v_eff = v + 0.5 * ratio * (v - v_prev)
        else:
            v_eff = v
        x_next = x + hstep * v_eff
        return (x_next, v, x, hstep), None

    zero = jnp.zeros_like(noise)
    (x, _, _, _), _ = jax.lax.scan(step, (noise, zero, zero, jnp.zeros((), jnp.float32)), jnp.arange(scfg.steps))
    left, _ = canvas.split_canvas(jnp.where(given, x0_given, x))  # given regions are known exactly
    return left
