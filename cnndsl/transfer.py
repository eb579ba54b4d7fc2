"""Weights from another naming: a torchvision state_dict (or any PyTorch one) mapped onto a
spec of the same architecture by structure, never by a table of names per model.

Two ways, by what is known about the weights:

* The source architecture is known (`torchvision:resnet18`, or a file with
  `weights_from="torchvision:resnet18"`): both modules run once on the meta device under a
  `TorchFunctionMode` that records every call touching a parameter, every merge (add,
  concatenation, product) and every split, with which earlier values it consumed. Each
  call of the spec's module is then matched to the call of the source module that has the
  same kind, the same parameter shapes, the same output size and the *same inputs*
  (already matched), backtracking where several fit. Declaration order plays no part, so
  RegNet's `proj` (declared before its body) maps correctly. The mapped weights are then
  verified: both modules run on one random batch and must agree.
* Only a file is given: its tensors are taken in the order the file declares them, and
  aligned with the spec's in its own order; whole unused subtrees of the file (GoogLeNet's
  auxiliary heads) may be skipped. The alignment must be the only best one; where the
  file's order does not fit, or two alignments fit equally well, the load is refused with
  the way to name the architecture.

Layers whose shapes the command changed (`--set classes=10`: a new head), and layers named
in `reinit`, may differ from the source: they are initialised afresh and reported.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .diagnostics import CnnError, Diagnostic

TORCHVISION = "torchvision:"
SEARCH_BUDGET = 20_000  # backtracking steps of the traced matcher
ORDER_STATES = 2_000_000  # states of the file-order alignment
MAX_SKIPS = 256
VERIFY_TOLERANCE = 1e-3  # relative max difference of the two modules' outputs


def refuse(message: str, help: str | None = None, notes: Iterable[str] = ()) -> CnnError:
    return CnnError([Diagnostic(code="E-weights", message=message, help=help,
                                notes=tuple(notes))])


# ---- the report ---------------------------------------------------------------------------


@dataclass
class ImportReport:
    """What a weight import did: loaded (spec name <- source name), reinitialised (with the
    reason) and ignored source tensors, how the mapping was found, and its verification."""

    source: str
    method: str  # "names", "file order" or "traced against torchvision:NAME"
    loaded: dict[str, str] = field(default_factory=dict)
    reinitialised: dict[str, str] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    verified: float | None = None  # relative max difference, where checked
    notes: list[str] = field(default_factory=list)

    def text(self) -> str:
        lines = [f"weights from {self.source} ({self.method}): {len(self.loaded)} tensors "
                 f"loaded, {len(self.reinitialised)} reinitialised, {len(self.ignored)} "
                 "ignored"]
        lines += [f"  reinitialised {name}: {why}" for name, why in
                  _first(self.reinitialised.items())]
        if self.ignored:
            lines.append("  ignored: " + ", ".join(_first(self.ignored)) +
                         (f" and {len(self.ignored) - 8} more" if len(self.ignored) > 8 else ""))
        if self.verified is not None:
            what = ("the spec's encoder computes the source's features" if "encoder" in
                    self.method else "the spec's module computes the source's function")
            lines.append(f"  verified: {what} (relative max difference {self.verified:.1e})")
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"source": self.source, "method": self.method,
                "counts": {"loaded": len(self.loaded), "reinitialised": len(self.reinitialised),
                           "ignored": len(self.ignored)},
                "loaded": self.loaded, "reinitialised": self.reinitialised,
                "ignored": self.ignored, "verified_difference": self.verified,
                "notes": self.notes}


def _first(items, n: int = 8) -> list:
    items = list(items)
    return items[:n] if len(items) > n + 1 else items


# ---- sources: torchvision's weights API, or a file -----------------------------------------


@dataclass
class Source:
    """Where weights come from: a state_dict, and the architecture when it is known."""

    label: str
    state: dict[str, np.ndarray]  # name -> array, in the file's order
    arch: str | None = None  # a torchvision model name, or the given module's class
    notes: list[str] = field(default_factory=list)
    model: Any = None  # an nn.Module holding the weights (not torchvision's): traced

    @property
    def described(self) -> str:
        return self.label if self.model is not None else f"torchvision's {self.arch}"


PYTHON = "python:"


def module_source(module, label: str | None = None) -> Source:
    """Any nn.Module with its weights: traced against the spec as torchvision's models are,
    and verified on a random batch."""
    from .weights import tensors_to_numpy
    label = label or f"the given {type(module).__name__}"
    state = tensors_to_numpy(module.state_dict(), lambda why, help=None: refuse(
        f"cannot use the weights of {label}: {why}", help=help))
    return Source(label, state, type(module).__name__, model=module)


def python_model(spec: str):
    """`python:package.module:function`: calls function() for an nn.Module. Imported with
    importlib only because the user named it on the command line (never from a spec)."""
    import importlib

    from torch import nn
    target = spec[len(PYTHON):].strip()
    module_name, _, function_name = target.partition(":")
    if not module_name or not function_name.isidentifier():
        raise refuse(f"`{spec}` does not name a function",
                     help="python:package.module:function, e.g. python:mymodels:build_net")
    try:
        found = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any import failure is the user's to see
        raise refuse(f"cannot import `{module_name}`: {type(exc).__name__}: {exc}",
                     help="it is imported from the current folder and PYTHONPATH") from None
    factory = getattr(found, function_name, None)
    if not callable(factory):
        raise refuse(f"`{module_name}` has no function `{function_name}`")
    try:
        model = factory()
    except Exception as exc:  # noqa: BLE001
        raise refuse(f"{target}() failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise refuse(f"{target}() gave a {type(model).__name__}, not an nn.Module")
    return model


def torchvision_arch(spec: str) -> str:
    """`torchvision:resnet18` -> `resnet18`, checked against torchvision's classification
    models."""
    name = spec[len(TORCHVISION):].strip()
    models = _torchvision().models
    known = models.list_models(module=models) + _segmentation_models(models)
    base = name.split(".")[0].lower()
    if base not in known:
        from .suggest import did_you_mean
        raise refuse(f"torchvision has no classification or segmentation model `{name}`",
                     help=did_you_mean(base, known) or "e.g. torchvision:resnet18; "
                     "the names are torchvision.models.list_models()")
    return base


def torchvision_source(spec: str) -> Source:
    """`torchvision:resnet18` (its DEFAULT weights) or `torchvision:resnet18.IMAGENET1K_V1`:
    through torchvision's own weights API, so offline it reads the file the torch hub cache
    already holds (`$TORCH_HOME/hub/checkpoints/`); loaded with weights_only=True."""
    arch = torchvision_arch(spec)
    models = _torchvision().models
    enum = models.get_model_weights(arch)
    tag = spec[len(TORCHVISION):].strip().partition(".")[2]
    if tag and tag not in enum.__members__:
        raise refuse(f"torchvision's {arch} has no weights `{tag}`",
                     help="its weights: " + ", ".join(enum.__members__))
    weights = enum[tag] if tag else enum.DEFAULT
    cached = _cache_file(weights.url)
    try:
        state = weights.get_state_dict(progress=False, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - no network, a damaged cache file, ...
        raise refuse(f"cannot load torchvision's {weights} weights: "
                     f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                     help=f"they are read from the torch hub cache, {cached}: copy the "
                     f"file there (from {weights.url}), or pass it with --weights FILE "
                     f"--weights-from torchvision:{arch}") from None
    from .weights import tensors_to_numpy
    notes = [f"torchvision's {weights}: {_transform_note(weights)}"]
    arrays = tensors_to_numpy(state, lambda why, help=None: refuse(
        f"cannot use torchvision's {weights} weights: {why}", help=help))
    return Source(f"torchvision:{arch} ({weights})", arrays, arch, notes)


def _cache_file(url: str) -> Path:
    import os
    from urllib.parse import urlparse

    import torch
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def _transform_note(weights) -> str:
    try:
        t = weights.transforms()
        return (f"inputs resized to {getattr(t, 'resize_size', '?')}, cropped to "
                f"{getattr(t, 'crop_size', '?')}, normalised with mean "
                f"{tuple(getattr(t, 'mean', ()))} and std {tuple(getattr(t, 'std', ()))}")
    except Exception:  # noqa: BLE001 - only a note
        return "see its transforms() for the expected inputs"


def _torchvision():
    try:
        import torchvision
    except ImportError:
        raise refuse("torchvision's weights need torchvision",
                     help="pip install 'cnndsl[train]'") from None
    return torchvision


def torchvision_model(arch: str, state: dict[str, np.ndarray] | None = None):
    """torchvision's model on the meta device (nothing initialised, nothing allocated),
    with the classifier size of `state` where that differs (a fine-tuned 10-class file)."""
    models = _torchvision().models
    kwargs = {}
    if arch in _segmentation_models(models):
        # no download of the backbone's weights; the auxiliary head where the file has it
        kwargs = {"weights_backbone": None, "aux_loss": state is not None and any(
            k.startswith("aux_classifier.") for k in state)}
    model = _build(models, arch, kwargs)
    head = _head_mismatch(model, state) if state is not None else None
    return _build(models, arch, {**kwargs, "num_classes": head}) if head is not None else model


def _segmentation_models(models) -> list[str]:
    return models.list_models(module=models.segmentation)


def holding(model, state: dict[str, np.ndarray]):
    """The meta-device model made real with the state's tensors (nothing is initialised)."""
    import torch
    model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in
                           state.items()}, strict=True, assign=True)
    return model


