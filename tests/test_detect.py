"""Object detection (`task: detect`): the head found in the spec, YOLOv8's loss against
Ultralytics' own and by hand, post-processing, training, eval and ONNX export."""

import math
import sys
import types
from pathlib import Path

import pytest
import torch

import cnndsl
from cnndsl.diagnostics import CnnError
from cnndsl.training import detloss
from cnndsl.training.tasks import detect

ROOT = Path(__file__).resolve().parent.parent
SMALL = ROOT / "specs" / "yolo_small.cnn"


def _ultralytics_loss(classes: int, reg_max: int, strides):
    from ultralytics.utils.loss import v8DetectionLoss

    class Model(torch.nn.Module):  # what v8DetectionLoss reads of a DetectionModel
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(1))
            self.args = types.SimpleNamespace(box=7.5, cls=0.5, dfl=1.5)
            self.model = [types.SimpleNamespace(stride=torch.tensor(strides, dtype=torch.float),
                                                nc=classes, reg_max=reg_max)]
    return v8DetectionLoss(Model())


def _grid(sizes, strides):
    anchors = torch.cat([torch.stack(torch.meshgrid(torch.arange(w) + 0.5,
                                                    torch.arange(h) + 0.5, indexing="xy"),
                                     -1).reshape(-1, 2) for h, w in sizes])
    per_anchor = torch.cat([torch.full((h * w, 1), float(s))
                            for (h, w), s in zip(sizes, strides)])
    return anchors, per_anchor


