"""Training: the overfit test, the loss region, configs building abstractly, the launcher end to end."""

import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamactor_jax import config_lib
from dreamactor_jax.data import synthetic
from dreamactor_jax.diffusion.objective import ObjectiveConfig, loss_and_metrics
from dreamactor_jax.models import get_preset
from dreamactor_jax.models.build import init_params
from dreamactor_jax.train import abstract, optim
from dreamactor_jax.train import state as state_lib
from dreamactor_jax.train.step import train_step


def _load_config(repo_root, name, arg=""):
    return config_lib.load_config(f"{repo_root}/configs/{name}.py:{arg}")


def test_overfit_fixed_batch():
    cfg = get_preset("tiny")
    graphdef, params = init_params(cfg, seed=0)
    tx, _ = optim.make_optimizer(dict(lr=3e-3, warmup_steps=0, schedule="constant", b1=0.9, b2=0.999, eps=1e-8,
                                      weight_decay=0.0, grad_clip_norm=1.0), 60)
    state = state_lib.create(params, tx)
    batch = jax.tree.map(jnp.asarray, synthetic.synthetic_batch(0, 0, batch=2, frames=3, height=8, width=8,
                                                                 channels=16, text_len=8, text_dim=cfg.text_dim))
    step = jax.jit(functools.partial(train_step, graphdef=graphdef, tx=tx,
                                     objective=ObjectiveConfig(text_dropout=0.0)), donate_argnums=0)
    rng = jax.random.key(0)  # fixed noise and sigma: a pure optimisation problem
    losses = []
    for _ in range(60):
        state, m = step(state, batch, rng)
        losses.append(float(m["loss"]))
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.3 * losses[0], losses


def test_loss_covers_unknown_region_only():
    """The loss equals the MSE over the left half, frames after the reference, and nothing else."""
    from flax import nnx

    from dreamactor_jax.diffusion import flow
    from dreamactor_jax.diffusion.objective import canvas_inputs

    cfg = get_preset("tiny")
    graphdef, params = init_params(cfg, seed=0)
    model = nnx.merge(graphdef, params)
    model.proj_out.kernel[...] = jnp.ones_like(model.proj_out.kernel[...]) * 0.01
    b = jax.tree.map(jnp.asarray, synthetic.synthetic_batch(1, 0, batch=2, frames=3, height=8, width=8,
                                                             channels=16, text_len=8, text_dim=cfg.text_dim))
    oc = ObjectiveConfig(text_dropout=0.0)
    rng = jax.random.key(3)
    loss, _ = loss_and_metrics(model, b, rng, oc)
    k_sigma, k_noise, _ = jax.random.split(rng, 3)
    sigma = flow.sample_sigma(k_sigma, 2)
    noise = jax.random.normal(k_noise, (2, 3, 8, 16, 16))
    x_in, t, v_target, _ = canvas_inputs(b, sigma, noise, patch_size=cfg.patch_size)
    v = model(x_in, t, b["text"], b["text_mask"])
    manual = jnp.mean(jnp.square(v - v_target)[:, 1:, :, :8])
    np.testing.assert_allclose(float(loss), float(manual), rtol=1e-5)


def _all_configs(repo_root):
    out = []
    for path in sorted((repo_root / "configs").glob("*.py")):
        out += [(path.stem, "")] + ([(path.stem, "tiny")] if ":tiny" in path.read_text() else [])
    return out


CONFIG_CASES = [("stage1_pose", ""), ("stage1_pose", "tiny"), ("curriculum", ""), ("curriculum", "tiny"),
                ("curriculum", "tiny_real"), ("curriculum", "small_real"),
                ("curriculum_wan14b", ""), ("curriculum_wan14b", "lora,h100,480p"),
                ("curriculum_wan14b", "full,v5p,720p")]


@pytest.mark.parametrize("name,arg", CONFIG_CASES)
def test_config_builds_abstractly(repo_root, name, arg):
    from dreamactor_jax.config_lib import stage_config

    config = _load_config(repo_root, name, arg)
    # A curriculum config holds one train config per stage; each must build.
    train_configs = [stage_config(config, s) for s in ("stage1", "stage2")] if "stage1" in config else [config]
    for tc in train_configs:
        new_state, metrics = abstract.eval_shape_step(tc)
        assert metrics["loss"].shape == () and new_state.step.shape == ()
        _, _, state, _, _ = abstract.abstract_run(tc)
        assert jax.tree.structure(new_state.params) == jax.tree.structure(state.params)


