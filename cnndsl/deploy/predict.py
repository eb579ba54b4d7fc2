"""`cnndsl predict`: a spec with weights, or a (self-describing) .onnx file, on image files.

Images are decoded, resized and normalised by the very code evaluation uses
(training.data's decoder and `eval_transform`), so a folder gives the logits `eval` gives.
Each task turns logits into its own answers, lines and images: `TASKS` maps a task's
name to its class (Classification, Segmentation, Detection)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..diagnostics import CnnError, Diagnostic
from .describe import ModelInfo


@dataclass
class Predictor:
    info: ModelInfo
    forward: Callable  # prepared N x C x H x W float32 tensor -> logits (torch tensor)
    runtime: str  # what actually runs it, e.g. "torch on cpu", "onnxruntime on cpu"

    def prepare(self):
        """Decoded images (N x C x H x W in [0, 1]) as the network takes them: normalised,
        or, for a graph that normalises itself, back to uint8 N x H x W x C."""
        from ..training.data import eval_transform
        if self.info.input_layout is not None:
            return to_uint8_nhwc
        return eval_transform(self.info.normalize_ops())


def to_uint8_nhwc(images):
    import torch
    pixels = (images * 255).round().clamp(0, 255).to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).contiguous()


@dataclass
class Predictions:
    results: list[dict] = field(default_factory=list)  # one per image predicted
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, why)
    logits: list[np.ndarray] = field(default_factory=list)


def spec_predictor(model, *, weights=None, weights_from=None, device: str = "auto",
                   overrides: dict | None = None, info: ModelInfo | None = None) -> Predictor:
    """The spec's torch module with `weights`, run as evaluation runs it."""
    import torch

    from ..training.loop import resolve_device
    from ..training.run import build_module
    config = model.train_config(overrides)
    info = info or described_spec(model, overrides, weights)
    module = build_module(model, config, weights, weights_from, lambda line: None)
    dev = resolve_device(device)
    module = module.to(dev).eval()
    autocast = nullcontext
    if config.amp != "none":
        dtype = torch.bfloat16 if config.amp == "bf16" else torch.float16
        def autocast():
            return torch.autocast(device_type=dev.type, dtype=dtype)

    @torch.no_grad()
    def forward(x):
        from ..training.combine import pick
        with autocast():  # the first output, as an .onnx export's first output is used
            return pick(module(x.to(dev)), 0).float().cpu()
    return Predictor(info, forward, f"torch on {dev.type}")


def described_spec(model, overrides, weights) -> ModelInfo:
    """The spec's description, with the classes and normalisation training recorded
    beside the weights (model.json) where it did."""
    from dataclasses import replace

    from .describe import from_spec, read_sidecar
    info = from_spec(model, overrides)
    saved = None
    if isinstance(weights, (str, Path)) and Path(weights).is_file():
        saved = read_sidecar(weights, info.shape)
    if saved is None:
        return info
    return replace(info, classes=saved.classes or info.classes, task=saved.task,
                   mean=saved.mean if saved.mean is not None else info.mean,
                   std=saved.std if saved.std is not None else info.std)


def onnx_predictor(model: str | bytes, provider: str = "auto", threads: int | None = None,
                   *, runtime: str = "onnxruntime",
                   precision: str | None = None) -> Predictor:
    """An .onnx file, run by onnxruntime (`provider`) or OpenVINO (`precision`); what it
    needs to know comes from its cnndsl metadata."""
    import torch

    from ..runtime import open_session
    from .describe import from_onnx_metadata
    session = open_session(model, runtime, provider, threads, precision)
    meta = session.metadata()
    try:
        info = from_onnx_metadata(meta, session.input_shapes[0])
    except ValueError as exc:
        raise CnnError([Diagnostic(code="E-run", message=str(exc))]) from None

    def forward(x):
        return torch.from_numpy(session.run(x.numpy())[0])
    return Predictor(info, forward, session.runtime)


