"""One train step on several meshes of 8 simulated devices equals the single-device step (f32)."""

import functools
import importlib.util

import jax
import numpy as np
import pytest

from dreamactor_jax.data import synthetic
from dreamactor_jax.models.build import init_params
from dreamactor_jax.parallel import rules, shard
from dreamactor_jax.parallel.mesh import make_mesh
from dreamactor_jax.train import abstract, optim
from dreamactor_jax.train import state as state_lib

RTOL, ATOL = 2e-4, 2e-6


def _config(repo_root):
    spec = importlib.util.spec_from_file_location("stage1_pose", repo_root / "configs" / "stage1_pose.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config("tiny")
    # 4 heads so that sequence=4 (Ulysses) divides them; batch 8 so that data=8 shards it.
    c.model.num_attention_heads = 4
    c.model.attention_head_dim = 32
    c.data.batch_size = 8
    c.optim.ema_decay = 0.5
    return c


def _one_step(config, mesh_sizes):
    config.mesh.update(data=1, fsdp=1, tensor=1, sequence=1)
    config.mesh.update(mesh_sizes)
    mesh = make_mesh(config.mesh)
    mcfg, _, abs_state, abs_batch, step = abstract.abstract_run(config)
    sp = shard.plan(mcfg, mesh, abs_state, abs_batch)
    tx, _ = optim.make_optimizer(config.optim, config.train.steps)
    _, params = init_params(mcfg, config.seed, shardings=sp.params)
    state = jax.jit(functools.partial(state_lib.create, tx=tx, ema=True), out_shardings=sp.state)(params)
    d = config.data
    host = synthetic.synthetic_batch(0, 0, batch=d.batch_size, frames=d.frames, height=d.height, width=d.width,
                                     channels=d.channels, text_len=d.text_len, text_dim=mcfg.text_dim,
                                     masked_frames=1)
    with jax.set_mesh(mesh), rules.use_rules(sp.rules):
        fn = jax.jit(step, in_shardings=(sp.state, sp.batch, None), out_shardings=(sp.state, None))
        new, metrics = fn(state, jax.device_put(host, sp.batch), jax.random.key(5))
    return float(metrics["loss"]), jax.tree.map(np.asarray, new.params), jax.tree.map(np.asarray, new.ema), new


@pytest.fixture(scope="module")
def reference(repo_root):
    return _one_step(_config(repo_root), {})


@pytest.mark.parametrize("sizes", [dict(data=8), dict(fsdp=8), dict(data=2, fsdp=2, tensor=2),
                                   dict(fsdp=2, sequence=4)], ids=["data8", "fsdp8", "d2f2t2", "f2s4"])
def test_sharded_step_matches_single_device(repo_root, reference, sizes):
    loss, params, ema, new = _one_step(_config(repo_root), sizes)
    ref_loss, ref_params, ref_ema, _ = reference
    np.testing.assert_allclose(loss, ref_loss, rtol=RTOL)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)):
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)
    for a, b in zip(jax.tree.leaves(ema), jax.tree.leaves(ref_ema)):
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)
    if sizes.get("fsdp", 1) > 1:  # the big matrices really are split over fsdp
        kern = new.params["blocks"]["ffn"]["net_0"]["proj"]["kernel"]
        assert "fsdp" in str(kern.sharding.spec)
        assert kern.addressable_shards[0].data.size < kern.size


def test_sequence_mesh_rejects_indivisible_heads(repo_root):
    from dreamactor_jax import config_lib

    c = _config(repo_root)
    c.model.num_attention_heads = 2
    c.mesh.update(data=1, sequence=4)
    with pytest.raises(ValueError, match="config.mesh.sequence=4: Ulysses attention"):
        config_lib.validate(c)
    c.model.sequence_parallel = "ring"
    config_lib.validate(c)
