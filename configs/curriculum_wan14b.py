"""The curriculum at scale: Wan2.1-I2V-14B init, 81 frames, on a TPU v5p slice or H100 nodes.

Argument: comma-separated words, any order: full|lora, v5p|h100, 480p|720p (defaults full,v5p,480p).
  python launch/curriculum.py --config=configs/curriculum_wan14b.py:lora,h100,480p --workdir=gs://BUCKET/run \
      --config.stage1.train.init_from=gs://BUCKET/wan2.1-i2v-14b   # from: launch/convert.py import
Check that a step fits before renting the slice:
  python launch/aot_compile.py --config=configs/curriculum_wan14b.py:full,v5p,720p --stage=stage1 --topology=v5p:4x4x4
"""

from dreamactor_jax.curriculum.presets import curriculum_config, parse_arg


def get_config(arg: str | None = None):
    return curriculum_config("wan14b", **parse_arg(arg, "configs/curriculum_wan14b.py"))
