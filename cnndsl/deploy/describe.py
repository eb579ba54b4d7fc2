"""What a model needs to be used on images: task, class names, input shape, channel
order and normalisation. Read from a spec's `train` definition, written into an ONNX
model's metadata_props (keys `cnndsl.*`) and read back, so that an exported .onnx file
is enough to predict with."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

PREFIX = "cnndsl."
UINT8_NHWC = "uint8 NHWC"


@dataclass
class ModelInfo:
    shape: tuple[int, int, int]  # C x H x W the network takes
    task: str = "classification"
    classes: list[str] | None = None
    mean: list[float] | None = None  # normalisation after scaling pixels to [0, 1]
    std: list[float] | None = None
    val_split: float | None = None  # how training split its data (eval's validation split)
    seed: int | None = None
    precision: str | None = None  # fp32, int8 (QDQ), fp16
    input_layout: str | None = None  # "uint8 NHWC": the graph scales and normalises itself
    max_pixels: int | None = None  # `max_image_pixels` where not the default (MAX_PIXELS)

    @property
    def channel_order(self) -> str:
        return "L" if self.shape[0] == 1 else "RGB"

    def normalize_ops(self) -> list[tuple[str, dict]]:
        """The ops training's `eval_transform` takes, so that both normalise alike."""
        if self.mean is None:
            return []
        return [("normalize", {"mean": tuple(self.mean), "std": tuple(self.std)})]

    def class_name(self, index: int) -> str:
        if self.classes is not None and 0 <= index < len(self.classes):
            return self.classes[index]
        return str(index)

    def to_metadata(self) -> dict[str, str]:
        values = {**asdict(self), "channel_order": self.channel_order,
                  "pixels": "uint8 N x H x W x C, resized (antialiased) to H x W; the graph "
                            "scales to [0, 1] and normalises" if self.input_layout else
                            "scaled to [0, 1], resized (antialiased) to H x W, then "
                            "(x - mean) / std"}
        return {PREFIX + k: json.dumps(list(v) if isinstance(v, tuple) else v)
                for k, v in values.items() if v is not None}


# the train definition's `task:` as exports and predict name it
TASK_NAMES = {"classify": "classification", "segment": "segmentation", "detect": "detection"}


def from_spec(model, overrides: dict | None = None) -> ModelInfo:
    """From a spec's input and its `train` definition (or the defaults)."""
    config = model.train_config(overrides)  # checked once, with the network
    shape = tuple(model.inputs[0].shape)
    mean = std = None
    for op in config.augment:
        if op.name == "normalize":
            mean, std = list(op.args["mean"]), list(op.args["std"])
    from ..training.images import MAX_PIXELS
    return ModelInfo(shape=shape, classes=_class_names(model, config), mean=mean, std=std,
                     val_split=config.val_split, seed=config.seed,
                     task=TASK_NAMES.get(config.task or "classify", "classification"),
                     max_pixels=None if config.max_image_pixels == MAX_PIXELS
                     else config.max_image_pixels)


def exported_info(model) -> ModelInfo | None:
    """What an export can say: None for a network that does not take one image; the
    input shape alone where its `train` definition does not check."""
    from ..diagnostics import CnnError
    shape = tuple(model.inputs[0].shape)
    if len(model.inputs) != 1 or len(shape) != 3 or shape[0] not in (1, 3):
        return None
    try:
        return from_spec(model)
    except CnnError:
        return ModelInfo(shape=shape)


def _class_names(model, config) -> list[str] | None:
    if config.data_classes:
        return list(config.data_classes)
    if config.data == "digits":
        return [str(i) for i in range(10)]
    if config.data == "shapes" and config.task == "detect":
        from ..training.detdata import SHAPES_CLASSES
        return list(SHAPES_CLASSES)
    if config.task == "segment":
        return _mask_class_names(model, config)
    if config.data and model.train_def is not None:
        root = Path(model.train_def.span.file).parent / config.data
        if (root / "train").is_dir():
            root = root / "train"
        if root.is_dir() and root.suffix != ".npz":
            return sorted(p.name for p in root.iterdir()
                          if p.is_dir() and not p.name.startswith("."))
    return None


def _mask_class_names(model, config) -> list[str] | None:
    """A segmentation set's classes: the bundled shapes', or a mask folder's classes.txt or
    data.yaml (its subfolders are images/ and masks/, not classes)."""
    if config.data == "shapes":
        from ..training.segdata import SHAPES_CLASSES
        return list(SHAPES_CLASSES)
    if not config.data or model.train_def is None:
        return None
    root = Path(model.train_def.span.file).parent / config.data
    if not root.is_dir():
        return None
    from ..training.data import DataError
    from ..training.datafiles import class_file
    try:
        return class_file(root)
    except DataError:  # training names what is wrong with it
        return None


def annotate(onnx_model, info: ModelInfo) -> None:
    """Write `info` into the model's metadata_props (replacing earlier cnndsl keys)."""
    keep = [p for p in onnx_model.metadata_props if not p.key.startswith(PREFIX)]
    del onnx_model.metadata_props[:]
    for prop in keep:
        onnx_model.metadata_props.add(key=prop.key, value=prop.value)
    for key, value in info.to_metadata().items():
        onnx_model.metadata_props.add(key=key, value=value)


