"""The model FLOP counter agrees with XLA's cost analysis of the compiled step (within 10%).

Layers are unrolled here: XLA's cost analysis counts a while-loop body once, so a
scanned stack would be under-counted by the number of layers.
"""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from dreamactor_jax.models import get_preset
from dreamactor_jax.models.build import abstract_model, split_params
from dreamactor_jax.train import flops


@pytest.mark.parametrize("kw", [dict(), dict(num_attention_heads=3, attention_head_dim=64, ffn_dim=640,
                                              num_layers=3, text_dim=48)])
def test_flop_counter_matches_xla_cost_analysis(kw):
    cfg = get_preset("tiny", scan_layers=False, attention="xla", **kw)  # a lax.map of blocks is counted once
    graphdef, params = split_params(abstract_model(cfg))
    b, t, h, w, text_len = 2, 3, 12, 20, 7
    args = (params, jax.ShapeDtypeStruct((b, t, h, w, cfg.in_channels), jnp.float32),
            jax.ShapeDtypeStruct((b,), jnp.float32), jax.ShapeDtypeStruct((b, text_len, cfg.text_dim), jnp.float32))

    def fwd(p, x, ts, txt):
        return nnx.merge(graphdef, p)(x, ts, txt)

    def train(p, x, ts, txt):
        return jax.grad(lambda q: jnp.sum(fwd(q, x, ts, txt)))(p)

    count = flops.forward_flops(cfg, batch=b, frames=t, height=h, width=w, text_len=text_len)
    for f, ours in ((fwd, count.forward), (train, count.train)):
        cost = jax.jit(f).lower(*args).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        assert abs(cost["flops"] / ours - 1.0) < 0.10, (cost["flops"], ours)
    assert 0.0 < count.attention_share < 1.0


def test_attention_share_grows_with_tokens():
    cfg = get_preset("wan2.1-t2v-14b")
    small = flops.forward_flops(cfg, batch=1, frames=21, height=60, width=208, text_len=512)
    large = flops.forward_flops(cfg, batch=1, frames=21, height=90, width=320, text_len=512)
    assert large.attention_share > small.attention_share > 0.3
    assert flops.mfu(large.train, 10.0, 1e15, 8) == pytest.approx(large.train / 10.0 / 8e15)
