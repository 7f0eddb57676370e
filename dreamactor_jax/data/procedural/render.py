"""Vectorised numpy rendering: characters as anti-aliased capsules, and OpenPose-style skeleton images.

Every bone is a capsule (a segment with a radius) rasterised by exact per-pixel distance with a
1-pixel soft edge; heads and eyes are discs (zero-length capsules). Primitives are depth-sorted per
frame and composited back to front; fields are computed only inside the window the figures reach,
so a clip of T frames with P primitives costs a handful of (T, P, h, w) array operations.

Pixel convention (shared with the keypoints): x to the right, y down, the origin at the top-left
image corner, pixel (row r, column c) centred at (c + 0.5, r + 0.5). Outputs are float32 RGB in
[-1, 1] (pose images: black background = -1).
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import numpy as np

from dreamactor_jax.data.procedural.characters import ROLES, Appearance, pattern_mask
from dreamactor_jax.data.procedural.motion import PosedSubject

_LIMB_GROUPS = frozenset({"shoulder", "arm_upper", "arm_lower", "hip", "leg_upper", "leg_lower", "foot", "ear"})


def _role_colours() -> np.ndarray:
    """(R, 3) saturated pose colours: right side warm, left side cool, midline magenta/white."""
    hues = {("shoulder", 1): 0.0, ("arm_upper", 1): 0.05, ("arm_lower", 1): 0.11, ("hip", 1): 0.15,
            ("leg_upper", 1): 0.2, ("leg_lower", 1): 0.25, ("foot", 1): 0.3, ("ear", 1): 0.08,
            ("shoulder", -1): 0.5, ("arm_upper", -1): 0.55, ("arm_lower", -1): 0.61, ("hip", -1): 0.65,
            ("leg_upper", -1): 0.7, ("leg_lower", -1): 0.75, ("foot", -1): 0.8, ("ear", -1): 0.58,
            ("spine", 0): 0.9, ("neck", 0): 0.85, ("head", 0): 0.95, ("tail", 0): 0.4, ("nose", 0): 0.13}
    out = np.ones((len(ROLES), 3), np.float32)  # unlisted roles (root) are white
    for i, role in enumerate(ROLES):
        if role in hues:
            sat = 0.55 if role[0] in ("head", "nose", "ear") else 1.0
            out[i] = colorsys.hsv_to_rgb(hues[role], sat, 1.0)
    return out


ROLE_COLOURS = _role_colours()


def _crop(a_tp2: np.ndarray, b_tp2: np.ndarray, radius_tp: np.ndarray, height: int, width: int) -> tuple:
    """(y0, y1, x0, x1): the image window any primitive can touch over the clip, so fields skip empty pixels."""
    r = radius_tp[..., None] + 1.0
    lo = np.floor(np.minimum(a_tp2, b_tp2) - r).min((0, 1))
    hi = np.ceil(np.maximum(a_tp2, b_tp2) + r).max((0, 1))
    x0, y0 = int(np.clip(lo[0], 0, width)), int(np.clip(lo[1], 0, height))
    x1, y1 = int(np.clip(hi[0], x0, width)), int(np.clip(hi[1], y0, height))
    return y0, y1, x0, x1


def capsule_field(a_tp2: np.ndarray, b_tp2: np.ndarray, radius_tp: np.ndarray, height: int, width: int,
                  origin: tuple[int, int] = (0, 0), coords: bool = True) -> tuple:
    """Per-pixel coverage and bone coordinates of T x P capsules over a (height, width) window.

    Args:
      a_tp2, b_tp2: segment end points in image pixels (x, y).
      radius_tp: capsule radii in pixels.
      height, width: window size.
      origin: (row, column) of the window's top-left pixel in the image.
      coords: also return the along/across bone coordinates (for patterns).

    Returns:
      alpha_tphw: coverage in [0, 1] with a 1-pixel linear edge.
      dist_ratio_tphw: distance to the segment over the radius (1 on the outline).
      along_tphw: signed distance along the bone from ``a`` (pixels), when ``coords``.
      across_tphw: signed distance across the bone (pixels), when ``coords``.
    """
    xs = (np.arange(width, dtype=np.float32) + np.float32(origin[1] + 0.5))[None, None, None, :]
    ys = (np.arange(height, dtype=np.float32) + np.float32(origin[0] + 0.5))[None, None, :, None]
    a_tp2, b_tp2 = a_tp2.astype(np.float32), b_tp2.astype(np.float32)
    ax, ay = a_tp2[..., 0, None, None], a_tp2[..., 1, None, None]
    vx, vy = b_tp2[..., 0, None, None] - ax, b_tp2[..., 1, None, None] - ay
    len2 = np.maximum(vx * vx + vy * vy, np.float32(1e-6))
    inv_len2 = 1.0 / len2
    dx, dy = xs - ax, ys - ay  # (T, P, 1, w) and (T, P, h, 1): the big arrays start below
    proj = dx * (vx * inv_len2) + dy * (vy * inv_len2)
    u = np.minimum(np.maximum(proj, 0.0), 1.0)
    # |d - u v|^2 = |d|^2 + u (u - 2 proj) |v|^2: fewer full-size passes than forming d - u v.
    dist = u - 2.0 * proj
    dist *= u
    dist *= len2
    dist += dx * dx + dy * dy
    np.maximum(dist, 0.0, out=dist)
    np.sqrt(dist, out=dist)
    r = radius_tp.astype(np.float32)[..., None, None]
    alpha = (r + np.float32(0.5)) - dist
    np.minimum(np.maximum(alpha, 0.0, out=alpha), 1.0, out=alpha)
    dist *= 1.0 / np.maximum(r, np.float32(1e-3))
    if not coords:
        return alpha, dist
    inv_len = np.sqrt(inv_len2)
    return alpha, dist, proj * (len2 * inv_len), dx * (vy * inv_len) - dy * (vx * inv_len)


def layer_weights(alpha_tphw: np.ndarray, order_tp: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Weights of "over" compositing: image = sum_p weight_p * colour_p + transmittance * background.

    Args:
      alpha_tphw: coverage of P layers.
      order_tp: per frame, layer indices from back to front (None: 0..P-1, P-1 in front).

    Returns:
      (weight_tphw, transmittance_thw). Only a P-step loop over (T, H, W) slices runs in Python; the
      colours are then applied with one matrix product, so per-pixel work stays vectorised.
    """
    t, p_count = alpha_tphw.shape[:2]
    weight = np.empty_like(alpha_tphw)
    trans = np.ones((t, *alpha_tphw.shape[2:]), np.float32)
    frames = np.arange(t)
    for rank in range(p_count - 1, -1, -1):  # front to back
        if order_tp is None:
            a = alpha_tphw[:, rank]
            weight[:, rank] = a * trans
        else:
            idx = order_tp[:, rank]
            a = alpha_tphw[frames, idx]
            weight[frames, idx] = a * trans
        trans -= a * trans
    return weight, trans


