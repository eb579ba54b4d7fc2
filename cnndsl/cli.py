"""The `cnndsl` command. Exit status: 0 success, 1 errors in the spec, 2 usage errors."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from .checker import WEIGHT_COPIES
from .diagnostics import CnnError, Diagnostic, Label, printable_text, render_all, use_color
from .source import SourceMap

EXIT_OK, EXIT_SPEC, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3
DEFAULT_OUT = "runs/train"


class UsageError(Exception):
    """A command line cnndsl cannot run (exit 2); `parser` is the (sub)command's."""

    def __init__(self, message: str, parser: argparse.ArgumentParser | None = None):
        super().__init__(message)
        self.parser = parser


class _Parser(argparse.ArgumentParser):
    """argparse, its complaints raised as UsageError: rendered as every error is (escaped,
    with a code) and as JSON under --json, instead of printed raw and exited."""

    def error(self, message: str):
        raise UsageError(message, self)


def _say(text: str) -> None:
    """A line of progress or result for a person: on stderr, made safe for a terminal
    (paths and spec text may hold escape sequences)."""
    print(printable_text(text), file=sys.stderr)


def _show(text: str, end: str = "\n") -> None:
    """Text output on stdout (a table, a report), made safe for a terminal."""
    print(printable_text(text), end=end)


def parse_value(text: str):
    """A --set value: int, float, true/false, or a word."""
    from .values import Symbol
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return Symbol(text)


COMMAND_LINE = "<command line>"  # the name errors in a --set value are located in


def parse_sets(pairs: list[str], words: list[str] | None = None):
    """The pairs; with the command line's `words` (as `command_line_text` joins them),
    where each value stands in it, for errors. A name given twice is refused (the last
    would silently win)."""
    from .source import Span
    from .training.spec import Overrides
    values = Overrides()
    text, offset = (command_line_text(words), 0) if words else ("", 0)
    for pair in pairs or []:
        name, eq, value = pair.partition("=")
        if not eq or not all(part.isidentifier() for part in name.strip().split(".")):
            raise UsageError(f"--set expects NAME=VALUE, got `{pair}`")
        name = name.strip()
        span = None
        at = text.find(_one_line(pair), offset)
        if at >= 0:
            start = at + len(_one_line(pair.partition("=")[0])) + 1
            offset = at + len(_one_line(pair))
            span = Span(COMMAND_LINE, 1, start + 1, 1, offset + 1)
        if name in values:
            first = values.spans.get(name)
            raise CnnError([Diagnostic(
                code="E-arg", message=f"--set {name} is given twice", span=span,
                related=(Label(span=first, text="first here"),) if first else (),
                help=f"give `{name}` once")])
        values[name] = parse_value(value.strip())
        if span is not None:
            values.spans[name] = span
    return values


def command_line_text(words: list[str]) -> str:
    """The command line as one line (a newline in a value shown as `\\n`), where errors in
    --set values are shown."""
    return " ".join(["cnndsl", *map(_one_line, words)])


def _one_line(word: str) -> str:
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in word)