def _build(models, arch: str, kwargs: dict):
    import warnings

    import torch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # GoogLeNet's note on its initialisation
        try:
            with torch.device("meta"):
                return models.get_model(arch, weights=None, **kwargs)
        except (NotImplementedError, RuntimeError):  # a builder that computes with tensors
            return models.get_model(arch, weights=None, **kwargs).to("meta")


def _head_mismatch(model, state: dict[str, np.ndarray]) -> int | None:
    """The class count of a state whose only differences from the model are in its last
    linear layer (a fine-tuned head)."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    wrong = [k for k, shape in expected.items()
             if k in state and tuple(state[k].shape) != shape]
    if not wrong:
        return None
    last = [n for n, m in model.named_modules() if type(m).__name__ == "Linear"][-1:]
    if last and all(k.rsplit(".", 1)[0] == last[0] for k in wrong):
        return int(state[f"{last[0]}.weight"].shape[0])
    classes = {int(state[k].shape[0]) for k in wrong}  # a segmentation model's classifiers
    if not last and len(classes) == 1 and all(expected[k][0] == 21 for k in wrong):
        return classes.pop()
    return None


# ---- tracing: every call that touches a parameter, merges or splits -----------------------


@dataclass
class Call:
    """One recorded call: `conv2d` with its weight and bias, an `add` of two values, ..."""

    index: int
    kind: str
    params: tuple[str, ...]  # state_dict names, in argument order
    shapes: tuple[tuple[int, ...], ...]  # their shapes, singleton axes dropped
    inputs: tuple[int, ...]  # value ids, in argument order
    outputs: tuple[int, ...]
    sizes: tuple[int, ...]  # elements per sample of each output

    @property
    def commutative(self) -> bool:
        return self.kind in ("add", "mul")

    def key(self) -> tuple:
        """What must agree besides the inputs. A call without weights is settled by its
        inputs (its sizes follow theirs, which a reinitialised layer may change)."""
        if not self.params:
            return (self.kind, len(self.inputs), len(self.outputs))
        return (self.kind, self.shapes, self.sizes, len(self.inputs))

    def input_key(self, inputs: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(sorted(inputs)) if self.commutative else inputs


@dataclass
class Graph:
    calls: list[Call]
    inputs: tuple[int, ...]  # the network inputs' value ids
    shapes: dict[str, tuple[int, ...]]  # every state_dict tensor's shape
    # a concatenation's value -> (axis, the values it is made of), nested ones flattened:
    # torchvision's DenseNet concatenates all earlier features in each layer, a spec
    # concatenates one more each time; both make the same values
    joined: dict[int, tuple[int, tuple[int, ...]]] = field(default_factory=dict)
    by_parts: dict[tuple[int, tuple[int, ...]], int] = field(default_factory=dict)
    # a slice's value -> (the value it slices, axis, start, stop): torchvision's
    # `x.chunk(2, dim=1)` and a spec's `split(2)` (channel slices) make the same values
    sliced: dict[int, tuple[int, int, int, int]] = field(default_factory=dict)
    by_slice: dict[tuple[int, int, int, int], int] = field(default_factory=dict)
    output_ranks: tuple[int, ...] = ()  # axes per sample of each of the module's outputs
    first: dict[int, Any] = field(default_factory=dict)  # value id -> the tensor made first

    def __post_init__(self):
        self.by_parts = {parts: value for value, parts in self.joined.items()}
        self.by_slice = {part: value for value, part in self.sliced.items()}


_KIND_ALIASES = {"iadd": "add", "radd": "add", "imul": "mul", "rmul": "mul",
                 "concat": "cat", "concatenate": "cat"}


def _kind(func, args=(), kwargs=None, shapes=None) -> str:
    """The call's kind; a 1x1 convolution (stride 1, one group) and a linear layer are both
    `dense`: one matrix over the channels (torchvision's ConvNeXt uses Linear on
    channels-last tensors where a spec writes conv(c, 1))."""
    name = getattr(func, "__name__", str(func)).strip("_")
    name = _KIND_ALIASES.get(name, name)
    if name == "linear":
        return "dense"
    if name == "conv2d" and shapes is not None and len(args) > 1:
        options = dict(zip(("bias", "stride", "padding", "dilation", "groups"), args[2:]))
        options.update(kwargs or {})
        pointwise = all(n == 1 for n in shapes[2:]) and options.get("groups", 1) == 1 and \
            _all_ones(options.get("stride", 1)) and not _any(options.get("padding", 0))
        return "dense" if pointwise else name
    return name


def _all_ones(value) -> bool:
    return all(v == 1 for v in value) if isinstance(value, (tuple, list)) else value == 1


def _any(value) -> bool:
    if isinstance(value, str):
        return value != "valid"
    return any(value) if isinstance(value, (tuple, list)) else bool(value)


_PARTS = ("getitem", "narrow", "chunk", "split", "tensor_split")


def _part_ranges(kind: str, args, kwargs, x, outs) -> list[tuple[int, int, int]] | None:
    """(axis, start, stop) of each output that is a slice of `x` along one axis (`chunk`,
    `split`, `x[:, a:b]`), else None."""
    kwargs = kwargs or {}
    if kind in ("chunk", "split", "tensor_split"):
        axis = args[2] if len(args) > 2 else kwargs.get("dim", 0)
        axis %= x.dim()
        ranges, start = [], 0
        for out in outs:
            ranges.append((axis, start, start + out.shape[axis]))
            start += out.shape[axis]
        return ranges if start == x.shape[axis] else None
    if kind == "narrow" and len(args) >= 4:
        axis = args[1] % x.dim()
        return [(axis, args[2], args[2] + args[3])]
    if kind == "getitem" and len(args) > 1:
        key = args[1] if isinstance(args[1], tuple) else (args[1],)
        if not all(isinstance(k, slice) for k in key):
            return None
        sliced = [(i, k) for i, k in enumerate(key) if k != slice(None)]
        if len(sliced) != 1 or sliced[0][1].step not in (None, 1):
            return None
        axis, part = sliced[0]
        start, stop, _ = part.indices(x.shape[axis])
        return [(axis, start, stop)]
    return None


def trace(module, input_shapes: list[tuple[int, ...]], training: bool = True,
          device: str = "meta", xs: list | None = None) -> Graph:
    """The call graph of `module` on a batch of 2 (on the meta device: nothing is computed,
    nothing allocated). Trained mode, so that auxiliary heads run too. `device="cpu"`
    computes for real: a module that reads a tensor's value (Ultralytics' strides) needs
    it; `xs`, the inputs to compute with (zeros if not given)."""
    import torch
    from torch.overrides import TorchFunctionMode

    module = module.to(device)
    names = {id(t): n for n, t in (*module.named_parameters(), *module.named_buffers())}
    shapes = {n: tuple(t.shape) for n, t in module.state_dict().items()}
    keep: list[Any] = []  # every traced tensor stays alive, so ids stay unique
    value_of: dict[int, int] = {}
    calls: list[Call] = []
    joined: dict[int, tuple[int, tuple[int, ...]]] = {}
    sliced: dict[int, tuple[int, int, int, int]] = {}
    counter = [0]

    def slice_of(x, base: int, ranges, outs) -> None:
        for out, (axis, start, stop) in zip(outs, ranges):
            if (start, stop) == (0, x.shape[axis]):  # all of it: the same value
                keep.append(out)
                value_of[id(out)] = base
                continue
            outer = sliced.get(base)
            if outer is not None and outer[1] == axis:  # a slice of a slice
                sliced[new_value(out)] = (outer[0], axis, outer[2] + start, outer[2] + stop)
            else:
                sliced[new_value(out)] = (base, axis, start, stop)

    def join(inputs: list[int], out, axis: int) -> None:
        parts: list[int] = []
        for v in inputs:
            inner = joined.get(v)
            parts += inner[1] if inner is not None and inner[0] == axis else [v]
        joined[new_value(out)] = (axis, tuple(parts))

    first: dict[int, Any] = {}

    def new_value(tensor) -> int:
        counter[0] += 1
        keep.append(tensor)
        value_of[id(tensor)] = counter[0]
        # as made: an in-place op that follows (torchvision's ReLU(inplace=True)) changes it
        first[counter[0]] = tensor if device == "meta" else tensor.detach().clone()
        return counter[0]

    inside = [0]  # > 0 within a module recorded as one call (a frozen batch norm)

    def frozen_norm(norm, args, out) -> None:
        inside[0] -= 1
        if inside[0] or id(args[0]) not in value_of:
            return
        params = tuple(names[id(getattr(norm, n))] for n in _NORM_ARGS)
        calls.append(Call(len(calls), "batch_norm", params,
                          tuple(_squeezed(shapes[p]) for p in params),
                          (value_of[id(args[0])],), (new_value(out),), (_per_sample(out),)))

    class Recorder(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if inside[0]:
                return out
            tensors = list(_tensors((args, kwargs or {})))
            params = [names[id(t)] for t in tensors if id(t) in names]
            inputs = list(dict.fromkeys(value_of[id(t)] for t in tensors
                                        if id(t) in value_of and id(t) not in names))
            outs = list(_tensors(out))
            kind = _kind(func, args, kwargs, shapes.get(params[0]) if params else None)
            ranges = _part_ranges(kind, args, kwargs, tensors[0], outs) \
                if kind in _PARTS and len(inputs) == 1 and not params and tensors else None
            if ranges is not None:
                slice_of(tensors[0], inputs[0], ranges, outs)
            elif params and not inputs:  # a view of a parameter (`weight.view(-1, 1, 1)`)
                for t in outs:
                    if id(t) not in names:
                        keep.append(t)
                        names[id(t)] = params[0]
            elif kind == "cat" and len(inputs) > 1 and not params:
                axis = (args[1] if len(args) > 1 else (kwargs or {}).get("dim", 0))
                join([value_of[id(t)] for t in tensors if id(t) in value_of], out,
                     axis % out.dim())
            elif params or len(inputs) > 1 or (inputs and len(outs) > 1):
                ids = tuple(new_value(t) for t in outs)
                calls.append(Call(len(calls), kind, tuple(params),
                                  tuple(_squeezed(shapes[p]) for p in params), tuple(inputs),
                                  ids, tuple(_per_sample(t) for t in outs)))
            elif inputs:  # a unary op with no weights (relu, pooling, flatten): see through
                for t in outs:
                    keep.append(t)
                    value_of[id(t)] = inputs[0]
            return out

    hooks = [handle for m in module.modules() if _is_frozen_norm(m) for handle in (
        m.register_forward_pre_hook(lambda m, args: inside.__setitem__(0, inside[0] + 1)),
        m.register_forward_hook(frozen_norm))]
    if xs is None:
        xs = [torch.zeros((2, *s), device=device) for s in input_shapes]
    ids = tuple(new_value(x) for x in xs)
    module.train(training)
    try:
        with torch.no_grad(), Recorder():
            out = module(*xs)
    finally:
        for handle in hooks:
            handle.remove()
    ranks = tuple(t.dim() - 1 for t in _tensors(out))
    return Graph(calls, ids, shapes, joined, sliced=sliced, output_ranks=ranks, first=first)


_NORM_ARGS = ("running_mean", "running_var", "weight", "bias")  # F.batch_norm's order


def _is_frozen_norm(module) -> bool:
    """A batch norm whose statistics and affine are all buffers (torchvision's
    FrozenBatchNorm2d, as its detectors build their backbones): it computes with
    arithmetic of its own, recorded as the one batch norm it is."""
    import torch
    buffers = dict(module.named_buffers(recurse=False))
    return not any(True for _ in module.parameters(recurse=False)) and all(
        isinstance(buffers.get(n), torch.Tensor) for n in _NORM_ARGS) and \
        "BatchNorm" in type(module).__name__


def _tensors(obj):
    import torch
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors(item)


def _squeezed(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Singleton axes dropped: torchvision's layer scale is (C, 1, 1), a spec's may be (C)."""
    return tuple(n for n in shape if n != 1)


