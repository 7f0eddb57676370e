"""Forward parity with diffusers' WanTransformer3DModel on the same random weights (fp32, CPU).

head_dim is 32 here, never 16 or 64: diffusers' RoPE misbehaves at those head
dims (diffusers issue 12594), which would make a correct model look wrong.
"""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from dreamactor_jax.convert import names  # noqa: E402
from dreamactor_jax.models import WanTransformer3DModel, get_preset  # noqa: E402

ATOL = 1e-4


def _pair(cfg, seed=0):
    torch.manual_seed(seed)
    tm = diffusers.WanTransformer3DModel(**cfg.arch_dict()).eval()
    # Non-zero, non-trivial weights everywhere (diffusers' init leaves nothing zero, but be explicit).
    sd = {k: v.detach().numpy().copy() for k, v in tm.state_dict().items()}
    flat = names.import_tensors(cfg, sd.__getitem__, sd.keys())
    model = WanTransformer3DModel(cfg, rngs=nnx.Rngs(1))
    nnx.update(model, nnx.State(names.unflatten(flat)))
    return tm, model, sd


def _run_torch(tm, x, t, text, image=None):
    with torch.no_grad():
        out = tm(torch.from_numpy(x).permute(0, 4, 1, 2, 3), torch.from_numpy(t), torch.from_numpy(text),
                 encoder_hidden_states_image=None if image is None else torch.from_numpy(image), return_dict=False)[0]
    return out.permute(0, 2, 3, 4, 1).numpy()


@pytest.mark.parametrize("per_token", [False, True])
def test_t2v_parity_odd_dims(per_token):
    # 3 heads (not a power of two) x 32, 3 layers, 16 in-channels, non-square canvas 6 x 10.
    cfg = get_preset("tiny", num_attention_heads=3, attention_head_dim=32, num_layers=3, ffn_dim=96,
                     in_channels=16, text_dim=24, freq_dim=64)
    tm, model, _ = _pair(cfg)
    rng = np.random.default_rng(0)
    b, t, h, w = 2, 3, 6, 10
    x = rng.standard_normal((b, t, h, w, 16)).astype(np.float32)
    n = t * (h // 2) * (w // 2)
    ts = (rng.uniform(0, 1000, (b, n)) if per_token else np.array([321.0, 987.0])).astype(np.float32)
    text = rng.standard_normal((b, 7, 24)).astype(np.float32)
    ours = np.asarray(model(jnp.asarray(x), jnp.asarray(ts), jnp.asarray(text)))
    ref = _run_torch(tm, x, ts, text)
    assert np.abs(ref).max() > 0.5  # outputs of order 1
    assert np.abs(ours - ref).max() <= ATOL, np.abs(ours - ref).max()


def test_i2v_parity_image_cross_attention():
    cfg = get_preset("tiny", num_attention_heads=3, attention_head_dim=32, num_layers=2, ffn_dim=96,
                     in_channels=36, text_dim=24, freq_dim=64, image_dim=40, added_kv_proj_dim=96)
    tm, model, _ = _pair(cfg, seed=1)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 2, 4, 8, 36)).astype(np.float32)
    ts = np.array([500.0], np.float32)
    text = rng.standard_normal((1, 512, 24)).astype(np.float32)  # diffusers hard-codes 512 text tokens for I2V
    image = rng.standard_normal((1, 5, 40)).astype(np.float32)
    ours = np.asarray(model(jnp.asarray(x), jnp.asarray(ts), jnp.asarray(text), None, jnp.asarray(image)))
    ref = _run_torch(tm, x, ts, text, image)
    assert np.abs(ref).max() > 0.5
    assert np.abs(ours - ref).max() <= ATOL, np.abs(ours - ref).max()


def test_export_round_trip_bit_exact():
    cfg = get_preset("tiny", num_attention_heads=3, attention_head_dim=32, num_layers=3, ffn_dim=96,
                     in_channels=36, text_dim=24, freq_dim=64, image_dim=40, added_kv_proj_dim=96)
    _, model, sd = _pair(cfg, seed=2)
    out = dict(names.export_tensors(cfg, nnx.state(model, nnx.Param)))
    assert sorted(out) == sorted(sd)
    for k in sd:
        assert out[k].shape == sd[k].shape and np.array_equal(out[k], sd[k]), k