def image_files(paths: list[str]) -> list[Path]:
    """Files as given; folders searched (recursively, sorted) for image files."""
    from ..training.data import IMAGE_SUFFIXES
    found = []
    for text in paths:
        path = Path(text)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file()
                            and p.suffix.lower() in IMAGE_SUFFIXES
                            and not any(part.startswith(".") for part in
                                        p.relative_to(path).parts))
        elif path.is_file():
            found.append(path)
        elif path.exists():  # a FIFO or a device would block or never end
            raise CnnError([Diagnostic(code="E-data", message=f"{path} is not a regular "
                                       "file or a folder")])
        else:
            raise CnnError([Diagnostic(code="E-data", message=f"no image or folder at {path}")])
    return found


def decode_images(files: list[Path], shape, skipped: list, max_pixels: int | None = None):
    """Files decoded as training decodes them (an image over `max_pixels`, by default
    images.MAX_PIXELS, skipped); a shape images cannot feed is an error."""
    from ..training.data import DataError, _decode
    check_batch_size(files, shape)
    try:
        return _decode([(p, 0) for p in files], ["?"], shape, skipped, max_pixels)
    except DataError as exc:
        raise CnnError([Diagnostic(code="E-data", message=exc.message,
                                   help=exc.help or None)]) from None


def check_batch_size(files: list[Path], shape) -> None:
    """A batch of `files` at the network's input `shape` (from an ONNX file's metadata
    where its input's size is not fixed) must fit in memory."""
    from ..training.data import DataError, _check_size
    try:
        _check_size(len(files), shape, 4 * 2**30, files[0])
    except DataError as exc:
        raise CnnError([Diagnostic(code="E-data", message=exc.message,
                                   help=exc.help or None)]) from None


def detector_output(result, task: str) -> None:
    """What a detector gives: decoded boxes and class scores (N x (4 + classes) x anchors)
    or, exported with --nms, final boxes (N x 7); anything else is not a detector's."""
    if (result.ndim == 2 and result.shape[-1] == 7) or (result.ndim == 3
                                                         and result.shape[1] > 4):
        return
    raise CnnError([Diagnostic(
        code="E-run", message=f"the model is described as `{task}`, but its output is "
        f"{' x '.join(map(str, result.shape))}, not a detector's N x (4 + classes) x anchors "
        "(or N x 7 from an export with --nms)",
        help="export the detector again with `cnndsl compile --to onnx`")])


@dataclass
class Options:
    batch: int = 64
    top: int = 5  # classes per image (classification)
    progress: bool | None = None  # a progress bar; None: on a terminal
    keep_logits: bool = False
    out: Path | None = None  # where a task writes its images (boxes drawn, masks)


def predict_files(predictor: Predictor, files: list[Path], *, batch: int = 64, top: int = 5,
                  progress: bool | None = None, keep_logits: bool = False,
                  out: Path | None = None) -> Predictions:
    """Every file through the network, `batch` at a time; unreadable files are skipped
    (and listed), as training skips them. The task's outputs (results, and images in
    `out`) come from its entry in TASKS."""
    return task_of(predictor.info).predict(predictor, files, Options(batch, top, progress,
                                                                     keep_logits, out))


def task_of(info: ModelInfo):
    task = TASKS.get(info.task)
    if task is None:
        raise CnnError([Diagnostic(code="E-run", message=f"cannot predict for the task "
                                   f"`{info.task}`; known: {', '.join(TASKS)}")])
    return task


def _batches(predictor: Predictor, files: list[Path], options: Options, out: Predictions):
    """(the files read, their logits), a batch at a time: decoded, resized and normalised
    as evaluation does it; unreadable files skipped into `out.skipped`."""
    prepare = predictor.prepare()
    for chunk in _chunks(files, options.batch, options.progress):
        skipped_before = len(out.skipped)
        decoded = decode_images(chunk, predictor.info.shape, out.skipped,
                                predictor.info.max_pixels)
        bad = {f for f, _ in out.skipped[skipped_before:]}
        good = [p for p in chunk if str(p) not in bad]
        if good:
            logits = predictor.forward(prepare(decoded.images)).float()
            if options.keep_logits:
                out.logits.append(logits.numpy())
            yield good, logits


def _chunks(files: list[Path], batch: int, progress: bool | None):
    """`files`, `batch` at a time, with a progress bar (tqdm) on a terminal."""
    from tqdm.auto import tqdm
    show = sys.stderr.isatty() if progress is None else progress
    with tqdm(total=len(files), disable=not show, unit="image", file=sys.stderr,
              leave=False) as bar:
        for start in range(0, len(files), batch):
            chunk = files[start:start + batch]
            yield chunk
            bar.update(len(chunk))


