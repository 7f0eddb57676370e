"""The device mesh: named axes (data, fsdp, tensor, sequence) sized from config, optionally across slices.

``config.mesh.<axis>`` is an axis' whole size. ``config.mesh.dcn_<axis>`` (default 1) says how much of it
runs across *granules* over the slower data-centre network: TPU slices of a multi-slice run, or processes
(hosts) where devices have no slice index (GPU nodes, CPU processes). Each granule then holds a mesh of
``<axis> / dcn_<axis>`` per axis over its fast interconnect (ICI, NVLink), and the product of the
``dcn_*`` sizes must equal the number of granules. The usual multi-slice layout is ``dcn_data`` = slices:
only the data-parallel gradient all-reduce crosses DCN (MaxText's ``dcn_data_parallelism``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh

AXES = ("data", "fsdp", "tensor", "sequence")
DCN_FIELDS = tuple(f"dcn_{a}" for a in AXES)
# Other fields of config.mesh that are not axis sizes.
MESH_OPTIONS = ("rules", "max_replicated_bytes", "log_shardings", "allow_replicated_activations") + DCN_FIELDS


def resolve_axis_sizes(sizes: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
    """Sizes for AXES; at most one may be -1 (filled from ``num_devices``). Errors name the field."""
    unknown = sorted(set(sizes) - set(AXES) - set(MESH_OPTIONS))
    if unknown:
        raise ValueError(f"config.mesh has unknown axis field(s) {unknown}; axes are {AXES}")
    vals = [int(sizes.get(a, 1)) for a in AXES]
    free = [a for a, v in zip(AXES, vals) if v == -1]
    if len(free) > 1:
        raise ValueError(f"config.mesh: only one axis may be -1, got {free}")
    for a, v in zip(AXES, vals):
        if v == 0 or v < -1:
            raise ValueError(f"config.mesh.{a} must be a positive size or -1, got {v}")
    fixed = math.prod(v for v in vals if v != -1)
    if free:
        if num_devices % fixed:
            raise ValueError(f"config.mesh: {num_devices} devices are not divisible by the fixed axes' product "
                             f"{fixed}, so config.mesh.{free[0]}=-1 cannot be filled")
        vals[AXES.index(free[0])] = num_devices // fixed
    elif fixed > num_devices:
        raise ValueError(f"config.mesh asks for {fixed} devices ({dict(zip(AXES, vals))}) but only "
                         f"{num_devices} are available")
    return tuple(vals)


def dcn_sizes(sizes: Mapping[str, int], shape: Sequence[int]) -> tuple[int, ...]:
    """The ``dcn_<axis>`` sizes for AXES (1 where unset); each must divide its axis' whole size."""
    dcn = tuple(int(sizes.get(f, 1)) for f in DCN_FIELDS)
    for a, n, d in zip(AXES, shape, dcn):
        if d < 1 or n % d:
            raise ValueError(f"config.mesh.dcn_{a}={d} must be a positive divisor of the axis size "
                             f"config.mesh.{a}={n}")
    return dcn


def granule_attr(devices: Sequence[jax.Device]) -> str:
    """What the DCN axes run across: 'slice_index' when the devices come from several TPU slices, else
    'process_index' (hosts)."""
    slices = {getattr(d, "slice_index", None) for d in devices}
    return "slice_index" if None not in slices and len(slices) > 1 else "process_index"


def make_mesh(sizes: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh over ``devices`` (default: all) with Auto axis types, sized per ``sizes`` (module docstring)."""
    devices = list(devices if devices is not None else jax.devices())
    shape = resolve_axis_sizes(sizes, len(devices))
    dcn = dcn_sizes(sizes, shape)
    n = math.prod(shape)
    types = (AxisType.Auto,) * len(AXES)
    if math.prod(dcn) == 1:
        return jax.make_mesh(shape, AXES, axis_types=types, devices=devices[:n])
    attr = granule_attr(devices)
    granules = len({getattr(d, attr) for d in devices})
    if math.prod(dcn) != granules or n != len(devices):
        raise ValueError(f"config.mesh: dcn sizes {dict(zip(DCN_FIELDS, dcn))} multiply to {math.prod(dcn)}, but "
                         f"the {len(devices)} devices form {granules} granule(s) by {attr} and the mesh "
                         f"{dict(zip(AXES, shape))} must use all of them: set the dcn_* product to {granules}")
    ici = tuple(s // d for s, d in zip(shape, dcn))
    grid = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices, process_is_granule=attr == "process_index")
    return Mesh(np.asarray(grid), AXES, axis_types=types)
