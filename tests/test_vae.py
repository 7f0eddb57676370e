"""The Wan VAE against diffusers' AutoencoderKLWan: parity, streaming, tiling, weights, bad input, video files.

The tiny model has odd, distinct widths (base 6, dim_mult (1, 2, 3, 3): 6/12/18 channels, z_dim 5) on
non-square 16 x 24 frames, is randomly initialised by torch with a fixed seed (norm gammas and biases moved
off 1/0), saved with diffusers' ``save_pretrained`` and imported through our importer. fp32 CPU throughout.
Output scales (seed 0): encoder mean max |mu| ~0.47, log-variance ~0.5; decoder output max |x| ~0.7-1.0
before the clip to [-1, 1]. Measured max abs differences are ~1e-6 against a 1e-4 bound.
"""

import os

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
from safetensors.torch import load_file  # noqa: E402

from dreamactor_jax.codecs import base, get_codec  # noqa: E402
from dreamactor_jax.codecs import wan_vae as W  # noqa: E402
from dreamactor_jax.codecs import wan_vae_convert as C  # noqa: E402
from dreamactor_jax.codecs import wan_vae_layers as L  # noqa: E402
from dreamactor_jax.convert.names import TensorMismatchError  # noqa: E402

ATOL = 1e-4
CFG = L.WanVAEConfig(
    base_dim=6,
    z_dim=5,
    dim_mult=(1, 2, 3, 3),
    latents_mean=(0.1, -0.2, 0.3, -0.4, 0.5),
    latents_std=(1.5, 0.8, 2.0, 1.2, 0.9),
)
H, W_ = 16, 24


def _t(x_bthwc):
    return torch.from_numpy(np.ascontiguousarray(x_bthwc)).permute(0, 4, 1, 2, 3)


def _n(t_bcthw):
    return t_bcthw.detach().permute(0, 2, 3, 4, 1).numpy()


def _pixels(t, seed=0, b=1, h=H, w=W_):
    return np.random.default_rng(seed).uniform(-1, 1, (b, t, h, w, 3)).astype(np.float32)


def _torch_decode_unclamped(tm, z_bthwc):
    """diffusers' ``_decode`` loop (post_quant_conv, one latent frame at a time with the cache), minus its clamp."""
    with torch.no_grad():
        x = tm.post_quant_conv(_t(z_bthwc))
        tm.clear_cache()
        outs = []
        for i in range(x.shape[2]):
            tm._conv_idx = [0]
            outs.append(
                tm.decoder(x[:, :, i : i + 1], feat_cache=tm._feat_map, feat_idx=tm._conv_idx, first_chunk=i == 0)
            )
        tm.clear_cache()
    return _n(torch.cat(outs, 2))


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    torch.manual_seed(0)
    tm = diffusers.AutoencoderKLWan(**CFG.arch_dict()).eval()
    with torch.no_grad():
        for name, p in tm.named_parameters():
            if name.endswith(("gamma", "bias")):
                p.add_(0.1 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("vae") / "diffusers"
    tm.save_pretrained(path)  # config.json + diffusion_pytorch_model.safetensors
    codec = get_codec("wan_vae", weights=str(path))
    return tm, codec, path


# ---------------------------------------------------------------------------------------------------------
# Structure and weights.


def test_wan21_param_count_and_names_match_diffusers():
    with torch.device("meta"):
        tm = diffusers.AutoencoderKLWan()  # diffusers' default config is Wan2.1's
    table = C.name_table(L.get_preset("wan2.1"))  # from the abstract (jax.eval_shape) model
    assert sum(np.prod(e.our_shape) for e in table) == sum(p.numel() for p in tm.parameters()) == 126_892_531
    sd = tm.state_dict()
    assert sorted(e.theirs for e in table) == sorted(sd)
    assert all(tuple(sd[e.theirs].shape) == e.their_shape for e in table)
    assert L.get_preset("wan2.1").arch_dict() == {k: tm.config[k] for k in L.ARCH_FIELDS}


def test_original_names_match_diffusers_converter():
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    orig = C.original_names(L.get_preset("wan2.1"))
    assert len(set(orig.values())) == len(orig) == 194
    assert convert_wan_vae_to_diffusers({o: o for o in orig.values()}) == orig
    assert {
        "encoder.conv1.weight",
        "conv1.weight",
        "conv2.bias",
        "decoder.upsamples.3.resample.1.weight",
        "decoder.upsamples.4.shortcut.weight",
        "encoder.middle.1.to_qkv.weight",
    } <= set(orig.values())


def test_export_round_trip_bit_exact(pair, tmp_path):
    tm, codec, path = pair
    sd = {k: v.numpy() for k, v in tm.state_dict().items()}
    cfg, flat = C.read_weights(str(path))
    assert cfg == CFG
    summary = C.export_weights(cfg, flat, tmp_path / "out")
    assert summary["tensors"] == len(sd) and summary["params"] == sum(v.size for v in sd.values())
    out = {k: v.numpy() for k, v in load_file(tmp_path / "out" / C.WEIGHTS_NAME).items()}
    assert sorted(out) == sorted(sd)
    for k in sd:
        assert out[k].dtype == sd[k].dtype and out[k].shape == sd[k].shape and np.array_equal(out[k], sd[k]), k
    # The model in the codec holds the same values: export straight from its state.
    again = dict(C.export_tensors(cfg, codec.vae.state))
    assert all(np.array_equal(again[k], sd[k]) for k in sd)
    back, info = diffusers.AutoencoderKLWan.from_pretrained(
        tmp_path / "out", output_loading_info=True, low_cpu_mem_usage=False
    )
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]


