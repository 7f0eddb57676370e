"""The training loop: build state, run the jitted step, log metrics."""

from __future__ import annotations

import functools
import json
import math
import os
import time

import jax
import ml_collections
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from dreamactor_jax import config_lib
from dreamactor_jax.data import schema, synthetic
from dreamactor_jax.models.build import count_params, init_params, model_config
from dreamactor_jax.parallel.mesh import make_mesh
from dreamactor_jax.train import abstract, optim
from dreamactor_jax.train import state as state_lib


class NonFiniteError(FloatingPointError):
    pass


def batch_source(config: ml_collections.ConfigDict, text_dim: int):
    d = config.data
    if d.source != "synthetic":
        raise ValueError(f"config.data.source={d.source!r} is not available; use 'synthetic'")
    return functools.partial(synthetic.synthetic_batch, config.seed, batch=d.batch_size, frames=d.frames,
                             height=d.height, width=d.width, channels=d.channels, text_len=d.text_len,
                             text_dim=text_dim, masked_frames=d.motion_masked_frames)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains per ``config``, writing ``config.json`` and ``metrics.jsonl`` into ``workdir``; returns a summary."""
    config_lib.validate(config)
    mcfg = model_config(config.model)
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=2))

    mesh = make_mesh(config.mesh)
    batch_shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if config.data.batch_size % batch_shards:
        raise ValueError(f"config.data.batch_size={config.data.batch_size} is not divisible by the "
                         f"{batch_shards} batch shards of the mesh (data x fsdp)")
    replicated = NamedSharding(mesh, P())
    data_sharding = NamedSharding(mesh, P(("data", "fsdp")))

    graphdef, params = init_params(mcfg, config.seed, shardings=replicated)
    print(f"model: {config.model.preset} params: {count_params(params)} mesh: {dict(mesh.shape)}", flush=True)
    tx, sched = optim.make_optimizer(config.optim, config.train.steps)
    state = jax.jit(functools.partial(state_lib.create, tx=tx, ema=config.optim.ema_decay > 0),
                    out_shardings=replicated)(params)
    step_fn = jax.jit(abstract.step_fn(config, graphdef, tx), donate_argnums=0)
    source = batch_source(config, mcfg.text_dim)
    d = config.data
    expected = schema.batch_shapes(d.batch_size, d.frames, d.height, d.width, d.channels, d.text_len, mcfg.text_dim)
    key = jax.random.key(config.seed)
    tokens = d.batch_size * d.frames * d.height * 2 * d.width // math.prod(mcfg.patch_size)

    log_path = os.path.join(workdir, "metrics.jsonl")
    history = []
    t0 = time.perf_counter()
    t_last, step_last = t0, 0
    with open(log_path, "w") as log:
        for step in range(config.train.steps):
            host = source(step)
            schema.validate_batch(host, expected)
            batch = jax.device_put(host, data_sharding)
            state, metrics = step_fn(state, batch, jax.random.fold_in(key, step))
            if (step + 1) % config.train.log_every == 0 or step + 1 == config.train.steps:
                m = {k: float(v) for k, v in jax.device_get(metrics).items()}
                if not (math.isfinite(m["loss"]) and math.isfinite(m["grad_norm"])):
                    raise NonFiniteError(f"non-finite loss {m['loss']} or grad norm {m['grad_norm']} "
                                         f"at step {step + 1}")
                now = time.perf_counter()
                sps = (step + 1 - step_last) / (now - t_last)
                t_last, step_last = now, step + 1
                m.update(step=step + 1, lr=float(sched(step)), steps_per_s=sps, tokens_per_s=sps * tokens)
                history.append(m)
                log.write(json.dumps(m) + "\n")
                log.flush()
                print(f"step {step + 1}/{config.train.steps} loss {m['loss']:.4f} grad_norm {m['grad_norm']:.3f} "
                      f"{sps:.2f} steps/s {sps * tokens:.0f} tokens/s", flush=True)
    jax.block_until_ready(state)
    return {"steps": config.train.steps, "final_loss": history[-1]["loss"], "history": history,
            "seconds": time.perf_counter() - t0, "state": state, "graphdef": graphdef}