def bounded_int(low: int, high: int):
    """An argparse type: an integer in [low, high]."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: `{text}`") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low:,} and {high:,}, not "
                                             f"{value:,}")
        return value
    return parse


def parse_size(text: str) -> int:
    """`12GiB`, `500MB`, `1G` (= 1 GiB, as docker and ulimit read it), `2e9` -> bytes."""
    units = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
             "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
             "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
    number = text.strip().rstrip("BbIiKkMmGgTt")
    unit = text.strip()[len(number):].lower()
    try:
        value = float(number) * units[unit]
    except (ValueError, KeyError):
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a size: `{text}` (e.g. 12GiB, 500MB, 1G)")
    if value < 1:
        raise argparse.ArgumentTypeError(f"the size must be at least 1 byte, not `{text}`")
    return int(value)


def _load(args, weight_copies: float = 1.0):
    """The spec, checked. `check` checks its `train` definition too, with the training
    settings among the --set values; the commands that do not train leave it aside."""
    from .api import load
    checks_training = args.command == "check"
    if checks_training:
        params, train = _split_sets(args)
    else:
        params, train = parse_sets(args.set), None
    return load(Path(args.spec), network=args.network, strict=getattr(args, "strict", False),
                memory_limit=getattr(args, "memory_limit", None),
                confine_imports=getattr(args, "confine_imports", False),
                weight_copies=weight_copies, train_overrides=train,
                check_train=checks_training, **params)


def _frozen(model, args) -> set[str]:
    """--freeze / --freeze-all-except, else the spec's `train` definition's `freeze`."""
    from .training.spec import Layers
    if getattr(args, "freeze", None):
        return model.frozen_layers(Layers(names=tuple(args.freeze)))
    if getattr(args, "freeze_all_except", None):
        return model.frozen_layers(Layers(names=tuple(args.freeze_all_except),
                                          all_except=True))
    return model.frozen_layers()


def cmd_check(args) -> int:
    from .report import layer_table, to_json
    model = _load(args)
    if args.json:
        print(json.dumps({"ok": True, **to_json(model.ir, _frozen(model, args))}, indent=2))
    else:
        if model.warnings:
            sys.stderr.write(render_all(list(model.warnings), model.program.sources,
                                        use_color()) + "\n")
        _show(layer_table(model.ir), end="")
    return EXIT_OK


def cmd_compile(args) -> int:
    from .atomic import write_text
    if args.to == "torch" and (args.weights or args.opset is not None or args.keep_batchnorm
                               or args.weights_from or args.reinit):
        raise UsageError("--weights, --weights-from, --reinit, --opset and --keep-batchnorm "
                         "apply to --to onnx; the "
                         "generated module loads a state_dict as any nn.Module does: "
                         "model.load_state_dict(safetensors.torch.load_file(path))")
    if args.to == "torch" and (args.quantize or args.precision != "fp32" or args.calibrate
                               or args.preprocess):
        raise UsageError("--quantize, --precision, --calibrate and --preprocess apply to "
                         "--to onnx")
    if args.nms and (args.to != "onnx" or args.quantize or args.precision != "fp32"):
        raise UsageError("--nms applies to --to onnx at fp32")
    model = _keep_outputs(_load(args, WEIGHT_COPIES["onnx"] if args.to == "onnx" else 1.0),
                          args)
    if args.to == "torch":
        write_text(args.output, model.to_torch_source())
        detail = ""
    else:
        onnx_model = _described_onnx(model, args)
        if args.quantize or args.precision != "fp32":
            return _reduced_onnx(model, onnx_model, args)
        _say_weights(model, args)
        origin = f"from {args.weights}" if args.weights else f"initialised (seed {args.seed})"
        detail = (f", opset {onnx_model.opset_import[0].version}, "
                  f"{len(onnx_model.graph.node)} nodes, weights {origin}")
    if args.json:
        report = {"ok": True, "output": args.output, "target": args.to,
                  "params": model.params}
        if args.to == "onnx":
            report.update(opset=onnx_model.opset_import[0].version,
                          nodes=len(onnx_model.graph.node), weights=args.weights,
                          weights_report=_weights_json(model))
        print(json.dumps(report, indent=2))
    else:
        _say(f"wrote {args.output} ({args.to}, {model.params:,} parameters{detail})")
    return EXIT_OK


def _described_onnx(model, args):
    """The ONNX export with what predicting needs (classes, input, normalisation) in its
    metadata_props, saved to args.output."""
    from .backends.onnx_export import save
    from .deploy.describe import annotate, exported_info
    onnx_model = model.to_onnx(weights=args.weights, opset=args.opset,
                               fold_batchnorm=not args.keep_batchnorm, seed=args.seed,
                               weights_from=args.weights_from, reinit=args.reinit or ())
    info = exported_info(model)
    if getattr(args, "nms", False):
        from .deploy.detect_onnx import with_nms
        onnx_model = with_nms(onnx_model, _detector_head(model).classes)
    if info is not None:
        annotate(onnx_model, info)
    if args.preprocess:
        from .deploy.describe import with_preprocessing
        if info is None:
            raise UsageError("--preprocess needs a network that takes one image "
                             "(C x H x W, C 1 or 3)")
        if args.quantize or args.precision != "fp32":
            raise UsageError("--preprocess applies to fp32 exports, not with --quantize "
                             "or --precision")
        with_preprocessing(onnx_model, info)
    if not (args.quantize or args.precision != "fp32"):
        save(onnx_model, args.output)
    return onnx_model


def _detector_head(model):
    """The head of a detector (for --nms); a located error for another network."""
    from .training.dethead import find_head
    try:
        return find_head(model.ir)
    except CnnError as exc:
        exc.sources = model.program.sources
        exc.diagnostics[0] = exc.diagnostics[0].model_copy(update={
            "message": "--nms: " + exc.diagnostics[0].message})
        raise


def _reduced_onnx(model, fp32, args) -> int:
    """--quantize int8 / --precision fp16: the reduced model to args.output, then both on
    the validation split."""
    from .backends.onnx_export import save
    from .deploy import quantize as q
    from .deploy.describe import exported_info
    from .training.data import eval_transform
    from .training.run import load_dataset, train_config
    precision = args.quantize or args.precision
    if args.quantize and args.precision != "fp32":
        raise UsageError("--quantize int8 and --precision fp16 are two ways to reduce; "
                         "give one")
    if args.quantize and not args.calibrate:
        raise UsageError("--quantize int8 needs --calibrate DATA (digits, an image folder "
                         "or an .npz file): its training images calibrate the activations")
    info = exported_info(model)
    config = train_config(model)
    data = load_dataset(model, config, args.calibrate)
    if not len(data.val.labels):  # checked before anything is written
        raise CnnError([Diagnostic(code="E-data", message=f"{args.calibrate} has no "
                                   "validation images to compare the two models on",
                                   help="give more images per class, or a folder with "
                                   "train/ and val/")])
    prepare = eval_transform(info.normalize_ops() if info else [])
    batches = q.calibration_batches(data.train.images, args.calibration, args.seed, prepare)
    _say_weights(model, args)
    reduced = q.reduce(fp32, precision, batches, args.method)
    q.keep_description(reduced, info, precision)
    save(reduced, args.output)
    comparison = q.compare(fp32.SerializeToString(), reduced.SerializeToString(), data.val,
                           prepare)
    if args.json:
        print(json.dumps({"ok": True, "output": args.output, "precision": precision,
                          "method": args.method if precision == "int8" else None,
                          "calibration_images": sum(len(b) for b in batches)
                          if precision == "int8" else 0, **comparison}, indent=2))
    else:
        how = (f", {args.method} calibration on {sum(len(b) for b in batches)} training "
               f"images (seed {args.seed})" if precision == "int8" else "")
        _say(f"wrote {args.output} ({precision}{how})")
        _show(q.format_comparison(comparison, precision))
    return EXIT_OK


def cmd_run(args) -> int:
    from .runtime import model_inputs, open_session, random_inputs
    if args.model.endswith(".cnn"):
        args.spec = args.model
        model = _keep_outputs(_load(args, WEIGHT_COPIES["onnx"]), args)
        data = model.to_onnx(weights=args.weights, seed=args.seed,
                             weights_from=args.weights_from,
                             reinit=args.reinit or ()).SerializeToString()
        _say_weights(model, args)
        shapes = [i.shape for i in model.inputs]
        source = f"{args.model} (compiled now)"
    else:
        if args.weights or args.set or args.weights_from or args.reinit or args.outputs:
            raise UsageError("--weights, --weights-from, --reinit, --outputs and --set apply "
                             "to .cnn specs, not to .onnx files")
        model = None
        data, source = _onnx_model(args.model), args.model
        shapes = None
    session = open_session(data, args.runtime, args.provider, args.threads, args.precision,
                           benchmark=bool(args.bench))
    if shapes is None:
        batch = None if args.input else args.batch
        shapes = model_inputs(session, batch, have_input=bool(args.input))
    if args.input:
        inputs = [_read_input(args, model, shapes[0])]
    else:
        inputs = random_inputs(shapes, args.batch, args.seed, args.memory_limit)
    if not args.json:
        _say(f"{source}: running on {session.describe()}")
    outputs = session.run(*inputs)
    report = {"ok": True, "model": source, **session.report(), "outputs": []}
    if model is not None and model.weights_report is not None:
        report["weights_report"] = model.weights_report.to_json()
    for name, out in zip(session.output_names, outputs):
        entry = {"name": name, "shape": list(out.shape)}
        line = f"output {name}: {' x '.join(map(str, out.shape))}"
        if out.ndim == 2 and out.size:
            entry["argmax"] = out.argmax(axis=1).tolist()
            line += f", argmax {entry['argmax'][:8]}"
        report["outputs"].append(entry)
        if not args.json:
            _show(line)
    if args.output:
        import numpy as np

        from .atomic import atomic_path
        with atomic_path(args.output) as tmp, open(tmp, "wb") as f:
            np.save(f, outputs[0])
    if args.bench:
        stats = session.benchmark(inputs, args.bench)
        report["benchmark"] = stats
        if not args.json:
            where = stats["provider"] if session.provider != "openvino" else session.runtime
            print(f"{stats['runs']} runs, batch {stats['batch']} on {where}: "
                  f"p50 {stats['p50_ms']:.2f} ms, p90 {stats['p90_ms']:.2f} ms, "
                  f"p99 {stats['p99_ms']:.2f} ms, {stats['images_per_s']:.1f} images/s")
    if args.json:
        print(json.dumps(report, indent=2))
    return EXIT_OK


def _read_input(args, model, shape):
    """--input: an .npy array as it is (with a warning where it does not look like what
    training fed the model), or images, preprocessed as the spec's training did."""
    import numpy as np

    from .runtime import input_warnings, read_input
    path = Path(args.input)
    normalize = _normalization(model)
    if not path.is_dir() and (path.suffix.lower() == ".npy" or not path.is_file()
                              or _starts_like_npy(path)):  # read_input refuses a FIFO
        array = read_input(args.input, shape)
        for warning in input_warnings(args.input, array, bool(normalize)):
            _say(f"warning: {warning}")
        return array.astype(np.float32)
    if None in shape:
        raise _spec_error(f"the model's input size is not fixed "
                          f"({' x '.join('?' if d is None else str(d) for d in shape)}): "
                          "images cannot be resized to it; give an .npy array")
    try:
        from .training.data import DataError, eval_transform, read_images
    except ImportError as exc:
        raise UsageError(f"reading images needs the train extra ({exc.name} is missing): "
                         "pip install 'cnndsl[train]', or give an .npy array") from None
    try:
        images, files, skipped = read_images(path, tuple(shape))
    except DataError as exc:
        raise CnnError([Diagnostic(code="E-io", message=exc.message,
                                   help=exc.help or None)]) from None
    if skipped:
        _say(f"warning: skipped {len(skipped)} unreadable file(s), e.g. {skipped[0][0]}: "
             f"{skipped[0][1]}")
    if not args.json:
        _say(f"input: {len(files)} image{'s' if len(files) != 1 else ''} from {path}"
             + (", normalised as the spec's training did" if normalize else ""))
    return eval_transform(normalize)(images).numpy().astype(np.float32)


