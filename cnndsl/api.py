"""The Python API: `cnndsl.load(...)` -> a checked `Model`."""

from __future__ import annotations

import functools
import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from . import ast
from .checker import Checker
from .diagnostics import CnnError, Diagnostic
from .ir import Network
from .program import MAX_SOURCE_BYTES, Program, display_path, read_spec
from .values import evaluate


def _without_gc(method: Callable) -> Callable:
    """Back ends walk the whole IR and allocate per node, like the checker: with the GC
    paused they stay linear (a 51,567-layer module: 136 us a layer with it, 79 without)."""
    @functools.wraps(method)
    def paused(*args, **kwargs):
        with _gc_paused():
            return method(*args, **kwargs)
    return paused


class Model:
    """A checked network: its IR (layers, shapes, counts) and the ways to compile it."""

    def __init__(self, ir: Network, program: Program, train: ast.TrainDef | None = None,
                 overrides: dict[str, Any] | None = None,
                 train_overrides: dict[str, Any] | None = None, training=None):
        self.ir = ir
        self.program = program
        self.train_def = train  # the spec's `train` definition for this network, if any
        self.overrides = dict(overrides or {})  # network parameters given at load time
        # training settings given at load time (`epochs`, `optimizer.lr`), checked then
        self.train_overrides = train_overrides or {}
        self.weights_report = None  # what the last weight import did (ImportReport)
        self._training = training  # the checked training description (TrainConfig), if made
        self._whole: Model | None = None  # the model this one keeps some outputs of
        self.memory_limit: int | None = None  # given at load time: also bounds the data

    def train_config(self, overrides: dict[str, Any] | None = None):
        """The `train` definition (or the defaults) with `overrides`, checked with the
        network, its task resolved: a `training.spec.TrainConfig`. Without overrides, the
        one checked when the spec was loaded."""
        if self._training is None or overrides:
            from .training.run import train_config
            config = train_config(self, overrides)
            if not overrides:
                self._training = config
            return config
        return self._training

    @property
    def name(self) -> str:
        return self.ir.name

    @property
    def layers(self):
        return self.ir.nodes

    @property
    def inputs(self):
        return self.ir.inputs

    @property
    def params(self) -> int:
        return self.ir.total_params

    @property
    def macs(self) -> int:
        return self.ir.total_macs

    @property
    def warnings(self) -> tuple[Diagnostic, ...]:
        return self.ir.warnings

    def shape(self, name: str) -> tuple[int, ...]:
        return self.ir.shape_of(name)

    @_without_gc
    def to_torch(self, weights=None, *, weights_from: str | None = None, reinit=(),
                 seed: int = 0):
        """An `nn.Module` built in memory (needs torch), freshly initialised by PyTorch, or
        holding `weights` (as for `Model.weights`)."""
        from .backends.torch_module import build_module
        if weights is None and weights_from is None and not reinit:
            return build_module(self.ir)
        return build_module(self.ir, self.weights(weights, seed, weights_from=weights_from,
                                                  reinit=reinit))

    def fit(self, data=None, *, epochs: int | None = None, batch: int | None = None,
            lr: float | None = None, seed: int | None = None, out=None, device: str = "auto",
            resume=None, weights=None, weights_from: str | None = None,
            progress: bool | None = None, exist_ok: bool = False, _stop_at=None,
            **settings) -> dict:
        """Train as the spec's `train` definition says (defaults where it has none).

        `data`: "digits" or an image folder (class subfolders, or train/ and val/).
        `settings` override the definition: `fit("digits", optimizer="sgd",
        **{"optimizer.momentum": 0.9})`. Writes checkpoints, metrics.json and plots to
        `out` if given. Returns the per-epoch history and the final metrics; the trained
        `nn.Module` is under "module". `weights` (and `weights_from`) as for
        `Model.weights`: pretrained weights to start from; `freeze=("layer1", "layer2")`,
        `unfreeze_after=3`, `reinit="fc"` as in the definition. An `out` that holds
        another run is refused unless it is the one resumed, or with `exist_ok`."""
        from .training.run import fit_model
        overrides = {**settings, **{k: v for k, v in (
            ("epochs", epochs), ("batch", batch), ("seed", seed), ("optimizer.lr", lr))
            if v is not None}}
        return fit_model(self, data, out=out, device=device, resume=resume, weights=weights,
                         weights_from=weights_from, progress=progress, overrides=overrides,
                         stop_at=_stop_at, exist_ok=exist_ok)

    def evaluate(self, data=None, *, weights=None, device: str = "auto",
                 batch: int | None = None, weights_from: str | None = None,
                 split: str | None = None) -> dict:
        """Accuracy, top-5, per-class precision/recall/F1, macro and weighted averages and
        the confusion matrix on `data`: its validation split (digits, a folder with train/
        and val/) or every image (a folder without them, an .npz); `split` ("all", "val",
        "train") chooses."""
        from .training.run import evaluate_model
        return evaluate_model(self, data, weights=weights, device=device, batch=batch,
                              weights_from=weights_from, split=split)

    def keep_outputs(self, names) -> Model:
        """This model with only the outputs named (`"fc"` or `("fc",)`), and the layers
        they need: auxiliary heads that served in training left out of a deployed model."""
        from .passes import keep_outputs
        names = (names,) if isinstance(names, str) else tuple(names)
        with self._located():
            ir = keep_outputs(self.ir, names)
        kept = Model(ir, self.program, self.train_def, self.overrides, self.train_overrides)
        kept._whole = self._whole or self
        kept.memory_limit = self.memory_limit
        return kept

    @_without_gc
    def to_torch_source(self) -> str:
        """Readable standalone PyTorch source for this network (imports only torch)."""
        from .backends.torch_source import generate_source
        return generate_source(self.ir, self.program.definitions)

    def weights(self, weights=None, seed: int = 0, *, weights_from: str | None = None,
                reinit=()):
        """Weights by state_dict name as numpy arrays: freshly initialised (None), from a
        file (.pt state_dict or .safetensors), `torchvision:NAME` (torchvision's weights
        API, the torch hub cache), or a state_dict (tensors or arrays).

        Weights in another naming (torchvision's) are mapped by structure:
        `weights_from="torchvision:NAME"` names the file's architecture (traced and
        verified); without it the file's own order is used, and refused where ambiguous.
        Layers whose shapes the load-time parameters changed (a new head) are initialised
        afresh where they differ; layers named in `reinit` (names or prefixes) are
        initialised afresh in any case. What was loaded, reinitialised and ignored is in
        `self.weights_report`."""
        if self._whole is not None:  # weights saved from the whole model load as ever
            state = self._whole.weights(weights, seed, weights_from=weights_from,
                                        reinit=reinit)
            self.weights_report = self._whole.weights_report
            kept = {n.name for n in self.ir.nodes}
            return {k: v for k, v in state.items() if k.rpartition(".")[0] in kept}
        from .weights import resolve_weights
        with self._located():
            state, self.weights_report = resolve_weights(
                self.ir, weights, seed=seed, weights_from=weights_from,
                may_differ=frozenset(self.changed_layers()),
                fresh=frozenset(self._layers(reinit)), build_module=self._module_factory)
        return state

    def _module_factory(self, state=None):
        from .backends.torch_module import build_module
        return build_module(self.ir, state) if state is not None else _meta_module(self.ir)

    def _layers(self, names) -> set[str]:
        from .transfer import layers_matching
        return layers_matching([names] if isinstance(names, str) else names, self.ir)

    def frozen_layers(self, freeze=None) -> set[str]:
        """The layers training keeps frozen: `freeze` (a `training.spec.Layers`, or layer
        names), else the spec's `train` definition's `freeze`."""
        from .training.spec import Layers, selected_layers
        if freeze is None:
            freeze = self.train_config().freeze
        elif not isinstance(freeze, Layers):
            freeze = Layers(names=(freeze,) if isinstance(freeze, str) else tuple(freeze))
        if freeze is None:
            return set()
        with self._located():
            return selected_layers(freeze, self.ir)

    def changed_layers(self) -> set[str]:
        """Layers whose weights have other shapes than at the spec's own parameter values
        (`classes=10` on a 1000-class spec: its classifier)."""
        if not self.overrides:
            return set()
        from .weights import expected_shapes
        defn = self.program.definitions[self.name]
        try:
            default = Checker(self.program.definitions, memory_limit=2**62,
                              file_defaults=self.program.file_defaults).network(defn, {})
        except CnnError:  # the spec's own values do not check: nothing to compare with
            return set()
        before, now = expected_shapes(default), expected_shapes(self.ir)
        return {k.rsplit(".", 1)[0] for k, shape in now.items()
                if k in before and before[k] != shape}

    @_without_gc
    def to_onnx(self, path: str | Path | None = None, *, weights=None, opset: int | None = None,
                fold_batchnorm: bool = True, seed: int = 0, weights_from: str | None = None,
                reinit=()):
        """An `onnx.ModelProto` written from the IR (no torch needed but for weights in
        another naming); saved atomically to `path` if given. `weights`, `weights_from`
        and `reinit` as for `Model.weights`."""
        from .backends.onnx_export import DEFAULT_OPSET, save, to_onnx
        state = self.weights(weights, seed, weights_from=weights_from, reinit=reinit)
        with self._located():
            model, _ = to_onnx(self.ir, state,
                               DEFAULT_OPSET if opset is None else opset,
                               fold_batchnorm)
        if path is not None:
            save(model, path)
        return model

    @contextmanager
    def _located(self) -> Iterator[None]:
        """Errors from back ends quote the spec like the checker's do."""
        try:
            yield
        except CnnError as exc:
            exc.sources = self.program.sources
            raise

    @_without_gc
    def onnx_session(self, provider: str = "auto", *, weights=None, seed: int = 0,
                     threads: int | None = None, weights_from: str | None = None, reinit=()):
        """An onnxruntime session on this network (`.run(x)`, `.provider`, `.benchmark`)."""
        from .runtime import create_session
        model = self.to_onnx(weights=weights, seed=seed, weights_from=weights_from,
                             reinit=reinit)
        return create_session(model.SerializeToString(), provider, threads)

    @_without_gc
    def summary(self, depth: int = 3) -> str:
        """The summary table (as `cnndsl summary`)."""
        from .report import summary_table
        return summary_table(self.ir, depth)

    @_without_gc
    def to_dot(self, **options) -> str:
        """The architecture diagram as Graphviz DOT (`depth`, `direction`, `shapes`, `params`)."""
        from .backends.diagram import to_dot
        return to_dot(self.ir, **options)

    def render(self, path: str | Path, engine: str = "auto", **options) -> Path:
        """Draw the diagram to .svg, .png, .pdf or .dot. `engine`: "bundled" (the Graphviz
        in pygraphviz's wheel), "system" (graphviz's `dot`) or "auto" (the faster installed)."""
        from .backends.diagram import write
        path = Path(path)
        write(self.ir, path, engine=engine, **options)
        return path

    def _repr_svg_(self) -> str | None:
        """Notebooks show the diagram (None, so the text form shows, without Graphviz)."""
        from .backends.diagram import DotMissingError, render
        try:
            return render(self.to_dot(), "svg").data.decode()
        except (DotMissingError, RuntimeError):
            return None

    def _repr_html_(self) -> str:
        import html
        svg = self._repr_svg_() or ""
        return (f"{svg}<details><summary>{html.escape(repr(self))}</summary>"
                f"<pre>{html.escape(self.summary())}</pre></details>")

    def __repr__(self) -> str:
        return (f"<cnndsl.Model {self.name}: {len(self.layers)} layers, "
                f"{self.params:,} parameters, {self.macs:,} MACs>")


