"""Pose extraction from RGB frames with RTMPose / DWPose ONNX models through onnxruntime (the ``pose`` extra).

Top-down, as DWPose and rtmlib run these models:

1. **People.** A YOLOX person detector gives boxes. Two ONNX layouts are read: mmdeploy's end-to-end export
   (outputs ``dets`` (1, N, 5) = x1, y1, x2, y2, score and ``labels`` (1, N)), and the raw YOLOX head that DWPose
   ships as ``yolox_l.onnx`` (one output (1, A, 5 + classes) over the 8/16/32-stride grids, decoded here and
   filtered with NMS). Its input is the frame letterboxed into the model's square (top-left, pad value 114),
   0-255 values, BGR (mmdet's YOLOX convention). Without a detector the whole frame is one box (single-person
   footage).
2. **Crops.** Each box becomes a centre and a scale padded by 1.25, widened to the pose model's aspect ratio,
   and is warped into the model's input (W, H) (bilinear), normalised with the ImageNet mean and std, RGB.
3. **Decoding.** The model's SimCC outputs ``simcc_x`` (N, K, W·r) and ``simcc_y`` (N, K, H·r): each joint's
   argmax along each axis divided by the split ratio r (2 for RTMPose and DWPose) is its crop coordinate, its
   confidence the smaller of the two maxima; both map back through the crop to frame pixels.

K = 17 is COCO-17 (RTMPose body models), K = 133 COCO-WholeBody (DWPose ``dw-ll_ucoco_384.onnx``: body, feet,
face, hands); :mod:`dreamactor_jax.data.keypoints` converts either to OpenPose-18 for rendering.

Nothing downloads: the weights are files the user gives (``launch/ingest.py --pose_model=... --detector=...``).
DWPose's pair is ``dw-ll_ucoco_384.onnx`` and ``yolox_l.onnx`` from the ``yzd-v/DWPose`` model repository on
the Hugging Face Hub; RTMPose's are in OpenMMLab's rtmpose ``onnx_sdk`` archives (mmpose's RTMPose README).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from dreamactor_jax.data import keypoints as kp_lib
from dreamactor_jax.data import video_io

MEAN = np.array([123.675, 116.28, 103.53], np.float32)  # ImageNet, RGB, 0-255
STD = np.array([58.395, 57.12, 57.375], np.float32)


def _ort():
    try:
        import onnxruntime
    except ImportError as e:  # the optional extra
        raise ImportError("pose extraction needs onnxruntime: pip install -e '.[pose]'") from e
    return onnxruntime


@dataclasses.dataclass(frozen=True)
class EstimatorConfig:
    """Settings of :class:`PoseEstimator` (defaults: DWPose's and rtmlib's).

    Attributes:
      padding: box scale factor around a detection.
      split_ratio: SimCC bins per input pixel.
      det_score: detections below it are dropped.
      nms_iou: overlap above which the lower-scoring box is dropped (raw YOLOX outputs).
      max_people: the highest-scoring detections kept per frame.
      person_class: the detector's person class (COCO: 0).
    """

    padding: float = 1.25
    split_ratio: float = 2.0
    det_score: float = 0.3
    nms_iou: float = 0.45
    max_people: int = 4
    person_class: int = 0


def box_to_center_scale(box_xyxy: np.ndarray, padding: float) -> tuple[np.ndarray, np.ndarray]:
    """(4,) box -> centre (2,) and padded size (2,)."""
    x1, y1, x2, y2 = np.asarray(box_xyxy, np.float32)[:4]
    return np.array([(x1 + x2) / 2, (y1 + y2) / 2], np.float32), np.array([x2 - x1, y2 - y1], np.float32) * padding


def fix_aspect(scale: np.ndarray, aspect_w_over_h: float) -> np.ndarray:
    """Widens the shorter side of ``scale`` (w, h) so that w / h equals the model input's."""
    w, h = float(scale[0]), float(scale[1])
    if w > h * aspect_w_over_h:
        h = w / aspect_w_over_h
    else:
        w = h * aspect_w_over_h
    return np.array([w, h], np.float32)


