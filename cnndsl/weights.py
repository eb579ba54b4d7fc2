"""Weights by state_dict name (`layer1.0.conv1.weight`), as numpy arrays.

`initial_weights` draws them the way PyTorch's default initialisers do (so a fresh ONNX
model behaves like a fresh PyTorch one); `load_weights` reads a state_dict saved from the
compiled module (`torch.save(m.state_dict(), p)`, loaded with weights_only=True) or a
.safetensors file, and checks every name and shape against the IR. No torch import here
except for reading .pt files.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .diagnostics import CnnError, Diagnostic
from .ir import Network
from .layers import REGISTRY

Weights = dict[str, np.ndarray]


def tensors(ir: Network):
    """(state_dict name, Weight) of every tensor of the network, in module order."""
    for node in ir.nodes:
        if node.shares:  # a shared layer applied again: the first application's tensors
            continue
        for weight in REGISTRY[node.op].weights(node.attrs):
            yield f"{node.name}.{weight.suffix}", weight


def expected_shapes(ir: Network) -> dict[str, tuple[int, ...]]:
    return {name: weight.shape for name, weight in tensors(ir)}


def dtypes(ir: Network) -> dict[str, str]:
    return {name: weight.dtype for name, weight in tensors(ir)}


def initial_weights(ir: Network, seed: int = 0, only: set[str] | None = None) -> Weights:
    """As PyTorch initialises them (each layer kind says how: `Weight.init`): U(-b, b)
    with b = 1/sqrt(fan_in) for conv and linear weights and biases, constants for
    normalisation and the rest. `only`: just these tensors (a new head)."""
    rng = np.random.default_rng(seed)
    weights: Weights = {}
    for name, weight in tensors(ir):
        if only is not None and name not in only:
            continue
        if weight.init.values is not None:  # given in the spec
            weights[name] = np.array(weight.init.values, weight.dtype).reshape(weight.shape)
        elif weight.init.constant is not None:
            weights[name] = np.full(weight.shape, weight.init.constant, weight.dtype)
        else:
            bound = 1 / math.sqrt(weight.init.fan_in) if weight.init.fan_in else 0
            # float32 from the start: a float64 draw of VGG's 102M-weight fc6 is 820 MB
            weights[name] = ((rng.random(weight.shape, dtype=np.float32) * 2 - 1)
                             * np.float32(bound))
    return weights


def load_weights(path: str | Path, ir: Network) -> Weights:
    """A state_dict of this spec from a file, every name and shape checked."""
    return check_weights(read_state(path), ir, str(path))


def read_state(path: str | Path) -> Weights:
    """A state_dict from a file, recognised by its content: safetensors, or a PyTorch
    checkpoint (`torch.save`, read with weights_only=True: no code runs). In the file's
    order, names as the file has them. A regular file only (a FIFO would block)."""
    from .files import open_regular
    path = Path(path)

    def refuse(why: str, help: str | None = None) -> CnnError:
        return CnnError([Diagnostic(code="E-weights", message=f"cannot read weights from "
                                    f"{path}: {why}", help=help)])
    try:
        with open_regular(path) as f:
            head = f.read(16)
            if not head:
                raise refuse("the file is empty")
            if _looks_like_safetensors(head):
                return _read_safetensors(path, refuse)
            if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
                f.seek(0)
                return _read_torch(f, refuse)
    except OSError as exc:
        raise refuse(exc.strerror or str(exc)) from None
    raise refuse("neither a safetensors file nor a PyTorch checkpoint",
                 help="save it with `torch.save(model.state_dict(), path)` or "
                 "safetensors' `save_file`")


def _looks_like_safetensors(head: bytes) -> bool:
    """8 bytes of header length (little endian), then the JSON header's `{`."""
    return len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") > 1


def _read_safetensors(path: Path, refuse) -> Weights:
    try:
        from safetensors import safe_open
    except ImportError:
        raise refuse("reading .safetensors needs the safetensors package",
                     help="pip install safetensors (or 'cnndsl[all]')") from None
    unreadable = _safetensors_types_numpy_lacks(path)
    if unreadable:
        return _safetensors_via_torch(path, refuse)
    raw: Weights = {}
    try:
        with safe_open(str(path), framework="numpy") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                value = f.get_tensor(key)
                if value.dtype.name in ("bfloat16", "float16"):
                    value = value.astype(np.float32)  # exact
                raw[key] = value
    except TypeError:  # bfloat16 and other types numpy lacks: through torch, as float32
        raw = _safetensors_via_torch(path, refuse)
    except Exception as exc:  # noqa: BLE001 - a damaged file raises many kinds
        raise refuse(f"damaged safetensors file ({exc})") from None
    return raw