def _apply_colours(weight_tphw: np.ndarray, colour_pc: np.ndarray) -> np.ndarray:
    """(T, 3, H, W) = sum over p of weight_p * colour_p, as one batched matrix product."""
    t, p_count, h, w = weight_tphw.shape
    return np.matmul(colour_pc.T.astype(np.float32), weight_tphw.reshape(t, p_count, h * w)).reshape(t, 3, h, w)


def background_image(appearance: Appearance, height: int, width: int, ground_px: float) -> np.ndarray:
    """(H, W, 3) in [0, 1]: a two-colour linear gradient sky over a floor band below ``ground_px``."""
    ys = (np.arange(height, dtype=np.float32)[:, None] + 0.5) / height
    xs = (np.arange(width, dtype=np.float32)[None, :] + 0.5) / max(height, width)
    ang = appearance.background_angle
    g = np.clip(np.cos(ang) * ys + np.sin(ang) * (xs - 0.5) + 0.5 * (1 - np.cos(ang)), 0, 1)[..., None]
    top, bottom = np.array(appearance.background_top), np.array(appearance.background_bottom)
    sky = (1 - g) * top + g * bottom
    floor_hw = np.clip(np.arange(height, dtype=np.float32)[:, None] + 0.5 - ground_px + 0.5, 0.0, 1.0)[..., None]
    depth = np.clip((np.arange(height, dtype=np.float32)[:, None] - ground_px) / max(height - ground_px, 1), 0, 1)
    floor = np.array(appearance.floor) * (1.0 - 0.25 * depth[..., None])
    return (sky * (1 - floor_hw) + floor * floor_hw).astype(np.float32)