def _per_sample(tensor) -> int:
    return math.prod(tensor.shape[1:]) if tensor.dim() > 0 else 1


# ---- matching two traces ---------------------------------------------------------------


@dataclass
class Match:
    pairs: dict[str, str]  # spec name -> source name
    reinit: dict[str, str]  # spec name -> why
    ignored: list[str]
    counterparts: dict[str, str] = field(default_factory=dict)  # reinitialised layer ->
    # the source's layer in its place (the old head), where there is one
    encoder: int | None = None  # into an encoder: how many of the spec's calls it makes
    may_differ: set[str] = field(default_factory=set)
    # batch-norm step counters the source does not keep (a frozen batch norm): they start
    # at 0 and change nothing the module computes
    counters: list[str] = field(default_factory=list)


def match_traces(target: Graph, source: Graph, may_differ: set[str], arch: str,
                 loose_tail: bool = False, encoder: bool = False) -> Match:
    """Each call of the spec's module to the source's call of the same kind, shapes and
    size that consumes the matching inputs; depth-first with backtracking where several
    calls fit, so a wrong choice (two 1x1 convolutions of one shape on one input) is undone
    when what follows does not fit. `encoder`: a classifier's weights into a network that
    predicts per pixel; the longest run of the spec's calls from its input on that matches
    is the encoder, every call after it is the new head."""
    if len(target.inputs) != len(source.inputs):
        raise refuse(f"the spec has {len(target.inputs)} inputs, {arch} "
                     f"{len(source.inputs)}")
    by_inputs = _by_inputs(source)
    state = _Search(target, source, may_differ, by_inputs, loose_tail)
    chosen = state.run()
    if chosen is None and encoder:
        return _match_encoder(target, source, may_differ, by_inputs, state, arch)
    if chosen is None:
        raise _trace_failure(state, arch)
    return _pairs(target, source, chosen, may_differ)


