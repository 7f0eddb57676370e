"""Latent codecs: exact inverse, interface, clear errors."""

import jax.numpy as jnp
import numpy as np
import pytest

from dreamactor_jax.codecs import get_codec


def test_space_to_depth_exact_inverse_numpy_and_jax():
    codec = get_codec("space_to_depth", spatial_factor=2, latent_channels=16)
    px = np.random.default_rng(0).uniform(-1, 1, (2, 3, 6, 10, 3)).astype(np.float32)
    lat = codec.encode(px)
    assert lat.shape == (2, 3, 3, 5, 16) == (2, *codec.latent_shape(3, 6, 10), 16)
    np.testing.assert_allclose(codec.decode(lat), px, atol=1e-6)
    np.testing.assert_allclose(np.asarray(codec.decode(codec.encode(jnp.asarray(px)))), px, atol=1e-6)
    # Spatial locality: changing one pixel block changes exactly one latent position.
    px2 = px.copy()
    px2[0, 1, 2:4, 4:6] += 0.5
    diff = np.abs(codec.encode(px2) - lat).sum(-1)
    assert np.count_nonzero(diff > 1e-6) == 1 and diff[0, 1, 1, 2] > 0


@pytest.mark.parametrize("shape, match", [((1, 3, 6, 10, 4), "3 \\(RGB\\) channels"), ((1, 3, 7, 10, 3), "height 7"),
                                          ((3, 6, 10, 3), "must be \\(B, T, H, W, 3\\)")])
def test_space_to_depth_bad_input(shape, match):
    codec = get_codec("space_to_depth")
    with pytest.raises(ValueError, match=match):
        codec.encode(np.zeros(shape, np.float32))


def test_unknown_codec_and_too_few_channels():
    with pytest.raises(ValueError, match="unknown codec 'vae9'"):
        get_codec("vae9")
    with pytest.raises(ValueError, match="cannot be exact"):
        get_codec("space_to_depth", spatial_factor=4, latent_channels=16)
