"""Convert weights between diffusers / original Wan2.1 safetensors and our Orbax checkpoints.

  python launch/convert.py import --src=DIR --out=CKPT_DIR [--num_attention_heads=N] [--override=key=value]
  python launch/convert.py export --checkpoint=CKPT_DIR --out=DIR [--dtype=bf16|fp32] [--max_shard_size=5GB]
                                  [--weights=auto|ema|params] [--step=N] [--lora=merge|separate]
  python launch/convert.py parity --src=DIR [--tol=1e-4] [--seed=0]

import reads either layout (diffusers ``WanTransformer3DModel`` or the original Wan2.1 release) and
writes step 0 of a new checkpoint; export writes a directory diffusers' ``from_pretrained`` loads;
parity runs that directory through our model and diffusers' and exits 1 when max |diff| > --tol.
Each prints one JSON line.
"""

import json
import sys

from absl import app, flags

flags.DEFINE_string("src", None, "import/parity: transformer directory (config.json + safetensors) or one file.")
flags.DEFINE_string("out", None, "import: new checkpoint directory; export: new diffusers directory.")
flags.DEFINE_string("checkpoint", None, "export: our Orbax checkpoint directory.")
flags.DEFINE_enum("dtype", "bf16", ["bf16", "fp32"], "export: dtype of the written tensors.")
flags.DEFINE_string("max_shard_size", "5GB", "export: max bytes per safetensors shard ('5GB', '200MB', bytes).")
flags.DEFINE_enum("weights", "auto", ["auto", "ema", "params"], "export: checkpoint item (auto: ema if present).")
flags.DEFINE_integer("step", None, "export: checkpoint step (default: latest).")
flags.DEFINE_enum("lora", "merge", ["merge", "separate"], "export of a LoRA checkpoint: merge the adapters into the "
                  "base weights, or write them separately (lora.safetensors + adapter_config.json).")
flags.DEFINE_integer("num_attention_heads", None, "import/parity: heads, when neither config.json nor Wan's "
                     "head dim 128 determines them.")
flags.DEFINE_multi_string("override", [], "import/parity: WanConfig field override as key=json_value.")
flags.DEFINE_float("tol", 1e-4, "parity: max abs difference allowed.")
flags.DEFINE_integer("seed", 0, "parity: input seed.")
FLAGS = flags.FLAGS
COMMANDS = ("import", "export", "parity")


def _overrides() -> dict:
    out = {}
    for item in FLAGS.override:
        key, sep, value = item.partition("=")
        if not sep:
            raise app.UsageError(f"--override wants key=value, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    if FLAGS.num_attention_heads is not None:
        out["num_attention_heads"] = FLAGS.num_attention_heads
    return out


def _require(*names):
    missing = [n for n in names if getattr(FLAGS, n) is None]
    if missing:
        raise app.UsageError(f"missing flag(s): {', '.join('--' + n for n in missing)}")


def main(argv):
    if len(argv) != 2 or argv[1] not in COMMANDS:
        raise app.UsageError(f"usage: convert.py {{{'|'.join(COMMANDS)}}} --flags...; got {argv[1:]}")
    cmd = argv[1]
    if cmd == "import":
        from dreamactor_jax.convert import importer

        _require("src", "out")
        result = importer.import_to_checkpoint(FLAGS.src, FLAGS.out, _overrides())
    elif cmd == "export":
        from dreamactor_jax.convert import export

        _require("checkpoint", "out")
        result = export.export_checkpoint(FLAGS.checkpoint, FLAGS.out, weights=FLAGS.weights, dtype=FLAGS.dtype,
                                          max_shard_size=FLAGS.max_shard_size, step=FLAGS.step, lora=FLAGS.lora)
    else:
        from dreamactor_jax.convert import parity

        _require("src")
        result = parity.run_parity(FLAGS.src, tol=FLAGS.tol, seed=FLAGS.seed, overrides=_overrides())
    print(json.dumps(result))
    if cmd == "parity" and not result["ok"]:
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
