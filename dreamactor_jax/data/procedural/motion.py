"""Parametric motions, retargeting onto body plans, and forward kinematics into image coordinates.

A motion is written once, on a canonical skeleton, as smooth joint-angle trajectories per semantic
(group, side) channel plus a root trajectory:

* ``flex``: swing in the sagittal plane, positive = the bone's far end moves forward (for knees and
  elbows: positive = bend the joint);
* ``abd``: abduction, positive = the bone moves outward (away from the body's midline); for tails
  and snouts, a sideways wag;
* root: ``dx`` travel along the facing direction, ``lift`` height above the ground, ``sway`` lateral
  offset (body units), ``yaw`` facing (radians; 0 = facing image-right, -pi/2 = facing the camera),
  and whole-body ``pitch``/``roll`` via the ("root", 0) channel.

``joint_angles`` maps the channels onto any body plan through the plan's per-group 2x2 gains (a
humanoid's raised arm becomes a quadruped's raised paw), so one motion drives every plan. Posing is
deterministic: the same (character shape, motion, times, placement) gives bit-identical keypoints,
which is what makes cross-identity pairs exact.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from dreamactor_jax.data.procedural.characters import Character

MOTION_KINDS = ("walk", "wave", "jump", "turn", "dance")
_MOTION_SALT = 0x40E7
_WAG_GROUPS = frozenset({"tail", "nose"})  # bones lying along x: their "abduction" is a turn about y


@dataclasses.dataclass(frozen=True, eq=False)
class MotionSpec:
    """One parametric motion instance: a kind and its parameters, all determined by ``motion_id``."""

    motion_id: int
    kind: str
    params: dict

    def __getitem__(self, name: str) -> float:
        return self.params[name]


def motion_kind(motion_id: int) -> str:
    """Kinds cycle with the id so every kind is equally common in every split."""
    return MOTION_KINDS[int(motion_id) % len(MOTION_KINDS)]


def sample_motion(motion_id: int) -> MotionSpec:
    """The motion of ``motion_id``: its kind and continuous parameters (tempo, amplitudes, phases...)."""
    rng = np.random.default_rng([_MOTION_SALT, int(motion_id)])
    kind = motion_kind(motion_id)
    u = lambda lo, hi: float(rng.uniform(lo, hi))
    sign = lambda: float(rng.choice([-1.0, 1.0]))
    common = dict(phase=u(0, 2 * np.pi), tail_wag=u(0.2, 0.6), tail_freq=u(1.5, 3.0))
    if kind == "walk":
        p = dict(freq=u(1.2, 2.0), stride=u(0.35, 0.6), arm_swing=u(0.3, 0.7), knee=u(0.5, 1.0),
                 direction=sign(), yaw_dev=u(0.5, 1.2), lean=u(0.0, 0.12))
        p["speed"] = 0.22 * p["stride"] * p["freq"]  # body units / s; slower than real gait so clips stay in frame
    elif kind == "wave":
        p = dict(freq=u(1.5, 3.0), side=sign(), raise_=u(2.0, 2.6), amp=u(0.4, 0.8), elbow=u(0.3, 0.8),
                 sway=u(0.0, 0.1), yaw_dev=u(-0.6, 0.6), other=u(0.1, 0.35))
    elif kind == "jump":
        p = dict(freq=u(0.9, 1.4), height=u(0.12, 0.25), crouch=u(0.5, 0.9), arm_up=u(1.4, 2.4),
                 yaw_dev=u(-0.7, 0.7), travel=u(-0.15, 0.15))
    elif kind == "turn":
        p = dict(rate=sign() * u(1.8, 3.5), yaw_start=u(-np.pi, np.pi), freq=u(1.2, 2.0), step=u(0.15, 0.35),
                 arms=u(0.1, 0.4))
    else:  # dance
        p = dict(freq=u(0.9, 1.8), style=float(rng.integers(3)), arm_amp=u(1.0, 2.4), arm_base=u(0.1, 0.5),
                 bounce=u(0.2, 0.6), hip_sway=u(0.02, 0.07), roll=u(0.04, 0.15), head_bob=u(0.1, 0.3),
                 yaw_dev=u(-0.6, 0.6), elbow=u(0.2, 0.9))
    return MotionSpec(int(motion_id), kind, {**common, **p})


@dataclasses.dataclass
class MotionFrames:
    """A motion evaluated at T times: channels (group, side) -> (flex (T,), abd (T,)) and root (T,) arrays."""

    channels: dict
    dx: np.ndarray
    lift: np.ndarray
    sway: np.ndarray
    yaw: np.ndarray


def evaluate(spec: MotionSpec, times_t: np.ndarray) -> MotionFrames:
    """Evaluates ``spec`` at ``times_t`` seconds (T,). Periodic channels use absolute time; travel is
    centred on the clip's mid time so the subject stays near its placement."""
    t = np.asarray(times_t, np.float64)
    zeros = np.zeros_like(t)
    rel = t - t.mean()
    p = spec.params
    ch: dict = {}
    put = lambda g, s, flex=0.0, abd=0.0: ch.__setitem__((g, s), (zeros + flex, zeros + abd))
    wag = p["tail_wag"] * np.sin(2 * np.pi * p["tail_freq"] * t + p["phase"])
    put("tail", 0, 0.15 * np.sin(2 * np.pi * p["tail_freq"] * 0.5 * t), wag)
    put("ear", 1, 0.15 * np.sin(2 * np.pi * p["tail_freq"] * t))
    put("ear", -1, 0.15 * np.sin(2 * np.pi * p["tail_freq"] * t + 1.0))
    dx, lift, sway = zeros.copy(), zeros.copy(), zeros.copy()
    kind = spec.kind
    if kind == "walk":
        w = 2 * np.pi * p["freq"]
        for s in (1, -1):
            phi = w * t + p["phase"] + (0.0 if s > 0 else np.pi)
            put("leg_upper", s, p["stride"] * np.sin(phi))
            # The knee bends while the leg swings forward (cos > 0), straight in stance.
            put("leg_lower", s, p["knee"] * (0.5 + 0.5 * np.cos(phi)) ** 2)
            put("foot", s, -0.3 * (0.5 + 0.5 * np.cos(phi)) ** 2)
            put("arm_upper", s, -p["arm_swing"] * np.sin(phi), 0.08)
            put("arm_lower", s, 0.25 + 0.2 * (0.5 - 0.5 * np.sin(phi)))
        put("spine", 0, p["lean"])
        put("neck", 0, 0.05 * np.sin(2 * w * t))
        dx = p["speed"] * rel
        yaw = zeros - np.pi / 2 + p["direction"] * p["yaw_dev"]
    elif kind == "wave":
        w = 2 * np.pi * p["freq"]
        s = int(p["side"])
        put("arm_upper", s, 0.2, p["raise_"] + 0.1 * np.sin(0.5 * w * t))
        put("arm_lower", s, p["elbow"], p["amp"] * np.sin(w * t + p["phase"]))
        put("arm_upper", -s, 0.05 * np.sin(0.5 * w * t), p["other"])
        put("arm_lower", -s, 0.2)
        put("root", 0, 0.0, p["sway"] * np.sin(0.5 * w * t))
        put("head", 0, 0.0, 0.15 * np.sin(0.5 * w * t + 1.0))
        yaw = zeros - np.pi / 2 + p["yaw_dev"]
    elif kind == "jump":
        cyc = np.mod(p["freq"] * t + p["phase"] / (2 * np.pi), 1.0)
        ground_frac = 0.45
        crouch = np.where(cyc < ground_frac, np.sin(np.pi * np.minimum(cyc / ground_frac, 1.0)), 0.0)
        flight_u = np.clip((cyc - ground_frac) / (1 - ground_frac), 0.0, 1.0)
        flight = np.where(cyc >= ground_frac, np.sin(np.pi * flight_u), 0.0)
        lift = p["height"] * 4 * flight_u * (1 - flight_u) * (cyc >= ground_frac)
        for s in (1, -1):
            put("leg_upper", s, 0.8 * p["crouch"] * crouch + 0.3 * flight)
            put("leg_lower", s, 1.6 * p["crouch"] * crouch + 0.4 * flight)
            put("foot", s, -0.4 * crouch)
            put("arm_upper", s, -0.6 * crouch + p["arm_up"] * flight, 0.15 + 0.3 * flight)
            put("arm_lower", s, 0.3 + 0.3 * crouch)
        put("spine", 0, 0.35 * p["crouch"] * crouch)
        dx = p["travel"] * rel
        yaw = zeros - np.pi / 2 + p["yaw_dev"]
    elif kind == "turn":
        w = 2 * np.pi * p["freq"]
        for s in (1, -1):
            phi = w * t + p["phase"] + (0.0 if s > 0 else np.pi)
            lift_leg = np.maximum(0.0, np.sin(phi))
            put("leg_upper", s, p["step"] * lift_leg)
            put("leg_lower", s, 2.0 * p["step"] * lift_leg)
            put("arm_upper", s, 0.1 * np.sin(phi + np.pi), p["arms"])
            put("arm_lower", s, 0.3)
        yaw = p["yaw_start"] + p["rate"] * rel
    else:  # dance
        w = 2 * np.pi * p["freq"]
        style = int(p["style"])
        for s in (1, -1):
            arm_phase = p["phase"] + (np.pi if (style == 0 and s < 0) else 0.0)
            if style == 2:  # swinging arms in front of the body
                put("arm_upper", s, p["arm_amp"] * 0.6 * (0.5 + 0.5 * np.sin(w * t + arm_phase)), p["arm_base"])
            else:
                put("arm_upper", s, 0.2, p["arm_base"] + p["arm_amp"] * (0.5 + 0.5 * np.sin(w * t + arm_phase)))
            put("arm_lower", s, p["elbow"] * (0.5 + 0.5 * np.sin(2 * w * t + arm_phase)))
            knee = p["bounce"] * (0.5 + 0.5 * np.sin(w * t + (0.0 if s > 0 else np.pi)))
            put("leg_upper", s, 0.5 * knee)
            put("leg_lower", s, knee)
        put("root", 0, 0.0, p["roll"] * np.sin(w * t))
        put("spine", 0, 0.05 * np.sin(2 * w * t), 0.1 * np.sin(w * t + 0.5))
        put("neck", 0, p["head_bob"] * np.sin(2 * w * t))
        sway = p["hip_sway"] * np.sin(w * t)
        yaw = zeros - np.pi / 2 + p["yaw_dev"]
    return MotionFrames(ch, dx, lift, sway, yaw)


