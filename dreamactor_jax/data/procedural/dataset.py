"""Procedural clips: scenes of one or two characters, splits, captions and cross-identity ground truth.

``make_example(split, index, cfg)`` is a pure function of its arguments. Each example holds a clip,
its pose render, and a *cross-identity* clip: the same motion performed by another identity.

Cross-identity ground truth, precisely: both clips use the same motion ids (joint-angle channels and
root trajectory), the same frame times and the same placements (root x, ground row, scale). The
cross clip's keypoints are the motion applied to the *cross character's own skeleton*:
``cross_keypoints = pose(cross_character, motion)``, and ``cross_pose_video`` renders those. When the
two characters share body plan and shape (``cross_mode="appearance"``), the keypoints are bitwise
equal: ``cross_keypoints == keypoints``. With ``cross_mode="shape"`` the cross character keeps the
plan but has its own proportions; with ``"any"`` it may be another plan (a humanoid's dance danced
by a quadruped).

Splits hold out both identities and motions: an id belongs to the split its hash falls in
(fractions ``cfg.split_fractions``), independent of ``cfg.seed``; an example of a split only uses
identity ids and motion ids of that split. Motion parameters are continuous draws seeded by the
motion id, so test motions never occur in train.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from dreamactor_jax.data import augment
from dreamactor_jax.data.procedural import characters as chars
from dreamactor_jax.data.procedural import motion as motion_lib
from dreamactor_jax.data.procedural import render

SPLITS = ("train", "validation", "test")
CROSS_MODES = ("appearance", "shape", "any")
_SPLIT_SALT = {"identity": 0x5EED1D, "motion": 0x5EED40}


@dataclasses.dataclass(frozen=True)
class ProceduralConfig:
    """What the generator makes. Every field has a tiny default (9 frames of 32 x 32).

    Attributes:
      frames, height, width: clip size.
      fps: frame rate the motions are sampled at (seconds matter: tempos are in Hz).
      seed: selects which examples an index maps to (not which ids are in which split).
      body_plans: plans identities draw from.
      motion_kinds: motion kinds examples draw from.
      max_subjects: S, the padded subject axis of keypoint arrays (1 or 2).
      two_subject_prob: fraction of scenes with two subjects (when max_subjects == 2).
      cross_mode: "appearance" | "shape" | "any": what the cross identity may change.
      pose_augment_prob: fraction of examples whose ``pose_video`` comes from bone-length augmented,
        bbox-normalised keypoints (stage 1 trains with 0.3; evaluation wants 0).
      travel: (lo, hi) fraction of the image width a subject drifts across over the clip, drawn uniformly,
        direction random, shared by the subjects of a scene and by the cross clip; (0, 0) keeps subjects
        in place. Without it the characters barely move in a short clip and copying the reference into
        every frame is a strong baseline.
      num_identities, num_motions: id pools the splits are carved from.
      split_fractions: train / validation / test shares of both pools.
    """

    frames: int = 9
    height: int = 32
    width: int = 32
    fps: float = 8.0
    seed: int = 0
    body_plans: tuple[str, ...] = ("humanoid", "quadruped", "cartoon", "bird")
    motion_kinds: tuple[str, ...] = motion_lib.MOTION_KINDS
    max_subjects: int = 2
    two_subject_prob: float = 0.2
    cross_mode: str = "shape"
    pose_augment_prob: float = 0.0
    travel: tuple[float, float] = (0.0, 0.0)
    num_identities: int = 100_000
    num_motions: int = 20_000
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)

    def __post_init__(self):
        if self.cross_mode not in CROSS_MODES:
            raise ValueError(f"cross_mode={self.cross_mode!r}; expected one of {CROSS_MODES}")
        unknown = set(self.body_plans) - set(chars.PLANS)
        if unknown or not self.body_plans:
            raise ValueError(f"body_plans has unknown plan(s) {sorted(unknown)}; known: {list(chars.PLANS)}")
        if set(self.motion_kinds) - set(motion_lib.MOTION_KINDS) or not self.motion_kinds:
            raise ValueError(f"motion_kinds={self.motion_kinds}; known: {motion_lib.MOTION_KINDS}")
        if self.max_subjects not in (1, 2):
            raise ValueError(f"max_subjects={self.max_subjects}; must be 1 or 2")
        if min(self.frames, self.height, self.width) < 1:
            raise ValueError("frames, height and width must be positive")
        if len(self.travel) != 2 or not 0.0 <= self.travel[0] <= self.travel[1] <= 1.0:
            raise ValueError(f"travel={self.travel} must be (lo, hi) with 0 <= lo <= hi <= 1 (fractions of the width)")
        if abs(sum(self.split_fractions) - 1.0) > 1e-6 or min(self.split_fractions) <= 0:
            raise ValueError(f"split_fractions={self.split_fractions} must be positive and sum to 1")

    @property
    def num_joints(self) -> int:
        return chars.max_joints(self.body_plans)


def _hash01(value: int, salt: int) -> float:
    """splitmix64 of (value, salt) mapped to [0, 1): stable across platforms and Python runs."""
    z = (int(value) * 0x9E3779B97F4A7C15 + salt * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) & (2**64 - 1)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & (2**64 - 1)
    return ((z ^ (z >> 31)) >> 11) / float(2**53)


def split_of(kind: str, value: int, fractions=(0.8, 0.1, 0.1)) -> str:
    """Which split an identity id (``kind="identity"``) or motion id (``kind="motion"``) belongs to."""
    h = _hash01(value, _SPLIT_SALT[kind])
    edge = 0.0
    for name, frac in zip(SPLITS, fractions):
        edge += frac
        if h < edge:
            return name
    return SPLITS[-1]


def _draw_id(rng: np.random.Generator, kind: str, split: str, cfg: ProceduralConfig, exclude=()) -> int:
    pool = cfg.num_identities if kind == "identity" else cfg.num_motions
    for _ in range(10_000):
        value = int(rng.integers(pool))
        if value in exclude or split_of(kind, value, cfg.split_fractions) != split:
            continue
        if kind == "motion" and motion_lib.motion_kind(value) not in cfg.motion_kinds:
            continue
        return value
    raise RuntimeError(f"could not draw a {kind} id for split {split!r}; pool too small for the fractions?")


def _layout(rng: np.random.Generator, num_subjects: int, cfg: ProceduralConfig) -> list[motion_lib.Placement]:
    ground = cfg.height * rng.uniform(0.86, 0.93)
    lo, hi = cfg.travel
    # Drawn only when travel is on, so configs without it keep their examples bit for bit.
    drift = float(cfg.width * rng.uniform(lo, hi) * rng.choice([-1.0, 1.0])) if hi > 0 else 0.0
    if num_subjects == 1:
        return [motion_lib.Placement(cfg.width * rng.uniform(0.42, 0.58), ground, rng.uniform(0.52, 0.7),
                                     drift_px=drift)]
    scale = rng.uniform(0.4, 0.52)
    front = int(rng.integers(2))
    return [motion_lib.Placement(cfg.width * (0.3 + 0.4 * i + rng.uniform(-0.04, 0.04)), ground, scale,
                                 depth=float(cfg.height * (1.0 if i == front else -1.0)), drift_px=0.5 * drift)
            for i in range(2)]


def _cross_character(source: chars.Character, cross_id: int, cfg: ProceduralConfig) -> chars.Character:
    plans = tuple(cfg.body_plans)
    if cfg.cross_mode == "any":
        return chars.make_character(cross_id, plans)
    if cfg.cross_mode == "shape":
        return chars.make_character(cross_id, plans, plan=source.plan.name)
    return chars.make_character(cross_id, plans, plan=source.plan.name, shape_from=source.identity_id)


def _pad_subjects(posed: list[motion_lib.PosedSubject], cfg: ProceduralConfig) -> dict:
    """Keypoints and skeleton tables padded to (S, J) = (max_subjects, cfg.num_joints)."""
    s_max, j_max, t = cfg.max_subjects, cfg.num_joints, cfg.frames
    kp = np.zeros((t, s_max, j_max, 2), np.float32)
    mask = np.zeros((s_max, j_max), np.float32)
    parents = np.full((s_max, j_max), -1, np.int32)
    roles = np.zeros((s_max, j_max), np.int32)
    for i, p in enumerate(posed):
        plan = p.character.plan
        n = plan.num_joints
        kp[:, i, :n] = p.keypoints_tj2
        mask[i, :n] = 1.0
        parents[i, :n] = plan.parents
        roles[i, :n] = plan.roles
    return dict(keypoints=kp, keypoint_mask=mask, parents=parents, joint_roles=roles)


def caption_for(characters: list[chars.Character], motions: list[motion_lib.MotionSpec]) -> str:
    """Target-oriented caption: appearance of each subject, its motion, then the background."""
    parts = [f"{chars.describe(c)} {motion_lib.motion_phrase(m, c)}" for c, m in zip(characters, motions)]
    return " and ".join(parts) + f" on a {characters[0].appearance.background_name} background"


def _scene(characters, motions, times, placements, cfg):
    posed = [motion_lib.pose_subject(c, m, times, pl, cfg.height) for c, m, pl in zip(characters, motions, placements)]
    video = render.render_scene(posed, characters[0].appearance, cfg.height, cfg.width, placements[0].ground_px)
    return posed, video


@dataclasses.dataclass(frozen=True)
class SceneSpec:
    """Everything an example is made from; ``make_example`` only renders it.

    Attributes:
      characters, cross_characters: one Character per subject.
      motions: one MotionSpec per subject (shared by the cross clip).
      times: (T,) seconds at which the motions are sampled.
      placements: one Placement per subject (shared by the cross clip).
      aug_seed: seed of the pose augmentation's generator.
    """

    characters: tuple
    cross_characters: tuple
    motions: tuple
    times: np.ndarray
    placements: tuple
    aug_seed: int


def sample_scene(split: str, index: int, cfg: ProceduralConfig = ProceduralConfig()) -> SceneSpec:
    """The scene of example ``index`` of ``split`` (deterministic in cfg, split, index)."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r}; expected one of {SPLITS}")
    rng = np.random.default_rng([cfg.seed, SPLITS.index(split), int(index)])
    n = 2 if cfg.max_subjects == 2 and rng.random() < cfg.two_subject_prob else 1
    identity_ids: list[int] = []
    for _ in range(n):
        identity_ids.append(_draw_id(rng, "identity", split, cfg, exclude=identity_ids))
    plans = tuple(cfg.body_plans)
    source = tuple(chars.make_character(i, plans) for i in identity_ids)
    cross_ids: list[int] = []
    for c in source:
        # A cross identity in the source's colour would make a weak pair: redraw (bounded) until it differs.
        for _ in range(32):
            x = _draw_id(rng, "identity", split, cfg, exclude=identity_ids + cross_ids)
            if chars.make_character(x, plans).appearance.colour_name != c.appearance.colour_name:
                break
        cross_ids.append(x)
    motion_ids = [_draw_id(rng, "motion", split, cfg) for _ in range(n)]
    times = (rng.uniform(0.0, 4.0) + np.arange(cfg.frames) / cfg.fps).astype(np.float64)
    placements = _layout(rng, n, cfg)
    aug_seed = int(rng.integers(0, 2**63))
    cross = tuple(_cross_character(c, x, cfg) for c, x in zip(source, cross_ids))
    motions = tuple(motion_lib.sample_motion(m) for m in motion_ids)
    return SceneSpec(source, cross, motions, times, tuple(placements), aug_seed)