def _safetensors_types_numpy_lacks(path: Path) -> bool:
    """Whether the header names a type numpy cannot hold (bfloat16, float8): those are
    read through torch, which names each tensor it cannot use."""
    from .files import load_json
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            header = load_json(f.read(min(size, 100_000_000)))
    except (OSError, ValueError):
        return False  # safe_open says what is wrong with it
    return isinstance(header, dict) and any(
        isinstance(v, dict) and str(v.get("dtype", "")).startswith(("BF", "F8", "F4", "F6"))
        for k, v in header.items() if k != "__metadata__")


def _safetensors_via_torch(path: Path, refuse) -> Weights:
    try:
        from safetensors.torch import load_file
        state = load_file(str(path))
    except Exception as exc:  # noqa: BLE001
        raise refuse(f"damaged safetensors file ({exc})") from None
    return tensors_to_numpy(state, refuse)


def _read_torch(f, refuse) -> Weights:
    try:
        import torch
    except ImportError:
        raise refuse("reading a PyTorch checkpoint needs torch",
                     help="pip install 'cnndsl[torch]', or save the weights as safetensors") \
            from None
    import pickle
    import warnings
    try:
        with warnings.catch_warnings():  # torch's deprecation notes about the file's storage
            warnings.simplefilter("ignore")
            state = torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's text advises weights_only=False: never here
        raise refuse("the checkpoint holds Python objects other than tensors and plain "
                     "values, and is refused unread (loading them could run code)",
                     help="save the weights as safetensors, or torch.save(model.state_dict(),"
                     " ...)") from None
    except Exception as exc:  # noqa: BLE001 - truncated zips, ...
        raise refuse(f"not a readable PyTorch checkpoint ({str(exc).splitlines()[0]})",
                     help="only plain state_dicts load (weights_only=True)") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(
            state["state_dict"], dict):
        state = state["state_dict"]  # a training checkpoint that wraps it
    if not isinstance(state, dict):
        raise refuse(f"the file holds a {type(state).__name__}, not a state_dict")
    return tensors_to_numpy(state, refuse)


def tensors_to_numpy(state: dict, refuse) -> Weights:
    """Tensors as numpy arrays; what holds no usable numbers is refused by name: meta
    tensors (no values), quantized and sparse ones, types numpy has not (float8)."""
    import torch
    raw: Weights = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise refuse(f"`{key}` is a {type(value).__name__}, not a tensor")
        if value.is_meta:
            raise refuse(f"`{key}` is on the meta device: it has a shape but no values",
                         help="save the weights of a module that holds real tensors")
        if value.is_quantized:
            raise refuse(f"`{key}` is a quantized tensor ({value.dtype})",
                         help="save it as floating point (.dequantize())")
        if value.layout != torch.strided:
            raise refuse(f"`{key}` is a sparse tensor", help="save it dense (.to_dense())")
        if value.dtype in (torch.bfloat16, torch.float16):
            value = value.float()  # exact
        try:
            raw[str(key)] = value.detach().cpu().numpy()
        except (TypeError, RuntimeError):
            raise refuse(f"`{key}` holds {str(value.dtype).removeprefix('torch.')} values, "
                         "which cnndsl cannot read", help="save it as float32 (.float())") \
                from None
    return raw


def check_weights(raw: Weights, ir: Network, origin: str,
                  exempt: frozenset[str] = frozenset()) -> Weights:
    """Every name and shape of the spec's state_dict, and values a network can use;
    layers in `exempt` may be missing or differ (they are reinitialised)."""
    expected = {k: v for k, v in expected_shapes(ir).items()
                if k.rsplit(".", 1)[0] not in exempt}
    types = dtypes(ir)
    problems = _name_problems(raw, expected, exempt)
    problems += [p for k in expected if k in raw for p in _value_problems(k, raw[k], types[k])]
    if problems:
        shown = problems[:8] + ([f"... and {len(problems) - 8} more"] if len(problems) > 8 else [])
        raise CnnError([Diagnostic(code="E-weights", message=f"the weights in {origin} do not "
                                   f"fit {ir.name}", notes=tuple(shown),
                                   help="save them from this spec's compiled module")])
    return {k: np.asarray(raw[k], types[k]) for k in expected}


