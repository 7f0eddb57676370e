"""2D keypoint tracks in the layouts pose tools write, as the OpenPose-18 body ingestion renders.

Formats (``FORMATS``); a file may name its own (``"format"``), otherwise the joint count decides:

  ``openpose18``    OpenPose COCO / BODY_18 order, 18 joints (neck at index 1).
  ``openpose25``    OpenPose BODY_25, 25 joints; the 18 body joints are kept (mid-hip and feet dropped).
  ``coco17``        COCO-17 order (MMPose, RTMPose, ViTPose, YOLO-pose, Detectron2): 17 joints; the neck,
                    which COCO lacks, is the shoulders' midpoint with the lower of their confidences.
  ``wholebody133``  COCO-WholeBody / DWPose, 133 joints: 17 body (COCO order), 6 feet, 68 face, 2 x 21
                    hands. The body is mapped as ``coco17``.

Files per video (``<stem>`` is the video's file name without extension):

  * OpenPose's own per-frame output ``<stem>_<frame:012d>_keypoints.json`` (in ``poses/`` or
    ``poses/<stem>/``), or ``<stem>.json`` with a list of such frame objects (or ``{"frames": [...]}``);
    a frame object's people hold ``pose_keypoints_2d`` (OpenPose) or ``keypoints`` (any format), flat
    ``[x, y, c, ...]`` or nested ``[[x, y, c], ...]``;
  * ``<stem>.npy`` (or ``.npz`` with array ``keypoints``): ``(T, J, 3)`` or ``(T, P, J, 3)`` of (x, y,
    confidence) per frame, person and joint.

A ``<stem>.json`` object may also say ``"coordinates": "normalized"`` (x / width, y / height in [0, 1];
default ``"pixels"`` of the source video) and ``"fps"`` (the track's frame rate when it is not the video's).
A ``.npy``/``.npz`` track whose coordinates all lie in [0, 1] is read as normalised.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import re

import numpy as np

FORMATS = ("openpose18", "openpose25", "coco17", "wholebody133")
JOINTS = {"openpose18": 18, "openpose25": 25, "coco17": 17, "wholebody133": 133}
BODY_25_TO_18 = np.array([0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18])
# OpenPose-18 joint k <- COCO-17 joint COCO_TO_18[k]; -1 marks the neck (built from the shoulders).
# COCO: nose, l_eye, r_eye, l_ear, r_ear, l_shoulder, r_shoulder, l_elbow, r_elbow, l_wrist, r_wrist,
# l_hip, r_hip, l_knee, r_knee, l_ankle, r_ankle.
COCO_TO_18 = np.array([0, -1, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3])


class KeypointFileError(ValueError):
    """A keypoint file that cannot be read as a track (names the file and what is wrong)."""


@dataclasses.dataclass(frozen=True)
class Track:
    """A video's keypoints in OpenPose-18 order.

    Attributes:
      frames: source frame index -> (P, 18, 3) float32 (x, y, confidence) in source pixels.
      length: frames the file describes (per-frame files: the highest index + 1).
      fmt: the file's format (one of ``FORMATS``).
      fps: the track's own frame rate if the file gives one (0: the video's).
      source: the file (or directory pattern) it came from, for messages.
    """

    frames: dict[int, np.ndarray]
    length: int
    fmt: str
    fps: float
    source: str

    def detected(self, min_confidence: float) -> bool:
        """Whether any frame has any joint at or above ``min_confidence``."""
        return any(p.size and float(p[..., 2].max()) >= min_confidence for p in self.frames.values())


def detect_format(num_joints: int, where: str) -> str:
    for fmt, n in JOINTS.items():
        if n == num_joints:
            return fmt
    raise KeypointFileError(f"{where}: {num_joints} joints per person; expected one of "
                            f"{ {f: n for f, n in JOINTS.items()} }")


def to_openpose18(kp_pj3: np.ndarray, fmt: str) -> np.ndarray:
    """(P, J, 3) keypoints of ``fmt`` -> (P, 18, 3) in OpenPose-18 order."""
    kp = np.asarray(kp_pj3, np.float32)
    if fmt == "openpose18":
        return kp
    if fmt == "openpose25":
        return kp[:, BODY_25_TO_18]
    if fmt in ("coco17", "wholebody133"):
        body = kp[:, :17]
        out = body[:, np.maximum(COCO_TO_18, 0)].copy()
        ls, rs = body[:, 5], body[:, 6]
        out[:, 1, :2] = 0.5 * (ls[:, :2] + rs[:, :2])
        out[:, 1, 2] = np.minimum(ls[:, 2], rs[:, 2])
        return out
    raise KeypointFileError(f"unknown keypoint format {fmt!r}; known: {FORMATS}")


def frame_people(frame_obj, fmt: str | None, where: str) -> tuple[np.ndarray, str | None]:
    """One frame object -> ((P, J, 3) in the file's format, format)."""
    people = []
    for person in frame_obj.get("people", []) if isinstance(frame_obj, dict) else frame_obj:
        raw = person.get("pose_keypoints_2d", person.get("keypoints")) if isinstance(person, dict) else person
        kp = np.asarray(raw if raw is not None else [], np.float32)
        if kp.ndim == 1:
            if kp.size % 3:
                raise KeypointFileError(f"{where}: a person has {kp.size} values, not a multiple of 3 (x, y, c)")
            kp = kp.reshape(-1, 3)
        if kp.ndim != 2 or kp.shape[1] != 3:
            raise KeypointFileError(f"{where}: a person's keypoints have shape {kp.shape}; expected (J, 3)")
        fmt = fmt or detect_format(kp.shape[0], where)
        if kp.shape[0] != JOINTS[fmt]:
            raise KeypointFileError(f"{where}: {kp.shape[0]} joints per person but format {fmt!r} has "
                                    f"{JOINTS[fmt]}")
        people.append(kp)
    return (np.stack(people) if people else np.zeros((0, JOINTS.get(fmt or "", 18), 3), np.float32)), fmt


def _from_objects(objs: list, fmt: str | None, where: str, scale: tuple[float, float] | None) -> dict:
    frames = {}
    for i, obj in enumerate(objs):
        kp, fmt = frame_people(obj, fmt, f"{where} frame {i}")
        frames[i] = kp
    return _finish(frames, fmt or "openpose18", where, scale)


def _finish(frames: dict, fmt: str, where: str, scale: tuple[float, float] | None) -> dict:
    out = {}
    for i, kp in frames.items():
        kp = to_openpose18(kp, fmt) if kp.size else np.zeros((0, 18, 3), np.float32)
        if scale is not None and kp.size:
            kp = kp.copy()
            kp[..., 0] *= scale[0]
            kp[..., 1] *= scale[1]
        out[i] = kp.astype(np.float32)
    return out


def read_track(poses_dir: str, stem: str, source_size: tuple[int, int]) -> Track | None:
    """The keypoint track of video ``stem`` (see the module docstring), or None when there is no file.

    Args:
      source_size: (height, width) of the video, for normalised coordinates.

    Raises:
      KeypointFileError: a file that does not parse as keypoints (names the file and the problem).
    """
    h, w = source_size
    for ext in (".npy", ".npz"):
        path = os.path.join(poses_dir, stem + ext)
        if os.path.exists(path):
            try:
                arr = np.load(path)
                arr = arr["keypoints"] if ext == ".npz" else arr
            except (OSError, ValueError, KeyError) as e:
                raise KeypointFileError(f"{path}: {e}") from e
            arr = np.asarray(arr, np.float32)
            if arr.ndim == 3:
                arr = arr[:, None]
            if arr.ndim != 4 or arr.shape[-1] != 3:
                raise KeypointFileError(f"{path}: shape {arr.shape}; expected (T, J, 3) or (T, P, J, 3)")
            fmt = detect_format(arr.shape[2], path)
            normalized = arr.size and float(np.abs(arr[..., :2]).max()) <= 1.0
            frames = _finish(dict(enumerate(arr)), fmt, path, (w, h) if normalized else None)
            return Track(frames, len(arr), fmt, 0.0, path)
    single = os.path.join(poses_dir, stem + ".json")
    if os.path.exists(single):
        try:
            with open(single) as f:
                data = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise KeypointFileError(f"{single}: {e}") from e
        meta = data if isinstance(data, dict) else {}
        objs = meta.get("frames", []) if isinstance(data, dict) else data
        fmt = meta.get("format")
        if fmt is not None and fmt not in FORMATS:
            raise KeypointFileError(f"{single}: format {fmt!r} is unknown; known: {FORMATS}")
        coords = meta.get("coordinates", "pixels")
        if coords not in ("pixels", "normalized"):
            raise KeypointFileError(f"{single}: coordinates {coords!r}; expected 'pixels' or 'normalized'")
        frames = _from_objects(objs, fmt, single, (w, h) if coords == "normalized" else None)
        return Track(frames, len(objs), fmt or "openpose18", float(meta.get("fps", 0.0)), single)
    pattern = re.compile(re.escape(stem) + r"_(\d{12})_keypoints\.json$")
    objs = {}
    for d in (poses_dir, os.path.join(poses_dir, stem)):
        for path in glob.glob(os.path.join(glob.escape(d), f"{glob.escape(stem)}_*_keypoints.json")):
            m = pattern.search(os.path.basename(path))
            if m:
                try:
                    with open(path) as f:
                        objs[int(m.group(1))] = (json.load(f), path)
                except (OSError, json.JSONDecodeError) as e:
                    raise KeypointFileError(f"{path}: {e}") from e
    if not objs:
        return None
    frames, fmt = {}, None
    for i, (obj, path) in objs.items():
        frames[i], fmt = frame_people(obj, fmt, path)
    where = os.path.join(poses_dir, f"{stem}_*_keypoints.json")
    return Track(_finish(frames, fmt or "openpose18", where, None), max(objs) + 1, fmt or "openpose18", 0.0, where)


def source_frame(k: int, source_fps: float, target_fps: float) -> int:
    """The source frame that plays as frame ``k`` at ``target_fps`` (nearest; a rate of 0 keeps the source's)."""
    if target_fps <= 0 or source_fps <= 0:
        return k
    return round(k * source_fps / target_fps)


def resample_indices(num_frames: int, source_fps: float, target_fps: float) -> np.ndarray:
    """Source frame indices that play ``num_frames`` source frames at ``target_fps`` (:func:`source_frame`)."""
    if target_fps <= 0 or source_fps <= 0 or abs(source_fps - target_fps) < 1e-6:
        return np.arange(num_frames)
    n = int(np.floor((num_frames - 1) * target_fps / source_fps)) + 1
    return np.array([min(source_frame(k, source_fps, target_fps), num_frames - 1) for k in range(n)], np.int64)


# OpenPose's body drawing (its demo and ControlNet's "openpose" condition images): 17 limbs over the 18 joints
# (0-based pairs), one colour per joint and per limb, joints as discs, limbs as 60%-opaque sticks on black.
OPENPOSE_LIMBS = np.array([[1, 2], [1, 5], [2, 3], [3, 4], [5, 6], [6, 7], [1, 8], [8, 9], [9, 10], [1, 11],
                           [11, 12], [12, 13], [1, 0], [0, 14], [14, 16], [0, 15], [15, 17]])
OPENPOSE_COLORS = np.array([[255, 0, 0], [255, 85, 0], [255, 170, 0], [255, 255, 0], [170, 255, 0], [85, 255, 0],
                            [0, 255, 0], [0, 255, 85], [0, 255, 170], [0, 255, 255], [0, 170, 255], [0, 85, 255],
                            [0, 0, 255], [85, 0, 255], [170, 0, 255], [255, 0, 255], [255, 0, 170], [255, 0, 85]],
                           np.float32)


def _segment_distance(px, py, a, b):
    d = b - a
    L2 = float(d @ d)
    u = 0.0 if L2 == 0 else np.clip(((px - a[0]) * d[0] + (py - a[1]) * d[1]) / L2, 0.0, 1.0)
    return np.hypot(px - (a[0] + u * d[0]), py - (a[1] + u * d[1]))


def draw_openpose(kp_ts183: np.ndarray, height: int, width: int, min_confidence: float = 0.05,
                  stick_width: float | None = None) -> np.ndarray:
    """OpenPose-style skeleton frames (T, H, W, 3) uint8 of OpenPose-18 keypoints in target pixels.

    Joints at or above ``min_confidence`` are discs of their colour; a limb whose two joints are both
    shown is a stick blended 60% over what is beneath (OpenPose's 0.4 / 0.6 ``addWeighted``). The widths
    are OpenPose's 4 px at 512 px and scale with the frame (``stick_width`` overrides; at least 1 px).
    """
    kp = np.asarray(kp_ts183, np.float32)
    width_px = stick_width if stick_width is not None else max(1.0, 4.0 * min(height, width) / 512.0)
    py, px = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5  # pixel centres
    out = np.zeros((kp.shape[0], height, width, 3), np.float32)
    for f in range(kp.shape[0]):
        canvas = out[f]
        for person in kp[f]:
            shown = person[:, 2] >= max(min_confidence, 1e-6)
            for j in np.nonzero(shown)[0]:
                canvas[np.hypot(px - person[j, 0], py - person[j, 1]) <= width_px] = OPENPOSE_COLORS[j]
        for person in kp[f]:
            shown = person[:, 2] >= max(min_confidence, 1e-6)
            for i, (a, b) in enumerate(OPENPOSE_LIMBS):
                if shown[a] and shown[b]:
                    inside = _segment_distance(px, py, person[a, :2], person[b, :2]) <= width_px / 2 + 0.5
                    canvas[inside] = 0.4 * canvas[inside] + 0.6 * OPENPOSE_COLORS[i]
    return np.clip(np.round(out), 0, 255).astype(np.uint8)
