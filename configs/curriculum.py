"""The DreamActor-M2 curriculum: stage 1 (pose) -> synthesis -> stage 2 (RGB) -> export -> eval.

Tiny (the README's main job; CPU, minutes, procedural data):
  python launch/curriculum.py --config=configs/curriculum.py:tiny --workdir=runs/curriculum
Small (the quality config: a 4x larger model trained 5x longer; under an hour on 2 CPU cores):
  python launch/curriculum.py --config=configs/curriculum.py:small --workdir=runs/curriculum_small
Tiny on real data (every phase reads records: set the stage-1, pool and eval paths and the pose model):
  python launch/curriculum.py --config=configs/curriculum.py:tiny_real --workdir=runs/real \
    --config.stage1.data.records_dir=... --config.synthesis.reference_pool=... --config.eval.records_dir=... \
    --config.synthesis.pose_model=...
A real-data pilot at 256 x 256 through the Wan2.1 VAE and umT5-XXL (records from launch/precompute.py
--codec=wan_vae --spatial_factor=8 --umt5_dir=...): configs/curriculum.py:small_real with the same fields.
One phase: --only=stage1|synthesis|stage2|export|eval. Real scale: configs/curriculum_wan14b.py.
"""

from dreamactor_jax.curriculum.presets import curriculum_config


def get_config(arg: str | None = None):
    if (arg or "") not in ("", "tiny", "small", "tiny_real", "small_real"):
        raise ValueError(f"configs/curriculum.py: unknown argument {arg!r}; use 'tiny', 'small', 'tiny_real', "
                         "'small_real' (or '' for Wan2.1-14B)")
    return curriculum_config(arg or "wan14b")
