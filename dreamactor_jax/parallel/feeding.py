"""Global batches from the rows each process builds, on any mesh.

A batch array ``(B, ...)`` is sharded over its first dimension only (the rules' ``act_batch``: data x fsdp by
default), so which rows a device holds follows from the mesh, and which rows a process must build is the
union over its own devices. With data or fsdp across hosts every process holds distinct rows. Where a
sequence or tensor group spans hosts (a v5p-16's sequence=8 over 2 hosts, a DCN sequence axis), the
processes of that group hold the same rows and must build the same examples: the rows are not a
``1/process_count`` slice, and there may be fewer rows than processes (batch 1 on 2 hosts).

:func:`row_block` cuts the global batch into ``count`` equal blocks of ``size`` rows and says which block
this process builds. Data loaders take ``(index, count)`` where they took a process index and count, so
processes with the same block read the same records; :func:`global_batch` assembles each device's shard
from the block (``jax.make_array_from_callback``), which also works when several processes hold a row.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import numpy as np


@dataclasses.dataclass(frozen=True)
class RowBlock:
    """Rows ``[index * size, (index + 1) * size)`` of a global batch of ``count * size`` rows."""

    index: int
    count: int
    size: int

    @property
    def start(self) -> int:
        return self.index * self.size

    @property
    def stop(self) -> int:
        return self.start + self.size


def _rows(sl: slice, n: int) -> range:
    return range(n)[sl]


def process_rows(sharding: jax.sharding.Sharding, global_batch: int) -> dict[int, tuple[int, int]]:
    """{process index: (start, stop)}: the rows of a ``(global_batch, ...)`` array its devices hold.

    Raises:
      ValueError: a process's devices hold rows that are not one contiguous interval.
    """
    ndim = max(len(getattr(sharding, "spec", ())), 1)
    held: dict[int, set[int]] = {}
    for device, index in sharding.devices_indices_map((global_batch,) + (1,) * (ndim - 1)).items():
        held.setdefault(device.process_index, set()).update(_rows(index[0], global_batch))
    out = {}
    for p, rows in sorted(held.items()):
        lo, hi = min(rows), max(rows) + 1
        if len(rows) != hi - lo:
            raise ValueError(f"process {p}'s devices hold batch rows {sorted(rows)}, not one interval: the mesh "
                             f"{_mesh_of(sharding)} interleaves processes along the batch axes")
        out[p] = (lo, hi)
    return out


def _mesh_of(sharding) -> dict:
    mesh = getattr(sharding, "mesh", None)
    return dict(mesh.shape) if mesh is not None else {}


def row_block(sharding: jax.sharding.Sharding, global_batch: int, process_index: int | None = None) -> RowBlock:
    """The block of rows ``process_index`` (default: this process) builds for arrays sharded by ``sharding``.

    Raises:
      ValueError: the processes' rows are not equal, aligned blocks covering the batch (a mesh whose
        batch axes split processes unevenly).
    """
    rows = process_rows(sharding, global_batch)
    sizes = {hi - lo for lo, hi in rows.values()}
    size = sizes.pop() if len(sizes) == 1 else 0
    covered = {r for lo, hi in rows.values() for r in range(lo, hi)}
    if not size or global_batch % size or any(lo % size for lo, _ in rows.values()) or \
            covered != set(range(global_batch)):
        raise ValueError(f"the processes hold batch rows {rows} of a global batch of {global_batch} on mesh "
                         f"{_mesh_of(sharding)}: they are not equal blocks covering the batch, so no process can "
                         "build its rows alone; choose mesh axis sizes whose batch axes split hosts evenly")
    p = jax.process_index() if process_index is None else process_index
    if p not in rows:
        raise ValueError(f"process {p} holds no devices of the mesh {_mesh_of(sharding)}")
    lo, _ = rows[p]
    return RowBlock(index=lo // size, count=global_batch // size, size=size)


def global_batch(host: Mapping[str, np.ndarray], shardings: Mapping[str, jax.sharding.Sharding],
                 block: RowBlock) -> dict[str, jax.Array]:
    """Global arrays from this process's ``block`` of rows (host numpy, leading axis ``block.size``).

    Every device's shard is cut from the block, so rows that several processes hold come from each of them
    (they built the same examples). The global shape is stated, not inferred, so a process handing over the
    wrong number of rows fails loudly.
    """
    out = {}
    for k, v in host.items():
        v = np.asarray(v)
        if v.shape[0] != block.size:
            raise ValueError(f"batch field {k!r} has {v.shape[0]} rows on process {jax.process_index()}; its "
                             f"block {block} needs {block.size}")
        if jax.process_count() == 1:
            out[k] = jax.device_put(v, shardings[k])
            continue
        shape = (block.size * block.count, *v.shape[1:])

        def shard(index, v=v, n=shape[0]):
            r = _rows(index[0], n)
            if r.start < block.start or r.stop > block.stop:
                raise ValueError(f"a device of process {jax.process_index()} needs rows [{r.start}, {r.stop}), "
                                 f"outside its block {block}")
            return v[(slice(r.start - block.start, r.stop - block.start),) + tuple(index[1:])]

        out[k] = jax.make_array_from_callback(shape, shardings[k], shard)
    return out
