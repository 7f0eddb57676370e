"""Procedural character data: determinism, exact cross-identity pairs, plans, splits, augmentation, text."""

import dataclasses

import numpy as np
import pytest

from dreamactor_jax.data import augment, schema
from dreamactor_jax.data.procedural import characters as chars
from dreamactor_jax.data.procedural import dataset, render
from dreamactor_jax.data.procedural import motion as motion_lib
from dreamactor_jax.data.text import TextEncoder, tokenize

# Tiny, odd, distinct sizes so a swapped H/W or T cannot hide.
CFG = dataset.ProceduralConfig(frames=9, height=24, width=40)


def _examples(cfg, split="train", n=6, start=0):
    return [dataset.make_example(split, i, cfg) for i in range(start, start + n)]


def test_deterministic_and_index_dependent():
    a, b = dataset.make_example("train", 3, CFG), dataset.make_example("train", 3, CFG)
    assert a.keys() == b.keys()
    for k, v in a.items():
        if isinstance(v, np.ndarray):
            np.testing.assert_array_equal(v, b[k], err_msg=k)
        else:
            assert v == b[k], k
    c = dataset.make_example("train", 4, CFG)
    assert not np.array_equal(a["video"], c["video"])
    other_seed = dataset.make_example("train", 3, dataclasses.replace(CFG, seed=1))
    assert not np.array_equal(a["video"], other_seed["video"])


def test_shapes_ranges_and_pose_render():
    t, h, w, s, j = CFG.frames, CFG.height, CFG.width, CFG.max_subjects, CFG.num_joints
    for ex in _examples(dataclasses.replace(CFG, two_subject_prob=0.5), n=6):
        for k in ("video", "pose_video", "cross_video", "cross_pose_video"):
            assert ex[k].shape == (t, h, w, 3) and ex[k].dtype == np.float32, k
            assert ex[k].min() >= -1.0 and ex[k].max() <= 1.0, k
        assert ex["reference"].shape == (h, w, 3)
        np.testing.assert_array_equal(ex["reference"], ex["video"][0])
        np.testing.assert_array_equal(ex["cross_reference"], ex["cross_video"][0])
        assert ex["keypoints"].shape == (t, s, j, 2) and ex["keypoint_mask"].shape == (s, j)
        n = ex["num_subjects"]
        assert ex["keypoint_mask"][:n].any(1).all() and not ex["keypoint_mask"][n:].any()
        assert (ex["identity_ids"][n:] == -1).all() and (ex["identity_ids"][:n] >= 0).all()
        # Pose images: black background, something drawn in every frame.
        pose = ex["pose_video"]
        assert (pose.reshape(t, -1, 3).max(-1) > -1.0).any(1).all()
        assert np.allclose(pose[:, 0, 0], -1.0) or np.allclose(pose[:, -1, -1], -1.0)
        # Every keypoint inside the frame lands on a drawn pixel (shared pixel convention).
        kp, mask = ex["keypoints"], ex["keypoint_mask"] > 0
        x, y = kp[..., 0], kp[..., 1]
        inside = mask[None] & (x >= 0) & (x < w) & (y >= 0) & (y < h)
        ti, si, ji = np.nonzero(inside)
        drawn = pose[ti, y[ti, si, ji].astype(int), x[ti, si, ji].astype(int)].max(-1)
        assert (drawn > -0.5).all()


def test_cross_identity_same_plan_and_shape_keypoints_equal_exactly():
    cfg = dataclasses.replace(CFG, cross_mode="appearance", two_subject_prob=0.3)
    diffs = []
    for ex in _examples(cfg, n=8):
        np.testing.assert_array_equal(ex["keypoints"], ex["cross_keypoints"])
        np.testing.assert_array_equal(ex["pose_video"], ex["cross_pose_video"])
        assert ex["body_plan"] == ex["cross_body_plan"]
        assert not set(ex["identity_ids"][ex["identity_ids"] >= 0]) & set(ex["cross_identity_ids"])
        diff = np.abs(ex["video"] - ex["cross_video"]).mean()
        assert diff > 0.03, diff
        diffs.append(diff)
    assert np.mean(diffs) > 0.25, diffs


