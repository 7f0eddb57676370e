"""The DreamActor-M2 curriculum: stage 1 (pose) -> synthesis -> stage 2 (RGB) -> export -> eval.

Tiny (the README's main job; CPU, minutes, procedural data):
  python launch/curriculum.py --config=configs/curriculum.py:tiny --workdir=runs/curriculum
One phase: --only=stage1|synthesis|stage2|export|eval. Real scale: configs/curriculum_wan14b.py.
"""

import ml_collections

from dreamactor_jax import config_lib
from dreamactor_jax.data import sources


def _train(tiny: bool, steps: int) -> ml_collections.ConfigDict:
    t = config_lib.train_section()
    t.steps = steps
    t.log_every = 25 if tiny else 100
    t.checkpoint_every = 100 if tiny else 1000
    return t


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = arg or ""
    if arg not in ("", "tiny"):
        raise ValueError(f"configs/curriculum.py: unknown argument {arg!r}; use '' or 'tiny'")
    tiny = arg == "tiny"
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.model = config_lib.model_section("tiny" if tiny else "wan2.1-i2v-14b", remat="none" if tiny else "full")
    c.objective = config_lib.objective_section(sigma_sampler="logit_normal" if not tiny else "uniform",
                                               shift=1.0 if tiny else 3.0, text_dropout=0.1)
    c.mesh = config_lib.mesh_section(data=-1 if not tiny else 1)
    data = dict(frames=5 if tiny else 21, height=16 if tiny else 60, width=16 if tiny else 104,
                text_len=8 if tiny else 512, motion_masked_frames=1 if tiny else 4, batch_size=4 if tiny else 2)

    c.stage1 = ml_collections.ConfigDict()
    c.stage1.data = sources.data_section(source="procedural", stage=1, **data)
    c.stage1.optim = config_lib.optim_section(lr=2e-3 if tiny else 5e-5, warmup_steps=20 if tiny else 500,
                                              schedule="cosine" if tiny else "constant", final_lr_fraction=0.1)
    c.stage1.train = _train(tiny, 500 if tiny else 50_000)

    c.synthesis = ml_collections.ConfigDict()
    c.synthesis.num_clips = 96 if tiny else 60_000  # driving clips to animate with new identities
    c.synthesis.batch_size = 16 if tiny else 8
    c.synthesis.shard_size = 32 if tiny else 1000  # clips per record shard (the unit of resumption)
    c.synthesis.threshold = 0.72  # acceptance: mean of pose and appearance consistency (see synthesis.py)
    c.synthesis.index_offset = 5_000_000  # driving clips are train-split clips beyond stage 1's first epoch
    c.synthesis.weights = "params"  # "params" | "ema"
    c.synthesis.sampler = ml_collections.ConfigDict(dict(method="unipc", steps=12 if tiny else 40, shift=3.0,
                                                         guidance=1.0))

    c.stage2 = ml_collections.ConfigDict()
    c.stage2.data = sources.data_section(source="records", stage=2, **data)
    c.stage2.data.pose_mix = 0.25  # fraction of stage-2 batches that are stage-1 pose batches
    c.stage2.optim = config_lib.optim_section(lr=1e-3 if tiny else 5e-5, warmup_steps=10 if tiny else 500,
                                              schedule="cosine" if tiny else "constant", final_lr_fraction=0.1)
    c.stage2.train = _train(tiny, 300 if tiny else 50_000)

    c.export = ml_collections.ConfigDict(dict(dtype="fp32" if tiny else "bf16", max_shard_size="5GB",
                                              weights="params"))
    c.eval = ml_collections.ConfigDict()
    c.eval.num_pairs = 32 if tiny else 200
    c.eval.batch_size = 16 if tiny else 4
    c.eval.grid_pairs = 4
    c.eval.weights = "params"
    c.eval.sampler = ml_collections.ConfigDict(dict(method="unipc", steps=12 if tiny else 40, shift=3.0,
                                                    guidance=1.0))
    return c
