"""Ahead-of-time compilation of the real train step for a TPU topology, without TPUs.

libtpu's ``jax.experimental.topologies`` describes a slice's devices; the step
is lowered with the run's shardings on a mesh of those devices and compiled.
The report gives per-chip memory (``memory_analysis``), compiled FLOPs per
step (``cost_analysis``) against the model FLOP counter, and the MFU a given
step time would imply.

XLA's cost analysis counts a while-loop body once and a Pallas kernel not at
all, so compiled FLOPs are measured on variants of the same config that it can
count: layers unrolled, attention as the plain XLA reference (the same math as
every kernel), at 1 and 2 layers and 1, 2 and 3 latent frames, then extrapolated
to the real depth (linear in layers) and frame count (quadratic in tokens:
attention is N², everything else N). Both are exact for a stack of identical
layers, and the small variants compile where full-size XLA attention never would.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import ml_collections

from dreamactor_jax.models.build import model_config
from dreamactor_jax.parallel import mesh as mesh_lib
from dreamactor_jax.parallel import rules as rules_lib
from dreamactor_jax.train import abstract, flops, guards, loop
from dreamactor_jax.train import shard as shard_lib

# Per-chip HBM bytes and dense bf16 peak FLOP/s of TPU generations, in the units of Cloud TPU's spec pages:
# v4 "32 GiB", v5e "16 GB", v5p "95 GB" (88.5 GiB), v6e "32 GB" (decimal GB are 10^9 bytes).
CHIPS = {
    "v4": (32 * 2**30, 275e12),
    "v5e": (16 * 10**9, 197e12),
    "v5p": (95 * 10**9, 459e12),
    "v6e": (32 * 10**9, 918e12),
}


def chip_of(topology: str) -> str:
    gen = topology.split(":")[0].split("-")[0].lower()
    if gen in ("v5litepod", "v5lite"):
        gen = "v5e"
    if gen not in CHIPS:
        raise ValueError(f"unknown TPU generation in topology {topology!r}; known: {sorted(CHIPS)}")
    return gen


class DoesNotFitError(RuntimeError):
    """The compiled step needs more HBM than a chip has."""


def topology_devices(topology: str) -> list[Any]:
    """Devices of a TPU topology such as 'v5p:2x2x2' (needs the libtpu package)."""
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5p-16")  # silences libtpu's host probing
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    # Compiling only: several processes (a test runner and a CLI it starts) may load libtpu at once.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jax.experimental import topologies

    try:
        desc = topologies.get_topology_desc(platform="tpu", topology_name=topology)
    except Exception as e:  # noqa: BLE001 - libtpu raises several types; report one clear error
        raise RuntimeError(f"cannot describe TPU topology {topology!r} (is libtpu installed?): {e}") from e
    return list(desc.devices)


def compile_step(config: ml_collections.ConfigDict, devices: list[Any]):
    """Lowers and compiles the train step of ``config`` on a mesh of ``devices``; returns (compiled, mesh)."""
    mesh = mesh_lib.make_mesh(config.mesh, devices)
    mcfg, graphdef, state, batch, step = abstract.abstract_run(config, platform=devices[0].platform)
    plan = shard_lib.config_plan(mcfg, mesh, state, batch, config)
    loop.check_activations(config, mcfg, mesh, plan.rules)
    key = jax.eval_shape(lambda: jax.random.key(0))
    with jax.set_mesh(mesh), rules_lib.use_rules(plan.rules):
        # Exactly the loop's step: gated on a non-finite loss or gradient norm (train/loop.py).
        jitted = jax.jit(guards.gate_nonfinite(step), in_shardings=(plan.state, plan.batch, None),
                         out_shardings=(plan.state, None), donate_argnums=0)
        lowered = jitted.lower(state, batch, key)
        try:
            compiled = lowered.compile()
        except Exception as e:  # noqa: BLE001 - XLA reports an HBM overflow as a runtime error
            if "RESOURCE_EXHAUSTED" in str(e):
                raise DoesNotFitError(f"the step does not fit on {devices[0].device_kind} with mesh "
                                      f"{dict(mesh.shape)}: {str(e).splitlines()[0]}") from None
            raise
    return compiled, mesh


def _flops_of(compiled) -> float:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost.get("flops", 0.0)) if cost else 0.0


def _lagrange(xs: tuple[float, ...], ys: list[float], x: float) -> float:
    """The polynomial through (xs, ys) evaluated at ``x``."""
    total = 0.0
    for i, (xi, yi) in enumerate(zip(xs, ys)):
        w = 1.0
        for j, xj in enumerate(xs):
            if j != i:
                w *= (x - xj) / (xi - xj)
        total += w * yi
    return total


COUNT_LAYERS = (1, 2)
COUNT_FRAMES = (1, 2, 3)


def compiled_flops(config: ml_collections.ConfigDict, devices: list[Any]) -> float:
    """Compiled FLOPs per step for all devices, extrapolated from small countable variants (module docstring)."""
    mcfg = model_config(config.model)
    frames = int(config.data.frames)
    by_layers = []
    for layers in COUNT_LAYERS:
        by_frames = []
        for t in COUNT_FRAMES:
            c = ml_collections.ConfigDict(config.to_dict())
            c.model.update(num_layers=layers, scan_layers=False, attention="xla")
            c.data.update(frames=t * mcfg.patch_size[0], motion_masked_frames=0)
            by_frames.append(_flops_of(compile_step(c, devices)[0]) * len(devices))
        by_layers.append(_lagrange(COUNT_FRAMES, by_frames, frames / mcfg.patch_size[0]))
    per_layer = by_layers[1] - by_layers[0]
    return by_layers[0] + (mcfg.num_layers - 1) * per_layer


@dataclasses.dataclass
class AotReport:
    topology: str
    chips: int
    mesh: dict
    argument_bytes: int
    output_bytes: int
    temp_bytes: int
    alias_bytes: int
    code_bytes: int
    hbm_bytes: int
    host_temp_bytes: int  # host memory per chip the step uses: offloaded residuals (model.remat='offload')
    host_argument_bytes: int  # state kept in host memory (optim.ema_on_host)
    model_flops: float
    compiled_flops: float | None
    peak_flops: float

    @property
    def total_bytes(self) -> int:
        # Donated (aliased) outputs reuse argument buffers.
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes + self.code_bytes

    @property
    def headroom(self) -> float:
        return 1.0 - self.total_bytes / self.hbm_bytes

    def implied_mfu(self, step_seconds: float) -> float:
        return flops.mfu(self.model_flops, step_seconds, self.peak_flops, self.chips)

    def lines(self, step_seconds: float | None = None) -> list[str]:
        gib = 2.0**30
        out = [
            f"topology: {self.topology} ({self.chips} chips)  mesh: {self.mesh}",
            f"per-chip memory: args {self.argument_bytes / gib:.2f} GiB, outputs {self.output_bytes / gib:.2f} GiB "
            f"(aliased {self.alias_bytes / gib:.2f} GiB), temps {self.temp_bytes / gib:.2f} GiB, code "
            f"{self.code_bytes / gib:.3f} GiB",
            f"per-chip total: {self.total_bytes / gib:.2f} GiB of {self.hbm_bytes / gib:.2f} GiB HBM "
            f"(headroom {100 * self.headroom:.1f}%)",
            f"model FLOPs per step: {self.model_flops:.4e}",
        ]
        if self.host_temp_bytes or self.host_argument_bytes:
            out.insert(3, f"host memory per chip: state {self.host_argument_bytes / gib:.2f} GiB, offloaded "
                          f"activations {self.host_temp_bytes / gib:.2f} GiB")
        if self.compiled_flops:
            out.append(f"compiled FLOPs per step: {self.compiled_flops:.4e}  (compiled / model = "
                       f"{self.compiled_flops / self.model_flops:.3f})")
        if step_seconds:
            out.append(f"at {step_seconds:.3f} s/step: MFU {100 * self.implied_mfu(step_seconds):.1f}%")
        return out


def aot_compile(config: ml_collections.ConfigDict, topology: str, *, count_flops: bool = True) -> AotReport:
    """Compiles the train step of ``config`` for ``topology`` and measures it."""
    devices = topology_devices(topology)
    compiled, mesh = compile_step(config, devices)
    mem = compiled.memory_analysis()
    mcfg = model_config(config.model)
    d = config.data
    model = flops.forward_flops(mcfg, batch=d.batch_size, frames=d.frames, height=d.height, width=2 * d.width,
                                text_len=d.text_len).train
    hbm, peak = CHIPS[chip_of(topology)]
    return AotReport(
        topology=topology, chips=len(devices), mesh=dict(mesh.shape),
        argument_bytes=int(mem.argument_size_in_bytes), output_bytes=int(mem.output_size_in_bytes),
        temp_bytes=int(mem.temp_size_in_bytes), alias_bytes=int(mem.alias_size_in_bytes),
        code_bytes=int(mem.generated_code_size_in_bytes), hbm_bytes=hbm,
        host_temp_bytes=int(getattr(mem, "host_temp_size_in_bytes", 0)),
        host_argument_bytes=int(getattr(mem, "host_argument_size_in_bytes", 0)), model_flops=model,
        compiled_flops=compiled_flops(config, devices) if count_flops else None, peak_flops=peak)
