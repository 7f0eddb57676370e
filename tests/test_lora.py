"""LoRA: adapters on the FFN, a frozen base in training, sharding like the base, merged/separate export."""

import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from dreamactor_jax import config_lib
from dreamactor_jax.convert import export, names, parity
from dreamactor_jax.convert.safetensors_io import SafetensorsFile
from dreamactor_jax.data import synthetic
from dreamactor_jax.models import get_preset, lora
from dreamactor_jax.models.build import abstract_model, init_params, split_params
from dreamactor_jax.parallel import rules
from dreamactor_jax.parallel.mesh import make_mesh
from dreamactor_jax.train import abstract, optim, shard
from dreamactor_jax.train import checkpoint as ckpt_lib
from dreamactor_jax.train import state as state_lib

# Odd, distinct sizes (width 96 = 3 heads x 32, ffn 77), rank 5, alpha 7 (scale 1.4); f32 compute.
CFG = get_preset("tiny", num_attention_heads=3, attention_head_dim=32, num_layers=2, ffn_dim=77, in_channels=16,
                 text_dim=23, freq_dim=30, lora_rank=5, lora_alpha=7.0)
BASE_CFG = CFG.replace(lora_rank=0)
LORA_KEYS = {"blocks/ffn/net_0/proj/lora_a", "blocks/ffn/net_0/proj/lora_b", "blocks/ffn/net_2/lora_a",
             "blocks/ffn/net_2/lora_b"}


def _path(p) -> str:
    return "/".join(str(getattr(k, "key", k)) for k in p)


