"""components(config): one resolution of a train config into codec, text encoder, model config and pixel sizes."""

import dataclasses

import pytest

from dreamactor_jax import config_lib
from dreamactor_jax.curriculum import presets
from dreamactor_jax.data import components as comp_lib
from dreamactor_jax.data import sources


@dataclasses.dataclass
class FakeVAE:
    """Stands in for the Wan VAE (no weights needed): what components reads from a codec."""

    kwargs: dict
    latent_channels: int = 16
    spatial_factor: int = 8
    temporal_factor: int = 4


@pytest.fixture
def built(monkeypatch):
    """Every codec construction components makes: (name, kwargs); the real one for space_to_depth."""
    calls, real = [], comp_lib.get_codec
    monkeypatch.setattr(comp_lib, "_CODECS", {})
    monkeypatch.setattr(comp_lib, "_CACHE", {})

    def fake(name, **kwargs):
        calls.append((name, kwargs))
        return FakeVAE(kwargs) if name == "wan_vae" else real(name, **kwargs)

    monkeypatch.setattr(comp_lib, "get_codec", fake)
    return calls


def test_tiny_resolves_once_to_the_runs_sizes(built):
    c = config_lib.stage_config(presets.curriculum_config("tiny"), "stage1")
    comp = comp_lib.components(c)
    again = config_lib.stage_config(presets.curriculum_config("tiny"), "stage1")  # an equal, separate config
    assert comp_lib.components(again) is comp
    assert sources.codec_from(again) is comp.codec
    assert sources.procedural_config(again, "train") == comp.procedural("train")
    assert len(built) == 1, built
    d = c.data
    assert (comp.frames, comp.height, comp.width) == (d.frames, 2 * d.height, 2 * d.width)  # space-to-depth 2, no time
    assert comp.procedural("train").pose_augment_prob == d.procedural.pose_augment_prob
    assert comp.procedural("test").pose_augment_prob == 0.0
    assert (comp.text.length, comp.text.dim, comp.text.seed) == (d.text_len, comp.model.text_dim, c.seed)
    assert comp.fps == d.procedural.fps


def test_wan14b_runs_on_the_wan_vae_with_its_weights_and_tiling(built, monkeypatch):
    """The 14B preset names the VAE (it used to keep space-to-depth by default); weights and tiling reach it."""
    monkeypatch.delenv(comp_lib.wan_vae_env, raising=False)
    cur = presets.curriculum_config("wan14b")
    for stage in ("stage1", "stage2"):
        cur[stage].data.codec.update(weights="/weights/wan_vae", tiling=True)
        comp = comp_lib.components(config_lib.stage_config(cur, stage))
        assert isinstance(comp.codec, FakeVAE)
        assert comp.codec.kwargs == dict(spatial_factor=8, latent_channels=16, weights="/weights/wan_vae", tiling=True)
        d = cur[stage].data
        assert (comp.frames, comp.height, comp.width) == (4 * (d.frames - 1) + 1, 8 * d.height, 8 * d.width)
    assert len(built) == 1  # both stages share the one VAE
    monkeypatch.setenv(comp_lib.wan_vae_env, "/env/vae")
    cur.stage1.data.codec.weights = ""
    assert comp_lib.components(config_lib.stage_config(cur, "stage1")).codec.kwargs["weights"] == "/env/vae"


def test_codec_and_model_channels_must_agree(built):
    c = config_lib.stage_config(presets.curriculum_config("wan14b"), "stage1")
    c.data.channels = 12  # the VAE gives 16
    with pytest.raises(ValueError,
                       match="config.data.codec='wan_vae' gives 16-channel latents but config.data.channels is 12"):
        comp_lib.components(c)
    t = config_lib.stage_config(presets.curriculum_config("tiny"), "stage1")
    t.model.in_channels = 2 * t.data.channels + 5
    with pytest.raises(ValueError, match="config.model needs in_channels="):
        comp_lib.components(t)
    t = config_lib.stage_config(presets.curriculum_config("tiny"), "stage1")
    t.data.height = 7
    with pytest.raises(ValueError, match="config.data.height=7 .* not divisible by the model patch size 2"):
        comp_lib.components(t)