@pytest.mark.parametrize("mode", ["shape", "any"])
def test_cross_identity_is_the_motion_on_the_cross_skeleton(mode):
    """The documented sense of "same motion": cross keypoints = pose(cross character, same motion)."""
    cfg = dataclasses.replace(CFG, cross_mode=mode)
    plans_differ = 0
    for i in range(5):
        ex = dataset.make_example("train", i, cfg)
        scene = dataset.sample_scene("train", i, cfg)
        for s, (c, m, pl) in enumerate(zip(scene.cross_characters, scene.motions, scene.placements)):
            posed = motion_lib.pose_subject(c, m, scene.times, pl, cfg.height)
            n = c.plan.num_joints
            np.testing.assert_array_equal(ex["cross_keypoints"][:, s, :n], posed.keypoints_tj2)
            src = scene.characters[s]
            if mode == "shape":
                assert c.plan is src.plan
            plans_differ += c.plan is not src.plan
        assert ex["motion_id"] == scene.motions[0].motion_id
        assert not np.array_equal(ex["keypoints"], ex["cross_keypoints"])  # another shape moves differently
    if mode == "any":
        assert plans_differ > 0


def test_each_body_plan_renders_and_differs():
    spec = motion_lib.sample_motion(2)  # a jump; the same motion drives every plan
    times = np.arange(5) / 8.0
    place = motion_lib.Placement(x_px=20.0, ground_px=21.0, scale=0.7)
    videos = {}
    for name in chars.PLAN_NAMES:
        c = chars.make_character(11, plan=name)
        posed = motion_lib.pose_subject(c, spec, times, place, 24)
        assert np.isfinite(posed.keypoints_tj2).all()
        video = render.render_scene([posed], c.appearance, 24, 40, place.ground_px)
        background = render.background_image(c.appearance, 24, 40, place.ground_px) * 2 - 1
        covered = (np.abs(video - background).max(-1) > 0.1).mean()
        assert 0.03 < covered < 0.6, (name, covered)
        videos[name] = video
    assert len({chars.PLANS[n].num_joints for n in chars.PLAN_NAMES}) >= 3
    names = list(videos)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert np.abs(videos[a] - videos[b]).mean() > 0.01, (a, b)


def test_retargeting_moves_corresponding_joints():
    """A wave raises the waving side's limb on a humanoid (arm) and on a quadruped (front paw)."""
    spec = next(motion_lib.sample_motion(i) for i in range(1, 500, 5) if motion_lib.sample_motion(i)["side"] > 0)
    for name, joint in (("humanoid", "r_wrist"), ("quadruped", "r_paw")):
        c = chars.make_character(0, plan=name, shape_from=0)
        frames = motion_lib.evaluate(spec, np.linspace(0, 1, 5))
        flex, abd = motion_lib.joint_angles(frames, c)
        pos, _ = motion_lib.forward_kinematics(c, flex, abd)
        rest, _ = motion_lib.forward_kinematics(c, np.zeros_like(flex), np.zeros_like(abd))
        j = c.plan.joint(joint)
        assert (pos[:, j, 1] > rest[:, j, 1] + 0.1).all(), name


def test_splits_hold_out_identities_and_motions():
    cfg = dataclasses.replace(CFG, frames=2, height=8, width=8, two_subject_prob=0.5)
    seen = {}
    for split in dataset.SPLITS:
        ids, motions = set(), set()
        for i in range(25):
            scene = dataset.sample_scene(split, i, cfg)
            ids |= {c.identity_id for c in scene.characters + scene.cross_characters}
            motions |= {m.motion_id for m in scene.motions}
        assert all(dataset.split_of("identity", x) == split for x in ids)
        assert all(dataset.split_of("motion", x) == split for x in motions)
        seen[split] = (ids, motions)
    for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
        assert not seen[a][0] & seen[b][0] and not seen[a][1] & seen[b][1]
    frac = np.mean([dataset.split_of("identity", x) == "train" for x in range(5000)])
    assert abs(frac - 0.8) < 0.03, frac
    with pytest.raises(ValueError, match="split"):
        dataset.make_example("dev", 0, cfg)