def load(source: str | Path, *, network: str | None = None, strict: bool = False,
         memory_limit: int | None = None, confine_imports: bool = False,
         weight_copies: float = 1.0, train_overrides: dict[str, Any] | None = None,
         check_train: bool = True, **params: Any) -> Model:
    """Parse and check a spec: a path to a .cnn file, or .cnn source text.

    Keyword arguments override the network's parameters, e.g. `load(p, classes=10)`.
    `memory_limit` (bytes) caps parameter memory and activation memory per image (default:
    half this machine's memory). `confine_imports` refuses imports outside the spec's
    folder. `weight_copies`: how many copies of the fp32 weights the memory limit must
    allow for (`checker.WEIGHT_COPIES` has what writing ONNX and training hold).
    `train_overrides` (`{"epochs": 3, "optimizer.lr": 0.1}`, `{"loss": "mse"}`) change
    the `train` definition's settings before it is checked with the network, for
    `Model.fit` and `evaluate` to use as it is; `check_train=False` leaves the definition
    unchecked (for what does not train: compiling, drawing). Raises `CnnError` (located
    diagnostics) when the spec is wrong or over a limit.
    """
    program = Program(_confinement(source) if confine_imports else None)
    with _gc_paused():
        return _load(program, source, network, strict, (memory_limit, weight_copies),
                     params, (train_overrides, check_train))