def _starts_like_npy(path: Path) -> bool:
    from .runtime import NPY_MAGIC
    try:
        with open(path, "rb") as f:
            return f.read(len(NPY_MAGIC)) == NPY_MAGIC
    except OSError:
        return True  # read_input says why it cannot be read


def _normalization(model) -> list:
    """The spec's `augment: normalize(...)` (what evaluation applies too), if any."""
    if model is None or model.train_def is None:
        return []
    from .training.spec import check_train
    try:
        config = check_train(model.train_def, model.name, model.ir.params)
    except CnnError:
        return []
    return [(a.name, a.args) for a in config.augment if a.name == "normalize"]


def _keep_outputs(model, args):
    """--outputs fc,aux1: only these outputs and the layers they need."""
    if not getattr(args, "outputs", None):
        return model
    return model.keep_outputs(tuple(n.strip() for n in args.outputs.split(",") if n.strip()))


def _onnx_model(path: str) -> str | bytes:
    """What onnxruntime opens: the path (its external data lies beside it), or, for a path
    onnxruntime cannot take (not UTF-8), the file's bytes. A regular file only: a FIFO
    would block."""
    from .files import open_regular
    try:
        with open_regular(path) as f:
            try:
                path.encode("utf-8")
            except UnicodeEncodeError:
                return f.read()
    except OSError as exc:
        raise _spec_error(f"cannot read {path}: {exc.strerror or exc}") from None
    return path


def _say_weights(model, args) -> None:
    """The weight import's report, on stderr (JSON output carries it instead)."""
    if model.weights_report is not None and not getattr(args, "json", False):
        _say(model.weights_report.text())


def _weights_json(model) -> dict | None:
    return model.weights_report.to_json() if model.weights_report is not None else None


def cmd_render(args) -> int:
    from .backends.diagram import DotMissingError, write
    model = _load(args)
    suffix = Path(args.output).suffix.lower()
    if suffix not in (".svg", ".png", ".pdf", ".dot"):
        raise UsageError(f"-o must end in .svg, .png, .pdf or .dot, not `{suffix or args.output}`")
    try:
        drawing = write(model.ir, args.output, engine=args.engine, depth=args.depth,
                        direction=args.direction, shapes=not args.no_shapes, params=args.params)
    except DotMissingError as exc:
        dot_path = Path(args.output).with_suffix(".dot")
        if args.json:
            print(json.dumps({"ok": False, "output": str(dot_path), "format": "dot",
                              "error": str(exc)}, indent=2))
        else:
            _say(f"wrote {dot_path} instead of {args.output}: {exc}")
        return EXIT_SPEC
    except RuntimeError as exc:  # Graphviz crashed, failed or ran past its time bound
        header = model.program.network(args.network)
        raise CnnError([Diagnostic(code="E-io", message=f"cannot draw {args.output}: {exc}",
                                   span=header.name_span, label="this network")],
                       model.program.sources) from None
    if args.json:
        print(json.dumps({"ok": True, "output": args.output, "format": suffix[1:],
                          "engine": drawing.engine or None}, indent=2))
    else:
        _say(f"wrote {args.output}" + (f" (drawn by {drawing.program})" if drawing.engine
                                       else ""))
    return EXIT_OK


def cmd_summary(args) -> int:
    from .report import summary_rows, summary_table, summary_totals
    model = _load(args)
    try:
        frozen = _frozen(model, args)
    except CnnError:
        if args.freeze or args.freeze_all_except:
            raise
        frozen = set()  # the `train` definition's `freeze`: `check` says what is wrong
        _say("warning: the `train` definition does not check (`cnndsl check` says why); "
             "no layer is shown frozen")
    if args.json:
        print(json.dumps({"ok": True, "network": model.name,
                          "rows": summary_rows(model.ir, args.depth, frozen),
                          "totals": summary_totals(model.ir, frozen)}, indent=2))
    else:
        _show(summary_table(model.ir, args.depth, frozen), end="")
    return EXIT_OK