def joint_angles(frames: MotionFrames, character: Character) -> tuple[np.ndarray, np.ndarray]:
    """Retargets motion channels onto a body plan: (flex_tj, abd_tj) rotation angles in radians.

    Abduction is converted from "outward" to a signed rotation using the joint's side, so the same
    channel value opens left and right limbs symmetrically.
    """
    plan = character.plan
    t = frames.dx.shape[0]
    flex_tj = np.zeros((t, plan.num_joints), np.float64)
    abd_tj = np.zeros((t, plan.num_joints), np.float64)
    for j, (g, s) in enumerate(zip(plan.groups, plan.sides)):
        s = int(s)
        if (g, s) not in frames.channels:
            continue
        f, a = frames.channels[(g, s)]
        m = plan.retarget[g]
        flex_tj[:, j] = m[0, 0] * f + m[0, 1] * a
        abd = m[1, 0] * f + m[1, 1] * a
        abd_tj[:, j] = -s * abd if s != 0 else abd
    return flex_tj, abd_tj


def retarget_yaw(yaw_t: np.ndarray, plan) -> np.ndarray:
    """A plan's facing for a motion's yaw trajectory (T,): quadrupeds and birds read best side-on.

    The whole trajectory is first turned away from the camera by ``plan.side_view_push`` (toward
    the side the motion already leans to, decided once from its mean so turns stay continuous),
    then each yaw is pulled smoothly toward the nearest side view by ``plan.side_view_pull``
    (monotonic for pull < 1). Humanoid plans have neither.
    """
    yaw_t = np.asarray(yaw_t, np.float64)
    if plan.side_view_push:
        dev = np.angle(np.exp(1j * (np.mean(yaw_t) + np.pi / 2)))
        yaw_t = yaw_t + (plan.side_view_push if dev >= 0 else -plan.side_view_push)
    return yaw_t - 0.5 * plan.side_view_pull * np.sin(2 * yaw_t)