def _by_inputs(source: Graph) -> dict[tuple, list[Call]]:
    found: dict[tuple, list[Call]] = {}
    for call in source.calls:
        found.setdefault((call.kind, call.input_key(call.inputs)), []).append(call)
    return found


def _encoder_search(target: Graph, source: Graph, may_differ: set[str], by_inputs,
                    failed: _Search) -> tuple[int, list, _Search]:
    """The longest prefix of the spec's calls that matches: (its length, the choices)."""
    import dataclasses
    length = failed.furthest[0]
    while length > 0:
        part = dataclasses.replace(target, calls=target.calls[:length])
        search = _Search(part, source, may_differ, by_inputs)
        chosen = search.run()
        if chosen is not None:
            return length, chosen, search
        length = min(length - 1, search.furthest[0])
    return 0, [], failed


def _match_encoder(target: Graph, source: Graph, may_differ: set[str], by_inputs,
                   failed: _Search, arch: str) -> Match:
    length, chosen, _ = _encoder_search(target, source, may_differ, by_inputs, failed)
    if not any(call.params and match is not None for call, match, _ in chosen):
        raise _trace_failure(failed, arch)
    new = [p for call in target.calls[length:] for p in call.params]
    found = _pairs(target, source, chosen, may_differ, new)
    found.encoder, found.may_differ = length, set(may_differ)
    return found


