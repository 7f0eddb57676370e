"""Orbax checkpoints: one directory per saved step, one item per component.

Layout of ``<dir>/<step>/``:

=========  ========================================================================
item       content
=========  ========================================================================
params     the model parameters (nested dict, f32 masters)
opt_state  optimizer state (absent in imported/pretrained checkpoints)
ema        EMA of params (absent when EMA is off)
meta       JSON: step, kind ("train" | "import"), the model architecture (WanConfig);
           train checkpoints add what an exact resume needs: ``data`` (the next batch
           index: sources are random access by step), ``rng`` (seed and how per-step
           keys derive from it) and ``skipped_steps``
config     JSON: the run's resolved config (absent for imports)
=========  ========================================================================

Components are separate items so a reader takes only what it needs: export
restores ``params`` (or ``ema``) and nothing else.

Atomicity: Orbax writes a step under ``<step>.orbax-checkpoint-tmp-*`` and renames
it when every item is committed, so a save killed half way is never listed as a
step; run managers also delete such leftovers when they open. A finalised step
that still fails to read (truncated or corrupted later) is reported by
:func:`restore_first_good`, which falls back to the previous step.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from dreamactor_jax import fs
from dreamactor_jax.models.config import ARCH_FIELDS, WanConfig

ARRAY_ITEMS = ("params", "opt_state", "ema")
JSON_ITEMS = ("meta", "config")


class CheckpointSaveError(OSError):
    """A save failed (disk full, permission denied, ...); the message names the step and path."""


class CorruptCheckpointError(RuntimeError):
    """No listed step of a checkpoint directory could be restored."""


class IncompatibleCheckpointError(ValueError):
    """The checkpoint is readable but cannot serve this run (other architecture, missing items)."""


def _handlers():
    h: dict[str, Any] = {k: ocp.StandardCheckpointHandler() for k in ARRAY_ITEMS}
    h.update({k: ocp.JsonCheckpointHandler() for k in JSON_ITEMS})
    return h


def manager(directory: str, *, max_to_keep: int | None = None, keep_period: int | None = None,
            async_save: bool = True, read_only: bool = False) -> ocp.CheckpointManager:
    """A manager for the layout above.

    Args:
      directory: the checkpoint directory (holds one sub-directory per step).
      max_to_keep: newest steps kept; None keeps all.
      keep_period: steps divisible by it are kept as well, whatever ``max_to_keep`` says.
      async_save: write in a background thread after the device-to-host copy.
      read_only: never create, write or clean anything (readers of other runs' checkpoints).
    """
    # save_interval_steps=0 when read-only: what Orbax would set anyway, minus its warning.
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, keep_period=keep_period,
                                           enable_async_checkpointing=async_save, read_only=read_only,
                                           create=not read_only, cleanup_tmp_directories=not read_only,
                                           save_interval_steps=0 if read_only else 1)
    return ocp.CheckpointManager(fs.absolute(directory), options=options, item_names=tuple(_handlers()),
                                 item_handlers=_handlers())


def model_meta(cfg: WanConfig) -> dict:
    d = dataclasses.asdict(cfg)
    d["patch_size"] = list(cfg.patch_size)
    return d


def model_config_from_meta(meta: Mapping[str, Any]) -> WanConfig:
    d = dict(meta["model"])
    d["patch_size"] = tuple(d["patch_size"])
    return WanConfig(**d)


def save(mngr: ocp.CheckpointManager, step: int, *, params, model_cfg: WanConfig, opt_state=None, ema=None,
         config: Mapping[str, Any] | None = None, kind: str = "train", force: bool = False,
         extra_meta: Mapping[str, Any] | None = None) -> bool:
    """Saves the given components at ``step`` (asynchronously if the manager is async).

    ``extra_meta`` entries are added to the ``meta`` item (they cannot replace step, kind or model).
    """
    meta = dict(extra_meta or {})
    meta.update(step=int(step), kind=kind, model=model_meta(model_cfg))
    items: dict[str, Any] = {"params": ocp.args.StandardSave(params), "meta": ocp.args.JsonSave(meta)}
    if opt_state is not None:
        items["opt_state"] = ocp.args.StandardSave(opt_state)
    if ema is not None:
        items["ema"] = ocp.args.StandardSave(ema)
    if config is not None:
        items["config"] = ocp.args.JsonSave(dict(config))
    return mngr.save(step, args=ocp.args.Composite(**items), force=force)


def restore_meta(mngr: ocp.CheckpointManager, step: int) -> dict:
    """The ``meta`` item of ``step``."""
    return mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]


def read_meta(directory: str, step: int | None = None) -> dict:
    mngr = manager(directory, read_only=True)
    step = mngr.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint found in {directory}")
    return mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]


def read_json_item(directory: str, item: str = "config", step: int | None = None) -> dict | None:
    """A JSON item (``meta`` or ``config``) of ``step`` (default: the newest); None when the step has none."""
    if item not in JSON_ITEMS:
        raise ValueError(f"unknown JSON item {item!r}; JSON items are {JSON_ITEMS}")
    mngr = manager(directory, read_only=True)
    try:
        step = mngr.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint found in {directory}")
        if not fs.isdir(fs.join(step_dir(directory, step), item)):
            return None
        return mngr.restore(step, args=ocp.args.Composite(**{item: ocp.args.JsonRestore()}))[item]
    finally:
        mngr.close()


def restore_item(directory: str, item: str, target: Any = None, step: int | None = None) -> Any:
    """Restores one array item. ``target``: a pytree of ShapeDtypeStructs (with shardings) to reshard onto;
    None restores as saved (host-local arrays)."""
    if item not in ARRAY_ITEMS:
        raise ValueError(f"unknown checkpoint item {item!r}; array items are {ARRAY_ITEMS}")
    mngr = manager(directory, read_only=True)
    step = mngr.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint found in {directory}")
    available = mngr.item_metadata(step)
    if available.get(item) is None:
        raise FileNotFoundError(f"checkpoint {directory} step {step} has no item {item!r}")
    args = ocp.args.StandardRestore(target) if target is not None else ocp.args.StandardRestore()
    return mngr.restore(step, args=ocp.args.Composite(**{item: args}))[item]


def abstract_like(tree: Any, shardings: Any = None) -> Any:
    """ShapeDtypeStructs of ``tree`` (optionally with shardings) for a resharding restore."""
    if shardings is None:
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def restore_state(mngr: ocp.CheckpointManager, step: int, abstract_state: Any, shardings: Any) -> Any:
    """Restores a TrainState saved by :func:`save` onto ``shardings`` (any mesh: Orbax reshards).

    Each process reads only the shards its devices hold; nothing is gathered on a
    host. A run with EMA on whose checkpoint has none starts the EMA from the
    restored params.

    Raises:
      IncompatibleCheckpointError: the step has no optimizer state (an import: use ``init_from``).
    """
    available = mngr.item_metadata(step)
    if available.get("opt_state") is None:
        raise IncompatibleCheckpointError(
            f"checkpoint {step_dir(str(mngr.directory), step)} has no optimizer state (an import or params-only "
            "checkpoint); it can initialise a run (config.train.init_from) but not resume one")
    want_ema = abstract_state.ema is not None and available.get("ema") is not None
    items = {"params": ocp.args.StandardRestore(abstract_like(abstract_state.params, shardings.params)),
             "opt_state": ocp.args.StandardRestore(abstract_like(abstract_state.opt_state, shardings.opt_state))}
    if want_ema:
        items["ema"] = ocp.args.StandardRestore(abstract_like(abstract_state.ema, shardings.ema))
    got = mngr.restore(step, args=ocp.args.Composite(**items))
    ema = None
    if abstract_state.ema is not None:
        # A copy, not the params' buffers: the step donates the state, and one buffer cannot be donated twice.
        # The EMA tracks the trainable params (all of them, or the LoRA adapters only).
        from dreamactor_jax.models import lora

        ema = got["ema"] if want_ema else jax.jit(lambda p: jax.tree.map(jax.numpy.copy, p),
                                                  out_shardings=shardings.ema)(lora.split_trainable(got["params"])[0])
    step_arr = jax.device_put(jax.numpy.asarray(step, jax.numpy.int32), shardings.step)
    return abstract_state.replace(step=step_arr, params=got["params"], opt_state=got["opt_state"], ema=ema)


def step_dir(directory: str, step: int) -> str:
    """Path of one finalised step (the managers here use Orbax's default step names)."""
    return fs.join(fs.absolute(directory), str(int(step)))


def resolve_dir(path: str) -> str:
    """A checkpoint directory from either itself or a run's workdir (which holds ``checkpoints/``)."""
    sub = fs.join(path, "checkpoints")
    return fs.absolute(sub if fs.isdir(sub) else path)


def finalized_steps(directory: str) -> list[int]:
    """Finalised steps in ``directory``, newest first; temporary (half-written) steps are not listed."""
    if not fs.isdir(directory):
        return []
    mngr = manager(directory, read_only=True)
    try:
        return sorted(mngr.all_steps(), reverse=True)
    finally:
        mngr.close()


def check_architecture(meta: Mapping[str, Any], cfg: WanConfig, where: str, *, lora: bool = True) -> None:
    """Raises ValueError naming every architecture field where the checkpoint differs from ``cfg``.

    Only the architecture (``ARCH_FIELDS``) must agree, plus, with ``lora`` (resuming a run, not
    initialising from one), the LoRA layout; runtime fields (dtype, remat, scan) may differ.
    """
    if "model" not in meta:
        raise IncompatibleCheckpointError(f"{where}: the checkpoint's meta has no 'model' entry to check the "
                                          "architecture against")
    ours = cfg.arch_dict()
    theirs = dict(meta["model"])
    diff = []
    for f in ARCH_FIELDS:
        a, b = theirs.get(f), ours[f]
        if f == "patch_size" and a is not None:
            a = list(a)
        if a != b:
            diff.append(f"{f}: checkpoint {a!r} vs run {b!r}")
    if lora:
        for f in ("lora_rank", "lora_targets"):
            a, b = theirs.get(f, 0 if f == "lora_rank" else None), getattr(cfg, f)
            if f == "lora_targets" and not (theirs.get("lora_rank") or cfg.lora_rank):
                continue  # no adapters on either side: the target pattern is irrelevant
            if a != b:
                diff.append(f"{f}: checkpoint {a!r} vs run {b!r}")
    if diff:
        raise IncompatibleCheckpointError(f"{where}: the checkpoint's model architecture differs from "
                                          "config.model: " + "; ".join(diff))


def quarantine(directory: str, step: int, dest_root: str) -> str:
    """Moves a broken step out of ``directory`` (so the step number can be saved again); returns the new path."""
    fs.makedirs(dest_root)
    dest = fs.join(dest_root, f"step_{int(step)}_{time.strftime('%Y%m%d-%H%M%S')}")
    fs.move(step_dir(directory, step), dest)
    return dest


def _all_processes_ok(ok: bool) -> bool:
    # A step is used only if every host could read its part; otherwise hosts would train from different steps.
    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils

    return bool(np.all(multihost_utils.process_allgather(np.asarray([int(ok)], np.int32))))


def restore_first_good(directory: str, steps: Sequence[int], restore: Callable[[int], Any], *,
                       quarantine_to: str | None = None, log: Callable[[str], None] = print) -> tuple[int, Any]:
    """Restores the newest readable step of ``steps`` (newest first), reporting each unreadable one.

    A step that fails is moved to ``quarantine_to`` (when given; process 0 only)
    once an older step restored with the same target, which shows the failure was
    the step's files and not a target mismatch (a changed config fails on every
    step, and then nothing is moved).

    Args:
      directory: the checkpoint directory (for messages and quarantine).
      steps: candidate steps, newest first.
      restore: ``restore(step) -> value``; raises when the step is unreadable.
      quarantine_to: where broken steps of the run's own directory go; None leaves them.
      log: where the reports go.

    Returns:
      ``(step, value)`` of the first step that restored.

    Raises:
      CorruptCheckpointError: no step restored (the message lists each step's error).
    """
    failed: list[tuple[int, str]] = []
    for step in steps:
        try:
            value, err = restore(step), None
        except IncompatibleCheckpointError:
            raise  # the config is at fault, not the files: older steps would fail the same way
        except Exception as e:  # any other read failure of one step means: try the previous one
            value, err = None, f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        if not _all_processes_ok(err is None):
            err = err or "another process could not read its part"
        if err is not None:
            failed.append((step, err))
            nxt = next((s for s in steps if s < step), None)
            log(f"checkpoint step {step} at {step_dir(directory, step)} is unreadable ({err}); "
                + (f"trying the previous step {nxt}" if nxt is not None else "no earlier step to fall back to"))
            continue
        if failed:
            log(f"resuming from step {step} of {directory} instead of the unreadable step(s) "
                f"{[s for s, _ in failed]}")
            if quarantine_to is not None and jax.process_index() == 0:
                for s, _ in failed:
                    log(f"moved unreadable step {s} to {quarantine(directory, s, quarantine_to)}")
        return step, value
    detail = "; ".join(f"step {s} at {step_dir(directory, s)}: {e}" for s, e in failed)
    raise CorruptCheckpointError(f"no checkpoint in {directory} could be restored ({detail})")


def restore_params(mngr: ocp.CheckpointManager, step: int, abstract_params: Any, shardings: Any) -> Any:
    """Restores only item ``params`` onto ``shardings`` (pretrained init from any checkpoint kind)."""
    target = abstract_like(abstract_params, shardings)
    return mngr.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(target)))["params"]
