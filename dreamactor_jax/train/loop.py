"""The training loop: where a run starts, the jitted step, metrics, checkpoints, preemption.

A run is exactly resumable: batch ``i`` is a pure function of (config, i), the
step's noise key is ``fold_in(key(config.seed), i)``, and a checkpoint holds
params, optimizer state, EMA and the step; so a run killed anywhere and resumed
ends with the same bits, and its ``metrics.jsonl`` with the same lines, as one
that never stopped (tests/test_reliability.py, benchmarks/chaos.py).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from dreamactor_jax import config_lib, fs
from dreamactor_jax.data import records, schema, sources
from dreamactor_jax.models import lora
from dreamactor_jax.models.build import count_params, init_params, model_config
from dreamactor_jax.models.config import WanConfig
from dreamactor_jax.parallel import distributed, feeding, rules
from dreamactor_jax.parallel.mesh import make_mesh
from dreamactor_jax.train import abstract, checkpoint, compile_cache, flops, guards, observe, optim, shard
from dreamactor_jax.train import state as state_lib
from dreamactor_jax.train.guards import NonFiniteError  # noqa: F401 (re-exported: callers catch loop.NonFiniteError)

START_KINDS = ("workdir", "resume_from", "init_from", "scratch")


@dataclasses.dataclass(frozen=True)
class StartPlan:
    """Where a run's initial state comes from; see :func:`resolve_start`."""

    kind: str  # one of START_KINDS
    directory: str = ""  # checkpoint directory to read ('' for scratch)
    steps: tuple[int, ...] = ()  # its finalised steps, newest first: the fallback order if one is unreadable


def resolve_start(checkpoint_dir: str, resume_from: str = "", init_from: str = "") -> StartPlan:
    """Decides where a run starts. The resume priority lives here and nowhere else; the first that applies wins:

    1. ``workdir``: a finalised checkpoint in the run's own ``checkpoint_dir``. The run
       was interrupted (killed, preempted, crashed) and continues exactly.
    2. ``resume_from``: another run's checkpoint directory (or its workdir). Its full
       state (params, optimizer state, EMA, step) is restored; this run continues from
       that step, writing to its own workdir.
    3. ``init_from``: a checkpoint directory with at least item ``params`` (a weight
       import, or another run's or stage's checkpoint). Params only; the EMA starts from
       them, the optimizer is fresh and the step is 0.
    4. ``scratch``: params initialised from ``config.seed``.

    A workdir checkpoint outranks the explicit options so that re-running an
    interrupted job with its original command line continues it instead of
    starting over from ``resume_from``/``init_from``.

    Args:
      checkpoint_dir: the run's own ``workdir/checkpoints``.
      resume_from: ``config.train.resume_from`` ('' for none).
      init_from: ``config.train.init_from`` ('' for none).

    Returns:
      The plan, with the candidate steps newest first (half-written steps are never listed).

    Raises:
      FileNotFoundError: ``resume_from`` or ``init_from`` (the one that applies) holds no finalised checkpoint.
    """
    own = checkpoint.finalized_steps(checkpoint_dir)
    if own:
        return StartPlan("workdir", fs.absolute(checkpoint_dir), tuple(own))
    for kind, path in (("resume_from", resume_from), ("init_from", init_from)):
        if path:
            directory = checkpoint.resolve_dir(path)
            steps = checkpoint.finalized_steps(directory)
            if not steps:
                raise FileNotFoundError(f"config.train.{kind}={path!r}: no finalised checkpoint in {directory}")
            return StartPlan(kind, directory, tuple(steps))
    return StartPlan("scratch")


@dataclasses.dataclass
class Setup:
    """Everything about a run that follows from its config alone (no state yet)."""

    mcfg: WanConfig
    mesh: jax.sharding.Mesh
    graphdef: Any
    abstract_state: Any
    abstract_batch: Any
    shardings: shard.ShardingPlan
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    step: Any  # the python train step (partial), ungated and unjitted


