"""`cnndsl compile --to onnx --nms`: a detector's ONNX export with its post-processing in
the graph, so that onnxruntime returns the final boxes.

The exported network's first output is the decoded detections, B x (4 + C) x A (x, y, w, h
in input pixels, then the class scores). Appended here, as training's `postprocess`
(training/tasks/detect.py) does it: each anchor keeps its best class only (the other
classes' scores set to 0), ONNX NonMaxSuppression per class (center_point_box=1 takes x, y,
w, h as they are) above the score threshold, then the boxes as corners. The output
`nms_detections` is N x 7: image index, x1, y1, x2, y2, score, class, for every image of the
batch; `max_detections` is NonMaxSuppression's bound per class.
"""

from __future__ import annotations

import numpy as np

OUTPUT = "nms_detections"


def with_nms(model, classes: int, *, conf: float = 0.25, iou: float = 0.7,
             max_detections: int = 300):
    """`model` (an onnx.ModelProto whose first output is the decoded detections) with
    NMS appended; its one output is `nms_detections` (N x 7)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    graph = model.graph
    decoded = graph.output[0].name
    p = "cnndsl_nms_"

    def const(name: str, value, dtype=np.float32):
        graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype), p + name))
        return p + name

    nodes = [
        # boxes B x A x 4 (cx, cy, w, h); scores B x C x A
        helper.make_node("Slice", [decoded, const("b0", [0], np.int64),
                                   const("b4", [4], np.int64), const("ax1", [1], np.int64)],
                         [p + "xywh"]),
        helper.make_node("Transpose", [p + "xywh"], [p + "boxes"], perm=[0, 2, 1]),
        helper.make_node("Slice", [decoded, const("s4", [4], np.int64),
                                   const("end", [4 + classes], np.int64), p + "ax1"],
                         [p + "all_scores"]),
        # each anchor's best class alone
        helper.make_node("ReduceMax", [p + "all_scores", p + "ax1"], [p + "best"],
                         keepdims=1),
        helper.make_node("Equal", [p + "all_scores", p + "best"], [p + "is_best"]),
        helper.make_node("Cast", [p + "is_best"], [p + "best_mask"], to=TensorProto.FLOAT),
        helper.make_node("Mul", [p + "all_scores", p + "best_mask"], [p + "scores"]),
        helper.make_node("NonMaxSuppression",
                         [p + "boxes", p + "scores",
                          const("max", [max_detections], np.int64),
                          const("iou", [iou]), const("conf", [conf])],
                         [p + "selected"], center_point_box=1),
        # selected: N x 3 (image, class, anchor)
        helper.make_node("Slice", [p + "selected", const("c0", [0], np.int64),
                                   const("c1", [1], np.int64), p + "ax1"], [p + "image"]),
        helper.make_node("Slice", [p + "selected", p + "c1", const("c2", [2], np.int64),
                                   p + "ax1"], [p + "class"]),
        helper.make_node("Slice", [p + "selected", p + "c2", const("c3", [3], np.int64),
                                   p + "ax1"], [p + "anchor"]),
        helper.make_node("Concat", [p + "image", p + "anchor"], [p + "box_index"], axis=1),
        helper.make_node("GatherND", [p + "boxes", p + "box_index"], [p + "picked"]),
        helper.make_node("Concat", [p + "image", p + "class", p + "anchor"],
                         [p + "score_index"], axis=1),
        helper.make_node("GatherND", [p + "scores", p + "score_index"], [p + "score"]),
        helper.make_node("Unsqueeze", [p + "score", p + "ax1"], [p + "score_col"]),
        # corners: centre -/+ half the size
        helper.make_node("Slice", [p + "picked", p + "b0", const("two", [2], np.int64),
                                   p + "ax1"], [p + "centre"]),
        helper.make_node("Slice", [p + "picked", p + "two", p + "b4", p + "ax1"],
                         [p + "size"]),
        helper.make_node("Mul", [p + "size", const("half", [0.5])], [p + "half_size"]),
        helper.make_node("Sub", [p + "centre", p + "half_size"], [p + "top_left"]),
        helper.make_node("Add", [p + "centre", p + "half_size"], [p + "bottom_right"]),
        helper.make_node("Cast", [p + "image"], [p + "image_f"], to=TensorProto.FLOAT),
        helper.make_node("Cast", [p + "class"], [p + "class_f"], to=TensorProto.FLOAT),
        helper.make_node("Concat", [p + "image_f", p + "top_left", p + "bottom_right",
                                    p + "score_col", p + "class_f"], [OUTPUT], axis=1),
    ]
    graph.node.extend(nodes)
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT,
                                                      ["detections", 7]))
    onnx.checker.check_model(model)
    return model


def rows_to_dicts(rows: np.ndarray, images: int) -> list[dict]:
    """`nms_detections` (N x 7) -> per image {boxes, scores, labels} (as `postprocess` gives),
    each image's rows by score, highest first."""
    import torch
    rows = torch.from_numpy(np.asarray(rows, np.float32))
    result = []
    for b in range(images):
        mine = rows[rows[:, 0] == b]
        mine = mine[mine[:, 5].argsort(descending=True, stable=True)]
        result.append({"boxes": mine[:, 1:5], "scores": mine[:, 5],
                       "labels": mine[:, 6].long()})
    return result
