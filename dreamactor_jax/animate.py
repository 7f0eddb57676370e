"""Animate references with motion videos using a trained model: pixels in, pixels out.

Shared by the synthesis phase and evaluation. Pixels are encoded with the
run's codec, the sampler generates the target half of the canvas, and the
codec decodes it. Sampling is jitted once per batch shape; the batch is split
over the mesh's batch axes when a mesh is given.
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
    def __init__(self, mcfg: WanConfig, params: dict, codec, scfg: sampler_lib.SamplerConfig, text_encoder,
                 masked_frames: int = 0):
        self.codec, self.text, self.masked = codec, text_encoder, masked_frames
        graphdef, _ = split_params(abstract_model(mcfg))
        self.params = params

        def run(p, ref, mot, valid, text, tmask, rng):
            model = nnx.merge(graphdef, p)
            return sampler_lib.sample(model, ref, mot, text, tmask, rng, scfg, valid)

        self._run = jax.jit(run)

    def __call__(self, reference_bhw3: np.ndarray, motion_bthw3: np.ndarray, captions: list[str],
                 rng: jax.Array) -> np.ndarray:
        """reference (B,H,W,3), motion (B,T,H,W,3) in [-1,1] -> generated video (B,T,H,W,3) in [-1,1].

        The first ``masked_frames`` motion frames are hidden, as in training: frame 0 is the
        reference, and the model bridges from it to the driving motion.
        """
        b, t = motion_bthw3.shape[:2]
        ref = self.codec.encode(reference_bhw3[:, None].astype(np.float32))
        mot = self.codec.encode(motion_bthw3.astype(np.float32))
        valid = np.ones((b, mot.shape[1]), np.float32)
        valid[:, : self.masked] = 0.0
        text, tmask = self.text.encode_batch(captions)
        lat = self._run(self.params, jnp.asarray(ref), jnp.asarray(mot), jnp.asarray(valid), jnp.asarray(text),
                        jnp.asarray(tmask), rng)
        return np.clip(np.asarray(self.codec.decode(np.asarray(lat))), -1.0, 1.0)