def test_loss_equals_ultralytics_v8_detection_loss():
    """The same predictions and boxes through Ultralytics' v8DetectionLoss and ours: the
    same loss (ours is per image: Ultralytics multiplies by the batch) and gradients."""
    torch.manual_seed(0)
    classes, reg_max, batch = 3, 16, 2
    sizes, strides = [(8, 8), (4, 4), (2, 2)], [8, 16, 32]
    count = sum(h * w for h, w in sizes)
    dist = torch.randn(batch, 4 * reg_max, count, requires_grad=True)
    logits = torch.randn(batch, classes, count, requires_grad=True)
    rows = torch.tensor([[0, 1, 4, 6, 30, 40], [0, 2, 20, 20, 60, 50],
                         [1, 0, 10, 12, 14, 30], [1, 2, 33, 2, 63, 20]])
    xywh = torch.cat([(rows[:, 2:4] + rows[:, 4:6]) / 2, rows[:, 4:6] - rows[:, 2:4]], 1) / 64
    theirs, _ = _ultralytics_loss(classes, reg_max, strides)(
        {"boxes": dist, "scores": logits, "feats": [torch.zeros(batch, 1, h, w)
                                                    for h, w in sizes]},
        {"batch_idx": rows[:, 0].float(), "cls": rows[:, 1].float(), "bboxes": xywh.float()})
    theirs.sum().backward()
    their_grads = dist.grad.clone(), logits.grad.clone()
    dist.grad = logits.grad = None

    targets = torch.full((batch, 3, 5), -1.0)  # padded past each image's boxes
    targets[0, :2] = rows[:2, 1:].float()
    targets[1, :2] = rows[2:, 1:].float()
    anchors, per_anchor = _grid(sizes, strides)
    total, den = detloss.DetectionLoss(classes)(
        logits.transpose(1, 2), dist.view(batch, 4, reg_max, count).permute(0, 3, 1, 2),
        anchors, per_anchor, targets)
    ours = total / den * batch
    assert float(ours.detach()) == pytest.approx(float(theirs.sum().detach()), rel=1e-5)
    ours.backward()
    torch.testing.assert_close(dist.grad, their_grads[0], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(logits.grad, their_grads[1], rtol=1e-4, atol=1e-6)


def _one_anchor(targets, reg_max=4):
    bins = torch.zeros(1, 1, 4, reg_max, requires_grad=True)
    logits = torch.zeros(1, 1, 1, requires_grad=True)
    loss = detloss.DetectionLoss(1)
    total, den = loss(logits, bins, torch.tensor([[0.5, 0.5]]), torch.tensor([[8.0]]),
                      targets)
    return total, den, bins, logits, loss


def test_one_anchor_one_box_by_hand():
    """One anchor at (4, 4) px (cell 0.5, 0.5, stride 8), one box (0, 0)-(8, 8), logits all
    0: the predicted sides are the mean of 4 bins, 1.5 cells, so the box is (-1, -1)-(2, 2)
    cells: IoU 1/9, same centre and shape, so CIoU 1/9 too. The anchor is assigned; its
    target score is the CIoU scaled by its alignment a = sigmoid(0)^0.5 x CIoU^6 over
    a + 1e-9 (the assigner's eps, as Ultralytics'), t = 1/9 x a / (a + 1e-9). BCE(0, t) is
    ln 2 whatever t; box: (1 - CIoU) t; DFL: each true side, 0.5 cell, lies halfway between
    bins 0 and 1: -ln(1/4) t. The denominator is t, counted as at least 1."""
    targets = torch.tensor([[[0.0, 0.0, 0.0, 8.0, 8.0]]])
    total, den, _, _, loss = _one_anchor(targets)
    ciou = 1 / 9
    align = math.sqrt(0.5) * ciou ** 6
    score = ciou * align / (align + 1e-9)
    assert float(den) == 1.0
    assert loss.parts["box"] == pytest.approx((1 - ciou) * score, rel=1e-5)
    assert loss.parts["cls"] == pytest.approx(math.log(2), rel=1e-6)
    assert loss.parts["dfl"] == pytest.approx(math.log(4) * score, rel=1e-6)
    assert float(total.detach()) == pytest.approx(7.5 * (1 - ciou) * score + 0.5 * math.log(2)
                                         + 1.5 * math.log(4) * score, rel=1e-5)


def test_gradients_only_where_assigned():
    """Padding rows change nothing; an unassigned anchor's box bins get no gradient (its
    class logits do: they learn `background`)."""
    torch.manual_seed(1)
    classes, reg_max = 2, 16
    sizes, strides = [(8, 8), (4, 4)], [8, 16]
    anchors, per_anchor = _grid(sizes, strides)
    count = len(anchors)
    bins = torch.randn(1, count, 4, reg_max, requires_grad=True)
    logits = torch.randn(1, count, classes, requires_grad=True)
    box = torch.tensor([[1.0, 8.0, 8.0, 24.0, 30.0]])
    loss = detloss.DetectionLoss(classes)
    total, den = loss(logits, bins, anchors, per_anchor, box[None])
    padded = torch.cat([box, torch.full((3, 5), -1.0)])[None]
    total2, den2 = loss(logits, bins, anchors, per_anchor, padded)
    assert float(total2.detach()) == float(total.detach()) and float(den2) == float(den)
    (total / den).backward()
    assigned = detloss.assign(
        logits.detach().sigmoid(), detloss.sides_to_boxes(
            detloss.expected_sides(bins.detach()), anchors) * per_anchor,
        anchors * per_anchor, box[None, :, 0], box[None, :, 1:], torch.tensor([[True]]),
        classes=classes).foreground[0]
    assert 0 < int(assigned.sum()) <= 10  # topk = 10
    moved = bins.grad[0].abs().sum((1, 2)) > 0
    assert torch.equal(moved, assigned)
    assert bool((logits.grad[0].abs().sum(1) > 0).all())


@pytest.fixture(scope="module")
def small():
    return cnndsl.load(str(SMALL))


def test_head_found_and_view_decodes_as_the_spec(small):
    """The loop's view of the spec's module: the loss's own decoding of the bins (DFL
    integral, anchors, strides) gives the spec's decoded boxes; the view restored, the
    module gives its output alone again."""
    head = detect.TASK.head(small.ir)
    assert [(lv.height, lv.stride) for lv in head.levels] == [(8, 8), (4, 16), (2, 32)]
    assert (head.classes, head.reg_max, head.anchors) == (3, 16, 84)
    module = small.to_torch().eval()
    x = torch.rand(2, 3, 64, 64)
    restore = detect.TASK.adapt(module, small.ir)
    with torch.no_grad():
        packed = module(x)
    decoded, logits, bins, anchors, strides = detect.unpack(packed)
    cells = detloss.sides_to_boxes(detloss.expected_sides(bins), anchors) * strides
    from torchvision.ops import box_convert
    torch.testing.assert_close(box_convert(cells, "xyxy", "cxcywh"),
                               decoded[:, :4].transpose(1, 2), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(logits.sigmoid(), decoded[:, 4:].transpose(1, 2))
    restore()
    with torch.no_grad():
        assert torch.equal(module(x), decoded)


TINY = """\
network tiny(classes: int = 2, reg_max: int = 4, side: int = 32) {
    input image: 3 x side x side
    p3 = image -> conv(8, 3, stride=4, padding=1) -> relu
    p4 = p3 -> conv(8, 3, stride=2, padding=1) -> relu
    box3 = p3 -> conv(4 * reg_max, 1) -> flatten(1)
    box4 = p4 -> conv(4 * reg_max, 1) -> flatten(1)
    cls3 = p3 -> conv(classes, 1) -> flatten(1)
    cls4 = p4 -> conv(classes, 1) -> flatten(1)
    bins = concat(box3, box4, axis=1) -> reshape((4, reg_max, -1))
    probs = bins -> transpose(0, 1) -> softmax(0)
    ltrb = probs -> conv(1, 1, bias=false, weight=range(reg_max), trainable=false)
           -> reshape((4, -1))
    a3 = p3 -> anchor_points
    a4 = p4 -> anchor_points
    s3 = p3 -> anchor_strides(4)
    s4 = p4 -> anchor_strides(8)
    anchors = concat(a3, a4, axis=1)
    strides = concat(s3, s4, axis=1)
    lt, rb = ltrb -> split(2)
    x1y1 = sub(anchors, lt)
    x2y2 = add(anchors, rb)
    centre = add(x1y1, x2y2) -> div(2)
    size = sub(x2y2, x1y1)
    boxes = concat(centre, size) -> mul(strides)
    scores = concat(cls3, cls4, axis=1) -> sigmoid
    detections = concat(boxes, scores)
    output detections
}
"""


def _variant(tmp_path, old: str = "", new: str = "") -> tuple[Path, int]:
    """The tiny detector with one line changed; the path and that line's number."""
    assert old in TINY
    line = TINY[:TINY.index(old)].count("\n") + 1
    path = tmp_path / "tiny.cnn"
    path.write_text(TINY.replace(old, new))
    return path, line


def _error(path):
    with pytest.raises(CnnError) as info:
        cnndsl.load(str(path)).train_config()
    return info.value.diagnostics[0]


def test_tiny_head_is_a_detector(tmp_path):
    path, _ = _variant(tmp_path)
    model = cnndsl.load(str(path))
    assert model.train_config().task == "detect"
    head = detect.TASK.head(model.ir)
    assert [(lv.height, lv.stride) for lv in head.levels] == [(8, 4), (4, 8)]
    assert (head.classes, head.reg_max) == (2, 4)


def test_wrong_stride_named_at_the_head(tmp_path):
    path, line = _variant(tmp_path, "s4 = p4 -> anchor_strides(8)",
                          "s4 = p4 -> anchor_strides(16)")
    diag = _error(path)
    assert diag.message == ("`anchor_strides(16)` on a level of 4 x 4, whose stride is 8 "
                            "(32 / 4)")
    assert (diag.span.line, diag.span.column) == (line, 5 + len("s4 = p4 -> "))


def test_two_levels_with_one_stride(tmp_path):
    path, line = _variant(tmp_path, "p4 = p3 -> conv(8, 3, stride=2, padding=1)",
                          "p4 = p3 -> conv(8, 3, padding=1)")
    diag = _error(path)
    assert diag.message == "two levels of the head have stride 4: 8 x 8 here"
    a4 = TINY[:TINY.index("a4 = ")].count("\n") + 1
    assert diag.span.line == a4 and diag.related[0].span.line == a4 - 1


def test_stride_not_whole(tmp_path):
    path, _ = _variant(tmp_path, "side: int = 32", "side: int = 30")
    diag = _error(path)
    assert diag.message == "a level of 8 x 8 on a 30 x 30 input has no whole stride " \
        "(30/8 x 30/8)"
    assert diag.span.line == TINY[:TINY.index("a3 = ")].count("\n") + 1


@pytest.fixture(scope="module")
def small_module(small):
    """yolo_small as training starts it (the head's biases set), batch norms' statistics
    randomised so that eval mode is not the identity."""
    torch.manual_seed(3)
    module = small.to_torch()
    detect.TASK.initialise(module, small.ir)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return module.eval()


def test_postprocess_thresholds_and_class_aware_nms():
    """Two overlapping boxes of one class: one kept; of two classes: both; below the
    threshold: none; at most `max_detections`."""
    boxes = torch.tensor([[20.0, 20, 10, 10], [21, 20, 10, 10], [50, 50, 8, 8]])  # cx cy w h
    scores = torch.tensor([[0.9, 0.0], [0.8, 0.0], [0.0, 0.1]])
    decoded = torch.cat([boxes, scores], 1).T[None]
    (found,) = detect.postprocess(decoded, conf=0.05, iou=0.5)
    assert found["labels"].tolist() == [0, 1]
    torch.testing.assert_close(found["boxes"], torch.tensor([[15.0, 15, 25, 25],
                                                             [46, 46, 54, 54]]))
    scores[1] = torch.tensor([0.0, 0.8])  # the second box now another class: kept
    (found,) = detect.postprocess(torch.cat([boxes, scores], 1).T[None], conf=0.05, iou=0.5)
    assert found["labels"].tolist() == [0, 1, 1]
    (found,) = detect.postprocess(decoded, conf=0.5, iou=0.5, max_detections=1)
    assert found["labels"].tolist() == [0]


def test_onnx_detections_equal_torch(small, small_module):
    """The decoded head exported: onnxruntime's detections after NMS in the graph (`--nms`)
    are PyTorch's after `postprocess`: the same boxes within 1e-3, the same classes."""
    from cnndsl.deploy.detect_onnx import rows_to_dicts, with_nms
    from cnndsl.runtime import create_session
    x = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        decoded = small_module(x)
    proto = small.to_onnx(weights=small_module.state_dict())
    plain = create_session(proto.SerializeToString(), "cpu").run(x.numpy())[0]
    torch.testing.assert_close(torch.from_numpy(plain), decoded, rtol=1e-4, atol=1e-3)
    # above the untrained head's near ties (scores equal to 1e-5, whose order the two
    # runtimes' last digits decide)
    expected = detect.postprocess(decoded, conf=0.05)
    assert sum(len(e["labels"]) for e in expected) >= 6
    session = create_session(with_nms(proto, 3, conf=0.05).SerializeToString(), "cpu")
    rows = session.run(x.numpy())[0]
    got = rows_to_dicts(rows, 3)
    for mine, theirs in zip(got, expected):
        assert mine["labels"].tolist() == theirs["labels"].tolist()
        torch.testing.assert_close(mine["boxes"], theirs["boxes"], rtol=0, atol=1e-3)
        torch.testing.assert_close(mine["scores"], theirs["scores"], rtol=0, atol=1e-5)
    # `eval --onnx` of that export scores its rows as training's evaluation scores boxes
    truth = torch.stack([torch.cat([e["labels"][:1, None].float(), e["boxes"][:1]], 1)
                         for e in expected])  # each image's best detection, as its object
    reports = []
    for output in (torch.from_numpy(rows), detect.postprocess(decoded, conf=0.05)):
        evaluator = detect.TASK.evaluator(["a", "b", "c"], None)
        if isinstance(output, list):  # the same detections, through the packed path
            evaluator.metric.update(output, truth)
        else:
            evaluator.update(output, truth)
        reports.append(evaluator.compute())
    assert reports[0]["map"] == pytest.approx(reports[1]["map"], abs=1e-6)
    assert reports[0]["map50"] > 0.3


# ---- trained: train, eval, predict, export ---------------------------------------------

ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # two threads on a busy two-core machine: far slower


def _write_shapes(root: Path, count: int, size: int = 64) -> None:
    """The bundled shapes as a YOLO folder (images/ and labels/, train/ and val/)."""
    import numpy as np
    from PIL import Image

    from cnndsl.training.detdata import SHAPES_CLASSES, generate_shapes
    images, boxes = generate_shapes(count, size, size, seed=1)
    for n in range(count):
        split = "val" if n % 4 == 0 else "train"
        for kind in ("images", "labels"):
            (root / kind / split).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(images[n].transpose(1, 2, 0))).save(
            root / "images" / split / f"{n:03d}.png")
        lines = [f"{int(c)} {(x1 + x2) / 2 / size:.6f} {(y1 + y2) / 2 / size:.6f} "
                 f"{(x2 - x1) / size:.6f} {(y2 - y1) / size:.6f}"
                 for c, x1, y1, x2, y2 in boxes[n]]
        (root / "labels" / split / f"{n:03d}.txt").write_text("\n".join(lines) + "\n")
    (root / "classes.txt").write_text("\n".join(SHAPES_CLASSES) + "\n")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """yolo_small trained briefly on 48 generated images (YOLO folder), with --out."""
    from conftest import run_cli
    root = tmp_path_factory.mktemp("detect")
    _write_shapes(root / "data", 64)
    out = root / "run"
    result = run_cli("train", str(SMALL), "--data", str(root / "data"), "--epochs", "3",
                     "--batch", "8", "--lr", "0.004", "--set", "workers=0", "--out", str(out),
                     "--json", env=ONE_THREAD)
    assert result.returncode == 0, result.stderr
    return root, out


def test_training_writes_record_and_plots(trained):
    import json
    _, out = trained
    history = json.loads((out / "metrics.json").read_text())
    assert len(history) == 3
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert {"val_map", "val_map50", "val_map75"} <= set(history[0])
    for name in ("best.safetensors", "last.safetensors", "curves.png", "pr.png",
                 "boxes.png"):
        assert (out / name).stat().st_size > 0


def test_eval_predict_and_onnx_nms(trained):
    """`eval` prints mAP50/75/50-95; `predict` writes detections as JSON and drawn
    images; the export with `--nms` predicts the same boxes through onnxruntime."""
    import json

    from conftest import run_cli
    root, out = trained
    weights = str(out / "best.safetensors")
    data = str(root / "data")
    result = run_cli("eval", str(SMALL), "--weights", weights, "--data", data, "--json",
                     env=ONE_THREAD)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["task"] == "detect" and 0 <= report["map"] <= report["map50"] <= 1
    assert f"mAP50 {report['map50']:.4f}, mAP75 {report['map75']:.4f}, mAP50-95 " \
        f"{report['map']:.4f}" in detect.TASK.format_report(report)  # what eval prints

    images = root / "data" / "images" / "val"
    spec_out, onnx_out = root / "predicted", root / "predicted_onnx"
    result = run_cli("predict", str(SMALL), str(images), "--weights", weights, "--out",
                     str(spec_out), "--json", env=ONE_THREAD)
    assert result.returncode == 0, result.stderr
    spec = json.loads((spec_out / "predictions.json").read_text())
    assert spec["task"] == "detection" and spec["predicted"] == 16
    assert len(list(spec_out.glob("*.png"))) == 16
    exported = root / "small_nms.onnx"
    result = run_cli("compile", str(SMALL), "--to", "onnx", "--weights", weights, "--nms",
                     "-o", str(exported))
    assert result.returncode == 0, result.stderr
    result = run_cli("predict", str(exported), str(images), "--out", str(onnx_out),
                     "--json", env=ONE_THREAD)
    assert result.returncode == 0, result.stderr
    onnx = json.loads((onnx_out / "predictions.json").read_text())
    for mine, theirs in zip(spec["predictions"], onnx["predictions"]):
        assert [d["index"] for d in mine["detections"]] == \
            [d["index"] for d in theirs["detections"]]
        for a, b in zip(mine["detections"], theirs["detections"]):
            assert a["box"] == pytest.approx(b["box"], abs=2e-2)


@pytest.mark.skipif(not (Path(sys.executable).parent / "torchrun").exists(),
                    reason="torchrun not installed")
def test_two_processes_train_a_detector_as_one(tmp_path):
    """torchrun with two processes: each takes half of every global batch (its images with
    their boxes); the tiny detector has no batch norm, so the run equals one process's
    (the same loss per epoch, the same weights on both ranks)."""
    import json
    import os
    import subprocess
    _write_shapes(tmp_path / "data", 24, size=32)
    spec = tmp_path / "tiny.cnn"
    spec.write_text(TINY)
    args = ["cnndsl", "train", str(spec), "--data", str(tmp_path / "data"), "--epochs", "2",
            "--batch", "6", "--set", "classes=3", "workers=0", "--json"]
    env = {**os.environ, "NO_COLOR": "1", **ONE_THREAD}
    torchrun = str(Path(sys.executable).parent / "torchrun")
    runs = [subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=600)
            for command in ([torchrun, "--nproc_per_node=2", "--master_port=29547", "-m",
                             *args, "--out", str(tmp_path / "two")],
                            [sys.executable, "-m", *args, "--out", str(tmp_path / "one")])]
    for run in runs:
        assert run.returncode == 0, run.stderr
    two, one = (json.loads(run.stdout) for run in runs)
    assert (two["world"], two["rank_divergence"]) == (2, 0.0)
    for a, b in zip(two["history"], one["history"]):
        assert a["train_samples"] == b["train_samples"] == 18
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["val_map"] == pytest.approx(b["val_map"], abs=1e-4)


def test_yolov8n_trains_as_is():
    """specs/yolov8n.cnn, unchanged: a detector (task and loss found from its output), and
    one step of the loss reaches every trainable parameter (the DFL conv's fixed
    weights excepted)."""
    model = cnndsl.load(str(ROOT / "specs" / "yolov8n.cnn"), size=64, classes=3)
    config = model.train_config()
    assert (config.task, config.loss.name) == ("detect", "detect")
    module = model.to_torch()
    detect.TASK.adapt(module, model.ir)
    targets = torch.tensor([[[0.0, 4, 6, 30, 40], [2, 33, 30, 60, 52]],
                            [[1.0, 10, 12, 20, 30], [-1, 0, 0, 0, 0]]])
    total, den = detect.TASK.loss(config, 3, "cpu")(module(torch.rand(2, 3, 64, 64)), targets)
    (total / den).backward()
    missing = [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == [] and not module.dfl.weight.requires_grad