def test_original_pth_import_equals_diffusers_import(pair, tmp_path):
    tm, _, path = pair
    orig = C.original_names(CFG)
    pth = tmp_path / "Wan2.1_VAE.pth"
    torch.save({orig[k]: v.clone() for k, v in tm.state_dict().items()}, pth)  # a plain state dict of tensors
    assert C.open_weights(str(pth), CFG).layout == "original"
    _, from_pth = C.read_weights(str(pth), CFG)
    _, from_st = C.read_weights(str(path))
    assert from_pth.keys() == from_st.keys() and all(np.array_equal(from_pth[k], from_st[k]) for k in from_st)
    out = tmp_path / "converted"
    assert C.convert(str(pth), str(out), config=CFG)["layout"] == "original"
    assert sorted(load_file(out / C.WEIGHTS_NAME)) == sorted(tm.state_dict())


class _Payload:
    """Unpickling this would create ``marker``: a stand-in for a pickle that runs code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_that_carries_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "Wan2.1_VAE.pth"
    torch.save({"conv1.weight": torch.zeros(2), "payload": _Payload(str(marker))}, bad)
    with pytest.raises(C.UnsafeWeightsError, match="refused to load") as e:
        C.read_weights(str(bad))
    assert str(bad) in str(e.value)
    assert not marker.exists()


def test_mismatched_weights_name_every_problem(pair):
    _, _, path = pair
    with pytest.raises(TensorMismatchError, match="shape mismatches") as e:
        C.read_weights(str(path), CFG.replace(z_dim=4, latents_mean=(0,) * 4, latents_std=(1,) * 4))
    assert "quant_conv.weight" in str(e.value)
    with pytest.raises(ValueError, match="Wan2.2"):
        L.WanVAEConfig(is_residual=True)
    with pytest.raises(ValueError, match="latents_mean has 16 entries"):
        L.WanVAEConfig(z_dim=5)


# ---------------------------------------------------------------------------------------------------------
# Parity with diffusers.


@pytest.mark.parametrize("frames", [1, 5, 9])
def test_encoder_parity(pair, frames):
    tm, codec, _ = pair
    x = _pixels(frames, seed=frames)
    with torch.no_grad():
        dist = tm.encode(_t(x)).latent_dist
    mu, logvar = _n(dist.mean), _n(dist.logvar)
    mom = np.asarray(codec.vae.encode_moments(x))
    assert mom.shape == (1, 1 + (frames - 1) // 4, 2, 3, 10)
    assert 0.2 < np.abs(mu).max() < 5  # order-1 outputs (~0.47 at this seed)
    assert np.abs(mom[..., :5] - mu).max() <= ATOL, np.abs(mom[..., :5] - mu).max()
    assert np.abs(np.clip(mom[..., 5:], -30, 20) - logvar).max() <= ATOL
    # The codec's latents are diffusers pipelines' (mu - mean) * (1 / std).
    inv = 1.0 / torch.tensor(CFG.latents_std).view(1, 5, 1, 1, 1)
    ref = _n((dist.mean - torch.tensor(CFG.latents_mean).view(1, 5, 1, 1, 1)) * inv)
    assert np.abs(np.asarray(codec.encode(x)) - ref).max() <= ATOL
    assert codec.vae.compiled_programs()["encode"] <= 2  # first chunk + steady state, whatever the length


@pytest.mark.parametrize("frames", [1, 5, 9])
def test_decoder_parity(pair, frames):
    tm, codec, _ = pair
    t = 1 + (frames - 1) // 4
    latents = np.random.default_rng(10 + t).standard_normal((1, t, 2, 3, 5)).astype(np.float32)
    # diffusers pipelines denormalise with latents / (1 / std) + mean before vae.decode.
    inv = (np.float32(1.0) / np.asarray(CFG.latents_std, np.float32)).astype(np.float32)
    z = latents / inv + np.asarray(CFG.latents_mean, np.float32)
    ref = _torch_decode_unclamped(tm, z)
    ours = np.asarray(codec.vae.decode_raw(z))
    assert ours.shape == ref.shape == (1, frames, H, W_, 3)
    assert 0.3 < np.abs(ref).max() < 5  # ~0.7-1.0 at this seed
    assert np.abs(ours - ref).max() <= ATOL, np.abs(ours - ref).max()
    # The codec's decode: denormalise, decode, clamp to [-1, 1] (diffusers' _decode clamps the same loop's output).
    assert np.abs(np.asarray(codec.decode(latents)) - np.clip(ref, -1, 1)).max() <= ATOL
    assert codec.vae.compiled_programs()["decode"] <= 2


def test_streamed_equals_whole_clip(pair):
    _, codec, _ = pair
    vae = codec.vae
    x = _pixels(13, seed=3, b=2)
    chunked = np.concatenate([np.asarray(vae.encode_moments(x[i : i + 1])) for i in range(2)])
    for frames in (5, 9):
        vae.encode_moments(x[:1, :frames])
    assert vae.compiled_programs()["encode"] == 2  # one first-chunk and one steady-state program for all lengths
    # Ragged blocks (a file read piece by piece) regroup into the same 1 + 4 + 4 + 4 chunks.
    ragged = [x[:1, :3], x[:1, 3:5], x[:1, 5:12], x[:1, 12:]]
    streamed = np.concatenate([np.asarray(m) for m in vae.encode_iter(ragged)], axis=1)
    assert np.array_equal(streamed, chunked[:1])
    # The whole clip as one call (no cache carried), batch 2 at once: equal up to float reassociation.
    whole = np.asarray(vae.encode_moments(x, whole_clip=True))
    assert np.abs(chunked - whole).max() <= 1e-5
    dec = [np.asarray(vae.decode_raw(chunked[i : i + 1, :, :, :, :5])) for i in range(2)]
    assert vae.compiled_programs()["decode"] <= 2 and dec[0].shape == (1, 13, H, W_, 3)


# ---------------------------------------------------------------------------------------------------------
# Spatial tiling: our tile cutting, blending and cropping against diffusers' tiled_encode/tiled_decode, with
# both sides' model replaced by the same cheap function whose output depends on the position inside the tile
# (as zero padding at tile borders makes the real model's), so any wrong tile origin, blend or crop shows.


def _fake_encode(x_bthwc, first):
    b, t, h, w, _ = x_bthwc.shape
    x = x_bthwc.reshape(b, t if first else t // 4, 1 if first else 4, h // 8, 8, w // 8, 8, 3).mean((2, 4, 6))
    i, j = np.meshgrid(np.arange(h // 8), np.arange(w // 8), indexing="ij")
    pos = (0.1 * i + 0.01 * j)[None, None, :, :, None]
    return np.concatenate([x.mean(-1, keepdims=True) * (c + 1) + pos + 0.001 * c for c in range(10)], -1)


def _fake_decode(z_bthwc, first):
    b, t, h, w, c = z_bthwc.shape
    y = np.repeat(np.repeat(z_bthwc.mean(-1, keepdims=True), 8, 2), 8, 3) * 0.1
    i, j = np.meshgrid(np.arange(8 * h), np.arange(8 * w), indexing="ij")
    y = y + (0.004 * i + 0.002 * j)[None, None, :, :, None] + np.array([0.0, 0.01, 0.02])
    return y if first else np.repeat(y, 4, axis=1)


class _TorchFake(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x, feat_cache=None, feat_idx=None, first_chunk=None):
        if first_chunk is None:  # the encoder: its first chunk is the 1-frame one
            first_chunk = x.shape[2] == 1
        return _t(self.fn(_n(x), first_chunk).astype(np.float32))


def test_tiling_matches_diffusers_tiled_encode_decode():
    tiling = W.Tiling(height=24, width=32, stride_height=16, stride_width=16)  # 3 x 4 tiles, blends both ways
    vae = W.WanVAE.random(CFG, tiling=tiling)  # weights unused: the steps are replaced below
    vae._encode_step = lambda state, x, past: (jnp.asarray(_fake_encode(np.asarray(x), past is None)), [])
    vae._decode_step = lambda state, z, past: (jnp.asarray(_fake_decode(np.asarray(z), past is None)), [])
    tm = diffusers.AutoencoderKLWan(**CFG.arch_dict()).eval()
    tm.encoder, tm.decoder = _TorchFake(_fake_encode), _TorchFake(_fake_decode)
    tm.quant_conv, tm.post_quant_conv = torch.nn.Identity(), torch.nn.Identity()
    tm.enable_tiling(24, 32, 16, 16)
    x = _pixels(9, seed=4, h=40, w=56)
    with torch.no_grad():
        ref = _n(tm.tiled_encode(_t(x)))
    ours = np.asarray(vae.encode_moments(x))
    assert ours.shape == ref.shape == (1, 3, 5, 7, 10)
    assert np.abs(ours - ref).max() <= 1e-6
    z = ref[..., :5]
    with torch.no_grad():
        ref_x = _n(tm.tiled_decode(_t(z)).sample)
    ours_x = np.clip(np.asarray(vae.decode_raw(z)), -1, 1)
    assert ours_x.shape == ref_x.shape == (1, 9, 40, 56, 3)
    assert np.abs(ours_x - ref_x).max() <= 1e-6


@pytest.mark.slow
def test_tiled_model_parity_with_diffusers(pair):
    """The real tiny model, tiled, against diffusers' tiled output (and how far tiling is from untiled)."""
    tm, _, path = pair
    vae = W.WanVAE.from_pretrained(str(path), tiling=W.Tiling(height=16, width=24, stride_height=16, stride_width=16))
    x = _pixels(5, seed=5, h=16, w=40)
    tm.enable_tiling(16, 24, 16, 16)
    try:
        with torch.no_grad():
            ref = _n(tm.tiled_encode(_t(x)))
            mom = np.asarray(vae.encode_moments(x))
            assert np.abs(mom - ref).max() <= ATOL
            z = mom[..., :5]
            ref_x = _n(tm.tiled_decode(_t(z)).sample)
            assert np.abs(np.clip(np.asarray(vae.decode_raw(z)), -1, 1) - ref_x).max() <= ATOL
    finally:
        tm.disable_tiling()
    untiled = np.asarray(W.WanVAE.from_pretrained(str(path)).encode_moments(x))
    # Tiles see zero padding at their borders: tiled != untiled. Measured 0.37 on this random model with 16-pixel
    # tiles (max |moments| 0.66; real weights with 256-pixel tiles differ far less); a loose bound only guards
    # against gross errors, the exact check is the parity with diffusers' tiled output above.
    assert np.abs(mom - untiled).max() < 1.0


