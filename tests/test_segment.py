"""Segmentation as a training task: checks against the network before anything runs,
masks from folders (index and palette PNGs) and .npz, bad masks named, metrics recomputed
with numpy, a short real run that learns, workers that change nothing, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import cnndsl
from cnndsl.training.segdata import generate_shapes
from conftest import ROOT, run_cli, save_with_random_norms

torch.set_num_threads(1)
PNG = b"\x89PNG\r\n\x1a\n"

TINY_UNET = """
network tiny_unet(classes: int = 4, c: int = 8) {
    input image: 3 x 24 x 24
    e1 = image -> conv(c, 3, padding=same) -> batchnorm -> relu
    bottom = e1 -> maxpool(2) -> conv(2 * c, 3, padding=same) -> batchnorm -> relu
    up = bottom -> conv_transpose(c, 2, stride=2) -> concat(e1)
    scores = up -> conv(c, 3, padding=same) -> relu -> conv(classes, 1)
    output scores
}
train tiny_unet() {
    data: "shapes.npz"
    optimizer: adam(lr=0.01)
    loss: cross_entropy + 0.5 * dice
    epochs: 3
    batch: 16
    augment: flip -> random_crop(padding=2)
    workers: 0
}
"""


@pytest.fixture(scope="module")
def shapes_npz(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("shapes")
    images, masks = generate_shapes(160, 24, 24, seed=1)
    np.savez(folder / "shapes.npz", x=images, masks=masks,
             classes=np.array(["background", "circle", "square", "triangle"]))
    return folder


def spec_in(folder: Path, text: str = TINY_UNET, name: str = "net.cnn") -> Path:
    path = folder / name
    path.write_text(text)
    return path


# ---- the task, checked with the network -------------------------------------------------


def test_the_task_is_inferred_from_the_output_and_written_into_the_config():
    model = cnndsl.loads(TINY_UNET)
    assert model.train_config().task == "segment"
    assert model.train_config().early_stop is None
    described = model.train_config().describe()
    assert "cross_entropy(label_smoothing=0) + 0.5 * dice(smooth=1)" in described
    classify = cnndsl.load(ROOT / "examples" / "train_digits.cnn")
    assert classify.train_config().task == "classify"


def test_an_output_smaller_than_the_masks_is_an_error_at_the_last_layer():
    text = TINY_UNET.replace("output scores", "small = scores -> maxpool(2)\n    output small")
    with pytest.raises(cnndsl.CnnError) as info:
        cnndsl.loads(text)
    d = info.value.diagnostics[0]
    assert d.message == "the output's maps are 12 x 12 but the masks are 24 x 24 (the input's size)"
    assert d.help == "end with `upsample(like=image)`"
    assert d.span.line == 8  # the maxpool that made it small


def test_a_classifier_cannot_segment_and_losses_belong_to_their_task():
    flat = TINY_UNET.replace("output scores", "flat = scores -> flatten -> linear(4)\n"
                             "    output flat").replace("loss: cross_entropy + 0.5 * dice",
                                                       "task: segment")
    with pytest.raises(cnndsl.CnnError, match="a segmentation network ends in classes x H x W"):
        cnndsl.loads(flat)
    digits = (ROOT / "examples" / "train_digits.cnn").read_text()
    with pytest.raises(cnndsl.CnnError, match="`dice` is a segmentation loss"):
        cnndsl.loads(digits.replace("cross_entropy(label_smoothing=0.05)", "dice"))
    with pytest.raises(cnndsl.CnnError, match="losses are added, each with a weight of 0 or more"):
        cnndsl.loads(TINY_UNET.replace("+ 0.5 * dice", "- dice"))
    with pytest.raises(cnndsl.CnnError, match="not a segmentation loss"):
        cnndsl.loads(TINY_UNET.replace("0.5 * dice", "0.5 * mse"))
    softmaxed = TINY_UNET.replace("conv(classes, 1)", "conv(classes, 1) -> softmax")
    with pytest.raises(cnndsl.CnnError, match="takes raw scores"):
        cnndsl.loads(softmaxed)


def test_one_checked_description_flows_from_the_command_line(shapes_npz, monkeypatch,
                                                             capsys):
    """`cnndsl train`: the train definition with the command line's overrides is checked
    with the network once, when the spec loads, and that description reaches the loop."""
    from cnndsl import cli
    from cnndsl.training import loop, run, spec
    checks, configs = [], []
    original = spec.check_train

    def counting(*args, **kwargs):
        checks.append(args)
        return original(*args, **kwargs)
    monkeypatch.setattr(spec, "check_train", counting)
    monkeypatch.setattr(run, "check_train", counting)
    trainer_init = loop.Trainer.__post_init__

    def seeing(self):
        configs.append(self.config)
        trainer_init(self)
    monkeypatch.setattr(loop.Trainer, "__post_init__", seeing)
    code = cli.main(["train", str(spec_in(shapes_npz)), "--epochs", "1", "--set",
                     "optimizer.lr=0.02", "--out", str(shapes_npz / "once")])
    assert code == 0, capsys.readouterr().err
    assert len(checks) == 1 and checks[0][3] == {"epochs": 1, "optimizer.lr": 0.02}
    assert [(c.task, c.epochs, c.optimizer.args["lr"]) for c in configs] == \
        [("segment", 1, 0.02)]


def test_the_class_count_must_fit_the_data(shapes_npz):
    spec = spec_in(shapes_npz, TINY_UNET.replace("classes: int = 4", "classes: int = 3"))
    result = run_cli("train", str(spec), "--out", str(shapes_npz / "run_count"))
    assert result.returncode == 1, result.stderr
    assert "the data has 4 classes but the network gives 3 outputs" in result.stderr
    assert "--set classes=4" in result.stderr
    assert not (shapes_npz / "run_count").exists()


# ---- metrics against an independent computation -------------------------------------------


def numpy_iou(predicted: np.ndarray, truth: np.ndarray, classes: int, ignore: int):
    keep = truth != ignore
    confusion = np.bincount(truth[keep] * classes + predicted[keep],
                            minlength=classes * classes).reshape(classes, classes)
    tp = np.diag(confusion).astype(float)
    union = confusion.sum(0) + confusion.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = tp / union
        dice = 2 * tp / (confusion.sum(0) + confusion.sum(1))
    return confusion, iou, dice


def test_metrics_equal_a_numpy_confusion_matrix():
    from cnndsl.training.spec import check_train
    from cnndsl.training.tasks import segment
    rng = np.random.default_rng(0)
    classes = 5  # class 4 never occurs nor is predicted: no IoU, left out of the mean
    config = check_train(None, "n", {})
    evaluator = segment.TASK.evaluator([str(i) for i in range(classes)], config)
    predicted_all, truth_all = [], []
    for _ in range(3):
        truth = rng.integers(0, 4, (4, 10, 12))
        truth[rng.random(truth.shape) < 0.1] = 255
        logits = torch.randn(4, classes, 10, 12)
        logits[:, 4] = -100
        logits[:, 1] += torch.from_numpy(truth == 1) * 2.0  # better than chance
        evaluator.update(logits, torch.from_numpy(truth))
        predicted_all.append(logits.argmax(1).numpy())
        truth_all.append(truth)
    report = evaluator.compute()
    confusion, iou, dice = numpy_iou(np.concatenate(predicted_all).ravel(),
                                     np.concatenate(truth_all).ravel(), classes, 255)
    assert report["confusion_matrix"] == confusion.tolist()
    assert report["per_class"][4]["iou"] is None and np.isnan(iou[4])
    for i in range(4):
        assert report["per_class"][i]["iou"] == pytest.approx(iou[i], abs=1e-6)
        assert report["per_class"][i]["dice"] == pytest.approx(dice[i], abs=1e-6)
    assert report["miou"] == pytest.approx(np.nanmean(iou), abs=1e-6)
    assert report["pixel_accuracy"] == pytest.approx(np.trace(confusion) / confusion.sum())
    assert report["pixels"] == confusion.sum() and report["samples"] == 12


def test_losses_ignore_the_ignore_index_and_match_torch():
    import torch.nn.functional as F

    from cnndsl.training.spec import check_train
    from cnndsl.training.tasks import segment
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, 5)
    targets = torch.randint(0, 3, (2, 5, 5))
    targets[0, 0] = 255
    for loss, expected in (
            ("cross_entropy(label_smoothing=0.1, weights=(1, 2, 3))",
             F.cross_entropy(logits, targets, ignore_index=255, label_smoothing=0.1,
                             weight=torch.tensor([1.0, 2.0, 3.0]))),
            ("focal(gamma=0)", F.cross_entropy(logits, targets, ignore_index=255))):
        text = TINY_UNET.replace("cross_entropy + 0.5 * dice", loss)
        config = check_train(cnndsl.loads(text).train_def, "tiny_unet", {})
        objective = segment.TASK.loss(config, 3, torch.device("cpu"))
        total, den = objective(logits, targets)
        assert float(total / den) == pytest.approx(float(expected), rel=1e-5), loss
    config = check_train(cnndsl.loads(TINY_UNET.replace("cross_entropy + 0.5 * dice", "dice"))
                         .train_def, "tiny_unet", {})
    perfect = F.one_hot(torch.where(targets == 255, 0, targets), 3).permute(0, 3, 1, 2) * 50.0
    total, den = segment.TASK.loss(config, 3, torch.device("cpu"))(perfect, targets)
    assert float(total / den) == pytest.approx(0.0, abs=1e-4)


# ---- a real run ---------------------------------------------------------------------------


EXAMPLE = ROOT / "examples" / "segment_unet.cnn"
SHORT = ("--set", "size=32", "workers=0", "--batch", "8", "--lr", "0.006")
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # two threads on a busy two-core machine: 20x slower


@pytest.fixture(scope="module")
def small_shapes(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("shapes32") / "shapes32.npz"
    images, masks = generate_shapes(240, 32, 32, seed=1)
    np.savez(path, x=images, masks=masks,
             classes=np.array(["background", "circle", "square", "triangle"]))
    return path


@pytest.fixture(scope="module")
def trained(small_shapes) -> Path:
    """The example U-Net, shorter (32 x 32, 240 images, 12 epochs of 24 steps)."""
    out = small_shapes.parent / "run"
    result = run_cli("train", str(EXAMPLE), "--data", str(small_shapes), *SHORT,
                     "--epochs", "12", "--out", str(out), "--json", env=ONE_THREAD)
    assert result.returncode == 0, result.stderr
    (out / "summary.json").write_text(result.stdout)
    return out


def test_a_short_run_learns_and_picks_best_by_miou(trained):
    summary = json.loads((trained / "summary.json").read_text())
    history = summary["history"]
    assert [r["epoch"] for r in history] == list(range(1, 13))
    assert history[-1]["train_loss"] < 0.6 * history[0]["train_loss"]
    best = max(history, key=lambda r: r["val_miou"])
    assert summary["best_epoch"] == best["epoch"]
    # background is most of the pixels: all-background scores about 0.22 mIoU
    assert best["val_miou"] > 0.4 and best["val_miou"] > history[0]["val_miou"] + 0.1, \
        history
    for record in history:
        assert record["train_samples"] == 192
        assert set(record) >= {"val_miou", "val_accuracy", "val_dice", "val_loss"}
    for name in ("curves.png", "confusion.png", "samples.png"):
        assert (trained / name).read_bytes().startswith(PNG)


def test_eval_prints_the_segmentation_report(trained, small_shapes):
    args = ("eval", str(EXAMPLE), "--data", str(small_shapes), *SHORT[:3], "--weights",
            str(trained / "best.safetensors"), "--split", "val")
    result = run_cli(*args, "--json", env=ONE_THREAD)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["task"] == "segment" and report["samples"] == 48
    assert [r["class"] for r in report["per_class"]] == ["background", "circle", "square",
                                                       "triangle"]
    assert report["pixels"] == 48 * 32 * 32
    summary = json.loads((trained / "summary.json").read_text())
    best = summary["history"][summary["best_epoch"] - 1]
    assert report["miou"] == pytest.approx(best["val_miou"], abs=1e-6)
    text = run_cli(*args, env=ONE_THREAD)
    assert text.returncode == 0, text.stderr
    assert f"mIoU {report['miou']:.4f}" in text.stdout
    assert "confusion matrix in pixels" in text.stdout


def test_workers_and_resume_change_nothing(shapes_npz, tmp_path):
    """Augmentation is drawn per sample from (seed, epoch, index): the same weights with
    and without worker processes, and after an interruption."""
    from safetensors.torch import load_file
    spec = spec_in(shapes_npz, TINY_UNET.replace("epochs: 3", "epochs: 2"), "two.cnn")
    model = cnndsl.load(spec)
    plain = model.fit(progress=False, workers=0)["module"].state_dict()
    workers = model.fit(progress=False, workers=2)["module"].state_dict()
    for name, tensor in plain.items():
        assert torch.equal(tensor, workers[name]), name
    from cnndsl.training.loop import TrainingStopped
    with pytest.raises(TrainingStopped):
        model.fit(progress=False, out=tmp_path, _stop_at=(1, 3))
    model.fit(progress=False, out=tmp_path, resume=tmp_path)
    resumed = load_file(str(tmp_path / "last.safetensors"))
    for name, tensor in plain.items():
        assert torch.equal(tensor, resumed[name]), name


# ---- mask folders ---------------------------------------------------------------------------


def mask_folder(root: Path, count: int = 6, size: int = 16, palette: bool = False,
                width: int | None = None) -> Path:
    from PIL import Image
    images, masks = generate_shapes(count, size, width or size, seed=2)
    for part in ("images", "masks"):
        (root / part).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(images[i].transpose(1, 2, 0)).save(root / "images" / f"s{i}.png")
        mask = Image.fromarray(masks[i])
        if palette:
            mask = mask.convert("P")
            mask.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] + [255] * 756)
        mask.save(root / "masks" / f"s{i}.png")
    (root / "classes.txt").write_text("background\ncircle\nsquare\ntriangle\n")
    return root


@pytest.mark.parametrize("palette", [False, True])
def test_a_folder_of_images_and_masks_loads(tmp_path, palette):
    from cnndsl.training.segdata import load_masks
    folder = mask_folder(tmp_path / "data", palette=palette)
    data = load_masks(folder, (3, 16, 16), val_fraction=0.5, cache="none")
    assert data.train.classes == ["background", "circle", "square", "triangle"]
    assert len(data.train) == 3 and len(data.val) == 3
    image, mask = data.train[0]
    _, masks = generate_shapes(6, 16, 16, seed=2)
    stem = data.train.pairs[0][0].stem
    assert image.shape == (3, 16, 16) and mask.dtype == torch.uint8
    assert np.array_equal(mask.numpy(), masks[int(stem[1:])])
    cached = load_masks(folder, (3, 16, 16), val_fraction=0.5)  # small: held in memory
    assert torch.equal(cached.train.labels[0], mask)


def test_class_names_from_an_ultralytics_style_data_yaml(tmp_path):
    from cnndsl.training.data import DataError
    from cnndsl.training.segdata import load_masks
    folder = mask_folder(tmp_path / "data")
    (folder / "classes.txt").unlink()
    yaml_file = folder / "data.yaml"
    yaml_file.write_text("path: .\nnames:\n  0: background\n  1: circle\n  2: square\n"
                         "  3: triangle\n")
    data = load_masks(folder, (3, 16, 16), val_fraction=0.5, cache="none")
    assert data.train.classes == ["background", "circle", "square", "triangle"]
    yaml_file.write_text("names: [bg, a, b, c]\n")
    assert load_masks(folder, (3, 16, 16), val_fraction=0.5).val.classes == ["bg", "a", "b", "c"]
    for text, message in (("names: !!python/object/apply:os.getcwd []\n", "not valid YAML"),
                          ("names: {1: a, 2: b}\n",
                           "`names` must number the classes 0, 1, ... in order"),
                          ("names: [bg, a]\n", "value 2 is not a class (0...1)"),
                          ("names: [a, a, b, c]\n", "names the class 'a' twice")):
        yaml_file.write_text(text)
        with pytest.raises(DataError) as refused:
            load_masks(folder, (3, 16, 16), val_fraction=0.5)
        assert message in refused.value.message, text


@pytest.mark.parametrize("case", ["size", "value", "missing", "rgb"])
def test_bad_masks_are_one_located_error(tmp_path, case):
    from PIL import Image
    folder = mask_folder(tmp_path / "data")
    bad = folder / "masks" / "s3.png"
    if case == "size":
        Image.fromarray(np.zeros((8, 16), np.uint8)).save(bad)
        expected = f"{bad}: the mask is 16 x 8 but its image is 16 x 16"
    elif case == "value":
        Image.fromarray(np.full((16, 16), 7, np.uint8)).save(bad)
        expected = f"{bad}: value 7 is not a class (0...3) nor the ignore index 255"
    elif case == "missing":
        bad.unlink()
        expected = f"{folder / 'images' / 's3.png'}: no mask {bad.with_suffix('')}.png"
    else:
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(bad)
        expected = f"{bad}: a RGB mask without a palette"
    spec = spec_in(tmp_path, TINY_UNET.replace("3 x 24 x 24", "3 x 16 x 16")
                   .replace('"shapes.npz"', '"data"'))
    out = tmp_path / "run"
    result = run_cli("train", str(spec), "--out", str(out))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    assert f"error[E-data]: {expected}\n" in result.stderr, result.stderr
    assert not out.exists()  # nothing written, not even the folder


def test_onnx_eval_gives_pytorchs_miou_and_predictions_are_written(trained, small_shapes,
                                                                   tmp_path):
    weights = str(trained / "best.safetensors")
    onnx = tmp_path / "unet.onnx"
    compiled = run_cli("compile", str(EXAMPLE), "--set", "size=32", "--to", "onnx", "-o",
                       str(onnx), "--weights", weights)
    assert compiled.returncode == 0, compiled.stderr
    common = ("eval", str(EXAMPLE), "--data", str(small_shapes), *SHORT[:3], "--json",
              "--split", "val")
    torch_report = json.loads(run_cli(*common, "--weights", weights, env=ONE_THREAD).stdout)
    result = run_cli(*common, "--onnx", str(onnx), "--predictions", str(tmp_path / "pred"),
                     env=ONE_THREAD)
    assert result.returncode == 0, result.stderr
    onnx_report = json.loads(result.stdout)
    assert abs(onnx_report["miou"] - torch_report["miou"]) < 1e-3
    assert abs(onnx_report["pixel_accuracy"] - torch_report["pixel_accuracy"]) < 1e-3
    from PIL import Image
    written = sorted(p.name for p in (tmp_path / "pred").iterdir())
    assert len(written) == 2 * 48 and "00000.png" in written and "00000_overlay.png" in written
    with Image.open(tmp_path / "pred" / "00000.png") as mask:
        assert mask.mode == "P" and mask.size == (32, 32)
        assert set(np.unique(np.asarray(mask))) <= {0, 1, 2, 3}
    with Image.open(tmp_path / "pred" / "00000_overlay.png") as picture:
        assert picture.mode == "RGB" and picture.size == (32, 32)
    neither = run_cli("eval", str(EXAMPLE), "--data", str(small_shapes), *SHORT[:3])
    assert neither.returncode == 2 and "--weights FILE (or --weights-from), or --onnx" \
        in neither.stderr


# ---- predict ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def seg_project(tmp_path_factory) -> Path:
    """A mask folder of 20 x 28 images (train/, val/, classes.txt) for a 16 x 16 U-Net that
    normalises, and random weights with batch-norm statistics that are not the identity."""
    root = tmp_path_factory.mktemp("segpredict")
    for part in ("train", "val"):
        mask_folder(root / "data" / part, count=4, size=20, width=28)
    (root / "data" / "classes.txt").write_text("background\ncircle\nsquare\ntriangle\n")
    spec = spec_in(root, TINY_UNET.replace("3 x 24 x 24", "3 x 16 x 16")
                   .replace('"shapes.npz"', '"data"')
                   .replace("flip -> random_crop(padding=2)",
                            "flip -> normalize(mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))"))
    torch.manual_seed(3)
    module = cnndsl.load(spec).to_torch()
    save_with_random_norms(module, root / "w.safetensors")
    return root


def cnndsl_main(capsys, *args: str):
    """The command line in this process (no interpreter to start): its exit code, stdout
    and stderr."""
    from types import SimpleNamespace

    from cnndsl import cli
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return SimpleNamespace(returncode=code, stdout=out, stderr=err)


def eval_masks(root: Path, folder: Path, onnx: Path | None = None) -> dict[str, np.ndarray]:
    """`eval --predictions`'s masks (at the network's size) of the validation images."""
    from cnndsl.training.images import read_pixels
    from cnndsl.training.run import evaluate_model
    evaluate_model(cnndsl.load(root / "net.cnn"), device="cpu", split="val",
                   weights=None if onnx else str(root / "w.safetensors"),
                   onnx=str(onnx) if onnx else None, predictions=folder)
    return {p.stem: read_pixels(p, None) for p in folder.glob("s?.png")}


def nearest(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """A mask brought to another size as training brings masks to the network's."""
    import tempfile

    from cnndsl.training.segdata import decode_mask
    from cnndsl.training.tasks.segment import write_mask
    with tempfile.TemporaryDirectory() as scratch:
        write_mask(mask, Path(scratch) / "m.png")
        return decode_mask(Path(scratch) / "m.png", (height, width)).numpy()


