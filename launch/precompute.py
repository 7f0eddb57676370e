"""Pixel records -> latent records with a codec, sharded across processes, resumable.

  python launch/precompute.py --src=DIR --out=DIR --codec=space_to_depth --spatial_factor=2 --latent_channels=16
  python launch/precompute.py --src=DIR --out=DIR --codec=wan_vae --spatial_factor=8 --codec_weights=/ckpt/wan_vae
Process i of n (``--process_index/--process_count``, default: this jax process) handles input shards
i::n; finished output shards are skipped on a re-run. ``--text_dim > 0`` also stores caption embeddings of
the toy text encoder (``--text_len``, ``--seed``); otherwise training encodes captions on the fly.
Processes never talk to each other; the multi-host flags (``--coordinator_address/--num_processes/
--process_id``, the DREAMACTOR_* environment or a detected cluster: parallel/distributed.py) only serve
to learn the process index from ``jax.distributed`` instead of passing it.
"""

from absl import app, flags

from dreamactor_jax.codecs import get_codec
from dreamactor_jax.data.precompute import precompute
from dreamactor_jax.data.text import TextEncoder
from dreamactor_jax.parallel import distributed

flags.DEFINE_string("src", None, "Directory (or glob) of pixel record shards.")
flags.DEFINE_string("out", None, "Output directory for latent record shards.")
flags.DEFINE_string("codec", "space_to_depth", "Codec name (dreamactor_jax.codecs.get_codec).")
flags.DEFINE_integer("spatial_factor", 2, "Codec spatial factor.")
flags.DEFINE_integer("latent_channels", 16, "Codec latent channels.")
flags.DEFINE_string("codec_weights", None, "--codec=wan_vae: a diffusers AutoencoderKLWan directory or Wan2.1_VAE.pth "
                    "(default $DREAMACTOR_WAN_VAE).")
flags.DEFINE_bool("codec_tiling", False, "--codec=wan_vae: encode large frames in overlapping spatial tiles.")
flags.DEFINE_integer("batch_size", 8, "Records per encode call.")
flags.DEFINE_integer("text_len", 512, "Text tokens stored when --text_dim > 0.")
flags.DEFINE_integer("text_dim", 0, "Text embedding width to store (0: store no text).")
flags.DEFINE_integer("seed", 0, "Text encoder seed (must match the training config's seed).")
flags.DEFINE_string("umt5_dir", None, "A local umT5 encoder + tokenizer directory (Wan2.1's text encoder): store its "
                    "caption embeddings (--text_len tokens) instead of the tiny hashing encoder's.")
flags.DEFINE_string("clip_dir", None, "A local CLIP vision checkpoint (Wan2.1-I2V's image encoder): store the "
                    "reference frame's image tokens (penultimate layer) for the I2V image branch.")
flags.DEFINE_integer("pose_augment_variants", 0, "After each record with keypoints, this many variants with the motion "
                     "re-rendered from bone-length-augmented keypoints (offline pose augmentation; --seed seeds them).")
flags.DEFINE_integer("process_index", -1, "This process (-1: jax.process_index()).")
flags.DEFINE_integer("process_count", -1, "Processes (-1: jax.process_count()).")
distributed.define_flags()
flags.mark_flags_as_required(["src", "out"])
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    distributed.initialize_from_flags()  # the one multi-host initialisation all launchers share
    index, count = FLAGS.process_index, FLAGS.process_count
    if index < 0 or count < 0:
        import jax  # processes work independently: jax only tells this process its place

        index, count = jax.process_index(), jax.process_count()
    kwargs = dict(spatial_factor=FLAGS.spatial_factor, latent_channels=FLAGS.latent_channels)
    if FLAGS.codec == "wan_vae":
        kwargs.update(weights=FLAGS.codec_weights, tiling=FLAGS.codec_tiling)
    codec = get_codec(FLAGS.codec, **kwargs)
    if FLAGS.umt5_dir:
        from dreamactor_jax.data.umt5 import UMT5TextEncoder

        text = UMT5TextEncoder(FLAGS.umt5_dir, length=FLAGS.text_len)
    else:
        text = TextEncoder(length=FLAGS.text_len, dim=FLAGS.text_dim, seed=FLAGS.seed) if FLAGS.text_dim > 0 else None
    image = None
    if FLAGS.clip_dir:
        from dreamactor_jax.data.clip_image import CLIPImageEncoder

        image = CLIPImageEncoder(FLAGS.clip_dir)
    r = precompute(FLAGS.src, FLAGS.out, codec, text_encoder=text, image_encoder=image, process_index=index,
                   process_count=count, batch_size=FLAGS.batch_size, augment_variants=FLAGS.pose_augment_variants,
                   seed=FLAGS.seed)
    print(f"process {index}/{count}: wrote {len(r.written)} shards ({r.records} records), {len(r.existing)} already "
          f"complete, {len(r.unreadable)} unreadable inputs, {r.corrupt} corrupt records skipped")


if __name__ == "__main__":
    app.run(main)