class _Search:
    def __init__(self, target: Graph, source: Graph, may_differ: set[str], by_inputs,
                 loose_tail: bool = False):
        self.target, self.source = target, source
        self.by_inputs = by_inputs
        # a layer the spec applies several times (a head shared by the levels of a
        # pyramid) has one set of weights: every application must map to the same source
        # tensors. spec tensor -> (source tensor, how many chosen calls bound it)
        self.bound: dict[str, tuple[str, int]] = {}
        self.unshared: dict[int, tuple[str, str]] = {}  # a call refused for that reason
        self.may_differ = may_differ
        self.furthest = (0, None)  # how far any attempt got, and the call it stopped at
        # a module of the user's (`loose_tail`): after the last call with weights, merges
        # need no counterpart; nothing is mapped through them, and verification compares
        # what they compute (a detector's box decoding, which Ultralytics writes with
        # tensors of its own)
        self.last_weighted = max((c.index for c in target.calls if c.params), default=-1) \
            if loose_tail else len(target.calls)

    def differs_ok(self, call: Call) -> bool:
        return bool(call.params) and all(_layer(p) in self.may_differ for p in call.params)

    def fits_bound(self, call: Call, match: Call) -> bool:
        return all(self.bound.get(mine, (theirs,))[0] == theirs
                   for mine, theirs in zip(call.params, match.params))

    def resolve(self, value: int, values: dict[int, int]) -> int | None:
        """The source's value for one of the spec's: matched, or a concatenation of the
        same (matched) parts."""
        if value in values:
            return values[value]
        part = self.target.sliced.get(value)
        if part is not None:
            base = self.resolve(part[0], values)
            return None if base is None else self.source.by_slice.get((base, *part[1:]))
        joined = self.target.joined.get(value)
        if joined is None:
            return None
        parts = tuple(self.resolve(v, values) for v in joined[1])
        return None if None in parts else self.source.by_parts.get((joined[0], parts))

    def candidates(self, call: Call, values: dict[int, int], used: set[int]) -> list:
        """(source call or None, exact) choices for one call of the spec."""
        inputs = tuple(self.resolve(v, values) for v in call.inputs)
        past_weights = not call.params and call.index > self.last_weighted
        if None in inputs:  # fed by a call that has no match
            return [(None, False)] if self.differs_ok(call) or past_weights else []
        key = (call.kind, call.input_key(inputs))
        same = [c for c in self.by_inputs.get(key, ()) if c.index not in used]
        fitting = [c for c in same if c.key() == call.key()]
        exact = [(c, True) for c in fitting if self.fits_bound(call, c)]
        if fitting and not exact:
            self.unshared[call.index] = (self.bound[call.params[0]][0], fitting[0].params[0])
        if exact:
            return exact
        if past_weights:
            return [(None, False)]
        if not self.differs_ok(call):
            return []
        return [(c, False) for c in same if len(c.params) == len(call.params)] + [(None, False)]

    def run(self) -> list | None:
        calls = self.target.calls
        values = dict(zip(self.target.inputs, self.source.inputs))
        used: set[int] = set()
        chosen: list = []
        stack: list = []  # choice points: (position, options, next option)
        position, steps = 0, 0
        while position < len(calls):
            steps += 1
            if steps > SEARCH_BUDGET:
                return None
            options = self.candidates(calls[position], values, used)
            if options:
                if len(options) > 1:
                    stack.append((position, options, 1))
                self._take(calls[position], options[0], values, used, chosen)
                position += 1
                continue
            if position >= self.furthest[0]:
                self.furthest = (position, calls[position])
            while stack:  # go back to the last choice that has another option
                at, options, nxt = stack.pop()
                self._undo(at, values, used, chosen)
                if nxt < len(options):
                    if nxt + 1 < len(options):
                        stack.append((at, options, nxt + 1))
                    self._take(calls[at], options[nxt], values, used, chosen)
                    position = at + 1
                    break
            else:
                return None
        return chosen

    def _take(self, call: Call, option, values, used, chosen) -> None:
        match, exact = option
        chosen.append((call, match, exact))
        self._bind(call, option, +1)
        if match is not None:
            used.add(match.index)
            values.update(zip(call.outputs, match.outputs))

    def _bind(self, call: Call, option, step: int) -> None:
        match, exact = option
        if match is None or not exact:
            return
        for mine, theirs in zip(call.params, match.params):
            count = self.bound.get(mine, (theirs, 0))[1] + step
            if count:
                self.bound[mine] = (theirs, count)
            else:
                del self.bound[mine]

    def _undo(self, position: int, values, used, chosen) -> None:
        while len(chosen) > position:
            call, match, exact = chosen.pop()
            self._bind(call, (match, exact), -1)
            if match is not None:
                used.discard(match.index)
                for v in call.outputs:
                    values.pop(v, None)


