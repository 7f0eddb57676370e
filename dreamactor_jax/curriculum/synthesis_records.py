"""Self-bootstrapped synthesis on real data: driving clips from records, new identities from an image pool.

The procedural twin is :mod:`dreamactor_jax.curriculum.synthesis`; this one reads what a real run has:

* **Driving clips**: the stage-1 records (``config.stage1.data.records_dir``) or any records
  ``config.synthesis.driving_records`` names: pixel records from ``launch/ingest.py`` or latent records from
  ``launch/precompute.py``, with the ``keypoints`` ingest stores (the acceptance score needs them).
* **New identities**: ``config.synthesis.reference_pool``, a folder of images (png, jpg, webp; cover-resized
  and centre-cropped to the clip size); caption: a sidecar ``<stem>.txt``, else the file name. Clip ``i``
  gets pool image ``i mod len(pool)``.
* **Text**: the generation is prompted with a target-oriented caption, ``"<identity caption>, <clip caption>"``;
  with ``data.text_source='records'`` the clip's stored umT5 text is used (no encoder at synthesis time), with
  'toy' the seeded hash encoder encodes the built caption. The stage-2 record keeps the clip's own text.
* **Acceptance** on real video: pose consistency is :func:`~dreamactor_jax.eval.metrics.pose_pck` of the
  keypoints the pose estimator (``config.synthesis.pose_model`` / ``detector``, the one ingest uses) finds in
  the synthetic frames against the driving keypoints; appearance consistency is the whole-frame colour
  histogram similarity with the new identity's image (no flat-background assumption). The score is their
  mean; pairs at or above ``threshold`` are kept.

Output, sharding and resumption are the procedural phase's: latent triplet records ``records/synthesis-*``
(target = the real clip, reference = its first frame, motion = the synthetic video), ``acceptance-NNNNN.jsonl``
per shard (per clip: scores, ids, pool image, accepted), totals summed over processes.
"""

from __future__ import annotations

import os

import jax
import ml_collections
import numpy as np

from dreamactor_jax import fs
from dreamactor_jax.curriculum.synthesis import run_shards
from dreamactor_jax.data import records, video_io
from dreamactor_jax.data.ingest import caption_for
from dreamactor_jax.data.pipeline import latent_valid
from dreamactor_jax.data.pose_estimator import estimate_openpose18
from dreamactor_jax.diffusion.animator import Animator
from dreamactor_jax.eval import metrics

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def load_pool(pool_dir: str, height: int, width: int) -> list[dict]:
    """The reference pool: [{image (H, W, 3) float32 [-1, 1], caption, path}], sorted by file name (captions as
    ingestion's: a sidecar ``<stem>.txt``, else the file name)."""
    if not pool_dir or not fs.isdir(pool_dir):
        raise FileNotFoundError(f"config.synthesis.reference_pool={pool_dir!r} is not a directory of images")
    paths = [p for p in fs.glob(pool_dir, "*") if p.lower().endswith(IMAGE_EXTENSIONS)]
    if not paths:
        raise FileNotFoundError(f"config.synthesis.reference_pool={pool_dir!r} holds no images "
                                f"({', '.join(IMAGE_EXTENSIONS)})")
    pool = []
    for p in paths:
        try:
            img = video_io.read_image(p, height, width)
        except OSError as e:
            raise ValueError(f"reference pool image {p} cannot be read: {e}") from e
        pool.append(dict(image=img, caption=caption_for(p), path=p))
    return pool


