"""Logical-axis rules and sequence-parallel attention on 8 simulated CPU devices."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from dreamactor_jax.models import attention as attn_lib
from dreamactor_jax.models import sequence_parallel as sequence
from dreamactor_jax.models.build import abstract_model, split_params
from dreamactor_jax.models.config import get_preset
from dreamactor_jax.parallel import rules as rules_lib
from dreamactor_jax.parallel.mesh import make_mesh

ATOL = 1e-5


def _leaf(tree, path):
    for k in path.split("/"):
        tree = tree[k]
    return tree


# --- rules ---------------------------------------------------------------------------------------------------------


def test_tiny_param_specs_on_data_fsdp_tensor_mesh():
    mesh = make_mesh(dict(data=2, fsdp=2, tensor=2))
    abstract = abstract_model(get_preset("tiny"))
    shardings = rules_lib.param_shardings(abstract, mesh)
    _, params = split_params(abstract)
    assert jax.tree.structure(shardings) == jax.tree.structure(params)
    expected = {
        "blocks/attn1/to_q/kernel": P(None, "fsdp", "tensor"),  # (layers, embed, heads)
        "blocks/attn1/to_q/bias": P(None, "tensor"),
        "blocks/attn1/to_out/kernel": P(None, "tensor", "fsdp"),  # (layers, heads, embed)
        "blocks/ffn/net_0/proj/kernel": P(None, "fsdp", "tensor"),  # (layers, embed, mlp)
        "blocks/ffn/net_2/kernel": P(None, "tensor", "fsdp"),  # (layers, mlp, embed)
        "blocks/scale_shift_table": P(None, None, None, "fsdp"),
        "condition_embedder/time_embedder/linear_2/kernel": P("fsdp", "tensor"),  # (embed, embed_out)
        "patch_embedding/kernel": P(None, None, None, None, "fsdp"),
        "proj_out/kernel": P("fsdp", None),
    }
    for path, spec in expected.items():
        s = _leaf(shardings, path)
        assert isinstance(s, NamedSharding) and s.mesh == mesh
        assert s.spec == spec, (path, s.spec, spec)
    table = rules_lib.sharding_table(params, shardings)
    assert "blocks/attn1/to_q/kernel" in table and "(None, fsdp, tensor)" in table
    assert "8.00 KiB" in table  # (2, 64, 64) f32 = 32 KiB over fsdp x tensor = 4


def test_logical_to_spec_degrades():
    mesh = make_mesh(dict(data=2, fsdp=2, tensor=2))
    spec = rules_lib.logical_to_spec
    assert spec(("embed", "mlp"), mesh=mesh, shape=(8, 12)) == P("fsdp", "tensor")
    assert spec(("embed", "mlp"), mesh=mesh, shape=(7, 11)) == P(None, None)  # indivisible: replicate
    assert spec(("embed", "embed"), mesh=mesh, shape=(8, 8)) == P("fsdp", None)  # a mesh axis shards one dim
    assert spec(("act_batch", "act_tokens", "act_embed"), mesh=mesh, shape=(4, 6, 8)) == P(("data", "fsdp"),
                                                                                          None, None)
    assert spec(("act_batch",), mesh=mesh, shape=(2,)) == P("data")  # largest dividing prefix of (data, fsdp)
    assert spec(("act_batch",), mesh=mesh, shape=(3,)) == P(None)
    assert spec(("embed", "mlp")) == P(("fsdp", "sequence"), "tensor")  # no mesh: names only, nothing dropped
    fsdp_only = make_mesh(dict(fsdp=8))
    # tensor has size 1: per-head vectors fall through to the next candidate, fsdp
    assert spec(("layers", "heads"), mesh=fsdp_only, shape=(2, 64)) == P(None, "fsdp")
    assert spec(("embed", "heads"), mesh=fsdp_only, shape=(64, 64)) == P("fsdp", None)
    with pytest.raises(ValueError, match="no rule"):
        spec(("bogus",), mesh=mesh, shape=(4,))
    custom = rules_lib.normalize_rules([["embed", ["fsdp", "tensor"]], ["mlp", None]])
    assert spec(("embed", "mlp"), custom, mesh=mesh, shape=(8, 8)) == P(("fsdp", "tensor"), None)
    with pytest.raises(ValueError, match="pair"):
        rules_lib.normalize_rules([("embed",)])


def test_indivisible_param_dims_replicate():
    mesh = make_mesh(dict(data=2, fsdp=2, tensor=2))
    abstract = abstract_model(get_preset("tiny", ffn_dim=51))
    shardings = rules_lib.param_shardings(abstract, mesh)
    assert _leaf(shardings, "blocks/ffn/net_0/proj/kernel").spec == P(None, "fsdp", None)
    assert _leaf(shardings, "blocks/ffn/net_2/kernel").spec == P(None, None, "fsdp")
    assert _leaf(shardings, "blocks/ffn/net_0/proj/bias").spec == P(None, None)


def test_check_replicated_bytes():
    mesh = make_mesh(dict(data=2, fsdp=2, tensor=2))
    abstract = abstract_model(get_preset("tiny"))
    _, params = split_params(abstract)
    shardings = rules_lib.param_shardings(abstract, mesh)
    replicated = rules_lib.check_replicated_bytes(params, shardings, mesh, tolerance_bytes=16 * 1024)
    assert 0 < replicated <= 16 * 1024  # biases and norm weights split over tensor only
    everything_replicated = jax.tree.map(lambda _: NamedSharding(mesh, P()), params)
    with pytest.raises(rules_lib.ReplicatedParamsError, match="not sharded over 'fsdp'"):
        rules_lib.check_replicated_bytes(params, everything_replicated, mesh, tolerance_bytes=16 * 1024)
    no_fsdp = make_mesh(dict(data=8))
    rep = jax.tree.map(lambda _: NamedSharding(no_fsdp, P()), params)
    assert rules_lib.check_replicated_bytes(params, rep, no_fsdp, tolerance_bytes=0) == 0


def test_tree_shardings_covers_optimizer_moments():
    import optax

    mesh = make_mesh(dict(fsdp=4, tensor=2))
    abstract = abstract_model(get_preset("tiny"))
    _, params = split_params(abstract)
    shardings = rules_lib.param_shardings(abstract, mesh)
    opt_state = jax.eval_shape(optax.adamw(1e-3).init, params)
    tree = rules_lib.tree_shardings({"params": params, "opt": opt_state}, params, shardings, mesh)
    mu = tree["opt"][0].mu
    assert _leaf(mu, "blocks/attn1/to_q/kernel").spec == P(None, "fsdp", "tensor")
    assert tree["opt"][0].count.spec == P()


def test_constrain_noop_without_mesh_and_applies_with_mesh():
    x = jnp.ones((4, 8, 6))
    axes = ("act_batch", "act_tokens", "act_embed")
    assert rules_lib.constrain(x, axes) is x
    mesh = make_mesh(dict(data=2, fsdp=2, sequence=2))
    with jax.set_mesh(mesh):
        y = jax.jit(lambda a: rules_lib.constrain(a * 2, axes))(x)
        with rules_lib.use_rules([("act_batch", "data"), ("act_tokens", None), ("act_embed", "fsdp")]):
            z = jax.jit(lambda a: rules_lib.constrain(a * 3, axes))(x)
    assert y.sharding.is_equivalent_to(NamedSharding(mesh, P(("data", "fsdp"), "sequence", None)), 3)
    assert z.sharding.is_equivalent_to(NamedSharding(mesh, P("data", None, "fsdp")), 3)
    np.testing.assert_allclose(np.asarray(y), 2.0)


# --- sequence-parallel attention ----------------------------------------------------------------------------------


def _qkv(b=2, nq=4 * 3 * 10, nk=None, h=8, d=8, seed=0):
    nk = nq if nk is None else nk
    kq, kk, kv = jax.random.split(jax.random.key(seed), 3)
    q = jax.random.normal(kq, (b, nq, h, d), jnp.float32)
    k = jax.random.normal(kk, (b, nk, h, d), jnp.float32)
    v = jax.random.normal(kv, (b, nk, h, d), jnp.float32)
    return q, k, v


def _key_mask(b, nk):
    lengths = jnp.array([nk - 3, 5])[:b]
    return jnp.arange(nk)[None, :] < lengths[:, None]


MESHES = {"seq4": dict(sequence=4), "fsdp2_seq4": dict(fsdp=2, sequence=4)}


@pytest.mark.parametrize("mesh_name", list(MESHES))
def test_ulysses_self_attention_matches_single_device(mesh_name):
    mesh = make_mesh(MESHES[mesh_name])
    q, k, v = _qkv()  # 120 tokens: a (4, 3, 10) double-width canvas grid, row-major
    ref = attn_lib.attention_xla(q, k, v)
    out = jax.jit(lambda q, k, v: sequence.ulysses_attention(q, k, v, None, mesh=mesh))(q, k, v)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=ATOL)
    mask = _key_mask(2, q.shape[1])
    out_m = jax.jit(lambda q, k, v, m: sequence.ulysses_attention(q, k, v, m, mesh=mesh))(q, k, v, mask)
    np.testing.assert_allclose(np.asarray(out_m), np.asarray(attn_lib.attention_xla(q, k, v, mask)), atol=ATOL)


@pytest.mark.parametrize("mesh_name", list(MESHES))
def test_cross_attention_with_mask_matches_single_device(mesh_name):
    mesh = make_mesh(MESHES[mesh_name])
    q, _, _ = _qkv()
    _, k, v = _qkv(nk=7, seed=1)  # 7 text tokens: not divisible by the sequence axis, replicated on it
    mask = _key_mask(2, 7)
    ref = attn_lib.attention_xla(q, k, v, mask)
    out = jax.jit(lambda q, k, v, m: sequence.ulysses_attention(q, k, v, m, mesh=mesh, kv_sharded=False))(
        q, k, v, mask)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=ATOL)


@pytest.mark.parametrize("kv_sharded", [True, False], ids=["self", "cross"])
def test_ulysses_gradient_matches(kv_sharded):
    mesh = make_mesh(MESHES["fsdp2_seq4"])
    q, k, v = _qkv() if kv_sharded else (_qkv()[0], *_qkv(nk=7, seed=1)[1:])
    mask = _key_mask(2, k.shape[1])
    w = jax.random.normal(jax.random.key(3), q.shape, jnp.float32)

    def loss(fn):
        return lambda q, k, v: jnp.sum(fn(q, k, v) * w)

    ref = jax.grad(loss(lambda q, k, v: attn_lib.attention_xla(q, k, v, mask)), argnums=(0, 1, 2))(q, k, v)
    par = jax.jit(jax.grad(loss(lambda q, k, v: sequence.ulysses_attention(q, k, v, mask, mesh=mesh,
                                                                           kv_sharded=kv_sharded)),
                           argnums=(0, 1, 2)))(q, k, v)
    for g_ref, g_par in zip(ref, par):
        np.testing.assert_allclose(np.asarray(g_par), np.asarray(g_ref), atol=ATOL)


@pytest.mark.parametrize("impl", ["xla", "flash", "blocked", "dot_product"])
def test_each_local_impl_matches_xla(impl):
    mesh = make_mesh(dict(data=2, sequence=4))
    q, k, v = _qkv()
    mask = _key_mask(2, q.shape[1])
    ref = attn_lib.attention_xla(q, k, v, mask)
    np.testing.assert_allclose(np.asarray(attn_lib.attend(impl, q, k, v, mask, block_q=16)), np.asarray(ref),
                               atol=ATOL)
    out = jax.jit(lambda q, k, v, m: sequence.ulysses_attention(q, k, v, m, mesh=mesh, impl=impl, block_q=16))(
        q, k, v, mask)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=ATOL)


def test_ulysses_needs_divisible_heads_and_ring_does_not():
    mesh = make_mesh(dict(tensor=2, sequence=4))
    q, k, v = _qkv(h=6)  # 6 heads / tensor 2 = 3 per device: not divisible by sequence=4
    with pytest.raises(ValueError, match="divisible by the 'sequence' mesh axis size 4"):
        sequence.ulysses_attention(q, k, v, None, mesh=mesh)
    mask = _key_mask(2, q.shape[1])
    ref = attn_lib.attention_xla(q, k, v, mask)
    out = jax.jit(lambda q, k, v, m: sequence.ring_attention(q, k, v, m, mesh=mesh))(q, k, v, mask)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=ATOL)
    g_ref = jax.grad(lambda q: attn_lib.attention_xla(q, k, v, mask).sum())(q)
    g = jax.jit(jax.grad(lambda q: sequence.ring_attention(q, k, v, mask, mesh=mesh).sum()))(q)
    np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), atol=ATOL)
    with pytest.raises(ValueError, match="not divisible"):
        sequence.ulysses_attention(q[:, :118], k[:, :118], v[:, :118], None, mesh=mesh)


@pytest.mark.parametrize("per_token", [False, True], ids=["per_sample_t", "per_token_t"])
def test_tiny_model_forward_sharded_matches_single_device(monkeypatch, per_token):
    """Rules + Ulysses end to end: the tiny DiT under a data x fsdp x sequence mesh equals one device.

    The input is a double-width canvas (W = 2 halves), tokens row-major over it, so each
    sequence shard holds a run of rows spanning both halves; per-token timesteps (given
    regions marked clean) follow the tokens onto their shard.
    """
    from dreamactor_jax.models.build import merge

    cfg = get_preset("tiny", num_layers=1)
    b, t, hh, ww = 2, 2, 4, 8  # (2, 2, 4) token grid = 16 tokens
    kx, kt, kc = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (b, t, hh, ww, cfg.in_channels))
    n = t * (hh // 2) * (ww // 2)
    ts = jax.random.uniform(kt, (b, n) if per_token else (b,)) * 1000
    if per_token:  # the left half of frame 0 (the reference) is given: timestep 0 there
        left0 = (jnp.arange(n) < (hh // 2) * (ww // 2)) & (jnp.arange(n) % (ww // 2) < ww // 4)
        ts = jnp.where(left0[None], 0.0, ts)
    text = jax.random.normal(kc, (b, 5, cfg.text_dim))
    text_mask = _key_mask(b, 5)

    graphdef, abstract_params = split_params(abstract_model(cfg))
    # Random values everywhere (numpy: no per-op compiles), so zero-initialised projections cannot hide a bug.
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: (0.2 * rng.standard_normal(s.shape)).astype(s.dtype), abstract_params)
    forward = jax.jit(lambda p, *a: merge(graphdef, p)(*a))
    ref = forward(params, x, ts, text, text_mask)

    mesh = make_mesh(dict(data=2, fsdp=2, sequence=2))
    shardings = rules_lib.param_shardings(abstract_model(cfg), mesh)
    params = jax.device_put(params, shardings)
    # The transformer's attention goes through sequence.attend; count the sequence-parallel calls it makes, so
    # the comparison cannot pass by the mesh quietly falling back to plain attention.
    strategies, real = [], sequence.sequence_parallel_attention

    def spy(*a, **kw):
        strategies.append((kw["strategy"], kw["kv_sharded"]))
        return real(*a, **kw)

    monkeypatch.setattr(sequence, "sequence_parallel_attention", spy)
    with jax.set_mesh(mesh):
        out = jax.jit(lambda p, *a: merge(graphdef, p)(*a))(params, x, ts, text, text_mask)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-4)
    assert ("ulysses", True) in strategies, strategies  # self-attention over the sequence-sharded tokens


# --- flash and splash kernels ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("nk", [None, 7], ids=["self", "cross"])
@pytest.mark.parametrize("masked", [False, True])
def test_flash_forward_and_grads_match_xla(nk, masked):
    q, k, v = _qkv(h=3, d=32) if nk is None else (_qkv(h=3, d=32)[0], *_qkv(nk=nk, h=3, d=32, seed=1)[1:])
    mask = _key_mask(2, k.shape[1]) if masked else None
    w = jax.random.normal(jax.random.key(3), q.shape, jnp.float32)
    # block 48 does not divide the 120 queries: the padded last block is exercised too (min_keys=1: no growth of
    # the blocks for short key sequences)
    flash = lambda q, k, v: attn_lib.attention_flash(q, k, v, mask, block_q=48, min_keys=1)  # noqa: E731
    ref = lambda q, k, v: attn_lib.attention_xla(q, k, v, mask)  # noqa: E731
    np.testing.assert_allclose(np.asarray(jax.jit(flash)(q, k, v)), np.asarray(ref(q, k, v)), atol=ATOL)
    g_ref = jax.grad(lambda *a: jnp.sum(ref(*a) * w), argnums=(0, 1, 2))(q, k, v)
    g = jax.jit(jax.grad(lambda *a: jnp.sum(flash(*a) * w), argnums=(0, 1, 2)))(q, k, v)
    for a, r in zip(g, g_ref):
        np.testing.assert_allclose(np.asarray(a), np.asarray(r), atol=ATOL)


def test_flash_bf16_close_to_f32_reference():
    q, k, v = (x.astype(jnp.bfloat16) for x in _qkv(h=3, d=32))
    out = attn_lib.attention_flash(q, k, v, block_q=32, min_keys=1)
    assert out.dtype == jnp.bfloat16
    ref = attn_lib.attention_xla(*(x.astype(jnp.float32) for x in (q, k, v)))
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref), atol=2e-2)


@pytest.mark.parametrize("case", ["self", "self_masked", "cross_padded"])
def test_splash_interpret_matches_xla(case):
    """The Pallas TPU kernel in interpret mode (CPU): forward and all three gradients, padding and masks."""
    if case == "cross_padded":  # 200 queries and 37 keys: both padded up to the 128-blocks
        q, k, v = _qkv(b=2, nq=200, h=2, d=32)[0], *_qkv(b=2, nq=37, h=2, d=32, seed=1)[1:]
    else:
        q, k, v = _qkv(b=2, nq=256, h=2, d=32)
    mask = _key_mask(2, k.shape[1]) if case != "self" else None
    w = jax.random.normal(jax.random.key(3), q.shape, jnp.float32)
    splash = lambda q, k, v: attn_lib.attention_splash(q, k, v, mask, block=128, interpret=True)  # noqa: E731
    ref = lambda q, k, v: attn_lib.attention_xla(q, k, v, mask)  # noqa: E731
    np.testing.assert_allclose(np.asarray(splash(q, k, v)), np.asarray(ref(q, k, v)), atol=ATOL)
    g_ref = jax.grad(lambda *a: jnp.sum(ref(*a) * w), argnums=(0, 1, 2))(q, k, v)
    g = jax.grad(lambda *a: jnp.sum(splash(*a) * w), argnums=(0, 1, 2))(q, k, v)
    for a, r in zip(g, g_ref):
        np.testing.assert_allclose(np.asarray(a), np.asarray(r), atol=ATOL)


def test_splash_runs_per_shard_under_a_mesh(monkeypatch):
    """A Pallas kernel cannot be partitioned by XLA: with batch and heads sharded (no sequence axis), attend()
    still runs it in shard_map, one shard per device, and the result equals the reference."""
    calls, kernel = [], attn_lib.attention_splash

    def interpreted(*a, **kw):
        calls.append(a[0].shape)
        return kernel(*a, **{**kw, "interpret": True})

    monkeypatch.setattr(attn_lib, "attention_splash", interpreted)
    mesh = make_mesh(dict(data=2, tensor=2))
    q, k, v = _qkv(b=2, nq=128, h=4, d=32)
    with jax.set_mesh(mesh):
        out = jax.jit(lambda q, k, v: sequence.attend("splash", q, k, v, splash_block=128))(q, k, v)
    assert calls and calls[0] == (1, 128, 2, 32)  # per shard: batch / data, heads / tensor
    np.testing.assert_allclose(np.asarray(out), np.asarray(attn_lib.attention_xla(q, k, v)), atol=ATOL)


def test_flash_blocks_grow_for_short_keys(monkeypatch):
    """A 7-key cross-attention runs as one query block; self-attention keeps block_q-query blocks."""
    seen = []
    core = attn_lib._flash

    def spy(q, k, v, bias, block_q):
        seen.append(block_q)
        return core(q, k, v, bias, block_q)

    monkeypatch.setattr(attn_lib, "_flash", spy)
    q, k, v = _qkv(h=3, d=32)
    attn_lib.attention_flash(q, *_qkv(nk=7, h=3, d=32, seed=1)[1:], block_q=16)
    attn_lib.attention_flash(q, k, v, block_q=16, min_keys=1)
    assert seen == [120, 16]


def test_auto_resolves_per_platform():
    assert attn_lib.resolve("auto", jnp.float32, "tpu") == "splash"
    assert attn_lib.resolve("auto", jnp.bfloat16, "gpu") == "cudnn"
    assert attn_lib.resolve("auto", jnp.float32, "gpu") == "flash"  # cuDNN's kernel takes 16-bit inputs only
    assert attn_lib.resolve("auto", jnp.float32, "cpu") == "flash"
    assert attn_lib.resolve("xla", jnp.float32, "tpu") == "xla"
    from dreamactor_jax.config_lib import model_section
    from dreamactor_jax.models.build import model_config

    assert model_config(model_section("tiny"), platform="tpu").attention == "splash"
    assert model_config(model_section("tiny", attention="blocked"), platform="tpu").attention == "blocked"
