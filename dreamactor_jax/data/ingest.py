"""Real videos + 2D keypoints -> pixel records (``data/records.py``); procedural examples too.

Inputs
  ``videos/``: ``*.mp4`` (also .mov, .mkv, .webm, .avi). Caption: a sidecar ``<stem>.txt`` beside the
  video, else the file name (``a_woman-dancing.mp4`` -> "a woman dancing").
  ``poses/``: 2D keypoints per video, in OpenPose-18, BODY_25, COCO-17 or COCO-WholeBody-133 (DWPose)
  layout, pixel or normalised coordinates, as OpenPose's per-frame JSON, one ``<stem>.json`` or a
  ``<stem>.npy``/``.npz`` array (``data/keypoints.py`` lists the layouts); all are mapped to the
  OpenPose-18 body. A frame without a per-frame JSON file gets ``motion_valid = 0``; a frame with no
  people renders black and stays valid. Joints with confidence below ``min_confidence`` are not drawn.
  Videos without a keypoint file get their poses from ``estimator`` when one is given (an RTMPose / DWPose
  ONNX model, :class:`~dreamactor_jax.data.pose_estimator.PoseEstimator`), run on the source frames the
  clips use; ``poses/`` may then be empty or absent.

Processing
  Frames are decoded with PyAV and resized to cover (height, width) then centre-cropped; keypoints
  follow the same map (:class:`~dreamactor_jax.data.video_io.Fit`) and are drawn in OpenPose's own style
  (joint colours, 17 limbs, black background: :func:`render_openpose`). Frames are taken at ``fps`` (the nearest
  source frame; 0 keeps the source rate), then clips of ``frames`` frames, taking every ``frame_step``-th
  of them, start every ``stride`` of them (default: back to back).
  The reference is the clip's first frame. ``identity_id`` is a stable hash of the video stem (one
  identity per video), ``motion_id`` of (stem, clip start).

A video is skipped with a reason code (``SKIP_REASONS``), counted in ``IngestReport.reasons``, and the
others go on: it does not decode, has no keypoint file, a file that does not parse, a one-file track whose
frame count is not the video's, nobody detected in any frame, or fewer frames than one clip.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import logging
import os
import re
from collections.abc import Iterator, Mapping

import numpy as np

from dreamactor_jax import fs
from dreamactor_jax.data import keypoints as kp_lib
from dreamactor_jax.data import pose_estimator, video_io
from dreamactor_jax.data import records as rec

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi")
OPENPOSE_18 = ("nose", "neck", "r_shoulder", "r_elbow", "r_wrist", "l_shoulder", "l_elbow", "l_wrist", "r_hip",
               "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle", "r_eye", "l_eye", "r_ear", "l_ear")
# OpenPose's COCO limb pairs as a tree rooted at the neck. The nose's parent (neck) comes after it, so this
# table is not parent-first ordered (pipeline.AugmentPose reorders it for the bone augmentation).
OPENPOSE_18_PARENTS = np.array([1, -1, 1, 2, 3, 1, 5, 6, 1, 8, 9, 1, 11, 12, 0, 0, 14, 15], np.int32)
BODY_25_TO_18 = kp_lib.BODY_25_TO_18


@dataclasses.dataclass(frozen=True)
class IngestConfig:
    """Clip cutting and rendering settings.

    Attributes:
      frames: frames per clip.
      height, width: output size (cover-resize + centre crop).
      stride: source frames between clip starts (0: ``frames * frame_step``, clips back to back).
      frame_step: take every n-th source frame.
      max_people: people drawn per frame (highest mean confidence first).
      min_confidence: joints below it are not drawn; a video with no joint at or above it has no person.
      fps: frame rate clips are cut at (nearest source frame; Wan trains at 16); 0 keeps the source rate.
    """

    frames: int = 17
    height: int = 64
    width: int = 64
    stride: int = 0
    frame_step: int = 1
    max_people: int = 4
    min_confidence: float = 0.05
    fps: float = 0.0

    @property
    def span(self) -> int:
        return (self.frames - 1) * self.frame_step + 1

    @property
    def start_step(self) -> int:
        return self.stride or self.frames * self.frame_step


# Why a video is skipped (the code starts its reason; IngestReport.reasons counts them).
SKIP_REASONS = ("undecodable_video", "no_keypoints", "bad_keypoints", "keypoints_length", "no_person", "too_short")


class SkipVideo(Exception):
    """A video that cannot become clips; ``code`` is one of ``SKIP_REASONS``."""

    def __init__(self, code: str, detail: str):
        super().__init__(f"{code}: {detail}")
        self.code = code


@dataclasses.dataclass
class IngestReport:
    """What an ingestion wrote and what it skipped: (path, ``"<code>: <detail>"``), code in ``SKIP_REASONS``."""

    files: list = dataclasses.field(default_factory=list)
    clips: int = 0
    videos: int = 0
    skipped: list = dataclasses.field(default_factory=list)

    @property
    def reasons(self) -> dict[str, int]:
        """Skipped videos per reason code."""
        out: dict[str, int] = {}
        for _, why in self.skipped:
            code = why.split(":", 1)[0]
            out[code] = out.get(code, 0) + 1
        return out


def stable_id(*parts) -> int:
    """A non-negative int63 from the parts' text: equal on every machine and run."""
    digest = hashlib.blake2b(":".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def caption_for(video_path: str) -> str:
    """The sidecar ``<stem>.txt`` if present, else the file stem with ``_``/``-`` as spaces."""
    stem, _ = os.path.splitext(video_path)
    if fs.exists(stem + ".txt"):
        return " ".join(fs.read_text(stem + ".txt").split())
    return " ".join(re.split(r"[_\-\s]+", os.path.basename(stem))).strip()


def parse_people(frame_obj: dict) -> np.ndarray:
    """One frame object (OpenPose ``pose_keypoints_2d`` or any format's ``keypoints``) -> (P, 18, 3) float32."""
    people, fmt = kp_lib.frame_people(frame_obj, None, "frame")
    return kp_lib.to_openpose18(people, fmt) if people.size else np.zeros((0, 18, 3), np.float32)


def pose_track(frames: Mapping[int, np.ndarray], indices: np.ndarray, max_people: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """Keypoints of the given track frames: ((T, S, 18, 3) with S = max_people, (T,) has-keypoints flags)."""
    kp = np.zeros((len(indices), max_people, 18, 3), np.float32)
    have = np.zeros((len(indices),), np.float32)
    for t, i in enumerate(indices):
        if int(i) not in frames:
            continue
        have[t] = 1.0
        people = frames[int(i)]
        order = np.argsort(-people[:, :, 2].mean(1), kind="stable")[:max_people]
        kp[t, : len(order)] = people[order]
    return kp, have


def render_openpose(kp_ts183: np.ndarray, height: int, width: int, min_confidence: float = 0.05) -> np.ndarray:
    """Skeleton frames (T, H, W, 3) float32 [-1, 1] of OpenPose-18 keypoints in target pixels, drawn the way
    OpenPose and ControlNet's openpose conditions are (:func:`~dreamactor_jax.data.keypoints.draw_openpose`:
    its 18 joint colours and 17 limbs on black), so clips look like the pose images of the ecosystem's tools."""
    return rec.uint8_to_pixels(kp_lib.draw_openpose(kp_ts183, height, width, min_confidence))


def clip_starts(num_frames: int, cfg: IngestConfig) -> range:
    """Source-frame indices where the clips of a ``num_frames``-frame video start."""
    return range(0, max(num_frames - cfg.span + 1, 0), cfg.start_step)


def estimate_track(video_path: str, estimator, info: video_io.VideoInfo, cfg: IngestConfig) -> kp_lib.Track:
    """Runs ``estimator`` (frame (H, W, 3) uint8 -> (P, K, 3)) on the source frames the ``cfg.fps`` timeline
    uses; the track holds every decoded frame (frames the timeline skips have no people)."""
    frames: dict[int, np.ndarray] = {}
    k, fmt = 0, None
    try:
        for i, frame in enumerate(video_io.iter_frames(video_path)):
            people = np.zeros((0, 18, 3), np.float32)
            if kp_lib.source_frame(k, info.fps, cfg.fps) == i:
                people, found = pose_estimator.frame_openpose18(estimator, frame, f"pose estimator on {video_path}")
                fmt = fmt or found
            while kp_lib.source_frame(k, info.fps, cfg.fps) <= i:
                k += 1
            frames[i] = people
    except video_io.VideoError as e:
        raise SkipVideo("undecodable_video", str(e)) from e
    except kp_lib.KeypointFileError as e:  # an estimator output of no known layout
        raise SkipVideo("bad_keypoints", str(e)) from e
    return kp_lib.Track(frames, len(frames), fmt or "openpose18", 0.0, f"pose estimator on {video_path}")


def _track(video_path: str, poses_dir: str, info: video_io.VideoInfo, cfg: IngestConfig, estimator=None
           ) -> kp_lib.Track:
    """The video's keypoint track, checked: raises :class:`SkipVideo` (no file, unreadable, wrong length, nobody).

    The keypoint file wins; without one, ``estimator`` (if given) extracts the poses from the video.
    """
    stem = os.path.splitext(os.path.basename(video_path))[0]
    try:
        track = kp_lib.read_track(poses_dir, stem, (info.height, info.width)) if poses_dir else None
    except kp_lib.KeypointFileError as e:
        raise SkipVideo("bad_keypoints", str(e)) from e
    if track is None and estimator is not None:
        track = estimate_track(video_path, estimator, info, cfg)
    elif track is None:
        raise SkipVideo("no_keypoints", f"no keypoints for {video_path} in {poses_dir or '(no poses dir)'} "
                                        f"(expected {stem}.json, {stem}.npy/.npz or "
                                        f"{stem}_<frame:012d>_keypoints.json) and no pose estimator")
    if track.source.startswith("pose estimator"):
        pass  # one entry per decoded frame by construction
    elif not track.source.endswith("_keypoints.json"):  # one file for the whole video: its length must match
        n = video_io.count_frames(video_path)
        want = round(n * track.fps / info.fps) if track.fps and info.fps else n
        if abs(track.length - want) > (1 if track.fps else 0):
            raise SkipVideo("keypoints_length", f"{track.source} has {track.length} frames, the video {n}"
                            + (f" ({want} at the track's {track.fps:g} fps)" if track.fps else ""))
    if not track.detected(cfg.min_confidence):
        raise SkipVideo("no_person", f"{track.source}: no joint with confidence >= {cfg.min_confidence} in "
                                     f"any of {track.length} frames")
    return track


def video_clips(video_path: str, poses_dir: str, cfg: IngestConfig, estimator=None) -> Iterator[dict]:
    """Pixel records of one video's clips, streaming (memory: about one clip span of frames).

    Frames are taken at ``cfg.fps`` (nearest source frame; 0: every source frame), then every
    ``frame_step``-th of those makes a clip.

    Raises:
      SkipVideo: the video is not decodable, or its keypoints are missing, unreadable, of the wrong length or
        never show a person (clips yielded before a decode error stay valid).
    """
    stem = os.path.splitext(os.path.basename(video_path))[0]
    try:
        info = video_io.probe(video_path)
    except video_io.VideoError as e:
        raise SkipVideo("undecodable_video", str(e)) from e
    track = _track(video_path, poses_dir, info, cfg, estimator)
    ratio = track.fps / info.fps if track.fps and info.fps else 1.0  # track frame per source frame
    fitmap = video_io.fit(info.height, info.width, cfg.height, cfg.width)
    caption, identity = caption_for(video_path), stable_id(stem)
    buffer: dict[int, tuple[np.ndarray, int]] = {}  # timeline index -> (frame, track index)
    start = k = 0
    try:
        for i, frame in enumerate(video_io.iter_frames(video_path, cfg.height, cfg.width)):
            # The timeline frames (at cfg.fps) this source frame stands for: 0, 1 or more.
            while kp_lib.source_frame(k, info.fps, cfg.fps) == i:
                if k >= start:  # frames before the next clip's start are never needed again
                    buffer[k] = (frame, round(i * ratio))
                k += 1
            while start + cfg.span - 1 < k:  # the clip starting at `start` is complete
                idx = start + cfg.frame_step * np.arange(cfg.frames)
                frames = np.stack([buffer[int(j)][0] for j in idx])
                yield _clip_record(frames, np.array([buffer[int(j)][1] for j in idx]), track.frames, fitmap, cfg,
                                   caption, identity, stable_id(stem, start))
                start += cfg.start_step
                buffer = {j: f for j, f in buffer.items() if j >= start}
    except video_io.VideoError as e:
        raise SkipVideo("undecodable_video", str(e)) from e


def _clip_record(frames_thw3, idx, track_frames, fitmap, cfg, caption, identity, motion_id) -> dict:
    kp, have = pose_track(track_frames, idx, cfg.max_people)
    kp[..., :2] = fitmap.points(kp[..., :2])
    kp[kp[..., 2] <= 0] = 0.0  # undetected joints and empty person slots: all zero, not the mapped origin
    motion = render_openpose(kp, cfg.height, cfg.width, cfg.min_confidence)
    return dict(kind="pixels", target=frames_thw3, reference=frames_thw3[:1].copy(),
                motion=rec.pixels_to_uint8(motion), motion_valid=have, caption=caption, identity_id=identity,
                motion_id=motion_id, keypoints=kp.astype(np.float32))


def procedural_record(example: Mapping, stage: int = 1) -> dict:
    """A procedural example (``make_example``) as a pixels record: target, reference, motion, caption, ids.

    Stage 1 drives with the pose render, stage 2 with the cross-identity clip (as ``training_fields``).
    """
    motion = example["pose_video"] if stage == 1 else example["cross_video"]
    return dict(kind="pixels", target=rec.pixels_to_uint8(example["video"]),
                reference=rec.pixels_to_uint8(example["reference"])[None], motion=rec.pixels_to_uint8(motion),
                motion_valid=np.ones(len(example["video"]), np.float32), caption=example["caption"],
                identity_id=int(example["identity_id"]), motion_id=int(example["motion_id"]))


def find_videos(videos_dir: str) -> list[str]:
    if not os.path.isdir(videos_dir):
        raise FileNotFoundError(f"videos directory {videos_dir} does not exist")
    return sorted(p for p in glob.glob(os.path.join(glob.escape(videos_dir), "*"))
                  if p.lower().endswith(VIDEO_EXTENSIONS))


def ingest(videos_dir: str, poses_dir: str, out_dir: str, cfg: IngestConfig = IngestConfig(), *,
           name: str = "clips", shard_size: int = 64, estimator=None) -> IngestReport:
    """Writes pixel records ``out_dir/<name>-XXXXX-of-NNNNN.array_record`` from videos + keypoints.

    Args:
      videos_dir, poses_dir: inputs (see module docstring); ``poses_dir`` may be "" (or absent) with an estimator.
      estimator: poses for videos without a keypoint file (``pose_estimator.PoseEstimator`` or any callable
        frame (H, W, 3) uint8 -> (P, K, 3) pixel keypoints); None: such videos are skipped (``no_keypoints``).
      out_dir: created if missing.
      cfg: clip length, size, stride.
      name: file name prefix.
      shard_size: records per file.

    Returns:
      An :class:`IngestReport`; videos that failed are listed in ``skipped`` with the reason (and logged).
    """
    if poses_dir and not os.path.isdir(poses_dir):
        if estimator is None:
            raise FileNotFoundError(f"poses directory {poses_dir} does not exist (and no pose estimator is given)")
        poses_dir = ""
    if not poses_dir and estimator is None:
        raise ValueError("ingest: neither a poses directory nor a pose estimator; give at least one")
    videos = find_videos(videos_dir)
    if not videos:
        raise FileNotFoundError(f"no videos ({', '.join(VIDEO_EXTENSIONS)}) in {videos_dir}")
    report = IngestReport()
    writer = rec.ShardedWriter(os.path.join(out_dir, name), shard_size)
    for path in videos:
        n = 0
        try:
            for clip in video_clips(path, poses_dir, cfg, estimator):
                writer.write(clip)
                n += 1
        except SkipVideo as e:
            reason = str(e) + (f" (kept the {n} clips before the error)" if n else "")
            log.warning("skipping %s: %s", path, reason)
            report.skipped.append((path, reason))
        else:
            if n == 0:
                report.skipped.append((path, f"too_short: shorter than one clip ({cfg.span} frames at "
                                             f"{cfg.fps or 'the source'} fps)"))
        report.clips += n
        report.videos += n > 0
    if writer.count == 0:
        writer.close()
        raise ValueError(f"no clips written from {videos_dir}; skipped: {report.skipped}")
    report.files = writer.close()
    return report