def test_every_config_is_covered(repo_root):
    """Each file in configs/ (and its :tiny variant where it has one) is in the abstract-build test above."""
    assert set(_all_configs(repo_root)) <= set(CONFIG_CASES), "add new configs to CONFIG_CASES"


def test_misspelled_config_field_is_named(repo_root):
    config = _load_config(repo_root, "stage1_pose", "tiny")
    config.lock()  # as launch/ loads it (config_flags lock_config=True)
    with pytest.raises(AttributeError, match="num_layer"):
        config.model.num_layer = 3
    config.model.in_channels = 20
    with pytest.raises(ValueError, match=r"config.data.channels=12 .*config.model needs in_channels=28 .*has 20"):
        config_lib.validate(config)


def test_launch_train_end_to_end(tmp_path, repo_root):
    cmd = [sys.executable, str(repo_root / "launch" / "train.py"), "--config=configs/stage1_pose.py:tiny",
           f"--workdir={tmp_path}", "--config.train.steps=4", "--config.train.log_every=2"]
    out = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "done: 4 steps" in out.stdout
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [2, 4] and all(np.isfinite(x["loss"]) for x in lines)
    assert json.loads((tmp_path / "config.json").read_text())["model"]["preset"] == "tiny"


def test_launch_train_rejects_unknown_field(tmp_path, repo_root):
    cmd = [sys.executable, str(repo_root / "launch" / "train.py"), "--config=configs/stage1_pose.py:tiny",
           f"--workdir={tmp_path}", "--config.optim.learning_rate=1"]
    out = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "learning_rate" in out.stderr