def _flat(tree) -> dict[str, np.ndarray]:
    return {_path(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _paths(tree) -> dict[tuple, np.ndarray]:
    return {tuple(k.split("/")): v for k, v in _flat(tree).items()}


def _read(path):
    f = SafetensorsFile(str(path))
    return {k: f.get(k) for k in f.keys()}


@pytest.fixture(scope="module")
def model():
    """Random LoRA params, every tensor distinct and non-zero (B = 0 or the zero-initialised proj_out would make
    every comparison trivial), and the LoRA model's output on seeded inputs."""
    _, shapes = split_params(abstract_model(CFG))
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: jnp.asarray(0.2 * rng.standard_normal(s.shape), s.dtype), shapes)
    inp = parity.random_inputs(CFG, seed=3)
    return {"params": params, "inputs": inp, "out": parity.forward(CFG, _paths(params), inp)}


def test_config_validation_and_targets():
    with pytest.raises(ValueError, match=r"WanConfig.lora_targets: is not a valid regular expression"):
        get_preset("tiny", lora_rank=4, lora_targets="ffn\\.net_(0")
    with pytest.raises(ValueError, match="WanConfig.lora_rank"):
        get_preset("tiny", lora_rank=-1)
    with pytest.raises(ValueError, match="WanConfig.lora_alpha"):
        get_preset("tiny", lora_rank=4, lora_alpha=-2.0)
    with pytest.raises(ValueError, match=r"lora_targets='attn3' matches no Linear layer.*blocks\.ffn\.net_0\.proj"):
        abstract_model(get_preset("tiny", lora_rank=4, lora_targets="attn3"))
    assert CFG.lora_scale == pytest.approx(1.4) and get_preset("tiny", lora_rank=8).lora_scale == 1.0
    cfg = CFG.replace(lora_targets=r"attn1\.to_out|condition_embedder\.time_proj")
    got = set(_flat(nnx.to_pure_dict(nnx.state(abstract_model(cfg), lora.LoRAParam))))
    assert got == {"blocks/attn1/to_out/lora_a", "blocks/attn1/to_out/lora_b",
                   "condition_embedder/time_proj/lora_a", "condition_embedder/time_proj/lora_b"}


def test_adapters_are_separate_variables_and_start_as_identity():
    _, init = init_params(CFG, seed=0)
    flat = _flat(init)
    assert {k for k in flat if "lora" in k} == LORA_KEYS
    assert flat["blocks/ffn/net_0/proj/lora_a"].shape == (2, 96, 5)  # (layers, in, r)
    assert flat["blocks/ffn/net_0/proj/lora_b"].shape == (2, 5, 77)  # (layers, r, out)
    assert flat["blocks/ffn/net_2/lora_a"].shape == (2, 77, 5)
    # B = 0: the adapted model starts as its base. A ~ U(+-1/sqrt(in)) (PEFT's kaiming-uniform).
    assert not flat["blocks/ffn/net_0/proj/lora_b"].any() and not flat["blocks/ffn/net_2/lora_b"].any()
    a = flat["blocks/ffn/net_2/lora_a"]
    assert 0.5 / np.sqrt(77) < np.abs(a).max() <= 1 / np.sqrt(77)
    trainable, frozen = lora.split_trainable(init)
    assert set(_flat(trainable)) == LORA_KEYS and not LORA_KEYS & set(_flat(frozen))
    assert lora.combine(trainable, frozen) == init
    base = jax.tree.map(np.asarray, frozen)
    assert lora.split_trainable(base) == (base, None)  # full fine-tuning: everything trains
    # Starting LoRA from base-only weights (an import): the same adapters init_params draws.
    added = _flat(state_lib.add_adapters(base, CFG, seed=0))
    assert added.keys() == flat.keys() and all(np.array_equal(v, flat[k]) for k, v in added.items())
    # The diffusers name table is the base model's: LoRA leaves are neither listed nor "unexpected".
    assert [e.theirs for e in names.name_table(CFG)] == [e.theirs for e in names.name_table(BASE_CFG)]


def test_merged_weights_forward_equals_lora_forward(model):
    merged = lora.merge_params(jax.tree.map(np.asarray, model["params"]), CFG)
    assert not any("lora" in k for k in _flat(merged))
    w = model["params"]["blocks"]["ffn"]["net_2"]["kernel"]
    assert np.abs(merged["blocks"]["ffn"]["net_2"]["kernel"] - np.asarray(w)).max() > 1e-2
    ref = parity.forward(BASE_CFG, _paths(merged), model["inputs"])
    assert np.abs(ref).max() > 0.5
    np.testing.assert_allclose(model["out"], ref, atol=1e-5, rtol=0)


def _stage1_tiny(repo_root, **model):
    c = config_lib.load_config("configs/stage1_pose.py:tiny")
    c.model.update(model)
    c.data.update(frames=2, height=8, width=8, batch_size=4)
    c.optim.update(microbatches=2, ema_decay=0.5, lr=1e-2)
    return c


def test_sharded_lora_training_freezes_base(repo_root):
    """Through the real config and step, on fsdp=2 x tensor=2: adapters shard like their base, the optimizer
    state and EMA are adapter-sized and sharded alike, and three steps leave the base bit-for-bit unchanged."""
    config = _stage1_tiny(repo_root, lora_rank=8, lora_alpha=16.0)
    mesh = make_mesh(dict(fsdp=2, tensor=2))
    mcfg, _, abs_state, abs_batch, step = abstract.abstract_run(config)
    assert mcfg.lora_rank == 8 and mcfg.lora_scale == 2.0
    p = rules.param_shardings(abstract_model(mcfg), mesh)
    for node in (p["blocks"]["ffn"]["net_0"]["proj"], p["blocks"]["ffn"]["net_2"]):
        kern, a, b = node["kernel"].spec, node["lora_a"].spec, node["lora_b"].spec
        assert set(kern) == {None, "fsdp", "tensor"}
        # (layers, in, r) takes the kernel's layers and in specs; (layers, r, out) its layers and out specs.
        assert a == P(kern[0], kern[1], None) and b == P(kern[0], None, kern[2]), (kern, a, b)
    s = state_lib.shardings(abs_state, p, mesh)
    adam = s.opt_state[1][0]  # chain(clip_by_global_norm, adamw) -> adamw's ScaleByAdamState
    assert adam.mu == adam.nu == s.ema == lora.split_trainable(p)[0]
    assert s.params == p

    tx, _ = optim.make_optimizer(config.optim, config.train.steps)
    _, params = init_params(mcfg, config.seed, shardings=p)
    rng = np.random.default_rng(0)  # a non-zero output layer, or no gradient reaches the adapters
    params["proj_out"]["kernel"] = jax.device_put(0.1 * rng.standard_normal(params["proj_out"]["kernel"].shape,
                                                                            np.float32), p["proj_out"]["kernel"])
    before = _flat(params)
    n_lora = sum(v.size for k, v in before.items() if "lora" in k)
    state = jax.jit(functools.partial(state_lib.create, tx=tx, ema=True), out_shardings=s)(params)
    moments = [x for x in jax.tree.leaves(state.opt_state) if x.ndim > 0]
    assert len(moments) == 2 * len(LORA_KEYS) and sum(x.size for x in moments) == 2 * n_lora
    assert set(_flat(state.ema)) == LORA_KEYS
    assert all(jax.tree.leaves(optim.decay_mask(state_lib.trainable(params))))  # adapters are decayed matrices

    sp = shard.plan(mcfg, mesh, abs_state, abs_batch)
    d = config.data
    with jax.set_mesh(mesh), rules.use_rules(sp.rules):
        fn = jax.jit(step, in_shardings=(s, sp.batch, None), out_shardings=(s, None), donate_argnums=0)
        for i in range(3):
            host = synthetic.synthetic_batch(0, i, batch=d.batch_size, frames=d.frames, height=d.height,
                                             width=d.width, channels=d.channels, text_len=d.text_len,
                                             text_dim=mcfg.text_dim, masked_frames=1)
            state, metrics = fn(state, jax.device_put(host, sp.batch), jax.random.key(i))
            assert np.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) > 0
    after = _flat(state.params)
    for k, v in before.items():
        assert np.array_equal(after[k], v) != (k in LORA_KEYS), f"{k}: frozen changed or adapter did not"
    lora_b = state.params["blocks"]["ffn"]["net_2"]["lora_b"]
    assert lora_b.sharding.spec == p["blocks"]["ffn"]["net_2"]["lora_b"].spec
    assert int(state.step) == 3 and set(_flat(state.ema)) == LORA_KEYS


