"""Compile the real train step for a TPU topology without TPUs (needs the libtpu package).

  python launch/aot_compile.py --config=configs/stage1_pose.py --topology=v5p:4x4x4 [--step_seconds=30]
Prints per-chip memory (args, temps, outputs, total vs chip HBM), compiled FLOPs per step vs the
model FLOP counter, and the MFU a given step time implies.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from dreamactor_jax.train import aot

config_flags.DEFINE_config_file("config", None, "Path to a config file, optionally ':arg'.", lock_config=True)
flags.DEFINE_string("topology", "v5p:2x2x2", "TPU topology, e.g. v5p:4x4x4, v5e:4x4, v6e:4x4.")
flags.DEFINE_float("step_seconds", None, "A step time to convert into MFU.")
flags.DEFINE_enum("stage", "stage1", ["stage1", "stage2"], "For a curriculum config: which stage's step.")
flags.DEFINE_bool("count_flops", True, "Also compile small countable variants (1-2 layers, 1-3 frames, XLA attention) "
                  "to count compiled FLOPs per step.")
flags.mark_flags_as_required(["config"])
FLAGS = flags.FLAGS


def main(argv):
    logging.set_verbosity(logging.WARNING)  # keep Orbax/absl INFO chatter out of the run log
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = FLAGS.config
    if "stage1" in config:  # a curriculum config: compile one stage's train step
        from dreamactor_jax.config_lib import stage_config

        config = stage_config(config, FLAGS.stage)
    report = aot.aot_compile(config, FLAGS.topology, count_flops=FLAGS.count_flops)
    print("\n".join(report.lines(FLAGS.step_seconds)))


if __name__ == "__main__":
    app.run(main)