def loads(text: str, *, name: str = "<string>", network: str | None = None,
          strict: bool = False, memory_limit: int | None = None,
          confine_imports: bool = False, imports_from: str | Path | None = None,
          **params: Any) -> Model:
    """Parse and check .cnn source text. Imports resolve from the folder `imports_from`
    (an editor's unsaved document: its file's folder), by default the current directory."""
    program = Program(Path.cwd() if confine_imports else None)
    with _gc_paused():
        return _load(program, _Source(text, name, imports_from), network, strict,
                     (memory_limit, 1.0), params, (None, True))


class _Source(str):
    """Source text passed by `loads`, never mistaken for a path."""

    def __new__(cls, text: str, name: str, base: str | Path | None = None):
        obj = super().__new__(cls, text)
        obj.name = name
        obj.base = Path(base) if base is not None else None
        return obj


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Parsing and checking allocate many acyclic objects; the cyclic GC rescanning them
    made parsing superlinear (12k lines: 5.2 s with it, 3.0 s without). Pause it meanwhile."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _load(program: Program, source, network, strict, memory, params,
          training: tuple[dict | None, bool]) -> Model:
    try:
        program.load_stdlib()
        if _is_path(source):
            path = Path(source)
            try:
                text = read_spec(path)
            except OSError as exc:
                raise CnnError([Diagnostic(code="E-io", message=f"cannot read {path}: "
                                           f"{exc.strerror or exc}")]) from None
            program.main = program.load_text(text, display_path(path), path.parent)
        else:
            name = getattr(source, "name", "<string>")
            if len(source) > MAX_SOURCE_BYTES:  # as for files; a character is a byte or more
                raise CnnError([Diagnostic(code="E-limit", message=f"{name} is larger than "
                                           f"{MAX_SOURCE_BYTES // 2**20} MiB")])
            program.main = program.load_text(str(source), name, getattr(source, "base", None))
        defn = program.network(network)
        train = program.train_def(defn.name)
        params = {**_train_args(train), **params}
        ir = Checker(program.definitions, strict, *memory,
                     file_defaults=program.file_defaults).network(defn, params)
        train_overrides, checks_training = training
        config = None
        if checks_training and (train is not None or train_overrides):
            config = _check_training(train, defn.name, ir, train_overrides)
    except CnnError as exc:
        exc.sources = program.sources
        raise
    model = Model(ir, program, train, params, train_overrides, training=config)
    model.memory_limit = memory[0]
    return model


