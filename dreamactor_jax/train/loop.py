"""The training loop: build state, run the jitted step, log metrics."""

from __future__ import annotations

import functools
import json
import math
import os
import time

import jax
import ml_collections

from dreamactor_jax import config_lib
from dreamactor_jax.data import schema, sources
from dreamactor_jax.models.build import count_params, init_params, model_config
from dreamactor_jax.parallel import rules, shard
from dreamactor_jax.parallel.mesh import make_mesh
from dreamactor_jax.train import abstract, checkpoint, optim
from dreamactor_jax.train import state as state_lib


class NonFiniteError(FloatingPointError):
    pass


def put_batch(host: dict, shardings: dict) -> dict:
    """Host batch -> global arrays. Multi-host: each process passes its own slice of the global batch."""
    if jax.process_count() == 1:
        return jax.device_put(host, shardings)
    return {k: jax.make_array_from_process_local_data(shardings[k], v) for k, v in host.items()}


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains per ``config`` in ``workdir`` (config.json, metrics.jsonl, checkpoints/); returns a summary.

    Resume priority: a checkpoint in ``workdir/checkpoints`` > scratch (seeded init).
    """
    config_lib.validate(config)
    mcfg = model_config(config.model)
    os.makedirs(workdir, exist_ok=True)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))

    mesh = make_mesh(config.mesh)
    _, graphdef, abs_state, abs_batch, step = abstract.abstract_run(config)
    sp = shard.plan(mcfg, mesh, abs_state, abs_batch, rules=shard.config_rules(config))
    if config.mesh.log_shardings and jax.process_index() == 0:
        print(rules.sharding_table(abs_state.params, sp.params), flush=True)
    rules.check_replicated_bytes(abs_state.params, sp.params, mesh, int(config.mesh.max_replicated_bytes))
    tx, sched = optim.make_optimizer(config.optim, config.train.steps)

    ckpt_dir = os.path.join(workdir, "checkpoints")
    mngr = checkpoint.manager(ckpt_dir, max_to_keep=config.train.keep_checkpoints)
    start = mngr.latest_step()
    # Built outside the mesh context: nnx's layer-stacking metadata would otherwise add constraints naming the
    # logical 'layers' axis; placement comes from out_shardings alone.
    if start is None:
        _, params = init_params(mcfg, config.seed, shardings=sp.params)
        state = jax.jit(functools.partial(state_lib.create, tx=tx, ema=config.optim.ema_decay > 0),
                        out_shardings=sp.state)(params)
        start = 0
    else:
        state = checkpoint.restore_state(mngr, start, abs_state, sp.state)
        print(f"resumed from {ckpt_dir} step {start}", flush=True)
    with jax.set_mesh(mesh), rules.use_rules(sp.rules):
        step_fn = jax.jit(step, in_shardings=(sp.state, sp.batch, None), out_shardings=(sp.state, None),
                          donate_argnums=0)
    print(f"model: {config.model.preset} params: {count_params(abs_state.params)} mesh: {dict(mesh.shape)}",
          flush=True)
    source = sources.make_source(config, mcfg.text_dim)
    d = config.data
    expected = schema.batch_shapes(d.batch_size, d.frames, d.height, d.width, d.channels, d.text_len, mcfg.text_dim)
    key = jax.random.key(config.seed)
    tokens = d.batch_size * d.frames * d.height * 2 * d.width // math.prod(mcfg.patch_size)

    history = []
    t0 = time.perf_counter()
    t_last, step_last = t0, start
    with open(os.path.join(workdir, "metrics.jsonl"), "a") as log, jax.set_mesh(mesh), rules.use_rules(sp.rules):
        for i in range(start, config.train.steps):
            host = source(i)  # batch i is a pure function of (seed, i): resuming sees the same batches
            schema.validate_batch(host, expected)
            state, metrics = step_fn(state, put_batch(host, sp.batch), jax.random.fold_in(key, i))
            done = i + 1
            if done % config.train.log_every == 0 or done == config.train.steps:
                m = {k: float(v) for k, v in jax.device_get(metrics).items()}
                if not (math.isfinite(m["loss"]) and math.isfinite(m["grad_norm"])):
                    raise NonFiniteError(f"non-finite loss {m['loss']} or grad norm {m['grad_norm']} at step {done}")
                now = time.perf_counter()
                sps = (done - step_last) / (now - t_last)
                t_last, step_last = now, done
                m.update(step=done, lr=float(sched(i)), steps_per_s=sps, tokens_per_s=sps * tokens)
                history.append(m)
                if jax.process_index() == 0:
                    log.write(json.dumps(m) + "\n")
                    log.flush()
                    print(f"step {done}/{config.train.steps} loss {m['loss']:.4f} grad_norm {m['grad_norm']:.3f} "
                          f"{sps:.2f} steps/s {sps * tokens:.0f} tokens/s", flush=True)
            if done % config.train.checkpoint_every == 0 or done == config.train.steps:
                checkpoint.save(mngr, done, params=state.params, opt_state=state.opt_state, ema=state.ema,
                                model_cfg=mcfg, config=json.loads(config.to_json_best_effort()))
    mngr.wait_until_finished()
    jax.block_until_ready(state)
    final = history[-1]["loss"] if history else float("nan")
    return {"steps": config.train.steps, "start_step": start, "final_loss": final, "history": history,
            "seconds": time.perf_counter() - t0, "state": state, "graphdef": graphdef, "checkpoints": ckpt_dir}
