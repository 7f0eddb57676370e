"""Evaluation on held-out cross-identity pairs of the procedural test split.

A pair: a driving clip of character A (test identity, test motion) and a new
character B (test identity) whose reference is B's first frame; the ground
truth is B performing A's motion, rendered exactly. Each model animates B's
reference with A's motion — the pose render for pose-driven models (untrained,
stage 1), A's RGB video for the end-to-end model (stage 2) — with the first
``masked_frames`` driving frames hidden as in training. Metrics are computed
on frames 1..T-1 (frame 0 is the given reference): PSNR, SSIM and keypoint
consistency against B's ground-truth keypoints.

Two settings (``SETTINGS``):

* ``clean_pose``: pose-driven models get the exact skeleton render (``pose_video``).
* ``estimated_pose``: pose-driven models get what a human 2D pose estimator would
  return on A's clip (``data/procedural/estimator.py``): accurate on humanoids, lossy
  and confused on quadrupeds, birds and cartoons. RGB-driven models need no
  estimator, so their row is the clean one (their outputs are reused, not resampled).

Every table also scores two baselines that use no motion at all: ``copy_reference``
(B's reference in every frame) and ``background`` (every frame filled with the
reference's background colour). A model that does not beat them has learnt nothing
about the motion. Every row is broken down by B's body plan (plus a non-humanoid
aggregate), since the estimated-pose gap is expected to open on non-humanoids.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np

from dreamactor_jax import fs
from dreamactor_jax.data import video_io
from dreamactor_jax.data.procedural import dataset as proc
from dreamactor_jax.data.procedural import estimator
from dreamactor_jax.diffusion.animator import Animator
from dreamactor_jax.eval import metrics

METRICS = ("psnr", "ssim", "keypoint_consistency")
SETTINGS = ("clean_pose", "estimated_pose")
BASELINES = ("copy_reference", "background")
SETTING_NOTES = {
    "clean_pose": "pose-driven models get the ground-truth skeleton render; rgb-driven ones the driving video",
    "estimated_pose": "pose-driven models get a simulated human pose estimator's skeleton (see estimator.py); "
                      "rgb-driven ones the driving video, as in clean_pose",
}


def baseline_video(name: str, example: dict) -> np.ndarray:
    """(T, H, W, 3) output of a motion-free baseline for ``example``'s cross reference."""
    ref = example["cross_reference"]
    shape = example["cross_video"].shape
    if name == "copy_reference":
        return np.broadcast_to(ref, shape)
    if name == "background":
        return np.broadcast_to(metrics.background_colour(ref).astype(np.float32), shape)
    raise ValueError(f"unknown baseline {name!r}; baselines are {BASELINES}")


def score(video_thw3: np.ndarray, example: dict) -> dict[str, float]:
    """The metrics of one generated clip against ``example``'s cross-identity ground truth, frames 1..T-1."""
    gt = example["cross_video"]
    return {"psnr": metrics.psnr(video_thw3[1:], gt[1:]), "ssim": metrics.ssim(video_thw3[1:], gt[1:]),
            "keypoint_consistency": metrics.keypoint_consistency(
                video_thw3[1:], example["cross_keypoints"][1:], example["cross_keypoint_mask"],
                example["cross_reference"])}


def _mean(columns: dict[str, list[float]], select: np.ndarray) -> dict:
    n = int(select.sum())
    out = {m: (float(np.mean(np.asarray(columns[m])[select])) if n else None) for m in METRICS}
    out["pairs"] = n
    return out


def aggregate(columns: dict[str, list[float]], plans: list[str], plan_names: tuple[str, ...]) -> dict:
    """Means of per-pair metric columns: overall, per body plan (with pair counts) and over non-humanoids.

    Args:
      columns: metric -> one value per pair.
      plans: the animated character's body plan of each pair.
      plan_names: the plans to report (ones without pairs get None metrics and ``pairs`` 0).
    """
    plans_a = np.asarray(plans)
    out = {m: float(np.mean(columns[m])) for m in METRICS}
    out["by_body_plan"] = {p: _mean(columns, plans_a == p) for p in plan_names}
    out["non_humanoid"] = _mean(columns, plans_a != "humanoid")
    return out


def _generate(anim, exs: list[dict], motions: list[np.ndarray], batch_size: int, seed: int, grid_pairs: int):
    """Animates every pair in batches, scoring each batch as it comes: (metric columns, first outputs for the grid).

    The rng of a batch depends only on its start, so two settings of one model differ only in their inputs.
    """
    columns = {m: [] for m in METRICS}
    grid = []
    for s in range(0, len(exs), batch_size):
        batch = exs[s : s + batch_size]
        gen = anim(np.stack([e["cross_reference"] for e in batch]), np.stack(motions[s : s + batch_size]),
                   [e["cross_caption"] for e in batch], jax.random.fold_in(jax.random.key(seed), s))
        gen = np.asarray(gen)
        for g, e in zip(gen, batch):
            for m, v in score(g, e).items():
                columns[m].append(v)
        grid.extend(gen[: max(grid_pairs - len(grid), 0)])
    return columns, grid