def cmd_explain(args) -> int:
    from .catalogue import BY_CODE, CATALOGUE, explain
    if args.code is None:
        if args.json:
            print(json.dumps({"ok": True, "codes": [{"code": e.code, "title": e.title}
                                                    for e in CATALOGUE]}, indent=2))
            return EXIT_OK
        width = max(len(e.code) for e in CATALOGUE)
        print("\n".join(f"{e.code:<{width}}  {e.title}" for e in CATALOGUE))
        print("\n`cnndsl explain CODE` explains one, with an example and the fix.")
        return EXIT_OK
    by_lower = {c.lower(): c for c in BY_CODE}
    code = by_lower.get(args.code.strip().lower())
    if code is None:
        from .suggest import did_you_mean
        near = did_you_mean(args.code.strip().lower(), by_lower)
        hint = near and f"did you mean `{by_lower[near.split('`')[1]]}`?"
        raise UsageError(f"no code `{args.code}`" + (f"; {hint}" if hint else "") +
                         f"; codes: {', '.join(BY_CODE)}")
    if args.json:
        entry = BY_CODE[code]
        print(json.dumps({"ok": True, "code": code, "title": entry.title,
                          "explanation": entry.explanation, "example": entry.example,
                          "fix": entry.fix}, indent=2))
    else:
        print(explain(code), end="")
    return EXIT_OK


TRAIN_KEYS = ("epochs", "batch", "seed", "clip", "val_split", "data", "amp", "channels_last",
              "loss", "optimizer", "schedule", "early_stop", "data_classes", "freeze",
              "unfreeze_after", "backbone_lr_scale", "reinit", "task", "ignore_index",
              "workers", "cache", "max_image_pixels")


def _split_sets(args) -> tuple[dict, dict]:
    """--set: training settings (`epochs=3`, `optimizer.lr=0.1`) and network parameters."""
    sets = parse_sets(args.set, getattr(args, "words", None))
    train = type(sets)({k: v for k, v in sets.items() if "." in k or k in TRAIN_KEYS},
                       spans=sets.spans)
    return {k: v for k, v in sets.items() if k not in train}, train


def _load_for_training(args):
    from .api import load
    params, train = _split_sets(args)
    for flag, key in (("epochs", "epochs"), ("batch", "batch"), ("lr", "optimizer.lr"),
                      ("seed", "seed"), ("unfreeze_after", "unfreeze_after"),
                      ("backbone_lr_scale", "backbone_lr_scale")):
        if getattr(args, flag, None) is not None:
            train[key] = getattr(args, flag)
    from .training.spec import Layers
    if getattr(args, "freeze", None):
        train["freeze"] = Layers(names=tuple(args.freeze))
    if getattr(args, "freeze_all_except", None):
        train["freeze"] = Layers(names=tuple(args.freeze_all_except), all_except=True)
    if getattr(args, "reinit", None):
        train["reinit"] = Layers(names=tuple(args.reinit))
    model = load(Path(args.spec), network=args.network,
                 memory_limit=getattr(args, "memory_limit", None),
                 confine_imports=args.confine_imports, weight_copies=WEIGHT_COPIES["train"],
                 train_overrides=train, **params)
    return model  # its training description checked once, overrides included


def cmd_train(args) -> int:
    from .training import tasks
    from .training.loop import TrainingStopped, json_safe
    from .training.run import fit_model, is_main_rank
    model = _load_for_training(args)
    # a resumed run goes on writing into the folder it resumes, unless --out names another;
    # without either, each run gets a new folder: runs/train, runs/train2, ...
    out = args.out or args.resume
    try:
        summary = fit_model(model, args.data, out=out, device=args.device, resume=args.resume,
                            weights=args.weights, weights_from=args.weights_from,
                            progress=None if not args.json else False,
                            exist_ok=args.exist_ok, new_folder=None if out else DEFAULT_OUT)
    except TrainingStopped as stop:
        if is_main_rank():
            _say(f"interrupted at epoch {stop.epoch + 1}, step {stop.step}: the state is saved "
                 f"in {stop.out}; continue with: {resume_command(args.words, stop.out)}")
        return 128 + stop.signum
    summary.pop("module")
    if not is_main_rank():
        return EXIT_OK
    if args.json:
        print(json.dumps(json_safe({"ok": True, **summary}), indent=2, allow_nan=False))
        return EXIT_OK
    task = tasks.get(model.train_config().task)
    best = summary["history"][summary["best_epoch"] - 1]
    done = f"best epoch {summary['best_epoch']}: {task.best_line(best)}"
    if summary["complete"]:
        _show(f"{done}; {summary['out']} is complete, nothing written")
    else:
        written = summary["written"]
        _show(f"{done}; wrote {summary['out']}/{written[0]}"
              + "".join(f", {name}" for name in written[1:]))
    return EXIT_OK


def resume_command(words: list[str], out) -> str:
    """The command that continues a stopped run: the one given, with `--resume OUT` in
    place of --out, --resume and --exist-ok."""
    import shlex
    kept, skip = [], False
    for word in words:
        if skip:
            skip = False
            continue
        if word in ("--out", "--resume"):
            skip = True
            continue
        if word == "--exist-ok" or word.startswith(("--out=", "--resume=")):
            continue
        kept.append(word)
    return shlex.join(["cnndsl", *kept, "--resume", str(out)])


def cmd_eval(args) -> int:
    from .training import tasks
    if args.spec.endswith(".onnx"):
        return _eval_onnx(args)
    from .training.run import evaluate_model
    if args.runtime != "onnxruntime" or args.precision:
        raise UsageError("--runtime and --precision apply to eval of an .onnx file: "
                         "cnndsl eval FILE.onnx --data DATA --runtime openvino")
    if args.onnx is None and not (args.weights or args.weights_from) or \
            args.onnx is not None and args.weights:
        raise UsageError("give the weights to evaluate: --weights FILE (or --weights-from), "
                         "or --onnx FILE.onnx")
    model = _load_for_training(args)
    task = tasks.get(model.train_config().task)
    report = evaluate_model(model, args.data, weights=args.weights, device=args.device,
                            batch=args.batch, weights_from=args.weights_from,
                            onnx=_onnx_model(args.onnx) if args.onnx else None,
                            predictions=Path(args.predictions) if args.predictions else None,
                            split=args.split)
    return _show_eval(args, report, model.name, task.format_report)