def _trace_failure(state: _Search, arch: str) -> CnnError:
    position, call = state.furthest
    if call is None:
        return refuse(f"the spec's layers cannot be matched with {arch}: "
                      "too many equally good ways (the search gave up)")
    layer = _layer(call.params[0]) if call.params else f"a `{call.kind}`"
    shapes = ", ".join(f"{p.rsplit('.', 1)[1]} {state.target.shapes[p]}" for p in call.params)
    notes = [f"the first {position} calls matched"]
    if call.index in state.unshared:
        first, here = (_layer(p) for p in state.unshared[call.index])
        notes.append(f"the spec applies `{layer}` again here with the same weights; the "
                     f"source applied `{first}` first and `{here}` here: its layers are "
                     "not shared")
    return refuse(f"the spec does not have the architecture of {arch}: `{layer}` "
                  f"({call.kind}{', ' + shapes if shapes else ''}) has no counterpart there",
                  notes=notes,
                  help="check the spec against the model's definition, or load weights "
                  "saved from this spec")


def _layer(param: str) -> str:
    return param.rsplit(".", 1)[0]


def _pairs(target: Graph, source: Graph, chosen: list, may_differ: set[str],
           new: Iterable[str] = ()) -> Match:
    pairs: dict[str, str] = {}
    reinit: dict[str, str] = dict.fromkeys(new, "new: the head, after the encoder")
    counterparts: dict[str, str] = {}
    for call, match, exact in chosen:
        if match is None:
            for p in call.params:
                reinit[p] = "not in the source"
            continue
        for mine, theirs in zip(call.params, match.params):
            if exact:
                pairs[mine] = theirs
            else:
                reinit[mine] = (f"shape {target.shapes[mine]} here, "
                                f"{source.shapes[theirs]} in the source")
                counterparts[_layer(mine)] = _layer(theirs)
    counters = _pair_leftovers(target, source, pairs, reinit)
    used = set(pairs.values())
    ignored = [n for n in source.shapes if n not in used]
    return Match(pairs, reinit, ignored, counterparts, counters=counters)


def _pair_leftovers(target: Graph, source: Graph, pairs: dict, reinit: dict) -> list[str]:
    """Tensors no call used (batch norm's num_batches_tracked): matched by suffix within
    the layers already matched. Returns the step counters the source's layer lacks."""
    layers = {_layer(m): _layer(t) for m, t in pairs.items()}
    reinit_layers = {_layer(m) for m in reinit}
    counters = []
    for name in target.shapes:
        if name in pairs or name in reinit:
            continue
        layer, suffix = name.rsplit(".", 1) if "." in name else ("", name)
        theirs = f"{layers[layer]}.{suffix}" if layer in layers else None
        if theirs in source.shapes and source.shapes[theirs] == target.shapes[name]:
            pairs[name] = theirs
        elif layer in reinit_layers:
            reinit[name] = "its layer is reinitialised"
        elif suffix == "num_batches_tracked" and layer in layers:
            counters.append(name)
        else:
            raise refuse(f"`{name}` has no counterpart in the source")
    return counters


# ---- matching by the file's own order ----------------------------------------------------


@dataclass(frozen=True)
class _Group:
    """The tensors of one module, as (suffix -> shape)."""

    name: str
    tensors: tuple[tuple[str, tuple[int, ...]], ...]

    @property
    def signature(self) -> tuple:
        return tuple(sorted((s, _squeezed(shape)) for s, shape in self.tensors))

    @property
    def suffixes(self) -> tuple:
        return tuple(sorted(s for s, _ in self.tensors))


def groups(shapes: dict[str, tuple[int, ...]]) -> list[_Group]:
    """State-dict entries grouped by module, in the order of first appearance."""
    found: dict[str, list] = {}
    for name, shape in shapes.items():
        layer, _, suffix = name.rpartition(".")
        found.setdefault(layer, []).append((suffix, tuple(shape)))
    return [_Group(layer, tuple(items)) for layer, items in found.items()]


def match_by_order(target: dict[str, tuple[int, ...]], source: dict[str, tuple[int, ...]],
                   may_differ: set[str]) -> Match:
    """The spec's modules aligned with the file's, both in their own order; the file's
    unused modules may be skipped only as whole subtrees (`aux1.*`). The cheapest alignment
    (fewest skips and reinitialisations) must be the only one of its cost."""
    mine, theirs = groups(target), groups(source)
    ends = _subtree_ends(theirs)
    goal = (len(mine), len(theirs))
    best: dict[tuple[int, int], int] = {(0, 0): 0}
    ways: dict[tuple[int, int], int] = {(0, 0): 1}
    parent: dict[tuple[int, int], tuple] = {}
    queue = deque([(0, 0)])
    done: set[tuple[int, int]] = set()
    furthest = 0
    while queue:
        state = queue.popleft()
        if state in done:
            continue
        done.add(state)
        if len(done) > ORDER_STATES or best[state] > MAX_SKIPS:
            break
        furthest = max(furthest, state[0])
        if state == goal:
            break
        for nxt, cost, move in _moves(state, mine, theirs, ends, may_differ):
            total = best[state] + cost
            if nxt not in best or total < best[nxt]:
                best[nxt], ways[nxt], parent[nxt] = total, ways[state], (state, move)
                (queue.appendleft if cost == 0 else queue.append)(nxt)
            elif total == best[nxt]:
                ways[nxt] = min(2, ways[nxt] + ways[state])
    if goal not in done:
        raise _order_failure(mine, theirs, furthest)
    if ways[goal] > 1:
        raise refuse("the file's tensors fit the spec in more than one way: equal shapes in "
                     "an order the file alone cannot settle",
                     help="name the architecture they come from: --weights-from "
                     "torchvision:NAME or python:package.module:function")
    return _order_pairs(mine, theirs, parent, goal)


