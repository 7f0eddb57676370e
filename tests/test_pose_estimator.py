"""Pose extraction (data/pose_estimator.py) with onnxruntime on tiny ONNX graphs built here.

No real RTMPose / DWPose weights can be had offline, so the graphs stand in for them with the same interface:
the "pose model" takes the normalised NCHW crop and returns SimCC vectors (split ratio 2) that peak, for every
joint, at the brightest column and row of the crop; the "detectors" return fixed boxes in the letterboxed input,
in mmdeploy's end-to-end layout and as a raw YOLOX head. A white marker in a frame must then come back as every
joint's position in frame pixels, which holds only if the letterbox, box padding, aspect fix, affine crop,
normalisation, SimCC decoding and the map back to the frame are all right.
"""

import os

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from pose_standin import constant_graph, frame_with_marker, pose_model  # noqa: E402

from dreamactor_jax.data import ingest as ingest_lib  # noqa: E402
from dreamactor_jax.data import pose_estimator as pe  # noqa: E402
from dreamactor_jax.data import records, video_io  # noqa: E402


def test_crop_and_its_inverse_agree_to_a_fraction_of_a_pixel():
    # A bright pixel cropped at 4x zoom (bilinear upsampling peaks at the pixel's centre) maps back onto itself.
    img = np.zeros((40, 60, 3), np.uint8)
    img[13, 37] = 255
    center, scale = np.array([35.0, 15.0], np.float32), np.array([12.0, 16.0], np.float32)
    out = pe.crop(img, center, scale, (48, 64))[..., 0].astype(np.float32)
    # The peak spans the 2 x 2 crop pixels around the source pixel's centre; their mean maps back exactly.
    ys, xs = np.nonzero(out >= out.max() - 1)
    back = pe.crop_to_frame(np.array([[xs.mean(), ys.mean()]]), center, scale, (48, 64))
    np.testing.assert_allclose(back, [[37, 13]], atol=0.15)


def test_whole_frame_box_finds_the_marker(tmp_path):
    est = pe.PoseEstimator(pose_model(str(tmp_path / "pose.onnx")))
    kp = est(frame_with_marker(120, 90, 40, 70))
    assert kp.shape == (1, 17, 3)
    np.testing.assert_allclose(kp[0, :, 0], 40, atol=2.5)
    np.testing.assert_allclose(kp[0, :, 1], 70, atol=2.5)
    assert (kp[0, :, 2] > 0.7).all()  # sigmoid of the marker's normalised brightness


def test_end_to_end_detector_boxes_are_unletterboxed_and_filtered(tmp_path):
    # Frame 100 x 200 into a 64 x 64 detector: ratio 0.32. The person box (frame pixels 120..180, 20..90) is
    # given in letterboxed pixels; a higher-scoring non-person box elsewhere must be dropped.
    ratio = 0.32
    person = np.array([120, 20, 180, 90]) * ratio
    dets = np.array([[[*person, 0.9], [0, 0, 20, 20, 0.95]]], np.float32)
    labels = np.array([[0, 3]], np.int64)
    det = constant_graph(str(tmp_path / "det.onnx"), "e2e", 64, {"dets": dets, "labels": labels})
    est = pe.PoseEstimator(pose_model(str(tmp_path / "pose.onnx")), det)
    boxes = est.detect(np.zeros((100, 200, 3), np.uint8))
    np.testing.assert_allclose(boxes, [[120, 20, 180, 90, 0.9]], atol=1e-3)
    # A second marker outside the person's box must not pull the joints.
    img = frame_with_marker(100, 200, 150, 40, base=frame_with_marker(100, 200, 20, 80))
    kp = est(img)
    assert kp.shape == (1, 17, 3)
    np.testing.assert_allclose(kp[0, :, :2], np.broadcast_to([150, 40], (17, 2)), atol=2.5)


