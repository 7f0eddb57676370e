"""grain pipelines over record files (``data/records.py``): random access by batch, or a resumable iterator.

Sharding across processes: process ``i`` of ``n`` reads the contiguous interval of records that
``grain.sharding.ShardOptions(i, n, drop_remainder)`` gives it (grain's ``even_split``): the
processes' shards are disjoint and, without ``drop_remainder``, their union is the data set. With
``drop_remainder=True`` (the default) every process gets ``len // n`` records, so all processes run
the same number of batches per epoch (collectives would otherwise deadlock at an epoch's end).
``batch_size`` is always the *global* batch; each process builds ``batch_size // n`` examples.

Both variants shuffle the same way per epoch (grain reseeds each epoch with ``seed + epoch``) and are
deterministic in (files, seed, process index/count):

- :func:`records_dataset` -> ``grain.MapDataset``: ``ds[step]`` is batch ``step`` (the loop's
  ``source(step)``; the step number is the whole iterator state).
- :func:`records_loader` -> ``grain.DataLoader`` with ``worker_count`` worker processes; its iterator's
  ``get_state()`` / ``set_state()`` resume exactly (save the state with the train state).

:class:`ToTraining` maps a record to the training fields of ``data/schema.py`` (codec for pixel
records, caption -> text when the record stores none, first-frame motion masking).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import grain
import numpy as np
from absl import flags

from dreamactor_jax.data import augment, ingest
from dreamactor_jax.data import records as rec
from dreamactor_jax.data.text import TextEncoder


def _process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax  # only when the caller leaves it to the runtime: tests pass both explicitly

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} is not in [0, process_count={process_count})")
    return int(process_index), int(process_count)


def _per_process(batch_size: int, process_count: int) -> int:
    if batch_size < 1 or batch_size % process_count:
        raise ValueError(f"global batch_size={batch_size} must be a positive multiple of process_count={process_count}")
    return batch_size // process_count


def shard_interval(num_records: int, process_index: int, process_count: int, drop_remainder: bool = True
                   ) -> tuple[int, int]:
    """[start, stop) of this process's records, exactly as grain's ``IndexSampler`` shards them (``even_split``)."""
    per = num_records // process_count
    start, stop = per * process_index, per * (process_index + 1)
    if not drop_remainder:  # the first (num_records % process_count) processes take one extra record
        rest = num_records % process_count
        start, stop = start + min(process_index, rest), stop + min(process_index + 1, rest)
    return start, stop


def _source(files) -> rec.RecordSource:
    return files if isinstance(files, rec.RecordSource) else rec.RecordSource(files)


def records_dataset(files, *, batch_size: int, seed: int = 0, shuffle: bool = True, process_index: int | None = None,
                    process_count: int | None = None, transform: grain.transforms.Map | None = None,
                    num_epochs: int | None = None, drop_remainder: bool = True,
                    augment: AugmentPose | None = None) -> grain.MapDataset:
    """Batches of this process's records, random access by batch index.

    Args:
      files: a :class:`~dreamactor_jax.data.records.RecordSource`, a directory, a glob or a list of files.
      batch_size: the global batch; this process's batches hold ``batch_size // process_count`` examples.
      seed: shuffle seed (epoch ``e`` uses ``seed + e``).
      shuffle: shuffle within this process's shard, freshly each epoch.
      process_index, process_count: default ``jax.process_index()`` / ``jax.process_count()``.
      transform: applied per example before batching (e.g. :class:`ToTraining`); None keeps records.
      augment: a random transform applied before ``transform`` (e.g. :class:`AugmentPose`); its draw for an
        example depends on (seed, position in the repeated dataset), so every epoch draws afresh and a
        resumed run draws the same.
      num_epochs: None repeats forever; else the data set ends after that many epochs.
      drop_remainder: equal shards (see module docstring).

    Returns:
      ``grain.MapDataset`` whose item ``i`` is batch ``i`` (dict of arrays with a leading batch axis).
    """
    source = _source(files)
    pi, pc = _process(process_index, process_count)
    per = _per_process(batch_size, pc)
    lo, hi = shard_interval(len(source), pi, pc, drop_remainder)
    if hi - lo < per:
        raise ValueError(f"process {pi} of {pc} has {hi - lo} records, fewer than its batch of {per}")
    ds = grain.MapDataset.source(source)[lo:hi]
    if shuffle:
        ds = ds.shuffle(seed=seed)
    if augment is not None:
        ds = ds.random_map(augment, seed=seed)
    if transform is not None:
        ds = ds.map(transform)
    # Batch before repeat: a batch never straddles two epochs, so batch i is the same whatever num_epochs is.
    return ds.batch(per, drop_remainder=True).repeat(num_epochs)


def _allow_workers() -> None:
    # grain's worker processes read absl flags; outside app.run (tests, notebooks) they would raise
    # UnparsedFlagAccessError. Launchers go through app.run, where this is a no-op.
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def records_loader(files, *, batch_size: int, seed: int = 0, shuffle: bool = True, worker_count: int = 0,
                   worker_buffer_size: int = 2, read_threads: int = 2, prefetch: int = 64,
                   process_index: int | None = None, process_count: int | None = None,
                   transform: grain.transforms.Map | None = None, num_epochs: int | None = None,
                   drop_remainder: bool = True) -> grain.DataLoader:
    """A ``grain.DataLoader`` over the records: ``iter(loader)`` yields batches; the iterator resumes exactly.

    Same sharding, shuffling and batching arguments as :func:`records_dataset`. ``worker_count``
    worker processes decode and transform in parallel (0: in this process); ``transform`` must be a
    module-level class so workers can import it. ``read_threads`` threads read and decode records in
    each worker (grain's default of 16 suits remote storage; on local disks with few cores it thrashes:
    measured 2.5x slower than 1-2 threads on 2 cores). ``it.get_state()`` returns bytes;
    ``iter(loader).set_state(state)`` in a fresh loader continues with the same batches. Corrupt
    records skipped inside workers are counted in the workers' ``skip_stats()`` (and logged there).
    """
    source = _source(files)
    pi, pc = _process(process_index, process_count)
    per = _per_process(batch_size, pc)
    sampler = grain.samplers.IndexSampler(
        num_records=len(source), shuffle=shuffle, seed=seed, num_epochs=num_epochs,
        shard_options=grain.sharding.ShardOptions(pi, pc, drop_remainder=drop_remainder))
    ops = ([transform] if transform is not None else []) + [grain.transforms.Batch(per, drop_remainder=True)]
    if worker_count:
        _allow_workers()
    return grain.DataLoader(data_source=source, sampler=sampler, operations=ops, worker_count=worker_count,
                            worker_buffer_size=worker_buffer_size,
                            read_options=grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch))


# ----------------------------------------------------------------------------- records -> training fields


# OpenPose-18 with the neck first, so that every parent precedes its joint (augment.augment_track needs it),
# and the parent table in that order.
_PARENT_FIRST = np.array([1, 0, *range(2, 18)])
_PARENTS = ingest.OPENPOSE_18_PARENTS[_PARENT_FIRST]
_PARENTS = np.where(_PARENTS >= 0, np.argsort(_PARENT_FIRST)[np.maximum(_PARENTS, 0)], -1)


class AugmentPose(grain.transforms.RandomMap):
    """Stage-1 pose augmentation of real clips: pixel records with ``keypoints`` get, on a ``prob`` fraction
    of draws, bone lengths scaled by U(0.8, 1.2) and boxes renormalised per frame
    (:func:`~dreamactor_jax.data.augment.augment_track`), and their motion re-rendered from the result in
    ingestion's skeleton style; the other draws pass through unchanged.

    Cost (2-core CPU, one augmented record, 18 joints): 15 ms at 17 frames of 64 x 64 (1 subject), 5.8 s at
    81 frames of 480 x 832 (2 subjects), almost all of it the rendering. The first is far below a train step;
    the second is not, so at 480p it belongs in precompute (K augmented variants per clip), not the loader.
    """

    def __init__(self, prob: float = 0.3, min_confidence: float = 0.05):
        self.prob, self.min_confidence = float(prob), float(min_confidence)

    def random_map(self, r: dict, rng: np.random.Generator) -> dict:
        kp = np.asarray(r["keypoints"], np.float32)
        if kp.shape[2] != 18:
            raise ValueError(f"record keypoints have {kp.shape[2]} joints; pose augmentation draws OpenPose-18")
        aug, applied = augment.augment_track(rng, kp[:, :, _PARENT_FIRST], _PARENTS, prob=self.prob)
        if not applied:
            return r
        aug = aug[:, :, np.argsort(_PARENT_FIRST)]
        h, w = np.shape(r["motion"])[1:3]
        motion = ingest.render_openpose(aug, h, w, self.min_confidence)
        return dict(r, motion=rec.pixels_to_uint8(motion), keypoints=aug)


def latent_valid(valid_t: np.ndarray, temporal_factor: int) -> np.ndarray:
    """Pixel-frame validity (T,) -> latent-frame validity (T'): a latent frame is valid iff all its frames are.

    Causal video codecs map frame 0 to latent 0 and frames ``(j-1)f+1 .. jf`` to latent ``j``.
    """
    valid_t = np.asarray(valid_t, np.float32)
    if temporal_factor == 1:
        return valid_t
    rest = valid_t[1:].reshape(-1, temporal_factor).min(1)
    return np.concatenate([valid_t[:1], rest]).astype(np.float32)


class ToTraining(grain.transforms.Map):
    """A record -> the training fields of ``data/schema.py`` (no batch axis), like ``EncodeExample``.

    Pixel records are encoded by ``codec`` (uint8 -> [-1, 1] -> latents); latent records pass through.
    Text comes from the record's ``text`` when stored, else from ``text_encoder(caption)``. The first
    ``masked_frames`` latent frames of the motion are hidden (valid 0, latents zeroed), and so is any
    frame the record marks invalid.
    """

    def __init__(self, codec=None, text_encoder: TextEncoder | None = None, masked_frames: int = 0,
                 image: bool = False):
        self.codec, self.text, self.masked, self.image = codec, text_encoder, int(masked_frames), bool(image)

    def map(self, r: dict) -> dict:
        kind = r.get("kind") or ("pixels" if np.asarray(r["target"]).dtype == np.uint8 else "latents")
        if kind == "pixels":
            if self.codec is None:
                raise ValueError("pixel records need a codec to become latents; pass ToTraining(codec=...)")
            out = {k: np.asarray(self.codec.encode(rec.uint8_to_pixels(r[k])[None])[0], np.float32)
                   for k in rec.VIDEO_FIELDS}
            valid = latent_valid(r["motion_valid"], self.codec.temporal_factor)
        else:
            out = {k: np.asarray(r[k], np.float32) for k in rec.VIDEO_FIELDS}
            valid = np.asarray(r["motion_valid"], np.float32).copy()
        valid[: self.masked] = 0.0
        out["motion"] = out["motion"] * valid[:, None, None, None]
        out["motion_valid"] = valid
        if "text" in r:
            out["text"], out["text_mask"] = np.asarray(r["text"], np.float32), np.asarray(r["text_mask"], np.float32)
        else:
            if self.text is None or "caption" not in r:
                raise ValueError("record has no 'text'; ToTraining needs a text_encoder and the record a 'caption'")
            cap = r["caption"]
            out["text"], out["text_mask"] = self.text(cap.decode() if isinstance(cap, bytes) else str(cap))
        if self.image:  # an I2V model: the reference's CLIP tokens (config_dataset checked the field exists)
            out["image"] = np.asarray(r["image_tokens"], np.float32)
        return out


def expected_latent_shape(source: rec.RecordSource, codec=None) -> tuple[int, int, int, int]:
    """(T, H, W, C) of the latents a source's records become (through ``codec`` for pixel records)."""
    t, h, w, c = source.spec["target"][1]
    if source.kind == "latents":
        return t, h, w, c
    if codec is None:
        raise ValueError("pixel records need a codec to tell their latent shape")
    return (*codec.latent_shape(t, h, w), codec.latent_channels)


def config_dataset(config, text_dim: int, *, codec, text: TextEncoder | None = None,
                   split: str | None = None, image_dim: int | None = None,
                   shard: tuple[int, int] | None = None) -> grain.MapDataset:
    """The ``records`` training source: ``config.data.records_dir`` -> batches of ``data/schema.py``.

    ``shard``: (index, count) of the row block this process builds (``parallel/feeding.py``); default
    (process index, process count). Processes with the same block read the same records.
    Checks that the records' latents and stored text fit the model config (clear error otherwise).
    Training shuffles and repeats forever; other splits make one ordered pass.
    """
    d = config.data
    if not d.get("records_dir"):
        raise ValueError("config.data.source='records' needs config.data.records_dir (a directory of "
                         f"*{rec.SUFFIX} files)")
    source = rec.RecordSource(os.path.expanduser(d.records_dir))
    want = (d.frames, d.height, d.width, d.channels)
    got = expected_latent_shape(source, codec)
    if tuple(got) != tuple(want):
        raise ValueError(f"records in {d.records_dir} ({source.kind}) give latents (T, H, W, C)={got}, but "
                         f"config.data wants {want} (frames, height, width, channels)")
    if d.get("text_source", "toy") == "records" and "text" not in source.spec:
        raise ValueError(f"config.data.text_source='records', but the records in {d.records_dir} have no 'text' "
                         f"field (fields: {sorted(source.spec)}); precompute umT5 text with launch/precompute.py "
                         "--umt5_dir, or set config.data.text_source='toy' for a toy run")
    if image_dim:
        want_img = (int(d.get("image_tokens", 257)), int(image_dim))
        if "image_tokens" not in source.spec:
            raise ValueError(f"the model is an I2V model (image_dim={image_dim}), but the records in {d.records_dir} "
                             f"have no 'image_tokens' field; precompute them with launch/precompute.py --clip_dir")
        if tuple(source.spec["image_tokens"][1]) != want_img:
            raise ValueError(f"records in {d.records_dir} store image_tokens of shape "
                             f"{source.spec['image_tokens'][1]}; the run needs {want_img} "
                             "(config.data.image_tokens, config.model image_dim)")
    if "text" in source.spec and source.spec["text"][1] != (d.text_len, text_dim):
        raise ValueError(f"records in {d.records_dir} store text of shape {source.spec['text'][1]}, the model "
                         f"needs ({d.text_len}, {text_dim}); re-run precompute with --text_len/--text_dim")
    train = (split or d.split) == "train"
    prob = float(d.get("records_pose_augment_prob", 0.0))
    augment = None
    if prob > 0 and train:
        if source.kind != "pixels" or "keypoints" not in source.spec:
            raise ValueError(f"config.data.records_pose_augment_prob={prob} re-renders the motion from the records' "
                             f"keypoints, but the records in {d.records_dir} are {source.kind} records "
                             f"{'with' if 'keypoints' in source.spec else 'without'} keypoints; it needs pixel "
                             "records from launch/ingest.py (or set it to 0)")
        augment = AugmentPose(prob)
    if d.get("text_source", "toy") == "toy":  # the records' captions, when they store no text
        text = text or TextEncoder(length=d.text_len, dim=text_dim, seed=config.seed)
    else:
        text = None
    transform = ToTraining(codec, text, d.motion_masked_frames, image=bool(image_dim))
    index, count = shard if shard is not None else (None, None)
    return records_dataset(source, batch_size=d.batch_size, seed=config.seed, shuffle=train, transform=transform,
                           num_epochs=None if train else 1, augment=augment, process_index=index,
                           process_count=count)


def make_records_source(config, text_dim: int, *, codec, text: TextEncoder | None = None,
                        image_dim: int | None = None, shard: tuple[int, int] | None = None
                        ) -> Callable[[int], dict]:
    """``source(step) -> host batch`` for ``config.data.source == 'records'`` (see ``data/sources.py``)."""
    ds = config_dataset(config, text_dim, codec=codec, text=text, image_dim=image_dim, shard=shard)
    return lambda step: ds[step]
