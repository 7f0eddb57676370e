"""Real videos + keypoints (files, or extracted with an RTMPose / DWPose ONNX model) -> pixel records.

  python launch/ingest.py --videos=DIR --poses=DIR --out=DIR --frames=17 --height=64 --width=64 --stride=8
  python launch/ingest.py --videos=DIR --pose_model=dw-ll_ucoco_384.onnx --detector=yolox_l.onnx --out=DIR --fps=16
(pose extraction needs the ``pose`` extra: ``pip install -e '.[pose]'``; see dreamactor_jax/data/pose_estimator.py
for where the weights come from.)
Input layout, clip cutting and captions: see ``dreamactor_jax/data/ingest.py``. Then either train on the
pixel records (``--config.data.source=records --config.data.records_dir=DIR``) or turn them into latents
with ``launch/precompute.py``.
"""

from absl import app, flags, logging

from dreamactor_jax.data import pose_estimator
from dreamactor_jax.data.ingest import IngestConfig, ingest

flags.DEFINE_string("videos", None, "Directory of videos (*.mp4, *.mov, *.mkv, *.webm, *.avi).")
flags.DEFINE_string("poses", "", "Directory of keypoints per video: OpenPose JSON (per-frame files or one list per "
                    "video), <stem>.json with COCO-17 / WholeBody-133 / BODY_25 people, or <stem>.npy/.npz arrays "
                    "(see dreamactor_jax/data/keypoints.py). Videos without a file use --pose_model.")
flags.DEFINE_string("pose_model", "", "RTMPose / DWPose SimCC ONNX file (COCO-17 or WholeBody-133) that extracts "
                    "poses for videos without a keypoint file.")
flags.DEFINE_string("detector", "", "YOLOX person detector ONNX file for --pose_model (mmdeploy end2end or raw head); "
                    "'' takes the whole frame as one person box.")
flags.DEFINE_integer("pose_threads", 0, "onnxruntime threads for pose extraction (0: its default).")
flags.DEFINE_string("out", None, "Output directory for the record shards.")
flags.DEFINE_string("name", "clips", "Shard file name prefix.")
flags.DEFINE_integer("frames", 17, "Frames per clip.")
flags.DEFINE_integer("height", 64, "Output height (cover-resize + centre crop).")
flags.DEFINE_integer("width", 64, "Output width.")
flags.DEFINE_integer("stride", 0, "Source frames between clip starts (0: clips back to back).")
flags.DEFINE_integer("frame_step", 1, "Take every n-th source frame.")
flags.DEFINE_integer("max_people", 4, "People drawn per frame.")
flags.DEFINE_float("min_confidence", 0.05, "Keypoints below this confidence are not drawn.")
flags.DEFINE_float("fps", 0.0, "Frame rate clips are cut at (nearest source frame; Wan: 16); 0 keeps the source's.")
flags.DEFINE_integer("shard_size", 64, "Records per shard file.")
flags.mark_flags_as_required(["videos", "out"])
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    cfg = IngestConfig(frames=FLAGS.frames, height=FLAGS.height, width=FLAGS.width, stride=FLAGS.stride,
                       frame_step=FLAGS.frame_step, max_people=FLAGS.max_people, min_confidence=FLAGS.min_confidence,
                       fps=FLAGS.fps)
    if not FLAGS.poses and not FLAGS.pose_model:
        raise app.UsageError("give --poses (keypoint files), --pose_model (extract poses), or both")
    est = None
    if FLAGS.pose_model:
        est = pose_estimator.PoseEstimator(FLAGS.pose_model, FLAGS.detector or None,
                                           pose_estimator.EstimatorConfig(max_people=FLAGS.max_people),
                                           threads=FLAGS.pose_threads)
    report = ingest(FLAGS.videos, FLAGS.poses, FLAGS.out, cfg, name=FLAGS.name, shard_size=FLAGS.shard_size,
                    estimator=est)
    for path, reason in report.skipped:
        logging.warning("skipped %s: %s", path, reason)
    print(f"wrote {report.clips} clips from {report.videos} videos into {len(report.files)} shards in {FLAGS.out}; "
          f"skipped {len(report.skipped)} videos {report.reasons}")


if __name__ == "__main__":
    app.run(main)
