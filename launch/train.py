"""Train from a config file.

  python launch/train.py --config=configs/stage1_pose.py:tiny --workdir=/tmp/stage1_tiny [--config.FIELD=VALUE ...]
Prints the resolved config, then one progress line per log step (loss, steps/s, tokens/s, FLOP/s, MFU, ETA) and an
end-of-run summary table. The workdir gets config.json, metrics.jsonl, summary.json, checkpoints/, tensorboard/
(``tensorboard --logdir=WORKDIR``), previews/ (``--config.train.preview_every=N``) and profile/
(``--config.train.profile_steps=A:B``). Multi-host: the same command on every host, plus
--coordinator_address=HOST0:PORT --num_processes=N --process_id=I (or the DREAMACTOR_* environment; SLURM and TPU
slices are detected): parallel/distributed.py; cluster scripts in launch/README.md.
"""

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from dreamactor_jax import config_lib
from dreamactor_jax.parallel import distributed
from dreamactor_jax.train import compile_cache, loop

config_flags.DEFINE_config_file("config", None, "Path to a config file, optionally ':arg'.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for the run's config, logs and checkpoints.")
distributed.define_flags()
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def main(argv):
    distributed.initialize_from_flags()  # before anything touches a JAX backend
    logging.set_verbosity(logging.WARNING)  # keep Orbax/absl INFO chatter out of the run log
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if jax.process_index() == 0:
        print(f"config (resolved; saved as {FLAGS.workdir}/config.json):\n{config_lib.describe(FLAGS.config)}",
              flush=True)
    compile_cache.enable_for_launch(FLAGS.config.train)  # restarts load the compiled step
    summary = loop.run(FLAGS.config, FLAGS.workdir)
    print(f"done: {summary['steps']} steps, final loss {summary['final_loss']:.4f}, {summary['seconds']:.1f} s")


if __name__ == "__main__":
    app.run(main)
