"""Example records on disk: the one place that documents the format, its writer and its reader.

Files
  ArrayRecord files written with ``ArrayRecordWriter(path, 'group_size:1')`` (one record per chunk,
  so grain reads any record in O(1)), sharded as ``<name>-00000-of-00004.array_record``. A file only
  gets its final name once it is complete (written under a temporary name, then renamed), so a
  crashed writer never leaves a half file that looks finished.

Record = one example, as bytes (little-endian; no pickle anywhere)
  ``b"DAR1"`` | uint32 header length | header (UTF-8 JSON) | array bytes | uint32 CRC-32 of all before.
  The header is ``{"values": {field: str or int}, "arrays": [[field, dtype str, shape, offset, nbytes]]}``
  (offsets into the array bytes, 16-byte aligned; dtypes as ``np.dtype.str``, never ``object``).
  The CRC-32 (and riegeli's hash of every chunk) detects flipped or missing bytes on read.
  Not ``np.savez``: ``np.load`` parses headers with ``ast.literal_eval``, which on Python 3.11 fails
  at random (``SystemError: AST constructor recursion depth mismatch``) when grain's reader threads
  decode concurrently, and would make good records look corrupt.

Fields (per example, no batch axis; T frames, H x W pixels or latents, C channels, L x E text):

  ==============  ========  ============  =======  ==============================================
  field           kind      shape         dtype    meaning
  ==============  ========  ============  =======  ==============================================
  schema_version  all       ()            int64    ``SCHEMA_VERSION``; any other value is an error
  kind            all       ()            str      ``"pixels"`` or ``"latents"``
  target          pixels    (T, H, W, 3)  uint8    the clip, RGB 0..255 (``x / 127.5 - 1`` = [-1, 1])
                  latents   (T, H, W, C)  float*   codec latents of the clip
  reference       all       (1, H, W, C)  =target  the reference appearance
  motion          all       (T, H, W, C)  =target  pose render (stage 1) / driving clip (stage 2)
  motion_valid    all       (T,)          float32  1 where the motion frame is real, 0 where missing
  text            optional  (L, E)        float32  caption embeddings (``data/schema.py``)
  text_mask       optional  (L,)          float32  1 on real tokens (present iff ``text`` is)
  caption         optional  ()            str      target-oriented caption
  identity_id     optional  ()            int64    who is in the clip (held-out splits, eval)
  motion_id       optional  ()            int64    which motion / source clip
  image_tokens    optional  (M, E)        float32  CLIP tokens of the reference frame for the I2V image branch
                                                   (``data/clip_image.py``; Wan2.1-I2V: 257 x 1280)
  keypoints       optional  (Tp, S, J, 3) float32  the driving pose per pixel frame (Tp: the clip's pixel
                                                   frames), subject and joint: x, y in the record's
                                                   pixels, confidence (0: not detected); J = 18, the
                                                   OpenPose body order of ``data/keypoints.py``
  ==============  ========  ============  =======  ==============================================

  (float* = float32 or float16.) Training needs ``text`` or ``caption``; without stored ``text``
  the pipeline encodes the caption at load time.
  Every record of a dataset has the field set, dtypes and shapes of its first readable record.

Errors
  A missing data directory or no files: ``FileNotFoundError``. A record that decodes but breaks the
  schema (missing field, wrong shape vs the first record, wrong version): ``RecordSchemaError``
  naming the file, index and field; this stops the run, since the data set itself is wrong.
  A record that does not decode (corrupt bytes) or a file that cannot be opened (truncated: its
  footer is gone): skipped, counted in :func:`skip_stats` and logged with file and index; the run
  goes on, and :class:`RecordSource` serves the next readable record in its place so batch
  shapes stay fixed and the substitution is deterministic.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
import shutil
import struct
import tempfile
import threading
import zlib
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from array_record.python import array_record_module as arm

from dreamactor_jax import fs
from dreamactor_jax.data import video_io

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
KINDS = ("pixels", "latents")
VIDEO_FIELDS = ("target", "reference", "motion")
REQUIRED = ("schema_version", "kind", *VIDEO_FIELDS, "motion_valid")
OPTIONAL = ("text", "text_mask", "caption", "identity_id", "motion_id", "keypoints", "image_tokens")
STRING_FIELDS = ("kind", "caption")
INT_FIELDS = ("schema_version", "identity_id", "motion_id")
SUFFIX = ".array_record"
WRITER_OPTIONS = "group_size:1"
# Random access reads one record at a time: readahead would only read bytes nobody asked for.
READER_OPTIONS = "readahead_buffer_size:0"


class RecordSchemaError(ValueError):
    """A record that decodes but does not follow the schema (the data set is wrong: stop)."""


class CorruptRecordError(ValueError):
    """A record whose bytes do not decode (skipped and counted)."""


# ----------------------------------------------------------------------------- skip accounting


class _SkipStats:
    """Process-wide counts of skipped data; thread-safe. grain worker processes keep their own."""

    def __init__(self):
        self._lock = threading.Lock()
        self.reset()

    def reset(self):
        with self._lock:
            self.corrupt_reads = 0  # every read that hit a corrupt record (repeats each epoch)
            self.bad_files: dict[str, str] = {}
            self._seen: dict[tuple[str, int], str] = {}

    def corrupt(self, path: str, index: int, reason: str) -> None:
        with self._lock:
            self.corrupt_reads += 1
            first = (path, index) not in self._seen
            self._seen.setdefault((path, index), reason)
        if first:  # log each bad record once per process, not once per epoch
            log.warning("skipping corrupt record %s[%d]: %s", path, index, reason)

    def bad_file(self, path: str, reason: str) -> None:
        with self._lock:
            first = path not in self.bad_files
            self.bad_files.setdefault(path, reason)
        if first:
            log.error("skipping unreadable file %s (truncated or not an ArrayRecord file): %s", path, reason)

    def snapshot(self) -> dict:
        with self._lock:
            return dict(corrupt_reads=self.corrupt_reads, corrupt_records=len(self._seen),
                        bad_files=len(self.bad_files),
                        records=[dict(file=p, index=i, reason=r) for (p, i), r in list(self._seen.items())[:100]],
                        files=[dict(file=p, reason=r) for p, r in self.bad_files.items()])


STATS = _SkipStats()


def skip_stats() -> dict:
    """Counts of skipped data in this process: corrupt_reads, corrupt_records, bad_files, and details."""
    return STATS.snapshot()


def reset_skip_stats() -> None:
    STATS.reset()


# ----------------------------------------------------------------------------- encode / decode


pixels_to_uint8 = video_io.to_uint8  # [-1, 1] float pixels -> uint8 0..255 (rounded, clipped)
uint8_to_pixels = video_io.to_pixels  # uint8 0..255 -> float32 [-1, 1]


_MAGIC = b"DAR1"
_ALIGN = 16


def _value(name: str, value):
    if name in STRING_FIELDS:
        return value.decode() if isinstance(value, bytes) else str(value)
    return int(value)


def encode_record(example: Mapping, *, check: bool = True) -> bytes:
    """Checks ``example`` against the schema and serializes it (``schema_version`` is filled in if absent).

    Args:
      example: field -> value per the module table (``kind`` required); unknown fields are an error.
      check: False skips the schema rules (only for tests that need records breaking them).

    Returns:
      The record bytes.
    """
    ex = {"schema_version": SCHEMA_VERSION, **example}
    unknown = sorted(set(ex) - set(REQUIRED) - set(OPTIONAL))
    if unknown and check:
        raise RecordSchemaError(f"unknown field(s) {unknown}; records hold {list(REQUIRED + OPTIONAL)}")
    values = {k: _value(k, v) for k, v in ex.items() if k in STRING_FIELDS or k in INT_FIELDS}
    arrays = {k: np.ascontiguousarray(v) for k, v in ex.items() if k not in values}
    for k, a in arrays.items():
        if a.dtype.hasobject or a.dtype.kind not in "biuf":
            raise RecordSchemaError(f"field {k!r} has dtype {a.dtype}; records hold bool/int/float arrays and str/int")
    if check:
        check_example({**values, **arrays}, "example being written")
    table, chunks, offset = [], [], 0
    for k, a in arrays.items():
        pad = -offset % _ALIGN
        chunks += [b"\0" * pad, a.tobytes()]
        offset += pad
        table.append([k, a.dtype.str, list(a.shape), offset, a.nbytes])
        offset += a.nbytes
    header = json.dumps({"values": values, "arrays": table}, separators=(",", ":")).encode()
    body = b"".join([_MAGIC, struct.pack("<I", len(header)), header, *chunks])
    return body + struct.pack("<I", zlib.crc32(body))


def decode_record(data: bytes) -> dict:
    """Record bytes -> example dict (strings as ``str``, ids as ``int``); ``CorruptRecordError`` if unreadable."""
    data = bytes(data)
    if len(data) < 12 or data[:4] != _MAGIC:
        raise CorruptRecordError(f"not a record ({len(data)} bytes, starts {data[:4]!r})")
    if zlib.crc32(data[:-4]) != struct.unpack("<I", data[-4:])[0]:
        raise CorruptRecordError(f"CRC-32 mismatch over {len(data)} bytes")
    try:
        (n,) = struct.unpack("<I", data[4:8])
        header = json.loads(data[8 : 8 + n].decode())
        out = dict(header["values"])
        base = 8 + n
        for name, dtype, shape, offset, nbytes in header["arrays"]:
            dt = np.dtype(dtype)
            if dt.hasobject or int(np.prod(shape, dtype=np.int64)) * dt.itemsize != nbytes:
                raise ValueError(f"field {name!r}: {dtype} {shape} does not fill {nbytes} bytes")
            if base + offset + nbytes > len(data) - 4:
                raise ValueError(f"field {name!r} runs past the end of the record")
            # Copies: arrays of the caller's own, writable, not pinning the record bytes.
            out[name] = np.frombuffer(data, dt, nbytes // max(dt.itemsize, 1), base + offset).reshape(shape).copy()
    except (ValueError, KeyError, TypeError, struct.error) as e:  # a CRC-valid record a bug wrote wrongly
        raise CorruptRecordError(f"{type(e).__name__}: {e}") from e
    return out


def check_example(ex: Mapping, where: str) -> None:
    """Schema rules one example must satisfy on its own (see the module table)."""
    missing = [k for k in REQUIRED if k not in ex]
    if missing:
        raise RecordSchemaError(f"{where}: missing field {missing[0]!r} (records hold {list(REQUIRED)})")
    if ex["schema_version"] != SCHEMA_VERSION:
        raise RecordSchemaError(f"{where}: field 'schema_version' is {ex['schema_version']}, this reader "
                                f"understands {SCHEMA_VERSION}; rewrite the records")
    if ex["kind"] not in KINDS:
        raise RecordSchemaError(f"{where}: field 'kind' is {ex['kind']!r}, expected one of {KINDS}")
    target = np.asarray(ex["target"])
    if target.ndim != 4:
        raise RecordSchemaError(f"{where}: field 'target' has shape {target.shape}, expected (T, H, W, C)")
    t, h, w, c = target.shape
    want = {"reference": (1, h, w, c), "motion": (t, h, w, c), "motion_valid": (t,)}
    for k, shape in want.items():
        if np.shape(ex[k]) != shape:
            raise RecordSchemaError(f"{where}: field {k!r} has shape {np.shape(ex[k])}, expected {shape}")
    for k in VIDEO_FIELDS:
        dt, pixels = np.asarray(ex[k]).dtype, ex["kind"] == "pixels"
        if (pixels and (dt != np.uint8 or c != 3)) or (not pixels and dt.kind != "f"):
            raise RecordSchemaError(f"{where}: field {k!r} of a {ex['kind']} record is {dt} with {c} channels; "
                                    f"expected {'uint8 RGB' if pixels else 'float'}")
    if "keypoints" in ex:
        kp = np.asarray(ex["keypoints"])
        if kp.ndim != 4 or kp.shape[-1] != 3 or kp.dtype != np.float32 or (ex["kind"] == "pixels" and len(kp) != t):
            raise RecordSchemaError(f"{where}: field 'keypoints' is {kp.dtype} {kp.shape}; expected float32 "
                                    f"(T, S, J, 3){f' with T = {t}' if ex['kind'] == 'pixels' else ''}")
    if "image_tokens" in ex:
        tok = np.asarray(ex["image_tokens"])
        if tok.ndim != 2 or tok.dtype != np.float32:
            raise RecordSchemaError(f"{where}: field 'image_tokens' is {tok.dtype} {tok.shape}; expected float32 "
                                    "(M, E)")
    if ("text" in ex) != ("text_mask" in ex):
        raise RecordSchemaError(f"{where}: fields 'text' and 'text_mask' come together; got only one")
    if "text" in ex and (np.ndim(ex["text"]) != 2 or np.shape(ex["text_mask"]) != np.shape(ex["text"])[:1]):
        raise RecordSchemaError(f"{where}: field 'text' {np.shape(ex['text'])} / 'text_mask' "
                                f"{np.shape(ex['text_mask'])} are not (L, E) / (L,)")


def field_spec(ex: Mapping) -> dict[str, tuple]:
    """field -> (dtype string, shape) for arrays, ('str'|'int', ()) for scalars: what every record must match."""
    kind = lambda v: ("str", ()) if isinstance(v, str) else ("int", ()) if isinstance(v, int) else None
    return {k: kind(v) or (np.asarray(v).dtype.str, np.shape(v)) for k, v in ex.items()}


def check_against(ex: Mapping, spec: Mapping[str, tuple], where: str) -> None:
    """``RecordSchemaError`` naming the first field where ``ex`` differs from the first record's ``spec``."""
    check_example(ex, where)
    got = field_spec(ex)
    for k in [*spec, *got]:
        if k not in got:
            raise RecordSchemaError(f"{where}: missing field {k!r} that the first record has")
        if k not in spec:
            raise RecordSchemaError(f"{where}: field {k!r} is not in the first record")
        if got[k] != spec[k]:
            raise RecordSchemaError(f"{where}: field {k!r} has dtype/shape {got[k]}, the first record has {spec[k]}")