def test_info_cli(repo_root):
    out = subprocess.run([sys.executable, "launch/info.py", "--preset=wan2.1-t2v-14b"], cwd=repo_root,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "params: 14288491584" in out.stdout.splitlines()
    assert "blocks.attn1" in out.stdout


def _tiny_setup(batch=4, seed=0):
    cfg = get_preset("tiny")
    graphdef, params = init_params(cfg, seed=seed)
    b = jax.tree.map(jnp.asarray, synthetic.synthetic_batch(seed, 0, batch=batch, frames=3, height=8, width=8,
                                                             channels=16, text_len=8, text_dim=cfg.text_dim,
                                                             masked_frames=1))
    b["motion_valid"] = b["motion_valid"].at[1, 2].set(0.0)  # uneven masks across microbatches
    return cfg, graphdef, params, b


def test_gradient_accumulation_equals_big_batch():
    from dreamactor_jax.train.step import loss_and_grads

    _, graphdef, params, b = _tiny_setup()
    oc = ObjectiveConfig(text_dropout=0.5)
    rng = jax.random.key(7)
    l1, g1 = jax.jit(functools.partial(loss_and_grads, graphdef=graphdef, objective=oc, microbatches=1))(
        params, b, rng)
    for k in (2, 4):
        lk, gk = jax.jit(functools.partial(loss_and_grads, graphdef=graphdef, objective=oc, microbatches=k))(
            params, b, rng)
        np.testing.assert_allclose(float(lk), float(l1), rtol=1e-5)
        for a, c in zip(jax.tree.leaves(g1), jax.tree.leaves(gk)):
            np.testing.assert_allclose(np.asarray(c), np.asarray(a), rtol=1e-4, atol=1e-7)


def test_ema_tracks_params():
    _, graphdef, params, b = _tiny_setup(batch=2)
    tx, _ = optim.make_optimizer(dict(lr=1e-3, warmup_steps=0, schedule="constant", b1=0.9, b2=0.999, eps=1e-8,
                                      weight_decay=0.0, grad_clip_norm=0.0), 10)
    state = state_lib.create(params, tx, ema=True)
    step = jax.jit(functools.partial(train_step, graphdef=graphdef, tx=tx, objective=ObjectiveConfig(),
                                     ema_decay=0.9))
    p0 = jax.tree.map(np.asarray, params)
    s1, _ = step(state, b, jax.random.key(0))
    for e, p, q in zip(jax.tree.leaves(s1.ema), jax.tree.leaves(s1.params), jax.tree.leaves(p0)):
        np.testing.assert_allclose(np.asarray(e), 0.9 * q + 0.1 * np.asarray(p), rtol=1e-6, atol=1e-7)


def test_weight_decay_mask():
    _, _, params, _ = _tiny_setup(batch=2)
    mask = optim.decay_mask(params)
    assert mask["proj_out"]["kernel"] and not mask["proj_out"]["bias"]
    assert not mask["blocks"]["scale_shift_table"] and not mask["blocks"]["attn1"]["norm_q"]["weight"]
    assert mask["blocks"]["ffn"]["net_0"]["proj"]["kernel"]


def test_launch_train_fills_and_reuses_the_compilation_cache(tmp_path, repo_root):
    """The first run writes the compiled step to the cache; a second run (another workdir) compiles nothing
    new: every executable it needs is a cache hit."""
    cache = tmp_path / "xla"

    def run(workdir):
        cmd = [sys.executable, str(repo_root / "launch" / "train.py"), "--config=configs/stage1_pose.py:tiny",
               f"--workdir={workdir}", "--config.train.steps=2", "--config.train.log_every=1",
               f"--config.train.compilation_cache_dir={cache}"]
        out = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        return sorted(os.listdir(cache))

    first = run(tmp_path / "a")
    assert any(name.startswith("jit_") and "step" in name for name in first), first
    assert run(tmp_path / "b") == first


def _ema_config(**optim):
    c = config_lib.load_config("configs/stage1_pose.py:tiny")
    c.data.update(source="synthetic", frames=3, height=8, width=8)
    c.train.update(steps=4, log_every=1, checkpoint_every=2, preview_every=0, tensorboard=False)
    c.optim.update(ema_decay=0.5, **optim)
    return c


def test_ema_on_host_lives_in_host_memory_and_equals_the_device_ema(tmp_path):
    """optim.ema_on_host: the EMA's arrays sit in pinned_host (never HBM), are updated on the host, and the run's
    EMA, params and a resume from a checkpoint are bit-identical to the device EMA's."""
    from dreamactor_jax.train import checkpoint, loop

    for host in (False, True):
        loop.run(_ema_config(ema_on_host=host), str(tmp_path / f"host_{host}"))
    c = _ema_config(ema_on_host=True)
    c.train.steps = 2
    loop.run(c, str(tmp_path / "resumed"))
    loop.run(_ema_config(ema_on_host=True), str(tmp_path / "resumed"))  # continues from step 2 to 4

    def ema_of(name):
        return [np.asarray(x) for x in jax.tree.leaves(checkpoint.restore_item(str(tmp_path / name / "checkpoints"),
                                                                                "ema"))]

    ref = ema_of("host_False")
    for name in ("host_True", "resumed"):
        assert all(np.array_equal(a, b) for a, b in zip(ema_of(name), ref, strict=True)), name

    c = _ema_config(ema_on_host=True)
    setup = loop.prepare(c)
    state, start, _ = loop.initial_state(c, setup, loop.resolve_start(str(tmp_path / "host_True" / "checkpoints")),
                                         log=lambda m: None)
    assert start == 4
    assert {x.sharding.memory_kind for x in jax.tree.leaves(state.ema)} == {"pinned_host"}
    assert {x.sharding.memory_kind for x in jax.tree.leaves(state.params)} == {"device"}


def test_offload_remat_computes_the_same_gradients():
    """remat='offload' only changes where the saved residuals live: loss and gradients equal remat='full'."""
    from dreamactor_jax.train.step import loss_and_grads

    out = {}
    for remat in ("full", "offload"):
        cfg = get_preset("tiny").replace(remat=remat, scan_layers=True)
        graphdef, params = init_params(cfg, 0)
        batch = synthetic.synthetic_batch(0, 0, batch=2, frames=2, height=4, width=4, channels=cfg.out_channels,
                                          text_len=4, text_dim=cfg.text_dim)
        out[remat] = jax.jit(functools.partial(loss_and_grads, graphdef=graphdef, objective=ObjectiveConfig()))(
            params, batch, jax.random.key(1))
    (l1, g1), (l2, g2) = out["full"], out["offload"]
    assert float(l1) == float(l2)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
