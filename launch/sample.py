"""Animate a reference image with a driving video or pose sequence; write MP4 and/or GIF.

  python launch/sample.py --weights=runs/curriculum/stage2 --reference=char.png --driving=dance.mp4 \
      --out=out.mp4 --out=out.gif [--caption="a robot dancing"] [--steps=12] [--layout=side_by_side --zoom=4]
  python launch/sample.py --weights=runs/curriculum/export/diffusers --config=configs/curriculum.py:tiny ...
  python launch/sample.py --weights=runs/tiny --out=runs/tiny/sample.gif   # a held-out procedural test pair
--weights: a training workdir or checkpoint directory (its run config comes with it), or an exported diffusers
directory (pass the training --config: exports hold weights only). --driving: a video (RGB driving for a stage-2
model, or a rendered pose video), a pose .npz (procedural skeleton tables) or an OpenPose-18 .npy (T, [S,] 18, 3).
Without --reference/--driving a held-out procedural test pair is animated (--demo_index).
Prints one JSON line. Library: dreamactor_jax/animate.py (animate_files).
"""

import json

from absl import app, flags, logging
from ml_collections import config_flags

from dreamactor_jax import animate
from dreamactor_jax.diffusion.sampler import SAMPLERS

config_flags.DEFINE_config_file(
    "config",
    None,
    "The config the model was trained with (train or curriculum config "
    "file, optionally ':arg'); default: the one stored with a checkpoint.",
    lock_config=False,
)
flags.DEFINE_string("weights", None, "Training workdir, checkpoint directory, or exported diffusers directory.")
flags.DEFINE_string("reference", None, "Reference image of the character (PNG, JPG, ...); default: a demo pair.")
flags.DEFINE_string("driving", None, "Driving video, pose video, pose .npz or OpenPose .npy; default: a demo pair.")
flags.DEFINE_integer("demo_index", 0, "Without --reference/--driving: which procedural test pair to animate.")
flags.DEFINE_multi_string("out", None, "Output path(s): .mp4 and/or .gif.")
flags.DEFINE_string("caption", "", "Text prompt describing the target.")
flags.DEFINE_enum("stage", "stage2", ["stage1", "stage2"], "Curriculum configs: whose data settings apply.")
flags.DEFINE_integer("frames", None, "Pixel frames to generate (default: the training clip length).")
flags.DEFINE_enum("method", "unipc", list(SAMPLERS),
                  "Sampler (renoise: the tiny curriculum's).")
flags.DEFINE_integer("steps", 20, "Sampler steps.")
flags.DEFINE_float("shift", 3.0, "Timestep shift.")
flags.DEFINE_float("guidance", 1.0, "Text classifier-free guidance scale (1: off).")
flags.DEFINE_integer("seed", 0, "Initial-noise seed.")
flags.DEFINE_enum("weights_item", "auto", ["auto", "ema", "params"], "Checkpoints: which weights (auto: EMA if kept).")
flags.DEFINE_integer("step", None, "Checkpoints: step (default: newest).")
flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "Compute dtype (default: the checkpoint's; exports: fp32).")
flags.DEFINE_enum("layout", "video", ["video", "side_by_side"], "The animation alone, or reference | driving | it.")
flags.DEFINE_integer("zoom", 1, "Nearest-neighbour upscaling of the written frames.")
flags.DEFINE_float("fps", None, "Output frame rate (default: 8, the procedural data's).")
flags.DEFINE_string("umt5_dir", None, "A local umT5 encoder + tokenizer directory that encodes --caption (required for "
                    "models trained on records' umT5 text).")
flags.DEFINE_string("clip_dir", None, "A local CLIP vision checkpoint for an I2V model's reference image tokens "
                    "(default: the run config's data.clip_dir).")
flags.DEFINE_string("pose_frame_size", None, "OpenPose .npy: 'H,W' of the frame the keypoints refer to.")
flags.mark_flags_as_required(["weights", "out"])
FLAGS = flags.FLAGS


def main(argv):
    logging.set_verbosity(logging.ERROR)  # Orbax warns that read-only checkpoint directories are read only
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    size = None
    if FLAGS.pose_frame_size:
        try:
            size = tuple(int(v) for v in FLAGS.pose_frame_size.split(","))
            assert len(size) == 2
        except (ValueError, AssertionError):
            raise app.UsageError(f"--pose_frame_size wants 'H,W', got {FLAGS.pose_frame_size!r}") from None
    result = animate.animate_files(
        FLAGS.weights,
        FLAGS.reference,
        FLAGS.driving,
        FLAGS.out,
        run_config=None if FLAGS.config is None else FLAGS.config.to_dict(),
        stage=FLAGS.stage,
        caption=FLAGS.caption,
        frames=FLAGS.frames,
        sampler=dict(method=FLAGS.method, steps=FLAGS.steps, shift=FLAGS.shift, guidance=FLAGS.guidance),
        seed=FLAGS.seed,
        weights=FLAGS.weights_item,
        step=FLAGS.step,
        layout=FLAGS.layout,
        zoom=FLAGS.zoom,
        fps=FLAGS.fps,
        pose_frame_size=size,
        dtype=FLAGS.dtype,
        demo_index=FLAGS.demo_index,
        umt5_dir=FLAGS.umt5_dir,
        clip_dir=FLAGS.clip_dir,
    )
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
