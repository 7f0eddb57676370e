"""Run guards: non-finite steps, preemption notices, and keeping the metrics log consistent on resume.

* :func:`gate_nonfinite` wraps the train step so a step whose loss or gradient
  norm is not finite leaves params, optimizer state and EMA untouched (inside
  ``jit``, with ``jnp.where``); the loop then stops the run or, with
  ``config.train.skip_nonfinite_steps``, counts the skip and goes on.
* :class:`Preemption` turns SIGTERM (one process) or the JAX preemption sync
  point (several processes) into "save at this step boundary and exit 0".
* :func:`truncate_metrics` drops log lines past the restored step, so a resumed
  run's ``metrics.jsonl`` equals an uninterrupted run's.
"""

from __future__ import annotations

import json
import math
import signal
import threading
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from dreamactor_jax import fs
from dreamactor_jax.train import step as step_lib


class NonFiniteError(FloatingPointError):
    """A step produced a non-finite loss or gradient norm (the message names the step)."""


def gate_nonfinite(step_fn: Callable) -> Callable:
    """Wraps ``step_fn(state, batch, rng) -> (state, metrics)`` so non-finite steps change nothing.

    The update is gated whether or not the run skips such steps: a run that stops
    on one then never holds a poisoned state, and both settings share one
    compiled executable. ``where`` with a true predicate returns the new value
    bit for bit, so finite steps are unaffected. ``state.step`` still advances:
    it counts data batches consumed, the quantity a resume needs.

    Args:
      step_fn: the pure train step (see :func:`dreamactor_jax.train.step.train_step`).

    Returns:
      A step with the same signature whose metrics gain ``skipped`` (1.0 when the
      update was dropped, else 0.0).
    """

    def guarded_step(state, batch, rng):
        new, metrics = step_fn(state, batch, rng)
        ok = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
        keep = lambda n, o: jnp.where(ok, n, o)
        # A host-memory EMA (optim.ema_on_host) is gated on the host, so it never passes through HBM.
        ema = None if state.ema is None else step_lib.host_map(lambda n, o, k: jnp.where(k, n, o), new.ema,
                                                               state.ema, jax.tree.map(lambda _: ok, state.ema))
        new = new.replace(params=jax.tree.map(keep, new.params, state.params),
                          opt_state=jax.tree.map(keep, new.opt_state, state.opt_state), ema=ema)
        return new, dict(metrics, skipped=jnp.where(ok, 0.0, 1.0).astype(jnp.float32))

    return guarded_step


def check_finite(metrics: Mapping[str, float], step: int, *, skip: bool) -> bool:
    """Host-side verdict on one step's fetched metrics.

    Args:
      metrics: host floats of one step (``loss``, ``grad_norm``, ``skipped``).
      step: the step number (updates done after this step) used in messages.
      skip: ``config.train.skip_nonfinite_steps``.

    Returns:
      True when the step was skipped (non-finite and ``skip``), False when it was fine.

    Raises:
      NonFiniteError: non-finite and not ``skip``.
    """
    bad = metrics.get("skipped", 0.0) > 0 or not (math.isfinite(metrics["loss"])
                                                   and math.isfinite(metrics["grad_norm"]))
    if not bad:
        return False
    msg = f"non-finite loss {metrics['loss']} or grad norm {metrics['grad_norm']} at step {step}"
    if not skip:
        raise NonFiniteError(msg + "; the run stops (set config.train.skip_nonfinite_steps=True to skip such "
                                   "updates); checkpoints up to the previous save are intact")
    return True


class Preemption:
    """Preemption notice as a per-step question: "save now and exit?".

    One process: a SIGTERM handler sets a flag (the default action would kill the
    process mid-step). Several processes: JAX's preemption sync manager already
    listens for SIGTERM and agrees on a step every host reaches, which Orbax's
    ``reached_preemption`` reports; a Python handler there would replace the
    one JAX installed, so none is installed.

    Use as a context manager around the loop; the previous handler is restored on exit.
    """

    def __init__(self):
        self._flag = threading.Event()
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> Preemption:
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous)
            self._installed = False

    def _handle(self, signum, frame) -> None:
        # Only set a flag: the loop saves at the next step boundary, where the state is whole.
        self._flag.set()

    def reached(self, step: int, mngr=None) -> bool:
        """True when the run should save at ``step`` and stop. Call at every step on every host."""
        if jax.process_count() > 1 and mngr is not None:
            return bool(mngr.reached_preemption(step))
        return self._flag.is_set()


def truncate_metrics(path: str, step: int) -> int:
    """Keeps the lines of ``metrics.jsonl`` with ``step <= step``; returns how many lines were dropped.

    Lines past the restored checkpoint were logged by steps that the resumed run
    will redo; a line cut short by a kill is not JSON and goes too. The file is
    rewritten atomically (``fs.write_text``: temp file + rename, or one object upload), so a kill here cannot
    lose it.
    """
    if not fs.exists(path):
        return 0
    lines = fs.read_text(path).splitlines()
    kept = []
    for line in lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and int(rec.get("step", 0)) <= step:
            kept.append(line)
    dropped = len(lines) - len(kept)
    if dropped:
        fs.write_text(path, "".join(x + "\n" for x in kept))
    return dropped
