"""Serving from PyTorch: examples/serve_torch.py samples an exported model with diffusers' WanTransformer3DModel and
a torch port of our sampler; from the same initial noise and conditioning it must land on the JAX sampler's
latents (fp32, tiny config, a few steps).

Measured on CPU: max |torch - JAX| 1e-6 to 3e-6 with latents of magnitude about 4 (float32 rounding of two
different kernels' summation orders); the tolerance below leaves some 40x headroom while a
wrong canvas, schedule, mask, timestep or CFG detail moves the latents by O(0.1-1).
"""

import importlib.util

import jax
import ml_collections
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from dreamactor_jax import config_lib  # noqa: E402
from dreamactor_jax.convert import export  # noqa: E402
from dreamactor_jax.models.build import init_params, model_config  # noqa: E402

ATOL = 1e-4  # absolute, on latents of magnitude ~4 (2.5e-5 relative to the latent scale)


@pytest.fixture(scope="module")
def serve(repo_root):
    spec = importlib.util.spec_from_file_location("serve_torch", repo_root / "examples" / "serve_torch.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The tiny model with every weight moved off its init (nothing zero or one), exported in fp32."""
    c = config_lib.load_config("configs/stage1_pose.py:tiny")
    mcfg = model_config(c.model)
    _, params = init_params(mcfg, 0)
    leaves, tree = jax.tree.flatten(params)
    rng = np.random.default_rng(0)
    params = jax.tree.unflatten(
        tree, [np.asarray(x) + 0.05 * rng.standard_normal(x.shape).astype(np.float32) for x in leaves]
    )
    out = tmp_path_factory.mktemp("export") / "diffusers"
    export.export_params(mcfg, params, str(out), dtype="fp32")
    return str(out), c


@pytest.mark.parametrize(
    "sampler,given_region",
    [
        ({"method": "unipc", "steps": 4, "shift": 3.0, "guidance": 1.0}, "noised"),
        ({"method": "euler", "steps": 3, "shift": 5.0, "guidance": 4.0}, "clean"),  # CFG, per-token timesteps
    ],
)
def test_torch_sampler_matches_jax(serve, exported, sampler, given_region):
    path, base = exported
    c = ml_collections.ConfigDict(base.to_dict())
    c.objective.given_region = given_region
    r = serve.serve(path, c, sampler=sampler, seed=1, compare=True)
    d = c.data
    assert r["shape"] == [1, d.frames, d.height, d.width, d.channels] and r["latent_max_abs"] > 1.0
    assert r["max_abs_diff"] <= ATOL, r
    # Agreement is not trivial: another noise seed moves the latents far more than the tolerance.
    model = serve.load_model(path)
    cond = serve.conditions(c, model.config.text_dim)
    shape = (1, d.frames, d.height, 2 * d.width, d.channels)  # the canvas
    n1, n2 = (np.random.default_rng(s).standard_normal(shape).astype(np.float32) for s in (1, 2))
    a, b = (
        serve.torch_sample(
            model,
            cond["reference"],
            cond["motion"],
            cond["valid"],
            cond["text"],
            cond["text_mask"],
            n,
            **sampler,
            given_region=given_region,
        )
        for n in (n1, n2)
    )
    assert np.abs(a - b).max() > 1000 * ATOL


def test_padded_caption_is_cut_not_attended(serve, exported):
    """diffusers attends to every context token; our DiT masks padding. Cutting to the real tokens is the same."""
    path, c = exported
    model = serve.load_model(path)
    cond = serve.conditions(c, model.config.text_dim, caption="a bird")  # 2 of 8 tokens real
    assert cond["text_mask"].sum() == 2
    kw = dict(method="euler", steps=2, given_region="noised")
    d = c.data
    canvas = (1, d.frames, d.height, 2 * d.width, d.channels)
    noise = np.random.default_rng(0).standard_normal(canvas).astype(np.float32)
    cut = serve.torch_sample(
        model, cond["reference"], cond["motion"], cond["valid"], cond["text"], cond["text_mask"], noise, **kw
    )
    full = serve.torch_sample(
        model,
        cond["reference"],
        cond["motion"],
        cond["valid"],
        cond["text"],
        np.ones_like(cond["text_mask"]),
        noise,
        **kw,
    )  # attends to the zero padding too
    assert np.abs(cut - full).max() > 1000 * ATOL
    ours = serve.jax_sample(path, cond, noise, kw)
    assert np.abs(ours - cut).max() <= ATOL