def make_example(split: str, index: int, cfg: ProceduralConfig = ProceduralConfig()) -> dict:
    """Example ``index`` of ``split``: deterministic in (cfg, split, index).

    Returns:
      A dict of numpy arrays and strings (T frames, H x W, S = cfg.max_subjects, J = cfg.num_joints):
        video, pose_video, cross_video, cross_pose_video: (T, H, W, 3) float32 in [-1, 1];
        reference, cross_reference: (H, W, 3), the first frame of video / cross_video;
        keypoints, cross_keypoints: (T, S, J, 2) float32 pixel (x, y), zeros where padded;
        pose_keypoints: (T, S, J, 2) what ``pose_video`` draws (augmented when ``pose_augmented``);
        keypoint_mask, parents, joint_roles (+ cross_ variants): (S, J) skeleton tables;
        caption, cross_caption: str; body_plan, cross_body_plan: str (subject 0);
        identity_id, cross_identity_id, motion_id: int (subject 0);
        identity_ids, cross_identity_ids, motion_ids: (S,) int64, -1 where padded;
        num_subjects: int; pose_augmented: bool; split: str; index: int.
    """
    scene = sample_scene(split, index, cfg)
    source, cross, motions = list(scene.characters), list(scene.cross_characters), list(scene.motions)
    identity_ids = [c.identity_id for c in source]
    cross_ids = [c.identity_id for c in cross]
    motion_ids = [m.motion_id for m in motions]
    n = len(source)
    aug_rng = np.random.default_rng(scene.aug_seed)
    posed, video = _scene(source, motions, scene.times, scene.placements, cfg)
    cross_posed, cross_video = _scene(cross, motions, scene.times, scene.placements, cfg)
    tables, cross_tables = _pad_subjects(posed, cfg), _pad_subjects(cross_posed, cfg)

    pose_kp, augmented = tables["keypoints"].copy(), False
    if cfg.pose_augment_prob > 0:
        pose_kp, info = augment.augment_pose(aug_rng, tables["keypoints"], tables["parents"], tables["keypoint_mask"],
                                             prob=cfg.pose_augment_prob)
        augmented = bool(info["applied"])
    pose_args = (cfg.height, cfg.width)
    pose_video = render.render_pose(pose_kp, tables["parents"], tables["joint_roles"], tables["keypoint_mask"],
                                    *pose_args)
    cross_pose = render.render_pose(cross_tables["keypoints"], cross_tables["parents"], cross_tables["joint_roles"],
                                    cross_tables["keypoint_mask"], *pose_args)
    pad_ids = lambda ids: np.array(ids + [-1] * (cfg.max_subjects - len(ids)), np.int64)
    out = dict(
        video=video, pose_video=pose_video, reference=video[0].copy(), pose_keypoints=pose_kp,
        cross_video=cross_video, cross_pose_video=cross_pose, cross_reference=cross_video[0].copy(),
        caption=caption_for(source, motions), cross_caption=caption_for(cross, motions),
        body_plan=source[0].plan.name, cross_body_plan=cross[0].plan.name,
        identity_id=identity_ids[0], cross_identity_id=cross_ids[0], motion_id=motion_ids[0],
        identity_ids=pad_ids(identity_ids), cross_identity_ids=pad_ids(cross_ids), motion_ids=pad_ids(motion_ids),
        num_subjects=n, pose_augmented=augmented, split=split, index=int(index),
    )
    out.update(tables)
    out.update({f"cross_{k}": v for k, v in cross_tables.items()})
    return out


