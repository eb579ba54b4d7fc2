"""A PyTorch model as ONNX, for the ONNX importer: torchvision's builders by name (random
initialisation, nothing downloaded), or a factory function the user names
(`python:package.module:function`, imported only then: it runs that code)."""

from __future__ import annotations

import importlib
import io
import re
import warnings

from .graph import import_error


def build_module(source: str):
    kind, _, rest = source.partition(":")
    if kind == "torchvision":
        import torchvision
        if not re.fullmatch(r"[a-z][a-z0-9_]*", rest) or rest not in \
                torchvision.models.list_models():
            raise import_error(source, f"torchvision has no model {rest!r}",
                               "torchvision.models.list_models() lists them")
        return torchvision.models.get_model(rest, weights=None)
    module_name, _, function = rest.rpartition(":")
    if not module_name or not all(re.fullmatch(r"[A-Za-z_]\w*", p) for p in
                                  [*module_name.split("."), function]):
        raise import_error(source, "write python:package.module:function")
    try:
        factory = getattr(importlib.import_module(module_name), function)
    except (ImportError, AttributeError) as exc:
        raise import_error(source, f"cannot import it: {exc}") from None
    import torch
    if not callable(factory):
        raise import_error(source, f"`{function}` is not a function")
    module = factory()
    if not isinstance(module, torch.nn.Module):
        raise import_error(source, f"`{function}` must be a function that returns a "
                           f"torch.nn.Module; it gave {type(module).__name__}")
    return module


def to_onnx_bytes(module, shape: tuple[int, ...], opset: int) -> bytes:
    """The module in eval mode through torch's TorchScript exporter (fast, no dynamo), the
    batch axis dynamic; without constant folding, so batch norm stays a node of its own
    (folded, it would change the parameter count and hide the conv -> bn -> act chains)."""
    import torch
    module = module.eval()
    buffer = io.BytesIO()
    x = torch.randn(1, *shape)
    with warnings.catch_warnings():  # "legacy exporter" notices: chosen, see above
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), buffer, dynamo=False, opset_version=opset,
                          input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
                          do_constant_folding=False, training=torch.onnx.TrainingMode.EVAL)
    return buffer.getvalue()
