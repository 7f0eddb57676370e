"""Converter: diffusers / original Wan2.1 safetensors <-> our Orbax checkpoints, checked against diffusers.

Random diffusers models (head_dim 32: diffusers' RoPE misbehaves at 16 and 64) are
written with diffusers' own ``save_pretrained`` (diffusers layout) and, renamed by
``wan_original.to_original``, as an original-release file; that renaming is itself
checked against diffusers' converter. Exports are loaded back with ``from_pretrained``
and its missing/unexpected keys are checked explicitly (diffusers only warns).
"""

import json
import os
import shutil
import subprocess
import sys

import jax
import ml_dtypes
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
pytest.importorskip("accelerate")
from safetensors.torch import load_file, save_file  # noqa: E402

from dreamactor_jax.convert import export, importer, names, orbax_reader, parity, pretrained, wan_original  # noqa: E402
from dreamactor_jax.convert.safetensors_io import SafetensorsFile, SafetensorsFormatError, parse_size  # noqa: E402
from dreamactor_jax.models import get_preset  # noqa: E402
from dreamactor_jax.train import checkpoint as ckpt_lib  # noqa: E402

ATOL = 1e-4
T2V = get_preset("tiny", num_attention_heads=3, attention_head_dim=32, num_layers=3, ffn_dim=77, in_channels=16,
                 text_dim=23, freq_dim=30)
I2V = get_preset("tiny", num_attention_heads=3, attention_head_dim=32, num_layers=2, ffn_dim=77, in_channels=36,
                 text_dim=23, freq_dim=30, image_dim=27, added_kv_proj_dim=96)


def _torch_model(cfg, seed):
    torch.manual_seed(seed)
    tm = diffusers.WanTransformer3DModel(**cfg.arch_dict()).eval()
    with torch.no_grad():  # move norms/biases off their 0/1 init so every tensor is distinct
        for p in tm.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return tm


def _sd(tm):
    return {k: v.detach().numpy().copy() for k, v in tm.state_dict().items()}


def _original_config(cfg):
    return {"_class_name": "WanModel", "dim": cfg.inner_dim, "num_heads": cfg.num_attention_heads,
            "num_layers": cfg.num_layers, "ffn_dim": cfg.ffn_dim, "freq_dim": cfg.freq_dim, "in_dim": cfg.in_channels,
            "out_dim": cfg.out_channels, "text_dim": cfg.text_dim, "eps": cfg.eps, "text_len": 512,
            "model_type": "t2v" if cfg.image_dim is None else "i2v"}


def _write(path, tensors, config=None):
    os.makedirs(path, exist_ok=True)
    save_file({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in tensors.items()},
              os.path.join(path, pretrained.WEIGHTS_NAME))
    if config is not None:
        with open(os.path.join(path, pretrained.CONFIG_NAME), "w") as f:
            json.dump(config, f)
    return str(path)


@pytest.fixture(scope="module")
def t2v(tmp_path_factory):
    """A random T2V model saved by diffusers (sharded) and as an original-release file (with/without config)."""
    root = tmp_path_factory.mktemp("t2v")
    tm = _torch_model(T2V, 0)
    tm.save_pretrained(root / "diffusers", max_shard_size="200KB")
    sd = _sd(tm)
    orig = {wan_original.to_original(k): v for k, v in sd.items()}
    _write(root / "original", orig, _original_config(T2V))
    _write(root / "original_noconfig", orig)
    return {"root": root, "tm": tm, "sd": sd, "orig": orig}


def _flat(cfg, sd):
    return names.import_tensors(cfg, sd.__getitem__, sd.keys())


def _forward_max_diff(cfg, flat, torch_model):
    inp = parity.random_inputs(cfg, seed=3)
    image = inp.get("image")
    ours = parity.forward(cfg.replace(dtype="float32"), flat, inp)
    with torch.no_grad():
        ref = torch_model(torch.from_numpy(inp["x"]).permute(0, 4, 1, 2, 3), torch.from_numpy(inp["t"]),
                          torch.from_numpy(inp["text"]), return_dict=False,
                          encoder_hidden_states_image=None if image is None else torch.from_numpy(image))[0]
    ref = ref.permute(0, 2, 3, 4, 1).numpy()
    assert np.abs(ref).max() > 0.5
    return float(np.abs(ours - ref).max())


def _written(out):
    files = sorted(f for f in os.listdir(out) if f.endswith(".safetensors"))
    return {k: v for f in files for k, v in load_file(os.path.join(out, f)).items()}, files