def evaluate(animators: dict[str, tuple[Animator, str]], pcfg: proc.ProceduralConfig, num_pairs: int,
             batch_size: int, out_dir: str, seed: int, grid_pairs: int = 4, *,
             settings: tuple[str, ...] = SETTINGS, estimator_seed: int | None = None) -> dict:
    """Scores every model and the baselines on ``num_pairs`` test pairs; writes the table and the grids.

    Args:
      animators: name -> (animator, driving kind 'pose' | 'rgb'); an animator is any callable
        ``(reference (B,H,W,3), motion (B,T,H,W,3), captions, rng) -> (B,T,H,W,3)`` in [-1, 1].
      pcfg: the procedural test-split config.
      num_pairs, batch_size: how many pairs, how many per animator call.
      out_dir: where ``table.json``, ``table.md``, ``grid.gif`` (and ``grid_estimated.gif``) go.
      seed: sampling seed (and the estimator's, unless ``estimator_seed``).
      grid_pairs: rows of the video grids.
      settings: which of ``SETTINGS`` to run; the first is the top-level ``results``.
      estimator_seed: seed of the simulated pose estimator.

    Returns:
      The table written to ``table.json``: ``pairs``, ``split``, ``frames_scored``, ``results`` (the first
      setting, by default clean_pose), ``settings`` (setting -> name -> row), ``setting_notes``, ``estimator``
      (its per-plan error and miss rate), ``per_pair`` (plans and metric columns). A row holds the metrics,
      ``driving``, ``baseline``, ``by_body_plan`` (plan -> metrics and ``pairs``) and ``non_humanoid``.
      ``summary(table)`` condenses it for a log line.
    """
    unknown = [s for s in settings if s not in SETTINGS] + [n for n in animators if n in BASELINES]
    if unknown or not settings:
        raise ValueError(f"unknown settings or model names reusing a baseline's: {unknown or settings}; "
                         f"settings are {SETTINGS}, baselines {BASELINES}")
    for name, (_, kind) in animators.items():
        if kind not in ("pose", "rgb"):
            raise ValueError(f"model {name!r}: driving kind {kind!r}; expected 'pose' or 'rgb'")
    fs.makedirs(out_dir)
    est_seed = seed if estimator_seed is None else int(estimator_seed)
    exs = [proc.make_example("test", i, pcfg) for i in range(num_pairs)]
    plans = [e["cross_body_plan"] for e in exs]
    motions = {"clean_pose": {"pose": [e["pose_video"] for e in exs]}}
    est_stats = None
    if "estimated_pose" in settings:
        estimates = [estimator.estimate_pose(e, est_seed) for e in exs]
        h, w = exs[0]["video"].shape[1:3]
        motions["estimated_pose"] = {"pose": [estimator.render_estimate(x, h, w) for x in estimates]}
        est_stats = _estimator_summary(exs, estimates, est_seed, tuple(pcfg.body_plans))
    for s in motions:
        motions[s]["rgb"] = [e["video"] for e in exs]

    columns = {s: {} for s in settings}
    grids = {s: {} for s in settings}
    for name, (anim, kind) in animators.items():
        for i, s in enumerate(settings):
            if kind == "rgb" and i > 0:  # same input in every setting: reuse the first setting's outputs
                columns[s][name], grids[s][name] = columns[settings[0]][name], grids[settings[0]][name]
                continue
            columns[s][name], grids[s][name] = _generate(anim, exs, motions[s][kind], batch_size, seed, grid_pairs)
    for b in BASELINES:
        cols = {m: [] for m in METRICS}
        for e in exs:
            for m, v in score(baseline_video(b, e), e).items():
                cols[m].append(v)
        for s in settings:
            columns[s][b] = cols

    kinds = {name: kind for name, (_, kind) in animators.items()}
    results = {s: {} for s in settings}
    for s in settings:
        for name, cols in columns[s].items():
            row = aggregate(cols, plans, tuple(pcfg.body_plans))
            results[s][name] = {**{m: row[m] for m in METRICS}, "driving": kinds.get(name, "none"),
                                "baseline": name in BASELINES, "by_body_plan": row["by_body_plan"],
                                "non_humanoid": row["non_humanoid"]}
    table = {"pairs": num_pairs, "split": "test", "frames_scored": "1..T-1", "results": results[settings[0]],
             "settings": results, "setting_notes": {s: SETTING_NOTES[s] for s in settings}}
    if est_stats is not None:
        table["estimator"] = est_stats
    table["per_pair"] = {"index": [e["index"] for e in exs], "body_plan": [e["body_plan"] for e in exs],
                         "cross_body_plan": plans, "settings": columns}
    fs.write_text(fs.join(out_dir, "table.json"), json.dumps(table, indent=2))
    fs.write_text(fs.join(out_dir, "table.md"), markdown_table(table))
    g = grid_pairs and min(grid_pairs, num_pairs)
    with fs.staged(out_dir) as local:  # the GIF writer writes local files
        if g and "clean_pose" in settings:
            write_grid(os.path.join(local, "grid.gif"), exs[:g], grids["clean_pose"])
        if g and "estimated_pose" in settings:
            write_grid(os.path.join(local, "grid_estimated.gif"), exs[:g], grids["estimated_pose"],
                       poses=motions["estimated_pose"]["pose"][:g])
    return table