def test_pose_augmentation_statistics():
    """2000 draws: augmented fraction 0.3 +- 0.04 (about 4 binomial sd); every bone ratio in [0.8, 1.2]
    before normalisation; the clip's box per subject unchanged after it."""
    ex = dataset.make_example("train", 0, dataclasses.replace(CFG, two_subject_prob=1.0))
    kp, parents, mask = ex["keypoints"], ex["parents"], ex["keypoint_mask"]
    rng = np.random.default_rng(0)
    applied = 0
    bone = (mask > 0) & (parents >= 0)
    orig_len = np.linalg.norm(kp - kp[:, np.arange(2)[:, None], np.maximum(parents, 0)], axis=-1)
    measurable = bone[None] & (orig_len > 1e-2)
    lo_o, hi_o = augment.keypoint_bbox(kp, mask, per_frame=False)
    for _ in range(2000):
        out, info = augment.augment_pose(rng, kp, parents, mask)
        if not info["applied"]:
            np.testing.assert_array_equal(out, kp)
            continue
        applied += 1
        scaled = info["scaled"]
        new_len = np.linalg.norm(scaled - scaled[:, np.arange(2)[:, None], np.maximum(parents, 0)], axis=-1)
        ratio = new_len[measurable] / orig_len[measurable]
        assert ratio.min() >= 0.8 - 1e-4 and ratio.max() <= 1.2 + 1e-4
        lo, hi = augment.keypoint_bbox(out, mask, per_frame=False)
        np.testing.assert_allclose(lo, lo_o, atol=1e-3)
        np.testing.assert_allclose(hi, hi_o, atol=1e-3)
        assert (out[:, mask == 0] == 0).all()
    assert abs(applied / 2000 - 0.3) < 0.04, applied


def test_per_frame_bbox_normalisation():
    ex = dataset.make_example("train", 1, CFG)
    kp, parents, mask = ex["keypoints"], ex["parents"], ex["keypoint_mask"]
    out, info = augment.augment_pose(np.random.default_rng(1), kp, parents, mask, prob=1.0, per_frame_bbox=True)
    assert info["applied"]
    for got, want in zip(augment.keypoint_bbox(out, mask, True), augment.keypoint_bbox(kp, mask, True)):
        n = ex["num_subjects"]
        np.testing.assert_allclose(got[:, :n], want[:, :n], atol=1e-3)


def test_pose_augmentation_in_examples():
    cfg = dataclasses.replace(CFG, pose_augment_prob=1.0, cross_mode="appearance")
    ex = dataset.make_example("train", 2, cfg)
    assert ex["pose_augmented"]
    assert not np.array_equal(ex["pose_keypoints"], ex["keypoints"])
    assert not np.array_equal(ex["pose_video"], ex["cross_pose_video"])  # cross pose is never augmented


def test_mask_first_frames_and_prepend():
    motion = np.random.default_rng(0).standard_normal((7, 3, 5, 2)).astype(np.float32) + 3.0
    masked, valid = augment.mask_first_frames(motion, 3)
    assert (masked[:3] == 0).all() and (masked[3:] == motion[3:]).all()
    np.testing.assert_array_equal(valid, [0, 0, 0, 1, 1, 1, 1])
    assert (motion[:3] != 0).all()  # the input is not modified
    batched, valid_b = augment.mask_first_frames(motion[None], 2, time_axis=1)
    assert (batched[0, :2] == 0).all() and (batched[0, 2:] == motion[2:]).all() and valid_b.sum() == 5
    everything, v_all = augment.mask_first_frames(motion, 99)
    assert (everything == 0).all() and v_all.sum() == 0
    ext, v_ext = augment.prepend_zero_frames(motion, 4)
    assert ext.shape == (11, 3, 5, 2) and (ext[:4] == 0).all() and (ext[4:] == motion).all()
    np.testing.assert_array_equal(v_ext, [0] * 4 + [1] * 7)
    assert augment.frames_per_second(16) == 16 and augment.frames_per_second(8, 0.5) == 4