@pytest.mark.slow
def test_longer_chunks_whole_clip_decode_and_sharded_batch_equal_default(pair):
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    _, codec, path = pair
    x = _pixels(17, seed=6, b=8)
    ref = np.asarray(codec.vae.encode_moments(x))
    z = ref[..., :5]
    dec = np.asarray(codec.vae.decode_raw(z))
    assert np.abs(dec - np.asarray(codec.vae.decode_raw(z, whole_clip=True))).max() <= 1e-5
    eight = W.WanVAE.from_pretrained(str(path), chunk_frames=8, decode_chunk=2)
    assert np.abs(np.asarray(eight.encode_moments(x)) - ref).max() <= 1e-5
    assert np.abs(np.asarray(eight.decode_raw(z)) - dec).max() <= 1e-5
    mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
    xs = jax.device_put(x, NamedSharding(mesh, PartitionSpec("data")))
    out = codec.vae.encode_moments(xs)
    assert np.abs(np.asarray(out) - ref).max() <= 1e-5


# ---------------------------------------------------------------------------------------------------------
# The codec interface, bad input, video files.


def test_codec_by_name_and_latent_shape():
    codec = get_codec("wan_vae", config="tiny", seed=1)
    assert (codec.name, codec.latent_channels, codec.spatial_factor, codec.temporal_factor) == ("wan_vae", 16, 8, 4)
    assert codec.latent_shape(81, 480, 832) == (21, 60, 104)
    with pytest.raises(ValueError, match="spatial_factor=2 was asked for, but the VAE has 8"):
        get_codec("wan_vae", config="tiny", spatial_factor=2)
    with pytest.raises(ValueError, match="needs weights="):
        get_codec("wan_vae")
    with pytest.raises(ValueError, match="unknown codec 'vae9'; available: \\['space_to_depth', 'wan_vae'\\]"):
        get_codec("vae9")


