"""Model tests: parameter counts, shapes, dtypes, per-token timesteps, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dreamactor_jax.models import WanTransformer3DModel, get_preset
from dreamactor_jax.models.build import abstract_model, count_params, init_params

# The published Wan2.1 sizes; test_presets_match_diffusers_on_the_meta_device derives the same numbers from
# diffusers' WanTransformer3DModel built from each preset's config.json fields.
EXPECTED_PARAMS = {
    "wan2.1-t2v-1.3b": 1_418_996_800,
    "wan2.1-t2v-14b": 14_288_491_584,
    "wan2.1-i2v-14b": 16_394_878_784,
}


@pytest.mark.parametrize("preset", sorted(EXPECTED_PARAMS))
def test_param_count_matches_wan(preset):
    model = abstract_model(get_preset(preset))
    assert count_params(nnx.state(model, nnx.Param)) == EXPECTED_PARAMS[preset]


@pytest.mark.parametrize("preset", sorted(EXPECTED_PARAMS) + ["tiny", "small"])
def test_presets_match_diffusers_on_the_meta_device(preset):
    """Each preset's arch fields build a diffusers model with our count, our key set and our shapes."""
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    from dreamactor_jax.convert.names import name_table

    cfg = get_preset(preset)
    with torch.device("meta"):
        tm = diffusers.WanTransformer3DModel(**cfg.arch_dict())
    sd = tm.state_dict()
    theirs = sum(p.numel() for p in tm.parameters())
    assert theirs == count_params(nnx.state(abstract_model(cfg), nnx.Param))
    if preset in EXPECTED_PARAMS:
        assert theirs == EXPECTED_PARAMS[preset]
    table = name_table(cfg)
    assert sorted(e.theirs for e in table) == sorted(sd)
    assert all(tuple(sd[e.theirs].shape) == e.their_shape for e in table)


def test_param_count_independent_of_runtime_options():
    base = count_params(nnx.state(abstract_model(get_preset("tiny")), nnx.Param))
    for kw in ({"scan_layers": True}, {"remat": "full"}, {"dtype": "bfloat16"}, {"attention": "blocked"}):
        assert count_params(nnx.state(abstract_model(get_preset("tiny", **kw)), nnx.Param)) == base


def odd_cfg(**kw):
    # Odd, distinct dims so transposes cannot hide: 3 heads x 32, 3 layers, ffn 96, text 24, 36 in / 16 out.
    return get_preset("tiny", num_attention_heads=3, attention_head_dim=32, num_layers=3, ffn_dim=96,
                      text_dim=24, freq_dim=64, **kw)


def _inputs(b=2, t=3, h=6, w=10, c=36, seed=0, text_len=7, text_dim=24):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((b, t, h, w, c)), jnp.float32)
    text = jnp.asarray(rng.standard_normal((b, text_len, text_dim)), jnp.float32)
    return x, text