def cmd_predict(args) -> int:
    from .deploy.predict import image_files, predict_files, task_of
    files = image_files(args.inputs)
    predictor = _predictor(args)
    task = task_of(predictor.info)
    if not args.json:
        _say(f"{args.model}: {len(files)} image(s), {predictor.info.task}, "
             f"running on {predictor.runtime}")
    out = Path(args.out) if args.out else None
    if (out is not None and predictor.info.task != "classification" and out.is_dir()
            and any(f.resolve().parent == out.resolve() for f in files)):
        # NNNNN_STEM.png masks (boxes drawn) among the inputs would overwrite an input
        raise UsageError(f"--out {args.out} holds input images: write the "
                         f"{predictor.info.task} images to another folder")
    if out is not None:  # a task writes its images as it goes
        out.mkdir(parents=True, exist_ok=True)
    folders = any(Path(p).is_dir() for p in args.inputs)
    done = predict_files(predictor, files, batch=args.batch, top=args.top,
                         progress=None if folders and not args.json else False, out=out)
    for path, why in done.skipped:
        _say(f"warning: skipped {path}: {why}")
    report = {"ok": bool(done.results), "model": args.model, "runtime": predictor.runtime,
              "task": predictor.info.task, "predicted": len(done.results),
              "skipped": [{"file": f, "why": w} for f, w in done.skipped],
              "predictions": done.results}
    if out is not None:
        from .atomic import write_text
        write_text(out / "predictions.json", json.dumps(report, indent=2) + "\n")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for result in done.results:
            _show(task.line(result))
        _say(f"predicted {len(done.results)} image(s), skipped {len(done.skipped)}")
    return EXIT_OK if done.results else EXIT_SPEC


def _predictor(args):
    from .deploy.predict import onnx_predictor, spec_predictor
    if args.model.endswith(".cnn"):
        args.spec = args.model
        model = _load_for_training(args)  # its training description holds the overrides
        if args.runtime == "onnxruntime" and args.precision is None:
            return spec_predictor(model, weights=args.weights,
                                  weights_from=args.weights_from, device=args.device)
        onnx_model = model.to_onnx(weights=args.weights, weights_from=args.weights_from)
        from .deploy.describe import annotate
        from .deploy.predict import described_spec
        annotate(onnx_model, described_spec(model, None, args.weights))
        return onnx_predictor(onnx_model.SerializeToString(), args.provider,
                              runtime=args.runtime, precision=args.precision)
    if args.weights or args.set or args.weights_from:
        raise UsageError("--weights, --weights-from and --set apply to .cnn specs, not to "
                         ".onnx files")
    return onnx_predictor(_onnx_model(args.model), args.provider, runtime=args.runtime,
                          precision=args.precision)


def _add_reduce_options(p) -> None:
    p.add_argument("--quantize", choices=["int8"], help="static int8 quantisation (QDQ, "
                   "per-channel), calibrated on --calibrate DATA")
    p.add_argument("--precision", choices=["fp32", "fp16"], default="fp32",
                   help="fp16 weights and arithmetic (inputs and outputs stay float32)")
    p.add_argument("--preprocess", action="store_true", help="the graph takes uint8 "
                   "N x H x W x C images and scales and normalises them itself")
    p.add_argument("--calibrate", metavar="DATA", help="digits, an image folder or an .npz "
                   "file: calibration images from its train split; the reduced model and "
                   "the fp32 one are then evaluated on its validation split")
    p.add_argument("--calibration", type=bounded_int(1, 100_000), default=200, metavar="N",
                   help="calibration images (default 200), drawn with --seed")
    p.add_argument("--method", choices=["minmax", "entropy", "percentile"], default="minmax",
                   help="how activation ranges are calibrated (default minmax)")


def cmd_inspect(args) -> int:
    from .deploy.inspect import inspect_image
    if not args.output.lower().endswith(".png"):
        raise UsageError(f"-o must end in .png, not `{args.output}`")
    model = _load(args)
    result = inspect_image(model, args.image, args.layer, weights=args.weights,
                           weights_from=args.weights_from)
    result.save(args.output)
    if args.json:
        print(json.dumps({"ok": True, "output": args.output, "layer": args.layer,
                          "maps": list(result.maps.shape), "predicted": result.predicted,
                          "class": result.predicted_name,
                          "probability": result.probability}, indent=2))
    else:
        _say(f"wrote {args.output}: {result.maps.shape[0]} activation maps of {args.layer}, "
             f"filters of {result.filters_layer}, Grad-CAM for {result.predicted_name} "
             f"({result.probability:.3f})")
    return EXIT_OK


def _add_inspect(spec_command, weight_options) -> None:
    p = spec_command("inspect", "draw a layer's activation maps, the first layer's filters "
                     "and a Grad-CAM of the predicted class for one image")
    p.add_argument("image", help="an image file")
    weight_options(p)
    p.add_argument("--layer", required=True, help="the layer whose maps are drawn (and "
                   "where Grad-CAM looks), e.g. conv2 or layer4.1.conv2")
    p.add_argument("-o", "--output", required=True, help="the .png to write")
    p.set_defaults(run=cmd_inspect)