def test_original_names_match_diffusers_converter(t2v):
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    for cfg in (T2V, I2V):
        theirs = [e.theirs for e in names.name_table(cfg)]
        orig = {wan_original.to_original(k): k for k in theirs}
        assert None not in orig and len(orig) == len(theirs)
        converted = convert_wan_transformer_to_diffusers({k: k for k in orig})
        assert converted == {v: o for o, v in orig.items()}  # diffusers maps every original name back to ours
        assert all(wan_original.to_diffusers(o) == k for o, k in orig.items())
    assert {"head.modulation", "blocks.0.modulation", "blocks.0.norm3.weight"} <= set(t2v["orig"])
    src = pretrained.open_weights(t2v["root"] / "original")
    assert src.layout == "original" and sorted(src.names) == sorted(t2v["sd"])


def test_prefixed_original_checkpoint(t2v, tmp_path):
    # Checkpoints saved from a wrapper (ComfyUI and others) prefix every name with model.diffusion_model.
    path = _write(tmp_path / "p", {wan_original.PREFIX + k: v for k, v in t2v["orig"].items()})
    src = pretrained.open_weights(path)
    assert src.layout == "original" and sorted(src.names) == sorted(t2v["sd"])
    cfg, flat = pretrained.read_pretrained(path, {"num_attention_heads": 3})
    assert cfg.arch_dict() == T2V.arch_dict()
    ref = _flat(T2V, t2v["sd"])
    assert all(np.array_equal(flat[k], ref[k]) for k in ref)


@pytest.mark.parametrize("case", ["t2v_sharded", "i2v_single"])
def test_export_loads_in_diffusers_without_missing_or_unexpected(tmp_path, case):
    cfg, shard = (T2V, "150KB") if case == "t2v_sharded" else (I2V, "5GB")
    tm = _torch_model(cfg, 1)
    sd = _sd(tm)
    flat = _flat(cfg, sd)
    # In-memory export source: device arrays sharded over 8 devices, as in training (nested dict form).
    mesh = jax.make_mesh((8,), ("fsdp",))
    spec = lambda a: jax.P(*[None] * (a.ndim - 1), "fsdp") if a.shape[-1] % 8 == 0 else jax.P()
    params = jax.tree.map(lambda a: jax.device_put(a, jax.NamedSharding(mesh, spec(a))), names.unflatten(flat))
    assert any(len(a.sharding.device_set) == 8 for a in jax.tree.leaves(params))
    summary = export.export_params(cfg, params, tmp_path / "out", dtype="fp32", max_shard_size=shard)
    written, files = _written(tmp_path / "out")
    if case == "t2v_sharded":
        assert len(files) > 2 and files == summary["files"]
        index = json.loads((tmp_path / "out" / pretrained.INDEX_NAME).read_text())
        assert index["metadata"]["total_size"] == sum(v.numel() * 4 for v in written.values())
        assert sorted(index["weight_map"]) == sorted(written)
    else:
        assert files == [pretrained.WEIGHTS_NAME] and not (tmp_path / "out" / pretrained.INDEX_NAME).exists()
    config = json.loads((tmp_path / "out" / pretrained.CONFIG_NAME).read_text())
    assert config["_class_name"] == "WanTransformer3DModel" and "_diffusers_version" in config
    assert {k: config[k] for k in cfg.arch_dict()} == cfg.arch_dict()
    loaded, info = diffusers.WanTransformer3DModel.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == [] and info["mismatched_keys"] == []
    got = loaded.state_dict()
    assert sorted(got) == sorted(written) == sorted(sd)
    for k in sd:
        assert torch.equal(got[k], written[k]) and np.array_equal(written[k].numpy(), sd[k]), k
    assert _forward_max_diff(cfg, flat, loaded) <= ATOL


def test_import_and_export_trace_the_model_once(t2v, tmp_path, monkeypatch):
    """The name table, the key/shape check and the import share one abstract trace per config."""
    traced = []
    real = names.abstract_params
    monkeypatch.setattr(names, "abstract_params", lambda cfg: traced.append(cfg) or real(cfg))
    names.base_shapes.cache_clear()
    importer.import_to_checkpoint(t2v["root"] / "diffusers", tmp_path / "ck")
    export.export_checkpoint(str(tmp_path / "ck"), tmp_path / "out", dtype="fp32")
    assert len(traced) == 1, traced