def _subtree_ends(theirs: list[_Group]) -> list[list[int]]:
    """For each module, where each subtree that starts with it ends (distinct ends)."""
    ends: list[list[int]] = []
    for j, group in enumerate(theirs):
        parts = group.name.split(".") if group.name else []
        found = set()
        for depth in range(1, len(parts) + 1):
            prefix = ".".join(parts[:depth])
            if j > 0 and _under(theirs[j - 1].name, prefix):
                continue  # the subtree started earlier
            end = j
            while end < len(theirs) and _under(theirs[end].name, prefix):
                end += 1
            found.add(end)
        found.add(j + 1)
        ends.append(sorted(found))
    return ends


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _moves(state, mine, theirs, ends, may_differ):
    i, j = state
    if i < len(mine) and j < len(theirs):
        if mine[i].signature == theirs[j].signature:
            yield (i + 1, j + 1), 0, "match"
        elif mine[i].name in may_differ and mine[i].suffixes == theirs[j].suffixes:
            yield (i + 1, j + 1), 1, "reinit"
    if i < len(mine) and mine[i].name in may_differ:
        yield (i + 1, j), 1, "new"
    if j < len(theirs):
        for end in ends[j]:
            yield (i, end), 1, "skip"


def _order_pairs(mine, theirs, parent, goal) -> Match:
    pairs: dict[str, str] = {}
    reinit: dict[str, str] = {}
    ignored: list[str] = []
    counterparts: dict[str, str] = {}
    path = []
    state = goal
    while state in parent:
        previous, move = parent[state]
        path.append((previous, move, state))
        state = previous
    for (i, j), move, state in reversed(path):
        if move in ("match", "reinit"):
            for (suffix, shape), (their_suffix, their_shape) in zip(
                    sorted(mine[i].tensors), sorted(theirs[j].tensors)):
                name, their_name = _join(mine[i].name, suffix), _join(theirs[j].name,
                                                                      their_suffix)
                if move == "match":
                    pairs[name] = their_name
                else:
                    reinit[name] = f"shape {shape} here, {their_shape} in the source"
                    ignored.append(their_name)
                    counterparts[mine[i].name] = theirs[j].name
        elif move == "new":
            reinit.update({_join(mine[i].name, s): "not in the source"
                           for s, _ in mine[i].tensors})
        else:
            ignored += [_join(g.name, s) for g in theirs[j:state[1]] for s, _ in g.tensors]
    return Match(pairs, reinit, ignored, counterparts)


def _join(layer: str, suffix: str) -> str:
    return f"{layer}.{suffix}" if layer else suffix


def _order_failure(mine: list[_Group], theirs: list[_Group], furthest: int) -> CnnError:
    if furthest >= len(mine):
        return refuse("the file's tensors do not map onto the spec")
    stuck = mine[furthest]
    shapes = ", ".join(f"{s} {shape}" for s, shape in stuck.tensors)
    elsewhere = [g.name for g in theirs if g.signature == stuck.signature]
    notes = [f"the first {furthest} of the spec's {len(mine)} layers matched in order"]
    first = next((i for i, (a, b) in enumerate(zip(mine, theirs))
                  if a.signature != b.signature), None)
    if first is not None and first < furthest:  # where the plain order first breaks
        notes.append(f"taken one for one, the first that differs is the spec's "
                     f"`{mine[first].name}` against the file's `{theirs[first].name}`")
    if elsewhere:
        notes.append(f"tensors of that shape are in the file as `{elsewhere[0]}`"
                     + (f" and {len(elsewhere) - 1} more" if len(elsewhere) > 1 else "") +
                     ", where its order does not put them: the file may declare its layers "
                     "in another order than they run (torchvision's RegNet declares its "
                     "projection `proj` before the body `f`)")
    return refuse(f"the file's tensors do not map onto the spec in the file's order: the "
                  f"spec's `{stuck.name}` ({shapes}) has no counterpart where it should be",
                  notes=notes, help="name the architecture they come from: --weights "
                  "torchvision:NAME, or --weights FILE --weights-from torchvision:NAME (or "
                  "python:package.module:function, a function returning the nn.Module)")


# ---- putting it together --------------------------------------------------------------


def import_weights(source: Source, ir, build_module, may_differ: set[str]):
    """The spec's tensors (numpy, by its names) from a source in another naming, the
    match that found them and the report. `build_module()` builds the spec's nn.Module;
    `may_differ` holds the layers that may be reinitialised."""
    from .weights import expected_shapes
    target_shapes = expected_shapes(ir)
    if source.arch is not None:
        if source.model is not None:  # traced on a copy: theirs stays as it is
            import copy
            theirs_model = copy.deepcopy(source.model)
        else:
            theirs_model = torchvision_model(source.arch, source.state)
        # torchvision's models are traced training (their auxiliary heads run then); any
        # other module as it runs at inference (a detector decodes its boxes only then)
        training = source.model is None
        theirs = trace(theirs_model, [i.shape for i in ir.inputs], training,
                       "meta" if source.model is None else "cpu")
        _check_state_fits(source, theirs.shapes)
        target = trace(build_module(), [i.shape for i in ir.inputs], training)
        encoder = _into_encoder(target, theirs)
        found = match_traces(target, theirs, may_differ, source.described,
                             loose_tail=source.model is not None, encoder=encoder)
        method = (f"traced against {source.label}" if source.model is not None else
                  f"traced against torchvision:{source.arch}")
        if found.encoder is not None:
            method += ", into the spec's encoder"
    else:
        shapes = {k: tuple(v.shape) for k, v in source.state.items()}
        found = match_by_order(target_shapes, shapes, may_differ)
        method = "the file's order"
    report = ImportReport(source.label, method, found.pairs, found.reinit, found.ignored,
                          notes=list(source.notes))
    if found.encoder is not None:
        report.notes.append(_encoder_note(found, source.described))
    if found.counters:
        report.notes.append(f"{len(found.counters)} batch norms are frozen in the source "
                            "(no num_batches_tracked): their step counters start at 0")
    arrays = {mine: source.state[theirs].reshape(target_shapes[mine])
              for mine, theirs in found.pairs.items()}
    return arrays, found, report


def _into_encoder(target: Graph, source: Graph) -> bool:
    """A classifier (one score vector) into a network that predicts per pixel (classes x
    H x W): only an encoder can hold its weights."""
    return target.output_ranks[:1] == (3,) and source.output_ranks[:1] == (1,)