def _add_predict(sub, weight_options) -> None:
    p = sub.add_parser("predict", help="classify, segment or detect images with a spec and "
                       "its weights, or an .onnx file", description="Run a trained network "
                       "on image files and folders, preprocessed as evaluation preprocesses "
                       "them.")
    p.add_argument("model", help="a .cnn spec (with --weights) or a .onnx file")
    p.add_argument("inputs", nargs="+", metavar="IMAGE", help="image files or folders")
    weight_options(p)
    p.add_argument("--top", type=bounded_int(1, 1000), default=5, help="classes shown per "
                   "image (default 5)")
    p.add_argument("--batch", type=bounded_int(1, 65_536), default=64)
    p.add_argument("--out", metavar="DIR", help="write DIR/predictions.json, and each image's "
                   "mask and overlay (segmentation) or boxes drawn (detection)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="torch's device, for a spec")
    p.add_argument("--provider", default="auto", choices=["auto", "cpu", "cuda", "tensorrt"],
                   help="onnxruntime's provider, for a .onnx file")
    _runtime_options(p)
    p.add_argument("--set", action="append", metavar="NAME=VALUE")
    p.add_argument("--network")
    p.add_argument("--memory-limit", type=parse_size, metavar="SIZE")
    p.add_argument("--confine-imports", action="store_true")
    p.add_argument("--json", action="store_true", help="the predictions as JSON")
    p.set_defaults(run=cmd_predict)


def _eval_onnx(args) -> int:
    from .deploy.evaluate import evaluate_onnx
    from .training.metrics import format_report
    if args.weights or args.weights_from or args.set:
        raise UsageError("--weights, --weights-from and --set apply to .cnn specs; an .onnx "
                         "file holds its weights")
    if not args.data:
        raise UsageError("eval of an .onnx file needs --data (digits, an image folder or an "
                         ".npz file)")
    report = evaluate_onnx(_onnx_model(args.spec), args.data, batch=args.batch or 256,
                           split=args.split, runtime=args.runtime, precision=args.precision)
    return _show_eval(args, report, f"{args.spec} ({report['model_precision']}, "
                      f"{report['runtime']})", format_report)


def _show_eval(args, report: dict, name: str, format_report) -> int:
    """`eval`'s answer: the confusion matrix drawn with --plot, then JSON or text."""
    if args.plot:
        from .training.plots import plot_confusion
        plot_confusion(report["confusion_matrix"], [c["class"] for c in report["per_class"]],
                       Path(args.plot))
    if args.json:
        print(json.dumps({"ok": True, **report}, indent=2))
    else:
        _show(eval_heading(name, report))
        _show(format_report(report))
    return EXIT_OK


SPLIT_WORDS = {"all": "every image", "val": "the validation split",
               "train": "the training split"}


def eval_heading(network: str, report: dict) -> str:
    """`eval`'s first line: what was scored, how many images, and whether by default."""
    why = report.get("split_default")
    how = f"--split {report['split']}" + (f", the default for {why}" if why else "")
    return (f"{network} on {report['source']}: {SPLIT_WORDS[report['split']]}, "
            f"{report['samples']} images ({how})")


def cmd_fmt(args) -> int:
    from .fmt import expand_paths, run_fmt
    return run_fmt(expand_paths(args.files), check=args.check, diff=args.diff)


def cmd_lsp(args) -> int:
    try:
        from .lsp.server import serve
    except ImportError as exc:
        raise UsageError(f"`cnndsl lsp` needs the lsp extra ({exc.name} is missing): "
                         "pip install 'cnndsl[lsp]'") from None
    return serve()


def cmd_import(args) -> int:
    from .importer import import_source
    output = Path(args.output)
    weights_out = Path(args.weights_out) if args.weights_out else output.with_suffix(
        ".safetensors")
    result = import_source(args.source, output, weights_out, partial=args.partial,
                           shape=args.shape, opset=args.opset)
    for note in result.notes:
        _say(f"note: {note}")
    for u in result.unsupported:
        _say(f"not written (--partial): node {u.node!r} ({u.op_type}): {u.why}")
    if args.json:
        print(json.dumps({"ok": True, "output": str(output), "weights": str(weights_out),
                          "params": result.params, "source_params": result.source_params,
                          "max_relative_error": result.max_error,
                          "lines": result.text.count("\n"),
                          "unsupported": [vars(u) for u in result.unsupported]}, indent=2))
    else:
        _say(f"wrote {output} ({result.text.count(chr(10))} lines, {result.params:,} "
             f"parameters, as many as the source) and {weights_out}")
        _say(f"verified: the spec computes the source's function (largest difference "
             f"{result.max_error:.1e} of the output's magnitude, onnxruntime)")
    return EXIT_OK


def _spec_error(message: str) -> CnnError:
    return CnnError([Diagnostic(code="E-io", message=message)])


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="cnndsl", description="Check and compile .cnn convolutional network specs.")
    from . import __version__
    parser.add_argument("--version", action="version", version=f"cnndsl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def spec_command(name: str, help: str):
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("spec", help="the .cnn file")
        p.add_argument("--set", action="append", metavar="NAME=VALUE",
                       help="override a network parameter (repeatable)")
        p.add_argument("--network", help="which network, when the file defines several")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.add_argument("--memory-limit", type=parse_size, metavar="SIZE",
                       help="refuse networks whose parameters or activations per image need "
                       "more (default: half this machine's memory)")
        p.add_argument("--confine-imports", action="store_true",
                       help="refuse imports from outside the spec's folder")
        return p

    def weight_options(p, required: bool = False):
        p.add_argument("--weights", required=required, help="a state_dict file (.pt, read "
                       "with weights_only=True, or .safetensors), in this spec's names or "
                       "another's (mapped by structure), torchvision:NAME (torchvision's "
                       "pretrained weights, from the torch hub cache), or "
                       "python:package.module:function (an nn.Module it returns, with its "
                       "weights; imported only because you name it)")
        p.add_argument("--weights-from", metavar="torchvision:NAME|python:MODULE:FUNCTION",
                       help="the architecture the --weights file was saved from: "
                       "torchvision's, or the nn.Module a function of yours returns; mapped "
                       "by tracing both and verified")
        p.add_argument("--reinit", nargs="+", action="extend", metavar="NAME",
                       help="layers (or blocks, prefixes) to initialise afresh instead of "
                       "loading them (a new head)")

    def freeze_options(p):
        p.add_argument("--freeze", nargs="+", action="extend", metavar="NAME",
                       help="layers or blocks (names or prefixes) that training keeps frozen")
        p.add_argument("--freeze-all-except", nargs="+", action="extend", metavar="NAME",
                       help="freeze every layer but these (the head)")

    check = spec_command("check", "check every shape; print the layer table and totals")
    check.add_argument("--strict", action="store_true", help="treat warnings as errors")
    freeze_options(check)
    check.set_defaults(run=cmd_check)

    comp = spec_command("compile", "compile to PyTorch source or ONNX")
    comp.add_argument("--to", choices=["torch", "onnx"], required=True, help="the target")
    comp.add_argument("-o", "--output", required=True, help="the file to write")
    comp.add_argument("--strict", action="store_true", help="treat warnings as errors")
    comp.add_argument("--opset", type=bounded_int(13, 21), help="ONNX opset 13-21 "
                      "(default 18)")
    weight_options(comp)
    _outputs_option(comp)
    comp.add_argument("--keep-batchnorm", action="store_true",
                      help="do not fold batch norm into the preceding conv")
    comp.add_argument("--nms", action="store_true", help="a detector: append ONNX "
                      "NonMaxSuppression (best class per anchor, score above 0.25, IoU 0.7), "
                      "so that the output `nms_detections` holds the final boxes (N x 7: "
                      "image, x1, y1, x2, y2, score, class)")
    _add_reduce_options(comp)
    comp.add_argument("--seed", type=bounded_int(0, 2**32 - 1), default=0,
                      help="seed for fresh weights")
    comp.set_defaults(run=cmd_compile)

    render = spec_command("render", "draw the architecture with graphviz")
    render.add_argument("-o", "--output", required=True, help="a .svg, .png, .pdf or .dot file")
    render.add_argument("--direction", choices=["TB", "LR"], default="TB")
    render.add_argument("--engine", choices=["auto", "bundled", "system"], default="auto",
                        help="the Graphviz that draws: bundled with pygraphviz, the system's "
                        "`dot`, or auto (the faster of those installed)")
    render.add_argument("--depth", type=int, help="fold blocks nested deeper than N into one "
                        "node (default: the deepest view of at most 100 nodes)")
    render.add_argument("--no-shapes", action="store_true", help="no shapes on the edges")
    render.add_argument("--params", action="store_true", help="parameter counts on the nodes")
    render.set_defaults(run=cmd_render)

    summ = spec_command("summary", "a table of layers and blocks with parameters, MACs, memory")
    summ.add_argument("--depth", type=int, default=3, help="block nesting shown (default 3)")
    freeze_options(summ)
    summ.set_defaults(run=cmd_summary)

    train = spec_command("train", "train the network (the spec's `train` definition)")
    train.add_argument("--data", help="digits, or an image folder (class subfolders, or "
                       "train/ and val/ inside)")
    train.add_argument("--epochs", type=bounded_int(1, 1_000_000))
    train.add_argument("--batch", type=bounded_int(1, 1_000_000))
    train.add_argument("--lr", type=float, help="the optimizer's learning rate")
    train.add_argument("--seed", type=bounded_int(0, 2**32 - 1))
    train.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    train.add_argument("--out", help="checkpoints, metrics and plots (default: the "
                       f"--resume folder, else a new one: {DEFAULT_OUT}, {DEFAULT_OUT}2, ...)")
    train.add_argument("--resume", metavar="DIR", help="continue a run from its folder")
    train.add_argument("--exist-ok", action="store_true", help="let --out replace the "
                       "files of another run in it")
    weight_options(train)
    freeze_options(train)
    train.add_argument("--unfreeze-after", type=bounded_int(0, 1_000_000), metavar="N",
                       help="train the frozen layers too from epoch N + 1")
    train.add_argument("--backbone-lr-scale", type=float, metavar="F",
                       help="the frozen layers' learning rate once they train, as a "
                       "fraction of the optimizer's")
    train.set_defaults(run=cmd_train)

    evaluate = spec_command("eval", "evaluate weights (or an .onnx file) on held-out "
                            "data: accuracy, precision, recall, F1, confusion matrix; "
                            "segmentation: mIoU, IoU and Dice per class")
    weight_options(evaluate)
    evaluate.add_argument("--onnx", metavar="FILE.onnx", help="evaluate this ONNX file "
                          "(onnxruntime) on the spec's task and data instead of the spec's "
                          "module with --weights")
    evaluate.add_argument("--predictions", metavar="DIR", help="segmentation: write each "
                          "validation image's predicted mask (colour PNG) and an overlay")
    evaluate.add_argument("--data", help="digits, or an image folder")
    _runtime_options(evaluate, "for an .onnx file")
    evaluate.add_argument("--batch", type=bounded_int(1, 1_000_000))
    evaluate.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    evaluate.add_argument("--plot", metavar="FILE.png", help="draw the confusion matrix")
    evaluate.add_argument("--split", choices=["all", "val", "train"], help="what to score: "
                          "every image, the validation or the training split (default: "
                          "the validation split of digits or of a folder with train/ and "
                          "val/, else every image)")
    evaluate.set_defaults(run=cmd_eval)

    explain = sub.add_parser("explain", help="explain an error code (e.g. E-shape)")
    explain.add_argument("code", nargs="?", help="e.g. E-shape (any case); none lists "
                         "every code")
    explain.add_argument("--json", action="store_true", help="the entry (or the list) as JSON")
    explain.set_defaults(run=cmd_explain)

    fmt = sub.add_parser("fmt", help="format .cnn files in the canonical layout",
                         description="Format .cnn files in place (atomically) in the one "
                         "canonical layout; every comment is kept.")
    fmt.add_argument("files", nargs="+", metavar="FILE", help=".cnn files or folders "
                     "(their .cnn files, recursively); - reads standard input")
    fmt.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file "
                     "would change")
    fmt.add_argument("--diff", action="store_true", help="change nothing; print the changes")
    fmt.set_defaults(run=cmd_fmt)

    lsp = sub.add_parser("lsp", help="the language server (LSP over stdio) for editors",
                         description="Run the language server on standard input and output.")
    lsp.set_defaults(run=cmd_lsp)

    imp = sub.add_parser("import", help="an ONNX file or a PyTorch model as a checked spec "
                         "with its weights", description="Write a .cnn spec and its weights "
                         "from an ONNX file, torchvision:NAME or python:package.module:function, "
                         "verified equal in function before anything is written.")
    imp.add_argument("source", help="a .onnx file, torchvision:NAME, or "
                     "python:package.module:function (imported: only for code you trust)")
    imp.add_argument("-o", "--output", required=True, help="the .cnn file to write")
    imp.add_argument("--weights-out", metavar="FILE.safetensors", help="where the weights "
                     "go (default: the spec's path with .safetensors)")
    imp.add_argument("--partial", action="store_true", help="write the largest part that "
                     "can be expressed, listing the rest")
    imp.add_argument("--shape", default="3x224x224", metavar="CxHxW", help="the input "
                     "size a PyTorch model is exported at (default 3x224x224)")
    imp.add_argument("--opset", type=bounded_int(13, 21), default=18, help="the opset a "
                     "PyTorch model is exported at (default 18)")
    imp.add_argument("--json", action="store_true", help="machine-readable output")
    imp.set_defaults(run=cmd_import)

    run = sub.add_parser("run", help="run a model with onnxruntime",
                         description="Run a .onnx model, or a .cnn spec compiled on the fly, "
                         "with onnxruntime.")
    run.add_argument("model", help="a .onnx file or a .cnn spec")
    run.add_argument("--provider", default="auto", choices=["auto", "cpu", "cuda", "tensorrt"])
    _runtime_options(run)
    run.add_argument("--batch", type=bounded_int(1, 65_536), default=1,
                     help="batch size of the random input")
    run.add_argument("--input", help="a .npy array (N x C x H x W, or C x H x W), an "
                     "image, or a folder of images (preprocessed as the spec's training "
                     "did)")
    run.add_argument("--output", help="write the first output to this .npy file")
    run.add_argument("--bench", type=bounded_int(0, 1_000_000), default=0, metavar="N",
                     help="time N runs: latency percentiles and images/s")
    run.add_argument("--threads", type=bounded_int(1, 4 * (os.cpu_count() or 1)),
                     help="onnxruntime intra-op threads (at most 4 per core)")
    weight_options(run)
    _outputs_option(run)
    run.add_argument("--seed", type=bounded_int(0, 2**32 - 1), default=0)
    run.add_argument("--set", action="append", metavar="NAME=VALUE")
    run.add_argument("--network")
    run.add_argument("--memory-limit", type=parse_size, metavar="SIZE")
    run.add_argument("--json", action="store_true", help="benchmark figures as JSON")
    run.set_defaults(run=cmd_run)
    _add_predict(sub, weight_options)
    _add_inspect(spec_command, weight_options)
    for command in sub.choices.values():  # usage errors show the command's own usage
        command.set_defaults(parser=command)
    return parser


