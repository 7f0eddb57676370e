"""Batch sources for the loop: ``source(step) -> host batch`` (numpy, this process's slice).

Every source is random access by step: batch ``i`` is a pure function of
(config, i), so a resumed run sees exactly the batches an uninterrupted run
would, and the "iterator state" is the step number saved with the checkpoint.
Per-process sharding: with several processes each builds only its block of rows of the global batch
(consecutive examples): block ``index`` of ``count`` equal blocks, from the mesh
(``parallel/feeding.py``; processes whose devices hold the same rows build the same block), by default the
``1/process_count`` slice in process order.

Sources (``config.data.source``):
  synthetic   the copy task of :mod:`dreamactor_jax.data.synthetic` (no files)
  procedural  the procedural character dataset, via grain (shuffle, map, batch),
              encoded to latents by ``config.data.codec``
  records     ArrayRecord files under ``config.data.records_dir`` (``data/records.py``): pixel
              records are encoded by the codec, latent records pass through

``config.data.pose_mix`` > 0 (stage 2) replaces that fraction of batches, chosen
per step by a seeded draw, with stage-1 pose batches: from ``config.data.pose_mix_records`` (the run's stage-1
records) when set, else from the procedural source.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import grain
import jax
import ml_collections
import numpy as np

from dreamactor_jax.data import pipeline, synthetic
from dreamactor_jax.data.components import build_codec, components
from dreamactor_jax.data.procedural import dataset as proc
from dreamactor_jax.data.text import TextEncoder

SOURCES = ("synthetic", "procedural", "records")


def codec_from(config: ml_collections.ConfigDict):
    """The run's codec (``config.data.codec``, with its weights and tiling), built once per setting: see
    :func:`dreamactor_jax.data.components.build_codec`."""
    return build_codec(config)


def procedural_config(config: ml_collections.ConfigDict, split: str | None = None) -> proc.ProceduralConfig:
    """Pixel-space generator settings: latent sizes times the codec's factors (pose augmentation on train only)."""
    return components(config).procedural(split)


class EncodeExample(grain.transforms.Map):
    """Procedural example -> latent training fields of ``data/schema.py`` (no batch axis)."""

    def __init__(self, codec, text_encoder: TextEncoder, stage: int, masked_frames: int):
        self.codec, self.text, self.stage, self.masked = codec, text_encoder, stage, masked_frames

    def map(self, example: dict) -> dict:
        px = proc.training_fields(example, stage=self.stage, text_encoder=self.text, masked_frames=0)
        lat = {k: self.codec.encode(px[k][None])[0] for k in ("target", "reference", "motion")}
        valid = np.ones((lat["target"].shape[0],), np.float32)
        valid[: self.masked] = 0.0
        lat["motion"] = lat["motion"] * valid[:, None, None, None]
        return dict(lat, motion_valid=valid, text=px["text"], text_mask=px["text_mask"])