class Classification:
    """Top-k classes with their softmax probabilities."""

    def predict(self, predictor: Predictor, files: list[Path], options: Options) -> Predictions:
        out = Predictions()
        for good, logits in _batches(predictor, files, options, out):
            for path, row in zip(good, logits):
                out.results.append({"file": str(path),
                                    **classify(row, predictor.info, options.top)})
        return out

    @staticmethod
    def line(result: dict) -> str:
        best = ", ".join(f"{t['class']} {t['probability']:.3f}" for t in result["top"])
        return f"{result['file']}: {best}"


def classify(logits, info: ModelInfo, top: int) -> dict:
    import torch
    probs = torch.softmax(logits.double(), dim=-1).flatten()
    k = min(top, len(probs))
    values, indices = probs.topk(k)
    return {"top": [{"class": info.class_name(i), "index": i, "probability": float(p)}
                    for p, i in zip(values.tolist(), indices.tolist())]}


class Detection:
    """A detector on image files: each letterboxed as training letterboxes it, the
    detections after threshold and NMS (training's `postprocess`, or the graph's own with
    an export made with `--nms`), their boxes mapped back to the file's pixels; with
    `out`, each file with its boxes drawn (NNNNN_STEM.png)."""

    def predict(self, predictor: Predictor, files: list[Path], options: Options) -> Predictions:
        import torch

        from ..training.detdata import letterboxed_file
        from ..training.images import UnreadableImageError
        from ..training.tasks.detect import postprocess
        from .detect_onnx import rows_to_dicts
        out, info = Predictions(), predictor.info
        prepare = predictor.prepare()
        for chunk in _chunks(files, options.batch, options.progress):
            images, places = [], []
            check_batch_size(chunk, info.shape)
            for path in chunk:
                try:
                    boxed, scale, corner, (width, height) = letterboxed_file(
                        path, info.shape, info.max_pixels)
                except (UnreadableImageError, OSError) as why:
                    out.skipped.append((str(path), str(why)))
                    continue
                images.append(boxed)
                places.append((path, scale, corner, width, height))
            if not images:
                continue
            result = predictor.forward(prepare(torch.stack(images))).float()
            detector_output(result, info.task)
            found = rows_to_dicts(result.numpy(), len(images)) \
                if result.ndim == 2 and result.shape[-1] == 7 else postprocess(result)
            for (path, scale, (left, top), width, height), one in zip(places, found):
                boxes = one["boxes"].clone()
                boxes[:, 0::2] = ((boxes[:, 0::2] - left) / scale).clamp(0, width)
                boxes[:, 1::2] = ((boxes[:, 1::2] - top) / scale).clamp(0, height)
                answer = {"file": str(path), "size": [width, height], "detections": [
                    {"class": info.class_name(int(c)), "index": int(c), "score": float(p),
                     "box": [round(float(v), 2) for v in box]}
                    for box, p, c in zip(boxes, one["scores"], one["labels"])]}
                if options.out is not None:
                    draw_detections(answer, options.out / output_name(len(out.results), path),
                                    info.max_pixels)
                out.results.append(answer)
        return out

    @staticmethod
    def line(result: dict) -> str:
        found = ", ".join(f"{d['class']} {d['score']:.2f} at "
                          f"({', '.join(f'{v:g}' for v in d['box'])})"
                          for d in result["detections"])
        return f"{result['file']}: {len(result['detections'])} object(s)" + \
            (f": {found}" if found else "")


def draw_detections(result: dict, path: Path, max_pixels: int | None = None) -> None:
    """The file with its detections drawn (a box, the class and the score each), as PNG."""
    from PIL import Image, ImageDraw

    from ..atomic import atomic_path
    from ..training.images import read_pixels
    from ..training.plots import palette
    image = Image.fromarray(read_pixels(Path(result["file"]), "RGB", max_pixels))
    draw = ImageDraw.Draw(image)
    colours = palette(256)
    for found in result["detections"]:
        colour = tuple(int(v) for v in colours[1 + found["index"] % 255])
        draw.rectangle(found["box"], outline=colour, width=2)
        x, y = found["box"][:2]
        draw.text((x + 2, max(0, y - 11)), f"{found['class']} {found['score']:.2f}",
                  fill=colour)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def output_name(n: int, image: Path, suffix: str = "") -> str:
    """NNNNN_STEM{suffix}.png for the n-th image predicted: one name in the output folder
    (never a path out of it: a stem has no separator), unique by its number however
    many folders hold the same name, and short enough for any file system."""
    stem = image.stem[:64].replace("\\", "_") or "image"
    return f"{n:05d}_{stem}{suffix}.png"


