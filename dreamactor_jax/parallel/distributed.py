"""Multi-host start-up: ``jax.distributed.initialize`` when, and only when, a run spans several processes.

Where the settings come from (the first that applies wins, field by field for the first two):

1. explicit arguments (the launchers' ``--coordinator_address``, ``--num_processes``, ``--process_id``);
2. the environment: ``DREAMACTOR_COORDINATOR``, ``DREAMACTOR_NUM_PROCESSES``, ``DREAMACTOR_PROCESS_ID``;
3. a detected cluster, whose missing fields JAX's own cluster detection fills in:
   SLURM (``srun`` with ``SLURM_NTASKS`` > 1), Open MPI (``OMPI_COMM_WORLD_SIZE`` > 1) or a
   multi-host TPU slice (``TPU_PROCESS_ADDRESSES`` or ``TPU_WORKER_HOSTNAMES`` naming several
   hosts, as on GKE). A GCE TPU VM that lists its workers only in the metadata server is not
   detected: give it the three settings (or ``DREAMACTOR_*``) explicitly;
4. otherwise a single host: nothing is initialised.

A number of processes of 1 (from 1. or 2.) means a single host even inside a cluster
allocation. Explicit settings without a detected cluster must name all three fields:
there is nothing to fill the rest from. ``maybe_initialize`` must run before anything
touches a JAX backend (``jax.devices()``, the first array), i.e. first thing in ``main``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

import jax
from absl import flags

ENV_COORDINATOR = "DREAMACTOR_COORDINATOR"
ENV_NUM_PROCESSES = "DREAMACTOR_NUM_PROCESSES"
ENV_PROCESS_ID = "DREAMACTOR_PROCESS_ID"


@dataclasses.dataclass(frozen=True)
class InitPlan:
    """What :func:`maybe_initialize` passes to ``jax.distributed.initialize``; None fields are auto-detected."""

    # 'explicit', 'env' or 'explicit+env'; or the detected cluster ('slurm', 'ompi', 'tpu'), appended with '+'
    # when it fills in fields the explicit settings left out
    source: str
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None

    def kwargs(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "source" and v is not None}


def _env_int(environ: Mapping[str, str], name: str) -> int | None:
    raw = environ.get(name, "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None


def detect_cluster(environ: Mapping[str, str] | None = None) -> str | None:
    """The multi-process cluster this process was started in ('slurm', 'ompi', 'tpu'), or None."""
    env = os.environ if environ is None else environ
    # SLURM_PROCID is set per task by srun; an sbatch script's own shell (one process) has SLURM_NTASKS only.
    if (_env_int(env, "SLURM_NTASKS") or 0) > 1 and "SLURM_PROCID" in env:
        return "slurm"
    if (_env_int(env, "OMPI_COMM_WORLD_SIZE") or 0) > 1:
        return "ompi"
    # The variables JAX's own TPU cluster detection reads (TPU_PROCESS_ADDRESSES first); one host is not a cluster.
    hosts = env.get("TPU_PROCESS_ADDRESSES") or env.get("TPU_WORKER_HOSTNAMES") or ""
    if len([h for h in hosts.split(",") if h.strip()]) > 1:
        return "tpu"
    return None


def resolve(coordinator_address: str | None = None, num_processes: int | None = None,
            process_id: int | None = None, environ: Mapping[str, str] | None = None) -> InitPlan | None:
    """Decides whether and how to initialise (precedence in the module docstring); None: a single host.

    Raises:
      ValueError: explicit settings are incomplete with no cluster to fill them, or inconsistent.
    """
    env = os.environ if environ is None else environ
    given = {"coordinator_address": coordinator_address or None, "num_processes": num_processes,
             "process_id": process_id}
    from_env = {"coordinator_address": env.get(ENV_COORDINATOR, "").strip() or None,
                "num_processes": _env_int(env, ENV_NUM_PROCESSES), "process_id": _env_int(env, ENV_PROCESS_ID)}
    fields = {k: given[k] if given[k] is not None else from_env[k] for k in given}
    origins = (["explicit"] if any(v is not None for v in given.values()) else []) + (
        ["env"] if any(given[k] is None and from_env[k] is not None for k in given) else [])
    cluster = detect_cluster(env)
    n, pid = fields["num_processes"], fields["process_id"]
    if n is not None and n < 1:
        raise ValueError(f"num_processes must be >= 1, got {n}")
    if n == 1:
        return None  # a single process, said explicitly (even inside a cluster allocation)
    if pid is not None and (pid < 0 or (n is not None and pid >= n)):
        raise ValueError(f"process_id={pid} is not in [0, num_processes={n})")
    if not origins:
        return InitPlan(cluster) if cluster else None
    missing = [k for k, v in fields.items() if v is None]
    if missing and not cluster:
        flag_names = {"coordinator_address": f"--coordinator_address / {ENV_COORDINATOR}",
                      "num_processes": f"--num_processes / {ENV_NUM_PROCESSES}",
                      "process_id": f"--process_id / {ENV_PROCESS_ID}"}
        raise ValueError("multi-process settings are incomplete and no cluster (SLURM, Open MPI, TPU slice) was "
                         f"detected to fill them in: missing {', '.join(flag_names[k] for k in missing)}")
    source = "+".join(origins) + (f"+{cluster}" if missing else "")
    return InitPlan(source, **fields)


def maybe_initialize(coordinator_address: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None) -> InitPlan | None:
    """Calls ``jax.distributed.initialize`` if the run spans several processes; a no-op on a single host.

    Args:
      coordinator_address: ``host:port`` of process 0's coordinator service.
      num_processes: the number of processes of the run.
      process_id: this process's index in ``[0, num_processes)``.

    Returns:
      The plan that was (or, if JAX was already initialised, had been) applied; None on a single host.
    """
    plan = resolve(coordinator_address, num_processes, process_id)
    if plan is None or jax.distributed.is_initialized():
        return plan
    jax.distributed.initialize(**plan.kwargs())
    return plan


def define_flags() -> None:
    """Defines ``--coordinator_address``, ``--num_processes`` and ``--process_id`` for a launcher."""
    flags.DEFINE_string("coordinator_address", None,
                        f"Multi-host: host:port of process 0's coordinator (else ${ENV_COORDINATOR}, else a "
                        "detected SLURM / Open MPI / TPU-slice cluster, else a single host).")
    flags.DEFINE_integer("num_processes", None, f"Multi-host: number of processes (else ${ENV_NUM_PROCESSES}).")
    flags.DEFINE_integer("process_id", None, f"Multi-host: this process's index (else ${ENV_PROCESS_ID}).")


def initialize_from_flags() -> InitPlan | None:
    """:func:`maybe_initialize` with the flags of :func:`define_flags`."""
    f = flags.FLAGS
    return maybe_initialize(f.coordinator_address, f.num_processes, f.process_id)


def sum_over_processes(counts: list[int]) -> list[int]:
    """Element-wise sum of integer counts over all processes (a collective: every process must call it)."""
    if jax.process_count() == 1:
        return [int(c) for c in counts]
    import numpy as np
    from jax.experimental import multihost_utils

    gathered = multihost_utils.process_allgather(np.asarray(counts, np.int64))
    return [int(c) for c in np.asarray(gathered).reshape(jax.process_count(), len(counts)).sum(0)]
