"""Print a model preset's parameter count and a per-module table (no allocation).

  python launch/info.py --preset=wan2.1-t2v-14b
  -> params: 14288491584
"""

from absl import app, flags, logging

from dreamactor_jax.models import info

flags.DEFINE_string("preset", "tiny", "Model preset name.")
flags.DEFINE_integer("depth", 2, "Module path depth of the per-module table.")
FLAGS = flags.FLAGS


def main(argv):
    logging.set_verbosity(logging.WARNING)  # keep Orbax/absl INFO chatter out of the run log
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    print(info.report(FLAGS.preset, depth=FLAGS.depth))


if __name__ == "__main__":
    app.run(main)
