"""Streams arrays out of one item of our Orbax checkpoint, a layer slice at a time, via TensorStore.

Restoring the ``params`` item with Orbax materialises the whole tree; export
only needs one tensor at a time. Orbax stores each array as a zarr array
(zstd-compressed chunks) inside an OCDBT key-value store at
``<dir>/<step>/<item>/``, keyed by the dotted tree path, so we open each array
with TensorStore and read just the slice we need.

A chunk is the unit of decompression, and a chunk is what one device wrote
(the shard shape), unless Orbax was told to subchunk. Reading one layer from a
chunk that spans every layer decompresses the whole chunk, so the reader reads
groups of layers and keeps only the last group:

* chunks of one (or a few) layers -- a layer-sharded save, or any save with
  ``SaveArgs(shard_axes=(0,))`` on stacked params: chunk-aligned groups; peak
  about one layer, each chunk decompressed once. The good case.
* one chunk per array (an unsharded, single-device save): the whole stacked
  array once; peak about one stacked array plus its compressed bytes.
* chunks spanning every layer but tiled along other axes (an FSDP save):
  groups of up to ``read_budget`` bytes, read one chunk column at a time; the
  chunks are re-decoded per group.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Mapping

import numpy as np
import tensorstore as ts

from dreamactor_jax import fs
from dreamactor_jax.convert import names
from dreamactor_jax.models.config import WanConfig
from dreamactor_jax.train import checkpoint as ckpt_lib

# Stacked arrays up to this size are read whole even when their chunks would allow smaller reads.
DEFAULT_READ_BUDGET = 256 * 2**20
# No cache: every byte read is handed to us and dropped by TensorStore.
_CONTEXT = {"cache_pool": {"total_bytes_limit": 0}}

log = logging.getLogger(__name__)


class _GroupCache:
    """The one group of layers currently held (shared by all arrays so that only one is ever alive)."""

    def __init__(self):
        self.key: tuple[str, int] | None = None
        self.value: np.ndarray | None = None


class StoredArray:
    """One array of a checkpoint item; ``a[i]`` is a lazy reference to layer ``i``, ``np.asarray`` reads."""

    def __init__(self, spec: dict, name: str, cache: _GroupCache, budget: int):
        self._spec, self.name, self._cache, self._budget = spec, name, cache, budget
        self._store = None
        self._warned = False

    @property
    def store(self) -> ts.TensorStore:
        if self._store is None:
            self._store = ts.open(self._spec, read=True, context=ts.Context(_CONTEXT)).result()
        return self._store

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.store.shape)

    @property
    def dtype(self) -> np.dtype:
        return self.store.dtype.numpy_dtype

    def chunk_shape(self) -> tuple[int, ...]:
        return tuple(self.store.chunk_layout.read_chunk.shape)

    def group_size(self) -> int:
        """Layers per read: chunk-aligned; for chunks spanning every layer, as many as ``budget`` allows."""
        n, c = self.shape[0], self.chunk_shape()
        if c[0] < n:  # each chunk is decompressed exactly once
            return c[0]
        item = self.dtype.itemsize
        layer = math.prod(self.shape[1:]) * item
        # A chunk spanning every layer is decompressed whole for any one layer: whole-array reads when that
        # is cheap or unavoidable (one big chunk), else budget-sized groups, re-decoding the chunks per group.
        if n * layer <= self._budget or 2 * math.prod(c) * item > n * layer:
            return n
        g = max(1, min(n, self._budget // layer))
        if not self._warned:
            self._warned = True
            log.warning("%s is stored in chunks spanning all %d layers; export decodes them %d times. Saving "
                        "stacked params with ocp.SaveArgs(shard_axes=(0,)) makes one chunk per layer.",
                        self.name, n, -(-n // g))
        return g

    def read_layer(self, i: int) -> np.ndarray:
        g = self.group_size()
        start = (i // g) * g
        key = (self.name, start)
        if self._cache.key != key:
            self._cache.key, self._cache.value = None, None  # drop the old group before reading the new one
            self._cache.value = self._read_tiled(start, min(start + g, self.shape[0]))
            self._cache.key = key
        return self._cache.value[i - start]

    def _read_tiled(self, start: int, stop: int) -> np.ndarray:
        """Layers [start, stop), read one chunk column at a time.

        One TensorStore read of the whole region would fetch every chunk it touches
        at once (all compressed bytes in flight); going tile by tile bounds the
        transient to one chunk on top of the output.
        """
        out = np.empty((stop - start, *self.shape[1:]), self.dtype)
        c = self.chunk_shape()
        grid = itertools.product(*(range(0, n, k) for n, k in zip(self.shape[1:], c[1:])))
        for origin in grid:
            idx = tuple(slice(o, o + k) for o, k in zip(origin, c[1:]))
            out[(slice(None), *idx)] = self.store[(slice(start, stop), *idx)].read().result()
        return out

    def __getitem__(self, i: int) -> LayerRef:
        if not isinstance(i, (int, np.integer)):
            raise TypeError(f"{self.name}: only integer (layer) indexing is supported")
        return LayerRef(self, int(i))

    def __array__(self, dtype=None, copy=None):
        a = self.store.read().result()
        return a if dtype is None else a.astype(dtype)


class LayerRef:
    """Layer ``i`` of a stacked :class:`StoredArray`, read when converted with ``np.asarray``."""

    def __init__(self, array: StoredArray, i: int):
        self.array, self.i = array, i

    @property
    def shape(self) -> tuple[int, ...]:
        return self.array.shape[1:]

    def __array__(self, dtype=None, copy=None):
        a = self.array.read_layer(self.i)
        return a if dtype is None else a.astype(dtype)


def _base(path: str) -> dict | str:
    """A tensorstore kvstore for a directory: the file driver locally, the URL itself (gs://...) otherwise."""
    return path.rstrip("/") + "/" if fs.is_url(path) else {"driver": "file", "path": path + "/"}


def _kvstore(item_dir: str, name: str) -> dict | str:
    if fs.exists(fs.join(item_dir, "manifest.ocdbt")):
        return {"driver": "ocdbt", "base": _base(item_dir), "path": name + "/"}
    return _base(fs.join(item_dir, name))


def _driver(kvstore: dict) -> str:
    kv = ts.KvStore.open(kvstore).result()
    if kv.read(".zarray").result().state == "value":
        return "zarr"
    if kv.read("zarr.json").result().state == "value":
        return "zarr3"
    raise FileNotFoundError(f"no zarr array at {kvstore}")


def step_dir(ckpt_dir: str, step: int | None = None) -> tuple[str, int]:
    """(``<ckpt_dir>/<step>``, step) for ``step`` or the latest one."""
    mngr = ckpt_lib.manager(ckpt_dir, read_only=True)
    steps = sorted(mngr.all_steps())
    if not steps:
        raise FileNotFoundError(f"no checkpoint found in {ckpt_dir}")
    step = steps[-1] if step is None else step
    if step not in steps:
        raise FileNotFoundError(f"{ckpt_dir} has no step {step}; steps: {steps}")
    path = fs.join(fs.absolute(ckpt_dir), str(step))
    if not fs.isdir(path):
        raise FileNotFoundError(f"checkpoint step directory not found: {path}")
    return path, step


def open_item(ckpt_dir: str, item: str, cfg: WanConfig, step: int | None = None,
              read_budget: int = DEFAULT_READ_BUDGET) -> Mapping[names.Path, StoredArray]:
    """Lazy arrays of checkpoint ``item`` keyed by our parameter paths, checked against ``cfg``'s shapes."""
    path, step = step_dir(ckpt_dir, step)
    item_dir = fs.join(path, item)
    if not fs.isdir(item_dir):
        have = sorted(d for d in fs.listdir(path) if fs.isdir(fs.join(path, d)))
        raise FileNotFoundError(f"checkpoint {ckpt_dir} step {step} has no item {item!r}; items: {have}")
    expected = dict(names.base_shapes(cfg))
    cache = _GroupCache()
    out: dict[names.Path, StoredArray] = {}
    bad = []
    for p, shape in expected.items():
        name = ".".join(p)
        kv = _kvstore(item_dir, name)
        try:
            spec = {"driver": _driver(kv), "kvstore": kv}
        except FileNotFoundError:
            bad.append(f"{name}: missing")
            continue
        arr = StoredArray(spec, name, cache, read_budget)
        if arr.shape != shape:
            bad.append(f"{name}: stored {arr.shape} != expected {shape}")
        out[p] = arr
    if bad:
        raise names.TensorMismatchError(f"checkpoint {item_dir} does not match its model config:\n  "
                                        + "\n  ".join(bad))
    return out