def test_import_export_round_trip_both_layouts(t2v, tmp_path):
    sd, root = t2v["sd"], t2v["root"]
    imported = {}
    for layout, overrides in (("diffusers", None), ("original", None), ("original_noconfig",
                                                                        {"num_attention_heads": 3})):
        ck = tmp_path / f"ck_{layout}"
        summary = importer.import_to_checkpoint(root / layout, ck, overrides)
        assert summary["layout"] == layout.split("_")[0]
        meta = ckpt_lib.read_meta(str(ck))
        assert meta["step"] == 0 and meta["kind"] == "import"
        assert ckpt_lib.model_config_from_meta(meta).arch_dict() == T2V.arch_dict()
        imported[layout] = ckpt_lib.restore_item(str(ck), "params")
        export.export_checkpoint(str(ck), tmp_path / f"out_{layout}", dtype="fp32", max_shard_size="120KB")
        written, _ = _written(tmp_path / f"out_{layout}")
        assert sorted(written) == sorted(sd)
        for k in sd:
            assert written[k].dtype == torch.float32 and np.array_equal(written[k].numpy(), sd[k]), (layout, k)
    for other in ("original", "original_noconfig"):  # the original layout imports to the very same params
        jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                     imported["diffusers"], imported[other])
    # bf16 export = fp32 rounded to nearest-even bf16, as torch rounds.
    export.export_checkpoint(str(tmp_path / "ck_diffusers"), tmp_path / "bf16", dtype="bf16")
    bf16, _ = _written(tmp_path / "bf16")
    for k in sd:
        assert bf16[k].dtype == torch.bfloat16 and torch.equal(bf16[k], torch.from_numpy(sd[k]).to(torch.bfloat16))
    # ... and reading a bf16 file back (numpy has no bf16) gives the exact same values, without torch.
    f = SafetensorsFile(str(tmp_path / "bf16" / pretrained.WEIGHTS_NAME))
    k = "blocks.1.ffn.net.0.proj.weight"
    assert f.get(k).dtype == ml_dtypes.bfloat16
    assert np.array_equal(f.get(k).astype(np.float32), bf16[k].float().numpy())


@pytest.mark.parametrize("layout", ["layers", "tiled"])
def test_export_streams_from_sharded_checkpoint(t2v, tmp_path, layout):
    # "layers": blocks sharded over the layer axis -> one zarr chunk per layer, read one layer at a time.
    # "tiled": sharded over the last axis (FSDP-like) -> chunks span all layers; a tiny read budget forces
    # per-layer reads that re-decode them. Both must export the same bits.
    flat = _flat(T2V, t2v["sd"])
    if layout == "layers":
        mesh = jax.make_mesh((3,), ("x",), devices=jax.devices()[:3])
        spec = lambda p, a: jax.P("x") if p[0] == "blocks" else jax.P()
    else:
        mesh = jax.make_mesh((8,), ("x",))
        spec = lambda p, a: jax.P(*[None] * (a.ndim - 1), "x") if a.shape[-1] % 8 == 0 else jax.P()
    params = names.unflatten({p: jax.device_put(a, jax.NamedSharding(mesh, spec(p, a))) for p, a in flat.items()})
    mngr = ckpt_lib.manager(str(tmp_path / "ck"), async_save=False)
    ckpt_lib.save(mngr, 7, params=params, ema=params, model_cfg=T2V)
    mngr.wait_until_finished()
    arrays = orbax_reader.open_item(str(tmp_path / "ck"), "ema", T2V, read_budget=1)
    q = arrays[("blocks", "attn1", "to_q", "kernel")]
    assert q.chunk_shape() == ((1, 96, 96) if layout == "layers" else (3, 96, 12)) and q.group_size() == 1
    summary = export.export_checkpoint(str(tmp_path / "ck"), tmp_path / "out", dtype="fp32", read_budget=1)
    assert summary["weights"] == "ema" and summary["step"] == 7
    written, _ = _written(tmp_path / "out")
    assert all(np.array_equal(written[k].numpy(), v) for k, v in t2v["sd"].items())


def _no_leftovers(parent, name):
    assert not (parent / name).exists()
    assert not [p for p in os.listdir(parent) if p.startswith(f".{name}.partial-")]


def test_bad_tensors_are_all_named_and_nothing_is_written(t2v, tmp_path):
    sd = dict(t2v["sd"])
    del sd["blocks.1.attn2.to_v.bias"], sd["proj_out.bias"]
    sd["blocks.0.extra.weight"] = np.zeros(3, np.float32)
    sd["blocks.2.attn1.to_q.weight"] = np.zeros((96, 95), np.float32)
    src = _write(tmp_path / "bad", sd, json.loads((t2v["root"] / "diffusers" / pretrained.CONFIG_NAME).read_text()))
    with pytest.raises(names.TensorMismatchError) as e:
        importer.import_to_checkpoint(src, tmp_path / "ck")
    msg = str(e.value)
    for name in ("blocks.1.attn2.to_v.bias", "proj_out.bias", "blocks.0.extra.weight", "blocks.2.attn1.to_q.weight"):
        assert name in msg
    assert "missing tensors (2)" in msg and "unexpected tensors (1)" in msg and "shape mismatches (1)" in msg
    _no_leftovers(tmp_path, "ck")


