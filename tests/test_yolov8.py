"""specs/yolov8n.cnn against Ultralytics' own YOLOv8n (a test-only dependency, as
torchvision is for the zoo): the whole DetectionModel, DFL and box decoding included.
3,157,200 parameters as Ultralytics counts them; Ultralytics' weights (its random
initialisation, batch-norm statistics randomised) load by tracing its module (no table of
names), and the decoded detections (1 x 84 x A) match Ultralytics' within 1e-4 relative
through the module, the generated source and onnxruntime."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import cnndsl
from cnndsl.runtime import create_session
from conftest import SPECS, import_file

os.environ.setdefault("YOLO_OFFLINE", "1")  # no update checks, no downloads
os.environ.setdefault("YOLO_VERBOSE", "False")
tasks = pytest.importorskip("ultralytics.nn.tasks")
torch.set_num_threads(2)


@pytest.fixture(scope="module")
def ultralytics_model(tmp_path_factory):
    os.environ.setdefault("YOLO_CONFIG_DIR", str(tmp_path_factory.mktemp("yolo")))
    torch.manual_seed(0)
    model = tasks.DetectionModel("yolov8n.yaml", verbose=False)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return model.eval()


def test_the_parameters_are_ultralytics_count(ultralytics_model):
    model = cnndsl.load(SPECS / "yolov8n.cnn")
    assert model.params == 3_157_200
    assert sum(p.numel() for p in ultralytics_model.parameters()) == 3_157_200
    assert model.ir.shape_of(model.ir.outputs[0]) == (84, 8400)
    frozen = sum(p.numel() for p in ultralytics_model.parameters() if not p.requires_grad)
    assert frozen == 16 == model.params - sum(
        p.numel() for p in model.to_torch().parameters() if p.requires_grad)  # the DFL


@pytest.mark.parametrize("classes", [3, 120])
def test_the_class_branch_widens_as_ultralytics_does(classes):
    """Ultralytics' class branch is max(64, min(classes, 100)) wide: 64 at 3 classes."""
    ours = cnndsl.load(SPECS / "yolov8n.cnn", classes=classes)
    theirs = tasks.DetectionModel("yolov8n.yaml", nc=classes, verbose=False)
    assert ours.params == sum(p.numel() for p in theirs.parameters())


@pytest.mark.parametrize("size, anchors", [(160, 525), (320, 2100)])
def test_decoded_detections_match_ultralytics(ultralytics_model, size, anchors, tmp_path):
    model = cnndsl.load(SPECS / "yolov8n.cnn", size=size)
    module = model.to_torch(weights=ultralytics_model).eval()
    report = model.weights_report
    assert len(report.loaded) == len(ultralytics_model.state_dict())
    assert not report.reinitialised and not report.ignored
    x = torch.rand(1, 3, size, size)
    with torch.no_grad():
        expected = ultralytics_model(x)[0]
        ours = module(x)
    assert tuple(expected.shape) == tuple(ours.shape) == (1, 84, anchors)
    scale = float(expected.abs().max())

    def close(actual) -> None:
        assert float(np.abs(np.asarray(actual) - expected.numpy()).max()) <= 1e-4 * scale

    close(ours.numpy())
    path = tmp_path / f"yolov8n_{size}.py"
    path.write_text(model.to_torch_source())
    generated = import_file(path, f"yolov8n_{size}").build().eval()
    generated.load_state_dict(module.state_dict())
    with torch.no_grad():
        close(generated(x).numpy())
    proto = model.to_onnx(weights=module.state_dict())
    close(create_session(proto.SerializeToString(), "cpu").run(x.numpy())[0])