class Segmentation:
    """A class per pixel. The network's classes x H x W scores are taken as evaluation
    takes them (argmax at the network's size: `eval --predictions` writes that mask), then
    brought to the file's own size by nearest neighbour, as training brings masks to the
    network's size: a pixel's class is always one the network gave. (Bilinear logits
    before the argmax would smooth edges, but differ from `eval`'s classes and cost
    classes x the image's pixels in floats.) With `out`, each mask is written as a
    palette PNG of class indices (NNNNN_STEM.png) with an overlay
    (NNNNN_STEM_overlay.png), as `eval --predictions` writes them."""

    def predict(self, predictor: Predictor, files: list[Path], options: Options) -> Predictions:
        import torch

        from ..training.images import UnreadableImageError, read_header
        out, info = Predictions(), predictor.info
        for good, logits in _batches(predictor, files, options, out):
            classes = segmentation_output(logits, info)
            for path, indices in zip(good, logits.argmax(1).to(torch.uint8)):
                try:
                    (width, height), _ = read_header(path, info.max_pixels)
                except UnreadableImageError as why:  # read a moment ago: changed since
                    out.skipped.append((str(path), str(why)))
                    continue
                out.results.append(self.answer(path, indices, (height, width), classes,
                                               info, options.out, len(out.results)))
        return out

    @staticmethod
    def answer(path: Path, indices, size, classes: int, info: ModelInfo,
               folder: Path | None, n: int) -> dict:
        import numpy as np
        from torchvision.transforms.v2 import InterpolationMode
        from torchvision.transforms.v2 import functional as TF
        if tuple(indices.shape) != size:
            indices = TF.resize(indices[None], list(size), InterpolationMode.NEAREST)[0]
        mask = indices.numpy()
        counts = np.bincount(mask.ravel(), minlength=classes)
        result = {"file": str(path), "size": [size[1], size[0]], "mask": None, "overlay": None,
                  "pixels": [{"class": info.class_name(i), "index": i,
                              "fraction": round(float(counts[i]) / mask.size, 6)}
                             for i in range(classes)]}
        if folder is not None:
            from ..training.images import read_pixels
            from ..training.tasks.segment import write_mask, write_overlay
            result["mask"] = str(folder / output_name(n, path))
            result["overlay"] = str(folder / output_name(n, path, "_overlay"))
            write_mask(mask, Path(result["mask"]))
            write_overlay(read_pixels(path, "RGB", info.max_pixels).transpose(2, 0, 1), mask,
                          Path(result["overlay"]))
        return result

    @staticmethod
    def line(result: dict) -> str:
        shares = sorted((p for p in result["pixels"] if p["fraction"] > 0),
                        key=lambda p: -p["fraction"])
        text = f"{result['file']}: " + ", ".join(f"{p['class']} {p['fraction']:.3f}"
                                                 for p in shares)
        return text + (f" -> {result['mask']}" if result["mask"] else "")


def segmentation_output(logits, info: ModelInfo) -> int:
    """The class count of a segmentation network's N x classes x H x W scores at its
    input's H x W; anything else is not a segmentation network's."""
    shape = tuple(logits.shape)
    if len(shape) == 4 and shape[2:] == tuple(info.shape[1:]) and 2 <= shape[1] <= 256:
        return shape[1]
    raise CnnError([Diagnostic(
        code="E-run", message=f"the model is described as `{info.task}`, but its output is "
        f"{' x '.join(map(str, shape))}, not N x classes x {info.shape[1]} x {info.shape[2]} "
        "(2 to 256 classes, at the input's size)",
        help="a segmentation network ends in `conv(classes, 1)` at the image's size")])


TASKS = {"classification": Classification(), "segmentation": Segmentation(),
         "detection": Detection()}