def _subject_primitives(subject: PosedSubject) -> dict:
    """Capsules, head disc and eyes of one posed subject as arrays over P primitives."""
    ch = subject.character
    plan, shape, look = ch.plan, ch.shape, ch.appearance
    kp, depth, ppu = subject.keypoints_tj2, subject.depth_tj, subject.px_per_unit
    bones = [j for j in range(1, plan.num_joints) if shape.radii[j] > 0]
    parents = plan.parents[bones]
    patterned = pattern_mask(plan, look)[bones]
    limb = np.array([plan.groups[j] in _LIMB_GROUPS for j in bones])
    colour, accent = np.array(look.colour, np.float32), np.array(look.accent, np.float32)
    two_tone = look.pattern == "two-tone"
    base = np.where((patterned & two_tone)[:, None], accent, colour)
    if plan.nose_colour is not None:
        base = np.where(np.array([plan.groups[j] == "nose" for j in bones])[:, None], plan.nose_colour, base)
    pattern_kind = {"striped": 1, "spotted": 2}.get(look.pattern, 0)
    head = plan.head
    a = np.concatenate([kp[:, parents], kp[:, [head]], subject.eyes_tk2], 1)
    b = np.concatenate([kp[:, bones], kp[:, [head]], subject.eyes_tk2], 1)
    # Biases break depth ties the way a viewer expects: limbs over the torso, eyes over the head.
    bone_depth = 0.5 * (depth[:, parents] + depth[:, bones]) + np.where(limb, 0.02 * ppu, 0.0)
    d = np.concatenate([bone_depth, depth[:, [head]] + 0.01 * ppu, subject.eye_depth_tk + 0.05 * ppu], 1)
    radius = np.concatenate([shape.radii[bones], [shape.head_radius], np.full(2, 0.2 * shape.head_radius)]) * ppu
    n_bones = len(bones)
    colours = np.concatenate([base, colour[None], np.array(look.eye, np.float32)[None].repeat(2, 0)])
    pattern = np.concatenate([np.where(patterned, pattern_kind, 0), [0, 0, 0]])
    shaded = np.concatenate([np.ones(n_bones + 1, bool), [False, False]])
    sides = np.concatenate([plan.sides[bones], [0, 0, 0]])
    # Limbs on the far side of the body read as "behind": darken them.
    far = (sides[None] != 0) & (d < subject.root_depth_t[:, None])
    return dict(a=a, b=b, depth=d, radius=np.broadcast_to(np.maximum(radius, 0.35), d.shape),
                colour=colours, accent=np.broadcast_to(accent, colours.shape), pattern=pattern, shaded=shaded,
                dim=np.where(far, 0.78, 1.0), period=max(look.pattern_period * ppu, 3.0))


def render_scene(subjects: Sequence[PosedSubject], appearance: Appearance, height: int, width: int,
                 ground_px: float) -> np.ndarray:
    """Renders posed subjects over ``appearance``'s background: (T, H, W, 3) float32 in [-1, 1]."""
    prims = [_subject_primitives(s) for s in subjects]
    cat = lambda k, axis: np.concatenate([p[k] for p in prims], axis)
    a, b, depth, radius, dim = cat("a", 1), cat("b", 1), cat("depth", 1), cat("radius", 1), cat("dim", 1)
    colour, accent, pattern, shaded = cat("colour", 0), cat("accent", 0), cat("pattern", 0), cat("shaded", 0)
    period = np.concatenate([np.full(len(p["pattern"]), p["period"], np.float32) for p in prims])
    t = a.shape[0]
    bg = background_image(appearance, height, width, ground_px)[None] * _shadows(subjects, height, width)[..., None]
    out = np.ascontiguousarray(np.broadcast_to(bg, (t, height, width, 3)).transpose(0, 3, 1, 2), np.float32)
    patt = np.nonzero(pattern > 0)[0]
    for f in _frame_chunks(t, a.shape[1], height * width):
        y0, y1, x0, x1 = _crop(a[f], b[f], radius[f], height, width)
        if y1 <= y0 or x1 <= x0:
            continue
        alpha, ratio, *coords = capsule_field(a[f], b[f], radius[f], y1 - y0, x1 - x0, (y0, x0), coords=len(patt) > 0)
        # Tube shading: darker toward the outline gives the capsules a rounded, 3D look; far limbs dim.
        shade = np.where(shaded[None, :, None, None], 1.0 - 0.32 * np.minimum(ratio, 1.0) ** 2, 1.0)
        shade *= dim[f].astype(np.float32)[..., None, None]
        # Back to front per frame (stable: ties keep the drawing order).
        weight, trans = layer_weights(alpha, np.argsort(depth[f], axis=1, kind="stable"))
        weight *= shade
        window = _apply_colours(weight, colour) + trans[:, None] * out[f, :, y0:y1, x0:x1]
        if len(patt):
            window += _apply_colours(weight[:, patt] * _pattern_mix(coords, pattern, period, radius[f], patt),
                                     accent[patt] - colour[patt])
        out[f, :, y0:y1, x0:x1] = window
    return np.clip(out.transpose(0, 2, 3, 1) * 2.0 - 1.0, -1.0, 1.0).astype(np.float32)