def test_config_disagreeing_with_shapes_names_the_field(t2v, tmp_path):
    config = json.loads((t2v["root"] / "diffusers" / pretrained.CONFIG_NAME).read_text())
    bad = _write(tmp_path / "bad", t2v["sd"], {**config, "ffn_dim": 78, "num_layers": 4})
    with pytest.raises(pretrained.ConfigMismatchError, match="ffn_dim") as e:
        importer.import_to_checkpoint(bad, tmp_path / "ck")
    assert "num_layers" in str(e.value) and "blocks.0.ffn.net.0.proj.weight" in str(e.value)
    bad_heads = _write(tmp_path / "bad_heads", t2v["sd"], {**config, "num_attention_heads": 4})
    with pytest.raises(pretrained.ConfigMismatchError, match="num_attention_heads"):
        pretrained.resolve_config(pretrained.open_weights(bad_heads))
    with pytest.raises(pretrained.ConfigMismatchError, match="'dim'"):
        bad_dim = _write(tmp_path / "o", t2v["orig"], {**_original_config(T2V), "dim": 64})
        pretrained.resolve_config(pretrained.open_weights(bad_dim))
    # Without config.json and with a width that is not a multiple of 128, the heads must be given.
    with pytest.raises(pretrained.ConfigMismatchError, match="num_attention_heads"):
        pretrained.resolve_config(pretrained.open_weights(t2v["root"] / "original_noconfig"))
    _no_leftovers(tmp_path, "ck")


def test_truncated_and_corrupt_safetensors_are_reported(t2v, tmp_path):
    single = shutil.copytree(t2v["root"] / "original", tmp_path / "single")
    path = os.path.join(single, pretrained.WEIGHTS_NAME)
    os.truncate(path, os.path.getsize(path) - 100)
    with pytest.raises(SafetensorsFormatError, match=r"truncated") as e:
        importer.import_to_checkpoint(single, tmp_path / "ck")
    assert path in str(e.value)
    sharded = shutil.copytree(t2v["root"] / "diffusers", tmp_path / "sharded")
    shard = os.path.join(sharded, sorted(f for f in os.listdir(sharded) if f.endswith(".safetensors"))[1])
    os.truncate(shard, 20)
    with pytest.raises(SafetensorsFormatError, match="truncated") as e:
        pretrained.open_weights(sharded)
    assert shard in str(e.value)
    with open(shard, "wb") as f:
        f.write((10).to_bytes(8, "little") + b"not json!!" + b"\0" * 64)
    with pytest.raises(SafetensorsFormatError, match="corrupt"):
        pretrained.open_weights(sharded)
    os.remove(shard)
    with pytest.raises(FileNotFoundError, match=os.path.basename(shard)):
        pretrained.open_weights(sharded)
    _no_leftovers(tmp_path, "ck")


def test_failed_export_leaves_nothing(t2v, tmp_path):
    flat = _flat(T2V, t2v["sd"])
    calls = []

    def failing_fetch(a):
        calls.append(1)
        if len(calls) == 40:
            raise OSError("disk on fire")
        return np.asarray(a)

    with pytest.raises(OSError, match="disk on fire"):
        export.write_diffusers(T2V, flat, tmp_path / "out", max_shard_size="100KB", fetch=failing_fetch)
    _no_leftovers(tmp_path, "out")
    importer.import_to_checkpoint(t2v["root"] / "diffusers", tmp_path / "ck")
    with pytest.raises(FileNotFoundError, match="'ema'"):
        export.export_checkpoint(str(tmp_path / "ck"), tmp_path / "out", weights="ema")
    _no_leftovers(tmp_path, "out")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError):
        export.export_checkpoint(str(tmp_path / "ck"), tmp_path / "taken")
    assert os.listdir(tmp_path / "taken") == ["keep.txt"]


def test_parse_size():
    assert parse_size("5GB") == 5 * 10**9 and parse_size("200MB") == 200 * 10**6
    assert parse_size("1GiB") == 2**30 and parse_size("1.5kb") == 1500 and parse_size(123) == 123
    with pytest.raises(ValueError, match="cannot parse"):
        parse_size("5 parsecs")


def test_cli_import_export_parity(t2v, tmp_path, repo_root):
    def run(*args):
        out = subprocess.run([sys.executable, "launch/convert.py", *args], cwd=repo_root, capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    ck, out = tmp_path / "ck", tmp_path / "out"
    assert run("import", f"--src={t2v['root'] / 'original_noconfig'}", f"--out={ck}",
               "--num_attention_heads=3")["layout"] == "original"
    summary = run("export", f"--checkpoint={ck}", f"--out={out}", "--dtype=fp32", "--max_shard_size=100KB",
                  "--weights=params")
    assert len(summary["files"]) > 1
    result = run("parity", f"--src={out}")
    assert result["ok"] and result["max_abs"] <= ATOL and result["ref_max_abs"] > 0.5
    bad = subprocess.run([sys.executable, "launch/convert.py", "parity", f"--src={out}", "--tol=1e-12"],
                         cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and not json.loads(bad.stdout.strip().splitlines()[-1])["ok"]