def crop(image_hw3: np.ndarray, center: np.ndarray, scale: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    """The region of ``image`` of size ``scale`` (w, h) around ``center`` resampled to ``size_wh`` (bilinear);
    outside the image is black."""
    from PIL import Image

    w_out, h_out = size_wh
    sx, sy = float(scale[0]) / w_out, float(scale[1]) / h_out
    x0, y0 = float(center[0]) - float(scale[0]) / 2, float(center[1]) - float(scale[1]) / 2
    # PIL's AFFINE samples the input at (a·u + b·v + c, d·u + e·v + f) for the output pixel centre (u, v), both in
    # continuous coordinates (pixel i spans [i, i + 1)): the crop's left edge x0 is output 0.
    coeffs = (sx, 0.0, x0, 0.0, sy, y0)
    img = Image.fromarray(np.ascontiguousarray(image_hw3, np.uint8))
    return np.asarray(img.transform((w_out, h_out), Image.Transform.AFFINE, coeffs, Image.Resampling.BILINEAR))


def crop_to_frame(xy_k2: np.ndarray, center: np.ndarray, scale: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    """Pixel indices in a :func:`crop` of ``size_wh`` -> pixel indices in the frame (pixel i's centre: i + 0.5)."""
    size = np.asarray(size_wh, np.float32)
    return (np.asarray(xy_k2, np.float32) + 0.5) * scale / size + center - scale / 2 - 0.5


def decode_simcc(simcc_x: np.ndarray, simcc_y: np.ndarray, split_ratio: float) -> np.ndarray:
    """(N, K, Wr), (N, K, Hr) -> (N, K, 3): crop-pixel x, y and confidence (min of the two maxima)."""
    x = np.argmax(simcc_x, axis=-1).astype(np.float32) / split_ratio
    y = np.argmax(simcc_y, axis=-1).astype(np.float32) / split_ratio
    conf = np.minimum(simcc_x.max(axis=-1), simcc_y.max(axis=-1)).astype(np.float32)
    return np.stack([x, y, conf], axis=-1)


def letterbox(image_hw3: np.ndarray, size_hw: tuple[int, int]) -> tuple[np.ndarray, float]:
    """The image scaled to fit ``size_hw`` at the top-left of a 114-grey canvas: ((H, W, 3) float32, ratio)."""
    from PIL import Image

    h, w = image_hw3.shape[:2]
    ratio = min(size_hw[0] / h, size_hw[1] / w)
    nh, nw = max(int(round(h * ratio)), 1), max(int(round(w * ratio)), 1)
    out = np.full((*size_hw, 3), 114.0, np.float32)
    resized = Image.fromarray(np.ascontiguousarray(image_hw3, np.uint8)).resize((nw, nh), Image.Resampling.BILINEAR)
    out[:nh, :nw] = np.asarray(resized, np.float32)
    return out, ratio


def nms(boxes_n4: np.ndarray, scores_n: np.ndarray, iou: float) -> np.ndarray:
    """Indices of the boxes kept by greedy non-maximum suppression, best first."""
    order = np.argsort(-scores_n, kind="stable")
    keep = []
    area = np.maximum(boxes_n4[:, 2] - boxes_n4[:, 0], 0) * np.maximum(boxes_n4[:, 3] - boxes_n4[:, 1], 0)
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(int(i))
        xy1 = np.maximum(boxes_n4[i, :2], boxes_n4[rest, :2])
        xy2 = np.minimum(boxes_n4[i, 2:4], boxes_n4[rest, 2:4])
        inter = np.prod(np.maximum(xy2 - xy1, 0), axis=1)
        order = rest[inter / np.maximum(area[i] + area[rest] - inter, 1e-9) <= iou]
    return np.array(keep, np.int64)


def decode_yolox(raw_ac: np.ndarray, size_hw: tuple[int, int], strides=(8, 16, 32)) -> tuple[np.ndarray, np.ndarray]:
    """A raw YOLOX head (A, 5 + classes) over the stride grids -> boxes (A, 4) xyxy and class scores (A, classes)
    in the letterboxed input's pixels (cell offsets and log sizes times the stride; objectness × class)."""
    grids, scales = [], []
    for s in strides:
        gh, gw = size_hw[0] // s, size_hw[1] // s
        yy, xx = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
        grids.append(np.stack([xx, yy], -1).reshape(-1, 2))
        scales.append(np.full((gh * gw, 1), s, np.float32))
    grid, stride = np.concatenate(grids).astype(np.float32), np.concatenate(scales)
    if len(grid) != len(raw_ac):
        raise ValueError(f"detector output has {len(raw_ac)} anchors; a {size_hw} YOLOX input has {len(grid)}")
    xy = (raw_ac[:, :2] + grid) * stride
    wh = np.exp(raw_ac[:, 2:4]) * stride
    boxes = np.concatenate([xy - wh / 2, xy + wh / 2], axis=1)
    return boxes, raw_ac[:, 4:5] * raw_ac[:, 5:]


class PoseEstimator:
    """``estimator(frame (H, W, 3) uint8 RGB) -> (P, K, 3)`` keypoints (x, y in frame pixels, confidence).

    Args:
      pose_model: an RTMPose / DWPose SimCC ONNX file (input (N, 3, H, W); outputs simcc_x, simcc_y).
      detector: a YOLOX ONNX file (end-to-end or raw head; see the module docstring), or None for one box
        covering the frame.
      cfg: see :class:`EstimatorConfig`.
      threads: onnxruntime intra-op threads (0: its default).
    """

    def __init__(self, pose_model: str, detector: str | None = None, cfg: EstimatorConfig = EstimatorConfig(),
                 threads: int = 0):
        ort = _ort()
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.cfg = cfg
        self.pose = self._session(ort, pose_model, opts, "pose model")
        shape = self.pose.get_inputs()[0].shape
        if len(shape) != 4 or not all(isinstance(d, int) for d in shape[2:]):
            raise ValueError(f"{pose_model}: pose model input shape {shape}; expected (N, 3, H, W) with fixed H, W")
        self.input_hw = (int(shape[2]), int(shape[3]))
        outs = self.pose.get_outputs()
        want = (self.input_hw[1] * cfg.split_ratio, self.input_hw[0] * cfg.split_ratio)
        if len(outs) != 2 or any(len(o.shape) != 3 for o in outs) or any(
                isinstance(o.shape[2], int) and o.shape[2] != w for o, w in zip(outs, want)):
            raise ValueError(f"{pose_model}: outputs {[(o.name, o.shape) for o in outs]}; a SimCC pose model has two, "
                             f"simcc_x (N, K, {want[0]:g}) and simcc_y (N, K, {want[1]:g}) for its "
                             f"{self.input_hw[1]}x{self.input_hw[0]} input at split ratio {cfg.split_ratio:g}")
        self.det = None if detector is None else self._session(ort, detector, opts, "detector")
        if self.det is not None:
            dshape = self.det.get_inputs()[0].shape
            if len(dshape) != 4 or not all(isinstance(d, int) for d in dshape[2:]):
                raise ValueError(f"{detector}: detector input shape {dshape}; expected (1, 3, H, W) fixed")
            self.det_hw = (int(dshape[2]), int(dshape[3]))
        self.num_joints: int | None = None

    @staticmethod
    def _session(ort, path: str, opts, what: str):
        try:
            return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own types for missing and corrupt files
            raise ValueError(f"{what} {path}: cannot be loaded by onnxruntime: {e}") from e

    def detect(self, image_hw3: np.ndarray) -> np.ndarray:
        """Person boxes (P, 5) = x1, y1, x2, y2, score in frame pixels, best first (the whole frame without a
        detector)."""
        h, w = image_hw3.shape[:2]
        if self.det is None:
            return np.array([[0, 0, w, h, 1.0]], np.float32)
        boxed, ratio = letterbox(image_hw3, self.det_hw)
        x = boxed[..., ::-1].transpose(2, 0, 1)[None].copy()  # BGR, NCHW, 0-255
        outs = self.det.run(None, {self.det.get_inputs()[0].name: x})
        c = self.cfg
        if len(outs) == 2:  # mmdeploy end-to-end: dets (1, N, 5), labels (1, N)
            dets, labels = outs[0][0], outs[1][0]
            dets = dets[(labels == c.person_class) & (dets[:, 4] >= c.det_score)]
        else:
            boxes, scores = decode_yolox(outs[0][0], self.det_hw)
            s = scores[:, c.person_class]
            sel = s >= c.det_score
            boxes, s = boxes[sel], s[sel]
            keep = nms(boxes, s, c.nms_iou)
            dets = np.concatenate([boxes[keep], s[keep, None]], axis=1)
        dets = dets[np.argsort(-dets[:, 4], kind="stable")][: c.max_people].astype(np.float32)
        dets[:, :4] /= ratio
        dets[:, [0, 2]] = dets[:, [0, 2]].clip(0, w)
        dets[:, [1, 3]] = dets[:, [1, 3]].clip(0, h)
        return dets

    def __call__(self, image_hw3: np.ndarray) -> np.ndarray:
        image = np.asarray(image_hw3)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"PoseEstimator: frame must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
        boxes = self.detect(image)
        if not len(boxes):
            return np.zeros((0, self.num_joints or 17, 3), np.float32)
        ih, iw = self.input_hw
        crops, geom = [], []
        for box in boxes:
            center, scale = box_to_center_scale(box, self.cfg.padding)
            scale = fix_aspect(scale, iw / ih)
            crops.append((crop(image, center, scale, (iw, ih)).astype(np.float32) - MEAN) / STD)
            geom.append((center, scale))
        x = np.stack(crops).transpose(0, 3, 1, 2).copy()
        simcc_x, simcc_y = self.pose.run(None, {self.pose.get_inputs()[0].name: x})
        kp = decode_simcc(simcc_x, simcc_y, self.cfg.split_ratio)
        for p, (center, scale) in enumerate(geom):
            kp[p, :, :2] = crop_to_frame(kp[p, :, :2], center, scale, (iw, ih))
        self.num_joints = kp.shape[1]
        return kp


def frame_openpose18(estimator, frame_hw3: np.ndarray, where: str = "pose estimator"
                     ) -> tuple[np.ndarray, str | None]:
    """The people ``estimator`` finds in one uint8 frame, in OpenPose-18 order ((P, 18, 3)), and the layout it
    returned them in (None when nobody is found). Raises ``KeypointFileError`` (naming ``where``) for an output
    of no known layout."""
    raw = np.asarray(estimator(frame_hw3), np.float32)
    if not raw.size:
        return np.zeros((0, 18, 3), np.float32), None
    fmt = kp_lib.detect_format(raw.shape[1], where)
    return kp_lib.to_openpose18(raw, fmt), fmt


def estimate_openpose18(estimator, video_thw3: np.ndarray) -> list[np.ndarray]:
    """Per frame of a [-1, 1] video, the people ``estimator`` finds, in OpenPose-18 order: [(P, 18, 3)]."""
    return [frame_openpose18(estimator, frame)[0] for frame in video_io.to_uint8(video_thw3)]