def _check_training(train: ast.TrainDef | None, network: str, ir: Network,
                    overrides: dict | None):
    """The `train` definition with its overrides, checked with the network before anything
    runs (the task, its loss, layers); its errors say that they are the definition's."""
    from .training import tasks
    from .training.spec import check_train
    try:
        return tasks.resolve(check_train(train, network, ir.params, overrides), ir)
    except CnnError as exc:
        note = (f"an error of the `train {network}` definition: `compile`, `render`, "
                "`summary` and `run` do not train and go on without it") if train else None
        if note:
            exc.diagnostics = [d.model_copy(update={"notes": (*d.notes, note)})
                               if d.span is not None and d.span.file != "<command line>"
                               else d for d in exc.diagnostics]
        raise


def _meta_module(ir: Network):
    """The spec's module on the meta device (for tracing: nothing allocated)."""
    import torch

    from .backends.torch_module import build_module
    with torch.device("meta"):
        return build_module(ir)


def _train_args(train: ast.TrainDef | None) -> dict[str, Any]:
    """`train lenet5(classes=10)`: the network's parameters for training, by name."""
    if train is None:
        return {}
    if train.args:
        raise CnnError([Diagnostic(code="E-arg", message="name the network's parameters: "
                                   "`train net(classes=10)`", span=train.args[0].span)])
    return {kw.name: evaluate(kw.value, {}) for kw in train.kwargs}


def _confinement(source) -> Path:
    return Path(source).resolve().parent if _is_path(source) else Path.cwd()


def _is_path(source: str | Path) -> bool:
    """`load` takes a path, or source text: a str with a newline or a brace is source."""
    if isinstance(source, Path):
        return True
    return not isinstance(source, _Source) and "\n" not in source and "{" not in source
