"""Hostile models and specs (second adversarial pass): ONNX files whose cnndsl metadata
lies about the task or the input, imports of odd graphs, the detector-head language
features. Each is a clear error, never an internal error, a hang or an unbounded
allocation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cnndsl.diagnostics import CnnError

TINY = """
network tiny() {
    input image: 3 x 16 x 16
    conv(4, 3, padding=1) -> relu -> global_avgpool -> flatten -> linear(3)
}
"""


def onnx_with(meta: dict[str, str], *, dynamic: bool = False) -> bytes:
    """The tiny classifier as ONNX, its cnndsl metadata replaced by `meta`; with `dynamic`
    its input's H and W are not fixed (so the metadata's shape is used)."""
    import cnndsl
    from cnndsl.deploy.describe import PREFIX
    model = cnndsl.loads(TINY).to_onnx()
    keep = [p for p in model.metadata_props if not p.key.startswith(PREFIX)]
    del model.metadata_props[:]
    for prop in keep:
        model.metadata_props.add(key=prop.key, value=prop.value)
    for key, value in meta.items():
        model.metadata_props.add(key=PREFIX + key, value=value)
    if dynamic:
        dims = model.graph.input[0].type.tensor_type.shape.dim
        dims[2].dim_param, dims[3].dim_param = "H", "W"
    return model.SerializeToString()


@pytest.fixture(scope="module")
def picture(tmp_path_factory) -> Path:
    from PIL import Image
    path = tmp_path_factory.mktemp("pictures") / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 20, 3), np.uint8)).save(path)
    return path


def test_a_classifier_whose_metadata_says_detection_is_an_error_not_a_crash(picture):
    from cnndsl.deploy.predict import onnx_predictor, predict_files
    predictor = onnx_predictor(onnx_with({"task": '"detection"'}))
    with pytest.raises(CnnError, match=r"described as `detection`, but its output is 1 x 3, "
                       r"not a detector's"):
        predict_files(predictor, [picture])


def test_a_detectors_batch_at_a_huge_metadata_shape_is_refused_before_allocating(picture):
    from cnndsl.deploy.predict import onnx_predictor, predict_files
    predictor = onnx_predictor(onnx_with({"task": '"detection"',
                                          "shape": "[3, 60000, 60000]"}, dynamic=True))
    with pytest.raises(CnnError, match=r"1 images at 3 x 60000 x 60000 need 40.23 GiB"):
        predict_files(predictor, [picture])


def test_a_negative_class_index_is_not_named_from_the_end_of_the_list():
    from cnndsl.deploy.describe import ModelInfo
    info = ModelInfo(shape=(3, 8, 8), classes=["cat", "dog"])
    assert info.class_name(-1) == "-1" and info.class_name(1) == "dog"


DEEP = "[" * 100_000  # a few bytes that nest past Python's recursion limit


def test_json_nested_past_the_recursion_limit_is_bad_json_wherever_cnndsl_reads_json(
        tmp_path, picture):
    import struct

    import cnndsl
    from cnndsl.deploy.describe import from_onnx_metadata, read_sidecar
    from cnndsl.training.data import DataError
    from cnndsl.training.detdata import _from_coco
    from cnndsl.training.state import NotAStateError, _json_dict
    info = from_onnx_metadata({"cnndsl.classes": DEEP}, [None, 3, 16, 16])  # ONNX metadata
    assert info.classes is None
    (tmp_path / "model.json").write_text(DEEP)  # beside a run's weights
    assert read_sidecar(tmp_path / "best.safetensors", (3, 16, 16)) is None
    (tmp_path / "coco.json").write_text('{"images": ' + DEEP)
    with pytest.raises(DataError, match=r"coco.json.*not valid JSON \(nested too deeply\)"):
        _from_coco(tmp_path / "coco.json")
    with pytest.raises(NotAStateError, match="`progress` is not valid JSON"):
        _json_dict({"progress": DEEP}, "progress")  # a training state's progress
    header = b'{"a": ' + DEEP.encode()
    (tmp_path / "deep.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(CnnError):
        cnndsl.loads(TINY).weights(str(tmp_path / "deep.safetensors"))


# ---- cnndsl import of odd graphs: refused by name (E-onnx), never "does not check" -------


def _graph_file(folder: Path, name: str, nodes: list, constants: dict) -> Path:
    """x (1 x 2 x 4 x 4) -> a 1x1 conv `c` -> `nodes` -> y, as an .onnx file."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    conv = helper.make_node("Conv", ["x", "w"], ["c"], name="conv")
    constants = {"w": np.ones((2, 2, 1, 1), np.float32), **constants}
    graph = helper.make_graph(
        [conv, *nodes], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                            [1, 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in constants.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    path = folder / f"{name}.onnx"
    onnx.save(model, path)
    return path


def _layer_norm(eps: float) -> tuple[list, dict]:
    from onnx import helper
    return ([helper.make_node("Transpose", ["c"], ["t"], perm=[0, 2, 3, 1]),
             helper.make_node("LayerNormalization", ["t", "g", "b"], ["l"], axis=-1,
                              epsilon=eps, name="ln"),
             helper.make_node("Transpose", ["l"], ["y"], perm=[0, 3, 1, 2])],
            {"g": np.ones(2, np.float32), "b": np.zeros(2, np.float32)})


def _split(sizes: list[int]) -> tuple[list, dict]:
    from onnx import helper
    return ([helper.make_node("Split", ["c", "s"], ["y", "z"], axis=1, name="split")],
            {"s": np.array(sizes, np.int64)})


def _pad(pads: list[int]) -> tuple[list, dict]:
    from onnx import helper
    return ([helper.make_node("Pad", ["c", "p"], ["y"], name="pad")],
            {"p": np.array(pads, np.int64)})


@pytest.mark.parametrize("case, why", [
    (lambda: _layer_norm(float("nan")), r"node 'ln' \(LayerNormalization\): the number nan"),
    (lambda: _layer_norm(1e40), r"node 'ln' \(LayerNormalization\): the number inf"),
    (lambda: _split([2, 0]), r"node 'split' \(Split\): a Split into \[2, 0\] of an axis of 2"),
    (lambda: _split([2, 2]), r"node 'split' \(Split\): a Split into \[2, 2\] of an axis of 2"),
    (lambda: _pad([0, 0, -1, -1, 0, 0, -1, -1]), r"node 'pad' \(Pad\): padding \[0, 0, -1"),
], ids=["eps-nan", "eps-inf", "split-empty", "split-too-long", "pad-negative"])
def test_import_refuses_what_the_language_cannot_write_instead_of_writing_a_bad_spec(
        tmp_path, case, why):
    from cnndsl.importer import import_file
    nodes, constants = case()
    path = _graph_file(tmp_path, "odd", nodes, constants)
    with pytest.raises(CnnError, match=why):
        import_file(path)