def test_captions_mention_plan_and_colour():
    cfg = dataclasses.replace(CFG, cross_mode="any")
    for ex in _examples(cfg, n=8):
        scene = dataset.sample_scene(ex["split"], ex["index"], cfg)
        for caption, people in ((ex["caption"], scene.characters), (ex["cross_caption"], scene.cross_characters)):
            for c in people:
                assert c.plan.noun in caption and c.appearance.colour_name in caption, caption
        assert chars.PLANS[ex["body_plan"]].noun in ex["caption"]
    c = chars.make_character(5, plan="quadruped")
    assert chars.describe(c).startswith(("a ", "an ")) and "quadruped" in chars.describe(c)


def test_text_encoder():
    enc = TextEncoder(length=8, dim=32, seed=0)
    caption = "a blue quadruped with a striped tail jumps"
    e1, m1 = enc(caption)
    e2, m2 = TextEncoder(length=8, dim=32, seed=0)(caption)
    np.testing.assert_array_equal(e1, e2)
    assert e1.shape == (8, 32) and e1.dtype == np.float32 and m1.dtype == np.float32
    np.testing.assert_array_equal(m1, np.ones(8))
    short, mask = enc("A red humanoid, waves!")
    np.testing.assert_array_equal(mask, [1, 1, 1, 1, 0, 0, 0, 0])
    assert (short[4:] == 0).all() and np.abs(short[:4]).sum() > 0
    assert tokenize("A red humanoid, waves!") == ["a", "red", "humanoid", "waves"]
    assert not np.allclose(enc("a red humanoid waves")[0], enc("a blue humanoid waves")[0])
    assert not np.allclose(TextEncoder(8, 32, seed=1)(caption)[0], e1)
    empty, empty_mask = enc("")
    assert (empty == 0).all() and (empty_mask == 0).all()
    batch, batch_mask = TextEncoder(length=5, dim=6).encode_batch([caption, "hi"])
    assert batch.shape == (2, 5, 6) and batch_mask.tolist() == [[1] * 5, [1, 0, 0, 0, 0]]


def test_training_fields_follow_schema_and_source():
    source = dataset.ProceduralSource("validation", CFG, length=10)
    assert len(source) == 10
    ex = source[7]
    enc = TextEncoder(length=8, dim=32)
    for stage in (1, 2):
        fields = dataset.training_fields(ex, stage=stage, text_encoder=enc, masked_frames=3)
        batch = {k: v[None] for k, v in fields.items()}
        t, h, w = CFG.frames, CFG.height, CFG.width
        schema.validate_batch(batch, schema.batch_shapes(1, t, h, w, 3, 8, 32))
        assert (fields["motion"][:3] == 0).all() and fields["motion_valid"].tolist() == [0] * 3 + [1] * (t - 3)
    with pytest.raises(ValueError, match="cross_mode"):
        dataset.ProceduralConfig(cross_mode="nope")


def test_travel_moves_subjects_across_the_frame_and_keeps_pairs_exact():
    still = dataset.ProceduralConfig(frames=5, fps=4.0, max_subjects=1)
    moving = dataclasses.replace(still, travel=(0.3, 0.5), cross_mode="appearance")
    shifts = []
    for i in range(8):
        e = dataset.make_example("test", i, moving)
        x = e["keypoints"][:, 0, :, 0][:, e["keypoint_mask"][0] > 0].mean(-1)  # mean joint x per frame
        shifts.append(abs(x[-1] - x[0]) / moving.width)
        np.testing.assert_array_equal(e["cross_keypoints"], e["keypoints"])  # the cross clip travels identically
    # Travel crosses 30-50% of the width on top of the motion's own, small, displacement.
    assert min(shifts) > 0.2 and np.mean(shifts) > 0.3, shifts
    with pytest.raises(ValueError, match="travel"):
        dataset.ProceduralConfig(travel=(0.5, 0.2))
    # Off by default: examples are bit for bit what they were without the field.
    a, b = dataset.make_example("train", 3, still), dataset.make_example("train", 3, dataset.ProceduralConfig(
        frames=5, fps=4.0, max_subjects=1, travel=(0.0, 0.0)))
    np.testing.assert_array_equal(a["video"], b["video"])
