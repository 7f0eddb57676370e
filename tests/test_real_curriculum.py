"""The whole curriculum on real-data records: mp4 videos -> ingest with pose extraction -> precompute (umT5 text)
-> stage 1 -> synthesis (image pool, estimator-scored acceptance) -> stage 2 (pose_mix from the stage-1 records)
-> export -> eval on held-out clips, with the procedural generator and the toy text encoder made unusable, so a
silent fallback to either fails the test.

Everything is made here: the videos (a bright "person" crossing a coloured background), a pool of character
images, a tiny random umT5 with its tokenizer, and a stand-in pose estimator (tests/pose_standin.py: no real
RTMPose / DWPose weights can be had offline).
"""

import json
import os

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
from PIL import Image  # noqa: E402
from pose_standin import pose_model  # noqa: E402

from dreamactor_jax.codecs import get_codec  # noqa: E402
from dreamactor_jax.curriculum import driver  # noqa: E402
from dreamactor_jax.curriculum.presets import check_real_data, curriculum_config  # noqa: E402
from dreamactor_jax.data import ingest, pose_estimator, precompute, video_io  # noqa: E402
from dreamactor_jax.data import text as text_lib  # noqa: E402
from dreamactor_jax.data.procedural import dataset as proc  # noqa: E402

SIZE, FRAMES = 32, 5  # pixel clips of the tiny model (latent 16 x 16, space-to-depth x2)
WORDS = "a person dances walks in red blue green room cartoon robot cat".split()


def _video(path, colour, seed, frames=10):
    rng = np.random.default_rng(seed)
    bg = (np.array(colour) * 0.5).astype(np.uint8)
    x0 = int(rng.integers(4, 12))
    out = np.zeros((frames, 64, 64, 3), np.uint8) + bg
    for t in range(frames):
        x = x0 + 3 * t
        out[t, 24:44, x : x + 8] = 255  # the "person": the frame's brightest region
    video_io.write_video(str(path), out, fps=8)


