"""Running ONNX models with OpenVINO's CPU plugin, beside onnxruntime (cnndsl/runtime.py).

OpenVINO picks its arithmetic itself: on a CPU with bf16 units it runs an fp32 model in
bf16 unless told otherwise, so a speed figure could hide a precision change. Here the
precision is always asked for explicitly (INFERENCE_PRECISION_HINT: f32 unless bf16 is
given), and what actually ran is read back from the compiled model's execution graph
(each layer's runtimePrecision), not assumed from the request."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from .runtime import Session, _error, _run_errors

PRECISIONS = ("f32", "bf16")
# execution-graph layers that move or hold data rather than compute
_NOT_COMPUTE = {"Input", "Parameter", "Output", "Result", "Const", "Constant", "Reorder",
                "Reshape"}
_ONNX_TYPES = {"f32": "float", "f16": "float16", "bf16": "bfloat16", "f64": "double",
               "u8": "uint8", "i8": "int8", "i32": "int32", "i64": "int64",
               "boolean": "bool"}


def _openvino():
    try:
        import openvino
    except ImportError:
        raise _error("OpenVINO is not installed", help="pip install 'cnndsl[openvino]' "
                     "(or use --runtime onnxruntime)") from None
    return openvino


@dataclass
class OpenVinoSession(Session):
    """A model compiled by OpenVINO for the CPU; `session` is the CompiledModel."""

    request: object = None
    hint: str = "f32"  # the precision asked for
    layer_precisions: dict[str, int] = field(default_factory=dict)  # what ran, per layer
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def precision(self) -> str:
        """The compute layers' precision: one name, or the mix with its counts."""
        counts = self.layer_precisions
        if len(counts) == 1:
            return next(iter(counts))
        (most, n), *rest = sorted(counts.items(), key=lambda kv: -kv[1])
        return (f"{most} on {n} of {sum(counts.values())} layers, "
                + ", ".join(f"{p} on {k}" for p, k in rest))

    @property
    def output_names(self) -> list[str]:
        return [o.get_any_name() for o in self.session.outputs]

    @property
    def input_names(self) -> list[str]:
        return [i.get_any_name() for i in self.session.inputs]

    @property
    def input_shapes(self) -> list[list]:
        return [shape for _, _, shape in self.inputs_info()]

    def inputs_info(self) -> list[tuple[str, str, list]]:
        out = []
        for port in self.session.inputs:
            kind = port.get_element_type().get_type_name()
            shape = [d.get_length() if d.is_static else None for d in port.get_partial_shape()]
            out.append((port.get_any_name(), f"tensor({_ONNX_TYPES.get(kind, kind)})", shape))
        return out

    @property
    def runtime(self) -> str:
        return f"openvino on CPU, {self.precision}"

    def describe(self) -> str:
        return f"OpenVINO CPU, precision {self.precision} (asked: {self.hint})"

    def report(self) -> dict:
        return {"runtime": "openvino", "provider": "openvino", "device": "CPU",
                "precision_hint": self.hint, "precision": self.precision,
                "layer_precisions": self.layer_precisions}

    def metadata(self) -> dict[str, str]:
        return self.meta

    def run(self, *inputs: np.ndarray) -> list[np.ndarray]:
        feeds = self._feeds(inputs)
        with _run_errors("openvino"):
            self.request.infer(feeds)
            return [self.request.get_output_tensor(i).data.copy()
                    for i in range(len(self.session.outputs))]

    def _caller(self, feeds):
        def call():
            self.request.infer(feeds)
        return call


def create_openvino_session(model: bytes | str, precision: str = "f32",
                            threads: int | None = None) -> OpenVinoSession:
    """`model`: an .onnx path (its external data beside it) or the bytes of one."""
    if precision not in PRECISIONS:
        raise _error(f"unknown OpenVINO precision `{precision}`", help="f32 or bf16")
    ov = _openvino()
    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": precision}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    if precision == "bf16" and "BF16" not in core.get_property("CPU",
                                                               "OPTIMIZATION_CAPABILITIES"):
        raise _error("this CPU has no bf16 arithmetic (OpenVINO would run f32 instead)",
                     help="--precision f32")
    try:
        compiled = core.compile_model(core.read_model(model), "CPU", config)
    except Exception as exc:  # noqa: BLE001 - OpenVINO raises its own untyped errors
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise _error(f"openvino could not load the model: {message}") from None
    return OpenVinoSession(compiled, "openvino", request=compiled.create_infer_request(),
                           hint=precision, layer_precisions=_layer_precisions(compiled),
                           meta=_onnx_metadata(model))


def _layer_precisions(compiled) -> dict[str, int]:
    """How many compute layers of the execution graph run in each precision."""
    counts: Counter = Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if str(info["layerType"].astype(str)) not in _NOT_COMPUTE:
            counts[str(info["runtimePrecision"].astype(str))] += 1
    return dict(counts)


def _onnx_metadata(model: bytes | str) -> dict[str, str]:
    """The ONNX file's metadata_props (OpenVINO does not keep them)."""
    import onnx
    try:
        proto = (onnx.load_from_string(model) if isinstance(model, bytes)
                 else onnx.load(model, load_external_data=False))
    except Exception:  # noqa: BLE001 - OpenVINO read it; metadata is optional
        return {}
    return {p.key: p.value for p in proto.metadata_props}