def _estimator_summary(exs: list[dict], estimates: list[dict], seed: int, plan_names: tuple[str, ...]) -> dict:
    """Pooled error (fraction of frame height) and miss rate of the simulated estimator per driving body plan."""
    acc = {p: [0.0, 0, 0, 0] for p in plan_names}  # error sum, visible, joint-frames, subjects
    for e, x in zip(exs, estimates):
        for r in estimator.estimate_stats(e, x):
            a = acc.setdefault(r["plan"], [0.0, 0, 0, 0])
            a[0] += r["error"] * r["visible"] if r["visible"] else 0.0
            a[1], a[2], a[3] = a[1] + r["visible"], a[2] + r["joints"], a[3] + 1
    by_plan = {p: {"error": (a[0] / a[1] if a[1] else None), "miss_rate": (1 - a[1] / a[2] if a[2] else None),
                   "subjects": a[3]} for p, a in acc.items()}
    return {"seed": seed, "by_body_plan": by_plan,
            "note": "per driving subject: error = mean distance of returned joints to the truth / frame height; "
                    "miss_rate = fraction of true joint-frames not returned"}


def summary(table: dict) -> dict:
    """A short summary of ``table`` for a log line and DONE.json: pairs and per-setting PSNR / keypoint scores."""
    out = {"pairs": table["pairs"]}
    for m, short in (("psnr", "psnr"), ("keypoint_consistency", "kp")):
        out[short] = {s: {n: round(r[m], 3) for n, r in rows.items()} for s, rows in table["settings"].items()}
    return out


def _fmt(v, spec: str) -> str:
    return "–" if v is None else format(v, spec)


def markdown_table(table: dict) -> str:
    """The tables of ``table.md``: per setting, the overall table and a per-body-plan one."""
    lines = [f"Held-out cross-identity pairs: {table['pairs']} (procedural test split, frames 1..T-1)", ""]
    for s, rows in table.get("settings", {"clean_pose": table["results"]}).items():
        lines += [f"### {s}", ""]
        if s in table.get("setting_notes", {}):
            lines += [table["setting_notes"][s] + ".", ""]
        lines += ["| model | driving | PSNR (dB) | SSIM | keypoint consistency |", "|---|---|---|---|---|"]
        for name, r in rows.items():
            driving = f"{r['driving']} (baseline)" if r.get("baseline") else r["driving"]
            lines.append(f"| {name} | {driving} | {r['psnr']:.2f} | {r['ssim']:.4f} | "
                         f"{r['keypoint_consistency']:.3f} |")
        first = next(iter(rows.values()))
        if "by_body_plan" in first:
            plans = list(first["by_body_plan"])
            heads = [f"{p} ({first['by_body_plan'][p]['pairs']})" for p in plans]
            heads.append(f"non-humanoid ({first['non_humanoid']['pairs']})")
            lines += ["", f"{s} by body plan of the animated character (pairs): PSNR (dB) / keypoint consistency", "",
                      "| model | " + " | ".join(heads) + " |", "|---|" + "---|" * len(heads)]
            for name, r in rows.items():
                cells = [r["by_body_plan"][p] for p in plans] + [r["non_humanoid"]]
                label = f"{name} (baseline)" if r.get("baseline") else name
                lines.append(f"| {label} | " + " | ".join(
                    f"{_fmt(c['psnr'], '.2f')} / {_fmt(c['keypoint_consistency'], '.3f')}" for c in cells) + " |")
        lines.append("")
    if "estimator" in table:
        lines += ["Simulated pose estimator per driving body plan (subjects): mean error (fraction of frame "
                  "height) / miss rate", "", "| " + " | ".join(table["estimator"]["by_body_plan"]) + " |",
                  "|" + "---|" * len(table["estimator"]["by_body_plan"]),
                  "| " + " | ".join(f"{_fmt(r['error'], '.3f')} / {_fmt(r['miss_rate'], '.2f')} ({r['subjects']})"
                                    for r in table["estimator"]["by_body_plan"].values()) + " |", ""]
    return "\n".join(lines)


def write_grid(path: str, exs: list[dict], grids: dict, zoom: int = 3, poses: list[np.ndarray] | None = None) -> None:
    """GIF: one row per pair: reference | driving (pose, rgb) | each model's output | ground truth.

    Args:
      path: the GIF to write.
      exs: the pairs (one grid row each).
      grids: model name -> its outputs for ``exs`` (a list or array of (T, H, W, 3)).
      zoom: nearest-neighbour upscaling.
      poses: the pose column per pair (default: the clean ``pose_video``).
    """
    poses = [e["pose_video"] for e in exs] if poses is None else poses
    rows = [[e["cross_reference"], poses[i], e["video"], *(g[i] for g in grids.values()), e["cross_video"]]
            for i, e in enumerate(exs)]
    video_io.write_gif(path, video_io.grid_frames(rows, zoom=zoom), fps=4.0)