def test_export_merge_loads_in_diffusers(model, tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    pytest.importorskip("accelerate")
    summary = export.export_params(CFG, model["params"], str(tmp_path / "out"), dtype="fp32")
    assert summary["lora"] == "merge"
    assert sorted(os.listdir(tmp_path / "out")) == ["config.json", "diffusion_pytorch_model.safetensors"]
    tm = parity.load_diffusers(str(tmp_path / "out"))  # raises on any missing/unexpected/mis-shaped key
    assert sorted(tm.state_dict()) == sorted(e.theirs for e in names.name_table(CFG))
    inp = model["inputs"]
    with torch.no_grad():
        ref = tm(torch.from_numpy(inp["x"]).permute(0, 4, 1, 2, 3), torch.from_numpy(inp["t"]),
                 torch.from_numpy(inp["text"]), return_dict=False)[0].permute(0, 2, 3, 4, 1).numpy()
    assert np.abs(ref).max() > 0.5
    np.testing.assert_allclose(model["out"], ref, atol=1e-4, rtol=0)  # diffusers vs the (unmerged) LoRA model


def test_export_separate_and_from_checkpoint(model, tmp_path, repo_root):
    params = model["params"]
    flat = _paths(params)
    summary = export.export_params(CFG, params, str(tmp_path / "sep"), dtype="fp32", lora="separate")
    assert summary["lora"] == "separate" and summary["lora_tensors"] == 4 * CFG.num_layers
    base = _read(tmp_path / "sep" / "diffusion_pytorch_model.safetensors")
    adapters = _read(tmp_path / "sep" / export.LORA_WEIGHTS_NAME)
    conf = json.loads((tmp_path / "sep" / export.ADAPTER_CONFIG_NAME).read_text())
    assert conf["r"] == 5 and conf["lora_alpha"] == 7.0 and conf["target_modules"] == ["ffn.net.0.proj", "ffn.net.2"]
    assert sorted(adapters) == sorted(f"blocks.{i}.ffn.{m}.lora_{x}.weight" for i in range(2)
                                      for m in ("net.0.proj", "net.2") for x in "AB")
    a, b = adapters["blocks.1.ffn.net.0.proj.lora_A.weight"], adapters["blocks.1.ffn.net.0.proj.lora_B.weight"]
    assert a.shape == (5, 96) and b.shape == (77, 5)  # (r, in), (out, r): torch Linear weights
    np.testing.assert_array_equal(a, flat[("blocks", "ffn", "net_0", "proj", "lora_a")][1].T)
    w = base["blocks.1.ffn.net.0.proj.weight"]  # the base, unmerged
    np.testing.assert_array_equal(w, flat[("blocks", "ffn", "net_0", "proj", "kernel")][1].T)
    # PEFT's W + alpha/r B A equals what the merged export writes.
    export.export_params(CFG, params, str(tmp_path / "mrg"), dtype="fp32")
    merged = _read(tmp_path / "mrg" / "diffusion_pytorch_model.safetensors")
    np.testing.assert_allclose(merged["blocks.1.ffn.net.0.proj.weight"], w + conf["lora_alpha"] / conf["r"] * b @ a,
                               atol=1e-6)
    assert all(np.array_equal(merged[k], base[k]) for k in base if ".ffn." not in k)

    # A LoRA run's checkpoint: its EMA holds only the adapters; "ema" exports the base params + EMA adapters.
    trainable, frozen = lora.split_trainable(params)
    ema = jax.tree.map(lambda x: 0.5 * x, trainable)
    mngr = ckpt_lib.manager(str(tmp_path / "ck"), async_save=False)
    ckpt_lib.save(mngr, 3, params=params, ema=ema, model_cfg=CFG)
    mngr.wait_until_finished()
    mngr.close()
    summary = export.export_checkpoint(str(tmp_path / "ck"), str(tmp_path / "ck_out"), dtype="fp32")
    assert summary["weights"] == "ema" and summary["lora"] == "merge"
    got = _read(tmp_path / "ck_out" / "diffusion_pytorch_model.safetensors")
    want = lora.merge_params(jax.tree.map(np.asarray, lora.combine(ema, frozen)), CFG)
    np.testing.assert_allclose(got["blocks.0.ffn.net.2.weight"], want["blocks"]["ffn"]["net_2"]["kernel"][0].T,
                               atol=1e-6)
    out = subprocess.run([sys.executable, "launch/convert.py", "export", f"--checkpoint={tmp_path / 'ck'}",
                          f"--out={tmp_path / 'cli'}", "--dtype=fp32", "--weights=params", "--lora=separate"],
                         cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1])["lora"] == "separate"
    cli = _read(tmp_path / "cli" / export.LORA_WEIGHTS_NAME)
    assert cli.keys() == adapters.keys() and all(np.array_equal(cli[k], adapters[k]) for k in adapters)
