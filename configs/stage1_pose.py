"""Stage 1 of the curriculum: pose-driven in-context training.

Launch (tiny, CPU, minutes):
  python launch/train.py --config=configs/stage1_pose.py:tiny --workdir=/tmp/stage1_tiny
Real scale (Wan2.1-I2V-14B, 81 frames at 480p, latent 21 x 60 x 104 per canvas half):
  python launch/train.py --config=configs/stage1_pose.py --workdir=gs://BUCKET/runs/stage1
Any field can be overridden: --config.optim.lr=1e-4 --config.model.remat=full
"""

import ml_collections

from dreamactor_jax import config_lib
from dreamactor_jax.data import sources


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = arg or ""
    if arg not in ("", "tiny"):
        raise ValueError(f"configs/stage1_pose.py: unknown argument {arg!r}; use '' or 'tiny'")
    tiny = arg == "tiny"
    c = ml_collections.ConfigDict()
    c.seed = 0  # parameter init, noise and data order all derive from it
    c.model = config_lib.model_section("tiny" if tiny else "wan2.1-i2v-14b",
                                       scan_layers=True, remat="none" if tiny else "full")
    c.objective = config_lib.objective_section(
        sigma_sampler="uniform" if tiny else "logit_normal",
        shift=1.0 if tiny else 3.0,
        text_dropout=0.1,
    )
    c.data = sources.data_section(
        source="procedural", stage=1,
        frames=5 if tiny else 21,  # latent frames (tiny: 5 frames of 32 x 32 px)
        height=16 if tiny else 60, width=16 if tiny else 104,
        text_len=8 if tiny else 512,
        motion_masked_frames=1 if tiny else 4,
        batch_size=4 if tiny else 2,
    )
    c.optim = config_lib.optim_section(lr=1e-3 if tiny else 5e-5, warmup_steps=0 if tiny else 500,
                                       grad_clip_norm=1.0)
    c.mesh = config_lib.mesh_section(data=1 if tiny else -1)
    # Field meanings: config_lib.train_section. Resume priority (loop.run): a checkpoint in the workdir >
    # resume_from (another run's full state) > init_from (params only, e.g. stage 2 from stage 1) > scratch.
    c.train = config_lib.train_section(
        steps=60 if tiny else 50_000,  # optimizer updates (paper: 50k per stage)
        log_every=10,
        checkpoint_every=50 if tiny else 1000,  # and at the end, and on preemption (SIGTERM)
        keep_checkpoints=3,
        keep_period=0 if tiny else 10_000,  # long runs also keep every 10k-step checkpoint
        resume_from="",
        init_from="",
        skip_nonfinite_steps=False,
    )
    return c