def _rot(axis: str, ang: np.ndarray) -> np.ndarray:
    c, s = np.cos(ang), np.sin(ang)
    o, z = np.ones_like(ang), np.zeros_like(ang)
    rows = {"x": ((o, z, z), (z, c, -s), (z, s, c)),
            "y": ((c, z, s), (z, o, z), (-s, z, c)),
            "z": ((c, -s, z), (s, c, z), (z, z, o))}[axis]
    return np.stack([np.stack(r, -1) for r in rows], -2)


def forward_kinematics(character: Character, flex_tj: np.ndarray, abd_tj: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Joint positions (T, J, 3) in body units (root at the origin) and global rotations (T, J, 3, 3).

    Each joint's rotation turns its own bone and everything below it about the rest-pose axes at
    the parent joint: R_j = R_parent @ Rz(flex_j) @ A(abd_j), with A = Rx (or Ry for wagging bones).
    """
    plan, shape = character.plan, character.shape
    wag = np.array([g in _WAG_GROUPS for g in plan.groups])
    local = _rot("z", flex_tj) @ np.where(wag[None, :, None, None], _rot("y", abd_tj), _rot("x", abd_tj))
    bones_j3 = plan.directions_j3.astype(np.float64) * shape.lengths[:, None]
    t, n = flex_tj.shape
    rot = np.empty((t, n, 3, 3))
    pos = np.zeros((t, n, 3))
    rot[:, 0] = local[:, 0]
    for j in range(1, n):
        p = plan.parents[j]
        rot[:, j] = rot[:, p] @ local[:, j]
        pos[:, j] = pos[:, p] + rot[:, j] @ bones_j3[j]
    return pos, rot


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where a subject stands: pixel x of its root at mid-clip, ground row, size, depth offset.

    ``scale`` is the character's extent as a fraction of the image height (before the identity's
    height factor); ``depth`` orders subjects (larger = nearer the camera); ``drift_px`` moves the subject
    across the image at a constant rate, from ``x_px - drift_px / 2`` at the first frame to ``x_px + drift_px / 2``
    at the last (on top of the motion's own travel), so that following the motion matters.
    """

    x_px: float
    ground_px: float
    scale: float
    depth: float = 0.0
    drift_px: float = 0.0  # horizontal travel of the whole body over the clip (centred on x_px), in pixels


@dataclasses.dataclass(frozen=True, eq=False)
class PosedSubject:
    """A character posed over T frames, in pixel coordinates (x right, y down, origin top-left)."""

    character: Character
    keypoints_tj2: np.ndarray
    depth_tj: np.ndarray
    eyes_tk2: np.ndarray
    eye_depth_tk: np.ndarray
    yaw_t: np.ndarray
    px_per_unit: float
    ground_px: float
    root_depth_t: np.ndarray


def pose_subject(character: Character, spec: MotionSpec, times_t: np.ndarray, placement: Placement,
                 height: int) -> PosedSubject:
    """Applies ``spec`` to ``character`` at ``times_t`` and projects it into an image of ``height`` rows.

    The root height is chosen per frame so the lowest point of the body touches the ground (feet
    plant, hips dip as legs swing); the motion's ``lift`` is added on top (jumps).
    """
    plan, shape = character.plan, character.shape
    frames = evaluate(spec, times_t)
    flex_tj, abd_tj = joint_angles(frames, character)
    pos, rot = forward_kinematics(character, flex_tj, abd_tj)
    head = plan.head
    lowest_t = np.minimum((pos[..., 1] - shape.radii).min(1), pos[:, head, 1] - shape.head_radius)
    up_t = frames.lift - lowest_t
    yaw_t = retarget_yaw(frames.yaw, plan)
    ppu = placement.scale * height / plan.size * shape.height_factor
    c, s = np.cos(yaw_t)[:, None], np.sin(yaw_t)[:, None]
    x_px = placement.x_px
    tt = np.asarray(times_t, np.float64)
    span = tt[-1] - tt[0] if len(tt) > 1 else 0.0
    drift_t = placement.drift_px * ((tt - 0.5 * (tt[0] + tt[-1])) / span if span > 0 else np.zeros_like(tt))

    def project(p_tk3):
        x, y, z = p_tk3[..., 0], p_tk3[..., 1], p_tk3[..., 2]
        xw, zw = c * x + s * z, -s * x + c * z
        root_x = x_px + drift_t + ppu * (frames.dx * np.cos(yaw_t) + frames.sway * np.sin(yaw_t))
        kp = np.stack([root_x[:, None] + ppu * xw, placement.ground_px - ppu * (y + up_t[:, None])], -1)
        return kp.astype(np.float32), (ppu * zw + placement.depth).astype(np.float32)

    keypoints, depth = project(pos)
    # Centre the figure's box (not its root: a quadruped's hips are at its back) on the placement.
    shift = np.mean(0.5 * (keypoints[..., 0].min(1) + keypoints[..., 0].max(1)) - keypoints[:, 0, 0])
    x_px -= float(shift)
    keypoints, depth = project(pos)
    r = shape.head_radius
    eye_offsets = np.array([[0.62, 0.25, 0.5], [0.62, 0.25, -0.5]]) * r
    eyes = pos[:, head, None, :] + np.einsum("tab,kb->tka", rot[:, head], eye_offsets)
    eyes_tk2, eye_depth = project(eyes)
    root_depth = np.full(len(times_t), placement.depth, np.float32)
    return PosedSubject(character, keypoints, depth, eyes_tk2, eye_depth, yaw_t.astype(np.float32), float(ppu),
                        float(placement.ground_px), root_depth)


def motion_phrase(spec: MotionSpec, character: Character) -> str:
    """The verb phrase for captions, worded for the character's plan (a quadruped "raises a paw")."""
    plan = character.plan.name
    if spec.kind == "walk":
        yaw = retarget_yaw(np.array([-np.pi / 2 + spec["direction"] * spec["yaw_dev"]]), character.plan)[0]
        return "walks to the " + ("right" if np.cos(yaw) > 0 else "left")
    if spec.kind == "wave":
        side = "right" if spec["side"] > 0 else "left"
        return {"quadruped": f"raises its {side} paw", "bird": "flaps a wing"}.get(plan, f"waves its {side} arm")
    return {"jump": "jumps", "turn": "turns around", "dance": "dances"}[spec.kind]
