"""Run the two-stage curriculum (stage 1 -> synthesis -> stage 2 -> export -> eval) in one workdir.

  python launch/curriculum.py --config=configs/curriculum.py:tiny --workdir=runs/curriculum [--only=PHASE] [--force]
Rerunning continues where a previous run stopped; phases already done are skipped. Prints the resolved config at
start and a per-phase summary table at the end (also WORKDIR/summary.json); watch with
``tensorboard --logdir=WORKDIR``. Multi-host flags as for launch/train.py.
"""

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from dreamactor_jax import config_lib
from dreamactor_jax.curriculum import driver
from dreamactor_jax.parallel import distributed
from dreamactor_jax.train import compile_cache

config_flags.DEFINE_config_file("config", None, "Path to a curriculum config file, optionally ':arg'.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for all phases' outputs.")
flags.DEFINE_enum("only", None, list(driver.PHASES), "Run just this phase.")
flags.DEFINE_bool("force", False, "Use a workdir that holds a run of a different config.")
distributed.define_flags()
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def main(argv):
    distributed.initialize_from_flags()  # before anything touches a JAX backend
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    if jax.process_index() == 0:
        print(f"config (resolved; saved as {FLAGS.workdir}/{driver.CONFIG_FILE}):\n"
              f"{config_lib.describe(FLAGS.config)}", flush=True)
    compile_cache.enable_for_launch(FLAGS.config.stage1.train)  # restarts load the compiled steps and samplers
    driver.run(FLAGS.config, FLAGS.workdir, only=FLAGS.only, force=FLAGS.force)


if __name__ == "__main__":
    app.run(main)