def from_onnx_metadata(props: dict[str, str], input_shape) -> ModelInfo:
    """From a session's custom metadata map; what is missing comes from the input's shape."""
    def get(key):
        text = props.get(PREFIX + key)
        if text is None:
            return None
        try:
            return load_json(text)
        except ValueError:
            return None
    shape = get("shape")
    layout = get("input_layout") if get("input_layout") == UINT8_NHWC else None
    dims = list(input_shape)[1:]
    if layout and len(dims) == 3:  # H x W x C as the model takes it; C x H x W here
        dims = [dims[2], dims[0], dims[1]]
    fixed = len(dims) == 3 and all(isinstance(d, int) and d > 0 for d in dims)
    if fixed:  # the model's own input wins over what its metadata says
        shape = dims
    elif not (isinstance(shape, list) and len(shape) == 3 and len(dims) == 3
              and all(isinstance(d, int) and not isinstance(d, bool) and 0 < d <= 65536
                      for d in shape)):
        raise ValueError(f"the model's input is {input_shape}, not N x C x H x W with "
                         "fixed C, H and W")
    classes, mean, std = get("classes"), get("mean"), get("std")
    if not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        classes = None
    if not (_floats(mean) and _floats(std) and len(mean) == len(std)
            and len(mean) in (1, shape[0]) and all(v != 0 for v in std)):
        mean = std = None
    val_split, seed, precision = get("val_split"), get("seed"), get("precision")
    max_pixels = get("max_pixels")
    return ModelInfo(shape=tuple(shape), task=str(get("task") or "classification"),
                     classes=classes, mean=mean, std=std,
                     val_split=val_split if isinstance(val_split, float)
                     and 0 < val_split < 1 else None,
                     seed=seed if isinstance(seed, int) and seed >= 0 else None,
                     precision=precision if isinstance(precision, str) else None,
                     input_layout=layout,
                     max_pixels=max_pixels if isinstance(max_pixels, int)
                     and not isinstance(max_pixels, bool) and max_pixels > 0 else None)


def _floats(value) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        for v in value)


from ..files import load_json  # noqa: E402
from ..training.folder import SIDECAR  # noqa: E402 - beside a run's best/last.safetensors


def sidecar_bytes(info: ModelInfo) -> bytes:
    """What predicting needs, beside the checkpoints training writes (SIDECAR): the ONNX
    metadata's keys and values, as one JSON object."""
    values = {k[len(PREFIX):]: json.loads(v) for k, v in info.to_metadata().items()}
    return (json.dumps({"format": "cnndsl.model", **values}, indent=2) + "\n").encode()


def read_sidecar(weights: str | Path, shape) -> ModelInfo | None:
    """The description beside a weights file (None where there is none or it is not
    cnndsl's); its values checked as an ONNX file's metadata is; `shape` (the spec's
    input) wins."""
    from ..files import open_regular
    path = Path(weights).parent / SIDECAR
    try:
        with open_regular(path) as f:
            values = load_json(f.read(1 << 20))
    except (OSError, ValueError):
        return None
    if not isinstance(values, dict) or values.get("format") != "cnndsl.model":
        return None
    props = {PREFIX + k: json.dumps(v) for k, v in values.items()}
    return from_onnx_metadata(props, [None, *shape])


def with_preprocessing(model, info: ModelInfo) -> None:
    """The graph takes uint8 N x H x W x C images and does what evaluation does to them
    after resizing, as ONNX nodes: Cast, Transpose to N x C x H x W, Div by 255, then
    Sub mean and Div std where training normalised. Changes `model` in place and records
    the input in its metadata (`cnndsl.input_layout`)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper
    graph = model.graph
    old = graph.input[0]
    batch = old.type.tensor_type.shape.dim[0]
    c, h, w = info.shape
    steps = [("Cast", {"to": TensorProto.FLOAT}, []),
             ("Transpose", {"perm": [0, 3, 1, 2]}, []),
             ("Div", {}, [("cnndsl_pre_255", np.array(255, np.float32))])]
    if info.mean is not None:
        channels = (1, len(info.mean), 1, 1)
        steps += [("Sub", {}, [("cnndsl_pre_mean",
                                np.array(info.mean, np.float32).reshape(channels))]),
                  ("Div", {}, [("cnndsl_pre_std",
                                np.array(info.std, np.float32).reshape(channels))])]
    nodes, previous = [], "pixels"
    for i, (op, attrs, constants) in enumerate(steps):
        out = old.name if i == len(steps) - 1 else f"cnndsl_pre_{i}"
        for name, value in constants:
            graph.initializer.append(numpy_helper.from_array(value, name))
        nodes.append(helper.make_node(op, [previous, *(n for n, _ in constants)], [out],
                                      name=f"cnndsl_pre_{op.lower()}_{i}", **attrs))
        previous = out
    for node in reversed(nodes):
        graph.node.insert(0, node)
    pixels = helper.make_tensor_value_info(
        "pixels", TensorProto.UINT8,
        [batch.dim_param or batch.dim_value or "N", h, w, c])
    graph.input.remove(old)
    graph.input.insert(0, pixels)
    from dataclasses import replace
    annotate(model, replace(info, input_layout=UINT8_NHWC))