def check_predicted_masks(report: list[dict], expected: dict[str, np.ndarray]) -> None:
    """Each written mask is a palette PNG of the file's size whose classes are eval's,
    brought back to that size by nearest neighbour; its fractions count its pixels."""
    from PIL import Image

    from cnndsl.training.images import read_header, read_pixels
    assert [Path(r["file"]).stem for r in report] == sorted(expected)
    for n, result in enumerate(report):
        stem = Path(result["file"]).stem
        assert Path(result["mask"]).name == f"{n:05d}_{stem}.png"
        assert read_header(Path(result["mask"])) == ((28, 20), "P")
        mask = read_pixels(Path(result["mask"]), None)
        assert np.array_equal(mask, nearest(expected[stem], 20, 28)), stem
        counts = np.bincount(mask.ravel(), minlength=4)
        assert [p["class"] for p in result["pixels"]] == ["background", "circle", "square",
                                                          "triangle"]
        assert [p["fraction"] for p in result["pixels"]] == \
            pytest.approx((counts / mask.size).tolist(), abs=1e-6)
        with Image.open(result["overlay"]) as picture:
            assert picture.mode == "RGB" and picture.size == (28, 20)
    assert any(len(np.unique(m)) > 1 for m in expected.values())  # not one class all over


def test_predict_gives_evals_masks_image_for_image(seg_project, tmp_path):
    """The spec with weights: predict's classes at the network's size are eval's, pixel
    for pixel; the files written are those classes at each image's own size."""
    from cnndsl.deploy.predict import image_files, predict_files, spec_predictor
    expected = eval_masks(seg_project, tmp_path / "eval")
    model = cnndsl.load(seg_project / "net.cnn")
    predictor = spec_predictor(model, weights=str(seg_project / "w.safetensors"), device="cpu")
    assert predictor.info.task == "segmentation"
    assert predictor.info.classes == ["background", "circle", "square", "triangle"]
    files = image_files([str(seg_project / "data" / "val" / "images")])
    done = predict_files(predictor, files, batch=3, keep_logits=True, progress=False,
                         out=tmp_path / "out")
    argmax = np.concatenate(done.logits).argmax(1)
    for path, classes in zip(files, argmax):
        assert np.array_equal(classes, expected[path.stem]), path.stem
    check_predicted_masks(done.results, expected)
    unwritten = predict_files(predictor, files[:1], progress=False).results[0]
    assert unwritten["mask"] is None and unwritten["overlay"] is None
    assert unwritten["pixels"] == done.results[0]["pixels"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        f"{n:05d}_s{n}{suffix}.png" for n in range(4) for suffix in ("", "_overlay"))


