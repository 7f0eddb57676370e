"""Generated videos against targets: the real sampler and Animator reproduce a clip the model has learnt.

Every other curriculum test checks losses or compares models with each other; this one checks pixels. A model
overfit on one procedural clip (its first frame as the reference, its pose render as the motion) must give the
clip back through :class:`dreamactor_jax.animate.Animator` with the curriculum's own sampler: canvas assembly,
given regions, the σ schedule and shift, the sampler steps and the codec's decode all take part. A train/sample
mismatch in any of them (σ shift, timestep scale, clean vs noised given regions, a canvas half or the mask
swapped) shows up as a low PSNR.
"""

import jax
import numpy as np

from dreamactor_jax.curriculum import driver, presets
from dreamactor_jax.data import sources
from dreamactor_jax.data.components import components
from dreamactor_jax.data.procedural import dataset as proc
from dreamactor_jax.eval import metrics
from dreamactor_jax.train import checkpoint
from dreamactor_jax.train import loop as train_loop

STEPS = 1500
PSNR_MIN = 30.0  # measured 34.5 dB (copy-reference: 12.2 dB)


def _overfit_config():
    """The tiny curriculum on one small clip (3 latent frames of 8 x 8 per half), every step."""
    c = presets.curriculum_config("tiny")
    s = c.stage1
    s.data.frames, s.data.height, s.data.width = 3, 8, 8
    s.data.batch_size = 1
    s.data.procedural.num_examples = 1
    s.data.procedural.pose_augment_prob = 0.0
    s.data.procedural.two_subject_prob = 0.0
    c.objective.text_dropout = 0.0
    s.optim.warmup_steps = 20
    s.train.steps, s.train.log_every, s.train.checkpoint_every = STEPS, STEPS, STEPS
    s.train.tensorboard, s.train.preview_every = False, 0
    return c


def test_overfit_clip_is_reproduced_by_the_animator(tmp_path):
    c = _overfit_config()
    sc = driver.stage_config(c, "stage1")
    train_loop.run(sc, str(tmp_path))
    params = checkpoint.restore_item(str(tmp_path / "checkpoints"), "params")
    clip = proc.make_example("train", 0, sources.procedural_config(sc, "train"))
    # The training source's only clip is train example 0 (a shuffle of one).
    np.testing.assert_array_equal(sources.make_source(sc, 32)(0)["target"][0],
                                  sources.codec_from(sc).encode(clip["video"][None])[0])
    anim = driver._animator(components(sc), params, driver._sampler(c.eval.sampler, c.objective))
    out = anim(clip["reference"][None], clip["pose_video"][None], [clip["caption"]], jax.random.key(1))[0]
    psnr = metrics.psnr(out[1:], clip["video"][1:])
    copy = metrics.psnr(np.broadcast_to(clip["reference"], clip["video"].shape)[1:], clip["video"][1:])
    assert psnr > PSNR_MIN and psnr > copy + 5.0, (psnr, copy)
