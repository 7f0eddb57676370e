"""Evaluation on real held-out clips (records), the twin of the procedural :mod:`evaluation`.

``config.eval.records_dir`` holds held-out clips (pixel records from ``launch/ingest.py`` or latent records
from ``launch/precompute.py``, with ``keypoints``). Two settings:

* ``self_reenactment`` (ground truth exists): clip i's first frame animated with clip i's own motion (its pose
  render for pose-driven models, its video for RGB-driven ones, as reenactment papers score them). PSNR and SSIM
  against the clip, frames 1..T-1.
* ``cross_identity`` (no ground truth): clip i's motion animating clip j's first frame, j the next clip of
  another identity. Pose consistency: :func:`~dreamactor_jax.eval.metrics.pose_pck` of what the pose estimator
  finds in the output against clip i's keypoints; appearance consistency: whole-frame colour-histogram
  similarity with clip j's first frame.

Rows: the models given (the base model the run starts from, stage 1, stage 2) and ``copy_reference`` (the
reference frame in every frame). Writes ``table.json`` and ``table.md``.
"""

from __future__ import annotations

import json

import jax
import numpy as np

from dreamactor_jax import fs
from dreamactor_jax.data import records, video_io
from dreamactor_jax.data.pose_estimator import estimate_openpose18
from dreamactor_jax.eval import metrics

SETTINGS = ("self_reenactment", "cross_identity")


def load_clips(source: records.RecordSource, codec, num: int) -> list[dict]:
    """The first ``num`` clips as pixels [-1, 1] (target (T,H,W,3), motion, keypoints, caption, text, ids)."""
    if "keypoints" not in source.spec:
        raise ValueError(f"evaluation on records scores pose consistency against the clips' keypoints, but the "
                         f"records have no 'keypoints' field ({sorted(source.spec)}); ingest them with "
                         "launch/ingest.py")
    clips = []
    for i in range(min(num, len(source))):
        r = source[i]
        if source.kind == "pixels":
            px = {k: video_io.to_pixels(np.asarray(r[k])) for k in ("target", "motion")}
        else:
            px = {k: np.clip(np.asarray(codec.decode(np.asarray(r[k], np.float32)[None]))[0], -1, 1)
                  for k in ("target", "motion")}
        clips.append(dict(px, keypoints=np.asarray(r["keypoints"], np.float32), caption=r.get("caption", ""),
                          identity_id=int(r.get("identity_id", i)), index=i,
                          text=None if "text" not in r else (np.asarray(r["text"], np.float32),
                                                             np.asarray(r["text_mask"], np.float32))))
    if len(clips) < 2:
        raise ValueError(f"evaluation on records needs at least 2 held-out clips, found {len(clips)}")
    return clips


def cross_partner(clips: list[dict], i: int) -> int:
    """The next clip (cyclically) of another identity, else the next clip."""
    n = len(clips)
    for d in range(1, n):
        if clips[(i + d) % n]["identity_id"] != clips[i]["identity_id"]:
            return (i + d) % n
    return (i + 1) % n