def test_a_self_describing_onnx_file_predicts_evals_masks(seg_project, tmp_path, capsys):
    """The .onnx file alone (task and classes in its metadata), run by onnxruntime:
    the masks `eval --onnx --predictions` writes, image for image."""
    import onnx
    exported = tmp_path / "net.onnx"
    result = cnndsl_main(capsys, "compile", str(seg_project / "net.cnn"), "--to", "onnx", "-o",
                     str(exported), "--weights", str(seg_project / "w.safetensors"))
    assert result.returncode == 0, result.stderr
    meta = {p.key: json.loads(p.value) for p in onnx.load(str(exported)).metadata_props}
    assert meta["cnndsl.task"] == "segmentation"
    assert meta["cnndsl.classes"] == ["background", "circle", "square", "triangle"]
    expected = eval_masks(seg_project, tmp_path / "eval", onnx=exported)
    out = tmp_path / "out"
    images = seg_project / "data" / "val" / "images"
    result = cnndsl_main(capsys, "predict", str(exported), str(images), "--json", "--out",
                         str(out))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["task"] == "segmentation" and report["predicted"] == 4
    assert report["runtime"] == "onnxruntime on cpu" and report["skipped"] == []
    check_predicted_masks(report["predictions"], expected)
    assert json.loads((out / "predictions.json").read_text()) == report