def test_forward_shape_dtype_and_per_token_timesteps():
    cfg = odd_cfg()
    model = WanTransformer3DModel(cfg, rngs=nnx.Rngs(0))
    # proj_out is zero-initialised (as Wan does); give it weights so outputs depend on the input.
    model.proj_out.kernel[...] = jax.random.normal(jax.random.key(1), model.proj_out.kernel.shape) * 0.02
    x, text = _inputs()
    v = model(x, jnp.array([10.0, 900.0]), text)
    assert v.shape == (2, 3, 6, 10, 16) and v.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(v)))
    n = 3 * 3 * 5
    # A per-token timestep that is constant per sample equals the per-sample timestep.
    v_tok = model(x, jnp.repeat(jnp.array([[10.0], [900.0]]), n, axis=1), text)
    np.testing.assert_allclose(np.asarray(v_tok), np.asarray(v), atol=2e-5)
    # ...and a different timestep on some tokens changes the output.
    tt = jnp.full((2, n), 10.0).at[:, : n // 3].set(0.0)
    assert float(jnp.abs(model(x, tt, text) - model(x, jnp.full((2, n), 10.0), text)).max()) > 1e-4


def test_bf16_compute_keeps_f32_params_and_output():
    cfg = odd_cfg(dtype="bfloat16")
    model = WanTransformer3DModel(cfg, rngs=nnx.Rngs(0))
    assert {x.dtype for x in jax.tree.leaves(nnx.state(model, nnx.Param))} == {jnp.dtype("float32")}
    x, text = _inputs()
    v = model(x, jnp.array([10.0, 900.0]), text)
    assert v.dtype == jnp.float32 and v.shape == (2, 3, 6, 10, 16)


def test_scan_and_unrolled_agree():
    x, text = _inputs()
    t = jnp.array([100.0, 500.0])
    outs = []
    for scan in (True, False):
        cfg = odd_cfg(scan_layers=scan)
        _, params = init_params(cfg, seed=3)
        graphdef, _ = nnx.split(abstract_model(cfg))
        model = nnx.merge(graphdef, params)
        model.proj_out.kernel[...] = jnp.ones_like(model.proj_out.kernel[...]) * 0.01
        outs.append(np.asarray(model(x, t, text)))
    np.testing.assert_allclose(outs[0], outs[1], atol=1e-5)


def test_text_mask_hides_padding():
    cfg = odd_cfg()
    model = WanTransformer3DModel(cfg, rngs=nnx.Rngs(0))
    model.proj_out.kernel[...] = jnp.ones_like(model.proj_out.kernel[...]) * 0.01
    x, text = _inputs()
    mask = jnp.ones((2, 7)).at[:, 5:].set(0)
    t = jnp.array([100.0, 500.0])
    a = model(x, t, text, mask)
    b = model(x, t, text.at[:, 5:].set(123.0), mask)  # padding content must not matter
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    assert float(jnp.abs(model(x, t, text) - a).max()) > 1e-5


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(c=35), "35 channels but the model's in_channels is 36"),
        (dict(h=7), "H=7 is not divisible by the patch size 2"),
        (dict(w=9), "W=9 is not divisible by the patch size 2"),
        (dict(text_dim=23), "text must be"),
    ],
)
def test_bad_input_is_named(kwargs, match):
    model = WanTransformer3DModel(odd_cfg(), rngs=nnx.Rngs(0))
    x, text = _inputs(**kwargs)
    with pytest.raises(ValueError, match=match):
        model(x, jnp.array([1.0, 2.0]), text)


def test_bad_timestep_shape_is_named():
    model = WanTransformer3DModel(odd_cfg(), rngs=nnx.Rngs(0))
    x, text = _inputs()
    with pytest.raises(ValueError, match="per-token"):
        model(x, jnp.ones((2, 7)), text)


def test_unknown_preset_and_field():
    with pytest.raises(ValueError, match="unknown model preset 'wan9'"):
        get_preset("wan9")
    with pytest.raises(ValueError, match=r"no field\(s\) \['num_layer'\]"):
        get_preset("tiny", num_layer=3)
    with pytest.raises(ValueError, match="WanConfig.attention_head_dim"):
        get_preset("tiny", attention_head_dim=33)


@pytest.mark.slow  # ~57 s
def test_scan_unroll_and_remat_policies_give_same_loss_and_grads():
    """Layer scan vs Python loop, and every remat policy, compute the same loss and gradients."""
    from dreamactor_jax.data import synthetic
    from dreamactor_jax.diffusion.objective import ObjectiveConfig, loss_and_metrics

    base = get_preset("tiny", num_layers=3)
    batch = jax.tree.map(jnp.asarray, synthetic.synthetic_batch(0, 0, batch=2, frames=3, height=4, width=6,
                                                                 channels=16, text_len=5, text_dim=base.text_dim))
    _, params = init_params(base, seed=1)
    params = jax.tree.map(lambda p: p + 0.01 * jnp.sin(jnp.arange(p.size, dtype=p.dtype).reshape(p.shape)), params)
    results = {}
    # Each policy once, and both layer modes (remat under scan and under the Python loop).
    combos = [(True, "none"), (False, "none"), (True, "full"), (False, "save_dots"), (True, "save_attention"),
              (True, "save_qkv_proj")]
    for scan, remat in combos:
        cfg = base.replace(scan_layers=scan, remat=remat)
        graphdef, _ = nnx.split(abstract_model(cfg))

        def loss(p, graphdef=graphdef):
            return loss_and_metrics(nnx.merge(graphdef, p), batch, jax.random.key(0), ObjectiveConfig())[0]

        results[(scan, remat)] = jax.jit(jax.value_and_grad(loss))(params)
    ref_loss, ref_grads = results[(True, "none")]
    for key, (value, g) in results.items():
        np.testing.assert_allclose(float(value), float(ref_loss), rtol=1e-6, err_msg=str(key))
        for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(ref_grads)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-7, err_msg=str(key))
