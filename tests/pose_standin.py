"""Tiny ONNX graphs that stand in for RTMPose / DWPose and YOLOX (no real weights can be had offline).

The "pose model" takes the normalised NCHW crop and returns SimCC vectors (split ratio 2) that peak, for every
joint, at the brightest column and row of the crop. The "detectors" return fixed outputs. Used by
tests/test_pose_estimator.py and tests/test_real_curriculum.py.
"""

import numpy as np
import onnx
from onnx import TensorProto, helper

IN_H, IN_W = 64, 48  # the stand-in pose model's input (RTMPose's is 256 x 192: same aspect)


def _save(graph, path):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def _simcc_branch(src, axis, joints, out):
    """Max over ``axis`` of (N,1,H,W) -> (N,1,L) -> every joint, each bin twice: (N, joints, 2L)."""
    return [
        helper.make_node("ReduceMax", [src], [f"{out}_m"], axes=[axis], keepdims=0),
        helper.make_node("Unsqueeze", [f"{out}_m", "ax3"], [f"{out}_u"]),
        helper.make_node("Tile", [f"{out}_u", "reps"], [f"{out}_t"]),
        helper.make_node("Reshape", [f"{out}_t", "shape"], [out]),
    ]


def pose_model(path, joints=17):
    nodes = [
        helper.make_node("ReduceMean", ["input"], ["gray"], axes=[1], keepdims=1),
        helper.make_node("Sigmoid", ["gray"], ["prob"]),
        *_simcc_branch("prob", 2, joints, "simcc_x"),
        *_simcc_branch("prob", 3, joints, "simcc_y"),
    ]
    inits = [helper.make_tensor("ax3", TensorProto.INT64, [1], [3]),
             helper.make_tensor("reps", TensorProto.INT64, [4], [1, joints, 1, 2]),
             helper.make_tensor("shape", TensorProto.INT64, [3], [0, joints, -1])]
    graph = helper.make_graph(
        nodes, "simcc_standin",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, IN_H, IN_W])],
        [helper.make_tensor_value_info("simcc_x", TensorProto.FLOAT, ["N", joints, 2 * IN_W]),
         helper.make_tensor_value_info("simcc_y", TensorProto.FLOAT, ["N", joints, 2 * IN_H])],
        inits)
    return _save(graph, path)


def constant_graph(path, name, size, outputs):
    """A detector that ignores its (1, 3, size, size) input and returns ``outputs`` (name -> array)."""
    nodes, outs = [helper.make_node("Shape", ["input"], ["unused"])], []
    for k, arr in outputs.items():
        dtype = TensorProto.INT64 if arr.dtype == np.int64 else TensorProto.FLOAT
        nodes.append(helper.make_node("Constant", [], [k], value=helper.make_tensor(
            f"{k}_v", dtype, arr.shape, arr.ravel().tolist())))
        outs.append(helper.make_tensor_value_info(k, dtype, list(arr.shape)))
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                          [1, 3, size, size])], outs)
    return _save(graph, path)


def frame_with_marker(h, w, x, y, base=None):
    img = np.zeros((h, w, 3), np.uint8) if base is None else base.copy()
    img[y - 1 : y + 2, x - 1 : x + 2] = 255
    return img