def test_predict_skips_a_corrupt_image_and_writes_only_regular_files(seg_project, tmp_path,
                                                                      capsys):
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "broken.png").write_bytes(b"\x89PNG but not really")
    (folder / "good.png").write_bytes((seg_project / "data" / "val" / "images" / "s0.png")
                                      .read_bytes())
    common = ("predict", str(seg_project / "net.cnn"), "--weights",
              str(seg_project / "w.safetensors"))
    result = cnndsl_main(capsys, *common, str(folder))
    assert result.returncode == 0, result.stderr
    assert f"warning: skipped {folder / 'broken.png'}: not an image" in result.stderr
    assert "predicted 1 image(s), skipped 1" in result.stderr
    line = result.stdout.strip()
    assert line.startswith(f"{folder / 'good.png'}: ") and "\n" not in line
    shares = [float(word.rstrip(",")) for word in line.split()[2::2]]
    assert sum(shares) == pytest.approx(1.0, abs=2e-3) and shares == sorted(shares)[::-1]
    only_bad = cnndsl_main(capsys, *common, str(folder / "broken.png"))
    assert only_bad.returncode == 1 and "predicted 0 image(s), skipped 1" in only_bad.stderr
    out = tmp_path / "out"
    out.mkdir()
    (out / "00000_good.png").symlink_to(tmp_path / "elsewhere.png")
    linked = cnndsl_main(capsys, *common, str(folder / "good.png"), "--out", str(out))
    assert linked.returncode == 1 and "a symbolic link" in linked.stderr, linked.stderr
    assert "Traceback" not in linked.stderr and not (tmp_path / "elsewhere.png").exists()


