"""CLIP image tokens for the I2V image branch: a tiny random CLIP vision model built here (nothing downloads),
precomputed into records, read by training (refused when missing) and fed to the sampler."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from dreamactor_jax import config_lib  # noqa: E402
from dreamactor_jax.codecs import get_codec  # noqa: E402
from dreamactor_jax.data import precompute, records  # noqa: E402
from dreamactor_jax.data.clip_image import CLIPImageEncoder, preprocess  # noqa: E402
from dreamactor_jax.diffusion import objective  # noqa: E402
from dreamactor_jax.diffusion.animator import Animator  # noqa: E402
from dreamactor_jax.diffusion.sampler import SamplerConfig  # noqa: E402
from dreamactor_jax.models.build import init_params, model_config  # noqa: E402
from dreamactor_jax.train import checkpoint, loop  # noqa: E402

IMG_DIM, SIZE, PATCH = 24, 32, 8  # 16 patches + the class token = 17 tokens


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("clip")
    torch.manual_seed(0)
    cfg = transformers.CLIPVisionConfig(hidden_size=IMG_DIM, intermediate_size=32, num_hidden_layers=2,
                                        num_attention_heads=2, image_size=SIZE, patch_size=PATCH)
    transformers.CLIPVisionModel(cfg).save_pretrained(d)
    return str(d)


def _pixel_records(path, n=4, seed=0):
    rng = np.random.default_rng(seed)
    recs = []
    for i in range(n):
        clip = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
        recs.append(dict(kind="pixels", target=clip, reference=clip[:1].copy(), motion=clip[::-1].copy(),
                         motion_valid=np.ones(5, np.float32), caption=f"clip {i}", identity_id=i, motion_id=i))
    records.write_records(str(path / "clips"), recs, shard_size=8)
    return recs


def test_encoder_is_the_penultimate_layer_of_the_vision_tower(clip_dir):
    enc = CLIPImageEncoder(clip_dir)
    assert (enc.tokens, enc.dim, enc.size) == (17, IMG_DIM, SIZE)
    imgs = np.random.default_rng(1).uniform(-1, 1, (3, 40, 48, 3)).astype(np.float32)
    out = enc.encode_batch(imgs)
    assert out.shape == (3, 17, IMG_DIM) and out.dtype == np.float32
    x = preprocess(imgs, SIZE)
    assert x.shape == (3, 3, SIZE, SIZE)
    with torch.no_grad():
        ref = enc.model(pixel_values=torch.from_numpy(x), output_hidden_states=True).hidden_states
    np.testing.assert_allclose(out, ref[-2].numpy(), atol=1e-5)
    assert not np.allclose(out, ref[-1].numpy(), atol=1e-3)  # not the last layer
    assert not np.allclose(out[0], out[1], atol=1e-3)  # depends on the image


def _i2v_config(records_dir):
    c = config_lib.load_config("configs/stage1_pose.py:tiny")
    c.model.update(image_dim=IMG_DIM, added_kv_proj_dim=model_config(c.model).inner_dim)
    c.data.update(source="records", records_dir=str(records_dir), image_tokens=17, batch_size=2)
    c.train.update(steps=2, log_every=1, checkpoint_every=2, preview_every=0)
    return c


def test_precompute_stores_tokens_and_an_i2v_model_trains_on_them(tmp_path, clip_dir):
    recs = _pixel_records(tmp_path)
    enc = CLIPImageEncoder(clip_dir)
    codec = get_codec("space_to_depth", spatial_factor=2, latent_channels=12)
    precompute.precompute(str(tmp_path), str(tmp_path / "latents"), codec, image_encoder=enc)
    src = records.RecordSource(str(tmp_path / "latents"))
    assert src.spec["image_tokens"][1] == (17, IMG_DIM)
    want = enc.encode_batch(np.stack([records.uint8_to_pixels(r["reference"])[0] for r in recs]))
    np.testing.assert_allclose(np.stack([src[i]["image_tokens"] for i in range(4)]), want, atol=1e-5)

    c = _i2v_config(tmp_path / "latents")
    mcfg = model_config(c.model)
    assert mcfg.image_dim == IMG_DIM
    out = loop.run(c, str(tmp_path / "run"))
    assert out["steps"] == 2 and np.isfinite(out["final_loss"])

    # The image tokens reach the (trained: at init the cross-attention output is zero) model: the loss changes
    # with them.
    graphdef, _ = init_params(mcfg, 0)
    params = checkpoint.restore_item(str(tmp_path / "run" / "checkpoints"), "params")
    model = nnx.merge(graphdef, params)
    lat = {k: jnp.asarray(codec.encode(records.uint8_to_pixels(recs[0][k])[None])) for k in ("target", "reference",
                                                                                           "motion")}
    batch = dict(lat, motion_valid=jnp.ones((1, 5)), text=jnp.ones((1, c.data.text_len, mcfg.text_dim)),
                 text_mask=jnp.ones((1, c.data.text_len)), image=jnp.asarray(want[:1]))
    ocfg = objective.ObjectiveConfig(**c.objective)
    l1, _ = objective.loss_and_metrics(model, batch, jax.random.key(1), ocfg)
    l2, _ = objective.loss_and_metrics(model, dict(batch, image=jnp.asarray(want[1:2])), jax.random.key(1), ocfg)
    assert abs(float(l1) - float(l2)) > 1e-6

    # Sampling an I2V model needs the tokens, and they steer it.
    anim = Animator(mcfg, None, codec, SamplerConfig(method="euler", steps=2, given_region=c.objective.given_region),
                    text_encoder=None)
    args = (lat["reference"], lat["motion"], np.ones((1, 5), np.float32), np.asarray(batch["text"]),
            np.asarray(batch["text_mask"]), jax.random.key(2))
    with pytest.raises(ValueError, match="image_bme"):
        anim.latents(*args, params=params)
    a = np.asarray(anim.latents(*args, params=params, image_bme=want[:1]))
    b = np.asarray(anim.latents(*args, params=params, image_bme=want[1:2]))
    assert not np.allclose(a, b, atol=1e-6)


def test_i2v_training_refuses_records_without_image_tokens(tmp_path):
    _pixel_records(tmp_path)
    c = _i2v_config(tmp_path)
    with pytest.raises(ValueError, match="image_tokens"):
        loop.run(c, str(tmp_path / "run"))