# ----------------------------------------------------------------------------- writing


def shard_name(prefix: str, index: int, count: int) -> str:
    return f"{prefix}-{index:05d}-of-{count:05d}{SUFFIX}"


def write_file(path: str, records: Iterable[bytes]) -> int:
    """Writes encoded records to one ArrayRecord file atomically (temp name, then rename); returns the count.

    A URL ``path`` (ArrayRecord writes local files only) is written to a local temp file, then uploaded as one
    object."""
    staging = fs.is_url(path)
    tmp = os.path.join(tempfile.mkdtemp(prefix="dreamactor_rec_"), "shard") if staging else (
        f"{path}.tmp-{os.getpid()}")
    writer = arm.ArrayRecordWriter(tmp, WRITER_OPTIONS)
    n = 0
    try:
        for r in records:
            writer.write(r)
            n += 1
    finally:
        writer.close()
    if staging:
        try:
            fs.put_file(tmp, path)
        finally:
            shutil.rmtree(os.path.dirname(tmp), ignore_errors=True)
    else:
        os.replace(tmp, path)
    return n


class ShardedWriter:
    """Streams examples into ``<prefix>-XXXXX-of-NNNNN.array_record`` shards of ``shard_size`` records.

    The shard count is only known at the end, so shards are written under temporary names and renamed
    by :meth:`close`; until then no file carries a final name.
    """

    def __init__(self, path_prefix: str, shard_size: int):
        if shard_size < 1:
            raise ValueError(f"shard_size={shard_size} must be >= 1")
        self.prefix, self.shard_size = os.fspath(path_prefix), int(shard_size)
        # A URL prefix: shards are written in a local temp directory and uploaded by close().
        self._stage = tempfile.mkdtemp(prefix="dreamactor_rec_") if fs.is_url(self.prefix) else None
        if self._stage is None:
            os.makedirs(os.path.dirname(os.path.abspath(self.prefix)), exist_ok=True)
        self._tmp: list[str] = []
        self._writer, self._in_shard, self.count = None, 0, 0

    def write(self, example: Mapping) -> None:
        data = encode_record(example)
        if self._writer is None or self._in_shard == self.shard_size:
            self._close_shard()
            local = self.prefix if self._stage is None else os.path.join(self._stage, "shard")
            self._tmp.append(f"{local}-{len(self._tmp):05d}{SUFFIX}.tmp-{os.getpid()}")
            self._writer = arm.ArrayRecordWriter(self._tmp[-1], WRITER_OPTIONS)
        self._writer.write(data)
        self._in_shard += 1
        self.count += 1

    def _close_shard(self):
        if self._writer is not None:
            self._writer.close()
            self._writer, self._in_shard = None, 0

    def close(self) -> list[str]:
        """Finishes the last shard and gives every shard its final name; returns the paths."""
        self._close_shard()
        paths = [shard_name(self.prefix, i, len(self._tmp)) for i in range(len(self._tmp))]
        for tmp, path in zip(self._tmp, paths):
            if self._stage is None:
                os.replace(tmp, path)
            else:
                fs.put_file(tmp, path)
        if self._stage is not None:
            shutil.rmtree(self._stage, ignore_errors=True)
        self._tmp = []
        return paths