def test_run_config_selects_the_vae_and_its_weights(pair):
    """config.data.codec names the codec; its weights field reaches WanVAECodec (what training and
    precompute build through data.sources.codec_from)."""
    import ml_collections

    from dreamactor_jax.data import sources

    _, ref, path = pair
    config = ml_collections.ConfigDict({"data": sources.data_section(channels=ref.latent_channels)})
    config.data.codec.update(name="wan_vae", spatial_factor=8, weights=str(path))
    codec = sources.codec_from(config)
    assert codec.name == "wan_vae" and codec.spatial_factor == 8
    x = np.random.default_rng(3).uniform(-1, 1, (1, 5, 16, 24, 3)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(codec.encode(x)), np.asarray(ref.encode(x)))
    config.data.codec.spatial_factor = 2
    with pytest.raises(ValueError, match="spatial_factor=2"):
        sources.codec_from(config)


@pytest.mark.parametrize(
    "shape, match",
    [
        ((1, 6, 16, 24, 3), "frame count 6 is not of the form 4k\\+1"),
        ((1, 5, 16, 24, 4), "3 \\(RGB\\) channels, got 4"),
        ((1, 5, 20, 24, 3), "height 20 is not divisible by the spatial factor 8"),
        ((1, 5, 16, 30, 3), "width 30 is not divisible by the spatial factor 8"),
        ((5, 16, 24, 3), "must be \\(B, T, H, W, 3\\)"),
    ],
)
def test_encode_bad_input(pair, shape, match):
    _, codec, _ = pair
    with pytest.raises(ValueError, match=match):
        codec.encode(np.zeros(shape, np.float32))