def prepare(config: ml_collections.ConfigDict) -> Setup:
    """Validates ``config`` and builds the mesh, abstract state and shardings (allocates nothing)."""
    config_lib.validate(config)
    mcfg = model_config(config.model)
    mesh = make_mesh(config.mesh)  # names config.mesh when the device count does not fit
    _, graphdef, abs_state, abs_batch, step = abstract.abstract_run(config)
    sp = shard.config_plan(mcfg, mesh, abs_state, abs_batch, config)
    if config.mesh.log_shardings and jax.process_index() == 0:
        print(rules.sharding_table(abs_state.params, sp.params), flush=True)
    rules.check_replicated_bytes(abs_state.params, sp.params, mesh, int(config.mesh.max_replicated_bytes))
    check_activations(config, mcfg, mesh, sp.rules)
    tx, sched = optim.make_optimizer(config.optim, config.train.steps)
    return Setup(mcfg, mesh, graphdef, abs_state, abs_batch, sp, tx, sched, step)


def canvas_tokens(config: ml_collections.ConfigDict, mcfg: WanConfig) -> int:
    """Tokens per example of the double-width canvas (frames x height x 2 width over the patch)."""
    d = config.data
    return d.frames * d.height * 2 * d.width // math.prod(mcfg.patch_size)


def check_activations(config: ml_collections.ConfigDict, mcfg: WanConfig, mesh, rule_set) -> int:
    """:func:`rules.check_activations` for a run: the batch and canvas must divide over the mesh."""
    allow = bool(config.mesh.get("allow_replicated_activations", False))
    return rules.check_activations(int(config.data.batch_size), canvas_tokens(config, mcfg), mesh, rule_set,
                                   width=mcfg.inner_dim, allow=allow)


def _all_finite(tree) -> bool:
    return bool(jax.jit(lambda t: jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(t)])))(tree))


def initial_state(config: ml_collections.ConfigDict, setup: Setup, plan: StartPlan, *,
                  quarantine_to: str | None = None, log=print) -> tuple[Any, int, dict]:
    """Builds the state ``plan`` says to start from, sharded per ``setup`` (restores reshard onto any mesh).

    Args:
      config: the run config.
      setup: from :func:`prepare`.
      plan: from :func:`resolve_start`.
      quarantine_to: where unreadable steps of the run's own directory are moved (``workdir`` plans only).
      log: where start messages go.

    Returns:
      ``(state, start_step, meta)``; ``meta`` is the restored checkpoint's meta ({} for scratch and init_from).
    """
    sp, mcfg = setup.shardings, setup.mcfg
    create = jax.jit(functools.partial(state_lib.create, tx=setup.tx, ema=config.optim.ema_decay > 0),
                     out_shardings=sp.state)
    if plan.kind == "scratch":
        # Built outside the mesh context: nnx's layer-stacking metadata would otherwise add constraints naming
        # the logical 'layers' axis; placement comes from out_shardings alone.
        _, params = init_params(mcfg, config.seed, shardings=sp.params)
        log("start: scratch (params from config.seed)")
        return create(params), 0, {}
    reader = checkpoint.manager(plan.directory, read_only=True)
    where = f"config.train.{plan.kind}={plan.directory}" if plan.kind != "workdir" else plan.directory

    def restore(step: int):
        meta = checkpoint.restore_meta(reader, step)
        checkpoint.check_architecture(meta, mcfg, where, lora=plan.kind != "init_from")
        if plan.kind == "init_from" and mcfg.lora_rank > 0 and not meta.get("model", {}).get("lora_rank"):
            # A LoRA run from base-only weights (an import, a full fine-tune): restore the frozen base and
            # add fresh adapters, as the paper trains LoRA on a pretrained backbone.
            frozen_abs = lora.split_trainable(setup.abstract_state.params)[1]
            frozen_sh = lora.split_trainable(sp.params)[1]
            value = state_lib.add_adapters(checkpoint.restore_params(reader, step, frozen_abs, frozen_sh), mcfg,
                                           config.seed, sp.params)
            finite = _all_finite(value)
        elif plan.kind == "init_from":
            value = checkpoint.restore_params(reader, step, setup.abstract_state.params, sp.params)
            finite = _all_finite(value)
        else:
            value = checkpoint.restore_state(reader, step, setup.abstract_state, sp.state)
            finite = _all_finite(value.params)
        if not finite:
            raise checkpoint.CorruptCheckpointError(f"step {step} holds non-finite params")
        return value, meta

    try:
        step, (value, meta) = checkpoint.restore_first_good(
            plan.directory, plan.steps, restore, quarantine_to=quarantine_to if plan.kind == "workdir" else None,
            log=log)
    finally:
        reader.close()
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("initial_state")  # quarantine moves finish before anyone lists steps
    if plan.kind == "init_from":
        log(f"start: init_from {checkpoint.step_dir(plan.directory, step)} ({meta.get('kind', '?')} checkpoint): "
            "params only; EMA from them, fresh optimizer, step 0")
        return create(value), 0, {}
    rng = meta.get("rng", {})
    if rng and (rng.get("seed") != config.seed or rng.get("impl") != _prng_impl()):
        log(f"warning: checkpoint rng {rng} differs from this run's seed {config.seed} / impl {_prng_impl()}; "
            "noise and data after the resume will not match the original run")
    log(f"start: {plan.kind} {checkpoint.step_dir(plan.directory, step)} (full state, step {step})")
    return value, step, meta


