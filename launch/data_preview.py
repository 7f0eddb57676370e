"""Look at the procedural character data: a PNG contact sheet (and optionally an animated GIF).

  python launch/data_preview.py --out=/tmp/data.png --gif=/tmp/data.gif --n=4
Rows are examples; columns: reference, motion (pose render) frames, target frames, cross-identity
target frames (the same motion performed by another identity).
"""

from absl import app, flags

from dreamactor_jax.data.procedural import ProceduralConfig, make_example
from dreamactor_jax.data.procedural.preview import write_preview

flags.DEFINE_string("out", None, "Path of the PNG contact sheet.")
flags.DEFINE_string("gif", None, "Optional path of an animated GIF.")
flags.DEFINE_integer("n", 4, "Number of examples (rows).")
flags.DEFINE_string("split", "train", "train | validation | test.")
flags.DEFINE_integer("start", 0, "Index of the first example.")
flags.DEFINE_integer("frames", 9, "Frames per clip.")
flags.DEFINE_integer("height", 32, "Frame height.")
flags.DEFINE_integer("width", 32, "Frame width.")
flags.DEFINE_integer("seed", 0, "Dataset seed.")
flags.DEFINE_integer("zoom", 4, "Nearest-neighbour upscaling of each tile.")
flags.DEFINE_integer("frames_shown", 4, "Frames per column group in the PNG.")
flags.DEFINE_string("cross_mode", "shape", "appearance | shape | any.")
flags.DEFINE_float("pose_augment_prob", 0.0, "Fraction of pose videos drawn from augmented skeletons.")
flags.mark_flags_as_required(["out"])
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    cfg = ProceduralConfig(frames=FLAGS.frames, height=FLAGS.height, width=FLAGS.width, seed=FLAGS.seed,
                           cross_mode=FLAGS.cross_mode, pose_augment_prob=FLAGS.pose_augment_prob)
    examples = [make_example(FLAGS.split, FLAGS.start + i, cfg) for i in range(FLAGS.n)]
    write_preview(FLAGS.out, examples, FLAGS.gif, FLAGS.frames_shown, FLAGS.zoom, cfg.fps)
    print(f"wrote {FLAGS.out}" + (f" and {FLAGS.gif}" if FLAGS.gif else ""))


if __name__ == "__main__":
    app.run(main)
