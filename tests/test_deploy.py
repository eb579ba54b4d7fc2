"""Using a trained network: `predict` (same logits as `eval`'s path), self-describing
ONNX exports, reduced precision and the look inside."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import cnndsl
from conftest import run_cli, save_with_random_norms

SPEC = """
network tiny(classes: int = 3) {
    input image: 3 x 12 x 12
    conv(4, 3, padding=same) -> batchnorm -> relu -> maxpool(2)
    flatten
    classifier: linear(classes)
}

train tiny() {
    data: "images"
    augment: random_crop(padding=1) -> normalize(mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    batch: 4
}
"""
CLASSES = ["cat", "dog", "owl"]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A spec, random weights, and images/{train,val}/{cat,dog,owl} of odd sizes (resized
    on loading), with one corrupt file in predict/."""
    from PIL import Image
    root = tmp_path_factory.mktemp("deploy")
    (root / "tiny.cnn").write_text(SPEC)
    rng = np.random.default_rng(0)
    for split, count in (("train", 3), ("val", 3)):
        for name in CLASSES:
            folder = root / "images" / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (9 + i, 15, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    model = cnndsl.load(root / "tiny.cnn")
    torch.manual_seed(1)
    module = model.to_torch()
    save_with_random_norms(module, root / "w.safetensors")
    return root


def eval_logits(root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits `cnndsl eval` computes over the validation split, and its labels."""
    from cnndsl.training.loop import Trainer
    from cnndsl.training.run import build_module, load_dataset, train_config
    model = cnndsl.load(root / "tiny.cnn")
    config = train_config(model)
    data = load_dataset(model, config, None)
    module = build_module(model, config, str(root / "w.safetensors"), None, lambda line: None)
    report = Trainer(config, data, module, device="cpu").evaluate(module, data.val)
    return report["logits"], data.val.labels


def test_predict_on_a_folder_gives_evals_logits_image_for_image(project):
    from cnndsl.deploy.predict import image_files, predict_files, spec_predictor
    expected, labels = eval_logits(project)
    model = cnndsl.load(project / "tiny.cnn")
    predictor = spec_predictor(model, weights=str(project / "w.safetensors"), device="cpu")
    files = image_files([str(project / "images" / "val")])
    done = predict_files(predictor, files, batch=4, top=3, keep_logits=True, progress=False)
    assert [Path(r["file"]).parent.name for r in done.results] == \
        [CLASSES[i] for i in labels.tolist()]
    assert torch.equal(torch.from_numpy(np.concatenate(done.logits)), expected)
    assert [r["top"][0]["index"] for r in done.results] == expected.argmax(1).tolist()
    assert [r["top"][0]["class"] for r in done.results] == \
        [CLASSES[i] for i in expected.argmax(1).tolist()]
    probs = torch.softmax(expected.double(), 1)
    assert done.results[0]["top"][0]["probability"] == pytest.approx(float(probs[0].max()))


def test_exported_onnx_describes_itself_and_predicts_alone(project, tmp_path):
    import onnx
    onnx_path = tmp_path / "tiny.onnx"
    result = run_cli("compile", str(project / "tiny.cnn"), "--to", "onnx", "-o", str(onnx_path),
                     "--weights", str(project / "w.safetensors"))
    assert result.returncode == 0, result.stderr
    meta = {p.key: json.loads(p.value) for p in onnx.load(str(onnx_path)).metadata_props}
    assert meta["cnndsl.classes"] == CLASSES
    assert meta["cnndsl.task"] == "classification"
    assert meta["cnndsl.shape"] == [3, 12, 12]
    assert meta["cnndsl.channel_order"] == "RGB"
    assert meta["cnndsl.mean"] == [0.5, 0.4, 0.3] and meta["cnndsl.std"] == [0.2, 0.25, 0.3]
    result = run_cli("predict", str(onnx_path), str(project / "images" / "val"), "--json",
                     "--top", "2")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    expected, _ = eval_logits(project)
    assert report["predicted"] == 9 and report["runtime"] == "onnxruntime on cpu"
    assert [r["top"][0]["class"] for r in report["predictions"]] == \
        [CLASSES[i] for i in expected.argmax(1).tolist()]
    assert all(len(r["top"]) == 2 for r in report["predictions"])


def test_predict_skips_a_corrupt_image_names_it_and_counts_it(project, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "broken.png").write_bytes(b"\x89PNG but not really")
    good = project / "images" / "val" / "owl" / "0.png"
    (folder / "owl.png").write_bytes(good.read_bytes())
    out = tmp_path / "out"
    result = run_cli("predict", str(project / "tiny.cnn"), "--weights",
                     str(project / "w.safetensors"), str(folder), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert f"warning: skipped {folder / 'broken.png'}: not an image" in result.stderr
    assert "predicted 1 image(s), skipped 1" in result.stderr
    assert result.stdout.startswith(f"{folder / 'owl.png'}: ")
    saved = json.loads((out / "predictions.json").read_text())
    assert saved["predicted"] == 1 and saved["skipped"][0]["file"] == str(folder / "broken.png")
    only_bad = run_cli("predict", str(project / "tiny.cnn"), "--weights",
                       str(project / "w.safetensors"), str(folder / "broken.png"))
    assert only_bad.returncode == 1
    assert "predicted 0 image(s), skipped 1" in only_bad.stderr


def test_predict_on_a_missing_path_is_a_clear_error(project):
    result = run_cli("predict", str(project / "tiny.cnn"), "--weights",
                     str(project / "w.safetensors"), str(project / "nowhere.png"))
    assert result.returncode == 1
    assert "no image or folder at" in result.stderr and "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def fp32_onnx(project, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fp32") / "tiny.onnx"
    result = run_cli("compile", str(project / "tiny.cnn"), "--to", "onnx", "-o", str(path),
                     "--weights", str(project / "w.safetensors"))
    assert result.returncode == 0, result.stderr
    return path


def test_eval_of_an_onnx_file_is_evals_accuracy_on_the_same_split(project, fp32_onnx):
    from cnndsl.deploy.evaluate import evaluate_onnx
    from cnndsl.training.metrics import classification_report
    expected, labels = eval_logits(project)
    report = evaluate_onnx(str(fp32_onnx), str(project / "images"))
    assert report["samples"] == 9 and report["model_precision"] == "fp32"
    assert report["accuracy"] == classification_report(expected, labels, CLASSES)["accuracy"]
    assert report["confusion_matrix"] == \
        classification_report(expected, labels, CLASSES)["confusion_matrix"]


def test_int8_quantisation_is_qdq_per_channel_calibrated_and_compared(project, tmp_path):
    import onnx
    from onnx import numpy_helper
    out = tmp_path / "tiny_int8.onnx"
    result = run_cli("compile", str(project / "tiny.cnn"), "--to", "onnx", "-o", str(out),
                     "--weights", str(project / "w.safetensors"), "--quantize", "int8",
                     "--calibrate", str(project / "images"), "--calibration", "5", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["precision"] == "int8" and report["calibration_images"] == 5
    model = onnx.load(str(out))
    ops = [n.op_type for n in model.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    weights = {i.name: i for i in model.graph.initializer}
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    dequant = next(n for n in model.graph.node if n.output[0] == conv.input[1])
    assert numpy_helper.to_array(weights[dequant.input[0]]).dtype == np.int8
    assert numpy_helper.to_array(weights[dequant.input[1]]).shape == (4,)  # per channel
    # activations as uint8 (x86's u8 x s8 VNNI kernels); int8 x int8 ran 0.6x fp32's speed
    act = next(n for n in model.graph.node if n.output[0] == conv.input[0])
    assert numpy_helper.to_array(weights[act.input[2]]).dtype == np.uint8
    meta = {p.key: json.loads(p.value) for p in model.metadata_props
            if p.key.startswith("cnndsl.")}
    assert meta["cnndsl.precision"] == "int8" and meta["cnndsl.classes"] == CLASSES
    assert report["reduced"]["bytes"] == out.stat().st_size
    # the figures printed are the ones eval computes on each model, independently
    from cnndsl.deploy.evaluate import evaluate_onnx
    expected, labels = eval_logits(project)
    from cnndsl.training.metrics import classification_report
    assert report["fp32"]["accuracy"] == \
        classification_report(expected, labels, CLASSES)["accuracy"]
    assert report["reduced"]["accuracy"] == \
        evaluate_onnx(str(out), str(project / "images"))["accuracy"]


def test_fp16_model_has_half_weights_and_float_io(project, fp32_onnx):
    import onnx
    import onnxruntime as ort

    from cnndsl.deploy.quantize import to_fp16
    fp16 = to_fp16(onnx.load(str(fp32_onnx)))
    assert {i.data_type for i in fp16.graph.initializer
            if i.dims and len(i.dims) > 1} == {onnx.TensorProto.FLOAT16}
    x = np.random.default_rng(0).random((4, 3, 12, 12), dtype=np.float32)
    full = ort.InferenceSession(str(fp32_onnx)).run(None, {"image": x})[0]
    half = ort.InferenceSession(fp16.SerializeToString()).run(None, {"image": x})[0]
    assert half.dtype == np.float32
    np.testing.assert_allclose(half, full, atol=2e-2, rtol=2e-2)


def test_quantize_without_calibration_data_is_a_usage_error(project, tmp_path):
    result = run_cli("compile", str(project / "tiny.cnn"), "--to", "onnx", "-o",
                     str(tmp_path / "q.onnx"), "--quantize", "int8")
    assert result.returncode == 2 and "--calibrate DATA" in result.stderr
    assert not (tmp_path / "q.onnx").exists()


EDGE_SPEC = """
network edges(classes: int = 3) {
    input image: 1 x 8 x 8
    edge: conv(2, 3, padding=same, bias=false)
    relu
    global_avgpool
    flatten
    classifier: linear(classes)
}
"""
HORIZONTAL_EDGE = np.array([[1, 1, 1], [0, 0, 0], [-1, -1, -1]], dtype=np.float32)


def hand_correlation(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """What a conv layer computes (cross-correlation, zero padding 1), by hand."""
    padded = np.pad(image, 1)
    return np.array([[float((padded[i:i + 3, j:j + 3] * kernel).sum())
                      for j in range(image.shape[1])] for i in range(image.shape[0])])


@pytest.fixture(scope="module")
def edges(tmp_path_factory):
    """A grey image with a horizontal bright band, and weights whose first filter is the
    course's horizontal-edge detector."""
    from PIL import Image
    from safetensors.torch import save_file
    root = tmp_path_factory.mktemp("edges")
    (root / "edges.cnn").write_text(EDGE_SPEC)
    pixels = np.zeros((8, 8), dtype=np.uint8)
    pixels[3:5] = 255
    pixels[:, 6] = 128
    Image.fromarray(pixels).save(root / "band.png")
    rng = np.random.default_rng(3)
    kernel = np.stack([HORIZONTAL_EDGE, rng.normal(size=(3, 3)).astype(np.float32)])[:, None]
    save_file({"edge.weight": torch.from_numpy(kernel),
               "classifier.weight": torch.from_numpy(rng.normal(size=(3, 2)).astype(np.float32)),
               "classifier.bias": torch.zeros(3)}, str(root / "w.safetensors"))
    return root, pixels.astype(np.float32) / 255.0


def test_horizontal_edge_filter_map_is_the_hand_computation(edges):
    from cnndsl.deploy.inspect import inspect_image
    root, image = edges
    result = inspect_image(cnndsl.load(root / "edges.cnn"), root / "band.png", "edge",
                           weights=str(root / "w.safetensors"))
    assert result.maps.shape == (2, 8, 8)
    expected = hand_correlation(image, HORIZONTAL_EDGE)
    np.testing.assert_allclose(result.maps[0].numpy(), expected, atol=1e-6)
    assert expected[2, 2] == pytest.approx(-3.0) and expected[5, 2] == pytest.approx(3.0)
    assert result.filters_layer == "edge"
    np.testing.assert_array_equal(result.filters[0, 0].numpy(), HORIZONTAL_EDGE)


def test_grad_cam_over_global_pooling_is_the_class_activation_map(edges):
    """With global average pooling then a linear layer, Grad-CAM equals CAM (Zhou et al.):
    ReLU(sum_k w[c, k] A_k), computed here from the classifier's weights, not gradients."""
    from cnndsl.deploy.inspect import inspect_image
    root, _ = edges
    model = cnndsl.load(root / "edges.cnn")
    result = inspect_image(model, root / "band.png", "relu1",
                           weights=str(root / "w.safetensors"))
    w = model.to_torch(str(root / "w.safetensors")).classifier.weight.detach()
    cam = torch.relu((w[result.predicted][:, None, None] * result.maps).sum(0))
    cam = cam / cam.max()
    assert result.cam.shape == (8, 8)  # the maps are 8 x 8 already: no resampling
    torch.testing.assert_close(result.cam, cam, atol=1e-5, rtol=1e-5)
    logits = model.to_torch(str(root / "w.safetensors"))(
        torch.from_numpy(edges[1])[None, None])
    assert result.predicted == int(logits.argmax())


def test_inspect_command_writes_a_png_and_names_a_wrong_layer(edges, tmp_path):
    from PIL import Image
    root, _ = edges
    out = tmp_path / "maps.png"
    result = run_cli("inspect", str(root / "edges.cnn"), str(root / "band.png"), "--weights",
                     str(root / "w.safetensors"), "--layer", "edge", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert "2 activation maps of edge, filters of edge, Grad-CAM for" in result.stderr
    with Image.open(out) as png:
        assert png.format == "PNG" and png.size[0] > 500
    wrong = run_cli("inspect", str(root / "edges.cnn"), str(root / "band.png"), "--weights",
                    str(root / "w.safetensors"), "--layer", "edges", "-o", str(out))
    assert wrong.returncode == 1 and "did you mean `edge`?" in wrong.stderr


def test_eval_and_predict_under_openvino_match_onnxruntime(project, fp32_onnx):
    pytest.importorskip("openvino")
    from cnndsl.deploy.evaluate import evaluate_onnx
    from cnndsl.deploy.predict import image_files, onnx_predictor, predict_files
    ours = evaluate_onnx(str(fp32_onnx), str(project / "images"), runtime="openvino",
                         precision="f32")
    theirs = evaluate_onnx(str(fp32_onnx), str(project / "images"))
    assert ours["runtime"] == "openvino on CPU, f32"
    assert ours["confusion_matrix"] == theirs["confusion_matrix"]
    files = image_files([str(project / "images" / "val")])
    logits = {}
    for runtime in ("onnxruntime", "openvino"):
        predictor = onnx_predictor(str(fp32_onnx), "cpu", runtime=runtime)
        done = predict_files(predictor, files, keep_logits=True, progress=False)
        logits[runtime] = np.concatenate(done.logits)
    assert np.abs(logits["openvino"] - logits["onnxruntime"]).max() <= 1e-4
    result = run_cli("predict", str(fp32_onnx), str(files[0]), "--runtime", "openvino",
                     "--precision", "bf16", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["runtime"] == "openvino on CPU, bf16"


def test_training_writes_what_predict_needs_beside_the_weights(project, tmp_path):
    import shutil

    from cnndsl.deploy.predict import spec_predictor
    model = cnndsl.load(project / "tiny.cnn")
    model.fit(str(project / "images"), epochs=1, out=str(tmp_path / "run"), progress=False)
    saved = json.loads((tmp_path / "run" / "model.json").read_text())
    assert saved["classes"] == CLASSES and saved["shape"] == [3, 12, 12]
    assert saved["mean"] == [0.5, 0.4, 0.3] and saved["std"] == [0.2, 0.25, 0.3]
    # the spec and the weights elsewhere, the data folder its classes came from gone
    alone = tmp_path / "alone"
    (alone / "run").mkdir(parents=True)
    (alone / "tiny.cnn").write_text(SPEC)
    shutil.copy(tmp_path / "run" / "best.safetensors", alone / "run")
    weights = str(alone / "run" / "best.safetensors")
    bare = spec_predictor(cnndsl.load(alone / "tiny.cnn"), weights=weights, device="cpu")
    assert bare.info.classes is None  # nothing to name them by
    shutil.copy(tmp_path / "run" / "model.json", alone / "run")
    described = spec_predictor(cnndsl.load(alone / "tiny.cnn"), weights=weights, device="cpu")
    assert described.info.classes == CLASSES
    assert described.info.mean == [0.5, 0.4, 0.3]


def test_preprocess_graph_takes_uint8_images_and_equals_the_float_path(project, fp32_onnx,
                                                                      tmp_path):
    import onnx
    from PIL import Image

    from cnndsl.cli import main
    from cnndsl.deploy.predict import image_files, onnx_predictor, predict_files
    out = tmp_path / "pre.onnx"
    assert main(["compile", str(project / "tiny.cnn"), "--to", "onnx", "-o", str(out),
                 "--weights", str(project / "w.safetensors"), "--preprocess"]) == 0
    model = onnx.load(str(out))
    pixels = model.graph.input[0]
    assert pixels.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_value for d in pixels.type.tensor_type.shape.dim][1:] == [12, 12, 3]
    assert [n.op_type for n in model.graph.node][:5] == ["Cast", "Transpose", "Div", "Sub",
                                                         "Div"]
    # images at the network's size: no resize, so uint8 pixels are exactly what was decoded
    rng = np.random.default_rng(5)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(
            tmp_path / f"{i}.png")
    files = image_files([str(tmp_path)])
    logits = []
    for path in (fp32_onnx, out):
        predictor = onnx_predictor(str(path), "cpu")
        logits.append(np.concatenate(predict_files(predictor, files, keep_logits=True,
                                                   progress=False).logits))
    assert predictor.info.input_layout == "uint8 NHWC" and predictor.info.shape == (3, 12, 12)
    assert np.abs(logits[0] - logits[1]).max() <= 1e-5 * max(1, np.abs(logits[0]).max())
