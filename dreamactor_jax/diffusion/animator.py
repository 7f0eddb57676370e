"""The sampler front end: pixels in, pixels out, for one model architecture.

:class:`Animator` encodes pixels with the run's codec, samples the target half of the canvas with
:func:`dreamactor_jax.diffusion.sampler.sample` and decodes it. Everything that animates in-process uses it: the
training loop's previews, the curriculum's synthesis and evaluation phases, and ``dreamactor_jax.animate`` (files
on disk, ``launch/sample.py``), which re-exports it. Sampling is jitted once per batch shape; with ``mesh`` the
output is replicated so every process of a multi-host run can read it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dreamactor_jax.diffusion import sampler as sampler_lib
from dreamactor_jax.models.build import abstract_model, split_params
from dreamactor_jax.models.config import WanConfig


class Animator:
    """Samples videos from a model: ``animator(reference, motion, captions, rng) -> video``.

    Args:
      mcfg: the model architecture.
      params: its parameters (a nested dict as ``split_params`` gives), or None to pass them per call.
      codec: pixels <-> latents (``dreamactor_jax.codecs``).
      scfg: sampler settings.
      text_encoder: captions -> (embeddings, mask); only :meth:`__call__` needs it.
      masked_frames: leading driving frames hidden, as in training.
      mesh: when given, the sampled latents are replicated over it (readable on every process).
    """

    def __init__(
        self,
        mcfg: WanConfig,
        params: dict | None,
        codec,
        scfg: sampler_lib.SamplerConfig,
        text_encoder,
        masked_frames: int = 0,
        mesh: jax.sharding.Mesh | None = None,
    ):
        self.mcfg, self.codec, self.text, self.masked, self.scfg = mcfg, codec, text_encoder, masked_frames, scfg
        graphdef, _ = split_params(abstract_model(mcfg))
        self.params = params

        def run(p, ref, mot, valid, text, tmask, rng, noise, image):
            model = nnx.merge(graphdef, p)
            return sampler_lib.sample(model, ref, mot, text, tmask, rng, scfg, valid, noise, image)

        out = None if mesh is None else jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        self._run = jax.jit(run, out_shardings=out)

    def valid_mask(self, batch: int, frames: int) -> np.ndarray:
        """(B, T) motion validity: the first ``masked_frames`` latent frames hidden."""
        valid = np.ones((batch, frames), np.float32)
        valid[:, : self.masked] = 0.0
        return valid

    def latents(
        self,
        reference_b1hwc,
        motion_bthwc,
        motion_valid_bt,
        text_ble,
        text_mask_bl,
        rng: jax.Array,
        *,
        params: dict | None = None,
        noise_bthwc=None,
        image_bme=None,
    ) -> jax.Array:
        """Latent-space sampling: generated target latents (B,T,H,W,C), float32.

        ``params`` (default: the constructor's) and ``noise_bthwc`` (the initial canvas noise; default drawn
        from ``rng``) make this the entry point of previews and of parity checks against other samplers.
        ``image_bme``: the reference's CLIP tokens for an I2V model (required when its config has ``image_dim``).
        """
        p = self.params if params is None else params
        if p is None:
            raise ValueError("Animator: no params (pass them to the constructor or to latents())")
        noise = None if noise_bthwc is None else jnp.asarray(noise_bthwc, jnp.float32)
        if self.mcfg.image_dim and image_bme is None:
            raise ValueError(f"an I2V model (image_dim={self.mcfg.image_dim}) samples with the reference's CLIP image "
                             "tokens: pass image_bme (data/clip_image.py)")
        image = None if image_bme is None else jnp.asarray(image_bme, jnp.float32)
        return self._run(
            p,
            jnp.asarray(reference_b1hwc),
            jnp.asarray(motion_bthwc),
            jnp.asarray(motion_valid_bt),
            jnp.asarray(text_ble),
            jnp.asarray(text_mask_bl),
            rng,
            noise,
            image,
        )

    def __call__(
        self, reference_bhw3: np.ndarray, motion_bthw3: np.ndarray, captions: list[str], rng: jax.Array, *,
        params: dict | None = None, image_bme=None,
    ) -> np.ndarray:
        """reference (B,H,W,3), motion (B,T,H,W,3) in [-1,1] -> generated video (B,T,H,W,3) in [-1,1].

        The first ``masked_frames`` motion frames are hidden, as in training: frame 0 is the
        reference, and the model bridges from it to the driving motion. ``params`` (default: the
        constructor's) lets one Animator, compiled once, sample several models of one architecture.
        ``image_bme``: the references' CLIP tokens, for an I2V model.
        """
        ref = self.codec.encode(reference_bhw3[:, None].astype(np.float32))
        mot = self.codec.encode(motion_bthw3.astype(np.float32))
        text, tmask = self.text.encode_batch(captions)
        lat = self.latents(ref, mot, self.valid_mask(mot.shape[0], mot.shape[1]), text, tmask, rng, params=params,
                           image_bme=image_bme)
        return np.clip(np.asarray(self.codec.decode(np.asarray(lat))), -1.0, 1.0)