def write_records(path_prefix: str, examples: Iterable[Mapping], shard_size: int) -> list[str]:
    """Writes examples (dicts per the module table, ``kind`` included) as sharded ArrayRecord files.

    Args:
      path_prefix: e.g. ``/data/clips/train`` -> ``/data/clips/train-00000-of-00004.array_record``.
      examples: any iterable; consumed once, streaming (memory ~ one example).
      shard_size: records per file (the last file may hold fewer).

    Returns:
      The shard paths, in order.
    """
    writer = ShardedWriter(path_prefix, shard_size)
    for ex in examples:
        writer.write(ex)
    if writer.count == 0:
        raise ValueError(f"write_records({path_prefix!r}): no examples to write")
    return writer.close()


# ----------------------------------------------------------------------------- reading


def resolve_files(files: str | os.PathLike | Sequence) -> list[str]:
    """A directory (its ``*.array_record``), a glob, one file or a list of files -> sorted existing paths."""
    if isinstance(files, (str, os.PathLike)):
        spec = os.fspath(files)
        if fs.is_url(spec) and fs.isdir(spec):
            out = fs.glob(spec, f"*{SUFFIX}")
            empty = f"records directory {spec} holds no *{SUFFIX} files"
        elif os.path.isdir(spec):
            out = sorted(glob.glob(os.path.join(glob.escape(spec), f"*{SUFFIX}")))
            empty = f"records directory {spec} holds no *{SUFFIX} files"
        elif any(ch in spec for ch in "*?["):
            if fs.is_url(spec):  # a pattern over one bucket directory: gs://b/recs/train-*.array_record
                directory, _, pattern = spec.rpartition("/")
                out = fs.glob(directory, pattern)
            else:
                out = sorted(glob.glob(spec))
            empty = f"no record files match {spec!r}"
        else:
            out, empty = [spec], ""
    else:
        out, empty = [os.fspath(f) for f in files], "no record files given"
    if not out:
        raise FileNotFoundError(empty)
    for f in out:
        if not fs.exists(f):
            what = "record file" if f.endswith(SUFFIX) else "records directory"
            raise FileNotFoundError(f"{what} {f} does not exist")
    return out