def _name_problems(raw: Weights, expected: dict, exempt: frozenset[str] = frozenset()):
    problems = [f"missing `{k}`" for k in expected if k not in raw]
    problems += [f"`{k}` is not in the network" for k in raw if k not in expected
                 and k.rsplit(".", 1)[0] not in exempt]
    problems += [f"`{k}` has shape {tuple(raw[k].shape)}, the network needs {shape}"
                 for k, shape in expected.items() if k in raw and tuple(raw[k].shape) != shape]
    return problems


def _value_problems(name: str, value, dtype: str = "float32", role: str | None = None
                    ) -> list[str]:
    """Values a network cannot compute with: NaN, infinities, values float32 cannot hold,
    complex numbers, integer or boolean weights (a counter like num_batches_tracked aside),
    and negative variances. `dtype`: what the network keeps there; `role`: the spec's name
    of the tensor, when `name` is the file's."""
    value = np.asarray(value)
    role = role or name
    if np.dtype(dtype).kind in "iu":
        return [] if value.dtype.kind in "iu" else [f"`{name}` must be an integer count"]
    if value.dtype.kind == "c":
        return [f"`{name}` is complex"]
    if value.dtype.kind not in "f":
        return [f"`{name}` holds {value.dtype} values, not floating point"]
    bad = int(np.size(value) - np.count_nonzero(np.isfinite(value)))
    if bad:
        return [f"`{name}` has {bad:,} NaN or infinite value{'s' if bad != 1 else ''}"]
    if value.dtype.itemsize > 4:  # float64 beyond float32's range would become inf
        huge = int(np.count_nonzero(np.abs(value) > np.finfo(np.float32).max))
        if huge:
            return [f"`{name}` has {huge:,} value{'s' if huge != 1 else ''} too large for "
                    "float32"]
    if role.endswith("running_var"):
        negative = int(np.count_nonzero(value < 0))
        if negative:
            return [f"`{name}` has {negative:,} negative value{'s' if negative != 1 else ''}"
                    ": a variance is never negative"]
    return []


# ---- weights from anywhere: this spec's names, another naming, torchvision ------------------


def resolve_weights(ir: Network, weights, *, seed: int = 0, weights_from: str | None = None,
                    may_differ: frozenset[str] = frozenset(), fresh: frozenset[str] = frozenset(),
                    build_module=None):
    """(weights by this spec's names, the import report or None) from `weights`: None
    (fresh), a file, `torchvision:NAME`, or a state_dict. Files in another naming are
    mapped by structure (cnndsl.transfer); `weights_from` names their architecture
    (`torchvision:NAME`). Layers in `may_differ` may be reinitialised where the source's
    shapes differ; layers in `fresh` are initialised afresh whatever the source holds (a
    new head asked for); `build_module(state=None)` builds the spec's nn.Module (for
    tracing and verification)."""
    if weights is None:
        if weights_from is not None:
            raise _refuse("--weights-from names the architecture of the --weights file: "
                          "give --weights too")
        return initial_weights(ir, seed), None
    from . import transfer
    source = _source(weights, weights_from)
    expected = expected_shapes(ir)
    may_differ = may_differ | fresh
    if source.arch is None and all(k in source.state for k in expected
                                   if k.rsplit(".", 1)[0] not in may_differ):
        found = _by_names(source.state, expected, may_differ, ir, source.label)
        arrays = {k: source.state[k] for k in found.pairs}
        report = transfer.ImportReport(source.label, "names", found.pairs, found.reinit,
                                       found.ignored, notes=list(source.notes))
    else:
        try:
            arrays, found, report = transfer.import_weights(source, ir, build_module,
                                                            may_differ)
        except CnnError as exc:
            raise _does_not_fit(exc, source, ir, expected) from None
    for name in [k for k in found.pairs if k.rsplit(".", 1)[0] in fresh]:
        theirs = found.pairs.pop(name)  # the report's lists are the match's
        found.reinit[name] = "asked for (reinit)"
        found.ignored.append(theirs)
        found.counterparts[name.rsplit(".", 1)[0]] = theirs.rsplit(".", 1)[0]
        arrays.pop(name)
    types = dtypes(ir)
    problems = [p + ("" if theirs == k else f" (the spec's `{k}`)")
                for k, theirs in found.pairs.items() if k in arrays
                for p in _value_problems(theirs, arrays[k], types[k], k)]
    if problems:
        raise CnnError([Diagnostic(code="E-weights", message=f"the weights in "
                                   f"{source.label} cannot be used", notes=tuple(problems[:8]))])
    state = {k: np.asarray(arrays[k], types[k]) for k in expected if k in arrays}
    state.update(initial_weights(ir, seed, only={*found.reinit, *found.counters}))
    state = {k: state[k] for k in expected}
    if source.arch is not None:
        report.verified = transfer.verify(source, ir, build_module(state), found)
        if report.verified is not None and not report.verified <= transfer.VERIFY_TOLERANCE:
            raise _refuse(f"the weights, mapped onto the spec, do not compute "
                          f"{source.described}: relative difference {report.verified:.2g}",
                          help="the spec differs from the model in something that has no "
                          "weights (a stride, a padding, an activation, eps)")
    return state, report