def procedural_dataset(config: ml_collections.ConfigDict, text_dim: int, *, split: str | None = None,
                       stage: int | None = None, process_index: int | None = None,
                       process_count: int | None = None) -> grain.MapDataset:
    """Shuffled, encoded grain MapDataset over the procedural generator; item ``i`` is this process's slice of
    global batch ``i`` (process index/count default to JAX's)."""
    d = config.data
    split = split or d.split
    pi = jax.process_index() if process_index is None else process_index
    pc = jax.process_count() if process_count is None else process_count
    lo, hi = synthetic.process_slice(d.batch_size, pi, pc)
    n = d.procedural.num_examples
    if n < d.batch_size:
        raise ValueError(f"config.data.procedural.num_examples={n} is less than one global batch ({d.batch_size})")
    ds = grain.MapDataset.source(proc.ProceduralSource(split, procedural_config(config, split), length=n))
    if split == "train":
        ds = ds.shuffle(seed=config.seed)
    comp = components(config)
    ds = ds.map(EncodeExample(comp.codec, comp.text_for(text_dim), stage or d.stage, d.motion_masked_frames))
    # Global batch i is examples [i*B, (i+1)*B); this process's slice of it is per-process batch i*pc + pi.
    # Batching per process, then striding, encodes only this process's examples (MapDatasets are lazy);
    # the cut to whole global batches keeps every process's epoch the same length.
    ds = ds.batch(hi - lo, drop_remainder=True)[: (n // d.batch_size) * pc][pi::pc]
    return ds.repeat(None) if split == "train" else ds


def make_source(config: ml_collections.ConfigDict, text_dim: int, shard: tuple[int, int] | None = None
                ) -> Callable[[int], dict]:
    """``source(step) -> host batch`` for ``config.data.source``.

    ``shard``: (index, count): build rows block ``index`` of ``count`` of each global batch (the loop's
    ``feeding.row_block``); default (process index, process count).
    """
    d = config.data
    index, count = shard if shard is not None else (jax.process_index(), jax.process_count())
    if d.source == "synthetic":
        return functools.partial(synthetic.synthetic_batch, config.seed, batch=d.batch_size, frames=d.frames,
                                 height=d.height, width=d.width, channels=d.channels, text_len=d.text_len,
                                 text_dim=text_dim, masked_frames=d.motion_masked_frames,
                                 process_index=index, process_count=count)
    if d.source == "procedural":
        ds = procedural_dataset(config, text_dim, process_index=index, process_count=count)
        return lambda step: ds[step]
    if d.source == "records":
        # Checks the records against the config (latent T/H/W/C, stored text shape).
        comp = components(config)
        toy = comp.text_for(text_dim) if d.get("text_source", "toy") == "toy" else None
        img = comp.model.image_dim  # an I2V model reads the records' CLIP image tokens
        main = pipeline.make_records_source(config, text_dim, codec=comp.codec, text=toy, image_dim=img,
                                            shard=(index, count))
        if d.pose_mix <= 0:
            return main
        if d.get("pose_mix_records"):  # the run's stage-1 records (pose-driven), checked like the main records
            pose_cfg = ml_collections.ConfigDict(config.to_dict())
            pose_cfg.data.update(records_dir=d.pose_mix_records, pose_mix=0.0, stage=1)
            pose = pipeline.make_records_source(pose_cfg, text_dim, codec=comp.codec, text=toy, image_dim=img,
                                                shard=(index, count))
        else:
            pose = procedural_dataset(config, text_dim, split="train", stage=1, process_index=index,
                                      process_count=count).__getitem__
        return lambda step: pose(step) if _mix_draw(config.seed, step) < d.pose_mix else main(step)
    raise ValueError(f"config.data.source={d.source!r} is unknown; available: {SOURCES}")


PREVIEW_SOURCES = ("validation", "train")


def preview_batch(config: ml_collections.ConfigDict, text_dim: int, n: int, which: str = "validation") -> dict:
    """A fixed batch of ``n`` examples for sample previews (host numpy latents, the schema of ``data/schema.py``).

    ``validation``: examples 0..n-1 of the procedural generator's validation split (identities and motions
    held out of training), encoded by the run's codec and driven as ``config.data.stage`` trains (pose
    render or RGB), with the tiny text encoder; whatever the training source. ``train``: the first ``n``
    examples of training batch 0 (the same on every process; not held out), for runs whose data or text
    the generator cannot stand in for.
    """
    d = config.data
    if which == "validation":
        comp = components(config)
        enc = EncodeExample(comp.codec, comp.text_for(text_dim), d.stage, d.motion_masked_frames)
        pcfg = procedural_config(config, "validation")
        exs = [enc.map(proc.make_example("validation", i, pcfg)) for i in range(n)]
        return {k: np.stack([e[k] for e in exs]) for k in exs[0]}
    if which == "train":
        batch = make_source(config, text_dim)(0)
        if jax.process_count() > 1:  # each process holds its own slice: everyone previews process 0's
            from jax.experimental import multihost_utils

            batch = jax.tree.map(np.asarray, multihost_utils.broadcast_one_to_all(batch))
        if batch["target"].shape[0] < n:
            raise ValueError(f"config.train.preview_examples={n} exceeds the per-process batch "
                             f"({batch['target'].shape[0]}) of preview_source='train'")
        return {k: np.asarray(v[:n]) for k, v in batch.items()}
    raise ValueError(f"config.train.preview_source={which!r}; choose one of {PREVIEW_SOURCES}")


def _mix_draw(seed: int, step: int) -> float:
    return float(np.random.default_rng([seed, step, 0x313]).random())


def data_section(**overrides) -> ml_collections.ConfigDict:
    """``config.data`` with every field documented (latent sizes; pixel sizes follow from the codec)."""
    c = ml_collections.ConfigDict()
    c.source = "procedural"  # one of SOURCES
    c.split = "train"  # procedural split to train on
    c.stage = 1  # 1: pose-render motion; 2: RGB driving video
    c.batch_size = 2  # global batch (paper: 2)
    c.frames = 21  # latent frames T
    c.height = 60  # latent height of one canvas half
    c.width = 104  # latent width of one canvas half; the canvas is 2x
    c.channels = 16  # latent channels C; the model input is 2C + 4
    c.text_len = 512  # text tokens L
    c.motion_masked_frames = 4  # latent frames with the driving signal masked (first second)
    c.records_dir = ""  # ArrayRecord directory for source='records'
    # Stage-1 pose augmentation of pixel records with keypoints (launch/ingest.py writes them): on this fraction
    # of draws, bone lengths x U(0.8, 1.2) and the motion re-rendered (paper: 0.3); 0: off
    c.records_pose_augment_prob = 0.0
    c.pose_mix = 0.0  # fraction of batches drawn from stage-1 pose data instead (stage 2 mixing)
    # Where the pose_mix batches come from: a directory of stage-1 records (the run's own: real runs), or ""
    # for the procedural generator's stage-1 examples (tiny runs)
    c.pose_mix_records = ""
    # Captions -> text for records: 'toy' (the seeded hash encoder, data/text.py: tiny runs) encodes a record's
    # caption when it stores no text; 'records' (real runs) requires the precomputed umT5 'text' of every record
    # (launch/precompute.py --umt5_dir) and refuses records without it
    c.text_source = "toy"
    # CLIP image tokens per record for an I2V model (config.model image_dim set): records must store
    # 'image_tokens' of (image_tokens, image_dim) (launch/precompute.py --clip_dir; Wan2.1-I2V: 257 x 1280)
    c.image_tokens = 257
    # A local CLIP vision checkpoint for the phases of an I2V model that need tokens of new images (synthesis's
    # new identities, eval's references, launch/sample.py); training reads them from the records
    c.clip_dir = ""
    c.prefetch = 2  # host batches built ahead in a background thread while the device steps (0: off)
    # name: 'space_to_depth' (exact, tiny runs) | 'wan_vae' (spatial_factor 8; weights: a diffusers
    # AutoencoderKLWan dir or Wan2.1_VAE.pth; tiling: spatial tiles for large frames)
    c.codec = ml_collections.ConfigDict(dict(name="space_to_depth", spatial_factor=2, weights="", tiling=False))
    c.procedural = ml_collections.ConfigDict(dict(
        num_examples=1_000_000,  # examples per epoch of the generator
        body_plans=("humanoid", "quadruped", "cartoon", "bird"),
        max_subjects=2, two_subject_prob=0.2,
        cross_mode="shape",  # what the cross identity may change: appearance | shape | any
        pose_augment_prob=0.3,  # paper: bone-length scaling in U(0.8, 1.2) on 30% of samples
        fps=8.0,  # frame rate the motions are sampled at (pixel frames; the codec may compress time)
        travel=(0.0, 0.0),  # (lo, hi) fraction of the width a subject drifts across over a clip
    ))
    c.update(overrides)
    return c


class Prefetcher:
    """Builds host batches ``source(i+1) .. source(i+depth)`` in a background thread while step ``i`` runs.

    Sources are pure functions of the step, so prefetching changes no batch: ``get(i)`` returns exactly
    ``source(i)``. Procedural generation and record decoding are host work that would otherwise stall the
    device between steps (measured on the tiny curriculum: 66 ms of data per 158 ms step). A source's exception
    is raised by the ``get`` of the step it belongs to; ``close`` drops what is still queued.
    """

    def __init__(self, source: Callable[[int], dict], depth: int = 2, limit: int | None = None):
        import concurrent.futures

        self.source, self.depth, self.limit = source, max(int(depth), 0), limit  # limit: no step >= it is built
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch") \
            if self.depth else None
        self._futures: dict = {}

    def get(self, step: int) -> dict:
        if self._pool is None:
            return self.source(step)
        for stale in [s for s in self._futures if s < step]:  # a jump (resume) leaves old work behind
            self._futures.pop(stale).cancel()
        for s in range(step, step + self.depth + 1):
            if s not in self._futures and (s == step or self.limit is None or s < self.limit):
                self._futures[s] = self._pool.submit(self.source, s)
        return self._futures.pop(step).result()

    def close(self) -> None:
        if self._pool is not None:
            for f in self._futures.values():
                f.cancel()
            self._futures.clear()
            self._pool.shutdown(wait=True, cancel_futures=True)