def _encoder_note(found: Match, arch: str) -> str:
    layers = list(dict.fromkeys(_layer(p) for p in found.pairs))
    new = list(dict.fromkeys(_layer(p) for p, why in found.reinit.items()
                             if why.startswith("new")))
    shown = ", ".join(new[:6]) + (f" and {len(new) - 6} more" if len(new) > 6 else "")
    return (f"the encoder, the spec's layers {layers[0]} to {layers[-1]} ({len(layers)} "
            f"layers), holds {arch}'s weights; the head ({len(new)} layers: {shown}) is new "
            "and keeps its initial weights")


def _check_state_fits(source: Source, expected: dict[str, tuple[int, ...]]) -> None:
    """A file named as torchvision's model must be that model's state_dict."""
    problems = [f"missing `{k}`" for k in expected if k not in source.state]
    problems += [f"`{k}` is not in {source.arch}" for k in source.state if k not in expected]
    problems += [f"`{k}` has shape {tuple(source.state[k].shape)}, {source.arch} has {shape}"
                 for k, shape in expected.items()
                 if k in source.state and tuple(source.state[k].shape) != shape]
    if problems:
        raise refuse(f"the weights are not torchvision's {source.arch} ({len(problems)} "
                     "differences)", notes=problems[:8],
                     help="name the architecture they were saved from")


def verify(source: Source, ir, module, found: Match) -> float | None:
    """Run torchvision's model (holding the source weights) and the spec's module (holding
    the mapped ones) on one random batch: the relative max difference of their outputs,
    or, where layers were reinitialised, of what enters the first of them."""
    compare = _compare if found.encoder is None else _compare_encoder
    if source.model is not None:
        theirs, was_training = source.model, source.model.training
        try:
            return compare(source.model.eval(), ir, module, found)
        finally:
            theirs.train(was_training)
    theirs = holding(torchvision_model(source.arch, source.state), source.state).eval()
    return compare(theirs, ir, module, found)


def _compare_encoder(theirs, ir, module, found: Match) -> float | None:
    """Both modules traced computing on one random batch (inference mode); every value the
    spec's head takes from its encoder against the source's value there: the relative max
    difference, the worst of them."""
    import torch
    generator = torch.Generator().manual_seed(0)
    xs = [torch.randn((2, *i.shape), generator=generator) for i in ir.inputs]
    shapes = [i.shape for i in ir.inputs]
    mine = trace(module, shapes, False, "cpu", xs)
    source = trace(theirs, shapes, False, "cpu", [x.clone() for x in xs])
    search = _Search(mine, source, found.may_differ, _by_inputs(source))
    search.furthest = (found.encoder, None)
    length, chosen, search = _encoder_search(mine, source, found.may_differ,
                                             _by_inputs(source), search)
    pairs = {a: b for call, match, exact in chosen if match is not None and exact
             for a, b in zip(call.params, match.params)}
    if length != found.encoder or any(found.pairs.get(a) != b for a, b in pairs.items()):
        raise refuse("the encoder matched differently in inference mode than in training "
                     "mode: its weights are not loaded")
    values = dict(zip(mine.inputs, source.inputs))
    for call, match, _ in chosen:
        if match is not None:
            values.update(zip(call.outputs, match.outputs))
    worst, compared = 0.0, 0
    for call in mine.calls[length:]:
        for value in {leaf for v in call.inputs for leaf in _leaves(mine, v)}:
            theirs_value = search.resolve(value, values)
            if theirs_value is None:
                continue
            a, b = mine.first[value], source.first[theirs_value]
            if a.shape != b.shape:
                return math.inf
            scale = float(b.abs().max()) or 1.0
            worst = max(worst, float((a - b).abs().max()) / scale)
            compared += 1
    return worst if compared else None


def _leaves(graph: Graph, value: int):
    """A value and what it is made of: the parts of a concatenation, the whole of a
    slice."""
    yield value
    if value in graph.joined:
        for part in graph.joined[value][1]:
            yield from _leaves(graph, part)
    if value in graph.sliced:
        yield from _leaves(graph, graph.sliced[value][0])


def _compare(theirs, ir, module, found: Match) -> float | None:
    import torch
    module = module.eval()
    generator = torch.Generator().manual_seed(0)
    xs = [torch.randn((2, *i.shape), generator=generator) for i in ir.inputs]
    caught: tuple[list, list] = ([], [])
    if found.reinit:
        first = _layer(next(iter(found.reinit)))
        if first not in found.counterparts:
            return None  # a layer the source does not have: nothing to compare it with
        for model, name, into in ((module, first, caught[0]),
                                  (theirs, found.counterparts[first], caught[1])):
            layer = dict(model.named_modules())[name]
            layer.register_forward_pre_hook(lambda m, args, into=into: into.append(args[0]))
    with torch.no_grad():
        out_mine, out_theirs = module(*xs), theirs(*xs)
    if found.reinit:
        a, b = caught[0][0], caught[1][0]
    else:
        a, b = _main(out_mine), _main(out_theirs)
    scale = float(b.abs().max()) or 1.0
    return float((a.reshape(b.shape) - b).abs().max()) / scale


def _main(out):
    if isinstance(out, (tuple, list)):
        return out[0]
    if isinstance(out, dict):  # torchvision's segmentation models: {"out": ..., "aux": ...}
        return next(iter(out.values()))
    return getattr(out, "logits", out)


def layers_matching(names: Iterable[str], ir) -> set[str]:
    """Layer names (or prefixes: `fc`, `layer4`, `classifier`) of layers with weights."""
    layers = {n.name for n in ir.nodes if n.params or n.buffers}
    chosen: set[str] = set()
    for name in names:
        matched = {layer for layer in layers if _under(layer, name)}
        if not matched:
            from .suggest import did_you_mean
            raise refuse(f"no layer `{name}` with weights",
                         help=did_you_mean(name, sorted(layers)) or "give layer or block "
                         "names as `check` lists them")
        chosen |= matched
    return chosen