class ProceduralSource:
    """A random-access source (``len`` + ``getitem``, as grain's ``RandomAccessDataSource`` expects)."""

    def __init__(self, split: str, cfg: ProceduralConfig = ProceduralConfig(), length: int = 1_000_000):
        if split not in SPLITS:
            raise ValueError(f"split={split!r}; expected one of {SPLITS}")
        self.split, self.cfg, self.length = split, cfg, int(length)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        return make_example(self.split, int(index), self.cfg)


def training_fields(example: dict, *, stage: int, text_encoder, masked_frames: int = 0) -> dict:
    """Pixel-space fields of ``data/schema.py`` for one example (no batch axis; a codec makes latents).

    Stage 1 drives with the pose render; stage 2 drives with the cross-identity RGB clip, whose
    motion is the target's (the role the self-bootstrapped synthetic videos play in the paper).
    """
    if stage not in (1, 2):
        raise ValueError(f"stage={stage}; expected 1 or 2")
    motion = example["pose_video"] if stage == 1 else example["cross_video"]
    motion, valid = augment.mask_first_frames(motion, masked_frames)
    text, text_mask = text_encoder(example["caption"])
    return dict(target=example["video"], reference=example["reference"][None], motion=motion, motion_valid=valid,
                text=text, text_mask=text_mask)