def _runtime_options(p, where: str = "") -> None:
    p.add_argument("--runtime", choices=["onnxruntime", "openvino"], default="onnxruntime",
                   help="what runs the ONNX model" + (f", {where}" if where else "") +
                   " (openvino: pip install 'cnndsl[openvino]'; its CPU plugin)")
    p.add_argument("--precision", choices=["f32", "bf16"], help="OpenVINO's arithmetic "
                   "(INFERENCE_PRECISION_HINT; default f32, never chosen silently); "
                   "onnxruntime runs the types the model stores")


def _outputs_option(p) -> None:
    p.add_argument("--outputs", metavar="NAME,...", help="keep only these outputs (by "
                   "the spec's names) and the layers they need: leave out heads used only "
                   "in training")


def expand_sets(argv: list[str]) -> list[str]:
    """`--set a=1 b=2` means `--set a=1 --set b=2`: every NAME=VALUE word that follows a
    `--set` belongs to it (argparse's nargs would also swallow the spec's path)."""
    out: list[str] = []
    in_set = False
    for word in argv:
        is_pair = (word.partition("=")[0].isidentifier() and "=" in word
                   and not word.endswith((".cnn", ".onnx")))
        if in_set and is_pair and out[-1] != "--set":
            out.append("--set")
        out.append(word)
        in_set = word == "--set" or (in_set and is_pair)
    return out


