"""Pixel records -> latent records: run a codec once, offline, instead of every training step.

Each input shard ``<src>/X-00003-of-00008.array_record`` becomes ``<out>/X-00003-of-00008.array_record``
with the same records in the same order (corrupt input records are skipped, counted and logged),
``kind="latents"``, ``target``/``reference``/``motion`` replaced by ``codec.encode`` of the pixels in
[-1, 1], ``motion_valid`` mapped to latent frames, and ``caption``/ids carried over. With a text
encoder the caption embeddings are stored as ``text``/``text_mask`` too; with an image encoder
(:class:`~dreamactor_jax.data.clip_image.CLIPImageEncoder`) the reference frame's CLIP tokens as ``image_tokens``
(the Wan2.1-I2V image branch).

Pose augmentation offline: with ``augment_variants=K`` every pixel record with ``keypoints`` is followed by K
variants whose motion is re-rendered from bone-length-augmented keypoints (``pipeline.AugmentPose`` with
probability 1, seeded per shard, record and variant: reruns write the same bytes). At 480p rendering an
augmented clip costs seconds (``AugmentPose``), far more than a train step, so large runs augment here and train
on the latents with ``config.data.records_pose_augment_prob=0``; the fraction of augmented samples is then
K / (K + 1) (the paper: 0.3, so K = 1 over-augments by ~0.2; pick K by the share you want).

Sharded across processes: process ``i`` of ``n`` handles input shards ``i::n``. Resumable: an output
shard is written under a temporary name and renamed when complete, so an existing output shard is
finished and skipped on the next run; temporaries of an interrupted run are overwritten.
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import os
import zlib

import numpy as np

from dreamactor_jax.data import records as rec
from dreamactor_jax.data.pipeline import latent_valid

log = logging.getLogger(__name__)


@dataclasses.dataclass
class PrecomputeReport:
    """Output shards written now, found complete (skipped), input shards unreadable, records written/corrupt."""

    written: list = dataclasses.field(default_factory=list)
    existing: list = dataclasses.field(default_factory=list)
    unreadable: list = dataclasses.field(default_factory=list)
    records: int = 0
    corrupt: int = 0


def encode_records(pixel_records: list[dict], codec, text_encoder=None, image_encoder=None) -> list[dict]:
    """Latent records of a list of pixel records (one ``codec.encode`` call per field for the whole list)."""
    out = [dict(kind="latents") for _ in pixel_records]
    for k in rec.VIDEO_FIELDS:
        px = np.stack([rec.uint8_to_pixels(r[k]) for r in pixel_records])
        lat = np.asarray(codec.encode(px), np.float32)
        for o, x in zip(out, lat):
            o[k] = x
    for o, r in zip(out, pixel_records):
        o["motion_valid"] = latent_valid(r["motion_valid"], codec.temporal_factor)
        for k in ("caption", "identity_id", "motion_id", "text", "text_mask", "keypoints"):
            if k in r:
                o[k] = r[k]
        if text_encoder is not None and "caption" in r:
            o["text"], o["text_mask"] = text_encoder(r["caption"])
    if image_encoder is not None:
        refs = np.stack([rec.uint8_to_pixels(r["reference"])[0] for r in pixel_records])
        for o, tok in zip(out, image_encoder.encode_batch(refs)):
            o["image_tokens"] = tok
    return out


def _variants(r: dict, k: int, seed_parts: tuple) -> list[dict]:
    """``r`` and ``k`` pose-augmented variants of it (motion re-rendered, keypoints augmented)."""
    if k <= 0:
        return [r]
    if "keypoints" not in r:
        raise ValueError("precompute augment_variants > 0 re-renders the motion from the records' keypoints, but a "
                         "record has no 'keypoints' field; ingest with launch/ingest.py (which stores them)")
    from dreamactor_jax.data.pipeline import AugmentPose

    aug = AugmentPose(prob=1.0)
    return [r] + [aug.random_map(r, np.random.default_rng([*seed_parts, v])) for v in range(k)]


def precompute_shard(src_path: str, out_path: str, codec, *, text_encoder=None, image_encoder=None,
                     batch_size: int = 8, augment_variants: int = 0, seed: int = 0) -> tuple[int, int]:
    """Encodes one input shard into one output shard (atomic); returns (records written, corrupt skipped)."""
    source = rec.RecordSource([src_path])  # FileNotFoundError when the shard is unreadable
    for stale in glob.glob(glob.escape(out_path) + ".tmp-*"):  # left by an interrupted run
        os.remove(stale)
    if source.kind != "pixels":
        raise ValueError(f"{src_path} holds {source.kind} records; precompute reads pixel records")
    corrupt = 0

    def latents():
        nonlocal corrupt
        batch = []
        for i in range(len(source)):
            try:
                name = zlib.crc32(os.path.basename(src_path).encode())  # a stable per-shard seed part
                batch.extend(_variants(source.read(i), augment_variants, (seed, name, i)))
            except rec.CorruptRecordError as e:
                # Skipped, not substituted: the output must hold each input example at most once.
                loc = source.locate(i)
                rec.STATS.corrupt(loc.file, loc.index, str(e))
                corrupt += 1
            if len(batch) >= batch_size or (i == len(source) - 1 and batch):
                yield from (rec.encode_record(r) for r in encode_records(batch, codec, text_encoder, image_encoder))
                batch = []

    n = rec.write_file(out_path, latents())
    source.close()
    return n, corrupt


def precompute(src, out_dir: str, codec, *, text_encoder=None, image_encoder=None, process_index: int = 0,
               process_count: int = 1, batch_size: int = 8, augment_variants: int = 0,
               seed: int = 0) -> PrecomputeReport:
    """Latent records for this process's share of the pixel record shards in ``src``.

    Args:
      src: directory / glob / list of pixel record files.
      out_dir: where latent shards go (same file names); created if missing.
      codec: a codec of ``dreamactor_jax.codecs`` (``encode`` on (B, T, H, W, 3) in [-1, 1]).
      text_encoder: optional caption -> (text, text_mask), stored in the records.
      image_encoder: optional ``encode_batch(images (B, H, W, 3) [-1, 1]) -> (B, M, E)``: the reference
        frame's tokens, stored as ``image_tokens``.
      process_index, process_count: this process handles input shards ``process_index::process_count``.
      batch_size: records per ``codec.encode`` call.
      augment_variants, seed: K pose-augmented variants after each record (see the module docstring).

    Returns:
      A :class:`PrecomputeReport` of this process's work.
    """
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} is not in [0, process_count={process_count})")
    files = rec.resolve_files(src)
    os.makedirs(out_dir, exist_ok=True)
    report = PrecomputeReport()
    for path in files[process_index::process_count]:
        out = os.path.join(out_dir, os.path.basename(path))
        if os.path.exists(out):  # final names only appear on completion: this shard is done
            report.existing.append(out)
            continue
        try:
            n, bad = precompute_shard(path, out, codec, text_encoder=text_encoder, image_encoder=image_encoder,
                                      batch_size=batch_size, augment_variants=augment_variants, seed=seed)
        except FileNotFoundError as e:  # truncated input shard: reported (skip_stats too), the rest goes on
            log.error("skipping input shard %s: %s", path, e)
            report.unreadable.append(path)
            continue
        log.info("wrote %s: %d latent records (%d corrupt inputs skipped)", out, n, bad)
        report.written.append(out)
        report.records += n
        report.corrupt += bad
    return report
