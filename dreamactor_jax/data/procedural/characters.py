"""Articulated characters: body plans (skeletons), shape parameters and appearance identities.

A character lives in its own 3D frame measured in *body units* (a humanoid is about one unit tall):
x points the way it faces, y up, z to its right. Images are orthographic projections after a yaw
about y, so one skeleton gives side, three-quarter and frontal views, and the `turn` motion is just
a yaw trajectory. Every joint owns the bone from its parent to itself; bones carry a semantic
*group* (``arm_upper``, ``tail`` ...) and a *side* (+1 right, -1 left, 0 centre). Motions are
written per (group, side) so the same motion drives any body plan (see ``motion.py``).

Joint 0 is the root and parents precede children in every plan (``parents[j] < j``); the pose
augmentation and the renderers rely on that order.

An identity id determines everything about a character: body plan, shape (bone lengths and
widths, head size, overall height) and appearance (body and accent colour, pattern, background).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import numpy as np

GROUPS = ("root", "spine", "neck", "head", "nose", "shoulder", "arm_upper", "arm_lower", "hip", "leg_upper",
          "leg_lower", "foot", "tail", "ear")
# One pose-render colour per (group, side): the same body part gets the same colour on every plan.
ROLES = tuple((g, s) for g in GROUPS for s in (-1, 0, 1))
ROLE_INDEX = {r: i for i, r in enumerate(ROLES)}

_BODY_GROUPS = frozenset({"root", "spine", "shoulder", "hip"})
_LIMB_GROUPS = frozenset({"arm_upper", "arm_lower", "leg_upper", "leg_lower", "foot"})
_IDENTITY_SALT = 0x1D3A


@dataclasses.dataclass(frozen=True, eq=False)
class BodyPlan:
    """A skeleton topology with rest geometry, semantic groups and retargeting gains.

    Attributes:
      name: registry key (``humanoid``, ``quadruped``, ``cartoon``, ``bird``).
      noun: the word captions use.
      joint_names: (J,) names; ``r_``/``l_`` prefixes mark sides.
      parents: (J,) int32 parent index, -1 for the root.
      directions_j3: unit rest direction of each joint's bone (parent -> joint), character frame.
      lengths: (J,) rest bone lengths in body units.
      radii: (J,) drawn bone radius in body units; 0 means the bone is a keypoint link only.
      groups: (J,) semantic group names.
      sides: (J,) int8 side of each joint.
      head: index of the joint at the head centre (a disc of ``head_radius`` is drawn there).
      head_radius: rest head radius in body units.
      retarget: group -> (2, 2) matrix mapping a motion's (flex, abduct) to this plan's.
      side_view_pull: 0..1, how strongly the yaw is pulled toward a side view (quadrupeds read
        best from the side).
      side_view_push: radians a motion's facing is turned away from the camera (see
        ``motion.retarget_yaw``).
      size: the extent used to scale the plan into a scene (max of height and 0.9 x length).
      nose_colour: fixed RGB of the nose bone (a bird's beak), or None for the body colour.
    """

    name: str
    noun: str
    joint_names: tuple[str, ...]
    parents: np.ndarray
    directions_j3: np.ndarray
    lengths: np.ndarray
    radii: np.ndarray
    groups: tuple[str, ...]
    sides: np.ndarray
    head: int
    head_radius: float
    retarget: dict
    side_view_pull: float
    size: float
    nose_colour: tuple | None = None
    side_view_push: float = 0.0

    @property
    def num_joints(self) -> int:
        return len(self.joint_names)

    @property
    def roles(self) -> np.ndarray:
        """(J,) int32 pose-render role of each joint's bone."""
        return np.array([ROLE_INDEX[(g, int(s))] for g, s in zip(self.groups, self.sides)], np.int32)

    @property
    def has_tail(self) -> bool:
        return "tail" in self.groups

    def joint(self, name: str) -> int:
        return self.joint_names.index(name)


def _unit(v) -> np.ndarray:
    v = np.asarray(v, np.float64)
    n = np.linalg.norm(v)
    return v / n if n > 0 else v


def _limbs(template: Sequence[tuple]) -> list[tuple]:
    """Mirrors a right-side template into r_/l_ joints; ``{}`` in a parent name is the side prefix."""
    out = []
    for side, prefix in ((1, "r_"), (-1, "l_")):
        for name, parent, d, length, radius, group in template:
            d = (d[0], d[1], d[2] * side)
            out.append((prefix + name, parent.format(prefix), d, length, radius, group, side))
    return out


def _build(name: str, noun: str, specs: Sequence[tuple], head: str, head_radius: float,
           retarget: dict | None = None, side_view_pull: float = 0.0, nose_colour: tuple | None = None,
           side_view_push: float = 0.0) -> BodyPlan:
    names = tuple(s[0] for s in specs)
    index = {n: i for i, n in enumerate(names)}
    parents = np.array([-1 if s[1] is None else index[s[1]] for s in specs], np.int32)
    if not all(p < j for j, p in enumerate(parents)):
        raise ValueError(f"plan {name}: parents must precede children")
    dirs = np.stack([_unit(s[2]) for s in specs]).astype(np.float32)
    lengths = np.array([s[3] for s in specs], np.float32)
    radii = np.array([s[4] for s in specs], np.float32)
    groups = tuple(s[5] for s in specs)
    sides = np.array([s[6] if len(s) > 6 else 0 for s in specs], np.int8)
    gains = {g: np.eye(2, dtype=np.float32) for g in GROUPS}
    # Upward bones lean *forward* for positive flex, hanging ones swing forward: one sign per group.
    for g in ("spine", "neck", "head"):
        gains[g] = np.diag([-1.0, 1.0]).astype(np.float32)
    for g, m in (retarget or {}).items():
        gains[g] = np.asarray(m, np.float32)
    pos = np.zeros((len(names), 3), np.float32)
    for j in range(1, len(names)):
        pos[j] = pos[parents[j]] + dirs[j] * lengths[j]
    top = max(pos[:, 1].max(), pos[index[head], 1] + head_radius)
    bottom = (pos[:, 1] - radii).min()
    size = float(max(top - bottom, 0.9 * (pos[:, 0].max() - pos[:, 0].min())))
    return BodyPlan(name, noun, names, parents, dirs, lengths, radii, groups, sides, index[head], head_radius, gains,
                    side_view_pull, size, nose_colour, side_view_push)


def _humanoid() -> BodyPlan:
    specs = [
        ("pelvis", None, (0, 0, 0), 0.0, 0.0, "root"),
        ("chest", "pelvis", (0, 1, 0), 0.28, 0.085, "spine"),
        ("neck", "chest", (0, 1, 0), 0.07, 0.035, "neck"),
        ("head", "neck", (0, 1, 0), 0.09, 0.0, "head"),
        ("nose", "head", (1, 0, 0), 0.095, 0.0, "nose"),
    ]
    specs += _limbs([("shoulder", "chest", (0, -0.2, 1), 0.11, 0.04, "shoulder"),
                     ("elbow", "{}shoulder", (0, -1, 0.12), 0.15, 0.036, "arm_upper"),
                     ("wrist", "{}elbow", (0, -1, 0.05), 0.14, 0.031, "arm_lower")])
    specs += _limbs([("hip", "pelvis", (0, -0.3, 1), 0.065, 0.05, "hip"),
                     ("knee", "{}hip", (0, -1, 0), 0.22, 0.046, "leg_upper"),
                     ("ankle", "{}knee", (0, -1, 0), 0.21, 0.038, "leg_lower"),
                     ("toe", "{}ankle", (1, 0, 0), 0.07, 0.03, "foot")])
    # Knees bend backwards: a positive "bend" in the motion is a negative rotation here.
    return _build("humanoid", "humanoid", specs, "head", 0.095, {"leg_lower": [[-1, 0], [0, 1]]})


def _quadruped() -> BodyPlan:
    specs = [
        ("hips", None, (0, 0, 0), 0.0, 0.0, "root"),
        ("chest", "hips", (1, 0.05, 0), 0.42, 0.11, "spine"),
        ("neck", "chest", (0.55, 0.85, 0), 0.17, 0.06, "neck"),
        ("head", "neck", (0.6, 0.8, 0), 0.05, 0.0, "head"),
        ("nose", "head", (1, -0.3, 0), 0.13, 0.045, "nose"),
    ]
    specs += _limbs([("ear", "head", (-0.4, 1, 0.35), 0.08, 0.028, "ear")])
    specs += _limbs([("shoulder", "chest", (0, -0.4, 1), 0.06, 0.05, "shoulder"),
                     ("elbow", "{}shoulder", (0.05, -1, 0), 0.17, 0.042, "arm_upper"),
                     ("paw", "{}elbow", (-0.05, -1, 0), 0.16, 0.033, "arm_lower"),
                     ("ftoe", "{}paw", (1, 0, 0), 0.045, 0.028, "foot")])
    specs += _limbs([("hip", "hips", (0, -0.4, 1), 0.06, 0.055, "hip"),
                     ("knee", "{}hip", (0.2, -1, 0), 0.17, 0.05, "leg_upper"),
                     ("hock", "{}knee", (-0.25, -1, 0), 0.17, 0.034, "leg_lower"),
                     ("htoe", "{}hock", (1, 0, 0), 0.045, 0.028, "foot")])
    specs += [("tail1", "hips", (-0.8, 0.6, 0), 0.13, 0.03, "tail"),
              ("tail2", "tail1", (-0.9, 0.15, 0), 0.13, 0.024, "tail")]
    # An arm's abduction (raise sideways) becomes a forward paw raise on four legs.
    retarget = {"arm_upper": [[1, 0.6], [0, 0.1]], "arm_lower": [[-1, 0.6], [0, 0]], "leg_lower": [[-1, 0], [0, 1]],
                "leg_upper": [[0.9, 0], [0, 0.1]]}
    return _build("quadruped", "quadruped", specs, "head", 0.085, retarget, side_view_pull=0.7, side_view_push=0.6)


def _cartoon() -> BodyPlan:
    specs = [
        ("pelvis", None, (0, 0, 0), 0.0, 0.0, "root"),
        ("chest", "pelvis", (0, 1, 0), 0.2, 0.12, "spine"),
        ("neck", "chest", (0, 1, 0), 0.04, 0.05, "neck"),
        ("head", "neck", (0, 1, 0), 0.17, 0.0, "head"),
        ("nose", "head", (1, 0, 0), 0.2, 0.0, "nose"),
    ]
    specs += _limbs([("antenna", "head", (0.1, 1, 0.6), 0.15, 0.022, "ear"),
                     ("knob", "{}antenna", (0.2, 1, 0.3), 0.05, 0.045, "ear")])
    specs += _limbs([("shoulder", "chest", (0, -0.3, 1), 0.14, 0.042, "shoulder"),
                     ("elbow", "{}shoulder", (0, -1, 0.2), 0.14, 0.04, "arm_upper"),
                     ("wrist", "{}elbow", (0, -1, 0), 0.13, 0.045, "arm_lower")])
    specs += _limbs([("hip", "pelvis", (0, -0.3, 1), 0.07, 0.06, "hip"),
                     ("knee", "{}hip", (0, -1, 0), 0.11, 0.055, "leg_upper"),
                     ("ankle", "{}knee", (0, -1, 0), 0.1, 0.05, "leg_lower"),
                     ("toe", "{}ankle", (1, 0, 0), 0.08, 0.045, "foot")])
    specs += [("tail1", "pelvis", (-1, 0.3, 0), 0.12, 0.03, "tail"),
              ("tail2", "tail1", (-0.6, 1, 0), 0.12, 0.03, "tail"),
              ("tail3", "tail2", (0.3, 1, 0), 0.1, 0.04, "tail")]
    return _build("cartoon", "cartoon creature", specs, "head", 0.2, {"leg_lower": [[-1, 0], [0, 1]]})


def _bird() -> BodyPlan:
    specs = [
        ("belly", None, (0, 0, 0), 0.0, 0.0, "root"),
        ("chest", "belly", (1, 0.45, 0), 0.17, 0.12, "spine"),
        ("neck", "chest", (0.25, 1, 0), 0.12, 0.055, "neck"),
        ("head", "neck", (0.1, 1, 0), 0.05, 0.0, "head"),
        ("nose", "head", (1, -0.15, 0), 0.14, 0.026, "nose"),
    ]
    specs += _limbs([("shoulder", "chest", (-0.3, 0.1, 1), 0.06, 0.04, "shoulder"),
                     ("elbow", "{}shoulder", (-0.8, -0.3, 0.35), 0.18, 0.05, "arm_upper"),
                     ("tip", "{}elbow", (-1, -0.15, 0), 0.17, 0.035, "arm_lower")])
    specs += _limbs([("hip", "belly", (0, -0.4, 1), 0.06, 0.05, "hip"),
                     ("knee", "{}hip", (0.1, -1, 0), 0.16, 0.03, "leg_upper"),
                     ("ankle", "{}knee", (-0.2, -1, 0), 0.17, 0.018, "leg_lower"),
                     ("toe", "{}ankle", (1, 0, 0), 0.08, 0.018, "foot")])
    specs += [("rump", "belly", (-1, 0.05, 0), 0.14, 0.1, "spine"),
              ("tail1", "rump", (-1, 0.3, 0), 0.15, 0.05, "tail")]
    # Wings flap instead of waving: abduction stays abduction but is stronger; the tail barely wags.
    retarget = {"leg_lower": [[-1, 0], [0, 1]], "arm_upper": [[0.5, 0], [0, 1.1]], "tail": [[0.5, 0], [0, 0.3]]}
    return _build("bird", "bird", specs, "head", 0.085, retarget, side_view_pull=0.7, nose_colour=(0.98, 0.68, 0.1),
                  side_view_push=0.6)


PLANS: dict[str, BodyPlan] = {p.name: p for p in (_humanoid(), _quadruped(), _cartoon(), _bird())}
PLAN_NAMES = tuple(PLANS)


def max_joints(plan_names: Sequence[str] = PLAN_NAMES) -> int:
    """The padded joint count J for keypoint arrays holding any of ``plan_names``."""
    return max(PLANS[n].num_joints for n in plan_names)


# ---------------------------------------------------------------------------------------- shape
@dataclasses.dataclass(frozen=True, eq=False)
class Shape:
    """Per-identity geometry. Lengths and radii are in body units, one entry per joint."""

    lengths: np.ndarray
    radii: np.ndarray
    head_radius: float
    height_factor: float


def sample_shape(plan: BodyPlan, rng: np.random.Generator) -> Shape:
    """Draws limb proportions: independent factors for torso, arms, legs, neck, tail/ears and widths."""
    f = dict(spine=rng.uniform(0.85, 1.15), arm=rng.uniform(0.85, 1.15), leg=rng.uniform(0.85, 1.15),
             neck=rng.uniform(0.8, 1.2), extra=rng.uniform(0.7, 1.3), width=rng.uniform(0.8, 1.25),
             limb_width=rng.uniform(0.8, 1.25), head=rng.uniform(0.85, 1.2), height=rng.uniform(0.9, 1.1))
    length_f = {"spine": f["spine"], "shoulder": f["spine"], "hip": f["spine"], "arm_upper": f["arm"],
                "arm_lower": f["arm"], "leg_upper": f["leg"], "leg_lower": f["leg"], "neck": f["neck"],
                "tail": f["extra"], "ear": f["extra"], "nose": f["head"], "head": f["head"]}
    lengths = plan.lengths * np.array([length_f.get(g, 1.0) for g in plan.groups], np.float32)
    width = np.array([f["limb_width"] if g in _LIMB_GROUPS else f["width"] for g in plan.groups], np.float32)
    return Shape(lengths.astype(np.float32), (plan.radii * width).astype(np.float32),
                 float(plan.head_radius * f["head"]), float(f["height"]))


# ---------------------------------------------------------------------------------- appearance
PALETTE = {
    "red": (0.85, 0.15, 0.15), "orange": (0.95, 0.55, 0.1), "yellow": (0.95, 0.85, 0.2),
    "green": (0.2, 0.68, 0.25), "teal": (0.1, 0.62, 0.62), "blue": (0.2, 0.35, 0.9),
    "purple": (0.55, 0.25, 0.8), "pink": (0.95, 0.5, 0.7), "brown": (0.55, 0.33, 0.18),
    "white": (0.93, 0.93, 0.93), "grey": (0.5, 0.5, 0.52), "black": (0.13, 0.13, 0.14),
}
COLOUR_NAMES = tuple(PALETTE)
PATTERNS = ("plain", "striped", "spotted", "two-tone")
REGIONS = ("body", "limbs", "tail", "all")


def luminance(rgb) -> float:
    r, g, b = rgb
    return 0.299 * r + 0.587 * g + 0.114 * b


@dataclasses.dataclass(frozen=True)
class Appearance:
    """Colours (RGB in [0, 1]) and pattern of one identity, plus its background.

    ``pattern_region`` says which bones carry the pattern: ``body`` (torso, shoulders, hips),
    ``limbs``, ``tail`` or ``all``. ``two-tone`` paints the region in the accent colour.
    """

    colour_name: str
    colour: tuple
    accent_name: str
    accent: tuple
    pattern: str
    pattern_region: str
    pattern_period: float
    background_name: str
    background_top: tuple
    background_bottom: tuple
    background_angle: float
    floor: tuple
    eye: tuple


def sample_appearance(plan: BodyPlan, rng: np.random.Generator) -> Appearance:
    """Draws body/accent colours, a pattern and a background that contrasts with the body."""
    names = list(COLOUR_NAMES)
    colour_name = names[rng.integers(len(names))]
    accent_choices = [n for n in names if n != colour_name]
    accent_name = accent_choices[rng.integers(len(accent_choices))]
    jitter = lambda rgb: tuple(float(np.clip(c + rng.uniform(-0.05, 0.05), 0, 1)) for c in rgb)
    colour, accent = jitter(PALETTE[colour_name]), jitter(PALETTE[accent_name])
    pattern = PATTERNS[rng.integers(len(PATTERNS))]
    regions = [r for r in REGIONS if r != "tail" or plan.has_tail]
    region = regions[rng.integers(len(regions))]
    period = float(rng.uniform(0.05, 0.09))
    bg_choices = [n for n in names if n not in (colour_name, accent_name, "grey", "white", "black")]
    bg_name = bg_choices[rng.integers(len(bg_choices))]
    base = np.array(PALETTE[bg_name])
    # Pale backgrounds behind dark bodies and dark ones behind light bodies keep the figure readable.
    light_body = luminance(colour) > 0.5
    tint = np.zeros(3) if light_body else np.ones(3)
    mix = rng.uniform(0.55, 0.75)
    top = (1 - mix) * base + mix * tint
    bottom = (1 - mix + 0.15) * base + (mix - 0.15) * tint
    floor = 0.7 * bottom + 0.3 * (np.zeros(3) if not light_body else np.full(3, 0.25))
    eye = (0.05, 0.05, 0.05) if luminance(colour) > 0.25 else (0.95, 0.95, 0.95)
    return Appearance(colour_name, colour, accent_name, accent, pattern, region, period,
                      ("dark " if light_body else "pale ") + bg_name, tuple(map(float, top)),
                      tuple(map(float, bottom)), float(rng.uniform(-0.6, 0.6)), tuple(map(float, floor)), eye)


def pattern_mask(plan: BodyPlan, appearance: Appearance) -> np.ndarray:
    """(J,) bool: which bones carry the pattern (or the accent, for two-tone)."""
    if appearance.pattern == "plain":
        return np.zeros(plan.num_joints, bool)
    region = appearance.pattern_region
    sel = {"body": _BODY_GROUPS, "limbs": _LIMB_GROUPS, "tail": frozenset({"tail"}),
           "all": _BODY_GROUPS | _LIMB_GROUPS | {"tail", "neck"}}[region]
    return np.array([g in sel for g in plan.groups])


# ----------------------------------------------------------------------------------- character
@dataclasses.dataclass(frozen=True, eq=False)
class Character:
    """One identity: body plan + shape + appearance, all determined by ``identity_id``."""

    identity_id: int
    plan: BodyPlan
    shape: Shape
    appearance: Appearance


@functools.lru_cache(maxsize=4096)
def make_character(identity_id: int, plan_names: tuple[str, ...] = PLAN_NAMES, *, plan: str | None = None,
                   shape_from: int | None = None) -> Character:
    """The character of ``identity_id``.

    Args:
      identity_id: any non-negative int; the same id always gives the same character.
      plan_names: plans the id may draw from.
      plan: force this body plan (cross-identity pairs that keep the source's plan).
      shape_from: take the shape from this other identity (which must resolve to the same plan);
        used for cross-identity pairs that differ in appearance only.

    Returns:
      The Character. Draw order is fixed, so overriding the plan or shape leaves the id's
      appearance unchanged.
    """
    rng = np.random.default_rng([_IDENTITY_SALT, int(identity_id)])
    drawn_plan = PLANS[plan_names[rng.integers(len(plan_names))]]
    body = PLANS[plan] if plan is not None else drawn_plan
    shape_rng, look_rng = (np.random.default_rng(s) for s in rng.integers(0, 2**63, 2))
    shape = sample_shape(body, shape_rng)
    if shape_from is not None:
        shape = make_character(shape_from, plan_names, plan=body.name).shape
    return Character(int(identity_id), body, shape, sample_appearance(body, look_rng))


def describe(character: Character) -> str:
    """Noun phrase for captions, e.g. ``a blue quadruped with a striped tail``."""
    a, plan = character.appearance, character.plan
    article = "an" if a.colour_name[0] in "aeiou" else "a"
    head = f"{article} {a.colour_name} {plan.noun}"
    if a.pattern == "plain":
        return head
    part = {"body": "body", "limbs": "wings" if plan.name == "bird" else "limbs", "tail": "tail",
            "all": "coat"}[a.pattern_region]
    singular = part in ("body", "tail", "coat")
    if a.pattern == "two-tone":
        return f"{head} with {'a ' if singular else ''}{a.accent_name} {part}"
    return f"{head} with {'a ' if singular else ''}{a.pattern} {part}"
