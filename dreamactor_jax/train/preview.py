"""Sample previews during training: the current params animate a fixed held-out batch every N steps.

Every ``config.train.preview_every`` steps (0: off) the sampler
(:class:`dreamactor_jax.diffusion.animator.Animator`, the same code synthesis and evaluation use) runs
``preview_steps`` steps on ``preview_examples`` fixed examples
(``data.sources.preview_batch``) with a fixed noise seed, so successive previews differ only by training. Each
writes ``previews/step_<N>.gif`` (one row per example: reference | motion | sample | target, animated over
time) and, when TensorBoard is on, the same grid as a still filmstrip under Images ``preview``.

All processes run the sampler (the params are sharded over the mesh); process 0 writes. The time a preview
takes is reported so the loop can keep it out of its steps/s.
"""

from __future__ import annotations

import os
import time

import jax
import ml_collections
import numpy as np

from dreamactor_jax import fs
from dreamactor_jax.data import sources, video_io
from dreamactor_jax.data.components import components
from dreamactor_jax.diffusion.animator import Animator
from dreamactor_jax.diffusion.sampler import SamplerConfig
from dreamactor_jax.models.config import WanConfig

PREVIEW_DIR = "previews"


class Previewer:
    """``previewer(step, params) -> seconds``: samples the preview batch with ``params`` and writes the grid.

    Args:
      config: the run config (``config.train.preview_*``, data and codec settings, objective.given_region).
      mcfg: the model architecture.
      mesh: the run's mesh (the sample is replicated over it).
      workdir: the run's directory.
      log: the run's :class:`~dreamactor_jax.train.observe.MetricLog` (for TensorBoard images), or None.
      main: whether this process writes files.
    """

    def __init__(
        self, config: ml_collections.ConfigDict, mcfg: WanConfig, mesh, workdir: str, log=None, main: bool = True
    ):
        t = config.train
        self.every, self.main, self.log = int(t.preview_every), main, log
        self.dir = fs.join(workdir, PREVIEW_DIR)
        self.seed = config.seed
        batch = sources.preview_batch(config, mcfg.text_dim, int(t.preview_examples), t.preview_source)
        self.batch = batch
        comp = components(config)
        self.codec = comp.codec
        scfg = SamplerConfig(
            method=str(t.get("preview_method", "unipc")),
            steps=int(t.preview_steps),
            shift=float(t.get("preview_shift", 3.0)),
            guidance=float(t.get("preview_guidance", 1.0)),
            given_region=config.objective.given_region,
        )
        self.animator = Animator(mcfg, None, self.codec, scfg, text_encoder=None, mesh=mesh)
        decode = lambda k: np.clip(np.asarray(self.codec.decode(batch[k])), -1.0, 1.0)
        self.reference, self.motion, self.target = decode("reference")[:, 0], decode("motion"), decode("target")
        self.fps = comp.fps
        self.written: list[str] = []

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def __call__(self, step: int, params) -> float:
        t0 = time.perf_counter()
        b = self.batch
        lat = self.animator.latents(
            b["reference"],
            b["motion"],
            b["motion_valid"],
            b["text"],
            b["text_mask"],
            jax.random.key(self.seed),
            params=params,
        )
        sample = np.clip(np.asarray(self.codec.decode(np.asarray(lat))), -1.0, 1.0)
        if self.main:
            rows = [[self.reference[i], self.motion[i], sample[i], self.target[i]] for i in range(len(sample))]
            frames = video_io.grid_frames(rows, zoom=2)
            path = fs.join(self.dir, f"step_{step:06d}.gif")
            with fs.staged(self.dir) as local:  # the GIF writer writes local files
                video_io.write_gif(os.path.join(local, os.path.basename(path)), frames, self.fps)
            self.written.append(path)
            if self.log is not None:
                self.log.images(step, {"preview": video_io.filmstrip(frames)})
        return time.perf_counter() - t0
