"""Stage 1 of the curriculum alone: pose-driven in-context training.

This is the curriculum's own stage-1 train config (``configs/curriculum.py``; one definition, so the two
cannot drift): ``tiny`` and ``small`` are the procedural CPU runs, the default is the Wan2.1-I2V-14B stage 1
on pose-rendered latent records (``data.records_dir`` must be set to real data).

Launch (tiny, CPU, minutes):
  python launch/train.py --config=configs/stage1_pose.py:tiny --workdir=/tmp/stage1_tiny
Real scale (Wan2.1-I2V-14B, 81 frames at 480p, latent 21 x 60 x 104 per canvas half):
  python launch/train.py --config=configs/stage1_pose.py --workdir=gs://BUCKET/runs/stage1 \\
      --config.data.records_dir=gs://BUCKET/latents/stage1
Any field can be overridden: --config.optim.lr=1e-4 --config.model.remat=full
"""

import ml_collections

from dreamactor_jax import config_lib
from dreamactor_jax.curriculum.presets import curriculum_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = arg or ""
    if arg not in ("", "tiny", "small"):
        raise ValueError(f"configs/stage1_pose.py: unknown argument {arg!r}; use '', 'tiny' or 'small'")
    return config_lib.stage_config(curriculum_config(arg or "wan14b"), "stage1")
