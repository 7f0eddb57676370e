"""Real-video ingestion (mp4 + OpenPose JSON -> pixel records) and latent precompute (-> latent records)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from array_record.python import array_record_module as arm

pytest.importorskip("av")

from dreamactor_jax.codecs import get_codec  # noqa: E402
from dreamactor_jax.data import ingest, precompute, records, video_io  # noqa: E402
from dreamactor_jax.data import keypoints as kp_lib  # noqa: E402
from dreamactor_jax.data.text import TextEncoder  # noqa: E402

SRC_T, SRC_H, SRC_W = 12, 32, 48
CFG = ingest.IngestConfig(frames=5, height=16, width=20, stride=4)  # 32x48 -> 16x24 -> crop 2 columns each side


def _frames(seed: int) -> np.ndarray:
    """A moving bright box over a colour ramp: frames differ, and survive H.264."""
    f = np.zeros((SRC_T, SRC_H, SRC_W, 3), np.uint8)
    f[..., seed % 3] = np.linspace(40, 200, SRC_W, dtype=np.uint8)[None, None, :]
    for t in range(SRC_T):
        f[t, 8:24, 3 * t : 3 * t + 10] = 255
    return f


def _people(t: int, body25: bool = False) -> dict:
    """One person: neck at (24, 8) moving right; COCO-18 or BODY_25 layout."""
    kp18 = np.zeros((18, 3), np.float32)
    kp18[1] = (24 + t, 8, 0.9)  # neck
    kp18[2], kp18[3], kp18[4] = (18 + t, 9, 0.9), (16 + t, 16, 0.8), (15 + t, 22, 0.7)  # right arm
    kp18[8], kp18[9], kp18[10] = (20 + t, 20, 0.9), (20 + t, 26, 0.9), (20 + t, 31, 0.9)  # right leg
    kp18[0] = (24 + t, 4, 0.01)  # a nose below the confidence threshold: not drawn
    if not body25:
        return {"people": [{"pose_keypoints_2d": kp18.reshape(-1).tolist()}]}
    kp25 = np.zeros((25, 3), np.float32)
    kp25[ingest.BODY_25_TO_18] = kp18
    kp25[8] = (6, 28, 1.0)  # BODY_25's mid-hip has no COCO joint: must be dropped (target pixel (14, 1))
    return {"people": [{"pose_keypoints_2d": kp25.reshape(-1).tolist()}]}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    videos, poses = root / "videos", root / "poses"
    videos.mkdir()
    poses.mkdir()
    video_io.write_video(str(videos / "dance_a.mp4"), _frames(0))
    for t in range(SRC_T):
        if t != 7:  # frame 7 has no JSON: motion_valid 0 there
            (poses / f"dance_a_{t:012d}_keypoints.json").write_text(json.dumps(_people(t)))
    video_io.write_video(str(videos / "walk-b.mp4"), _frames(1))
    (videos / "walk-b.txt").write_text("a robot walks\nto the left\n")
    (poses / "walk-b.json").write_text(json.dumps([_people(t, body25=True) for t in range(SRC_T)]))
    (videos / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 100)
    (poses / "broken.json").write_text(json.dumps([_people(0)]))
    video_io.write_video(str(videos / "nopose.mp4"), _frames(2))
    return videos, poses


@pytest.fixture(scope="module")
def ingested(inputs, tmp_path_factory):
    videos, poses = inputs
    out = tmp_path_factory.mktemp("pixels")
    return ingest.ingest(str(videos), str(poses), str(out), CFG, shard_size=3), out


def test_ingest_round_trip(inputs, ingested):
    videos, poses = inputs
    report, out = ingested
    assert report.clips == 4 and report.videos == 2 and len(report.files) == 2
    assert list(ingest.clip_starts(SRC_T, CFG)) == [0, 4]
    skipped = {os.path.basename(p): why for p, why in report.skipped}
    assert set(skipped) == {"broken.mp4", "nopose.mp4"} and "no keypoints" in skipped["nopose.mp4"]
    src = records.RecordSource(str(out))
    assert len(src) == 4 and src.kind == "pixels" and src.spec["target"][1] == (5, 16, 20, 3)
    fit = video_io.fit(SRC_H, SRC_W, CFG.height, CFG.width)
    assert (fit.resized_height, fit.resized_width, fit.top, fit.left) == (16, 24, 0, 2)
    for i, (stem, start) in enumerate([("dance_a", 0), ("dance_a", 4), ("walk-b", 0), ("walk-b", 4)]):
        r = src[i]
        decoded = video_io.read_video(str(videos / f"{stem}.mp4"), CFG.height, CFG.width)
        np.testing.assert_array_equal(r["target"], decoded[start : start + 5])
        np.testing.assert_array_equal(r["reference"][0], decoded[start])
        assert r["caption"] == ("dance a" if stem == "dance_a" else "a robot walks to the left")
        assert r["identity_id"] == ingest.stable_id(stem) and r["motion_id"] == ingest.stable_id(stem, start)
        want_valid = [0.0 if stem == "dance_a" and start + k == 7 else 1.0 for k in range(5)]
        assert r["motion_valid"].tolist() == want_valid
        # The keypoints the motion was drawn from travel with the record, in its pixels (4 person slots).
        assert r["keypoints"].shape == (5, CFG.max_people, 18, 3) and r["keypoints"].dtype == np.float32
        for k in range(5):
            want = np.r_[fit.points(np.array([24 + start + k, 8], np.float32)), 0.9] if want_valid[k] else np.zeros(3)
            np.testing.assert_allclose(r["keypoints"][k, 0, 1], want, atol=1e-5)
            assert not r["keypoints"][k, 1:].any()
        # The pose render sits where the keypoints went: bright at the mapped neck, black far away.
        for k in range(5):
            if not want_valid[k]:
                assert not r["motion"][k].any()
                continue
            t = start + k
            x, y = fit.points(np.array([24 + t, 8], np.float32))
            assert r["motion"][k, int(y), int(x)].max() > 100, (stem, t)
            nx, ny = fit.points(np.array([24 + t, 4], np.float32))  # the low-confidence nose
            assert not r["motion"][k, int(ny), int(nx)].any() and not r["motion"][k, 14, 1].any()
            assert not r["motion"][k, :, -1].any()
    # The source video itself is the target, to H.264 precision.
    err = np.abs(src[0]["target"].astype(int) - video_io.read_video(str(videos / "dance_a.mp4"))[:5, ::2, 5:45:2])
    assert err.mean() < 20


def test_openpose_layouts():
    people = ingest.parse_people(_people(3, body25=True))
    np.testing.assert_array_equal(people, ingest.parse_people(_people(3)))
    assert people.shape == (1, 18, 3)
    assert ingest.OPENPOSE_18_PARENTS[1] == -1 and all(p < 18 for p in ingest.OPENPOSE_18_PARENTS)
    with pytest.raises(ValueError, match="10 joints per person"):
        ingest.parse_people({"people": [{"pose_keypoints_2d": [1.0] * 30}]})
    with pytest.raises(video_io.VideoError):
        video_io.read_video("/nonexistent.mp4")


def _coco17(kp18: np.ndarray) -> np.ndarray:
    """OpenPose-18 joints (neck included) -> the same person in COCO-17 order (no neck)."""
    coco = np.zeros((17, 3), np.float32)
    for k, j in enumerate(kp_lib.COCO_TO_18):
        if j >= 0:
            coco[j] = kp18[k]
    return coco


def test_keypoint_formats_give_one_openpose18_body():
    kp18 = np.random.default_rng(0).uniform(1, 30, (18, 3)).astype(np.float32)
    kp18[:, 2] = np.linspace(0.3, 0.9, 18)
    kp18[1, :2] = 0.5 * (kp18[2, :2] + kp18[5, :2])  # COCO has no neck: it is the shoulders' midpoint
    kp18[1, 2] = min(kp18[2, 2], kp18[5, 2])
    coco = _coco17(kp18)
    whole = np.concatenate([coco, np.random.default_rng(1).uniform(0, 9, (116, 3)).astype(np.float32)])
    body25 = np.zeros((25, 3), np.float32)
    body25[kp_lib.BODY_25_TO_18] = kp18
    for layout, fmt in ((kp18, "openpose18"), (coco, "coco17"), (whole, "wholebody133"), (body25, "openpose25")):
        assert kp_lib.detect_format(len(layout), "test") == fmt
        np.testing.assert_allclose(kp_lib.to_openpose18(layout[None], fmt)[0], kp18, atol=1e-6, err_msg=fmt)
        # Flat and nested people, OpenPose's key and the generic one, all parse the same.
        for person in ({"pose_keypoints_2d": layout.reshape(-1).tolist()}, {"keypoints": layout.tolist()}):
            np.testing.assert_allclose(ingest.parse_people({"people": [person]})[0], kp18, atol=1e-6)
    np.testing.assert_array_equal(kp_lib.resample_indices(9, 8.0, 4.0), [0, 2, 4, 6, 8])
    np.testing.assert_array_equal(kp_lib.resample_indices(3, 8.0, 16.0), [0, 0, 1, 2, 2])  # nearest, clipped


def test_ingest_skips_bad_videos_by_reason_and_writes_the_rest(tmp_path):
    """One corrupt mp4, one keypoint file of the wrong length, one video where nobody is detected: each is
    counted under its reason and the good videos (COCO-17 in normalised coordinates, WholeBody-133 in
    pixels, at their own frame rate) are written."""
    videos, poses = tmp_path / "videos", tmp_path / "poses"
    videos.mkdir()
    poses.mkdir()
    kp18 = np.stack([np.array(_people(t)["people"][0]["pose_keypoints_2d"], np.float32).reshape(18, 3)
                     for t in range(SRC_T)])
    kp18[:, 5] = np.stack([30 + np.arange(SRC_T), np.full(SRC_T, 9), np.full(SRC_T, 0.9)], 1)  # left shoulder
    kp18[:, 1] = (kp18[:, 2] + kp18[:, 5]) / 2  # the neck where COCO's shoulders put it: (24 + t, 9)
    coco = np.stack([_coco17(k) for k in kp18])
    video_io.write_video(str(videos / "good_coco.mp4"), _frames(0))
    norm = coco.copy()
    norm[..., 0] /= SRC_W
    norm[..., 1] /= SRC_H
    np.save(poses / "good_coco.npy", norm)  # (T, 17, 3) in [0, 1]: normalised
    video_io.write_video(str(videos / "good_whole.mp4"), _frames(1))
    whole = np.concatenate([coco, np.zeros((SRC_T, 116, 3), np.float32)], 1)
    (poses / "good_whole.json").write_text(json.dumps({"format": "wholebody133", "frames": [
        {"people": [{"keypoints": w.tolist()}]} for w in whole]}))
    (videos / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 100)
    np.save(poses / "corrupt.npy", norm)
    video_io.write_video(str(videos / "short_track.mp4"), _frames(2))
    np.save(poses / "short_track.npy", norm[: SRC_T - 3])
    video_io.write_video(str(videos / "nobody.mp4"), _frames(0))
    (poses / "nobody.json").write_text(json.dumps([{"people": []}] * SRC_T))

    report = ingest.ingest(str(videos), str(poses), str(tmp_path / "out"), CFG, shard_size=8)
    assert report.reasons == {"undecodable_video": 1, "keypoints_length": 1, "no_person": 1}, report.skipped
    assert report.videos == 2 and report.clips == 4
    why = {os.path.basename(p): r for p, r in report.skipped}
    assert "short_track.npy has 9 frames, the video 12" in why["short_track.mp4"]
    src = records.RecordSource(str(tmp_path / "out"))
    fit = video_io.fit(SRC_H, SRC_W, CFG.height, CFG.width)
    for r in (src[0], src[2]):  # clip 0 of each good video: the neck is drawn where it belongs
        for k in range(CFG.frames):
            x, y = fit.points(kp18[k, 1, :2])
            assert r["motion"][k, int(y), int(x)].max() > 100, k
    np.testing.assert_array_equal(src[0]["motion"], src[2]["motion"])  # normalised COCO == pixel WholeBody


def test_ingest_resamples_to_the_target_fps(tmp_path):
    videos, poses = tmp_path / "videos", tmp_path / "poses"
    videos.mkdir()
    poses.mkdir()
    video_io.write_video(str(videos / "clip.mp4"), _frames(0), fps=8.0)
    (poses / "clip.json").write_text(json.dumps([_people(t) for t in range(SRC_T)]))
    cfg = ingest.IngestConfig(frames=5, height=16, width=20, fps=4.0)  # every second source frame
    report = ingest.ingest(str(videos), str(poses), str(tmp_path / "out"), cfg)
    assert report.clips == 1 and not report.skipped
    r = records.RecordSource(str(tmp_path / "out"))[0]
    decoded = video_io.read_video(str(videos / "clip.mp4"), 16, 20)
    np.testing.assert_array_equal(r["target"], decoded[0:10:2])
    fit = video_io.fit(SRC_H, SRC_W, 16, 20)
    for k in range(5):  # the pose follows the same source frames: neck of source frame 2k
        x, y = fit.points(np.array([24 + 2 * k, 8], np.float32))
        assert r["motion"][k, int(y), int(x)].max() > 100, k


def test_skeletons_are_drawn_in_openpose_style():
    kp = np.zeros((2, 1, 18, 3), np.float32)
    kp[0, 0, 1], kp[0, 0, 2] = (30, 20, 0.9), (10, 20, 0.9)  # neck and right shoulder: limb 0, red
    kp[1, 0, 4] = (20, 30, 0.9)  # a lone right wrist: its joint disc, no limb
    img = kp_lib.draw_openpose(kp, 48, 64, stick_width=4)
    assert img.dtype == np.uint8 and img.shape == (2, 48, 64, 3)
    assert img[0, 20, 20].tolist() == [153, 0, 0]  # the stick: 60% of OpenPose's red over black
    assert img[0, 20, 30].tolist() == [255, 34, 0]  # the neck's orange disc under the stick
    assert img[1, 30, 20].tolist() == [170, 255, 0]  # the wrist's colour
    assert not img[0, 40].any() and not img[1, 10].any()  # black elsewhere
    np.testing.assert_allclose(ingest.render_openpose(kp, 48, 64), records.uint8_to_pixels(
        kp_lib.draw_openpose(kp, 48, 64)))


def test_augment_track_scales_visible_bones_only():
    from dreamactor_jax.data import augment

    # A chain 0 -> 1 -> 2 -> 3 plus a second root 4; joint 2 is hidden in frame 1.
    parents = np.array([-1, 0, 1, 2, -1])
    kp = np.zeros((2, 1, 5, 3), np.float32)
    kp[:, 0, :, :2] = [[10, 10], [10, 20], [10, 30], [10, 40], [30, 10]]
    kp[:, 0, :, 2] = 1.0
    kp[1, 0, 2] = 0.0
    same, applied = augment.augment_track(np.random.default_rng(0), kp, parents, prob=0.0)
    assert not applied and np.array_equal(same, kp)
    out, applied = augment.augment_track(np.random.default_rng(0), kp, parents, prob=1.0)
    assert applied and np.array_equal(out[..., 2], kp[..., 2])
    assert not out[1, 0, 2].any()  # hidden stays hidden (zero)
    bones = np.diff(out[0, 0, :4, 1])
    assert not np.allclose(bones / bones[0], [1, 1, 1])  # the chain's bones were scaled differently
    for f in range(2):  # each frame's box of visible joints is kept
        vis = kp[f, 0, :, 2] > 0
        np.testing.assert_allclose(out[f, 0, vis, :2].min(0), kp[f, 0, vis, :2].min(0), atol=1e-4)
        np.testing.assert_allclose(out[f, 0, vis, :2].max(0), kp[f, 0, vis, :2].max(0), atol=1e-4)
    again, _ = augment.augment_track(np.random.default_rng(0), kp, parents, prob=1.0)
    np.testing.assert_array_equal(out, again)
    with pytest.raises(ValueError, match="parents-first"):
        augment.augment_track(np.random.default_rng(0), kp, np.array([1, -1, 1, 2, -1]), prob=1.0)


def test_records_pose_augmentation_rerenders_the_motion(ingested, tmp_path):
    import ml_collections

    from dreamactor_jax.data import pipeline
    from dreamactor_jax.data.sources import data_section

    _, out = ingested
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.data = data_section(source="records", records_dir=str(out), frames=5, height=8, width=10, channels=12,
                          text_len=4, batch_size=2, motion_masked_frames=0)
    codec = get_codec("space_to_depth", spatial_factor=2, latent_channels=12)
    plain = pipeline.config_dataset(c, text_dim=8, codec=codec)
    c.data.records_pose_augment_prob = 1.0
    aug = pipeline.config_dataset(c, text_dim=8, codec=codec)
    for i in range(2):  # same records, same order: only the motion changes
        a, b = plain[i], aug[i]
        np.testing.assert_array_equal(a["target"], b["target"])
        assert np.abs(a["motion"] - b["motion"]).max() > 0.1, i
        assert all(np.array_equal(aug[i][k], b[k]) for k in b)  # a draw is a function of the position
    assert np.abs(aug[0]["motion"] - aug[2]["motion"]).max() > 0  # epoch 2 draws afresh (4 records, batch 2)
    lat = tmp_path / "lat"
    precompute.precompute(str(out), str(lat), codec, text_encoder=TextEncoder(4, 8, 0))
    c.data.update(records_dir=str(lat), height=8, width=10)
    with pytest.raises(ValueError, match="records_pose_augment_prob=1.0 re-renders .* latents records"):
        pipeline.config_dataset(c, text_dim=8, codec=codec)


def test_precompute_writes_pose_augmented_variants(ingested, tmp_path):
    """Offline pose augmentation: each clip then K variants with re-rendered motion, the same on a rerun."""
    _, out = ingested
    codec = get_codec("space_to_depth", spatial_factor=2, latent_channels=12)
    src = records.RecordSource(str(out))
    lat = tmp_path / "lat"
    rep = precompute.precompute(str(out), str(lat), codec, text_encoder=TextEncoder(4, 8, 0), augment_variants=2)
    assert rep.records == 3 * len(src)
    got = records.RecordSource(str(lat))
    for i in range(len(src)):
        base, *variants = (got[3 * i + v] for v in range(3))
        want = codec.encode(records.uint8_to_pixels(src[i]["motion"])[None])[0]
        np.testing.assert_allclose(base["motion"], want, atol=1e-6)  # the original first, untouched
        for v in variants:
            np.testing.assert_array_equal(v["target"], base["target"])
            assert np.abs(v["motion"] - base["motion"]).max() > 0.1 and v["motion_id"] == base["motion_id"]
            assert not np.array_equal(v["keypoints"], base["keypoints"])
        assert np.abs(variants[0]["motion"] - variants[1]["motion"]).max() > 0  # two different draws
    again = precompute.precompute(str(out), str(tmp_path / "lat2"), codec, text_encoder=TextEncoder(4, 8, 0),
                                  augment_variants=2)
    assert again.records == rep.records
    for a, b in zip(sorted(os.listdir(lat)), sorted(os.listdir(tmp_path / "lat2"))):
        assert open(lat / a, "rb").read() == open(tmp_path / "lat2" / b, "rb").read()
    # Records without keypoints cannot be augmented: the error names the field.
    plain = tmp_path / "plain"
    records.write_records(str(plain / "c"), [{k: v for k, v in src[0].items() if k != "keypoints"}], 4)
    with pytest.raises(ValueError, match="'keypoints'"):
        precompute.precompute(str(plain), str(tmp_path / "lat3"), codec, augment_variants=1)


def _pixel_shards(tmp_path, n=7, shard_size=3):
    rng = np.random.default_rng(0)
    exs = [dict(kind="pixels", target=rng.integers(0, 256, (3, 6, 10, 3), dtype=np.uint8),
                reference=rng.integers(0, 256, (1, 6, 10, 3), dtype=np.uint8),
                motion=rng.integers(0, 256, (3, 6, 10, 3), dtype=np.uint8),
                motion_valid=np.array([1, 0, 1], np.float32), caption=f"clip {i}", identity_id=i,
                keypoints=rng.uniform(0, 9, (3, 1, 18, 3)).astype(np.float32)) for i in range(n)]
    return exs, records.write_records(str(tmp_path / "px" / "clips"), exs, shard_size)


def test_precompute_equals_codec_and_resumes(tmp_path):
    exs, paths = _pixel_shards(tmp_path)
    codec = get_codec("space_to_depth", spatial_factor=2, latent_channels=16)
    text = TextEncoder(length=4, dim=7, seed=0)
    out = str(tmp_path / "lat")
    r0 = precompute.precompute(str(tmp_path / "px"), out, codec, text_encoder=text, process_index=0,
                               process_count=2, batch_size=2)
    assert [os.path.basename(p) for p in r0.written] == [os.path.basename(paths[i]) for i in (0, 2)]
    r1 = precompute.precompute(str(tmp_path / "px"), out, codec, text_encoder=text, process_index=1,
                               process_count=2, batch_size=2)
    assert [os.path.basename(p) for p in r1.written] == [os.path.basename(paths[1])] and r0.records + r1.records == 7
    lat = records.RecordSource(out)
    assert len(lat) == 7 and lat.kind == "latents"
    for i, ex in enumerate(exs):
        r = lat[i]
        for k in records.VIDEO_FIELDS:
            np.testing.assert_allclose(r[k], codec.encode(records.uint8_to_pixels(ex[k])[None])[0], atol=1e-6)
        np.testing.assert_array_equal(r["text"], text(ex["caption"])[0])
        assert r["motion_valid"].tolist() == [1, 0, 1] and r["identity_id"] == i
        np.testing.assert_array_equal(r["keypoints"], ex["keypoints"])  # kept for synthesis and augmentation
    # Re-running finds everything complete; a lost shard (and a stale temporary) is redone alone.
    again = precompute.precompute(str(tmp_path / "px"), out, codec, text_encoder=text)
    assert not again.written and len(again.existing) == 3
    lost = os.path.join(out, os.path.basename(paths[1]))
    before = open(lost, "rb").read()
    os.remove(lost)
    open(lost + ".tmp-999", "wb").write(b"half")
    redo = precompute.precompute(str(tmp_path / "px"), out, codec, text_encoder=text)
    assert redo.written == [lost] and len(redo.existing) == 2 and not os.path.exists(lost + ".tmp-999")
    assert open(lost, "rb").read() == before


def test_precompute_skips_corrupt_records(tmp_path):
    exs, paths = _pixel_shards(tmp_path, n=3, shard_size=3)
    w = arm.ArrayRecordWriter(paths[0], "group_size:1")
    for i, ex in enumerate(exs):
        w.write(b"not an archive" if i == 1 else records.encode_record(ex))
    w.close()
    records.reset_skip_stats()
    codec = get_codec("space_to_depth", spatial_factor=2, latent_channels=16)
    rep = precompute.precompute(paths, str(tmp_path / "lat"), codec)
    assert rep.records == 2 and rep.corrupt == 1 and records.skip_stats()["corrupt_records"] == 1
    assert [records.RecordSource(str(tmp_path / "lat"))[i]["identity_id"] for i in range(2)] == [0, 2]


def test_launchers(inputs, tmp_path, repo_root):
    videos, poses = inputs
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(repo_root))
    run = lambda *args: subprocess.run([sys.executable, *args], env=env, cwd=str(repo_root), capture_output=True,
                                       text=True, timeout=120)
    a = run("launch/ingest.py", f"--videos={videos}", f"--poses={poses}", f"--out={tmp_path / 'px'}", "--frames=5",
            "--height=16", "--width=20", "--stride=4")
    assert a.returncode == 0 and "wrote 4 clips from 2 videos" in a.stdout, a.stderr[-2000:]
    b = run("launch/precompute.py", f"--src={tmp_path / 'px'}", f"--out={tmp_path / 'lat'}",
            "--codec=space_to_depth", "--process_index=0", "--process_count=1")
    assert b.returncode == 0 and "wrote 1 shards (4 records)" in b.stdout, b.stderr[-2000:]
    assert records.RecordSource(str(tmp_path / "lat")).spec["target"][1] == (5, 8, 10, 16)