def _raw_yolox(boxes_scores, size=64, classes=2):
    """A raw YOLOX head (1, A, 5 + classes) with the given (x1, y1, x2, y2, score) boxes at stride-8 cells."""
    anchors = sum((size // s) ** 2 for s in (8, 16, 32))
    raw = np.zeros((anchors, 5 + classes), np.float32)
    raw[:, 2:4] = -5.0  # tiny boxes, objectness 0 elsewhere
    g = size // 8
    for x1, y1, x2, y2, score in boxes_scores:
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        gx, gy = int(cx // 8), int(cy // 8)
        a = gy * g + gx
        raw[a, :4] = [cx / 8 - gx, cy / 8 - gy, np.log((x2 - x1) / 8), np.log((y2 - y1) / 8)]
        raw[a, 4], raw[a, 5] = score, 1.0
    return raw[None]


def test_raw_yolox_head_is_decoded_and_suppressed(tmp_path):
    # Frame 64 x 64 (ratio 1). Two overlapping person boxes (NMS keeps the better), one far box below threshold.
    raw = _raw_yolox([(10, 10, 40, 60, 0.9), (18, 12, 46, 62, 0.8), (50, 50, 60, 60, 0.1)])  # IoU 0.57
    det = constant_graph(str(tmp_path / "yolox.onnx"), "raw", 64, {"output": raw})
    est = pe.PoseEstimator(pose_model(str(tmp_path / "pose.onnx")), det)
    boxes = est.detect(np.zeros((64, 64, 3), np.uint8))
    np.testing.assert_allclose(boxes, [[10, 10, 40, 60, 0.9]], atol=1e-3)
    kp = est(frame_with_marker(64, 64, 25, 30))
    np.testing.assert_allclose(kp[0, :, :2], np.broadcast_to([25, 30], (17, 2)), atol=1.5)


def test_real_photo_through_the_pipeline(tmp_path):
    """scikit-image's astronaut photo (a real photo of a person, 512 x 512) with a marker on her shoulder: the
    stand-in model finds it through the real pre- and post-processing (a real estimator would find her joints)."""
    data = pytest.importorskip("skimage.data")
    photo = data.astronaut()
    assert photo.shape == (512, 512, 3) and photo.dtype == np.uint8
    # The marker must be the brightest spot of the crop, which is ~13x smaller than the photo: the photo dimmed
    # to a quarter, a 25 x 25 white square on her shoulder (centre x 200, y 300).
    img = photo // 4
    img[288:313, 188:213] = 255
    kp = pe.PoseEstimator(pose_model(str(tmp_path / "pose.onnx"), joints=133))(img)
    assert kp.shape == (1, 133, 3)
    # Within one crop pixel (512 · 1.25 / 48 = 13.3 frame pixels): the stand-in's argmax is the first bin of the
    # square's flat top, its top-left edge.
    np.testing.assert_allclose(kp[0, :, :2], np.broadcast_to([200, 300], (133, 2)), atol=13.3)


def test_bad_model_files_are_named(tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not an onnx file")
    with pytest.raises(ValueError, match="broken.onnx"):
        pe.PoseEstimator(str(bad))
    det = constant_graph(str(tmp_path / "det.onnx"), "e2e", 64, {"dets": np.zeros((1, 1, 5), np.float32),
                                                                  "labels": np.zeros((1, 1), np.int64)})
    with pytest.raises(ValueError, match="det.onnx: outputs .*a SimCC pose model"):
        pe.PoseEstimator(det)  # a detector given as the pose model
    with pytest.raises(ValueError, match="uint8"):
        pe.PoseEstimator(pose_model(str(tmp_path / "pose.onnx")))(np.zeros((8, 8, 3), np.float32))


def test_ingest_extracts_poses_from_videos_without_keypoint_files(tmp_path):
    """A moving marker in an mp4 with no keypoint file: the records' keypoints follow it; a video where the
    detector finds nobody is skipped as no_person."""
    videos = tmp_path / "videos"
    videos.mkdir()
    xs = np.linspace(12, 52, 8).round().astype(int)
    clip = np.stack([frame_with_marker(64, 64, int(x), 32) for x in xs])
    video_io.write_video(str(videos / "dot.mp4"), clip, fps=8, crf=0)
    est = pe.PoseEstimator(pose_model(str(tmp_path / "pose.onnx")))
    cfg = ingest_lib.IngestConfig(frames=4, height=64, width=64)
    report = ingest_lib.ingest(str(videos), "", str(tmp_path / "out"), cfg, estimator=est)
    assert report.clips == 2 and not report.skipped
    src = records.RecordSource(str(tmp_path / "out"))
    recs = [src[i] for i in range(len(src))]
    kp = np.concatenate([r["keypoints"] for r in recs])  # (8, S, 18, 3) OpenPose-18 from COCO-17
    np.testing.assert_allclose(kp[:, 0, :, 0], np.broadcast_to(xs[:, None], (8, 18)), atol=2.5)
    np.testing.assert_allclose(kp[:, 0, :, 1], 32, atol=2.5)
    assert (kp[:, 1:] == 0).all()  # one person box: the other slots are empty
    assert recs[0]["motion"].max() > 0  # the skeleton is drawn

    # The same video, a detector that never fires: nobody, skipped with its reason; poses dir absent.
    det = constant_graph(str(tmp_path / "none.onnx"), "e2e", 64, {"dets": np.zeros((1, 1, 5), np.float32),
                                                                   "labels": np.zeros((1, 1), np.int64)})
    est2 = pe.PoseEstimator(pose_model(str(tmp_path / "pose.onnx")), det)
    video_io.write_video(str(videos / "empty.mp4"), clip, fps=8)
    os.remove(videos / "dot.mp4")
    with pytest.raises(ValueError, match="no_person"):
        ingest_lib.ingest(str(videos), str(tmp_path / "missing"), str(tmp_path / "out2"), cfg, estimator=est2)