def _prng_impl() -> str:
    return str(jax.config.jax_default_prng_impl)


def row_block(config: ml_collections.ConfigDict, sp: shard.ShardingPlan) -> feeding.RowBlock:
    """The rows of each global batch this process builds (``parallel/feeding.py``): its devices' rows."""
    return feeding.row_block(sp.batch["target"], int(config.data.batch_size))


def put_batch(host: dict, shardings: dict, block: feeding.RowBlock) -> dict:
    """Host batch (this process's ``block`` of rows) -> global arrays sharded per ``shardings``."""
    return feeding.global_batch(host, shardings, block)


class _Saver:
    """Async Orbax saves whose failures name the step and path and never leave a half step behind."""

    def __init__(self, mngr, directory: str, last_good: int | None):
        self.mngr, self.directory = mngr, directory
        self.inflight: int | None = None
        self.last_good = last_good

    def _fail(self, step: int, e: BaseException) -> checkpoint.CheckpointSaveError:
        good = (f"the last good checkpoint is step {self.last_good} at "
                f"{checkpoint.step_dir(self.directory, self.last_good)}") if self.last_good is not None else (
                "there is no earlier checkpoint")
        return checkpoint.CheckpointSaveError(
            f"saving checkpoint step {step} to {checkpoint.step_dir(self.directory, step)} failed "
            f"({type(e).__name__}: {e}); {good}; the run stops")

    def wait(self) -> None:
        """Blocks until the in-flight save is committed; raises CheckpointSaveError if it failed."""
        if self.inflight is None:
            return
        try:
            self.mngr.wait_until_finished()
            self.mngr.check_for_errors()
        except Exception as e:
            raise self._fail(self.inflight, e) from e
        self.last_good, self.inflight = self.inflight, None

    def save(self, step: int, **kwargs) -> None:
        # Waiting first (Orbax would wait inside save anyway) pins an async failure on the step that had it.
        self.wait()
        try:
            # force: the loop decides when to save; a step that exists already must raise, not be skipped.
            checkpoint.save(self.mngr, step, force=True, **kwargs)
        except Exception as e:
            raise self._fail(step, e) from e
        self.inflight = step

    def close_quietly(self, log) -> None:
        """On the way out of a failing run: let a good in-flight save commit without masking the error."""
        try:
            self.wait()
        except checkpoint.CheckpointSaveError as e:
            log(str(e))
        try:
            self.mngr.close()  # stops Orbax's background writers before the interpreter shuts down
        except Exception as e:
            log(f"closing the checkpoint manager of {self.directory} failed: {type(e).__name__}: {e}")


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains per ``config`` in ``workdir``; returns a summary.

    Where the run starts (decided by :func:`resolve_start`; the first that applies wins):
    a checkpoint in ``workdir/checkpoints`` (continue exactly) > ``config.train.resume_from``
    (another run's full state and step) > ``config.train.init_from`` (params only, EMA from
    them, step 0; architecture must match) > scratch. An unreadable newest checkpoint is
    reported with its step and path, moved to ``workdir/corrupt_checkpoints``, and the
    previous one is used.

    Writes ``config.json``, ``metrics.jsonl`` (lines past the start step are dropped first,
    so the log equals an uninterrupted run's) and ``checkpoints/`` (every
    ``checkpoint_every`` steps, at the end and on preemption; async, atomic; newest
    ``keep_checkpoints`` plus multiples of ``keep_period`` kept).

    Every step is checked for a non-finite loss or gradient norm, one step behind so
    the host never waits for the step it just dispatched, and always before a save.

    Stops: at ``config.train.steps``; on a preemption notice (SIGTERM; the JAX sync point
    with several processes) after saving at the next step boundary, returning
    ``preempted=True``; with :class:`~dreamactor_jax.train.guards.NonFiniteError` naming the
    step (unless ``skip_nonfinite_steps``: the update is dropped and counted); with
    :class:`~dreamactor_jax.train.checkpoint.CheckpointSaveError` naming the path when a
    save fails. On every exit the in-flight save of the last good step is completed.
    """
    with guards.Preemption() as preempt:  # first: a SIGTERM during the slow start must not kill the run
        return _run(config, workdir, preempt)


def _run(config: ml_collections.ConfigDict, workdir: str, preempt: guards.Preemption) -> dict:
    t0 = time.perf_counter()
    compile_cache.enable(config.train.get("compilation_cache_dir", ""))
    setup = prepare(config)
    mcfg, mesh, sp, t = setup.mcfg, setup.mesh, setup.shardings, config.train
    main = jax.process_index() == 0
    say = (lambda msg: print(msg, flush=True)) if main else (lambda msg: None)
    fs.makedirs(workdir)
    if main:
        fs.write_text(fs.join(workdir, "config.json"), config.to_json_best_effort(indent=2))

    ckpt_dir = fs.join(workdir, "checkpoints")
    plan = resolve_start(ckpt_dir, t.get("resume_from", ""), t.get("init_from", ""))
    state, start, meta = initial_state(config, setup, plan, quarantine_to=fs.join(workdir, "corrupt_checkpoints"),
                                       log=say)
    skip = bool(t.get("skip_nonfinite_steps", False))
    skipped = int(meta.get("skipped_steps", 0))
    log_path = fs.join(workdir, "metrics.jsonl")
    if main:
        dropped = guards.truncate_metrics(log_path, start)
        if dropped:
            say(f"metrics.jsonl: dropped {dropped} line(s) past step {start} (they are redone)")
    mngr = checkpoint.manager(ckpt_dir, max_to_keep=int(t.keep_checkpoints) or None,
                              keep_period=int(t.get("keep_period", 0)) or None)
    saver = _Saver(mngr, ckpt_dir, start if plan.kind == "workdir" else None)
    with jax.set_mesh(mesh), rules.use_rules(sp.rules):
        step_fn = jax.jit(guards.gate_nonfinite(setup.step), in_shardings=(sp.state, sp.batch, None),
                          out_shardings=(sp.state, None), donate_argnums=0)
    say(f"model: {config.model.preset} params: {count_params(setup.abstract_state.params)} mesh: {dict(mesh.shape)}")
    d = config.data
    records.reset_skip_stats()  # this run's counts (a curriculum runs several stages in one process)
    block = row_block(config, sp)  # the rows this process's devices hold (shared where groups span hosts)
    source = sources.Prefetcher(sources.make_source(config, mcfg.text_dim, shard=(block.index, block.count)),
                                depth=int(d.get("prefetch", 2)), limit=int(t.steps))
    expected = schema.batch_shapes(block.size, d.frames, d.height, d.width, d.channels,
                                   d.text_len, mcfg.text_dim, schema.image_tokens_for(d, mcfg.image_dim),
                                   mcfg.image_dim)
    key = jax.random.key(config.seed)
    tokens = d.batch_size * canvas_tokens(config, mcfg)
    run_config = json.loads(config.to_json_best_effort())
    step_flops = flops.forward_flops(mcfg, batch=d.batch_size, frames=d.frames, height=d.height, width=2 * d.width,
                                     text_len=d.text_len,
                                     per_token_timesteps=config.objective.given_region == "clean").train
    throughput = observe.Throughput(step_flops, tokens, mesh.devices.size, jax.devices()[0].device_kind,
                                    float(t.get("peak_flops_per_device", 0.0)))
    say(throughput.describe())
    profiler = observe.ProfileWindow(observe.parse_profile_steps(t.get("profile_steps", "")),
                                     fs.join(workdir, observe.PROFILE_DIR), jax.process_index(),
                                     jax.process_count(), say)
    previewer = None
    if int(t.get("preview_every", 0)) > 0:
        from dreamactor_jax.train.preview import Previewer

        previewer = Previewer(config, mcfg, mesh, workdir, main=main)
    mlog = observe.MetricLog(workdir, enabled=main, tensorboard=bool(t.get("tensorboard", True)), say=say)
    if previewer is not None:
        previewer.log = mlog
    if mlog.tensorboard_dir:
        mlog.config(run_config)
        say(f"tensorboard: tensorboard --logdir={mlog.tensorboard_dir}")

    history: list[dict] = []
    seen_skips = [0]
    clock = {"t": time.perf_counter(), "step": start}
    timing = {"setup": clock["t"] - t0, "preview": 0.0, "previews": 0}

    def finish(done: int, metrics) -> None:
        """Checks (and at log steps records) one finished step's metrics."""
        nonlocal skipped
        m = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if guards.check_finite(m, done, skip=skip):
            skipped += 1
            say(f"step {done}: non-finite loss {m['loss']} or grad norm {m['grad_norm']}; update skipped "
                f"({skipped} skipped so far)")
        if done % t.log_every and done != t.steps:
            return
        now = time.perf_counter()
        sps = (done - clock["step"]) / max(now - clock["t"], 1e-9)
        clock.update(t=now, step=done)
        rates = throughput.rates(sps)
        step_metrics = dict(m)
        skips = records.skip_stats()  # counted by the reader threads of this process
        m.update(corrupt_records=skips["corrupt_records"], bad_files=skips["bad_files"])
        if skips["corrupt_records"] + skips["bad_files"] > seen_skips[0]:
            seen_skips[0] = skips["corrupt_records"] + skips["bad_files"]
            say(f"step {done}: data skipped so far: {skips['corrupt_records']} corrupt record(s), "
                f"{skips['bad_files']} unreadable file(s) (each replaced by the next readable record)")
        m.update(step=done, lr=float(setup.schedule(done - 1)), steps_per_s=sps, tokens_per_s=rates["tokens_per_s"],
                 skipped_steps=skipped, model_flops_per_s=rates["model_flops_per_s"])
        if "mfu" in rates:
            m["mfu"] = rates["mfu"]
        history.append(m)
        tb = {f"train/{k}": v for k, v in step_metrics.items()}
        tb.update({"train/lr": m["lr"], "perf/steps_per_s": sps, **{f"perf/{k}": v for k, v in rates.items()}})
        mlog.scalars(done, m, tb)
        say(observe.progress_line(done, t.steps, m, sps, rates))

    def save(done: int) -> None:
        saver.save(done, params=state.params, opt_state=state.opt_state, ema=state.ema, model_cfg=mcfg,
                   config=run_config, extra_meta={
                       "data": {"source": d.source, "next_index": done},  # sources are random access by step
                       "rng": {"seed": config.seed, "impl": _prng_impl(),
                               "per_step": "jax.random.fold_in(jax.random.key(seed), step_index)"},
                       "skipped_steps": skipped, "mesh": dict(mesh.shape)})

    def preview(done: int) -> None:
        dt = previewer(done, state.params)
        clock["t"] += dt  # a preview is not training: keep it out of steps/s
        timing["preview"] += dt
        timing["previews"] += 1

    done, preempted, pending = start, False, None
    try:
        with jax.set_mesh(mesh), rules.use_rules(sp.rules):
            for i in range(start, t.steps):
                profiler.before(i + 1)
                host = source.get(i)  # batch i is a pure function of (config, i): resuming sees the same batches
                schema.validate_batch(host, expected)
                state, metrics = step_fn(state, put_batch(host, sp.batch, block), jax.random.fold_in(key, i))
                if pending is not None:
                    finish(*pending)  # fetches step i-1's metrics while step i runs
                done, pending = i + 1, (i + 1, metrics)
                profiler.after(done, metrics)
                preempted = preempt.reached(done, mngr)
                if preempted or done % t.checkpoint_every == 0 or done == t.steps:
                    finish(*pending)  # a step is checked before its state can be saved
                    pending = None
                    save(done)
                if previewer is not None and previewer.due(done) and not preempted:
                    preview(done)
                if preempted:
                    break
            if pending is not None:
                finish(*pending)
            if saver.last_good != done and saver.inflight != done:
                save(done)  # e.g. resume_from a checkpoint already at config.train.steps
            saver.wait()
    except BaseException:
        source.close()
        profiler.stop()
        saver.close_quietly(say)
        mlog.close()
        raise
    source.close()
    profiler.stop()
    mngr.close()
    mlog.close()
    if preempted:
        say(f"preempted: saved checkpoint step {done} to {checkpoint.step_dir(ckpt_dir, done)}; exiting cleanly")
    jax.block_until_ready(state)
    final = history[-1]["loss"] if history else float("nan")
    seconds = time.perf_counter() - t0
    outputs = {"config": fs.join(workdir, "config.json"), "metrics": log_path, "checkpoints": ckpt_dir}
    if mlog.tensorboard_dir:
        outputs["tensorboard"] = mlog.tensorboard_dir
    if previewer is not None and previewer.written:
        outputs["previews"] = previewer.dir
    if profiler.traced:
        outputs["profile"] = profiler.logdir
    report = {"steps": done, "target_steps": t.steps, "start_step": start, "start": plan.kind,
              "preempted": preempted, "skipped_steps": skipped, "data_skips": _data_skips(), "final_loss": final,
              "seconds": seconds,
              "setup_seconds": timing["setup"], "preview_seconds": timing["preview"], "previews": timing["previews"],
              "profiled_steps": profiler.traced, "outputs": outputs}
    if main:
        observe.write_json(fs.join(workdir, observe.SUMMARY_FILE), report)
        say(_summary_table(report, history, workdir))
    return {**report, "history": history, "state": state, "graphdef": setup.graphdef, "checkpoints": ckpt_dir}