def test_decode_and_stream_bad_input(pair):
    _, codec, _ = pair
    with pytest.raises(ValueError, match="latents have 16 channels, expected 5"):
        codec.decode(np.zeros((1, 2, 2, 3, 16), np.float32))
    with pytest.raises(ValueError, match="must be \\(B, T, H, W, C\\)"):
        codec.decode(np.zeros((2, 2, 3, 5), np.float32))
    x = _pixels(7, b=1)
    with pytest.raises(ValueError, match="frame count is not of the form 4k\\+1"):
        list(codec.encode_iter([x]))
    trimmed = np.concatenate([np.asarray(m) for m in codec.encode_iter([x], trim=True)], axis=1)
    assert np.array_equal(trimmed, np.asarray(codec.encode(x[:, :5])))


def test_video_file_round_trip(pair, tmp_path):
    from dreamactor_jax.data import video_io

    _, codec, _ = pair
    frames = base.to_uint8(_pixels(11, seed=7, b=1)[0])
    src = tmp_path / "in.mp4"
    video_io.write_video(src, frames, fps=16)
    with pytest.raises(ValueError, match="in.mp4: .*frame count.*pass trim=True"):
        base.encode_video_file(codec, str(src))
    lat = base.encode_video_file(codec, str(src), trim=True)  # 11 frames -> the first 9
    assert lat.shape == (3, 2, 3, 5)
    decoded = video_io.read_video(src)[:9]
    assert np.abs(lat - np.asarray(codec.encode(base.to_pixels(decoded)[None]))[0]).max() <= 1e-6
    out = tmp_path / "out.mp4"
    assert base.decode_to_video_file(codec, lat, str(out))["frames"] == 9
    back = video_io.read_video(out)
    assert back.shape == (9, H, W_, 3) and back.dtype == np.uint8
    assert video_io.probe(out).fps == 16
    assert os.path.getsize(out) > 0


