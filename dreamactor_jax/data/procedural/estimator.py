"""A simulated human 2D pose estimator: what OpenPose / DWPose would return on a procedural clip.

DreamActor-M2's case for its second, RGB-driven stage is that pose-driven animation is only as good
as the pose estimator, and estimators are trained on people: on a person they are accurate, on a dog,
a bird or a cartoon creature they drop body parts, confuse limbs and flicker. ``estimate_pose`` turns
an example's exact driving keypoints into such an estimate, so evaluation can drive the pose models
with what they would get in practice instead of the ground-truth skeleton.

What the simulated estimator does, per subject of the driving clip:

1. Keeps only joints a human skeleton has: a joint survives when its (group, side) role occurs in the
   humanoid plan (tails and ears/antennae never do) and its plan does not list it as having no human
   counterpart (a quadruped's front toes, a bird's rump).
2. Adds a per-clip offset per joint (``bias``: an estimator fitting a human template to another body
   misplaces joints consistently) and per-frame Gaussian jitter (``jitter``), both as fractions of
   the frame height.
3. Mis-assigns per frame: with probability ``swap_lr`` left and right labels trade places, with
   ``swap_limbs`` the arm chain (shoulder, elbow, wrist) trades with the leg chain (hip, knee, ankle);
   real estimators flicker between such readings from one frame to the next.
4. Misses joints (``miss`` per joint and frame) and whole frames (``dropout``: the subject is not
   detected at all).

How hard each step hits depends on the plan (``PROFILES``): a humanoid keeps nearly everything with
about 2.5% jitter; a cartoon (humanoid-like, odd proportions) is partially matched; quadrupeds and
birds are matched badly. ``render_estimate`` draws the result with ``render.render_pose``, the style
of the clean pose video, so a model sees the same kind of image and only the information changes.

Everything is a pure function of (example split and index, seed): the same call gives the same
estimate, and estimates of different examples are independent.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from dreamactor_jax.data.procedural import characters as chars
from dreamactor_jax.data.procedural import render
from dreamactor_jax.data.procedural.dataset import SPLITS

_SALT = 0xE571
HUMAN_ROLES = frozenset(int(r) for r in chars.PLANS["humanoid"].roles)
# Arm chain <-> leg chain, joint by joint (the groups are unique per side in every plan).
_LIMB_SWAP = {"shoulder": "hip", "arm_upper": "leg_upper", "arm_lower": "leg_lower"}


@dataclasses.dataclass(frozen=True)
class Profile:
    """How a human pose estimator fares on one body plan.

    Attributes:
      jitter: per-frame Gaussian noise std of every coordinate, fraction of the frame height.
      bias: std of a per-clip constant offset per joint, fraction of the frame height.
      miss: probability that a kept joint is missed in a frame.
      dropout: probability that a subject is missed entirely in a frame.
      swap_lr: per-frame probability that left and right labels are swapped.
      swap_limbs: per-frame probability that the arm and leg chains are swapped.
      no_counterpart: joint names of the plan without a human counterpart (dropped), beyond those whose
        role a humanoid lacks.
    """

    jitter: float
    bias: float
    miss: float
    dropout: float
    swap_lr: float
    swap_limbs: float
    no_counterpart: tuple[str, ...] = ()


PROFILES: dict[str, Profile] = {
    # What the estimator was built for: small noise, a few misses, a rare left/right flip.
    "humanoid": Profile(jitter=0.025, bias=0.0, miss=0.03, dropout=0.0, swap_lr=0.02, swap_limbs=0.0),
    # Human topology with a big head and short legs: found, but placed loosely and flipped more often.
    "cartoon": Profile(jitter=0.045, bias=0.04, miss=0.15, dropout=0.05, swap_lr=0.12, swap_limbs=0.05),
    # Four legs seen from the side: front and hind legs read as arms and legs, often the wrong way round.
    "quadruped": Profile(jitter=0.07, bias=0.08, miss=0.3, dropout=0.15, swap_lr=0.3, swap_limbs=0.3,
                         no_counterpart=("r_ftoe", "l_ftoe")),
    # Wings are not arms and the legs are thin: the worst match.
    "bird": Profile(jitter=0.07, bias=0.08, miss=0.35, dropout=0.15, swap_lr=0.3, swap_limbs=0.25,
                    no_counterpart=("rump",)),
}


def plan_of(roles_j: np.ndarray, mask_j: np.ndarray) -> chars.BodyPlan | None:
    """The body plan whose joint roles a subject's (padded) skeleton table holds; None for padding."""
    n = int((np.asarray(mask_j) > 0).sum())
    if n == 0:
        return None
    for plan in chars.PLANS.values():
        if plan.num_joints == n and np.array_equal(np.asarray(roles_j)[:n], plan.roles):
            return plan
    raise ValueError(f"no body plan has this skeleton ({n} joints, roles {np.asarray(roles_j)[:n].tolist()})")