def _data_skips() -> dict:
    """Skipped corrupt records and unreadable files, summed over processes (a collective: every process calls it)."""
    s = records.skip_stats()
    reads, bad_records, bad_files = distributed.sum_over_processes(
        [s["corrupt_reads"], s["corrupt_records"], s["bad_files"]])
    return {"corrupt_reads": reads, "corrupt_records": bad_records, "bad_files": bad_files,
            "local_records": s["records"][:20], "local_files": s["files"][:20]}


def _summary_table(r: dict, history: list[dict], workdir: str) -> str:
    """The end-of-run table (paths relative to the workdir): setup, training, and previews / profile if any."""
    train_s = r["seconds"] - r["setup_seconds"] - r["preview_seconds"]
    sps = [h["steps_per_s"] for h in history[1:]] or [h["steps_per_s"] for h in history]  # the first has the compile
    o = {k: os.path.relpath(v, workdir) + ("" if k in ("config", "metrics") else "/") for k, v in r["outputs"].items()}
    rows = [{"phase": "setup", "time": r["setup_seconds"], "outputs": [o["config"]]},
            {"phase": "train", "time": train_s, "steps": f"{r['start_step']}->{r['steps']} of {r['target_steps']}",
             "final loss": r["final_loss"],
             "outputs": [o["checkpoints"], o["metrics"]] + ([o["tensorboard"]] if "tensorboard" in o else [])}]
    if r["previews"]:
        rows.append({"phase": "previews", "time": r["preview_seconds"], "steps": f"{r['previews']} x sampled",
                     "outputs": [o.get("previews")]})
    if r["profiled_steps"]:
        rows.append({"phase": "profile", "steps": f"{r['profiled_steps'][0]}-{r['profiled_steps'][-1]}",
                     "outputs": [o["profile"]]})
    skips = r.get("data_skips") or {}
    if skips.get("corrupt_records") or skips.get("bad_files"):
        rows.append({"phase": "data skipped", "steps": f"{skips['corrupt_records']} corrupt records, "
                     f"{skips['bad_files']} unreadable files", "outputs": [observe.SUMMARY_FILE]})
    rate = f", median {sorted(sps)[len(sps) // 2]:.2f} steps/s" if sps else ""
    status = "preempted" if r["preempted"] else "finished"
    return (f"summary of {workdir} ({status} after {observe.format_seconds(r['seconds'])}{rate}; "
            f"{observe.SUMMARY_FILE}):\n" + observe.summary_table(rows))