def _open(path: str):
    return arm.ArrayRecordReader(path, READER_OPTIONS)


@dataclasses.dataclass(frozen=True)
class Location:
    """Where a record lives: ``file`` (path), ``index`` within it, ``shard`` (position in ``files``)."""

    file: str
    index: int
    shard: int

    def __str__(self) -> str:
        return f"{self.file} record {self.index}"


class RecordSource:
    """Random access (``len`` / ``getitem``) over record files: decodes, validates, skips corrupt records.

    ``source[i]`` is the decoded example ``i`` (files concatenated in the given order). A corrupt record
    is counted in :func:`skip_stats`, logged, and replaced by the next readable record (wrapping around),
    so the result is deterministic and batches keep their shape. Unreadable (truncated) files count as
    empty and are reported once. Picklable: grain worker processes reopen files lazily.

    Attributes:
      files: the readable files; ``lengths`` their record counts.
      spec: field -> (dtype, shape) of the first readable record; every record must match it.
      kind: "pixels" or "latents".
    """

    def __init__(self, files, *, max_skip: int = 64):
        self.files, self.lengths = [], []
        for f in resolve_files(files):
            try:
                reader = _open(f)
                ok, n = reader.ok(), reader.num_records()
                reader.close()
            except Exception as e:  # unreadable header/footer: report the file, keep the others
                ok, n, why = False, 0, f"{type(e).__name__}: {e}".rstrip(": ")
            else:
                why = "no readable footer"
            if not ok:
                STATS.bad_file(f, why)
                continue
            self.files.append(f)
            self.lengths.append(n)
        self._offsets = np.cumsum([0, *self.lengths])
        if self._offsets[-1] == 0:
            raise FileNotFoundError(f"no readable records in {files!r} (see skip_stats() for unreadable files)")
        self.max_skip = int(max_skip)
        self._readers: list = [None] * len(self.files)
        self._lock = threading.Lock()
        self.spec = None
        first = self[0]  # the first readable record fixes the spec
        self.spec, self.kind = field_spec(first), first["kind"]

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def __repr__(self) -> str:
        return f"RecordSource({len(self.files)} files, {len(self)} records, kind={getattr(self, 'kind', None)})"

    def locate(self, index: int) -> Location:
        if not 0 <= index < len(self):
            raise IndexError(f"record index {index} out of range [0, {len(self)})")
        f = int(np.searchsorted(self._offsets, index, side="right")) - 1
        return Location(self.files[f], int(index - self._offsets[f]), f)

    def _reader(self, f: int):
        if self._readers[f] is None:
            with self._lock:
                if self._readers[f] is None:
                    self._readers[f] = _open(self.files[f])
        return self._readers[f]

    def read(self, index: int) -> dict:
        """Record ``index`` decoded and validated; raises ``CorruptRecordError`` / ``RecordSchemaError``."""
        loc = self.locate(index)
        try:
            data = self._reader(loc.shard).read([loc.index])[0]
        except RuntimeError as e:  # riegeli hash mismatches and short reads
            raise CorruptRecordError(f"{loc}: {type(e).__name__}: {e}") from e
        try:
            ex = decode_record(data)
        except CorruptRecordError as e:
            raise CorruptRecordError(f"{loc}: {e}") from e
        if self.spec is None:
            check_example(ex, str(loc))
        else:
            check_against(ex, self.spec, str(loc))
        return ex

    def __getitem__(self, index) -> dict:
        index = int(index) % len(self)
        for k in range(min(self.max_skip, len(self))):
            j = (index + k) % len(self)
            try:
                return self.read(j)
            except CorruptRecordError as e:
                loc = self.locate(j)
                STATS.corrupt(loc.file, loc.index, str(e))
        raise CorruptRecordError(f"{min(self.max_skip, len(self))} consecutive corrupt records from "
                                 f"{self.locate(index)}; the data set looks damaged")

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_readers"], state["_lock"] = None, None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._readers = [None] * len(self.files)
        self._lock = threading.Lock()

    def close(self) -> None:
        for r in self._readers:
            if r is not None:
                r.close()
        self._readers = [None] * len(self.files)