def evaluate_records(animators: dict, clips: list[dict], estimator, batch_size: int, out_dir: str, seed: int,
                     text_encoder=None) -> dict:
    """Scores every model and copy-reference in both settings; writes ``table.json`` and ``table.md``.

    Args:
      animators: name -> (animator, driving kind 'pose' | 'rgb'); an animator is
        ``(reference (B,H,W,3), motion (B,T,H,W,3), text (B,L,E), text_mask (B,L), rng) -> (B,T,H,W,3)``.
      clips: :func:`load_clips`.
      estimator: frame uint8 -> (P, K, 3) keypoints (the pose estimator ingest uses).
      text_encoder: captions -> (text, mask), for clips without stored text.
    """
    fs.makedirs(out_dir)
    partners = [cross_partner(clips, i) for i in range(len(clips))]

    def text_of(idx):
        if all(clips[i]["text"] is not None for i in idx):
            return (np.stack([clips[i]["text"][0] for i in idx]), np.stack([clips[i]["text"][1] for i in idx]))
        if text_encoder is None:
            raise ValueError("held-out records without 'text' and no text encoder to encode their captions")
        return text_encoder.encode_batch([clips[i]["caption"] for i in idx])

    def videos(anim, kind, setting):
        out = []
        for s in range(0, len(clips), batch_size):
            idx = list(range(s, min(s + batch_size, len(clips))))
            ref_idx = idx if setting == "self_reenactment" else [partners[i] for i in idx]
            ref = np.stack([clips[j]["target"][0] for j in ref_idx])
            mot = np.stack([clips[i]["motion" if kind == "pose" else "target"] for i in idx])
            text, tmask = text_of(idx)
            out.extend(np.asarray(anim(ref, mot, text, tmask, jax.random.fold_in(jax.random.key(seed), s))))
        return out

    rows = {s: {} for s in SETTINGS}
    entries = {**animators, "copy_reference": (None, "none")}
    for name, (anim, kind) in entries.items():
        for setting in SETTINGS:
            if anim is None:
                ref_idx = range(len(clips)) if setting == "self_reenactment" else partners
                gen = [np.broadcast_to(clips[j]["target"][:1], clips[i]["target"].shape)
                       for i, j in zip(range(len(clips)), ref_idx)]
            else:
                gen = videos(anim, kind, setting)
            if setting == "self_reenactment":
                cols = {"psnr": [metrics.psnr(g[1:], c["target"][1:]) for g, c in zip(gen, clips)],
                        "ssim": [metrics.ssim(g[1:], c["target"][1:]) for g, c in zip(gen, clips)]}
            else:
                cols = {"pose_consistency": [metrics.pose_pck(estimate_openpose18(estimator, g[1:]),
                                                              c["keypoints"][1:])
                                             for g, c in zip(gen, clips)],
                        "appearance_consistency": [metrics.histogram_similarity(g[1:], clips[j]["target"][0])
                                                   for g, j in zip(gen, partners)]}
            rows[setting][name] = {**{m: float(np.mean(v)) for m, v in cols.items()}, "driving": kind,
                                   "baseline": anim is None, "per_clip": cols}
    table = {"clips": len(clips), "split": "records", "frames_scored": "1..T-1", "settings": rows,
             "partners": partners, "index": [c["index"] for c in clips]}
    fs.write_text(fs.join(out_dir, "table.json"), json.dumps(table, indent=2))
    fs.write_text(fs.join(out_dir, "table.md"), markdown_table(table))
    return table


def markdown_table(table: dict) -> str:
    lines = [f"Held-out real clips: {table['clips']} (frames 1..T-1)", "",
             "### self_reenactment", "", "| model | driving | PSNR (dB) | SSIM |", "|---|---|---|---|"]
    for name, r in table["settings"]["self_reenactment"].items():
        lines.append(f"| {name} | {r['driving']}{' (baseline)' if r['baseline'] else ''} | {r['psnr']:.2f} | "
                     f"{r['ssim']:.4f} |")
    lines += ["", "### cross_identity", "", "| model | driving | pose consistency (PCK@0.2) | appearance |",
              "|---|---|---|---|"]
    for name, r in table["settings"]["cross_identity"].items():
        lines.append(f"| {name} | {r['driving']}{' (baseline)' if r['baseline'] else ''} | "
                     f"{r['pose_consistency']:.3f} | {r['appearance_consistency']:.3f} |")
    return "\n".join(lines) + "\n"


def summary(table: dict) -> dict:
    return {"clips": table["clips"],
            **{f"{s}_{m}": {n: round(r[m], 3) for n, r in table["settings"][s].items()}
               for s, m in (("self_reenactment", "psnr"), ("cross_identity", "pose_consistency"))}}