def test_latents_files_round_trip(tmp_path):
    lat = np.random.default_rng(8).standard_normal((3, 2, 3, 5)).astype(np.float32)
    for name in ("lat.npy", "lat.safetensors"):
        base.save_latents(tmp_path / name, lat)
        assert np.array_equal(base.load_latents(tmp_path / name), lat)
    with pytest.raises(ValueError, match="lat.pt: latents are written as .npy or .safetensors"):
        base.save_latents(tmp_path / "lat.pt", lat)


@pytest.mark.slow
def test_launcher_convert_encode_decode(pair, tmp_path, repo_root):
    import json
    import subprocess
    import sys

    from dreamactor_jax.data import video_io

    tm, _, _ = pair
    orig = C.original_names(CFG)
    pth = tmp_path / "vae" / "Wan2.1_VAE.pth"
    pth.parent.mkdir()
    torch.save({orig[k]: v.clone() for k, v in tm.state_dict().items()}, pth)
    with open(pth.parent / C.CONFIG_NAME, "w") as f:  # a non-default architecture: say so beside the .pth
        json.dump(C.diffusers_config(CFG), f)
    video_io.write_video(tmp_path / "in.mp4", base.to_uint8(_pixels(9, seed=9)[0]), fps=16)

    def run(*args):
        out = subprocess.run(
            [sys.executable, str(repo_root / "launch" / "vae.py"), *args],
            cwd=repo_root,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    assert run("convert", f"--src={pth.parent}", f"--out={tmp_path / 'vae_diffusers'}")["layout"] == "original"
    enc = run(
        "encode",
        f"--weights={tmp_path / 'vae_diffusers'}",
        f"--video={tmp_path / 'in.mp4'}",
        f"--out={tmp_path / 'lat.safetensors'}",
    )
    assert enc["latents"] == [3, 2, 3, 5]
    dec = run(
        "decode",
        f"--weights={tmp_path / 'vae_diffusers'}",
        f"--latents={tmp_path / 'lat.safetensors'}",
        f"--out={tmp_path / 'out.mp4'}",
    )
    assert dec["frames"] == 9 and video_io.read_video(tmp_path / "out.mp4").shape == (9, H, W_, 3)