def test_output_names_stay_in_the_folder_and_a_wrong_output_is_refused():
    from cnndsl.deploy.describe import ModelInfo
    from cnndsl.deploy.predict import output_name, segmentation_output
    for image in ("a/../b/..png", "x/" + "é" * 300 + ".png", ".png", "a\\b.png"):
        name = output_name(7, Path(image), "_overlay")
        assert Path(name).name == name and name.startswith("00007_")
        assert name.endswith("_overlay.png") and len(name.encode()) < 255
    info = ModelInfo(shape=(3, 16, 16), task="segmentation")
    assert segmentation_output(torch.zeros(2, 5, 16, 16), info) == 5
    for shape in ((2, 5), (2, 5, 8, 8), (2, 300, 16, 16)):
        with pytest.raises(cnndsl.CnnError, match="not N x classes x 16 x 16"):
            segmentation_output(torch.zeros(shape), info)


def test_an_overlay_blended_in_strips_is_the_whole_image_blended(tmp_path):
    from cnndsl.training.images import read_pixels
    from cnndsl.training.plots import overlay
    from cnndsl.training.tasks.segment import write_overlay
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (3, 10, 7), dtype=np.uint8)
    mask = rng.integers(0, 4, (10, 7)).astype(np.uint8)
    mask[0, 0] = 255
    write_overlay(image, mask, tmp_path / "strips.png", rows=3)
    whole = (overlay(image.astype(np.float32) / 255, mask) * 255).round().astype(np.uint8)
    assert np.array_equal(read_pixels(tmp_path / "strips.png", "RGB"), whole)


def test_predict_refuses_an_out_folder_that_holds_its_input_images(seg_project, tmp_path,
                                                                   capsys):
    # the second image's mask, 00001_b.png, would have overwritten the first input image
    folder = tmp_path / "pictures"
    folder.mkdir()
    picture = (seg_project / "data" / "val" / "images" / "s0.png").read_bytes()
    (folder / "00001_b.png").write_bytes(picture)
    (folder / "b.png").write_bytes(picture)
    (tmp_path / "link").symlink_to(folder)
    common = ("predict", str(seg_project / "net.cnn"), "--weights",
              str(seg_project / "w.safetensors"), str(folder))
    for out in (folder, tmp_path / "link"):
        result = cnndsl_main(capsys, *common, "--out", str(out))
        assert result.returncode == 2 and "holds input images" in result.stderr, result.stderr
        assert sorted(p.name for p in folder.iterdir()) == ["00001_b.png", "b.png"]
        assert (folder / "00001_b.png").read_bytes() == picture
