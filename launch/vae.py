"""The Wan VAE from the command line: convert weights, mp4 -> latents, latents -> mp4.

  python launch/vae.py convert --src=Wan2.1_VAE.pth --out=VAE_DIR [--dtype=fp32|bf16]
  python launch/vae.py encode --weights=VAE_DIR --video=in.mp4 --out=latents.npy [--height=480 --width=832]
                              [--max_frames=81] [--trim] [--tiling]
  python launch/vae.py decode --weights=VAE_DIR --latents=latents.npy --out=out.mp4 [--fps=16] [--tiling]

convert reads a diffusers ``AutoencoderKLWan`` directory or safetensors file, or the original ``Wan2.1_VAE.pth``
(only through ``torch.load(weights_only=True)``), and writes a directory diffusers' ``from_pretrained`` loads.
encode writes Wan's normalised latents (T', H/8, W/8, 16) float32 as ``.npy`` or ``.safetensors``; decode
reads them back. ``--weights`` defaults to ``$DREAMACTOR_WAN_VAE``; ``--config=tiny`` without weights runs a
randomly initialised VAE (smoke tests only). Each command prints one JSON line.
"""

import json
import time

from absl import app, flags

flags.DEFINE_string("src", None, "convert: VAE weights of either layout (directory, .safetensors or .pth).")
flags.DEFINE_string("out", None, "convert: new directory; encode: .npy/.safetensors; decode: .mp4.")
flags.DEFINE_enum("dtype", "fp32", ["fp32", "bf16"], "convert: dtype of the written tensors.")
flags.DEFINE_string("weights", None, "encode/decode: VAE weights (default $DREAMACTOR_WAN_VAE).")
flags.DEFINE_string(
    "config",
    None,
    "VAE preset (wan2.1 | tiny) when the weights have no config.json; with no "
    "weights at all, a randomly initialised VAE of this preset.",
)
flags.DEFINE_enum("compute_dtype", None, ["float32", "bfloat16"], "encode/decode: compute dtype.")
flags.DEFINE_string("video", None, "encode: input video file.")
flags.DEFINE_integer("height", None, "encode: resize (cover) + centre-crop frames to this height.")
flags.DEFINE_integer("width", None, "encode: resize (cover) + centre-crop frames to this width.")
flags.DEFINE_integer("max_frames", None, "encode: read at most this many frames.")
flags.DEFINE_bool("trim", False, "encode: drop trailing frames beyond the last 4k+1.")
flags.DEFINE_bool("tiling", False, "encode/decode: diffusers-style spatial tiling (256-pixel tiles every 192).")
flags.DEFINE_string("latents", None, "decode: latents file (.npy or .safetensors).")
flags.DEFINE_float("fps", 16.0, "decode: frame rate of the written mp4 (Wan2.1: 16).")
FLAGS = flags.FLAGS
COMMANDS = ("convert", "encode", "decode")


def _require(*names):
    missing = [n for n in names if getattr(FLAGS, n) is None]
    if missing:
        raise app.UsageError(f"missing flag(s): {', '.join('--' + n for n in missing)}")


def _codec():
    from dreamactor_jax.codecs import get_codec

    return get_codec(
        "wan_vae", weights=FLAGS.weights, config=FLAGS.config, dtype=FLAGS.compute_dtype, tiling=FLAGS.tiling
    )


def main(argv):
    if len(argv) != 2 or argv[1] not in COMMANDS:
        raise app.UsageError(f"usage: vae.py {{{'|'.join(COMMANDS)}}} --flags...; got {argv[1:]}")
    cmd, t0 = argv[1], time.perf_counter()
    if cmd == "convert":
        from dreamactor_jax.codecs import wan_vae_convert

        _require("src", "out")
        result = wan_vae_convert.convert(FLAGS.src, FLAGS.out, config=FLAGS.config, dtype=FLAGS.dtype)
    elif cmd == "encode":
        from dreamactor_jax.codecs import base

        _require("video", "out")
        lat = base.encode_video_file(
            _codec(), FLAGS.video, height=FLAGS.height, width=FLAGS.width, max_frames=FLAGS.max_frames, trim=FLAGS.trim
        )
        base.save_latents(FLAGS.out, lat)
        result = {"out": FLAGS.out, "latents": list(lat.shape)}
    else:
        from dreamactor_jax.codecs import base

        _require("latents", "out")
        result = base.decode_to_video_file(_codec(), base.load_latents(FLAGS.latents), FLAGS.out, fps=FLAGS.fps)
    print(json.dumps({"command": cmd, **result, "seconds": round(time.perf_counter() - t0, 2)}))


if __name__ == "__main__":
    app.run(main)
