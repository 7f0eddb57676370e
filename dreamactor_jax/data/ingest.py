"""Real videos + OpenPose keypoints -> pixel records (``data/records.py``); procedural examples too.

Inputs
  ``videos/``: ``*.mp4`` (also .mov, .mkv, .webm, .avi). Caption: a sidecar ``<stem>.txt`` beside the
  video, else the file name (``a_woman-dancing.mp4`` -> "a woman dancing").
  ``poses/``: 2D keypoints in OpenPose's JSON layout ``{"people": [{"pose_keypoints_2d": [x, y, c, ...]}]}``
  with 18 (COCO / BODY_18) or 25 (BODY_25, mapped to 18) keypoints per person, pixel coordinates of
  the source video. Per video, either
    * OpenPose's own output, one file per frame: ``<stem>_<frame:012d>_keypoints.json``, directly in
      ``poses/`` or in ``poses/<stem>/``; or
    * one file ``poses/<stem>.json`` holding a list of such per-frame objects (frame order), or
      ``{"frames": [...]}`` with that list.
  A frame without a JSON file gets ``motion_valid = 0``; a JSON with no people renders black and stays
  valid (OpenPose saw nobody). Joints with confidence below ``min_confidence`` are not drawn.

Processing
  Frames are decoded with PyAV and resized to cover (height, width) then centre-cropped; keypoints
  follow the same map (:class:`~dreamactor_jax.data.video_io.Fit`) and are drawn with the project's
  ``render_pose`` on the 18-joint OpenPose tree (neck root). Clips of ``frames`` frames, taking every
  ``frame_step``-th source frame, start every ``stride`` source frames (default: back to back).
  The reference is the clip's first frame. ``identity_id`` is a stable hash of the video stem (one
  identity per video), ``motion_id`` of (stem, clip start).

A video that does not decode or has no keypoints is reported and skipped; the others go on.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterator, Mapping

import numpy as np

from dreamactor_jax.data import records as rec
from dreamactor_jax.data import video_io
from dreamactor_jax.data.procedural import characters as chars
from dreamactor_jax.data.procedural import render

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi")
OPENPOSE_18 = ("nose", "neck", "r_shoulder", "r_elbow", "r_wrist", "l_shoulder", "l_elbow", "l_wrist", "r_hip",
               "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle", "r_eye", "l_eye", "r_ear", "l_ear")
# OpenPose's COCO limb pairs as a tree rooted at the neck. The nose's parent (neck) comes after it, so
# this table is not parent-first ordered; render_pose does not need that (the bone augmentation would).
OPENPOSE_18_PARENTS = np.array([1, -1, 1, 2, 3, 1, 5, 6, 1, 8, 9, 1, 11, 12, 0, 0, 14, 15], np.int32)
# Role of the bone ending at each joint: (group, side), sides +1 right / -1 left as in characters.py,
# so a right forearm gets the same colour as a procedural character's right forearm.
_ROLE_NAMES = [("nose", 0), ("neck", 0), ("shoulder", 1), ("arm_upper", 1), ("arm_lower", 1), ("shoulder", -1),
               ("arm_upper", -1), ("arm_lower", -1), ("hip", 1), ("leg_upper", 1), ("leg_lower", 1), ("hip", -1),
               ("leg_upper", -1), ("leg_lower", -1), ("head", 0), ("head", 0), ("ear", 1), ("ear", -1)]
OPENPOSE_18_ROLES = np.array([chars.ROLE_INDEX[r] for r in _ROLE_NAMES], np.int32)
BODY_25_TO_18 = np.array([0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18])


@dataclasses.dataclass(frozen=True)
class IngestConfig:
    """Clip cutting and rendering settings.

    Attributes:
      frames: frames per clip.
      height, width: output size (cover-resize + centre crop).
      stride: source frames between clip starts (0: ``frames * frame_step``, clips back to back).
      frame_step: take every n-th source frame.
      max_people: people drawn per frame (highest mean confidence first).
      min_confidence: joints below it are not drawn.
    """

    frames: int = 17
    height: int = 64
    width: int = 64
    stride: int = 0
    frame_step: int = 1
    max_people: int = 4
    min_confidence: float = 0.05

    @property
    def span(self) -> int:
        return (self.frames - 1) * self.frame_step + 1

    @property
    def start_step(self) -> int:
        return self.stride or self.frames * self.frame_step


@dataclasses.dataclass
class IngestReport:
    """What an ingestion wrote and what it skipped (path, reason)."""

    files: list = dataclasses.field(default_factory=list)
    clips: int = 0
    videos: int = 0
    skipped: list = dataclasses.field(default_factory=list)


def stable_id(*parts) -> int:
    """A non-negative int63 from the parts' text: equal on every machine and run."""
    digest = hashlib.blake2b(":".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def caption_for(video_path: str) -> str:
    """The sidecar ``<stem>.txt`` if present, else the file stem with ``_``/``-`` as spaces."""
    stem, _ = os.path.splitext(video_path)
    if os.path.exists(stem + ".txt"):
        with open(stem + ".txt") as f:
            return " ".join(f.read().split())
    return " ".join(re.split(r"[_\-\s]+", os.path.basename(stem))).strip()


def parse_people(frame_obj: dict) -> np.ndarray:
    """One OpenPose frame object -> (P, 18, 3) float32 (x, y, confidence), BODY_25 mapped to 18."""
    people = []
    for person in frame_obj.get("people", []):
        kp = np.asarray(person.get("pose_keypoints_2d", []), np.float32)
        if kp.size == 25 * 3:
            kp = kp.reshape(25, 3)[BODY_25_TO_18]
        elif kp.size == 18 * 3:
            kp = kp.reshape(18, 3)
        else:
            raise ValueError(f"pose_keypoints_2d has {kp.size} values; expected 18*3 (COCO) or 25*3 (BODY_25)")
        people.append(kp)
    return np.stack(people) if people else np.zeros((0, 18, 3), np.float32)


def find_pose_frames(poses_dir: str, stem: str) -> dict[int, dict] | None:
    """frame index -> OpenPose frame object for one video, or None when it has no keypoint files."""
    single = os.path.join(poses_dir, stem + ".json")
    if os.path.exists(single):
        with open(single) as f:
            data = json.load(f)
        frames = data["frames"] if isinstance(data, dict) else data
        return dict(enumerate(frames))
    pattern = re.compile(re.escape(stem) + r"_(\d{12})_keypoints\.json$")
    out = {}
    for d in (poses_dir, os.path.join(poses_dir, stem)):
        for path in glob.glob(os.path.join(glob.escape(d), f"{glob.escape(stem)}_*_keypoints.json")):
            m = pattern.search(os.path.basename(path))
            if m:
                with open(path) as f:
                    out[int(m.group(1))] = json.load(f)
    return out or None


def pose_track(frame_objs: dict[int, dict], indices: np.ndarray, max_people: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """Keypoints of the given source frames: ((T, S, 18, 3) with S = max_people, (T,) has-JSON flags)."""
    kp = np.zeros((len(indices), max_people, 18, 3), np.float32)
    have = np.zeros((len(indices),), np.float32)
    for t, i in enumerate(indices):
        if int(i) not in frame_objs:
            continue
        have[t] = 1.0
        people = parse_people(frame_objs[int(i)])
        order = np.argsort(-people[:, :, 2].mean(1), kind="stable")[:max_people]
        kp[t, : len(order)] = people[order]
    return kp, have


def render_openpose(kp_ts183: np.ndarray, height: int, width: int, min_confidence: float = 0.05) -> np.ndarray:
    """OpenPose-style skeleton frames (T, H, W, 3) float32 [-1, 1] of keypoints in target pixels.

    ``render_pose`` takes one joint mask per clip, but real joints come and go per frame: frames are
    grouped by their visibility pattern and each group is drawn in one call. A visible joint whose
    parent is hidden is drawn as a dot (its parent set to -1).
    """
    t, s = kp_ts183.shape[:2]
    visible = kp_ts183[..., 2] >= max(min_confidence, 1e-6)  # (T, S, 18); confidence 0 = not detected
    out = np.full((t, height, width, 3), -1.0, np.float32)
    patterns, group = np.unique(visible.reshape(t, -1), axis=0, return_inverse=True)
    roles = np.broadcast_to(OPENPOSE_18_ROLES, (s, 18))
    for g, pattern in enumerate(patterns):
        frames = np.nonzero(group.reshape(-1) == g)[0]
        mask = pattern.reshape(s, 18)
        if not mask.any():
            continue
        par = np.broadcast_to(OPENPOSE_18_PARENTS, (s, 18)).copy()
        par[(par >= 0) & ~np.take_along_axis(mask, np.maximum(par, 0), 1)] = -1
        out[frames] = render.render_pose(kp_ts183[frames, ..., :2], par, roles, mask.astype(np.float32),
                                         height, width)
    return out


def clip_starts(num_frames: int, cfg: IngestConfig) -> range:
    """Source-frame indices where the clips of a ``num_frames``-frame video start."""
    return range(0, max(num_frames - cfg.span + 1, 0), cfg.start_step)


def video_clips(video_path: str, poses_dir: str, cfg: IngestConfig) -> Iterator[dict]:
    """Pixel records of one video's clips, streaming (memory: about one clip span of frames).

    Raises:
      video_io.VideoError: undecodable video (clips yielded before the error stay valid).
      FileNotFoundError: no keypoint files for the video.
    """
    stem = os.path.splitext(os.path.basename(video_path))[0]
    frame_objs = find_pose_frames(poses_dir, stem)
    if frame_objs is None:
        raise FileNotFoundError(f"no keypoints for {video_path} in {poses_dir} (expected {stem}.json or "
                                f"{stem}_<frame:012d>_keypoints.json)")
    info = video_io.probe(video_path)
    fitmap = video_io.fit(info.height, info.width, cfg.height, cfg.width)
    caption, identity = caption_for(video_path), stable_id(stem)
    buffer: dict[int, np.ndarray] = {}
    start = 0
    for i, frame in enumerate(video_io.iter_frames(video_path, cfg.height, cfg.width)):
        if i >= start:  # frames before the next clip's start are never needed again
            buffer[i] = frame
        while start + cfg.span - 1 <= i:  # the clip starting at `start` is complete
            idx = start + cfg.frame_step * np.arange(cfg.frames)
            yield _clip_record(np.stack([buffer[int(j)] for j in idx]), idx, frame_objs, fitmap, cfg, caption,
                               identity, stable_id(stem, start))
            start += cfg.start_step
            buffer = {j: f for j, f in buffer.items() if j >= start}


def _clip_record(frames_thw3, idx, frame_objs, fitmap, cfg, caption, identity, motion_id) -> dict:
    kp, have = pose_track(frame_objs, idx, cfg.max_people)
    kp[..., :2] = fitmap.points(kp[..., :2])
    motion = render_openpose(kp, cfg.height, cfg.width, cfg.min_confidence)
    return dict(kind="pixels", target=frames_thw3, reference=frames_thw3[:1].copy(),
                motion=rec.pixels_to_uint8(motion), motion_valid=have, caption=caption, identity_id=identity,
                motion_id=motion_id)


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
           name: str = "clips", shard_size: int = 64) -> IngestReport:
    """Writes pixel records ``out_dir/<name>-XXXXX-of-NNNNN.array_record`` from videos + OpenPose JSON.

    Args:
      videos_dir, poses_dir: inputs (see module docstring).
      out_dir: created if missing.
      cfg: clip length, size, stride.
      name: file name prefix.
      shard_size: records per file.

    Returns:
      An :class:`IngestReport`; videos that failed are listed in ``skipped`` with the reason (and logged).
    """
    if not os.path.isdir(poses_dir):
        raise FileNotFoundError(f"poses directory {poses_dir} does not exist")
    videos = find_videos(videos_dir)
    if not videos:
        raise FileNotFoundError(f"no videos ({', '.join(VIDEO_EXTENSIONS)}) in {videos_dir}")
    report = IngestReport()
    writer = rec.ShardedWriter(os.path.join(out_dir, name), shard_size)
    for path in videos:
        n = 0
        try:
            for clip in video_clips(path, poses_dir, cfg):
                writer.write(clip)
                n += 1
        except (video_io.VideoError, FileNotFoundError, ValueError, KeyError, json.JSONDecodeError) as e:
            reason = f"{type(e).__name__}: {e}" + (f" (kept the {n} clips before the error)" if n else "")
            log.warning("skipping %s: %s", path, reason)
            report.skipped.append((path, reason))
        else:
            if n == 0:
                report.skipped.append((path, f"shorter than one clip ({cfg.span} frames)"))
        report.clips += n
        report.videos += n > 0
    if writer.count == 0:
        writer.close()
        raise ValueError(f"no clips written from {videos_dir}; skipped: {report.skipped}")
    report.files = writer.close()
    return report