def _frame_chunks(t: int, p_count: int, pixels: int, budget: int = 1 << 22) -> list[slice]:
    """Frame slices small enough that (frames, P, H, W) fields stay under ``budget`` elements."""
    step = max(1, budget // max(p_count * pixels, 1))
    return [slice(i, min(i + step, t)) for i in range(0, t, step)]


def _pattern_mix(coords, pattern_p, period_p, radius_tp, patt) -> np.ndarray:
    """(T, P', h, w) accent coverage of the patterned primitives ``patt`` (1 = accent colour)."""
    along, across = coords[0][:, patt], coords[1][:, patt]
    per = period_p[patt][None, :, None, None]
    cell = along / per
    frac = cell - np.floor(cell)
    # Stripes: a triangle wave with a 1-pixel ramp at each edge (anti-aliased, no sin).
    stripes = np.clip((np.abs(frac - 0.5) - 0.25) * per + 0.5, 0.0, 1.0)
    offset = np.where(np.mod(np.floor(cell), 2) == 0, 0.3, -0.3) * radius_tp[:, patt, None, None]
    spots = np.clip(0.3 * per - np.sqrt(((frac - 0.5) * per) ** 2 + (across - offset) ** 2) + 0.5, 0.0, 1.0)
    return np.where((pattern_p[patt] == 1)[None, :, None, None], stripes, spots).astype(np.float32)


def _shadows(subjects: Sequence[PosedSubject], height: int, width: int) -> np.ndarray:
    """(T, H, W) multiplicative darkening: a soft ellipse on the ground under each subject."""
    xs = np.arange(width, dtype=np.float32)[None, None, :] + 0.5
    ys = np.arange(height, dtype=np.float32)[None, :, None] + 0.5
    out = 1.0
    for s in subjects:
        ch = s.character
        cx = s.keypoints_tj2[:, :, 0].mean(1)[:, None, None]
        half = 0.3 * ch.plan.size * s.px_per_unit
        rx, ry = max(half, 1.0), max(0.25 * half, 0.7)
        lift = np.clip(s.ground_px - s.keypoints_tj2[:, :, 1].max(1), 0, None)[:, None, None]
        d = np.sqrt(((xs - cx) / rx) ** 2 + ((ys - s.ground_px) / ry) ** 2)
        out = out * (1.0 - 0.3 * np.clip(1.2 - d, 0, 1) / (1.0 + 0.2 * lift))
    return np.broadcast_to(out, (len(subjects[0].keypoints_tj2), height, width))


def render_pose(keypoints_tsj2: np.ndarray, parents_sj: np.ndarray, roles_sj: np.ndarray, mask_sj: np.ndarray,
                height: int, width: int, line_px: float | None = None) -> np.ndarray:
    """OpenPose-style skeleton video: coloured bones and joint dots on black, (T, H, W, 3) in [-1, 1].

    Args:
      keypoints_tsj2: pixel keypoints of S subjects with J (padded) joints.
      parents_sj: parent joint index, -1 for roots and padding.
      roles_sj: index into ``characters.ROLES`` (fixes each bone's colour).
      mask_sj: 1 for real joints, 0 for padding.
      height, width: image size.
      line_px: bone radius in pixels (default grows with the image: max(0.6, min(H, W) / 48)).

    Returns:
      The rendered pose video.
    """
    t = keypoints_tsj2.shape[0]
    r_line = line_px if line_px is not None else max(0.6, min(height, width) / 48.0)
    mask = np.asarray(mask_sj) > 0
    parents, roles = np.asarray(parents_sj), np.asarray(roles_sj)
    subj, joint = np.nonzero(mask)
    # One primitive per joint: the bone from its parent (a zero-length bone for roots) plus a dot at
    # the joint, so every keypoint is drawn once and every bone once.
    par = np.where(parents[subj, joint] >= 0, parents[subj, joint], joint)
    a = keypoints_tsj2[:, subj, par].astype(np.float32)
    b = keypoints_tsj2[:, subj, joint].astype(np.float32)
    colours = ROLE_COLOURS[roles[subj, joint]]
    out = np.zeros((t, 3, height, width), np.float32)
    if len(joint) == 0:
        return np.full((t, height, width, 3), -1.0, np.float32)
    r_dot = 1.45 * r_line
    radius = np.full(a.shape[:2], r_line, np.float32)
    for f in _frame_chunks(t, a.shape[1], height * width):
        y0, y1, x0, x1 = _crop(a[f], b[f], radius[f] * 1.45, height, width)
        if y1 <= y0 or x1 <= x0:
            continue
        alpha, _ = capsule_field(a[f], b[f], radius[f], y1 - y0, x1 - x0, (y0, x0), coords=False)
        xs = np.arange(x0, x1, dtype=np.float32)[None, None, None, :] + 0.5
        ys = np.arange(y0, y1, dtype=np.float32)[None, None, :, None] + 0.5
        dot = np.sqrt((xs - b[f, :, 0, None, None]) ** 2 + (ys - b[f, :, 1, None, None]) ** 2)
        alpha = np.maximum(alpha, np.clip(r_dot + 0.5 - dot, 0.0, 1.0))
        weight, _ = layer_weights(alpha)
        out[f, :, y0:y1, x0:x1] = _apply_colours(weight, colours)
    return (out.transpose(0, 2, 3, 1) * 2.0 - 1.0).astype(np.float32)
