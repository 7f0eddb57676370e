"""The device mesh: named axes (data, fsdp, tensor, sequence) sized from config."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jax
from jax.sharding import AxisType, Mesh

AXES = ("data", "fsdp", "tensor", "sequence")
# Other fields of config.mesh that are not axis sizes.
MESH_OPTIONS = ("rules", "max_replicated_bytes", "log_shardings")


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


def make_mesh(sizes: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh over ``devices`` (default: all) with Auto axis types, sized per ``sizes``."""
    devices = list(devices if devices is not None else jax.devices())
    shape = resolve_axis_sizes(sizes, len(devices))
    n = math.prod(shape)
    return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * len(AXES), devices=devices[:n])