def _does_not_fit(exc: CnnError, source, ir: Network, expected) -> CnnError:
    """The mapping's own account first, then what comparing names would have said."""
    d = exc.diagnostics[0]
    by_name = _name_problems(source.state, expected)
    notes = (d.message, *d.notes,
             *([f"by name: {'; '.join(by_name[:3])}" + (f" and {len(by_name) - 3} more"
                                                        if len(by_name) > 3 else "")]
               if by_name and source.arch is None else []))
    return CnnError([d.model_copy(update={
        "message": f"the weights in {source.label} do not fit {ir.name}", "notes": notes})])


def _refuse(message: str, help: str | None = None, notes: tuple[str, ...] = ()) -> CnnError:
    return CnnError([Diagnostic(code="E-weights", message=message, help=help, notes=notes)])


def _source(weights, weights_from: str | None):
    from . import transfer
    named = isinstance(weights, str) and weights.startswith(
        (transfer.TORCHVISION, transfer.PYTHON))
    if (named or _is_module(weights)) and weights_from is not None:
        raise _refuse("--weights torchvision:NAME, python:... or a module names its "
                      "architecture already; --weights-from is for files")
    if _is_module(weights):  # any nn.Module, with its weights
        return transfer.module_source(weights)
    if named and weights.startswith(transfer.PYTHON):
        return transfer.module_source(transfer.python_model(weights), weights)
    if named:
        return transfer.torchvision_source(weights)
    arch = None
    if weights_from is not None and weights_from.startswith(transfer.PYTHON):
        if not isinstance(weights, (str, Path)):
            raise _refuse("--weights-from python:... names the architecture of a file")
        return _file_into(transfer.python_model(weights_from), weights, weights_from)
    if weights_from is not None:
        if not weights_from.startswith(transfer.TORCHVISION):
            raise _refuse(f"--weights-from takes torchvision:NAME or "
                          f"python:package.module:function, not `{weights_from}`")
        arch = transfer.torchvision_arch(weights_from)
    if isinstance(weights, (str, Path)):
        return transfer.Source(str(weights), read_state(weights), arch)
    if isinstance(weights, dict):
        tensors = {k: v for k, v in weights.items() if hasattr(v, "detach")}
        state = tensors_to_numpy(tensors, lambda why, help=None: _refuse(
            f"cannot use the given state_dict: {why}", help)) if tensors else {}
        state = {k: state[k] if k in state else np.asarray(v) for k, v in weights.items()}
        return transfer.Source("the given state_dict", state, arch)
    raise _refuse(f"weights must be a path, torchvision:NAME, python:package.module:function, "
                  f"a state_dict or an nn.Module, not a {type(weights).__name__}")


def _is_module(value) -> bool:
    return hasattr(value, "state_dict") and hasattr(value, "named_modules")


def _file_into(model, path, factory: str):
    """A file's weights in the named module (its own names: checked by load_state_dict)."""
    import torch

    from . import transfer
    state = read_state(path)
    try:
        model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
    except RuntimeError as exc:
        raise _refuse(f"{path} is not a state_dict of {factory}",
                      notes=tuple(str(exc).splitlines()[1:6])) from None
    return transfer.module_source(model, f"{path} (as {factory})")


def _by_names(state: Weights, expected, may_differ, ir: Network, origin: str):
    """This spec's own names: a tensor of a layer that may differ and does is
    reinitialised; every other difference is an error."""
    from .transfer import Match
    pairs, reinit, counterparts = {}, {}, {}
    wrong = {}
    for k, shape in expected.items():
        layer = k.rsplit(".", 1)[0]
        if k in state and tuple(state[k].shape) == shape:
            pairs[k] = k
        elif layer in may_differ:
            reinit[k] = ("not in the source" if k not in state else
                         f"shape {shape} here, {tuple(state[k].shape)} in the source")
            if k in state:
                counterparts[layer] = layer
        else:
            wrong[k] = state.get(k)
    extra = [k for k in state if k not in expected]
    if wrong or extra:
        check_weights(state, ir, origin, frozenset(may_differ))  # raises, naming each
    ignored = [k for k in state if k in reinit]
    return Match(pairs, reinit, ignored, counterparts)