def run_synthesis_records(animator: Animator, codec, text_encoder, estimator, source: records.RecordSource,
                          pool: list[dict], scfg: ml_collections.ConfigDict, out_dir: str, seed: int, *,
                          text_from_records: bool, image_encoder=None) -> dict:
    """Writes accepted triplets as latent records under ``out_dir/records``; returns a summary.

    Args:
      animator: the frozen stage-1 model's sampler.
      codec: the run's codec (pixel records are encoded, synthetic latents decoded for scoring).
      text_encoder: captions -> (L, E) text (used unless ``text_from_records``).
      estimator: frame (H, W, 3) uint8 -> (P, K, 3) pixel keypoints (``pose_estimator.PoseEstimator``).
      source: the driving records (with ``keypoints``).
      pool: :func:`load_pool`'s new identities.
      scfg: ``config.synthesis`` (num_clips, batch_size, shard_size, threshold).
      text_from_records: use the records' stored ``text`` (required then) instead of ``text_encoder``.
      image_encoder: CLIP tokens of the new identities for an I2V model (``data/clip_image.py``); the stage-2
        record keeps the driving record's own ``image_tokens`` (of its real first frame, the stage-2 reference).
    """
    if "keypoints" not in source.spec:
        raise ValueError(f"synthesis on records scores pose consistency against the driving keypoints, but the "
                         f"records ({sorted(source.spec)}) have no 'keypoints' field; ingest them with "
                         "launch/ingest.py (which stores them) or precompute from such records")
    if text_from_records and "text" not in source.spec:
        raise ValueError("config.data.text_source='records', but the driving records have no 'text' field; "
                         "precompute umT5 text with launch/precompute.py --umt5_dir")
    pixels = source.kind == "pixels"
    num = min(int(scfg.num_clips), len(source))
    encoded: dict[int, tuple] = {}  # pool index -> (latent (1, h, w, C), CLIP tokens or None): each image once

    def identities(keys: list[int]) -> tuple[np.ndarray, np.ndarray | None]:
        new = sorted(set(keys) - set(encoded))
        if new:  # the batch's not yet encoded pool images, in one call per encoder
            imgs = np.stack([pool[k]["image"] for k in new])
            lats = np.asarray(codec.encode(imgs[:, None]), np.float32)
            toks = [None] * len(new) if image_encoder is None else image_encoder.encode_batch(imgs)
            encoded.update({k: (lat, tok) for k, lat, tok in zip(new, lats, toks)})
        lat = np.stack([encoded[k][0] for k in keys])
        return lat, None if image_encoder is None else np.stack([encoded[k][1] for k in keys])

    def make_shard(lo, hi):
        examples, rows = [], []
        for start in range(lo, hi, scfg.batch_size):
            idx = list(range(start, min(start + scfg.batch_size, hi)))
            recs = [source[i] for i in idx]
            keys = [i % len(pool) for i in idx]
            news = [pool[k] for k in keys]
            lat = {}
            for k in ("target", "reference", "motion"):
                arr = np.stack([np.asarray(r[k]) for r in recs])
                lat[k] = (np.asarray(codec.encode(video_io.to_pixels(arr)), np.float32) if pixels
                          else arr.astype(np.float32))
            new_ref, image = identities(keys)
            valid = np.stack([latent_valid(r["motion_valid"], codec.temporal_factor) if pixels
                              else np.asarray(r["motion_valid"], np.float32) for r in recs])
            valid[:, : animator.masked] = 0.0
            caps = [r.get("caption", "") for r in recs]  # records decode strings as str
            prompts = [f"{n['caption']}, {c}" if c else n["caption"] for n, c in zip(news, caps)]
            if text_from_records:
                text = np.stack([np.asarray(r["text"], np.float32) for r in recs])
                tmask = np.stack([np.asarray(r["text_mask"], np.float32) for r in recs])
            else:
                text, tmask = text_encoder.encode_batch(prompts)
            out = animator.latents(new_ref, lat["motion"], valid, text, tmask,
                                   jax.random.fold_in(jax.random.key(seed), start), image_bme=image)
            out = np.asarray(out, np.float32)
            video = np.clip(np.asarray(codec.decode(out)), -1.0, 1.0)
            for j, (i, r, n, v) in enumerate(zip(idx, recs, news, video)):
                pose = metrics.pose_pck(estimate_openpose18(estimator, v), np.asarray(r["keypoints"], np.float32))
                look = metrics.histogram_similarity(v, n["image"])
                sc = {"pose_consistency": pose, "appearance_consistency": look, "score": 0.5 * (pose + look)}
                ok = sc["score"] >= scfg.threshold
                rows.append(dict(sc, clip=i, identity_id=int(r.get("identity_id", -1)),
                                 new_identity=os.path.basename(n["path"]), prompt=prompts[j], accepted=bool(ok)))
                if ok:
                    ex = dict(target=lat["target"][j], reference=lat["reference"][j], motion=out[j],
                              motion_valid=np.ones(out.shape[1], np.float32), caption=caps[j],
                              identity_id=int(r.get("identity_id", 0)), motion_id=int(r.get("motion_id", i)))
                    if "image_tokens" in r:
                        ex["image_tokens"] = np.asarray(r["image_tokens"], np.float32)
                    if "text" in r:
                        ex.update(text=np.asarray(r["text"], np.float32), text_mask=np.asarray(r["text_mask"],
                                                                                                np.float32))
                    examples.append(ex)
        return examples, rows

    summary = run_shards(out_dir, num, scfg.shard_size, make_shard)
    return dict(summary, threshold=float(scfg.threshold), source="records", pool_images=len(pool))