def _umt5(d):
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.post_processor = tokenizers.processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                         unk_token="<unk>").save_pretrained(d)
    torch.manual_seed(0)
    cfg = transformers.UMT5Config(vocab_size=len(vocab), d_model=32, d_kv=8, d_ff=40, num_layers=1, num_heads=2,
                                  pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    transformers.UMT5EncoderModel(cfg).save_pretrained(d)
    return str(d)


def _records(tmp, name, colours, seed, pose, umt5_dir):
    vids = tmp / f"{name}_videos"
    vids.mkdir()
    for i, c in enumerate(colours):
        _video(vids / f"a_person_dances_in_{c}_room_{i}.mp4", {"red": (200, 40, 40), "blue": (40, 40, 200),
                                                                  "green": (40, 200, 40)}[c], seed + i)
    est = pose_estimator.PoseEstimator(pose)
    rep = ingest.ingest(str(vids), "", str(tmp / f"{name}_pixels"),
                        ingest.IngestConfig(frames=FRAMES, height=SIZE, width=SIZE), estimator=est)
    assert rep.clips == 2 * len(colours) and not rep.skipped
    from dreamactor_jax.data.umt5 import UMT5TextEncoder

    codec = get_codec("space_to_depth", spatial_factor=2, latent_channels=12)
    precompute.precompute(str(tmp / f"{name}_pixels"), str(tmp / f"{name}_latents"), codec,
                          text_encoder=UMT5TextEncoder(umt5_dir, length=8))
    return str(tmp / f"{name}_latents")


def _unusable(*_, **__):
    raise AssertionError("a real-data curriculum used the procedural generator or the toy text encoder")


def test_real_data_curriculum_end_to_end(tmp_path, monkeypatch):
    pose = pose_model(str(tmp_path / "pose.onnx"))
    umt5_dir = _umt5(tmp_path / "umt5")
    train = _records(tmp_path, "train", ["red", "blue", "green"], 0, pose, umt5_dir)
    test = _records(tmp_path, "test", ["blue", "red"], 10, pose, umt5_dir)
    pool = tmp_path / "pool"
    pool.mkdir()
    for i, c in enumerate([(250, 200, 0), (0, 220, 220), (230, 0, 230)]):
        img = np.zeros((48, 40, 3), np.uint8) + 30
        img[10:40, 14:26] = c
        Image.fromarray(img).save(pool / f"cartoon_robot_{i}.png")
    (pool / "cartoon_robot_0.txt").write_text("a cartoon robot")

    c = curriculum_config("tiny_real")
    c.stage1.data.records_dir = train
    c.synthesis.reference_pool = str(pool)
    c.synthesis.pose_model = pose
    c.synthesis.threshold = 0.0  # a model trained for seconds: keep every pair, the scores are logged
    c.synthesis.num_clips = 6
    c.eval.records_dir = test
    c.eval.num_pairs = 4
    c.eval.batch_size = 4
    c.stage1.train.steps = c.stage2.train.steps = 12
    c.stage1.train.checkpoint_every = c.stage2.train.checkpoint_every = 12
    c.stage1.train.preview_every = c.stage2.train.preview_every = 0
    c.stage2.data.pose_mix = 0.5
    check_real_data(c)

    monkeypatch.setattr(proc, "make_example", _unusable)
    monkeypatch.setattr(text_lib.TextEncoder, "__call__", _unusable)
    monkeypatch.setattr(text_lib.TextEncoder, "encode_batch", _unusable)
    out = driver.run(c, str(tmp_path / "run"))

    assert set(out) == set(driver.PHASES)
    syn = out["synthesis"]
    assert syn["clips"] == 6 and syn["accepted"] == 6 and syn["source"] == "records" and syn["pool_images"] == 3
    rows = [json.loads(x) for x in open(tmp_path / "run" / "synthesis" / "acceptance-00000.jsonl")]
    assert len(rows) == 6 and all(0 <= r["pose_consistency"] <= 1 and 0 <= r["appearance_consistency"] <= 1
                                  for r in rows)
    assert rows[0]["prompt"].startswith("a cartoon robot, a person dances")  # the sidecar caption + the clip's
    assert out["stage2"]["steps"] == 12
    assert "diffusion_pytorch_model.safetensors" in out["export"]["files"]
    table = json.load(open(tmp_path / "run" / "eval" / "table.json"))
    assert table["clips"] == 4 and table["split"] == "records"
    for setting in ("self_reenactment", "cross_identity"):
        assert set(table["settings"][setting]) == {"untrained", "stage1", "stage2", "copy_reference"}
    copy = table["settings"]["self_reenactment"]["copy_reference"]
    assert 5 < copy["psnr"] < 60 and 0 < copy["ssim"] <= 1
    # The person crosses the frame: copying the reference frame misses it in later frames.
    assert table["settings"]["cross_identity"]["copy_reference"]["pose_consistency"] < 0.9
    assert os.path.exists(tmp_path / "run" / "eval" / "table.md")

    # Sampling the stage-2 model from files (launch/sample.py's path) encodes the caption with umT5, never the
    # toy encoder; without an umT5 directory it is refused.
    from dreamactor_jax import animate

    video = str(tmp_path / "test_videos" / "a_person_dances_in_blue_room_0.mp4")
    args = (str(tmp_path / "run" / "stage2"), str(pool / "cartoon_robot_1.png"), video,
            [str(tmp_path / "out.gif")])
    with pytest.raises(ValueError, match="umt5_dir"):
        animate.animate_files(*args, run_config=c.to_dict(), stage="stage2", caption="a cartoon robot dances")
    res = animate.animate_files(*args, run_config=c.to_dict(), stage="stage2", caption="a cartoon robot dances",
                                umt5_dir=umt5_dir, sampler=dict(method="euler", steps=2))
    assert res["frames"] == FRAMES and os.path.getsize(tmp_path / "out.gif") > 0


def test_real_data_config_refuses_procedural_fallbacks():
    c = curriculum_config("tiny_real")
    c.stage1.data.records_dir, c.eval.records_dir, c.synthesis.reference_pool = "/x", "/y", "/z"
    check_real_data(c)
    for field, value in (("synthesis.source", "procedural"), ("eval.source", "procedural"),
                         ("stage1.data.text_source", "toy"), ("stage1.data.source", "procedural")):
        bad = curriculum_config("tiny_real")
        bad.stage1.data.records_dir, bad.eval.records_dir, bad.synthesis.reference_pool = "/x", "/y", "/z"
        section, _, leaf = field.rpartition(".")
        node = bad
        for part in section.split("."):
            node = node[part]
        node[leaf] = value
        with pytest.raises(ValueError, match=field.replace(".", r"\.")):
            check_real_data(bad)
    empty = curriculum_config("tiny_real")
    empty.stage1.data.records_dir = "/x"
    empty.synthesis.reference_pool = ""
    with pytest.raises(ValueError, match="synthesis.reference_pool"):
        check_real_data(empty)
    assert curriculum_config("wan14b").real_data and not curriculum_config("tiny").real_data
    # The real-data presets agree: the Wan2.1 VAE at spatial factor 8 (tiny_real: the tiny codec), text from records.
    for scale in ("small_real", "wan14b"):
        c = curriculum_config(scale)
        assert c.stage1.data.codec.name == c.stage2.data.codec.name == "wan_vae"
        assert c.stage1.data.codec.spatial_factor == 8 and c.stage1.data.text_source == "records"
        assert c.synthesis.source == c.eval.source == "records"