def main(argv: list[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):  # a path that is not UTF-8 prints escaped
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    parser = build_parser()
    words = expand_sets(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(words)
    except UsageError as exc:
        return _usage(exc, exc.parser or parser, "--json" in words)
    args.words = words
    try:
        return args.run(args)
    except UsageError as exc:
        return _usage(exc, exc.parser or args.parser, getattr(args, "json", False))
    except CnnError as exc:
        if _reports():  # under torchrun one process says it
            _report(exc, args)
        return EXIT_SPEC
    except OSError as exc:  # reading or writing a file the user named
        where = f" {exc.filename}" if exc.filename else ""
        if _reports():
            _report(CnnError([Diagnostic(code="E-io", message=f"cannot access{where}: "
                                         f"{exc.strerror or exc}")]), args)
        return EXIT_SPEC
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the last line of defence for users
        if _stopped_elsewhere(exc):
            return EXIT_SPEC  # another process reports why
        if os.environ.get("CNNDSL_DEBUG"):
            raise
        if _reports():
            rank = "" if _main_process() else f"process {os.environ.get('RANK')}: "
            _say(f"{rank}internal error: {type(exc).__name__}: {exc}\n(this is a bug in "
                 "cnndsl; CNNDSL_DEBUG=1 shows the traceback)")
        return EXIT_INTERNAL


def _main_process() -> bool:
    """Not one of torchrun's other processes (RANK 1, 2, ...)."""
    return os.environ.get("RANK", "0") == "0"


ERROR_KEY = "cnndsl/error_reported"  # counts the processes that had an error to report


def _reports() -> bool:
    """Whether this process prints its error: alone, always; under torchrun, once the
    processes have joined, the first of them to have one (they count in torchrun's
    store, which outlives them; the others stop quietly: a rank waiting for one that
    failed would else report the lost connection too), before that rank 0 (every
    process reads the same spec and data and finds the same error)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return True
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        try:
            store = dist.distributed_c10d._get_default_store()
            # a key per attempt: torchrun --max-restarts starts the processes again
            attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
            return store.add(f"{ERROR_KEY}/{attempt}", 1) == 1
        except Exception:  # noqa: BLE001 - the store gone too: rank 0 says what it has
            pass
    return _main_process()


def _stopped_elsewhere(exc: Exception) -> bool:
    """Under torchrun: this process stopped because another one did (its error says why),
    or lost the others (a process that ended: torchrun reports it)."""
    loop = sys.modules.get("cnndsl.training.loop")  # imported only by commands that train
    if loop is not None and isinstance(exc, loop.StoppedElsewhere):
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    dist = sys.modules.get("torch.distributed")
    return dist is not None and isinstance(exc, getattr(dist, "DistError", ()))


def _usage(exc: UsageError, parser: argparse.ArgumentParser, as_json: bool) -> int:
    """A command line that cannot run: E-usage, exit 2; the usage line on stderr, and
    under --json the one JSON document on stdout."""
    d = Diagnostic(code="E-usage", message=str(exc), help=f"`{parser.prog} --help` lists "
                   "the options")
    if as_json:
        print(json.dumps({"ok": False, "errors": [d.to_json()], "warnings": []}, indent=2))
    sys.stderr.write(printable_text(parser.format_usage()))
    sys.stderr.write(render_all([d], SourceMap(), use_color()))
    return EXIT_USAGE


def _report(exc: CnnError, args) -> None:
    if getattr(args, "json", False):
        print(json.dumps({"ok": False, "errors": [
            d.to_json() for d in exc.diagnostics if d.severity == "error"], "warnings": [
            d.to_json() for d in exc.diagnostics if d.severity == "warning"]}, indent=2))
        return
    sources = exc.sources or SourceMap()
    if getattr(args, "words", None) and COMMAND_LINE not in sources.files:
        sources.add(COMMAND_LINE, command_line_text(args.words))
    sys.stderr.write(render_all(exc.diagnostics, sources, use_color()))
    errors = sum(d.severity == "error" for d in exc.diagnostics)
    sys.stderr.write(f"\n{errors} error{'s' if errors != 1 else ''}\n")


def run() -> None:
    try:
        sys.exit(main())
    except BrokenPipeError:  # `cnndsl check ... | head`: the reader left, as it may
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)


__all__ = ["Diagnostic", "main", "run"]
