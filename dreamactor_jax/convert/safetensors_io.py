"""The safetensors file format, read lazily and written as a stream, without torch.

The format is an 8-byte little-endian header length, a JSON header mapping each
tensor name to ``{dtype, shape, data_offsets}`` (offsets relative to the end of
the header) and the raw little-endian data. Parsing the header ourselves lets us
(a) tell a truncated file from a corrupt one and name it, (b) read bf16 without
torch (numpy has no bf16; ``ml_dtypes`` does) and (c) write a file whose header
is known up front, then stream tensor bytes into it one tensor at a time, so a
writer never holds more than the tensor it is writing.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import struct
from collections.abc import Iterable, Iterator, Mapping

import ml_dtypes
import numpy as np

DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
}
_DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
# The reference implementation refuses headers above 100 MB; a larger claim means a corrupt length field.
_MAX_HEADER = 100_000_000


class SafetensorsFormatError(ValueError):
    """A safetensors file that is truncated or corrupt; the message names the file."""


def dtype_name(dtype: np.dtype) -> str:
    """The safetensors dtype string (``"F32"``, ``"BF16"``, ...) of a numpy dtype."""
    try:
        return _DTYPE_NAMES[np.dtype(dtype)]
    except KeyError:
        raise ValueError(f"dtype {dtype} has no safetensors equivalent") from None


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    begin: int  # absolute file offsets of the data
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


class SafetensorsFile:
    """One ``.safetensors`` file: the header is parsed and validated on open, tensors are read on demand."""

    def __init__(self, path: str):
        self.path = os.fspath(path)
        self.tensors, self.metadata = _read_header(self.path)

    def keys(self) -> list[str]:
        return list(self.tensors)

    def get(self, name: str) -> np.ndarray:
        """Reads one tensor (in its stored dtype; bf16 comes back as ``ml_dtypes.bfloat16``)."""
        info = self.tensors[name]
        out = np.empty(info.shape, DTYPES[info.dtype])
        with open(self.path, "rb") as f:
            f.seek(info.begin)
            got = f.readinto(out.reshape(-1).view(np.uint8)) if out.size else 0
        if got != info.nbytes:  # the file shrank after its header was validated
            raise SafetensorsFormatError(f"{self.path} is truncated: tensor {name!r} ends past the end of the file")
        return out


def _read_header(path: str) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"safetensors file not found: {path}")
    size = os.path.getsize(path)
    if size < 8:
        raise SafetensorsFormatError(f"{path} is truncated: {size} bytes, shorter than the 8-byte header length")
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > _MAX_HEADER:
            raise SafetensorsFormatError(f"{path} is corrupt: header length field says {n} bytes")
        if 8 + n > size:
            raise SafetensorsFormatError(f"{path} is truncated: {size} bytes on disk, but its header alone "
                                         f"needs {8 + n}")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SafetensorsFormatError(f"{path} is corrupt: its header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise SafetensorsFormatError(f"{path} is corrupt: its header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    start = 8 + n
    tensors: dict[str, TensorInfo] = {}
    for name, h in header.items():
        try:
            dt, shape, (b, e) = h["dtype"], tuple(int(s) for s in h["shape"]), h["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise SafetensorsFormatError(f"{path} is corrupt: malformed header entry for {name!r}: {h}") from None
        if dt not in DTYPES:
            raise SafetensorsFormatError(f"{path}: tensor {name!r} has unsupported dtype {dt!r}")
        if e - b != math.prod(shape) * DTYPES[dt].itemsize or b < 0:
            raise SafetensorsFormatError(f"{path} is corrupt: tensor {name!r} offsets {[b, e]} do not fit "
                                         f"shape {shape} of {dt}")
        tensors[name] = TensorInfo(dt, shape, start + b, start + e)
    need = max((t.end for t in tensors.values()), default=start)
    if size < need:
        cut = sorted(k for k, t in tensors.items() if t.end > size)
        raise SafetensorsFormatError(
            f"{path} is truncated: {size} bytes on disk, its header needs {need}; "
            f"{len(cut)} tensor(s) run past the end: {', '.join(cut[:8])}{' ...' if len(cut) > 8 else ''}")
    if size > need:
        raise SafetensorsFormatError(f"{path} is corrupt: {size - need} bytes after the last tensor")
    return tensors, metadata


def parse_size(size: int | str) -> int:
    """Bytes from ``5GB``, ``200MB``, ``1.5GiB`` or a plain integer (decimal units like Hugging Face's)."""
    if isinstance(size, int):
        if size < 1:
            raise ValueError(f"max shard size must be positive, got {size}")
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*", str(size), re.IGNORECASE)
    if not m:
        raise ValueError(f"cannot parse size {size!r}; use bytes or e.g. '5GB', '200MB', '1GiB'")
    unit = (m.group(2) or "B").upper()
    scale = 1 if unit == "B" else (1024 if "I" in unit else 1000) ** ("KMGT".index(unit[0]) + 1)
    n = int(float(m.group(1)) * scale)
    if n < 1:
        raise ValueError(f"max shard size must be positive, got {size!r}")
    return n


@dataclasses.dataclass(frozen=True)
class Spec:
    """A tensor to be written: its name, shape and dtype are known before its data is."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize


def plan_shards(specs: Iterable[Spec], max_bytes: int) -> list[list[Spec]]:
    """Splits ``specs`` in order into shards of at most ``max_bytes`` (a larger tensor gets a shard of its own)."""
    shards: list[list[Spec]] = [[]]
    used = 0
    for s in specs:
        if shards[-1] and used + s.nbytes > max_bytes:
            shards.append([])
            used = 0
        shards[-1].append(s)
        used += s.nbytes
    return shards if shards[0] else []


def write_file(path: str, specs: list[Spec], tensors: Iterator[tuple[str, np.ndarray]],
               metadata: Mapping[str, str] | None = None) -> int:
    """Writes ``specs`` to ``path``, pulling exactly ``len(specs)`` arrays from ``tensors``; returns data bytes.

    Each pulled array must match its spec (name, shape, dtype) in order; it is
    written and dropped before the next one is pulled.
    """
    header: dict = {}
    offset = 0
    for s in specs:
        header[s.name] = {"dtype": dtype_name(s.dtype), "shape": list(s.shape),
                          "data_offsets": [offset, offset + s.nbytes]}
        offset += s.nbytes
    header["__metadata__"] = dict(metadata or {"format": "pt"})
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # keep the data 8-byte aligned, as the reference writer does
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for s in specs:
            name, a = next(tensors)
            if name != s.name or tuple(a.shape) != s.shape or a.dtype != s.dtype:
                raise ValueError(f"{path}: expected {s.name} {s.shape} {s.dtype}, got {name} {a.shape} {a.dtype}")
            a = np.ascontiguousarray(a)
            if a.dtype.byteorder == ">":
                a = a.byteswap().view(a.dtype.newbyteorder("<"))
            f.write(a.reshape(-1).view(np.uint8).data)
    return offset