def _tables(plan: chars.BodyPlan, profile: Profile) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(kept (J,) bool, left/right permutation (J,), arm/leg permutation (J,)) of one plan."""
    kept = np.array([int(r) in HUMAN_ROLES and name not in profile.no_counterpart
                     for r, name in zip(plan.roles, plan.joint_names)])
    names = plan.joint_names
    lr = np.arange(plan.num_joints)
    for j, name in enumerate(names):
        other = {"r_": "l_", "l_": "r_"}.get(name[:2], "") + name[2:]
        if other in names:
            lr[j] = names.index(other)
    limbs = np.arange(plan.num_joints)
    slot = {(g, int(s)): j for j, (g, s) in enumerate(zip(plan.groups, plan.sides))}
    for a, b in _LIMB_SWAP.items():
        for side in (-1, 1):
            if (a, side) in slot and (b, side) in slot:
                limbs[slot[a, side]], limbs[slot[b, side]] = slot[b, side], slot[a, side]
    return kept, lr, limbs


def estimate_pose(example: dict, seed: int = 0, *, keypoint_key: str = "keypoints") -> dict:
    """Simulated human-estimator output for the driving keypoints of ``example``.

    Args:
      example: a ``dataset.make_example`` dict (uses ``keypoints``, ``keypoint_mask``, ``parents``,
        ``joint_roles``, ``video`` for the frame size, ``split`` and ``index``).
      seed: the estimator's seed; with the example's split and index it fixes every draw.
      keypoint_key: which keypoints to estimate from (``keypoints``: the driving clip).

    Returns:
      A dict of numpy arrays (T frames, S subjects, J padded joints):
        keypoints: (T, S, J, 2) float32 estimated pixel (x, y) per joint *label* (after mis-assignment
          a label may hold another joint's position); meaningful where ``visible``.
        visible: (T, S, J) bool, the joints the estimator returned in each frame.
        kept: (S, J) bool, joints with a human counterpart (the most it can ever return).
        parents, roles, mask: (S, J) the driving skeleton tables (labels keep their colours).
        swapped_lr, swapped_limbs, dropped: (T, S) bool, what happened in each frame.
        plans: list of S plan names ('' for padding).
    """
    kp = np.asarray(example[keypoint_key], np.float32)
    mask, parents, roles = (np.asarray(example[k]) for k in ("keypoint_mask", "parents", "joint_roles"))
    t, s_count, j_count, _ = kp.shape
    height = example["video"].shape[1]
    rng = np.random.default_rng([_SALT, int(seed), SPLITS.index(example["split"]), int(example["index"])])
    # Every draw has a fixed shape, whatever the plans: the stream (hence the estimate) of one example
    # does not depend on which joints its skeleton happens to have.
    noise = rng.standard_normal((t, s_count, j_count, 2)).astype(np.float32)
    bias = rng.standard_normal((s_count, j_count, 2)).astype(np.float32)
    u_miss = rng.random((t, s_count, j_count))
    u_drop, u_lr, u_limbs = rng.random((3, t, s_count))
    out = np.zeros_like(kp)
    visible = np.zeros((t, s_count, j_count), bool)
    kept_sj = np.zeros((s_count, j_count), bool)
    swapped_lr = np.zeros((t, s_count), bool)
    swapped_limbs = np.zeros((t, s_count), bool)
    dropped = np.zeros((t, s_count), bool)
    plans = []
    for s in range(s_count):
        plan = plan_of(roles[s], mask[s])
        plans.append("" if plan is None else plan.name)
        if plan is None:
            continue
        prof, n = PROFILES[plan.name], plan.num_joints
        kept, lr, limbs = _tables(plan, prof)
        kept_sj[s, :n] = kept
        swapped_lr[:, s], swapped_limbs[:, s] = u_lr[:, s] < prof.swap_lr, u_limbs[:, s] < prof.swap_limbs
        dropped[:, s] = u_drop[:, s] < prof.dropout
        for f in range(t):
            perm = np.arange(n)
            if swapped_limbs[f, s]:
                perm = perm[limbs]
            if swapped_lr[f, s]:
                perm = perm[lr]
            # Label j reports the position of joint perm[j]; noise belongs to the label (the detection).
            out[f, s, :n] = kp[f, s, perm] + height * (prof.bias * bias[s, :n] + prof.jitter * noise[f, s, :n])
        visible[:, s, :n] = kept[None] & (u_miss[:, s, :n] >= prof.miss) & ~dropped[:, s, None]
    out = np.where(visible[..., None], out, 0.0).astype(np.float32)
    return dict(keypoints=out, visible=visible, kept=kept_sj, parents=parents, roles=roles, mask=mask,
                swapped_lr=swapped_lr, swapped_limbs=swapped_limbs, dropped=dropped, plans=plans)


def _nearest_kept_ancestor(parents_sj: np.ndarray, kept_sj: np.ndarray) -> np.ndarray:
    """(S, J) parent table over kept joints only: a joint whose parent was dropped hangs from the next kept one."""
    out = np.full(parents_sj.shape, -1, np.int32)
    for s, j in zip(*np.nonzero(kept_sj)):
        p = parents_sj[s, j]
        while p >= 0 and not kept_sj[s, p]:
            p = parents_sj[s, p]
        out[s, j] = p
    return out


def render_estimate(estimate: dict, height: int, width: int, line_px: float | None = None) -> np.ndarray:
    """The estimate drawn like the clean pose video (``render.render_pose``): (T, H, W, 3) in [-1, 1].

    A joint is drawn only in frames where it is visible, and its bone only when the joint it hangs from is
    visible too (an estimator draws a limb between two detections); otherwise just its dot.
    """
    parents = _nearest_kept_ancestor(np.asarray(estimate["parents"]), estimate["kept"])
    frames = []
    for f in range(estimate["keypoints"].shape[0]):
        vis = estimate["visible"][f]
        par_vis = np.take_along_axis(vis, np.maximum(parents, 0), axis=1) & (parents >= 0)
        frames.append(render.render_pose(estimate["keypoints"][f : f + 1], np.where(par_vis, parents, -1),
                                         estimate["roles"], vis.astype(np.float32), height, width, line_px)[0])
    return np.stack(frames)


def estimated_pose_video(example: dict, seed: int = 0) -> np.ndarray:
    """``render_estimate(estimate_pose(example, seed))`` at the example's frame size."""
    _, h, w, _ = example["video"].shape
    return render_estimate(estimate_pose(example, seed), h, w)


def estimate_stats(example: dict, estimate: dict, *, keypoint_key: str = "keypoints") -> list[dict]:
    """Per subject: how far the estimate is from the truth, and how much of the body it lost.

    Returns:
      One dict per real subject: ``plan``; ``error``: mean distance of visible labels to the true joint of
      the same label, as a fraction of the frame height (NaN when nothing is visible); ``miss_rate``: the
      fraction of the true skeleton's joint-frames not returned (dropped parts count as missed);
      ``visible`` and ``joints``: the counts behind them.
    """
    kp = np.asarray(example[keypoint_key], np.float32)
    height = example["video"].shape[1]
    mask = np.asarray(example["keypoint_mask"]) > 0
    out = []
    for s, plan in enumerate(estimate["plans"]):
        if not plan:
            continue
        vis = estimate["visible"][:, s] & mask[None, s]
        d = np.linalg.norm(estimate["keypoints"][:, s] - kp[:, s], axis=-1)[vis] / height
        joints = int(mask[s].sum()) * kp.shape[0]
        out.append(dict(plan=plan, error=float(d.mean()) if d.size else float("nan"),
                        miss_rate=1.0 - vis.sum() / joints, visible=int(vis.sum()), joints=joints))
    return out
